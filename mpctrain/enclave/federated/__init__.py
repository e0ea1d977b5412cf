"""Federated mode inside the enclave: ``Confidential(strategy)`` around any Flower strategy, sealed traffic."""

from mpctrain.enclave.federated.errors import (
    AttestationRefused,
    CodeDigestMismatch,
    EnvelopeError,
    FederatedError,
    JobNotReady,
    PrivacyBudgetSpent,
    ReplyRejected,
    RunConfigMismatch,
)
from mpctrain.enclave.federated.runtime import InProcessGrid, Node
from mpctrain.enclave.federated.strategy import Confidential, FederatedResult, check_job

__all__ = [
    "AttestationRefused",
    "CodeDigestMismatch",
    "Confidential",
    "EnvelopeError",
    "FederatedError",
    "FederatedResult",
    "InProcessGrid",
    "JobNotReady",
    "Node",
    "PrivacyBudgetSpent",
    "ReplyRejected",
    "RunConfigMismatch",
    "check_job",
]
