"""AMD SEV-SNP verifier: real Milan vectors end to end, synthetic Genoa/Turin/VLEK chains, mutations, policy knobs."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpctrain.attest import (
    AttestationError,
    BackendNotAllowed,
    BadSignature,
    BindingMismatch,
    CertificateExpired,
    CertificateRevoked,
    Collateral,
    CollateralMissing,
    CollateralStale,
    DebugEnabled,
    Evidence,
    Malformed,
    MeasurementNotAllowed,
    Policy,
    PolicyError,
    PolicyViolation,
    TcbTooLow,
    UntrustedRoot,
    verify_evidence,
)
from mpctrain.attest.roots import AMD_ARK_SHA256
from mpctrain.attest.snp import SnpVerifier, decode_tcb, parse_cert_table, parse_report
from mpctrain.attest.snp.der import read_ia5, read_octets, read_uint

# AMD VCEKs have serial number 0; the verifier silences that warning itself, the tests load them directly too
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

MILAN_V2_MEASUREMENT_PREFIX = "7a1e5c26"
MILAN_V2_REPORT_DATA_PREFIX = "d447b55d"


# --------------------------------------------------------------------------- helpers: real vectors


def _snp(vectors: Path, name: str) -> bytes:
    return (vectors / "snp" / name).read_bytes()


def _evidence(vectors: Path, report: str = "milan_v2_report.bin", vcek: str = "milan_v2_vcek.der",
              chain: str = "ask_ark_milan.pem") -> Evidence:
    return Evidence("snp", _snp(vectors, report), {"vcek": _snp(vectors, vcek), "ask_ark": _snp(vectors, chain)})


def _policy(**snp: object) -> Policy:
    table = {"measurements": "report-only", **snp}
    return Policy.from_dict({"backends": ["snp"], "snp": table})


def _verify(ev: Evidence, at: datetime, expected: bytes | None = None, collateral: Collateral | None = None,
            **snp: object):
    return verify_evidence(ev, expected, _policy(**snp), at, collateral or Collateral())


# --------------------------------------------------------------------------- real vectors


def test_milan_v2_vector_verifies_with_all_claims(vectors: Path, vector_time: datetime) -> None:
    raw = _snp(vectors, "milan_v2_report.bin")
    report_data = raw[0x50:0x90]
    measurement = raw[0x90:0xC0]
    claims = _verify(_evidence(vectors), vector_time, report_data, measurements=[measurement.hex()],
                     min_tcb={"bl": 3, "tee": 0, "snp": 8, "ucode": 115}, vmpl=0, signing_keys=["vcek"],
                     min_abi="0.0", allow_smt=True, chip_ids=[raw[0x1A0:0x1E0].hex()],
                     host_data=[raw[0xC0:0xE0].hex()])
    assert claims.backend == "snp"
    assert claims.product == "Milan"
    assert claims.measurement.hex().startswith(MILAN_V2_MEASUREMENT_PREFIX)
    assert claims.measurement.hex().endswith("cd81841f")
    assert claims.report_data.hex().startswith(MILAN_V2_REPORT_DATA_PREFIX)
    assert len(claims.measurement) == 48 and len(claims.report_data) == 64
    assert claims.debug is False
    assert claims.tcb == {"bl": 3, "tee": 0, "snp": 8, "ucode": 0x73}
    d = claims.details
    assert d["version"] == 2 and d["guest_svn"] == 0 and d["vmpl"] == 0
    assert d["policy"] == {"abi": "0.0", "smt": True, "migrate_ma": False, "debug": False, "single_socket": False,
                           "raw": "0x30000"}
    assert d["signing_key"] == "vcek"
    assert d["chip_id"].startswith("d49554ec") and len(d["chip_id"]) == 128
    assert d["reported_tcb"] == d["current_tcb"] == d["committed_tcb"] == d["launch_tcb"] == claims.tcb
    assert d["current_firmware"] == "1.52.4"
    for key in ("host_data", "family_id", "image_id", "id_key_digest", "author_key_digest", "report_id"):
        assert isinstance(d[key], str)
    assert [c.subject.split(",")[0] for c in claims.chain] == ["CN=SEV-VCEK", "CN=SEV-Milan", "CN=ARK-Milan"]
    assert claims.chain[-1].sha256 == AMD_ARK_SHA256["Milan"]
    json.dumps(claims.to_json_obj())


def test_milan_v3_vector_verifies_product_from_cpuid(vectors: Path, vector_time: datetime) -> None:
    ev = _evidence(vectors, "milan_v3_report.bin", "milan_v3_vcek.der")
    claims = _verify(ev, vector_time)
    assert claims.product == "Milan"
    assert claims.details["version"] == 3
    assert claims.details["cpuid"] == {"family": 0x19, "model": 0x01, "stepping": 0x01}
    assert claims.measurement.hex().startswith("195b01b7") and claims.measurement.hex().endswith("012deaa3")
    assert claims.report_data.hex().startswith("a7ca989b") and claims.report_data[32:] == bytes(32)
    assert claims.tcb == {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}


def test_debug_vector_signature_valid_but_rejected(vectors: Path, vector_time: datetime) -> None:
    ev = _evidence(vectors, "milan_v2_debug_report.bin", "milan_v2_debug_vcek.der")
    with pytest.raises(DebugEnabled):
        _verify(ev, vector_time)
    claims = _verify(ev, vector_time, allow_debug=True)  # the signature and chain themselves are fine
    assert claims.debug and claims.details["policy"]["debug"]
    assert claims.report_data[:5] == bytes.fromhex("0102030405") and not any(claims.report_data[5:])


@pytest.mark.parametrize("vcek", ["invalid_vcek_new.der", "invalid_vcek_legacy.der"])
def test_invalid_vceks_rejected(vectors: Path, vector_time: datetime, vcek: str) -> None:
    with pytest.raises(BadSignature) as err:
        _verify(_evidence(vectors, vcek=vcek), vector_time)
    assert err.value.field == "leaf.signature"
    with pytest.raises(BadSignature):  # failures are never cached
        _verify(_evidence(vectors, vcek=vcek), vector_time)


def test_a_vcek_with_a_duplicated_extension_is_a_typed_refusal(vectors: Path, vector_time: datetime) -> None:
    """cryptography raises DuplicateExtension (not a ValueError) for such a certificate: it must still surface
    as an AttestationError, like every other malformed evidence, never as a raw exception."""
    vcek = bytearray(_snp(vectors, "milan_v2_vcek.der"))
    tee_spl = bytes.fromhex("060a2b060104019c78010302")  # OID 1.3.6.1.4.1.3704.1.3.2
    at = vcek.find(tee_spl)
    assert at > 0
    vcek[at + len(tee_spl) - 1] = 0x01  # now 1.3.6.1.4.1.3704.1.3.1, which the certificate already has
    ev = Evidence("snp", _snp(vectors, "milan_v2_report.bin"),
                  {"vcek": bytes(vcek), "ask_ark": _snp(vectors, "ask_ark_milan.pem")})
    with pytest.raises(AttestationError):
        _verify(ev, vector_time)


def test_vcek_of_another_report_rejected(vectors: Path, vector_time: datetime) -> None:
    with pytest.raises(BadSignature) as err:
        _verify(_evidence(vectors, vcek="milan_v2_debug_vcek.der"), vector_time)
    assert err.value.field == "signature"


@pytest.mark.parametrize(
    ("name", "product"),
    [
        ("ask_ark_milan.pem", "Milan"),
        ("ask_ark_genoa.pem", "Genoa"),
        ("ask_ark_turin_vcek.pem", "Turin"),
        ("ask_ark_milan_vlek.pem", "Milan"),
        ("ask_ark_genoa_vlek.pem", "Genoa"),
        ("ask_ark_turin_vlek.pem", "Turin"),
    ],
)
def test_ark_pins_match_roots(vectors: Path, name: str, product: str) -> None:
    certs = x509.load_pem_x509_certificates(_snp(vectors, name))
    ark = certs[-1]
    assert hashlib.sha256(ark.public_bytes(serialization.Encoding.DER)).hexdigest() == AMD_ARK_SHA256[product]
    assert ark.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"ARK-{product}"
    ask_cn = certs[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert ask_cn == (f"SEV-VLEK-{product}" if "vlek" in name else f"SEV-{product}")


def test_milan_report_with_genoa_chain_rejected(vectors: Path, vector_time: datetime) -> None:
    with pytest.raises(UntrustedRoot) as err:
        _verify(_evidence(vectors, chain="ask_ark_genoa.pem"), vector_time)
    assert err.value.actual == AMD_ARK_SHA256["Genoa"]


def test_milan_ask_under_genoa_ark_rejected(vectors: Path, vector_time: datetime) -> None:
    milan = x509.load_pem_x509_certificates(_snp(vectors, "ask_ark_milan.pem"))
    genoa = x509.load_pem_x509_certificates(_snp(vectors, "ask_ark_genoa.pem"))
    der = serialization.Encoding.DER
    ev = Evidence("snp", _snp(vectors, "milan_v2_report.bin"), {
        "vcek": _snp(vectors, "milan_v2_vcek.der"), "ask": milan[0].public_bytes(der), "ark": genoa[1].public_bytes(der)
    })
    with pytest.raises(UntrustedRoot):
        _verify(ev, vector_time)


def test_vlek_chain_for_vcek_report_rejected(vectors: Path, vector_time: datetime) -> None:
    with pytest.raises(UntrustedRoot) as err:
        _verify(_evidence(vectors, chain="ask_ark_milan_vlek.pem"), vector_time)
    assert err.value.field == "ask.subject"


def test_root_not_in_policy_rejected(vectors: Path, vector_time: datetime) -> None:
    with pytest.raises(UntrustedRoot) as err:
        _verify(_evidence(vectors), vector_time, roots=[AMD_ARK_SHA256["Genoa"], AMD_ARK_SHA256["Turin"]])
    assert err.value.field == "ark.sha256"


def test_separate_ask_and_ark_pem(vectors: Path, vector_time: datetime) -> None:
    milan = x509.load_pem_x509_certificates(_snp(vectors, "ask_ark_milan.pem"))
    pem = serialization.Encoding.PEM
    vcek_pem = x509.load_der_x509_certificate(_snp(vectors, "milan_v2_vcek.der")).public_bytes(pem)
    ev = Evidence("snp", _snp(vectors, "milan_v2_report.bin"),
                  {"vcek": vcek_pem, "ask": milan[0].public_bytes(pem), "ark": milan[1].public_bytes(pem)})
    assert _verify(ev, vector_time).product == "Milan"


@pytest.mark.parametrize(
    ("at", "field"),
    [
        (datetime(2060, 1, 1, tzinfo=UTC), "ark.not_after"),
        (datetime(2031, 1, 1, tzinfo=UTC), "leaf.not_after"),
        (datetime(2021, 1, 1, tzinfo=UTC), "leaf.not_before"),
        (datetime(2019, 1, 1, tzinfo=UTC), "ark.not_before"),
    ],
)
def test_certificates_outside_validity_rejected(vectors: Path, at: datetime, field: str) -> None:
    with pytest.raises(CertificateExpired) as err:
        _verify(_evidence(vectors), at)
    assert err.value.field == field


def test_clock_skew_tolerated_at_validity_edge(vectors: Path) -> None:
    vcek = x509.load_der_x509_certificate(_snp(vectors, "milan_v2_vcek.der"))
    just_before = vcek.not_valid_before_utc - timedelta(seconds=60)
    assert _verify(_evidence(vectors), just_before).product == "Milan"
    with pytest.raises(CertificateExpired):
        _verify(_evidence(vectors), vcek.not_valid_before_utc - timedelta(seconds=301))
    naive = datetime(2026, 11, 22)  # naive times are read as UTC
    assert SnpVerifier().verify(_evidence(vectors), policy=_policy().backend("snp"), at=naive,
                                collateral=Collateral()).product == "Milan"


# --------------------------------------------------------------------------- common checks end to end


def test_common_checks_end_to_end(vectors: Path, vector_time: datetime) -> None:
    ev = _evidence(vectors)
    with pytest.raises(BindingMismatch):
        _verify(ev, vector_time, bytes(64))
    with pytest.raises(MeasurementNotAllowed):
        _verify(ev, vector_time, measurements=["00" * 48])
    with pytest.raises(TcbTooLow) as err:
        _verify(ev, vector_time, min_tcb={"snp": 9})
    assert err.value.field == "tcb.snp"
    with pytest.raises(TcbTooLow) as err:
        _verify(ev, vector_time, min_tcb={"fmc": 1})  # Milan has no FMC component
    assert err.value.field == "tcb.fmc"
    with pytest.raises(BackendNotAllowed):
        verify_evidence(ev, None, Policy.from_dict({"backends": ["tdx"]}), vector_time, Collateral())
    with pytest.raises(BackendNotAllowed):
        SnpVerifier().verify(Evidence("tdx", ev.data, ev.certs), policy=_policy().backend("snp"), at=vector_time,
                             collateral=Collateral())


# --------------------------------------------------------------------------- SNP policy knobs


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"vmpl": 1}, "vmpl"),
        ({"allow_smt": False}, "platform_info.smt_enabled"),
        ({"chip_ids": ["00" * 64]}, "chip_id"),
        ({"host_data": ["11" * 32]}, "host_data"),
        ({"signing_keys": ["vlek"]}, "signing_keys"),
        ({"min_abi": "1.0"}, "policy.abi"),
        ({"id_key_digests": ["22" * 48]}, "id_key_digests"),
        ({"author_key_digests": ["33" * 48]}, "author_key_digests"),
    ],
)
def test_snp_policy_knobs_reject(vectors: Path, vector_time: datetime, knobs: dict, field: str) -> None:
    with pytest.raises(PolicyViolation) as err:
        _verify(_evidence(vectors), vector_time, **knobs)
    assert err.value.field == field
    assert err.value.expected is not None and err.value.actual is not None
    assert field.split(".")[-1] in str(err.value)


@pytest.mark.parametrize(
    "knobs",
    [
        {"vmpl": "0"},
        {"vmpl": 4},
        {"allow_smt": "no"},
        {"allow_migration_agent": 1},
        {"chip_ids": "abcd"},
        {"chip_ids": ["zz"]},
        {"chip_ids": ["abcd"]},
        {"host_data": ["00" * 31]},
        {"signing_keys": ["vcek", "psp"]},
        {"signing_keys": []},
        {"min_abi": "1"},
        {"min_abi": 1.0},
        {"vmpI": 0},
    ],
)
def test_bad_snp_policy_options_are_policy_errors(vectors: Path, vector_time: datetime, knobs: dict) -> None:
    with pytest.raises(PolicyError):
        _verify(_evidence(vectors), vector_time, **knobs)


# --------------------------------------------------------------------------- collateral cache


def test_certificates_from_collateral_cache(vectors: Path, vector_time: datetime, tmp_path: Path) -> None:
    raw = _snp(vectors, "milan_v2_report.bin")
    vcek_name = f"snp/Milan/vcek/{raw[0x1A0:0x1E0].hex()}-{raw[0x180:0x188].hex()}.der"
    blobs = {vcek_name: _snp(vectors, "milan_v2_vcek.der"), "snp/Milan/ask_ark.pem": _snp(vectors, "ask_ark_milan.pem")}
    claims = _verify(Evidence("snp", raw), vector_time, collateral=Collateral(blobs))
    assert claims.product == "Milan"
    # a directory cache works the same (files are written to a temporary directory, never into the repo)
    for name, blob in blobs.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    assert _verify(Evidence("snp", raw), vector_time, collateral=Collateral(directory=tmp_path)).product == "Milan"
    with pytest.raises(CollateralMissing) as err:
        _verify(Evidence("snp", raw), vector_time, collateral=Collateral({"snp/Milan/ask_ark.pem": b"x"}))
    assert vcek_name in err.value.expected
    with pytest.raises(CollateralMissing) as err:
        _verify(Evidence("snp", raw), vector_time, collateral=Collateral({vcek_name: blobs[vcek_name]}))
    assert err.value.field == "ask_ark"
    v3 = _snp(vectors, "milan_v3_report.bin")
    with pytest.raises(CollateralMissing) as err:  # v3 names its product: only that product's path is tried
        _verify(Evidence("snp", v3), vector_time)
    assert all(n.startswith("snp/Milan/") for n in err.value.expected)


@pytest.mark.parametrize(
    "certs",
    [
        {"vcek": b"garbage"},
        {"vcek": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
        {"vcek": b"\x30" * (70 << 10)},
        {"ask_ark": b"garbage"},
        {"ask_ark": b""},
    ],
)
def test_garbage_certificates_are_malformed(vectors: Path, vector_time: datetime, certs: dict) -> None:
    ev = _evidence(vectors)
    ev = Evidence("snp", ev.data, {**ev.certs, **certs})
    with pytest.raises(Malformed):
        _verify(ev, vector_time)


def test_single_cert_chain_bundle_is_malformed(vectors: Path, vector_time: datetime) -> None:
    ark_only = _snp(vectors, "ask_ark_milan.pem").split(b"-----END CERTIFICATE-----\n", 1)[1]
    ev = _evidence(vectors)
    with pytest.raises(Malformed):
        _verify(Evidence("snp", ev.data, {**ev.certs, "ask_ark": ark_only}), vector_time)


# --------------------------------------------------------------------------- mutations, truncation, garbage

FIELDS = {  # (offset, size) of every field of the signed area, reserved gaps included
    "version": (0x000, 4), "guest_svn": (0x004, 4), "policy": (0x008, 8), "family_id": (0x010, 16),
    "image_id": (0x020, 16), "vmpl": (0x030, 4), "signature_algo": (0x034, 4), "current_tcb": (0x038, 8),
    "platform_info": (0x040, 8), "key_info": (0x048, 4), "reserved_04c": (0x04C, 4), "report_data": (0x050, 64),
    "measurement": (0x090, 48), "host_data": (0x0C0, 32), "id_key_digest": (0x0E0, 48),
    "author_key_digest": (0x110, 48), "report_id": (0x140, 32), "report_id_ma": (0x160, 32),
    "reported_tcb": (0x180, 8), "cpuid": (0x188, 3), "reserved_18b": (0x18B, 21), "chip_id": (0x1A0, 64),
    "committed_tcb": (0x1E0, 8), "current_version": (0x1E8, 4), "committed_version": (0x1EC, 4),
    "launch_tcb": (0x1F0, 8), "reserved_1f8": (0x1F8, 168),
    "signature_r": (0x2A0, 72), "signature_s": (0x2E8, 72), "signature_reserved": (0x330, 368),
}


def test_field_table_covers_the_whole_report() -> None:
    covered = sorted(FIELDS.values())
    pos = 0
    for off, size in covered:
        assert off == pos
        pos += size
    assert pos == 1184


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_field_mutation_rejected(vectors: Path, vector_time: datetime, field: str) -> None:
    good = _evidence(vectors)
    off, size = FIELDS[field]
    for pos, flip in ((off, 0x01), (off + size - 1, 0x80), (off + size // 2, 0xFF)):
        data = bytearray(good.data)
        data[pos] ^= flip
        try:
            _verify(Evidence("snp", bytes(data), good.certs), vector_time)
        except AttestationError:
            continue
        pytest.fail(f"mutation of {field} at {pos:#x} accepted")


@pytest.mark.parametrize("size", [0, 1, 100, 0x2A0, 1183, 1185, 1184 * 2, 1 << 16])
def test_wrong_length_is_malformed(vectors: Path, vector_time: datetime, size: int) -> None:
    data = (_snp(vectors, "milan_v2_report.bin") * 64)[:size]
    with pytest.raises(Malformed) as err:
        _verify(Evidence("snp", data, _evidence(vectors).certs), vector_time)
    assert err.value.field == "report.length"


@pytest.mark.parametrize("seed", range(8))
def test_random_garbage_is_malformed(vectors: Path, vector_time: datetime, seed: int) -> None:
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(1184 if seed % 2 else rng.randrange(2000)))
    with pytest.raises(Malformed):
        _verify(Evidence("snp", data, _evidence(vectors).certs), vector_time)


def test_parse_report_rejects_non_bytes() -> None:
    with pytest.raises(Malformed):
        parse_report("not bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- synthetic AMD chain

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = datetime(2030, 1, 1, tzinfo=UTC)
AMD = "1.3.6.1.4.1.3704.1"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices")])


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _cert(subject: str, issuer: str, pub, key, *, ca: bool, exts: dict[str, bytes] | None = None,
          rsa_padding=PSS, not_before: datetime = T0, not_after: datetime = T1) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(pub)
         .serial_number(1).not_valid_before(not_before).not_valid_after(not_after))
    b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    for oid, value in (exts or {}).items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    kw = {"rsa_padding": rsa_padding} if isinstance(key, rsa.RSAPrivateKey) else {}
    return b.sign(key, hashes.SHA384(), **kw)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _tcb_bytes(product: str, *, bl: int, tee: int, snp: int, ucode: int, fmc: int = 0) -> bytes:
    if product == "Turin":
        return bytes([fmc, bl, tee, snp, 0, 0, 0, ucode])
    return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])


CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}
TCB = {"bl": 9, "tee": 1, "snp": 23, "ucode": 0xD5, "fmc": 2}


@dataclass
class Synth:
    """A self-made AMD-like PKI: RSA-PSS ARK/ASK(ASVK) and a P-384 VCEK/VLEK with the AMD extensions."""

    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    leaf_key: ec.EllipticCurvePrivateKey

    def chain(self, product: str, kind: str = "vcek", *, chip: bytes, tcb: bytes, leaf_exts: dict | None = None,
              leaf_cn: str | None = None, leaf_key=None, ark_ca: bool = True, leaf_padding=PSS,
              product_name: str | None = None, ask_cn: str | None = None,
              ) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
        ark_cn = f"ARK-{product}"
        ask_cn = ask_cn or (f"SEV-{product}" if kind == "vcek" else f"SEV-VLEK-{product}")
        ark = _cert(ark_cn, ark_cn, self.ark_key.public_key(), self.ark_key, ca=ark_ca)
        ask = _cert(ask_cn, ark_cn, self.ask_key.public_key(), self.ark_key, ca=True)
        t = decode_tcb(tcb, product).as_dict()
        exts = {f"{AMD}.3.{n}": _der_int(t[c]) for c, n in (("bl", 1), ("tee", 2), ("snp", 3), ("ucode", 8))
                if c in t}
        if "fmc" in t:
            exts[f"{AMD}.3.9"] = _der_int(t["fmc"])
        name = (product_name or f"{product}-B0").encode()
        exts[f"{AMD}.2"] = bytes([0x16, len(name)]) + name
        if kind == "vcek":
            exts[f"{AMD}.4"] = chip[:8] if product == "Turin" else chip
        exts.update(leaf_exts or {})
        exts = {k: v for k, v in exts.items() if v is not None}
        key = leaf_key or self.leaf_key
        leaf = _cert(leaf_cn or ("SEV-VCEK" if kind == "vcek" else "SEV-VLEK"), ask_cn, key.public_key(),
                     self.ask_key, ca=False, exts=exts, rsa_padding=leaf_padding)
        return leaf, ask, ark

    def report(self, product: str, *, version: int = 3, kind: str = "vcek", policy: int = 0x30000,
               key_info: int | None = None, chip: bytes = bytes(range(64)), vmpl: int = 0,
               cpuid: tuple[int, int, int] | None = None, sign_key=None) -> bytes:
        if product == "Turin":
            chip = chip[:8] + bytes(56)
        if kind == "vlek":
            chip = bytes(64)
        tcb = _tcb_bytes(product, **TCB)
        r = bytearray(1184)
        struct.pack_into("<IIQ", r, 0, version, 7, policy)
        r[0x10:0x20] = b"F" * 16
        r[0x20:0x30] = b"I" * 16
        struct.pack_into("<II", r, 0x30, vmpl, 1)
        r[0x38:0x40] = tcb
        struct.pack_into("<Q", r, 0x40, 0)
        struct.pack_into("<I", r, 0x48, key_info if key_info is not None else (0 if kind == "vcek" else 1) << 2)
        r[0x50:0x90] = hashlib.sha512(b"binding").digest()
        r[0x90:0xC0] = hashlib.sha384(b"measurement").digest()
        r[0xC0:0xE0] = b"H" * 32
        r[0x180:0x188] = tcb
        if version >= 3:
            r[0x188:0x18B] = bytes(cpuid or CPUID[product])
        r[0x1A0:0x1E0] = chip
        r[0x1E0:0x1E8] = tcb
        r[0x1E8:0x1F0] = bytes([4, 55, 1, 0, 4, 55, 1, 0])
        r[0x1F0:0x1F8] = tcb
        if version >= 5:
            struct.pack_into("<QQ", r, 0x1F8, 3, 5)
        der_sig = (sign_key or self.leaf_key).sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384()))
        rr, ss = decode_dss_signature(der_sig)
        r[0x2A0:0x2E8] = rr.to_bytes(72, "little")
        r[0x2E8:0x330] = ss.to_bytes(72, "little")
        return bytes(r)

    def evidence(self, product: str, *, kind: str = "vcek", chain_kw: dict | None = None, **report_kw) -> Evidence:
        data = self.report(product, kind=kind, **report_kw)
        leaf, ask, ark = self.chain(product, kind, chip=data[0x1A0:0x1E0], tcb=data[0x180:0x188],
                                    **(chain_kw or {}))
        return Evidence("snp", data, {kind: _der(leaf), "ask_ark": _pem(ask, ark)})


@pytest.fixture(scope="module")
def synth() -> Synth:
    return Synth(
        ark_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ask_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        leaf_key=ec.generate_private_key(ec.SECP384R1()),
    )


def _root_of(ev: Evidence) -> str:
    ark = x509.load_pem_x509_certificates(ev.certs["ask_ark"])[-1]
    return hashlib.sha256(_der(ark)).hexdigest()


def _verify_synth(ev: Evidence, **snp: object):
    return _verify(ev, datetime(2026, 11, 22, tzinfo=UTC), roots=[_root_of(ev)], **snp)


@pytest.mark.parametrize(
    ("product", "version", "kind"),
    [
        ("Genoa", 3, "vcek"),
        ("Genoa", 4, "vcek"),
        ("Genoa", 5, "vcek"),
        ("Turin", 3, "vcek"),
        ("Turin", 5, "vcek"),
        ("Milan", 5, "vcek"),
        ("Genoa", 3, "vlek"),
        ("Turin", 5, "vlek"),
        ("Milan", 2, "vlek"),
        ("Genoa", 2, "vcek"),
    ],
)
def test_synthetic_products_versions_and_vlek(synth: Synth, product: str, version: int, kind: str) -> None:
    ev = synth.evidence(product, version=version, kind=kind)
    claims = _verify_synth(ev, signing_keys=[kind])
    assert claims.product == product
    assert claims.details["version"] == version
    assert claims.details["signing_key"] == kind
    expected_tcb = {c: TCB[c] for c in ("bl", "tee", "snp", "ucode")}
    if product == "Turin":
        expected_tcb["fmc"] = TCB["fmc"]
        assert claims.details["chip_id"] == ("00" * 8 if kind == "vlek" else bytes(range(8)).hex())
    assert claims.tcb == expected_tcb
    assert claims.details["reported_tcb"] == claims.details["launch_tcb"] == expected_tcb
    if version >= 5:
        assert claims.details["launch_mit_vector"] == 3 and claims.details["current_mit_vector"] == 5
    else:
        assert "launch_mit_vector" not in claims.details
    expected_ask = f"CN=SEV-{product}" if kind == "vcek" else f"CN=SEV-VLEK-{product}"
    assert expected_ask in claims.chain[1].subject.split(",")
    assert claims.details["cpuid"]["family"] == (CPUID[product][0] if version >= 3 else 0)
    json.dumps(claims.to_json_obj())


def test_synthetic_turin_min_tcb_fmc(synth: Synth) -> None:
    ev = synth.evidence("Turin", version=5)
    assert _verify_synth(ev, min_tcb={"fmc": 2, "snp": 23}).tcb["fmc"] == 2
    with pytest.raises(TcbTooLow) as err:
        _verify_synth(ev, min_tcb={"fmc": 3})
    assert err.value.field == "tcb.fmc"


def test_synthetic_root_needs_policy_pin(synth: Synth, vector_time: datetime) -> None:
    ev = synth.evidence("Genoa")
    with pytest.raises(UntrustedRoot) as err:
        _verify(ev, vector_time)  # default policy: AMD's real ARKs only
    assert err.value.field == "ark.sha256"


def test_synthetic_vlek_chain_from_collateral(synth: Synth) -> None:
    ev = synth.evidence("Genoa", kind="vlek")
    blobs = {"snp/Genoa/vlek.pem": _pem(x509.load_der_x509_certificate(ev.certs["vlek"])),
             "snp/Genoa/asvk_ark.pem": ev.certs["ask_ark"]}
    claims = _verify(Evidence("snp", ev.data), datetime(2026, 11, 22, tzinfo=UTC), roots=[_root_of(ev)],
                     collateral=Collateral(blobs))
    assert claims.details["signing_key"] == "vlek"


def test_synthetic_turin_vcek_from_collateral_uses_8_byte_hwid(synth: Synth) -> None:
    ev = synth.evidence("Turin", version=5)
    name = f"snp/Turin/vcek/{bytes(range(8)).hex()}-{ev.data[0x180:0x188].hex()}.der"
    claims = _verify(Evidence("snp", ev.data), datetime(2026, 11, 22, tzinfo=UTC), roots=[_root_of(ev)],
                     collateral=Collateral({name: ev.certs["vcek"], "snp/Turin/ask_ark.pem": ev.certs["ask_ark"]}))
    assert claims.product == "Turin"
    assert _verify_synth(ev, chip_ids=[bytes(range(8)).hex()]).product == "Turin"


@pytest.mark.parametrize(
    ("product", "ext", "value", "error", "field"),
    [
        ("Genoa", "4", bytes(64), BadSignature, "vcek.hwid"),
        ("Turin", "4", b"\x01" * 8, BadSignature, "vcek.hwid"),
        ("Genoa", "4", None, Malformed, "vcek.hwid"),
        ("Genoa", "4", b"\x04\x05ab", Malformed, "vcek.hwid"),
        ("Genoa", "4", b"\x04\x02ab", BadSignature, "vcek.hwid"),
        ("Genoa", "3.3", _der_int(22), BadSignature, "vcek.tcb.snp"),
        ("Genoa", "3.1", _der_int(10), BadSignature, "vcek.tcb.bl"),
        ("Turin", "3.9", _der_int(1), BadSignature, "vcek.tcb.fmc"),
        ("Turin", "3.9", None, Malformed, "vcek.tcb.fmc"),
        ("Genoa", "3.8", b"\x02\x01", Malformed, "vcek.tcb.ucode"),
        ("Genoa", "3.8", b"\x02\x02\x00\x05", Malformed, "vcek.tcb.ucode"),
        ("Genoa", "3.8", b"\x02\x01\xff", Malformed, "vcek.tcb.ucode"),
        ("Genoa", "3.8", b"\x04\x01\x05", Malformed, "vcek.tcb.ucode"),
        ("Genoa", "2", b"\x16\x08Milan-B0", UntrustedRoot, "vcek.product_name"),
        ("Genoa", "2", b"\x16\x08Naples-0", UntrustedRoot, "vcek.product_name"),
        ("Genoa", "2", b"\x04\x08Genoa-B0", Malformed, "vcek.product_name"),
    ],
)
def test_synthetic_vcek_extension_mismatch(synth: Synth, product: str, ext: str, value: bytes | None,
                                           error: type[AttestationError], field: str) -> None:
    ev = synth.evidence(product, version=5, chain_kw={"leaf_exts": {f"{AMD}.{ext}": value}})
    with pytest.raises(error) as err:
        _verify_synth(ev)
    assert err.value.field == field


def test_synthetic_siena_product_name_is_genoa(synth: Synth) -> None:
    ev = synth.evidence("Genoa", version=2, chain_kw={"product_name": "Siena-A0"})
    assert _verify_synth(ev).product == "Genoa"


def test_synthetic_hwid_wrapped_in_octet_string_accepted(synth: Synth) -> None:
    chip = bytes(range(64))
    ev = synth.evidence("Genoa", chain_kw={"leaf_exts": {f"{AMD}.4": b"\x04\x40" + chip}})
    assert _verify_synth(ev).details["chip_id"] == chip.hex()


def test_synthetic_signing_key_and_cn_disagree(synth: Synth) -> None:
    ev = synth.evidence("Genoa", kind="vlek", chain_kw={"leaf_cn": "SEV-VCEK"})
    with pytest.raises(BadSignature) as err:
        _verify_synth(ev)
    assert err.value.field == "signing_key"


def test_synthetic_vlek_report_with_vcek_only_is_missing(synth: Synth) -> None:
    ev = synth.evidence("Genoa", kind="vlek")
    with pytest.raises(CollateralMissing) as err:
        _verify_synth(Evidence("snp", ev.data, {"vcek": ev.certs["vlek"], "ask_ark": ev.certs["ask_ark"]}))
    assert err.value.field == "vlek"


def test_synthetic_leaf_must_be_p384(synth: Synth) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    ev = synth.evidence("Genoa", chain_kw={"leaf_key": p256}, sign_key=p256)
    with pytest.raises(BadSignature) as err:
        _verify_synth(ev)
    assert err.value.field == "leaf.public_key"


def test_synthetic_link_not_pss_rejected(synth: Synth) -> None:
    ev = synth.evidence("Genoa", chain_kw={"leaf_padding": padding.PKCS1v15()})
    with pytest.raises(BadSignature) as err:
        _verify_synth(ev)
    assert err.value.field == "leaf.signature"


def test_synthetic_ark_must_be_ca(synth: Synth) -> None:
    ev = synth.evidence("Genoa", chain_kw={"ark_ca": False})
    with pytest.raises(UntrustedRoot) as err:
        _verify_synth(ev)
    assert err.value.field == "basic_constraints"


def test_synthetic_report_signed_by_other_key_rejected(synth: Synth) -> None:
    ev = synth.evidence("Turin", version=5, sign_key=ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(BadSignature) as err:
        _verify_synth(ev)
    assert err.value.field == "signature"


def test_synthetic_cpuid_and_chain_product_disagree(synth: Synth) -> None:
    data = synth.report("Genoa", cpuid=CPUID["Milan"])
    leaf, ask, ark = synth.chain("Genoa", chip=data[0x1A0:0x1E0], tcb=data[0x180:0x188])
    ev = Evidence("snp", data, {"vcek": _der(leaf), "ask_ark": _pem(ask, ark)})
    with pytest.raises(UntrustedRoot) as err:
        _verify_synth(ev)
    assert err.value.field == "product"


@pytest.mark.parametrize("cpuid", [(0x17, 0x31, 0), (0x19, 0x21, 0), (0x18, 0, 0)])
def test_synthetic_unknown_cpu_is_malformed(synth: Synth, cpuid: tuple[int, int, int]) -> None:
    with pytest.raises(Malformed) as err:
        _verify_synth(synth.evidence("Genoa", cpuid=cpuid))
    assert err.value.field == "cpuid"


def test_synthetic_v3_without_cpuid_falls_back_to_certificate(synth: Synth) -> None:
    assert _verify_synth(synth.evidence("Genoa", cpuid=(0, 0, 0))).product == "Genoa"


def test_synthetic_v2_product_from_issuer_without_product_name(synth: Synth) -> None:
    ev = synth.evidence("Genoa", version=2, chain_kw={"leaf_exts": {f"{AMD}.2": None}})
    assert _verify_synth(ev).product == "Genoa"


def test_synthetic_v2_without_any_product_is_malformed(synth: Synth) -> None:
    ev = synth.evidence("Genoa", version=2, chain_kw={"leaf_exts": {f"{AMD}.2": None}, "ask_cn": "SEV-Naples"})
    with pytest.raises(Malformed) as err:
        _verify_synth(ev)
    assert err.value.field == "product"


@pytest.mark.parametrize(
    ("report_kw", "error", "field"),
    [
        ({"policy": 0x30000 | (1 << 18)}, PolicyViolation, "policy.migrate_ma"),
        ({"key_info": 0x2}, BadSignature, "key_info.mask_chip_key"),
        ({"key_info": 7 << 2}, Malformed, "signing_key"),
        ({"key_info": 3 << 2}, Malformed, "signing_key"),
        ({"version": 1}, Malformed, "version"),
        ({"version": 6}, Malformed, "version"),
        ({"vmpl": 2}, PolicyViolation, "vmpl"),
    ],
)
def test_synthetic_report_fields_rejected(synth: Synth, report_kw: dict, error: type[AttestationError],
                                          field: str) -> None:
    ev = synth.evidence("Genoa", **report_kw)
    with pytest.raises(error) as err:
        _verify_synth(ev, vmpl=0)
    assert err.value.field == field


def test_synthetic_migration_agent_and_smt_allowed_by_policy(synth: Synth) -> None:
    ev = synth.evidence("Genoa", policy=0x30000 | (1 << 18) | (1 << 20) | (1 << 8) | 5)
    claims = _verify_synth(ev, allow_migration_agent=True, min_abi="1.5")
    assert claims.details["policy"]["migrate_ma"] and claims.details["policy"]["single_socket"]
    assert claims.details["policy"]["abi"] == "1.5"
    with pytest.raises(PolicyViolation):
        _verify_synth(ev, allow_migration_agent=True, min_abi="1.6")
    with pytest.raises(PolicyViolation) as err:  # platform SMT off, but the guest policy allows SMT
        _verify_synth(ev, allow_migration_agent=True, allow_smt=False)
    assert err.value.field == "policy.smt"
    no_smt = synth.evidence("Genoa", policy=0x20000)
    assert _verify_synth(no_smt, allow_smt=False).details["policy"]["smt"] is False


def test_synthetic_expired_chain(synth: Synth) -> None:
    ev = synth.evidence("Turin", version=5)
    for at in (datetime(2024, 6, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)):
        with pytest.raises(CertificateExpired):
            _verify(ev, at, roots=[_root_of(ev)])


# --------------------------------------------------------------------------- parser units


def test_tcb_layouts() -> None:
    raw = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert decode_tcb(raw, "Milan").as_dict() == {"bl": 1, "tee": 2, "snp": 7, "ucode": 8}
    assert decode_tcb(raw, "Genoa").as_dict() == {"bl": 1, "tee": 2, "snp": 7, "ucode": 8}
    assert decode_tcb(raw, "Turin").as_dict() == {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 8}
    with pytest.raises(Malformed):
        decode_tcb(raw, "Naples")
    with pytest.raises(Malformed):
        decode_tcb(raw[:7], "Milan")


def test_parse_real_report_fields(vectors: Path) -> None:
    r = parse_report(_snp(vectors, "milan_v2_report.bin"))
    assert (r.version, r.vmpl, r.signing_key_name, r.abi, r.debug) == (2, 0, "vcek", (0, 0), False)
    assert r.cpuid_product is None and r.launch_mit_vector is None
    assert r.platform_bits()["smt_enabled"] is True
    r3 = parse_report(_snp(vectors, "milan_v3_report.bin"))
    assert r3.cpuid_product == "Milan"


def test_der_reader_bounds() -> None:
    assert read_uint(b"\x02\x01\x05", field="x") == 5
    assert read_uint(b"\x02\x02\x00\xdb", field="x") == 0xDB
    assert read_ia5(b"\x16\x03abc", field="x") == "abc"
    assert read_octets(b"\x04\x81\x80" + bytes(128), field="x") == bytes(128)
    assert read_octets(b"\x04\x82\x01\x00" + bytes(256), field="x") == bytes(256)
    bad = [
        (read_uint, b""), (read_uint, b"\x02"), (read_uint, b"\x02\x00"), (read_uint, b"\x02\x01\x80"),
        (read_uint, b"\x02\x02\x00\x01"), (read_uint, b"\x02\x03\x01\x00\x00"), (read_uint, b"\x02\x02\x05"),
        (read_uint, b"\x02\x01\x05\x00"), (read_octets, b"\x04\x81\x05" + bytes(5)),
        (read_octets, b"\x04\x82\x00\x90" + bytes(0x90)), (read_octets, b"\x04\x83\x00\x00\x01\x00"),
        (read_octets, b"\x04\x82\x01"), (read_octets, b"\x04\x80"), (read_ia5, b"\x16\x01\xff"),
        (read_ia5, b"\x04\x01a"),
    ]
    for fn, data in bad:
        with pytest.raises(Malformed):
            fn(data, field="x")


def test_unparseable_leaf_key_is_malformed(synth: Synth) -> None:
    """A VCEK whose key names an unknown curve, correctly signed by the ASK: a typed error, not a crash."""
    ev = synth.evidence("Genoa")
    p384 = bytes.fromhex("06052b81040022")
    assert ev.certs["vcek"].count(p384) == 1
    patched = ev.certs["vcek"].replace(p384, bytes.fromhex("06052b8104007f"))
    tbs = x509.load_der_x509_certificate(patched).tbs_certificate_bytes
    resigned = patched[:-256] + synth.ask_key.sign(tbs, PSS, hashes.SHA384())
    with pytest.raises(Malformed) as err:
        _verify_synth(Evidence("snp", ev.data, {**ev.certs, "vcek": resigned}))
    assert err.value.field == "evidence" and "not supported" in str(err.value)


# --------------------------------------------------------------------------- certificate table (auxblob)

VCEK_GUID = "63da758d-e664-4564-adc5-f4b93be8accd"
ASK_GUID = "4ab7b379-bbac-4fe4-a02f-05aef327c782"
ARK_GUID = "c0b406a4-a803-4952-9743-3fb6014cd0ae"


def _table(entries: list[tuple[str, bytes]], *, pad: int = 16, terminate: bool = True) -> bytes:
    header = (len(entries) + 1) * 24
    body, rows, offset = b"", b"", header
    for guid, blob in entries:
        rows += uuid.UUID(guid).bytes + struct.pack("<II", offset, len(blob) + pad)
        body += blob + bytes(pad)
        offset += len(blob) + pad
    return rows + (bytes(24) if terminate else b"\x01" * 24) + body


def _milan_table_entries(vectors: Path) -> list[tuple[str, bytes]]:
    ask, ark = x509.load_pem_x509_certificates(_snp(vectors, "ask_ark_milan.pem"))
    return [(VCEK_GUID, _snp(vectors, "milan_v2_vcek.der")), (ASK_GUID, _der(ask)), (ARK_GUID, _der(ark)),
            ("00000000-0000-0000-0000-00000000abcd", b"unknown entries are skipped")]


def test_cert_table_feeds_the_verifier(vectors: Path, vector_time: datetime) -> None:
    certs = parse_cert_table(_table(_milan_table_entries(vectors)))
    assert sorted(certs) == ["ark", "ask", "vcek"]
    assert certs["vcek"] == _snp(vectors, "milan_v2_vcek.der")  # host padding trimmed
    claims = _verify(Evidence("snp", _snp(vectors, "milan_v2_report.bin"), certs), vector_time)
    assert claims.product == "Milan"
    assert parse_cert_table(bytes(24)) == {}


def test_cert_table_garbage_is_malformed(vectors: Path) -> None:
    entries = _milan_table_entries(vectors)
    good = _table(entries)
    beyond = bytearray(good)
    struct.pack_into("<I", beyond, 20, len(good))  # first entry's length runs past the end
    into_header = bytearray(good)
    struct.pack_into("<I", into_header, 16, 0)
    bad = [
        b"",
        bytes(23),
        _table(entries, terminate=False),
        bytes(beyond),
        bytes(into_header),
        _table([entries[0], entries[0]]),
        _table([("00000000-0000-0000-0000-00000000abcd", b"x")] * 17),
        bytes(300 << 10),
        "not bytes",
    ]
    for blob in bad:
        with pytest.raises(Malformed):
            parse_cert_table(blob)  # type: ignore[arg-type]


def test_ask_ark_bundle_order_does_not_matter(vectors: Path, vector_time: datetime) -> None:
    ask, ark = x509.load_pem_x509_certificates(_snp(vectors, "ask_ark_milan.pem"))
    ev = _evidence(vectors)
    claims = _verify(Evidence("snp", ev.data, {**ev.certs, "ask_ark": _pem(ark, ask)}), vector_time)
    assert claims.chain[1].subject == ask.subject.rfc4514_string()


def test_ask_ark_bundle_of_two_roots_rejected(vectors: Path, vector_time: datetime) -> None:
    _, ark = x509.load_pem_x509_certificates(_snp(vectors, "ask_ark_milan.pem"))
    ev = _evidence(vectors)
    with pytest.raises(UntrustedRoot):
        _verify(Evidence("snp", ev.data, {**ev.certs, "ask_ark": _pem(ark, ark)}), vector_time)


@pytest.mark.parametrize("which", ["vcek", "ask", "ark"])
def test_tampered_certificate_bytes_rejected(vectors: Path, vector_time: datetime, which: str) -> None:
    """Flip bytes across the signed part (TBS) and the signature of each certificate: never accepted."""
    ev = _evidence(vectors)
    ask, ark = x509.load_pem_x509_certificates(ev.certs["ask_ark"])
    cert = {"vcek": x509.load_der_x509_certificate(ev.certs["vcek"]), "ask": ask, "ark": ark}[which]
    der = _der(cert)
    tbs_at = der.index(cert.tbs_certificate_bytes)
    tbs_end = tbs_at + len(cert.tbs_certificate_bytes)
    positions = list(range(tbs_at, tbs_end, max(1, (tbs_end - tbs_at) // 40)))
    positions += list(range(len(der) - len(cert.signature), len(der), max(1, len(cert.signature) // 8)))
    for pos in positions:
        mutated = bytearray(der)
        mutated[pos] ^= 0x01
        parts = {"vcek": ev.certs["vcek"], "ask": _der(ask), "ark": _der(ark), which: bytes(mutated)}
        certs = {"vcek": parts["vcek"], "ask": parts["ask"], "ark": parts["ark"]}
        try:
            _verify(Evidence("snp", ev.data, certs), vector_time)
        except AttestationError:
            continue
        pytest.fail(f"{which} mutated at byte {pos} accepted")


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=0x2A0, max_size=0x2A0), version=st.sampled_from([2, 3, 4, 5]),
       key_info=st.integers(0, 0xFF), sig=st.binary(min_size=144, max_size=144))
def test_fuzzed_well_formed_reports_never_accepted_never_crash(vectors: Path, vector_time: datetime, body: bytes,
                                                               version: int, key_info: int, sig: bytes) -> None:
    data = bytearray(body + sig + bytes(1184 - 0x2A0 - 144))
    struct.pack_into("<I", data, 0, version)
    struct.pack_into("<I", data, 0x34, 1)
    struct.pack_into("<I", data, 0x48, key_info)
    with pytest.raises(AttestationError):
        _verify(Evidence("snp", bytes(data), _evidence(vectors).certs), vector_time)


def test_memoised_chain_never_skips_per_call_checks(vectors: Path, vector_time: datetime) -> None:
    ev = _evidence(vectors)
    assert _verify(ev, vector_time).product == "Milan"  # chain links now memoised
    with pytest.raises(CertificateExpired):
        _verify(ev, datetime(2060, 1, 1, tzinfo=UTC))
    with pytest.raises(UntrustedRoot):
        _verify(ev, vector_time, roots=[AMD_ARK_SHA256["Genoa"]])
    tampered = bytearray(ev.data)
    tampered[0x90] ^= 1
    with pytest.raises(BadSignature):
        _verify(Evidence("snp", bytes(tampered), ev.certs), vector_time)
    assert _verify(ev, vector_time).measurement == ev.data[0x90:0xC0]


# --------------------------------------------------------------------------- AMD's CRL


def _crl(issuer_cn: str, key, *, revoked: tuple[int, ...] = (), last: datetime = T0,
         next_: datetime | None = T1) -> bytes:
    b = x509.CertificateRevocationListBuilder().issuer_name(_name(issuer_cn)).last_update(last)
    b = b.next_update(next_ if next_ is not None else T1)
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(T0).build())
    kw = {"rsa_padding": PSS} if isinstance(key, rsa.RSAPrivateKey) else {}
    return b.sign(key, hashes.SHA384(), **kw).public_bytes(serialization.Encoding.DER)


def _with_crl(ev: Evidence, blob: bytes | None, *, kind: str = "vcek", **snp: object):
    from mpctrain.attest.snp.verifier import crl_name

    blobs = {} if blob is None else {crl_name("Genoa", kind): blob}
    return _verify(ev, datetime(2026, 11, 22, tzinfo=UTC), roots=[_root_of(ev)], collateral=Collateral(blobs),
                   **snp)


@pytest.mark.parametrize("kind", ["vcek", "vlek"])
def test_an_ark_signed_crl_that_lists_the_ask_fails_and_one_that_does_not_passes(synth: Synth, kind: str) -> None:
    ev = synth.evidence("Genoa", kind=kind)
    assert _with_crl(ev, _crl("ARK-Genoa", synth.ark_key), kind=kind, require_crl=True).backend == "snp"
    with pytest.raises(CertificateRevoked) as err:
        _with_crl(ev, _crl("ARK-Genoa", synth.ark_key, revoked=(7, 1)), kind=kind)  # every synthetic serial is 1
    assert err.value.check == "certificate-revoked" and "AS" in str(err.value)


def test_require_crl_fails_without_one(synth: Synth, vectors: Path, vector_time: datetime) -> None:
    ev = synth.evidence("Genoa")
    assert _with_crl(ev, None).backend == "snp"  # by default a missing CRL is not an error (offline vectors)
    with pytest.raises(CollateralMissing, match="fetch-collateral"):
        _with_crl(ev, None, require_crl=True)
    with pytest.raises(CollateralMissing):  # real evidence too: AMD's CRL is not among the vectors
        _verify(_evidence(vectors), vector_time, require_crl=True)
    with pytest.raises(PolicyError, match="require_crl"):
        _with_crl(ev, None, require_crl="yes")


def test_crl_faults(synth: Synth) -> None:
    ev = synth.evidence("Genoa")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(BadSignature, match="not signed by this chain's ARK"):
        _with_crl(ev, _crl("ARK-Genoa", other))
    with pytest.raises(UntrustedRoot, match="not issued by"):
        _with_crl(ev, _crl("ARK-Milan", synth.ark_key))
    with pytest.raises(CollateralStale, match="nextUpdate"):
        _with_crl(ev, _crl("ARK-Genoa", synth.ark_key, next_=datetime(2026, 1, 1, tzinfo=UTC)))
    with pytest.raises(CollateralStale, match="after the verification time"):
        _with_crl(ev, _crl("ARK-Genoa", synth.ark_key, last=datetime(2026, 12, 30, tzinfo=UTC)))
    with pytest.raises(Malformed):
        _with_crl(ev, b"not a crl")
