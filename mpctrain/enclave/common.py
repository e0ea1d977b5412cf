"""Helpers shared by the enclave's gRPC services: authentication and error-to-status mapping."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.protobuf.message import Message

from mpctrain.enclave.auth import AuthError, Caller, RequestAuthenticator
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.state import Job, JobError, JobStore
from mpctrain.jobs.manifest import ROLES

log = logging.getLogger("mpctrain.enclave")

REASON_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "permission": grpc.StatusCode.PERMISSION_DENIED,
}


class Rejected(Exception):
    """A request refused with a status code; the message goes to the caller and the log (no payloads)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def guarded(context: grpc.ServicerContext, events: EventSink, method: str) -> Iterator[None]:
    """Turn typed failures into status codes; anything unexpected becomes INTERNAL without details."""
    try:
        yield
    except Rejected as exc:
        _reject(context, events, method, exc.code, str(exc))
    except AuthError as exc:
        _reject(context, events, method, exc.code, str(exc))
    except JobError as exc:
        _reject(context, events, method, REASON_CODES.get(exc.reason, grpc.StatusCode.FAILED_PRECONDITION), str(exc))
    except grpc.RpcError:
        raise
    except Exception as exc:
        if _aborted(exc):
            raise
        log.error("%s failed: %s", method, type(exc).__name__)
        log.debug("%s traceback", method, exc_info=True)
        events.emit("rejected", method=method, code="INTERNAL", reason=type(exc).__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the aggregator log")


def _aborted(exc: Exception) -> bool:
    # context.abort raises a bare Exception subclass internal to grpc; let it through untouched
    return type(exc).__module__.startswith("grpc")


def _reject(context: grpc.ServicerContext, events: EventSink, method: str, code: grpc.StatusCode,
            message: str) -> None:
    # the event sink logs it (at WARNING), rate limited with the audit record: a flood of bad calls
    # cannot flood the host's log either
    log.debug("%s rejected: %s: %s", method, code.name, message)
    events.emit("rejected", method=method, code=code.name, reason=message[:200],
                caller=str(dict(context.invocation_metadata() or ()).get("x-mpctrain-party", ""))[:64])
    context.abort(code, message)


def authenticate(auth: RequestAuthenticator, store: JobStore, context: grpc.ServicerContext, method: str,
                 request: Message) -> Caller:
    return auth.authenticate(context.invocation_metadata(), method, request, store.identities)


def authorize(job: Job, caller: Caller, *, roles: tuple[str, ...] = ("data", "researcher")) -> None:
    """The caller must be named by the job with the key it signed with, in one of ``roles``."""
    spec = job.manifest.party_by_identity(caller.identity_public)
    if spec is None or spec.id != caller.party_id:
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"party {caller.party_id!r} is not named by job {job.job_id}")
    if spec.role not in roles:
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"party {caller.party_id!r} has role {spec.role!r} in job {job.job_id}; "
                       f"this call needs {' or '.join(roles)}")


def names(job: Job, caller: Caller) -> bool:
    """Whether ``job``'s manifest names the caller, under the id it claimed and with the key it signed with."""
    spec = job.manifest.party_by_identity(caller.identity_public)
    return spec is not None and spec.id == caller.party_id


def readable_job(store: JobStore, job_id: str, caller: Caller) -> Job:
    """The job an authenticated read may see: the caller must be named by it, in any role.

    A missing job and a job that does not name the caller give the same PERMISSION_DENIED, so a party
    cannot probe which job ids exist on the aggregator.
    """
    try:
        job = store.get(job_id)
    except JobError:
        job = None
    if job is None or not names(job, caller):
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"party {caller.party_id!r} is not named by job {job_id[:256]!r}")
    authorize(job, caller, roles=ROLES)
    return job
