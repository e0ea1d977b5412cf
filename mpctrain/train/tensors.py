"""Tensor (de)serialisation with safetensors only.

Anything that crosses a trust boundary (shards, model updates, outputs) is decoded here. safetensors is a
flat header + raw buffers format: decoding it cannot execute code, unlike pickle / ``torch.load``. The
header is checked before the library parses it so that truncated, oversized or foreign payloads fail with
a :class:`TensorFormatError` that says what is wrong.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TensorFormatError",
    "arrays_from_bytes",
    "arrays_to_bytes",
    "read_metadata",
    "state_from_bytes",
    "state_to_bytes",
]

DEFAULT_MAX_BYTES = 1 << 30
# A safetensors header is JSON describing the tensors; real headers are kilobytes. Bounding it keeps a
# hostile payload from making us parse megabytes of JSON before the size check on the buffers.
MAX_HEADER_BYTES = 16 << 20


class TensorFormatError(ValueError):
    """The bytes are not a well-formed safetensors payload of the expected shape (never loaded)."""


def state_to_bytes(state: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise a state dict (e.g. ``model.state_dict()``) to safetensors bytes; tensors are copied to CPU."""
    if not isinstance(state, Mapping) or not state:
        raise TensorFormatError("state must be a non-empty mapping of name -> torch.Tensor")
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TensorFormatError(f"state entry {name!r} is not a str -> torch.Tensor pair")
        # clone() breaks storage sharing (tied weights), which safetensors refuses to serialise.
        flat[name] = tensor.detach().to("cpu").contiguous().clone()
    return safetensors.torch.save(flat, metadata=dict(metadata) if metadata else None)


def state_from_bytes(b: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, torch.Tensor]:
    """Decode safetensors bytes into CPU tensors; refuses anything else (pickle, torch.save zips, garbage)."""
    _check_payload(b, max_bytes)
    try:
        return safetensors.torch.load(bytes(b))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the Rust parser's errors, a Rust panic (a BaseException) included
        raise TensorFormatError(f"malformed safetensors payload: {exc}") from None


def arrays_to_bytes(arrays: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise numpy arrays to safetensors bytes (object arrays are refused)."""
    if not isinstance(arrays, Mapping) or not arrays:
        raise TensorFormatError("arrays must be a non-empty mapping of name -> numpy.ndarray")
    flat: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise TensorFormatError(f"array entry {name!r} is not a str -> numpy.ndarray pair")
        if arr.dtype.hasobject:
            raise TensorFormatError(f"array {name!r} has dtype object, which has no safe serialisation")
        flat[name] = np.ascontiguousarray(arr)
    try:
        return safetensors.numpy.save(flat, metadata=dict(metadata) if metadata else None)
    except Exception as exc:  # e.g. a dtype safetensors does not know
        raise TensorFormatError(f"cannot serialise arrays: {exc}") from None


def arrays_from_bytes(b: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """Decode safetensors bytes into numpy arrays; refuses anything else."""
    _check_payload(b, max_bytes)
    try:
        return safetensors.numpy.load(bytes(b))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # as in state_from_bytes
        raise TensorFormatError(f"malformed safetensors payload: {exc}") from None


def read_metadata(b: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, str]:
    """Return the ``__metadata__`` string map of a safetensors payload ({} when absent)."""
    header = _check_payload(b, max_bytes)
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TensorFormatError("safetensors __metadata__ must map strings to strings")
    return dict(meta)


def _check_payload(b: Any, max_bytes: int) -> dict[str, Any]:
    """Validate size and header framing before the parser sees the bytes; return the parsed header."""
    if not isinstance(b, bytes | bytearray | memoryview):
        raise TensorFormatError(f"expected bytes, got {type(b).__name__}")
    n = len(b)
    if n > max_bytes:
        raise TensorFormatError(f"payload is {n} bytes, over the limit of {max_bytes}; raise max_bytes if intended")
    if n < 8:
        raise TensorFormatError(f"payload truncated: {n} bytes, a safetensors payload has at least 8")
    (header_len,) = struct.unpack_from("<Q", b, 0)
    if header_len > MAX_HEADER_BYTES:
        raise TensorFormatError(f"not safetensors: header length {header_len} is implausible (garbage or pickle?)")
    if 8 + header_len > n:
        raise TensorFormatError(f"payload truncated: header needs {8 + header_len} bytes, only {n} present")
    raw = bytes(b[8 : 8 + header_len])
    if not raw.startswith(b"{"):
        raise TensorFormatError("not safetensors: header is not a JSON object")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFormatError(f"not safetensors: header is not valid JSON ({exc})") from None
    except RecursionError:  # deeply nested arrays: a real header is one flat object of flat entries
        raise TensorFormatError("not safetensors: header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise TensorFormatError("not safetensors: header is not a JSON object")
    return header
