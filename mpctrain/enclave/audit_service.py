"""The Audit gRPC service: streams the stored log (whole, or one job's view) exactly as it is on disk.

Readers verify every record, so serving it adds no trust; but the records name parties, jobs, sizes and
digests, so the request is signed like every other call (docs/audit.md, "Who may read the log"):
- a job's view (``job_id`` set): only parties the job's manifest names;
- the whole log: any party a stored job names with the key it signed with, or a configured auditor.
With ``head_nonce`` a job's view ends with the job's head signed by the enclave, taken when the request
arrives, so the party sees whether the host relaying the stream cut its end (``mpctrain.enclave.audit.head``).
Lines that do not parse are passed on as they are, for the reader's verifier to locate; a last line
without its newline (being appended) is held back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from mpctrain.enclave.audit.head import HEAD_NONCE_BYTES, JobHead
from mpctrain.enclave.audit.log import AuditLog
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
MAX_EVIDENCE_DIGESTS = 16
SERVED_KIND = "evidence.served"


@dataclass(frozen=True)
class Peek:
    """What the service needs of a stored line; all None when it does not parse."""

    seq: int | None = None
    job_id: str | None = None
    kind: str | None = None
    evidence_digest: str | None = None


def _peek(raw: bytes) -> Peek:
    try:
        obj = json.loads(raw)
        seq, fields = obj.get("seq"), obj.get("fields")
        digest = fields.get("evidence_digest") if isinstance(fields, dict) else None
        return Peek(seq if isinstance(seq, int) else None, obj.get("job_id"), obj.get("kind"),
                    digest if isinstance(digest, str) else None)
    except (ValueError, AttributeError, RecursionError):
        return Peek()


def job_view(job_id: str, job: str | None, kind: str | None) -> bool:
    """Whether a record belongs to ``job_id``'s view: its own records and the job-less context records."""
    return job == job_id or (job is None and kind in JOB_VIEW_KINDS)


def in_view(job_id: str, peek: Peek, digests: frozenset[str]) -> bool:
    """``job_view``, with evidence.served records narrowed to ``digests`` when any are given."""
    if not job_view(job_id, peek.job_id, peek.kind):
        return False
    return not (digests and peek.job_id is None and peek.kind == SERVED_KIND and peek.evidence_digest not in digests)


def head_message(head: JobHead) -> audit_pb2.JobHead:
    msg = audit_pb2.JobHead(job_id=head.job_id, segment=head.segment, hash=head.hash, nonce=head.nonce,
                            signature=head.signature)
    if head.job_seq is not None:
        msg.job_seq = head.job_seq
    return msg


def head_from_message(msg: audit_pb2.JobHead) -> JobHead:
    return JobHead(msg.job_id, msg.segment, msg.job_seq if msg.HasField("job_seq") else None, msg.hash,
                   bytes(msg.nonce), bytes(msg.signature))


class AuditService(audit_pb2_grpc.AuditServicer):
    """``auditors`` (party id -> Ed25519 identity key) may read the whole log without being named by a job;
    ``log`` (the enclave's own ``AuditLog``) signs job heads; without it a head request is refused."""

    def __init__(self, path: str | Path, events: EventSink, auth: RequestAuthenticator, store: JobStore,
                 auditors: Mapping[str, bytes] | None = None, *, log: AuditLog | None = None) -> None:
        self.path = Path(path)
        self.events = events
        self.auth = auth
        self.store = store
        self.auditors = dict(auditors or {})
        self.log = log

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
            if len(request.evidence_digests) > MAX_EVIDENCE_DIGESTS or any(
                    len(d) > 64 for d in request.evidence_digests):
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"at most {MAX_EVIDENCE_DIGESTS} evidence digests of 64 hex characters")
            if request.evidence_digests and not request.job_id:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "evidence digests narrow a job's view: set job_id")
            if request.head_nonce and (len(request.head_nonce) != HEAD_NONCE_BYTES or not request.job_id):
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"head_nonce asks for a job's head: {HEAD_NONCE_BYTES} random bytes, with job_id set")
            if request.head_nonce and self.log is None:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "this audit service signs no job heads")
            caller = self.auth.authenticate(context.invocation_metadata(), GET_LOG, request, self._identities)
            if request.job_id:
                readable_job(self.store, request.job_id, caller)
            else:
                self._authorize_whole_log(caller)
            if not self.path.exists():
                raise Rejected(grpc.StatusCode.NOT_FOUND, "this aggregator has written no audit log yet")
            digests = frozenset(request.evidence_digests)
            # taken before reading: every record up to the head is already whole in the file
            head = self.log.job_head(request.job_id, request.head_nonce) if request.head_nonce and self.log else None
            for line_no, raw in read_lines(self.path):
                if not raw.endswith(b"\n"):
                    break  # the record being appended right now: the next fetch gets it whole
                if request.job_id or request.from_seq:
                    peek = _peek(raw)
                    if peek.seq is not None and peek.seq < request.from_seq:
                        continue
                    if peek.seq is not None and request.job_id and not in_view(request.job_id, peek, digests):
                        continue
                yield audit_pb2.AuditRecord(line=line_no, data=raw)
            if head is not None:
                yield audit_pb2.AuditRecord(head=head_message(head))
