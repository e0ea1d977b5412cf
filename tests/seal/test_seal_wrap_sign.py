"""HPKE key wrapping and domain-separated detached signatures."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctrain.seal import (
    BadSignature,
    IdentityKey,
    KemKey,
    KeyFormatError,
    StreamSealer,
    WrapContext,
    WrongRecipient,
    canonical,
    sign_fields,
    signed_payload,
    unwrap_key,
    verify_fields,
    verify_signature,
    wrap_key,
)
from mpctrain.seal.wrap import WRAP_OVERHEAD

CTX = WrapContext("shard", "job-1", "shard-0", "hospital-a")
KEYS = {alg: KemKey.generate(alg) for alg in ("x25519", "mlkem768-x25519")}


@pytest.mark.parametrize("alg", ["x25519", "mlkem768-x25519"])
def test_wrap_round_trip_and_size(alg):
    key = KEYS[alg]
    wrapped = wrap_key(alg, key.public_bytes(), b"k" * 32, CTX)
    assert len(wrapped) == 32 + WRAP_OVERHEAD[alg]
    assert unwrap_key(key, wrapped, CTX) == b"k" * 32
    assert wrap_key(alg, key.public_bytes(), b"k" * 32, CTX) != wrapped, "fresh ephemeral key per wrap"


def test_info_is_the_canonical_context():
    assert CTX.info() == canonical(b"mpctrain/v1/wrap", "shard", "job-1", "shard-0", "hospital-a")


@pytest.mark.parametrize("alg", ["x25519", "mlkem768-x25519"])
@pytest.mark.parametrize("field", ["purpose", "job_id", "object_id", "sender"])
def test_wrong_info_fails(alg, field):
    wrapped = wrap_key(alg, KEYS[alg].public_bytes(), b"k" * 32, CTX)
    with pytest.raises(WrongRecipient, match="another key, or for another purpose"):
        unwrap_key(KEYS[alg], wrapped, replace(CTX, **{field: "other"}))


def test_wrong_key_or_damaged_wrap_fails():
    wrapped = wrap_key("x25519", KEYS["x25519"].public_bytes(), b"k" * 32, CTX)
    with pytest.raises(WrongRecipient):
        unwrap_key(KemKey.generate(), wrapped, CTX)
    with pytest.raises(WrongRecipient):
        unwrap_key(KEYS["mlkem768-x25519"], wrapped, CTX)
    for bad in (wrapped[:-1], wrapped[:10], b"", bytes([wrapped[0] ^ 1]) + wrapped[1:],
                wrapped[:-1] + bytes([wrapped[-1] ^ 0x80])):
        with pytest.raises(WrongRecipient):
            unwrap_key(KEYS["x25519"], bad, CTX)


def test_wrap_rejects_bad_public_keys():
    with pytest.raises(KeyFormatError, match="cannot wrap"):
        wrap_key("x25519", bytes(32), b"k" * 32, CTX)  # low-order point
    with pytest.raises(KeyFormatError, match="unknown KEM"):
        wrap_key("p256", bytes(65), b"k" * 32, CTX)
    with pytest.raises(KeyFormatError, match="32 bytes"):
        wrap_key("x25519", bytes(33), b"k" * 32, CTX)


ID = IdentityKey.generate()
FIELD = st.one_of(st.binary(max_size=40), st.text(max_size=20), st.integers(-(2**63), 2**63 - 1))


@settings(max_examples=50, deadline=None)
@given(fields=st.lists(FIELD, max_size=5), domain=st.text(min_size=1, max_size=20))
def test_sign_fields_round_trip(fields, domain):
    sig = sign_fields(ID, domain, *fields)
    verify_fields(ID.public_bytes(), sig, domain, *fields)
    with pytest.raises(BadSignature):
        verify_fields(ID.public_bytes(), sig, domain + "x", *fields)
    with pytest.raises(BadSignature):
        verify_fields(ID.public_bytes(), sig, domain, *fields, b"")


def test_verify_fields_failures():
    sig = sign_fields(ID, "mpctrain/v1/consent", "job-1", b"\x01" * 32, 7)
    pub = ID.public_bytes()
    verify_fields(pub, sig, "mpctrain/v1/consent", "job-1", b"\x01" * 32, 7)
    with pytest.raises(BadSignature, match="mpctrain/v1/consent"):
        verify_fields(pub, sig, "mpctrain/v1/consent", "job-2", b"\x01" * 32, 7)
    with pytest.raises(BadSignature):
        verify_fields(pub, sig, "mpctrain/v1/consent", "job-1", b"\x01" * 32, 8)
    with pytest.raises(BadSignature):
        verify_fields(pub, sig, "mpctrain/v1/receipt", "job-1", b"\x01" * 32, 7)
    with pytest.raises(BadSignature):
        verify_fields(IdentityKey.generate().public_bytes(), sig, "mpctrain/v1/consent", "job-1", b"\x01" * 32, 7)
    with pytest.raises(BadSignature):
        verify_fields(pub, sig[:32] + bytes([sig[32] ^ 1]) + sig[33:], "mpctrain/v1/consent", "job-1",
                      b"\x01" * 32, 7)
    with pytest.raises(BadSignature):
        verify_fields(pub, b"garbage", "mpctrain/v1/consent", "job-1")
    with pytest.raises(ValueError, match="domain"):
        sign_fields(ID, "", "x")


def test_field_boundaries_are_unambiguous():
    sig = sign_fields(ID, "d", "ab", "c")
    with pytest.raises(BadSignature):
        verify_fields(ID.public_bytes(), sig, "d", "a", "bc")
    with pytest.raises(BadSignature):
        verify_fields(ID.public_bytes(), sig, "d", "abc")


def test_signed_fields_can_never_pass_as_a_stream_header_signature():
    sealer = StreamSealer(sender=ID, sender_id="s", recipients=[("r", "x25519", KEYS["x25519"].public_bytes())],
                          purpose="p", job_id="j", object_id="o")
    h = sealer.header
    assert not signed_payload("x").startswith(h.signed_bytes()[:40])
    with pytest.raises(BadSignature):
        verify_signature(ID.public_bytes(), h.signature, signed_payload("mpctrain/v1/sealed-stream-header"))


def test_seal_package_imports_neither_grpc_nor_torch():
    code = "import sys, mpctrain.seal; bad = {'grpc', 'torch'} & set(sys.modules); assert not bad, bad"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
