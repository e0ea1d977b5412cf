"""Intel certificate chains (PCK and TCB Signing) and the PCK's SGX extension.

Chains are short and fixed (leaf, CA, Intel SGX Root CA), so each link is checked directly:
ECDSA P-256/SHA-256 signature, issuer name, CA flag, validity window, and the root's DER pinned by hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from mpctrain.attest.claims import CertSummary
from mpctrain.attest.errors import BadSignature, CertificateExpired, Malformed, UntrustedRoot

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX = "1.2.840.113741.1.13.1"
PCK_LEAF_CN = "Intel SGX PCK Certificate"
PCK_CA_CNS = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
TCB_SIGNING_CN = "Intel SGX TCB Signing"
ROOT_CN = "Intel SGX Root CA"
MAX_CHAIN_CERTS = 4

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def load_chain(raw: bytes, name: str) -> list[x509.Certificate]:
    """Certificates from a PEM bundle (NUL padding allowed) or concatenated DER, leaf first."""
    raw = bytes(raw).rstrip(b"\x00")
    try:
        if raw.lstrip().startswith(_PEM_BEGIN):
            certs = x509.load_pem_x509_certificates(raw)
        else:
            certs = [x509.load_der_x509_certificate(der) for der in split_der(raw, name)]
        for cert in certs:  # some fields parse lazily: surface their errors here, typed
            _ = (cert.extensions, cert.subject, cert.issuer, cert.signature_algorithm_oid, cert.serial_number,
                 cert.not_valid_before_utc, cert.not_valid_after_utc)
    except (ValueError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise Malformed(f"{name} is not a certificate chain: {exc}", field=name) from exc
    if not 1 <= len(certs) <= MAX_CHAIN_CERTS:
        raise Malformed(f"{name} has a wrong number of certificates", field=name,
                        expected=f"1..{MAX_CHAIN_CERTS}", actual=len(certs))
    if len(certs) > 1 and certs[0].subject == certs[0].issuer and certs[-1].subject != certs[-1].issuer:
        certs.reverse()  # some producers (Intel QVL samples) list the root first
    return certs


def split_der(raw: bytes, name: str) -> list[bytes]:
    """Split concatenated DER SEQUENCEs (Intel QVL sample quotes carry the chain that way)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        tag, _start, end = der_tlv(raw, pos, len(raw))
        if tag != 0x30:
            raise Malformed(f"{name}: expected a DER certificate", field=name, actual=hex(tag))
        out.append(raw[pos:end])
        pos = end
        if len(out) > MAX_CHAIN_CERTS:
            break
    return out


def der_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos``: (tag, content start, content end). Bounded by ``end``; definite lengths only."""
    if pos + 2 > end:
        raise Malformed("DER truncated", field="der", actual=pos)
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise Malformed("DER high tag numbers are not used here", field="der", actual=hex(tag))
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise Malformed("DER length not supported", field="der", actual=hex(first))
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise Malformed("DER value runs past its container", field="der", expected=end - pos, actual=length)
    return tag, pos, pos + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = der_tlv(data, pos, end)
        out.append((tag, s, e))
        pos = e
        if len(out) > 64:
            raise Malformed("DER sequence too long", field="sgx_extension")
    return out


def _oid(data: bytes) -> str:
    if not data or data[-1] & 0x80:
        raise Malformed("bad OID encoding", field="sgx_extension")
    first, rest = divmod(data[0], 40) if data[0] < 80 else (2, data[0] - 80)
    parts = [first, rest]
    value = 0
    for b in data[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _uint(data: bytes, field: str) -> int:
    if not data or len(data) > 3 or data[0] & 0x80:
        raise Malformed("SGX extension integer out of range", field=field, actual=data.hex())
    return int.from_bytes(data, "big")


@dataclass(frozen=True)
class PckExtensions:
    """What the PCK certificate says about the platform: TCB evaluation inputs."""

    fmspc: bytes
    pceid: bytes
    sgx_tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    ppid: bytes | None = None
    sgx_type: int | None = None


def _pairs(data: bytes, start: int, end: int, field: str) -> dict[str, tuple[int, int, int]]:
    """A SEQUENCE OF SEQUENCE { OID, value } as {oid: value tlv}; duplicates are malformed."""
    found: dict[str, tuple[int, int, int]] = {}
    for tag, s, e in _der_children(data, start, end):
        if tag != 0x30:
            raise Malformed("SGX extension entry is not a SEQUENCE", field=field)
        kids = _der_children(data, s, e)
        if len(kids) != 2 or kids[0][0] != 0x06:
            raise Malformed("SGX extension entry is not (OID, value)", field=field)
        oid = _oid(data[kids[0][1] : kids[0][2]])
        if oid in found:
            raise Malformed("duplicate SGX extension entry", field=field, actual=oid)
        found[oid] = kids[1]
    return found


def parse_sgx_extensions(cert: x509.Certificate) -> PckExtensions:
    """Read OID 1.2.840.113741.1.13.1 of a PCK certificate.

    Intel's PCK certificate profile (and real certificates): ``.2.1``-``.2.16`` are the 16 SGX TCB
    component SVNs, ``.2.17`` PCESVN, ``.2.18`` CPUSVN (16 bytes); ``.3`` PCE-ID; ``.4`` FMSPC.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    except x509.ExtensionNotFound as exc:
        raise Malformed("PCK certificate has no SGX extension", field="sgx_extension") from exc
    except ValueError as exc:
        raise Malformed(f"PCK certificate extensions do not parse: {exc}", field="sgx_extension") from exc
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise Malformed("unexpected SGX extension type", field="sgx_extension")
    data = ext.value
    tag, s, e = der_tlv(data, 0, len(data))
    if tag != 0x30 or e != len(data):
        raise Malformed("SGX extension is not one SEQUENCE", field="sgx_extension")
    top = _pairs(data, s, e, "sgx_extension")

    def octets(oid: str, field: str, size: int) -> bytes:
        tlv = top.get(oid)
        if tlv is None or tlv[0] != 0x04 or tlv[2] - tlv[1] != size:
            raise Malformed(f"SGX extension {field} missing or not {size} bytes", field=field)
        return data[tlv[1] : tlv[2]]

    tcb_tlv = top.get(f"{_SGX}.2")
    if tcb_tlv is None or tcb_tlv[0] != 0x30:
        raise Malformed("SGX extension has no TCB sequence", field="sgx_extension.tcb")
    tcb = _pairs(data, tcb_tlv[1], tcb_tlv[2], "sgx_extension.tcb")
    comps = []
    for i in range(1, 17):
        tlv = tcb.get(f"{_SGX}.2.{i}")
        if tlv is None or tlv[0] != 0x02:
            raise Malformed("SGX TCB component missing", field=f"sgx_extension.tcb.{i}")
        comps.append(_uint(data[tlv[1] : tlv[2]], f"sgx_extension.tcb.{i}"))
    pce = tcb.get(f"{_SGX}.2.17")
    cpu = tcb.get(f"{_SGX}.2.18")
    if pce is None or pce[0] != 0x02:
        raise Malformed("PCESVN missing", field="sgx_extension.pcesvn")
    if cpu is None or cpu[0] != 0x04 or cpu[2] - cpu[1] != 16:
        raise Malformed("CPUSVN missing or not 16 bytes", field="sgx_extension.cpusvn")
    ppid_tlv = top.get(f"{_SGX}.1")
    type_tlv = top.get(f"{_SGX}.5")
    return PckExtensions(
        fmspc=octets(f"{_SGX}.4", "fmspc", 6),
        pceid=octets(f"{_SGX}.3", "pceid", 2),
        sgx_tcb_components=tuple(comps),
        pcesvn=_uint(data[pce[1] : pce[2]], "sgx_extension.pcesvn"),
        cpusvn=data[cpu[1] : cpu[2]],
        ppid=data[ppid_tlv[1] : ppid_tlv[2]] if ppid_tlv and ppid_tlv[0] == 0x04 else None,
        sgx_type=data[type_tlv[2] - 1] if type_tlv and type_tlv[0] == 0x0A and type_tlv[2] > type_tlv[1] else None,
    )


def cert_sha256(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(attrs[0].value) if attrs else ""


def summarize(cert: x509.Certificate) -> CertSummary:
    return CertSummary.of(cert)


def check_validity(cert: x509.Certificate, at: datetime, skew: int, name: str) -> None:
    """Raise CertificateExpired when ``at`` (± skew) is outside the certificate's window."""
    slack = timedelta(seconds=skew)
    if at + slack < cert.not_valid_before_utc or at - slack > cert.not_valid_after_utc:
        raise CertificateExpired(f"{name} certificate is not valid at the verification time",
                                 field=f"{name}.validity",
                                 expected=f"{cert.not_valid_before_utc.isoformat()}..{cert.not_valid_after_utc.isoformat()}",
                                 actual=at.isoformat())


def _p256_key(cert: x509.Certificate, name: str) -> ec.EllipticCurvePublicKey:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise Malformed(f"{name} public key does not parse: {exc}", field=f"{name}.key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadSignature(f"{name} key is not ECDSA P-256", field=f"{name}.key", expected="P-256")
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return bool(bc.ca)


def verify_chain(
    certs: list[x509.Certificate],
    roots: Iterable[str],
    *,
    name: str,
    leaf_cns: tuple[str, ...],
    ca_cns: tuple[str, ...] = (),
    at: datetime | None,
    skew: int,
) -> ec.EllipticCurvePublicKey:
    """Check ``certs`` (leaf, [CA], root) to a pinned root; return the leaf's P-256 key.

    ``ca_cns`` empty means the leaf is issued by the root directly. ``at`` None skips validity windows
    (the caller checks them at another instant, e.g. a collateral's issue date).
    """
    expected_len = 3 if ca_cns else 2
    if len(certs) != expected_len:
        raise UntrustedRoot(f"{name} must have {expected_len} certificates ending in {ROOT_CN}",
                            field=f"{name}.length", expected=expected_len, actual=len(certs))
    root = certs[-1]
    pins = {r.lower() for r in roots}
    digest = cert_sha256(root)
    if digest not in pins:
        raise UntrustedRoot(f"{name} does not end in a pinned Intel root", field=f"{name}.root",
                            expected=sorted(pins), actual=digest)
    cns = (leaf_cns, *((ca_cns,) if ca_cns else ()), (ROOT_CN,))
    for i, cert in enumerate(certs):
        issuer = certs[min(i + 1, len(certs) - 1)]
        role = f"{name}[{i}]"
        if common_name(cert) not in cns[i]:
            raise UntrustedRoot(f"{role} has an unexpected subject for this chain", field=f"{role}.subject",
                                expected=list(cns[i]), actual=common_name(cert))
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
            raise BadSignature(f"{role} is not signed with ECDSA/SHA-256", field=f"{role}.signature_algorithm",
                               expected="ecdsa-with-SHA256", actual=cert.signature_algorithm_oid.dotted_string)
        _p256_key(issuer, f"{role}.issuer")
        if i > 0 and not _is_ca(cert):
            raise UntrustedRoot(f"{role} is not a CA certificate", field=f"{role}.basic_constraints",
                                expected="CA:TRUE", actual="not a CA")
        try:
            cert.verify_directly_issued_by(issuer)
        except InvalidSignature as exc:
            raise BadSignature(f"{role} signature does not verify", field=f"{role}.signature") from exc
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise UntrustedRoot(f"{role} is not issued by the next certificate: {exc}",
                                field=f"{role}.issuer") from exc
        if at is not None:
            check_validity(cert, at, skew, role)
    return _p256_key(certs[0], f"{name}[0]")
