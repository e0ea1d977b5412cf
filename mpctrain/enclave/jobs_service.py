"""The Jobs gRPC service: propose, approve (consent), get, list, watch. Mode-independent.

Every call is signed by the caller's identity key. Reads (get, list, watch) show a job only to the parties
its manifest names: the status reveals the manifest (party ids and keys, schema, model, recipients),
consents, uploads and public metrics, which are the parties' business only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from mpctrain.enclave.auth import Caller, RequestAuthenticator
from mpctrain.enclave.common import Rejected, authenticate, authorize, guarded, names, readable_job
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.state import Job, JobEventRecord, JobStore
from mpctrain.jobs import Consent, ConsentError, JobManifest, ManifestError
from mpctrain.wire import jobs_pb2, jobs_pb2_grpc

PROPOSE = "/mpctrain.v1.Jobs/ProposeJob"
APPROVE = "/mpctrain.v1.Jobs/ApproveJob"
GET = "/mpctrain.v1.Jobs/GetJob"
LIST = "/mpctrain.v1.Jobs/ListJobs"
WATCH = "/mpctrain.v1.Jobs/WatchJob"
MAX_JOB_ID = 256


def list_page_bytes(max_message_bytes: int) -> int:
    """How many bytes of jobs a ListJobs page may hold under a message limit: the smaller of the server's and
    the party client's (``Limits.reply_bytes``), since a page the client cannot receive lists nothing.

    The rest (64 KiB or an eighth of the limit, whichever is more) covers the page token and framing; at
    least half the limit is kept for jobs, so a small limit still pages rather than sending one job a page.
    """
    return max(max_message_bytes - max(64 << 10, max_message_bytes // 8), max_message_bytes // 2)


LIST_PAGE_BYTES = list_page_bytes(Limits().max_message_bytes)  # under the default 4 MiB limit


def job_status(job: Job) -> jobs_pb2.JobStatus:
    """What the job's own parties may read about it: manifest, consents, uploads, state, public metrics only."""
    with job.cond:
        public = {k: float(v) for k, v in job.public_metrics.items() if k in job.manifest.public_metrics}
        return jobs_pb2.JobStatus(
            job_id=job.job_id,
            state=str(job.state),
            manifest=job.manifest_bytes,
            manifest_digest=job.digest,
            consented=sorted(job.consents),
            missing_consents=job.missing(),
            uploaded=sorted(job.shards),
            error=job.error,
            public_metrics=public,
        )


def event_proto(job_id: str, e: JobEventRecord) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(job_id=job_id, seq=e.seq, kind=e.kind, time_ms=e.time_ms, state=e.state,
                             epoch=e.epoch, loss=e.loss, party_id=e.party_id, message=e.message,
                             values=e.values)


class JobsService(jobs_pb2_grpc.JobsServicer):
    def __init__(self, store: JobStore, auth: RequestAuthenticator, events: EventSink, max_watchers: int = 64,
                 proposers: tuple[bytes, ...] = (), page_bytes: int = LIST_PAGE_BYTES) -> None:
        self.page_bytes = page_bytes
        self.proposers = frozenset(proposers)
        self.store = store
        self.auth = auth
        self.events = events
        self.max_watchers = max_watchers
        self._watchers = 0
        self._watch_lock = threading.Lock()

    def ProposeJob(self, request: jobs_pb2.ProposeJobRequest, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        with guarded(context, self.events, PROPOSE):
            try:
                manifest = JobManifest.from_bytes(request.manifest)
            except ManifestError as exc:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"manifest refused: {exc}") from None
            proposer = manifest.party(manifest.proposer)
            # The proposer authenticates with the key its own manifest names; consent comes later.
            # a proposer outside `proposers` is refused before its signature is checked, so its calls never
            # fill the replay cache every party's signed calls go through
            if self.proposers and proposer.identity_public not in self.proposers:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                               f"{manifest.proposer!r} may not propose jobs on this aggregator (see `proposers`)")
            caller = self.auth.authenticate(context.invocation_metadata(), PROPOSE, request,
                                            lambda pid: [proposer.identity_public] if pid == proposer.id
                                            else self.store.identities(pid))
            if caller.party_id != manifest.proposer:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                               f"{caller.party_id!r} is not the proposer {manifest.proposer!r} this manifest names")
            if self.proposers and caller.identity_public not in self.proposers:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                               f"{caller.party_id!r} may not propose jobs on this aggregator (see `proposers`)")
            job = self.store.add(manifest, bytes(request.manifest))
            return job_status(job)

    def ApproveJob(self, request: jobs_pb2.ApproveJobRequest, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        with guarded(context, self.events, APPROVE):
            caller = authenticate(self.auth, self.store, context, APPROVE, request)
            job = readable_job(self.store, request.job_id, caller)  # unknown or not naming it: one answer
            authorize(job, caller, roles=("data",))
            if job.manifest.expired():
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job_id} has expired")
            if request.party_id != caller.party_id:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                               f"{caller.party_id!r} cannot approve on behalf of {request.party_id!r}")
            consent = Consent(job_id=request.job_id, party_id=request.party_id,
                              manifest_digest=bytes(request.manifest_digest), signature=bytes(request.signature))
            try:
                self.store.add_consent(job, consent)
            except ConsentError as exc:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"consent refused: {exc}") from None
            return job_status(job)

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        with guarded(context, self.events, GET):
            caller = authenticate(self.auth, self.store, context, GET, request)
            return job_status(readable_job(self.store, request.job_id, caller))

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        with guarded(context, self.events, LIST):
            if len(request.page_token) > MAX_JOB_ID:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"page token longer than {MAX_JOB_ID} characters")
            caller = authenticate(self.auth, self.store, context, LIST, request)
            return self._page(caller, request.page_token)

    def _page(self, caller: Caller, after: str) -> jobs_pb2.ListJobsResponse:
        """One page of the caller's jobs in job-id order, after ``after``.

        Pages are cut by size: any proposer may name a party in jobs with 1 MiB manifests, and one reply
        holding them all would pass the message limit and leave that party unable to list its jobs.
        """
        mine = sorted((j for j in self.store.list() if j.job_id > after and names(j, caller)), key=lambda j: j.job_id)
        reply = jobs_pb2.ListJobsResponse()
        size = 0
        for job in mine:
            status = job_status(job)
            size += status.ByteSize() + 8
            if reply.jobs and size > self.page_bytes:
                reply.next_page_token = reply.jobs[-1].job_id
                break
            reply.jobs.append(status)
        return reply

    def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.JobEvent]:
        with guarded(context, self.events, WATCH):
            caller = authenticate(self.auth, self.store, context, WATCH, request)
            job = readable_job(self.store, request.job_id, caller)
            with self._watch_lock:
                if self._watchers >= self.max_watchers:
                    raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{self.max_watchers} watchers already connected; retry later")
                self._watchers += 1
        try:
            for e in self.store.watch(job, context.is_active):
                yield event_proto(job.job_id, e)
        finally:
            with self._watch_lock:
                self._watchers -= 1
