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


def test_another_name_for_the_log_is_refused_while_it_is_written(sim, tmp_path):
    """The lock is on the log itself: a hard link reaches the same file and is refused as in use; a symbolic
    link is refused outright. Before, each name had its own `<name>.lock`, both writers appended, and the
    chain broke ("expected seq 2, found 1")."""
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, sim.enclave())
    first.emit("aggregator.started", address="127.0.0.1:1")
    hard, soft = tmp_path / "hard.jsonl", tmp_path / "soft.jsonl"
    os.link(path, hard)
    soft.symlink_to(path.name)
    before = path.read_bytes()
    with pytest.raises(AuditLogInUse) as info:
        AuditLog(hard, sim.enclave())
    assert info.value.pid == os.getpid() and "hard.jsonl is in use by another aggregator" in str(info.value)
    with pytest.raises(AuditWriteError, match=r"soft\.jsonl is a symbolic link \(to audit\.jsonl\); set audit_log "
                                              "to the file itself") as info:
        AuditLog(soft, sim.enclave())
    assert not isinstance(info.value, AuditLogInUse)
    assert path.read_bytes() == before  # neither refused writer signed anything
    first.emit("aggregator.stopped")
    first.close()
    with pytest.raises(AuditWriteError, match="symbolic link"):
        AuditLog(soft, sim.enclave())  # refused even with no writer: the path must name the file written
    assert len(verify_log(read_lines(path), sim.policy()).records) == 3


def test_the_writer_appends_through_its_locked_descriptor(sim, tmp_path):
    """The file locked is the file written: moved aside while open, the log keeps its whole chain, and a new
    writer at the path starts a log of its own. The descriptor is close-on-exec (a child keeps no lock)."""
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, sim.enclave())
    moved = tmp_path / "audit.old.jsonl"
    path.rename(moved)
    first.emit("aggregator.stopped")
    with AuditLog(path, sim.enclave()) as second:
        second.emit("aggregator.stopped")
        assert not os.get_inheritable(second._fd)
    first.close()
    assert len(verify_log(read_lines(moved), sim.policy()).records) == 2
    assert len(verify_log(read_lines(path), sim.policy()).records) == 2


def test_a_fifo_at_the_log_path_is_refused_not_waited_on(sim, tmp_path):
    import threading

    path = tmp_path / "audit.jsonl"
    os.mkfifo(path)
    caught: list[BaseException] = []

    def open_log() -> None:
        try:
            AuditLog(path, sim.enclave())
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=open_log, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the stuck open before failing
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        pytest.fail("opening a FIFO as the audit log hung")
    assert len(caught) == 1 and isinstance(caught[0], AuditWriteError), caught
    assert "audit.jsonl is not a regular file" in str(caught[0])
