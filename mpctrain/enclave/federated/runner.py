"""The federated ``Runner`` for the aggregator's job store (its mode-dispatch point, ``JobStore.runners``).

The job store hands a consented job to ``runners[manifest.mode]``; this runner drives Flower rounds on a
grid (the SuperLink's, or the in-process one) and stores the sealed model per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp.grid import Grid

from mpctrain.enclave.events import EventSink
from mpctrain.enclave.federated.server_app import FederatedJob, run_federated_job
from mpctrain.enclave.identity import EnclaveIdentity


class FederatedRunner:
    """``Runner`` for ``mode = "federated"`` jobs: ``grid_for(job)`` connects it to the parties' nodes."""

    starts_on_open = True  # no shards are uploaded: rounds begin once every consent is in

    def __init__(self, identity: EnclaveIdentity, events: EventSink, *, grid_for: Callable[[Any], Grid],
                 initial_arrays: Callable[[Any], ArrayRecord]) -> None:
        self.identity = identity
        self.events = events
        self.grid_for = grid_for
        self.initial_arrays = initial_arrays

    def __call__(self, job: Any, store: Any) -> None:
        fjob = FederatedJob(manifest=job.manifest, consents=list(job.consents.values()), enclave=self.identity,
                            initial_arrays=self.initial_arrays(job), events=self.events)
        result = run_federated_job(fjob, self.grid_for(job))
        for recipient in job.manifest.recipients:
            job.outputs[(recipient, "model")] = result.sealed_output
        last = max(result.evaluate_metrics_clientapp, default=None)
        if last is not None:
            job.public_metrics = {k: float(v) for k, v in result.evaluate_metrics_clientapp[last].items()
                                  if isinstance(v, int | float)}
        job.public_metrics["rounds"] = float(result.rounds_completed)
        for rnd, eps in result.epsilon.items():
            job.public_metrics[f"epsilon.round{rnd}"] = eps
        store.record(job, "state", message=f"federated: {result.stop_reason}")
