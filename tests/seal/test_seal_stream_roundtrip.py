"""Sealed streams round-trip through every API, for the sizes around chunk boundaries."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seal_helpers import CHUNK, NOW

from mpctrain.seal import (
    BadHeaderSignature,
    ChunkAlreadySealed,
    StreamHeader,
    StreamOpener,
    StreamSealer,
    StreamTooLarge,
    TruncatedStream,
    WrongRecipient,
    open_bytes,
    open_stream,
    seal_bytes,
    seal_stream,
)
from mpctrain.seal.stream import TAG_BYTES

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 7 * CHUNK + 5]
HSET = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]


@pytest.mark.parametrize("size", SIZES)
def test_seal_bytes_round_trip_and_frame_layout(parties, size):
    data = payload(size)
    frames = seal_bytes(data, **parties.seal_kw())
    header = StreamHeader.from_bytes(frames[0])
    assert header.total_size == size and header.chunk_count == len(frames) - 1 == len(chunks_of(data))
    assert [len(f) - TAG_BYTES for f in frames[1:]] == [len(c) for c in chunks_of(data)]
    assert open_bytes(frames, **parties.open_kw()) == data


@HSET
@given(size=st.sampled_from(SIZES), cuts=st.lists(st.integers(0, 10_000), max_size=6),
       known=st.booleans(), kinds=st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_iterator_api_rechunks_any_pieces(parties, size, cuts, known, kinds):
    data = payload(size, size)
    conv = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kinds]
    pieces = [conv(p) for p in split(data, cuts)]
    kw = parties.seal_kw(total_size=size if known else -1)
    frames = list(seal_stream(iter(pieces), **kw))
    assert [len(f) - TAG_BYTES for f in frames[1:]] == [len(c) for c in chunks_of(data)]
    out = list(open_stream(iter(frames), **parties.open_kw()))
    assert out == chunks_of(data)


@HSET
@given(size=st.sampled_from(SIZES), data=st.data())
def test_explicit_index_api_in_any_order(parties, size, data):
    plain = payload(size, 1)
    chunks = chunks_of(plain)
    sealer = StreamSealer(**parties.seal_kw(total_size=size))
    order = data.draw(st.permutations(range(len(chunks))))
    frames: dict[int, bytes] = {}
    buf = bytearray(8)
    for i in order:
        last = i == len(chunks) - 1
        if data.draw(st.booleans()):
            frames[i] = bytes(sealer.seal_chunk_into(i, memoryview(chunks[i]), last, buf))
        else:
            frames[i] = sealer.seal_chunk(i, chunks[i], last)
    opener = StreamOpener(sealer.header_bytes, **parties.open_kw())
    out = bytearray(CHUNK)
    got = {}
    for i in data.draw(st.permutations(range(len(chunks)))):
        last = i == len(chunks) - 1
        got[i] = bytes(opener.open_chunk_into(i, frames[i], last, out)) if i % 2 else opener.open_chunk(
            i, frames[i], last)
    assert opener.finish() == size
    assert b"".join(got[i] for i in range(len(chunks))) == plain


def test_seal_stream_from_binary_file_object(parties):
    data = payload(5 * CHUNK + 3)
    frames = list(seal_stream(io.BytesIO(data), **parties.seal_kw()))
    assert open_bytes(frames, **parties.open_kw()) == data


def test_source_that_reuses_its_buffer_is_copied(parties):
    data = payload(4 * CHUNK + 9)
    shared = bytearray(2 * CHUNK)

    def reusing():
        for i in range(0, len(data), len(shared)):
            piece = data[i:i + len(shared)]
            shared[: len(piece)] = piece
            yield memoryview(shared)[: len(piece)]

    assert open_bytes(list(seal_stream(reusing(), **parties.seal_kw())), **parties.open_kw()) == data


def test_large_immutable_pieces_are_sealed_without_copy_and_still_correct(parties):
    data = payload(10 * CHUNK)
    pieces = [data[: 3 * CHUNK], data[3 * CHUNK: 3 * CHUNK + 5], data[3 * CHUNK + 5:]]
    assert open_bytes(list(seal_stream(pieces, **parties.seal_kw())), **parties.open_kw()) == data


@pytest.mark.parametrize("size", [0, CHUNK + 1, 3 * CHUNK])
def test_multiple_recipients_each_open_and_outsider_cannot(parties, size):
    data = payload(size)
    recipients = [("enclave", "x25519", parties.enclave.public_bytes()),
                  ("enclave-2", "x25519", parties.enclave2.public_bytes()),
                  ("pq", "mlkem768-x25519", parties.hybrid.public_bytes())]
    frames = seal_bytes(data, **parties.seal_kw(recipients=recipients))
    for rid, key in (("enclave", parties.enclave), ("enclave-2", parties.enclave2), ("pq", parties.hybrid)):
        assert open_bytes(frames, **parties.open_kw(recipient_id=rid, recipient_key=key)) == data
    with pytest.raises(WrongRecipient, match="no wrapped key"):
        open_bytes(frames, **parties.open_kw(recipient_id="outsider", recipient_key=parties.outsider))
    with pytest.raises(WrongRecipient, match="cannot unwrap"):
        open_bytes(frames, **parties.open_kw(recipient_id="enclave-2", recipient_key=parties.outsider))


@pytest.mark.parametrize("size", [0, 3 * CHUNK + 1])
def test_mlkem768_x25519_round_trip(parties, size):
    data = payload(size)
    frames = seal_bytes(data, **parties.seal_kw(recipients=[("pq", "mlkem768-x25519", parties.hybrid.public_bytes())]))
    assert open_bytes(frames, **parties.open_kw(recipient_id="pq", recipient_key=parties.hybrid)) == data
    with pytest.raises(WrongRecipient, match="mlkem768-x25519"):
        open_bytes(frames, **parties.open_kw(recipient_id="pq", recipient_key=parties.enclave))


def test_header_fields_and_digest(parties):
    sealer = StreamSealer(**parties.seal_kw(total_size=10))
    h = StreamHeader.from_bytes(sealer.header_bytes)
    assert h == sealer.header and h.to_bytes() == sealer.header_bytes
    assert (h.version, h.purpose, h.job_id, h.object_id, h.sender) == (1, "shard", "job-1", "shard-0", "hospital-a")
    assert h.sender_public == parties.sender.public_bytes() and h.created == NOW and h.chunk_size == CHUNK
    assert len(h.nonce_prefix) == 7 and len(h.signature) == 64 and len(h.digest()) == 32
    h.verify_signature(parties.sender.public_bytes())
    other = StreamSealer(**parties.seal_kw(total_size=10))
    assert other.header.nonce_prefix != h.nonce_prefix and other.header.digest() != h.digest()


@pytest.mark.parametrize("recipients", [1, 5])
def test_parsed_header_hashes_and_verifies_the_bytes_it_came_from(parties, recipients):
    """Digest and signature check reuse the received bytes; they must equal the canonical re-encoding,
    and a header changed with ``replace()`` must not keep the bytes of the one it was copied from."""
    from dataclasses import replace

    from mpctrain.seal.binding import canonical
    from mpctrain.seal.stream import HEADER_MAGIC, HEADER_SIGNATURE_DOMAIN

    keys = [(f"r{i}", "x25519", parties.enclave.public_bytes()) for i in range(recipients)]
    sealer = StreamSealer(**parties.seal_kw(total_size=10, recipients=keys))
    h = StreamHeader.from_bytes(sealer.header_bytes)
    fields = h._fields()
    assert h.signed_bytes() == canonical(HEADER_SIGNATURE_DOMAIN, *fields)
    assert h.to_bytes() == canonical(HEADER_MAGIC, *fields, h.signature) == sealer.header_bytes
    h.verify_signature(parties.sender.public_bytes())
    changed = replace(h, object_id="shard-1")
    assert changed.to_bytes() == canonical(HEADER_MAGIC, *changed._fields(), h.signature) != h.to_bytes()
    assert changed.digest() != h.digest()
    with pytest.raises(BadHeaderSignature):
        changed.verify_signature(parties.sender.public_bytes())


def test_sealer_refuses_nonce_reuse_and_misuse(parties):
    sealer = StreamSealer(**parties.seal_kw(total_size=2 * CHUNK))
    sealer.seal_chunk(0, bytes(CHUNK), last=False)
    with pytest.raises(ChunkAlreadySealed, match="nonce"):
        sealer.seal_chunk(0, bytes(CHUNK), last=False)
    with pytest.raises(ValueError, match="exactly chunk_size"):
        sealer.seal_chunk(1, bytes(CHUNK - 1), last=False)
    with pytest.raises(StreamTooLarge):
        sealer.seal_chunk(1, bytes(CHUNK + 1), last=True)
    with pytest.raises(TruncatedStream, match="shorter than announced"):
        sealer.seal_chunk(1, bytes(3), last=True)
    sealer.seal_chunk(1, bytes(CHUNK), last=True)
    with pytest.raises(ChunkAlreadySealed):
        sealer.seal_chunk(1, bytes(CHUNK), last=True)
    with pytest.raises(ValueError, match="final chunk"):
        sealer.seal_chunk(2, b"", last=True)
    with pytest.raises(ValueError, match="at least one recipient"):
        StreamSealer(**parties.seal_kw(recipients=[]))
    with pytest.raises(ValueError, match="chunk_size"):
        StreamSealer(**parties.seal_kw(chunk_size=0))


def test_seal_stream_checks_declared_total(parties):
    with pytest.raises(StreamTooLarge, match="past the declared"):
        list(seal_stream([bytes(3 * CHUNK)], **parties.seal_kw(total_size=2 * CHUNK)))
    with pytest.raises(TruncatedStream, match="shorter than announced"):
        list(seal_stream([bytes(CHUNK)], **parties.seal_kw(total_size=2 * CHUNK)))
    with pytest.raises(TypeError, match="bytes-like"):
        list(seal_stream(["text"], **parties.seal_kw()))


def test_memory_is_bounded_by_chunk_not_payload(parties):
    """A 64 MiB generator payload sealed and opened with 1 MiB chunks keeps a few chunks in memory."""
    import tracemalloc

    piece = bytes(1 << 20)
    kw = parties.seal_kw(chunk_size=1 << 20)
    tracemalloc.start()
    try:
        frames = seal_stream((piece for _ in range(64)), **kw)
        total = sum(len(p) for p in open_stream(frames, **parties.open_kw()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 64 << 20
    assert peak < 8 << 20


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("size", [0, CHUNK, 3 * CHUNK + 2])
def test_reused_buffers_pipe_seal_into_open(parties, known, size):
    """Frames that are views into one reused buffer can be piped straight into the opener."""
    data = payload(size, 3)
    frames = seal_stream(iter([data]), reuse_buffer=True, **parties.seal_kw(total_size=size if known else -1))
    out = [bytes(p) for p in open_stream(frames, reuse_buffer=True, **parties.open_kw())]
    assert out == chunks_of(data)


def test_reused_frames_must_be_copied_before_storing(parties):
    """Storing the views instead of copying them leaves every chunk frame holding the last one's bytes."""
    data = payload(3 * CHUNK, 4)
    views = list(seal_stream(iter([data]), reuse_buffer=True, **parties.seal_kw()))
    assert len({bytes(v) for v in views[1:]}) == 1
    copied = [bytes(f) for f in seal_stream(iter([data]), reuse_buffer=True, **parties.seal_kw())]
    assert open_bytes(copied, **parties.open_kw()) == data

