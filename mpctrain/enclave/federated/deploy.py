"""Deployment on Flower's own SuperLink/SuperNode, with the ServerApp running in the aggregator process.

The SuperLink is started with ``--isolation process``: it does not launch a ServerApp itself, it waits
for one to acquire the run's task over its Runtime API. The aggregator does that here, in its own
process, next to the enclave keys (``serve_run``): Flower's ``HttpGrid`` carries the messages, and
``Confidential`` seals and opens them, so the SuperLink only ever stores and relays sealed bytes.
The SuperNodes run the banks' ClientApp (with ``confidential_mod``) from the FAB that ``flwr run``
submitted. TLS (``tls_material``) and SuperNode authentication (``supernode_keypair``) are Flower's.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.serverapp.strategy import Strategy

from mpctrain.enclave.federated.server_app import FederatedJob, run_federated_job
from mpctrain.enclave.federated.strategy import FederatedResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def tls_material(out_dir: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A private CA and a server certificate for ``hosts`` (loopback deployments and tests)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpctrain federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    files = TlsFiles(out / "ca.pem", out / "server.pem", out / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


def supernode_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (EC P-384) in the OpenSSH formats Flower loads and registers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


def serve_run(job: FederatedJob, runtime_api_address: str, *, root_certificates: bytes | None,
              strategy: Strategy | None = None, timeout: float = 300.0, poll_s: float = 0.2) -> FederatedResult:
    """Acquire the next ServerApp task from the SuperLink and run ``job`` for it in this process."""
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, context_to_proto, run_from_proto
    from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullTaskInputRequest, PushTaskOutputRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import HttpGrid

    insecure = root_certificates is None
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure, root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP]))
            if res.HasField("task") and res.token:
                token = res.token
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no ServerApp task was submitted to the SuperLink (`flwr run`) in time")
            time.sleep(poll_s)
    finally:
        client.close()
    grid = HttpGrid(runtime_api_address=runtime_api_address, insecure=insecure,
                    root_certificates=root_certificates, token=token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(grid._runtime_client))
    heartbeat.start()
    context = None
    status, details = SubStatus.FAILED, "federated job failed"
    try:
        task = grid._runtime_client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = task.task_id
        TaskIdentity.run_id = task.run.run_id
        TaskIdentity.node_id = task.context.node_id
        context = context_from_proto(task.context)
        grid.set_run(run_from_proto(task.run))
        log.info("serving Flower run %s in the aggregator process", task.run.run_id)
        result = run_federated_job(job, grid, strategy=strategy, timeout=timeout)
        status, details = SubStatus.COMPLETED, ""
        return result
    finally:
        try:
            grid._runtime_client.PushTaskOutput(PushTaskOutputRequest(
                context=context_to_proto(context) if context is not None else None, sub_status=status,
                details=details))
        finally:
            heartbeat.stop()
            grid.close()
