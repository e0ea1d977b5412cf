"""The fast server path: zero-copy open and decode, blocked FedAvg sums.

Every shortcut keeps the checks of the slow path: a malformed tensor table or a tampered, truncated,
extended or misaddressed stream fails the same typed way.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from safetensors.numpy import save as st_save

from mpctrain.enclave.federated import fedavg
from mpctrain.enclave.federated.codec import (
    META_KEY,
    CodecError,
    decode_numpy,
    decode_record,
    encode_record,
    encode_record_pieces,
    to_flower_array,
)
from mpctrain.enclave.federated.fedavg import StreamingMean
from mpctrain.enclave.federated.protocol import PlaintextBuffer, open_payload, open_payload_into, seal_pieces
from mpctrain.seal.errors import ContextMismatch, TamperedChunk, TruncatedStream, WrongRecipient
from mpctrain.seal.keys import IdentityKey, KemKey
from mpctrain.seal.stream import seal_bytes, seal_stream

META = json.dumps({"v": 1, "records": [{"name": "arrays", "kind": "arrays", "keys": ["w"]}], "ctx": {}})


def _raw(header: dict, data: bytes, pad: bytes = b"") -> bytes:
    blob = json.dumps({"__metadata__": {META_KEY: META}, **header}).encode() + pad
    return struct.pack("<Q", len(blob)) + blob + data


# -- zero-copy decode --------------------------------------------------------------------------------


def test_decode_numpy_returns_read_only_views_into_the_buffer():
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
                                                 "h": Array(np.ones(3, dtype=np.float16))}),
                          "metrics": MetricRecord({"num-examples": 4})})
    buf = bytearray(encode_record(content, {"round": 1}))
    arrays, others, ctx = decode_numpy(memoryview(buf))
    (_, keys, (w, h)), = arrays
    assert keys == ["w", "h"] and ctx == {"round": 1} and others["metrics"]["values"] == {"num-examples": 4}
    np.testing.assert_array_equal(w, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.shares_memory(w, np.frombuffer(buf, np.uint8)) and not w.flags.writeable
    with pytest.raises(ValueError):
        w[0, 0] = 1.0
    assert h.dtype == np.float16 and h.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("header, data", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),  # overlapping tensors
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),  # a gap before the first
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),  # shape and offsets disagree
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12)),  # trailing bytes
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(6)),  # data cut short
    ({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),  # a dtype numpy cannot view
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    ({"w": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8)),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8)),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}}, bytes(8)),
    ({"w": [1, 2]}, bytes(8)),
])
def test_malformed_tensor_tables_are_codec_errors(header, data):
    blob = _raw(header, data)
    for decode in (decode_numpy, decode_record):
        with pytest.raises(CodecError):
            decode(blob)


def test_duplicate_header_keys_and_bad_lengths_are_codec_errors():
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    meta = json.dumps({META_KEY: META})
    blob = f'{{"__metadata__":{meta},"w":{entry},"w":{entry}}}'.encode()
    with pytest.raises(CodecError, match="repeats a key"):
        decode_numpy(struct.pack("<Q", len(blob)) + blob + bytes(4))
    with pytest.raises(CodecError, match="header length"):
        decode_numpy(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(CodecError, match="not JSON"):
        decode_numpy(struct.pack("<Q", 4) + b"\xff\xfe{}")
    with pytest.raises(CodecError, match="expected bytes"):
        decode_numpy("not bytes")  # type: ignore[arg-type]


def test_library_written_files_still_decode():
    blob = st_save({"0.0": np.arange(3, dtype=np.float64)}, metadata={META_KEY: META})
    ((_, _, (w,)),), _, _ = decode_numpy(blob)
    assert w.tolist() == [0.0, 1.0, 2.0]


# -- opening straight into a reused buffer -----------------------------------------------------------

SENDER = IdentityKey.generate()
ENCLAVE = KemKey.generate()
KW = dict(purpose="p", job_id="j", object_id="o")


def _seal(payload: bytes, **kw) -> list[bytes]:
    return seal_bytes(payload, sender=SENDER, sender_id="bank-a", recipients=[("enclave", ENCLAVE.alg,
                      ENCLAVE.public_bytes())], chunk_size=1000, **{**KW, **kw})


def _open_into(frames, buffer=None, **kw):
    args = dict(recipient_id="enclave", recipient_key=ENCLAVE, sender_public=SENDER.public_bytes(),
                max_bytes=1 << 20, **KW)
    return open_payload_into(frames, buffer or PlaintextBuffer(), **{**args, **kw})


def test_open_into_equals_open_and_reuses_its_buffer():
    buffer = PlaintextBuffer()
    small, large = bytes(range(256)) * 9, bytes(reversed(range(256))) * 20
    view = _open_into(_seal(small), buffer)
    assert bytes(view) == small == open_payload(_seal(small), recipient_id="enclave", recipient_key=ENCLAVE,
                                                sender_public=SENDER.public_bytes(), max_bytes=1 << 20, **KW)
    first = view.obj
    assert bytes(_open_into(_seal(small[:100]), buffer)) == small[:100]
    assert _open_into(_seal(small[:100]), buffer).obj is first  # no allocation for a payload that fits
    assert bytes(_open_into(_seal(large), buffer)) == large  # grows (a new buffer) while the old view lives
    assert bytes(_open_into(_seal(b""), buffer)) == b""


def test_open_into_refuses_tampered_truncated_extended_and_misaddressed_streams():
    frames = _seal(bytes(2500))
    bad = bytearray(frames[2])
    bad[5] ^= 1
    with pytest.raises(TamperedChunk):
        _open_into([frames[0], frames[1], bytes(bad), frames[3]])
    with pytest.raises(TruncatedStream):
        _open_into(frames[:-1])
    with pytest.raises(TruncatedStream):
        _open_into([])
    with pytest.raises(TamperedChunk):
        _open_into([*frames, frames[-1]])
    with pytest.raises(TamperedChunk):
        _open_into([frames[0], frames[2], frames[1], frames[3]])
    with pytest.raises(WrongRecipient):
        _open_into(frames, recipient_id="bank-b")
    with pytest.raises(ContextMismatch):
        _open_into(frames, object_id="other")
    with pytest.raises(Exception, match="limit"):
        _open_into(frames, max_bytes=2000)


def test_open_into_handles_streams_of_undeclared_size():
    payload = bytes(range(256)) * 10
    frames = list(seal_stream(payload, sender=SENDER, sender_id="bank-a", chunk_size=1000,
                              recipients=[("enclave", ENCLAVE.alg, ENCLAVE.public_bytes())], **KW))
    assert bytes(_open_into(frames)) == payload
    with pytest.raises(Exception, match="limit"):
        _open_into(frames, max_bytes=2000)


# -- the blocked FedAvg sums ---------------------------------------------------------------------------


@pytest.mark.parametrize("last", [False, True])  # with the last add fused with the division, or not
@pytest.mark.parametrize("fold_every", [3, 10, 64])  # several folds and a partial one; one at the end; none
def test_blocked_float32_sums_match_a_float64_reference(monkeypatch, fold_every, last):
    monkeypatch.setattr(fedavg, "BLOCK", 7)  # blocks that do not divide the arrays
    monkeypatch.setattr(fedavg, "FOLD_EVERY", fold_every)
    rng = np.random.default_rng(0)
    updates = [(rng.standard_normal((5, 11)).astype(np.float32), rng.standard_normal(4), int(rng.integers(1, 50)))
               for _ in range(10)]
    mean = StreamingMean("n")
    for i, (w, b, n) in enumerate(updates):
        mean.add("arrays", ["w", "b"], [w, b], {"n": n, "loss": 1.0}, last=last and i == len(updates) - 1)
    assert any(mean._scaled) == (last and fold_every == 64)  # fused only where no float64 sum exists yet
    arrays, metrics = mean.result()
    total = sum(n for *_, n in updates)
    want_w = sum(w.astype(np.float64) * n for w, _, n in updates) / total
    want_b = sum(b * n for _, b, n in updates) / total
    assert arrays["w"].numpy().dtype == np.float32 and arrays["b"].numpy().dtype == np.float64
    np.testing.assert_allclose(arrays["w"].numpy(), want_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(arrays["b"].numpy(), want_b, rtol=1e-12)
    assert metrics["loss"] == pytest.approx(1.0)


def test_nothing_is_added_after_the_last_update():
    mean = StreamingMean("n")
    one = np.ones(3, np.float32)
    mean.add("arrays", ["w"], [one], {"n": 1})
    mean.add("arrays", ["w"], [one * 3], {"n": 3}, last=True)
    with pytest.raises(RuntimeError, match="last"):
        mean.add("arrays", ["w"], [one], {"n": 1})
    arrays, _ = mean.result()
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 2.5, np.float32))


def test_narrow_and_integer_dtypes_are_weighted_in_float64():
    mean = StreamingMean("n")
    big = np.full(4, 60000, dtype=np.float16)  # times a weight of 1000 would overflow float16
    mean.add("arrays", ["h", "i"], [big, np.array([1, 2], dtype=np.int64)], {"n": 1000})
    mean.add("arrays", ["h", "i"], [big, np.array([3, 4], dtype=np.int64)], {"n": 1000})
    arrays, _ = mean.result()
    assert np.isfinite(arrays["h"].numpy()).all() and arrays["h"].numpy()[0] == 60000
    assert arrays["i"].numpy().tolist() == [2, 3]


# -- sealing from pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[0], [10], [999, 1], [1000, 1000], [3, 2500, 0, 7, 1990], [4000], [1, 1, 1]])
def test_seal_pieces_equals_sealing_their_concatenation(sizes):
    rng = np.random.default_rng(len(sizes))
    pieces = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    mixed = [memoryview(p) if i % 2 else p for i, p in enumerate(pieces)]
    whole = b"".join(pieces)
    frames = seal_pieces(mixed, len(whole), sender=SENDER, sender_id="bank-a", chunk_size=1000,
                         recipients=[("enclave", ENCLAVE.alg, ENCLAVE.public_bytes())], **KW)
    assert len(frames) == 1 + max(1, -(-len(whole) // 1000))
    assert bytes(_open_into(frames)) == whole


def test_seal_pieces_refuses_a_wrong_total():
    with pytest.raises(ValueError, match="declared"):
        seal_pieces([b"abc"], 4, sender=SENDER, sender_id="bank-a", chunk_size=1000,
                    recipients=[("enclave", ENCLAVE.alg, ENCLAVE.public_bytes())], **KW)


def test_encoded_pieces_view_the_arrays_without_copying():
    w = np.arange(6, dtype=np.float32)
    arr = Array(w)
    pieces, total = encode_record_pieces(RecordDict({"arrays": ArrayRecord({"w": arr})}), {"k": 1})
    assert total == sum(memoryview(p).nbytes for p in pieces) and len(pieces) == 2
    assert np.shares_memory(np.frombuffer(pieces[1], np.uint8), np.frombuffer(arr.data, np.uint8))
    out, ctx = decode_record(b"".join(pieces))
    assert ctx == {"k": 1} and out["arrays"]["w"].numpy().tolist() == w.tolist()
    assert out["arrays"]["w"].data == arr.data  # the same .npy bytes Flower's Array(ndarray) makes


@pytest.mark.parametrize("arr", [np.array(2.5, dtype=np.float64), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                                 np.arange(10, dtype=np.int16)[::2], np.array([True, False])])
def test_flower_arrays_built_with_one_copy_read_back_like_flowers_own(arr):
    built = to_flower_array(arr)
    np.testing.assert_array_equal(built.numpy(), arr)
    assert built.numpy().shape == arr.shape and built.dtype == Array(arr).dtype and built.shape == Array(arr).shape


def test_a_federated_message_is_one_chunk_frame_per_array():
    from mpctrain.enclave.federated.protocol import seal_content
    from mpctrain.seal.stream import PARTS_VERSION, StreamHeader

    w = Array(np.zeros(1 << 20, np.float32))
    content = RecordDict({"arrays": ArrayRecord({"w": w})})
    frames = seal_content(content, {}, sender=SENDER, sender_id="bank-a", purpose="p", job_id="j", object_id="o",
                          recipients=[("enclave", ENCLAVE.alg, ENCLAVE.public_bytes())])
    header = StreamHeader.from_bytes(frames[0])
    # the header, the metadata, then the array: sealed from, and sized as, the very bytes Flower holds
    assert len(frames) == 3 and header.version == PARTS_VERSION and header.parts[1] == len(w.data)


def _npy(descr: str, shape: str, payload: bytes) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


@pytest.mark.parametrize("array", [
    Array("float32", (2,), "numpy.ndarray", b"garbage, not .npy"),
    Array("object", (1,), "numpy.ndarray", _npy("|O", "(1,)", bytes(8))),  # would need pickle to read
    Array("float32", (4,), "numpy.ndarray", _npy("<f4", "(4,)", bytes(8))),  # data shorter than the shape
    Array("complex64", (1,), "numpy.ndarray", _npy("<c8", "(1,)", bytes(8))),  # no safetensors name
])
def test_arrays_that_cannot_be_encoded_are_codec_errors(array):
    with pytest.raises(CodecError):
        encode_record(RecordDict({"arrays": ArrayRecord({"w": array})}))


def test_big_endian_and_fortran_arrays_encode_to_their_values():
    big = np.arange(5, dtype=">f8")
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    data = encode_record(RecordDict({"arrays": ArrayRecord({"b": Array(big), "f": Array(fortran)})}))
    ((_, keys, (b, f)),), _, _ = decode_numpy(data)
    assert keys == ["b", "f"] and b.tolist() == big.tolist() and f.tolist() == fortran.tolist()
