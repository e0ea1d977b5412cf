"""Builders for the audit tests: a simulated TEE, synthetic two-segment logs, and record surgery."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpctrain.attest import BuildInfo, Policy
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.audit import AuditLog, AuditRecord, RawLine, lines_from_bytes
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.seal.keys import IdentityKey

BUILD = BuildInfo("test", b"\x01" * 32, b"\x02" * 32)


@dataclass
class Sim:
    root: SimRoot
    attester: SimAttester

    def policy(self, measurement: bytes | None = None) -> Policy:
        m = self.attester.measurement if measurement is None else measurement
        return Policy.from_dict({"backends": ["sim"], "sim": {"roots": [self.root.sha256], "measurements": [m.hex()]}})

    def enclave(self, attester: SimAttester | None = None) -> EnclaveIdentity:
        return EnclaveIdentity.generate(attester or self.attester, BUILD)


def job_events(log: AuditLog, job_id: str = "job-1", parties: tuple[str, ...] = ("a", "b")) -> None:
    """The events of one small pooled job, as the enclave emits them."""
    log.emit("job.proposed", job_id=job_id, digest="ab" * 32, mode="pooled", proposer=parties[0],
             parties=list(parties))
    for p in parties:
        log.emit("evidence.served", backend="sim", gpus=0, evidence_digest="cd" * 32, nonce_digest="ef" * 32)
        log.emit("job.consent", job_id=job_id, party=p, digest="ab" * 32, signature="00" * 64)
    for i, p in enumerate(parties):
        log.emit("shard.accepted", job_id=job_id, party=p, object_id=f"shard/{p}/{i}", header_digest=f"{i:02x}" * 32,
                 size=1000 + i, chunks=1)
    log.emit("training.finished", job_id=job_id, metrics={"accuracy": 0.9})
    log.emit("output.sealed", job_id=job_id, recipient=parties[0], name="model", size=123, digest="77" * 32)
    log.emit("job.state", job_id=job_id, state="done")


def two_segment_log(path: Path, sim: Sim, **kw: Any) -> tuple[EnclaveIdentity, EnclaveIdentity]:
    """Segment 0: a job then a clean stop; segment 1 (a restart): another job, then a stop."""
    first = sim.enclave()
    log = AuditLog(path, first, **kw)
    log.emit("aggregator.started", address="127.0.0.1:1")
    job_events(log, "job-1")
    log.emit("rejected", method="/mpctrain.v1.Data/Upload", code="PERMISSION_DENIED", reason="not named", caller="x")
    log.emit("aggregator.stopped")
    log.close()
    second = sim.enclave()
    log2 = AuditLog(path, second, **kw)
    job_events(log2, "job-2", ("b", "c"))
    log2.emit("aggregator.stopped")
    log2.close()
    return first, second


def read(path: Path) -> list[bytes]:
    return [raw for _, raw in lines_from_bytes(path.read_bytes())]


def numbered(lines: list[bytes]) -> list[RawLine]:
    return [(i + 1, raw) for i, raw in enumerate(lines)]


def edit(raw: bytes, change: Callable[[dict[str, Any]], None], *, rehash: bool = False,
         resign: IdentityKey | None = None) -> bytes:
    """Change a stored record: as a careless forger (content only), or recomputing hash and signature."""
    obj = json.loads(raw)
    change(obj)
    rec = AuditRecord(seq=obj["seq"], segment=obj["segment"], time_ms=obj["time_ms"], kind=obj["kind"],
                      prev_hash=obj["prev_hash"], fields=obj["fields"], job_id=obj["job_id"], job_seq=obj["job_seq"],
                      job_prev=obj["job_prev"], hash=obj["hash"], sig=obj["sig"])
    if resign is not None:
        rec = rec.signed(resign)
    elif rehash:
        rec = AuditRecord(**{**rec.__dict__, "hash": rec.compute_hash()})
    return rec.to_line()
