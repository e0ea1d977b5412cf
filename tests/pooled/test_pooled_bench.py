"""scripts/bench_ingest.py keeps working (tiny payload): both paths complete and the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_ingest.py"


def test_bench_ingest_runs():
    res = subprocess.run([sys.executable, str(SCRIPT), "--mib", "4", "--rounds", "1", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["payload_mib"] == 4 and report["plain_mib_s"] > 0 and report["sealed_mib_s"] > 0
    assert report["aggregator_peak_growth_mib"] < 4 + 64
