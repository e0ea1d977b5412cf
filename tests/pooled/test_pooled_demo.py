"""`mpctrain demo` runs the whole pooled job and reports pooled next to alone metrics."""

from __future__ import annotations

import io

from rich.console import Console

from mpctrain.sim.demo import run_demo


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
