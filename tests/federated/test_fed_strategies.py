"""Any Flower strategy runs unchanged inside Confidential: same result as the plain strategy on plain traffic."""

from __future__ import annotations

import numpy as np
import pytest
from fedkit import initial_arrays, toy_app
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from mpctrain.party.flower import ConfidentialMod, open_output

DELTAS = [0.1, 0.22, 0.5, 0.3, -0.2]  # no ties in Krum scores, so the selection is order-free
EXAMPLES = [10, 20, 30, 40, 50]
COMMON = {"min_available_nodes": 5, "min_train_nodes": 5, "fraction_evaluate": 0.0}

STRATEGIES = {
    "FedAvg": lambda: FedAvg(**COMMON),
    "FedProx": lambda: FedProx(proximal_mu=0.1, **COMMON),
    "FedAdam": lambda: FedAdam(eta=0.05, **COMMON),
    "FedMedian": lambda: FedMedian(**COMMON),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2, **COMMON),
    "Krum": lambda: Krum(num_malicious_nodes=1, **COMMON),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, **COMMON),
    "Bulyan": lambda: Bulyan(num_malicious_nodes=0, **COMMON),
}


@pytest.fixture
def job5(sim_root, sim_attester):
    from fedkit import build_job

    return build_job(sim_root, sim_attester, n=5)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_inside_enclave_equals_plain_flower(job5, name):
    job = job5
    plain_grid = job.grid(lambda p, i: toy_app(DELTAS[i], EXAMPLES[i], mod=None))
    plain = STRATEGIES[name]().start(plain_grid, initial_arrays(), num_rounds=2)

    conf_grid = job.grid(lambda p, i: toy_app(DELTAS[i], EXAMPLES[i], mod=ConfidentialMod(job.runtime(p))))
    strategy = job.confidential(STRATEGIES[name]())
    assert strategy.streaming == (name in ("FedAvg", "FedProx"))
    result = strategy.start(conf_grid, initial_arrays(), num_rounds=2)
    assert not strategy.rejections
    arrays, _ = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                            kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    for key in plain.arrays:
        np.testing.assert_allclose(arrays[key].numpy(), plain.arrays[key].numpy(), rtol=1e-5, atol=1e-6)
    # and the inner strategy really ran: the model moved
    assert not np.allclose(arrays["w"].numpy(), initial_arrays()["w"].numpy())


def test_streaming_and_buffered_fedavg_agree(job5):
    job = job5
    results = []
    for streaming in (True, False):
        grid = job.grid(lambda p, i: toy_app(DELTAS[i], EXAMPLES[i], mod=ConfidentialMod(job.runtime(p))))
        strategy = job.confidential(FedAvg(**COMMON), streaming=streaming)
        result = strategy.start(grid, initial_arrays(), num_rounds=2)
        arrays, _ = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                                kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
        results.append((arrays, result.train_metrics_clientapp[2]["loss"]))
    np.testing.assert_allclose(results[0][0]["w"].numpy(), results[1][0]["w"].numpy(), rtol=1e-6)
    assert results[0][1] == pytest.approx(results[1][1])


def test_streaming_refuses_non_fedavg_aggregation(job5):
    with pytest.raises(ValueError, match="streaming"):
        job5.confidential(Krum(), streaming=True)


def test_client_side_clipping_mod_after_confidential_mod_sees_plaintext(job5):
    """Flower's client-side DP: the clipping mod runs inside confidential_mod, on the opened instruction."""
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    job = job5
    clip = 0.05
    grid = job.grid(lambda p, i: _with_mods(toy_app(1.0, 10, mod=None), [ConfidentialMod(job.runtime(p)),
                                                                           fixedclipping_mod]))
    inner = DifferentialPrivacyClientSideFixedClipping(FedAvg(**COMMON), noise_multiplier=0.0, clipping_norm=clip,
                                                       num_sampled_clients=5)
    strategy = job.confidential(inner)
    result = strategy.start(grid, initial_arrays(), num_rounds=1)
    assert not strategy.rejections
    arrays, _ = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                            kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    delta = np.concatenate([(arrays[k].numpy() - initial_arrays()[k].numpy()).ravel() for k in ("w", "b")])
    assert np.linalg.norm(delta) == pytest.approx(clip, rel=1e-4)  # each update was clipped to the norm


def _with_mods(app, mods):
    """Re-register the toy app's functions behind ``mods`` (first = outermost)."""
    from flwr.client.mod.utils import make_ffn

    app._registered_funcs = {name: make_ffn(fn, mods) for name, fn in app._registered_funcs.items()}
    return app


@pytest.mark.parametrize("name", ["Krum", "FedMedian", "FedAvg-buffered", "FedAvg-streaming"])
def test_authentic_update_of_another_shape_is_rejected_not_aborting_the_round(job5, name):
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    job = job5

    def odd_app(mod):
        app = ClientApp(mods=[mod])

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            update = ArrayRecord({"z": Array(np.zeros(3, np.float32))})
            return Message(RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 1, "loss": 0.0})}),
                           reply_to=msg)

        return app

    def app_for(p, i):
        mod = ConfidentialMod(job.runtime(p))
        return odd_app(mod) if i == 2 else toy_app(DELTAS[i], EXAMPLES[i], mod=mod)

    grid = job.grid(app_for)
    inner = FedAvg(**COMMON) if name.startswith("FedAvg") else STRATEGIES[name]()
    strategy = job.confidential(inner, streaming=name == "FedAvg-streaming")
    result = strategy.start(grid, initial_arrays(), num_rounds=1)
    assert result.rounds_completed == 1
    assert len(strategy.rejections) == 1 and strategy.rejections[0].party_id == job.parties[2].id
    arrays, _ = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                            kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    assert not np.allclose(arrays["w"].numpy(), initial_arrays()["w"].numpy())
