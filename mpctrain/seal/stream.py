"""Sealed streams: a signed header, then AES-256-GCM chunks in the STREAM construction.

Why this shape: a random 256-bit data key is HPKE-wrapped once per recipient in the header; the header
is Ed25519-signed by the sender (HPKE base mode alone is sender-anonymous); chunk ``i`` uses the nonce
``nonce_prefix(7) ‖ u32be(i) ‖ last-flag(1)`` and the SHA-256 of the header bytes as associated data,
so a chunk cannot be modified, reordered, dropped, duplicated, moved to another stream, and the stream
cannot be cut short or extended without the opener noticing. Memory stays at a few chunks whatever the
payload size. Wire format and error meanings: docs/sealing.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import IO, Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mpctrain.seal.binding import canonical
from mpctrain.seal.errors import (
    BadHeaderSignature,
    BadSignature,
    ChunkAlreadySealed,
    ContextMismatch,
    MalformedStream,
    StaleStream,
    StreamTooLarge,
    TamperedChunk,
    TruncatedStream,
    UnexpectedSender,
    WrongRecipient,
)
from mpctrain.seal.keys import (
    ED25519_PUBLIC_BYTES,
    ED25519_SIGNATURE_BYTES,
    KEM_ALGS,
    IdentityKey,
    KemKey,
    verify_signature,
)
from mpctrain.seal.paths import atomic_file
from mpctrain.seal.wrap import WrapContext, unwrap_key, wrap_key

STREAM_VERSION = 1
PARTS_VERSION = 2  # a header that also declares each chunk's size (``parts``); otherwise identical
MAX_PARTS = 1 << 14
COMMIT_KEY_BYTES = 32
COMMIT_NONCE = bytes(12)  # every commitment key is fresh and used for exactly one tag
HEADER_MAGIC = b"mpctrain/v1/sealed-stream"
HEADER_SIGNATURE_DOMAIN = b"mpctrain/v1/sealed-stream-header"
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
MAX_CHUNKS = 1 << 32  # the chunk counter is a u32
TAG_BYTES = 16
KEY_BYTES = 32
NONCE_PREFIX_BYTES = 7
MAX_HEADER_BYTES = 256 << 10
MAX_RECIPIENTS = 64
MAX_TEXT_BYTES = 1024
MAX_WRAPPED_BYTES = 4096
CLOCK_SKEW_S = 300

FRAME_FILE_MAGIC = b"MPCSEAL1"
_MAGIC_FIELD = canonical(HEADER_MAGIC)
_SIGNED_PREFIX = canonical(HEADER_SIGNATURE_DOMAIN)
_LEN = struct.Struct(">I")

Recipient = tuple[str, str, bytes]


# ---------------------------------------------------------------------------------------------- header


class _Reader:
    """Strict reader for ``canonical()`` fields: every length is checked against a cap before use."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def raw(self, name: str, cap: int, exact: int | None = None) -> bytes:
        if len(self.data) - self.pos < 8:
            raise MalformedStream(f"stream header truncated before field {name!r}")
        (n,) = struct.unpack_from(">Q", self.data, self.pos)
        if exact is not None and n != exact:
            raise MalformedStream(f"stream header field {name!r} must be {exact} bytes, got {n}")
        if n > cap:
            raise MalformedStream(f"stream header field {name!r} is {n} bytes, over the cap of {cap}")
        start = self.pos + 8
        if len(self.data) - start < n:
            raise MalformedStream(f"stream header truncated inside field {name!r}")
        self.pos = start + n
        return self.data[start:self.pos]

    def int(self, name: str) -> int:
        (v,) = struct.unpack(">q", self.raw(name, 8, exact=8))
        return int(v)

    def text(self, name: str) -> str:
        try:
            return self.raw(name, MAX_TEXT_BYTES).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedStream(f"stream header field {name!r} is not valid UTF-8") from None


@dataclass(frozen=True)
class StreamHeader:
    """Everything an opener needs before the first chunk; signed by the sender over all other fields."""

    version: int
    purpose: str
    job_id: str
    object_id: str
    sender: str
    sender_public: bytes
    chunk_size: int
    total_size: int
    recipients: tuple[Recipient, ...]
    nonce_prefix: bytes
    created: int
    signature: bytes = field(default=b"", repr=False)
    # declared chunk sizes (version 2 only): chunk ``i`` holds exactly ``parts[i]`` bytes, so a payload made
    # of separate buffers (one per model array) is sealed and opened buffer by buffer, with no re-cutting
    parts: tuple[int, ...] = ()
    # the exact bytes a parsed header came from (``replace()`` drops them): with a strict canonical parse they
    # equal the re-encoding, so digest and signature check hash them instead of encoding N recipients again
    _raw: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def _fields(self) -> list[bytes | str | int]:
        out: list[bytes | str | int] = [
            self.version, self.purpose, self.job_id, self.object_id, self.sender, self.sender_public,
            self.chunk_size, self.total_size, len(self.recipients),
        ]
        for rid, alg, wrapped in self.recipients:
            out += [rid, alg, wrapped]
        out += [self.nonce_prefix, self.created]
        if self.version == PARTS_VERSION:
            out.append(struct.pack(f">{len(self.parts)}Q", *self.parts))
        return out

    def signed_bytes(self) -> bytes:
        """The bytes the sender's Ed25519 signature covers: every field except the signature."""
        if self._raw is not None:  # the same fields, framed by the signature domain instead of magic/signature
            return _SIGNED_PREFIX + self._raw[len(_MAGIC_FIELD):len(self._raw) - 8 - len(self.signature)]
        return canonical(HEADER_SIGNATURE_DOMAIN, *self._fields())

    def to_bytes(self) -> bytes:
        if self._raw is not None:
            return self._raw
        return canonical(HEADER_MAGIC, *self._fields(), self.signature)

    @cached_property
    def _digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def digest(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`: the associated data of every chunk, and a stable stream id."""
        return self._digest

    @property
    def chunk_count(self) -> int | None:
        """Number of chunk frames when the total size is declared (an empty payload is one chunk)."""
        if self.parts:
            return len(self.parts)
        if self.total_size < 0:
            return None
        return max(1, -(-self.total_size // self.chunk_size))

    @cached_property
    def _part_offsets(self) -> tuple[int, ...]:
        offsets, pos = [], 0
        for n in self.parts:
            offsets.append(pos)
            pos += n
        return tuple(offsets)

    @property
    def commits(self) -> bool:
        """Whether the chunks are committed to per recipient (a trailer frame of tags after the last chunk).

        All recipients of a stream share its data key, so any of them could re-encrypt chunks that the
        others would accept under the sender's header signature. A version-2 stream to several recipients
        therefore wraps each one a second, private key as well, and ends with one GMAC per recipient over
        the header digest and every chunk frame: a recipient accepts only the chunks the sender committed
        to for it. With one recipient there is nobody to forge for, so there is no trailer.
        """
        return self.version == PARTS_VERSION and len(self.recipients) > 1

    def chunk_offset(self, index: int) -> int:
        """Where chunk ``index`` starts in the plaintext."""
        return self._part_offsets[index] if self.parts else index * self.chunk_size

    def wrap_context(self) -> WrapContext:
        return WrapContext(self.purpose, self.job_id, self.object_id, self.sender)

    def recipient_ids(self) -> list[str]:
        return [rid for rid, _, _ in self.recipients]

    def check(self) -> None:
        """Structural limits; raises :class:`MalformedStream`. Run on parse and before signing."""
        if self.version not in (STREAM_VERSION, PARTS_VERSION):
            raise MalformedStream(f"unsupported sealed-stream version {self.version}; this build reads "
                                  f"{STREAM_VERSION} and {PARTS_VERSION}")
        if (self.version == PARTS_VERSION) != bool(self.parts):
            raise MalformedStream(f"a version {PARTS_VERSION} header, and only one, declares its chunk sizes")
        if self.parts:
            if len(self.parts) > MAX_PARTS:
                raise MalformedStream(f"stream header declares {len(self.parts)} parts, over the cap of {MAX_PARTS}")
            if any(not 0 <= n <= self.chunk_size for n in self.parts):
                raise MalformedStream(f"every declared part must be 0..chunk_size={self.chunk_size} bytes")
            if sum(self.parts) != self.total_size:
                raise MalformedStream(f"declared parts sum to {sum(self.parts)} bytes, not total_size "
                                      f"{self.total_size}")
        if not self.purpose or not self.sender:
            raise MalformedStream("stream header needs a non-empty purpose and sender id")
        for name in ("purpose", "job_id", "object_id", "sender"):
            if len(getattr(self, name).encode()) > MAX_TEXT_BYTES:
                raise MalformedStream(f"stream header {name} is over {MAX_TEXT_BYTES} bytes")
        if len(self.sender_public) != ED25519_PUBLIC_BYTES:
            raise MalformedStream("stream header sender_public must be a 32-byte Ed25519 key")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise MalformedStream(f"chunk_size {self.chunk_size} outside 1..{MAX_CHUNK_SIZE}")
        if self.total_size < -1 or self.total_size > self.chunk_size * MAX_CHUNKS:
            raise MalformedStream(f"total_size {self.total_size} is neither -1 (unknown) nor within "
                                  f"{MAX_CHUNKS} chunks of {self.chunk_size} bytes")
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise MalformedStream(f"a stream needs 1..{MAX_RECIPIENTS} recipients, got {len(self.recipients)}")
        ids = self.recipient_ids()
        if len(set(ids)) != len(ids):
            raise MalformedStream("recipient ids in a stream header must be unique")
        for rid, alg, wrapped in self.recipients:
            if not rid or len(rid.encode()) > MAX_TEXT_BYTES:
                raise MalformedStream(f"recipient id must be 1..{MAX_TEXT_BYTES} bytes")
            if alg not in KEM_ALGS:
                raise MalformedStream(f"recipient {rid!r} uses unknown KEM {alg!r}")
            if not 0 < len(wrapped) <= MAX_WRAPPED_BYTES:
                raise MalformedStream(f"wrapped key for {rid!r} must be 1..{MAX_WRAPPED_BYTES} bytes")
        if len(self.nonce_prefix) != NONCE_PREFIX_BYTES:
            raise MalformedStream(f"nonce_prefix must be {NONCE_PREFIX_BYTES} bytes")

    @classmethod
    def from_bytes(cls, b: bytes | bytearray | memoryview) -> StreamHeader:
        """Strict, bounded parse; raises :class:`MalformedStream`. Does not verify the signature."""
        data = bytes(b)
        if len(data) > MAX_HEADER_BYTES:
            raise MalformedStream(f"stream header is {len(data)} bytes, over the cap of {MAX_HEADER_BYTES}")
        r = _Reader(data)
        if r.raw("magic", len(HEADER_MAGIC)) != HEADER_MAGIC:
            raise MalformedStream("not a sealed-stream header (bad magic)")
        version = r.int("version")
        if version not in (STREAM_VERSION, PARTS_VERSION):
            raise MalformedStream(f"unsupported sealed-stream version {version}; this build reads {STREAM_VERSION} "
                                  f"and {PARTS_VERSION}")
        purpose, job_id, object_id, sender = r.text("purpose"), r.text("job_id"), r.text("object_id"), r.text("sender")
        sender_public = r.raw("sender_public", ED25519_PUBLIC_BYTES, exact=ED25519_PUBLIC_BYTES)
        chunk_size, total_size, count = r.int("chunk_size"), r.int("total_size"), r.int("recipients")
        if not 1 <= count <= MAX_RECIPIENTS:
            raise MalformedStream(f"a stream needs 1..{MAX_RECIPIENTS} recipients, header says {count}")
        recipients = tuple((r.text("recipient_id"), r.text("kem_alg"), r.raw("wrapped_key", MAX_WRAPPED_BYTES))
                           for _ in range(count))
        nonce_prefix = r.raw("nonce_prefix", NONCE_PREFIX_BYTES, exact=NONCE_PREFIX_BYTES)
        created = r.int("created")
        parts: tuple[int, ...] = ()
        if version == PARTS_VERSION:
            table = r.raw("parts", MAX_PARTS * 8)
            if not table or len(table) % 8:
                raise MalformedStream("stream header parts table must be a non-empty list of u64 sizes")
            parts = struct.unpack(f">{len(table) // 8}Q", table)
        signature = r.raw("signature", ED25519_SIGNATURE_BYTES, exact=ED25519_SIGNATURE_BYTES)
        if r.pos != len(data):
            raise MalformedStream(f"{len(data) - r.pos} unexpected bytes after the stream header")
        header = cls(version, purpose, job_id, object_id, sender, sender_public, chunk_size, total_size,
                     recipients, nonce_prefix, created, signature, parts)
        header.check()
        object.__setattr__(header, "_raw", data)
        return header

    def verify_signature(self, expected_sender_public: bytes | None = None) -> None:
        """Signature first (:class:`BadHeaderSignature`), then the signer (:class:`UnexpectedSender`)."""
        try:
            verify_signature(self.sender_public, self.signature, self.signed_bytes())
        except BadSignature:
            raise BadHeaderSignature(
                f"stream header for object {self.object_id!r} from {self.sender!r} is not validly signed by the "
                "key it names: the header was modified in transit; discard the stream"
            ) from None
        if expected_sender_public is not None and bytes(expected_sender_public) != self.sender_public:
            raise UnexpectedSender(
                f"stream header claims sender {self.sender!r} but is signed by key "
                f"{hashlib.sha256(self.sender_public).digest()[:8].hex()}, not the expected "
                f"{hashlib.sha256(bytes(expected_sender_public)).digest()[:8].hex()}: refuse it, or re-check "
                "which identity key you expect for this sender"
            )


def _commit_tag(key: bytes, digest: bytes, frames: Sequence[bytes | memoryview]) -> bytes:
    """GMAC (AES-256-GCM with no plaintext) over the header digest and the chunk frames, in order."""
    mac = Cipher(algorithms.AES(key), modes.GCM(COMMIT_NONCE)).encryptor()
    mac.authenticate_additional_data(digest)
    for frame in frames:
        mac.authenticate_additional_data(frame)
    mac.finalize()
    return mac.tag


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class _IndexSet:
    """Chunk indices seen so far: a contiguous prefix plus the out-of-order ones (usually none)."""

    __slots__ = ("contig", "extra")

    def __init__(self) -> None:
        self.contig = 0
        self.extra: set[int] = set()

    def __contains__(self, i: int) -> bool:
        return i < self.contig or i in self.extra

    def add(self, i: int) -> None:
        if i != self.contig:
            self.extra.add(i)
            return
        self.contig += 1
        while self.contig in self.extra:
            self.extra.remove(self.contig)
            self.contig += 1

    def __len__(self) -> int:
        return self.contig + len(self.extra)

    def max(self) -> int:
        return max(self.extra, default=self.contig - 1)


def _nbytes(data: bytes | bytearray | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


# ---------------------------------------------------------------------------------------------- sealer


class StreamSealer:
    """Seals one stream: builds and signs the header, then encrypts chunks by explicit index.

    Each index can be sealed once (AES-GCM nonces must never repeat); non-final chunks are exactly
    ``chunk_size`` bytes, so a chunk's position is implied by its index alone. With ``parts`` (a version 2
    header) the signed header lists every chunk's size instead, and chunk ``i`` must hold exactly ``parts[i]``.
    """

    def __init__(
        self,
        *,
        sender: IdentityKey,
        sender_id: str,
        recipients: Sequence[tuple[str, str, bytes]],
        purpose: str,
        job_id: str,
        object_id: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        total_size: int = -1,
        created: int | None = None,
        parts: Sequence[int] | None = None,
    ) -> None:
        if not recipients:
            raise ValueError("a sealed stream needs at least one recipient (id, kem_alg, public key)")
        declared = tuple(int(n) for n in parts) if parts is not None else ()
        if parts is not None:
            if not declared:
                raise ValueError("parts must list at least one chunk size")
            chunk_size, total_size = max(1, *declared), sum(declared)
        data_key = AESGCM.generate_key(bit_length=256)
        ctx = WrapContext(purpose, job_id, object_id, sender_id)
        # a committing stream (declared parts, several recipients) wraps each recipient a private commitment key
        self._commit_keys = [os.urandom(COMMIT_KEY_BYTES) for _ in recipients] if declared and len(recipients) > 1 \
            else []
        secrets = [data_key + k for k in self._commit_keys] or [data_key] * len(recipients)
        wrapped = tuple((rid, alg, wrap_key(alg, public, secret, ctx))
                        for (rid, alg, public), secret in zip(recipients, secrets, strict=True))
        unsigned = StreamHeader(
            PARTS_VERSION if declared else STREAM_VERSION, purpose, job_id, object_id, sender_id,
            sender.public_bytes(), int(chunk_size), int(total_size), wrapped, os.urandom(NONCE_PREFIX_BYTES),
            int(time.time()) if created is None else int(created), parts=declared,
        )
        try:
            unsigned.check()
        except MalformedStream as e:
            raise ValueError(str(e)) from None
        self.header = replace(unsigned, signature=sender.sign(unsigned.signed_bytes()))
        self.header_bytes = self.header.to_bytes()
        object.__setattr__(self.header, "_raw", self.header_bytes)  # its exact encoding: hashed, not rebuilt
        self._aead = AESGCM(data_key)
        self._ad = self.header.digest()
        self._prefix = self.header.nonce_prefix
        self._sealed = _IndexSet()
        self._last: int | None = None

    def _admit(self, index: int, n: int, last: bool) -> bytes:
        h = self.header
        if not 0 <= index < MAX_CHUNKS:
            raise StreamTooLarge(f"chunk index {index} outside 0..{MAX_CHUNKS - 1}")
        if index in self._sealed:
            raise ChunkAlreadySealed(f"chunk {index} was already sealed; re-sealing would reuse its nonce: "
                                     "resend the frame you kept, or seal a new stream")
        if self._last is not None and (last or index > self._last):
            raise ValueError(f"chunk {self._last} was already sealed as the final chunk")
        if last and len(self._sealed) and self._sealed.max() > index:
            raise ValueError(f"cannot make chunk {index} final: chunk {self._sealed.max()} is already sealed")
        if h.parts:
            if index >= len(h.parts) or last != (index == len(h.parts) - 1) or n != h.parts[index]:
                raise ValueError(f"chunk {index} (final: {last}) of {n} bytes is not declared part {index} of "
                                 f"{len(h.parts)}" + (f" ({h.parts[index]} bytes)" if index < len(h.parts) else ""))
            self._sealed.add(index)
            if last:
                self._last = index
            return _nonce(self._prefix, index, last)
        if n > h.chunk_size:
            raise StreamTooLarge(f"chunk {index} holds {n} bytes, over chunk_size {h.chunk_size}")
        if not last and n != h.chunk_size:
            raise ValueError(f"non-final chunk {index} must be exactly chunk_size={h.chunk_size} bytes, got {n}")
        end = index * h.chunk_size + n
        if h.total_size >= 0 and end > h.total_size:
            raise StreamTooLarge(f"chunk {index} ends at byte {end}, past the declared total_size {h.total_size}")
        if h.total_size >= 0 and last and end != h.total_size:
            raise TruncatedStream(f"final chunk ends at byte {end} but total_size {h.total_size} was declared: "
                                  "the source is shorter than announced")
        self._sealed.add(index)
        if last:
            self._last = index
        return _nonce(self._prefix, index, last)

    def seal_chunk(self, index: int, plaintext: bytes | bytearray | memoryview, last: bool) -> bytes:
        """Encrypt chunk ``index``; returns the frame (ciphertext ‖ 16-byte tag)."""
        nonce = self._admit(index, _nbytes(plaintext), last)
        return self._aead.encrypt(nonce, plaintext, self._ad)

    def commitment(self, chunk_frames: Sequence[bytes | memoryview]) -> bytes:
        """The trailer frame of a committing stream (:attr:`StreamHeader.commits`): one 16-byte tag per
        recipient, in header order, over the header digest and ``chunk_frames`` (every chunk, in order)."""
        count = self.header.chunk_count
        if not self.header.commits:
            raise ValueError("only a stream with declared parts and several recipients carries a commitment")
        if len(chunk_frames) != count or len(self._sealed) != count:
            raise ValueError(f"seal all {count} chunks first, and pass every chunk frame in order")
        return b"".join(_commit_tag(key, self._ad, chunk_frames) for key in self._commit_keys)

    def seal_chunk_into(self, index: int, plaintext: bytes | bytearray | memoryview, last: bool,
                        out: bytearray) -> memoryview:
        """Like :meth:`seal_chunk`, writing into ``out`` (grown if needed); returns a view of the frame.

        The view is only valid until ``out`` is reused: write it out before sealing the next chunk.
        """
        n = _nbytes(plaintext)
        if len(out) < n + TAG_BYTES:
            try:
                out.extend(bytes(n + TAG_BYTES - len(out)))
            except BufferError:
                raise ValueError(f"out buffer must hold {n + TAG_BYTES} bytes; release views of it or pass a "
                                 "larger one") from None
        nonce = self._admit(index, n, last)
        view = memoryview(out)[: n + TAG_BYTES]
        self._aead.encrypt_into(nonce, plaintext, self._ad, view)
        return view

    def seal_iter(self, source: Iterable[bytes] | BinaryIO | bytes, *,
                  out: bytearray | None = None) -> Iterator[bytes | memoryview]:
        """Header frame, then chunk frames of ``source`` re-cut into ``chunk_size`` pieces.

        One chunk is held back until more input arrives, so the final chunk gets the last flag.
        Immutable ``bytes`` pieces of at least a chunk are sealed without copying. With ``out``, chunk
        frames are memoryviews into that one reused buffer, valid only until the next frame is requested
        (no per-frame allocation: for consumers that write each frame out at once).
        """
        cs = self.header.chunk_size
        if self.header.parts:
            raise ValueError("a stream with declared parts is sealed part by part with seal_chunk")
        if out is not None and len(out) < cs + TAG_BYTES:
            out.extend(bytes(cs + TAG_BYTES - len(out)))
        yield self.header_bytes
        buf = bytearray()  # allocated on first use: large immutable pieces need no copy
        n = 0  # bytes assembled in buf
        held: memoryview | None = None  # a full chunk, sealed non-final once more input shows up
        index = 0
        for piece in _pieces(source, cs):
            mv = memoryview(piece)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            immutable = isinstance(piece, bytes)
            pos, size = 0, mv.nbytes
            while pos < size:
                if held is not None:
                    yield self.seal_chunk(index, held, False) if out is None else self.seal_chunk_into(
                        index, held, False, out)
                    index += 1
                    held, n = None, 0
                if n == 0 and immutable and size - pos >= cs:
                    held = mv[pos:pos + cs]
                    pos += cs
                else:
                    if not buf:
                        buf = bytearray(cs)
                    take = min(cs - n, size - pos)
                    buf[n:n + take] = mv[pos:pos + take]
                    n += take
                    pos += take
                    if n == cs:
                        held = memoryview(buf)
        final = held if held is not None else memoryview(buf)[:n]
        yield self.seal_chunk(index, final, True) if out is None else self.seal_chunk_into(index, final, True, out)


def _pieces(source: Iterable[bytes] | BinaryIO | bytes, chunk_size: int) -> Iterator[Any]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield source
    elif hasattr(source, "read"):
        reader: IO[bytes] = source  # type: ignore[assignment]
        while piece := reader.read(chunk_size):
            yield piece
    else:
        for piece in source:
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise TypeError(f"seal_stream source must yield bytes-like pieces, got {type(piece).__name__}")
            yield piece


# ---------------------------------------------------------------------------------------------- opener


class StreamOpener:
    """Opens one stream for one recipient. Checks, in order: header signature, sender, context, freshness,
    size limits, then unwraps the data key; chunks are then opened by explicit index or in order.
    """

    def __init__(
        self,
        header_bytes: bytes,
        *,
        recipient_id: str,
        recipient_key: KemKey,
        expected_sender_public: bytes | None,
        expected_purpose: str | None = None,
        expected_job_id: str | None = None,
        expected_object_id: str | None = None,
        max_total: int | None = None,
        now: int | None = None,
        max_age_s: int | None = None,
    ) -> None:
        h = StreamHeader.from_bytes(header_bytes)
        h.verify_signature(expected_sender_public)
        for name, expected, actual in (("purpose", expected_purpose, h.purpose), ("job_id", expected_job_id, h.job_id),
                                       ("object_id", expected_object_id, h.object_id)):
            if expected is not None and expected != actual:
                raise ContextMismatch(f"stream {name} is {actual!r}, expected {expected!r}: this stream belongs "
                                      "to another job/object/purpose; do not accept it here")
        if max_age_s is not None or now is not None:
            t = int(time.time()) if now is None else int(now)
            if h.created > t + CLOCK_SKEW_S:
                raise StaleStream(f"stream created at {h.created}, more than {CLOCK_SKEW_S}s after now ({t}): "
                                  "check the sender's clock")
            if max_age_s is not None and t - h.created > max_age_s:
                raise StaleStream(f"stream created at {h.created} is {t - h.created}s old, over max_age_s="
                                  f"{max_age_s}: a replay of an old stream, or ask the sender to re-seal")
        if max_total is not None and h.total_size > max_total:
            raise StreamTooLarge(f"stream declares {h.total_size} bytes, over the limit of {max_total}")
        entry = next((r for r in h.recipients if r[0] == recipient_id), None)
        if entry is None:
            raise WrongRecipient(f"stream {h.object_id!r} has no wrapped key for recipient {recipient_id!r} "
                                 f"(addressed to {', '.join(map(repr, h.recipient_ids()))})")
        if entry[1] != recipient_key.alg:
            raise WrongRecipient(f"stream wraps the key for {recipient_id!r} with {entry[1]}, but the given key "
                                 f"is {recipient_key.alg}: load that recipient's {entry[1]} key")
        secret = unwrap_key(recipient_key, entry[2], h.wrap_context())
        want = KEY_BYTES + (COMMIT_KEY_BYTES if h.commits else 0)
        if len(secret) != want:
            raise MalformedStream(f"unwrapped key is {len(secret)} bytes, expected {want}")
        self.header = h
        self._commit_key = secret[KEY_BYTES:]
        self._commit_at = h.recipient_ids().index(recipient_id)
        self._committed = not h.commits
        self._aead = AESGCM(secret[:KEY_BYTES])
        self._ad = h.digest()
        self._prefix = h.nonce_prefix
        self._max_total = max_total
        self._opened = _IndexSet()
        self._last: int | None = None
        self._bytes = 0
        self._finished = False

    @property
    def bytes_opened(self) -> int:
        return self._bytes

    def check_commitment(self, chunk_frames: Sequence[bytes | memoryview], trailer: bytes | memoryview) -> None:
        """Check the trailer of a committing stream against every chunk frame, before any is decrypted.

        Raises :class:`TamperedChunk` when the chunks are not the ones the sender committed to for this
        recipient: changed by another recipient of the stream (who shares its data key) or in transit.
        """
        h = self.header
        if not h.commits:
            raise ValueError("this stream carries no commitment (one recipient, or equal chunks)")
        if len(chunk_frames) != h.chunk_count:
            raise TruncatedStream(f"stream {h.object_id!r} has {len(chunk_frames)} of its {h.chunk_count} chunk "
                                  "frames: it was cut or extended")
        if _nbytes(trailer) != 16 * len(h.recipients):
            raise TamperedChunk(f"commitment trailer is {_nbytes(trailer)} bytes, not 16 per recipient: cut or "
                                "re-framed")
        mine = bytes(memoryview(trailer)[16 * self._commit_at:16 * (self._commit_at + 1)])
        if not hmac.compare_digest(_commit_tag(self._commit_key, self._ad, chunk_frames), mine):
            raise TamperedChunk(f"the chunks of {h.object_id!r} are not the ones its sender committed to for this "
                                "recipient: re-encrypted by another recipient of the stream, or altered; discard")
        self._committed = True

    def _precheck(self, index: int, frame_len: int, last: bool) -> int:
        """Position and length checks before any decryption; returns the plaintext length."""
        h = self.header
        if not self._committed:
            raise ValueError("a committing stream's chunks are opened only after check_commitment()")
        if self._finished:
            raise TamperedChunk(f"chunk {index} offered after finish(): the stream was already complete")
        if not 0 <= index < MAX_CHUNKS:
            raise StreamTooLarge(f"chunk index {index} outside 0..{MAX_CHUNKS - 1}")
        if index in self._opened:
            raise TamperedChunk(f"chunk {index} was already opened: duplicated or replayed frame")
        if self._last is not None and (last or index > self._last):
            raise TamperedChunk(f"chunk {index} comes after the final chunk {self._last}: extra frame")
        if last and len(self._opened) and self._opened.max() > index:
            raise TamperedChunk(f"chunk {index} claims to be final but chunk {self._opened.max()} was opened")
        n = frame_len - TAG_BYTES
        if h.parts:
            if index >= len(h.parts):
                raise TamperedChunk(f"chunk {index} is past the {len(h.parts)} declared parts: extra frame")
            if last != (index == len(h.parts) - 1):
                raise TamperedChunk(f"chunk {index} of {len(h.parts)} declared parts has the wrong final flag")
            if n != h.parts[index]:
                if last and 0 <= n < h.parts[index]:
                    raise TruncatedStream(f"final frame holds {n} of its {h.parts[index]} declared bytes: the "
                                          "stream was cut; fetch the rest")
                raise TamperedChunk(f"chunk {index} holds {n} bytes, not its declared {h.parts[index]}: cut or "
                                    "re-framed")
            end = h.chunk_offset(index) + n
            if self._max_total is not None and end > self._max_total:
                raise StreamTooLarge(f"stream passes {self._max_total} bytes at chunk {index}: over the limit")
            return n
        if n > h.chunk_size:
            raise StreamTooLarge(f"chunk {index} frame holds {n} bytes, over chunk_size {h.chunk_size}")
        end = index * h.chunk_size + max(n, 0)
        if self._max_total is not None and end > self._max_total:
            raise StreamTooLarge(f"stream passes {self._max_total} bytes at chunk {index}: over the limit")
        if h.total_size >= 0:
            if end > h.total_size:
                raise TamperedChunk(f"chunk {index} would end at byte {end}, past the declared total "
                                    f"{h.total_size}: extra or re-framed chunk")
            if last and (n < 0 or end < h.total_size):
                raise TruncatedStream(f"final frame ends at byte {end} of {h.total_size} declared: the stream "
                                      "was cut; fetch the rest")
        if n < 0:
            raise TamperedChunk(f"chunk {index} frame is {frame_len} bytes, shorter than the 16-byte tag")
        if not last and n != h.chunk_size:
            raise TamperedChunk(f"non-final chunk {index} holds {n} bytes instead of {h.chunk_size}: cut or "
                                "re-framed")
        return n

    def _record(self, index: int, n: int, last: bool) -> None:
        self._opened.add(index)
        self._bytes += n
        if last:
            self._last = index

    def _fail(self, index: int) -> TamperedChunk:
        return TamperedChunk(f"chunk {index} of object {self.header.object_id!r} failed authentication: "
                             "modified, reordered, from another stream, or its final flag is wrong; discard it")

    def open_chunk(self, index: int, frame: bytes | bytearray | memoryview, last: bool) -> bytes:
        """Authenticate and decrypt chunk ``index``; raises before returning any plaintext of a bad chunk."""
        n = self._precheck(index, _nbytes(frame), last)
        try:
            plaintext = self._aead.decrypt(_nonce(self._prefix, index, last), frame, self._ad)
        except InvalidTag:
            raise self._fail(index) from None
        self._record(index, n, last)
        return plaintext

    def open_chunk_into(self, index: int, frame: bytes | bytearray | memoryview, last: bool,
                        out: bytearray) -> memoryview:
        """Like :meth:`open_chunk` into a reused buffer; on failure the buffer region is zeroed."""
        n = self._precheck(index, _nbytes(frame), last)
        if len(out) < n:
            raise ValueError(f"out buffer must hold {n} bytes")
        view = memoryview(out)[:n]
        try:
            self._aead.decrypt_into(_nonce(self._prefix, index, last), frame, self._ad, view)
        except InvalidTag:
            view[:] = bytes(n)
            raise self._fail(index) from None
        self._record(index, n, last)
        return view

    def finish(self) -> int:
        """Confirm the stream is complete; returns its plaintext size. Raises :class:`TruncatedStream`."""
        h = self.header
        if self._last is None:
            raise TruncatedStream(f"stream {h.object_id!r} has no final chunk after {len(self._opened)} chunks: "
                                  "it was cut; fetch or resend the rest")
        if len(self._opened) != self._last + 1:
            raise TruncatedStream(f"stream {h.object_id!r} is missing {self._last + 1 - len(self._opened)} of "
                                  f"{self._last + 1} chunks")
        if h.total_size >= 0 and self._bytes != h.total_size:
            raise TruncatedStream(f"stream {h.object_id!r} holds {self._bytes} of {h.total_size} declared bytes")
        self._finished = True
        return self._bytes

    def _flag_guesses(self, index: int, n: int) -> tuple[bool, ...]:
        """Which final-flag values chunk ``index`` with ``n`` plaintext bytes can have, likeliest first."""
        count = self.header.chunk_count
        if count is not None:
            return (index >= count - 1,)
        if n == self.header.chunk_size:  # a full chunk is final only if the payload is a multiple of it
            return (False, True)
        return (n < self.header.chunk_size,)

    def open_iter(self, frames: Iterable[bytes | memoryview], *,
                  out: bytearray | None = None) -> Iterator[bytes | memoryview]:
        """Open the chunk frames (header excluded) in order, then :meth:`finish`.

        Without lookahead: the final flag follows from the declared size, or from a short chunk; a full
        chunk of an unknown-size stream is tried as non-final, then final. Yielded plaintext is
        authentic and in place, but the stream is complete only when iteration ends without error: do
        not act on the data before that. Frames may be reused buffers (each is used before the next is
        requested). With ``out``, plaintext chunks are memoryviews into that one reused buffer, valid only
        until the next chunk is requested.
        """
        if out is not None and len(out) < self.header.chunk_size:
            out.extend(bytes(self.header.chunk_size - len(out)))
        index = 0
        for frame in frames:
            guesses = self._flag_guesses(index, _nbytes(frame) - TAG_BYTES)
            plaintext: bytes | memoryview = b""
            for attempt, last in enumerate(guesses):
                try:
                    if out is None:
                        plaintext = self.open_chunk(index, frame, last)
                    else:
                        plaintext = self.open_chunk_into(index, frame, last, out)
                    break
                except TamperedChunk:
                    if attempt == len(guesses) - 1:
                        raise
            yield plaintext
            index += 1
        if index == 0:
            raise TruncatedStream("no chunk frames after the stream header: the stream was cut")
        self.finish()


# ---------------------------------------------------------------------------------------------- helpers


def seal_stream(source: Iterable[bytes] | BinaryIO | bytes, *, reuse_buffer: bool = False,
                **sealer_kwargs: Any) -> Iterator[bytes]:
    """Yield the header frame, then chunk frames; memory stays at about two chunks.

    ``reuse_buffer=True`` yields chunk frames as memoryviews into one buffer, each valid only until the
    next is requested: faster (no allocation per frame) for consumers that write frames out at once.
    """
    sealer = StreamSealer(**sealer_kwargs)
    out = bytearray(sealer.header.chunk_size + TAG_BYTES) if reuse_buffer else None
    return sealer.seal_iter(source, out=out)  # type: ignore[return-value]


def open_stream(frames: Iterable[bytes], *, reuse_buffer: bool = False, **opener_kwargs: Any) -> Iterator[bytes]:
    """Yield plaintext chunks of a stream whose first frame is the header (see StreamOpener.open_iter).

    ``reuse_buffer=True`` yields memoryviews into one buffer, each valid until the next is requested.
    """
    it = iter(frames)
    header = next(it, None)
    if header is None:
        raise TruncatedStream("no frames: the stream header is missing")
    opener = StreamOpener(header, **opener_kwargs)
    out = bytearray(opener.header.chunk_size) if reuse_buffer else None
    return opener.open_iter(it, out=out)  # type: ignore[return-value]


def seal_bytes(data: bytes | bytearray | memoryview, **kw: Any) -> list[bytes]:
    """Seal an in-memory payload (total_size declared) into a list of frames, header first."""
    kw.setdefault("total_size", _nbytes(data))
    return list(seal_stream(bytes(data), **kw))


def open_bytes(frames: Iterable[bytes], **kw: Any) -> bytes:
    """Open a whole stream; returns the plaintext only if the stream is complete and authentic."""
    return b"".join(open_stream(frames, **kw))


# ---------------------------------------------------------------------------------------------- frame files


def write_frame(out: IO[bytes], frame: bytes | bytearray | memoryview) -> None:
    """Append one frame to a frame file: u32 big-endian length, then the frame bytes."""
    out.write(_LEN.pack(_nbytes(frame)))
    out.write(frame)


def _read_frame(f: IO[bytes], cap: int, what: str) -> bytes | None:
    """One length-prefixed frame, or None at a clean end of file."""
    prefix = f.read(_LEN.size)
    if not prefix:
        return None
    if len(prefix) < _LEN.size:
        raise TruncatedStream("frame file ends inside a length prefix: the file was cut")
    (n,) = _LEN.unpack(prefix)
    if n > cap:
        raise StreamTooLarge(f"{what} frame of {n} bytes is over the cap of {cap}")
    frame = f.read(n)
    if len(frame) < n:
        raise TruncatedStream(f"frame file ends {n - len(frame)} bytes into a {n}-byte frame: the file was cut")
    return frame


def _read_frame_file_header(f: IO[bytes]) -> bytes:
    if f.read(len(FRAME_FILE_MAGIC)) != FRAME_FILE_MAGIC:
        raise MalformedStream("not a sealed-stream frame file (bad magic, expected MPCSEAL1)")
    header = _read_frame(f, MAX_HEADER_BYTES, "header")
    if header is None:
        raise TruncatedStream("frame file holds no stream header: the file was cut")
    return header


def _iter_frames(f: IO[bytes], max_frame: int) -> Iterator[bytes]:
    while (frame := _read_frame(f, max_frame, "chunk")) is not None:
        yield frame


def iter_frame_file(f: IO[bytes], *, max_frame: int = MAX_CHUNK_SIZE + TAG_BYTES) -> Iterator[bytes]:
    """Frames of a frame file: magic ``MPCSEAL1``, then u32-big-endian-length-prefixed frames to end of file.

    The first frame is the header; pass the result to :func:`open_stream`.
    """
    yield _read_frame_file_header(f)
    yield from _iter_frames(f, max_frame)


def _atomic_output(out_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
                   ) -> AbstractContextManager[IO[bytes]]:
    """A mode-0600 temp file beside ``out_path``, renamed over it only if the block completes: never partial.
    With ``root``, no directory between it and ``out_path`` may be a symbolic link (``LinkedPath``)."""
    return atomic_file(out_path, root=root)


def seal_file(path: str | os.PathLike[str], out_path: str | os.PathLike[str], **kw: Any) -> StreamHeader:
    """Seal a file into a frame file (written atomically, mode 0600); the total size is declared."""
    with _atomic_output(out_path) as out, open(path, "rb") as src:
        total = os.fstat(src.fileno()).st_size
        kw.setdefault("total_size", total)
        sealer = StreamSealer(**kw)
        cs, total = sealer.header.chunk_size, sealer.header.total_size
        out.write(FRAME_FILE_MAGIC)
        write_frame(out, sealer.header_bytes)
        count = sealer.header.chunk_count or 1
        buf, frame = bytearray(cs), bytearray(cs + TAG_BYTES)
        view = memoryview(buf)
        for i in range(count):
            want = min(cs, total - i * cs)
            got = 0
            while got < want and (r := src.readinto(view[got:want])):
                got += r
            if got < want:
                raise TruncatedStream(f"{path} shrank while being sealed; seal it again")
            write_frame(out, sealer.seal_chunk_into(i, view[:want], i == count - 1, frame))
        if src.read(1):
            raise StreamTooLarge(f"{path} grew past {total} bytes while being sealed; seal it again")
    return sealer.header


def open_file(path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
              out_root: str | os.PathLike[str] | None = None, **opener_kwargs: Any) -> StreamHeader:
    """Open a frame file; ``out_path`` (mode 0600) appears only once the whole stream is verified.
    ``out_root``: the directory the caller chose; nothing between it and ``out_path`` may be a link."""
    with _atomic_output(out_path, out_root) as out, open(path, "rb") as src:
        opener = StreamOpener(_read_frame_file_header(src), **opener_kwargs)
        frames = _iter_frames(src, opener.header.chunk_size + TAG_BYTES)
        for plaintext in opener.open_iter(frames):
            out.write(plaintext)
    return opener.header
