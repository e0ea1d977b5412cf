"""Classification metrics from predicted probabilities (sklearn's implementations, not re-derived here)."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_metrics"]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 (binary F1 of class 1, macro F1 for more classes); ROC AUC for binary tasks.

    ``auc`` is left out when it is undefined (only one class present in ``y_true``) rather than reported
    as NaN, so the dict always serialises to strict JSON.
    """
    from sklearn.metrics import f1_score, roc_auc_score  # deferred: sklearn adds ~1 s to importing this package

    y = np.asarray(y_true).astype(np.int64, copy=False)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"need probs of shape (n, classes) and labels of shape (n,), got {p.shape} and {y.shape}")
    if y.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero rows")
    num_classes = p.shape[1]
    pred = p.argmax(axis=1)
    out = {"accuracy": float((pred == y).mean())}
    if num_classes == 2:
        out["f1"] = float(f1_score(y, pred, pos_label=1, average="binary", zero_division=0))
        if np.unique(y).size == 2:
            out["auc"] = float(roc_auc_score(y, p[:, 1]))
    else:
        out["f1"] = float(f1_score(y, pred, labels=list(range(num_classes)), average="macro", zero_division=0))
    return out
