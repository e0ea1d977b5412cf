"""Attest the aggregator before anything is sent: fresh nonce, the party's own policy, typed verdict."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from mpctrain.attest import AttestationError, AttestationResult, EvidenceBundle, Policy, PolicyError, verify
from mpctrain.jobs import JobManifest
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import AggregatorError, AttestationRefused, ResourceExhausted
from mpctrain.seal.binding import NONCE_BYTES, evidence_binding


@dataclass(frozen=True)
class Attested:
    """What one attestation verified, and the evidence it verified: a job's own policy is checked on it too."""

    result: AttestationResult
    bundle: EvidenceBundle
    binding: bytes
    at: datetime


def attest_aggregator_evidence(client: AggregatorClient, policy: Policy, at: datetime | None = None) -> Attested:
    """Ask for evidence over a fresh nonce and verify it; raise ``AttestationRefused`` naming the check."""
    nonce = os.urandom(NONCE_BYTES)
    try:
        bundle = client.get_evidence(nonce)
    except ResourceExhausted as exc:  # the aggregator's evidence rate limit: try again later
        raise AttestationRefused("busy", f"the aggregator serves no evidence right now: {exc}") from exc
    except AggregatorError as exc:
        raise AttestationRefused("unreachable", f"no evidence from the aggregator: {exc}") from exc
    except AttestationError as exc:  # malformed bundle on the wire
        raise AttestationRefused(exc.check, str(exc)) from exc
    binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
    when = at or datetime.now(UTC)
    try:
        return Attested(verify(bundle, binding, policy, when), bundle, binding, when)
    except AttestationError as exc:
        raise AttestationRefused(exc.check, str(exc)) from exc


def attest_aggregator(client: AggregatorClient, policy: Policy, at: datetime | None = None) -> AttestationResult:
    """``attest_aggregator_evidence``'s verdict alone."""
    return attest_aggregator_evidence(client, policy, at).result


def attest_for_job(client: AggregatorClient, manifest: JobManifest, at: datetime | None = None) -> Attested:
    """The live enclave verified under the policy ``manifest`` pins, as every party will verify it before it
    consents: a proposer learns at once that a stale pin (another build, another simulated root) would make
    every approval fail, instead of from each party later."""
    try:
        policy = Policy.from_dict(manifest.enclave_policy)
    except PolicyError as exc:
        raise AttestationRefused("job-policy", f"the job's enclave_policy is invalid: {exc}") from exc
    return attest_aggregator_evidence(client, policy, at)


def check_job_policy(attested: Attested, manifest: JobManifest) -> AttestationResult:
    """The attested evidence must also pass the enclave policy the job pins (what every party approved), in
    full: backends, roots, measurements, backend settings (RTMRs, VMPL, host data, TCB statuses, ...), the
    GPUs. The same evidence and nonce are verified again under that policy; a policy that does not parse
    is refused."""
    try:
        policy = Policy.from_dict(manifest.enclave_policy)
    except PolicyError as exc:
        raise AttestationRefused("job-policy", f"the job's enclave_policy is invalid: {exc}") from exc
    try:
        result = verify(attested.bundle, attested.binding, policy, attested.at)
    except AttestationError as exc:
        raise AttestationRefused(exc.check, f"enclave does not satisfy the job's pinned policy: {exc}") from exc
    if (result.kem_public, result.sig_public) != (attested.result.kem_public, attested.result.sig_public):
        raise AttestationRefused("job-policy", "the job policy's verdict names other enclave keys")
    return result
