"""Session-scoped key set for the sealing tests (key generation is the slow part)."""

from __future__ import annotations

import pytest
from seal_helpers import Parties, make_parties


@pytest.fixture(scope="session")
def parties() -> Parties:
    return make_parties()
