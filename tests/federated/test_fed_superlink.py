"""Deployment on Flower's SuperLink/SuperNode: TLS, SuperNode authentication, the ServerApp in the aggregator.

A real SuperLink and two SuperNodes on loopback (no dependency installation, telemetry off) run one round
of the banks job, served by an aggregator whose job store runs federated jobs through the SuperLink
(``[federated]``, ``superlink_runner``): the job starts when both banks have consented, takes the run that
``flwr run`` submits for it, checks that the FAB holds the consented code and builds the initial model
with it. The parties attest the aggregator over real gRPC; the researcher fetches the sealed model with a
signed receipt. Afterwards the SuperLink's database (and its write-ahead log, which keeps deleted rows)
holds the sealed envelopes but neither any bank's plaintext update nor the final model.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from fedkit import app_outside_consent
from flwr.app import ConfigRecord, Context, Message, RecordDict

from mpctrain.enclave.config import FederatedConfig
from mpctrain.enclave.federated.deploy import (
    JOB_CONFIG_KEY,
    WrongRun,
    superlink_runner,
    superlink_task,
    supernode_keypair,
    tls_material,
)
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.server import Aggregator
from mpctrain.enclave.state import JobState
from mpctrain.party.client import AggregatorClient
from mpctrain.party.flower import app_code_digest
from mpctrain.party.flower.attestation import GrpcEvidenceSource, attest_enclave
from mpctrain.party.flower.profile import approve_federated_job
from mpctrain.party.outputs import fetch_outputs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "banks_federated"
BIN = Path(sys.executable).parent
FAB_CONFIG = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}  # pyproject.toml

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
    from examples.banks_federated.app.task import initial_arrays

    app = make_client_app([])
    out = []
    for bank in banks:
        ins = Message(RecordDict({"arrays": initial_arrays(),
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
    fed = build_federation(["bank-a", "bank-b"], job_id="banks-superlink", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1, "strategy": "FedAvg",
                                     "flower": {"initial_arrays": "task:initial_arrays", "run_config": FAB_CONFIG}})
    port = _free_port()
    agg = Aggregator(fed.enclave, events=fed.events)
    config = FederatedConfig(superlink=f"127.0.0.1:{port}", root_certificates=tls.ca, timeout_s=240)
    agg.store.runners["federated"] = superlink_runner(fed.enclave, agg.events, config)
    aport = agg.start()
    profiles = {}
    for p in fed.parties:  # each bank's profile, as `mpctrain job approve` leaves it
        prof = fed.write_profile(p, tmp_path / "parties" / p.id, f"127.0.0.1:{aport}", EXAMPLE / "app")
        approve_federated_job(prof, fed.manifest)
        profiles[p.id] = prof

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
            appio = _free_port()  # the SuperNode runs no app itself: the bank's executor checks every FAB first
            spawn(p.id, [str(BIN / "flower-supernode"), "--root-certificates", str(tls.ca), "--superlink",
                         f"127.0.0.1:{port}", "--auth-supernode-private-key", str(priv),
                         "--auth-supernode-public-key", str(pub), "--port", str(appio), "--isolation", "process",
                         "--node-config", f"mpctrain-party='{profiles[p.id]}'"])
            _wait_port(appio)
            spawn(f"{p.id}-exec", [str(BIN / "mpctrain"), "party", "flower-exec", "--profile", str(profiles[p.id]),
                                   "--supernode", f"127.0.0.1:{appio}"])
        stored_job = agg.store.add(fed.manifest, fed.manifest.to_bytes())
        for c in fed.consents:  # the last consent starts the job: it waits for its run on the SuperLink
            agg.store.add_consent(stored_job, c)
        run = subprocess.run([str(BIN / "flwr"), "run", str(EXAMPLE), "local", "--run-config",
                              f"{JOB_CONFIG_KEY}='{fed.manifest.job_id}'"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        agg.store.join(timeout=240)
        assert stored_job.state == JobState.DONE, stored_job.error
        enclave = attest_enclave(GrpcEvidenceSource(f"127.0.0.1:{aport}"), fed.policy)
        with AggregatorClient(f"127.0.0.1:{aport}", "researcher", fed.researcher.identity) as client:
            opened, _receipt = fetch_outputs(client, enclave, fed.manifest, "researcher", fed.researcher.kem,
                                             policy=fed.policy)
        # a run for another job (here the app's default, banks-federated) is refused before anything is sent
        run = subprocess.run([str(BIN / "flwr"), "run", str(EXAMPLE), "local"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        with pytest.raises(WrongRun, match="is for job 'banks-federated', not 'banks-superlink'"):
            with superlink_task(config.superlink, root_certificates=tls.ca.read_bytes(), timeout=60,
                                job_id="banks-superlink"):
                pytest.fail("a run for another job was served")
        # a FAB that keeps the consented app/ but names a ClientApp outside it: the banks' executors refuse it
        evil = app_outside_consent(EXAMPLE, tmp_path / "evil-app", tmp_path / "evil-ran")
        run = subprocess.run([str(BIN / "flwr"), "run", str(evil), "local", "--run-config",
                              f"{JOB_CONFIG_KEY}='{fed.manifest.job_id}'"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        with superlink_task(config.superlink, root_certificates=tls.ca.read_bytes(), timeout=60,
                            job_id=fed.manifest.job_id) as task:
            nodes = list(task.grid.get_node_ids())
            asks = [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n,
                            message_type="train", group_id="1") for n in nodes]
            replies = list(task.grid.send_and_receive(asks, timeout=60))
        assert len(nodes) == 2 and len(replies) == 2
        assert all(r.has_error() and r.error.reason == "refused by the party: CodeDigestMismatch" for r in replies)
        assert not (tmp_path / "evil-ran").exists()  # not one line of the other ClientApp ran
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        agg.stop()

    for p in fed.parties:  # each bank's executor ran the job's train and evaluate tasks, and refused the other FAB
        done = re.search(rb"stopped after (\d+) task\(s\), (\d+) refused", (logs / f"{p.id}-exec.log").read_bytes())
        assert done is not None and (done.group(1), done.group(2)) == (b"3", b"1")
    model = safetensors.numpy.load(opened["model"])
    assert json.loads(opened["metrics"])["rounds"] == 1
    assert np.abs(model["w"]).max() > 0  # the banks trained, starting from the consented app's zeros
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("state.db*"))
    stored += b"".join(f.read_bytes() for f in logs.glob("*.log"))
    assert b"mpctrain.envelope" in stored and b"banks-superlink" in stored  # positive control: messages were stored
    assert model["w"].tobytes() not in stored  # the final model
    for update in _plain_updates(["bank-a", "bank-b"]):
        assert update not in stored  # each bank's update
