"""One consented party's authentic but malformed reply is rejected; it never aborts the job or sets the rules.

Each case changes bank-a's plaintext reply *before* its own mod seals it (a mod placed after the
confidential one), so the enclave receives a correctly sealed, correctly signed reply carrying the bad
content, exactly what a malicious bank can send.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from fedkit import build_job, initial_arrays, toy_app
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from mpctrain.enclave.federated.codec import CodecError, decode_numpy
from mpctrain.enclave.federated.fedavg import InconsistentUpdate, StreamingMean
from mpctrain.enclave.federated.parts import npy_layout
from mpctrain.party.flower import ConfidentialMod


def _tamper(category: str, change):
    def mod(msg, context, call_next):
        out = call_next(msg, context)
        if not out.has_error() and msg.metadata.message_type.startswith(category):
            change(out)
        return out
    return mod


def _metric(key, value):
    def change(out):
        metrics = dict(out.content["metrics"])
        metrics[key] = value
        out.content["metrics"] = MetricRecord(metrics)
    return change


def _arrays(convert):
    def change(out):
        arrays = out.content["arrays"]
        out.content["arrays"] = ArrayRecord({k: Array(convert(v.numpy())) for k, v in arrays.items()})
    return change


def _run(sim_root, sim_attester, strategy, change, category="train", **kw):
    job = build_job(sim_root, sim_attester, n=3, rounds=1)
    grid = job.grid(lambda p, i: toy_app(0.1 * (i + 1), 10 + i, mod=ConfidentialMod(job.runtime(p)),
                                         extra=[_tamper(category, change)] if i == 0 else []))
    conf = job.confidential(strategy, **kw)
    result = conf.start(grid, initial_arrays(), num_rounds=1)
    opened = [f["party"] for k, f in job.events.events if k == "fl.update_accepted" and f["category"] == category]
    rejected = {f["party"] for k, f in job.events.events if k == "fl.reply_rejected" and f["category"] == category}
    return result, [p for p in opened if p not in rejected], job  # opened, then also passed the content checks


def _strategy(cls, evaluate=0.0):
    return cls(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3, fraction_evaluate=evaluate)


BAD_TRAIN = {
    "weight beyond 64 bits": (_metric("num-examples", 10**400), "must be a finite non-negative number"),
    "weight of 2**64": (_metric("num-examples", 2**64), "must be a finite non-negative number"),
    "metric beyond 64 bits": (_metric("loss", -(10**30)), "outside 64 bits"),
    "float64 update to a float32 model": (_arrays(lambda a: a.astype(np.float64)), "dtypes differ"),
    "int8 update": (_arrays(lambda a: np.zeros(a.shape, np.int8)), "dtypes differ"),
    "big-endian update": (_arrays(lambda a: a.astype(">f4")), "dtypes differ"),
    "NaN in the update": (_arrays(lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a)
                                  .astype(a.dtype)), "NaN or infinite"),
    "infinity in the update": (_arrays(lambda a: np.full_like(a, -np.inf)), "NaN or infinite"),
}


@pytest.mark.parametrize("bad", sorted(BAD_TRAIN))
@pytest.mark.parametrize("cls", [FedAvg, FedMedian, FedTrimmedAvg, Krum])
def test_a_bad_update_is_rejected_and_the_round_goes_on(sim_root, sim_attester, cls, bad):
    change, reason = BAD_TRAIN[bad]
    result, accepted, job = _run(sim_root, sim_attester, _strategy(cls), change)
    assert result.rounds_completed == 1 and result.stop_reason == "completed"
    assert len(result.rejected) == 1 and "bank-a" in result.rejected[0] and reason in result.rejected[0]
    assert all(np.isfinite(a.numpy()).all() for a in job.open_output(result).values())
    assert sorted(accepted) == ["bank-b", "bank-c"]


@pytest.mark.parametrize("cls", [FedMedian, FedTrimmedAvg, Krum])
def test_a_metric_in_another_form_is_rejected_by_the_majority(sim_root, sim_attester, cls):
    result, _, _ = _run(sim_root, sim_attester, _strategy(cls), _metric("loss", [1.0, 2.0]))
    assert result.stop_reason == "completed"
    assert len(result.rejected) == 1 and "metric forms differ" in result.rejected[0]


def test_streaming_fedavg_a_first_reply_in_another_form_sets_no_rule(sim_root, sim_attester):
    """bank-a replies first with a list-valued loss: the honest updates still count, the majority's form of
    the metric is the one averaged, and bank-a's arrays (well formed) are still part of the mean."""
    result, accepted, _ = _run(sim_root, sim_attester, _strategy(FedAvg), _metric("loss", [1.0, 2.0]))
    assert result.stop_reason == "completed" and result.rejected == []
    assert sorted(accepted) == ["bank-a", "bank-b", "bank-c"]
    # bank-b (delta 0.2, 11 examples) and bank-c (0.3, 12): the loss averaged over them alone
    assert result.train_metrics_clientapp[1]["loss"] == pytest.approx((0.2 * 11 + 0.3 * 12) / 23)


@pytest.mark.parametrize("bad", [_metric("zzz", 1.0), _metric("accuracy", [1.0, 2.0]),
                                 _metric("num-examples", 10**400)])
def test_a_bad_evaluate_reply_is_rejected_and_the_round_goes_on(sim_root, sim_attester, bad):
    result, _, _ = _run(sim_root, sim_attester, _strategy(FedAvg, evaluate=1.0), bad, category="evaluate")
    assert result.rounds_completed == 1 and result.stop_reason == "completed"
    assert len(result.rejected) == 1 and "bank-a" in result.rejected[0]
    # bank-b (accuracy 0.7, 11 examples) and bank-c (0.8, 12)
    assert result.evaluate_metrics_clientapp[1]["accuracy"] == pytest.approx((0.7 * 11 + 0.8 * 12) / 23)


def test_a_reply_the_mod_cannot_seal_is_refused_at_the_bank(sim_root, sim_attester):
    """An app reply whose array bytes are not a sane .npy buffer: the bank sends a typed refusal, no crash."""
    def change(out):
        header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9999999999999999999), }"
        header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
        data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
        out.content["arrays"] = ArrayRecord({"w": Array(dtype="float32", shape=(0,), stype="numpy.ndarray",
                                                        data=data)})

    result, accepted, _ = _run(sim_root, sim_attester, _strategy(FedAvg), change)
    assert result.stop_reason == "completed" and sorted(accepted) == ["bank-b", "bank-c"]


# -- the decoders refuse shapes numpy cannot index, even for zero-size arrays -------------------------------


def test_npy_with_a_dimension_numpy_cannot_index_is_a_codec_error():
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9999999999999999999), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    with pytest.raises(CodecError, match="beyond what numpy can index"):
        npy_layout(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    ok = b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1000), }"
    ok += b" " * (63 - (10 + len(ok)) % 64) + b"\n"
    assert npy_layout(b"\x93NUMPY\x01\x00" + len(ok).to_bytes(2, "little") + ok)[1] == (0, 1000)


def test_safetensors_with_a_dimension_numpy_cannot_index_is_a_codec_error():
    meta = json.dumps({"v": 1, "records": [{"name": "a", "kind": "arrays", "keys": ["w"]}], "ctx": {}})
    header = json.dumps({"__metadata__": {"mpctrain.record": meta},
                         "0.0": {"dtype": "F32", "shape": [0, 10**30], "data_offsets": [0, 0]}}).encode()
    with pytest.raises(CodecError, match="beyond what numpy can index"):
        decode_numpy(struct.pack("<Q", len(header)) + header)


# -- the streaming mean: the model sent fixes dtypes, the majority a metric's form ----------------------------


def test_streaming_mean_takes_dtypes_from_the_model_sent_not_the_first_update():
    mean = StreamingMean("n", expected=[("w", (4,), "<f4")])
    with pytest.raises(InconsistentUpdate, match="dtypes"):
        mean.add("arrays", ["w"], [np.zeros(4, np.int8)], {"n": 1})
    mean.add("arrays", ["w"], [np.full(4, 0.7, np.float32)], {"n": 1})
    mean.add("arrays", ["w"], [np.full(4, 0.9, np.float32)], {"n": 1}, last=True)
    arrays, _ = mean.result()
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 0.8, np.float32))
    assert arrays["w"].numpy().dtype == np.float32


def test_streaming_mean_checks_every_metric_before_adding_anything():
    mean = StreamingMean("n", expected=[("w", (2,), "<f4")])
    with pytest.raises(InconsistentUpdate, match="outside 64 bits"):
        mean.add("arrays", ["w"], [np.ones(2, np.float32)], {"n": 1, "loss": 2**70})
    assert mean.count == 0 and mean.total_weight == 0 and mean.result() == (None, None)


def test_streaming_mean_averages_the_form_most_updates_report():
    mean = StreamingMean("n")
    mean.add("arrays", ["w"], [np.ones(2, np.float32)], {"n": 1, "loss": [5.0, 5.0]})
    mean.add("arrays", ["w"], [np.ones(2, np.float32)], {"n": 1, "loss": 1.0})
    mean.add("arrays", ["w"], [np.ones(2, np.float32)], {"n": 3, "loss": 3.0})
    _, metrics = mean.result()
    assert metrics["loss"] == pytest.approx((1.0 + 9.0) / 4)


def test_the_host_cannot_pick_another_handler_of_the_consented_app(sim_root, sim_attester):
    """The full message type (``train.<action>``) is sealed: a host that rewrites ``train`` into
    ``train.finetune_all`` gets a refusal, and the other handler never runs."""
    job = build_job(sim_root, sim_attester, n=3, rounds=1)
    ran: list[str] = []

    def app_for(p, i):
        app = toy_app(0.1, 10, mod=ConfidentialMod(job.runtime(p)))

        @app.train("finetune_all")
        def finetune(msg: Message, context):
            ran.append(msg.metadata.message_type)
            return Message(RecordDict({"arrays": msg.content["arrays"],
                                       "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)
        return app

    grid = job.grid(app_for)
    original = grid.push_messages

    def rewrite(messages):
        messages = list(messages)
        for m in messages:
            if m.metadata.message_type == "train":
                m.metadata.__dict__["_message_type"] = "train.finetune_all"
        return original(messages)

    grid.push_messages = rewrite
    result = job.confidential(_strategy(FedAvg)).start(grid, initial_arrays(), num_rounds=1)
    assert ran == []
    assert result.rounds_completed == 0 and "no update was accepted" in result.stop_reason


def test_an_oversized_evaluate_reply_is_rejected_before_it_is_opened(sim_root, sim_attester):
    """Every party's evaluate reply is held at once: they get a far smaller cap than model updates."""
    def big(out):
        out.content["arrays"] = ArrayRecord({"x": Array(np.zeros(1 << 18, np.float32))})  # 1 MiB

    result, _, _ = _run(sim_root, sim_attester, _strategy(FedAvg, evaluate=1.0), big, category="evaluate",
                        max_evaluate_bytes=1 << 19)
    assert result.stop_reason == "completed"
    assert len(result.rejected) == 1 and "bank-a" in result.rejected[0] and "StreamTooLarge" in result.rejected[0]
