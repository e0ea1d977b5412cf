"""Canonical, length-prefixed encodings and the evidence binding of DESIGN.md.

Length prefixes make the encoding injective: no two different field lists hash the same.
"""

from __future__ import annotations

import hashlib
import struct

EVIDENCE_DOMAIN = b"mpctrain/v1/evidence-binding"
GPU_NONCE_DOMAIN = b"mpctrain/v1/gpu-nonce"
NONCE_BYTES = 32


def canonical(*fields: bytes | str | int) -> bytes:
    """Encode fields as 8-byte big-endian length ‖ bytes; str is UTF-8, int is 8-byte big-endian."""
    out = bytearray()
    for f in fields:
        if isinstance(f, bool):
            raise TypeError("canonical() does not encode bool; use int")
        if isinstance(f, int):
            f = struct.pack(">q", f)
        elif isinstance(f, str):
            f = f.encode()
        elif not isinstance(f, bytes | bytearray | memoryview):
            raise TypeError(f"canonical() cannot encode {type(f).__name__}")
        b = bytes(f)
        out += struct.pack(">Q", len(b))
        out += b
    return bytes(out)


def evidence_binding(nonce: bytes, kem_public: bytes, sig_public: bytes, build_digest: bytes) -> bytes:
    """REPORT_DATA: SHA-512(domain ‖ nonce ‖ kem_pub ‖ sig_pub ‖ build_digest), 64 bytes."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return hashlib.sha512(canonical(EVIDENCE_DOMAIN, nonce, kem_public, sig_public, build_digest)).digest()


def gpu_nonce(binding: bytes, index: int) -> bytes:
    """The 32-byte nonce GPU ``index`` signs over: ties each GPU report to the same binding."""
    return hashlib.sha256(canonical(GPU_NONCE_DOMAIN, binding, index)).digest()
