"""Evidence, policy and verification; one module per TEE backend. No gRPC, no torch."""

from mpctrain.attest.claims import AttestationResult, CertSummary, Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import *  # noqa: F403
from mpctrain.attest.errors import ALL_ERRORS, AttestationError
from mpctrain.attest.evidence import BuildInfo, Evidence, EvidenceBundle
from mpctrain.attest.policy import BackendPolicy, Policy, PolicyError
from mpctrain.attest.verify import check_claims, verify, verify_evidence

__all__ = [
    "ALL_ERRORS",
    "AttestationError",
    "AttestationResult",
    "BackendPolicy",
    "BuildInfo",
    "CertSummary",
    "Claims",
    "Collateral",
    "Evidence",
    "EvidenceBundle",
    "Policy",
    "PolicyError",
    "check_claims",
    "verify",
    "verify_evidence",
]
