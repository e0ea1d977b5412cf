"""Models, deterministic training loop, metrics, DP-SGD and tensor I/O, used inside and outside the enclave."""

from mpctrain.train.data import (
    DataError,
    SchemaError,
    Split,
    TableSchema,
    load_schema,
    read_table,
    stratified_split,
    table_from_bytes,
    table_to_bytes,
    validate,
)
from mpctrain.train.device import DeviceUnavailable, pick_device
from mpctrain.train.dp import DPConfig, PrivacyBudgetError, noise_for_budget, spent_epsilon
from mpctrain.train.loop import (
    Comparison,
    ConfigError,
    FitResult,
    TrainConfig,
    compare_alone_vs_pooled,
    evaluate,
    fit,
    fit_with_validation,
)
from mpctrain.train.metrics import classification_metrics
from mpctrain.train.registry import MODELS, ModelSpecError, UnknownModel, build_model, register_model
from mpctrain.train.tensors import (
    TensorFormatError,
    arrays_from_bytes,
    arrays_to_bytes,
    state_from_bytes,
    state_to_bytes,
)

__all__ = [
    "MODELS",
    "Comparison",
    "ConfigError",
    "DPConfig",
    "DataError",
    "DeviceUnavailable",
    "FitResult",
    "ModelSpecError",
    "PrivacyBudgetError",
    "SchemaError",
    "Split",
    "TableSchema",
    "TensorFormatError",
    "TrainConfig",
    "UnknownModel",
    "arrays_from_bytes",
    "arrays_to_bytes",
    "build_model",
    "classification_metrics",
    "compare_alone_vs_pooled",
    "evaluate",
    "fit",
    "fit_with_validation",
    "load_schema",
    "noise_for_budget",
    "pick_device",
    "read_table",
    "register_model",
    "spent_epsilon",
    "state_from_bytes",
    "state_to_bytes",
    "stratified_split",
    "table_from_bytes",
    "table_to_bytes",
    "validate",
]
