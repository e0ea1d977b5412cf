"""The sealed envelope both sides of federated mode speak (enclave strategy wrapper and party mod).

A sealed Flower message holds exactly two records:

- ``mpctrain.sealed``: an ArrayRecord whose raw arrays are the frames of one sealed stream
  (``mpctrain.seal.stream``): header with the data key wrapped to every recipient, then AES-GCM chunks.
  The plaintext is the original RecordDict plus a sealed context: in the part layout (``parts``), one
  declared chunk per array, whenever the header can declare them all; else in the safetensors layout
  (``codec.encode_record``) in equal chunks. The header's version says which.
- ``mpctrain.envelope``: a small ConfigRecord in clear (version, job id, object id, enclave key id,
  sender party) that only routes the message; everything it says is re-checked after opening.

Instructions (enclave → parties) are sealed once per distinct content, signed by the enclave key and
wrapped to each selected party's KEM key. Replies (party → enclave) are sealed to the attested enclave
KEM key, signed by the party's identity key, and name the instruction's fresh nonce in their object id,
so a reply cannot be replayed into another round, message or job.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from mpctrain.enclave.federated.codec import CodecError, decode_numpy, decode_record, encode_record_pieces
from mpctrain.enclave.federated.errors import EnvelopeError
from mpctrain.enclave.federated.parts import decode_parts, decode_parts_numpy, encode_parts
from mpctrain.seal.binding import canonical

VERSION = 1
SEALED_KEY = "mpctrain.sealed"
ENVELOPE_KEY = "mpctrain.envelope"
PURPOSE_INSTRUCTION = "mpctrain/v1/fl-instruction"
PURPOSE_REPLY = "mpctrain/v1/fl-reply"
PURPOSE_OUTPUT = "mpctrain/v1/fl-output"
ENCLAVE_SENDER = "enclave"
FRAME_STYPE = "mpctrain.sealed-frame"
MAX_FRAMES = 1 << 16
# One frame for most models: each frame is one more Flower Array to serialise on every hop (about 0.3 ms
# per MB-sized frame in and out), while the chunk size changes nothing else (opening decrypts in place).
DEFAULT_CHUNK_SIZE = 16 << 20
KEY_ID_DOMAIN = b"mpctrain/v1/enclave-key-id"


def enclave_key_id(kem_public: bytes, sig_public: bytes) -> str:
    """Names one enclave key pair; a different id means a restarted enclave and a fresh attestation."""
    return hashlib.sha256(canonical(KEY_ID_DOMAIN, kem_public, sig_public)).hexdigest()[:32]


@dataclass(frozen=True)
class Envelope:
    """The clear routing fields of a sealed message (untrusted until the sealed context confirms them)."""

    job_id: str
    object_id: str
    enclave_key: str
    party: str = ""


def frames_to_record(frames: Sequence[bytes]) -> ArrayRecord:
    """Carry stream frames as raw arrays, so Flower's transport chunks them like any model array."""
    if len(frames) > MAX_FRAMES:
        raise EnvelopeError(f"{len(frames)} frames exceed the limit of {MAX_FRAMES}")
    return ArrayRecord({f"{i:06d}": Array("uint8", (len(f),), FRAME_STYPE, bytes(f)) for i, f in enumerate(frames)})


def make_sealed_content(frames: Sequence[bytes], envelope: Envelope) -> RecordDict:
    env = ConfigRecord({"v": VERSION, "job": envelope.job_id, "object": envelope.object_id,
                        "enclave": envelope.enclave_key, "party": envelope.party})
    return RecordDict({SEALED_KEY: frames_to_record(frames), ENVELOPE_KEY: env})


def read_sealed_content(content: RecordDict) -> tuple[list[bytes], Envelope]:
    """Split a sealed message body into frames and envelope; ``EnvelopeError`` for anything else."""
    if set(content.keys()) != {SEALED_KEY, ENVELOPE_KEY}:
        raise EnvelopeError(f"message is not sealed: records {sorted(content.keys())}, expected "
                            f"{sorted([SEALED_KEY, ENVELOPE_KEY])}")
    sealed = content[SEALED_KEY]
    env = content[ENVELOPE_KEY]
    if not isinstance(sealed, ArrayRecord) or not isinstance(env, ConfigRecord):
        raise EnvelopeError("sealed message records have the wrong types")
    if env.get("v") != VERSION:
        raise EnvelopeError(f"envelope version {env.get('v')!r} is not {VERSION}")
    fields = {}
    for name in ("job", "object", "enclave", "party"):
        value = env.get(name)
        if not isinstance(value, str) or len(value) > 256:
            raise EnvelopeError(f"envelope field {name!r} must be a short string")
        fields[name] = value
    if len(sealed) == 0 or len(sealed) > MAX_FRAMES:
        raise EnvelopeError(f"sealed record holds {len(sealed)} frames")
    frames = []
    for i, key in enumerate(sealed.keys()):
        arr = sealed[key]
        if key != f"{i:06d}" or arr.stype != FRAME_STYPE or arr.dtype != "uint8":
            raise EnvelopeError(f"sealed frame {key!r} is out of order or of the wrong type")
        frames.append(arr.data)
    return frames, Envelope(job_id=fields["job"], object_id=fields["object"], enclave_key=fields["enclave"],
                            party=fields["party"])


def seal_content(content: RecordDict, context: Mapping[str, Any], *, sender: Any, sender_id: str,
                 recipients: Sequence[tuple[str, str, bytes]], purpose: str, job_id: str, object_id: str,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """Encode ``content`` with its sealed ``context`` and seal it once to every recipient.

    The part layout whenever the header can declare every part (``chunk_size`` then plays no role). Past
    16384 parts, one recipient gets the safetensors layout in ``chunk_size`` chunks; several cannot (that
    stream could not commit its chunks to each of them), and get an ``EnvelopeError``.
    """
    from mpctrain.seal.stream import MAX_PARTS

    kwargs = dict(sender=sender, sender_id=sender_id, recipients=list(recipients), purpose=purpose, job_id=job_id,
                  object_id=object_id)
    parts = encode_parts(content, context)
    if len(parts) <= MAX_PARTS:
        return seal_parts(parts, **kwargs)
    if len(kwargs["recipients"]) > 1:
        raise EnvelopeError(f"a message of {len(parts)} parts (arrays, and 64 MiB pieces of larger ones) exceeds "
                            f"the {MAX_PARTS} a stream to several recipients can declare: use fewer, larger arrays")
    pieces, total = encode_record_pieces(content, context)
    return seal_pieces(pieces, total, chunk_size=chunk_size, **kwargs)


def seal_parts(parts: Sequence[bytes | memoryview], **sealer_kwargs: Any) -> list[bytes]:
    """Seal each part as its own declared chunk, encrypted straight from the caller's buffer.

    Frames: the header, one per part, then (several recipients) the commitment trailer.
    """
    from mpctrain.seal.stream import StreamSealer

    sealer = StreamSealer(parts=[memoryview(p).nbytes for p in parts], **sealer_kwargs)
    last = len(parts) - 1
    chunks = [sealer.seal_chunk(i, p, i == last) for i, p in enumerate(parts)]
    return [sealer.header_bytes, *chunks, *([sealer.commitment(chunks)] if sealer.header.commits else [])]


_STAGING = threading.local()


def _staging(size: int) -> memoryview:
    """This thread's gather buffer, grown on demand and kept: a fresh multi-megabyte ``bytearray`` per sealed
    reply costs more (zero-filling and page faults) than encrypting it."""
    buf: bytearray | None = getattr(_STAGING, "buf", None)
    if buf is None or len(buf) < size:
        buf = _STAGING.buf = bytearray(size)
    return memoryview(buf)[:size]


def seal_pieces(pieces: Sequence[bytes | memoryview], total: int, **sealer_kwargs: Any) -> list[bytes]:
    """Seal the concatenation of ``pieces`` (``total`` bytes, declared) without building it.

    Each chunk is encrypted straight from the piece that holds it (the arrays' own buffers); only a
    chunk straddling two pieces is gathered into one reused staging buffer first. Frames: header first.
    """
    from mpctrain.seal.stream import StreamSealer

    sealer = StreamSealer(total_size=total, **sealer_kwargs)
    cs = sealer.header.chunk_size
    count = sealer.header.chunk_count or 1
    views = [v for v in (memoryview(p).cast("B") for p in pieces) if v.nbytes]
    if sum(v.nbytes for v in views) != total:
        raise ValueError(f"pieces hold {sum(v.nbytes for v in views)} bytes, not the declared {total}")
    frames = [sealer.header_bytes]
    staging: memoryview | None = None
    piece, offset = 0, 0
    for index in range(count):
        want = min(cs, total - index * cs)
        if piece < len(views) and views[piece].nbytes - offset >= want:
            chunk: bytes | memoryview = views[piece][offset:offset + want]
            offset += want
        else:
            if staging is None:
                staging = _staging(min(cs, total))
            got = 0
            while got < want:
                take = min(want - got, views[piece].nbytes - offset)
                staging[got:got + take] = views[piece][offset:offset + take]
                got, offset = got + take, offset + take
                if offset == views[piece].nbytes:
                    piece, offset = piece + 1, 0
            chunk = staging[:want]
        if piece < len(views) and offset == views[piece].nbytes:
            piece, offset = piece + 1, 0
        frames.append(sealer.seal_chunk(index, chunk, index == count - 1))
    return frames


def open_payload(frames: Sequence[bytes], *, recipient_id: str, recipient_key: Any, sender_public: bytes,
                 purpose: str, job_id: str, object_id: str, max_bytes: int) -> bytes:
    """Open a sealed stream with every context field pinned; raises the seal module's typed errors."""
    from mpctrain.seal.stream import open_bytes

    payload = open_bytes(list(frames), recipient_id=recipient_id, recipient_key=recipient_key,
                         expected_sender_public=sender_public, expected_purpose=purpose,
                         expected_job_id=job_id, expected_object_id=object_id, max_total=max_bytes)
    if len(payload) > max_bytes:
        raise EnvelopeError(f"sealed payload is {len(payload)} bytes; the limit is {max_bytes}")
    return payload


class PlaintextBuffer:
    """One plaintext buffer reused for every reply of a round: opening a 4 MB update then allocates (and
    page-faults) nothing, and the decoded arrays are views into it, valid until the next open."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def view(self, size: int) -> memoryview:
        if len(self._buf) < size:
            self._buf = bytearray(size)  # a fresh one: views of the old one may still be alive
        return memoryview(self._buf)[:size]


def _opener(frames: Sequence[bytes], *, recipient_id: str, recipient_key: Any, sender_public: bytes, purpose: str,
            job_id: str, object_id: str, max_bytes: int) -> Any:
    from mpctrain.seal.errors import TruncatedStream
    from mpctrain.seal.stream import StreamOpener

    if not frames:
        raise TruncatedStream("no frames: the stream header is missing")
    return StreamOpener(frames[0], recipient_id=recipient_id, recipient_key=recipient_key,
                        expected_sender_public=sender_public, expected_purpose=purpose, expected_job_id=job_id,
                        expected_object_id=object_id, max_total=max_bytes)


def _chunks(opener: Any, frames: Sequence[bytes]) -> Sequence[bytes]:
    """The chunk frames after the header; a committing stream's trailer is checked against them first."""
    if not opener.header.commits:
        return frames[1:]
    if len(frames) < 3:
        from mpctrain.seal.errors import TruncatedStream

        raise TruncatedStream("a stream to several recipients ends with a commitment frame: it is missing")
    chunks = frames[1:-1]
    opener.check_commitment(chunks, frames[-1])
    return chunks


def _open_into(opener: Any, frames: Sequence[bytes], buffer: PlaintextBuffer, max_bytes: int) -> memoryview:
    """Decrypt every chunk straight into ``buffer`` at its offset; the view is valid until ``buffer`` is reused."""
    header = opener.header
    count = header.chunk_count
    if count is None:
        payload = b"".join(opener.open_iter(frames[1:]))
        if len(payload) > max_bytes:
            raise EnvelopeError(f"sealed payload is {len(payload)} bytes; the limit is {max_bytes}")
        view = buffer.view(len(payload))
        view[:] = payload
        return view
    view = buffer.view(header.total_size)
    for i, frame in enumerate(_chunks(opener, frames)):  # the opener refuses a frame past the final one, or mis-sized
        out = view[min(header.chunk_offset(i) if i < count else header.total_size, header.total_size):]
        opener.open_chunk_into(i, frame, i == count - 1, out)  # type: ignore[arg-type]
    opener.finish()
    return view


def open_payload_into(frames: Sequence[bytes], buffer: PlaintextBuffer, *, max_bytes: int,
                      **kwargs: Any) -> memoryview:
    """``open_payload`` decrypting each chunk straight into ``buffer`` at its offset (no join, no copy).

    The returned view is the whole authentic plaintext, valid until ``buffer`` is used again. A stream
    whose header does not declare its size is opened the ordinary way and copied in.
    """
    return _open_into(_opener(frames, max_bytes=max_bytes, **kwargs), frames, buffer, max_bytes)


def _bounds(header: Any) -> list[tuple[int, int]]:
    return [(header.chunk_offset(i), n) for i, n in enumerate(header.parts)]


def open_content(frames: Sequence[bytes], *, max_bytes: int, buffer: PlaintextBuffer | None = None,
                 **kwargs: Any) -> tuple[RecordDict, dict[str, Any]]:
    """Open and decode into a RecordDict that owns its arrays; codec errors become ``EnvelopeError``.

    Part layout: each array part is decrypted into its own ``bytes``, which its Flower ``Array`` keeps.
    Safetensors layout: ``open_payload`` (into ``buffer`` when given, reusable once this returns), then decode.
    """
    opener = _opener(frames, max_bytes=max_bytes, **kwargs)
    try:
        if opener.header.parts:
            count = len(opener.header.parts)
            parts = [opener.open_chunk(i, frame, i == count - 1) for i, frame in enumerate(_chunks(opener, frames))]
            opener.finish()
            return decode_parts(parts)
        payload = (b"".join(opener.open_iter(frames[1:])) if buffer is None
                   else _open_into(opener, frames, buffer, max_bytes))
        if len(payload) > max_bytes:
            raise EnvelopeError(f"sealed payload is {len(payload)} bytes; the limit is {max_bytes}")
        return decode_record(payload, max_bytes=max_bytes)
    except CodecError as exc:
        raise EnvelopeError(f"sealed payload is not a RecordDict: {exc}") from exc


def open_numpy(frames: Sequence[bytes], buffer: PlaintextBuffer, *, max_bytes: int, **kwargs: Any) -> tuple[
    list[tuple[str, list[str], list[Any]]], dict[str, dict[str, Any]], dict[str, Any]
]:
    """Open into ``buffer`` and decode to read-only ndarray views into it (the streaming aggregation path).

    Either layout; the views are valid until ``buffer`` is used again. Codec errors stay ``CodecError``.
    """
    opener = _opener(frames, max_bytes=max_bytes, **kwargs)
    view = _open_into(opener, frames, buffer, max_bytes)
    if opener.header.parts:
        return decode_parts_numpy(view, _bounds(opener.header))
    return decode_numpy(view, max_bytes=max_bytes)
