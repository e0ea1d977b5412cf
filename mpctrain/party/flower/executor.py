"""``mpctrain party flower-exec``: the party runs its SuperNode's ClientApp tasks itself, and only consented code.

A stock SuperNode installs whatever FAB the SuperLink relays and runs its ClientApp. That code is the
party's only line of defence (its mod seals the reply), so a FAB with other code, one without the mod
for instance, could send the party's update in clear. Started with ``--isolation process``, a SuperNode
runs no app itself: it waits for an executor to acquire each ClientApp task over its Runtime API. This
is that executor. For every task it:

1. takes the job the run names (``mpctrain-job``) among the jobs this profile approved, and the FAB;
2. finds the directory whose ``.py`` files have that job's consented digest, with the FAB's ClientApp
   inside it, and refuses the task otherwise;
3. loads the ClientApp from those very bytes (never from disk, never a second copy);
4. runs it, and pushes the reply and the task status back to the SuperNode.

It runs tasks one after another in one process, so the party attests the enclave once per run, not
once per message as with the SuperNode's own per-message processes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp

from mpctrain.attest import Policy
from mpctrain.enclave.federated.apps import (
    JOB_KEY,
    AppEntryError,
    ConsentedApp,
    app_from_fab,
    import_app_module,
    manifest_code_digest,
    running_app,
    unload_app,
)
from mpctrain.enclave.federated.errors import FederatedError
from mpctrain.jobs import JobManifest
from mpctrain.party.flower.runtime import NODE_CONFIG_KEY, PartyRuntime, register_party

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0  # longest wait between attempts to reach the SuperNode


class PartyMismatch(FederatedError):
    """The SuperNode serves another party's profile than the executor beside it."""


@dataclass(frozen=True)
class ExecStats:
    tasks: int = 0
    failed: int = 0  # refused (not the consented code) or the app raised


@dataclass(frozen=True)
class ConsentedClientApp:
    """The consented ClientApp and its app: each call runs with the app's self-imports held to its bytes."""

    app: ConsentedApp
    client_app: ClientApp

    def __call__(self, message: Message, context: Any) -> Message:
        with running_app(self.app):
            return self.client_app(message=message, context=context)


def consented_client_app(fab: bytes, manifest: JobManifest, *, scope: str = "") -> ConsentedClientApp:
    """The FAB's ClientApp, loaded from the consented directory's hashed bytes; refused if it is other code.

    ``scope`` (the executor passes the job and run) gives the app modules of its own: no module state of one
    job or run reaches another, as with Flower's own process per ClientApp run.
    """
    from flwr.common.config import get_fab_config

    app = dataclasses.replace(app_from_fab(fab, manifest_code_digest(manifest)), scope=scope)
    try:
        reference = get_fab_config(fab)["tool"]["flwr"]["app"]["components"]["clientapp"]
    except Exception as exc:  # a FAB Flower itself cannot read
        raise AppEntryError(f"the FAB names no readable ClientApp component: {exc}") from exc
    if not isinstance(reference, str):
        raise AppEntryError("the FAB's [tool.flwr.app.components] clientapp is not a string")
    module, attr = app.module_of(reference)
    client_app = getattr(import_app_module(app, module), attr, None)
    if not isinstance(client_app, ClientApp):
        raise AppEntryError(f"{reference} is {type(client_app).__name__}, not a flwr ClientApp")
    return ConsentedClientApp(app, client_app)


class ApprovedJobs:
    """The federated jobs this bank approved in its profile, each loaded on first use.

    A run names its job in its config (``mpctrain-job``); without one, the job ``flower.toml`` names is
    used. A run for a job the bank did not approve is refused like foreign code. One executor therefore
    serves every job the bank approves, with one attestation cache per job.
    """

    def __init__(self, profile: str | Path, policy: Policy | None = None) -> None:
        self.profile = Path(profile)
        self.policy = policy
        self._runtimes: dict[str | None, PartyRuntime] = {}
        self._apps: dict[str, ConsentedApp] = {}  # job id -> the app loaded for its current run

    def client_app(self, fab: bytes, runtime: PartyRuntime, run_id: int) -> ConsentedClientApp:
        """The run's consented ClientApp, in modules private to this job and run; the job's previous run's
        modules are unloaded when its next run starts."""
        job_id = runtime.manifest.job_id
        loaded = consented_client_app(fab, runtime.manifest, scope=f"{job_id}/run-{run_id}")
        previous = self._apps.get(job_id)
        if previous is not None and previous.package != loaded.app.package:
            unload_app(previous)
        self._apps[job_id] = loaded.app
        return loaded

    def runtime(self, job_id: str | None = None) -> PartyRuntime:
        rt = self._runtimes.get(job_id)
        if rt is None:
            from mpctrain.party.flower.profile import load_profile

            rt = load_profile(self.profile, job_id=job_id)  # JobNotReady unless approved in this profile
            if self.policy is not None:
                rt = dataclasses.replace(rt, policy=self.policy)
            rt = self._runtimes.setdefault(rt.manifest.job_id, rt)  # one runtime (and attestation) per job
            self._runtimes[job_id] = rt
        return rt


def _bind_party(context: Any, runtime: PartyRuntime, profile: Path) -> None:
    """Make the app's mod use this executor's party (keys, policy, approved job), whatever the SuperNode says.

    A SuperNode started with ``--node-config "mpctrain-party='…'"`` must name this executor's profile; one
    that names no profile gets it. The mod then finds this runtime, with its attestation cache, in memory.
    """
    name = context.node_config.get(NODE_CONFIG_KEY)
    if name is None:
        name = context.node_config[NODE_CONFIG_KEY] = str(profile)
    elif not isinstance(name, str) or Path(name).resolve() != profile.resolve():
        raise PartyMismatch(f"the SuperNode's node_config names party profile {name!r}, but this executor serves "
                            f"{profile}: start each bank's SuperNode and executor with the same profile")
    register_party(name, runtime)


def run_task(appio_address: str, token: str, jobs: ApprovedJobs, *, root_certificates: bytes | None) -> bool:
    """Pull one ClientApp task, run it if its code is the consented code, push the reply. True if it ran."""
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = RuntimeHttpClient.from_server_address(
        server_address=appio_address, insecure=root_certificates is None, root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context = None
    reply: Message | None = None
    status, details, ran = SubStatus.FAILED, "ClientApp task failed", False
    try:
        message, context, run, fab = pull_task_input(client)
        try:
            named = context.run_config.get(JOB_KEY)
            runtime = jobs.runtime(named if isinstance(named, str) else None)
            client_app = jobs.client_app(fab.content, runtime, run.run_id)
            _bind_party(context, runtime, jobs.profile)
        except FederatedError as exc:  # an unapproved job, other code, or another party: nothing of it runs
            log.error("run %s: refusing the FAB %s…: %s", run.run_id, fab.hash_str[:12], exc)
            details = f"refused by the party: {type(exc).__name__}"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        else:
            try:
                reply = client_app(message, context)
                status, details, ran = SubStatus.COMPLETED, "", True
            except Exception as exc:  # the app's own failure: reported by type only (it may quote data)
                log.error("the ClientApp raised %s", type(exc).__name__)
                details = f"ClientApp raised {type(exc).__name__}"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                                reply_to=message)
        if context is not None:
            push_message(client, reply, context)
    finally:
        try:
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            heartbeat.stop()
            client.close()
    return ran


def serve_tasks(appio_address: str, jobs: ApprovedJobs, *, root_certificates: bytes | None, stop: threading.Event,
                poll_s: float = 0.2) -> ExecStats:
    """Acquire and run the SuperNode's ClientApp tasks until ``stop`` is set."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    retry = make_simple_http_retry_invoker()
    retry.max_tries = 1  # this loop retries, and stays responsive to ``stop`` while the SuperNode is down
    client = RuntimeHttpClient.from_server_address(
        server_address=appio_address, insecure=root_certificates is None, root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")], retry_invoker=retry,
    )
    tasks = failed = 0
    backoff = poll_s
    try:
        while not stop.is_set():
            try:
                res: Any = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except Exception as exc:  # the SuperNode restarts or is not up yet: keep waiting for it
                log.warning("SuperNode at %s unreachable (%s); retrying in %.1f s", appio_address,
                            type(exc).__name__, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = poll_s
            if res.HasField("task") and res.token:
                tasks += 1
                try:
                    if not run_task(appio_address, res.token, jobs, root_certificates=root_certificates):
                        failed += 1
                except Exception as exc:  # one broken task never stops the party's executor
                    failed += 1
                    log.error("ClientApp task failed: %s", type(exc).__name__)
                continue
            stop.wait(poll_s)
    finally:
        client.close()
    return ExecStats(tasks=tasks, failed=failed)
