"""AMD certificates for SEV-SNP: where to find them, the ARK → ASK/ASVK → VCEK/VLEK chain, and the
VCEK/VLEK extensions that bind a key to one chip and one TCB.

Collateral cache names (read by ``find_chain``; the collateral fetcher writes them):

- ``snp/<product>/ask_ark.pem``: ASK then ARK (PEM bundle), as AMD's KDS ``/vcek/v1/<product>/cert_chain``;
- ``snp/<product>/asvk_ark.pem``: ASVK then ARK, for VLEK chains (``/vlek/v1/<product>/cert_chain``);
  ``ask_ark.pem`` is tried when it is absent;
- ``snp/<product>/vcek/<hwid hex>-<reported_tcb hex>.der``: the VCEK; hwid is CHIP_ID (64 bytes, Turin 8),
  reported_tcb is the 8 REPORTED_TCB bytes exactly as in the report (offset 0x180), both lower-case hex;
- ``snp/<product>/vlek.pem``: the VLEK (DER or PEM).

``<product>`` is ``Milan``, ``Genoa`` or ``Turin``.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from mpctrain.attest.claims import CertSummary
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    BadSignature,
    CertificateExpired,
    CollateralMissing,
    Malformed,
    UntrustedRoot,
)
from mpctrain.attest.roots import AMD_ARK_SHA256
from mpctrain.attest.snp.der import read_ia5, read_octets, read_uint
from mpctrain.attest.snp.report import PRODUCTS, SnpReport, decode_tcb

T = TypeVar("T")
MAX_CERT_BYTES = 64 << 10
MAX_BUNDLE_CERTS = 4
_CACHE_SIZE = 512

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = f"{AMD_OID}.2"
OID_HWID = f"{AMD_OID}.4"
OID_TCB = {
    "bl": f"{AMD_OID}.3.1",
    "tee": f"{AMD_OID}.3.2",
    "snp": f"{AMD_OID}.3.3",
    "ucode": f"{AMD_OID}.3.8",
    "fmc": f"{AMD_OID}.3.9",
}
LEAF_CN = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}
PRODUCT_ALIASES = {"Siena": "Genoa"}  # Siena parts are certified under the Genoa ARK/ASK
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


class _Lru:
    """A small bounded, thread-safe memo keyed by digests; only successes are ever put in it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[object, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> object | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: object, value: object) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


_PARSED = _Lru(_CACHE_SIZE)  # sha256(cert DER) -> Certificate
_LINKS = _Lru(_CACHE_SIZE)  # (sha256(issuer DER), sha256(subject DER)) -> True once the signature verified
_DIGESTS = _Lru(_CACHE_SIZE)  # Certificate (equal iff same DER) -> sha256 hex
_SUMMARIES = _Lru(_CACHE_SIZE)  # Certificate -> CertSummary


@dataclass(frozen=True)
class SnpChain:
    """Leaf (VCEK or VLEK), intermediate (ASK or ASVK) and root (ARK), as found; not yet verified."""

    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate

    def summaries(self) -> tuple[CertSummary, ...]:
        return tuple(summary(c) for c in (self.leaf, self.intermediate, self.root))


def der_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate (hex): the ARK pin and the memo key."""
    cached = _DIGESTS.get(cert)
    if isinstance(cached, str):
        return cached
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    _DIGESTS.put(cert, digest)
    return digest


def summary(cert: x509.Certificate) -> CertSummary:
    cached = _SUMMARIES.get(cert)
    if isinstance(cached, CertSummary):
        return cached
    found = CertSummary.of(cert, der_sha256(cert))
    _SUMMARIES.put(cert, found)
    return found


_LOAD_LOCK = threading.Lock()


def _quiet_load(loader: Callable[[bytes], T], blob: bytes) -> T:
    # AMD VCEKs carry serial number 0, which cryptography accepts with a deprecation warning. catch_warnings
    # swaps process-wide state, so loads are serialised (they are rare: parsed certificates are memoised).
    with _LOAD_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*serial number.*")
        return loader(blob)


def load_cert(blob: bytes, *, field: str) -> x509.Certificate:
    """One certificate, DER or PEM; bounded size; ``Malformed`` for anything else."""
    if not isinstance(blob, bytes | bytearray) or not blob:
        raise Malformed("certificate is empty or not bytes", field=field)
    if len(blob) > MAX_CERT_BYTES:
        raise Malformed("certificate too large", field=field, expected=f"<={MAX_CERT_BYTES}", actual=len(blob))
    blob = bytes(blob)
    if blob.lstrip().startswith(b"-----BEGIN"):
        certs = load_bundle(blob, field=field)
        if len(certs) != 1:
            raise Malformed("expected exactly one certificate", field=field, expected=1, actual=len(certs))
        return certs[0]
    key = hashlib.sha256(blob).digest()
    cached = _PARSED.get(key)
    if isinstance(cached, x509.Certificate):
        return cached
    try:
        cert = _quiet_load(x509.load_der_x509_certificate, blob)
    except (ValueError, x509.InvalidVersion) as exc:
        raise Malformed(f"certificate is not valid DER: {exc}", field=field) from exc
    _PARSED.put(key, cert)
    return cert


def load_bundle(blob: bytes, *, field: str) -> list[x509.Certificate]:
    """A PEM bundle of at most a few certificates, in file order."""
    if not isinstance(blob, bytes | bytearray) or not blob:
        raise Malformed("certificate bundle is empty or not bytes", field=field)
    if len(blob) > MAX_CERT_BYTES * MAX_BUNDLE_CERTS:
        raise Malformed("certificate bundle too large", field=field, actual=len(blob))
    blob = bytes(blob)
    key = ("bundle", hashlib.sha256(blob).digest())
    cached = _PARSED.get(key)
    if isinstance(cached, tuple):
        return list(cached)
    try:
        certs = _quiet_load(x509.load_pem_x509_certificates, blob)
    except (ValueError, x509.InvalidVersion) as exc:
        raise Malformed(f"certificate bundle is not valid PEM: {exc}", field=field) from exc
    if not 1 <= len(certs) <= MAX_BUNDLE_CERTS:
        raise Malformed("wrong number of certificates in bundle", field=field, expected=f"1..{MAX_BUNDLE_CERTS}",
                        actual=len(certs))
    _PARSED.put(key, tuple(certs))
    return certs


def common_name(cert: x509.Certificate, which: str = "subject") -> str:
    name = cert.subject if which == "subject" else cert.issuer
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        return ""
    return attrs[0].value


def amd_extensions(cert: x509.Certificate, *, field: str) -> dict[str, bytes]:
    """The raw values of AMD's extensions (OID 1.3.6.1.4.1.3704.1.*), by dotted OID."""
    try:
        exts = cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise Malformed(f"certificate extensions cannot be parsed: {exc}", field=field) from exc
    out: dict[str, bytes] = {}
    for ext in exts:
        oid = ext.oid.dotted_string
        if oid.startswith(AMD_OID + ".") and isinstance(ext.value, x509.UnrecognizedExtension):
            out[oid] = ext.value.value
    return out


def leaf_product(leaf: x509.Certificate) -> str | None:
    """Product a VCEK/VLEK was issued for: from its issuer (SEV-<P>, SEV-VLEK-<P>) or product-name extension.

    Raises ``UntrustedRoot`` when the two disagree.
    """
    issuer = common_name(leaf, "issuer")
    from_issuer = None
    for product in PRODUCTS:
        if issuer in (f"SEV-{product}", f"SEV-VLEK-{product}"):
            from_issuer = product
    from_ext = None
    raw = amd_extensions(leaf, field="vcek").get(OID_PRODUCT_NAME)
    if raw is not None:
        name = read_ia5(raw, field="vcek.product_name")
        from_ext = name.split("-", 1)[0]
        from_ext = PRODUCT_ALIASES.get(from_ext, from_ext)
        if from_ext not in PRODUCTS:
            raise UntrustedRoot("VCEK/VLEK names an unknown product", field="vcek.product_name",
                                expected=list(PRODUCTS), actual=name)
    if from_issuer and from_ext and from_issuer != from_ext:
        raise UntrustedRoot("VCEK/VLEK issuer and product-name extension disagree", field="vcek.product_name",
                            expected=from_issuer, actual=from_ext)
    return from_issuer or from_ext


def _leaf_sources(report: SnpReport, products: Iterable[str], key_name: str) -> list[str]:
    names = []
    for product in products:
        if key_name == "vcek":
            hwid = report.hwid(product).hex()
            names.append(f"snp/{product}/vcek/{hwid}-{report.reported_tcb_raw.hex()}.der")
        else:
            names.append(f"snp/{product}/vlek.pem")
    return names


def find_leaf(report: SnpReport, certs: Mapping[str, bytes], collateral: Collateral) -> x509.Certificate:
    """The VCEK or VLEK that SIGNING_KEY names: from the evidence, else from the collateral cache."""
    key_name = report.signing_key_name
    if key_name in certs:
        return load_cert(certs[key_name], field=key_name)
    cpu = report.cpuid_product
    tried = _leaf_sources(report, (cpu,) if cpu else PRODUCTS, key_name)
    for name in tried:
        blob = collateral.get(name)
        if blob is not None:
            return load_cert(blob, field=name)
    raise CollateralMissing(f"no {key_name.upper()} in the evidence or the collateral cache; fetch it from AMD KDS",
                            field=key_name, expected=tried)


def find_issuers(product: str, key_name: str, certs: Mapping[str, bytes],
                 collateral: Collateral) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK or ASVK, ARK) from the evidence (``ask_ark`` bundle, or ``ask``/``ark``), else the cache."""
    if "ask_ark" in certs:
        bundle = load_bundle(certs["ask_ark"], field="ask_ark")
    elif "ark" in certs and ("ask" in certs or "asvk" in certs):
        ask_name = "asvk" if "asvk" in certs and key_name == "vlek" else ("ask" if "ask" in certs else "asvk")
        bundle = [load_cert(certs[ask_name], field=ask_name), load_cert(certs["ark"], field="ark")]
    else:
        names = [f"snp/{product}/asvk_ark.pem"] if key_name == "vlek" else []
        names.append(f"snp/{product}/ask_ark.pem")
        for name in names:
            blob = collateral.get(name)
            if blob is not None:
                bundle = load_bundle(blob, field=name)
                break
        else:
            raise CollateralMissing("no AMD ASK/ARK chain in the evidence or the collateral cache",
                                    field="ask_ark", expected=names)
    if len(bundle) != 2:
        raise Malformed("ASK/ARK bundle must hold the ASK (or ASVK) then the ARK", field="ask_ark",
                        expected=2, actual=len(bundle))
    first, second = bundle
    if first.subject == first.issuer and second.subject != second.issuer:
        first, second = second, first  # ARK listed first: order does not matter, both are checked
    return first, second


def _check_pss_link(issuer: x509.Certificate, subject: x509.Certificate, *, field: str) -> None:
    """``subject`` is signed by ``issuer`` with RSASSA-PSS SHA-384 salt 48 (memoised on success)."""
    key = (der_sha256(issuer), der_sha256(subject))
    if _LINKS.get(key):
        return
    if subject.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise BadSignature("certificate is not signed with RSASSA-PSS", field=field, expected="rsassaPss",
                           actual=subject.signature_algorithm_oid.dotted_string)
    if not isinstance(subject.signature_hash_algorithm, hashes.SHA384):
        raise BadSignature("certificate signature does not use SHA-384", field=field, expected="sha384",
                           actual=getattr(subject.signature_hash_algorithm, "name", None))
    pub = issuer.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise UntrustedRoot("AMD signing certificate does not hold an RSA key", field=field,
                            actual=type(pub).__name__)
    try:
        pub.verify(subject.signature, subject.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except (InvalidSignature, ValueError, UnsupportedAlgorithm) as exc:
        raise BadSignature("certificate signature does not verify (RSASSA-PSS SHA-384)", field=field) from exc
    _LINKS.put(key, True)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return False  # not usable as a CA: the chain check refuses it


def _check_validity(chain: SnpChain, at: datetime, skew: timedelta) -> None:
    for name, cert in (("ark", chain.root), ("ask", chain.intermediate), ("leaf", chain.leaf)):
        nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
        if at + skew < nb:
            raise CertificateExpired("certificate is not yet valid at the verification time",
                                     field=f"{name}.not_before", expected=f"<= {at.isoformat()}", actual=nb.isoformat())
        if at - skew > na:
            raise CertificateExpired("certificate has expired at the verification time", field=f"{name}.not_after",
                                     expected=f">= {at.isoformat()}", actual=na.isoformat())


def verify_chain(chain: SnpChain, *, product: str, key_name: str, roots: Iterable[str], at: datetime,
                 skew: timedelta) -> None:
    """ARK pinned (policy ∩ product) and self-signed → ASK/ASVK → VCEK/VLEK; names; key types; validity."""
    ark, ask, leaf = chain.root, chain.intermediate, chain.leaf
    ark_hash = der_sha256(ark)
    pinned = {r.lower() for r in roots}
    if ark_hash not in pinned:
        raise UntrustedRoot("ARK is not pinned by the policy", field="ark.sha256", expected=sorted(pinned),
                            actual=ark_hash)
    if ark_hash in AMD_ARK_SHA256.values() and AMD_ARK_SHA256.get(product) != ark_hash:
        raise UntrustedRoot(f"ARK is AMD's root for another product than {product}", field="ark.sha256",
                            expected=AMD_ARK_SHA256.get(product), actual=ark_hash)
    if common_name(ark) != f"ARK-{product}" or ark.subject != ark.issuer:
        raise UntrustedRoot("root is not a self-issued AMD ARK for this product", field="ark.subject",
                            expected=f"ARK-{product}", actual=ark.subject.rfc4514_string())
    want_ask = f"SEV-{product}" if key_name == "vcek" else f"SEV-VLEK-{product}"
    if common_name(ask) != want_ask:
        raise UntrustedRoot("intermediate is not the AMD ASK/ASVK for this product and key", field="ask.subject",
                            expected=want_ask, actual=ask.subject.rfc4514_string())
    if ask.issuer != ark.subject:
        raise UntrustedRoot("ASK/ASVK is not issued by the ARK", field="ask.issuer",
                            expected=ark.subject.rfc4514_string(), actual=ask.issuer.rfc4514_string())
    if leaf.issuer != ask.subject:
        raise UntrustedRoot(f"{key_name.upper()} is not issued by the {want_ask} intermediate", field="leaf.issuer",
                            expected=ask.subject.rfc4514_string(), actual=leaf.issuer.rfc4514_string())
    if common_name(leaf) != LEAF_CN[key_name]:
        raise BadSignature("report SIGNING_KEY and the signing certificate disagree", field="signing_key",
                           expected=LEAF_CN[key_name], actual=common_name(leaf) or leaf.subject.rfc4514_string())
    if not (_is_ca(ark) and _is_ca(ask)):
        raise UntrustedRoot("ARK and ASK/ASVK must be CA certificates", field="basic_constraints")
    _check_pss_link(ark, ark, field="ark.signature")
    _check_pss_link(ark, ask, field="ask.signature")
    _check_pss_link(ask, leaf, field="leaf.signature")
    pub = leaf.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP384R1):
        actual = getattr(getattr(pub, "curve", None), "name", type(pub).__name__)
        raise BadSignature(f"{key_name.upper()} key is not ECDSA P-384", field="leaf.public_key",
                           expected="secp384r1", actual=actual)
    _check_validity(chain, at, skew)


def check_leaf_binding(leaf: x509.Certificate, report: SnpReport, product: str, key_name: str) -> None:
    """The VCEK/VLEK was issued for this chip (hwID, VCEK only) and this REPORTED_TCB, component by component."""
    exts = amd_extensions(leaf, field=key_name)
    if key_name == "vcek":
        raw = exts.get(OID_HWID)
        if raw is None:
            raise Malformed("VCEK lacks the hwID extension", field="vcek.hwid")
        want = report.hwid(product)
        if len(raw) != len(want):  # AMD's VCEKs hold raw bytes; some tools wrap them in an OCTET STRING
            raw = read_octets(raw, field="vcek.hwid")
        if raw != want:
            raise BadSignature("VCEK was issued for another chip than the report's CHIP_ID", field="vcek.hwid",
                               expected=want, actual=raw)
    tcb = decode_tcb(report.reported_tcb_raw, product).as_dict()
    for component, value in tcb.items():
        raw = exts.get(OID_TCB[component])
        if raw is None:
            raise Malformed(f"{key_name.upper()} lacks the {component} TCB extension",
                            field=f"{key_name}.tcb.{component}")
        cert_value = read_uint(raw, field=f"{key_name}.tcb.{component}")
        if cert_value != value:
            raise BadSignature(f"{key_name.upper()} was issued for another TCB than the report's REPORTED_TCB",
                               field=f"{key_name}.tcb.{component}", expected=value, actual=cert_value)


__all__ = [
    "SnpChain",
    "amd_extensions",
    "check_leaf_binding",
    "find_issuers",
    "find_leaf",
    "leaf_product",
    "load_bundle",
    "load_cert",
    "summary",
    "verify_chain",
]
