"""Review hardening: hostile certificate bytes, JSON and policy values end in typed errors on every backend.

``cryptography`` parses some certificate fields lazily and raises ``x509.InvalidVersion`` (not a
``ValueError``) for a bad version; each loader must turn those into ``Malformed``, and ``verify_evidence``
must not let any stray parser error escape a backend.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctrain.attest import (
    AttestationError,
    BuildInfo,
    Collateral,
    Evidence,
    EvidenceBundle,
    Malformed,
    Policy,
    PolicyError,
    verify,
    verify_evidence,
)
from mpctrain.attest import backend as backend_mod
from mpctrain.attest.claims import CertSummary
from mpctrain.attest.files import load_bundle, load_evidence
from mpctrain.attest.policy import BackendPolicy
from mpctrain.attest.roots import DEFAULT_ROOTS
from mpctrain.attest.sim import SimAttester, SimRoot, SimVerifier
from mpctrain.attest.snp import der as der_reader
from mpctrain.attest.snp import parse_cert_table
from mpctrain.attest.tdx import TdxVerifier
from mpctrain.attest.tdx.quote import parse_quote
from mpctrain.seal.binding import evidence_binding

CERT_V3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2: X.509 v3
P384_OID = bytes.fromhex("06052b81040022")


def bad_version(der: bytes) -> bytes:
    """The certificate with its version field set to 7: loading raises ``x509.InvalidVersion``."""
    i = der.index(CERT_V3)
    return der[: i + 4] + b"\x07" + der[i + 5 :]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(ders: list[bytes]) -> bytes:
    return b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
                    for d in ders)


def pem_ders(path: Path) -> list[bytes]:
    return [der(c) for c in x509.load_pem_x509_certificates(path.read_bytes())]


def check(ev: Evidence, at: datetime, *, gpu: bool = False, policy: Policy | None = None) -> Malformed:
    with pytest.raises(Malformed) as err:
        verify_evidence(ev, None, policy or Policy.default(), at, Collateral(), gpu=gpu)
    return err.value


# --------------------------------------------------------------------------- certificate versions


def test_snp_certificates_with_a_bad_version_are_malformed(vectors, vector_time) -> None:
    snp = vectors / "snp"
    report, vcek = (snp / "milan_v2_report.bin").read_bytes(), (snp / "milan_v2_vcek.der").read_bytes()
    ask, ark = pem_ders(snp / "ask_ark_milan.pem")
    check(Evidence("snp", report, {"vcek": bad_version(vcek), "ask_ark": pem([ask, ark])}), vector_time)
    check(Evidence("snp", report, {"vcek": vcek, "ask_ark": pem([bad_version(ask), ark])}), vector_time)


def test_nvidia_chain_with_a_bad_version_is_malformed(vectors, vector_time) -> None:
    nv = vectors / "nvidia"
    data = bytes.fromhex((nv / "h100_report.hex").read_text().strip())
    chain = pem_ders(nv / "h100_cert_chain.pem")
    for i in (0, 2):
        bad = list(chain)
        bad[i] = bad_version(bad[i])
        check(Evidence("nvidia-gpu", data, {"chain": pem(bad)}), vector_time, gpu=True)


def test_nvidia_chain_with_unparsable_names_or_keys_is_malformed(vectors, vector_time) -> None:
    nv = vectors / "nvidia"
    data = bytes.fromhex((nv / "h100_report.hex").read_text().strip())
    chain = pem_ders(nv / "h100_cert_chain.pem")
    leaf = x509.load_der_x509_certificate(chain[0])
    issuer_name = leaf.issuer.public_bytes()
    tag = issuer_name.index(b"\x13")  # the first PrintableString; as an application tag it parses only lazily
    broken_name = issuer_name[:tag] + b"\x56" + issuer_name[tag + 1 :]
    bad = [chain[0].replace(issuer_name, broken_name, 1), *chain[1:]]
    assert bad[0] != chain[0]
    err = check(Evidence("nvidia-gpu", data, {"chain": pem(bad)}), vector_time, gpu=True)
    assert err.field == "chain[0]"
    assert P384_OID in chain[1]
    unknown_curve = [chain[0], chain[1].replace(P384_OID, P384_OID[:-1] + b"\x09", 1), *chain[2:]]
    err = check(Evidence("nvidia-gpu", data, {"chain": pem(unknown_curve)}), vector_time, gpu=True)
    assert err.field == "chain[0].issuer_key"


def test_tdx_pck_chain_with_a_bad_version_is_malformed(vectors, vector_time) -> None:
    quote = (vectors / "tdx" / "spr_v4_quote.dat").read_bytes()
    chain = parse_quote(quote).pck_chain
    start = quote.index(chain)
    certs = pem_ders_from(chain)
    new = pem([bad_version(certs[0]), *certs[1:]])
    delta = len(new) - len(chain)
    rebuilt = bytearray(quote[:start] + new + quote[start + len(chain) :])
    for offset in (0x278, 0x2FE):  # sig_data_len and the outer certification data size
        struct.pack_into("<I", rebuilt, offset, struct.unpack_from("<I", quote, offset)[0] + delta)
    struct.pack_into("<I", rebuilt, start - 4, len(new))  # the PCK chain's own size
    assert parse_quote(bytes(rebuilt)).pck_chain == new
    check(Evidence("tdx", bytes(rebuilt)), vector_time)


def pem_ders_from(raw: bytes) -> list[bytes]:
    return [der(c) for c in x509.load_pem_x509_certificates(raw.rstrip(b"\x00"))]


def test_sim_ak_with_a_bad_version_is_malformed(vector_time) -> None:
    root = SimRoot.generate(now=vector_time)
    ev = SimAttester(root, config_digest=b"c", clock=lambda: vector_time).attest(bytes(64))
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": "report-only"}})
    bad = Evidence("sim", ev.data, {**ev.certs, "ak": bad_version(ev.certs["ak"])})
    assert check(bad, vector_time, policy=policy).field == "certs.ak"


def test_certificate_files_with_a_bad_version_are_malformed(vectors, tmp_path) -> None:
    vcek = tmp_path / "vcek.der"
    vcek.write_bytes(bad_version((vectors / "snp" / "milan_v2_vcek.der").read_bytes()))
    with pytest.raises(Malformed):
        load_evidence("snp", vectors / "snp" / "milan_v2_report.bin", [vcek])


# --------------------------------------------------------------------------- the net in verify_evidence


class _Raising:
    kind = "sim"
    error: BaseException = ValueError("lazy field")

    def verify(self, evidence, *, policy, at, collateral):
        raise self.error


@pytest.mark.parametrize("error", [ValueError("x"), TypeError("x"), OverflowError("x"), x509.InvalidVersion("x", 9)])
def test_stray_backend_errors_become_malformed(monkeypatch, vector_time, error) -> None:
    _Raising.error = error
    monkeypatch.setattr(backend_mod, "VERIFIERS", {**backend_mod.VERIFIERS, "sim": f"{__name__}:_Raising"})
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"measurements": "report-only"}})
    err = check(Evidence("sim", b"x"), vector_time, policy=policy)
    assert err.field == "evidence" and type(error).__name__ in str(err)


def test_policy_errors_from_a_backend_are_not_relabelled(monkeypatch, vector_time) -> None:
    _Raising.error = PolicyError("bad knob")
    monkeypatch.setattr(backend_mod, "VERIFIERS", {**backend_mod.VERIFIERS, "sim": f"{__name__}:_Raising"})
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"measurements": "report-only"}})
    with pytest.raises(PolicyError):
        verify_evidence(Evidence("sim", b"x"), None, policy, vector_time)


def test_naive_verification_time_is_utc(vector_time) -> None:
    root = SimRoot.generate(now=vector_time)
    ev = SimAttester(root, config_digest=b"c", clock=lambda: vector_time).attest(bytes(64))
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": "report-only"}})
    naive = vector_time.replace(tzinfo=None)
    assert verify_evidence(ev, bytes(64), policy, naive) == verify_evidence(ev, bytes(64), policy, vector_time)


# --------------------------------------------------------------------------- JSON nesting bombs


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"gpus":' + b"[" * 100_000, b'{"cpu":' + b'{"a":' * 50_000])
def test_json_nesting_bombs_are_malformed(tmp_path, raw) -> None:
    with pytest.raises(Malformed):
        EvidenceBundle.from_json(raw)
    path = tmp_path / "evidence.json"
    path.write_bytes(b"{" + raw[1:] if raw[:1] == b"[" else raw)
    with pytest.raises(Malformed):
        load_evidence("sim", path)
    with pytest.raises(Malformed):
        load_bundle(path)


def test_crl_with_an_unparsable_issuer_name_is_malformed(vectors, vector_time) -> None:
    tdx = vectors / "tdx"
    files = {"tcb_info": "sample_tcbInfo_response", "tcb_info_issuer_chain": "tcb_info_issuer_chain.pem",
             "qe_identity": "sample_qeIdentity_response", "qe_identity_issuer_chain": "qe_identity_issuer_chain.pem",
             "pck_crl": "pckcrl", "pck_crl_issuer_chain": "pck_crl_issuer_chain.pem", "root_crl": "rootcrl.der"}
    certs = {k: (tdx / f).read_bytes() for k, f in files.items()}
    root_crl = certs["root_crl"]
    name = x509.load_der_x509_crl(root_crl).issuer.public_bytes()
    tag = name.index(b"\x0c")  # the first UTF8String; as an application tag it parses only lazily
    certs["root_crl"] = root_crl.replace(name, name[:tag] + b"\x56" + name[tag + 1 :], 1)
    assert certs["root_crl"] != root_crl
    policy = BackendPolicy(kind="tdx", roots=DEFAULT_ROOTS["tdx"], measurements=None,
                           options={"accepted_tcb_statuses": ["NoMatchingTcbLevel"]})
    ev = Evidence("tdx", (tdx / "spr_v4_quote.dat").read_bytes(), certs)
    with pytest.raises(Malformed) as err:
        TdxVerifier(private_cache=True).verify(ev, policy=policy, at=vector_time, collateral=Collateral())
    assert err.value.field == "root_crl"


def _sim(vector_time: datetime) -> tuple[SimRoot, Evidence]:
    root = SimRoot.generate(now=vector_time)
    return root, SimAttester(root, config_digest=b"c", clock=lambda: vector_time).attest(bytes(64))


def _sim_policy(root_sha256: str) -> BackendPolicy:
    return Policy.from_dict({"backends": ["sim"], "sim": {"roots": [root_sha256], "measurements": "report-only"}}
                            ).backend("sim")


def test_sim_ak_with_an_unparsable_issuer_name_is_malformed(vector_time) -> None:
    root, ev = _sim(vector_time)
    ak = ev.certs["ak"]
    name = x509.load_der_x509_certificate(ak).issuer.public_bytes()
    tag = name.index(b"\x0c")  # UTF8String CN; as an application tag it parses only lazily
    bad = Evidence("sim", ev.data, {**ev.certs, "ak": ak.replace(name, name[:tag] + b"\x56" + name[tag + 1 :], 1)})
    with pytest.raises(Malformed) as err:
        SimVerifier().verify(bad, policy=_sim_policy(root.sha256), at=vector_time, collateral=Collateral())
    assert err.value.field == "certs.ak"


def test_pinned_sim_root_with_an_unknown_key_type_is_malformed(vector_time) -> None:
    _, ev = _sim(vector_time)
    ed25519_oid = bytes.fromhex("06032b6570")
    root = ev.certs["root"].replace(ed25519_oid, ed25519_oid[:-1] + b"\x64")  # 1.3.101.100: no such key type
    assert root != ev.certs["root"]
    bad = Evidence("sim", ev.data, {**ev.certs, "root": root})
    with pytest.raises(Malformed) as err:
        SimVerifier().verify(bad, policy=_sim_policy(hashlib.sha256(root).hexdigest()), at=vector_time,
                             collateral=Collateral())
    assert err.value.field == "root.key"


# --------------------------------------------------------------------------- shared helpers stay exact


def test_cert_summary_hash_is_sha256_of_der(vectors) -> None:
    cert = x509.load_pem_x509_certificates((vectors / "nvidia" / "nvidia_device_identity_root.pem").read_bytes())[0]
    summary = CertSummary.of(cert)
    assert summary.sha256 == hashlib.sha256(der(cert)).hexdigest() == DEFAULT_ROOTS["nvidia-gpu"][0]
    assert summary.not_before.tzinfo is not None and summary.subject == cert.subject.rfc4514_string()
    assert CertSummary.of(cert, "ab").sha256 == "ab"


def test_bundle_json_is_byte_stable() -> None:
    """Receipts and audit records cite ``digest()``: the canonical JSON must not drift."""
    bundle = EvidenceBundle(cpu=Evidence("sim", b"\x01", {"root": b"\x02"}), kem_public=b"\x03", sig_public=b"\x04",
                            build=BuildInfo("1.0", b"\x05", b"\x06"))
    assert bundle.to_json() == (
        b'{"build":{"build_digest":"05","config_digest":"06","version":"1.0"},"cpu":{"certs":{"root":"Ag=="},'
        b'"data":"AQ==","kind":"sim"},"gpus":[],"kem_alg":"x25519","kem_public":"03","sig_public":"04"}')
    assert bundle.digest() == hashlib.sha256(bundle.to_json()).digest()


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.just("AA=="), st.just("00"))
_json = st.recursive(_json_leaf, lambda c: st.one_of(
    st.lists(c, max_size=3),
    st.dictionaries(st.sampled_from(["cpu", "gpus", "kind", "data", "certs", "kem_alg", "kem_public", "sig_public",
                                     "build", "version", "build_digest", "config_digest", "x"]), c, max_size=6),
), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_bundle_json_is_a_bundle_or_malformed(obj) -> None:
    try:
        EvidenceBundle.from_json(json.dumps(obj).encode())
    except Malformed:
        pass


@pytest.mark.parametrize(("kem_alg", "kem_len", "sig_len", "field"), [
    ("mlkem768-x25519", 32, 32, "kem_public"),  # the label is not bound: it must fit the bound key
    ("rsa", 32, 32, "kem_public"),
    ("x25519", 31, 32, "kem_public"),
    ("x25519", 32, 33, "sig_public"),
])
def test_attested_enclave_keys_must_be_usable(vector_time, kem_alg, kem_len, sig_len, field) -> None:
    root, _ = _sim(vector_time)
    attester = SimAttester(root, config_digest=b"c", clock=lambda: vector_time)
    build = BuildInfo("1", b"\x01" * 48)
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": "report-only"}})

    def bundle(alg: str, kem: bytes, sig: bytes) -> tuple[EvidenceBundle, bytes]:
        binding = evidence_binding(bytes(32), kem, sig, build.build_digest)
        return EvidenceBundle(cpu=attester.attest(binding), kem_public=kem, sig_public=sig, build=build,
                              kem_alg=alg), binding

    good, binding = bundle("x25519", b"\x09" * 32, b"\x0a" * 32)
    assert verify(good, binding, policy, vector_time).kem_public == b"\x09" * 32
    bad, binding = bundle(kem_alg, b"\x09" * kem_len, b"\x0a" * sig_len)
    with pytest.raises(Malformed) as err:
        verify(bad, binding, policy, vector_time)
    assert err.value.field == field


# --------------------------------------------------------------------------- small parsers, fuzzed

_GUIDS = [uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes, bytes(16), b"\x01" * 16]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_GUIDS), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                max_size=18), st.binary(max_size=200))
def test_any_snp_cert_table_is_certificates_or_malformed(entries, tail) -> None:
    blob = b"".join(guid + struct.pack("<II", offset, length) for guid, offset, length in entries) + tail
    try:
        for name, cert in parse_cert_table(blob).items():
            assert name in ("vcek", "vlek", "ask", "ark") and cert
    except Malformed:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_any_amd_extension_value_is_a_value_or_malformed(raw) -> None:
    for read in (der_reader.read_tlv, der_reader.read_uint, der_reader.read_ia5, der_reader.read_octets):
        try:
            read(raw, field="x")
        except Malformed:
            pass


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["sim", "snp", "tdx", "nvidia-gpu"]), st.binary(max_size=300))
def test_any_evidence_file_is_evidence_or_a_typed_error(tmp_path_factory, kind, raw) -> None:
    path = tmp_path_factory.mktemp("ev") / "evidence"
    path.write_bytes(raw)
    try:
        assert load_evidence(kind, path).kind == kind
    except AttestationError:
        pass
