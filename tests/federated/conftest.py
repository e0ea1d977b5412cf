"""Fixtures for federated-mode tests; the builders live in ``fedkit``."""

from __future__ import annotations

import pytest
from fedkit import Job, build_job

from mpctrain.attest.sim import SimAttester, SimRoot


@pytest.fixture(scope="session")
def sim_root() -> SimRoot:
    return SimRoot.generate()


@pytest.fixture(scope="session")
def sim_attester(sim_root: SimRoot) -> SimAttester:
    return SimAttester(sim_root, config_digest=b"\x07" * 32)


@pytest.fixture
def job(sim_root: SimRoot, sim_attester: SimAttester) -> Job:
    return build_job(sim_root, sim_attester)
