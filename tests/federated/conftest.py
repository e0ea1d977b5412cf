"""Fixtures for federated-mode tests; the builders live in ``fedkit``."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from fedkit import Job, build_job, initial_arrays, toy_app

from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.federated.runner import FederatedRunner
from mpctrain.enclave.server import Aggregator
from mpctrain.party.flower import ConfidentialMod
from mpctrain.party.flower.attestation import GrpcEvidenceSource


@pytest.fixture(scope="session")
def sim_root() -> SimRoot:
    return SimRoot.generate()


@pytest.fixture(scope="session")
def sim_attester(sim_root: SimRoot) -> SimAttester:
    return SimAttester(sim_root, config_digest=b"\x07" * 32)


@pytest.fixture
def job(sim_root: SimRoot, sim_attester: SimAttester) -> Job:
    return build_job(sim_root, sim_attester)


@pytest.fixture
def served(sim_root, sim_attester, tmp_path):
    """(job, aggregator, port, start): ``start(consents)`` adds the job and those consents."""
    job = build_job(sim_root, sim_attester, n=3, rounds=2)
    agg = Aggregator(job.enclave, audit_log=tmp_path / "audit.jsonl")
    port = agg.start()
    grid = job.grid(lambda p, i: toy_app(0.1 * (i + 1), 10 + i, mod=ConfidentialMod(job.runtime(p))))
    agg.store.runners["federated"] = FederatedRunner(job.enclave, agg.events,
                                                     grid_for=lambda j: nullcontext(grid),
                                                     initial_arrays=lambda j, g: initial_arrays())
    for p in job.parties:  # the banks attest the served enclave over gRPC, like a SuperNode's mod does
        job.runtime(p).evidence = GrpcEvidenceSource(f"127.0.0.1:{port}")

    def start(consents):
        stored = agg.store.add(job.manifest, job.manifest.to_bytes())
        for c in consents:
            agg.store.add_consent(stored, c)
        return stored

    yield job, agg, port, start
    agg.stop()
