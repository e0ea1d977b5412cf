"""scripts/bench_federated.py keeps working (two parties, two rounds): every figure of its report is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_federated.py"


def test_bench_federated_reports_every_figure():
    res = subprocess.run([sys.executable, str(SCRIPT), "--parties", "2", "--rounds", "2", "--repeats", "1",
                          "--local-steps", "0", "--no-warmup", "--breakdown", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(res.stdout[res.stdout.index("["):])
    assert row["parties"] == 2
    for key in ("round_ratio", "aggregation_speedup_after_last_reply"):
        assert row[key] > 0
    # a difference of two timed rounds: either sign under load, but exactly that difference per party
    extra = row["confidential"]["round_s"] - row["plain"]["round_s"]
    assert row["overhead_per_party_s"] == extra / 2
    floor = row["floor"]
    assert 0 < floor["aes_pass_s"] < floor["party_s"]  # the protocol's floor holds three AES passes and more
    assert 1 < row["bare_aes_ratio"] <= row["protocol_floor_ratio"]
    assert {"party: open the instruction", "enclave: open a reply"} <= set(row["breakdown_ms"])
