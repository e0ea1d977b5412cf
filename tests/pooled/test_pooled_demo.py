"""`mpctrain demo` runs the whole pooled job and reports pooled next to alone metrics."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from mpctrain.cli.main import app
from mpctrain.sim.demo import run_demo

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_reports(tmp_path):
    out = io.StringIO()
    summary = run_demo(workdir=tmp_path, console=Console(file=out, width=160), epochs=5)
    text = out.getvalue()
    assert summary["state"] == "done"
    assert text.count("│ verified") == 3
    assert "sealed uploads" in text and "epoch   5" in text
    assert set(summary["alone"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert summary["pooled"]["accuracy"] > 0.85
    for pid, where in summary["outputs"].items():
        assert (tmp_path / pid / "outputs" / "hospitals-pooled" / "model.safetensors").is_file()
        assert where.endswith("hospitals-pooled")
    assert "training.finished" in summary["events"]


def test_demo_writes_under_out_or_the_current_directory(tmp_path, monkeypatch):
    import mpctrain.sim.demo as demo_mod
    from mpctrain.sim.demo import DEFAULT_OUT, _workdir

    monkeypatch.chdir(tmp_path)
    assert _workdir() == tmp_path / DEFAULT_OUT  # ./out/demo wherever it runs, not the source checkout's
    seen = []
    monkeypatch.setattr(demo_mod, "run_demo", lambda workdir=None, **kw: seen.append(workdir))
    runner = CliRunner()
    assert runner.invoke(app, ["demo", "--out", "elsewhere"]).exit_code == 0
    assert runner.invoke(app, ["demo"]).exit_code == 0
    assert seen == [Path("elsewhere"), None]
    res = runner.invoke(app, ["demo", "--mode", "federated", "--out", "x"])
    assert res.exit_code == 2 and "writes nothing to disk" in res.output


def test_demo_without_the_example_data_names_what_is_missing(tmp_path):
    """A non-editable install ships the package without examples/: the demo says so instead of a traceback."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "mpctrain", site / "mpctrain", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    cmd = [sys.executable, "-c", "from mpctrain.cli.main import app; app()", "demo", "--out", "demo-out"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    said = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1, said
    assert f"the demo's example data is missing: {site / 'examples' / 'hospitals_pooled' / 'job.toml'}" in said
    assert "pip install -e ." in said and "Traceback" not in said
    assert not (tmp_path / "demo-out").exists()  # checked before any key or enclave is made
    res = subprocess.run([*cmd[:4], "--mode", "federated"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    said = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1 and "example app is missing" in said and "Traceback" not in said, said


def test_demo_leaves_a_log_another_run_is_writing(tmp_path):
    """A second demo on the same --out used to delete the audit log a running one was still writing (every
    writer holds an exclusive flock on its log, as the aggregator's AuditLog does)."""
    import fcntl

    import pytest

    from mpctrain.sim.demo import DemoError

    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":0}\n')
    with open(path, "ab") as running:
        fcntl.flock(running.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DemoError, match="being written by another demo or aggregator"):
            run_demo(workdir=tmp_path, console=Console(file=io.StringIO(), width=160), epochs=1)
        assert path.read_bytes() == b'{"seq":0}\n'
