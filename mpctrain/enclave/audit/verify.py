"""Offline verification of an audit log: evidence per segment, then chain, signatures, order and time.

Checks, per line, in this order (the first failure raises ``AuditBroken`` with line, seq and check):
``truncated`` (line cut short), ``parse``/``encoding`` (not a canonical record), ``hash``, ``sequence``
(gap, duplicate or reordering), ``segment`` (numbering, a segment not opened by its start record),
``chain`` (prev_hash is not the previous record's hash: the segment link included), ``evidence`` (the
segment's evidence does not verify under the policy for the keys it names, bound to the link-derived
nonce), ``signature`` (not signed by the attested key of its segment), ``time`` (runs backwards) and
``job-chain`` (a job's own records skip or reorder).

``partial=True`` verifies a job's view served by ``GetLog(job_id)``: every record stands on its own
(hash, signature, attested segment key) and sequence numbers only increase; the job chain stays strict.
A segment whose evidence fails the policy (an older build the party no longer allows) is skipped with a
warning: none of its records enter the report, so nothing it signed can count for the party.
Job chains (``job_seq``/``job_prev``) start afresh in every segment: a restarted enclave holds no jobs,
and a job id reused after a restart names another job.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mpctrain.attest import AttestationError, AttestationResult, EvidenceBundle, Policy, verify
from mpctrain.attest.collateral import Collateral
from mpctrain.enclave.audit.errors import AuditBroken
from mpctrain.enclave.audit.reader import RawLine
from mpctrain.enclave.audit.record import SEGMENT_KIND, AuditRecord, RecordFormatError, segment_nonce
from mpctrain.seal.binding import evidence_binding
from mpctrain.seal.errors import BadSignature

STOP_KIND = "aggregator.stopped"
Broken = Callable[[str, str], AuditBroken]  # (check, message) -> the error located at the current record


@dataclass(frozen=True)
class Segment:
    """One enclave lifetime in the log: its attested keys and where it starts."""

    number: int
    line: int
    seq: int
    sig_public: bytes
    kem_public: bytes
    evidence_digest: str
    attestation: AttestationResult
    records: int = 0

    @property
    def measurement(self) -> bytes:
        return self.attestation.cpu.measurement

    @property
    def backend(self) -> str:
        return self.attestation.cpu.backend


@dataclass
class AuditReport:
    """A verified log: its records (with line numbers), its segments, and notes that are not failures."""

    records: list[tuple[int, AuditRecord]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    partial: bool = False

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record: an anchor to compare with a later fetch."""
        _, last = self.records[-1]
        return last.seq, last.hash

    def segment_of(self, sig_public: bytes) -> Segment | None:
        return next((s for s in self.segments if hmac.compare_digest(s.sig_public, sig_public)), None)

    def job_records(self, job_id: str) -> list[tuple[int, AuditRecord]]:
        return [(n, r) for n, r in self.records if r.job_id == job_id]


def verify_log(lines: Iterable[RawLine], policy: Policy, *, evidence: Mapping[str, EvidenceBundle] | None = None,
               at: datetime | None = None, partial: bool = False, collateral: Collateral | None = None,
               expect_head: tuple[int, str] | None = None) -> AuditReport:
    """Verify ``lines`` (from ``read_lines`` or a fetched stream); raise ``AuditBroken`` at the first failure.

    ``evidence`` maps evidence digests (hex) to bundles for segments whose record does not embed its
    bundle. ``at`` is the time certificates are checked at; default: each segment's own start time.
    ``expect_head`` is a (seq, hash) pinned from an earlier fetch: the log must still hold that record, so
    a cut tail or a rollback to an older copy is reported (``truncated``/``chain``) instead of passing.
    """
    report = AuditReport(partial=partial)
    prev: AuditRecord | None = None
    current: Segment | None = None
    seg_no = -1  # number of the last segment start seen
    skipped: AuditBroken | None = None  # partial view: the first segment whose evidence failed
    job_heads: dict[str, AuditRecord] = {}
    for line_no, raw in lines:
        if not raw.endswith(b"\n"):
            raise AuditBroken("truncated", "the last record is cut short (no end of line)", line=line_no)
        try:
            rec = AuditRecord.from_line(raw[:-1])
        except RecordFormatError as exc:
            raise AuditBroken(exc.check, str(exc), line=line_no) from None

        def broken(check: str, message: str, rec: AuditRecord = rec, line_no: int = line_no) -> AuditBroken:
            return AuditBroken(check, message, line=line_no, seq=rec.seq)

        if not hmac.compare_digest(rec.compute_hash(), rec.hash):
            raise broken("hash", "the record's content does not match its hash (edited)")
        _check_sequence(rec, prev, partial, broken)
        if rec.kind == SEGMENT_KIND:
            if rec.segment != seg_no + 1:
                raise broken("segment", f"segment {rec.segment} starts where segment {seg_no + 1} must")
            seg_no = rec.segment
            _check_link(rec, prev, partial, broken)
            job_heads = {}  # a restarted enclave has no jobs: job chains start afresh in each segment
            try:
                current = _open_segment(rec, line_no, policy, evidence or {}, at, collateral, broken)
            except AuditBroken as exc:
                if not partial:
                    raise
                skipped = skipped or exc
                current = None  # a job's view: an older build's segment is skipped, never trusted
                report.warnings.append(f"segment {rec.segment} (line {line_no}) is skipped: {exc.detail}")
                continue
            report.segments.append(current)
        else:
            if seg_no < 0:
                raise broken("segment", "record before any segment start: its signing key was never attested")
            if rec.segment != seg_no:
                raise broken("segment", f"record claims segment {rec.segment} inside segment {seg_no} "
                                        "(a segment start is missing)")
            if current is None:
                continue  # partial view, segment skipped above: none of its records count
            _check_link(rec, prev, partial, broken)
        try:
            rec.verify_signature(current.sig_public)
        except BadSignature:
            raise broken("signature", f"not signed by the attested key of segment {current.number} "
                                      f"(key {current.sig_public.hex()[:16]}…)") from None
        if prev is not None and rec.time_ms < prev.time_ms:
            raise broken("time", f"time {rec.time_ms} ms runs backwards from {prev.time_ms} ms")
        if rec.job_id is not None:
            _check_job_chain(rec, job_heads.get(rec.job_id), broken)
            job_heads[rec.job_id] = rec
        report.records.append((line_no, rec))
        prev = rec
    if prev is None:
        if skipped is not None:
            raise skipped  # nothing verified: the evidence failure is the reason
        raise AuditBroken("empty", "the log holds no record", line=0)
    if expect_head is not None:
        _check_head(report, expect_head)
    if not partial and prev.kind != STOP_KIND:
        report.warnings.append(f"the log ends at seq {prev.seq} without {STOP_KIND}: the aggregator is running, "
                               "crashed, or the tail was cut (compare with a head you pinned earlier)")
    return report


@dataclass(frozen=True)
class CrossCheck:
    """A bundle a party attested itself, compared with the log: same keys as a segment, recorded as served."""

    evidence_digest: str
    ok: bool
    message: str
    segment: int | None = None
    seq: int | None = None


def cross_check(report: AuditReport, bundles: Mapping[str, EvidenceBundle]) -> list[CrossCheck]:
    """For each bundle not used as a segment's own evidence: find the segment with its keys and the
    ``evidence.served`` record of its digest there (what ties a party's live attestation to the log)."""
    own = {s.evidence_digest for s in report.segments}
    out: list[CrossCheck] = []
    for digest, bundle in sorted(bundles.items()):
        if digest in own:
            continue
        seg = report.segment_of(bundle.sig_public)
        if seg is None or seg.kem_public != bundle.kem_public:
            out.append(CrossCheck(digest, False, "its enclave keys are not those of any verified segment"))
            continue
        served = next((r for _, r in report.records if r.kind == "evidence.served" and r.segment == seg.number
                       and r.fields.get("evidence_digest") == digest), None)
        if served is None:
            out.append(CrossCheck(digest, False, f"keys of segment {seg.number}, but not recorded as served",
                                  segment=seg.number))
            continue
        out.append(CrossCheck(digest, True, f"keys of segment {seg.number}, served at seq {served.seq}",
                              segment=seg.number, seq=served.seq))
    return out


def _check_head(report: AuditReport, head: tuple[int, str]) -> None:
    seq, digest = head
    found = next(((n, r) for n, r in report.records if r.seq == seq), None)
    if found is None:
        last_line, last = report.records[-1]
        raise AuditBroken("truncated", f"the log ends at seq {last.seq}, before the pinned head seq {seq} "
                                       "(tail cut or rolled back)", line=last_line + 1, seq=seq)
    line, rec = found
    if rec.hash != digest:
        raise AuditBroken("chain", f"seq {seq} is not the pinned record {digest[:16]}… (the log was rewritten)",
                          line=line, seq=seq)


def _check_sequence(rec: AuditRecord, prev: AuditRecord | None, partial: bool, broken: Broken) -> None:
    if partial:
        if prev is not None and rec.seq <= prev.seq:
            raise broken("sequence", f"seq {rec.seq} does not follow seq {prev.seq} (reordered or duplicated)")
        return
    expected = 0 if prev is None else prev.seq + 1
    if rec.seq != expected:
        what = "records missing" if rec.seq > expected else "reordered or duplicated"
        raise broken("sequence", f"expected seq {expected}, found {rec.seq} ({what})")


def _check_link(rec: AuditRecord, prev: AuditRecord | None, partial: bool, broken: Broken) -> None:
    if prev is None:
        if not partial and rec.prev_hash != "":
            raise broken("chain", "the first record links to a record that is not in the log (head cut off)")
        return
    if partial and rec.seq != prev.seq + 1:
        return
    if rec.prev_hash != prev.hash:
        where = "segment link" if rec.kind == SEGMENT_KIND else "previous record"
        raise broken("chain", f"prev_hash does not match the {where} (seq {prev.seq}, hash {prev.hash[:16]}…)")


def _check_job_chain(rec: AuditRecord, head: AuditRecord | None, broken: Broken) -> None:
    want_seq, want_prev = (0, "") if head is None else ((head.job_seq or 0) + 1, head.hash)
    if rec.job_seq != want_seq or rec.job_prev != want_prev:
        raise broken("job-chain", f"job {rec.job_id!r}: expected its record #{want_seq} linking to "
                                  f"{want_prev[:16] or 'nothing'}, found #{rec.job_seq}")


def _open_segment(rec: AuditRecord, line_no: int, policy: Policy, supplied: Mapping[str, EvidenceBundle],
                  at: datetime | None, collateral: Collateral | None, broken: Broken) -> Segment:
    """Verify a segment start: its bundle, the keys it names, the link-derived nonce, the policy."""
    f = rec.fields
    try:
        sig_public = bytes.fromhex(str(f["sig_public"]))
        kem_public = bytes.fromhex(str(f["kem_public"]))
        digest = str(f["evidence_digest"])
        nonce = str(f["nonce"])
    except (KeyError, ValueError):
        raise broken("evidence", "segment start lacks sig_public, kem_public, nonce or evidence_digest") from None
    embedded = f.get("evidence")
    if isinstance(embedded, str):
        raw = embedded.encode()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise broken("evidence", "embedded evidence does not match its digest")
        try:
            bundle = EvidenceBundle.from_json(raw)
        except AttestationError as exc:
            raise broken("evidence", f"embedded evidence is malformed: {exc}") from None
    elif digest in supplied:
        bundle = supplied[digest]
    else:
        raise broken("evidence", f"segment {rec.segment} evidence {digest[:16]}… is neither embedded nor supplied "
                                 f"(pass --evidence {f.get('evidence_file', '<bundle>.json')})")
    if bundle.digest().hex() != digest:
        raise broken("evidence", "supplied evidence does not match the segment's evidence digest")
    if bundle.sig_public != sig_public or bundle.kem_public != kem_public:
        raise broken("evidence", "the evidence attests other keys than the segment names")
    expected_nonce = segment_nonce(rec.prev_hash, rec.segment)
    if nonce != expected_nonce.hex():
        raise broken("evidence", "segment nonce is not derived from its link (evidence made for another place)")
    binding = evidence_binding(expected_nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
    when = at or datetime.fromtimestamp(rec.time_ms / 1000, UTC)
    try:
        result = verify(bundle, binding, policy, when, collateral)
    except AttestationError as exc:
        raise broken("evidence", f"segment {rec.segment} evidence fails the policy ({exc.check}): {exc}") from None
    except Exception as exc:  # a backend choking on odd bytes is still a failed check, never a crash
        raise broken("evidence", f"segment {rec.segment} evidence cannot be verified ({type(exc).__name__})") from None
    return Segment(number=rec.segment, line=line_no, seq=rec.seq, sig_public=sig_public, kem_public=kem_public,
                   evidence_digest=digest, attestation=result)
