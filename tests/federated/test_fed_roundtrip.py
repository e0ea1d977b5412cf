"""Confidential(strategy) against real ClientApps with the confidential mod, in the in-process runtime."""

from __future__ import annotations

import numpy as np
import pytest
from fedkit import initial_arrays, toy_app
from flwr.serverapp.strategy import FedAvg

from mpctrain.party.flower import ConfidentialMod, open_output

DELTAS = [0.1, 0.2, 0.4]
EXAMPLES = [10, 20, 30]


def _plain_fedavg(rounds: int) -> dict[str, np.ndarray]:
    w = {k: v.numpy().astype(np.float64) for k, v in initial_arrays().items()}
    mean_delta = sum(d * n for d, n in zip(DELTAS, EXAMPLES, strict=True)) / sum(EXAMPLES)
    return {k: v + rounds * mean_delta for k, v in w.items()}


def test_fedavg_round_trip_matches_plain_and_output_is_sealed(job):
    grid = job.grid(lambda p, i: toy_app(DELTAS[i], EXAMPLES[i], mod=ConfidentialMod(job.runtime(p))))
    strategy = job.confidential(FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3))
    assert strategy.streaming
    result = strategy.start(grid, initial_arrays(), num_rounds=2)
    assert result.rounds_completed == 2 and result.stop_reason == "completed"
    assert len(result.arrays) == 0  # the plaintext model never leaves the strategy
    assert not strategy.rejections
    arrays, ctx = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                              kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    want = _plain_fedavg(2)
    for key, value in arrays.items():
        np.testing.assert_allclose(value.numpy(), want[key], rtol=1e-6)
    assert ctx["rounds"] == 2
    # public metrics only: loss was aggregated (weighted) and is public
    assert result.train_metrics_clientapp[2]["loss"] == pytest.approx(
        sum(d * n for d, n in zip(DELTAS, EXAMPLES, strict=True)) / sum(EXAMPLES))
    assert result.evaluate_metrics_clientapp[2]["accuracy"] > 0.5
    # each party attested exactly once for the run
    assert all(rt.attestations == 1 for rt in job.runtimes.values())
