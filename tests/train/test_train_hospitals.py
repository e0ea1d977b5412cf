"""The bundled hospital data: valid, disjoint, skewed, reproducible, and pooling clearly helps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mpctrain.train.data import load_schema, read_table, table_from_bytes, table_to_bytes, validate
from mpctrain.train.loop import TrainConfig, compare_alone_vs_pooled

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "hospitals_pooled" / "data"
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
DEMO_CONFIG = TrainConfig(epochs=20, batch_size=32, lr=0.01, seed=0)


@pytest.fixture(scope="module")
def tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    schema = load_schema(DATA / "schema.toml")
    return {h: validate(read_table(DATA / f"{h}.csv"), schema) for h in HOSPITALS}


def test_schema_has_label_and_30_snake_case_features():
    schema = load_schema(DATA / "schema.toml")
    assert schema.label == "diagnosis"
    assert len(schema.features) == 30
    assert all(f == f.lower() and " " not in f for f in schema.features)
    assert "mean_radius" in schema.features and "worst_concave_points" in schema.features


def test_tables_are_disjoint_sized_and_label_skewed(tables):
    sizes = [len(tables[h][1]) for h in HOSPITALS]
    assert sizes == [260, 190, 119]
    rows = np.concatenate([np.column_stack([X, y]) for X, y in tables.values()])
    assert len(np.unique(rows, axis=0)) == 569  # every row of the data set exactly once
    shares = [float(tables[h][1].mean()) for h in HOSPITALS]
    assert shares[0] > 0.5 and shares[2] < 0.2  # malignant prevalence differs strongly
    mean_area = [float(np.median(tables[h][0][:, 3])) for h in HOSPITALS]
    assert mean_area == sorted(mean_area, reverse=True)  # feature skew: smaller tumours at smaller sites


def test_shards_round_trip(tables):
    X, y = tables["hospital-c"]
    X2, y2 = table_from_bytes(table_to_bytes(X, y), num_features=30, num_classes=2)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


def test_generator_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_hospital_data", ROOT / "scripts" / "make_hospital_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    df, features = module.load()
    module.write(tmp_path, module.partition(df), features)
    for name in [*(f"{h}.csv" for h in HOSPITALS), "schema.toml"]:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_pooled_model_beats_the_small_hospitals_alone(tables):
    lines: list[str] = []
    comparison = compare_alone_vs_pooled(tables, {"name": "logreg"}, DEMO_CONFIG, device="cpu", out=lines.append)
    assert "pooled" in lines[0] and "hospital-c alone" in lines[0]
    assert comparison.val_rows == 114
    assert comparison.train_rows["pooled"] == sum(comparison.train_rows[h] for h in HOSPITALS)
    assert comparison.margin("hospital-b") >= 0.03
    assert comparison.margin("hospital-c") >= 0.10
    assert comparison.margin("hospital-c", "f1") >= 0.10
    for h in HOSPITALS:
        assert comparison.margin(h) >= 0 and comparison.margin(h, "loss") <= 0
