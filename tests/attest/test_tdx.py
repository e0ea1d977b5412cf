"""Intel TDX verifier: real quotes and collateral from ../shared/vectors/tdx, synthetic v5 quotes, mutations."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from mpctrain.attest import (
    AttestationError,
    BackendPolicy,
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
    TcbStatusNotAllowed,
    TcbTooLow,
    UntrustedRoot,
    verify_evidence,
)
from mpctrain.attest.roots import INTEL_SGX_ROOT_CA_SHA256
from mpctrain.attest.tdx import TdxVerifier, collateral_names, parse_quote
from mpctrain.attest.tdx import collateral as coll
from mpctrain.attest.tdx.pck import load_chain
from mpctrain.attest.tdx.quote import INTEL_QE_VENDOR_ID

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
@pytest.mark.parametrize("statuses", [NO_MATCH_OK, ["UpToDate"]])
def test_stale_collateral_when_freshness_required(spr, blobs, vector_time, table, statuses) -> None:
    """Staleness is reported before the status it makes unreliable: the fix is to refresh the cache."""
    with pytest.raises(CollateralStale):
        verify_evidence(Evidence("tdx", spr, blobs), None, policy(accepted_tcb_statuses=statuses, **table),
                        vector_time)


def test_naive_time_is_utc(spr, blobs) -> None:
    claims = TdxVerifier().verify(Evidence("tdx", spr, blobs), policy=bpol(accepted_tcb_statuses=NO_MATCH_OK),
                                  at=datetime(2026, 11, 22), collateral=Collateral())
    assert claims.details["tcb_status"] == "NoMatchingTcbLevel"
    with pytest.raises(CertificateExpired):
        TdxVerifier().verify(Evidence("tdx", spr, blobs), policy=bpol(accepted_tcb_statuses=NO_MATCH_OK),
                             at=datetime(2060, 1, 1), collateral=Collateral())


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
    v = TdxVerifier(private_cache=True)
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


# ------------------------------------------------------------------ synthetic Intel PKI, quotes and collateral
# A self-made "Intel SGX Root CA" that only the test policy pins: proves the v5 parser, the signature paths,
# revocation and every TCB status without Intel's keys.


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    return x509.ObjectIdentifier(dotted).dotted_string and _der(0x06, _oid_body(dotted))


def _oid_body(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big"))


SGX = "1.2.840.113741.1.13.1"
SYN_FMSPC = bytes.fromhex("00906ed50000")
SYN_COMPS = (5,) * 16
SYN_PCESVN = 13
SYN_TEE_TCB_SVN = bytes([3, 0, 5]) + bytes(13)
QE_MRSIGNER = bytes(range(32))


def sgx_extension(comps=SYN_COMPS, pcesvn=SYN_PCESVN, fmspc=SYN_FMSPC, pceid=b"\0\0") -> bytes:
    seq = lambda *items: _der(0x30, b"".join(items))  # noqa: E731
    tcb = [seq(_oid(f"{SGX}.2.{i + 1}"), _int(c)) for i, c in enumerate(comps)]
    tcb.append(seq(_oid(f"{SGX}.2.17"), _int(pcesvn)))
    tcb.append(seq(_oid(f"{SGX}.2.18"), _der(0x04, bytes(comps))))
    return seq(
        seq(_oid(f"{SGX}.1"), _der(0x04, bytes(16))),
        seq(_oid(f"{SGX}.2"), seq(*tcb)),
        seq(_oid(f"{SGX}.3"), _der(0x04, pceid)),
        seq(_oid(f"{SGX}.4"), _der(0x04, fmspc)),
        seq(_oid(f"{SGX}.5"), _der(0x0A, b"\x00")),
    )


NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2040, 1, 1, tzinfo=UTC)


def _cert(cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, ext: bytes | None = None,
          not_before: datetime = NOT_BEFORE, not_after: datetime = NOT_AFTER) -> x509.Certificate:
    name = lambda c: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, c)])  # noqa: E731
    b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(issuer_cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ext is not None:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX), ext), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _raw_sig(key, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _level(status: str, comps=SYN_COMPS, pcesvn=SYN_PCESVN, tdx=SYN_TEE_TCB_SVN, advisories=()) -> dict:
    lvl = {"tcb": {"sgxtcbcomponents": [{"svn": c} for c in comps], "pcesvn": pcesvn,
                   "tdxtcbcomponents": [{"svn": t} for t in tdx]},
           "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": status}
    if advisories:
        lvl["advisoryIDs"] = list(advisories)
    return lvl


class Pki:
    def __init__(self) -> None:
        new = lambda: ec.generate_private_key(ec.SECP256R1())  # noqa: E731
        self.root_key, self.ca_key, self.pck_key, self.tcb_key, self.att_key = (new() for _ in range(5))
        self.root = _cert("Intel SGX Root CA", self.root_key, "Intel SGX Root CA", self.root_key, ca=True)
        self.ca = _cert("Intel SGX PCK Platform CA", self.ca_key, "Intel SGX Root CA", self.root_key, ca=True)
        self.pck = _cert("Intel SGX PCK Certificate", self.pck_key, "Intel SGX PCK Platform CA", self.ca_key,
                         ca=False, ext=sgx_extension())
        self.tcb_signer = _cert("Intel SGX TCB Signing", self.tcb_key, "Intel SGX Root CA", self.root_key, ca=False)
        self.pin = hashlib.sha256(self.root.public_bytes(serialization.Encoding.DER)).hexdigest()

    def quote(self, *, version: int = 4, body_type: int = 2, body: bytes, chain: bytes | None = None,
              pck_key=None, qe_isvsvn: int = 4, qe_mrsigner: bytes = QE_MRSIGNER, pad: int = 0) -> bytes:
        header = struct.pack("<HHI", version, 2, 0x81) + bytes(4) + INTEL_QE_VENDOR_ID + bytes(20)
        if version == 5:
            header += struct.pack("<HI", body_type, len(body))
        signed = header + body
        att = self.att_key.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)[1:]
        auth = bytes(range(32))
        qe = bytearray(384)
        qe[0:16] = bytes(SYN_COMPS)
        qe[0x30:0x40] = bytes.fromhex("11000000000000000000000000000000")
        qe[0x80:0xA0] = qe_mrsigner
        struct.pack_into("<HH", qe, 0x100, 2, qe_isvsvn)
        qe[0x140:0x180] = hashlib.sha256(att + auth).digest() + bytes(32)
        chain = _pem(self.pck, self.ca, self.root) + b"\0" if chain is None else chain
        inner = struct.pack("<HI", 5, len(chain)) + chain
        outer = bytes(qe) + _raw_sig(pck_key or self.pck_key, bytes(qe)) + struct.pack("<H", len(auth)) + auth + inner
        sig_data = _raw_sig(self.att_key, signed) + att + struct.pack("<HI", 6, len(outer)) + outer
        return signed + struct.pack("<I", len(sig_data)) + sig_data + bytes(pad)

    def signed_json(self, inner_key: str, obj: dict, key=None) -> bytes:
        text = json.dumps(obj, separators=(",", ":")).encode()
        sig = _raw_sig(key or self.tcb_key, text).hex()
        return b'{"' + inner_key.encode() + b'":' + text + b',"signature":"' + sig.encode() + b'"}'

    def tcb_info(self, levels: list[dict], *, issued: datetime = datetime(2026, 11, 1, tzinfo=UTC), **extra) -> bytes:
        obj = {"id": "TDX", "version": 3, "issueDate": issued.isoformat().replace("+00:00", "Z"),
               "nextUpdate": (issued + timedelta(days=30)).isoformat().replace("+00:00", "Z"),
               "fmspc": SYN_FMSPC.hex(), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17,
               "tdxModule": {"mrsigner": "00" * 48, "attributes": "0000000000000000",
                             "attributesMask": "FFFFFFFFFFFFFFFF"},
               "tcbLevels": levels, **extra}
        return self.signed_json("tcbInfo", obj)

    def qe_identity(self, *, levels=None, **over) -> bytes:
        obj = {"id": "TD_QE", "version": 2, "issueDate": "2026-11-01T00:00:00Z", "nextUpdate": "2026-12-01T00:00:00Z",
               "tcbEvaluationDataNumber": 17, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
               "attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
               "mrsigner": QE_MRSIGNER.hex().upper(), "isvprodid": 2,
               "tcbLevels": levels or [{"tcb": {"isvsvn": 4}, "tcbDate": "2025-01-01T00:00:00Z",
                                        "tcbStatus": "UpToDate"}], **over}
        return self.signed_json("enclaveIdentity", obj)

    def crl(self, issuer: x509.Certificate, key, revoked: tuple[x509.Certificate, ...] = ()) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
             .last_update(datetime(2026, 11, 1, tzinfo=UTC)).next_update(datetime(2026, 12, 1, tzinfo=UTC)))
        for c in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                          .revocation_date(datetime(2026, 1, 1, tzinfo=UTC)).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def collateral(self, status: str = "UpToDate", **over: bytes) -> dict[str, bytes]:
        chain = _pem(self.tcb_signer, self.root)
        out = {"tcb_info": self.tcb_info([_level(status)]), "tcb_info_issuer_chain": chain,
               "qe_identity": self.qe_identity(), "qe_identity_issuer_chain": chain,
               "pck_crl": self.crl(self.ca, self.ca_key), "pck_crl_issuer_chain": _pem(self.ca, self.root),
               "root_crl": self.crl(self.root, self.root_key)}
        out.update(over)
        return out


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def body2(spr: bytes) -> bytes:
    body = bytearray(spr[0x30:0x278])
    body[0:16] = SYN_TEE_TCB_SVN
    return bytes(body)


def spol(pki: Pki, **options: object) -> BackendPolicy:
    return bpol(roots=(pki.pin,), **options)


def sverify(pki: Pki, quote: bytes, certs: dict[str, bytes] | None = None, at: datetime | None = None,
            cache: Collateral | None = None, **options: object):
    at = at or datetime(2026, 11, 22, tzinfo=UTC)
    return TdxVerifier().verify(Evidence("tdx", quote, pki.collateral() if certs is None else certs),
                                policy=spol(pki, **options), at=at, collateral=cache or Collateral())


def as_cache(certs: dict[str, bytes]) -> Collateral:
    names = collateral_names(SYN_FMSPC.hex())
    return Collateral({names[k].cache_name: v for k, v in certs.items()})


def test_synthetic_v4_verifies(pki, body2) -> None:
    claims = sverify(pki, pki.quote(body=body2))
    assert claims.details["tcb_status"] == "UpToDate" and claims.details["collateral_stale"] == []
    assert claims.measurement.hex().startswith(SPR_MRTD)


@pytest.mark.parametrize("body_type", [2, 3])
def test_synthetic_v5_quotes(pki, body2, body_type) -> None:
    extra = bytes([1] * 16) + bytes([0xAB] * 48) if body_type == 3 else b""
    quote = pki.quote(version=5, body_type=body_type, body=body2 + extra, pad=300)
    q = parse_quote(quote)
    assert (q.version, q.body_type, len(q.signed), q.trailing_bytes) == (5, body_type, 0x36 + len(body2 + extra), 300)
    assert quote[0xBE:0xEE] == q.body.mrtd and quote[0x23E:0x27E] == q.body.report_data
    claims = sverify(pki, quote)
    assert claims.measurement.hex().startswith(SPR_MRTD)
    assert claims.report_data.hex().startswith(SPR_REPORT_DATA)
    assert claims.details["quote_version"] == 5 and claims.details["body_type"] == body_type
    if body_type == 3:
        assert claims.tcb["tee_tcb_svn2_0"] == 1 and claims.details["mrservicetd"] == "ab" * 48
    else:
        assert "tee_tcb_svn2_0" not in claims.tcb
    # the v5 signature covers the body type and size fields too
    for offset in (0x30, 0x32, 0x36 + 0x88, len(q.signed) - 1):
        bad = bytearray(quote)
        bad[offset] ^= 1
        with pytest.raises(AttestationError):
            sverify(pki, bytes(bad))


@pytest.mark.parametrize(("body_type", "size"), [(1, 384), (2, 648), (3, 584), (4, 584)])
def test_v5_wrong_body_type_or_size(pki, body2, body_type, size) -> None:
    body = (body2 + bytes(64))[:size]
    with pytest.raises(Malformed):
        parse_quote(pki.quote(version=5, body_type=body_type, body=body))


@pytest.mark.parametrize("status", coll.TCB_STATUSES)
def test_each_tcb_status_is_distinct(pki, body2, status) -> None:
    quote = pki.quote(body=body2)
    certs = pki.collateral(status)
    claims = sverify(pki, quote, certs, accepted_tcb_statuses=[status])
    assert claims.details["tcb_status"] == status
    if status in ("UpToDate", "SWHardeningNeeded"):
        assert sverify(pki, quote, certs).details["tcb_status"] == status
    else:
        with pytest.raises(TcbStatusNotAllowed) as err:
            sverify(pki, quote, certs)
        assert err.value.actual == status


def test_first_matching_level_wins(pki, body2) -> None:
    newer = _level("UpToDate", comps=(6,) * 16)
    older = _level("OutOfDate", advisories=("INTEL-SA-00001",))
    certs = pki.collateral(tcb_info=pki.tcb_info([newer, older]))
    claims = sverify(pki, pki.quote(body=body2), certs, accepted_tcb_statuses=["OutOfDate"])
    assert claims.details["tcb_status"] == "OutOfDate"
    assert claims.details["advisory_ids"] == ["INTEL-SA-00001"]
    higher_pce = pki.collateral(tcb_info=pki.tcb_info([_level("UpToDate", pcesvn=SYN_PCESVN + 1)]))
    with pytest.raises(TcbStatusNotAllowed):
        sverify(pki, pki.quote(body=body2), higher_pce)


def test_revoked_pck_and_ca(pki, body2) -> None:
    quote = pki.quote(body=body2)
    cases = [
        {"pck_crl": pki.crl(pki.ca, pki.ca_key, (pki.pck,))},
        {"root_crl": pki.crl(pki.root, pki.root_key, (pki.ca,))},
        {"root_crl": pki.crl(pki.root, pki.root_key, (pki.tcb_signer,))},
    ]
    for over in cases:
        with pytest.raises(CertificateRevoked):
            sverify(pki, quote, pki.collateral(**over))
    # a CRL signed by the wrong key
    with pytest.raises(BadSignature):
        sverify(pki, quote, pki.collateral(pck_crl=pki.crl(pki.ca, pki.root_key)))


def test_qe_identity_mismatch(pki, body2) -> None:
    quote = pki.quote(body=body2)
    for over, field in [
        ({"mrsigner": "00" * 32}, "qe_report.mrsigner"),
        ({"isvprodid": 1}, "qe_report.isvprodid"),
        ({"miscselect": "00000001"}, "qe_report.miscselect"),
        ({"attributes": "13000000000000000000000000000000"}, "qe_report.attributes"),
    ]:
        with pytest.raises(PolicyViolation) as err:
            sverify(pki, quote, pki.collateral(qe_identity=pki.qe_identity(**over)))
        assert err.value.field == field
    # masked-out attribute bits do not matter
    sverify(pki, quote, pki.collateral(qe_identity=pki.qe_identity(attributes="15000000000000000000000000000000")))
    # a QE below every level is out of date
    old_qe = pki.quote(body=body2, qe_isvsvn=3)
    with pytest.raises(TcbStatusNotAllowed) as err2:
        sverify(pki, old_qe)
    assert err2.value.actual == "OutOfDate"
    qe_levels = [{"tcb": {"isvsvn": 4}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
                 {"tcb": {"isvsvn": 3}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "Revoked"}]
    with pytest.raises(TcbStatusNotAllowed) as err3:
        sverify(pki, old_qe, pki.collateral(qe_identity=pki.qe_identity(levels=qe_levels)))
    assert err3.value.actual == "Revoked"


def test_tdx_module_identity_rule(pki, spr) -> None:
    body = bytearray(spr[0x30:0x278])
    body[0:16] = bytes([3, 1, 5]) + bytes(13)  # module SVN 3, major version 1
    quote = pki.quote(body=bytes(body))
    level = _level("UpToDate", tdx=bytes([9, 9, 5]) + bytes(13))  # components 0-1 are judged by the module
    ident = {"id": "TDX_01", "mrsigner": "00" * 48, "attributes": "0000000000000000",
             "attributesMask": "FFFFFFFFFFFFFFFF",
             "tcbLevels": [{"tcb": {"isvsvn": 4}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
                           {"tcb": {"isvsvn": 2}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate"}]}
    certs = pki.collateral(tcb_info=pki.tcb_info([level], tdxModuleIdentities=[ident]))
    claims = sverify(pki, quote, certs, accepted_tcb_statuses=["OutOfDate"])
    assert claims.details["tdx_module_tcb_status"] == "OutOfDate" and claims.details["tcb_status"] == "OutOfDate"
    other = {**ident, "id": "TDX_02"}
    certs = pki.collateral(tcb_info=pki.tcb_info([level], tdxModuleIdentities=[other]))
    assert sverify(pki, quote, certs, accepted_tcb_statuses=["NoMatchingTcbLevel"]).details["tcb_status"] == (
        "NoMatchingTcbLevel")
    signer = {**ident, "mrsigner": "11" * 48}
    with pytest.raises(PolicyViolation):
        sverify(pki, quote, pki.collateral(tcb_info=pki.tcb_info([level], tdxModuleIdentities=[signer])),
                accepted_tcb_statuses=["OutOfDate"])


def test_tdx10_module_mismatch(pki, body2) -> None:
    bad = bytearray(body2)
    bad[0x40:0x70] = b"\x11" * 48  # MRSIGNERSEAM is not Intel's (zero) signer
    with pytest.raises(PolicyViolation) as err:
        sverify(pki, pki.quote(body=bytes(bad)))
    assert err.value.field == "mrsignerseam"
    bad = bytearray(body2)
    bad[0x70] = 1  # SEAM_ATTRIBUTES bit outside tcbInfo's (all-zero) attributes under a full mask
    with pytest.raises(PolicyViolation) as err:
        sverify(pki, pki.quote(body=bytes(bad)))
    assert err.value.field == "seam_attributes"


def test_synthetic_chain_failures(pki, body2) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    forged_pck = _cert("Intel SGX PCK Certificate", pki.pck_key, "Intel SGX PCK Platform CA", other, ca=False,
                       ext=sgx_extension())
    wrong_cn = _cert("Intel SGX TCB Signing", pki.pck_key, "Intel SGX PCK Platform CA", pki.ca_key, ca=False,
                     ext=sgx_extension())
    no_ext = _cert("Intel SGX PCK Certificate", pki.pck_key, "Intel SGX PCK Platform CA", pki.ca_key, ca=False)
    expired = _cert("Intel SGX PCK Certificate", pki.pck_key, "Intel SGX PCK Platform CA", pki.ca_key, ca=False,
                    ext=sgx_extension(), not_after=datetime(2026, 1, 1, tzinfo=UTC))
    leaf_as_ca = _cert("Intel SGX PCK Platform CA", pki.ca_key, "Intel SGX Root CA", pki.root_key, ca=False)
    bad_ext = _cert("Intel SGX PCK Certificate", pki.pck_key, "Intel SGX PCK Platform CA", pki.ca_key, ca=False,
                    ext=sgx_extension()[:-3])
    for chain, exc in [
        (_pem(forged_pck, pki.ca, pki.root), BadSignature),
        (_pem(wrong_cn, pki.ca, pki.root), UntrustedRoot),
        (_pem(no_ext, pki.ca, pki.root), Malformed),
        (_pem(bad_ext, pki.ca, pki.root), Malformed),
        (_pem(expired, pki.ca, pki.root), CertificateExpired),
        (_pem(pki.pck, leaf_as_ca, pki.root), UntrustedRoot),
        (_pem(pki.pck, pki.root), UntrustedRoot),
        (_pem(pki.pck, pki.ca, pki.root, pki.root), UntrustedRoot),
        (_pem(pki.pck, pki.tcb_signer, pki.root), UntrustedRoot),
        (b"".join(c.public_bytes(serialization.Encoding.DER) for c in (pki.root, pki.ca, pki.pck)), None),
    ]:
        quote = pki.quote(body=body2, chain=chain)
        if exc is None:
            sverify(pki, quote)  # DER chain, root first (as in Intel's QVL samples)
        else:
            with pytest.raises(exc):
                sverify(pki, quote)
    # QE report signed by a key that is not the PCK's
    with pytest.raises(BadSignature):
        sverify(pki, pki.quote(body=body2, pck_key=other))


def test_synthetic_collateral_time_checks(pki, body2) -> None:
    quote = pki.quote(body=body2)
    future = pki.collateral(tcb_info=pki.tcb_info([_level("UpToDate")], issued=datetime(2027, 1, 1, tzinfo=UTC)))
    with pytest.raises(CertificateExpired):
        sverify(pki, quote, future)
    # a signer that had expired when it signed is refused outright
    old = ec.generate_private_key(ec.SECP256R1())
    lapsed = _cert("Intel SGX TCB Signing", old, "Intel SGX Root CA", pki.root_key, ca=False,
                   not_after=datetime(2026, 6, 1, tzinfo=UTC))
    obj = json.loads(pki.tcb_info([_level("UpToDate")]))["tcbInfo"]
    certs = pki.collateral(tcb_info=pki.signed_json("tcbInfo", obj, key=old),
                           tcb_info_issuer_chain=_pem(lapsed, pki.root))
    with pytest.raises(CertificateExpired):
        sverify(pki, quote, certs)
    # fresh collateral passes the strictest freshness policy; a month later it is stale
    sverify(pki, quote, max_collateral_age_days=30, require_fresh_collateral=True)
    with pytest.raises(CollateralStale):
        sverify(pki, quote, at=datetime(2027, 1, 15, tzinfo=UTC), require_fresh_collateral=True)
    with pytest.raises(CollateralStale):
        sverify(pki, quote, at=datetime(2026, 11, 25, tzinfo=UTC), max_collateral_age_days=1)


def test_wrong_platform_collateral(pki, body2) -> None:
    obj = json.loads(pki.tcb_info([_level("UpToDate")]))["tcbInfo"]
    for key, value in (("fmspc", "00906ed50001"), ("pceId", "0100")):
        certs = pki.collateral(tcb_info=pki.signed_json("tcbInfo", {**obj, key: value}))
        with pytest.raises(CollateralMissing):
            sverify(pki, pki.quote(body=body2), certs)


@pytest.mark.parametrize("change", [
    {"version": 2}, {"id": "SGX"}, {"tcbLevels": []}, {"fmspc": "zz"}, {"issueDate": "yesterday"},
    {"tcbLevels": [{"tcb": {}, "tcbStatus": "UpToDate", "tcbDate": "x"}]},
    {"tcbLevels": [_level("Great")]}, {"tcbLevels": [{**_level("UpToDate"), "advisoryIDs": "x"}]},
    {"tdxModuleIdentities": {"id": "TDX_01"}}, {"tcbLevels": [_level("UpToDate", pcesvn=-1)]},
])
def test_schema_errors_are_malformed(pki, body2, change) -> None:
    obj = json.loads(pki.tcb_info([_level("UpToDate")]))["tcbInfo"]
    with pytest.raises(Malformed):
        sverify(pki, pki.quote(body=body2), pki.collateral(tcb_info=pki.signed_json("tcbInfo", {**obj, **change})))


# ------------------------------------------------------------------ TCB status convergence (Intel's table)


@pytest.mark.parametrize(("platform", "qe", "expected"), [
    ("UpToDate", "UpToDate", "UpToDate"),
    ("SWHardeningNeeded", "UpToDate", "SWHardeningNeeded"),
    ("UpToDate", "OutOfDate", "OutOfDate"),
    ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
    ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"),
    ("OutOfDate", "Revoked", "Revoked"),
    ("Revoked", "UpToDate", "Revoked"),
])
def test_status_convergence(platform, qe, expected) -> None:
    info = coll.parse_tcb_info(_info(platform))
    ident = coll.parse_qe_identity(json.loads(_qe_json(qe)))
    ev = coll.evaluate(info, SYN_COMPS, SYN_PCESVN, SYN_TEE_TCB_SVN, ident, 4)
    assert (ev.platform_status, ev.qe_status, ev.status) == (platform, qe, expected)


def _info(status: str) -> dict:
    return {"id": "TDX", "version": 3, "issueDate": "2026-11-01T00:00:00Z", "nextUpdate": "2026-12-01T00:00:00Z",
            "fmspc": SYN_FMSPC.hex(), "pceId": "0000", "tcbEvaluationDataNumber": 1, "tcbLevels": [_level(status)]}


def _qe_json(status: str) -> str:
    return json.dumps({"id": "TD_QE", "version": 2, "issueDate": "2026-11-01T00:00:00Z", "tcbEvaluationDataNumber": 1,
                       "nextUpdate": "2026-12-01T00:00:00Z", "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
                       "attributes": "00" * 16, "attributesMask": "00" * 16, "mrsigner": "00" * 32, "isvprodid": 2,
                       "tcbLevels": [{"tcb": {"isvsvn": 1}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": status}]})


def test_cache_only_synthetic(pki, body2) -> None:
    claims = sverify(pki, pki.quote(body=body2), {}, cache=as_cache(pki.collateral()))
    assert claims.details["tcb_status"] == "UpToDate" and claims.details["collateral_missing"] == []


def test_shipped_collateral_cannot_roll_back_the_cache(pki, body2) -> None:
    """The host ships old (validly signed) collateral; the party's newer cache still decides."""
    quote = pki.quote(body=body2)
    old = pki.collateral("UpToDate")
    newer = pki.collateral(tcb_info=pki.tcb_info([_level("OutOfDate")], tcbEvaluationDataNumber=18))
    with pytest.raises(TcbStatusNotAllowed):
        sverify(pki, quote, old, cache=as_cache(newer))
    claims = sverify(pki, quote, old, cache=as_cache(newer), accepted_tcb_statuses=["OutOfDate"])
    assert claims.details["tcb_status"] == "OutOfDate" and claims.details["tcb_evaluation_data_number"] == 18
    # and the other way round: newer shipped collateral wins over an old cache
    assert sverify(pki, quote, newer, cache=as_cache(old), accepted_tcb_statuses=["OutOfDate"])
    # a revocation in the cache's CRL is not undone by an older CRL shipped with the evidence
    revoked = pki.collateral(pck_crl=pki.crl(pki.ca, pki.ca_key, (pki.pck,)))
    with pytest.raises(CertificateRevoked):
        sverify(pki, quote, old, cache=as_cache(revoked))
    # every copy must verify, wherever it comes from
    bad = {"tcb_info": pki.collateral()["tcb_info"].replace(b'"pcesvn":13', b'"pcesvn":12')}
    with pytest.raises(BadSignature):
        sverify(pki, quote, old, cache=as_cache(bad))


# ------------------------------------------------------------------ property tests: garbage in, typed error out

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mpctrain.attest.tdx.pck import parse_sgx_extensions  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_parse_quote(data: bytes) -> None:
    try:
        parse_quote(data)
    except Malformed:
        pass


@FUZZ
@given(prefix=st.binary(min_size=48, max_size=48), rest=st.binary(max_size=1500))
def test_fuzz_parse_quote_valid_header(spr: bytes, prefix: bytes, rest: bytes) -> None:
    for version in (4, 5):
        data = struct.pack("<HH", version, 2) + spr[4:48] + rest
        try:
            parse_quote(data)
        except Malformed:
            pass


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 0x4E9), st.integers(1, 255)), min_size=1, max_size=4,
                    unique_by=lambda e: e[0]))
def test_fuzz_multi_byte_mutations(spr, blobs, verifier, vector_time, edits) -> None:
    bad = bytearray(spr)
    for offset, xor in edits:
        bad[offset] ^= xor
    with pytest.raises(AttestationError):
        verifier.verify(Evidence("tdx", bytes(bad), blobs), policy=bpol(accepted_tcb_statuses=NO_MATCH_OK),
                        at=vector_time, collateral=Collateral())


@FUZZ
@given(text=st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                   lambda kids: st.lists(kids, max_size=3)
                                   | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                                   max_leaves=12).map(lambda o: json.dumps({"tcbInfo": o, "signature": "00"})
                                                      .encode())))
def test_fuzz_signed_json(text: bytes) -> None:
    try:
        body, obj, sig = coll.split_signed_json(text, "tcbInfo", "tcb_info")
    except Malformed:
        return
    assert json.loads(body) == obj and len(sig) == 64
    try:
        coll.parse_tcb_info(obj)
    except Malformed:
        pass


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_load_crl(data: bytes) -> None:
    try:
        coll.load_crl(data, "pck_crl")
    except Malformed:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_sgx_extension(pki, data) -> None:
    good = sgx_extension()
    choice = data.draw(st.sampled_from(["random", "mutate", "truncate"]))
    if choice == "random":
        ext = data.draw(st.binary(max_size=300))
    elif choice == "mutate":
        i = data.draw(st.integers(0, len(good) - 1))
        ext = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1:]
    else:
        ext = good[: data.draw(st.integers(0, len(good) - 1))]
    cert = _cert("Intel SGX PCK Certificate", pki.pck_key, "Intel SGX PCK Platform CA", pki.ca_key, ca=False, ext=ext)
    try:
        parse_sgx_extensions(cert)
    except Malformed:
        pass


def test_sgx_extension_roundtrip(pki) -> None:
    ext = parse_sgx_extensions(pki.pck)
    assert ext.fmspc == SYN_FMSPC and ext.pceid == b"\0\0" and ext.pcesvn == SYN_PCESVN
    assert ext.sgx_tcb_components == SYN_COMPS and ext.cpusvn == bytes(SYN_COMPS) and ext.sgx_type == 0


def test_policy_file_end_to_end(spr, tdx_dir, tmp_path, vector_time) -> None:
    """Policy as data: the [tdx] knobs come from TOML, collateral from the cache directory it names."""
    cache_dir(tmp_path / "coll", tdx_dir)
    q = parse_quote(spr)
    path = tmp_path / "policy.toml"
    path.write_text(
        'backends = ["tdx"]\ncollateral_dir = "coll"\n[tdx]\n'
        f'measurements = ["{q.body.mrtd.hex()}"]\n'
        'accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded", "NoMatchingTcbLevel"]\n'
        'min_tcb = { tee_tcb_svn_2 = 4 }\n'
        f'rtmrs = {{ rtmr0 = ["{q.body.rtmrs[0].hex()}"] }}\n'
        'td_attributes = { mask = 1, value = 0 }\n'
    )
    claims = verify_evidence(Evidence("tdx", spr), q.body.report_data, Policy.load(path), vector_time)
    assert claims.details["tcb_status"] == "NoMatchingTcbLevel"
    path.write_text(path.read_text() + "require_fresh_collateral = true\n")
    with pytest.raises(CollateralStale):
        verify_evidence(Evidence("tdx", spr), q.body.report_data, Policy.load(path), vector_time)


def test_tdx_module_major_version_without_identities(pki, spr) -> None:
    """Without tdxModuleIdentities every TDX component is compared, as in TDX 1.0."""
    body = bytearray(spr[0x30:0x278])
    body[0:16] = bytes([3, 1, 5]) + bytes(13)
    quote = pki.quote(body=bytes(body))
    assert sverify(pki, quote, pki.collateral(tcb_info=pki.tcb_info(
        [_level("UpToDate", tdx=bytes([3, 1, 5]) + bytes(13))]))).details["tdx_module_tcb_status"] is None
    with pytest.raises(TcbStatusNotAllowed):
        higher = pki.tcb_info([_level("UpToDate", tdx=bytes([3, 2, 5]) + bytes(13))])
        sverify(pki, quote, pki.collateral(tcb_info=higher))


def test_synthetic_crl_checks(pki, body2) -> None:
    quote = pki.quote(body=body2)
    future = (x509.CertificateRevocationListBuilder().issuer_name(pki.ca.subject)
              .last_update(datetime(2027, 1, 1, tzinfo=UTC)).next_update(datetime(2027, 2, 1, tzinfo=UTC))
              .sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    with pytest.raises(CertificateExpired):
        sverify(pki, quote, pki.collateral(pck_crl=future))
    with pytest.raises(BadSignature):  # root CRL signed by another key
        sverify(pki, quote, pki.collateral(root_crl=pki.crl(pki.root, pki.ca_key)))
    processor_key = ec.generate_private_key(ec.SECP256R1())
    processor = _cert("Intel SGX PCK Processor CA", processor_key, "Intel SGX Root CA", pki.root_key, ca=True)
    with pytest.raises(CollateralMissing):  # a CRL of the other PCK CA says nothing about this PCK
        sverify(pki, quote, pki.collateral(pck_crl=pki.crl(processor, processor_key),
                                           pck_crl_issuer_chain=_pem(processor, pki.root)))
    # without the optional issuer chain the quote's own PCK CA checks the CRL
    certs = pki.collateral()
    del certs["pck_crl_issuer_chain"]
    assert sverify(pki, quote, certs).details["tcb_status"] == "UpToDate"
    stale = sverify(pki, quote, at=datetime(2026, 12, 15, tzinfo=UTC))
    assert any(s.startswith("pck_crl.nextUpdate") for s in stale.details["collateral_stale"])
