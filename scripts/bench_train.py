"""Benchmark: one epoch through ``mpctrain.train.fit`` (the enclave trainer's path) vs a hand-written PyTorch loop.

Same model (registry build, same seed), same tensors, same shuffling generator, in the same process; the
two paths are run alternately for several repetitions and the median wall times compared. The ``fit`` path
also decodes the shard from its safetensors bytes (``table_from_bytes``), as the enclave does after opening
a sealed upload. Goal on CPU: ratio fit / plain <= 1.03. Both paths must end with bit-identical weights,
which the script checks and reports.

Run: ``.venv/bin/python scripts/bench_train.py [--device cuda] [--rows 100000] [--reps 9] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpctrain.train.data import table_from_bytes, table_to_bytes
from mpctrain.train.device import DeviceUnavailable, pick_device
from mpctrain.train.loop import TrainConfig, fit
from mpctrain.train.registry import build_model


def make_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable binary task with uneven feature scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features)) * np.logspace(0, 2, features)
    w = rng.normal(size=features) / np.logspace(0, 2, features)
    y = (X @ w + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)
    return X.astype(np.float32), y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall time and this process's CPU time; CPU time is robust to other load on a shared machine."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_fit(shard: bytes, spec: dict, config: TrainConfig, device: torch.device) -> tuple[Timer, dict]:
    """The enclave path: decode the shard, build the model, one epoch of ``fit``."""
    with Timer(device) as timer:
        state = _fit_path(shard, spec, config, device)
    return timer, state


def _fit_path(shard: bytes, spec: dict, config: TrainConfig, device: torch.device) -> dict:
    X, y = table_from_bytes(shard)
    model = build_model(spec, X.shape[1], 2)
    return fit(model, X, y, config, device=device).state


def run_plain(
    X: np.ndarray, y: np.ndarray, spec: dict, config: TrainConfig, device: torch.device
) -> tuple[Timer, dict]:
    with Timer(device) as timer:
        state = _plain_path(X, y, spec, config, device)
    return timer, state


def _plain_path(X: np.ndarray, y: np.ndarray, spec: dict, config: TrainConfig, device: torch.device) -> dict:
    """A plain PyTorch epoch: tensors on the device, shuffle, minibatch Adam steps, nothing else."""
    model = build_model(spec, X.shape[1], 2).to(device)
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    model.standardize.fit_stats(Xt)  # part of the model: same as fit does
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    n, bs = Xt.shape[0], config.batch_size
    model.train()
    perm = torch.randperm(n, generator=gen, device=device)
    for start in range(0, n, bs):
        idx = perm[start : start + bs]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(Xt[idx]), yt[idx])
        loss.backward()
        optimizer.step()
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--hidden", default="64,32", help="MLP hidden widths, comma separated; empty for logreg")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except DeviceUnavailable as exc:
        raise SystemExit(f"bench_train: {exc}") from None
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    spec = {"name": "mlp", "hidden": hidden, "seed": args.seed} if hidden else {"name": "logreg", "seed": args.seed}
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, seed=args.seed)
    X, y = make_data(args.rows, args.features, args.seed)
    shard = table_to_bytes(X, y)

    # Warm-up (first-use costs: allocator, kernels, lazy imports) - not measured.
    run_fit(shard, spec, config, device)
    run_plain(X, y, spec, config, device)

    times: dict[str, list[Timer]] = {"fit": [], "plain": []}
    identical = True
    max_diff = 0.0
    for rep in range(args.reps):
        states = {}
        for which in ("fit", "plain") if rep % 2 == 0 else ("plain", "fit"):  # alternate to cancel drift
            if which == "fit":
                timer, states[which] = run_fit(shard, spec, config, device)
            else:
                timer, states[which] = run_plain(X, y, spec, config, device)
            times[which].append(timer)
        for k, v in states["fit"].items():
            other = states["plain"][k]
            identical &= torch.equal(v, other)
            max_diff = max(max_diff, float((v.double() - other.double()).abs().max()))

    steps = -(-args.rows // args.batch_size)
    result: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": args.rows,
        "features": args.features,
        "model": spec,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps,
        "reps": args.reps,
        "weights_identical": identical,
        "max_abs_weight_diff": max_diff,
    }
    for clock in ("wall", "cpu"):
        f = [getattr(t, clock) for t in times["fit"]]
        p = [getattr(t, clock) for t in times["plain"]]
        result[clock] = {
            "fit_median_s": statistics.median(f),
            "plain_median_s": statistics.median(p),
            "fit_min_s": min(f),
            "plain_min_s": min(p),
            "ratio_of_medians": statistics.median(f) / statistics.median(p),
            "median_paired_ratio": statistics.median(a / b for a, b in zip(f, p, strict=True)),
        }
    print(f"device {result['device']} ({result['device_name']}), torch {result['torch']}, {result['threads']} threads")
    print(f"{args.rows} rows x {args.features} features, {spec}, batch {args.batch_size}: {steps} steps/epoch")
    print(f"{'clock':<6}{'fit med s':>11}{'plain med s':>13}{'fit us/step':>13}{'ratio':>8}{'paired':>8}")
    for clock in ("wall", "cpu"):
        r = result[clock]
        print(
            f"{clock:<6}{r['fit_median_s']:>11.4f}{r['plain_median_s']:>13.4f}"
            f"{r['fit_median_s'] / steps * 1e6:>13.1f}{r['ratio_of_medians']:>8.3f}{r['median_paired_ratio']:>8.3f}"
        )
    print("ratio = fit / plain (goal <= 1.03 on CPU); cpu = this process's CPU time, robust to other load")
    print(f"weights identical: {identical} (max abs diff {max_diff:.3g})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
