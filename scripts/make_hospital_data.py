"""Write the bundled demo data: three hospitals' disjoint, non-IID shares of the Wisconsin breast cancer data.

Run: ``.venv/bin/python scripts/make_hospital_data.py [--out examples/hospitals_pooled/data]``.
The output is deterministic (fixed seed), so re-running it reproduces the committed CSVs byte for byte.

How the rows are shared out (569 rows, 212 malignant / 357 benign):
- sizes are fixed (A 260, B 190, C 119): A is a large referral centre, C a small community clinic;
- label skew: the share of the malignant cases each hospital gets is drawn from a Dirichlet distribution
  whose mean favours the referral centre, so malignant prevalence differs strongly between hospitals;
- feature skew: within each class, rows are ranked by tumour size (``mean_area``, plus noise) and the
  smallest go to C, the middle to B and the largest to A, as a screening clinic sees earlier, smaller
  tumours than a referral centre.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

SEED = 2  # chosen among the first few seeds for a realistic prevalence spread (about 55% / 26% / 17%)
SIZES = {"hospital-a": 260, "hospital-b": 190, "hospital-c": 119}
# Dirichlet concentration for how the malignant cases are shared out (mean 0.62 / 0.30 / 0.08).
MALIGNANT_ALPHA = (8.0, 4.0, 1.0)
SIZE_NOISE = 0.35  # std of the noise added to the standardised size rank score
LABEL = "diagnosis"


def snake(name: str) -> str:
    """'mean concave points' -> 'mean_concave_points'."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def load() -> tuple[pd.DataFrame, list[str]]:
    """The dataset with snake_case feature names and diagnosis 1 = malignant, 0 = benign."""
    raw = load_breast_cancer()
    features = [snake(n) for n in raw.feature_names]
    df = pd.DataFrame(raw.data, columns=features)
    # sklearn codes 0 = malignant, 1 = benign; the clinical convention (positive = malignant) is the reverse.
    df.insert(0, LABEL, (1 - raw.target).astype(np.int64))
    return df, features


def malignant_counts(total_malignant: int, rng: np.random.Generator) -> dict[str, int]:
    """Draw each hospital's malignant count from the Dirichlet share, within what its size allows."""
    share = rng.dirichlet(MALIGNANT_ALPHA)
    counts = np.floor(share * total_malignant).astype(int)
    counts[0] += total_malignant - counts.sum()
    sizes = np.array(list(SIZES.values()))
    counts = np.minimum(counts, sizes)
    counts[0] += total_malignant - counts.sum()
    return dict(zip(SIZES, counts.tolist(), strict=True))


def partition(df: pd.DataFrame, seed: int = SEED) -> dict[str, pd.DataFrame]:
    """Disjoint split with Dirichlet label skew and size-based feature skew (see module docstring)."""
    rng = np.random.default_rng(seed)
    y = df[LABEL].to_numpy()
    n_mal = int(y.sum())
    mal = malignant_counts(n_mal, rng)
    ben = {h: SIZES[h] - mal[h] for h in SIZES}
    if sum(ben.values()) != len(df) - n_mal or min(ben.values()) < 0:
        raise SystemExit("sizes do not add up to the dataset; adjust SIZES")
    size = np.log(df["mean_area"].to_numpy())
    score = (size - size.mean()) / size.std() + rng.normal(0.0, SIZE_NOISE, len(df))
    order = ["hospital-c", "hospital-b", "hospital-a"]  # smallest tumours first
    parts: dict[str, list[int]] = {h: [] for h in SIZES}
    for cls, counts in ((1, mal), (0, ben)):
        idx = np.flatnonzero(y == cls)
        idx = idx[np.argsort(score[idx], kind="stable")]
        start = 0
        for h in order:
            parts[h].extend(idx[start : start + counts[h]].tolist())
            start += counts[h]
    out = {}
    for h in SIZES:
        rows = np.array(parts[h])
        out[h] = df.iloc[rows[rng.permutation(len(rows))]].reset_index(drop=True)
    return out


def summary(parts: dict[str, pd.DataFrame]) -> str:
    lines = [
        "| hospital | rows | malignant | benign | malignant share | median mean_area |",
        "|---|---|---|---|---|---|",
    ]
    for h, d in parts.items():
        m = int(d[LABEL].sum())
        lines.append(f"| {h} | {len(d)} | {m} | {len(d) - m} | {m / len(d):.0%} | {d['mean_area'].median():.0f} |")
    return "\n".join(lines)


def write(out: Path, parts: dict[str, pd.DataFrame], features: list[str]) -> None:
    """Write one CSV per hospital and the schema TOML into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for h, d in parts.items():
        d.to_csv(out / f"{h}.csv", index=False, float_format="%.6g", lineterminator="\n")
    feats = ",\n".join(f'  "{f}"' for f in features)
    (out / "schema.toml").write_text(
        "# Columns of the hospital tables: label 1 = malignant, 0 = benign; 30 numeric features.\n"
        f'label = "{LABEL}"\n'
        "# The classes, pinned: a row with any other label (a typo such as 7) is refused at its hospital, naming the\n"
        "# line, instead of training an 8-class model without an auc. DP jobs require this too.\n"
        f'label_values = [0, 1]\nfeatures = [\n{feats},\n]\n'
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples/hospitals_pooled/data"
    )
    args = ap.parse_args()
    df, features = load()
    parts = partition(df)
    write(args.out, parts, features)
    print(summary(parts))


if __name__ == "__main__":
    main()
