"""Deployment on Flower's SuperLink/SuperNode: TLS, SuperNode authentication, the ServerApp in this process.

A real SuperLink and two SuperNodes on loopback (no dependency installation, telemetry off) run one round
of the banks job. The parties attest the aggregator over real gRPC; afterwards the SuperLink's database
(and its write-ahead log, which keeps deleted rows) holds the sealed envelopes but neither the global
model nor any bank's plaintext update.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from mpctrain.enclave.attestation_service import AttestationService
from mpctrain.enclave.federated.deploy import serve_run, supernode_keypair, tls_material
from mpctrain.enclave.federated.server_app import FederatedJob
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.party.flower import app_code_digest, open_output
from mpctrain.party.flower.profile import approve_federated_job
from mpctrain.seal.keys import write_public_files
from mpctrain.wire import attestation_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "banks_federated"
BIN = Path(sys.executable).parent
FAB_CONFIG = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}  # pyproject.toml
CANARY = np.full(7, 1234.5678, np.float32)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def _plain_updates(banks: list[str]) -> list[bytes]:
    """Each bank's round-1 update in plaintext, recomputed here from the same seeds: what must not leak."""
    sys.path.insert(0, str(ROOT))
    from examples.banks_federated.app.client_app import make_client_app

    app = make_client_app([])
    out = []
    for bank in banks:
        ins = Message(RecordDict({"arrays": ArrayRecord({"w": Array(CANARY), "b": Array(np.zeros(1, np.float32))}),
                                  "config": ConfigRecord({"server-round": 1})}), 5, "train")
        ins.metadata.__dict__["_message_id"] = "x"
        ctx = Context(run_id=1, node_id=5, node_config={"bank": bank}, state=RecordDict(), run_config=FAB_CONFIG)
        reply = app(ins, ctx)
        out.append(reply.content["arrays"]["w"].numpy().tobytes())
    return out


def test_superlink_relays_and_stores_only_sealed_bytes(tmp_path):
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "home"), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=str(ROOT), PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    tls = tls_material(tmp_path / "tls")
    fed = build_federation(["bank-a", "bank-b"], job_id="banks-superlink",
                           code_digest=app_code_digest(EXAMPLE / "app"), training={"rounds": 1, "strategy": "FedAvg"})
    attestation = grpc.server(futures.ThreadPoolExecutor(4))
    attestation_pb2_grpc.add_AttestationServicer_to_server(AttestationService(fed.enclave, fed.events), attestation)
    aport = attestation.add_insecure_port("127.0.0.1:0")
    attestation.start()
    profiles = {}
    for p in fed.parties:  # each bank's profile, as `mpctrain party` leaves it after approving the job
        prof = tmp_path / "parties" / p.id
        (prof / "keys").mkdir(parents=True)
        p.identity.save(prof / "keys" / "identity.key")
        p.kem.save(prof / "keys" / "kem.key")
        write_public_files(prof / "keys", p.identity, p.kem)
        (prof / "party.toml").write_text(f'id = "{p.id}"\naggregator = "127.0.0.1:{aport}"\npolicy = "policy.toml"\n'
                                         '[rules]\nallowed_modes = ["federated"]\n')
        (prof / "policy.toml").write_text(f'backends = ["sim"]\n[sim]\nroots = ["{fed.root.sha256}"]\n'
                                          f'measurements = ["{fed.attester.measurement.hex()}"]\n')
        (prof / "flower.toml").write_text(f'app_dir = "{EXAMPLE / "app"}"\njob = "{fed.manifest.job_id}"\n')
        approve_federated_job(prof, fed.manifest)
        profiles[p.id] = prof

    port = _free_port()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{tls.ca}"\n')
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def spawn(name: str, args: list[str]) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        spawn("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile",
                            str(tls.cert), "--ssl-keyfile", str(tls.key), "--enable-supernode-auth",
                            "--disable-runtime-dependency-installation", "--isolation", "process",
                            "--database", str(tmp_path / "state.db"), "--port", str(port)])
        _wait_port(port)
        for p in fed.parties:
            priv, pub = supernode_keypair(tmp_path / "supernode-keys", p.id)
            reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(pub), "local"], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert reg.returncode == 0, reg.stdout + reg.stderr
            spawn(p.id, [str(BIN / "flower-supernode"), "--root-certificates", str(tls.ca), "--superlink",
                         f"127.0.0.1:{port}", "--auth-supernode-private-key", str(priv),
                         "--auth-supernode-public-key", str(pub), "--port", str(_free_port()),
                         "--node-config", f"mpctrain-party='{profiles[p.id]}'"])
        run = subprocess.run([str(BIN / "flwr"), "run", str(EXAMPLE), "local"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        job = FederatedJob(manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave, events=fed.events,
                           initial_arrays=ArrayRecord({"w": Array(CANARY), "b": Array(np.zeros(1, np.float32))}))
        strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
        result = serve_run(job, f"127.0.0.1:{port}", root_certificates=tls.ca.read_bytes(), strategy=strategy,
                           timeout=240)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        attestation.stop(0)

    assert result.rounds_completed == 1 and not result.rejected
    arrays, _ = open_output(result.sealed_output, manifest=fed.manifest, recipient_id="researcher",
                            kem=fed.researcher.kem, enclave_sig_public=fed.enclave.sig.public_bytes())
    assert not np.allclose(arrays["w"].numpy(), CANARY)  # the banks trained
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("state.db*"))
    stored += b"".join(f.read_bytes() for f in logs.glob("*.log"))
    assert b"mpctrain.envelope" in stored and b"banks-superlink" in stored  # positive control: messages were stored
    assert CANARY.tobytes() not in stored  # the global model
    for update in _plain_updates(["bank-a", "bank-b"]):
        assert update not in stored  # each bank's update
