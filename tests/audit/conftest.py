"""Fixtures for the audit tests; builders live in ``auditkit`` (tests/audit is on sys.path, as for pooled)."""

from __future__ import annotations

import pytest
from auditkit import Sim

from mpctrain.attest.sim import SimAttester, SimRoot


@pytest.fixture(scope="session")
def sim() -> Sim:
    root = SimRoot.generate()
    return Sim(root, SimAttester(root, config_digest=b"\x07" * 32))
