"""ECDSA P-384 certificate chains (GPU device identity and RIM signers) checked against a pinned root.

NVIDIA's intermediates carry extensions a web-PKI path builder rejects, so each link is checked
directly: issuer name, signature algorithm, ``issuer.public_key().verify(...)``, CA basic constraints
and keyCertSign (required on every issuer), validity at the caller's time; the last certificate must
be one whose SHA-256(DER) the policy pins.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from mpctrain.attest.claims import CertSummary
from mpctrain.attest.errors import (
    BadSignature,
    CertificateExpired,
    Malformed,
    UntrustedRoot,
)

MAX_CHAIN_CERTS = 8
MAX_CHAIN_BYTES = 64 << 10
TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.2")


def load_pem_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    """Parse a PEM bundle (leaf first); garbage, empty or oversized input is ``Malformed``."""
    if len(pem) > MAX_CHAIN_BYTES:
        raise Malformed(f"{what} certificate chain too large", field=what, actual=len(pem))
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise Malformed(f"{what} certificate chain is not valid PEM: {exc}", field=what) from exc
    return _bounded(certs, what)


def load_der_chain(ders: Iterable[bytes], what: str) -> list[x509.Certificate]:
    """Parse DER certificates (leaf first), e.g. from XMLDSig ``X509Certificate`` elements."""
    certs = []
    for i, der in enumerate(ders):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except (ValueError, x509.InvalidVersion) as exc:
            raise Malformed(f"{what} certificate {i} is not valid DER: {exc}", field=f"{what}[{i}]") from exc
    return _bounded(certs, what)


def _bounded(certs: list[x509.Certificate], what: str) -> list[x509.Certificate]:
    if not 2 <= len(certs) <= MAX_CHAIN_CERTS:
        raise Malformed(f"{what} chain must hold 2..{MAX_CHAIN_CERTS} certificates", field=what,
                        actual=len(certs))
    for i, cert in enumerate(certs):
        try:  # names and times parse lazily: surface their errors here, typed, before any check uses them
            _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
        except ValueError as exc:
            raise Malformed(f"{what} certificate {i} does not parse: {exc}", field=f"{what}[{i}]") from exc
    return certs


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def summary(cert: x509.Certificate) -> CertSummary:
    return CertSummary.of(cert)


def verify_chain(
    certs: list[x509.Certificate],
    *,
    roots: Iterable[str],
    at: datetime,
    skew_seconds: int,
    what: str,
) -> tuple[CertSummary, ...]:
    """Check every link leaf → pinned root; return summaries, leaf first."""
    pinned = {r.lower() for r in roots}
    root = certs[-1]
    if cert_sha256(root) not in pinned:
        raise UntrustedRoot(f"{what} chain does not end in a pinned root", field=f"{what}.root",
                            expected=sorted(pinned), actual=cert_sha256(root))
    skew = timedelta(seconds=skew_seconds)
    for i, cert in enumerate(certs):
        issuer = certs[i + 1] if i + 1 < len(certs) else cert
        name = f"{what}[{i}]"
        if cert.issuer != issuer.subject:
            raise BadSignature(f"{what} certificate {i} is not issued by the next one", field=f"{name}.issuer",
                               expected=issuer.subject.rfc4514_string(), actual=cert.issuer.rfc4514_string())
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            raise BadSignature(f"{what} certificate {i} is not signed with ECDSA/SHA-384",
                               field=f"{name}.signature_algorithm", expected="ecdsa-with-SHA384",
                               actual=cert.signature_algorithm_oid.dotted_string)
        try:
            key = issuer.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:  # issuers are checked leaf-first, so still untrusted here
            raise Malformed(f"{what} certificate {i + 1} public key cannot be read: {exc}",
                            field=f"{name}.issuer_key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise BadSignature(f"{what} certificate {i + 1} does not hold a P-384 key", field=f"{name}.issuer_key")
        try:
            _verify_link(cert, issuer, key)
        except InvalidSignature as exc:
            raise BadSignature(f"{what} certificate {i} signature does not verify", field=f"{name}.signature") from exc
        if at + skew < cert.not_valid_before_utc or at - skew > cert.not_valid_after_utc:
            raise CertificateExpired(f"{what} certificate {i} is outside its validity window",
                                     field=f"{name}.validity",
                                     expected=f"{cert.not_valid_before_utc.isoformat()}.."
                                     f"{cert.not_valid_after_utc.isoformat()}",
                                     actual=at.isoformat())
    for j in range(1, len(certs)):
        _check_ca(certs[j], j - 1, f"{what}[{j}]")
    return tuple(summary(c) for c in certs)


_VERIFIED_LINKS: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
_VERIFIED_LINKS_MAX = 256
_LINKS_LOCK = threading.Lock()


def _verify_link(cert: x509.Certificate, issuer: x509.Certificate, key: ec.EllipticCurvePublicKey) -> None:
    """ECDSA-verify one link, remembering successes by SHA-256 of both DER encodings.

    Chains repeat on every attestation (same device, same RIM signers); any changed byte changes the
    key, so a tampered certificate is always verified afresh. Failures are never remembered.
    """
    link = (cert.fingerprint(hashes.SHA256()), issuer.fingerprint(hashes.SHA256()))
    with _LINKS_LOCK:
        if link in _VERIFIED_LINKS:
            _VERIFIED_LINKS.move_to_end(link)
            return
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    with _LINKS_LOCK:
        _VERIFIED_LINKS[link] = None
        while len(_VERIFIED_LINKS) > _VERIFIED_LINKS_MAX:
            _VERIFIED_LINKS.popitem(last=False)


def _check_ca(cert: x509.Certificate, below: int, name: str) -> None:
    """An issuer must say it is a CA (basicConstraints) allowed to sign certificates (keyUsage), within its
    path length: every NVIDIA device and RIM issuer does, so a certificate without them (a leaf whose key
    leaked, say) can never issue one."""
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        bc = None
    except ValueError as exc:
        raise Malformed(f"{name} has unparsable extensions: {exc}", field=name) from exc
    if bc is None or not bc.ca:
        raise BadSignature("issuer certificate is not a CA", field=f"{name}.basic_constraints",
                           expected="ca=True", actual="ca=False" if bc is not None else "no basicConstraints")
    if bc.path_length is not None and below > bc.path_length:
        raise BadSignature("issuer path length constraint exceeded", field=f"{name}.path_length",
                           expected=f"<={bc.path_length}", actual=below)
    try:
        ku = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        ku = None
    except ValueError as exc:
        raise Malformed(f"{name} has unparsable extensions: {exc}", field=name) from exc
    if ku is None or not ku.key_cert_sign:
        raise BadSignature("issuer certificate may not sign certificates", field=f"{name}.key_usage",
                           expected="keyCertSign", actual=False)


@asn1.sequence
class _Fwid:
    hash_alg: x509.ObjectIdentifier
    digest: bytes


@asn1.sequence
class _CompositeDeviceId:
    """TCG DICE CompositeDeviceID, the form NVIDIA's GSP FMC leaf uses under OID 2.23.133.5.4.1."""

    version: int
    identity: asn1.TLV
    fwid: _Fwid


@asn1.sequence
class _DiceTcbInfo:
    """TCG DICE TcbInfo (DICE certificate profiles), the newer form of the same extension."""

    vendor: Annotated[str | None, asn1.Implicit(0)]
    model: Annotated[str | None, asn1.Implicit(1)]
    version: Annotated[str | None, asn1.Implicit(2)]
    svn: Annotated[int | None, asn1.Implicit(3)]
    layer: Annotated[int | None, asn1.Implicit(4)]
    index: Annotated[int | None, asn1.Implicit(5)]
    fwids: Annotated[list[_Fwid] | None, asn1.Implicit(6)]
    flags: Annotated[asn1.BitString | None, asn1.Implicit(7)]
    vendor_info: Annotated[bytes | None, asn1.Implicit(8)]
    type: Annotated[bytes | None, asn1.Implicit(9)]


def leaf_fwid(cert: x509.Certificate) -> bytes:
    """The SHA-384 FWID the device leaf certifies (extension 2.23.133.5.4.1, either DICE form; fwids[0])."""
    try:
        ext = cert.extensions.get_extension_for_oid(TCG_DICE_TCB_INFO).value
    except x509.ExtensionNotFound as exc:
        raise Malformed("device leaf certificate has no DICE FWID extension", field="chain[0].fwid",
                        expected=TCG_DICE_TCB_INFO.dotted_string) from exc
    except ValueError as exc:
        raise Malformed(f"device leaf certificate has unparsable extensions: {exc}", field="chain[0]") from exc
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    fwid: _Fwid | None
    try:
        fwid = asn1.decode_der(_CompositeDeviceId, raw).fwid
    except ValueError:
        try:
            fwids = asn1.decode_der(_DiceTcbInfo, raw).fwids
        except ValueError as exc:
            raise Malformed(f"device leaf DICE extension is neither CompositeDeviceID nor TcbInfo: {exc}",
                            field="chain[0].fwid") from exc
        fwid = fwids[0] if fwids else None
    if fwid is None or fwid.hash_alg != SHA384_OID or len(fwid.digest) != 48:
        raise Malformed("device leaf FWID is not a SHA-384 digest", field="chain[0].fwid",
                        expected=SHA384_OID.dotted_string)
    return fwid.digest
