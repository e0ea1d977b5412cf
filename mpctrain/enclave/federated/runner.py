"""The federated ``Runner`` for the aggregator's job store (its mode-dispatch point, ``JobStore.runners``).

The job store hands a consented job to ``runners[manifest.mode]``; this runner drives Flower rounds on a
grid (the SuperLink's, or the in-process one) and seals the final model and the run's metrics to every
recipient with an enclave-signed receipt, exactly like a pooled job's outputs: ``mpctrain job fetch``
opens and verifies both modes the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import safetensors.numpy
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.grid import Grid

from mpctrain.enclave.events import EventSink
from mpctrain.enclave.federated.apps import AppEntryError
from mpctrain.enclave.federated.errors import CodeDigestMismatch, JobNotReady, RunConfigMismatch
from mpctrain.enclave.federated.server_app import FederatedJob, run_federated_job
from mpctrain.enclave.federated.strategy import FederatedResult
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.outputs import seal_outputs
from mpctrain.enclave.state import Job, JobStore, show_verbatim

# About the submitted Flower run and its code, never about a party's data: shown to the job's parties as is.
show_verbatim(AppEntryError, CodeDigestMismatch, JobNotReady, RunConfigMismatch)

MODEL_FORMAT = "flwr.ArrayRecord"  # safetensors metadata: one tensor per ArrayRecord key, in its order


def model_bytes(arrays: ArrayRecord) -> bytes:
    """The final model as safetensors (never pickle): what the researcher loads with ``safetensors``."""
    return safetensors.numpy.save({k: a.numpy() for k, a in arrays.items()}, metadata={"format": MODEL_FORMAT})


def _numbers(metrics: dict[int, MetricRecord]) -> dict[str, dict[str, float]]:
    return {str(rnd): {k: float(v) for k, v in rec.items() if isinstance(v, int | float)}
            for rnd, rec in sorted(metrics.items())}


def metrics_bytes(job: Job, result: FederatedResult, strategy: str) -> bytes:
    doc = {
        "job_id": job.job_id,
        "manifest_digest": job.digest.hex(),
        "mode": "federated",
        "strategy": strategy,
        "rounds": result.rounds_completed,
        "stop_reason": result.stop_reason,
        "epsilon": {str(r): e for r, e in sorted(result.epsilon.items())},
        "train": _numbers(result.train_metrics_clientapp),
        "evaluate": _numbers(result.evaluate_metrics_clientapp),
        "rejected_replies": len(result.rejected),
    }
    return json.dumps(doc, sort_keys=True, indent=2).encode()


class _Progress:
    """Forwards every event; each finished round also becomes a job event and the job's public metrics.

    Watchers are not authenticated beyond the job's parties, so a round shows only the manifest's public
    metrics, and under DP only the round count and epsilon: evaluation on the banks' data is not covered by
    the privacy budget, so a DP manifest cannot make any of it public (``jobs.manifest``).
    """

    def __init__(self, inner: EventSink, job: Job, store: JobStore) -> None:
        self.inner, self.job, self.store = inner, job, store
        self.show = not job.manifest.privacy
        self._epsilon: dict[str, float] = {}

    def emit(self, kind: str, /, **fields: object) -> None:
        self.inner.emit(kind, **fields)
        if kind == "fl.privacy_spent":  # ε is public: it is what the budget bounds
            eps = fields.get("epsilon")
            self._epsilon[f"epsilon.round{fields.get('round')}"] = float(eps) if isinstance(eps, int | float) else 0.0
        if kind != "fl.round_finished":
            return
        rnd = int(fields.get("round", 0))  # type: ignore[call-overload]
        metrics = fields.get("metrics")
        shown = {k: float(v) for k, v in metrics.items()} if self.show and isinstance(metrics, dict) else {}
        with self.job.cond:
            self.job.public_metrics = {**shown, **self._epsilon, "rounds": float(rnd)}
        self.store.record(self.job, "round", epoch=rnd, loss=shown.get("loss", float("nan")), values=shown)


class FederatedRunner:
    """``Runner`` for ``mode = "federated"`` jobs.

    ``grid_for(job)`` is a context manager yielding the grid that reaches the parties' nodes (the
    SuperLink's task, see ``deploy.superlink_runner``, or an in-process grid); ``initial_arrays(job, grid)``
    builds the initial model (the consented app's own code, see ``apps.consented_initial_arrays``).
    """

    starts_on_open = True  # no shards are uploaded: rounds begin once every consent is in

    def __init__(self, identity: EnclaveIdentity, events: EventSink, *,
                 grid_for: Callable[[Job], AbstractContextManager[Grid]],
                 initial_arrays: Callable[[Job, Grid], ArrayRecord], timeout: float = 3600.0) -> None:
        self.identity = identity
        self.events = events
        self.grid_for = grid_for
        self.initial_arrays = initial_arrays
        self.timeout = timeout

    def __call__(self, job: Job, store: JobStore) -> None:
        strategy = str(job.manifest.training.get("strategy", "FedAvg"))

        def deliver(arrays: ArrayRecord, result: FederatedResult) -> None:
            outputs = {"model": model_bytes(arrays), "metrics": metrics_bytes(job, result, strategy)}
            seal_outputs(job, self.identity, outputs, self.events)

        store.record(job, "state", message="federated: waiting for the job's Flower run (flwr run, mpctrain-job)")
        with self.grid_for(job) as grid:
            initial = self.initial_arrays(job, grid)  # a wrong app fails before any party is sent anything
            fjob = FederatedJob(manifest=job.manifest, consents=list(job.consents.values()), enclave=self.identity,
                                initial_arrays=initial, events=_Progress(self.events, job, store))
            result = run_federated_job(fjob, grid, timeout=self.timeout, deliver=deliver)
        public: dict[str, Any] = {}
        last = max(result.evaluate_metrics_clientapp, default=None)
        if last is not None:
            public = {k: float(v) for k, v in result.evaluate_metrics_clientapp[last].items()
                      if isinstance(v, int | float)}
        public["rounds"] = float(result.rounds_completed)
        for rnd, eps in result.epsilon.items():
            public[f"epsilon.round{rnd}"] = eps
        with job.cond:
            job.public_metrics = public
        store.record(job, "metrics", values=public)
        store.record(job, "state", message=f"federated: {result.stop_reason}")
