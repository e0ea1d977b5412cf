"""Every size, count and concurrency limit of the aggregator's wire, in one place."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

MiB = 1 << 20
# what a party's client accepts in one reply (``mpctrain.party.client``): fixed, whatever an aggregator's
# ``max_message_bytes`` says, so replies built to a size (ListJobs pages) stay under it too
CLIENT_MAX_MESSAGE_BYTES = 4 * MiB


@dataclass(frozen=True)
class Limits:
    """Defaults fit the bundled jobs; ``[limits]`` in aggregator.toml overrides them."""

    max_message_bytes: int = 4 * MiB         # one gRPC message (a chunk frame plus framing)
    max_chunk_bytes: int = 2 * MiB           # sealed-stream chunk size a header may declare
    max_chunks: int = 4096                   # chunks per shard
    max_shard_bytes: int = 1024 * MiB        # plaintext bytes per shard
    max_concurrent_uploads: int = 16         # upload streams open at once
    max_jobs: int = 1000
    max_watchers: int = 32                   # WatchJob streams open at once (each holds a server thread)
    header_max_age_s: int = 600              # a shard header created longer ago is a replay
    auth_window_s: int = 300                 # request signatures older or newer than this are refused
    upload_ttl_s: int = 24 * 3600            # how long an interrupted upload can be resumed
    upload_first_message_s: int = 15         # an upload stream that sends no signed opening by then is cut
    upload_idle_s: int = 120                 # an upload stream silent this long between chunks is cut
    evidence_per_minute_per_peer: int = 120  # GetEvidence calls from one address (IPv6: one /64)
    evidence_per_minute: int = 600           # GetEvidence calls from all addresses together
    rejections_per_minute: int = 600         # refusals recorded in the audit log; the rest are counted
    max_upload_streams: int = 256            # upload streams (new or resumed) one party opens per job
    max_output_fetches: int = 32             # fetches of one output by its recipient

    @property
    def reply_bytes(self) -> int:
        """The largest reply a party's client receives from this aggregator: a larger ``max_message_bytes``
        lets parties send more, but their client still refuses replies over its own fixed limit."""
        return min(self.max_message_bytes, CLIENT_MAX_MESSAGE_BYTES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown [limits] keys {sorted(unknown)}; known: {sorted(known)}")
        for k, v in data.items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"[limits] {k} must be a positive integer, got {v!r}")
        return cls(**data)
