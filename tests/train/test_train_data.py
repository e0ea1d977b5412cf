"""Schema parsing, table reading, strict validation, shard encoding and the stratified split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpctrain.train.data import (
    DataError,
    SchemaError,
    TableSchema,
    load_schema,
    read_table,
    row_locator,
    stratified_split,
    table_from_bytes,
    table_to_bytes,
    validate,
)
from mpctrain.train.tensors import TensorFormatError, arrays_to_bytes

SCHEMA = TableSchema(label="label", features=("a", "b", "c"))


def frame(**overrides) -> pd.DataFrame:
    data = {"label": [0, 1, 1, 0], "a": [1.0, 2.0, 3.0, 4.0], "b": [0, 1, 0, 1], "c": [0.5, -0.5, 1.5, 2.5]}
    data.update(overrides)
    return pd.DataFrame(data)


# --- schema -------------------------------------------------------------------------------------------


def test_schema_from_dict_and_back():
    s = TableSchema.from_dict({"label": "y", "features": ["x1", "x2"]})
    assert s == TableSchema("y", ("x1", "x2"))
    assert s.num_classes is None
    assert TableSchema.from_dict(s.to_dict()) == s
    s2 = TableSchema.from_dict({"label": "y", "features": ["x"], "label_values": ["no", "yes"]})
    assert s2.num_classes == 2 and TableSchema.from_dict(s2.to_dict()) == s2


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"features": ["a"]}, "needs both"),
        ({"label": "y"}, "needs both"),
        ({"label": "y", "features": ["a"], "colour": 1}, "unknown schema key"),
        ({"label": "y", "features": "a"}, "list of column names"),
        ({"label": "y", "features": []}, "non-empty list"),
        ({"label": "y", "features": ["a", "a"]}, "more than once"),
        ({"label": "y", "features": ["a", "y"]}, "also listed as a feature"),
        ({"label": "", "features": ["a"]}, "non-empty column name"),
        ({"label": "y", "features": ["a", 3]}, "only non-empty strings"),
        ({"label": "y", "features": ["a"], "label_values": [1]}, "at least two"),
        ({"label": "y", "features": ["a"], "label_values": [1, "1"]}, "duplicates"),
        ({"label": "y", "features": ["a"], "label_values": "ab"}, "must be a list"),
        (["label"], "must be a mapping"),
    ],
)
def test_bad_schema_dicts(d, match):
    with pytest.raises(SchemaError, match=match):
        TableSchema.from_dict(d)


def test_load_schema_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_schema(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("label = [unclosed")
    with pytest.raises(SchemaError, match="not valid TOML"):
        load_schema(bad)
    good = tmp_path / "good.toml"
    good.write_text('label = "y"\nfeatures = ["a", "b"]\n')
    assert load_schema(good) == TableSchema("y", ("a", "b"))


# --- reading --------------------------------------------------------------------------------------------


def test_read_csv_and_parquet_give_same_arrays(tmp_path):
    df = frame()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet", engine="pyarrow")
    X1, y1 = validate(read_table(tmp_path / "t.csv"), SCHEMA)
    X2, y2 = validate(read_table(tmp_path / "t.parquet"), SCHEMA)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)


def test_read_table_errors(tmp_path):
    with pytest.raises(DataError, match="unsupported table format"):
        read_table(tmp_path / "t.xlsx")
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SchemaError, match="empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="cannot read"):
        read_table(tmp_path / "garbage.parquet")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(DataError, match="cannot read"):
        read_table(tmp_path / "ragged.csv")


# --- validation -----------------------------------------------------------------------------------------


def test_validate_returns_schema_order_and_dtypes():
    df = frame()[["c", "label", "b", "a"]]  # column order in the file does not matter
    X, y = validate(df, SCHEMA)
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X[:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(X[:, 2], [0.5, -0.5, 1.5, 2.5])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])


def test_validate_accepts_non_string_column_labels():
    df = pd.DataFrame({"label": [0, 1], 0: [1.0, 2.0], 1: [3.0, 4.0]})
    X, y = validate(df, TableSchema("label", ("0", "1")))
    np.testing.assert_array_equal(X, [[1, 3], [2, 4]])
    np.testing.assert_array_equal(y, [0, 1])


def test_validate_maps_label_values():
    schema = TableSchema("label", ("a", "b", "c"), label_values=("benign", "malignant"))
    _, y = validate(frame(label=["malignant", "benign", "benign", "malignant"]), schema)
    np.testing.assert_array_equal(y, [1, 0, 0, 1])
    numeric = TableSchema("label", ("a", "b", "c"), label_values=(0, 1))
    _, y2 = validate(frame(label=[1.0, 0.0, 1.0, 1.0]), numeric)
    np.testing.assert_array_equal(y2, [1, 0, 1, 1])


@pytest.mark.parametrize(
    ("df", "match"),
    [
        (frame().drop(columns=["b"]), r"missing column\(s\) \['b'\]"),
        (frame().assign(extra=1), r"not in the job's schema: \['extra'\]"),
        (frame(a=[1, "x", 3, 4]), "non-numeric value at row 2"),
        (frame(c=[1.0, 2.0, np.nan, 4.0]), "'c' has a missing or infinite value at row 3"),
        (frame(c=[1.0, np.inf, 2.0, 4.0]), "'c' has a missing or infinite value at row 2"),
        (frame(a=[1.0, 2.0, 1e39, 0.0]), "beyond float32"),
        (frame(b=[True, False, True, False]), "boolean"),
        (frame(label=[0, 1, 2.5, 0]), "unknown label at row 3"),
        (frame(label=[0, -1, 1, 0]), "unknown label at row 2"),
        (frame(label=[0, "yes", 1, 0]), "unknown label at row 2"),
        (frame(label=[0, None, 1, 0]), "missing value at row 2"),
        (frame().iloc[:0], "no rows"),
        (pd.DataFrame([[0, 1, 2, 3]], columns=["label", "a", "a", "c"]), "duplicate column"),
    ],
)
def test_validate_rejects(df, match):
    with pytest.raises(SchemaError, match=match) as err:
        validate(df, SCHEMA)
    assert "'x'" not in str(err.value) and "yes" not in str(err.value)  # rows are named, cells never quoted


def test_validate_rejects_unknown_label_value_and_non_frame():
    schema = TableSchema("label", ("a", "b", "c"), label_values=(0, 1))
    with pytest.raises(SchemaError, match=r"label outside label_values at row 1; allowed: \[0, 1\]"):
        validate(frame(label=[2, 0, 1, 0]), schema)
    with pytest.raises(SchemaError, match="DataFrame"):
        validate({"label": [0]}, SCHEMA)


def test_a_bad_cell_is_named_by_the_line_an_editor_shows(tmp_path):
    """Validation counted 0-based data rows ("row 3") where pandas' parse errors count file lines ("line 5"): both
    now name the line of the file, header included (Parquet, which has no lines, gets 1-based rows)."""
    df = frame(c=[1.0, 2.0, 3.0, 4.0])
    df["c"] = df["c"].astype(object)
    df.loc[2, "c"] = "n/a?"  # the third data row: line 4 of the CSV
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(SchemaError, match=r"'c' has a non-numeric value at line 4$"):
        validate(read_table(tmp_path / "t.csv"), SCHEMA, where=row_locator(tmp_path / "t.csv"))
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[3].endswith("n/a?")  # line 4, as an editor numbers it
    lines[3] += ",1"  # one field too many on line 4: pandas says the same line
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 4"):
        read_table(tmp_path / "t.csv")
    df.loc[2, "c"] = None
    df["c"] = df["c"].astype(float)
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(SchemaError, match="at row 3;"):
        validate(read_table(tmp_path / "t.parquet"), SCHEMA, where=row_locator(tmp_path / "t.parquet"))


def test_the_line_counts_blank_lines_and_fields_spanning_lines(tmp_path):
    """pandas skips blank lines and reads a quoted field across lines: the line named is still the editor's."""
    cols = ",".join([SCHEMA.label, *SCHEMA.features])
    good = ",".join(["0"] + ["1.5"] * len(SCHEMA.features))
    bad = ",".join(["0", "oops"] + ["1.5"] * (len(SCHEMA.features) - 1))
    text = f"\n{cols}\n{good}\n\n{good}\n\n{bad}\n"  # header on line 2, the bad cell on line 7
    (tmp_path / "t.csv").write_text(text)
    assert text.splitlines()[6] == bad
    with pytest.raises(SchemaError, match=r"at line 7$"):
        validate(read_table(tmp_path / "t.csv"), SCHEMA, where=row_locator(tmp_path / "t.csv"))
    assert row_locator(tmp_path / "missing.csv")(0) == "data row 1"


# --- shard bytes ----------------------------------------------------------------------------------------


def test_table_bytes_round_trip():
    X, y = validate(frame(), SCHEMA)
    X2, y2 = table_from_bytes(table_to_bytes(X, y), num_features=3, num_classes=2)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert X2.dtype == np.float32 and y2.dtype == np.int64


def test_table_to_bytes_refuses_bad_tables():
    with pytest.raises(SchemaError, match="4 feature rows but 3 labels"):
        table_to_bytes(np.zeros((4, 2)), np.zeros(3, dtype=int))
    with pytest.raises(SchemaError, match="NaN"):
        table_to_bytes(np.full((2, 2), np.nan), np.zeros(2, dtype=int))
    with pytest.raises(SchemaError, match="shape"):
        table_to_bytes(np.zeros(4), np.zeros(4, dtype=int))
    with pytest.raises(SchemaError, match="integer labels"):
        table_to_bytes(np.zeros((2, 2)), np.zeros(2))


def _arrays(X, y, fmt="mpctrain.table/1", **more):
    return arrays_to_bytes({"X": X, "y": y, **more}, metadata={"format": fmt} if fmt else None)


GOOD_X = np.ones((3, 2), dtype=np.float32)
GOOD_Y = np.array([0, 1, 0], dtype=np.int64)


@pytest.mark.parametrize(
    ("payload", "kwargs", "match"),
    [
        (_arrays(GOOD_X, GOOD_Y, fmt=None), {}, "not an mpctrain table"),
        (_arrays(GOOD_X, GOOD_Y, fmt="other/1"), {}, "not an mpctrain table"),
        (_arrays(GOOD_X, GOOD_Y, z=np.zeros(1)), {}, "exactly the arrays"),
        (_arrays(GOOD_X.astype(np.float64), GOOD_Y), {}, "dtypes"),
        (_arrays(GOOD_X, GOOD_Y.astype(np.int32)), {}, "dtypes"),
        (_arrays(GOOD_X, GOOD_Y[:2]), {}, "3 feature rows but 2 labels"),
        (_arrays(GOOD_X[:0], GOOD_Y[:0]), {}, "empty"),
        (_arrays(np.full((3, 2), np.inf, dtype=np.float32), GOOD_Y), {}, "infinite"),
        (_arrays(GOOD_X, np.array([0, -3, 1], dtype=np.int64)), {}, "negative"),
        (_arrays(GOOD_X, GOOD_Y), {"num_features": 3}, "has 2 features"),
        (_arrays(GOOD_X, np.array([0, 5, 1], dtype=np.int64)), {"num_classes": 2}, "only 2 classes"),
        (_arrays(GOOD_X, np.array([0, 10**9, 1], dtype=np.int64)), {}, "at most 65536 classes"),
        (_arrays(GOOD_X, GOOD_Y), {"max_bytes": 64}, "over the limit"),
        (_arrays(GOOD_X, GOOD_Y)[:-3], {}, "malformed"),
        (b"garbage", {}, "truncated"),
    ],
)
def test_table_from_bytes_rejects(payload, kwargs, match):
    with pytest.raises(TensorFormatError, match=match):
        table_from_bytes(payload, **kwargs)


# --- split ----------------------------------------------------------------------------------------------


def test_stratified_split_is_per_class_disjoint_and_seeded():
    y = np.array([0] * 50 + [1] * 20 + [2] * 10)
    X = np.arange(len(y), dtype=np.float32).reshape(-1, 1)
    s = stratified_split(X, y, 0.2, seed=1)
    assert [int((s.y_val == c).sum()) for c in range(3)] == [10, 4, 2]
    ids = np.concatenate([s.X_train[:, 0], s.X_val[:, 0]])
    assert sorted(ids.tolist()) == list(range(len(y)))  # disjoint and complete
    again = stratified_split(X, y, 0.2, seed=1)
    np.testing.assert_array_equal(s.X_val, again.X_val)
    other = stratified_split(X, y, 0.2, seed=2)
    assert not np.array_equal(s.X_val, other.X_val)


def test_stratified_split_keeps_small_classes_on_both_sides():
    y = np.array([0] * 30 + [1, 1] + [2])
    s = stratified_split(np.zeros((len(y), 1)), y, 0.1, seed=0)
    assert set(s.y_train.tolist()) == {0, 1, 2}  # the single-row class is trained on
    assert (s.y_val == 1).sum() == 1  # two rows: one each side
    assert len(stratified_split(np.zeros((4, 1)), np.array([0, 0, 1, 1]), 0.0, seed=0).y_val) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2])
def test_stratified_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(np.zeros((4, 1)), np.zeros(4), fraction, seed=0)


# --- properties -----------------------------------------------------------------------------------------

finite32 = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.data())
def test_validate_and_shard_round_trip_any_numeric_table(rows, cols, data):
    X = data.draw(arrays(np.float32, (rows, cols), elements=finite32))
    y = data.draw(arrays(np.int64, rows, elements=st.integers(0, 3)))
    names = tuple(f"f{j}" for j in range(cols))
    df = pd.DataFrame(X, columns=list(names)).assign(target=y)
    X2, y2 = validate(df, TableSchema("target", names))
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    X3, y3 = table_from_bytes(table_to_bytes(X2, y2), num_features=cols, num_classes=4)
    np.testing.assert_array_equal(X3, X)
    np.testing.assert_array_equal(y3, y)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 20), st.integers(0, 2), st.sampled_from(["abc", None, float("inf"), "1,5"]), st.data())
def test_one_bad_cell_is_reported_with_its_column_and_row(rows, col, bad, data):
    row = data.draw(st.integers(0, rows - 1))
    df = pd.DataFrame({"label": [0] * rows, "a": [1.0] * rows, "b": [2.0] * rows, "c": [3.0] * rows})
    name = "abc"[col]
    df[name] = df[name].astype(object)
    df.loc[row, name] = bad
    with pytest.raises(SchemaError, match=rf"'{name}' has .* at row {row + 1}\b"):
        validate(df, SCHEMA)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.floats(0.0, 0.9), st.integers(0, 2**32))
def test_stratified_split_properties(labels, fraction, seed):
    y = np.array(labels)
    X = np.arange(len(y)).reshape(-1, 1)
    s = stratified_split(X, y, fraction, seed)
    ids = np.concatenate([s.X_train[:, 0], s.X_val[:, 0]])
    assert sorted(ids.tolist()) == list(range(len(y)))
    np.testing.assert_array_equal(y[s.X_train[:, 0]], s.y_train)
    for c in np.unique(y):
        n_c, v_c = int((y == c).sum()), int((s.y_val == c).sum())
        assert (s.y_train == c).sum() >= 1  # every class is trained on
        if n_c >= 2 and fraction > 0:
            assert 1 <= v_c <= max(1, round(fraction * n_c))
        if fraction == 0:
            assert v_c == 0
