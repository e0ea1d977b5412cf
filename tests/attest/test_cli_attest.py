"""`mpctrain attest ...`: exit codes 0/1/2, the failed check's name in the output, evidence files by kind."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

import mpctrain.cli.attest as cli_attest
from mpctrain.attest import BuildInfo, Evidence, EvidenceBundle, Malformed
from mpctrain.attest.files import EvidenceFileError, load_bundle, load_evidence
from mpctrain.attest.sim import SimAttester, SimRoot, root_pin
from mpctrain.cli.main import app
from mpctrain.seal.binding import evidence_binding

runner = CliRunner()
CONFIG = hashlib.sha256(b"cli config").digest()


@pytest.fixture(scope="module")
def env(tmp_path_factory, vector_time):
    """A sim root on disk, an attester, evidence files and a policy pinning them."""
    d = tmp_path_factory.mktemp("cli")
    root = SimRoot.generate(now=vector_time - timedelta(days=1))
    root.save(d / "root")
    att = SimAttester(root, config_digest=CONFIG, clock=lambda: vector_time)
    report_data = hashlib.sha512(b"binding").digest()
    ev = att.attest(report_data)
    (d / "ev.json").write_text(json.dumps(ev.to_json_obj()))
    (d / "report.bin").write_bytes(ev.data)
    (d / "ak.der").write_bytes(ev.certs["ak"])
    kem, sig = os.urandom(32), os.urandom(32)
    nonce = os.urandom(32)
    build = BuildInfo("0.1.0", b"\x01" * 48, CONFIG)
    bundle = EvidenceBundle(cpu=att.attest(evidence_binding(nonce, kem, sig, build.build_digest)),
                            kem_public=kem, sig_public=sig, build=build)
    (d / "bundle.json").write_bytes(bundle.to_json())
    _policy(d / "policy.toml", root.sha256, att.measurement)
    return {"dir": d, "root": root, "att": att, "report_data": report_data, "nonce": nonce, "at": vector_time}


def _policy(path: Path, pin: str, measurement: bytes, extra: str = "") -> Path:
    path.write_text(f'backends = ["sim"]\n[sim]\nroots = ["{pin}"]\nmeasurements = ["{measurement.hex()}"]\n{extra}')
    return path


def run(*args: str):
    result = runner.invoke(app, ["attest", *args])
    assert "Traceback" not in result.output, result.output
    return result


def sim_verify(env, *args: str, evidence: str = "ev.json", policy: str | None = "policy.toml"):
    d = env["dir"]
    base = ["verify", "--kind", "sim", "--evidence", str(d / evidence), "--at", env["at"].isoformat()]
    if policy is not None:
        base += ["--policy", str(d / policy)]
    return run(*base, *args)


# --------------------------------------------------------------------------- sim-root


def test_sim_root_prints_the_pin(tmp_path) -> None:
    result = run("sim-root", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    pin = root_pin(tmp_path / "r" / "sim-root.pem")
    assert pin in result.output
    assert 'backends = ["sim"]' in result.output
    assert stat.S_IMODE((tmp_path / "r" / "sim-root.key").stat().st_mode) == 0o600
    again = run("sim-root", "--out", str(tmp_path / "r"))
    assert again.exit_code == 2
    assert "already holds" in again.output and "--force" in again.output and "overwrite" not in again.output
    assert root_pin(tmp_path / "r" / "sim-root.pem") == pin
    assert run("sim-root", "--out", str(tmp_path / "r"), "--force").exit_code == 0
    assert root_pin(tmp_path / "r" / "sim-root.pem") != pin


# --------------------------------------------------------------------------- verify: success


def test_verify_sim_evidence_json_passes(env) -> None:
    result = sim_verify(env, "--expect-report-data", env["report_data"].hex())
    assert result.exit_code == 0, result.output
    assert "every check passed" in result.output
    assert "measurement" in result.output and "simulated" in result.output
    assert "NOT compared" not in result.output


def test_verify_json_output(env) -> None:
    result = sim_verify(env, "--json", "--expect-report-data", env["report_data"].hex())
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["ok"] is True and obj["report_data_checked"] is True
    assert obj["claims"]["measurement"] == env["att"].measurement.hex()
    assert obj["claims"]["report_data"] == env["report_data"].hex()


def test_verify_raw_report_with_cert_files(env) -> None:
    d = env["dir"]
    result = sim_verify(env, "--certs", str(d / "ak.der"), "--certs", str(d / "root" / "sim-root.pem"),
                        evidence="report.bin")
    assert result.exit_code == 0, result.output
    assert "NOT compared" in result.output  # no --expect-report-data: the user is warned


def test_verify_bundle_with_nonce(env) -> None:
    d = env["dir"]
    args = ["verify", "--kind", "bundle", "--evidence", str(d / "bundle.json"), "--policy", str(d / "policy.toml"),
            "--at", env["at"].isoformat()]
    ok = run(*args, "--nonce", env["nonce"].hex())
    assert ok.exit_code == 0, ok.output
    assert "CPU evidence: every check passed" in ok.output
    as_json = run(*args, "--nonce", env["nonce"].hex(), "--json")
    assert json.loads(as_json.stdout)["result"]["cpu"]["backend"] == "sim"
    replay = run(*args, "--nonce", os.urandom(32).hex())
    assert replay.exit_code == 1
    assert "binding-mismatch" in replay.output


# --------------------------------------------------------------------------- verify: each failure names its check


def test_wrong_report_data_is_binding_mismatch(env) -> None:
    result = sim_verify(env, "--expect-report-data", "00" * 64)
    assert result.exit_code == 1
    assert "FAILED" in result.output and "binding-mismatch" in result.output
    as_json = sim_verify(env, "--json", "--expect-report-data", "00" * 64)
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {
        "ok": False, "check": "binding-mismatch", "field": "report_data", "error": json.loads(as_json.stdout)["error"]}


def test_tampered_report_is_bad_signature(env, tmp_path) -> None:
    data = bytearray((env["dir"] / "report.bin").read_bytes())
    data[30] ^= 0xFF
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    d = env["dir"]
    result = run("verify", "--kind", "sim", "--evidence", str(tmp_path / "bad.bin"), "--certs", str(d / "ak.der"),
                 "--certs", str(d / "root" / "sim-root.pem"), "--policy", str(d / "policy.toml"),
                 "--at", env["at"].isoformat())
    assert result.exit_code == 1
    assert "bad-signature" in result.output


def test_unpinned_root_is_untrusted(env, tmp_path) -> None:
    policy = _policy(tmp_path / "other.toml", SimRoot.generate().sha256, env["att"].measurement)
    result = run("verify", "--kind", "sim", "--evidence", str(env["dir"] / "ev.json"), "--policy", str(policy),
                 "--at", env["at"].isoformat())
    assert result.exit_code == 1
    assert "untrusted-root" in result.output


def test_other_measurement_is_not_allowed(env, tmp_path) -> None:
    policy = _policy(tmp_path / "m.toml", env["root"].sha256, b"\x00" * 48)
    result = run("verify", "--kind", "sim", "--evidence", str(env["dir"] / "ev.json"), "--policy", str(policy),
                 "--at", env["at"].isoformat())
    assert result.exit_code == 1
    assert "measurement-not-allowed" in result.output


def test_tcb_minimum(env, tmp_path) -> None:
    policy = _policy(tmp_path / "t.toml", env["root"].sha256, env["att"].measurement, "min_tcb = { svn = 9 }\n")
    result = run("verify", "--kind", "sim", "--evidence", str(env["dir"] / "ev.json"), "--policy", str(policy),
                 "--at", env["at"].isoformat())
    assert result.exit_code == 1
    assert "tcb-too-low" in result.output


def test_later_time_is_certificate_expired(env) -> None:
    d = env["dir"]
    result = run("verify", "--kind", "sim", "--evidence", str(d / "ev.json"), "--policy", str(d / "policy.toml"),
                 "--at", (env["at"] + timedelta(days=3)).isoformat())
    assert result.exit_code == 1
    assert "certificate-expired" in result.output


@pytest.mark.parametrize("content", [b"\x00garbage", b"{not json", b'{"kind": "sim"}', b""])
def test_garbage_evidence_is_malformed(env, tmp_path, content) -> None:
    (tmp_path / "g.bin").write_bytes(content)
    result = run("verify", "--kind", "sim", "--evidence", str(tmp_path / "g.bin"), "--policy",
                 str(env["dir"] / "policy.toml"), "--at", env["at"].isoformat())
    assert result.exit_code == 1
    assert "malformed" in result.output


def test_missing_evidence_file(env, tmp_path) -> None:
    result = run("verify", "--kind", "sim", "--evidence", str(tmp_path / "nope.bin"), "--policy",
                 str(env["dir"] / "policy.toml"))
    assert result.exit_code == 1
    assert "evidence-file" in result.output


def test_sim_bundle_under_a_policy_without_sim_is_backend_not_allowed(env, tmp_path) -> None:
    (tmp_path / "snp.toml").write_text('backends = ["snp"]\n')
    result = run("verify", "--kind", "bundle", "--evidence", str(env["dir"] / "bundle.json"), "--policy",
                 str(tmp_path / "snp.toml"), "--nonce", env["nonce"].hex(), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == "backend-not-allowed"


def test_real_evidence_under_a_sim_only_policy_is_backend_not_allowed(env, vectors) -> None:
    snp = vectors / "snp"
    result = run("verify", "--kind", "snp", "--evidence", str(snp / "milan_v2_report.bin"),
                 "--certs", str(snp / "milan_v2_vcek.der"), "--certs", str(snp / "ask_ark_milan.pem"),
                 "--policy", str(env["dir"] / "policy.toml"))
    assert result.exit_code == 1
    assert "backend-not-allowed" in result.output


def test_unexpected_verifier_error_is_reported_not_raised(env, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("verifier bug")

    monkeypatch.setattr(cli_attest, "verify_evidence", boom)
    result = sim_verify(env)
    assert result.exit_code == 1
    assert "internal-error" in result.output and "verifier bug" in result.output


# --------------------------------------------------------------------------- verify: usage errors (exit 2)


def test_sim_without_policy_says_so(env) -> None:
    result = sim_verify(env, policy=None)
    assert result.exit_code == 2
    assert "--policy" in result.output and "sim" in result.output
    bundle = run("verify", "--kind", "bundle", "--evidence", str(env["dir"] / "bundle.json"),
                 "--nonce", env["nonce"].hex())
    assert bundle.exit_code == 2
    assert "--policy" in bundle.output


@pytest.mark.parametrize("args", [
    ["--expect-report-data", "zz"],
    ["--at", "yesterday"],
    ["--nonce", "00" * 32],
    ["--kind", "quantum"],
])
def test_bad_arguments_exit_2(env, args) -> None:
    result = sim_verify(env, *args)
    assert result.exit_code == 2, result.output


def test_bundle_needs_nonce_or_binding(env) -> None:
    d = env["dir"]
    base = ["verify", "--kind", "bundle", "--evidence", str(d / "bundle.json"), "--policy", str(d / "policy.toml")]
    assert run(*base).exit_code == 2
    assert run(*base, "--nonce", "00" * 5).exit_code == 2
    assert run(*base, "--nonce", env["nonce"].hex(), "--certs", str(d / "ak.der")).exit_code == 2


def test_bad_policy_file_exits_2(env, tmp_path) -> None:
    (tmp_path / "bad.toml").write_text('backends = ["quantum"]\n')
    result = sim_verify(env, "--policy", str(tmp_path / "bad.toml"), policy=None)
    assert result.exit_code == 2
    assert "quantum" in result.output


# --------------------------------------------------------------------------- evidence files by kind


def test_load_snp_files(vectors) -> None:
    snp = vectors / "snp"
    ev = load_evidence("snp", snp / "milan_v2_report.bin", [snp / "milan_v2_vcek.der", snp / "ask_ark_milan.pem"])
    assert ev.kind == "snp" and len(ev.data) == 1184
    assert set(ev.certs) == {"vcek", "ask_ark"}
    assert ev.certs["vcek"] == (snp / "milan_v2_vcek.der").read_bytes()
    assert len(x509.load_pem_x509_certificates(ev.certs["ask_ark"])) == 2


def test_load_nvidia_files(vectors) -> None:
    nv = vectors / "nvidia"
    ev = load_evidence("nvidia-gpu", nv / "h100_report.hex", [nv / "h100_cert_chain.pem"])
    assert ev.data[:2] == b"\x11\xe0"
    assert ev.data[4:36].hex() == "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    chain = x509.load_pem_x509_certificates(ev.certs["chain"])
    assert len(chain) == 5 and "GSP FMC LF" in chain[0].subject.rfc4514_string()


def test_load_tdx_quote(vectors) -> None:
    quote = vectors / "tdx" / "spr_v4_quote.dat"
    ev = load_evidence("tdx", quote)
    assert ev.data == quote.read_bytes() and ev.certs == {}
    with pytest.raises(EvidenceFileError, match="PCK chain"):
        load_evidence("tdx", quote, [vectors / "tdx" / "trusted_root.pem"])


def test_load_sim_files_classifies_root_and_ak(env) -> None:
    d = env["dir"]
    ev = load_evidence("sim", d / "report.bin", [d / "root" / "sim-root.pem", d / "ak.der"])
    assert ev.certs == {"ak": (d / "ak.der").read_bytes(), "root": env["root"].der}
    assert load_evidence("sim", d / "ev.json") == Evidence.from_json_obj(json.loads((d / "ev.json").read_text()))
    assert load_bundle(d / "bundle.json").cpu.kind == "sim"


def test_file_errors_are_typed(env, vectors, tmp_path) -> None:
    d, snp = env["dir"], vectors / "snp"
    with pytest.raises(EvidenceFileError, match="unknown evidence kind"):
        load_evidence("quantum", d / "report.bin")
    with pytest.raises(EvidenceFileError, match="cannot read"):
        load_evidence("sim", tmp_path / "missing.bin")
    with pytest.raises(EvidenceFileError, match="given"):
        load_evidence("snp", snp / "milan_v2_report.bin", [snp / "milan_v2_vcek.der", snp / "milan_v3_vcek.der"])
    with pytest.raises(EvidenceFileError, match="given twice"):
        load_evidence("sim", d / "ev.json", [d / "ak.der"])
    with pytest.raises(EvidenceFileError, match="not 'snp'"):
        load_evidence("snp", d / "ev.json")
    with pytest.raises(EvidenceFileError, match="too many"):
        load_evidence("sim", d / "report.bin", [d / "ak.der"] * 17)
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    (tmp_path / "garbage.der").write_bytes(b"\x30\x03\x02\x01\x00")
    for bad in ("garbage.pem", "garbage.der"):
        with pytest.raises(Malformed, match="not a PEM or DER"):
            load_evidence("sim", d / "report.bin", [tmp_path / bad])
    (tmp_path / "odd.hex").write_text("11e0f")
    with pytest.raises(Malformed, match="odd number"):
        load_evidence("nvidia-gpu", tmp_path / "odd.hex")
    (tmp_path / "partial.json").write_text('{"kind": "sim"}')
    with pytest.raises(Malformed, match="evidence JSON is not valid"):
        load_evidence("sim", tmp_path / "partial.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with open(tmp_path / "huge.bin", "wb") as f:
        f.truncate(3 << 20)
    with pytest.raises(Malformed, match="too large"):
        load_evidence("snp", tmp_path / "huge.bin")
    with pytest.raises(Malformed):
        load_bundle(tmp_path / "list.json")


def test_nvidia_raw_binary_is_accepted(tmp_path) -> None:
    (tmp_path / "r.bin").write_bytes(b"\x11\xe0\x01\xff" + bytes(60))
    assert load_evidence("nvidia-gpu", tmp_path / "r.bin").data[:2] == b"\x11\xe0"


# --------------------------------------------------------------------------- demo


def test_demo_runs_every_step() -> None:
    result = run("demo")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("create the simulated TEE root", "verified claims",
                 "no plaintext in the ciphertext", "matches the party's", "demo complete"):
        assert text in out, text
    assert out.count("rejected (binding-mismatch)") == 2


def test_demo_fails_loudly_if_a_replay_were_accepted(monkeypatch) -> None:
    real = cli_attest.verify
    calls = []

    def lenient(bundle, expected, policy, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real(bundle, expected, policy, *args, **kwargs)
        return None  # a broken verifier that accepts anything after the first call

    monkeypatch.setattr(cli_attest, "verify", lenient)
    result = run("demo")
    assert result.exit_code == 1
    assert "demo failed" in result.output and "replayed bundle was accepted" in result.output


# --------------------------------------------------------------------------- real vendor evidence (default policy)


def _snp(vectors, report: str, vcek: str, *extra: str):
    snp = vectors / "snp"
    return run("verify", "--kind", "snp", "--evidence", str(snp / report), "--certs", str(snp / vcek),
               "--certs", str(snp / "ask_ark_milan.pem"), "--at", "2026-11-22T00:00:00Z", *extra)


def test_real_snp_report_passes_the_default_policy(vectors) -> None:
    report_data = (vectors / "snp" / "milan_v2_report.bin").read_bytes()[0x50:0x90]
    result = _snp(vectors, "milan_v2_report.bin", "milan_v2_vcek.der", "--expect-report-data", report_data.hex(),
                  "--json")
    assert result.exit_code == 0, result.output
    claims = json.loads(result.stdout)["claims"]
    assert claims["backend"] == "snp" and claims["measurement"].startswith("7a1e5c26")


@pytest.mark.parametrize(("report", "vcek", "check"), [
    ("milan_v2_debug_report.bin", "milan_v2_debug_vcek.der", "debug-enabled"),
    ("milan_v2_report.bin", "invalid_vcek_new.der", "bad-signature"),
])
def test_real_snp_failures_name_their_check(vectors, report, vcek, check) -> None:
    result = _snp(vectors, report, vcek, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == check


def test_real_snp_report_with_other_report_data_is_a_binding_mismatch(vectors) -> None:
    result = _snp(vectors, "milan_v2_report.bin", "milan_v2_vcek.der", "--expect-report-data", "00" * 64)
    assert result.exit_code == 1
    assert "binding-mismatch" in result.output


NVIDIA_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


def _nvidia(vectors, nonce: str):
    nv = vectors / "nvidia"
    return run("verify", "--kind", "nvidia-gpu", "--evidence", str(nv / "h100_report.hex"),
               "--certs", str(nv / "h100_cert_chain.pem"), "--at", "2026-11-22T00:00:00Z",
               "--expect-report-data", nonce, "--json")


def test_real_gpu_evidence_passes_with_its_nonce(vectors) -> None:
    result = _nvidia(vectors, NVIDIA_NONCE)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["claims"]["backend"] == "nvidia-gpu"


def test_real_gpu_evidence_with_another_nonce_is_a_binding_mismatch(vectors) -> None:
    result = _nvidia(vectors, "00" * 32)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == "binding-mismatch"


def test_tdx_quote_under_a_fake_intel_root_is_untrusted(vectors) -> None:
    result = run("verify", "--kind", "tdx", "--evidence", str(vectors / "tdx" / "fake_root_v4_quote.dat"),
                 "--at", "2026-11-22T00:00:00Z", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == "untrusted-root"


def test_default_policy_success_says_the_measurement_was_not_checked(vectors) -> None:
    report_data = (vectors / "snp" / "milan_v2_report.bin").read_bytes()[0x50:0x90].hex()
    result = _snp(vectors, "milan_v2_report.bin", "milan_v2_vcek.der", "--expect-report-data", report_data)
    assert result.exit_code == 0, result.output
    assert "report-only for snp" in result.output and "NOT compared" in result.output
    result = _snp(vectors, "milan_v2_report.bin", "milan_v2_vcek.der", "--expect-report-data", report_data, "--json")
    assert json.loads(result.stdout)["measurement_unchecked"] == ["snp"]


def test_pinned_measurement_success_has_no_report_only_warning(env) -> None:
    result = sim_verify(env, "--expect-report-data", env["report_data"].hex())
    assert result.exit_code == 0, result.output
    assert "report-only" not in result.output
    result = sim_verify(env, "--expect-report-data", env["report_data"].hex(), "--json")
    assert json.loads(result.stdout)["measurement_unchecked"] == []


# --------------------------------------------------------------------------- README


def _readme_commands(prefix: str) -> list[list[str]]:
    """The README's sh command lines starting with ``prefix``, continuation lines joined, split as sh would."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(prefix):
                commands.append(shlex.split(line, comments=True))
    return commands


def test_the_readme_attest_verify_command_runs_as_written(vectors, monkeypatch) -> None:
    commands = _readme_commands("mpctrain attest verify ")
    assert commands, "README has no `mpctrain attest verify` example"
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # its paths are relative to the checkout
    for argv in commands:
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, (argv, result.output)
        assert "every check passed" in result.output
