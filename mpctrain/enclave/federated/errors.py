"""Typed failures of federated mode; each message says which check failed and what to do."""

from __future__ import annotations


class FederatedError(Exception):
    """Base of every federated-mode failure."""


class EnvelopeError(FederatedError):
    """A Flower message does not carry a well-formed mpctrain envelope (plaintext, garbage, wrong version)."""


class ReplyRejected(FederatedError):
    """A sealed reply did not open or does not belong to this job/round/party; it never reaches the strategy."""

    def __init__(self, reason: str, *, node_id: int | None = None, party_id: str | None = None) -> None:
        self.reason = reason
        self.node_id = node_id
        self.party_id = party_id
        super().__init__(f"reply from node {node_id} (party {party_id!r}) rejected: {reason}")


class JobNotReady(FederatedError):
    """The job cannot start: wrong mode, expired, or data parties have not all consented."""


class CodeDigestMismatch(FederatedError):
    """The Flower app code differs from the digest the manifest (and so every consent) covers."""


class RunConfigMismatch(FederatedError):
    """The Flower run's config differs from the ``[training.flower.run_config]`` every party consented to."""


class AttestationRefused(FederatedError):
    """The party could not attest the aggregator against its policy, so it sends nothing.

    ``check`` names the failed check alone: it is what a refusal tells the SuperLink. The message (the
    party's policy values, transport errors) stays in the party's own log.
    """

    def __init__(self, message: str, *, check: str = "attestation") -> None:
        self.check = check
        super().__init__(message)


class PrivacyBudgetSpent(FederatedError):
    """The next round would exceed the manifest's epsilon budget: training stops, outputs stay sealed."""
