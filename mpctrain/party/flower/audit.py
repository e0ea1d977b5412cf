"""A bank's audit check of a federated job: the enclave's log must show exactly the updates it sent.

After (or during) a run, the party attests the aggregator again, fetches its job's view of the log and
checks, on top of the pooled checks it shares (log signed by the enclave key it attested, evidence served,
manifest and its own consent recorded, outputs only to the manifest's recipients): every federated run of
the job started under the manifest it approved, and every update the log shows accepted under its name is
one it sealed itself, with the same sealed size and header digest, accepted once. A reply it sent that is
not on record (late, timed out, never delivered) is reported, not failed: the round simply went on without
it. The view must reach the job's head the enclave signed for the bank's nonce: a federated job never
reaches ``done``, so only the head fixes where its records end and shows a later run or a second
acceptance that the host dropped from the stream. Any other difference raises ``AuditCheckFailed`` naming
the check.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mpctrain.attest import AttestationResult
from mpctrain.enclave.audit import JobSummary
from mpctrain.party.audit_check import AuditCheckFailed, JobView, check_job_audit
from mpctrain.party.flower.runtime import PartyRuntime
from mpctrain.party.flower.sent import SentUpdate


@dataclass(frozen=True)
class FederatedAuditReport:
    summary: JobSummary
    accepted: list[SentUpdate]
    not_accepted: list[SentUpdate]  # sent, but not on record as accepted


def check_federated_audit(view: JobView, *, runtime: PartyRuntime, enclave: AttestationResult,
                          sent: Sequence[SentUpdate], at: datetime | None = None) -> FederatedAuditReport:
    """Check ``runtime``'s job in ``view`` (from ``fetch_job_view``, head included) against ``sent`` (this
    party's own record of its replies)."""
    manifest, party = runtime.manifest, runtime.party_id
    summary = check_job_audit(view, manifest=manifest, party_id=party, enclave=enclave, policy=runtime.policy,
                              sent=None, at=at, require_done=False)
    want = manifest.digest().hex()
    if not summary.trained_manifests:
        raise AuditCheckFailed("rounds", f"the log shows no federated run of job {manifest.job_id}")
    if any(not hmac.compare_digest(d, want) for d in summary.trained_manifests):
        raise AuditCheckFailed("manifest", "a federated run of this job started under another manifest than the "
                                           "one this party approved")
    mine: dict[str, list[SentUpdate]] = {}  # a note written twice under one id (older versions answered replays)
    for s in sent:
        if s.job_id == manifest.job_id:
            mine.setdefault(s.object_id, []).append(s)
    accepted: dict[str, SentUpdate] = {}
    for entry in summary.inputs.get(party, []):
        notes = mine.get(entry.object_id)
        if not notes:
            raise AuditCheckFailed("inputs", f"the log shows update {entry.object_id} accepted under {party}, "
                                             "which this party never sent")
        if entry.object_id in accepted:
            raise AuditCheckFailed("inputs", f"update {entry.object_id} is recorded as accepted more than once")
        own = next((n for n in notes if entry.size == n.size
                    and hmac.compare_digest(entry.digest, n.ciphertext_digest)), notes[-1])
        if entry.size != own.size or not hmac.compare_digest(entry.digest, own.ciphertext_digest):
            raise AuditCheckFailed("inputs", f"update {entry.object_id}: the log records another sealed update "
                                             f"({entry.size} bytes, header {entry.digest[:16]}…) than the one sent "
                                             f"({own.size} bytes, header {own.ciphertext_digest[:16]}…)")
        accepted[entry.object_id] = own
    not_accepted = [notes[-1] for oid, notes in mine.items() if oid not in accepted]
    return FederatedAuditReport(summary, list(accepted.values()), not_accepted)
