"""Seal a shard to the attested enclave key and upload it, resuming from the last acknowledged chunk.

Frames are sealed on demand and kept only until acknowledged (a window of a few chunks), so memory
stays near the shard's own size; a chunk index is never sealed twice (that would reuse a nonce).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mpctrain.attest import AttestationResult
from mpctrain.enclave.data_service import SHARD_PURPOSE
from mpctrain.enclave.identity import ENCLAVE_ID
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import AggregatorError, PartyError
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.stream import DEFAULT_CHUNK_SIZE, StreamSealer
from mpctrain.wire import data_pb2

Progress = Callable[[int, int], None]  # (bytes acknowledged, total bytes)
RETRYABLE = ("UNAVAILABLE", "ABORTED", "CANCELLED", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL")
WINDOW = 8


@dataclass
class UploadResult:
    object_id: str
    total_size: int
    chunks: int
    sent_bytes: int  # sealed bytes put on the wire (header and frames), over every attempt
    complete: bool
    header_digest: bytes = b""  # SHA-256 of the sealed header: what the audit log must cite for this shard


class ShardUpload:
    """One shard's sealed stream; call ``send()`` until it returns a complete result."""

    def __init__(self, client: AggregatorClient, job_id: str, enclave: AttestationResult, identity: IdentityKey,
                 party_id: str, plaintext: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 object_id: str | None = None, window: int = WINDOW) -> None:
        self.client = client
        self.job_id = job_id
        self.data = memoryview(plaintext)
        self.chunk_size = chunk_size
        self.n_chunks = max(1, -(-len(plaintext) // chunk_size))
        self.object_id = object_id or f"shard/{party_id}/{os.urandom(8).hex()}"
        self.sealer = StreamSealer(sender=identity, sender_id=party_id,
                                   recipients=[(ENCLAVE_ID, enclave.kem_alg, enclave.kem_public)],
                                   purpose=SHARD_PURPOSE, job_id=job_id, object_id=self.object_id,
                                   chunk_size=chunk_size, total_size=len(plaintext))
        self.header = self.sealer.header_bytes
        self.window = window
        self._frames: dict[int, bytes] = {}
        self._acked = 0
        self._cond = threading.Condition()
        self.sent_bytes = 0
        self.complete = False

    def frame(self, index: int) -> bytes:
        """The sealed frame of chunk ``index`` (sealed once, kept until acknowledged)."""
        f = self._frames.get(index)
        if f is None:
            piece = self.data[index * self.chunk_size:(index + 1) * self.chunk_size]
            f = self.sealer.seal_chunk(index, piece, index == self.n_chunks - 1)
            self._frames[index] = f
        return f

    def _chunks(self, start: int, stop: int | None) -> Iterator[data_pb2.UploadRequest]:
        end = self.n_chunks if stop is None else min(stop, self.n_chunks)
        for i in range(start, end):
            with self._cond:  # flow control: at most `window` unacknowledged chunks in flight
                while i - self._acked >= self.window and not self._stopped:
                    self._cond.wait(1.0)
                if self._stopped:
                    return
            f = self.frame(i)
            self.sent_bytes += len(f)
            req = data_pb2.UploadRequest()  # fields set in place: one copy of the frame, not two
            req.chunk.index = i
            req.chunk.frame = f
            req.chunk.last = i == self.n_chunks - 1
            yield req

    def send(self, progress: Progress | None = None, *, stop_after: int | None = None) -> UploadResult:
        """Upload from where the enclave stands; ``stop_after`` ends this attempt early (interruption)."""
        self._stopped = False
        self.sent_bytes += len(self.header)
        total = len(self.data)
        try:
            for ack in self.client.upload(self.job_id, self.header, lambda s: self._chunks(s, stop_after)):
                with self._cond:
                    self._acked = ack.next_index
                    for i in [k for k in self._frames if k < ack.next_index]:
                        del self._frames[i]
                    self._cond.notify_all()
                if progress is not None:
                    progress(min(ack.next_index * self.chunk_size, total), total)
                if ack.complete:
                    self.complete = True
                    break
                # with stop_after the request stream half-closes after that chunk; the enclave then ends the
                # call cleanly, so the upload is free to resume as soon as this returns
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
        return UploadResult(self.object_id, total, self.n_chunks, self.sent_bytes, self.complete,
                            hashlib.sha256(self.header).digest())

    def status(self) -> data_pb2.UploadStatus:
        return self.client.upload_status(self.job_id, self.object_id)


def upload_shard(client: AggregatorClient, job_id: str, enclave: AttestationResult, identity: IdentityKey,
                 party_id: str, plaintext: bytes, *, progress: Progress | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, retries: int = 3) -> UploadResult:
    """Upload a shard, resuming after a failed attempt from the last acknowledged chunk."""
    up = ShardUpload(client, job_id, enclave, identity, party_id, plaintext, chunk_size=chunk_size)
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            result = up.send(progress)
        except AggregatorError as exc:
            if exc.code.name not in RETRYABLE:
                raise
            last = exc
            time.sleep(min(0.2 * 2**attempt, 5.0))  # the enclave keeps acknowledged chunks: resume after a pause
            continue
        if result.complete:
            return result
    raise PartyError(f"upload of {up.object_id} did not complete after {retries + 1} attempts: {last}")
