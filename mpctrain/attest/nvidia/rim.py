"""NVIDIA reference integrity manifests (RIMs): XMLDSig-signed SWID tags with golden GPU measurements.

A RIM is trusted only after (1) the XML is parsed without DTDs, entities or network access, (2) the
certificate chain in the signature's KeyInfo verifies up to a pinned NVIDIA RIM root, and (3) the
enveloped XMLDSig signature verifies with that chain's leaf (``signxml``, restricted to ECDSA/SHA-384).
Golden values are then read only from the XML ``signxml`` returns as signed, never from the input
document, so nothing outside the signature can be injected.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType

from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidCertificate, InvalidInput, InvalidSignature, SignXMLException

from mpctrain.attest.claims import CertSummary
from mpctrain.attest.collateral import MAX_COLLATERAL_BYTES
from mpctrain.attest.errors import BadSignature, CertificateExpired, Malformed
from mpctrain.attest.nvidia.chain import load_der_chain, verify_chain

NVIDIA_RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
"""SHA-256(DER) of "NVIDIA CoRIM signing Root CA" (O=NVIDIA, C=US, valid 2023-03-16..2053-03-08)."""

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
HASH_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
MAX_RIM_BYTES = MAX_COLLATERAL_BYTES
MAX_RESOURCES = 256
MAX_ALTERNATIVES = 16
MAX_INDEX = 254
DIGEST_HEX = 96

_PARSER_OPTIONS = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
}
_SIGNATURE_CONFIG = SignatureConfiguration(
    require_x509=True,
    location="./",
    expect_references=1,
    signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
)


@dataclass(frozen=True)
class Rim:
    """A verified RIM: identity, the version it is for, and its active golden values by index."""

    tag_id: str
    version: str
    product: str
    golden: Mapping[int, tuple[bytes, ...]]
    chain: tuple[CertSummary, ...]

    def mismatches(self, measurements: Mapping[int, bytes]) -> list[int]:
        """Indices whose report value is missing or not one of the RIM's alternatives."""
        return sorted(i for i, allowed in self.golden.items() if measurements.get(i) not in allowed)


def verify_rim(
    xml: bytes,
    *,
    roots: Iterable[str],
    at: datetime,
    skew_seconds: int,
    what: str = "rim",
) -> Rim:
    """Verify a RIM's signer chain (validity at ``at``) and signature; return its signed golden values."""
    if len(xml) > MAX_RIM_BYTES:
        raise Malformed("RIM too large", field=what, expected=f"<={MAX_RIM_BYTES}", actual=len(xml))
    root = _parse(xml, what)
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise Malformed("RIM is not a SWID SoftwareIdentity tag", field=what, actual=str(root.tag)[:80])
    certs = load_der_chain(_keyinfo_certs(root, what), f"{what}.chain")
    chain = verify_chain(certs, roots=roots, at=at, skew_seconds=skew_seconds, what=f"{what}.chain")
    leaf = certs[0]
    # Validity was checked above with the policy's skew; give signxml a time inside the leaf's window.
    inside = min(max(at, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    config = replace(_SIGNATURE_CONFIG, verification_time=inside)
    try:
        result = XMLVerifier().verify(xml, x509_cert=leaf, parser=_parser(), expect_config=config)
    except InvalidCertificate as exc:
        raise CertificateExpired(f"{what} signer certificate rejected: {exc}", field=f"{what}.chain[0]") from exc
    except InvalidInput as exc:
        raise Malformed(f"{what} signature element is malformed: {exc}", field=f"{what}.signature") from exc
    except InvalidSignature as exc:
        raise BadSignature(f"{what} XML signature does not verify: {exc}", field=f"{what}.signature") from exc
    except (SignXMLException, etree.LxmlError, ValueError, TypeError) as exc:
        raise Malformed(f"{what} signature cannot be processed: {exc}", field=f"{what}.signature") from exc
    signed = getattr(result, "signed_xml", None)
    if signed is None or signed.tag != root.tag:
        raise Malformed("RIM signature does not cover the SoftwareIdentity element", field=f"{what}.signature")
    return _read_signed(signed, chain, what)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**_PARSER_OPTIONS)


def _parse(xml: bytes, what: str) -> etree._Element:
    try:
        root = etree.fromstring(xml, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise Malformed(f"{what} is not well-formed XML: {exc}", field=what) from exc
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise Malformed(f"{what} declares a DTD; RIMs must not", field=what)
    if any(True for _ in root.iter(etree.Entity)):
        raise Malformed(f"{what} contains entity references", field=what)
    return root


def _keyinfo_certs(root: etree._Element, what: str) -> list[bytes]:
    sigs = root.findall(f"{{{DSIG_NS}}}Signature")
    if len(sigs) != 1:
        raise Malformed("RIM must carry exactly one enveloped signature", field=f"{what}.signature",
                        expected=1, actual=len(sigs))
    out = []
    for el in sigs[0].findall(f"{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate"):
        try:
            out.append(base64.b64decode("".join((el.text or "").split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise Malformed("RIM KeyInfo certificate is not base64", field=f"{what}.chain") from exc
    return out


def _read_signed(signed: etree._Element, chain: tuple[CertSummary, ...], what: str) -> Rim:
    meta = signed.find(f"{{{SWID_NS}}}Meta")
    if meta is None or not meta.get("colloquialVersion"):
        raise Malformed("RIM lacks Meta/@colloquialVersion", field=f"{what}.meta")
    payload = signed.find(f"{{{SWID_NS}}}Payload")
    if payload is None:
        raise Malformed("RIM lacks a Payload", field=f"{what}.payload")
    resources = payload.findall(f"{{{SWID_NS}}}Resource")
    if len(resources) > MAX_RESOURCES:
        raise Malformed("RIM lists too many resources", field=f"{what}.payload", expected=f"<={MAX_RESOURCES}",
                        actual=len(resources))
    golden: dict[int, tuple[bytes, ...]] = {}
    seen: set[int] = set()
    for res in resources:
        if res.get("type") != "Measurement":
            continue
        index = _small_int(res.get("index"), 0, MAX_INDEX, f"{what}.resource.index")
        if index in seen:
            raise Malformed("RIM lists a measurement index twice", field=f"{what}.resource[{index}]")
        seen.add(index)
        active = (res.get("active") or "").lower()
        if active not in ("true", "false"):
            raise Malformed("RIM resource 'active' is not True/False", field=f"{what}.resource[{index}].active",
                            actual=res.get("active"))
        count = _small_int(res.get("alternatives"), 1, MAX_ALTERNATIVES, f"{what}.resource[{index}].alternatives")
        values = []
        for k in range(count):
            text = res.get(f"{{{HASH_NS}}}Hash{k}")
            if text is None or len(text) != DIGEST_HEX:
                raise Malformed("RIM resource hash missing or not SHA-384 hex",
                                field=f"{what}.resource[{index}].Hash{k}")
            try:
                values.append(bytes.fromhex(text))
            except ValueError as exc:
                raise Malformed("RIM resource hash is not hex", field=f"{what}.resource[{index}].Hash{k}") from exc
        if active == "true":
            golden[index] = tuple(values)
    return Rim(
        tag_id=signed.get("tagId", ""),
        version=meta.get("colloquialVersion", ""),
        product=meta.get("product", ""),
        golden=MappingProxyType(golden),
        chain=chain,
    )


def _small_int(text: str | None, low: int, high: int, field: str) -> int:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 4 or not low <= int(text) <= high:
        raise Malformed("RIM attribute is not an integer in range", field=field, expected=f"{low}..{high}",
                        actual=text)
    return int(text)
