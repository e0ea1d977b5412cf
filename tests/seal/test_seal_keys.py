"""Key generation, raw encodings and strict private-key files."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from mpctrain.seal import (
    BadSignature,
    IdentityKey,
    InsecureKeyFile,
    KemKey,
    KeyFormatError,
    load_identity_public,
    load_kem_public,
    public_kem_key,
    verify_signature,
    write_public_files,
)

PKCS8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_identity_key_round_trips_and_signs(tmp_path):
    key = IdentityKey.generate()
    path = tmp_path / "deep" / "dir" / "identity.pem"
    key.save(path)
    assert mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = IdentityKey.load(path)
    assert loaded.public_bytes() == key.public_bytes() and len(key.public_bytes()) == 32
    assert key.key_id() == loaded.key_id() and len(key.key_id()) == 16 and int(key.key_id(), 16) >= 0
    sig = loaded.sign(b"data")
    verify_signature(key.public_bytes(), sig, b"data")
    assert [p.name for p in path.parent.iterdir()] == ["identity.pem"], "no temp files left behind"
    assert "PRIVATE" not in repr(key) and key.key_id() in repr(key)


def test_identity_from_private_bytes():
    raw = ed25519.Ed25519PrivateKey.generate()
    key = IdentityKey.from_private_bytes(raw.private_bytes_raw())
    assert key.public_bytes() == raw.public_key().public_bytes_raw()
    with pytest.raises(KeyFormatError, match="32 bytes"):
        IdentityKey.from_private_bytes(b"short")


def test_verify_signature_failures():
    key, other = IdentityKey.generate(), IdentityKey.generate()
    sig = key.sign(b"data")
    with pytest.raises(BadSignature, match="wrong signer or modified"):
        verify_signature(key.public_bytes(), sig, b"datA")
    with pytest.raises(BadSignature):
        verify_signature(other.public_bytes(), sig, b"data")
    with pytest.raises(BadSignature):
        verify_signature(key.public_bytes(), bytes([sig[0] ^ 1]) + sig[1:], b"data")
    with pytest.raises(BadSignature, match="64 bytes"):
        verify_signature(key.public_bytes(), sig[:-1], b"data")
    with pytest.raises(BadSignature, match="32 bytes"):
        verify_signature(key.public_bytes()[:31], sig, b"data")


@pytest.mark.parametrize("alg", ["x25519", "mlkem768-x25519"])
def test_kem_key_round_trips(tmp_path, alg):
    key = KemKey.generate(alg)
    assert key.alg == alg
    path = tmp_path / "kem.pem"
    key.save(path)
    assert mode(path) == 0o600
    assert path.read_bytes().count(b"BEGIN PRIVATE KEY") == (1 if alg == "x25519" else 2)
    loaded = KemKey.load(path)
    assert (loaded.alg, loaded.public_bytes(), loaded.key_id()) == (alg, key.public_bytes(), key.key_id())
    assert len(key.public_bytes()) == (32 if alg == "x25519" else 1216)
    again = KemKey.from_private_bytes(alg, key.private_bytes())
    assert again.public_bytes() == key.public_bytes()
    public_kem_key(alg, key.public_bytes())


def test_save_overwrites_with_0600_even_over_a_0644_file(tmp_path):
    path = tmp_path / "identity.pem"
    path.write_text("old")
    path.chmod(0o644)
    IdentityKey.generate().save(path)
    assert mode(path) == 0o600


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o620, 0o700])
@pytest.mark.parametrize("kind", ["identity", "kem"])
def test_load_refuses_files_others_can_access(tmp_path, bad_mode, kind):
    key = IdentityKey.generate() if kind == "identity" else KemKey.generate()
    path = tmp_path / "k.pem"
    key.save(path)
    path.chmod(bad_mode)
    cls = IdentityKey if kind == "identity" else KemKey
    if bad_mode & 0o077:
        with pytest.raises(InsecureKeyFile, match="chmod 600"):
            cls.load(path)
    else:
        cls.load(path)  # 0700: owner-only is fine


def _write(path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def test_wrong_pem_types_are_refused(tmp_path):
    ed = tmp_path / "ed.pem"
    IdentityKey.generate().save(ed)
    xk = tmp_path / "x.pem"
    KemKey.generate().save(xk)
    ecp = tmp_path / "ec.pem"
    _write(ecp, ec.generate_private_key(ec.SECP256R1()).private_bytes(*PKCS8))
    with pytest.raises(KeyFormatError, match="X25519"):
        KemKey.load(ed)
    with pytest.raises(KeyFormatError, match="Ed25519"):
        IdentityKey.load(xk)
    with pytest.raises(KeyFormatError, match="Ed25519"):
        IdentityKey.load(ecp)
    with pytest.raises(KeyFormatError):
        KemKey.load(ecp)


def test_malformed_key_files(tmp_path):
    p = tmp_path / "k.pem"
    _write(p, b"not a key")
    with pytest.raises(KeyFormatError):
        IdentityKey.load(p)
    with pytest.raises(KeyFormatError, match="found 0"):
        KemKey.load(p)
    _write(p, b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFormatError, match="PKCS#8"):
        IdentityKey.load(p)
    with pytest.raises(KeyFormatError, match="PKCS#8"):
        KemKey.load(p)
    _write(p, b"x" * (64 * 1024 + 1))
    with pytest.raises(KeyFormatError, match="larger"):
        IdentityKey.load(p)
    hybrid = KemKey.generate("mlkem768-x25519")
    hybrid.save(p)
    blocks = p.read_bytes().split(b"-----END PRIVATE KEY-----\n")
    _write(p, blocks[1] + b"-----END PRIVATE KEY-----\n" + blocks[0] + b"-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFormatError):
        KemKey.load(p)
    x = x25519.X25519PrivateKey.generate().private_bytes(*PKCS8)
    _write(p, x + x)
    with pytest.raises(KeyFormatError, match="ML-KEM-768"):
        KemKey.load(p)
    _write(p, x + x + x)
    with pytest.raises(KeyFormatError, match="found 3"):
        KemKey.load(p)
    with pytest.raises(KeyFormatError, match="regular file"):
        IdentityKey.load(tmp_path)


def test_kem_algorithms_and_raw_lengths_are_checked():
    with pytest.raises(KeyFormatError, match="unknown KEM"):
        KemKey.generate("rsa")
    with pytest.raises(KeyFormatError, match="unknown KEM"):
        KemKey.from_private_bytes("p256", bytes(32))
    with pytest.raises(KeyFormatError, match="96 bytes"):
        KemKey.from_private_bytes("mlkem768-x25519", bytes(32))
    with pytest.raises(KeyFormatError, match="unknown KEM"):
        public_kem_key("x448", bytes(56))
    with pytest.raises(KeyFormatError, match="1216 bytes"):
        public_kem_key("mlkem768-x25519", bytes(32))
    with pytest.raises(KeyFormatError, match="32 bytes"):
        public_kem_key("x25519", bytes(31))
    with pytest.raises(KeyFormatError, match="ML-KEM"):
        KemKey("mlkem768-x25519", x25519.X25519PrivateKey.generate())
    with pytest.raises(KeyFormatError, match="Ed25519"):
        IdentityKey(x25519.X25519PrivateKey.generate())  # type: ignore[arg-type]


def test_public_files_round_trip_and_reject_garbage(tmp_path):
    ident, kem = IdentityKey.generate(), KemKey.generate("mlkem768-x25519")
    write_public_files(tmp_path, ident, kem)
    assert load_identity_public(tmp_path / "identity.pub") == ident.public_bytes()
    assert load_kem_public(tmp_path / "kem.pub") == ("mlkem768-x25519", kem.public_bytes())
    bad = tmp_path / "bad.pub"
    for text, match in [("zz", "hex"), ("abcd", "32 bytes")]:
        bad.write_text(text)
        with pytest.raises(KeyFormatError, match=match):
            load_identity_public(bad)
    for text, match in [("x25519", "<alg>"), ("x25519 zz", "not hex"), ("x25519 abcd", "32 bytes"),
                        (f"rsa {bytes(32).hex()}", "unknown KEM")]:
        bad.write_text(text)
        with pytest.raises(KeyFormatError, match=match):
            load_kem_public(bad)


@pytest.mark.parametrize("raw", [b"\xff\xfe" + bytes(32).hex().encode(), "é".encode() * 40, b"0" * (5 * 64 * 1024)])
def test_public_files_that_are_not_ascii_or_too_large_are_key_format_errors(tmp_path, raw):
    bad = tmp_path / "bad.pub"
    bad.write_bytes(raw)
    with pytest.raises(KeyFormatError):
        load_identity_public(bad)
    bad.write_bytes(b"x25519 " + raw)
    with pytest.raises(KeyFormatError):
        load_kem_public(bad)


@pytest.fixture
def umask_zero():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("kind", ["identity", "kem", "kem-hybrid"])
def test_private_files_are_0600_under_umask_0_and_over_a_0666_file(tmp_path, umask_zero, kind):
    key = {"identity": IdentityKey.generate, "kem": KemKey.generate,
           "kem-hybrid": lambda: KemKey.generate("mlkem768-x25519")}[kind]()
    fresh, existing = tmp_path / "new" / "k.pem", tmp_path / "k.pem"
    existing.write_text("old")
    existing.chmod(0o666)
    for path in (fresh, existing):
        key.save(path)
        assert mode(path) == 0o600
        type(key).load(path)
    assert mode(fresh.parent) == 0o700
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temp file left behind


# the encodings of Ed25519's points of small order, canonical and not (libsodium's blocklist holds the same)
WEAK_ED25519 = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity, order 1
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x sign bit set
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p: non-canonical 0
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1: non-canonical 1
]


@pytest.mark.parametrize("hexkey", WEAK_ED25519)
def test_a_small_order_identity_key_verifies_nothing(hexkey, tmp_path):
    """With the identity point as key, R = identity and S = 0 would verify for every message."""
    from mpctrain.seal.errors import BadSignature, KeyFormatError
    from mpctrain.seal.keys import check_identity_public, load_identity_public, verify_signature

    public = bytes.fromhex(hexkey)
    with pytest.raises(KeyFormatError, match="weak Ed25519"):
        check_identity_public(public)
    with pytest.raises(BadSignature, match="weak Ed25519"):
        verify_signature(public, bytes.fromhex(WEAK_ED25519[0]) + bytes(32), b"anything")
    (tmp_path / "identity.pub").write_text(hexkey)
    with pytest.raises(KeyFormatError, match="weak Ed25519"):
        load_identity_public(tmp_path / "identity.pub")


def test_real_identity_keys_pass_the_weak_key_check():
    from mpctrain.seal.keys import IdentityKey, check_identity_public

    for _ in range(200):
        check_identity_public(IdentityKey.generate().public_bytes())
