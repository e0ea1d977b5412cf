"""Revocation of the GPU device chain: NVIDIA OCSP responses from the collateral cache, checked offline.

``mpctrain attest fetch-collateral`` asks NVIDIA's responder about every CA-issued certificate of the
chain (not the device leaf, which the GPU's firmware makes at boot, and not the pinned root) and stores
each response as ``nvidia/ocsp/<sha256 of the certificate DER>.der``. Each response must be signed by the
certificate's issuer, or by a responder certificate that issuer signed for OCSP, must be current at the
verification time, must be about exactly that certificate, and must say it is good.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    BadSignature,
    CertificateRevoked,
    CollateralMissing,
    CollateralStale,
    Malformed,
    UntrustedRoot,
)


def ocsp_collateral_name(cert: x509.Certificate) -> str:
    return f"nvidia/ocsp/{hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()}.der"


def _ids(cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes, int]:
    """(issuer name hash, issuer key hash, serial) as an OCSP CertID names ``cert``, by cryptography's builder."""
    probe = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    return probe.issuer_name_hash, probe.issuer_key_hash, probe.serial_number


def _key_hash(cert: x509.Certificate) -> bytes:
    """SHA-1 of ``cert``'s public key bits: what a ResponderID byKey holds (RFC 6960)."""
    return _ids(cert, cert, hashes.SHA1())[1]  # noqa: S303 (RFC 6960 fixes SHA-1 here; it names, it does not protect)


def _names(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_key_hash is not None:
        return resp.responder_key_hash == _key_hash(cert)
    return resp.responder_name == cert.subject


def _responder(resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime, skew: timedelta,
               name: str) -> x509.Certificate:
    if _names(resp, issuer):
        return issuer
    for cert in resp.certificates:
        if not _names(resp, cert):
            continue
        try:
            cert.verify_directly_issued_by(issuer)
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku and \
                cert.not_valid_before_utc - skew <= at <= cert.not_valid_after_utc + skew:
            return cert
    raise UntrustedRoot(f"{name} is signed by neither the certificate's issuer nor a responder that issuer "
                        "authorised for OCSP", field=f"{name}.responder", expected=issuer.subject.rfc4514_string())


def _check_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate, name: str) -> None:
    key = signer.public_key()
    algorithm = resp.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        else:
            raise BadSignature(f"{name} uses a signature this verifier does not accept", field=f"{name}.signature")
    except InvalidSignature:
        raise BadSignature(f"{name} signature does not verify", field=f"{name}.signature") from None


def check_response(raw: bytes, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime,
                   skew: timedelta, name: str) -> str:
    """Check one stored response about ``cert``; returns its status (``"good"``) or raises."""
    try:
        resp = ocsp.load_der_ocsp_response(raw)
        status = resp.response_status
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise Malformed(f"{name} is not an OCSP response: {exc}", field=name) from None
    if status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise Malformed(f"{name} is a refusal ({status.name}), not an answer: fetch it again", field=name,
                        expected="SUCCESSFUL", actual=status.name)
    _check_signature(resp, _responder(resp, issuer, at, skew, name), name)
    for single in resp.responses:
        if (single.issuer_name_hash, single.issuer_key_hash, single.serial_number) != _ids(
                cert, issuer, type(single.hash_algorithm)()):
            continue
        if single.this_update_utc > at + skew:
            raise CollateralStale(f"{name} was produced after the verification time", field=f"{name}.thisUpdate",
                                  expected=f"<= {at.isoformat()}", actual=str(single.this_update_utc))
        if single.next_update_utc is None or at > single.next_update_utc + skew:
            raise CollateralStale(f"{name} is past its nextUpdate (or has none): fetch a fresh one",
                                  field=f"{name}.nextUpdate", expected=f">= {at.isoformat()}",
                                  actual=str(single.next_update_utc))
        if single.certificate_status != ocsp.OCSPCertStatus.GOOD:
            raise CertificateRevoked(f"NVIDIA's OCSP responder says {cert.subject.rfc4514_string()} is "
                                     f"{single.certificate_status.name.lower()}", field=f"{name}.status",
                                     expected="GOOD", actual=single.certificate_status.name)
        return "good"
    raise Malformed(f"{name} answers for other certificates than {cert.subject.rfc4514_string()}",
                    field=f"{name}.certID")


def check_chain(certs: Sequence[x509.Certificate], collateral: Collateral, *, required: bool, at: datetime,
                skew: timedelta) -> list[dict[str, str]]:
    """Every CA-issued certificate of the chain (leaf first) against its stored response, if any."""
    out = []
    for cert, issuer in itertools.pairwise(certs[1:]):
        name = ocsp_collateral_name(cert)
        raw = collateral.get(name)
        if raw is None:
            if required:
                raise CollateralMissing(f"the policy requires OCSP status, and the collateral cache has no {name} for "
                                        f"{cert.subject.rfc4514_string()}: run 'mpctrain attest fetch-collateral'",
                                        field=name)
            out.append({"subject": cert.subject.rfc4514_string(), "status": "not checked"})
            continue
        out.append({"subject": cert.subject.rfc4514_string(),
                    "status": check_response(raw, cert, issuer, at=at, skew=skew, name=name)})
    return out
