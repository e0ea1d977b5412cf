"""Every way a host can tamper with a sealed stream ends in a specific SealError, never in bad plaintext."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seal_helpers import CHUNK, NOW

from mpctrain.seal import (
    BadHeaderSignature,
    ContextMismatch,
    MalformedStream,
    SealError,
    StaleStream,
    StreamHeader,
    StreamOpener,
    StreamSealer,
    StreamTooLarge,
    TamperedChunk,
    TruncatedStream,
    UnexpectedSender,
    WrongRecipient,
    canonical,
    open_bytes,
    open_stream,
    seal_bytes,
    seal_stream,
)
from mpctrain.seal.stream import HEADER_MAGIC, MAX_HEADER_BYTES, MAX_RECIPIENTS

HSET = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7]


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]


def consume(frames, open_kw) -> tuple[list[bytes], BaseException | None]:
    """Open frames with the iterator API; returns the plaintext yielded before the error, and the error."""
    got: list[bytes] = []
    try:
        for piece in open_stream(iter(frames), **open_kw):
            got.append(piece)
    except SealError as e:
        return got, e
    return got, None


def sealed(parties, size: int, known: bool = True) -> tuple[bytes, list[bytes]]:
    data = payload(size)
    if known:
        return data, seal_bytes(data, **parties.seal_kw())
    return data, list(seal_stream(iter([data]), **parties.seal_kw()))


def assert_prefix(got: list[bytes], data: bytes) -> None:
    """Only genuine chunks, at their own positions, were ever yielded."""
    assert got == chunks_of(data)[: len(got)]


# ------------------------------------------------------------------------------------------ bit flips


@HSET
@given(size=st.sampled_from(SIZES), known=st.booleans(), data=st.data())
def test_any_single_bit_flip_anywhere_is_caught(parties, size, known, data):
    plain, frames = sealed(parties, size, known)
    f = data.draw(st.integers(0, len(frames) - 1), label="frame")
    if not frames[f]:
        return  # an empty frame has no bit to flip (cannot happen: every frame carries at least a tag)
    bit = data.draw(st.integers(0, 8 * len(frames[f]) - 1), label="bit")
    bad = bytearray(frames[f])
    bad[bit // 8] ^= 1 << (bit % 8)
    frames[f] = bytes(bad)
    got, err = consume(frames, parties.open_kw())
    if f == 0:
        assert isinstance(err, MalformedStream | BadHeaderSignature), err
        assert got == []
    else:
        assert isinstance(err, TamperedChunk), err
        assert got == chunks_of(plain)[: f - 1]


@HSET
@given(size=st.sampled_from(SIZES), data=st.data())
def test_bit_flip_with_explicit_index_api_leaves_opener_usable(parties, size, data):
    plain, frames = sealed(parties, size)
    n = len(frames) - 1
    i = data.draw(st.integers(0, n - 1))
    bit = data.draw(st.integers(0, 8 * len(frames[1 + i]) - 1))
    bad = bytearray(frames[1 + i])
    bad[bit // 8] ^= 1 << (bit % 8)
    opener = StreamOpener(frames[0], **parties.open_kw())
    with pytest.raises(TamperedChunk, match=f"chunk {i}"):
        opener.open_chunk(i, bytes(bad), i == n - 1)
    out = bytearray(CHUNK)
    with pytest.raises(TamperedChunk):
        opener.open_chunk_into(i, bytes(bad), i == n - 1, out)
    assert not any(out), "no plaintext of a bad chunk may remain in the caller's buffer"
    opened = [opener.open_chunk(j, frames[1 + j], j == n - 1) for j in range(n)]
    opener.finish()
    assert b"".join(opened) == plain


# ------------------------------------------------------------------------------------------ frame surgery


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("drop", range(1, 7))
def test_dropped_chunk(parties, known, drop):
    plain, frames = sealed(parties, 5 * CHUNK + 7, known)  # header + 6 chunks
    del frames[drop]
    got, err = consume(frames, parties.open_kw())
    if drop == 6:  # the final chunk
        assert isinstance(err, TruncatedStream), err
    else:
        assert isinstance(err, TamperedChunk | TruncatedStream), err
    assert_prefix(got, plain)
    assert len(got) <= drop - 1


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("dup", range(1, 7))
def test_duplicated_chunk(parties, known, dup):
    plain, frames = sealed(parties, 5 * CHUNK + 7, known)
    frames.insert(dup + 1, frames[dup])
    got, err = consume(frames, parties.open_kw())
    assert isinstance(err, TamperedChunk), err
    assert_prefix(got, plain)


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize(("a", "b"), [(1, 2), (2, 5), (5, 6), (1, 6)])
def test_reordered_chunks(parties, known, a, b):
    plain, frames = sealed(parties, 5 * CHUNK + 7, known)
    frames[a], frames[b] = frames[b], frames[a]
    got, err = consume(frames, parties.open_kw())
    assert isinstance(err, TamperedChunk), err
    assert got == chunks_of(plain)[: a - 1]


@pytest.mark.parametrize("i", range(1, 4))
def test_chunk_moved_between_streams_to_same_recipient(parties, i):
    plain, a = sealed(parties, 2 * CHUNK + 1)
    _, b = sealed(parties, 2 * CHUNK + 1)
    a[i] = b[i]
    got, err = consume(a, parties.open_kw())
    assert isinstance(err, TamperedChunk), err
    assert got == chunks_of(plain)[: i - 1]
    opener = StreamOpener(a[0], **parties.open_kw())
    with pytest.raises(TamperedChunk):
        opener.open_chunk(i - 1, b[i], i == 3)


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("size", [2 * CHUNK, 2 * CHUNK + 1])
def test_extra_frame_after_final_chunk(parties, known, size):
    plain, frames = sealed(parties, size, known)
    for extra in (frames[1], frames[-1], b"\x00" * 20):
        got, err = consume([*frames, extra], parties.open_kw())
        assert isinstance(err, TamperedChunk) and "after the final chunk" in str(err), err
        assert got == chunks_of(plain), "the genuine chunks are yielded; the extra one raises"
    plain, frames = sealed(parties, 2 * CHUNK)
    opener = StreamOpener(frames[0], **parties.open_kw())
    opener.open_chunk(1, frames[2], True)
    with pytest.raises(TamperedChunk, match="after the final chunk"):
        opener.open_chunk(2, frames[1], False)


@pytest.mark.parametrize("size", [1, CHUNK, 3 * CHUNK + 9])
@pytest.mark.parametrize("cut", [1, 5, 16])
def test_truncated_final_chunk(parties, size, cut):
    plain, frames = sealed(parties, size, known=True)
    frames[-1] = frames[-1][:-cut]
    got, err = consume(frames, parties.open_kw())
    assert isinstance(err, TruncatedStream), err
    assert got == chunks_of(plain)[:-1]
    # Without a declared size, a cut final frame cannot be told apart from a modified one.
    plain, frames = sealed(parties, size, known=False)
    frames[-1] = frames[-1][:-cut]
    got, err = consume(frames, parties.open_kw())
    assert isinstance(err, TamperedChunk), err


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("size", [0, CHUNK, 2 * CHUNK, 3 * CHUNK + 9])
def test_missing_final_chunk(parties, known, size):
    plain, frames = sealed(parties, size, known)
    got, err = consume(frames[:-1], parties.open_kw())
    assert isinstance(err, TruncatedStream), err
    assert_prefix(got, plain)


def test_no_frames_at_all(parties):
    with pytest.raises(TruncatedStream, match="header is missing"):
        list(open_stream([], **parties.open_kw()))


def test_explicit_index_replay_gaps_and_bad_positions(parties):
    plain, frames = sealed(parties, 3 * CHUNK)
    opener = StreamOpener(frames[0], **parties.open_kw())
    opener.open_chunk(0, frames[1], False)
    with pytest.raises(TamperedChunk, match="already opened"):
        opener.open_chunk(0, frames[1], False)
    with pytest.raises(TruncatedStream, match="no final chunk"):
        opener.finish()
    opener.open_chunk(2, frames[3], True)
    with pytest.raises(TruncatedStream, match="missing 1 of 3"):
        opener.finish()
    with pytest.raises(TamperedChunk):
        opener.open_chunk(1, frames[3], False)  # the final chunk's frame cannot stand in for chunk 1
    with pytest.raises(TamperedChunk, match="holds 3 bytes"):
        opener.open_chunk(1, frames[2][:19], False)
    with pytest.raises(StreamTooLarge, match="index"):
        opener.open_chunk(1 << 32, frames[2], False)
    assert opener.open_chunk(1, frames[2], False) == plain[CHUNK:2 * CHUNK]
    assert opener.finish() == len(plain)
    with pytest.raises(TamperedChunk, match="finish"):
        opener.open_chunk(3, frames[2], False)


def test_final_flag_cannot_be_claimed_before_later_chunks(parties):
    _plain, frames = sealed(parties, 3 * CHUNK, known=False)
    opener = StreamOpener(frames[0], **parties.open_kw())
    opener.open_chunk(2, frames[3], True)
    with pytest.raises(TamperedChunk, match="after the final"):
        opener.open_chunk(3, frames[3], False)
    opener2 = StreamOpener(frames[0], **parties.open_kw())
    opener2.open_chunk(1, frames[2], False)
    with pytest.raises(TamperedChunk, match="claims to be final"):
        opener2.open_chunk(0, frames[1], True)


# ------------------------------------------------------------------------------------------ header


def resign(header: StreamHeader, key, **changes) -> bytes:
    h = replace(header, **changes)
    return replace(h, signature=key.sign(h.signed_bytes())).to_bytes()


def test_modified_header_fails_signature(parties):
    _, frames = sealed(parties, 10)
    h = StreamHeader.from_bytes(frames[0])
    for change in ({"object_id": "shard-9"}, {"total_size": 9}, {"created": NOW + 1}, {"chunk_size": 32},
                   {"nonce_prefix": bytes(7)}, {"recipients": h.recipients[:1] * 1 + (("x", "x25519", b"w"),)}):
        forged = replace(h, **change).to_bytes()
        with pytest.raises(BadHeaderSignature, match="modified"):
            StreamOpener(forged, **parties.open_kw(expected_object_id=None))


def test_header_resigned_by_another_key(parties):
    _plain, frames = sealed(parties, 2 * CHUNK)
    h = StreamHeader.from_bytes(frames[0])
    forged = resign(h, parties.other_sender, sender_public=parties.other_sender.public_bytes())
    with pytest.raises(UnexpectedSender, match="not the expected"):
        StreamOpener(forged, **parties.open_kw())
    # A keyless opener accepts the re-signed header, but the chunks are bound to the original header digest.
    got, err = consume([forged, *frames[1:]], parties.open_kw(expected_sender_public=None))
    assert isinstance(err, TamperedChunk) and got == []
    # Keeping the sender key but swapping the signature for another key's is a plain bad signature.
    bad_sig = replace(h, signature=parties.other_sender.sign(h.signed_bytes())).to_bytes()
    with pytest.raises(BadHeaderSignature):
        StreamOpener(bad_sig, **parties.open_kw())


def test_signature_is_checked_before_context_and_recipient(parties):
    _, frames = sealed(parties, 10)
    h = StreamHeader.from_bytes(frames[0])
    forged = replace(h, job_id="job-2").to_bytes()
    with pytest.raises(BadHeaderSignature):
        StreamOpener(forged, **parties.open_kw(recipient_id="nobody", expected_job_id="job-2"))


@pytest.mark.parametrize(("field", "value"), [("expected_job_id", "job-2"), ("expected_object_id", "shard-1"),
                                              ("expected_purpose", "model-update")])
def test_wrong_context(parties, field, value):
    _, frames = sealed(parties, 10)
    with pytest.raises(ContextMismatch, match="belongs to another"):
        open_bytes(frames, **parties.open_kw(**{field: value}))


def test_wrap_context_binds_job_even_when_resigned_by_sender(parties):
    """A sender re-using a wrapped key under another job id (same signer) still fails to unwrap."""
    _, frames = sealed(parties, 10)
    h = StreamHeader.from_bytes(frames[0])
    moved = resign(h, parties.sender, job_id="job-2")
    with pytest.raises(WrongRecipient, match="cannot unwrap"):
        StreamOpener(moved, **parties.open_kw(expected_job_id="job-2"))


def test_wrong_recipient_key(parties):
    _, frames = sealed(parties, 10)
    with pytest.raises(WrongRecipient, match="cannot unwrap"):
        open_bytes(frames, **parties.open_kw(recipient_key=parties.outsider))
    with pytest.raises(WrongRecipient, match="no wrapped key"):
        open_bytes(frames, **parties.open_kw(recipient_id="enclave-2"))


def test_stale_and_future_headers(parties):
    _, frames = sealed(parties, 10)
    StreamOpener(frames[0], **parties.open_kw(now=NOW + 60, max_age_s=120))
    with pytest.raises(StaleStream, match="old"):
        StreamOpener(frames[0], **parties.open_kw(now=NOW + 121, max_age_s=120))
    with pytest.raises(StaleStream, match="clock"):
        StreamOpener(frames[0], **parties.open_kw(now=NOW - 3600))


def test_oversized_streams(parties):
    _, frames = sealed(parties, 3 * CHUNK)
    with pytest.raises(StreamTooLarge, match="over the limit"):
        StreamOpener(frames[0], **parties.open_kw(max_total=3 * CHUNK - 1))
    _, frames = sealed(parties, 3 * CHUNK, known=False)
    got, err = consume(frames, parties.open_kw(max_total=2 * CHUNK + 1))
    assert isinstance(err, StreamTooLarge) and len(got) <= 2
    opener = StreamOpener(frames[0], **parties.open_kw())
    with pytest.raises(StreamTooLarge, match="over chunk_size"):
        opener.open_chunk(0, frames[1] + b"x", False)
    _, frames = sealed(parties, 2 * CHUNK)
    opener = StreamOpener(frames[0], **parties.open_kw())
    with pytest.raises(TamperedChunk, match="past the declared"):
        opener.open_chunk(2, frames[1], False)


# ------------------------------------------------------------------------------------------ header parsing


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_header_is_malformed(garbage):
    with pytest.raises(MalformedStream):
        StreamHeader.from_bytes(garbage)


def test_every_truncation_and_extension_of_a_header_is_malformed(parties):
    header = StreamSealer(**parties.seal_kw()).header_bytes
    for cut in range(len(header)):
        with pytest.raises(MalformedStream):
            StreamHeader.from_bytes(header[:cut])
    with pytest.raises(MalformedStream, match="unexpected bytes"):
        StreamHeader.from_bytes(header + b"\x00")
    with pytest.raises(MalformedStream, match="over the cap"):
        StreamHeader.from_bytes(header + bytes(MAX_HEADER_BYTES))


def _raw_header(parties, *, version=1, count=1, recipients=None, chunk_size=CHUNK, total=-1, prefix=bytes(7),
                sender_public=None, purpose="p"):
    recips = recipients if recipients is not None else [("r", "x25519", b"w")]
    flat = [x for r in recips for x in r]
    return canonical(HEADER_MAGIC, version, purpose, "j", "o", "s", sender_public or parties.sender.public_bytes(),
                     chunk_size, total, count, *flat, prefix, NOW, bytes(64))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"version": 3}, "version"),
    ({"count": MAX_RECIPIENTS + 1}, "recipients"),
    ({"count": 0, "recipients": []}, "recipients"),
    ({"count": 2}, "."),
    ({"recipients": [("r", "rsa", b"w")]}, "unknown KEM"),
    ({"count": 2, "recipients": [("r", "x25519", b"w"), ("r", "x25519", b"w")]}, "unique"),
    ({"recipients": [("r", "x25519", bytes(5000))]}, "cap"),
    ({"recipients": [("r", "x25519", b"")]}, "wrapped key"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": (64 << 20) + 1}, "chunk_size"),
    ({"total": -2}, "total_size"),
    ({"prefix": bytes(8)}, "nonce_prefix"),
    ({"sender_public": bytes(31)}, "sender_public"),
    ({"purpose": ""}, "purpose"),
    ({"purpose": "x" * 1025}, "cap"),
])
def test_header_caps_and_structure(parties, kwargs, match):
    with pytest.raises(MalformedStream, match=match):
        StreamHeader.from_bytes(_raw_header(parties, **kwargs))


def test_header_invalid_utf8_and_bad_magic(parties):
    good = _raw_header(parties)
    assert StreamHeader.from_bytes(good).purpose == "p"
    with pytest.raises(MalformedStream, match="UTF-8"):
        StreamHeader.from_bytes(good.replace(canonical("p"), canonical(b"\xff"), 1))
    with pytest.raises(MalformedStream, match="magic"):
        StreamHeader.from_bytes(canonical(b"x" * len(HEADER_MAGIC)) + good[8 + len(HEADER_MAGIC):])
