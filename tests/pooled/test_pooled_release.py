"""What a pooled job releases beyond its recipients: public metrics, failure messages, propose-time refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpctrain.enclave.pooled import (
    DP_NOTE,
    MIN_VAL_ROWS,
    MIN_VAL_ROWS_PER_PARTY,
    WITHHELD,
    ValidationTooSmall,
    own_shard_floor,
    pool_shards,
)
from mpctrain.party.agent import load_table
from mpctrain.party.errors import InvalidArgument
from mpctrain.train import registry
from mpctrain.train.data import SchemaError, table_to_bytes
from pooled_kit import FAST_TRAINING, run_job

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "examples" / "hospitals_pooled" / "data"
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


DP_PRIVACY = {"epsilon": 8.0, "delta": 1e-5, "clip": 1.0, "sample_rate": 0.05}
DP_TRAINING = {k: v for k, v in FAST_TRAINING.items() if k != "val_fraction"}


def _dp_job(cluster, job_id, data=None):
    m, agents = run_job(cluster, job_id, data=data, privacy=DP_PRIVACY,
                        schema={**cluster.manifest().schema, "label_values": [0, 1]}, training=DP_TRAINING,
                        public_metrics=["epsilon_spent"])
    return m, agents, json.loads(agents["hospital-a"].fetch(m)["metrics"])


def _ints(value):
    """Every integer in an event field, nested lists and dicts included."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _ints(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _ints(v)


def test_dp_job_releases_only_the_privacy_accounting(cluster):
    """b_dp_public_metric: under DP no validation metric, loss history or row count leaves the enclave."""
    m, agents, doc = _dp_job(cluster, "dp-release")
    assert not {"validation", "rows", "history"} & set(doc)
    assert doc["note"] == DP_NOTE
    eps = doc["privacy"]["epsilon_spent"]
    assert 0 < eps <= 8.0 + 1e-6 and doc["privacy"]["delta"] == 1e-5 and doc["privacy"]["steps"] > 0
    assert doc["privacy"]["sample_rate"] == 0.05
    public = dict(agents["hospital-a"].client.get_job(m.job_id).public_metrics)
    assert public == {"epsilon_spent": _sig4(eps)}
    assert [f["metrics"] for f in _events(cluster, m.job_id, "training.finished")] == [public]
    # the host's view (events, i.e. the audit log and the logs) names no row count: no field, no value
    host = [(k, f) for k, f in cluster.events.events if f.get("job_id") == m.job_id]
    assert [k for k, _ in host].count("training.data") == 1
    assert not [(k, name) for k, f in host for name in f if "rows" in name]
    rows = {p: len(pd.read_csv(EXAMPLE_DATA / f"{p}.csv")) for p in HOSPITALS}
    counts = {*rows.values(), sum(rows.values())}
    assert not [(k, f) for k, f in host if counts & set(_ints(f))]


def test_dp_accounting_is_the_same_whatever_the_row_count(cluster, tmp_path):
    """The sampling rate, and so the noise, the steps and ε, come from the manifest: the same manifest on about
    half the rows releases exactly the same accounting (derived from n, each of them would publish n)."""
    halves = {}
    for p in HOSPITALS:
        table = pd.read_csv(EXAMPLE_DATA / f"{p}.csv")
        halves[p] = tmp_path / f"{p}.csv"
        table.iloc[: len(table) // 2].to_csv(halves[p], index=False)
    full = _dp_job(cluster, "dp-rows-all")[2]["privacy"]
    half = _dp_job(cluster, "dp-rows-half", data=halves)[2]["privacy"]
    assert full == half
    assert full["steps"] == DP_TRAINING["epochs"] * 20  # round(1 / 0.05) steps an epoch, fixed by the manifest


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


@pytest.mark.parametrize("quorum", [1, 2])
def test_a_party_checks_its_own_validation_floor_as_the_enclave_will(cluster, quorum):
    """`party run` refuses before consenting exactly the shards the enclave's floors would fail after every upload
    (per party; overall too when the quorum is one shard); it reports its own count, to itself only."""
    parties = ["hospital-b", "hospital-c"][:quorum]
    m = cluster.manifest("floor", parties=parties, quorum=quorum, training=FAST_TRAINING)
    X, y = load_table(EXAMPLE_DATA / "hospital-b.csv", m)
    others = {"hospital-c": table_to_bytes(X, y)} if quorum == 2 else {}
    verdicts = set()
    for n in range(20, 140, 3):
        local = own_shard_floor(y[:n], m)
        try:
            pool_shards({**others, "hospital-b": table_to_bytes(X[:n], y[:n])}, m.schema, 0.2, 7,
                        min_val_rows=MIN_VAL_ROWS, min_val_rows_per_party=MIN_VAL_ROWS_PER_PARTY)
            enclave_ok = True
        except ValidationTooSmall:
            enclave_ok = False
        assert (local is None) == enclave_ok, n
        verdicts.add(enclave_ok)
        if local is not None:
            assert f"of this table's {n} rows" in local and "val_fraction" in local
    assert verdicts == {True, False}  # the range crosses the floor
    dp = cluster.manifest("floor-dp", parties=parties, quorum=quorum, privacy=DP_PRIVACY, training=DP_TRAINING,
                          public_metrics=["epsilon_spent"], schema={**m.schema, "label_values": [0, 1]})
    assert own_shard_floor(y[:5], dp) is None  # a DP job holds nothing out


def test_a_public_metric_the_job_cannot_compute_is_reported_not_dropped(cluster, tmp_path):
    """One label typed 7 for 1 in a schema without label_values trains an 8-class model, which has no auc: the job
    says so (watch event, audit record, the recipients' metrics, `job status`) with a fixed reason, not silently."""
    from typer.testing import CliRunner

    from mpctrain.cli.main import app
    from mpctrain.enclave.audit import summarize
    from mpctrain.enclave.audit.record import AuditRecord
    from mpctrain.party.profile import policy_toml

    table = pd.read_csv(EXAMPLE_DATA / "hospital-c.csv")
    table.loc[3, "diagnosis"] = 7
    table.to_csv(tmp_path / "c.csv", index=False)
    loose = {k: v for k, v in cluster.manifest().schema.items() if k != "label_values"}
    m, agents = run_job(cluster, "typo-label", data={"hospital-c": tmp_path / "c.csv"}, schema=loose,
                        public_metrics=["accuracy", "auc"])
    a = agents["hospital-a"]
    status = a.client.get_job(m.job_id)
    assert "accuracy" in status.public_metrics and "auc" not in status.public_metrics
    reason = "auc is defined only for two classes, both present among the validation rows; pin [schema] label_values"
    [event] = [e for e in a.client.watch(m.job_id, timeout=10) if e.kind == "metrics"]
    assert event.message.startswith(f"auc not computed: {reason}")
    assert [f.get("unavailable") for f in _events(cluster, m.job_id, "training.finished")] == [["auc"]]
    assert json.loads(a.fetch(m)["metrics"])["unavailable"]["auc"].startswith(reason)
    records = [(n, AuditRecord.from_line(line.rstrip(b"\n"))) for n, line in
               enumerate((cluster.workdir / "audit.jsonl").read_bytes().splitlines(keepends=True), 1)]
    assert summarize(records)["typo-label"].unavailable == ["auc"]
    (tmp_path / "policy.toml").write_text(policy_toml(cluster.enclave_policy()))
    (tmp_path / "party.toml").write_text(f'id = "hospital-a"\naggregator = "{cluster.target}"\n'
                                         f'keys_dir = "{cluster.parties["hospital-a"].dir / "keys"}"\n')
    res = CliRunner().invoke(app, ["job", "status", m.job_id, "--as", str(tmp_path / "party.toml")])
    flat = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 0 and "auc not computed: auc is defined only for two classes" in flat, res.output
    # with the classes pinned (the example schema now does), the typo is refused at its hospital instead
    with pytest.raises(SchemaError, match="outside label_values"):
        load_table(tmp_path / "c.csv", cluster.manifest("pinned"))


def test_public_metrics_a_pooled_job_cannot_compute_are_refused_at_propose(cluster):
    with pytest.raises(InvalidArgument, match=r"public_metrics \['acc'\] are not metrics of a pooled job"):
        _propose(cluster, "typo-metric", public_metrics=["acc"])
    three = {**cluster.manifest().schema, "label_values": [0, 1, 2]}
    with pytest.raises(InvalidArgument, match=r"auc, defined for two classes only, and .* lists 3"):
        _propose(cluster, "three-auc", schema=three, public_metrics=["auc"])


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
