"""The Results gRPC service: sealed outputs for recipients only, and the signed receipt for the job's parties."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from mpctrain.enclave.auth import RequestAuthenticator
from mpctrain.enclave.common import Rejected, authenticate, guarded, readable_job
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.receipt import Receipt
from mpctrain.enclave.state import Job, JobState, JobStore
from mpctrain.wire import results_pb2, results_pb2_grpc

FETCH = "/mpctrain.v1.Results/FetchOutput"
RECEIPT = "/mpctrain.v1.Results/GetReceipt"


def receipt_to_proto(r: Receipt) -> results_pb2.Receipt:
    return results_pb2.Receipt(job_id=r.job_id, job_digest=r.job_digest, output_digest=r.output_digest,
                               evidence_digest=r.evidence_digest, time=r.time, signature=r.signature,
                               outputs=[results_pb2.OutputDigest(name=n, sha256=d) for n, d in r.outputs],
                               evidence=r.evidence)


def receipt_from_proto(p: results_pb2.Receipt) -> Receipt:
    return Receipt(job_id=p.job_id, job_digest=bytes(p.job_digest), output_digest=bytes(p.output_digest),
                   evidence_digest=bytes(p.evidence_digest), time=p.time, signature=bytes(p.signature),
                   outputs=tuple((o.name, bytes(o.sha256)) for o in p.outputs), evidence=bytes(p.evidence))


def _not_done(job: Job) -> str:
    """Why a job has no outputs or receipt: a failed job's public error (never "yet": none will come)."""
    if job.state == JobState.FAILED:
        return f"job {job.job_id} failed: {job.error or 'no reason recorded'}; it has no outputs"
    return f"job {job.job_id} is {job.state}, not done: no outputs and no receipt yet"


class ResultsService(results_pb2_grpc.ResultsServicer):
    def __init__(self, store: JobStore, auth: RequestAuthenticator, events: EventSink,
                 limits: Limits | None = None) -> None:
        self.store = store
        self.auth = auth
        self.events = events
        self.limits = limits or Limits()

    def FetchOutput(self, request: results_pb2.FetchOutputRequest,
                    context: grpc.ServicerContext) -> Iterator[results_pb2.OutputPart]:
        with guarded(context, self.events, FETCH):
            caller = authenticate(self.auth, self.store, context, FETCH, request)
            job = readable_job(self.store, request.job_id, caller)
            if caller.party_id != request.recipient or request.recipient not in job.manifest.recipients:
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                               f"{caller.party_id!r} is not a recipient of job {job.job_id}'s outputs")
            if job.state != JobState.DONE:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, _not_done(job))
            obj = job.outputs.get((request.recipient, request.name))
            if obj is None:
                raise Rejected(grpc.StatusCode.NOT_FOUND, f"job {job.job_id} has no output {request.name!r}")
            self._count_fetch(job, request.recipient, request.name)
            self.events.emit("output.fetched", job_id=job.job_id, recipient=request.recipient, name=request.name)
        yield results_pb2.OutputPart(header=obj.header)
        n = len(obj.frames)
        for i, frame in enumerate(obj.frames):
            yield results_pb2.OutputPart(frame=results_pb2.OutputFrame(index=i, frame=frame, last=i == n - 1))

    def _count_fetch(self, job: Job, recipient: str, name: str) -> None:
        """Every fetch is an ``output.fetched`` record in the job's audit view, which every party fetches and
        checks: a recipient fetches each output at most ``max_output_fetches`` times."""
        with job.cond:
            done = job.fetches.get((recipient, name), 0)
            if done >= self.limits.max_output_fetches:
                raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{recipient} fetched {name!r} of job {job.job_id} {done} times, the limit: each fetch "
                               "is on the job's audit record; keep the copy already fetched, or ask the operator to "
                               "raise [limits] max_output_fetches")
            job.fetches[(recipient, name)] = done + 1

    def GetReceipt(self, request: results_pb2.GetReceiptRequest, context: grpc.ServicerContext) -> results_pb2.Receipt:
        with guarded(context, self.events, RECEIPT):
            caller = authenticate(self.auth, self.store, context, RECEIPT, request)
            job = readable_job(self.store, request.job_id, caller)
            if job.receipt is None:
                raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, _not_done(job))
            return receipt_to_proto(job.receipt)
