"""DP-SGD: per-sample clipping, noise, the RDP accountant and the budget stop in the loop."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dp_accounting.rdp import RdpAccountant

from mpctrain.train.dp import (
    DPSGD,
    MAX_DP_STEPS,
    DPConfig,
    PrivacyBudgetError,
    max_steps,
    noise_for_budget,
    per_sample_clipped_grads,
    spent_epsilon,
)
from mpctrain.train.loop import ConfigError, TrainConfig, dp_plan, fit
from mpctrain.train.registry import build_model

CPU = torch.device("cpu")


def blobs(n: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (rng.normal(size=(n, d)) + y[:, None] * 1.5) * 4.0  # unstandardised: large per-sample gradients
    return X.astype(np.float32), y.astype(np.int64)


def _per_sample_autograd(model, X, y) -> list[torch.Tensor]:
    """Reference: one backward pass per row, gradients flattened."""
    out = []
    for i in range(X.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return out


def _flat(grads: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    return torch.cat([g[i].reshape(-1) for g in grads.values()])


# --- per-sample clipping --------------------------------------------------------------------------------


def test_per_sample_grads_match_autograd_when_clip_is_loose():
    X, y = (torch.from_numpy(a) for a in blobs(n=8))
    model = build_model({"name": "mlp", "hidden": [5]}, 6, 2)
    grads, losses = per_sample_clipped_grads(model, X, y, clip=1e9)
    reference = _per_sample_autograd(model, X, y)
    for i, ref in enumerate(reference):
        torch.testing.assert_close(_flat(grads, i), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses, F.cross_entropy(model(X), y, reduction="none"))


def test_clipping_bounds_every_per_sample_norm():
    X, y = (torch.from_numpy(a) for a in blobs(n=64))
    model = build_model({"name": "mlp", "hidden": [8]}, 6, 2)
    clip = 0.05
    raw = _per_sample_autograd(model, X, y)
    grads, _ = per_sample_clipped_grads(model, X, y, clip=clip)
    norms = torch.stack([_flat(grads, i).norm() for i in range(64)])
    raw_norms = torch.stack([r.norm() for r in raw])
    assert (raw_norms > clip).sum() > 10  # the test data really needs clipping
    assert (norms <= clip * (1 + 1e-5)).all()
    big = raw_norms > clip
    torch.testing.assert_close(norms[big], torch.full_like(norms[big], clip), rtol=1e-4, atol=0)
    torch.testing.assert_close(norms[~big], raw_norms[~big])  # small gradients are left alone
    for i in torch.nonzero(big).flatten()[:5].tolist():  # clipping rescales, it does not change direction
        cos = F.cosine_similarity(_flat(grads, i), raw[i], dim=0)
        assert cos > 0.9999


def test_dpsgd_without_noise_sets_mean_of_clipped_grads():
    X, y = (torch.from_numpy(a) for a in blobs(n=16))
    model = build_model({"name": "logreg"}, 6, 2)
    engine = DPSGD(model, clip=0.1, noise_multiplier=0.0, generator=torch.Generator().manual_seed(0))
    engine.compute_grads(X, y, expected_batch_size=20.0)
    clipped, _ = per_sample_clipped_grads(model, X, y, clip=0.1)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, clipped[name].sum(0) / 20.0)


def test_dpsgd_noise_has_calibrated_scale_and_empty_batches_work():
    model = build_model({"name": "mlp", "hidden": [256]}, 6, 2)
    sigma, clip, expected = 1.3, 0.7, 10.0
    engine = DPSGD(model, clip=clip, noise_multiplier=sigma, generator=torch.Generator().manual_seed(0))
    loss = engine.compute_grads(torch.zeros((0, 6)), torch.zeros(0, dtype=torch.int64), expected)
    assert float(loss) == 0.0
    noise = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert noise.numel() > 2000
    assert float(noise.std()) == pytest.approx(sigma * clip / expected, rel=0.08)
    assert abs(float(noise.mean())) < 0.01


# --- accountant ---------------------------------------------------------------------------------------


def test_epsilon_increases_with_steps_and_falls_with_noise():
    eps = [spent_epsilon(1.0, 0.02, s, 1e-5) for s in (1, 10, 100, 1000)]
    assert eps == sorted(eps) and len(set(eps)) == 4
    assert spent_epsilon(2.0, 0.02, 100, 1e-5) < spent_epsilon(1.0, 0.02, 100, 1e-5)
    assert spent_epsilon(1.0, 0.02, 0, 1e-5) == 0.0
    assert spent_epsilon(0.0, 0.02, 5, 1e-5) == math.inf


@pytest.mark.parametrize(("sigma", "rate", "steps"), [(1.1, 0.01, 1000), (0.8, 0.05, 37), (3.0, 1.0, 5)])
def test_shortcut_matches_library_composition(sigma, rate, steps):
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    assert spent_epsilon(sigma, rate, steps, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_noise_for_budget_is_tight():
    sigma = noise_for_budget(1.0, 1e-5, 0.05, 200)
    assert spent_epsilon(sigma, 0.05, 200, 1e-5) <= 1.0
    assert spent_epsilon(sigma * 0.98, 0.05, 200, 1e-5) > 1.0
    assert noise_for_budget(1.0, 1e-5, 0.05, 0) == 0.0


def test_max_steps_is_the_last_step_within_budget():
    k = max_steps(3.0, 1e-5, 0.05, 1.0, limit=10_000)
    assert 0 < k < 10_000
    assert spent_epsilon(1.0, 0.05, k, 1e-5) <= 3.0 < spent_epsilon(1.0, 0.05, k + 1, 1e-5)
    assert max_steps(3.0, 1e-5, 0.05, 1.0, limit=3) == 3
    assert max_steps(3.0, 1e-5, 0.05, 0.0, limit=3) == 0
    assert max_steps(1.0, 1e-5, 0.05, 1.0, limit=3) == 0  # even one step is over budget


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0, "delta": 1e-5, "clip": 1}, "epsilon"),
        ({"epsilon": math.inf, "delta": 1e-5, "clip": 1}, "epsilon"),
        ({"epsilon": 1, "delta": 1.0, "clip": 1}, "delta"),
        ({"epsilon": 1, "delta": 0, "clip": 1}, "delta"),
        ({"epsilon": 0.01, "delta": 0.99, "clip": 1}, r"delta must be in \(0, 0.001\]"),  # b0: "epsilon 0"
        ({"epsilon": 1, "delta": 1e-5, "clip": 0}, "clip"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "noise_multiplier": -1}, "noise_multiplier"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "noise_seed": "x"}, "noise_seed"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "noise_seed": -1}, "noise_seed"),
        ({"epsilon": True, "delta": 1e-5, "clip": 1}, "epsilon"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "sample_rate": 0}, r"sample_rate must be in \(0, 1\]"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "sample_rate": 1.01}, "sample_rate"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "sample_rate": math.nan}, "sample_rate"),
        ({"epsilon": 1, "delta": 1e-5, "clip": 1, "sample_rate": True}, "sample_rate"),
    ],
)
def test_bad_dp_configs(kwargs, match):
    with pytest.raises(PrivacyBudgetError, match=match):
        DPConfig(**kwargs)


def test_dp_config_from_dict():
    dp = DPConfig.from_dict({"epsilon": 3, "delta": 1e-5, "clip": 1.0, "sample_rate": 0.05})
    assert dp.noise_multiplier is None and dp.sample_rate == 0.05
    with pytest.raises(PrivacyBudgetError, match=r"need \['sample_rate'\] \(sample_rate: each row's sampling"):
        DPConfig.from_dict({"epsilon": 3, "delta": 1e-5, "clip": 1.0})  # a manifest may not leave it to the rows
    with pytest.raises(PrivacyBudgetError, match="unknown DP setting"):
        DPConfig.from_dict({"epsilon": 3, "delta": 1e-5, "clip": 1.0, "sigma": 1})
    with pytest.raises(PrivacyBudgetError, match=r"need \['clip'\]"):
        DPConfig.from_dict({"epsilon": 3, "delta": 1e-5, "sample_rate": 0.1})
    with pytest.raises(PrivacyBudgetError, match="may not fix the DP noise seed"):
        DPConfig.from_dict({"epsilon": 3, "delta": 1e-5, "clip": 1.0, "noise_seed": 1})


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: spent_epsilon(1.0, 0.0, 1, 1e-5), "sample rate"),
        (lambda: spent_epsilon(1.0, 0.1, -1, 1e-5), "steps"),
        (lambda: spent_epsilon(1.0, 0.1, 1, 2.0), "delta"),
        (lambda: spent_epsilon(-1.0, 0.1, 1, 1e-5), "noise multiplier"),
        (lambda: noise_for_budget(-1.0, 1e-5, 0.1, 10), "epsilon"),
        (lambda: noise_for_budget(1.0, 1e-5, 1.5, 10), "sample rate"),
    ],
)
def test_accountant_rejects_bad_arguments(call, match):
    with pytest.raises(PrivacyBudgetError, match=match):
        call()


# --- DP in the loop -------------------------------------------------------------------------------------

CFG = TrainConfig(epochs=3, batch_size=40, lr=0.05, seed=0)  # 400 rows: rate 0.1, 10 steps per epoch


def _dp_fit(dp: DPConfig, spec=None):
    X, y = blobs()
    model = build_model(spec or {"name": "logreg"}, X.shape[1], 2)
    return model, fit(model, X, y, CFG, device=CPU, dp=dp)


def test_loop_stops_before_exceeding_budget():
    dp = DPConfig(epsilon=3.0, delta=1e-5, clip=1.0, noise_multiplier=1.0, noise_seed=3)
    _, result = _dp_fit(dp)
    allowed = max_steps(3.0, 1e-5, 0.1, 1.0, limit=30)
    assert 0 < allowed < 30
    assert result.steps == allowed
    assert result.stop_reason is not None and result.stop_reason.startswith("privacy budget")
    assert f"stopped after {allowed} step(s)" in result.stop_reason
    assert result.epsilon <= 3.0 < spent_epsilon(1.0, 0.1, allowed + 1, 1e-5)
    assert result.noise_multiplier == 1.0 and result.delta == 1e-5
    assert 1 <= len(result.history) <= math.ceil(allowed / 10)


def test_loop_calibrates_noise_to_spend_the_budget():
    dp = DPConfig(epsilon=2.0, delta=1e-5, clip=1.0, noise_seed=3)
    _, result = _dp_fit(dp)
    assert result.stop_reason is None and result.steps == 30 and len(result.history) == 3
    assert 0.9 * 2.0 <= result.epsilon <= 2.0
    assert result.noise_multiplier == pytest.approx(noise_for_budget(2.0, 1e-5, 0.1, 30))
    # Data statistics are not released under DP: the standardiser stays as built.
    assert torch.equal(result.state["standardize.mean"], torch.zeros(6))


def test_zero_noise_is_refused_by_the_budget():
    _, result = _dp_fit(DPConfig(epsilon=5.0, delta=1e-5, clip=1.0, noise_multiplier=0.0, noise_seed=1))
    assert result.steps == 0 and result.epsilon == 0.0 and result.history == []
    assert "epsilon=inf" in result.stop_reason


def test_dp_fit_is_reproducible_only_with_the_same_noise_seed():
    def run(seed):
        dp = DPConfig(epsilon=5.0, delta=1e-5, clip=1.0, noise_multiplier=1.2, noise_seed=seed)
        result = _dp_fit(dp, {"name": "mlp", "hidden": [4]})[1]
        assert result.steps == 30
        return result.state

    a, b, c = run(11), run(11), run(12)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_default_noise_seed_is_secret_and_fresh():
    dp = DPConfig(epsilon=5.0, delta=1e-5, clip=1.0, noise_multiplier=1.2)
    assert "noise_seed" not in repr(dp)
    assert dp.generator_seed() != dp.generator_seed()
    a = _dp_fit(dp)[1].state
    b = _dp_fit(dp)[1].state
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_dp_with_dropout_runs_under_vmap_and_is_reproducible():
    def run():
        dp = DPConfig(epsilon=8.0, delta=1e-5, clip=1.0, noise_multiplier=1.0, noise_seed=5)
        return _dp_fit(dp, {"name": "mlp", "hidden": [8], "dropout": 0.3})[1]

    a, b = run(), run()
    assert a.steps == 30 and a.stop_reason is None
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_reported_epsilon_grows_with_training_length_and_epochs_are_reported():
    X, y = blobs()
    dp = DPConfig(epsilon=50.0, delta=1e-5, clip=1.0, noise_multiplier=1.5, noise_seed=2)
    spent = []
    for epochs in (1, 2, 4):
        seen: list[int] = []
        model = build_model({"name": "logreg"}, X.shape[1], 2)
        cfg = TrainConfig(epochs=epochs, batch_size=40, lr=0.05, seed=0)
        result = fit(model, X, y, cfg, device=CPU, dp=dp, on_epoch=lambda e, _loss, seen=seen: seen.append(e))
        assert result.steps == 10 * epochs and seen == list(range(1, epochs + 1))
        assert result.epsilon == pytest.approx(spent_epsilon(1.5, 0.1, 10 * epochs, 1e-5))
        spent.append(result.epsilon)
    assert spent[0] < spent[1] < spent[2] <= 50.0


@pytest.mark.parametrize("noise_multiplier", [None, 1.0], ids=["calibrated", "fixed-stops-early"])
def test_a_declared_sample_rate_makes_noise_steps_and_epsilon_independent_of_the_rows(noise_multiplier):
    """Derived from the rows (batch_size / n), the rate made the noise, the steps and the ε spent exact functions
    of n, which a DP job publishes. Declared, the same configuration gives the same accounting for any n."""
    dp = DPConfig(epsilon=3.0, delta=1e-5, clip=1.0, noise_multiplier=noise_multiplier, sample_rate=0.1,
                  noise_seed=4)
    planned = dp_plan(CFG, dp)  # from the configuration alone, before any row is seen
    assert (planned.rate, planned.steps_per_epoch, planned.planned, planned.divisor) == (0.1, 10, 30, 40.0)
    accounting = set()
    for n in (150, 400, 1000):
        X, y = blobs(n)
        result = fit(build_model({"name": "logreg"}, X.shape[1], 2), X, y, CFG, device=CPU, dp=dp)
        accounting.add((result.noise_multiplier, result.steps, result.epsilon, result.stop_reason))
        assert dp_plan(CFG, dp, rows=n) == planned
    assert len(accounting) == 1
    sigma, steps, eps, _ = accounting.pop()
    assert (sigma, steps) == (planned.sigma, planned.allowed)
    assert eps == spent_epsilon(sigma, 0.1, steps, 1e-5) <= 3.0
    assert (steps < 30) == (noise_multiplier is not None)


def test_every_epoch_is_reported_even_when_its_batches_were_all_empty():
    """How many epochs a DP fit reports must not depend on the rows: one row at rate 0.5 (2 steps an epoch) is
    missed by a whole epoch about one time in four."""
    X, y = blobs(1)
    dp = DPConfig(epsilon=50.0, delta=1e-5, clip=1.0, noise_multiplier=5.0, sample_rate=0.5, noise_seed=1)
    seen: list[int] = []
    cfg = TrainConfig(epochs=20, batch_size=1, lr=0.05, seed=0)
    result = fit(build_model({"name": "logreg"}, 6, 2), X, y, cfg, device=CPU, dp=dp,
                 on_epoch=lambda e, _loss: seen.append(e))
    assert result.steps == 40 and result.stop_reason is None
    assert any(math.isnan(h) for h in result.history)  # the case under test happened
    assert seen == list(range(1, 21)) and len(result.history) == 20


def test_a_dp_plan_past_the_step_limit_is_refused():
    dp = DPConfig(epsilon=3.0, delta=1e-5, clip=1.0, noise_multiplier=1.0, sample_rate=1e-4)
    with pytest.raises(ConfigError, match=f"the limit is {MAX_DP_STEPS}: lower 'epochs' or raise 'sample_rate'"):
        dp_plan(TrainConfig(epochs=101, batch_size=1, lr=0.1, seed=0), dp)
    assert dp_plan(TrainConfig(epochs=100, batch_size=1, lr=0.1, seed=0), dp).planned == MAX_DP_STEPS
