"""The banks example's one-machine deployment walkthrough, run verbatim from its README.

Every role as its own process: a TLS SuperLink, the aggregator serving federated jobs through it, the
researcher's proposal, four approvals, four SuperNodes in process isolation with the banks' executors,
``flwr run``, ``job fetch`` and a bank's ``fl-audit``. It runs in a copy of the example and the profiles,
so the checkout is left as it was; the documented commands are the ones tested.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from walkthrough import run_block

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "banks_federated" / "README.md"

pytestmark = pytest.mark.slow


def _script() -> str:
    text = README.read_text()
    start = text.index("```sh\n", text.index("## Deployment on one machine")) + len("```sh\n")
    return text[start:text.index("```", start)]


def test_the_documented_deployment_runs_as_written(tmp_path):
    work, returncode, out = run_block(tmp_path, _script(), timeout=420)
    assert returncode == 0, out[-4000:]
    metrics = json.loads((work / "out" / "results" / "banks-federated" / "metrics.json").read_text())
    assert metrics["rounds"] == 5 and metrics["stop_reason"] == "completed"
    assert abs(metrics["evaluate"]["5"]["accuracy"] - 0.8625) < 1e-9  # the demo's model, in deployment
    assert "10 update(s) of bank-a on record, all sent by" in " ".join(out.split())  # fl-audit
    for bank in "abcd":  # each executor reports its tasks once the script's `kill` has stopped it
        log = work / "out" / f"exec-{bank}.log"
        deadline = time.monotonic() + 30
        while "stopped after" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "stopped after 10 task(s), 0 refused" in log.read_text()
