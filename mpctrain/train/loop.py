"""The training loop used in the enclave (pooled trainer) and by parties (local baselines, Flower clients).

Deterministic for a seed on CPU: the model's initial weights come from the registry's seed, shuffling uses a
``torch.Generator`` seeded from ``TrainConfig.seed``, dropout runs under a forked, seeded global RNG, and
deterministic algorithms are switched on for the duration of the fit. The data is moved to the device once;
the per-batch work is the same as a plain PyTorch loop's plus one ``detach`` to keep the loss.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpctrain.train.data import SchemaError, stratified_split
from mpctrain.train.device import pick_device
from mpctrain.train.dp import (
    DPSGD,
    MAX_DP_STEPS,
    DPConfig,
    PrivacyBudgetError,
    max_steps,
    noise_for_budget,
    spent_epsilon,
    steps_per_epoch,
)
from mpctrain.train.metrics import classification_metrics
from mpctrain.train.registry import Standardize, build_model

__all__ = [
    "OPTIMIZERS",
    "Comparison",
    "ConfigError",
    "DPPlan",
    "FitResult",
    "TrainConfig",
    "compare_alone_vs_pooled",
    "dp_plan",
    "evaluate",
    "fit",
    "fit_with_validation",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
MAX_EPOCHS = 100_000
GATHER_ROWS = 1 << 16  # rows gathered per shuffled chunk: bounds the extra memory to one chunk of the data


class ConfigError(ValueError):
    """A training configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a fit; ``val_fraction`` is used by :func:`fit_with_validation`, not by :func:`fit`."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    optimizer: str = "adam"
    weight_decay: float = 0.0
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"training '{name}' must be an integer, got {v!r}")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError(f"training 'epochs' must be in 1..{MAX_EPOCHS}, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"training 'batch_size' must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"training 'seed' must be in 0..2**63-1, got {self.seed}")
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"training 'lr' must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"training 'weight_decay' must be >= 0, got {self.weight_decay!r}")
        if not _finite(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise ConfigError(f"training 'val_fraction' must be in [0, 1), got {self.val_fraction!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a manifest's training section; unknown keys are refused (a typo must not be ignored)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"training configuration must be a mapping, got {type(d).__name__}")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"epochs", "batch_size", "lr", "seed"} - set(d))
        if missing:
            raise ConfigError(f"training configuration needs {missing}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class FitResult:
    """Trained weights (CPU tensors), mean training loss per epoch, and why training stopped if it stopped early.

    For DP fits, ``epsilon`` is the ε actually spent at ``delta`` with ``noise_multiplier`` over ``steps``.
    The weights are covered by that guarantee; ``history`` (training loss) is not privatised, so release it
    only to those entitled to see statistics of the training data.
    """

    state: dict[str, torch.Tensor]
    history: list[float]
    steps: int = 0
    stop_reason: str | None = None
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None


@contextlib.contextmanager
def _deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """Seeded, deterministic execution that restores the caller's RNG and determinism settings afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    # cuBLAS is only deterministic with a fixed workspace, which must be configured before CUDA starts.
    safe = device.type == "cpu" or os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if safe:
            torch.use_deterministic_algorithms(True)
            # Filling every new tensor with NaN is a debugging aid that costs a fill per allocation; the loop
            # never reads uninitialised memory, so results are the same without it.
            torch.utils.deterministic.fill_uninitialized_memory = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
            torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def _as_tensors(X: Any, y: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        Xt = torch.as_tensor(X, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SchemaError(f"X and y must be numeric arrays: {exc}") from None
    if Xt.dim() != 2 or yt.dim() != 1 or Xt.shape[0] != yt.shape[0]:
        raise SchemaError(f"need X of shape (n, d) and y of shape (n,), got {tuple(Xt.shape)} and {tuple(yt.shape)}")
    if Xt.shape[0] == 0:
        raise SchemaError("X and y have zero rows")
    Xt, yt = Xt.to(device), yt.to(device)
    if not bool(torch.isfinite(Xt).all()):
        raise SchemaError("X has NaN or infinite values; validate the table first")
    return Xt, yt


def _check_labels(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> None:
    if X.shape[1] != _input_dim(model, X.shape[1]):
        raise SchemaError(f"data has {X.shape[1]} features but the model expects {_input_dim(model, X.shape[1])}")
    with torch.no_grad():
        was_training = model.training
        model.eval()
        outputs = model(X[:1]).shape[-1]
        model.train(was_training)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= outputs:
        raise SchemaError(f"labels range over {lo}..{hi} but the model has {outputs} outputs (0..{outputs - 1})")


def _input_dim(model: nn.Module, default: int) -> int:
    for m in model.modules():
        if isinstance(m, Standardize):
            return int(m.mean.shape[0])
        if isinstance(m, nn.Linear):
            return m.in_features
    return default


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    config: TrainConfig,
    *,
    device: torch.device | str | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    dp: DPConfig | None = None,
    fit_standardizer: bool = True,
) -> FitResult:
    """Train ``model`` in place on all of ``(X, y)`` and return its weights and per-epoch loss.

    ``on_epoch(epoch, mean_loss)`` is called after each epoch (epochs count from 1). With ``dp``, each step
    Poisson-samples rows at ``dp.sample_rate`` (default: ``batch_size`` / rows), clips per-sample gradients,
    adds Gaussian noise and divides by the expected batch size (see :func:`dp_plan`); training stops before a
    step that would exceed the (ε, δ) budget, and the result says so.
    Without DP, :class:`~mpctrain.train.registry.Standardize` layers are fitted on ``X`` first; with DP they
    are left as they are, since statistics of the data would be released without accounting. Pass
    ``fit_standardizer=False`` to continue training a model whose statistics are already set (a federated
    round starting from the global weights).
    """
    dev = pick_device("auto" if device is None else str(device))
    Xt, yt = _as_tensors(X, y, dev)
    model.to(dev)
    _check_labels(model, Xt, yt)
    with _deterministic(dev, config.seed):
        if dp is None and fit_standardizer:
            for m in model.modules():
                if isinstance(m, Standardize):
                    m.fit_stats(Xt)
        model.train()
        if dp is None:
            result = _fit_plain(model, Xt, yt, config, dev, on_epoch)
        else:
            result = _fit_dp(model, Xt, yt, config, dev, on_epoch, dp)
    result.state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return result


def _fit_plain(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    dev: torch.device,
    on_epoch: Callable[[int, float], None] | None,
) -> FitResult:
    n, bs = X.shape[0], config.batch_size
    optimizer = _make_optimizer(model, config)
    gen = torch.Generator(device=dev)
    gen.manual_seed(config.seed)
    starts = range(0, n, bs)
    # Weights turning per-batch mean losses into the epoch's per-row mean (the last batch may be short).
    weights = torch.tensor([min(bs, n - s) / n for s in starts], device=dev)
    # Rows are gathered in shuffled order a chunk of whole batches at a time, so each batch is a slice (a view)
    # rather than its own gather; the batches are exactly those of indexing with perm[start : start + bs].
    chunk = bs * max(1, GATHER_ROWS // bs)
    history: list[float] = []
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=gen, device=dev)
        losses: list[torch.Tensor] = []
        for c in range(0, n, chunk):
            idx = perm[c : c + chunk]
            Xc, yc = X.index_select(0, idx), y.index_select(0, idx)
            for start in range(0, idx.shape[0], bs):
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(Xc[start : start + bs]), yc[start : start + bs])
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
        mean = float((torch.stack(losses) * weights).sum())
        history.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
    return FitResult(state={}, history=history, steps=config.epochs * len(starts))


@dataclass(frozen=True)
class DPPlan:
    """The privacy schedule of a DP fit: Poisson ``rate``, ``steps_per_epoch``, ``planned`` steps, noise ``sigma``,
    the ``allowed`` steps within the budget and the ``divisor`` of each noisy gradient sum (the expected batch).

    With ``DPConfig.sample_rate`` set every field comes from the configuration alone, not from the rows."""

    rate: float
    steps_per_epoch: int
    planned: int
    sigma: float
    allowed: int
    divisor: float


def dp_plan(config: TrainConfig, dp: DPConfig, rows: int | None = None) -> DPPlan:
    """The schedule of a DP fit. With ``dp.sample_rate`` it ignores ``rows``: an epoch is ``steps_per_epoch``
    steps and the divisor is ``config.batch_size``, so the noise, the steps and the ε spent cannot reveal the
    row count. Without it (a caller training its own rows) the rate is ``batch_size / rows``.

    Raises ``ConfigError`` when the plan exceeds ``MAX_DP_STEPS``, ``PrivacyBudgetError`` when no noise fits."""
    if dp.sample_rate is not None:
        rate, divisor = float(dp.sample_rate), float(config.batch_size)
        per_epoch = steps_per_epoch(rate)
    elif rows is None or rows < 1:
        raise PrivacyBudgetError("a DP fit needs DPConfig.sample_rate, or the row count to derive it from")
    else:
        rate = min(1.0, config.batch_size / rows)
        divisor = rate * rows
        per_epoch = math.ceil(rows / config.batch_size)
    planned = config.epochs * per_epoch
    if planned > MAX_DP_STEPS:
        raise ConfigError(f"a DP fit of {config.epochs} epoch(s) at sample rate {rate:g} ({per_epoch} steps each) "
                          f"plans {planned} steps; the limit is {MAX_DP_STEPS}: lower 'epochs' or raise 'sample_rate'")
    sigma = dp.noise_multiplier if dp.noise_multiplier is not None else noise_for_budget(
        dp.epsilon, dp.delta, rate, planned)
    allowed = max_steps(dp.epsilon, dp.delta, rate, sigma, planned)
    return DPPlan(rate, per_epoch, planned, float(sigma), allowed, divisor)


def _fit_dp(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    dev: torch.device,
    on_epoch: Callable[[int, float], None] | None,
    dp: DPConfig,
) -> FitResult:
    n = X.shape[0]
    plan = dp_plan(config, dp, n)
    rate, sigma, allowed = plan.rate, plan.sigma, plan.allowed
    gen = torch.Generator(device=dev)
    gen.manual_seed(dp.generator_seed())
    optimizer = _make_optimizer(model, config)
    engine = DPSGD(model, dp.clip, sigma, gen)
    history: list[float] = []
    steps = 0
    stop_reason: str | None = None
    for epoch in range(1, config.epochs + 1):
        total = torch.zeros((), device=dev)
        seen = 0
        first = steps
        for _ in range(plan.steps_per_epoch):
            if steps >= allowed:
                nxt = spent_epsilon(sigma, rate, steps + 1, dp.delta)
                stop_reason = (
                    f"privacy budget: step {steps + 1} would spend epsilon={nxt:.4g} > budget {dp.epsilon:g} "
                    f"(delta={dp.delta:g}, noise multiplier={sigma:.4g}); stopped after {steps} step(s)"
                )
                break
            idx = torch.nonzero(torch.rand(n, generator=gen, device=dev) < rate).squeeze(1)
            optimizer.zero_grad(set_to_none=True)
            total += engine.compute_grads(X[idx], y[idx], plan.divisor)
            optimizer.step()
            seen += idx.numel()
            steps += 1
        if steps == first:
            break  # the budget ran out at the epoch's start: no epoch to report
        # every epoch is reported, even one whose Poisson batches were all empty (NaN): how many epochs are
        # reported must not depend on the rows
        mean = float(total) / seen if seen else math.nan
        history.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
        if stop_reason is not None:
            break
    return FitResult(
        state={},
        history=history,
        steps=steps,
        stop_reason=stop_reason,
        epsilon=spent_epsilon(sigma, rate, steps, dp.delta),
        delta=dp.delta,
        noise_multiplier=sigma,
    )


def evaluate(model: nn.Module, X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy``, ``f1`` and (binary tasks with both classes) ``auc``."""
    first = next(model.parameters(), None)
    dev = first.device if first is not None else torch.device("cpu")
    Xt, yt = _as_tensors(X, y, dev)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = torch.cat([model(Xt[i : i + 65536]) for i in range(0, Xt.shape[0], 65536)])
            if int(yt.min()) < 0 or int(yt.max()) >= logits.shape[1]:
                raise SchemaError(f"labels out of range for a model with {logits.shape[1]} classes")
            loss = float(F.cross_entropy(logits, yt))
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    return {"loss": loss, **classification_metrics(yt.cpu().numpy(), probs)}


def fit_with_validation(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    device: torch.device | str | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    dp: DPConfig | None = None,
) -> tuple[FitResult, dict[str, float]]:
    """Hold out ``config.val_fraction`` per class (seeded), fit on the rest, return the validation metrics."""
    split = stratified_split(X, y, config.val_fraction, config.seed)
    result = fit(model, split.X_train, split.y_train, config, device=device, on_epoch=on_epoch, dp=dp)
    metrics = evaluate(model, split.X_val, split.y_val) if len(split.y_val) else {}
    return result, metrics


@dataclass
class Comparison:
    """Metrics of each party's alone-model and of the pooled model on one validation set drawn from every party."""

    metrics: dict[str, dict[str, float]]
    train_rows: dict[str, int]
    val_rows: int
    pooled: str = "pooled"

    def margin(self, party: str, metric: str = "accuracy") -> float:
        """How much the pooled model beats ``party``'s alone-model on ``metric`` (negative: it does worse)."""
        return self.metrics[self.pooled][metric] - self.metrics[party][metric]

    def table(self) -> str:
        cols = ["accuracy", "auc", "f1", "loss"]
        lines = [
            f"validation: {self.val_rows} rows held out from every party",
            f"{'model':<16}{'train rows':>11}" + "".join(f"{c:>10}" for c in cols),
        ]
        for name, m in self.metrics.items():
            label = f"{name} alone" if name != self.pooled else self.pooled
            cells = "".join(f"{m[c]:>10.3f}" if c in m else f"{'-':>10}" for c in cols)
            lines.append(f"{label:<16}{self.train_rows[name]:>11}{cells}")
        return "\n".join(lines)


def compare_alone_vs_pooled(
    tables: Mapping[str, tuple[np.ndarray, np.ndarray]],
    model_spec: Mapping[str, Any],
    config: TrainConfig,
    *,
    device: torch.device | str | None = None,
    out: Callable[[str], Any] | None = print,
) -> Comparison:
    """Train one model per party on its own data and one on all of it; score all on the same held-out rows.

    Each party's table is split with ``config.val_fraction``; the validation parts are concatenated so every
    model is judged on data from every party. Prints the comparison table via ``out`` (None: silent).
    """
    if len(tables) < 1:
        raise ConfigError("need at least one party's table to compare")
    splits = {name: stratified_split(X, y, config.val_fraction, config.seed) for name, (X, y) in tables.items()}
    if "pooled" in splits:
        raise ConfigError("a party may not be named 'pooled'")
    X_val = np.concatenate([s.X_val for s in splits.values()])
    y_val = np.concatenate([s.y_val for s in splits.values()])
    if len(y_val) == 0:
        raise ConfigError("no validation rows: set val_fraction > 0")
    X_pool = np.concatenate([s.X_train for s in splits.values()])
    y_pool = np.concatenate([s.y_train for s in splits.values()])
    num_classes = max(2, int(max(int(y_pool.max()), int(y_val.max()))) + 1)
    dim = X_pool.shape[1]
    metrics: dict[str, dict[str, float]] = {}
    rows: dict[str, int] = {}
    for name, s in [*splits.items(), ("pooled", None)]:
        Xt, yt = (X_pool, y_pool) if s is None else (s.X_train, s.y_train)
        model = build_model(model_spec, dim, num_classes)
        fit(model, Xt, yt, config, device=device)
        metrics[name] = evaluate(model, X_val, y_val)
        rows[name] = len(yt)
    comparison = Comparison(metrics=metrics, train_rows=rows, val_rows=len(y_val))
    if out is not None:
        out(comparison.table())
    return comparison
