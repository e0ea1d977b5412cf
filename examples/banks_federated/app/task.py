"""The model and local training every bank runs: logistic regression, seeded mini-batch SGD, in numpy.

Deterministic on purpose: with the same seeds, a confidential run and a plain Flower run produce the
same model up to float rounding, which is how the example shows that sealing changes nothing else.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

N_FEATURES = 7


def initial_arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(N_FEATURES, np.float32)), "b": Array(np.zeros(1, np.float32))})


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def loss_and_accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = _sigmoid(x @ w + b[0])
    eps = 1e-7
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    acc = float(np.mean((p >= 0.5) == (y >= 0.5)))
    return loss, acc


def train_local(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
                batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Mini-batch SGD on the logistic loss; returns new weights and the final training loss."""
    w = w.astype(np.float64).copy()
    b = b.astype(np.float64).copy()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            err = _sigmoid(x[idx] @ w + b[0]) - y[idx]
            w -= lr * (x[idx].T @ err) / len(idx)
            b -= lr * np.array([err.mean()])
    loss, _ = loss_and_accuracy(w, b, x, y)
    return w.astype(np.float32), b.astype(np.float32), loss
