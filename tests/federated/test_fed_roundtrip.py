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


@pytest.mark.parametrize("fold_ahead", [0, 2])
def test_concurrent_grid_gives_the_same_model(job, fold_ahead):
    """Parties run on a thread pool as soon as pushed (as on their own machines), the fold optionally on its
    own thread: the result is plain FedAvg's and each party still attests once."""
    import threading
    import time

    running = [0]
    most = [0]
    lock = threading.Lock()

    def gauge(msg, ctx, call_next):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # long enough for the pool to start the other parties meanwhile
        try:
            return call_next(msg, ctx)
        finally:
            with lock:
                running[0] -= 1

    grid = job.grid(lambda p, i: toy_app(DELTAS[i], EXAMPLES[i], mod=ConfidentialMod(job.runtime(p)), extra=[gauge]),
                    workers=3)
    with grid:
        strategy = job.confidential(FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3),
                                    fold_ahead=fold_ahead)
        result = strategy.start(grid, initial_arrays(), num_rounds=2)
    assert result.rounds_completed == 2 and not strategy.rejections
    arrays, _ = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                            kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    want = _plain_fedavg(2)
    for key, value in arrays.items():
        np.testing.assert_allclose(value.numpy(), want[key], rtol=1e-6)
    assert most[0] > 1  # the parties did run at the same time
    assert all(rt.attestations == 1 for rt in job.runtimes.values())


def test_concurrent_grid_runs_one_message_per_node_at_a_time_and_reports_crashes():
    import threading
    import time

    from flwr.app import ArrayRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    from mpctrain.enclave.federated.runtime import InProcessGrid, Node

    running, most, lock = [0], [0], threading.Lock()
    app = ClientApp()

    @app.train()
    def train(msg, context):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        raise RuntimeError("local failure")

    with pytest.raises(ValueError, match="workers"):
        InProcessGrid([Node(node_id=7, app=app)], workers=0)
    with InProcessGrid([Node(node_id=7, app=app)], workers=3) as grid:
        msgs = [grid.create_message(RecordDict({"a": ArrayRecord()}), "train", 7, "g") for _ in range(3)]
        replies = list(grid.send_and_receive(msgs))
    assert most[0] == 1  # three messages for one node, three workers: still one at a time
    assert len(replies) == 3 and all(isinstance(r, Message) and r.has_error() for r in replies)
    assert all("local failure" in r.error.reason for r in replies)


def test_post_quantum_hybrid_keys_carry_the_whole_round(sim_root, sim_attester):
    """ML-KEM-768 + X25519 for the enclave, every bank and the researcher: same model, hybrid headers."""
    from fedkit import build_job

    from mpctrain.seal.stream import StreamHeader

    job = build_job(sim_root, sim_attester, kem_alg="mlkem768-x25519")
    grid = job.grid(lambda p, i: toy_app(DELTAS[i], EXAMPLES[i], mod=ConfidentialMod(job.runtime(p))))
    result = job.confidential(FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3)).start(
        grid, initial_arrays(), num_rounds=2)
    want = _plain_fedavg(2)
    for key, value in job.open_output(result).items():
        np.testing.assert_allclose(value.numpy(), want[key], rtol=1e-6)
    headers = [StreamHeader.from_bytes(frames) for kind, frames in _header_frames(job.relayed)]
    assert len(headers) == 2 * 2 * 3 * 2  # rounds x (train, evaluate) x banks x (instruction, reply)
    assert all({alg for _, alg, _ in h.recipients} == {"mlkem768-x25519"} for h in headers)


def _header_frames(relayed):
    """The stream header frame of every sealed message the grid relayed (both directions)."""
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from mpctrain.enclave.federated.protocol import read_sealed_content

    for kind, wire in relayed:
        proto = ProtoMessage()
        proto.ParseFromString(wire)
        msg = message_from_proto(proto)
        if msg.has_content():
            frames, _ = read_sealed_content(msg.content)
            yield kind, frames[0]
