"""Party-side audit check: before a party calls its job complete, the enclave's own log must agree with it.

The party fetches its job's view of the log, verifies every record against the enclave keys attested under
its own policy, and checks that: the segment's keys are the ones it attested itself (and the evidence it
was served is recorded there), the job is the manifest it approved, its consent is recorded, exactly the
shards it sent were accepted under its name, outputs went to the manifest's recipients only, and the job
reached ``done``. The view must reach the job's head that the enclave signed for this party's fresh nonce:
the host relays the stream and could otherwise drop its end. Any difference raises ``AuditCheckFailed``
naming the check.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from mpctrain.attest import AttestationResult, Policy
from mpctrain.enclave.audit import (
    HEAD_NONCE_BYTES,
    AuditBroken,
    AuditReport,
    JobHead,
    JobSummary,
    RawLine,
    Segment,
    summarize,
    verify_log,
)
from mpctrain.enclave.audit_service import GET_LOG, head_from_message
from mpctrain.enclave.auth import auth_metadata
from mpctrain.jobs import JobManifest
from mpctrain.jobs.consent import CONSENT_DOMAIN
from mpctrain.party.errors import PartyError
from mpctrain.seal.errors import BadSignature
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.sign import verify_fields
from mpctrain.wire import audit_pb2, audit_pb2_grpc

MAX_FETCH_RECORDS = 1_000_000
MAX_FETCH_BYTES = 512 << 20  # a segment record is at most 4 MiB: records alone would allow terabytes
MAX_HEAD_NUMBER = (1 << 63) - 1  # a head's numbers are signed as 8-byte signed integers


class AuditCheckFailed(PartyError):
    """The audit log does not show what this party did (or shows more): the job is not reported complete."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"audit check failed ({check}): {message}")
        self.check = check


@dataclass(frozen=True)
class SentInput:
    """What the party itself sent: object id and plaintext size (and the sealed header's SHA-256 when known)."""

    object_id: str
    size: int
    header_digest: str = ""

    @classmethod
    def from_upload(cls, result: Any) -> SentInput:
        """From an ``UploadResult`` (``header_digest`` is used when the result carries one)."""
        digest = getattr(result, "header_digest", b"") or b""
        return cls(str(result.object_id), int(result.total_size),
                   digest.hex() if isinstance(digest, bytes) else str(digest))


@dataclass(frozen=True)
class JobView:
    """A job's view as fetched: its lines, the head the enclave signed (None: none came), the nonce sent."""

    lines: Sequence[RawLine]
    head: JobHead | None
    nonce: bytes


def fetch_audit_log(channel: grpc.Channel, job_id: str = "", *, party_id: str, identity: IdentityKey,
                    timeout: float = 60.0, evidence: Sequence[bytes] = ()) -> list[RawLine]:
    """The log (or ``job_id``'s view of it) over gRPC, as (line number, stored bytes).

    The request is signed by ``party_id``'s identity key: a job's view is served to that job's parties,
    the whole log to parties the aggregator knows from its jobs or its auditors list (docs/audit.md).
    ``evidence`` (digests of the evidence this party was served) narrows a job's view to those
    ``evidence.served`` records: anyone can make the enclave serve evidence, and the view stays bounded.
    """
    return list(_fetch(channel, job_id, party_id, identity, timeout, evidence, b"").lines)


def fetch_job_view(channel: grpc.Channel, job_id: str, *, party_id: str, identity: IdentityKey,
                   timeout: float = 60.0, evidence: Sequence[bytes] = ()) -> JobView:
    """``job_id``'s view like :func:`fetch_audit_log`, plus the job's head signed for a fresh random nonce:
    what :func:`check_job_audit` needs to tell a complete view from one the host cut short."""
    if not job_id:
        raise ValueError("a signed head is a job's: give job_id")
    return _fetch(channel, job_id, party_id, identity, timeout, evidence, os.urandom(HEAD_NONCE_BYTES))


def _fetch(channel: grpc.Channel, job_id: str, party_id: str, identity: IdentityKey, timeout: float,
           evidence: Sequence[bytes], nonce: bytes) -> JobView:
    stub = audit_pb2_grpc.AuditStub(channel)
    req = audit_pb2.GetLogRequest(job_id=job_id, evidence_digests=[d.hex() for d in evidence], head_nonce=nonce)
    md = auth_metadata(identity, party_id, GET_LOG, req)
    out: list[RawLine] = []
    head: JobHead | None = None
    size = 0
    try:
        stream = stub.GetLog(req, metadata=md, timeout=timeout)
        for rec in stream:
            if rec.HasField("head"):
                stream.cancel()  # the head ends the view: nothing after it counts
                head = head_from_message(rec.head)
                _check_head_numbers(head)
                break
            out.append((int(rec.line), bytes(rec.data)))
            size += len(out[-1][1])
            if len(out) > MAX_FETCH_RECORDS:
                raise AuditCheckFailed("fetch", f"the aggregator sent more than {MAX_FETCH_RECORDS} records")
            if size > MAX_FETCH_BYTES:
                raise AuditCheckFailed("fetch", f"the aggregator sent more than {MAX_FETCH_BYTES >> 20} MiB of "
                                                "records, far more than a job's view holds; for a whole log that "
                                                "large, copy the file from the host and run `mpctrain audit verify`")
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        detail = exc.details() if hasattr(exc, "details") else ""
        raise AuditCheckFailed("fetch", f"cannot fetch the audit log ({code}: {str(detail)[:300]}); without it "
                                        "the job cannot be confirmed: the aggregator must run with an audit_log "
                                        "and the caller must be a party of the job") from None
    return JobView(out, head, nonce)


def check_job_audit(view: JobView, *, manifest: JobManifest, party_id: str,
                    enclave: AttestationResult, policy: Policy, sent: Sequence[SentInput] | None = None,
                    at: datetime | None = None, require_done: bool = True) -> JobSummary:
    """Verify ``manifest``'s records as ``party_id`` sees them in ``view`` (from :func:`fetch_job_view`);
    return the job's summary or raise.

    ``sent`` lists every shard this party uploaded for the job (``None``: not known here, inputs unchecked).
    """
    try:
        report = verify_log(view.lines, policy, at=at, partial=True)
    except AuditBroken as exc:
        raise AuditCheckFailed(f"log:{exc.check}", str(exc)) from None
    segment = report.segment_of(enclave.sig_public)
    if segment is None:
        raise AuditCheckFailed("keys", "no segment of the log is signed by the enclave key this party attested")
    served = [r for _, r in report.records if r.kind == "evidence.served" and r.segment == segment.number
              and r.fields.get("evidence_digest") == enclave.evidence_digest.hex()]
    if not served:
        raise AuditCheckFailed("evidence", "the evidence this party verified is not recorded as served by that "
                                           "enclave")
    _check_head(view, report, segment, manifest.job_id, enclave.sig_public)
    mine = [(n, r) for n, r in report.records if r.segment == segment.number]  # the enclave it attested
    job = summarize(mine).get(manifest.job_id)
    if job is None:
        raise AuditCheckFailed("job", f"the log holds no record of job {manifest.job_id}")
    if not hmac.compare_digest(job.manifest_digest, manifest.digest().hex()):
        raise AuditCheckFailed("manifest", "the log records another manifest than the one this party approved")
    spec = manifest.party(party_id)
    if spec.role == "data":
        _check_own_consent(job, manifest, party_id)
    if sent is not None:
        _check_inputs(job, party_id, sent)
    allowed = set(manifest.recipients)
    wrong = sorted(r for r in job.outputs if r not in allowed)
    if wrong:
        raise AuditCheckFailed("outputs", f"outputs were sealed to {wrong}, who are not recipients in the manifest")
    if require_done:
        if "done" not in job.states:
            raise AuditCheckFailed("state", f"the log does not show job {manifest.job_id} done (states: "
                                            f"{job.states or 'none'}); records may be missing")
        missing = sorted(allowed - set(job.outputs)) if manifest.mode == "pooled" else []
        if missing:
            raise AuditCheckFailed("outputs", f"no output recorded for recipients {missing}")
    return job


def _check_head_numbers(head: JobHead) -> None:
    """A segment or job_seq outside 0..2**63-1 cannot be what an enclave signed (the signed encoding is an
    8-byte signed integer, and the wire's uint64 allows more): a typed failure, not a packing error."""
    for name, value in (("segment", head.segment), ("job_seq", head.job_seq)):
        if value is not None and not 0 <= value <= MAX_HEAD_NUMBER:
            raise AuditCheckFailed("head", f"the job's head has {name} {value}, outside 0..2**63-1: no enclave "
                                           "signs such a head (a forged or corrupted one)")


def _check_head(view: JobView, report: AuditReport, segment: Segment, job_id: str, sig_public: bytes) -> None:
    """The view must reach the job's head the attested enclave signed for this party's nonce: the job chain
    is verified strictly from its first record, so holding the head means nothing up to it was dropped."""
    head = view.head
    if head is None:
        raise AuditCheckFailed("head", "the aggregator sent no signed head with the job's view: its end may have "
                                       "been cut by the host (or the aggregator predates signed heads; upgrade it)")
    _check_head_numbers(head)  # a view built by hand may hold any numbers, too
    if not view.nonce or not hmac.compare_digest(head.nonce, view.nonce):
        raise AuditCheckFailed("head", "the job's head answers another request (its nonce is not this party's): "
                                       "a replayed head")
    try:
        head.verify(sig_public)
    except (BadSignature, ValueError):
        raise AuditCheckFailed("head", "the job's head is not signed by the enclave key this party attested (a "
                                       "forged head, or the aggregator restarted since: attest it again)") from None
    if head.job_id != job_id or head.segment != segment.number:
        raise AuditCheckFailed("head", f"the head names job {head.job_id!r} in segment {head.segment}, not job "
                                       f"{job_id!r} in segment {segment.number} of the attested enclave")
    if head.job_seq is None:
        raise AuditCheckFailed("head", f"the enclave this party attested (segment {segment.number}) has recorded "
                                       f"nothing of job {job_id}: it restarted since the job ran, so the job cannot "
                                       "be confirmed against it; an auditor can check earlier segments in the whole "
                                       "log (mpctrain audit verify)")
    reached = any(r.segment == head.segment and r.job_id == job_id and r.job_seq == head.job_seq
                  and hmac.compare_digest(r.hash, head.hash) for _, r in report.records)
    if not reached:
        raise AuditCheckFailed("head", f"the view of job {job_id} stops before its head, record #{head.job_seq} "
                                       f"({head.hash[:16]}…) that the enclave signed: records were dropped")


def _check_own_consent(job: JobSummary, manifest: JobManifest, party_id: str) -> None:
    """The recorded consent must be this party's own signature over the recorded manifest digest."""
    sig = job.consents.get(party_id)
    if sig is None:
        raise AuditCheckFailed("consent", f"the consent of {party_id} is not recorded")
    try:
        verify_fields(manifest.party(party_id).identity_public, bytes.fromhex(sig), CONSENT_DOMAIN, manifest.job_id,
                      party_id, bytes.fromhex(job.manifest_digest))
    except (BadSignature, ValueError):
        raise AuditCheckFailed("consent", f"the recorded consent is not {party_id}'s signature over the recorded "
                                          "manifest") from None


def confirm_job(channel: grpc.Channel, *, manifest: JobManifest, party_id: str, identity: IdentityKey,
                enclave: AttestationResult, policy: Policy, sent: Sequence[SentInput] | None = None,
                at: datetime | None = None, settle_s: float = 5.0) -> JobSummary:
    """Fetch the job's view and check it; the final records may land just after the state change, so a
    missing ``done`` is re-fetched for up to ``settle_s`` seconds."""
    deadline = time.monotonic() + settle_s
    while True:
        view = fetch_job_view(channel, manifest.job_id, party_id=party_id, identity=identity,
                              evidence=[enclave.evidence_digest])
        try:
            return check_job_audit(view, manifest=manifest, party_id=party_id, enclave=enclave, policy=policy,
                                   sent=sent, at=at)
        except AuditCheckFailed as exc:
            if exc.check != "state" or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def confirm_consent(channel: grpc.Channel, *, manifest: JobManifest, party_id: str, identity: IdentityKey,
                    enclave: AttestationResult, policy: Policy, at: datetime | None = None) -> JobSummary:
    """This party's consent to ``manifest`` as the enclave signed it: a ``job.consent`` record of ``party_id``
    whose signature is its own over this manifest's digest, in the segment of the enclave it attested, the view
    reaching the job's signed head. The host's unsigned ``GetJob`` reply claiming the consent proves nothing;
    raises ``AuditCheckFailed`` (``fetch`` too when the aggregator keeps no audit log)."""
    view = fetch_job_view(channel, manifest.job_id, party_id=party_id, identity=identity,
                          evidence=[enclave.evidence_digest])
    job = check_job_audit(view, manifest=manifest, party_id=party_id, enclave=enclave, policy=policy, at=at,
                          require_done=False)
    _check_own_consent(job, manifest, party_id)  # whatever the role: check_job_audit checks data parties only
    return job


def _check_inputs(job: JobSummary, party_id: str, sent: Sequence[SentInput]) -> None:
    recorded = list(job.inputs.get(party_id, []))
    for s in sent:
        match = [e for e in recorded if e.object_id == s.object_id]
        if not match:
            raise AuditCheckFailed("inputs", f"shard {s.object_id} sent by {party_id} is not recorded as accepted")
        e = match[0]
        if e.size != s.size:
            raise AuditCheckFailed("inputs", f"shard {s.object_id}: the log records {e.size} bytes, {party_id} "
                                             f"sent {s.size}")
        if s.header_digest and not hmac.compare_digest(e.digest, s.header_digest):
            raise AuditCheckFailed("inputs", f"shard {s.object_id}: recorded digest differs from the one sent")
        recorded.remove(e)
    if recorded:
        raise AuditCheckFailed("inputs", f"the log shows {len(recorded)} input(s) under {party_id} that it never "
                                         f"sent: {[e.object_id for e in recorded]}")
