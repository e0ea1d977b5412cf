"""The part layout: one declared sealed chunk per array, opened straight into Flower's own array bytes.

Every shortcut keeps the checks of the safetensors layout: foreign .npy bytes are parsed strictly, a
tampered, swapped, dropped or extra part fails typed, and content the header cannot declare falls back.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from mpctrain.enclave.federated import protocol
from mpctrain.enclave.federated.codec import CodecError
from mpctrain.enclave.federated.errors import EnvelopeError
from mpctrain.enclave.federated.parts import decode_parts, decode_parts_numpy, encode_parts, npy_layout
from mpctrain.enclave.federated.protocol import PlaintextBuffer, open_content, open_numpy, seal_content
from mpctrain.seal.errors import TamperedChunk, TruncatedStream
from mpctrain.seal.keys import IdentityKey, KemKey
from mpctrain.seal.stream import PARTS_VERSION, STREAM_VERSION, StreamHeader

SENDER = IdentityKey.generate()
ENCLAVE = KemKey.generate()
KW = dict(purpose="p", job_id="j", object_id="o")


def _content() -> RecordDict:
    return RecordDict({
        "arrays": ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4)),
                               "b": Array(np.array([1, -2], dtype=np.int64)),
                               "f": Array(np.asfortranarray(np.arange(6.0).reshape(2, 3))),
                               "e": Array(np.arange(3, dtype=">f8"))}),
        "metrics": MetricRecord({"num-examples": 64, "loss": [0.5, 0.25]}),
        "config": ConfigRecord({"tag": b"\x00\xff", "lr": 0.1, "name": "x"}),
    })


def _seal(content: RecordDict, ctx: dict | None = None) -> list[bytes]:
    return seal_content(content, ctx or {"nonce": "n1"}, sender=SENDER, sender_id="bank-a",
                        recipients=[("enclave", ENCLAVE.alg, ENCLAVE.public_bytes())], **KW)


def _open(frames, **kw):
    args = dict(recipient_id="enclave", recipient_key=ENCLAVE, sender_public=SENDER.public_bytes(),
                max_bytes=1 << 20, **KW)
    return open_content(frames, **{**args, **kw})


def _open_numpy(frames, buffer=None):
    return open_numpy(frames, buffer or PlaintextBuffer(), recipient_id="enclave", recipient_key=ENCLAVE,
                      sender_public=SENDER.public_bytes(), max_bytes=1 << 20, **KW)


def _same(a: RecordDict, b: RecordDict) -> None:
    assert list(a.keys()) == list(b.keys())
    for key, arr in a["arrays"].items():
        got = b["arrays"][key]
        np.testing.assert_array_equal(got.numpy(), arr.numpy())
        assert (got.dtype, got.shape, got.stype) == (arr.dtype, arr.shape, arr.stype)
    assert dict(a["metrics"]) == dict(b["metrics"]) and dict(a["config"]) == dict(b["config"])


def test_sealed_parts_open_to_the_same_record_with_flowers_own_bytes():
    content = _content()
    frames = _seal(content)
    header = StreamHeader.from_bytes(frames[0])
    assert header.version == PARTS_VERSION and len(header.parts) == 1 + 4 == len(frames) - 1
    assert header.parts[1:] == tuple(len(a.data) for a in content["arrays"].values())
    out, ctx = _open(frames)
    _same(content, out)
    assert ctx == {"nonce": "n1"}
    assert out["arrays"]["w"].data == content["arrays"]["w"].data  # byte for byte what Array(ndarray) holds


def test_numpy_views_of_both_layouts_agree():
    content = _content()
    buffer = PlaintextBuffer()
    ((name, keys, arrays),), others, ctx = _open_numpy(_seal(content), buffer)
    assert name == "arrays" and keys == ["w", "b", "f", "e"] and ctx == {"nonce": "n1"}
    for key, arr in zip(keys, arrays, strict=True):
        np.testing.assert_array_equal(arr, content["arrays"][key].numpy())
        assert not arr.flags.writeable
    assert others["metrics"]["values"] == {"num-examples": 64, "loss": [0.5, 0.25]}
    assert others["config"]["values"]["tag"] == b"\x00\xff"


def test_content_the_header_cannot_declare_falls_back_to_the_safetensors_layout(monkeypatch):
    import mpctrain.seal.stream as stream

    monkeypatch.setattr(stream, "MAX_PARTS", 3)
    content = _content()
    del content["arrays"]["e"]  # that layout stores big-endian arrays little-endian
    frames = _seal(content)
    assert StreamHeader.from_bytes(frames[0]).version == STREAM_VERSION
    _same(content, _open(frames)[0])
    ((_, _, arrays),), _, _ = _open_numpy(frames)
    np.testing.assert_array_equal(arrays[0], content["arrays"]["w"].numpy())


def test_a_message_over_the_part_limit_to_several_recipients_is_refused(monkeypatch):
    import mpctrain.seal.stream as stream

    monkeypatch.setattr(stream, "MAX_PARTS", 3)
    with pytest.raises(EnvelopeError, match="several recipients"):
        seal_content(_content(), {}, sender=SENDER, sender_id="enclave", **KW, recipients=[
            ("enclave", ENCLAVE.alg, ENCLAVE.public_bytes()), ("b", ENCLAVE.alg, KemKey.generate().public_bytes())])


def test_an_array_over_the_part_size_spans_several_parts(monkeypatch):
    import mpctrain.enclave.federated.parts as parts_mod

    monkeypatch.setattr(parts_mod, "MAX_PART", 100)
    content = _content()
    frames = _seal(content)
    header = StreamHeader.from_bytes(frames[0])
    w = content["arrays"]["w"].data  # 128 + 48 bytes: two parts
    assert max(header.parts[1:]) == 100 and len(header.parts) > 1 + 4
    out, _ = _open(frames)
    _same(content, out)
    assert out["arrays"]["w"].data == w
    ((_, keys, arrays),), _, _ = _open_numpy(frames)
    for key, arr in zip(keys, arrays, strict=True):
        np.testing.assert_array_equal(arr, content["arrays"][key].numpy())


@pytest.mark.parametrize("spans", [None, [], [2], [0, 1], [1.0], "1", [1, 1]])
def test_spans_that_do_not_match_the_parts_are_codec_errors(spans):
    arr = Array(np.zeros(2, np.float32)).data
    meta = {"v": 2, "records": [{"name": "a", "kind": "arrays", "keys": ["w"]}], "ctx": {}}
    if spans is not None:
        meta["spans"] = spans
    raw = json.dumps(meta).encode()
    with pytest.raises(CodecError, match="span"):
        decode_parts([raw, arr])
    with pytest.raises(CodecError, match="span"):
        decode_parts_numpy(*_packed([raw, arr]))


def test_a_tampered_part_fails_before_anything_is_decoded():
    frames = _seal(_content())
    bad = bytearray(frames[2])
    bad[40] ^= 1
    for opener in (_open, _open_numpy):
        with pytest.raises(TamperedChunk):
            opener([*frames[:2], bytes(bad), *frames[3:]])


def test_swapped_dropped_and_extra_parts_fail():
    content = RecordDict({"arrays": ArrayRecord({"a": Array(np.zeros(8, np.float32)),
                                                 "b": Array(np.ones(8, np.float32))})})
    frames = _seal(content)
    swapped = [frames[0], frames[1], frames[3], frames[2]]  # same sizes: only the nonces tell them apart
    for opener in (_open, _open_numpy):
        with pytest.raises(TamperedChunk):
            opener(swapped)
        with pytest.raises(TruncatedStream):
            opener(frames[:-1])
        with pytest.raises(TamperedChunk):
            opener([*frames, frames[-1]])


def test_encoding_reuses_valid_array_bytes_and_re_encodes_others():
    good = Array(np.arange(4, dtype=np.float32))
    sliced = np.arange(10, dtype=np.int16)[::2]
    parts = encode_parts(RecordDict({"arrays": ArrayRecord({"g": good, "s": Array(sliced)})}))
    assert parts[1] is good.data
    out, _ = decode_parts(parts)
    np.testing.assert_array_equal(out["arrays"]["s"].numpy(), sliced)


def _packed(parts: list[bytes]) -> tuple[memoryview, list[tuple[int, int]]]:
    """Parts back to back in one buffer, as the enclave opens them, with their bounds."""
    bounds, at = [], 0
    for p in parts:
        bounds.append((at, len(p)))
        at += len(p)
    return memoryview(bytearray(b"".join(parts))), bounds


def _npy(descr: str, shape: str, payload: bytes, version: bytes = b"\x01\x00") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header + payload


BAD_NPY = [
    b"garbage, not .npy",
    _npy("|O", "(1,)", bytes(8)),  # object arrays would need pickle
    _npy("<f4", "(4,)", bytes(8)),  # shorter than the shape
    _npy("<f4", "(1,)", bytes(8)),  # longer than the shape
    _npy("<c8", "(1,)", bytes(8)),  # not a plain numeric type
    _npy("<f4", "(1,)", bytes(4), version=b"\x03\x00"),  # unknown format
    b"\x93NUMPY\x01\x00" + (60_000).to_bytes(2, "little") + b"{" * 60_000,  # header over numpy's cap
    _npy("<f4", "(-1,)", b""),
]


@pytest.mark.parametrize("data", BAD_NPY)
def test_malformed_npy_parts_are_codec_errors(data):
    with pytest.raises(CodecError):
        npy_layout(data)
    meta = json.dumps({"v": 2, "records": [{"name": "arrays", "kind": "arrays", "keys": ["w"]}], "spans": [1],
                       "ctx": {}}).encode()
    with pytest.raises(CodecError):
        decode_parts([meta, data])
    with pytest.raises(CodecError):
        decode_parts_numpy(*_packed([meta, data]))


@pytest.mark.parametrize("data", [BAD_NPY[i] for i in (0, 1, 2, 4)])  # trailing bytes are re-encoded away
def test_arrays_that_cannot_be_sealed_are_codec_errors(data):
    with pytest.raises(CodecError):
        encode_parts(RecordDict({"arrays": ArrayRecord({"w": Array("float32", (1,), "numpy.ndarray", data)})}))


@pytest.mark.parametrize(("meta", "count"), [
    (b"not json", 0),
    (json.dumps({"v": 1, "records": [], "ctx": {}}).encode(), 0),  # the safetensors layout's version
    (json.dumps({"v": 2, "records": [{"name": "a", "kind": "arrays", "keys": ["w"]}], "ctx": {}}).encode(), 0),
    (json.dumps({"v": 2, "records": [], "ctx": {}}).encode(), 1),  # a part the metadata does not name
    (json.dumps({"v": 2, "records": [{"name": "m", "kind": "metrics", "values": {"x": {"y": 1}}}]}).encode(), 0),
    (b"{" * 100_000, 0),
])
def test_bad_metadata_is_a_codec_error(meta, count):
    arr = Array(np.zeros(2, np.float32)).data
    with pytest.raises(CodecError):
        decode_parts([meta] + [arr] * count)


def test_malformed_part_through_the_sealed_path_is_an_envelope_error(monkeypatch):
    monkeypatch.setattr(protocol, "encode_parts", lambda content, ctx: [b'{"v":2,"records":[],"ctx":{}}', b"junk"])
    frames = _seal(RecordDict())
    with pytest.raises(EnvelopeError, match="not a RecordDict"):
        _open(frames)
    with pytest.raises(CodecError):
        _open_numpy(frames)


def _numpy_reader(data: bytes):
    """numpy's own header reader: the reference the fast path must agree with."""
    from io import BytesIO

    from numpy.lib import format as npy_format

    head = BytesIO(data)
    npy_format.read_magic(head)
    shape, fortran, dtype = npy_format.read_array_header_1_0(head)
    return dtype, tuple(shape), fortran, head.tell()


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<f2", "<i8", ">i4", "<i2", "|i1", "<u8", "|u1", "|b1"])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 4), (1, 1, 1, 1, 1, 1)])
@pytest.mark.parametrize("fortran", [False, True])
def test_fast_header_path_agrees_with_numpys_reader(dtype, shape, fortran):
    from mpctrain.enclave.federated.parts import _numpy_written

    arr = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    data = Array(arr).data
    fast = _numpy_written(memoryview(data))
    assert fast is not None and fast == _numpy_reader(data) == npy_layout(data)


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (5), }",  # an int, not a tuple: numpy refuses it
    "{'descr': '<f4', 'fortran_order': False, 'shape': (05,), }",  # not a Python literal
    "{'fortran_order': False, 'descr': '<f4', 'shape': (5,), }",  # another key order: numpy's reader decides
    "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), 'x': 1, }",
    "{'descr': '<f4', 'fortran_order': 0, 'shape': (5,), }",
    "{'descr': '<z9', 'fortran_order': False, 'shape': (5,), }",
])
def test_headers_off_numpys_own_form_get_numpys_verdict(header):
    from mpctrain.enclave.federated.parts import _numpy_written

    raw = header.encode() + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + bytes(20)
    assert _numpy_written(memoryview(data)) is None
    try:
        reference = _numpy_reader(data)
    except ValueError:
        reference = None
    if reference is None or reference[0].str != "<f4":
        with pytest.raises(CodecError):
            npy_layout(data)
    else:  # numpy reads it: so do we, to the same layout
        assert npy_layout(data) == reference


def test_an_instruction_to_several_parties_cannot_be_forged_by_one_of_them():
    """Every party of a round shares the round key; the commitment trailer keeps each one's copy its own."""
    from mpctrain.seal.stream import KEY_BYTES, _nonce
    from mpctrain.seal.wrap import unwrap_key

    other = KemKey.generate()
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(64, np.float32))})})
    frames = seal_content(content, {"nonce": "n1"}, sender=SENDER, sender_id="enclave",
                          recipients=[("enclave", ENCLAVE.alg, ENCLAVE.public_bytes()),
                                      ("bank-b", other.alg, other.public_bytes())], **KW)
    header = StreamHeader.from_bytes(frames[0])
    assert header.commits and len(frames) == 1 + 2 + 1  # header, metadata, the array, the commitments
    assert _open(frames)[0]["arrays"]["w"].numpy().tolist() == [0.0] * 64
    secret = unwrap_key(other, header.recipients[1][2], header.wrap_context())  # bank-b's own entry
    evil = Array(np.full(64, 1e6, np.float32)).data
    forged = AESGCM(secret[:KEY_BYTES]).encrypt(_nonce(header.nonce_prefix, 1, True), evil, header.digest())
    assert len(forged) == len(frames[2])  # same size: only the commitment tells it apart
    for opener in (_open, _open_numpy):
        with pytest.raises(TamperedChunk, match="committed"):
            opener([frames[0], frames[1], forged, frames[3]])
        with pytest.raises(TruncatedStream, match="commitment"):
            opener(frames[:2])
