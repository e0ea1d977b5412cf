"""The aggregator process: enclave keys, job store, the gRPC services, health and reflection."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mpctrain.attest import BuildInfo
from mpctrain.attest.backend import Attester, GpuAttester
from mpctrain.enclave.attestation_service import AttestationService
from mpctrain.enclave.audit import AuditLog
from mpctrain.enclave.audit_service import AuditService
from mpctrain.enclave.auth import RequestAuthenticator
from mpctrain.enclave.config import AggregatorConfig, ConfigError
from mpctrain.enclave.data_service import DataService
from mpctrain.enclave.events import EventSink, FanoutEventSink, LogEventSink
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.jobs_service import JobsService, list_page_bytes
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.pooled import PooledRunner
from mpctrain.enclave.ratelimit import ThrottledSink
from mpctrain.enclave.results_service import ResultsService
from mpctrain.enclave.state import JobStore, Runner
from mpctrain.enclave.uploads import UploadTable
from mpctrain.wire import (
    attestation_pb2,
    attestation_pb2_grpc,
    audit_pb2_grpc,
    data_pb2,
    data_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
)

log = logging.getLogger("mpctrain.enclave")

SERVICE_NAMES = tuple(
    m.DESCRIPTOR.services_by_name[s].full_name
    for m, s in ((attestation_pb2, "Attestation"), (jobs_pb2, "Jobs"), (data_pb2, "Data"), (results_pb2, "Results"))
)


def build_info(config_digest: bytes, version: str = "0.1.0") -> BuildInfo:
    """Build digest = digest of the running code (what the simulated TEE measures too)."""
    from mpctrain.attest.measure import code_digest

    return BuildInfo(version=version, build_digest=code_digest(), config_digest=config_digest)


def tls_credentials(config: AggregatorConfig) -> grpc.ServerCredentials | None:
    """Server TLS credentials from ``[tls]`` (None: plaintext transport)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        if config.tls_key.stat().st_mode & 0o077:  # as for party keys: a key others can read is not private
            raise ConfigError(f"TLS key {config.tls_key} is readable by group or others: chmod 600 it")
        chain, key = config.tls_cert.read_bytes(), config.tls_key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)])


DEFAULT_SIM_ROOT = Path(".mpctrain/sim-root")  # the simulated root when [sim] names no root_dir


def make_attester(config: AggregatorConfig) -> Attester:
    """The configured TEE backend's attester; the simulated root is created on first use."""
    if config.attester == "sim":
        from mpctrain.attest.sim import ROOT_PEM, SimAttester, create_sim_root

        root_dir = config.sim_root_dir or DEFAULT_SIM_ROOT
        if not (root_dir / ROOT_PEM).exists():
            create_sim_root(root_dir)
        return SimAttester(root_dir, config_digest=config.config_digest)
    from mpctrain.attest.select import SelectionError, select_attester

    try:  # configfs-tsm inside an SEV-SNP or TDX guest; never a silent fallback to simulation
        return select_attester(config.attester)
    except SelectionError as exc:
        raise ConfigError(f"attester {config.attester!r}: {exc}") from exc


def make_gpu_attesters(config: AggregatorConfig) -> list[GpuAttester]:
    """NVIDIA CC-mode GPU evidence when ``gpu = "auto"`` finds such GPUs (none otherwise)."""
    if config.gpu == "off":
        return []
    from mpctrain.attest.select import select_gpu_attester

    try:
        gpu = select_gpu_attester(config.gpu)
    except Exception as exc:  # no driver / NVML library: a CPU-only enclave
        log.warning("no GPU evidence: %s", type(exc).__name__)
        return []
    return [gpu] if gpu is not None else []


class ListenError(OSError):
    """The server cannot bind its address; ``in_use`` when another process (often an aggregator) holds it."""

    def __init__(self, address: str, *, in_use: bool) -> None:
        self.address, self.in_use = address, in_use
        super().__init__(f"{address} is in use (another aggregator?)" if in_use else
                         f"cannot listen on {address}: check the host is an address of this machine and the port "
                         "a number")


def port_in_use(address: str) -> bool:
    """Whether binding ``host:port`` fails because the port is taken (gRPC's own error does not say why)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return False
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a TIME_WAIT port is free
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


UNARY_WORKERS = 16  # worker threads left for unary calls when every stream slot is taken


class Aggregator:
    """Everything the enclave serves; ``start()`` binds a real gRPC server and returns its port."""

    def __init__(self, identity: EnclaveIdentity, *, limits: Limits | None = None, events: EventSink | None = None,
                 device: str = "auto", runners: dict[str, Runner] | None = None, max_workers: int | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (), audit_log: str | Path | None = None,
                 proposers: Sequence[bytes] = (), auditors: Mapping[str, bytes] | None = None) -> None:
        self.identity = identity
        self.auditors = dict(auditors or {})  # party id -> identity key: may read the whole audit log
        self.limits = limits or Limits()
        self.events = events or LogEventSink()
        self.audit = AuditLog(audit_log, identity) if audit_log is not None else None  # opens this enclave's segment
        if self.audit is not None:
            self.events = FanoutEventSink([self.events, self.audit])
        # any network caller can cause refusals: their records are capped, the rest counted
        self.throttle = ThrottledSink(self.events, per_minute=self.limits.rejections_per_minute)
        self.events = self.throttle
        all_runners: dict[str, Runner] = {"pooled": PooledRunner(identity, self.events, device)}
        all_runners.update(runners or {})
        self.store = JobStore(self.events, runners=all_runners, max_jobs=self.limits.max_jobs)
        self.auth = RequestAuthenticator(window_s=self.limits.auth_window_s)
        self.uploads = UploadTable()
        self.jobs = JobsService(self.store, self.auth, self.events, self.limits.max_watchers, tuple(proposers),
                                page_bytes=list_page_bytes(self.limits.reply_bytes))
        self.data = DataService(self.store, self.auth, self.events, identity, self.limits, self.uploads)
        self.results = ResultsService(self.store, self.auth, self.events, self.limits)
        self.attestation = AttestationService(identity, self.events, self.limits)
        self.health = health.HealthServicer()
        # every upload and watch stream holds a worker thread for its whole life: size the pool so that with
        # all of them open, unary calls (attestation, health, status) still have threads of their own
        streams = self.limits.max_concurrent_uploads + self.limits.max_watchers
        self.max_workers = max_workers or streams + UNARY_WORKERS
        self.interceptors = tuple(interceptors)
        self.server: grpc.Server | None = None
        self.port: int = 0

    @classmethod
    def from_config(cls, config: AggregatorConfig, events: EventSink | None = None, *,
                    attester: Attester | None = None) -> Aggregator:
        """Keys, evidence and the audit log's new segment for ``config``; ``attester`` when the caller made it
        already (``serve`` does, to check --write-policy before a segment record is written)."""
        attester = attester or make_attester(config)
        identity = EnclaveIdentity.generate(attester, build_info(config.config_digest, config.version),
                                            kem_alg=config.kem_alg, gpus=make_gpu_attesters(config))
        agg = cls(identity, limits=config.limits, events=events, device=config.device, audit_log=config.audit_log,
                  proposers=config.proposers, auditors=config.auditors)
        if config.federated is not None:  # Flower is imported only by aggregators that serve federated jobs
            from mpctrain.enclave.federated.deploy import superlink_runner

            agg.store.runners["federated"] = superlink_runner(identity, agg.events, config.federated)
        return agg

    def server_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self.limits.max_message_bytes),
            ("grpc.max_send_message_length", self.limits.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]

    def add_services(self, server: grpc.Server) -> None:
        attestation_pb2_grpc.add_AttestationServicer_to_server(self.attestation, server)
        jobs_pb2_grpc.add_JobsServicer_to_server(self.jobs, server)
        data_pb2_grpc.add_DataServicer_to_server(self.data, server)
        results_pb2_grpc.add_ResultsServicer_to_server(self.results, server)
        if self.audit is not None:
            audit_pb2_grpc.add_AuditServicer_to_server(
                AuditService(self.audit.path, self.events, self.auth, self.store, self.auditors, log=self.audit),
                server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    def start(self, address: str = "127.0.0.1:0", credentials: grpc.ServerCredentials | None = None) -> int:
        """Bind and serve; with ``credentials`` the port speaks TLS (see ``tls_credentials``)."""
        if port_in_use(address):  # said before gRPC tries: its C core would log its own error line first
            raise ListenError(address, in_use=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="enclave"),
                             options=self.server_options(), interceptors=self.interceptors)
        self.add_services(server)
        try:
            port = (server.add_secure_port(address, credentials) if credentials is not None
                    else server.add_insecure_port(address))
        except RuntimeError as exc:  # grpcio raises a bare RuntimeError("Failed to bind to address ...")
            raise ListenError(address, in_use=port_in_use(address)) from exc
        if port == 0:
            raise ListenError(address, in_use=port_in_use(address))
        server.start()
        self.server, self.port = server, port
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = address.rsplit(":", 1)[0]
        self.events.emit("aggregator.started", address=f"{host}:{port}", attester=self.identity.attester.kind,
                         kem_key=self.identity.kem.key_id(), sig_key=self.identity.sig.key_id())
        return port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, then release the audit log (its lock lets the next aggregator on this path open it)."""
        if self.server is not None:
            self.health.enter_graceful_shutdown()
            self.server.stop(grace).wait()
            self.store.join(timeout=5)
            self.throttle.flush()  # a flood of refusals that just stopped still has its count written
            self.events.emit("aggregator.stopped")
            self.server = None
        if self.audit is not None:
            self.audit.close()

    def __enter__(self) -> Aggregator:
        if self.server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
