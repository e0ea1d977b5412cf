"""A Flower ``RecordDict`` as one byte string, so a whole message body can be sealed as a stream.

The byte string is a safetensors file: arrays are its tensors (never pickle, never ``np.load`` on
foreign bytes), and the record structure, metric and config values (JSON, bytes tagged) and the sealed
context ride in its ``__metadata__`` under ``mpctrain.record``. One self-describing file means no extra
framing and no copy to split it on decode. Decoding is strict and bounded and copies nothing: the
safetensors header is parsed once (size-capped, duplicate keys refused, every tensor's dtype, shape and
offsets checked to tile the data exactly, as the safetensors library's own validation does) and each
tensor is a read-only ``np.frombuffer`` view into the caller's buffer. Anything malformed, oversized or
inconsistent raises ``CodecError``.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from numpy.lib import format as npy_format

META_KEY = "mpctrain.record"
MAX_META_BYTES = 8 << 20
MAX_HEADER_BYTES = MAX_META_BYTES + (16 << 20)
MAX_RECORDS = 64
MAX_ARRAYS = 100_000
DEFAULT_MAX_PAYLOAD = 4 << 30
_KINDS = ("arrays", "metrics", "configs")
# safetensors dtype names numpy can view directly (little-endian, as the format stores them)
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_ST_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}
Buffer = bytes | bytearray | memoryview


class CodecError(ValueError):
    """The bytes are not a well-formed encoded RecordDict (truncated, garbage, oversized, bad types)."""


_MAX_INTP = int(np.iinfo(np.intp).max)


def check_shape(shape: tuple[int, ...], itemsize: int) -> None:
    """numpy's own size limits, checked before numpy sees the shape: a zero-size array still may not name
    a dimension (or a product of its non-zero dimensions) numpy cannot index, or reshaping it raises."""
    if any(d > _MAX_INTP for d in shape) or math.prod(d or 1 for d in shape) * max(itemsize, 1) > _MAX_INTP:
        raise CodecError(f"array shape {shape} is beyond what numpy can index")


def encode_record_pieces(content: RecordDict, context: Mapping[str, Any] | None = None) -> tuple[
    list[bytes | memoryview], int
]:
    """``encode_record`` as pieces (header, then each array's bytes viewed in place) and their total size.

    Sealing reads the pieces straight from the arrays' own buffers: no whole-payload copy is made.
    """
    tensors: list[tuple[str, np.ndarray]] = []

    def add(index: int, record: ArrayRecord) -> None:
        tensors.extend((f"{index}.{i}", _writable_layout(array_view(record[key]))) for i, key in enumerate(record))

    meta = encode_meta(1, record_entries(content, add), context).decode()
    # widest dtypes first, as the safetensors library lays them out: every tensor stays aligned
    tensors.sort(key=lambda t: -t[1].dtype.itemsize)
    header: dict[str, Any] = {"__metadata__": {META_KEY: meta}}
    pos = 0
    views: list[bytes | memoryview] = []
    for name, arr in tensors:
        header[name] = {"dtype": _ST_NAMES[arr.dtype.str], "shape": list(arr.shape),
                        "data_offsets": [pos, pos + arr.nbytes]}
        pos += arr.nbytes
        views.append(memoryview(arr.reshape(-1).view(np.uint8)))
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    head = struct.pack("<Q", len(blob)) + blob
    return [head, *views], len(head) + pos


def record_entries(content: RecordDict, arrays: Callable[[int, ArrayRecord], None]) -> list[dict[str, Any]]:
    """The metadata entry of every record, in order; ``arrays(index, record)`` sees each ArrayRecord."""
    records: list[dict[str, Any]] = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays(len(records), record)
            records.append({"name": name, "kind": "arrays", "keys": list(record.keys())})
        elif isinstance(record, MetricRecord):
            records.append({"name": name, "kind": "metrics", "values": _tag(dict(record))})
        elif isinstance(record, ConfigRecord):
            records.append({"name": name, "kind": "configs", "values": _tag(dict(record))})
        else:
            raise CodecError(f"record {name!r} has unsupported type {type(record).__name__}")
    return records


def encode_meta(version: int, records: list[dict[str, Any]], context: Mapping[str, Any] | None,
                **extra: Any) -> bytes:
    """The JSON metadata of an encoded RecordDict, size-capped."""
    meta = json.dumps({"v": version, "records": records, **extra, "ctx": dict(context or {})},
                      separators=(",", ":")).encode()
    if len(meta) > MAX_META_BYTES:
        raise CodecError(f"record metadata is {len(meta)} bytes; the limit is {MAX_META_BYTES}")
    return meta


def encode_record(content: RecordDict, context: Mapping[str, Any] | None = None) -> bytes:
    """Serialise ``content`` plus a small JSON ``context`` (protocol fields that get sealed with it)."""
    pieces, _ = encode_record_pieces(content, context)
    return b"".join(pieces)


def array_view(array: Array) -> np.ndarray:
    """A Flower ``Array`` as an ndarray viewing its bytes (``Array.numpy()`` copies them through ``np.load``)."""
    if not isinstance(array, Array):
        raise CodecError(f"expected a Flower Array, got {type(array).__name__}")
    try:
        if array.stype == "numpy.ndarray" and isinstance(array.data, bytes):
            stream = BytesIO(array.data)  # shares the bytes until written
            major, _ = npy_format.read_magic(stream)
            read_header = {1: npy_format.read_array_header_1_0, 2: npy_format.read_array_header_2_0}.get(major)
            if read_header is not None:
                shape, fortran, dtype = read_header(stream)
                if dtype.hasobject:
                    raise CodecError("object arrays have no safe serialisation")
                arr = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
                return arr.reshape(shape, order="F" if fortran else "C")
        return array.numpy()
    except CodecError:
        raise
    except (ValueError, TypeError, OSError) as exc:
        raise CodecError(f"array cannot be read: {exc}") from None


def _writable_layout(arr: np.ndarray) -> np.ndarray:
    """C order, little-endian, a dtype safetensors names (copies only when the array is not already so)."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.str not in _ST_NAMES:
        raise CodecError(f"cannot serialise the arrays: dtype {arr.dtype} has no safetensors name")
    return _c_order(arr)


def _c_order(arr: np.ndarray) -> np.ndarray:
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d


def to_flower_array(arr: np.ndarray) -> Array:
    """What ``Array(ndarray)`` builds (the .npy bytes), with one copy instead of ``np.save``'s two."""
    arr = _c_order(arr)
    head = BytesIO()
    try:
        npy_format.write_array_header_1_0(head, npy_format.header_data_from_array_1_0(arr))
    except ValueError:  # a header too large for format 1.0: let numpy pick
        return Array(arr)
    data = b"".join((head.getvalue(), memoryview(arr.reshape(-1).view(np.uint8))))
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype="numpy.ndarray", data=data)


def decode_record(data: Buffer, *, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> tuple[RecordDict, dict[str, Any]]:
    """Inverse of ``encode_record``: returns the RecordDict (owning copies of the arrays) and the context."""
    records, ctx, arrays = _split(data, max_bytes)
    out = RecordDict()
    for idx, rec in enumerate(records):
        if rec["kind"] == "arrays":
            out[rec["name"]] = ArrayRecord(
                {key: to_flower_array(arrays.pop(f"{idx}.{i}")) for i, key in enumerate(rec["keys"])}
            )
        elif rec["kind"] == "metrics":
            out[rec["name"]] = _build(MetricRecord, rec["values"])
        else:
            out[rec["name"]] = _build(ConfigRecord, rec["values"])
    return out, ctx


def decode_numpy(data: Buffer, *, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> tuple[
    list[tuple[str, list[str], list[np.ndarray]]], dict[str, dict[str, Any]], dict[str, Any]
]:
    """Decode without building Flower objects (the streaming aggregation path).

    Returns ``(array records as (name, keys, ndarrays), metric/config records by name, context)``. The
    ndarrays are read-only views into ``data``: valid only while the caller keeps that buffer unchanged.
    """
    records, ctx, arrays = _split(data, max_bytes)
    array_records = []
    others: dict[str, dict[str, Any]] = {}
    for idx, rec in enumerate(records):
        if rec["kind"] == "arrays":
            ndarrays = [arrays.pop(f"{idx}.{i}") for i in range(len(rec["keys"]))]
            array_records.append((rec["name"], rec["keys"], ndarrays))
        else:
            others[rec["name"]] = {"kind": rec["kind"], "values": _untag(rec["values"])}
    return array_records, others, ctx


def _split(data: Buffer, max_bytes: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, np.ndarray]]:
    meta, arrays = _parse_safetensors(data, max_bytes)
    raw_meta = meta.get(META_KEY)
    if not isinstance(raw_meta, str) or len(raw_meta) > MAX_META_BYTES:
        raise CodecError("not an encoded RecordDict: no (or oversized) record metadata")
    records, ctx, _ = parse_meta(raw_meta, version=1)
    expected = {f"{idx}.{i}" for idx, rec in enumerate(records) if rec["kind"] == "arrays"
                for i in range(len(rec["keys"]))}
    if set(arrays) != expected:
        raise CodecError("array payload does not hold exactly the arrays the metadata names")
    return records, ctx, arrays


def parse_meta(raw: str | bytes, *, version: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The record list, sealed context and whole object of an encoded RecordDict's JSON metadata, the record
    structure checked (a layout checks its own further fields)."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise CodecError(f"record metadata is not JSON: {type(exc).__name__}") from None
    if not isinstance(meta, dict) or meta.get("v") != version:
        raise CodecError("record metadata has an unknown version")
    records = meta.get("records")
    ctx = meta.get("ctx", {})
    if not isinstance(records, list) or len(records) > MAX_RECORDS or not isinstance(ctx, dict):
        raise CodecError("record metadata has a bad record list or context")
    arrays = 0
    for idx, rec in enumerate(records):
        if not isinstance(rec, dict) or rec.get("kind") not in _KINDS or not isinstance(rec.get("name"), str):
            raise CodecError(f"record {idx} has a bad kind or name")
        if rec["kind"] == "arrays":
            keys = rec.get("keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > MAX_ARRAYS:
                raise CodecError(f"array record {idx} has bad keys")
            if len(set(keys)) != len(keys):
                raise CodecError(f"array record {idx} repeats a key")
            arrays += len(keys)
        elif not isinstance(rec.get("values"), dict):
            raise CodecError(f"record {idx} has no values table")
    if arrays > MAX_ARRAYS:
        raise CodecError(f"record metadata names {arrays} arrays; the limit is {MAX_ARRAYS}")
    names = [r["name"] for r in records]
    if len(set(names)) != len(names):
        raise CodecError("two records share a name")
    return records, ctx, meta


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise CodecError("safetensors header repeats a key")
    return out


def _parse_safetensors(data: Buffer, max_bytes: int) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The ``__metadata__`` map and a read-only view per tensor; the table must tile the data exactly."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    size = view.nbytes
    if size > max_bytes:
        raise CodecError(f"encoded record is {size} bytes; the limit is {max_bytes}")
    if size < 8:
        raise CodecError(f"not an encoded RecordDict: {size} bytes is shorter than a safetensors header")
    (header_len,) = struct.unpack_from("<Q", view, 0)
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise CodecError(f"not an encoded RecordDict: header length {header_len} does not fit the {size} bytes")
    try:
        header = json.loads(bytes(view[8:8 + header_len]), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"not an encoded RecordDict: safetensors header is not JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CodecError("not an encoded RecordDict: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CodecError("safetensors __metadata__ must map strings to strings")
    start = 8 + header_len
    spans: list[tuple[int, int, str, np.dtype, tuple[int, ...]]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CodecError(f"tensor {name!r}: entry must hold exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise CodecError(f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > 32
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise CodecError(f"tensor {name!r}: shape must be a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise CodecError(f"tensor {name!r}: data_offsets must be two integers")
        np_dtype = np.dtype(_DTYPES[dtype])
        check_shape(tuple(shape), np_dtype.itemsize)
        begin, end = offsets
        if not 0 <= begin <= end or end - begin != math.prod(shape) * np_dtype.itemsize:
            raise CodecError(f"tensor {name!r}: data_offsets {offsets} do not match shape {shape} of {dtype}")
        spans.append((begin, end, name, np_dtype, tuple(shape)))
    spans.sort(key=lambda s: (s[0], s[1]))
    pos = 0
    for begin, end, name, _, _ in spans:
        if begin != pos:
            raise CodecError(f"tensor {name!r} starts at {begin}, expected {pos}: overlapping or gapped tensors")
        pos = end
    if start + pos != size:
        raise CodecError(f"safetensors data is {size - start} bytes but the tensors cover {pos}: truncated or padded")
    arrays: dict[str, np.ndarray] = {}
    for begin, end, name, np_dtype, shape in spans:
        arr = np.frombuffer(view, dtype=np_dtype, count=(end - begin) // np_dtype.itemsize, offset=start + begin)
        arr = arr.reshape(shape)
        arr.flags.writeable = False
        arrays[name] = arr
    return meta, arrays


def _tag(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _tag_value(v) for k, v in values.items()}


def _tag_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"$b": base64.b64encode(v).decode()}
    if isinstance(v, list):
        return [_tag_value(x) for x in v]
    return v


def _untag(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _untag_value(v) for k, v in values.items()}


def _untag_value(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) != {"$b"} or not isinstance(v["$b"], str):
            raise CodecError("record value is an object that is not tagged bytes")
        try:
            return base64.b64decode(v["$b"], validate=True)
        except ValueError as exc:
            raise CodecError(f"tagged bytes are not base64: {exc}") from exc
    if isinstance(v, list):
        return [_untag_value(x) for x in v]
    return v


def _build(cls: type, values: dict[str, Any]) -> Any:
    try:
        return cls(_untag(values))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{cls.__name__} value of the wrong type: {exc}") from exc


def iter_arrays(content: RecordDict) -> Iterator[tuple[str, np.ndarray]]:
    """All arrays of a RecordDict as ``record/key`` names and ndarrays (for tests and canary scans)."""
    for name, record in content.array_records.items():
        for key, arr in record.items():
            yield f"{name}/{key}", arr.numpy()
