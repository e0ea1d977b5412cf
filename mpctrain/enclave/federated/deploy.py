"""Deployment on Flower's own SuperLink/SuperNode, with the ServerApp running in the aggregator process.

The SuperLink is started with ``--isolation process``: it does not launch a ServerApp itself, it waits
for one to acquire the run's task over its Runtime API. The aggregator does that here, in its own
process, next to the enclave keys (``superlink_task``; ``superlink_runner`` is the job store's runner
that ``aggregator serve`` installs with ``[federated]``): Flower's ``HttpGrid`` carries the messages,
and ``Confidential`` seals and opens them, so the SuperLink only ever stores and relays sealed bytes.
The SuperNodes run the banks' ClientApp (with ``confidential_mod``) from the FAB that ``flwr run``
submitted. TLS (``tls_material``) and SuperNode authentication (``supernode_keypair``) are Flower's.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.app import ArrayRecord
from flwr.serverapp.grid import Grid

from mpctrain.enclave.config import ConfigError, FederatedConfig
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.federated.errors import FederatedError
from mpctrain.enclave.federated.runner import FederatedRunner
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.state import Job, show_verbatim
from mpctrain.jobs import JobManifest
from mpctrain.seal.keys import write_private

log = logging.getLogger(__name__)

JOB_CONFIG_KEY = "mpctrain-job"  # run config key naming the mpctrain job a Flower run serves


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
    write_private(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # 0600 from the start, atomic
    return files


def supernode_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (EC P-384) in the OpenSSH formats Flower loads and registers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


@dataclass
class ServerTask:
    """A ServerApp task acquired from the SuperLink: the grid to its SuperNodes and what ``flwr run`` sent."""

    grid: Grid
    run_id: int
    fab: bytes  # the FAB every SuperNode runs (the enclave checks its digest before running any of it)
    run_config: dict[str, Any]  # the FAB's [tool.flwr.app.config] with the run's overrides

    @property
    def job_id(self) -> str | None:
        value = self.run_config.get(JOB_CONFIG_KEY)
        return value if isinstance(value, str) else None


class WrongRun(FederatedError):
    """The run submitted to the SuperLink is not for the job the aggregator is about to serve."""


class NoRunSubmitted(FederatedError):
    """Nobody submitted the job's run to the SuperLink (``flwr run``) within the configured time."""


show_verbatim(WrongRun, NoRunSubmitted)  # about the submitted run, never about a party's data


@contextmanager
def superlink_task(runtime_api_address: str, *, root_certificates: bytes | None, timeout: float = 300.0,
                   poll_s: float = 0.2, job_id: str | None = None) -> Iterator[ServerTask]:
    """Acquire the next ServerApp task from the SuperLink (submitted by ``flwr run``) and yield it.

    With ``job_id``, the run must name that job in its run config (``mpctrain-job``, a default in the
    app's pyproject.toml or ``flwr run --run-config "mpctrain-job='…'"``); another run fails with
    ``WrongRun``. The task's heartbeat runs while the block does; on leaving it, the task is reported
    completed, or failed with the reason when the block raised, so ``flwr ls`` shows how the run ended.
    """
    from flwr.common.config import get_fused_config_from_fab
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, context_to_proto, run_from_proto
    from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullTaskInputRequest, PushTaskOutputRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import HttpGrid

    from mpctrain.enclave.federated.apps import check_fab

    insecure = root_certificates is None
    retry = _never_signal_self(make_simple_http_retry_invoker())
    retry.max_tries = 1  # this loop retries, within the job's deadline (Flower's own invoker would not stop)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure, root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")], retry_invoker=retry,
    )
    deadline = time.monotonic() + timeout
    unreachable: str | None = None
    try:
        while True:
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP]))
            except Exception as exc:  # the SuperLink is down or restarting: keep trying until the deadline
                unreachable = type(exc).__name__
            else:
                unreachable = None
                if res.HasField("task") and res.token:
                    token = res.token
                    break
            if time.monotonic() > deadline:
                why = (f"the SuperLink at {runtime_api_address} stayed unreachable ({unreachable})" if unreachable
                       else f"no ServerApp task was submitted to the SuperLink at {runtime_api_address}")
                raise NoRunSubmitted(f"{why} within {timeout:.0f} s: start it, then submit the app with `flwr run`")
            time.sleep(poll_s if unreachable is None else min(1.0, max(poll_s, 0.5)))
    finally:
        client.close()
    grid = HttpGrid(runtime_api_address=runtime_api_address, insecure=insecure,
                    root_certificates=root_certificates, token=token)
    grid._retry_invoker = _never_signal_self(grid._retry_invoker)  # before its client is made, on first use
    heartbeat = HeartbeatSender(_task_heartbeat(grid._runtime_client))
    heartbeat.start()
    context = None
    status, details = SubStatus.FAILED, "federated job failed"
    try:
        task = grid._runtime_client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = task.task_id
        TaskIdentity.run_id = task.run.run_id
        TaskIdentity.node_id = task.context.node_id
        context = context_from_proto(task.context)
        run = run_from_proto(task.run)
        grid.set_run(run)
        fab = bytes(task.fab.content)
        check_fab(fab)  # bounded before Flower's reader unpacks its pyproject.toml
        try:
            run_config = dict(get_fused_config_from_fab(fab, run))
        except Exception as exc:  # a FAB Flower itself cannot read
            raise WrongRun(f"run {run.run_id}: the submitted FAB has no readable app config ({exc})") from exc
        context.run_config = run_config
        served = ServerTask(grid=grid, run_id=run.run_id, fab=fab, run_config=run_config)
        if job_id is not None and served.job_id != job_id:
            raise WrongRun(f"run {run.run_id} is for job {served.job_id!r}, not {job_id!r}: submit it with "
                           f"`flwr run <app> <federation> --run-config \"{JOB_CONFIG_KEY}='{job_id}'\"`")
        log.info("serving Flower run %s (job %s) in the aggregator process", run.run_id, served.job_id)
        yield served
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:
        details = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        heartbeat.stop()  # first: a heartbeat after the task ended would be told the task is gone
        try:
            grid._runtime_client.PushTaskOutput(PushTaskOutputRequest(
                context=context_to_proto(context) if context is not None else None, sub_status=status,
                details=details))
        finally:
            grid.close()


def _never_signal_self(invoker: Any) -> Any:
    """Flower's HTTP retry invoker answers a 401 (the task's token is no longer valid) by sending SIGINT to
    its own process: right for a ServerApp process of its own, fatal here, where the ServerApp runs inside
    the aggregator and SIGINT stops it serving every job. A 401 now just ends that call."""
    import httpx

    giveup = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return giveup(exc) if giveup is not None else True

    invoker.should_giveup = should_giveup
    return invoker


def _task_heartbeat(client: Any) -> Any:
    """Flower's task heartbeat, less its ``raise_signal(SIGINT)`` when the SuperLink no longer knows the task
    (after it ended, or ``flwr stop``): that would stop the whole aggregator. The run's next call then fails
    with Flower's own RunNotRunningException, which ends this job alone."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            reply = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in (httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT):
                return False
            raise
        if not reply.success:
            log.warning("the SuperLink no longer knows this ServerApp task (ended, or stopped with flwr stop)")
        return True

    return beat


def task_initial_arrays(manifest: JobManifest, task: ServerTask) -> ArrayRecord:
    """Check a run against the job, then build its initial model with the consented code from its FAB.

    The run's config must be the one the manifest pins; the banks would refuse it otherwise, so it fails
    here, before anything is sent. The FAB must hold the consented code.
    """
    from mpctrain.enclave.federated.apps import (
        app_from_fab,
        check_run_config,
        consented_initial_arrays,
        manifest_code_digest,
    )

    check_run_config(manifest, task.run_config)
    return consented_initial_arrays(manifest, app_from_fab(task.fab, manifest_code_digest(manifest)))


def superlink_runner(identity: EnclaveIdentity, events: EventSink, config: FederatedConfig) -> FederatedRunner:
    """The job store's federated runner for ``aggregator serve`` with ``[federated]``.

    Once every consent is in, the job waits for its run on the SuperLink (``flwr run``, naming the job
    in ``mpctrain-job``), checks that the submitted FAB holds the consented code, builds the initial
    model with that code, and runs the rounds. Jobs are served one at a time: a run is matched to the
    job that is waiting for it.
    """
    ca = config.root_certificates
    try:
        root_certificates = ca.read_bytes() if ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read [federated] root_certificates {ca}: {exc}") from exc
    host = config.superlink.rsplit(":", 1)[0].strip("[]")
    if root_certificates is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("the SuperLink at %s is reached without TLS: messages stay sealed end to end, but its task "
                    "token travels in clear; set [federated] root_certificates", config.superlink)
    one_at_a_time = threading.Lock()
    tasks: dict[int, ServerTask] = {}  # id(grid) -> the task that grid serves

    @contextmanager
    def grid_for(job: Job) -> Iterator[Grid]:
        with one_at_a_time, superlink_task(config.superlink, root_certificates=root_certificates,
                                           timeout=config.timeout_s, job_id=job.job_id) as task:
            tasks[id(task.grid)] = task
            try:
                yield task.grid
            finally:
                del tasks[id(task.grid)]

    def initial_arrays(job: Job, grid: Grid) -> ArrayRecord:
        return task_initial_arrays(job.manifest, tasks[id(grid)])

    return FederatedRunner(identity, events, grid_for=grid_for, initial_arrays=initial_arrays,
                           timeout=float(config.timeout_s))
