"""Streams whose signed header declares every chunk's size (version 2): one chunk per caller buffer."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mpctrain.seal import (
    BadHeaderSignature,
    StreamHeader,
    StreamOpener,
    StreamSealer,
    TruncatedStream,
    open_bytes,
)
from mpctrain.seal.errors import MalformedStream, StreamTooLarge, TamperedChunk
from mpctrain.seal.stream import MAX_PARTS, PARTS_VERSION, STREAM_VERSION, TAG_BYTES

PARTS = [b"meta", b"", b"x" * 300, b"tail-17-bytes...."]


def seal_parts(parties, parts=PARTS, **over):
    kw = parties.seal_kw(**over)
    kw.pop("chunk_size", None)
    sealer = StreamSealer(parts=[len(p) for p in parts], **kw)
    frames = [sealer.header_bytes]
    frames += [sealer.seal_chunk(i, p, i == len(parts) - 1) for i, p in enumerate(parts)]
    return sealer, frames


def test_parts_round_trip_with_offsets(parties):
    _, frames = seal_parts(parties)
    h = StreamHeader.from_bytes(frames[0])
    assert h.version == PARTS_VERSION and h.parts == tuple(len(p) for p in PARTS)
    assert h.total_size == sum(len(p) for p in PARTS) and h.chunk_count == len(PARTS)
    assert [h.chunk_offset(i) for i in range(len(PARTS))] == [0, 4, 4, 304]
    assert [len(f) - TAG_BYTES for f in frames[1:]] == [len(p) for p in PARTS]
    assert open_bytes(frames, **parties.open_kw()) == b"".join(PARTS)
    opener = StreamOpener(frames[0], **parties.open_kw())
    got = [opener.open_chunk(i, f, i == len(PARTS) - 1) for i, f in reversed(list(enumerate(frames[1:])))]
    assert opener.finish() == h.total_size and list(reversed(got)) == PARTS


def test_uniform_streams_keep_version_one(parties):
    sealer = StreamSealer(total_size=10, **parties.seal_kw())
    assert sealer.header.version == STREAM_VERSION and sealer.header.parts == ()
    assert sealer.header.chunk_offset(2) == 2 * sealer.header.chunk_size


def test_sealer_refuses_a_chunk_that_is_not_its_declared_part(parties):
    kw = {k: v for k, v in parties.seal_kw().items() if k != "chunk_size"}
    sealer = StreamSealer(parts=[2, 3], **kw)
    with pytest.raises(ValueError, match="not declared part"):
        sealer.seal_chunk(0, b"abc", False)
    with pytest.raises(ValueError, match="not declared part"):
        sealer.seal_chunk(0, b"ab", True)  # only the last declared part is final
    with pytest.raises(ValueError, match="not declared part"):
        sealer.seal_chunk(2, b"", True)
    with pytest.raises(ValueError, match="sealed part by part"):
        list(sealer.seal_iter(b"abcde"))
    with pytest.raises(ValueError, match="at least one"):
        StreamSealer(parts=[], **kw)


def test_swapped_parts_fail(parties):
    _, frames = seal_parts(parties, parts=[b"a" * 8, b"b" * 8, b"c"])
    opener = StreamOpener(frames[0], **parties.open_kw())
    with pytest.raises(TamperedChunk, match="failed authentication"):
        opener.open_chunk(0, frames[2], False)  # same size, another position: its nonce differs


def test_resized_frame_is_refused_before_decryption(parties):
    _, frames = seal_parts(parties)
    opener = StreamOpener(frames[0], **parties.open_kw())
    with pytest.raises(TamperedChunk, match="not its declared"):
        opener.open_chunk(2, frames[2][:-1], False)
    with pytest.raises(TruncatedStream, match="cut"):
        opener.open_chunk(3, frames[4][:-3], True)
    with pytest.raises(TamperedChunk, match="wrong final flag"):
        opener.open_chunk(1, frames[2], True)
    with pytest.raises(TamperedChunk, match="past the"):
        opener.open_chunk(4, frames[1], False)


def test_dropped_or_missing_part_is_truncation(parties):
    _, frames = seal_parts(parties)
    with pytest.raises(TruncatedStream):
        open_bytes(frames[:-1], **parties.open_kw())
    opener = StreamOpener(frames[0], **parties.open_kw())
    opener.open_chunk(3, frames[4], True)
    with pytest.raises(TruncatedStream, match="missing"):
        opener.finish()


def test_rewritten_parts_table_breaks_the_signature(parties):
    _, frames = seal_parts(parties)
    h = StreamHeader.from_bytes(frames[0])
    moved = replace(h, parts=(4, 300, 0, 17))  # same total, other boundaries
    with pytest.raises(BadHeaderSignature):
        StreamOpener(moved.to_bytes(), **parties.open_kw())


def test_malformed_parts_headers(parties):
    sealer, _ = seal_parts(parties)
    h = sealer.header
    for bad, why in [(replace(h, version=STREAM_VERSION), "only one"),
                     (replace(h, parts=()), "only one"),
                     (replace(h, parts=(4, 0, 300, 18)), "sum to"),
                     (replace(h, parts=(h.chunk_size + 1, 0, 0, 0)), "0..chunk_size")]:
        with pytest.raises(MalformedStream, match=why):
            bad.check()
    many = replace(h, parts=(0,) * (MAX_PARTS + 1))
    with pytest.raises(MalformedStream, match="cap"):
        many.check()
    raw = h.to_bytes()  # the parts table is the last field before the signature: break its length
    table = struct.pack(f">{len(PARTS)}Q", *h.parts)
    at = raw.index(table)
    broken = raw[:at - 8] + struct.pack(">Q", len(table) - 3) + table[:-3] + raw[at + len(table):]
    with pytest.raises(MalformedStream, match="u64"):
        StreamHeader.from_bytes(broken)


def test_max_total_applies_to_parts(parties):
    _, frames = seal_parts(parties)
    with pytest.raises(StreamTooLarge):
        StreamOpener(frames[0], max_total=10, **parties.open_kw())


# -- several recipients: per-recipient commitments -----------------------------------------------------

def _two(parties, parts=PARTS):
    recipients = [("enclave", "x25519", parties.enclave.public_bytes()),
                  ("other", "x25519", parties.enclave2.public_bytes())]
    return seal_parts(parties, parts=parts, recipients=recipients)


def _commit_frames(sealer, frames):
    return [*frames, sealer.commitment(frames[1:])]


def test_a_recipient_cannot_re_encrypt_chunks_for_another(parties):
    from mpctrain.seal.stream import KEY_BYTES, _nonce
    from mpctrain.seal.wrap import unwrap_key

    sealer, frames = _two(parties)
    frames = _commit_frames(sealer, frames)
    header = StreamHeader.from_bytes(frames[0])
    assert header.commits and len(frames[-1]) == 2 * 16
    # "other" unwraps its own entry, learns the shared data key and re-encrypts chunk 2 with it
    secret = unwrap_key(parties.enclave2, header.recipients[1][2], header.wrap_context())
    forged = AESGCM(secret[:KEY_BYTES]).encrypt(_nonce(header.nonce_prefix, 2, False), b"y" * 300, header.digest())
    tampered = [*frames[:3], forged, *frames[4:]]
    opener = StreamOpener(tampered[0], **parties.open_kw())
    with pytest.raises(TamperedChunk, match="committed"):
        opener.check_commitment(tampered[1:-1], tampered[-1])
    opener._committed = True  # without the commitment the forgery would open as authentic: the check is the defence
    assert opener.open_chunk(2, forged, False) == b"y" * 300
    # the honest stream opens for both recipients
    for rid, key in (("enclave", parties.enclave), ("other", parties.enclave2)):
        honest = StreamOpener(frames[0], **parties.open_kw(recipient_id=rid, recipient_key=key))
        honest.check_commitment(frames[1:-1], frames[-1])
        got = [honest.open_chunk(i, f, i == len(PARTS) - 1) for i, f in enumerate(frames[1:-1])]
        assert honest.finish() == header.total_size and got == PARTS


def test_commitment_trailer_faults(parties):
    sealer, frames = _two(parties)
    frames = _commit_frames(sealer, frames)
    opener = StreamOpener(frames[0], **parties.open_kw())
    with pytest.raises(ValueError, match="check_commitment"):
        opener.open_chunk(0, frames[1], False)
    with pytest.raises(TamperedChunk, match="16 per recipient"):
        opener.check_commitment(frames[1:-1], frames[-1][:-1])
    other_tag = frames[-1][16:] + frames[-1][:16]  # the tags swapped: each is bound to its recipient's key
    with pytest.raises(TamperedChunk, match="committed"):
        opener.check_commitment(frames[1:-1], other_tag)
    with pytest.raises(TruncatedStream):
        opener.check_commitment(frames[1:-2], frames[-1])
    with pytest.raises(ValueError, match="seal all"):
        sealer.commitment(frames[1:-2])


def test_one_recipient_or_equal_chunks_carry_no_commitment(parties):
    sealer, frames = seal_parts(parties)
    assert not sealer.header.commits
    with pytest.raises(ValueError, match="carries a commitment"):
        sealer.commitment(frames[1:])
    uniform = StreamSealer(total_size=10, **parties.seal_kw(recipients=[
        ("enclave", "x25519", parties.enclave.public_bytes()), ("other", "x25519", parties.enclave2.public_bytes())]))
    assert not uniform.header.commits


def test_a_commitment_key_missing_from_the_wrap_is_malformed(parties, monkeypatch):
    import mpctrain.seal.stream as stream

    real = stream.wrap_key
    monkeypatch.setattr(stream, "wrap_key", lambda alg, public, secret, ctx: real(alg, public, secret[:32], ctx))
    _, frames = _two(parties)
    with pytest.raises(MalformedStream, match="expected 64"):
        StreamOpener(frames[0], **parties.open_kw())
