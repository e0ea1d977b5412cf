"""NVIDIA H100/H200 GPU verifier: the real nvtrust report and RIMs, then each check failing on its own.

Synthetic evidence (tests/attest/nvidia_synth.py: real SPDM layout, real ECDSA P-384 under a test root the
policy pins) reaches the checks one real report cannot: FWID mismatch, CA constraints, a matching RIM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nvidia_synth as synth
from mpctrain.attest import (
    AttestationError,
    BackendNotAllowed,
    BadSignature,
    BindingMismatch,
    CertificateExpired,
    Collateral,
    CollateralMissing,
    Evidence,
    Malformed,
    MeasurementNotAllowed,
    Policy,
    PolicyError,
    PolicyViolation,
    ReferenceMismatch,
    UntrustedRoot,
    verify_evidence,
)
from mpctrain.attest.backend import get_verifier
from mpctrain.attest.errors import TcbTooLow
from mpctrain.attest.nvidia import NVIDIA_RIM_ROOT_SHA256, NvidiaGpuVerifier, parse_report, verify_rim
from mpctrain.attest.roots import NVIDIA_DEVICE_IDENTITY_CA_SHA256

NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
RIM_TIME = datetime(2024, 6, 1, tzinfo=UTC)  # inside every vector RIM signer's validity window
DRIVER_RIM = "Driver_RIM_test_no_gpu.swidtag"
VBIOS_PROD = "1010_0200_882_96005E0001_PROD.swidtag"
VBIOS_TEST = "1010_0200_882_96005E0001_test_no_gpu.swidtag"
DRIVER_MISMATCHES = [7, 21, 22, 25, 26, 27, 29, 30, 31, 32, 34, 36, 37, 39, 40]
PROD_MISMATCHES = [1, 2, 9, 11]
TEST_MISMATCHES = [1, 2, 3, 9, 11]
FWID = b"\x42" * 48

# Offsets in request ‖ response of h100_report.hex (64 blocks of 55 bytes, 422 bytes of opaque data).
REGIONS = {
    "request header": range(0, 4),
    "requester nonce": range(4, 36),
    "slot": range(36, 37),
    "response header": range(37, 45),
    **{f"block {k}": range(45 + 55 * k, 45 + 55 * (k + 1)) for k in range(64)},
    "responder nonce": range(3565, 3597),
    "opaque length": range(3597, 3599),
    "opaque data": range(3599, 4021),
    "signature": range(4021, 4117),
}


@pytest.fixture(scope="module")
def nv(vectors: Path) -> Path:
    return vectors / "nvidia"


@pytest.fixture(scope="module")
def report(nv: Path) -> bytes:
    return bytes.fromhex(nv.joinpath("h100_report.hex").read_text().strip())


@pytest.fixture(scope="module")
def chain_pem(nv: Path) -> bytes:
    return nv.joinpath("h100_cert_chain.pem").read_bytes()


def gpu(data: bytes, chain_pem: bytes | None, **certs: bytes) -> Evidence:
    if chain_pem is not None:
        certs["chain"] = chain_pem
    return Evidence(kind="nvidia-gpu", data=data, certs=certs)


def policy(**table: object) -> Policy:
    nvidia: dict[str, object] = {"measurements": "report-only"}
    nvidia.update(table)
    return Policy.from_dict({"backends": ["snp"], "nvidia-gpu": nvidia})


def check(ev: Evidence, at: datetime, pol: Policy | None = None, collateral: Collateral | None = None,
          nonce: bytes | None = NONCE):
    return verify_evidence(ev, nonce, pol or Policy.default(), at, collateral or Collateral(), gpu=True)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def rim_policy(nv: Path, vbios: str = VBIOS_PROD, **extra: object) -> Policy:
    return policy(require_rim=True, rim_verification_time=RIM_TIME.isoformat(),
                  rim_files={"driver": str(nv / DRIVER_RIM), "vbios": str(nv / vbios)}, **extra)


# --------------------------------------------------------------------------- the real H100 report


def test_real_h100_report_verifies(report, chain_pem, vector_time) -> None:
    claims = check(gpu(report, chain_pem), vector_time)
    values = [report[45 + 55 * k + 7 : 45 + 55 * (k + 1)] for k in range(64)]
    assert claims.backend == "nvidia-gpu"
    assert claims.report_data == NONCE
    assert claims.measurement == hashlib.sha384(b"".join(values)).digest()
    assert claims.debug is False
    assert claims.product == "1010_0200_882"
    assert claims.tcb == {"driver": 550_090_007}
    assert len(claims.chain) == 5
    assert claims.chain[0].subject.startswith("CN=GH100 A01 GSP FMC LF")
    assert claims.chain[-1].sha256 == NVIDIA_DEVICE_IDENTITY_CA_SHA256
    d = claims.details
    assert d["driver_version"] == "550.90.07"
    assert d["vbios_version"] == "96.00.9F.00.01"
    assert (d["project"], d["project_sku"], d["chip_sku"]) == ("1010", "0200", "882")
    assert d["fwid"].startswith("f5c384aebb579217")
    assert d["responder_nonce"] == report[3565:3597].hex()
    assert d["measurements"] == {str(k): v.hex() for k, v in enumerate(values)}
    assert d["mismatches"] == []
    assert d["rim"]["compared"] is False and d["rim"]["driver"]["status"] == "missing"
    json.dumps(claims.to_json_obj())


def test_registry_resolves_the_nvidia_verifier() -> None:
    assert isinstance(get_verifier("nvidia-gpu"), NvidiaGpuVerifier)


def test_other_nonce_is_a_binding_mismatch(report, chain_pem, vector_time) -> None:
    with pytest.raises(BindingMismatch):
        check(gpu(report, chain_pem), vector_time, nonce=bytes(32))


def test_wrong_kind_is_refused(report, chain_pem, vector_time) -> None:
    ev = Evidence(kind="snp", data=report, certs={"chain": chain_pem})
    with pytest.raises(BackendNotAllowed):
        NvidiaGpuVerifier().verify(ev, policy=Policy.default().backend("nvidia-gpu"), at=vector_time,
                                   collateral=Collateral())


def test_chain_comes_from_collateral_when_not_shipped(report, chain_pem, vector_time) -> None:
    claims = check(gpu(report, None), vector_time, collateral=Collateral({"nvidia/chain.pem": chain_pem}))
    assert claims.report_data == NONCE
    with pytest.raises(CollateralMissing):
        check(gpu(report, None), vector_time)


def test_chain_must_end_in_the_pinned_root(report, chain_pem, vector_time) -> None:
    other = synth.make_chain(leaf_ext=None)
    with pytest.raises(UntrustedRoot):
        check(gpu(report, chain_pem), vector_time, policy(roots=[other.root_sha256]))
    without_root = b"".join(c.public_bytes(serialization.Encoding.PEM)
                            for c in x509.load_pem_x509_certificates(chain_pem)[:4])
    with pytest.raises(UntrustedRoot):
        check(gpu(report, without_root), vector_time)


def test_self_made_chain_is_refused_by_the_default_pin(vector_time) -> None:
    fake = synth.make_chain(leaf_ext=synth.composite_ext(FWID), prefix="NVIDIA Device Identity CA")
    ev = synth.gpu_evidence(fake, NONCE)
    with pytest.raises(UntrustedRoot):
        check(ev, vector_time)
    assert check(ev, vector_time, policy(roots=[fake.root_sha256])).report_data == NONCE


def test_validity_windows_and_clock_skew(report, chain_pem) -> None:
    newest_not_before = datetime(2022, 3, 1, tzinfo=UTC)  # "NVIDIA GH100 Identity"
    ev = gpu(report, chain_pem)
    check(ev, newest_not_before - timedelta(seconds=200))
    with pytest.raises(CertificateExpired):
        check(ev, newest_not_before - timedelta(seconds=400))
    with pytest.raises(CertificateExpired):
        check(ev, datetime(2019, 1, 1, tzinfo=UTC))
    expiring = synth.make_chain(leaf_ext=synth.composite_ext(FWID), leaf_not_after=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(CertificateExpired):
        check(synth.gpu_evidence(expiring, NONCE), datetime(2026, 11, 22, tzinfo=UTC),
              policy(roots=[expiring.root_sha256]))


def test_reordered_or_tampered_chain_is_refused(report, chain_pem, vector_time) -> None:
    certs = x509.load_pem_x509_certificates(chain_pem)
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    with pytest.raises(BadSignature):
        check(gpu(report, b"".join([pem[0], pem[2], pem[1], pem[3], pem[4]])), vector_time)
    der = certs[2].public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_certificate(flip(der, len(der) - 1)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(BadSignature):
        check(gpu(report, b"".join([pem[0], pem[1], tampered, pem[3], pem[4]])), vector_time)


@pytest.mark.parametrize("pem", [b"garbage", b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_garbage_chain_is_malformed(report, vector_time, pem: bytes) -> None:
    with pytest.raises(Malformed):
        check(gpu(report, pem), vector_time)


def test_chain_length_is_bounded(report, chain_pem, vector_time) -> None:
    first = x509.load_pem_x509_certificates(chain_pem)[0].public_bytes(serialization.Encoding.PEM)
    with pytest.raises(Malformed):
        check(gpu(report, first), vector_time)
    with pytest.raises(Malformed):
        check(gpu(report, chain_pem * 2), vector_time)
    with pytest.raises(Malformed):
        check(gpu(report, chain_pem * 20), vector_time)


# --------------------------------------------------------------------------- mutation of the real report


@pytest.mark.parametrize("region", sorted(REGIONS, key=lambda r: REGIONS[r].start))
def test_flipping_a_byte_in_each_region_is_rejected(report, chain_pem, vector_time, region: str) -> None:
    positions = REGIONS[region]
    for index in {positions.start, positions.start + len(positions) // 2, positions.stop - 1}:
        with pytest.raises(AttestationError) as err:
            check(gpu(flip(report, index), chain_pem), vector_time, nonce=None)
        assert isinstance(err.value, BadSignature | Malformed), (region, index, err.value)


def test_every_seventh_byte_flip_is_rejected(report, chain_pem, vector_time) -> None:
    for index in range(0, len(report), 7):
        with pytest.raises(AttestationError):
            check(gpu(flip(report, index, 0x80), chain_pem), vector_time, nonce=None)


@pytest.mark.parametrize("index", [0, 1, 37, 38])
def test_spdm_headers_are_checked_before_signatures(report, chain_pem, vector_time, index: int) -> None:
    with pytest.raises(Malformed):
        check(gpu(flip(report, index), chain_pem), vector_time)


@pytest.mark.parametrize("cut", [0, 1, 36, 37, 40, 44, 100, 3565, 3600, 4020, 4116])
def test_truncated_report_is_malformed(report, chain_pem, vector_time, cut: int) -> None:
    with pytest.raises(Malformed):
        check(gpu(report[:cut], chain_pem), vector_time)


def test_trailing_or_oversized_report_is_malformed(report, chain_pem, vector_time) -> None:
    with pytest.raises(Malformed):
        check(gpu(report + b"\x00", chain_pem), vector_time)
    with pytest.raises(Malformed):
        check(gpu(report + bytes(70_000), chain_pem), vector_time)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=5000))
def test_garbage_is_malformed(chain_pem, vector_time, garbage: bytes) -> None:
    with pytest.raises(Malformed):
        check(gpu(garbage, chain_pem), vector_time)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=4116), st.binary(min_size=1, max_size=64))
def test_valid_prefix_then_garbage_is_rejected(report, chain_pem, vector_time, cut: int, tail: bytes) -> None:
    data = report[:cut] + tail
    if data == report:
        return
    with pytest.raises(AttestationError):
        check(gpu(data, chain_pem), vector_time)


# --------------------------------------------------------------------------- parser, field by field


def _unsigned(**kw) -> bytes:
    fields = kw.pop("fields", synth.opaque())
    values = kw.pop("values", synth.measurements())
    return synth.encode_unsigned(NONCE, values, fields, **kw) + bytes(96)


PARSER_CASES = {
    "unsigned request": ({"request_header": b"\x11\xe0\x00\xff"}, "request.param1"),
    "single block requested": ({"request_header": b"\x11\xe0\x01\x05"}, "request.param2"),
    "SPDM 1.0 request": ({"request_header": b"\x10\xe0\x01\xff"}, "request.header"),
    "slot out of range": ({"slot": 9}, "request.slot"),
    "response slot differs": ({"response_header": b"\x11\x60\x00\x01"}, "response.param2"),
    "not MEASUREMENTS": ({"response_header": b"\x11\x61\x00\x00"}, "response.header"),
    "no blocks": ({"values": []}, "response.n_blocks"),
    "record too long": ({"record_len_delta": 1}, "record_len"),
    "record too short": ({"record_len_delta": -1}, "block"),
    "record past response": ({"record_len_delta": 5000}, "response.record_len"),
    "duplicate index": ({"indices": [1, 2, 3, 3, 4, 5, 6, 7]}, "index"),
    "descending index": ({"indices": [1, 2, 4, 3, 5, 6, 7, 8]}, "index"),
    "index zero": ({"indices": [0, 1, 2, 3, 4, 5, 6, 7]}, "index"),
    "index 255": ({"indices": [1, 2, 3, 4, 5, 6, 7, 255]}, "index"),
    "not DMTF": ({"spec": 2}, "spec"),
    "raw bitstream": ({"dmtf_type": 0x81}, "size"),
    "32-byte digest": ({"values": [b"\x01" * 32] * 8}, "size"),
    "opaque length off": ({"opaque_len_delta": 1}, "opaque"),
    "opaque length short": ({"opaque_len_delta": -3}, "opaque"),
    "opaque too long": ({"fields": synth.opaque(extra={99: bytes(1100)})}, "opaque_len"),
    "repeated TLV": ({"fields": [*synth.opaque(), (3, b"1.2\x00")]}, "opaque[3]"),
    "no driver version": ({"fields": synth.opaque(drop=(3,))}, "driver_version"),
    "no VBIOS version": ({"fields": synth.opaque(drop=(6,))}, "vbios_version"),
    "no project": ({"fields": synth.opaque(drop=(17,))}, "project"),
    "no project SKU": ({"fields": synth.opaque(drop=(18,))}, "project_sku"),
    "no chip SKU": ({"fields": synth.opaque(drop=(15,))}, "chip_sku"),
    "no FWID": ({"fields": synth.opaque(drop=(20,))}, "fwid"),
    "short FWID": ({"fields": synth.opaque(fwid=b"\x01" * 32)}, "fwid"),
    "short VBIOS": ({"fields": synth.opaque(vbios=b"\x01\x02")}, "vbios_version"),
    "binary driver version": ({"fields": synth.opaque(driver=b"55\x01.1\x00")}, "driver_version"),
    "empty project": ({"fields": synth.opaque(project=b"\x00\x00")}, "project"),
    "NUL inside text": ({"fields": synth.opaque(chip=b"8\x002\x00")}, "chip_sku"),
}


@pytest.mark.parametrize("case", sorted(PARSER_CASES))
def test_parser_rejects_each_malformed_field(case: str) -> None:
    kwargs, field = PARSER_CASES[case]
    with pytest.raises(Malformed) as err:
        parse_report(_unsigned(**kwargs))
    assert field in (err.value.field or ""), err.value


def test_parser_reads_a_well_formed_synthetic_report() -> None:
    r = parse_report(_unsigned())
    assert r.requester_nonce == NONCE and r.driver_version == "550.90.07" and r.vbios_version == "96.00.9F.00.01"
    assert [b.index for b in r.blocks] == list(range(1, 9))
    assert r.measurements_by_rim_index() == dict(enumerate(synth.measurements()))
    trailing_opaque_tlv = [*synth.opaque(), (99, b"")]
    trailing = synth.encode_unsigned(NONCE, synth.measurements(), trailing_opaque_tlv) + bytes(96)
    assert parse_report(trailing).opaque[99] == b""
    cut = synth.encode_unsigned(NONCE, synth.measurements(), synth.opaque(), opaque_len_delta=-2)
    with pytest.raises(Malformed):
        parse_report(cut + b"\x00\x00" + bytes(96))


# --------------------------------------------------------------------------- device chain details


def _synthetic(chain: synth.Chain, at: datetime, **fields):
    return check(synth.gpu_evidence(chain, NONCE, **fields), at, policy(roots=[chain.root_sha256]))


def test_fwid_must_match_the_leaf_certificate(vector_time) -> None:
    chain = synth.make_chain(leaf_ext=synth.composite_ext(FWID))
    assert _synthetic(chain, vector_time).details["fwid"] == FWID.hex()
    with pytest.raises(BadSignature) as err:
        _synthetic(chain, vector_time, fwid=b"\x43" * 48)
    assert err.value.field == "fwid"


def test_dice_tcbinfo_form_of_the_fwid_extension_is_read(vector_time) -> None:
    chain = synth.make_chain(leaf_ext=synth.tcbinfo_ext(FWID))
    assert _synthetic(chain, vector_time).report_data == NONCE
    with pytest.raises(BadSignature):
        _synthetic(chain, vector_time, fwid=b"\x00" * 48)


@pytest.mark.parametrize("ext", [None, b"\x04\x02\x00\x00", b"\x30\x00", synth.composite_ext(b"\x42" * 32),
                                 synth.composite_ext(FWID, x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1"))])
def test_leaf_without_a_usable_fwid_is_malformed(vector_time, ext: bytes | None) -> None:
    with pytest.raises(Malformed):
        _synthetic(synth.make_chain(leaf_ext=ext), vector_time)


def _ca_resigned(chain: synth.Chain, *, basic_constraints: bool, key_usage: bool) -> synth.Chain:
    """The chain with its CA certificate re-issued with or without basicConstraints / keyUsage."""
    builder = (x509.CertificateBuilder().subject_name(chain.ca.subject).issuer_name(chain.root.subject)
               .public_key(chain.ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(chain.ca.not_valid_before_utc).not_valid_after(chain.ca.not_valid_after_utc))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    if key_usage:
        builder = builder.add_extension(synth._ku(cert_sign=True), critical=True)
    return dataclasses.replace(chain, ca=builder.sign(chain.root_key, hashes.SHA384()))


def test_issuer_without_basic_constraints_or_key_usage_is_refused(vector_time) -> None:
    chain = synth.make_chain(leaf_ext=synth.composite_ext(FWID))
    _synthetic(_ca_resigned(chain, basic_constraints=True, key_usage=True), vector_time)
    with pytest.raises(BadSignature, match="not a CA") as err:
        _synthetic(_ca_resigned(chain, basic_constraints=False, key_usage=True), vector_time)
    assert err.value.actual == "no basicConstraints"
    with pytest.raises(BadSignature, match="may not sign"):
        _synthetic(_ca_resigned(chain, basic_constraints=True, key_usage=False), vector_time)


def test_issuer_constraints_are_enforced(vector_time) -> None:
    ext = synth.composite_ext(FWID)
    not_ca = synth.make_chain(leaf_ext=ext, ca_constraints=x509.BasicConstraints(ca=False, path_length=None))
    with pytest.raises(BadSignature, match="not a CA"):
        _synthetic(not_ca, vector_time)
    no_sign = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                            encipher_only=False, decipher_only=False)
    with pytest.raises(BadSignature, match="may not sign"):
        _synthetic(synth.make_chain(leaf_ext=ext, ca_key_usage=no_sign), vector_time)
    short = synth.make_chain(leaf_ext=ext, root_constraints=x509.BasicConstraints(ca=True, path_length=0))
    with pytest.raises(BadSignature, match="path length"):
        _synthetic(short, vector_time)


def test_leaf_key_and_link_algorithms_must_be_p384_sha384(vector_time) -> None:
    ext = synth.composite_ext(FWID)
    with pytest.raises(BadSignature):
        _synthetic(synth.make_chain(leaf_ext=ext, leaf_hash=hashes.SHA256()), vector_time)
    p256 = synth.make_chain(leaf_ext=ext, leaf_curve=ec.SECP256R1())
    ev = Evidence(kind="nvidia-gpu", data=synth.encode_unsigned(NONCE, synth.measurements(), synth.opaque())
                  + bytes(96), certs={"chain": p256.pem})
    with pytest.raises(BadSignature, match="P-384"):
        check(ev, vector_time, policy(roots=[p256.root_sha256]))


def test_report_signed_by_another_key_is_refused(vector_time) -> None:
    chain = synth.make_chain(leaf_ext=synth.composite_ext(FWID))
    data = synth.sign(chain.ca_key, synth.encode_unsigned(NONCE, synth.measurements(), synth.opaque()))
    with pytest.raises(BadSignature):
        check(Evidence(kind="nvidia-gpu", data=data, certs={"chain": chain.pem}), vector_time,
              policy(roots=[chain.root_sha256]))


# --------------------------------------------------------------------------- policy knobs


def test_driver_and_vbios_allowlists(report, chain_pem, vector_time) -> None:
    ev = gpu(report, chain_pem)
    check(ev, vector_time, policy(drivers=["535.104.05", "550.90.07"], vbios=["96.00.9f.00.01"]))
    with pytest.raises(PolicyViolation) as err:
        check(ev, vector_time, policy(drivers=["535.104.05"]))
    assert err.value.field == "driver_version"
    with pytest.raises(PolicyViolation) as err:
        check(ev, vector_time, policy(vbios=["96.00.5E.00.01"]))
    assert err.value.field == "vbios_version"


def test_measurement_allowlist_applies_to_the_composite_digest(report, chain_pem, vector_time) -> None:
    ev = gpu(report, chain_pem)
    digest = check(ev, vector_time).measurement
    check(ev, vector_time, policy(measurements=[digest.hex()]))
    with pytest.raises(MeasurementNotAllowed):
        check(ev, vector_time, policy(measurements=[hashlib.sha384(b"other").hexdigest()]))


def test_minimum_driver_tcb(report, chain_pem, vector_time) -> None:
    ev = gpu(report, chain_pem)
    check(ev, vector_time, policy(min_tcb={"driver": 550_090_007}))
    with pytest.raises(TcbTooLow):
        check(ev, vector_time, policy(min_tcb={"driver": 555_000_000}))


@pytest.mark.parametrize("options", [
    {"require_rims": True},
    {"require_rim": "yes"},
    {"drivers": "550.90.07"},
    {"vbios": [96]},
    {"rim_files": ["a.swidtag"]},
    {"rim_files": {"firmware": "a.swidtag"}},
    {"rim_files": {"driver": "a\x00.swidtag"}},
    {"rim_roots": ["zz"]},
    {"rim_verification_time": "last year"},
    {"rim_verification_time": 2024},
])
def test_bad_policy_options_are_policy_errors(report, chain_pem, vector_time, options: dict) -> None:
    with pytest.raises(PolicyError):
        check(gpu(report, chain_pem), vector_time, policy(**options))


# --------------------------------------------------------------------------- the vector RIMs


def test_rim_root_pin_matches_the_vector_root(nv: Path) -> None:
    root = x509.load_pem_x509_certificate(nv.joinpath("nvidia_rim_root.pem").read_bytes())
    assert hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest() == NVIDIA_RIM_ROOT_SHA256


@pytest.mark.parametrize(("name", "version", "indices", "mismatches"), [
    (VBIOS_PROD, "96.00.5E.00.01", [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12], PROD_MISMATCHES),
    (VBIOS_TEST, "96.00.5E.00.01", [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12], TEST_MISMATCHES),
    (DRIVER_RIM, "545.00", [7, *range(21, 41)], DRIVER_MISMATCHES),
])
def test_vector_rims_verify_and_do_not_match_the_report(nv, report, name, version, indices, mismatches) -> None:
    rim = verify_rim(nv.joinpath(name).read_bytes(), roots=[NVIDIA_RIM_ROOT_SHA256], at=RIM_TIME, skew_seconds=0)
    assert rim.version == version and rim.product == "GH100"
    assert sorted(rim.golden) == indices
    assert rim.chain[0].subject.startswith("CN=HCC RIM L4 Signer")
    assert rim.chain[-1].sha256 == NVIDIA_RIM_ROOT_SHA256
    assert rim.mismatches(parse_report(report).measurements_by_rim_index()) == mismatches
    assert len(rim.golden[12 if name != DRIVER_RIM else 35]) == (4 if name != DRIVER_RIM else 2)


@pytest.mark.parametrize("name", [VBIOS_PROD, VBIOS_TEST, DRIVER_RIM])
def test_vector_rim_signers_have_expired_by_the_vector_time(nv, vector_time, name: str) -> None:
    with pytest.raises(CertificateExpired) as err:
        verify_rim(nv.joinpath(name).read_bytes(), roots=[NVIDIA_RIM_ROOT_SHA256], at=vector_time, skew_seconds=300)
    assert err.value.field == "rim.chain[0].validity"


def _rim(nv: Path, name: str = DRIVER_RIM) -> bytes:
    return nv.joinpath(name).read_bytes()


def _verify(xml: bytes, roots: list[str] | None = None):
    return verify_rim(xml, roots=roots or [NVIDIA_RIM_ROOT_SHA256], at=RIM_TIME, skew_seconds=0)


def test_tampered_golden_value_breaks_the_rim_signature(nv) -> None:
    xml = _rim(nv)
    golden = b'Hash0="0e0ee161b59bf124'
    assert golden in xml
    with pytest.raises(BadSignature):
        _verify(xml.replace(golden, b'Hash0="1e0ee161b59bf124'))
    with pytest.raises(BadSignature):
        _verify(xml.replace(b'active="False"', b'active="True"', 1))


def test_tampered_signature_value_is_refused(nv) -> None:
    xml = _rim(nv)
    start = xml.index(b"<ds:SignatureValue>") + len(b"<ds:SignatureValue>") + 10
    swapped = b"B" if xml[start:start + 1] != b"B" else b"C"
    with pytest.raises(BadSignature):
        _verify(xml[:start] + swapped + xml[start + 1:])


def test_keyinfo_leaf_from_another_rim_does_not_verify(nv) -> None:
    xml, other = _rim(nv), _rim(nv, VBIOS_PROD)
    leaf = re.compile(rb"<ds:X509Certificate>([^<]+)</ds:X509Certificate>")
    swapped = leaf.sub(lambda _: leaf.search(other).group(0), xml, count=1)
    assert swapped != xml
    with pytest.raises(BadSignature):
        _verify(swapped)


def test_rim_root_must_be_pinned(nv) -> None:
    with pytest.raises(UntrustedRoot):
        _verify(_rim(nv), roots=[NVIDIA_DEVICE_IDENTITY_CA_SHA256])


def test_rim_signature_must_be_present_once(nv) -> None:
    xml = _rim(nv)
    start, end = xml.index(b"<ds:Signature "), xml.index(b"</ds:Signature>") + len(b"</ds:Signature>")
    with pytest.raises(Malformed):
        _verify(xml[:start] + xml[end:])
    with pytest.raises(Malformed):
        _verify(xml[:end] + xml[start:end] + xml[end:])


@pytest.mark.parametrize("prolog", [
    b'<!DOCTYPE SoftwareIdentity [<!ENTITY x "y">]>',
    b'<!DOCTYPE SoftwareIdentity [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE SoftwareIdentity SYSTEM "http://example.invalid/x.dtd">',
])
def test_rim_with_a_dtd_is_malformed(nv, prolog: bytes) -> None:
    xml = _rim(nv)
    with pytest.raises(Malformed):
        _verify(prolog + xml)
    with pytest.raises(Malformed):
        _verify(prolog + xml.replace(b'name="Measurement_0"', b'name="&x;"', 1))


@pytest.mark.parametrize("xml", [b"", b"garbage", b"<a>", b"<a/>", b"\xff\xfe<a/>", bytes(5 << 20)])
def test_garbage_rim_is_malformed(xml: bytes) -> None:
    with pytest.raises(Malformed):
        _verify(xml)


# --------------------------------------------------------------------------- RIMs through the verifier


def test_required_rims_report_each_mismatching_index(nv, report, chain_pem, vector_time) -> None:
    with pytest.raises(ReferenceMismatch) as err:
        check(gpu(report, chain_pem), vector_time, rim_policy(nv))
    assert err.value.field == "measurements"
    assert err.value.actual == sorted(PROD_MISMATCHES + DRIVER_MISMATCHES)
    assert "545.00" in str(err.value) and "96.00.5E.00.01" in str(err.value)
    with pytest.raises(ReferenceMismatch) as err:
        check(gpu(report, chain_pem), vector_time, rim_policy(nv, VBIOS_TEST))
    assert err.value.actual == sorted(TEST_MISMATCHES + DRIVER_MISMATCHES)


def test_rim_comparison_goes_into_details_when_not_required(nv, report, chain_pem, vector_time) -> None:
    pol = policy(rim_verification_time=RIM_TIME.isoformat(),
                 rim_files={"driver": str(nv / DRIVER_RIM), "vbios": str(nv / VBIOS_PROD)})
    claims = check(gpu(report, chain_pem), vector_time, pol)
    rim = claims.details["rim"]
    assert claims.details["mismatches"] == sorted(PROD_MISMATCHES + DRIVER_MISMATCHES)
    assert rim["compared"] is True and rim["match"] is False and rim["required"] is False
    assert rim["driver"]["status"] == "verified" and rim["driver"]["version_matches"] is False
    assert rim["vbios"]["mismatches"] == PROD_MISMATCHES
    assert rim["driver"]["source"] == f"policy:{nv / DRIVER_RIM}"
    json.dumps(claims.to_json_obj())


def test_expired_rim_signers_fail_required_and_are_noted_otherwise(nv, report, chain_pem, vector_time) -> None:
    files = {"driver": str(nv / DRIVER_RIM), "vbios": str(nv / VBIOS_PROD)}
    with pytest.raises(CertificateExpired):
        check(gpu(report, chain_pem), vector_time, policy(require_rim=True, rim_files=files))
    claims = check(gpu(report, chain_pem), vector_time, policy(rim_files=files))
    assert claims.details["rim"]["driver"]["status"] == "invalid"
    assert claims.details["rim"]["driver"]["error"].startswith("certificate-expired")
    assert claims.details["rim"]["compared"] is False and claims.details["mismatches"] == []


def test_required_rims_must_be_found(nv, report, chain_pem, vector_time, tmp_path) -> None:
    with pytest.raises(CollateralMissing) as err:
        check(gpu(report, chain_pem), vector_time, policy(require_rim=True))
    assert "nvidia/rim/driver/550.90.07.swidtag" in str(err.value)
    with pytest.raises(CollateralMissing):
        check(gpu(report, chain_pem), vector_time, policy(rim_files={"driver": str(tmp_path / "absent.swidtag")}))


def test_rims_are_found_in_collateral_and_in_the_evidence(nv, report, chain_pem, vector_time) -> None:
    pol = policy(require_rim=True, rim_verification_time=RIM_TIME.isoformat())
    cached = Collateral({"nvidia/rim/driver/550.90.07.swidtag": _rim(nv),
                         "nvidia/rim/vbios/1010_0200_96.00.9F.00.01.swidtag": _rim(nv, VBIOS_PROD)})
    with pytest.raises(ReferenceMismatch):
        check(gpu(report, chain_pem), vector_time, pol, cached)
    shipped = gpu(report, chain_pem, rim_driver=_rim(nv), rim_vbios=_rim(nv, VBIOS_TEST))
    with pytest.raises(ReferenceMismatch) as err:
        check(shipped, vector_time, pol)
    assert 3 in err.value.actual
    claims = check(shipped, vector_time, policy(rim_verification_time=RIM_TIME.isoformat()), cached)
    assert claims.details["rim"]["driver"]["source"] == "collateral:nvidia/rim/driver/550.90.07.swidtag"
    assert claims.details["rim"]["vbios"]["mismatches"] == PROD_MISMATCHES


def test_shipped_rim_with_a_broken_signature_fails_when_required(nv, report, chain_pem, vector_time) -> None:
    bad = _rim(nv).replace(b'Hash0="0e0ee161b59bf124', b'Hash0="1e0ee161b59bf124')
    ev = gpu(report, chain_pem, rim_driver=bad, rim_vbios=_rim(nv, VBIOS_PROD))
    with pytest.raises(BadSignature):
        check(ev, vector_time, policy(require_rim=True, rim_verification_time=RIM_TIME.isoformat()))


# --------------------------------------------------------------------------- a RIM that matches (synthetic)


@pytest.fixture(scope="module")
def device() -> synth.Chain:
    return synth.make_chain(leaf_ext=synth.composite_ext(FWID), prefix="Device")


@pytest.fixture(scope="module")
def rim_signer() -> synth.Chain:
    return synth.make_chain(leaf_ext=None, prefix="RIM")


def _signed_rims(signer: synth.Chain, values: list[bytes], driver_version: str = "550.90.07",
                 vbios_version: str = "96.00.9F.00.01") -> dict[str, bytes]:
    driver = synth.rim_xml(driver_version, {0: [values[0]], 1: [b"\x00" * 48, values[1]], 2: [values[2]]})
    vbios = synth.rim_xml(vbios_version, {i: [values[i]] for i in range(3, len(values))},
                          inactive={40: b"\x11" * 48})
    return {"rim_driver": synth.sign_rim(driver, signer), "rim_vbios": synth.sign_rim(vbios, signer)}


def _rim_check(device: synth.Chain, signer: synth.Chain, rims: dict[str, bytes], at: datetime,
               values: list[bytes] | None = None):
    ev = synth.gpu_evidence(device, NONCE, values=values)
    ev = Evidence(kind=ev.kind, data=ev.data, certs={**ev.certs, **rims})
    pol = policy(roots=[device.root_sha256], require_rim=True, rim_roots=[signer.root_sha256])
    return check(ev, at, pol)


def test_matching_rims_pass_when_required(device, rim_signer, vector_time) -> None:
    values = synth.measurements()
    claims = _rim_check(device, rim_signer, _signed_rims(rim_signer, values), vector_time)
    rim = claims.details["rim"]
    assert rim["match"] is True and rim["compared"] is True and claims.details["mismatches"] == []
    assert rim["driver"]["indices"] == [0, 1, 2] and rim["vbios"]["indices"] == [3, 4, 5, 6, 7]


def test_one_changed_measurement_is_the_one_index_reported(device, rim_signer, vector_time) -> None:
    values = synth.measurements()
    rims = _signed_rims(rim_signer, values)
    changed = list(values)
    changed[5] = hashlib.sha384(b"patched firmware").digest()
    with pytest.raises(ReferenceMismatch) as err:
        _rim_check(device, rim_signer, rims, vector_time, values=changed)
    assert err.value.actual == [5]
    changed = list(values)
    changed[1] = b"\x00" * 48  # the other allowed alternative for index 1
    _rim_check(device, rim_signer, rims, vector_time, values=changed)


def test_a_rim_for_another_version_is_a_mismatch(device, rim_signer, vector_time) -> None:
    rims = _signed_rims(rim_signer, synth.measurements(), driver_version="550.54.15")
    with pytest.raises(ReferenceMismatch) as err:
        _rim_check(device, rim_signer, rims, vector_time)
    assert err.value.field == "rim.version"
    assert "550.54.15" in str(err.value)


def test_a_golden_index_missing_from_the_report_is_a_mismatch(device, rim_signer, vector_time) -> None:
    values = synth.measurements()
    rims = _signed_rims(rim_signer, values)
    rims["rim_vbios"] = synth.sign_rim(synth.rim_xml("96.00.9F.00.01", {100: [values[0]]}), rim_signer)
    with pytest.raises(ReferenceMismatch) as err:
        _rim_check(device, rim_signer, rims, vector_time)
    assert err.value.actual == [100]


def test_rims_under_another_root_are_untrusted(device, rim_signer, vector_time) -> None:
    stranger = synth.make_chain(leaf_ext=None, prefix="Stranger")
    with pytest.raises(UntrustedRoot):
        _rim_check(device, rim_signer, _signed_rims(stranger, synth.measurements()), vector_time)


_M3 = synth.measurements()[3].hex().encode()
RIM_RESOURCE_CASES = {
    "index out of range": (b'index="3"', b'index="255"', "resource.index"),
    "index not a number": (b'index="3"', b'index="three"', "resource.index"),
    "index repeated": (b'index="4"', b'index="3"', "resource[3]"),
    "no alternatives": (b'alternatives="1"', b'alternatives="0"', "alternatives"),
    "too many alternatives": (b'alternatives="1"', b'alternatives="17"', "alternatives"),
    "active not boolean": (b'active="True"', b'active="maybe"', "active"),
    "hash wrong length": (b'Hash0="', b'Hash0="00', "Hash0"),
    "hash not hex": (b'Hash0="' + _M3[:2], b'Hash0="zz', "Hash0"),
    "hash missing": (b'ns2:Hash0="', b'ns2:Other="', "Hash0"),
    "no version": (b'colloquialVersion="96.00.9F.00.01"', b'colloquialVersion=""', "meta"),
    "no payload": (b"Payload>", b"PayloadX>", "payload"),
}


@pytest.mark.parametrize("case", sorted(RIM_RESOURCE_CASES))
def test_signed_but_malformed_rim_contents_are_malformed(rim_signer, vector_time, case: str) -> None:
    old, new, field = RIM_RESOURCE_CASES[case]
    xml = synth.rim_xml("96.00.9F.00.01", {i: [v] for i, v in enumerate(synth.measurements()) if i >= 3})
    assert old in xml
    xml = xml.replace(old, new, 1 if case != "no payload" else -1)
    with pytest.raises(Malformed) as err:
        verify_rim(synth.sign_rim(xml, rim_signer), roots=[rim_signer.root_sha256], at=vector_time, skew_seconds=0)
    assert field in (err.value.field or ""), err.value


# --------------------------------------------------------------------------- caching and TOML policies


def test_remembered_links_do_not_hide_a_tampered_leaf(report, chain_pem, vector_time) -> None:
    check(gpu(report, chain_pem), vector_time)  # every link of the real chain is now remembered
    certs = x509.load_pem_x509_certificates(chain_pem)
    der = certs[0].public_bytes(serialization.Encoding.DER)
    leaf = x509.load_der_x509_certificate(flip(der, len(der) - 2))
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *certs[1:]])
    with pytest.raises(BadSignature) as err:
        check(gpu(report, pem), vector_time)
    assert err.value.field == "chain[0].signature"


def test_rim_options_load_from_a_toml_policy(nv, report, chain_pem, vector_time, tmp_path) -> None:
    toml = tmp_path / "policy.toml"
    toml.write_text(
        'backends = ["snp"]\n[nvidia-gpu]\nmeasurements = "report-only"\nrequire_rim = true\n'
        "rim_verification_time = 2024-06-01T00:00:00Z\n"
        f'rim_files = {{ driver = "{nv / DRIVER_RIM}", vbios = "{nv / VBIOS_PROD}" }}\n'
        'drivers = ["550.90.07"]\n'
    )
    with pytest.raises(ReferenceMismatch) as err:
        check(gpu(report, chain_pem), vector_time, Policy.load(toml))
    assert err.value.actual == sorted(PROD_MISMATCHES + DRIVER_MISMATCHES)


def test_naive_verification_time_is_read_as_utc(report, chain_pem) -> None:
    claims = NvidiaGpuVerifier().verify(gpu(report, chain_pem), policy=Policy.default().backend("nvidia-gpu"),
                                        at=datetime(2026, 11, 22), collateral=Collateral())
    assert claims.report_data == NONCE
