"""Frame files (seal_file/open_file) and `mpctrain keys generate|show`."""

from __future__ import annotations

import io
import os
import random
import stat
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seal_helpers import CHUNK
from typer.testing import CliRunner

from mpctrain.cli.main import app
from mpctrain.seal import (
    IdentityKey,
    KemKey,
    MalformedStream,
    SealError,
    StreamTooLarge,
    TamperedChunk,
    TruncatedStream,
    WrongRecipient,
    iter_frame_file,
    load_identity_public,
    load_kem_public,
    open_bytes,
    open_file,
    open_stream,
    seal_bytes,
    seal_file,
    write_frame,
)
from mpctrain.seal.stream import FRAME_FILE_MAGIC


def sealed_file(tmp_path, parties, size: int) -> tuple[bytes, os.PathLike]:
    data = random.Random(size).randbytes(size)
    src, dst = tmp_path / "plain.bin", tmp_path / "sealed.mpcs"
    src.write_bytes(data)
    header = seal_file(src, dst, **parties.seal_kw())
    assert header.total_size == size
    return data, dst


@pytest.mark.parametrize("size", [0, 1, CHUNK, 3 * CHUNK + 5])
def test_file_round_trip_and_format(tmp_path, parties, size):
    data, sealed = sealed_file(tmp_path, parties, size)
    raw = sealed.read_bytes()
    assert raw.startswith(FRAME_FILE_MAGIC)
    frames = list(iter_frame_file(io.BytesIO(raw)))
    assert len(frames) == 1 + max(1, -(-size // CHUNK))
    assert open_bytes(frames, **parties.open_kw()) == data
    out = tmp_path / "out" / "plain.bin"
    header = open_file(sealed, out, **parties.open_kw())
    assert out.read_bytes() == data and header.object_id == "shard-0"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_write_frame_matches_reader(parties):
    frames = seal_bytes(b"x" * 100, **parties.seal_kw())
    buf = io.BytesIO()
    buf.write(FRAME_FILE_MAGIC)
    for f in frames:
        write_frame(buf, f)
    buf.seek(0)
    assert list(iter_frame_file(buf)) == frames


def test_every_cut_of_a_frame_file_is_refused_and_leaves_no_output(tmp_path, parties):
    _, sealed = sealed_file(tmp_path, parties, 2 * CHUNK + 3)
    raw = sealed.read_bytes()
    cut_file, out = tmp_path / "cut.mpcs", tmp_path / "cut.out"
    for cut in range(len(raw)):
        cut_file.write_bytes(raw[:cut])
        expected = MalformedStream if cut < len(FRAME_FILE_MAGIC) else TruncatedStream
        with pytest.raises(expected):
            open_file(cut_file, out, **parties.open_kw())
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mpcs", "plain.bin", "sealed.mpcs"]


def test_tampered_and_oversized_frame_files(tmp_path, parties):
    _, sealed = sealed_file(tmp_path, parties, 2 * CHUNK + 3)
    raw = bytearray(sealed.read_bytes())
    out = tmp_path / "o.bin"
    bad = tmp_path / "bad.mpcs"
    flipped = bytearray(raw)
    flipped[-3] ^= 4
    bad.write_bytes(flipped)
    with pytest.raises(TamperedChunk):
        open_file(bad, out, **parties.open_kw())
    assert not out.exists()
    bad.write_bytes(b"NOTSEAL!" + raw[8:])
    with pytest.raises(MalformedStream, match="magic"):
        open_file(bad, out, **parties.open_kw())
    bad.write_bytes(FRAME_FILE_MAGIC + struct.pack(">I", 1 << 30))
    with pytest.raises(StreamTooLarge, match="header frame"):
        open_file(bad, out, **parties.open_kw())
    header_len = struct.unpack(">I", raw[8:12])[0]
    pos = 12 + header_len
    big = raw[:pos] + struct.pack(">I", CHUNK + 17) + bytes(CHUNK + 17)
    bad.write_bytes(big)
    with pytest.raises(StreamTooLarge, match="chunk frame"):
        open_file(bad, out, **parties.open_kw())
    bad.write_bytes(raw + struct.pack(">I", 20) + bytes(20))
    with pytest.raises(TamperedChunk):
        open_file(bad, out, **parties.open_kw())
    with pytest.raises(WrongRecipient):
        open_file(sealed, out, **parties.open_kw(recipient_key=parties.outsider))
    assert not out.exists()
    with pytest.raises(SealError):
        list(iter_frame_file(io.BytesIO(FRAME_FILE_MAGIC)))


def test_seal_file_detects_size_mismatch(tmp_path, parties):
    src = tmp_path / "p.bin"
    src.write_bytes(bytes(100))
    with pytest.raises(TruncatedStream, match="shrank"):
        seal_file(src, tmp_path / "s1", **parties.seal_kw(total_size=200))
    with pytest.raises(StreamTooLarge, match="grew"):
        seal_file(src, tmp_path / "s2", **parties.seal_kw(total_size=50))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.bin"]


# ------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("kem", ["x25519", "mlkem768-x25519"])
def test_keys_generate_writes_all_files(tmp_path, kem):
    out = tmp_path / "keys"
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(out), "--kem", kem])
    assert res.exit_code == 0, res.output
    for name in ("identity.key", "kem.key"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    ident, kem_key = IdentityKey.load(out / "identity.key"), KemKey.load(out / "kem.key")
    assert load_identity_public(out / "identity.pub") == ident.public_bytes()
    assert load_kem_public(out / "kem.pub") == (kem, kem_key.public_bytes())
    assert (out / "kem.pub").read_text().startswith(kem + " ")
    assert ident.key_id() in res.output and kem_key.key_id() in res.output
    shown = CliRunner().invoke(app, ["keys", "show", str(out)])
    assert shown.exit_code == 0 and ident.key_id() in shown.output and kem_key.key_id() in shown.output


def test_keys_generate_refuses_overwrite_without_force(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "identity.pub").read_text()
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "--force" in res.output
    assert (tmp_path / "identity.pub").read_text() == before
    (tmp_path / "identity.key").unlink()
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)])
    assert res.exit_code == 1, "one remaining file is enough to refuse"
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--force"])
    assert res.exit_code == 0 and (tmp_path / "identity.pub").read_text() != before


def test_keys_generate_rejects_unknown_kem(tmp_path):
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path), "--kem", "rsa"])
    assert res.exit_code == 2 and not (tmp_path / "identity.key").exists()


def test_keys_generate_reports_unwritable_directory(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(not_a_dir / "keys")])
    assert res.exit_code == 1 and "cannot write keys" in res.output and res.exception is not None
    assert isinstance(res.exception, SystemExit)


def test_keys_show_detects_problems(tmp_path):
    runner = CliRunner()
    runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)])
    (tmp_path / "identity.key").chmod(0o644)
    res = runner.invoke(app, ["keys", "show", str(tmp_path)])
    assert res.exit_code == 1 and "chmod 600" in res.output
    (tmp_path / "identity.key").chmod(0o600)
    (tmp_path / "identity.pub").write_text(IdentityKey.generate().public_bytes().hex())
    res = runner.invoke(app, ["keys", "show", str(tmp_path)])
    assert res.exit_code == 1 and "identity.pub names ed25519 key" in res.output
    (tmp_path / "kem.key").unlink()
    res = runner.invoke(app, ["keys", "show", str(tmp_path)])
    assert res.exit_code == 1 and "kem.key" in res.output


def test_keys_show_names_the_mismatched_file_and_fixes_it_from_the_private_keys(tmp_path):
    """A public file that does not match is named with both key ids; the advice is to re-derive it (--fix) or
    restore the private key, never to regenerate (that would replace the identity itself)."""
    runner = CliRunner()
    runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)])
    ident, kem_key = IdentityKey.load(tmp_path / "identity.key"), KemKey.load(tmp_path / "kem.key")
    stranger = KemKey.generate()
    (tmp_path / "kem.pub").write_text(f"x25519 {stranger.public_bytes().hex()}\n")
    res = runner.invoke(app, ["keys", "show", str(tmp_path)])
    flat = " ".join(res.output.split())
    assert res.exit_code == 1
    assert f"kem.pub names x25519 key {stranger.key_id()}, but kem.key is x25519 key {kem_key.key_id()}" in flat
    assert "identity.pub" not in flat.split("kem.pub names")[0]  # only the wrong file is named
    assert "--fix" in flat and "restore its private key" in flat and "regenerate" not in flat
    res = runner.invoke(app, ["keys", "show", str(tmp_path), "--fix"])
    assert res.exit_code == 0 and "rewrote" in res.output and kem_key.key_id() in res.output
    assert load_kem_public(tmp_path / "kem.pub") == ("x25519", kem_key.public_bytes())
    assert load_identity_public(tmp_path / "identity.pub") == ident.public_bytes()
    (tmp_path / "identity.pub").unlink()
    res = runner.invoke(app, ["keys", "show", str(tmp_path)])
    assert res.exit_code == 1 and "identity.pub is missing" in res.output
    assert runner.invoke(app, ["keys", "show", str(tmp_path), "--fix"]).exit_code == 0
    assert load_identity_public(tmp_path / "identity.pub") == ident.public_bytes()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=300), keep=st.integers(0, 400))
def test_garbage_frame_files_only_raise_seal_errors(tmp_path_factory, parties, garbage, keep):
    d = tmp_path_factory.mktemp("g")
    header = seal_bytes(b"x" * 100, **parties.seal_kw())[0]
    prefix = FRAME_FILE_MAGIC + struct.pack(">I", len(header)) + header
    for body in (garbage, prefix[:keep] + garbage, prefix + garbage):
        (d / "g.mpcs").write_bytes(body)
        with pytest.raises(SealError):
            open_file(d / "g.mpcs", d / "out", **parties.open_kw())
        assert not (d / "out").exists()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=2 * CHUNK), min_size=1, max_size=4), known=st.booleans())
def test_garbage_chunk_frames_never_yield_plaintext(parties, frames, known):
    header = seal_bytes(b"y" * 150, **parties.seal_kw(total_size=150 if known else -1))[0]
    got = []
    with pytest.raises(SealError):
        got.extend(open_stream([header, *frames], **parties.open_kw()))
    assert got == []


def test_opened_plaintext_is_0600_under_umask_0_and_over_a_0666_file(tmp_path, parties):
    data, sealed = sealed_file(tmp_path, parties, CHUNK + 1)
    out = tmp_path / "plain.out"
    out.write_text("old")
    out.chmod(0o666)
    old = os.umask(0)
    try:
        open_file(sealed, out, **parties.open_kw())
        resealed = tmp_path / "again.mpcs"
        seal_file(out, resealed, **parties.seal_kw())
    finally:
        os.umask(old)
    assert out.read_bytes() == data
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and stat.S_IMODE(os.stat(resealed).st_mode) == 0o600
