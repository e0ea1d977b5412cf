"""The part layout of a sealed RecordDict: one sealed chunk per model array, in Flower's own array bytes.

Part 0 is the record metadata (JSON: record names and kinds, array keys, metric and config values, the
sealed context); then each array's ``Array.data``, the .npy bytes Flower itself carries, as one part
(or, over the 64 MiB a chunk may hold, as consecutive parts the metadata's ``spans`` count). The stream
header declares every part's size (a version-2 sealed stream), so a sender encrypts each array straight
from the bytes it already holds and a receiver decrypts each one straight into the ``bytes`` a Flower
``Array`` keeps, or into one reused buffer it views with numpy: no gathering, no joining. That is two
passes over every update fewer than the safetensors layout (``codec``), which stays for what a header
cannot declare (over 16384 parts) when there is a single recipient.

Foreign .npy bytes are read strictly: formats 1.0 and 2.0 only, numeric dtypes only, and the length must
match the shape. The header numpy itself writes is recognised by one anchored pattern (numpy's reader
tokenises it, which costs more than the rest of opening a small update); any other header goes to
numpy's own capped reader (never ``np.load``, never pickle).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from numpy.lib import format as npy_format

from mpctrain.enclave.federated.codec import (
    _ST_NAMES,
    MAX_META_BYTES,
    Buffer,
    CodecError,
    _build,
    _untag,
    check_shape,
    encode_meta,
    parse_meta,
    record_entries,
    to_flower_array,
)
from mpctrain.seal.stream import MAX_CHUNK_SIZE

LAYOUT_VERSION = 2
NPY_STYPE = "numpy.ndarray"
MAX_PART = MAX_CHUNK_SIZE  # larger arrays span several parts
MAX_NPY_HEADER = 10_000  # numpy's own cap on the header it will parse
_NPY_PREFIX = 12  # magic, version and the longest (format 2.0) length field
_NPY_V1 = b"\x93NUMPY\x01\x00"
# exactly what numpy's format 1.0 writer emits: dict literal, fixed key order, padding, newline
_DIM = rb"(?:0|[1-9][0-9]{0,18})"
_NUMPY_HEADER = re.compile(rb"\{'descr': '([<>|][a-z][0-9]{1,2})', 'fortran_order': (True|False), 'shape': \((|"
                           + _DIM + rb",|" + _DIM + rb"(?:, " + _DIM + rb")+)\), \} *\n")


def _nbytes(b: Buffer) -> int:
    return b.nbytes if isinstance(b, memoryview) else len(b)


def _numpy_written(view: memoryview) -> tuple[np.dtype, tuple[int, ...], bool, int] | None:
    """The layout of a header exactly as numpy writes it, or ``None`` (then numpy's reader decides)."""
    if view.nbytes < 10 or view[:8] != _NPY_V1:
        return None
    size = int.from_bytes(view[8:10], "little")
    if size > MAX_NPY_HEADER:
        return None
    match = _NUMPY_HEADER.fullmatch(bytes(view[10:10 + size]))
    if match is None:
        return None
    try:
        dtype = np.dtype(match[1].decode())
    except TypeError:
        return None
    shape = tuple(int(d) for d in match[3].split(b",") if d.strip())
    return dtype, shape, match[2] == b"True", 10 + size


def npy_layout(buf: Buffer) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data_offset)`` of .npy bytes; ``CodecError`` unless well formed."""
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    known = _numpy_written(view)
    if known is not None:
        return _checked(view, *known)
    head = BytesIO(bytes(view[:MAX_NPY_HEADER + _NPY_PREFIX]))
    try:
        version = npy_format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(head, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(head, max_header_size=MAX_NPY_HEADER)
        else:
            raise CodecError(f".npy format {version[0]}.{version[1]} is not 1.0 or 2.0")
    except CodecError:
        raise
    except (ValueError, TypeError, OSError, EOFError, SyntaxError, RecursionError, MemoryError) as exc:
        raise CodecError(f"array bytes are not a .npy buffer: {type(exc).__name__}") from None
    return _checked(view, dtype, tuple(shape), bool(fortran), head.tell())


def _checked(view: memoryview, dtype: np.dtype, shape: tuple[int, ...], fortran: bool,
             offset: int) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    if dtype.hasobject or dtype.newbyteorder("<").str not in _ST_NAMES:
        raise CodecError(f"array dtype {dtype} is not a plain numeric type")
    check_shape(shape, dtype.itemsize)
    if view.nbytes - offset != math.prod(shape) * dtype.itemsize:
        raise CodecError(f"array bytes hold {view.nbytes - offset} data bytes, not the {math.prod(shape)} x "
                         f"{dtype.itemsize} its header declares: truncated or padded")
    return dtype, shape, fortran, offset


def _array_bytes(array: Array) -> bytes:
    """The .npy bytes to seal for ``array``: its own (``CodecError`` unless well formed), or a fresh encoding of
    an array of another storage type."""
    if not isinstance(array, Array):
        raise CodecError(f"expected a Flower Array, got {type(array).__name__}")
    if array.stype == NPY_STYPE and isinstance(array.data, bytes):
        npy_layout(array.data)  # .npy bytes this strict reader refuses are not handed to np.load either
        return array.data
    try:
        ndarray = array.numpy()
    except (ValueError, TypeError, OSError) as exc:
        raise CodecError(f"array cannot be read: {exc}") from None
    data = to_flower_array(ndarray).data
    npy_layout(data)  # refuses dtypes the receiver would refuse, here rather than there
    return data


def encode_parts(content: RecordDict, context: Mapping[str, Any] | None = None) -> list[bytes | memoryview]:
    """``content`` and its sealed ``context`` as parts: the metadata, then every array's .npy bytes (an array
    over ``MAX_PART`` bytes as consecutive views of its bytes)."""
    max_part = MAX_PART
    parts: list[bytes | memoryview] = []
    spans: list[int] = []

    def add(_: int, record: ArrayRecord) -> None:
        for key in record:
            data = _array_bytes(record[key])
            if len(data) <= max_part:
                parts.append(data)
                spans.append(1)
                continue
            view = memoryview(data)
            pieces = [view[i:i + max_part] for i in range(0, len(data), max_part)]
            parts.extend(pieces)
            spans.append(len(pieces))

    records = record_entries(content, add)
    return [encode_meta(LAYOUT_VERSION, records, context, spans=spans), *parts]


def _meta(part: Buffer, array_parts: int) -> tuple[list[dict[str, Any]], list[int], dict[str, Any]]:
    """Records, the parts each array spans, and the context; checked against the number of array parts."""
    if _nbytes(part) > MAX_META_BYTES:
        raise CodecError(f"record metadata is {_nbytes(part)} bytes; the limit is {MAX_META_BYTES}")
    records, ctx, meta = parse_meta(bytes(part), version=LAYOUT_VERSION)
    spans = meta.get("spans")
    named = sum(len(r["keys"]) for r in records if r["kind"] == "arrays")
    if (not isinstance(spans, list) or len(spans) != named
            or not all(type(n) is int and n >= 1 for n in spans)):
        raise CodecError("the metadata's spans must give each named array its number of parts (1 or more)")
    if sum(spans) != array_parts:
        raise CodecError(f"the metadata's arrays span {sum(spans)} parts but {array_parts} array parts came")
    return records, spans, ctx


def decode_parts(parts: Sequence[bytes]) -> tuple[RecordDict, dict[str, Any]]:
    """Parts as opened (each its own ``bytes``) back into a RecordDict whose Arrays keep those very bytes
    (an array spanning several parts is joined: only arrays over 64 MiB)."""
    if not parts:
        raise CodecError("no parts: the record metadata is missing")
    records, spans, ctx = _meta(parts[0], len(parts) - 1)
    out = RecordDict()
    at, span = 1, iter(spans)
    for rec in records:
        if rec["kind"] == "arrays":
            arrays = {}
            for key in rec["keys"]:
                n = next(span)
                if not all(isinstance(p, bytes) for p in parts[at:at + n]):
                    raise CodecError("array parts must be bytes")
                data = parts[at] if n == 1 else b"".join(parts[at:at + n])
                at += n
                dtype, shape, _, _ = npy_layout(data)
                arrays[key] = Array(dtype=str(dtype), shape=shape, stype=NPY_STYPE, data=data)
            out[rec["name"]] = ArrayRecord(arrays)
        elif rec["kind"] == "metrics":
            out[rec["name"]] = _build(MetricRecord, rec["values"])
        else:
            out[rec["name"]] = _build(ConfigRecord, rec["values"])
    return out, ctx


def decode_parts_numpy(payload: memoryview, bounds: Sequence[tuple[int, int]]) -> tuple[
    list[tuple[str, list[str], list[np.ndarray]]], dict[str, dict[str, Any]], dict[str, Any]
]:
    """Like ``codec.decode_numpy`` for the part layout: read-only ndarray views into ``payload``, the parts
    opened back to back, ``bounds`` their ``(offset, size)`` (an array spanning parts is one view too)."""
    if not bounds:
        raise CodecError("no parts: the record metadata is missing")
    offset, size = bounds[0]
    records, spans, ctx = _meta(payload[offset:offset + size], len(bounds) - 1)
    array_records = []
    others: dict[str, dict[str, Any]] = {}
    at, span = 1, iter(spans)
    for rec in records:
        if rec["kind"] == "arrays":
            ndarrays = []
            for _ in rec["keys"]:
                n = next(span)
                (first, _), (last, last_size) = bounds[at], bounds[at + n - 1]
                view = payload[first:last + last_size]
                at += n
                dtype, shape, fortran, offset = npy_layout(view)
                arr = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=offset)
                arr = arr.reshape(shape, order="F" if fortran else "C")
                arr.flags.writeable = False
                ndarrays.append(arr)
            array_records.append((rec["name"], rec["keys"], ndarrays))
        else:
            others[rec["name"]] = {"kind": rec["kind"], "values": _untag(rec["values"])}
    return array_records, others, ctx
