"""Tabular data: schema, reading a party's table, strict validation, and the shard byte format.

A party validates its table against the job's schema *before* sealing it, so that a mistake is reported
where it can be fixed (the party's own premises) instead of inside the enclave. The enclave decodes the
shard with :func:`table_from_bytes`, which re-checks everything because it cannot trust the sender.
"""

from __future__ import annotations

import csv
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mpctrain.train.tensors import (
    DEFAULT_MAX_BYTES,
    TensorFormatError,
    arrays_from_bytes,
    arrays_to_bytes,
    read_metadata,
)

__all__ = [
    "MAX_CLASSES",
    "TABLE_FORMAT",
    "DataError",
    "SchemaError",
    "Split",
    "TableSchema",
    "load_schema",
    "read_table",
    "row_locator",
    "stratified_split",
    "table_from_bytes",
    "table_to_bytes",
    "validate",
]

TABLE_FORMAT = "mpctrain.table/1"
MAX_CLASSES = 1 << 16


class DataError(ValueError):
    """A table could not be read (missing file, unsupported format, unparsable content)."""


class SchemaError(DataError):
    """A table or schema does not match what the job declared; the message names the column/row to fix."""


@dataclass(frozen=True)
class TableSchema:
    """The columns a job trains on: one label column and an ordered tuple of numeric feature columns.

    ``label_values`` fixes the label encoding (class i is ``label_values[i]``); when it is None, labels must
    already be integers 0..K-1.
    """

    label: str
    features: tuple[str, ...]
    label_values: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise SchemaError("schema 'label' must be a non-empty column name")
        if not isinstance(self.features, tuple) or not self.features:
            raise SchemaError("schema 'features' must be a non-empty list of column names")
        if not all(isinstance(f, str) and f for f in self.features):
            raise SchemaError("schema 'features' must contain only non-empty strings")
        dup = sorted({f for f in self.features if self.features.count(f) > 1})
        if dup:
            raise SchemaError(f"schema lists feature column(s) more than once: {dup}")
        if self.label in self.features:
            raise SchemaError(f"label column {self.label!r} is also listed as a feature")
        if self.label_values is not None:
            if not isinstance(self.label_values, tuple) or len(self.label_values) < 2:
                raise SchemaError("schema 'label_values' must list at least two classes")
            if len({_label_key(v) for v in self.label_values}) != len(self.label_values):
                raise SchemaError(f"schema 'label_values' has duplicates: {list(self.label_values)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableSchema:
        """Build from a manifest's schema dict: ``{"label": str, "features": [str, ...], "label_values"?: [...]}``."""
        if not isinstance(d, Mapping):
            raise SchemaError(f"schema must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"label", "features", "label_values"})
        if unknown:
            raise SchemaError(f"unknown schema key(s) {unknown}; allowed: label, features, label_values")
        if "label" not in d or "features" not in d:
            raise SchemaError("schema needs both 'label' and 'features'")
        features = d["features"]
        if isinstance(features, str) or not isinstance(features, list | tuple):
            raise SchemaError("schema 'features' must be a list of column names")
        lv = d.get("label_values")
        if lv is not None and (isinstance(lv, str) or not isinstance(lv, list | tuple)):
            raise SchemaError("schema 'label_values' must be a list")
        return cls(label=d["label"], features=tuple(features), label_values=tuple(lv) if lv is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """Inverse of :meth:`from_dict` (plain lists, suitable for TOML/JSON)."""
        d: dict[str, Any] = {"label": self.label, "features": list(self.features)}
        if self.label_values is not None:
            d["label_values"] = list(self.label_values)
        return d

    @property
    def num_classes(self) -> int | None:
        """Number of classes when ``label_values`` fixes it, else None (inferred from the data)."""
        return None if self.label_values is None else len(self.label_values)


class Split(NamedTuple):
    """Training and validation parts of a table."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


def load_schema(path: str | Path) -> TableSchema:
    """Read a schema TOML file (top-level ``label``, ``features`` and optional ``label_values``)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise DataError(f"schema file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"schema file {p} is not valid TOML: {exc}") from None
    return TableSchema.from_dict(d)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a .csv or .parquet file into a DataFrame (no type coercion: :func:`validate` does the checking)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"unsupported table format {suffix or '(none)'!r} for {p}; use .csv or .parquet")
    if not p.is_file():
        raise DataError(f"table file not found: {p}")
    try:
        if suffix == ".csv":
            return pd.read_csv(p)
        return pd.read_parquet(p, engine="pyarrow")
    except pd.errors.EmptyDataError:
        raise SchemaError(f"table {p} is empty (no header, no rows)") from None
    except Exception as exc:  # parser errors from pandas / pyarrow: report them as unreadable data
        raise DataError(f"cannot read table {p}: {type(exc).__name__}: {exc}") from None


def row_locator(path: str | Path) -> Callable[[int], str]:
    """For :func:`validate`: where data row ``i`` (0-based, as pandas read it) is in the file, as its user looks
    for it: a CSV's line in an editor, a Parquet file's row counted from 1. pandas skips blank lines and a quoted
    field may span lines, so a CSV's line is found by re-reading the file with the csv module, only when an error
    is reported; if that fails, the 1-based data row is named instead."""
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        return lambda i: f"row {i + 1}"

    def blank(record: list[str]) -> bool:
        return not record or (len(record) == 1 and not record[0].strip())

    def where(i: int) -> str:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                seen_header, n, start = False, -1, 1
                for record in reader:
                    if not blank(record):
                        if not seen_header:
                            seen_header = True
                        else:
                            n += 1
                            if n == i:
                                return f"line {start}"
                    start = reader.line_num + 1
        except (OSError, UnicodeDecodeError, csv.Error):
            pass
        return f"data row {i + 1}"

    return where


def validate(df: pd.DataFrame, schema: TableSchema, *,
             where: Callable[[int], str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check ``df`` against ``schema`` and return ``(X float32 n x d, y int64)`` in the schema's feature order.

    Strict: missing or extra columns, non-numeric or non-finite feature values, missing or unknown labels and
    empty tables all raise :class:`SchemaError` naming the first offending column and where it is: ``where(i)``
    for data row ``i`` (:func:`row_locator` of the file: its line, as an editor counts it), else ``row N`` from 1.
    """
    if where is None:
        def where(i: int) -> str:
            return f"row {i + 1}"

    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"expected a pandas DataFrame, got {type(df).__name__}")
    columns = [str(c) for c in df.columns]
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise SchemaError(f"table has duplicate column(s) {dup}")
    expected = [schema.label, *schema.features]
    missing = [c for c in expected if c not in columns]
    if missing:
        raise SchemaError(f"table is missing column(s) {missing}; the job's schema requires them")
    extra = [c for c in columns if c not in expected]
    if extra:
        raise SchemaError(f"table has column(s) not in the job's schema: {extra}; drop them before uploading")
    if len(df) == 0:
        raise SchemaError("table has no rows")
    df = df.set_axis(columns, axis=1)  # e.g. integer column labels from a hand-built frame

    X = np.empty((len(df), len(schema.features)), dtype=np.float32)
    for j, name in enumerate(schema.features):
        X[:, j] = _numeric_column(df[name], name, where)
    y = _encode_labels(df[schema.label], schema, where)
    return X, y


def _numeric_column(col: pd.Series, name: str, where: Callable[[int], str]) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col.dtype):
        raise SchemaError(f"feature column {name!r} is boolean; encode it as 0/1 numbers")
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        # the row, never the value: error messages end up in logs, and a cell may hold a name or a record number
        raise SchemaError(f"feature column {name!r} has a non-numeric value at {where(row)}")
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    nonfinite = ~np.isfinite(arr)
    if nonfinite.any():
        row = int(np.flatnonzero(nonfinite)[0])
        raise SchemaError(f"feature column {name!r} has a missing or infinite value at {where(row)}; impute or drop it")
    if np.abs(arr).max(initial=0.0) > np.finfo(np.float32).max:
        raise SchemaError(f"feature column {name!r} has values beyond float32 range")
    return arr.astype(np.float32)


def _label_key(v: Any) -> str:
    """Comparable key for a label value: 1, 1.0, '1' and np.int64(1) are the same class."""
    if isinstance(v, bool | np.bool_):
        return str(int(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating) and math.isfinite(v) and float(v).is_integer():
        return str(int(v))
    s = str(v).strip()
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if math.isfinite(f) and f.is_integer() else s


def _encode_labels(col: pd.Series, schema: TableSchema, where: Callable[[int], str]) -> np.ndarray:
    name = schema.label
    missing = col.isna().to_numpy()
    if missing.any():
        raise SchemaError(f"label column {name!r} has a missing value at {where(int(np.flatnonzero(missing)[0]))}")
    if schema.label_values is not None:
        index = {_label_key(v): i for i, v in enumerate(schema.label_values)}
        keys = [_label_key(v) for v in col.tolist()]
        y = np.empty(len(keys), dtype=np.int64)
        for row, k in enumerate(keys):
            if k not in index:
                raise SchemaError(
                    f"label column {name!r} has a label outside label_values at {where(row)}; "
                    f"allowed: {list(schema.label_values)}"
                )
            y[row] = index[k]
        return y
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(values) & (values >= 0) & (np.floor(values) == values)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise SchemaError(
            f"label column {name!r} has an unknown label at {where(row)}; labels must be integers "
            "0..K-1, or set label_values in the schema"
        )
    return values.astype(np.int64)


def table_to_bytes(X: np.ndarray, y: np.ndarray) -> bytes:
    """Encode a validated table as safetensors (``X`` float32 n x d, ``y`` int64): the shard a party seals."""
    X, y = _check_table(np.asarray(X), np.asarray(y), num_features=None, num_classes=None, err=SchemaError)
    return arrays_to_bytes({"X": X, "y": y}, metadata={"format": TABLE_FORMAT})


def table_from_bytes(
    b: bytes,
    *,
    num_features: int | None = None,
    num_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and re-check a shard produced by :func:`table_to_bytes`; anything else raises TensorFormatError.

    Pass ``num_features`` / ``num_classes`` from the job's schema so a shard of the wrong width or with
    out-of-range labels is refused before training.
    """
    meta = read_metadata(b, max_bytes=max_bytes)
    if meta.get("format") != TABLE_FORMAT:
        raise TensorFormatError(f"not an mpctrain table: format is {meta.get('format')!r}, expected {TABLE_FORMAT!r}")
    arrays = arrays_from_bytes(b, max_bytes=max_bytes)
    if set(arrays) != {"X", "y"}:
        raise TensorFormatError(f"table must hold exactly the arrays 'X' and 'y', found {sorted(arrays)}")
    X, y = arrays["X"], arrays["y"]
    if X.dtype != np.float32 or y.dtype != np.int64:
        raise TensorFormatError(f"table dtypes must be X float32 and y int64, got {X.dtype} and {y.dtype}")
    return _check_table(X, y, num_features=num_features, num_classes=num_classes, err=TensorFormatError)


def _check_table(
    X: np.ndarray, y: np.ndarray, *, num_features: int | None, num_classes: int | None, err: type[ValueError]
) -> tuple[np.ndarray, np.ndarray]:
    if X.ndim != 2 or y.ndim != 1:
        raise err(f"table must be X of shape (n, d) and y of shape (n,), got {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise err(f"table has {X.shape[0]} feature rows but {y.shape[0]} labels")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise err(f"table is empty: shape {X.shape}")
    if num_features is not None and X.shape[1] != num_features:
        raise err(f"table has {X.shape[1]} features, the job's schema has {num_features}")
    if not np.issubdtype(X.dtype, np.number) or not np.issubdtype(y.dtype, np.integer):
        raise err(f"table dtypes must be numeric features and integer labels, got {X.dtype} and {y.dtype}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise err("table has NaN or infinite feature values")
    y = y.astype(np.int64, copy=False)
    if y.min() < 0:
        raise err("table has negative labels")
    if num_classes is not None and y.max() >= num_classes:
        raise err(f"table has label {int(y.max())}, the job's schema has only {num_classes} classes")
    if y.max() >= MAX_CLASSES:
        # Without this, one shard with label 10**9 would make the trainer build a 10**9-way output layer.
        raise err(f"table has label {int(y.max())}; at most {MAX_CLASSES} classes are supported")
    return X, y


def stratified_split(X: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of each class (rounded, at least one row when a class has two or more) as validation.

    Done per class with a seeded generator so every party and the enclave get the same split for a seed and
    small classes never vanish from either side (sklearn's splitter refuses classes with one row).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    X = np.asarray(X)
    y = np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        if len(idx) < 2:
            k = 0  # a single row goes to training: a class must not vanish from what the model sees
        else:
            k = min(max(round(fraction * len(idx)), 1 if fraction > 0 else 0), len(idx) - 1)
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr = np.sort(np.concatenate(train_idx)) if train_idx else np.empty(0, dtype=np.int64)
    va = np.sort(np.concatenate(val_idx)) if val_idx else np.empty(0, dtype=np.int64)
    return Split(X[tr], y[tr], X[va], y[va])
