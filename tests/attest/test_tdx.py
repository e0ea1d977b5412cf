"""Intel TDX verifier: real quotes and collateral from ../shared/vectors/tdx, synthetic v5 quotes, mutations."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mpctrain.attest import (
    AttestationError,
    BackendPolicy,
    BadSignature,
    BindingMismatch,
    CertificateExpired,
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
    TcbStatusNotAllowed,
    TcbTooLow,
    UntrustedRoot,
    verify_evidence,
)
from mpctrain.attest.roots import INTEL_SGX_ROOT_CA_SHA256
from mpctrain.attest.tdx import TdxVerifier, collateral_names, parse_quote
from mpctrain.attest.tdx.pck import load_chain

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NO_MATCH_OK = ["UpToDate", "SWHardeningNeeded", "NoMatchingTcbLevel"]
SPR_MRTD = "6363b804"
SPR_REPORT_DATA = "6c62dec1"

COLLATERAL_FILES = {
    "tcb_info": "sample_tcbInfo_response",
    "tcb_info_issuer_chain": "tcb_info_issuer_chain.pem",
    "qe_identity": "sample_qeIdentity_response",
    "qe_identity_issuer_chain": "qe_identity_issuer_chain.pem",
    "pck_crl": "pckcrl",
    "pck_crl_issuer_chain": "pck_crl_issuer_chain.pem",
    "root_crl": "rootcrl.der",
}


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tdx_dir(vectors: Path) -> Path:
    return vectors / "tdx"


@pytest.fixture(scope="module")
def blobs(tdx_dir: Path) -> dict[str, bytes]:
    return {k: (tdx_dir / f).read_bytes() for k, f in COLLATERAL_FILES.items()}


@pytest.fixture(scope="module")
def spr(tdx_dir: Path) -> bytes:
    return (tdx_dir / "spr_v4_quote.dat").read_bytes()


@pytest.fixture(scope="module")
def verifier() -> TdxVerifier:
    return TdxVerifier()


def bpol(roots: tuple[str, ...] = (INTEL_SGX_ROOT_CA_SHA256,), **options: object) -> BackendPolicy:
    return BackendPolicy(kind="tdx", roots=roots, measurements=None, options=options)


def policy(**table: object) -> Policy:
    return Policy.from_dict({"backends": ["tdx"], "tdx": {"measurements": "report-only", **table}})


def cache_dir(tmp_path: Path, tdx_dir: Path, fmspc: str = "50806f000000") -> Path:
    """Lay the vector collateral out under the cache names the fetcher uses (in tmp, never in the repo)."""
    names = collateral_names(fmspc)
    for key, fname in COLLATERAL_FILES.items():
        dest = tmp_path / names[key].cache_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((tdx_dir / fname).read_bytes())
    return tmp_path


# ------------------------------------------------------------------ parsing


def test_parse_spr_quote(spr: bytes) -> None:
    q = parse_quote(spr)
    assert (q.version, q.body_type) == (4, 2)
    assert q.body.mrtd.hex().startswith(SPR_MRTD)
    assert q.body.report_data.hex().startswith(SPR_REPORT_DATA)
    assert not q.body.debug
    assert len(q.signed) == 0x278
    assert q.trailing_bytes == 39  # go-tdx-guest's unsigned "extra bytes" marker: ignored, reported
    assert q.qe_report.isvprodid == 2


def test_zero_padding_tolerated(spr: bytes) -> None:
    end = len(spr) - parse_quote(spr).trailing_bytes
    padded = spr[:end] + bytes(8000 - end)
    assert parse_quote(padded).trailing_bytes == 8000 - end


@pytest.mark.parametrize("data", [b"", b"\x04\x00", bytes(100), b"garbage" * 100, bytes(64 * 1024 + 1)])
def test_garbage_and_oversized_are_malformed(data: bytes) -> None:
    with pytest.raises(Malformed):
        parse_quote(data)


def test_every_truncation_is_malformed(spr: bytes, blobs: dict[str, bytes], verifier: TdxVerifier,
                                       vector_time: datetime) -> None:
    end = len(spr) - parse_quote(spr).trailing_bytes
    for cut in [*range(0, 0x302, 7), *range(0x302, end, 97), end - 1]:
        with pytest.raises(Malformed):
            verifier.verify(Evidence("tdx", spr[:cut], blobs), policy=bpol(accepted_tcb_statuses=NO_MATCH_OK),
                            at=vector_time, collateral=Collateral())


@pytest.mark.parametrize(("offset", "value"), [(0, 3), (0, 6), (2, 3), (4, 0), (12, 0xFF)])
def test_header_checks(spr: bytes, offset: int, value: int) -> None:
    bad = bytearray(spr)
    bad[offset] = value
    with pytest.raises(Malformed):
        parse_quote(bytes(bad))


# ------------------------------------------------------------------ real vectors, end to end


def test_spr_verifies_with_cache_dir_and_reports_no_matching_level(spr, tdx_dir, tmp_path, vector_time) -> None:
    pol = policy(accepted_tcb_statuses=NO_MATCH_OK)
    ev = Evidence("tdx", spr)
    claims = verify_evidence(ev, bytes.fromhex(parse_quote(spr).body.report_data.hex()), pol, vector_time,
                             Collateral(directory=cache_dir(tmp_path, tdx_dir)))
    assert claims.backend == "tdx" and claims.product == "TDX"
    assert claims.measurement.hex().startswith(SPR_MRTD) and len(claims.measurement) == 48
    assert claims.report_data.hex().startswith(SPR_REPORT_DATA) and len(claims.report_data) == 64
    assert claims.debug is False
    d = claims.details
    assert d["tcb_status"] == "NoMatchingTcbLevel"
    assert d["qe_tcb_status"] == "UpToDate"
    assert d["fmspc"] == "50806f000000" and d["pceid"] == "0000"
    assert d["quote_version"] == 4 and d["body_type"] == 2
    assert d["collateral_missing"] == []
    assert any("tcb_info.nextUpdate" in s for s in d["collateral_stale"])  # reported, not fatal by default
    assert d["collateral_next_update"]["tcb_info"] == "2023-07-18T08:42:58Z"
    assert claims.tcb["tee_tcb_svn_2"] == 4 and claims.tcb["pce_svn"] == 11 and claims.tcb["cpu_svn_0"] == 3
    assert [c.subject.split(",")[-1] for c in claims.chain] == [
        "CN=Intel SGX PCK Certificate", "CN=Intel SGX PCK Platform CA", "CN=Intel SGX Root CA"]
    assert claims.chain[-1].sha256 == INTEL_SGX_ROOT_CA_SHA256
    json.dumps(claims.to_json_obj())


def test_spr_default_statuses_refuse_no_matching_level(spr, blobs, vector_time) -> None:
    with pytest.raises(TcbStatusNotAllowed) as err:
        verify_evidence(Evidence("tdx", spr, blobs), None, policy(), vector_time)
    assert err.value.actual == "NoMatchingTcbLevel"


@pytest.mark.parametrize("table", [{"require_fresh_collateral": True}, {"max_collateral_age_days": 90}])
def test_stale_collateral_when_freshness_required(spr, blobs, vector_time, table) -> None:
    with pytest.raises(CollateralStale):
        verify_evidence(Evidence("tdx", spr, blobs), None, policy(accepted_tcb_statuses=NO_MATCH_OK, **table),
                        vector_time)


def test_fresh_at_issue_time_passes_age_check(spr, blobs) -> None:
    at = datetime(2023, 7, 1, tzinfo=UTC)
    claims = verify_evidence(Evidence("tdx", spr, blobs), None,
                             policy(accepted_tcb_statuses=NO_MATCH_OK, max_collateral_age_days=90,
                                    require_fresh_collateral=True), at)
    assert claims.details["collateral_stale"] == []


def test_debug_td_rejected_end_to_end(tdx_dir, blobs, vector_time) -> None:
    ev = Evidence("tdx", (tdx_dir / "debug_td_v4_quote.dat").read_bytes(), blobs)
    claims = TdxVerifier().verify(ev, policy=bpol(), at=vector_time, collateral=Collateral())
    assert claims.debug is True and claims.details["tcb_status"] == "UpToDate"  # signature and collateral fine
    with pytest.raises(DebugEnabled):
        verify_evidence(ev, None, policy(), vector_time)
    assert verify_evidence(ev, None, policy(allow_debug=True), vector_time).debug


def test_fake_root_untrusted(tdx_dir, blobs, vector_time) -> None:
    ev = Evidence("tdx", (tdx_dir / "fake_root_v4_quote.dat").read_bytes(), blobs)
    with pytest.raises(UntrustedRoot):
        verify_evidence(ev, None, policy(accepted_tcb_statuses=NO_MATCH_OK), vector_time)


def test_fake_root_chain_verifies_when_its_root_is_pinned(tdx_dir, vector_time) -> None:
    """The DER-encoded chain is parsed and the pin is the only thing that rejected it above."""
    data = (tdx_dir / "fake_root_v4_quote.dat").read_bytes()
    fake = load_chain(parse_quote(data).pck_chain, "chain")[-1]
    pin = hashlib.sha256(fake.public_bytes(serialization.Encoding.DER)).hexdigest()
    ev = Evidence("tdx", data)
    with pytest.raises(AttestationError) as err:
        TdxVerifier().verify(ev, policy=bpol(roots=(pin,)), at=vector_time, collateral=Collateral())
    assert isinstance(err.value, CollateralMissing)  # every signature verified; only collateral is lacking


@pytest.mark.parametrize("year", [2060, 2010])
def test_certificates_outside_validity(spr, blobs, year) -> None:
    with pytest.raises(CertificateExpired):
        verify_evidence(Evidence("tdx", spr, blobs), None, policy(accepted_tcb_statuses=NO_MATCH_OK),
                        datetime(year, 1, 1, tzinfo=UTC))


def test_common_checks_end_to_end(spr, blobs, vector_time) -> None:
    ev = Evidence("tdx", spr, blobs)
    q = parse_quote(spr)
    ok = NO_MATCH_OK
    with pytest.raises(BindingMismatch):
        verify_evidence(ev, bytes(64), policy(accepted_tcb_statuses=ok), vector_time)
    verify_evidence(ev, q.body.report_data, policy(accepted_tcb_statuses=ok), vector_time)
    with pytest.raises(MeasurementNotAllowed):
        verify_evidence(ev, None, policy(accepted_tcb_statuses=ok, measurements=["00" * 48]), vector_time)
    verify_evidence(ev, None, policy(accepted_tcb_statuses=ok, measurements=[q.body.mrtd.hex()]), vector_time)
    with pytest.raises(TcbTooLow):
        verify_evidence(ev, None, policy(accepted_tcb_statuses=ok, min_tcb={"tee_tcb_svn_2": 5}), vector_time)
    verify_evidence(ev, None, policy(accepted_tcb_statuses=ok, min_tcb={"tee_tcb_svn_2": 4, "pce_svn": 11}),
                    vector_time)


def test_missing_collateral(spr, blobs, vector_time) -> None:
    for key in ("tcb_info", "qe_identity", "pck_crl", "root_crl", "tcb_info_issuer_chain"):
        partial = {k: v for k, v in blobs.items() if k != key}
        with pytest.raises(CollateralMissing) as err:
            verify_evidence(Evidence("tdx", spr, partial), None, policy(accepted_tcb_statuses=NO_MATCH_OK),
                            vector_time)
        assert err.value.field == key
    claims = verify_evidence(Evidence("tdx", spr), None, policy(require_collateral=False), vector_time,
                             Collateral())
    assert claims.details["tcb_status"] is None
    assert "tcb_info" in claims.details["collateral_missing"]


# ------------------------------------------------------------------ collateral tampering (real vectors)


def _with(blobs: dict[str, bytes], **changes: bytes) -> dict[str, bytes]:
    return {**blobs, **changes}


def test_tampered_tcb_info_and_qe_identity(spr, blobs, vector_time) -> None:
    pol = bpol(accepted_tcb_statuses=NO_MATCH_OK)
    tcb = blobs["tcb_info"].rstrip()
    cases = [
        (tcb.replace(b'"pcesvn":11', b'"pcesvn":10'), BadSignature),
        (tcb.replace(b'{"id":"TDX",', b'{"id": "TDX",'), BadSignature),  # re-serialised: exact text matters
        (tcb.replace(b'"signature":"f6', b'"signature":"f7'), BadSignature),
        (tcb.replace(b'"signature":"f6', b'"signature":"zz'), Malformed),
        (tcb[:-1], Malformed),
        (tcb[:-1] + b',"tcbInfo":{}}', Malformed),  # duplicate top-level key
        (b"\xff\xfe" + tcb, Malformed),
        (b"[]", Malformed),
    ]
    for bad, exc in cases:
        with pytest.raises(exc):
            TdxVerifier().verify(Evidence("tdx", spr, _with(blobs, tcb_info=bad)), policy=pol, at=vector_time,
                                 collateral=Collateral())
    qe = blobs["qe_identity"]
    with pytest.raises(BadSignature):
        TdxVerifier().verify(Evidence("tdx", spr, _with(blobs, qe_identity=qe.replace(b'"isvsvn":4', b'"isvsvn":3'))),
                             policy=pol, at=vector_time, collateral=Collateral())
    # QE identity JSON offered as tcbInfo (and vice versa): wrong inner object
    with pytest.raises(Malformed):
        TdxVerifier().verify(Evidence("tdx", spr, _with(blobs, tcb_info=qe)), policy=pol, at=vector_time,
                             collateral=Collateral())


def test_collateral_signer_chain_checks(spr, blobs, tdx_dir, vector_time) -> None:
    pol = bpol(accepted_tcb_statuses=NO_MATCH_OK)
    fake = (tdx_dir / "fake_root_ca.pem").read_bytes()
    tcb_chain = blobs["tcb_info_issuer_chain"]
    signer_only = tcb_chain[: tcb_chain.index(b"-----END CERTIFICATE-----") + 26]
    pck_chain_pem = parse_quote(spr).pck_chain.rstrip(b"\0")
    for chain, exc in [
        (signer_only + fake, UntrustedRoot),
        (signer_only, UntrustedRoot),
        (blobs["pck_crl_issuer_chain"], UntrustedRoot),  # PCK Platform CA is not the TCB signer
        (pck_chain_pem, UntrustedRoot),
        (b"not a chain", Malformed),
    ]:
        with pytest.raises(exc):
            TdxVerifier().verify(Evidence("tdx", spr, _with(blobs, tcb_info_issuer_chain=chain)), policy=pol,
                                 at=vector_time, collateral=Collateral())


def test_tampered_crls(spr, blobs, vector_time) -> None:
    pol = bpol(accepted_tcb_statuses=NO_MATCH_OK)
    crl = blobs["pck_crl"]
    flipped = bytearray(crl)
    flipped[-5] ^= 1  # inside the signature value
    for key, bad, exc in [
        ("pck_crl", bytes(flipped), BadSignature),
        ("pck_crl", crl[:100], Malformed),
        ("pck_crl", blobs["root_crl"], UntrustedRoot),  # the root CRL is not from the PCK CA
        ("root_crl", crl, UntrustedRoot),
        ("pck_crl_issuer_chain", blobs["tcb_info_issuer_chain"], UntrustedRoot),
    ]:
        with pytest.raises(exc):
            TdxVerifier().verify(Evidence("tdx", spr, _with(blobs, **{key: bad})), policy=pol, at=vector_time,
                                 collateral=Collateral())
    # hex and PEM encodings of the same CRL are accepted
    der = x509.load_der_x509_crl(crl)
    for enc in (crl.hex().encode(), der.public_bytes(serialization.Encoding.PEM)):
        TdxVerifier().verify(Evidence("tdx", spr, _with(blobs, pck_crl=enc)), policy=pol, at=vector_time,
                             collateral=Collateral())


def test_cache_never_keeps_failures(spr, blobs, vector_time) -> None:
    v = TdxVerifier()
    pol = bpol(accepted_tcb_statuses=NO_MATCH_OK)
    bad = _with(blobs, tcb_info=blobs["tcb_info"].replace(b'"pcesvn":11', b'"pcesvn":12'))
    for _ in range(2):
        with pytest.raises(BadSignature):
            v.verify(Evidence("tdx", spr, bad), policy=pol, at=vector_time, collateral=Collateral())
        v.verify(Evidence("tdx", spr, blobs), policy=pol, at=vector_time, collateral=Collateral())
    # a different pin does not reuse collateral verified under the real one
    with pytest.raises(UntrustedRoot):
        v.verify(Evidence("tdx", spr, blobs), policy=bpol(roots=("00" * 32,)), at=vector_time,
                 collateral=Collateral())


# ------------------------------------------------------------------ policy knobs


def test_policy_knobs(spr, blobs, vector_time) -> None:
    q = parse_quote(spr)
    ev = Evidence("tdx", spr, blobs)
    base = {"accepted_tcb_statuses": NO_MATCH_OK}
    rtmr0 = q.body.rtmrs[0].hex()
    zero48 = "00" * 48
    passing = [
        {"rtmrs": {"rtmr0": [rtmr0], "rtmr3": [zero48]}},
        {"mrconfigid": [zero48], "mrowner": [zero48, "11" * 48], "mrownerconfig": [zero48]},
        {"mrseam": [q.body.mrseam.hex()]},
        {"td_attributes": {"mask": 1, "value": 0}, "xfam": {"mask": "0x3", "value": "0x3"}},
    ]
    for table in passing:
        verify_evidence(ev, None, policy(**base, **table), vector_time)
    failing = [
        ({"rtmrs": {"rtmr1": [rtmr0]}}, "rtmr1"),
        ({"mrconfigid": ["11" * 48]}, "mrconfigid"),
        ({"mrowner": ["11" * 48]}, "mrowner"),
        ({"mrseam": [zero48]}, "mrseam"),
        ({"td_attributes": {"mask": 1 << 30, "value": 0}}, "td_attributes"),
        ({"xfam": {"mask": 1 << 20, "value": 1 << 20}}, "xfam"),
    ]
    for table, field in failing:
        with pytest.raises(PolicyViolation) as err:
            verify_evidence(ev, None, policy(**base, **table), vector_time)
        assert err.value.field == field and err.value.expected is not None and err.value.actual is not None


@pytest.mark.parametrize("table", [
    {"acepted_tcb_statuses": ["UpToDate"]},
    {"accepted_tcb_statuses": ["Fine"]},
    {"accepted_tcb_statuses": "UpToDate"},
    {"require_collateral": "yes"},
    {"max_collateral_age_days": -1},
    {"rtmrs": {"rtmr9": ["00" * 48]}},
    {"rtmrs": {"rtmr0": ["00"]}},
    {"mrowner": []},
    {"xfam": {"mask": 1}},
    {"xfam": {"mask": 1, "value": 2}},
    {"td_attributes": {"mask": "zz", "value": 0}},
])
def test_bad_policy_options(spr, blobs, vector_time, table) -> None:
    with pytest.raises(PolicyError):
        verify_evidence(Evidence("tdx", spr, blobs), None, policy(**table), vector_time)


def test_wrong_kind_refused(spr, vector_time) -> None:
    with pytest.raises(AttestationError):
        TdxVerifier().verify(Evidence("snp", spr), policy=bpol(), at=vector_time, collateral=Collateral())


# ------------------------------------------------------------------ mutation test (spr_v4_quote.dat)


SPR_REGIONS = {
    "header.version": 0x000, "header.att_key_type": 0x002, "header.tee_type": 0x004, "header.reserved": 0x009,
    "header.qe_vendor_id": 0x010, "header.user_data": 0x020, "tee_tcb_svn": 0x030, "mrseam": 0x050,
    "mrsignerseam": 0x080, "seam_attributes": 0x0A0, "td_attributes": 0x0A8, "xfam": 0x0B0, "mrtd": 0x0C0,
    "mrconfigid": 0x0F0, "mrowner": 0x120, "mrownerconfig": 0x150, "rtmr0": 0x180, "rtmr1": 0x1B0, "rtmr2": 0x1E0,
    "rtmr3": 0x210, "report_data": 0x240, "sig_data_len": 0x278, "signature": 0x290, "attestation_key": 0x2D0,
    "cert_data_type": 0x2FC, "cert_data_size": 0x2FE, "qe_report.cpusvn": 0x302, "qe_report.miscselect": 0x312,
    "qe_report.attributes": 0x332, "qe_report.mrenclave": 0x350, "qe_report.mrsigner": 0x390,
    "qe_report.isvprodid": 0x402, "qe_report.isvsvn": 0x404, "qe_report.report_data": 0x450,
    "qe_report_signature": 0x4A0, "qe_auth_data_len": 0x4C2, "qe_auth_data": 0x4D0, "pck_cert_data_type": 0x4E4,
    "pck_cert_data_size": 0x4E6, "pck_chain.leaf": 0x600,
}


@pytest.mark.parametrize("region", list(SPR_REGIONS))
def test_spr_field_mutation_rejected(spr, blobs, verifier, vector_time, region) -> None:
    offset = SPR_REGIONS[region]
    pol = bpol(accepted_tcb_statuses=NO_MATCH_OK)
    verifier.verify(Evidence("tdx", spr, blobs), policy=pol, at=vector_time, collateral=Collateral())
    for flip in (0x01, 0x80):
        bad = bytearray(spr)
        bad[offset] ^= flip
        with pytest.raises(AttestationError):
            verifier.verify(Evidence("tdx", bytes(bad), blobs), policy=pol, at=vector_time, collateral=Collateral())


def test_spr_every_byte_mutation(spr, blobs, verifier, vector_time) -> None:
    """Every single-byte change before the PCK chain (and every 5th byte of the chain, for time) is rejected
    with a typed error, except PEM line breaks (re-wrapping is no change: the certificates decode to the same
    DER)."""
    q = parse_quote(spr)
    end = len(spr) - q.trailing_bytes
    chain_start = end - len(q.pck_chain)
    good = [c.public_bytes(serialization.Encoding.DER) for c in load_chain(q.pck_chain, "c")]
    pol = bpol(accepted_tcb_statuses=NO_MATCH_OK)
    accepted = []
    for i in [*range(chain_start), *range(chain_start, end, 5), *range(end - 70, end)]:
        bad = bytearray(spr)
        bad[i] ^= 0x01
        try:
            verifier.verify(Evidence("tdx", bytes(bad), blobs), policy=pol, at=vector_time, collateral=Collateral())
        except AttestationError:
            continue
        accepted.append(i)
    assert accepted, "expected PEM whitespace variants to be tolerated"
    for i in accepted:
        assert i >= chain_start and spr[i : i + 1] == b"\n"
        bad = bytearray(spr)
        bad[i] ^= 0x01
        chain = parse_quote(bytes(bad)).pck_chain
        assert [c.public_bytes(serialization.Encoding.DER) for c in load_chain(chain, "c")] == good
