"""The training benchmark compares like with like: fit and the plain loop end with identical weights."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from mpctrain.train.data import table_to_bytes
from mpctrain.train.loop import TrainConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_and_plain_loop_agree_bit_for_bit():
    bench = _load()
    X, y = bench.make_data(500, 5, seed=1)
    spec = {"name": "mlp", "hidden": [8], "seed": 3}
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-2, seed=4)
    cpu = torch.device("cpu")
    _, fitted = bench.run_fit(table_to_bytes(X, y), spec, config, cpu)
    _, plain = bench.run_plain(X, y, spec, config, cpu)
    assert fitted.keys() == plain.keys()
    assert all(torch.equal(fitted[k], plain[k]) for k in fitted)


def test_cli_reports_ratio_and_identity(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench_train.py", "--rows", "300", "--reps", "2", "--hidden", "", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    _load().main()
    result = json.loads(out.read_text())
    assert result["weights_identical"] is True and result["model"]["name"] == "logreg"
    assert result["steps_per_epoch"] == 3
    assert result["wall"]["ratio_of_medians"] > 0 and result["cpu"]["fit_median_s"] > 0
    assert "weights identical: True" in capsys.readouterr().out


def test_cli_refuses_missing_device_with_a_message(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--device", "tpu"])
    try:
        _load().main()
    except SystemExit as exc:
        assert "unknown device 'tpu'" in str(exc.code)
    else:
        raise AssertionError("an unknown device must stop the benchmark")
