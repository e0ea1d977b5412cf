"""Party side of federated mode: the Flower client mod, its runtime, attestation client and output opener."""

from mpctrain.party.flower.attestation import CallableEvidenceSource, EvidenceSource, GrpcEvidenceSource, attest_enclave
from mpctrain.party.flower.mod import ConfidentialMod, confidential_mod
from mpctrain.party.flower.output import open_output
from mpctrain.party.flower.runtime import (
    PartyRuntime,
    app_code_digest,
    check_app_code,
    register_party,
    resolve_party,
    unregister_party,
)

__all__ = [
    "CallableEvidenceSource",
    "ConfidentialMod",
    "EvidenceSource",
    "GrpcEvidenceSource",
    "PartyRuntime",
    "app_code_digest",
    "attest_enclave",
    "check_app_code",
    "confidential_mod",
    "open_output",
    "register_party",
    "resolve_party",
    "unregister_party",
]
