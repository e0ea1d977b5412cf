"""ServerApp glue: from an approved federated manifest to ``Confidential(strategy)`` and a sealed result.

The manifest's ``[training]`` names the Flower strategy (``strategy``, ``strategy_args``), the rounds and
the apps (``[training.flower]``: ``client_app``, ``server_app``, ``code_digest``); ``[privacy]`` turns on
central DP with an ε budget. The ServerApp runs in the aggregator process, next to the enclave keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import ServerApp
from flwr.serverapp.grid import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from mpctrain.enclave.events import EventSink
from mpctrain.enclave.federated.dp import UNIT_WEIGHT_KEY, central_dp
from mpctrain.enclave.federated.strategy import Confidential, FederatedResult
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.jobs import Consent, JobManifest, ManifestError

log = logging.getLogger(__name__)

STRATEGIES: dict[str, type[FedAvg]] = {
    cls.__name__: cls for cls in (FedAvg, FedProx, FedAdam, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)
}


def build_strategy(manifest: JobManifest) -> Strategy:
    """The inner strategy the manifest asks for; every data party takes part in every round."""
    training = manifest.training
    name = str(training.get("strategy", "FedAvg"))
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ManifestError(f"unknown federated strategy {name!r}; known: {sorted(STRATEGIES)}")
    args = training.get("strategy_args", {})
    if not isinstance(args, dict):
        raise ManifestError("[training.strategy_args] must be a table")
    n = len(manifest.data_parties())
    quorum = manifest.quorum
    weighted_by_key = UNIT_WEIGHT_KEY if manifest.privacy else str(training.get("weighted_by_key", "num-examples"))
    try:
        strategy: Strategy = cls(min_available_nodes=quorum, min_train_nodes=quorum, min_evaluate_nodes=quorum,
                                 weighted_by_key=weighted_by_key, **args)
    except TypeError as exc:
        raise ManifestError(f"[training.strategy_args] do not fit {name}: {exc}") from exc
    if manifest.privacy:
        if cls is not FedAvg:
            raise ManifestError("central DP with accounting runs on FedAvg; set strategy = \"FedAvg\"")
        strategy = central_dp(strategy, manifest, num_sampled=n, population=n)
    return strategy


@dataclass
class FederatedJob:
    """Everything the ServerApp needs that must not come from the host: manifest, consents, enclave keys."""

    manifest: JobManifest
    consents: list[Consent]
    enclave: EnclaveIdentity
    initial_arrays: ArrayRecord
    events: EventSink | None = None
    train_config: dict[str, Any] | None = None


def run_federated_job(job: FederatedJob, grid: Grid, *, strategy: Strategy | None = None,
                      num_rounds: int | None = None, timeout: float = 3600,
                      deliver: Callable[[ArrayRecord, FederatedResult], None] | None = None) -> FederatedResult:
    """Run the job's rounds on ``grid`` (in-process, Ray or SuperLink) and return the sealed result."""
    inner = strategy or build_strategy(job.manifest)
    confidential = Confidential(inner, manifest=job.manifest, consents=job.consents, enclave=job.enclave,
                                events=job.events, deliver=deliver)
    rounds = int(num_rounds if num_rounds is not None else job.manifest.training.get("rounds", 3))
    return confidential.start(grid, job.initial_arrays, num_rounds=rounds, timeout=timeout,
                              train_config=ConfigRecord(dict(job.train_config or {})))


def make_server_app(get_job: Callable[[Context], FederatedJob],
                    on_result: Callable[[FederatedResult], None] | None = None) -> ServerApp:
    """A Flower ServerApp that runs ``get_job(context)`` confidentially; the plaintext model never leaves it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_federated_job(get_job(context), grid)
        log.info("federated job finished: %s rounds, %s", result.rounds_completed, result.stop_reason)
        if on_result is not None:
            on_result(result)

    return app


def consents_for(manifest: JobManifest, consents: Iterable[Consent]) -> list[Consent]:
    """Only this job's consents (the enclave keeps consents for many jobs)."""
    return [c for c in consents if c.job_id == manifest.job_id]
