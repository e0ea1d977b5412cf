"""Per-job summary of a verified log: who consented, which inputs came in from whom, what went out to whom."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mpctrain.enclave.audit.record import AuditRecord


@dataclass(frozen=True)
class InputEntry:
    """A shard (pooled) the enclave accepted: the sealed stream's header digest names that exact ciphertext."""

    party: str
    object_id: str
    digest: str
    size: int
    line: int
    seq: int


@dataclass(frozen=True)
class OutputEntry:
    """An output sealed to one recipient (``digest``: SHA-256 of the sealed stream header when recorded)."""

    recipient: str
    name: str
    digest: str
    size: int
    line: int
    seq: int


@dataclass
class JobSummary:
    job_id: str
    segment: int = 0
    manifest_digest: str = ""
    mode: str = ""
    proposer: str = ""
    parties: list[str] = field(default_factory=list)
    consents: dict[str, str] = field(default_factory=dict)  # party -> consent signature (hex) or ""
    inputs: dict[str, list[InputEntry]] = field(default_factory=dict)
    outputs: dict[str, list[OutputEntry]] = field(default_factory=dict)
    fetched: list[tuple[str, str]] = field(default_factory=list)  # (recipient, name)
    states: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)  # requested public metrics the job could not compute
    rounds: int = 0
    trained_manifests: list[str] = field(default_factory=list)  # manifest digest of each federated run started
    rejections: int = 0
    output_digest: str = ""
    records: int = 0

    @property
    def state(self) -> str:
        return self.states[-1] if self.states else "unknown"

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "segment": self.segment, "manifest_digest": self.manifest_digest, "mode": self.mode,
            "proposer": self.proposer, "parties": self.parties, "consents": sorted(self.consents),
            "inputs": {p: [{"object_id": e.object_id, "digest": e.digest, "size": e.size, "seq": e.seq} for e in es]
                       for p, es in sorted(self.inputs.items())},
            "outputs": {r: [{"name": e.name, "digest": e.digest, "size": e.size, "seq": e.seq} for e in es]
                        for r, es in sorted(self.outputs.items())},
            "fetched": [list(f) for f in self.fetched], "state": self.state, "metrics": self.metrics,
            "rounds": self.rounds, "trained_manifests": self.trained_manifests, "rejections": self.rejections,
            "output_digest": self.output_digest,
            "records": self.records,
            **({"unavailable": self.unavailable} if self.unavailable else {}),
        }


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def summarize(records: Iterable[tuple[int, AuditRecord]]) -> dict[str, JobSummary]:
    """Fold a verified log's records into one summary per job (in order of first appearance).

    A job lives in one segment (a restarted enclave holds no jobs); a job id seen again in a later segment
    is another job, keyed ``"<job id>@<segment>"``.
    """
    jobs: dict[str, JobSummary] = {}
    seen: dict[str, int] = {}
    for line, rec in records:
        if rec.job_id is None:
            continue
        first = seen.setdefault(rec.job_id, rec.segment)
        key = rec.job_id if first == rec.segment else f"{rec.job_id}@{rec.segment}"
        js = jobs.setdefault(key, JobSummary(rec.job_id, segment=rec.segment))
        js.records += 1
        f = rec.fields
        kind = rec.kind
        if kind == "job.proposed":
            js.manifest_digest = str(f.get("digest", ""))
            js.mode, js.proposer = str(f.get("mode", "")), str(f.get("proposer", ""))
            parties = f.get("parties")
            js.parties = [p for p in parties if isinstance(p, str)] if isinstance(parties, list) else []
        elif kind == "job.consent":
            js.consents[str(f.get("party", ""))] = str(f.get("signature", ""))
        elif kind == "shard.accepted":
            party = str(f.get("party", ""))
            js.inputs.setdefault(party, []).append(InputEntry(
                party, str(f.get("object_id", "")), str(f.get("header_digest", "")), _int(f.get("size")),
                line, rec.seq))
        elif kind == "fl.training_started":  # a federated run names the manifest and consents it runs under
            digest = str(f.get("manifest_digest", ""))
            js.trained_manifests.append(digest)
            js.manifest_digest = js.manifest_digest or digest
            js.mode = js.mode or "federated"
            consents = f.get("consents")
            for party, sig in (consents.items() if isinstance(consents, dict) else ()):
                js.consents.setdefault(str(party), str(sig))
        elif kind == "fl.update_accepted":  # a federated party's sealed update, one per round
            party = str(f.get("party", ""))
            js.inputs.setdefault(party, []).append(InputEntry(
                party, str(f.get("object_id", "")), str(f.get("ciphertext_digest", "")), _int(f.get("size")),
                line, rec.seq))
        elif kind == "output.sealed":
            rid = str(f.get("recipient", ""))
            js.outputs.setdefault(rid, []).append(OutputEntry(
                rid, str(f.get("name", "")), str(f.get("digest", "")), _int(f.get("size")), line, rec.seq))
        elif kind == "fl.output_sealed":
            recipients = f.get("recipients")
            for rid in recipients if isinstance(recipients, list) else []:
                js.outputs.setdefault(str(rid), []).append(OutputEntry(
                    str(rid), "model", str(f.get("digest", "")), _int(f.get("size")), line, rec.seq))
        elif kind == "output.fetched":
            js.fetched.append((str(f.get("recipient", "")), str(f.get("name", ""))))
        elif kind == "receipt.signed":
            js.output_digest = str(f.get("output_digest", ""))
        elif kind == "job.state":
            js.states.append(str(f.get("state", "")))
        elif kind in ("training.finished", "fl.training_ended"):
            metrics = f.get("metrics")
            if isinstance(metrics, dict):
                js.metrics.update(metrics)
            unavailable = f.get("unavailable")
            if isinstance(unavailable, list):
                js.unavailable = [str(u) for u in unavailable]
            js.rounds = max(js.rounds, _int(f.get("rounds")))
        elif kind == "fl.round_aggregated":
            js.rounds = max(js.rounds, _int(f.get("round")))
        elif kind in ("rejected", "fl.reply_rejected", "shard.chunk_rejected"):
            js.rejections += 1
    return jobs


def printable(value: Any) -> str:
    """``value`` as text with every non-printable character (newline, ANSI escape, ...) and backslash escaped:
    ids and names in records are chosen by parties, and must not forge or erase lines on a terminal."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


def render(summary: JobSummary) -> list[str]:
    """Plain text lines for the CLI (no colours, so the output can be archived as is); record text escaped."""
    p = printable
    out = [f"job {p(summary.job_id)} (segment {summary.segment}, {p(summary.mode or '?')}) state={p(summary.state)} "
           f"manifest={p(summary.manifest_digest[:16])}… proposer={p(summary.proposer or '?')} "
           f"records={summary.records}"]
    out.append(f"  consents: {', '.join(p(c) for c in sorted(summary.consents)) or 'none'}")
    for party, entries in sorted(summary.inputs.items()):
        for e in entries:
            out.append(f"  input  {p(party)}: {e.size} bytes, object {p(e.object_id)}, header sha256 "
                       f"{p(e.digest[:16])}… (seq {e.seq})")
    missing = [c for c in summary.consents if c not in summary.inputs]
    if missing and summary.mode == "pooled":
        out.append(f"  no input from: {', '.join(p(c) for c in sorted(missing))}")
    for rid, entries in sorted(summary.outputs.items()):
        for e in entries:
            out.append(f"  output {p(rid)}: {p(e.name)}, {e.size} bytes, sha256 {p(e.digest[:16]) or '-'}… "
                       f"(seq {e.seq})")
    if summary.metrics:
        out.append("  public metrics: " + ", ".join(f"{p(k)}={p(v)}" for k, v in sorted(summary.metrics.items())))
    if summary.unavailable:
        out.append("  public metrics not computed: " + ", ".join(p(u) for u in summary.unavailable))
    if summary.rounds:
        out.append(f"  rounds: {summary.rounds}")
    if summary.rejections:
        out.append(f"  rejections: {summary.rejections}")
    return out
