"""Synthetic NVIDIA GPU evidence for tests: the real SPDM layout and real ECDSA P-384, under a test root.

A policy accepts it only when it pins the test root, so it reaches checks the single real vector cannot:
a RIM that matches, an FWID mismatch, CA constraints, a GPU nonce derived from an evidence binding.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner, methods
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from mpctrain.attest.evidence import Evidence

SHA384 = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.2")
DICE = x509.ObjectIdentifier("2.23.133.5.4.1")
NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2099, 1, 1, tzinfo=UTC)
VBIOS_RAW = bytes.fromhex("009f009601000000")  # 96.00.9F.00.01


@asn1.sequence
class Fwid:
    hash_alg: x509.ObjectIdentifier
    digest: bytes


@asn1.sequence
class CompositeDeviceId:
    version: int
    identity: asn1.TLV
    fwid: Fwid


@asn1.sequence
class DiceTcbInfo:
    vendor: Annotated[str | None, asn1.Implicit(0)]
    model: Annotated[str | None, asn1.Implicit(1)]
    version: Annotated[str | None, asn1.Implicit(2)]
    svn: Annotated[int | None, asn1.Implicit(3)]
    layer: Annotated[int | None, asn1.Implicit(4)]
    index: Annotated[int | None, asn1.Implicit(5)]
    fwids: Annotated[list[Fwid] | None, asn1.Implicit(6)]
    flags: Annotated[asn1.BitString | None, asn1.Implicit(7)]
    vendor_info: Annotated[bytes | None, asn1.Implicit(8)]
    type: Annotated[bytes | None, asn1.Implicit(9)]


def composite_ext(fwid: bytes, hash_alg: x509.ObjectIdentifier = SHA384) -> bytes:
    """CompositeDeviceID as NVIDIA's leaf carries it; the identity is a placeholder SEQUENCE."""
    fw = asn1.encode_der(Fwid(hash_alg=hash_alg, digest=fwid))
    return _seq(bytes.fromhex("020101") + bytes.fromhex("3000") + fw)


def tcbinfo_ext(fwid: bytes) -> bytes:
    return asn1.encode_der(DiceTcbInfo(vendor="NVIDIA", model=None, version=None, svn=1, layer=None, index=None,
                                       fwids=[Fwid(hash_alg=SHA384, digest=fwid)], flags=None, vendor_info=None,
                                       type=None))


def _seq(body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test GPU Vendor"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Chain:
    """leaf ← ca ← root, each P-384; ``pem`` is leaf first."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @property
    def certs(self) -> list[x509.Certificate]:
        return [self.leaf, self.ca, self.root]

    @property
    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certs)

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.root.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_chain(
    *,
    leaf_ext: bytes | None,
    ca_constraints: x509.BasicConstraints | None = None,
    root_constraints: x509.BasicConstraints | None = None,
    ca_key_usage: x509.KeyUsage | None = None,
    leaf_curve: ec.EllipticCurve | None = None,
    leaf_hash: hashes.HashAlgorithm | None = None,
    leaf_not_after: datetime = NOT_AFTER,
    prefix: str = "Test",
) -> Chain:
    """Build a chain; the knobs make exactly one link wrong for negative tests."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    ca_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
    root = _cert(_name(f"{prefix} Root"), _name(f"{prefix} Root"), root_key.public_key(), root_key,
                 ca=root_constraints or x509.BasicConstraints(ca=True, path_length=None), ku=_ku(cert_sign=True))
    ca = _cert(_name(f"{prefix} CA"), root.subject, ca_key.public_key(), root_key,
               ca=ca_constraints or x509.BasicConstraints(ca=True, path_length=0),
               ku=ca_key_usage or _ku(cert_sign=True))
    leaf = _cert(_name(f"{prefix} FMC LF"), ca.subject, leaf_key.public_key(), ca_key, ca=None,
                 ku=_ku(cert_sign=False), ext=leaf_ext, not_after=leaf_not_after, hash_alg=leaf_hash)
    return Chain(root_key, root, ca_key, ca, leaf_key, leaf)


def sibling(chain: Chain, leaf_ext: bytes | None, prefix: str = "Test2") -> Chain:
    """Another device under the same root and CA: a second, distinct GPU."""
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _cert(_name(f"{prefix} FMC LF"), chain.ca.subject, leaf_key.public_key(), chain.ca_key, ca=None,
                 ku=_ku(cert_sign=False), ext=leaf_ext)
    return Chain(chain.root_key, chain.root, chain.ca_key, chain.ca, leaf_key, leaf)


def _ku(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _cert(subject, issuer, public_key, signer, *, ca, ku, ext=None, not_after=NOT_AFTER, hash_alg=None):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(ku, critical=True)
    )
    if ca is not None:
        b = b.add_extension(ca, critical=True)
    if ext is not None:
        b = b.add_extension(x509.UnrecognizedExtension(DICE, ext), critical=False)
    return b.sign(signer, hash_alg or hashes.SHA384())


def opaque(
    *,
    driver: bytes = b"550.90.07\x00",
    vbios: bytes = VBIOS_RAW,
    project: bytes = b"1010\x00",
    sku: bytes = b"0200\x00",
    chip: bytes = b"882\x00",
    fwid: bytes = b"\x42" * 48,
    extra: dict[int, bytes] | None = None,
    drop: tuple[int, ...] = (),
) -> list[tuple[int, bytes]]:
    fields = [(3, driver), (6, vbios), (17, project), (18, sku), (15, chip), (20, fwid)]
    fields += list((extra or {}).items())
    return [(t, v) for t, v in fields if t not in drop]


def encode_unsigned(
    nonce: bytes,
    values: list[bytes],
    fields: list[tuple[int, bytes]],
    *,
    request_header: bytes = b"\x11\xe0\x01\xff",
    slot: int = 0,
    response_header: bytes = b"\x11\x60\x00\x00",
    responder_nonce: bytes = b"\x07" * 32,
    indices: list[int] | None = None,
    spec: int = 1,
    dmtf_type: int = 1,
    record_len_delta: int = 0,
    opaque_len_delta: int = 0,
) -> bytes:
    """request ‖ response without signature, every field settable for negative tests."""
    request = request_header + nonce + bytes([slot])
    record = b""
    for k, value in enumerate(values):
        index = indices[k] if indices is not None else k + 1
        record += struct.pack("<BBHBH", index, spec, 3 + len(value), dmtf_type, len(value)) + value
    opaque_raw = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in fields)
    response = (
        response_header
        + bytes([len(values)])
        + (len(record) + record_len_delta).to_bytes(3, "little")
        + record
        + responder_nonce
        + struct.pack("<H", len(opaque_raw) + opaque_len_delta)
        + opaque_raw
    )
    return request + response


def sign(key: ec.EllipticCurvePrivateKey, unsigned: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(unsigned, ec.ECDSA(hashes.SHA384())))
    return unsigned + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def measurements(n: int = 8) -> list[bytes]:
    return [hashlib.sha384(b"block %d" % i).digest() for i in range(n)]


def gpu_evidence(chain: Chain, nonce: bytes, *, values: list[bytes] | None = None, **fields) -> Evidence:
    """Signed synthetic evidence whose FWID matches the chain's leaf unless ``fwid`` is overridden."""
    data = sign(chain.leaf_key, encode_unsigned(nonce, values or measurements(), opaque(**fields)))
    return Evidence(kind="nvidia-gpu", data=data, certs={"chain": chain.pem})


SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
HASH = "http://www.w3.org/2001/04/xmlenc#sha384"


def rim_xml(version: str, golden: dict[int, list[bytes]], *, inactive: dict[int, bytes] | None = None) -> bytes:
    """An unsigned SWID tag shaped like NVIDIA's RIMs."""
    root = etree.Element(f"{{{SWID}}}SoftwareIdentity", nsmap={None: SWID, "ns2": HASH},
                         name="GH100", tagId=f"test-{version}", version="1.0")
    etree.SubElement(root, f"{{{SWID}}}Meta", colloquialVersion=version, product="GH100")
    payload = etree.SubElement(root, f"{{{SWID}}}Payload")
    for index, values in sorted(golden.items()):
        attrs = {"type": "Measurement", "index": str(index), "active": "True", "alternatives": str(len(values)),
                 "name": f"Measurement_{index}", "size": "48"}
        res = etree.SubElement(payload, f"{{{SWID}}}Resource", attrs)
        for k, v in enumerate(values):
            res.set(f"{{{HASH}}}Hash{k}", v.hex())
    for index, value in sorted((inactive or {}).items()):
        res = etree.SubElement(payload, f"{{{SWID}}}Resource", type="Measurement", index=str(index),
                               active="False", alternatives="1")
        res.set(f"{{{HASH}}}Hash0", value.hex())
    return etree.tostring(root)


def sign_rim(xml: bytes, chain: Chain) -> bytes:
    """Enveloped XMLDSig, ECDSA/SHA-384, C14N 1.1, chain in KeyInfo: the algorithms NVIDIA's RIMs use."""
    signer = XMLSigner(method=methods.enveloped, signature_algorithm=SignatureMethod.ECDSA_SHA384,
                       digest_algorithm=DigestAlgorithm.SHA384, c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1)
    certs = [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain.certs]
    signed = signer.sign(etree.fromstring(xml), key=chain.leaf_key, cert=certs)
    return etree.tostring(signed)
