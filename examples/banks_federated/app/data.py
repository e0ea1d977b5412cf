"""Seeded generator of non-identically distributed credit-default data for four banks.

Why synthetic: real credit files cannot be shipped, and a documented generator makes every run
reproducible. One ground-truth logistic model links features to default; the banks differ in who their
customers are (covariate shift), how many they have (quantity skew) and their base default rate
(label shift), which is what makes federated learning on them non-trivial.

Features (standardised units): age, log income, debt-to-income ratio, credit utilisation, late payments
in the last 24 months, number of open credit lines, years employed. Label: default within 12 months.
"""

from __future__ import annotations

import zlib

import numpy as np

FEATURES = ("age", "log_income", "debt_ratio", "utilization", "late_payments", "open_lines", "years_employed")
# Ground truth: default odds rise with debt, utilisation and late payments; fall with income, age, tenure.
TRUE_WEIGHTS = np.array([-0.4, -0.7, 0.9, 1.1, 1.3, 0.2, -0.5])
TRUE_BIAS = -1.6

# Each bank's customers: feature means (in standard units), spread, size and base-rate shift.
PROFILES: dict[str, dict[str, object]] = {
    "bank-a": {"mean": [-0.8, -0.5, 0.3, 0.6, 0.2, -0.3, -0.8], "scale": 0.9, "n": 600, "shift": 0.3},   # young, urban
    "bank-b": {"mean": [0.6, 0.9, -0.4, -0.5, -0.4, 0.5, 0.7], "scale": 0.8, "n": 1000, "shift": -0.4},  # affluent
    "bank-c": {"mean": [0.1, -0.9, 0.9, 0.8, 0.9, 0.1, -0.2], "scale": 1.1, "n": 400, "shift": 0.6},     # subprime
    "bank-d": {"mean": [0.3, 0.2, 0.0, 0.0, 0.0, 0.0, 0.3], "scale": 1.0, "n": 800, "shift": 0.0},       # retail mix
}
BANKS = tuple(PROFILES)


def generate_bank(bank: str, *, seed: int = 7, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features ``X`` (float32, n x 7) and labels ``y`` (float32 0/1) for one bank; same seed, same data."""
    if bank not in PROFILES:
        raise ValueError(f"unknown bank {bank!r}; known: {', '.join(BANKS)}")
    prof = PROFILES[bank]
    rng = np.random.default_rng([seed, zlib.crc32(bank.encode())])
    size = int(prof["n"]) if n is None else n  # type: ignore[arg-type]
    mean = np.asarray(prof["mean"], dtype=np.float64)
    x = rng.normal(mean, float(prof["scale"]), size=(size, len(FEATURES)))  # type: ignore[arg-type]
    x[:, 4] = np.maximum(x[:, 4], -1.0)  # late payments are bounded below
    logits = x @ TRUE_WEIGHTS + TRUE_BIAS + float(prof["shift"])  # type: ignore[arg-type]
    y = rng.random(size) < 1.0 / (1.0 + np.exp(-logits))
    return x.astype(np.float32), y.astype(np.float32)


def split(x: np.ndarray, y: np.ndarray, *, val_fraction: float = 0.2, seed: int = 7) -> tuple[np.ndarray, ...]:
    """Seeded train/validation split (the validation part stays at the bank, for federated evaluation)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(len(y) * (1 - val_fraction))
    tr, va = order[:cut], order[cut:]
    return x[tr], y[tr], x[va], y[va]


def write_csv(bank: str, path: str, *, seed: int = 7) -> None:
    """Write one bank's rows as CSV (header = features + ``default``)."""
    x, y = generate_bank(bank, seed=seed)
    header = ",".join((*FEATURES, "default"))
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6f")
