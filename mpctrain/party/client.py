"""gRPC client for the aggregator: every call but GetEvidence signed by the party's identity key, typed errors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from mpctrain.attest import EvidenceBundle
from mpctrain.enclave.auth import auth_metadata
from mpctrain.enclave.limits import CLIENT_MAX_MESSAGE_BYTES
from mpctrain.enclave.receipt import Receipt
from mpctrain.enclave.results_service import receipt_from_proto
from mpctrain.jobs import Consent, JobManifest
from mpctrain.party.errors import AggregatorError, OutputError, from_rpc_error
from mpctrain.seal.keys import IdentityKey
from mpctrain.wire import (
    attestation_pb2,
    attestation_pb2_grpc,
    data_pb2,
    data_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
)
from mpctrain.wire.convert import bundle_from_proto

T = TypeVar("T")
MAX_MESSAGE_BYTES = CLIENT_MAX_MESSAGE_BYTES  # the aggregator sizes its ListJobs pages to fit it
MAX_OUTPUT_BYTES = 1 << 30


class AggregatorClient:
    """One party's connection to one aggregator (loopback or remote, TLS optional via ``credentials``)."""

    def __init__(self, target: str, party_id: str, identity: IdentityKey, *, timeout: float = 60.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor | Any] = ()) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
                   else grpc.insecure_channel(target, options=options))
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self.channel = channel
        self.target = target
        self.party_id = party_id
        self.identity = identity
        self.timeout = timeout
        self.attestation = attestation_pb2_grpc.AttestationStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.data = data_pb2_grpc.DataStub(channel)
        self.results = results_pb2_grpc.ResultsStub(channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _md(self, method: str, request: Any) -> tuple[tuple[str, str | bytes], ...]:
        return auth_metadata(self.identity, self.party_id, method, request)

    @staticmethod
    def _call(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- attestation ----------------------------------------------------------------------------
    def get_evidence(self, nonce: bytes) -> EvidenceBundle:
        req = attestation_pb2.GetEvidenceRequest(nonce=nonce)
        msg = self._call(lambda: self.attestation.GetEvidence(req, timeout=self.timeout))
        return bundle_from_proto(msg)

    # -- jobs -----------------------------------------------------------------------------------
    def propose(self, manifest: JobManifest) -> jobs_pb2.JobStatus:
        req = jobs_pb2.ProposeJobRequest(manifest=manifest.to_bytes())
        md = self._md("/mpctrain.v1.Jobs/ProposeJob", req)
        return self._call(lambda: self.jobs.ProposeJob(req, metadata=md, timeout=self.timeout))

    def approve(self, consent: Consent) -> jobs_pb2.JobStatus:
        req = jobs_pb2.ApproveJobRequest(job_id=consent.job_id, party_id=consent.party_id,
                                         manifest_digest=consent.manifest_digest, signature=consent.signature)
        md = self._md("/mpctrain.v1.Jobs/ApproveJob", req)
        return self._call(lambda: self.jobs.ApproveJob(req, metadata=md, timeout=self.timeout))

    def get_job(self, job_id: str) -> jobs_pb2.JobStatus:
        """The job's status; only a party the manifest names may read it (else ``PermissionDenied``)."""
        req = jobs_pb2.GetJobRequest(job_id=job_id)
        md = self._md("/mpctrain.v1.Jobs/GetJob", req)
        return self._call(lambda: self.jobs.GetJob(req, metadata=md, timeout=self.timeout))

    def list_jobs(self, max_pages: int = 1000) -> list[jobs_pb2.JobStatus]:
        """The jobs whose manifests name this party (and no others), every page of them."""
        out: list[jobs_pb2.JobStatus] = []
        token = ""
        for _ in range(max_pages):
            req = jobs_pb2.ListJobsRequest(page_token=token)
            md = self._md("/mpctrain.v1.Jobs/ListJobs", req)
            reply = self._call(lambda: self.jobs.ListJobs(req, metadata=md, timeout=self.timeout))  # noqa: B023
            out.extend(reply.jobs)
            if not reply.next_page_token:
                return out
            if reply.next_page_token <= token:
                raise AggregatorError("the aggregator's job list went backwards (page token did not advance)")
            token = reply.next_page_token
        raise AggregatorError(f"the aggregator's job list ran past {max_pages} pages")

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[jobs_pb2.JobEvent]:
        req = jobs_pb2.WatchJobRequest(job_id=job_id)
        md = self._md("/mpctrain.v1.Jobs/WatchJob", req)  # signed once, over the request opening the stream
        stream = self.jobs.WatchJob(req, metadata=md, timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- data -----------------------------------------------------------------------------------
    def upload(self, job_id: str, header: bytes,
               chunks: Callable[[int], Iterable[data_pb2.UploadChunk | data_pb2.UploadRequest]],
               ) -> Iterator[data_pb2.UploadAck]:
        """Open an upload; ``chunks(start)`` yields chunks from the index the enclave's first ack names."""
        first = data_pb2.UploadRequest(open=data_pb2.UploadOpen(job_id=job_id, header=header))
        md = self._md("/mpctrain.v1.Data/UploadShard", first)
        start: list[int] = []
        ready = threading.Event()

        def requests() -> Iterator[data_pb2.UploadRequest]:
            yield first
            ready.wait(self.timeout)
            if not start:
                return
            for c in chunks(start[0]):
                yield c if isinstance(c, data_pb2.UploadRequest) else data_pb2.UploadRequest(chunk=c)

        responses = self.data.UploadShard(requests(), metadata=md, timeout=None)
        try:
            for ack in responses:
                if not start:
                    start.append(ack.next_index)
                    ready.set()
                yield ack
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            ready.set()
            responses.cancel()

    def upload_status(self, job_id: str, object_id: str) -> data_pb2.UploadStatus:
        req = data_pb2.UploadStatusRequest(job_id=job_id, object_id=object_id)
        md = self._md("/mpctrain.v1.Data/GetUploadStatus", req)
        return self._call(lambda: self.data.GetUploadStatus(req, metadata=md, timeout=self.timeout))

    # -- results --------------------------------------------------------------------------------
    def fetch_output(self, job_id: str, recipient: str, name: str) -> tuple[bytes, list[tuple[int, bytes, bool]]]:
        """The sealed stream of one output: header and frames (bounded by ``MAX_OUTPUT_BYTES``)."""
        req = results_pb2.FetchOutputRequest(job_id=job_id, recipient=recipient, name=name)
        md = self._md("/mpctrain.v1.Results/FetchOutput", req)

        def run() -> tuple[bytes, list[tuple[int, bytes, bool]]]:
            header = b""
            frames: list[tuple[int, bytes, bool]] = []
            total = 0
            for part in self.results.FetchOutput(req, metadata=md, timeout=self.timeout):
                if part.WhichOneof("part") == "header":
                    header = bytes(part.header)
                else:
                    total += len(part.frame.frame)
                    if total > MAX_OUTPUT_BYTES:
                        raise OutputError(f"output {name!r} is larger than the client's limit of {MAX_OUTPUT_BYTES}")
                    frames.append((part.frame.index, bytes(part.frame.frame), part.frame.last))
            return header, frames

        return self._call(run)

    def get_receipt(self, job_id: str) -> Receipt:
        req = results_pb2.GetReceiptRequest(job_id=job_id)
        md = self._md("/mpctrain.v1.Results/GetReceipt", req)
        return receipt_from_proto(self._call(lambda: self.results.GetReceipt(req, metadata=md, timeout=self.timeout)))
