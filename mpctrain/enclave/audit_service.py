"""The Audit gRPC service: streams the stored log (whole, or one job's view) exactly as it is on disk.

Readers verify every record, so serving it adds no trust; but the records name parties, jobs, sizes and
digests, so the request is signed like every other call (docs/audit.md, "Who may read the log"):
- a job's view (``job_id`` set): only parties the job's manifest names;
- the whole log: any party a stored job names with the key it signed with, or a configured auditor.
Lines that do not parse are passed on as they are, for the reader's verifier to locate; a last line
without its newline (being appended) is held back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc

from mpctrain.enclave.audit.reader import read_lines
from mpctrain.enclave.audit.record import SEGMENT_KIND
from mpctrain.enclave.auth import Caller, RequestAuthenticator
from mpctrain.enclave.common import Rejected, guarded, names, readable_job
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.state import JobStore
from mpctrain.wire import audit_pb2, audit_pb2_grpc

GET_LOG = "/mpctrain.v1.Audit/GetLog"
JOB_VIEW_KINDS = frozenset((SEGMENT_KIND, "evidence.served", "aggregator.started", "aggregator.stopped"))
MAX_JOB_ID = 256


def _peek(raw: bytes) -> tuple[int | None, str | None, str | None]:
    """(seq, job_id, kind) of a stored line, or Nones when it does not parse."""
    try:
        obj = json.loads(raw)
        seq = obj.get("seq")
        return (seq if isinstance(seq, int) else None), obj.get("job_id"), obj.get("kind")
    except (ValueError, AttributeError, RecursionError):
        return None, None, None


def job_view(job_id: str, job: str | None, kind: str | None) -> bool:
    """Whether a record belongs to ``job_id``'s view: its own records and the job-less context records."""
    return job == job_id or (job is None and kind in JOB_VIEW_KINDS)


class AuditService(audit_pb2_grpc.AuditServicer):
    """``auditors`` (party id -> Ed25519 identity key) may read the whole log without being named by a job."""

    def __init__(self, path: str | Path, events: EventSink, auth: RequestAuthenticator, store: JobStore,
                 auditors: Mapping[str, bytes] | None = None) -> None:
        self.path = Path(path)
        self.events = events
        self.auth = auth
        self.store = store
        self.auditors = dict(auditors or {})

    def _identities(self, party_id: str) -> list[bytes]:
        extra = self.auditors.get(party_id)
        return [*self.store.identities(party_id), *([extra] if extra is not None else [])]

    def _authorize_whole_log(self, caller: Caller) -> None:
        if self.auditors.get(caller.party_id) == caller.identity_public:
            return
        if any(names(job, caller) for job in self.store.list()):
            return
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"party {caller.party_id!r} is neither named by a job on this aggregator nor an auditor; "
                       "ask for one job's view (job_id) instead")

    def GetLog(self, request: audit_pb2.GetLogRequest,
               context: grpc.ServicerContext) -> Iterator[audit_pb2.AuditRecord]:
        with guarded(context, self.events, GET_LOG):
            if len(request.job_id) > MAX_JOB_ID:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"job id longer than {MAX_JOB_ID} characters")
            caller = self.auth.authenticate(context.invocation_metadata(), GET_LOG, request, self._identities)
            if request.job_id:
                readable_job(self.store, request.job_id, caller)
            else:
                self._authorize_whole_log(caller)
            if not self.path.exists():
                raise Rejected(grpc.StatusCode.NOT_FOUND, "this aggregator has written no audit log yet")
            for line_no, raw in read_lines(self.path):
                if not raw.endswith(b"\n"):
                    return  # the record being appended right now: the next fetch gets it whole
                if request.job_id or request.from_seq:
                    seq, job, kind = _peek(raw)
                    if seq is not None and seq < request.from_seq:
                        continue
                    if seq is not None and request.job_id and not job_view(request.job_id, job, kind):
                        continue
                yield audit_pb2.AuditRecord(line=line_no, data=raw)
