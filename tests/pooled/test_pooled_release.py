"""What a pooled job releases beyond its recipients: public metrics, failure messages, propose-time refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mpctrain.enclave.pooled import DP_NOTE, WITHHELD, ValidationTooSmall
from mpctrain.party.errors import InvalidArgument
from mpctrain.train import registry
from pooled_kit import FAST_TRAINING, run_job

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
CODES = {"label": "code", "features": ["f1", "f2"]}


def _propose(cluster, job_id, data=None, **over):
    m = cluster.manifest(job_id, parties=list(HOSPITALS), **{"training": FAST_TRAINING, **over})
    agents = {p: cluster.agent(p, data=(data or {}).get(p)) for p in HOSPITALS}
    agents["hospital-a"].client.propose(m)
    return m, agents


def _run(m, agents):
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    for ag in agents.values():
        ag.upload(m)
    a = agents["hospital-a"]
    a.wait(m.job_id, ("done",), timeout=120)
    return a.client.get_job(m.job_id)


def _events(cluster, job_id, kind):
    return [f for k, f in cluster.events.events if k == kind and f.get("job_id") == job_id]


def _sig4(x):
    return float(f"{x:.4g}")


@pytest.fixture
def coded_tables(tmp_path):
    """c_error_leak's tables: labels 0..3, and one hospital-c patient with the rare code 41 (no label_values)."""
    rng = np.random.default_rng(1)
    paths = {}
    for p in HOSPITALS:
        codes = rng.integers(0, 4, 60)
        codes[0] = 41 if p == "hospital-c" else 3
        paths[p] = tmp_path / f"{p}.csv"
        pd.DataFrame({"code": codes, "f1": rng.normal(size=60), "f2": rng.normal(size=60)}).to_csv(paths[p],
                                                                                                  index=False)
    return paths


def test_dp_job_releases_only_the_privacy_accounting(cluster):
    """b_dp_public_metric: under DP no validation metric, loss history or row count leaves the enclave."""
    m, agents = run_job(cluster, "dp-release", privacy={"epsilon": 8.0, "delta": 1e-5, "clip": 1.0},
                        schema={**cluster.manifest().schema, "label_values": [0, 1]},
                        training={k: v for k, v in FAST_TRAINING.items() if k != "val_fraction"},
                        public_metrics=["epsilon_spent"])
    doc = json.loads(agents["hospital-a"].fetch(m)["metrics"])
    assert not {"validation", "rows", "history"} & set(doc)
    assert doc["note"] == DP_NOTE
    eps = doc["privacy"]["epsilon_spent"]
    assert 0 < eps <= 8.0 + 1e-6 and doc["privacy"]["delta"] == 1e-5 and doc["privacy"]["steps"] > 0
    public = dict(agents["hospital-a"].client.get_job(m.job_id).public_metrics)
    assert public == {"epsilon_spent": _sig4(eps)}
    assert [f["metrics"] for f in _events(cluster, m.job_id, "training.finished")] == [public]
    assert [f["val_rows"] for f in _events(cluster, m.job_id, "training.data")] == [0]  # every row trains


def test_public_metrics_and_public_loss_are_rounded(cluster):
    public_names = ["accuracy", "auc", "f1", "loss", "train_loss"]
    m, agents = run_job(cluster, "rounded", public_metrics=public_names)
    a = agents["hospital-a"]
    exact = json.loads(a.fetch(m)["metrics"])["validation"]  # recipients get full precision
    public = dict(a.client.get_job(m.job_id).public_metrics)
    assert public == {k: _sig4(v) for k, v in exact.items()}
    assert public["loss"] != exact["loss"]  # the unrounded value has more digits than four
    assert [f["metrics"] for f in _events(cluster, m.job_id, "training.finished")] == [public]
    losses = [e.loss for e in a.client.watch(m.job_id, timeout=10) if e.kind == "epoch"]
    assert len(losses) == 3 and all(x == _sig4(x) for x in losses)


def test_too_few_validation_rows_fail_the_job_without_counts(cluster):
    """val_fraction 0.05 holds out ~6 of hospital-c's 119 rows: under MIN_VAL_ROWS_PER_PARTY."""
    m, agents = _propose(cluster, "few-val", training={**FAST_TRAINING, "val_fraction": 0.05},
                         public_metrics=["loss"])
    status = _run(m, agents)
    assert status.state == "failed"
    assert status.error == f"ValidationTooSmall: {ValidationTooSmall()}"
    assert not status.public_metrics


def test_settings_and_oversized_models_are_refused_at_propose(cluster, monkeypatch):
    with pytest.raises(InvalidArgument, match="manifest refused: ConfigError: training 'epochs'"):
        _propose(cluster, "bad-epochs", training={**FAST_TRAINING, "epochs": 0})
    with pytest.raises(InvalidArgument, match=r"unknown training setting\(s\) \['epoch'\]"):  # a typo is no default
        _propose(cluster, "typo", training={**FAST_TRAINING, "epoch": 50})
    # c_error_leak's model is too large at any class count: refused before any data
    with pytest.raises(InvalidArgument, match="manifest refused: ModelSpecError: mlp too large"):
        _propose(cluster, "huge", schema=CODES, model={"name": "mlp", "hidden": [65536, 4096]})
    # with label_values the manifest fixes the class count, and the size is checked at that count
    monkeypatch.setattr(registry, "MAX_PARAMETERS", 100)
    with pytest.raises(InvalidArgument, match="402 parameters"):  # 3*8 + 9*42
        _propose(cluster, "classes", schema={**CODES, "label_values": list(range(42))},
                 model={"name": "mlp", "hidden": [8]})
    assert "classes" not in {j.job_id for j in cluster.aggregator.store.list()}


def test_a_model_error_that_depends_on_the_data_is_withheld(cluster, monkeypatch, coded_tables):
    """c_error_leak: the class count comes from the data, so the model's size (in a ModelSpecError) would
    reveal the largest label; after the shards are opened only a fixed reason is shown."""
    monkeypatch.setattr(registry, "MAX_PARAMETERS", 100)  # 42 parameters at 2 classes, 402 at 42
    m, agents = _propose(cluster, "leak", data=coded_tables, schema=CODES, model={"name": "mlp", "hidden": [8]},
                         public_metrics=[])
    status = _run(m, agents)
    assert status.state == "failed"
    assert status.error == f"TrainingFailed: {WITHHELD}"
    assert [f["error"] for f in _events(cluster, m.job_id, "training.failed")] == ["TrainingFailed"]
