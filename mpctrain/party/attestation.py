"""Attest the aggregator before anything is sent: fresh nonce, the party's own policy, typed verdict."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from mpctrain.attest import AttestationError, AttestationResult, Policy, PolicyError, verify
from mpctrain.jobs import JobManifest
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import AggregatorError, AttestationRefused
from mpctrain.seal.binding import NONCE_BYTES, evidence_binding


def attest_aggregator(client: AggregatorClient, policy: Policy, at: datetime | None = None) -> AttestationResult:
    """Ask for evidence over a fresh nonce and verify it; raise ``AttestationRefused`` naming the check."""
    nonce = os.urandom(NONCE_BYTES)
    try:
        bundle = client.get_evidence(nonce)
    except AggregatorError as exc:
        raise AttestationRefused("unreachable", f"no evidence from the aggregator: {exc}") from exc
    except AttestationError as exc:  # malformed bundle on the wire
        raise AttestationRefused(exc.check, str(exc)) from exc
    binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
    try:
        return verify(bundle, binding, policy, at or datetime.now(UTC))
    except AttestationError as exc:
        raise AttestationRefused(exc.check, str(exc)) from exc


def check_job_policy(result: AttestationResult, manifest: JobManifest, at: datetime | None = None) -> None:
    """The attested enclave must also satisfy the enclave policy the job pins (what every party approved)."""
    from mpctrain.attest import check_claims

    try:
        policy = Policy.from_dict(manifest.enclave_policy)
    except PolicyError as exc:
        raise AttestationRefused("job-policy", f"the job's enclave_policy is invalid: {exc}") from exc
    if result.cpu.backend not in policy.backends:
        raise AttestationRefused("job-policy", f"the job accepts {list(policy.backends)}, the enclave is "
                                 f"{result.cpu.backend}")
    try:
        check_claims(result.cpu, policy.backend(result.cpu.backend), None)
    except AttestationError as exc:
        raise AttestationRefused(exc.check, f"enclave does not satisfy the job's pinned policy: {exc}") from exc
