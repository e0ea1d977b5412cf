"""Training loop: configuration, bit-for-bit determinism, callbacks, evaluation and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpctrain.train.data import SchemaError
from mpctrain.train.device import DeviceUnavailable
from mpctrain.train.loop import ConfigError, TrainConfig, evaluate, fit, fit_with_validation
from mpctrain.train.registry import build_model
from mpctrain.train.tensors import state_from_bytes, state_to_bytes

CPU = torch.device("cpu")


def blobs(n: int = 300, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs with shifted means and large, uneven feature scales (so standardisation matters)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)) + y[:, None] * 1.5
    X *= np.logspace(0, 3, d)
    return X.astype(np.float32), y.astype(np.int64)


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.01, seed=7)
SPEC = {"name": "mlp", "hidden": [16], "dropout": 0.2, "seed": 1}


def _train(config: TrainConfig = CFG, spec=SPEC, data=None):
    X, y = data or blobs()
    model = build_model(spec, X.shape[1], 2)
    return model, fit(model, X, y, config, device=CPU)


# --- config ---------------------------------------------------------------------------------------------


def test_config_from_dict_and_back():
    d = {"epochs": 2, "batch_size": 16, "lr": 0.1, "seed": 3, "optimizer": "sgd", "weight_decay": 0.01}
    cfg = TrainConfig.from_dict(d)
    assert cfg.optimizer == "sgd" and cfg.val_fraction == 0.2
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"epochs": 1, "batch_size": 1, "lr": 0.1}, r"needs \['seed'\]"),
        ({"epochs": 1, "batch_size": 1, "lr": 0.1, "seed": 0, "momentum": 0.9}, "unknown training setting"),
        ({"epochs": 0, "batch_size": 1, "lr": 0.1, "seed": 0}, "epochs"),
        ({"epochs": 1.5, "batch_size": 1, "lr": 0.1, "seed": 0}, "integer"),
        ({"epochs": 1, "batch_size": 0, "lr": 0.1, "seed": 0}, "batch_size"),
        ({"epochs": 1, "batch_size": 1, "lr": 0, "seed": 0}, "lr"),
        ({"epochs": 1, "batch_size": 1, "lr": float("nan"), "seed": 0}, "lr"),
        ({"epochs": 1, "batch_size": 1, "lr": 0.1, "seed": -1}, "seed"),
        ({"epochs": 1, "batch_size": 1, "lr": 0.1, "seed": 0, "optimizer": "lbfgs"}, "unknown optimizer"),
        ({"epochs": 1, "batch_size": 1, "lr": 0.1, "seed": 0, "weight_decay": -1}, "weight_decay"),
        ({"epochs": 1, "batch_size": 1, "lr": 0.1, "seed": 0, "val_fraction": 1.0}, "val_fraction"),
        ("epochs=1", "mapping"),
    ],
)
def test_bad_configs(d, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(d)


# --- determinism ----------------------------------------------------------------------------------------


def test_same_seed_is_bit_for_bit_identical():
    _, a = _train()
    _, b = _train()
    assert a.history == b.history
    assert a.state.keys() == b.state.keys()
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert state_to_bytes(a.state) == state_to_bytes(b.state)


@pytest.mark.parametrize(
    "change",
    [{"seed": 8}, {"model_seed": 2}],
)
def test_different_seed_differs(change):
    _, a = _train()
    cfg = TrainConfig(**{**CFG.to_dict(), "seed": change.get("seed", CFG.seed)})
    spec = {**SPEC, "seed": change.get("model_seed", SPEC["seed"])}
    _, b = _train(cfg, spec)
    assert any(not torch.equal(a.state[k], b.state[k]) for k in a.state if k.startswith("net."))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_is_deterministic_and_learns(optimizer):
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=1, optimizer=optimizer, weight_decay=1e-4)
    model, a = _train(cfg, {"name": "logreg"})
    _, b = _train(cfg, {"name": "logreg"})
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    X, y = blobs()
    assert evaluate(model, X, y)["accuracy"] > 0.85


def test_fit_restores_global_state():
    torch.manual_seed(99)
    rng_before = torch.get_rng_state()
    det_before = torch.are_deterministic_algorithms_enabled()
    fill_before = torch.utils.deterministic.fill_uninitialized_memory
    _train()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.are_deterministic_algorithms_enabled() == det_before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill_before


# --- behaviour ------------------------------------------------------------------------------------------


def test_history_and_on_epoch_callback():
    seen: list[tuple[int, float]] = []
    X, y = blobs()
    model = build_model({"name": "logreg"}, X.shape[1], 2)
    cfg = TrainConfig(epochs=5, batch_size=50, lr=0.05, seed=0)
    result = fit(model, X, y, cfg, device=CPU, on_epoch=lambda e, loss: seen.append((e, loss)))
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5]
    assert [loss for _, loss in seen] == result.history
    assert result.history[-1] < result.history[0]
    assert result.steps == 5 * 6 and result.stop_reason is None and result.epsilon is None


def test_epoch_loss_is_row_weighted_mean():
    """The recorded loss equals the mean per-row loss of the batches actually trained (short last batch)."""
    X, y = blobs(n=70)
    model = build_model({"name": "logreg"}, X.shape[1], 2)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-12, seed=0, optimizer="sgd")  # weights stay put
    result = fit(model, X, y, cfg, device=CPU)
    expected = torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y)).item()
    assert result.history[0] == pytest.approx(expected, rel=1e-5)


def test_state_is_detached_cpu_copy_and_fits_standardizer():
    model, result = _train()
    X, _ = blobs()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in result.state.values())
    np.testing.assert_allclose(result.state["standardize.mean"].numpy(), X.mean(0), rtol=1e-4)
    result.state["net.0.weight"].zero_()
    assert model.state_dict()["net.0.weight"].abs().sum() > 0


def test_weights_round_trip_through_safetensors():
    model, result = _train()
    X, y = blobs(seed=5)
    fresh = build_model(SPEC, X.shape[1], 2)
    fresh.load_state_dict(state_from_bytes(state_to_bytes(result.state)))
    assert evaluate(fresh, X, y) == evaluate(model, X, y)


def test_evaluate_metrics():
    model, _ = _train(TrainConfig(epochs=10, batch_size=32, lr=0.02, seed=0))
    X, y = blobs(seed=3)
    m = evaluate(model, X, y)
    assert set(m) == {"loss", "accuracy", "auc", "f1"}
    assert m["accuracy"] > 0.85 and m["auc"] > 0.9 and 0 < m["f1"] <= 1 and m["loss"] > 0
    assert model.training  # restored after evaluation
    one_class = evaluate(model, X[y == 1], y[y == 1])
    assert "auc" not in one_class and one_class["accuracy"] > 0.8


def test_evaluate_multiclass_has_macro_f1_and_no_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    X = (rng.normal(size=(200, 4)) + y[:, None] * 2).astype(np.float32)
    model = build_model({"name": "logreg"}, 4, 3)
    fit(model, X, y, TrainConfig(epochs=10, batch_size=20, lr=0.05, seed=0), device=CPU)
    m = evaluate(model, X, y)
    assert set(m) == {"loss", "accuracy", "f1"} and m["accuracy"] > 0.8


def test_fit_with_validation_holds_out_rows():
    X, y = blobs()
    model = build_model({"name": "logreg"}, X.shape[1], 2)
    cfg = TrainConfig(epochs=5, batch_size=32, lr=0.05, seed=0, val_fraction=0.25)
    result, metrics = fit_with_validation(model, X, y, cfg, device=CPU)
    assert result.steps == 5 * -(-225 // 32)  # 225 training rows
    assert metrics["accuracy"] > 0.85
    _, none = fit_with_validation(model, X, y, TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0, val_fraction=0))
    assert none == {}


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((4, 6)), np.array([0, 1, 2, 0]), r"labels range over 0..2 but the model has 2 outputs"),
        (np.zeros((4, 6)), np.array([0, -1, 1, 0]), "labels range"),
        (np.zeros((4, 5)), np.array([0, 1, 1, 0]), "5 features but the model expects 6"),
        (np.zeros((4, 6)), np.array([0, 1, 1]), "shape"),
        (np.zeros((0, 6)), np.zeros(0), "zero rows"),
        (np.full((4, 6), np.nan), np.array([0, 1, 1, 0]), "NaN or infinite"),
        (np.array([["a"] * 6] * 4, dtype=object), np.array([0, 1, 1, 0]), "numeric arrays"),
        (np.zeros(6), np.zeros(6), "shape"),
    ],
)
def test_fit_rejects_bad_inputs(X, y, match):
    model = build_model({"name": "logreg"}, 6, 2)
    with pytest.raises(SchemaError, match=match):
        fit(model, X, y, CFG, device=CPU)


def test_evaluate_rejects_out_of_range_labels():
    model = build_model({"name": "logreg"}, 6, 2)
    with pytest.raises(SchemaError, match="out of range"):
        evaluate(model, np.zeros((2, 6)), np.array([0, 3]))


def test_fit_accepts_device_strings_and_tensors():
    X, y = blobs(n=64)
    model = build_model({"name": "logreg"}, X.shape[1], 2)
    r1 = fit(model, torch.from_numpy(X), torch.from_numpy(y), CFG, device="cpu")
    model2 = build_model({"name": "logreg"}, X.shape[1], 2)
    r2 = fit(model2, X, y, CFG, device=CPU)
    assert all(torch.equal(r1.state[k], r2.state[k]) for k in r1.state)


def test_fit_rejects_unavailable_device(monkeypatch):
    X, y = blobs(n=32)
    model = build_model({"name": "logreg"}, X.shape[1], 2)
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        fit(model, X, y, CFG, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        fit(model, X, y, CFG, device=torch.device("cuda"))


def test_continue_training_without_refitting_the_standardizer():
    X, y = blobs()
    model = build_model({"name": "logreg"}, X.shape[1], 2)
    first = fit(model, X, y, CFG, device=CPU)
    X2 = X * 3 + 5  # another party's differently scaled data
    second = fit(model, X2, y, CFG, device=CPU, fit_standardizer=False)
    for k in ("standardize.mean", "standardize.std"):
        assert torch.equal(second.state[k], first.state[k])
    assert not torch.equal(second.state["linear.weight"], first.state["linear.weight"])
    third = fit(model, X2, y, CFG, device=CPU)
    assert not torch.equal(third.state["standardize.mean"], first.state["standardize.mean"])
