"""Model registry: a job names a model and its hyper-parameters; every party and the enclave build the same one.

Models take raw features and include a :class:`Standardize` layer whose mean/std are buffers: they are fitted
on the training data by the loop and travel with the weights, so the output model is self-contained.
Initialisation is seeded without touching the caller's global RNG state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mpctrain.train.data import MAX_CLASSES

__all__ = [
    "MODELS",
    "ModelSpecError",
    "Standardize",
    "UnknownModel",
    "build_model",
    "register_model",
]


MAX_INPUT_DIM = 1 << 20  # widest input a job may ask for: bounds memory on untrusted specs
MAX_PARAMETERS = 1 << 28  # about 1 GiB of float32 weights


class ModelSpecError(ValueError):
    """A model spec has a bad or unknown parameter."""


class UnknownModel(ModelSpecError):
    """The spec names a model that is not in the registry."""


class Standardize(nn.Module):
    """``(x - mean) / std`` with mean/std as buffers (identity until :meth:`fit_stats` or :meth:`set_stats`)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use given (e.g. public) statistics; zero or non-finite std entries become 1."""
        std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))

    @torch.no_grad()
    def fit_stats(self, x: torch.Tensor) -> None:
        """Set mean/std from training rows (computed in float64 for stability)."""
        x64 = x.to(torch.float64)
        self.set_stats(x64.mean(0), x64.std(0, unbiased=False))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression (a single linear layer on standardised features)."""

    def __init__(self, input_dim: int, num_classes: int) -> None:
        super().__init__()
        self.standardize = Standardize(input_dim)
        self.linear = nn.Linear(input_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardize(x))


class MLP(nn.Module):
    """Fully connected network with ReLU hidden layers and optional dropout."""

    def __init__(self, input_dim: int, num_classes: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.standardize = Standardize(input_dim)
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


def _logreg(input_dim: int, num_classes: int) -> nn.Module:
    return LogisticRegression(input_dim, num_classes)


def _mlp(
    input_dim: int, num_classes: int, hidden: list[int] | tuple[int, ...] = (64, 32), dropout: float = 0.0
) -> nn.Module:
    if isinstance(hidden, int) or not isinstance(hidden, list | tuple) or not hidden:
        raise ModelSpecError(f"mlp 'hidden' must be a non-empty list of layer widths, got {hidden!r}")
    if not all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= 65536 for h in hidden):
        raise ModelSpecError(f"mlp 'hidden' widths must be integers in 1..65536, got {list(hidden)}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ModelSpecError(f"mlp 'dropout' must be a number in [0, 1), got {dropout!r}")
    widths = [input_dim, *hidden, num_classes]
    params = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    if len(hidden) > 64 or params > MAX_PARAMETERS:
        raise ModelSpecError(
            f"mlp too large: {len(hidden)} hidden layers, {params} parameters "
            f"(limits: 64 layers, {MAX_PARAMETERS} parameters)"
        )
    return MLP(input_dim, num_classes, tuple(hidden), float(dropout))


# name -> factory(input_dim, num_classes, **params). Params come from the job manifest's model spec.
MODELS: dict[str, Callable[..., nn.Module]] = {"logreg": _logreg, "mlp": _mlp}
_PARAMS: dict[str, frozenset[str]] = {"logreg": frozenset(), "mlp": frozenset({"hidden", "dropout"})}


def register_model(name: str, params: set[str] | frozenset[str] = frozenset()) -> Callable[[Callable], Callable]:
    """Decorator adding ``factory(input_dim, num_classes, **params)`` under ``name`` with its allowed params."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ModelSpecError(f"model {name!r} is already registered")
        MODELS[name] = factory
        _PARAMS[name] = frozenset(params)
        return factory

    return wrap


def build_model(spec: Mapping[str, Any], input_dim: int, num_classes: int) -> nn.Module:
    """Build the model a spec names, e.g. ``{"name": "mlp", "hidden": [64, 32], "seed": 7}``.

    The same spec and dimensions give bit-identical initial weights on every machine (CPU init from
    ``spec["seed"]``, default 0). Unknown names raise :class:`UnknownModel`; unknown or bad parameters raise
    :class:`ModelSpecError`.
    """
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"model spec must be a mapping, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    for what, value in (("input_dim", input_dim), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelSpecError(f"{what} must be a positive integer, got {value!r}")
    if num_classes < 2:
        raise ModelSpecError(f"num_classes must be at least 2, got {num_classes}")
    if input_dim > MAX_INPUT_DIM:
        raise ModelSpecError(f"input_dim must be at most {MAX_INPUT_DIM}, got {input_dim}")
    if num_classes > MAX_CLASSES:
        raise ModelSpecError(f"num_classes must be at most {MAX_CLASSES}, got {num_classes}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ModelSpecError(f"model 'seed' must be a non-negative integer, got {seed!r}")
    params = {k: v for k, v in spec.items() if k not in ("name", "seed")}
    unknown = sorted(set(params) - _PARAMS.get(name, frozenset(params)))
    if unknown:
        raise ModelSpecError(f"model {name!r} does not take parameter(s) {unknown}; allowed: {sorted(_PARAMS[name])}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return MODELS[name](input_dim, num_classes, **params)
        except TypeError as exc:
            raise ModelSpecError(f"bad parameters for model {name!r}: {exc}") from None
