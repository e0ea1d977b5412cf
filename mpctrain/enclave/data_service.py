"""The Data gRPC service: sealed shard upload with per-chunk acknowledgements, and upload status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc

from mpctrain.enclave.auth import RequestAuthenticator
from mpctrain.enclave.common import Rejected, authenticate, authorize, guarded, readable_job
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.identity import ENCLAVE_ID, EnclaveIdentity
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.state import Job, JobError, JobState, JobStore
from mpctrain.enclave.uploads import SHARD_OBJECT_ID, Upload, UploadTable, header_digest
from mpctrain.enclave.watchdog import StreamWatchdog
from mpctrain.seal import errors as seal_errors
from mpctrain.seal.stream import StreamHeader, StreamOpener
from mpctrain.wire import data_pb2, data_pb2_grpc

log = logging.getLogger("mpctrain.enclave.data")

UPLOAD = "/mpctrain.v1.Data/UploadShard"
STATUS = "/mpctrain.v1.Data/GetUploadStatus"
SHARD_PURPOSE = "shard"

# How each sealing failure is reported to the uploader.
SEAL_CODES: dict[type[Exception], grpc.StatusCode] = {
    seal_errors.TamperedChunk: grpc.StatusCode.INVALID_ARGUMENT,
    seal_errors.TruncatedStream: grpc.StatusCode.INVALID_ARGUMENT,
    seal_errors.BadHeaderSignature: grpc.StatusCode.UNAUTHENTICATED,
    seal_errors.UnexpectedSender: grpc.StatusCode.PERMISSION_DENIED,
    seal_errors.WrongRecipient: grpc.StatusCode.INVALID_ARGUMENT,
    seal_errors.ContextMismatch: grpc.StatusCode.INVALID_ARGUMENT,
    seal_errors.StaleStream: grpc.StatusCode.FAILED_PRECONDITION,
    seal_errors.MalformedStream: grpc.StatusCode.INVALID_ARGUMENT,
    seal_errors.StreamTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SEAL_HINTS: dict[type[Exception], str] = {
    seal_errors.TamperedChunk: "chunk failed authentication (tampered or out of order); resend it",
    seal_errors.WrongRecipient: "shard is not sealed to this enclave's key: attest again and reseal",
    seal_errors.StaleStream: "header is too old (replayed?): seal the shard again",
    seal_errors.UnexpectedSender: "header is signed by another key than the caller's identity key",
}


def seal_rejection(exc: seal_errors.SealError) -> Rejected:
    for cls, code in SEAL_CODES.items():
        if isinstance(exc, cls):
            hint = SEAL_HINTS.get(cls, "")
            return Rejected(code, f"{cls.__name__}: {hint or exc}")
    return Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")


class DataService(data_pb2_grpc.DataServicer):
    def __init__(self, store: JobStore, auth: RequestAuthenticator, events: EventSink, identity: EnclaveIdentity,
                 limits: Limits, uploads: UploadTable | None = None) -> None:
        self.store = store
        self.auth = auth
        self.events = events
        self.identity = identity
        self.limits = limits
        self.uploads = uploads or UploadTable()
        self._slots = threading.BoundedSemaphore(limits.max_concurrent_uploads)
        self.watchdog = StreamWatchdog()

    # -- upload -------------------------------------------------------------------------------
    def UploadShard(self, request_iterator: Iterator[data_pb2.UploadRequest],
                    context: grpc.ServicerContext) -> Iterator[data_pb2.UploadAck]:
        if not self._slots.acquire(blocking=False):
            self.events.emit("rejected", method=UPLOAD, code="RESOURCE_EXHAUSTED", reason="concurrent uploads")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.limits.max_concurrent_uploads} uploads already in progress; retry later")
        upload: Upload | None = None
        # the slot is taken before the caller is known: a stream that goes silent is cut (resumable later)
        watch = self.watchdog.watch(context.cancel, self.limits.upload_first_message_s)
        self.uploads.expire(self.limits.upload_ttl_s)
        try:
            with guarded(context, self.events, UPLOAD):
                first = next(request_iterator, None)
                watch.touch(self.limits.upload_idle_s)
                if first is None or first.WhichOneof("msg") != "open":
                    raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with an UploadOpen message")
                caller = authenticate(self.auth, self.store, context, UPLOAD, first)
                job = readable_job(self.store, first.open.job_id, caller)
                authorize(job, caller, roles=("data",))
                upload = self._begin(job, caller.party_id, caller.identity_public, bytes(first.open.header))
            yield self._ack(upload)
            with guarded(context, self.events, UPLOAD):
                for msg in request_iterator:
                    watch.touch()
                    if msg.WhichOneof("msg") != "chunk":
                        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "only chunks may follow UploadOpen")
                    self._chunk(upload, msg.chunk)
                    if upload.complete:
                        self._finish(job, upload)
                        yield self._ack(upload)
                        return
                    yield self._ack(upload)
        finally:
            watch.close()
            if watch.expired:
                stage = "before its opening" if upload is None else f"after {upload.next_index} chunk(s)"
                log.warning("%s cut: the stream went silent %s", UPLOAD, stage)
                self.events.emit("rejected", method=UPLOAD, code="CANCELLED", reason=f"silent stream ({stage})",
                                 caller=str(dict(context.invocation_metadata() or ()).get("x-mpctrain-party",
                                                                                          ""))[:64])
            if upload is not None:
                upload.busy = False
            self._slots.release()

    def _begin(self, job: Job, party_id: str, identity_public: bytes, header: bytes) -> Upload:
        if job.state == JobState.PROPOSED:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION,
                           f"job {job.job_id} has no complete consent yet (missing: {', '.join(job.missing())}); "
                           "no data is accepted before every data party approved")
        if job.state != JobState.OPEN:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job_id} is {job.state}: it takes no data")
        if job.manifest.expired():
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job_id} has expired: it takes no data")
        if len(header) > self.limits.max_message_bytes:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream header too large")
        try:
            h = StreamHeader.from_bytes(header)
        except seal_errors.SealError as exc:
            raise seal_rejection(exc) from None
        if not SHARD_OBJECT_ID.fullmatch(h.object_id):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           "a shard's object id is 1 to 4 '/'-separated names of letters, digits, '.', '_' or '-' "
                           f"(64 at most each): seal it again with such an id (got {h.object_id[:40]!r})")
        digest = header_digest(header)
        with self.uploads.lock:
            existing = self.uploads.by_object.get((job.job_id, h.object_id))
            if existing is not None:
                if existing.header_digest != digest:
                    raise Rejected(grpc.StatusCode.ALREADY_EXISTS,
                                   f"object id {h.object_id!r} already holds another upload; use a new object id")
                if existing.party_id != party_id:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "this upload belongs to another party")
                if existing.complete:
                    raise Rejected(grpc.StatusCode.ALREADY_EXISTS,
                                   f"replayed header: object {h.object_id!r} is already complete")
                if existing.busy:  # e.g. the old stream's drop has not been noticed yet: retry shortly
                    raise Rejected(grpc.StatusCode.ABORTED,
                                   "another stream is uploading this object; wait for it to end, then resume")
                self._check_streams(job, party_id)
                existing.busy = True
                self._count_stream(job, party_id)
                self.events.emit("shard.resumed", job_id=job.job_id, party=party_id, object_id=h.object_id,
                                 next_index=existing.next_index)
                return existing
            if digest in self.uploads.seen_headers:
                raise Rejected(grpc.StatusCode.ALREADY_EXISTS, "replayed header: this stream header was already used")
            if party_id in job.shards:
                raise Rejected(grpc.StatusCode.ALREADY_EXISTS,
                               f"{party_id} already uploaded its shard for {job.job_id}")
            if h.total_size < 0:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "a shard header must declare its total size")
            if h.parts:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               "a shard is sealed in equal chunks: re-seal it without declared parts")
            self._check_streams(job, party_id)
            try:
                opener = StreamOpener(
                    header,
                    recipient_id=ENCLAVE_ID,
                    recipient_key=self.identity.kem,
                    expected_sender_public=identity_public,
                    expected_purpose=SHARD_PURPOSE,
                    expected_job_id=job.job_id,
                    max_total=self.limits.max_shard_bytes,
                    now=int(time.time()),
                    max_age_s=self.limits.header_max_age_s,
                )
            except seal_errors.SealError as exc:
                raise seal_rejection(exc) from None
            total = h.total_size
            if total > self.limits.max_shard_bytes:
                raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"shard of {total} bytes exceeds the limit of {self.limits.max_shard_bytes}")
            if not 0 < h.chunk_size <= self.limits.max_chunk_bytes:
                raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"chunk size {h.chunk_size} outside 1..{self.limits.max_chunk_bytes}")
            n_chunks = max(1, -(-total // h.chunk_size))
            if n_chunks > self.limits.max_chunks:
                raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{n_chunks} chunks exceed the limit of {self.limits.max_chunks}; use larger chunks")
            self._drop_unfinished(job.job_id, party_id)  # only for a stream that opens: a bad one keeps it
            upload = Upload(job_id=job.job_id, party_id=party_id, object_id=h.object_id, header_digest=digest,
                            opener=opener, total_size=total, chunk_size=h.chunk_size, n_chunks=n_chunks,
                            buf=bytearray(), busy=True)
            self.uploads.by_object[(job.job_id, h.object_id)] = upload
            self.uploads.seen_headers.add(digest)
            self._count_stream(job, party_id)
        self.events.emit("shard.started", job_id=job.job_id, party=party_id, object_id=h.object_id,
                         header_digest=digest.hex(), total_size=total, chunks=n_chunks)
        return upload

    def _check_streams(self, job: Job, party_id: str) -> None:
        """Each stream that opens leaves records in the job's audit view (started or resumed, replaced, a
        rejected chunk) that every party fetches and checks: one party opens at most ``max_upload_streams``
        per job. Refused before anything of the stream is done. Caller holds ``uploads.lock``."""
        opened = job.upload_streams.get(party_id, 0)
        if opened >= self.limits.max_upload_streams:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{party_id} opened {opened} upload streams for job {job.job_id}, the limit: each is on "
                           "the job's audit record; ask the operator to raise [limits] max_upload_streams, or "
                           "propose the job again")

    def _count_stream(self, job: Job, party_id: str) -> None:
        """Count a stream once it has opened: one refused before (ABORTED while another streams, a header
        that does not open) records nothing in the job's view and must not use up the party's budget."""
        job.upload_streams[party_id] = job.upload_streams.get(party_id, 0) + 1

    def _drop_unfinished(self, job_id: str, party_id: str) -> None:
        """One upload in progress per party and job: a new stream (new header) replaces an unfinished one,
        e.g. after the party restarted and lost its sealing key. Caller holds ``uploads.lock``."""
        for key, up in list(self.uploads.by_object.items()):
            if up.job_id == job_id and up.party_id == party_id and not up.complete:
                if up.busy:
                    raise Rejected(grpc.StatusCode.ABORTED,
                                   "an earlier upload of this party is still streaming; wait for it to end")
                up.wipe()
                del self.uploads.by_object[key]
                self.events.emit("shard.replaced", job_id=job_id, party=party_id, object_id=up.object_id,
                                 acknowledged=up.next_index)

    def _chunk(self, upload: Upload, chunk: data_pb2.UploadChunk) -> None:
        if chunk.index != upload.next_index:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"expected chunk {upload.next_index}, got {chunk.index}; ask GetUploadStatus and resume")
        if chunk.index >= upload.n_chunks:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more chunks than the {upload.n_chunks} declared")
        if self.store.get(upload.job_id).state != JobState.OPEN:  # training began, or the job ended
            with self.uploads.lock:  # it can never complete: what arrived of it goes now
                upload.wipe()
                self.uploads.by_object.pop((upload.job_id, upload.object_id), None)
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION,
                           f"job {upload.job_id} no longer takes data: its training started with the quorum's shards")
        start = chunk.index * upload.chunk_size
        region = upload.reserve(start + upload.chunk_size)[start:start + upload.chunk_size]
        try:  # decrypts straight into the shard buffer; the opener checks size and position first
            plain = upload.opener.open_chunk_into(chunk.index, chunk.frame, chunk.last, region)
        except seal_errors.SealError as exc:
            self.events.emit("shard.chunk_rejected", job_id=upload.job_id, party=upload.party_id,
                             index=chunk.index, reason=type(exc).__name__)
            raise seal_rejection(exc) from None
        except ValueError:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk exceeds the declared total size") from None
        upload.next_index += 1
        upload.received += len(plain)
        if chunk.last:
            try:
                upload.opener.finish()
            except seal_errors.SealError as exc:
                raise seal_rejection(exc) from None
            if upload.received != upload.total_size:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "stream ended short of its declared size")
            upload.complete = True

    def _finish(self, job: Job, upload: Upload) -> None:
        def accepted() -> None:
            self.events.emit("shard.accepted", job_id=job.job_id, party=upload.party_id, object_id=upload.object_id,
                             header_digest=upload.header_digest.hex(), size=upload.total_size, chunks=upload.n_chunks)

        try:
            self.store.shard_complete(job, upload.party_id, upload, accepted)
        except JobError:
            upload.wipe()  # not used by any training: nothing of it stays
            raise

    @staticmethod
    def _ack(upload: Upload) -> data_pb2.UploadAck:
        return data_pb2.UploadAck(next_index=upload.next_index, received_bytes=upload.received,
                                  complete=upload.complete)

    # -- status -------------------------------------------------------------------------------
    def GetUploadStatus(self, request: data_pb2.UploadStatusRequest,
                        context: grpc.ServicerContext) -> data_pb2.UploadStatus:
        with guarded(context, self.events, STATUS):
            caller = authenticate(self.auth, self.store, context, STATUS, request)
            job = readable_job(self.store, request.job_id, caller)  # unknown or not naming it: one answer
            authorize(job, caller, roles=("data",))
            up = self.uploads.get(request.job_id, request.object_id)
            if up is None or up.party_id != caller.party_id:
                return data_pb2.UploadStatus(known=False)
            return data_pb2.UploadStatus(known=True, next_index=up.next_index, received_bytes=up.received,
                                         complete=up.complete, header_digest=up.header_digest)
