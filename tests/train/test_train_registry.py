"""Model registry (seeded, validated builds) and device choice."""

from __future__ import annotations

import pytest
import torch

from mpctrain.train.device import DeviceUnavailable, pick_device
from mpctrain.train.registry import MODELS, ModelSpecError, Standardize, UnknownModel, build_model, register_model


@pytest.mark.parametrize("spec", [{"name": "logreg"}, {"name": "mlp", "hidden": [16, 8], "dropout": 0.1}])
def test_build_model_shapes(spec):
    model = build_model(spec, input_dim=5, num_classes=3)
    assert model(torch.zeros(4, 5)).shape == (4, 3)
    assert any(isinstance(m, Standardize) for m in model.modules())


def test_mlp_hidden_sizes_come_from_spec():
    model = build_model({"name": "mlp", "hidden": [7, 3]}, 4, 2)
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [7, 3, 2]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model({"name": "mlp", "hidden": [8], "seed": 4}, 6, 2)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model({"name": "mlp", "hidden": [8], "seed": 4}, 6, 2)
    c = build_model({"name": "mlp", "hidden": [8], "seed": 5}, 6, 2)
    assert _same(a, b)
    assert not _same(a, c)


@pytest.mark.parametrize(
    ("spec", "dims", "match"),
    [
        ({"name": "mlp", "hidden": [0]}, (3, 2), "widths"),
        ({"name": "mlp", "hidden": 8}, (3, 2), "non-empty list"),
        ({"name": "mlp", "hidden": []}, (3, 2), "non-empty list"),
        ({"name": "mlp", "dropout": 1.0}, (3, 2), "dropout"),
        ({"name": "mlp", "hidden": [65536] * 70}, (3, 2), "too large"),
        ({"name": "mlp", "hidden": [65536, 65536]}, (3, 2), "too large"),
        ({"name": "mlp", "depth": 3}, (3, 2), r"does not take parameter\(s\) \['depth'\]"),
        ({"name": "logreg", "hidden": [3]}, (3, 2), "does not take"),
        ({"name": "logreg", "seed": -1}, (3, 2), "seed"),
        ({"name": "logreg"}, (0, 2), "input_dim"),
        ({"name": "logreg"}, (3, 1), "at least 2"),
        ({"name": "logreg"}, (3, True), "num_classes"),
        ({"name": "logreg"}, (3, 10**9), "at most 65536"),
        ({"name": "logreg"}, (10**7, 2), "at most 1048576"),
        (["logreg"], (3, 2), "mapping"),
    ],
)
def test_bad_specs(spec, dims, match):
    with pytest.raises(ModelSpecError, match=match):
        build_model(spec, *dims)


@pytest.mark.parametrize("spec", [{"name": "resnet"}, {}, {"name": None}])
def test_unknown_model(spec):
    with pytest.raises(UnknownModel, match="registered"):
        build_model(spec, 3, 2)


def test_register_model_adds_and_refuses_duplicates():
    name = "test-linear-no-bias"
    try:

        @register_model(name, {"bias"})
        def _factory(input_dim: int, num_classes: int, bias: bool = False) -> torch.nn.Module:
            return torch.nn.Linear(input_dim, num_classes, bias=bias)

        assert build_model({"name": name}, 3, 2).bias is None
        assert build_model({"name": name, "bias": True}, 3, 2).bias is not None
        with pytest.raises(ModelSpecError, match="already registered"):
            register_model(name)(_factory)
    finally:
        MODELS.pop(name, None)


def test_standardize_handles_constant_columns():
    s = Standardize(2)
    s.fit_stats(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    out = s(torch.tensor([[2.0, 5.0]]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0]]))
    assert torch.equal(s.std, torch.tensor([1.0, 1.0]))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        pick_device("tpu")
    with pytest.raises(DeviceUnavailable, match="must be a string"):
        pick_device(None)
    with pytest.raises(DeviceUnavailable, match="invalid CUDA device"):
        pick_device("cuda:x")


def test_pick_device_cuda_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceUnavailable, match="only 1 CUDA device"):
        pick_device("cuda:3")
