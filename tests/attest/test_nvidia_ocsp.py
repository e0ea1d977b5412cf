"""GPU device-chain revocation from stored NVIDIA OCSP responses: every way a response can be wrong fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import nvidia_synth as synth
from mpctrain.attest import (
    BadSignature,
    Collateral,
    CollateralMissing,
    Malformed,
    Policy,
    PolicyError,
    UntrustedRoot,
    verify_evidence,
)
from mpctrain.attest.errors import CertificateRevoked, CollateralStale
from mpctrain.attest.nvidia.ocsp import ocsp_collateral_name

NONCE = bytes(range(32))
FWID = b"\x42" * 48
AT = datetime(2026, 11, 22, tzinfo=UTC)


@pytest.fixture(scope="module")
def chain() -> synth.Chain:
    return synth.make_chain(leaf_ext=synth.composite_ext(FWID))


def _response(chain: synth.Chain, *, status=ocsp.OCSPCertStatus.GOOD, signer=None, responder=None, certs=(),
              about=None, this=AT - timedelta(days=1), next_: datetime | None = AT + timedelta(days=1)) -> bytes:
    revoked = status == ocsp.OCSPCertStatus.REVOKED
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=about or chain.ca, issuer=chain.root, algorithm=hashes.SHA256(), cert_status=status, this_update=this,
        next_update=next_, revocation_time=this if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None)
    b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, responder or chain.root)
    if certs:
        b = b.certificates(list(certs))
    return b.sign(signer or chain.root_key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


def _verify(chain: synth.Chain, blob: bytes | None, **knobs: object):
    table = {"measurements": "report-only", "roots": [chain.root_sha256], **knobs}
    pol = Policy.from_dict({"backends": ["snp"], "nvidia-gpu": table})
    coll = Collateral({} if blob is None else {ocsp_collateral_name(chain.ca): blob})
    return verify_evidence(synth.gpu_evidence(chain, NONCE), NONCE, pol, AT, coll, gpu=True)


def _delegate(chain: synth.Chain, *, eku: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP")]))
         .issuer_name(chain.root.subject).public_key(key.public_key()).serial_number(9)
         .not_valid_before(AT - timedelta(days=10)).not_valid_after(AT + timedelta(days=10)))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return key, b.sign(chain.root_key, hashes.SHA384())


def test_a_good_answer_from_the_issuer_or_its_delegate_passes(chain: synth.Chain) -> None:
    claims = _verify(chain, _response(chain), require_ocsp=True)
    assert claims.details["ocsp"] == [{"subject": chain.ca.subject.rfc4514_string(), "status": "good"}]
    key, cert = _delegate(chain, eku=True)
    assert _verify(chain, _response(chain, signer=key, responder=cert, certs=[cert])).details["ocsp"][0][
        "status"] == "good"


@pytest.mark.parametrize("status", [ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN])
def test_revoked_or_unknown_fails(chain: synth.Chain, status) -> None:
    with pytest.raises(CertificateRevoked, match=status.name.lower()) as err:
        _verify(chain, _response(chain, status=status))
    assert err.value.check == "certificate-revoked"


def test_answers_not_from_the_issuer_fail(chain: synth.Chain) -> None:
    stranger = synth.make_chain(leaf_ext=None, prefix="Stranger")
    with pytest.raises(UntrustedRoot, match="authorised"):
        _verify(chain, _response(chain, signer=stranger.root_key, responder=stranger.root))
    key, cert = _delegate(chain, eku=False)  # issued by the root, but not for OCSP
    with pytest.raises(UntrustedRoot, match="authorised"):
        _verify(chain, _response(chain, signer=key, responder=cert, certs=[cert]))
    good = bytearray(_response(chain))
    good[-1] ^= 1  # the last byte of the signature
    with pytest.raises(BadSignature):
        _verify(chain, bytes(good))


@pytest.mark.parametrize(("kw", "match"), [
    ({"next_": AT - timedelta(hours=1)}, "nextUpdate"),
    ({"next_": None}, "nextUpdate"),
    ({"this": AT + timedelta(days=2), "next_": AT + timedelta(days=3)}, "after the verification time"),
])
def test_stale_answers_fail(chain: synth.Chain, kw: dict, match: str) -> None:
    with pytest.raises(CollateralStale, match=match):
        _verify(chain, _response(chain, **kw))


def test_malformed_or_misaddressed_answers_fail(chain: synth.Chain) -> None:
    with pytest.raises(Malformed, match="other certificates"):
        _verify(chain, _response(chain, about=chain.leaf))  # a good answer, about another certificate
    refusal = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    with pytest.raises(Malformed, match="TRY_LATER"):
        _verify(chain, refusal.public_bytes(serialization.Encoding.DER))
    with pytest.raises(Malformed, match="not an OCSP response"):
        _verify(chain, b"garbage")


def test_require_ocsp(chain: synth.Chain) -> None:
    assert _verify(chain, None).details["ocsp"][0]["status"] == "not checked"
    with pytest.raises(CollateralMissing, match="fetch-collateral"):
        _verify(chain, None, require_ocsp=True)
    with pytest.raises(PolicyError, match="require_ocsp"):
        _verify(chain, None, require_ocsp="yes")
