"""The FedAvg path aggregates in O(model) memory: peak allocation does not grow with the number of parties."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
from fedkit import build_job, toy_app
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from mpctrain.party.flower import ConfidentialMod

N_PARTIES = 8
N_PARAMS = 1 << 19  # 2 MiB of float32


def _peak_during_aggregation(job, n: int, streaming: bool) -> tuple[int, np.ndarray]:
    grid = job.grid(lambda p, i: toy_app(0.01 * (i + 1), 10 + i, mod=ConfidentialMod(job.runtime(p))))
    strategy = job.confidential(FedAvg(min_available_nodes=n, min_train_nodes=n), streaming=streaming)
    init = ArrayRecord({"w": Array(np.zeros(N_PARAMS, np.float32))})
    replies = list(grid.send_and_receive(strategy.configure_train(1, init, ConfigRecord(), grid)))
    gc.collect()
    tracemalloc.start()
    try:
        arrays, _ = strategy.aggregate_train(1, replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, arrays["w"].numpy()


def test_streaming_fedavg_peak_memory_is_o_model(sim_root, sim_attester):
    model_bytes = N_PARAMS * 4
    peaks = {}
    for n in (N_PARTIES // 2, N_PARTIES):
        job = build_job(sim_root, sim_attester, n=n)
        streaming_peak, streamed = _peak_during_aggregation(job, n, streaming=True)
        buffered_peak, buffered = _peak_during_aggregation(job, n, streaming=False)
        np.testing.assert_allclose(streamed, buffered, rtol=1e-6)
        peaks[n] = (streaming_peak / model_bytes, buffered_peak / model_bytes)
    small, large = peaks[N_PARTIES // 2], peaks[N_PARTIES]
    # streaming: a constant few models (float64 sum, one opened update), independent of the party count
    assert large[0] < 6 and abs(large[0] - small[0]) < 0.5, peaks
    # positive control: opening every reply first grows by one model per extra party
    assert large[1] - small[1] > (N_PARTIES // 2) * 0.9, peaks
