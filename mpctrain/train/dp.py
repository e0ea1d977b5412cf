"""Differentially private SGD: per-sample clipping with ``torch.func``, Gaussian noise, RDP accounting.

The accountant is Google's ``dp-accounting`` (RDP, Poisson-subsampled Gaussian mechanism, add-or-remove-one
neighbouring relation), so the guarantee holds for Poisson sampling of each batch, which is what the loop does.
The unit of privacy is one row: a person with k rows is covered by group privacy only (ε grows k-fold).

A job declares the sampling rate (``DPConfig.sample_rate``): the rate, the number of steps, the noise and so
the ε spent then follow from the manifest alone. Derived from the row count (batch size / rows), every one of
them would be an exact function of that count and publish it.

Both the batch sampling and the noise must be unpredictable to the other parties: a noise stream they can
regenerate from a public seed can be subtracted, and a predictable batch removes the amplification by
subsampling the accountant relies on. :class:`DPConfig` therefore draws a fresh secret seed unless a test
passes ``noise_seed`` explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = [
    "DPSGD",
    "MAX_DELTA",
    "MAX_DP_STEPS",
    "DPConfig",
    "PrivacyBudgetError",
    "max_steps",
    "noise_for_budget",
    "per_sample_clipped_grads",
    "spent_epsilon",
    "steps_per_epoch",
]


MAX_DELTA = 1e-3
"""Largest delta a DP fit accepts (the job manifest holds jobs to the same, ``jobs.manifest.MAX_DELTA``): delta is
the chance the epsilon guarantee fails outright, so it belongs well below 1/rows."""
MAX_DP_STEPS = 1_000_000
"""Most DP-SGD steps a fit plans (epochs x ``steps_per_epoch``): bounds the training a manifest can ask for
(and the smallest useful ``sample_rate``, about 1e-6)."""


class PrivacyBudgetError(ValueError):
    """A DP setting is invalid or the budget cannot be met (e.g. no step fits in it)."""


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings: the (ε, δ) budget, the per-sample L2 clipping norm and optionally a fixed noise multiplier.

    When ``noise_multiplier`` is None it is calibrated so the planned number of steps spends exactly the budget.
    ``sample_rate`` is each row's Poisson sampling probability per step; a job manifest must set it, so the
    accounting does not depend on the row count (None: batch size / rows, for a caller training its own rows).
    ``noise_seed`` seeds sampling and noise; leave it None in production (a fresh secret seed is drawn).
    """

    epsilon: float
    delta: float
    clip: float
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    noise_seed: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _positive(self.epsilon):
            raise PrivacyBudgetError(f"DP epsilon must be a positive finite number, got {self.epsilon!r}")
        if not (_number(self.delta) and 0.0 < self.delta <= MAX_DELTA):
            raise PrivacyBudgetError(f"DP delta must be in (0, {MAX_DELTA:g}], got {self.delta!r} (typically < 1/rows)")
        if not _positive(self.clip):
            raise PrivacyBudgetError(f"DP clip must be a positive finite L2 norm, got {self.clip!r}")
        if self.noise_multiplier is not None and not (
            _number(self.noise_multiplier) and self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)
        ):
            raise PrivacyBudgetError(f"DP noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        if self.sample_rate is not None and not (_positive(self.sample_rate) and self.sample_rate <= 1):
            raise PrivacyBudgetError(f"DP sample_rate must be in (0, 1] (each row's sampling probability per step), "
                                     f"got {self.sample_rate!r}")
        seed = self.noise_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise PrivacyBudgetError(f"DP noise_seed must be an integer in [0, 2**64) or None, got {self.noise_seed!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DPConfig:
        """Build from a manifest's privacy section: ``{"epsilon", "delta", "clip", "sample_rate",
        "noise_multiplier"?}``; ``sample_rate`` is required there (see the class docstring)."""
        if not isinstance(d, Mapping):
            raise PrivacyBudgetError(f"DP settings must be a mapping, got {type(d).__name__}")
        if "noise_seed" in d:
            raise PrivacyBudgetError(
                "a job may not fix the DP noise seed: noise every party can regenerate gives no privacy; "
                "remove 'noise_seed' (the enclave draws a secret one)"
            )
        allowed = {"epsilon", "delta", "clip", "noise_multiplier", "sample_rate"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise PrivacyBudgetError(f"unknown DP setting(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"epsilon", "delta", "clip", "sample_rate"} - set(d))
        if missing:
            raise PrivacyBudgetError(f"DP settings need {missing}" + (
                " (sample_rate: each row's sampling probability per step, e.g. batch_size / the rows you expect; "
                "derived from the row count, the privacy accounting would publish it)" if "sample_rate" in missing
                else ""))
        return cls(**dict(d))

    def generator_seed(self) -> int:
        """The seed for sampling and noise: the given one, else 63 fresh secret bits."""
        return self.noise_seed if self.noise_seed is not None else secrets.randbits(63)


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _positive(x: object) -> bool:
    return _number(x) and math.isfinite(x) and x > 0  # type: ignore[operator, arg-type]


def _check_rate_steps(sample_rate: float, steps: int) -> None:
    if not (_number(sample_rate) and 0.0 < sample_rate <= 1.0):
        raise PrivacyBudgetError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise PrivacyBudgetError(f"steps must be a non-negative integer, got {steps!r}")


def steps_per_epoch(sample_rate: float) -> int:
    """Steps of one epoch-equivalent at ``sample_rate``: about 1/rate, so each row is expected once."""
    _check_rate_steps(sample_rate, 0)
    return max(1, round(1 / sample_rate))


def _event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    import dp_accounting  # deferred: importing it costs about a second and only DP jobs need it

    one = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(one, steps)


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """dp-accounting logs a warning for each low RDP order it cannot evaluate (it then excludes that order)."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@functools.lru_cache(maxsize=128)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(orders, RDP of one step): RDP composes additively, so ``steps`` steps cost ``steps`` times this."""
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, RdpAccountant

    accountant = RdpAccountant(orders=DEFAULT_RDP_ORDERS)
    with _quiet_accountant():
        accountant.compose(_event(noise_multiplier, sample_rate, 1))
    return tuple(float(o) for o in DEFAULT_RDP_ORDERS), tuple(float(v) for v in accountant.rdp)


def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon spent at ``delta`` after ``steps`` Poisson-sampled Gaussian steps (RDP accountant)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    _check_rate_steps(sample_rate, steps)
    if not (_number(delta) and 0.0 < delta < 1.0):
        raise PrivacyBudgetError(f"delta must be in (0, 1), got {delta!r}")
    if not (_number(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyBudgetError(f"noise multiplier must be >= 0, got {noise_multiplier!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    orders, rdp = _rdp_one_step(float(noise_multiplier), float(sample_rate))
    return float(compute_epsilon(np.array(orders), steps * np.array(rdp), delta)[0])


@functools.lru_cache(maxsize=64)
def noise_for_budget(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier whose ``steps`` steps at ``sample_rate`` stay within (``epsilon``, ``delta``).

    Cached: a job's manifest is planned when proposed and again when it trains (a second or so each)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if not _positive(epsilon):
        raise PrivacyBudgetError(f"epsilon must be a positive finite number, got {epsilon!r}")
    if not (_number(delta) and 0.0 < delta < 1.0):
        raise PrivacyBudgetError(f"delta must be in (0, 1), got {delta!r}")
    _check_rate_steps(sample_rate, steps)
    if steps == 0:
        return 0.0
    tol = 1e-3
    with _quiet_accountant():
        sigma = float(
            dp_accounting.calibrate_dp_mechanism(
                RdpAccountant,
                lambda s: _event(s, float(sample_rate), steps),
                float(epsilon),
                float(delta),
                bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
                tol=tol,
            )
        )
    # Brent's method returns a value within tol of the optimum; step up until the budget provably holds.
    for _ in range(100):
        if spent_epsilon(sigma, sample_rate, steps, delta) <= epsilon:
            return sigma
        sigma += tol
    raise PrivacyBudgetError(f"could not calibrate noise for epsilon={epsilon}, delta={delta}")  # pragma: no cover


def max_steps(epsilon: float, delta: float, sample_rate: float, noise_multiplier: float, limit: int) -> int:
    """Largest number of steps (at most ``limit``) whose spent epsilon stays within ``epsilon`` (binary search)."""
    _check_rate_steps(sample_rate, limit)
    if spent_epsilon(noise_multiplier, sample_rate, limit, delta) <= epsilon:
        return limit
    lo, hi = 0, limit  # invariant: lo fits the budget, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if spent_epsilon(noise_multiplier, sample_rate, mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _per_sample_fn(model: nn.Module) -> Any:
    def loss_one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    return vmap(grad_and_value(loss_one), in_dims=(None, None, 0, 0), randomness="different")


def per_sample_clipped_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample gradients of the cross-entropy, each rescaled to L2 norm <= ``clip`` (over all parameters).

    Returns ``(grads, losses)``: ``grads[name]`` has a leading batch dimension, ``losses`` the per-sample losses.
    """
    return _clip(_per_sample_fn(model)(_trainable(model), dict(model.named_buffers()), x, y), clip)


def _clip(
    out: tuple[dict[str, torch.Tensor], torch.Tensor], clip: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    grads, losses = out
    norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = {n: g * scale.view(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}
    return clipped, losses


class DPSGD:
    """Sets ``p.grad`` to the noisy mean of clipped per-sample gradients; the optimiser then steps as usual."""

    def __init__(self, model: nn.Module, clip: float, noise_multiplier: float, generator: torch.Generator) -> None:
        self.model = model
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.generator = generator
        self._fn = _per_sample_fn(model)

    def compute_grads(self, x: torch.Tensor, y: torch.Tensor, expected_batch_size: float) -> torch.Tensor:
        """Fill gradients for one Poisson-sampled batch (may be empty); return the summed per-sample loss."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        std = self.noise_multiplier * self.clip
        if x.shape[0] > 0:
            grads, losses = _clip(self._fn(_trainable(self.model), dict(self.model.named_buffers()), x, y), self.clip)
            total_loss = losses.sum()
        else:
            grads = {n: torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype) for n, p in params.items()}
            total_loss = torch.zeros((), device=x.device)
        for name, p in params.items():
            summed = grads[name].sum(0)
            if std > 0:
                summed = summed + torch.normal(
                    0.0, std, size=p.shape, generator=self.generator, device=p.device, dtype=p.dtype
                )
            p.grad = summed / expected_batch_size
        return total_loss.detach()
