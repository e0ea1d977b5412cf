"""The RecordDict codec: exact round trip, and every malformed input is a CodecError, never a crash."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from safetensors.numpy import save as st_save

from mpctrain.enclave.federated.codec import META_KEY, CodecError, decode_numpy, decode_record, encode_record


def _content() -> RecordDict:
    return RecordDict({
        "arrays": ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4)),
                               "b": Array(np.array(3.5, dtype=np.float64)),
                               "i": Array(np.array([1, -2], dtype=np.int64))}),
        "metrics": MetricRecord({"num-examples": 10, "loss": 0.25, "hist": [1.0, 2.0]}),
        "config": ConfigRecord({"lr": 0.1, "name": "x", "blob": b"\x00\xff", "flags": [True, False],
                                "blobs": [b"a", b"b"]}),
    })


def test_round_trip_preserves_types_order_and_context():
    data = encode_record(_content(), {"round": 3})
    out, ctx = decode_record(data)
    assert ctx == {"round": 3}
    assert list(out.keys()) == ["arrays", "metrics", "config"]
    assert list(out["arrays"].keys()) == ["w", "b", "i"]
    np.testing.assert_array_equal(out["arrays"]["w"].numpy(), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert out["arrays"]["b"].numpy().shape == () and out["arrays"]["i"].numpy().dtype == np.int64
    assert dict(out["metrics"]) == {"num-examples": 10, "loss": 0.25, "hist": [1.0, 2.0]}
    assert out["config"]["blob"] == b"\x00\xff" and out["config"]["blobs"] == [b"a", b"b"]
    arrays, others, _ = decode_numpy(data)
    assert arrays[0][0] == "arrays" and arrays[0][1] == ["w", "b", "i"]
    assert others["config"]["values"]["blob"] == b"\x00\xff"


def _meta_blob(meta: dict | str, tensors: dict | None = None) -> bytes:
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    return st_save(tensors or {}, metadata={META_KEY: raw})


GOOD = encode_record(_content())


@pytest.mark.parametrize("data", [
    b"",
    b"garbage",
    GOOD[:5],
    GOOD[:-10],  # truncated safetensors
    GOOD[:20],  # truncated metadata
    pickle.dumps({"arrays": [1, 2, 3]}),
    (1 << 40).to_bytes(8, "little") + b"{}",  # header length far beyond the data
    st_save({"w": np.zeros(3, np.float32)}),  # safetensors, but not ours
    _meta_blob("{not json"),
    _meta_blob({"v": 2, "records": []}),
    _meta_blob({"v": 1, "records": "x"}),
    _meta_blob({"v": 1, "records": [{"name": "a", "kind": "pickle"}]}),
    _meta_blob({"v": 1, "records": [{"name": "a", "kind": "arrays", "keys": ["w"]}]}),  # array missing
    _meta_blob({"v": 1, "records": [{"name": "a", "kind": "arrays", "keys": ["w", "w"]}]}),
    _meta_blob({"v": 1, "records": [{"name": "m", "kind": "metrics", "values": {"x": "str"}}]}),
    _meta_blob({"v": 1, "records": [{"name": "m", "kind": "metrics", "values": {"x": {"$b": "!!"}}}]}),
    _meta_blob({"v": 1, "records": [{"name": "m", "kind": "configs", "values": {}},
                                     {"name": "m", "kind": "configs", "values": {}}]}),
    _meta_blob({"v": 1, "records": []}, {"stray": np.zeros(2, np.float32)}),  # an array no record names
])
def test_malformed_inputs_raise_codec_error(data):
    with pytest.raises(CodecError):
        decode_record(data)


def test_oversized_input_is_refused_before_parsing():
    with pytest.raises(CodecError, match="limit"):
        decode_record(GOOD, max_bytes=len(GOOD) - 1)
