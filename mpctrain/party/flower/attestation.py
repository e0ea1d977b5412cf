"""Attesting the aggregator from a party: fresh nonce, evidence over gRPC, verification by the party's policy."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from mpctrain.attest import AttestationError, AttestationResult, EvidenceBundle, Policy, verify
from mpctrain.enclave.federated.errors import AttestationRefused
from mpctrain.seal.binding import NONCE_BYTES, evidence_binding

GET_EVIDENCE_TIMEOUT_S = 30.0


@runtime_checkable
class EvidenceSource(Protocol):
    """Where a party asks for evidence: the aggregator's ``Attestation.GetEvidence``, or an in-process enclave."""

    def get_evidence(self, nonce: bytes) -> EvidenceBundle: ...


class CallableEvidenceSource:
    """Adapts ``nonce -> EvidenceBundle`` (e.g. ``EnclaveIdentity.evidence``) for in-process runs."""

    def __init__(self, fn: Callable[[bytes], EvidenceBundle]) -> None:
        self._fn = fn

    def get_evidence(self, nonce: bytes) -> EvidenceBundle:
        return self._fn(nonce)


class GrpcEvidenceSource:
    """Calls ``mpctrain.v1.Attestation/GetEvidence`` on the aggregator (TLS optional: evidence is self-protecting)."""

    def __init__(self, target: str, *, credentials: object | None = None,
                 timeout: float = GET_EVIDENCE_TIMEOUT_S) -> None:
        self.target = target
        self.credentials = credentials
        self.timeout = timeout

    def get_evidence(self, nonce: bytes) -> EvidenceBundle:
        import grpc

        from mpctrain.wire import attestation_pb2, attestation_pb2_grpc
        from mpctrain.wire.convert import bundle_from_proto

        channel = (grpc.secure_channel(self.target, self.credentials) if self.credentials is not None
                   else grpc.insecure_channel(self.target))
        with channel:
            stub = attestation_pb2_grpc.AttestationStub(channel)
            reply = stub.GetEvidence(attestation_pb2.GetEvidenceRequest(nonce=nonce), timeout=self.timeout)
        return bundle_from_proto(reply)


def attest_enclave(source: EvidenceSource, policy: Policy, *, at: datetime | None = None,
                   job_policy: Policy | None = None) -> AttestationResult:
    """One attestation with a nonce only this call knows; ``AttestationRefused`` names the failed check.

    ``job_policy``: the enclave policy the job pins (what every party approved) must pass on the same
    evidence too.
    """
    nonce = os.urandom(NONCE_BYTES)
    try:
        bundle = source.get_evidence(nonce)
    except AttestationError as exc:
        raise AttestationRefused(f"aggregator evidence rejected: {exc.check}: {exc}", check=exc.check) from exc
    except Exception as exc:  # transport failures of any kind: refuse, never fall back to trusting
        raise AttestationRefused(f"cannot get evidence from the aggregator: {type(exc).__name__}: {exc}",
                                 check="unreachable") from exc
    binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
    when = at or datetime.now(UTC)
    try:
        result = verify(bundle, binding, policy, when)
    except AttestationError as exc:
        raise AttestationRefused(f"aggregator attestation failed: {exc.check}: {exc}", check=exc.check) from exc
    if job_policy is not None:
        try:
            verify(bundle, binding, job_policy, when)
        except AttestationError as exc:
            raise AttestationRefused(f"the enclave does not satisfy the job's pinned policy: {exc.check}: {exc}",
                                     check=f"job-policy/{exc.check}") from exc
    return result
