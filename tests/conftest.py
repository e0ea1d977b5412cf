"""Shared fixtures: paths to the vendor evidence in ../shared/vectors and a fixed verification time."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"
VECTOR_TIME = datetime(2026, 11, 22, tzinfo=UTC)


@pytest.fixture(scope="session")
def vectors() -> Path:
    assert VECTORS.is_dir(), f"vendor evidence expected at {VECTORS}"
    return VECTORS


@pytest.fixture(scope="session")
def vector_time() -> datetime:
    return VECTOR_TIME
