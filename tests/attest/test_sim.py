"""The simulated TEE through the common ``verify()`` path: every check passes once, then fails on its own."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpctrain.attest import (
    AttestationError,
    BackendNotAllowed,
    BackendPolicy,
    BadSignature,
    BindingMismatch,
    BuildInfo,
    CertificateExpired,
    DebugEnabled,
    Evidence,
    EvidenceBundle,
    Malformed,
    MeasurementNotAllowed,
    Policy,
    PolicyError,
    PolicyViolation,
    TcbTooLow,
    UntrustedRoot,
    verify,
    verify_evidence,
)
from mpctrain.attest.backend import get_verifier
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.measure import code_digest, default_package_dir, sim_measurement
from mpctrain.attest.sim import (
    AK_CN,
    MAX_REPORT_BYTES,
    ROOT_CN,
    SimAttester,
    SimRoot,
    SimRootError,
    SimVerifier,
    create_sim_root,
    encode_report_body,
    parse_report,
    root_pin,
)
from mpctrain.seal.binding import evidence_binding

CONFIG = hashlib.sha256(b"aggregator config").digest()
BUILD = BuildInfo(version="0.1.0", build_digest=hashlib.sha256(b"build").digest(), config_digest=CONFIG)


@pytest.fixture(scope="module")
def root(vector_time: datetime) -> SimRoot:
    return SimRoot.generate(now=vector_time - timedelta(days=30))


@pytest.fixture(scope="module")
def attester(root: SimRoot, vector_time: datetime) -> SimAttester:
    return SimAttester(root, config_digest=CONFIG, clock=lambda: vector_time)


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    kem = X25519PrivateKey.generate().public_key().public_bytes_raw()
    sig = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return kem, sig


def sim_policy(root: SimRoot, measurement: bytes | None = None, **table: object) -> Policy:
    sim: dict[str, object] = {"roots": [root.sha256], "measurements": [(measurement or _expected()).hex()]}
    sim.update(table)
    return Policy.from_dict({"backends": ["sim"], "sim": sim})


def _expected() -> bytes:
    return sim_measurement(CONFIG)


def make_bundle(att: SimAttester, keys: tuple[bytes, bytes], nonce: bytes) -> tuple[EvidenceBundle, bytes]:
    kem, sig = keys
    binding = evidence_binding(nonce, kem, sig, BUILD.build_digest)
    return EvidenceBundle(cpu=att.attest(binding), kem_public=kem, sig_public=sig, build=BUILD), binding


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# --------------------------------------------------------------------------- happy path


def test_valid_bundle_passes_verify(root, attester, keys, vector_time) -> None:
    nonce = os.urandom(32)
    bundle, binding = make_bundle(attester, keys, nonce)
    result = verify(bundle, binding, sim_policy(root), vector_time)
    assert result.cpu.backend == "sim"
    assert result.cpu.product == "simulated"
    assert result.cpu.measurement == sim_measurement(CONFIG) == attester.measurement
    assert result.cpu.report_data == binding
    assert result.cpu.debug is False
    assert result.cpu.tcb == {"svn": 1}
    assert [c.subject for c in result.cpu.chain] == [f"CN={AK_CN}", f"CN={ROOT_CN}"]
    assert result.cpu.details["root_sha256"] == root.sha256
    assert result.kem_public == keys[0] and result.sig_public == keys[1]
    assert result.evidence_digest == bundle.digest()


def test_registry_resolves_the_sim_verifier() -> None:
    assert isinstance(get_verifier("sim"), SimVerifier)


def test_json_round_trip_still_verifies(root, attester, keys, vector_time) -> None:
    bundle, binding = make_bundle(attester, keys, os.urandom(32))
    again = EvidenceBundle.from_json(bundle.to_json())
    assert verify(again, binding, sim_policy(root), vector_time).cpu.report_data == binding


def test_tcb_and_debug_are_reported(root, vector_time) -> None:
    att = SimAttester(root, config_digest=CONFIG, debug=True, tcb={"svn": 7, "fw": 3}, clock=lambda: vector_time)
    claims = verify_evidence(att.attest(b"\x07" * 64), b"\x07" * 64, sim_policy(root, allow_debug=True), vector_time)
    assert claims.debug is True
    assert claims.tcb == {"fw": 3, "svn": 7}


def test_report_only_policy_accepts_any_measurement(root, vector_time) -> None:
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": "report-only"}})
    att = SimAttester(root, config_digest=b"other config", clock=lambda: vector_time)
    assert verify_evidence(att.attest(b"\x00" * 64), None, policy, vector_time).measurement == att.measurement


def test_clock_skew_tolerates_small_differences(root, vector_time) -> None:
    # The AK is back-dated 5 minutes; verifying 4 minutes before that is inside the default 300 s skew.
    times = iter([vector_time, vector_time - timedelta(minutes=9)])
    att = SimAttester(root, config_digest=CONFIG, clock=lambda: next(times))
    ev = att.attest(b"\x01" * 64)
    assert verify_evidence(ev, None, sim_policy(root), vector_time - timedelta(minutes=9)).backend == "sim"
    with pytest.raises(CertificateExpired, match="not yet valid"):
        verify_evidence(ev, None, sim_policy(root), vector_time - timedelta(minutes=11))


# --------------------------------------------------------------------------- root and key files


def test_create_sim_root_writes_pinnable_root(tmp_path) -> None:
    pem = create_sim_root(tmp_path / "root")
    assert pem == tmp_path / "root" / "sim-root.pem"
    key_path = tmp_path / "root" / "sim-root.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={ROOT_CN}"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3651)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert root_pin(pem) == hashlib.sha256(der).hexdigest() == SimRoot.load(tmp_path / "root").sha256


def test_create_sim_root_refuses_to_overwrite(tmp_path) -> None:
    create_sim_root(tmp_path)
    with pytest.raises(SimRootError, match="already holds"):
        create_sim_root(tmp_path)
    first = root_pin(tmp_path / "sim-root.pem")
    create_sim_root(tmp_path, overwrite=True)
    assert root_pin(tmp_path / "sim-root.pem") != first


def test_key_file_symlink_is_refused(tmp_path, root) -> None:
    (tmp_path / "elsewhere").write_text("victim")
    (tmp_path / "sim-root.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SimRootError, match="symlink"):
        root.save(tmp_path, overwrite=True)
    assert (tmp_path / "elsewhere").read_text() == "victim"


def test_attester_loads_root_from_directory(tmp_path, vector_time) -> None:
    create_sim_root(tmp_path)
    att = SimAttester(tmp_path, config_digest=CONFIG)
    root = SimRoot.load(tmp_path)
    assert verify_evidence(att.attest(b"\x02" * 64), b"\x02" * 64, sim_policy(root), datetime.now(UTC))


def test_load_root_errors_are_typed(tmp_path, root) -> None:
    with pytest.raises(SimRootError, match="sim-root"):
        SimRoot.load(tmp_path / "missing")
    root.save(tmp_path / "a")
    SimRoot.generate().save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "sim-root.key", tmp_path / "a" / "sim-root.key")
    with pytest.raises(SimRootError, match="does not belong"):
        SimRoot.load(tmp_path / "a")
    (tmp_path / "a" / "sim-root.pem").write_text("garbage")
    with pytest.raises(SimRootError, match="PEM"):
        SimRoot.load(tmp_path / "a")
    with pytest.raises(SimRootError):
        root_pin(tmp_path / "a" / "sim-root.pem")


def test_attester_rejects_bad_inputs(root) -> None:
    att = SimAttester(root, config_digest=CONFIG)
    with pytest.raises(ValueError, match="64 bytes"):
        att.attest(b"short")
    with pytest.raises(ValueError, match="TCB component name"):
        SimAttester(root, config_digest=CONFIG, tcb={"Bad Name": 1})
    with pytest.raises(ValueError, match="TCB value"):
        SimAttester(root, config_digest=CONFIG, tcb={"svn": -1})
    with pytest.raises(ValueError, match="at most"):
        SimAttester(root, config_digest=CONFIG, tcb={f"c{i}": 1 for i in range(17)})


# --------------------------------------------------------------------------- each check fails on its own


def test_unpinned_root_is_untrusted(attester, vector_time) -> None:
    other = SimRoot.generate(now=vector_time - timedelta(days=1))
    with pytest.raises(UntrustedRoot, match="not pinned"):
        verify_evidence(attester.attest(b"\x00" * 64), None, sim_policy(other), vector_time)


def test_policy_without_sim_roots_is_untrusted(attester, vector_time) -> None:
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"measurements": "report-only"}})
    with pytest.raises(UntrustedRoot, match=r"\[sim\] roots"):
        verify_evidence(attester.attest(b"\x00" * 64), None, policy, vector_time)


def test_self_made_root_with_the_same_name_is_untrusted(root, keys, vector_time) -> None:
    fake = SimRoot.generate(now=vector_time - timedelta(days=1))
    assert fake.cert.subject == root.cert.subject
    forged = SimAttester(fake, config_digest=CONFIG, clock=lambda: vector_time)
    bundle, binding = make_bundle(forged, keys, os.urandom(32))
    with pytest.raises(UntrustedRoot):
        verify(bundle, binding, sim_policy(root), vector_time)


def test_forged_ak_under_the_genuine_root_fails_the_chain(root, keys, vector_time) -> None:
    fake = SimRoot.generate(now=vector_time - timedelta(days=1))
    forged = SimAttester(fake, config_digest=CONFIG, clock=lambda: vector_time)
    bundle, binding = make_bundle(forged, keys, os.urandom(32))
    ev = bundle.cpu
    swapped = Evidence(kind="sim", data=ev.data, certs={"ak": ev.certs["ak"], "root": root.der})
    with pytest.raises(BadSignature, match="ak certificate"):
        verify_evidence(swapped, binding, sim_policy(root), vector_time)


def test_ak_from_another_issuer_name_is_untrusted(root, attester, vector_time) -> None:
    other_key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "someone else")])
    ak = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(other_key.public_key())
        .serial_number(1).not_valid_before(vector_time - timedelta(days=1))
        .not_valid_after(vector_time + timedelta(days=1)).sign(other_key, None)
    )
    ev = attester.attest(b"\x00" * 64)
    bad = Evidence(kind="sim", data=ev.data, certs={"ak": ak.public_bytes(serialization.Encoding.DER),
                                                    "root": ev.certs["root"]})
    with pytest.raises(UntrustedRoot, match="not issued"):
        verify_evidence(bad, None, sim_policy(root), vector_time)


@pytest.mark.parametrize(("what", "index"), [
    ("timestamp", 12), ("measurement", 20), ("report_data", 100), ("tcb value", -65), ("signature", -1),
])
def test_flipped_report_byte_is_a_bad_signature(root, attester, keys, vector_time, what, index) -> None:
    bundle, binding = make_bundle(attester, keys, os.urandom(32))
    tampered = Evidence(kind="sim", data=flip(bundle.cpu.data, index), certs=bundle.cpu.certs)
    bundle = EvidenceBundle(cpu=tampered, kem_public=bundle.kem_public, sig_public=bundle.sig_public, build=BUILD)
    with pytest.raises(BadSignature, match="report signature"):
        verify(bundle, binding, sim_policy(root), vector_time)


def test_flipped_root_byte_is_untrusted(root, attester, vector_time) -> None:
    ev = attester.attest(b"\x00" * 64)
    bad = Evidence(kind="sim", data=ev.data, certs={"ak": ev.certs["ak"], "root": flip(ev.certs["root"], 200)})
    with pytest.raises(UntrustedRoot):
        verify_evidence(bad, None, sim_policy(root), vector_time)


def test_replayed_nonce_is_a_binding_mismatch(root, attester, keys, vector_time) -> None:
    old_bundle, _ = make_bundle(attester, keys, os.urandom(32))
    fresh_nonce = os.urandom(32)
    expected = evidence_binding(fresh_nonce, keys[0], keys[1], BUILD.build_digest)
    with pytest.raises(BindingMismatch):
        verify(old_bundle, expected, sim_policy(root), vector_time)


def test_swapped_enclave_keys_are_a_binding_mismatch(root, attester, keys, vector_time) -> None:
    nonce = os.urandom(32)
    bundle, _ = make_bundle(attester, keys, nonce)
    host_kem = X25519PrivateKey.generate().public_key().public_bytes_raw()
    swapped = EvidenceBundle(cpu=bundle.cpu, kem_public=host_kem, sig_public=bundle.sig_public, build=BUILD)
    # The party recomputes the binding from its own nonce and the keys it was handed.
    expected = evidence_binding(nonce, swapped.kem_public, swapped.sig_public, swapped.build.build_digest)
    with pytest.raises(BindingMismatch):
        verify(swapped, expected, sim_policy(root), vector_time)


def test_modified_code_tree_is_not_allowed(root, tmp_path, vector_time) -> None:
    copy = tmp_path / "mpctrain"
    shutil.copytree(default_package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(copy) == code_digest()
    target = copy / "attest" / "verify.py"
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x20
    target.write_bytes(bytes(data))
    assert code_digest(copy) != code_digest()
    modified = SimAttester(root, config_digest=CONFIG, package_dir=copy, clock=lambda: vector_time)
    assert modified.measurement != sim_measurement(CONFIG)
    with pytest.raises(MeasurementNotAllowed):
        verify_evidence(modified.attest(b"\x00" * 64), b"\x00" * 64, sim_policy(root), vector_time)


def test_code_digest_covers_paths_and_ignores_pycache(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    base = code_digest(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.py").write_text("ignored")
    (pkg / "notes.txt").write_text("still not code")
    assert code_digest(pkg) == base
    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")
    assert code_digest(pkg) != base
    with pytest.raises(FileNotFoundError):
        code_digest(tmp_path / "nowhere")


def test_different_config_changes_the_measurement() -> None:
    code = code_digest()
    assert sim_measurement(b"a", code=code) != sim_measurement(b"b", code=code)
    assert len(sim_measurement(b"a", code=code)) == 48


def test_debug_evidence_is_rejected(root, vector_time) -> None:
    att = SimAttester(root, config_digest=CONFIG, debug=True, clock=lambda: vector_time)
    with pytest.raises(DebugEnabled):
        verify_evidence(att.attest(b"\x00" * 64), b"\x00" * 64, sim_policy(root), vector_time)


def test_tcb_below_minimum_is_rejected(root, attester, vector_time) -> None:
    ev = attester.attest(b"\x00" * 64)
    with pytest.raises(TcbTooLow, match="below"):
        verify_evidence(ev, None, sim_policy(root, min_tcb={"svn": 2}), vector_time)
    with pytest.raises(TcbTooLow, match="missing"):
        verify_evidence(ev, None, sim_policy(root, min_tcb={"microcode": 1}), vector_time)
    assert verify_evidence(ev, None, sim_policy(root, min_tcb={"svn": 1}), vector_time).tcb["svn"] == 1


def test_expired_ak_at_a_later_time(root, attester, keys, vector_time) -> None:
    bundle, binding = make_bundle(attester, keys, os.urandom(32))
    with pytest.raises(CertificateExpired, match="ak certificate has expired"):
        verify(bundle, binding, sim_policy(root), vector_time + timedelta(days=2))


def test_root_not_yet_valid(attester, root, vector_time) -> None:
    with pytest.raises(CertificateExpired, match="root certificate is not yet valid"):
        verify_evidence(attester.attest(b"\x00" * 64), None, sim_policy(root), vector_time - timedelta(days=60))


def test_expired_root(vector_time, keys) -> None:
    old_root = SimRoot.generate(now=vector_time - timedelta(days=20), validity=timedelta(days=10))
    att = SimAttester(old_root, config_digest=CONFIG, clock=lambda: vector_time)
    with pytest.raises(CertificateExpired, match="root certificate has expired"):
        verify_evidence(att.attest(b"\x00" * 64), None, sim_policy(old_root), vector_time)


def test_simulated_evidence_is_refused_by_the_default_policy(attester, keys, vector_time) -> None:
    bundle, binding = make_bundle(attester, keys, os.urandom(32))
    with pytest.raises(BackendNotAllowed):
        verify(bundle, binding, Policy.default(), vector_time)


def test_report_from_the_future_is_a_policy_violation(root, vector_time) -> None:
    times = iter([vector_time, vector_time + timedelta(hours=1)])
    att = SimAttester(root, config_digest=CONFIG, clock=lambda: next(times))
    with pytest.raises(PolicyViolation, match="dated after"):
        verify_evidence(att.attest(b"\x00" * 64), None, sim_policy(root), vector_time)


def test_report_signed_outside_ak_validity(root, vector_time) -> None:
    times = iter([vector_time, vector_time - timedelta(hours=1)])
    att = SimAttester(root, config_digest=CONFIG, clock=lambda: next(times))
    with pytest.raises(CertificateExpired, match="outside the attestation key"):
        verify_evidence(att.attest(b"\x00" * 64), None, sim_policy(root), vector_time)


def test_max_report_age(root, attester, vector_time) -> None:
    ev = attester.attest(b"\x00" * 64)
    policy = sim_policy(root, max_report_age_seconds=600)
    assert verify_evidence(ev, None, policy, vector_time + timedelta(seconds=60)).backend == "sim"
    with pytest.raises(PolicyViolation, match="older"):
        verify_evidence(ev, None, policy, vector_time + timedelta(hours=1))
    with pytest.raises(PolicyError, match="non-negative"):  # when the policy loads
        sim_policy(root, max_report_age_seconds="soon")


def test_unknown_sim_policy_option_is_refused(root, attester, vector_time) -> None:
    with pytest.raises(PolicyError, match=r"unknown key\(s\) \['max_age'\] in \[sim\]; known: .*max_report_age"):
        sim_policy(root, max_age=5)
    hand_made = BackendPolicy(kind="sim", roots=(root.sha256,), options={"max_age": 5})
    with pytest.raises(PolicyError, match="unknown"):
        SimVerifier().verify(attester.attest(b"\x00" * 64), policy=hand_made, at=vector_time,
                             collateral=Collateral())


# --------------------------------------------------------------------------- malformed evidence


def _resign(body: bytes) -> bytes:
    return body + b"\x00" * 64


@pytest.mark.parametrize("length", [0, 1, 64, 128, 192, 196])
def test_truncated_report_is_malformed(root, attester, vector_time, length) -> None:
    ev = attester.attest(b"\x00" * 64)
    assert len(ev.data) > length
    with pytest.raises(Malformed):
        verify_evidence(Evidence("sim", ev.data[:length], ev.certs), None, sim_policy(root), vector_time)


def _malformed_cases(good: bytes) -> dict[str, bytes]:
    body, sig = good[:-64], good[-64:]
    return {
        "magic": b"XSIM" + good[4:],
        "version": good[:4] + struct.pack(">H", 2) + good[6:],
        "flags": good[:6] + struct.pack(">H", 0x8000) + good[8:],
        "trailing": good + b"\x00",
        "oversized": good + b"\x00" * MAX_REPORT_BYTES,
        "tcb count too large": body[:128] + bytes([17]) + body[129:] + sig,
        "tcb count too small": body[:128] + bytes([0]) + body[129:] + sig,
        "tcb entry overruns": body[:128] + bytes([2]) + body[129:] + sig,
        "garbage": bytes(range(256)) + bytes(44),
    }


@pytest.mark.parametrize("case", sorted(_malformed_cases(bytes(200))))
def test_malformed_reports(root, attester, vector_time, case) -> None:
    good = attester.attest(b"\x00" * 64)
    data = _malformed_cases(good.data)[case]
    with pytest.raises(Malformed):
        verify_evidence(Evidence("sim", data, good.certs), None, sim_policy(root), vector_time)


def test_tcb_table_must_be_canonical() -> None:
    body = encode_report_body(measurement=b"\x00" * 48, report_data=b"\x00" * 64, debug=False,
                              tcb={"aa": 1, "bb": 2}, timestamp=0)
    swapped = body[:129] + body[136:143] + body[129:136]
    with pytest.raises(Malformed, match="ascending"):
        parse_report(_resign(swapped))
    upper = body[:130] + b"AA" + body[132:]
    with pytest.raises(Malformed, match="ascending"):
        parse_report(_resign(upper))
    zero_len = body[:129] + b"\x00" + body[130:]
    with pytest.raises(Malformed, match="length"):
        parse_report(_resign(zero_len))
    assert parse_report(_resign(body)).tcb == {"aa": 1, "bb": 2}


def test_encode_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="measurement"):
        encode_report_body(measurement=b"", report_data=b"\x00" * 64, debug=False, tcb={}, timestamp=0)
    with pytest.raises(ValueError, match="report_data"):
        encode_report_body(measurement=b"\x00" * 48, report_data=b"", debug=False, tcb={}, timestamp=0)


def test_out_of_range_timestamp_is_malformed(root, vector_time) -> None:
    # A correctly signed report whose timestamp cannot be a date: the date check fails typed.
    att = SimAttester(root, config_digest=CONFIG, clock=lambda: vector_time)
    body = encode_report_body(measurement=att.measurement, report_data=b"\x00" * 64, debug=False,
                              tcb={"svn": 1}, timestamp=2**62)
    data = body + att._ak.sign(body)
    with pytest.raises(Malformed, match="timestamp"):
        verify_evidence(Evidence("sim", data, att.attest(b"\x00" * 64).certs), None, sim_policy(root), vector_time)


@pytest.mark.parametrize("certs", [
    {},
    {"ak": b"garbage"},
    {"root": b"garbage"},
])
def test_missing_certificates_are_malformed(root, attester, vector_time, certs) -> None:
    ev = attester.attest(b"\x00" * 64)
    with pytest.raises(Malformed, match="lacks"):
        verify_evidence(Evidence("sim", ev.data, certs), None, sim_policy(root), vector_time)


def test_pinned_garbage_root_is_malformed(attester, vector_time) -> None:
    ev = attester.attest(b"\x00" * 64)
    policy = Policy.from_dict({"backends": ["sim"], "sim": {"roots": [hashlib.sha256(b"garbage").hexdigest()],
                                                            "measurements": "report-only"}})
    with pytest.raises(Malformed, match="root certificate is not DER"):
        verify_evidence(Evidence("sim", ev.data, {"ak": ev.certs["ak"], "root": b"garbage"}), None, policy,
                        vector_time)


def test_garbage_ak_under_pinned_root_is_malformed(root, attester, vector_time) -> None:
    ev = attester.attest(b"\x00" * 64)
    for bad in (b"garbage", b"\x30" * 20000):
        with pytest.raises(Malformed):
            verify_evidence(Evidence("sim", ev.data, {"ak": bad, "root": ev.certs["root"]}), None,
                            sim_policy(root), vector_time)


def test_wrong_kind_given_to_sim_verifier_is_malformed(root, attester, vector_time) -> None:
    from mpctrain.attest import Collateral

    ev = attester.attest(b"\x00" * 64)
    with pytest.raises(Malformed, match="not simulated"):
        SimVerifier().verify(Evidence("snp", ev.data, ev.certs), policy=sim_policy(root).backend("sim"),
                             at=vector_time, collateral=Collateral())


def test_non_ed25519_ak_is_malformed(root, attester, vector_time) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ak = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, AK_CN)]))
        .issuer_name(root.cert.subject).public_key(ec_key.public_key()).serial_number(2)
        .not_valid_before(vector_time - timedelta(days=1)).not_valid_after(vector_time + timedelta(days=1))
        .sign(root.key, None)
    )
    ev = attester.attest(b"\x00" * 64)
    bad = Evidence("sim", ev.data, {"ak": ak.public_bytes(serialization.Encoding.DER), "root": root.der})
    with pytest.raises(Malformed, match="Ed25519"):
        verify_evidence(bad, None, sim_policy(root), vector_time)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=900))
def test_random_bytes_never_escape_as_untyped_errors(root, attester, vector_time, data) -> None:
    certs = attester.attest(b"\x00" * 64).certs
    with pytest.raises(AttestationError):
        verify_evidence(Evidence("sim", data, certs), None, sim_policy(root), vector_time)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0, max_value=10_000), value=st.integers(min_value=1, max_value=255))
def test_any_mutation_is_rejected_with_a_typed_error(root, attester, vector_time, position, value) -> None:
    good = attester.attest(b"\x09" * 64)
    data = bytearray(good.data)
    data[position % len(data)] ^= value
    with pytest.raises((Malformed, BadSignature)):
        verify_evidence(Evidence("sim", bytes(data), good.certs), None, sim_policy(root), vector_time)


def test_package_dir_default_is_the_imported_package() -> None:
    import mpctrain

    assert default_package_dir() == Path(mpctrain.__file__).resolve().parent


def test_sim_root_key_is_0600_under_umask_0_and_over_a_0666_file(tmp_path, root) -> None:
    key = tmp_path / "sim-root.key"
    key.write_text("old")
    key.chmod(0o666)
    old = os.umask(0)
    try:
        root.save(tmp_path, overwrite=True)
        root.save(tmp_path / "fresh")
    finally:
        os.umask(old)
    for path in (key, tmp_path / "fresh" / "sim-root.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SimRoot.load(tmp_path).sha256 == root.sha256
