"""One writer per audit log: a second aggregator on the same config would interleave two chains in one file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from auditkit import read

from mpctrain.enclave.audit import AuditLog, AuditLogInUse, AuditWriteError, read_lines, verify_log

ROOT = Path(__file__).resolve().parents[2]


def test_second_writer_in_one_process_is_refused_until_the_first_closes(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, sim.enclave())
    first.emit("aggregator.started", address="127.0.0.1:1")
    before = path.read_bytes()
    with pytest.raises(AuditLogInUse) as info:
        AuditLog(path, sim.enclave())
    assert info.value.pid == os.getpid()
    assert f"is in use by another aggregator (pid {os.getpid()})" in str(info.value)
    assert path.read_bytes() == before  # the refused writer signed nothing
    first.emit("aggregator.stopped")
    first.close()
    with pytest.raises(AuditWriteError, match="closed"):
        first.emit("job.proposed", job_id="late")  # a closed writer no longer owns the file
    with AuditLog(path, sim.enclave()) as second:
        second.emit("aggregator.stopped")
    report = verify_log(read_lines(path), sim.policy())
    assert [r.seq for _, r in report.records] == list(range(len(read(path))))
    assert len(report.segments) == 2


def test_second_aggregator_process_fails_before_binding(sim, tmp_path):
    path = tmp_path / "out" / "audit.jsonl"
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nattester = "sim"\ndevice = "cpu"\naudit_log = "out/audit.jsonl"\n'
                   '[sim]\nroot_dir = "sim-root"\n')
    held = AuditLog(path, sim.enclave())  # the first aggregator, still running
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-c", "from mpctrain.cli.main import app; app()", "aggregator", "serve", "--config",
         "aggregator.toml"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1, out
    assert f"error: audit log out/audit.jsonl is in use by another aggregator (pid {os.getpid()})" in out
    assert "Traceback" not in out and "serving" not in out
    assert path.read_bytes() == before
    held.close()
