"""Sealed shard uploads held in enclave memory: opened chunk by chunk, acknowledged, resumable.

Plaintext exists only in this process's (TEE-encrypted) memory: nothing here touches the disk. Every
chunk that opened is kept, so an upload interrupted by a network failure or a tampered frame resumes
from the next index with the same header and the same opener.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field

from mpctrain.seal.stream import StreamOpener

# A shard's object id is chosen by its party and printed in every audit summary: plain path-like text only
# (the uploader's own ids are ``shard/<party id>/<16 hex>``).
SHARD_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,3}")


@dataclass
class Upload:
    job_id: str
    party_id: str
    object_id: str
    header_digest: bytes
    opener: StreamOpener
    total_size: int
    chunk_size: int
    n_chunks: int
    buf: bytearray
    next_index: int = 0
    received: int = 0
    complete: bool = False
    busy: bool = False
    started: float = field(default_factory=time.time)

    def plaintext(self) -> bytes:
        """The opened shard (only once complete)."""
        if not self.complete:
            raise RuntimeError("upload is not complete")
        return bytes(self.buf)

    def reserve(self, end: int) -> memoryview:
        """The buffer grown to ``end`` bytes (at most the declared total), as data arrives: an open upload
        holds only what was sent, never its whole declared size up front."""
        end = min(end, self.total_size)
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        return memoryview(self.buf)

    def wipe(self) -> None:
        """Overwrite the plaintext once training no longer needs it, and give its memory back."""
        self.buf[:] = bytes(len(self.buf))
        self.buf = bytearray()


def header_digest(header_bytes: bytes) -> bytes:
    return hashlib.sha256(header_bytes).digest()


class UploadTable:
    """Uploads by (job id, object id), plus every header digest ever accepted (replay detection)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_object: dict[tuple[str, str], Upload] = {}
        self.seen_headers: set[bytes] = set()

    def get(self, job_id: str, object_id: str) -> Upload | None:
        with self.lock:
            return self.by_object.get((job_id, object_id))

    def expire(self, ttl_s: float, now: float | None = None) -> None:
        """Drop incomplete uploads older than ``ttl_s`` (their parties start again)."""
        now = time.time() if now is None else now
        with self.lock:
            for key, up in list(self.by_object.items()):
                if not up.complete and not up.busy and now - up.started > ttl_s:
                    up.wipe()
                    del self.by_object[key]
