"""One audit record: its canonical bytes, its hash, its enclave signature, and its JSON Lines form.

A record is ``{v, seq, segment, time_ms, kind, job_id, job_seq, job_prev, prev_hash, fields}`` plus
``hash`` and ``sig``. ``hash`` is SHA-256 over a domain tag and the canonical JSON of the other fields
(sorted keys, no spaces, ASCII); ``sig`` is the segment's enclave signing key over that hash
(:func:`mpctrain.seal.sign_fields`, domain ``mpctrain/v1/audit-record``). A stored line must be exactly
the canonical serialisation of what it holds, so any byte changed in the file is detected.

``prev_hash`` chains every record to the one before it (across segments); ``job_seq``/``job_prev`` chain
the records of one job, so a party that fetched only its job's records still sees a gap.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from mpctrain.seal.binding import canonical
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.sign import sign_fields, verify_fields

FORMAT_VERSION = 1
HASH_DOMAIN = b"mpctrain/v1/audit-record-hash"
SIGN_DOMAIN = "mpctrain/v1/audit-record"
SEGMENT_NONCE_DOMAIN = b"mpctrain/v1/audit-segment-nonce"
SEGMENT_KIND = "segment.started"

MAX_LINE_BYTES = 4 << 20  # a segment record embeds an evidence bundle (certificates included)
MAX_STR = 512  # free-text fields (rejection reasons) are cut here
MAX_ITEMS = 256
MAX_BYTES_INLINE = 64  # longer bytes fields are stored as a digest and a size, never as content
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: later times are not datetimes
MAX_COUNT = 1 << 53  # seq, segment, job_seq: no log gets near it, and +1 still fits every encoding
MAX_DEPTH = 8  # nesting of ``fields`` (sanitize() writes at most 5): re-encoding deeper JSON can overflow the stack
HEX_CHARS = frozenset("0123456789abcdef")

_BODY_KEYS = ("v", "seq", "segment", "time_ms", "kind", "job_id", "job_seq", "job_prev", "prev_hash", "fields")
_LINE_KEYS = frozenset((*_BODY_KEYS, "hash", "sig"))


class RecordFormatError(ValueError):
    """A line is not a well-formed audit record (the verifier turns this into ``AuditBroken``)."""

    def __init__(self, message: str, check: str = "parse") -> None:
        super().__init__(message)
        self.check = check


def canonical_json(obj: Any) -> bytes:
    """The one serialisation that is hashed, signed and stored: sorted keys, compact, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def segment_nonce(prev_hash: str, segment: int) -> bytes:
    """Nonce of a segment's self-attestation: derived from the link point, so the evidence post-dates it."""
    return hashlib.sha256(canonical(SEGMENT_NONCE_DOMAIN, bytes.fromhex(prev_hash), segment)).digest()


def sanitize(value: Any, depth: int = 0) -> Any:
    """Metadata only: bytes longer than a digest become ``{sha256, size}``; text is cut; objects by type name."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value[:MAX_STR]
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) <= MAX_BYTES_INLINE:
            return raw.hex()
        return {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    if depth >= 4:
        return type(value).__name__
    if isinstance(value, dict):
        return {str(k)[:64]: sanitize(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
        return [sanitize(v, depth + 1) for v in items[:MAX_ITEMS]]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return sanitize(value.item(), depth + 1)
        except (TypeError, ValueError):
            pass
    return type(value).__name__


@dataclass(frozen=True)
class AuditRecord:
    """A signed, hash-chained record; ``fields`` hold metadata only (ids, digests, sizes, public metrics)."""

    seq: int
    segment: int
    time_ms: int
    kind: str
    prev_hash: str
    fields: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    job_seq: int | None = None
    job_prev: str = ""
    hash: str = ""
    sig: str = ""

    def body(self) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "seq": self.seq, "segment": self.segment, "time_ms": self.time_ms,
                "kind": self.kind, "job_id": self.job_id, "job_seq": self.job_seq, "job_prev": self.job_prev,
                "prev_hash": self.prev_hash, "fields": self.fields}

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical(HASH_DOMAIN, canonical_json(self.body()))).hexdigest()

    def signed(self, key: IdentityKey) -> AuditRecord:
        """This record with its hash and the enclave key's signature filled in."""
        h = self.compute_hash()
        sig = sign_fields(key, SIGN_DOMAIN, bytes.fromhex(h)).hex()
        return AuditRecord(**{**self.__dict__, "hash": h, "sig": sig})

    def verify_signature(self, public: bytes) -> None:
        """Raises ``BadSignature`` unless ``sig`` is ``public``'s signature over ``hash``."""
        verify_fields(public, bytes.fromhex(self.sig), SIGN_DOMAIN, bytes.fromhex(self.hash))

    def to_line(self) -> bytes:
        return canonical_json({**self.body(), "hash": self.hash, "sig": self.sig}) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> AuditRecord:
        """Parse one line (without its newline); raises ``RecordFormatError`` naming what is wrong."""
        if len(line) > MAX_LINE_BYTES:
            raise RecordFormatError(f"line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise RecordFormatError(f"not JSON: {str(exc)[:120]}") from None
        if not isinstance(obj, dict):
            raise RecordFormatError("not a JSON object")
        if set(obj) != _LINE_KEYS:
            raise RecordFormatError(f"keys {sorted(obj)} are not the record keys {sorted(_LINE_KEYS)}")
        if obj["v"] != FORMAT_VERSION:
            raise RecordFormatError(f"format version {obj['v']!r}, expected {FORMAT_VERSION}")
        for name in ("seq", "segment", "time_ms"):
            if not _nonneg_int(obj[name]):
                raise RecordFormatError(f"{name} must be a non-negative integer")
        if obj["time_ms"] > MAX_TIME_MS:
            digits = str(obj["time_ms"])
            raise RecordFormatError(f"time_ms {digits[:16]}{'…' if len(digits) > 16 else ''} ({len(digits)} digits) "
                                    f"is after the year 9999 (at most {MAX_TIME_MS})", "time")
        if obj["seq"] > MAX_COUNT or obj["segment"] > MAX_COUNT:
            raise RecordFormatError(f"seq and segment must be at most {MAX_COUNT}")
        if not isinstance(obj["kind"], str) or not 0 < len(obj["kind"]) <= 64:
            raise RecordFormatError("kind must be a short string")
        if not isinstance(obj["fields"], dict):
            raise RecordFormatError("fields must be an object")
        if _depth(obj["fields"]) > MAX_DEPTH:
            raise RecordFormatError(f"fields are nested deeper than {MAX_DEPTH} levels")
        job_id, job_seq = obj["job_id"], obj["job_seq"]
        if job_id is None:
            if job_seq is not None or obj["job_prev"] != "":
                raise RecordFormatError("a record without job_id carries no job chain")
        elif not isinstance(job_id, str) or not job_id or not _nonneg_int(job_seq) or job_seq > MAX_COUNT:
            raise RecordFormatError("job_id must be a non-empty string with a non-negative job_seq")
        for name in ("prev_hash", "job_prev"):
            if not _hex(obj[name], 32, allow_empty=True):
                raise RecordFormatError(f"{name} must be 64 hex characters (or empty)")
        if not _hex(obj["hash"], 32) or not _hex(obj["sig"], 64):
            raise RecordFormatError("hash must be 64 and sig 128 lowercase hex characters")
        rec = cls(seq=obj["seq"], segment=obj["segment"], time_ms=obj["time_ms"], kind=obj["kind"],
                  prev_hash=obj["prev_hash"], fields=obj["fields"], job_id=job_id, job_seq=job_seq,
                  job_prev=obj["job_prev"], hash=obj["hash"], sig=obj["sig"])
        try:
            again = rec.to_line()
        except (ValueError, RecursionError) as exc:  # non-finite floats; nesting too deep to encode
            raise RecordFormatError(f"not canonical: {str(exc)[:120]}", "encoding") from None
        if again[:-1] != line:
            raise RecordFormatError("line is not the canonical encoding of its content (edited by hand?)", "encoding")
        return rec


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a deep value must not overflow the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is None:
            continue
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((x, d + 1) for x in items)
    return deepest


def _hex(v: Any, n: int, *, allow_empty: bool = False) -> bool:
    if not isinstance(v, str):
        return False
    if v == "":
        return allow_empty
    return len(v) == 2 * n and set(v) <= HEX_CHARS
