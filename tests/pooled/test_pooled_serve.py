"""`mpctrain aggregator serve` as its own process: listens, is healthy, attests, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
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
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('attester = "quantum"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", "from mpctrain.cli.main import app; app()", "aggregator", "serve",
                          "--config", str(cfg)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2
    assert "attester must be one of" in res.stdout + res.stderr
