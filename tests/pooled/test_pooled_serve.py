"""`mpctrain aggregator serve` as its own process: listens, is healthy, attests, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpctrain.attest import Policy
from mpctrain.party.attestation import attest_aggregator
from mpctrain.party.client import AggregatorClient
from mpctrain.seal.keys import IdentityKey

ROOT = Path(__file__).resolve().parents[2]


def test_aggregator_serve_process(tmp_path):
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nattester = "sim"\ndevice = "cpu"\n[sim]\nroot_dir = "sim-root"\n'
                   "[limits]\nmax_concurrent_uploads = 2\n")
    policy_file = tmp_path / "sim-policy.toml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mpctrain.cli.main import app; app()", "aggregator", "serve", "--config",
         str(cfg), "--write-policy", str(policy_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "policy for parties written" in line or not line:
                break
        text = "".join(lines)
        port = int(re.search(r"serving on 127\.0\.0\.1:(\d+)", text).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="mpctrain.v1.Data"),
                                                        timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        client = AggregatorClient(f"127.0.0.1:{port}", "hospital-a", IdentityKey.generate())
        result = attest_aggregator(client, Policy.load(policy_file))  # the written policy pins this enclave
        assert result.cpu.backend == "sim" and not result.cpu.debug
        client.close()
        assert (tmp_path / "sim-root" / "sim-root.pem").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "aggregator stopped" in out


def test_aggregator_serve_bad_config(tmp_path):
    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('attester = "quantum"\n')
    res = CliRunner().invoke(app, ["aggregator", "serve", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "attester must be one of" in res.output
    res = CliRunner().invoke(app, ["aggregator", "serve", "--config", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "cannot read aggregator config" in res.output


def test_aggregator_serve_on_a_taken_port_says_so(tmp_path):
    import socket

    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('attester = "sim"\ndevice = "cpu"\n[sim]\nroot_dir = "sim-root"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        res = CliRunner().invoke(app, ["aggregator", "serve", "--config", str(cfg), "--listen", address])
        assert res.exit_code == 1, res.output
        assert " ".join(res.output.split()) == (f"error: {address} is in use (another aggregator?); stop it or "
                                                "pass --listen HOST:PORT")
        proc = subprocess.run(  # the whole output, gRPC's own logging included, is that one line
            [sys.executable, "-c", "from mpctrain.cli.main import app; app()", "aggregator", "serve", "--config",
             str(cfg), "--listen", address], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"error: {address} is in use") and proc.stdout.count("\n") == 1, proc.stdout


def test_a_taken_port_is_a_typed_error(tmp_path):
    import socket

    from mpctrain.enclave.server import ListenError, port_in_use

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert port_in_use(address)
        err = ListenError(address, in_use=port_in_use(address))
    assert isinstance(err, OSError) and err.in_use and str(err) == f"{address} is in use (another aggregator?)"
    assert not port_in_use("127.0.0.1:0") and not port_in_use("nonsense")


class _Stopped:
    """An Event already set: `aggregator serve` returns as soon as it is up."""

    def set(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


def test_write_policy_never_replaces_another_policy_unless_forced(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import mpctrain.cli.aggregator as cli_aggregator
    from mpctrain.cli.main import app

    monkeypatch.setattr(cli_aggregator, "threading", SimpleNamespace(Event=_Stopped))
    monkeypatch.setattr(cli_aggregator.signal, "signal", lambda *a: None)
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nattester = "sim"\ndevice = "cpu"\n[sim]\nroot_dir = "sim-root"\n')
    policy = tmp_path / "policy.toml"

    def serve(*extra: str):
        return CliRunner().invoke(app, ["aggregator", "serve", "--config", str(cfg), "--write-policy", str(policy),
                                        *extra])

    first = serve()
    assert first.exit_code == 0 and "policy for parties written" in first.output, first.output
    written = policy.read_text()
    again = serve()  # the same enclave again: the same policy, rewriting it is harmless
    assert again.exit_code == 0 and policy.read_text() == written, again.output
    production = 'backends = ["snp"]\n[snp]\nmeasurements = ["' + "ab" * 48 + '"]\n'
    policy.write_text(production)
    refused = serve()
    assert refused.exit_code == 2, refused.output
    assert "exists and holds another policy" in refused.output and "--force" in refused.output
    assert "serving on" not in refused.output and policy.read_text() == production
    forced = serve("--force")
    assert forced.exit_code == 0 and policy.read_text() == written, forced.output


def test_a_refused_start_writes_no_audit_segment(tmp_path, monkeypatch):
    """--write-policy refusing to replace a policy, and a taken port, are found before the audit log is
    opened: each start writes a signed segment record, and a start that never served must not leave one."""
    import socket
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import mpctrain.cli.aggregator as cli_aggregator
    from mpctrain.cli.main import app
    from mpctrain.enclave.audit import read_lines

    monkeypatch.setattr(cli_aggregator, "threading", SimpleNamespace(Event=_Stopped))
    monkeypatch.setattr(cli_aggregator.signal, "signal", lambda *a: None)
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nattester = "sim"\ndevice = "cpu"\naudit_log = "out/audit.jsonl"\n'
                   '[sim]\nroot_dir = "sim-root"\n')
    audit = tmp_path / "out" / "audit.jsonl"
    policy = tmp_path / "policy.toml"
    policy.write_text('backends = ["snp"]\n[snp]\nmeasurements = ["' + "ab" * 48 + '"]\n')
    refused = CliRunner().invoke(app, ["aggregator", "serve", "--config", str(cfg), "--write-policy", str(policy)])
    assert refused.exit_code == 2 and "exists and holds another policy" in refused.output, refused.output
    assert not audit.exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        res = CliRunner().invoke(app, ["aggregator", "serve", "--config", str(cfg), "--listen", address])
    assert res.exit_code == 1 and "is in use" in res.output, res.output
    assert not audit.exists()
    served = CliRunner().invoke(app, ["aggregator", "serve", "--config", str(cfg)])
    assert served.exit_code == 0 and "serving on" in served.output, served.output
    assert [json.loads(raw)["seq"] for _, raw in read_lines(audit)][:1] == [0]  # the first start is segment 0


def _self_signed(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aggregator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_transport_tls(tmp_path):
    from mpctrain.enclave.config import AggregatorConfig, ConfigError
    from mpctrain.enclave.server import Aggregator, tls_credentials
    from mpctrain.party.errors import AttestationRefused

    cert_file, _ = _self_signed(tmp_path)
    cfg_file = tmp_path / "aggregator.toml"
    cfg_file.write_text('attester = "sim"\ndevice = "cpu"\n[sim]\nroot_dir = "root"\n'
                        '[tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n')
    cfg = AggregatorConfig.load(cfg_file)
    (tmp_path / "server.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):  # a TLS key others can read is refused, like party keys
        tls_credentials(cfg)
    (tmp_path / "server.key").chmod(0o600)
    agg = Aggregator.from_config(cfg)
    port = agg.start("127.0.0.1:0", tls_credentials(cfg))
    try:
        from mpctrain.attest.sim import ROOT_PEM, root_pin

        measurement = agg.identity.attester.measurement.hex()
        policy = Policy.from_dict({"backends": ["sim"], "sim": {
            "roots": [root_pin(tmp_path / "root" / ROOT_PEM)], "measurements": [measurement]}})
        creds = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
        tls_client = AggregatorClient(f"127.0.0.1:{port}", "hospital-a", IdentityKey.generate(), credentials=creds,
                                      timeout=10)
        assert attest_aggregator(tls_client, policy).cpu.backend == "sim"
        tls_client.close()
        plain = AggregatorClient(f"127.0.0.1:{port}", "hospital-a", IdentityKey.generate(), timeout=3)
        with pytest.raises(AttestationRefused, match="unreachable"):
            attest_aggregator(plain, policy)
        plain.close()
    finally:
        agg.stop(grace=0.5)
    bad = tmp_path / "bad.toml"
    bad.write_text('[tls]\ncert_file = "server.pem"\n')
    from mpctrain.enclave.config import ConfigError

    with pytest.raises(ConfigError, match="both or neither"):
        AggregatorConfig.load(bad)


@pytest.mark.parametrize("text, match", [
    ('sim = "x"\n', r"\[sim\] must be a table"),
    ("limits = 5\n", r"\[limits\] must be a table"),
    ('kem_alg = "rsa"\n', "kem_alg must be one of"),
    ('device = "tpu"\n', "device must be"),
    ("listen = 50051\n", "listen must be a string"),
    ('[sim]\nroot = "typo"\n', r"unknown \[sim\] keys"),
])
def test_aggregator_config_values_of_the_wrong_type_are_config_errors(tmp_path, text, match):
    from mpctrain.enclave.config import AggregatorConfig, ConfigError

    (tmp_path / "a.toml").write_text('attester = "sim"\n' + text)
    with pytest.raises(ConfigError, match=match):
        AggregatorConfig.load(tmp_path / "a.toml")


def test_an_aggregator_config_without_an_attester_says_it_serves_the_simulation(tmp_path, caplog):
    from mpctrain.enclave.config import AggregatorConfig

    (tmp_path / "a.toml").write_text('device = "cpu"\n')
    with caplog.at_level("WARNING", logger="mpctrain.enclave"):
        assert AggregatorConfig.load(tmp_path / "a.toml").attester == "sim"
    assert "SIMULATED TEE" in caplog.text


def test_real_tee_attester_is_never_replaced_by_simulation(tmp_path, monkeypatch):
    from mpctrain.attest import select
    from mpctrain.attest.configfs import CollectionError
    from mpctrain.enclave.config import AggregatorConfig, ConfigError
    from mpctrain.enclave.server import Aggregator

    def no_tsm(*args, **kwargs):
        raise CollectionError("configfs-tsm not present")

    monkeypatch.setattr(select, "ConfigfsTsmAttester", no_tsm)  # as on any machine that is not a CVM guest
    for tee in ("snp", "tdx", "auto"):
        cfg_file = tmp_path / f"{tee}.toml"
        cfg_file.write_text(f'attester = "{tee}"\ngpu = "off"\n')
        with pytest.raises(ConfigError, match="configfs-tsm"):
            Aggregator.from_config(AggregatorConfig.load(cfg_file))
    bad = tmp_path / "gpu.toml"
    bad.write_text('gpu = "maybe"\n')
    with pytest.raises(ConfigError, match="gpu must be one of"):
        AggregatorConfig.load(bad)
