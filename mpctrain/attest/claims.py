"""What a verifier concluded: typed claims per TEE and the overall attestation result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mpctrain.attest.evidence import BuildInfo


@dataclass(frozen=True)
class CertSummary:
    """One certificate of a verified chain, for display and audit."""

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    sha256: str

    @classmethod
    def of(cls, cert: x509.Certificate, sha256: str | None = None) -> CertSummary:
        """Summarise a parsed certificate; ``sha256`` (hex of the DER) when the caller already has it."""
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sha256=sha256 if sha256 is not None else cert.fingerprint(hashes.SHA256()).hex(),
        )


@dataclass(frozen=True)
class Claims:
    """Verified facts from one piece of evidence.

    ``measurement`` is the launch digest (SNP MEASUREMENT, TDX MRTD, sim code digest, GPU: digest of
    the measurement blocks); ``report_data`` is the 64-byte REPORT_DATA (GPU: the 32-byte nonce);
    ``tcb`` maps component name to security version; ``details`` holds backend-specific claims
    (JSON-friendly: hex strings, ints, bools, lists).
    """

    backend: str
    measurement: bytes
    report_data: bytes
    debug: bool
    tcb: dict[str, int] = field(default_factory=dict)
    product: str = ""
    chain: tuple[CertSummary, ...] = ()
    details: dict[str, object] = field(default_factory=dict)

    def to_json_obj(self) -> dict:
        return {
            "backend": self.backend,
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "tcb": dict(self.tcb),
            "product": self.product,
            "chain": [
                {
                    "subject": c.subject,
                    "issuer": c.issuer,
                    "not_before": c.not_before.isoformat(),
                    "not_after": c.not_after.isoformat(),
                    "sha256": c.sha256,
                }
                for c in self.chain
            ],
            "details": self.details,
        }


@dataclass(frozen=True)
class AttestationResult:
    """A bundle that passed every check: from now on ``kem_public``/``sig_public`` are trusted."""

    cpu: Claims
    gpus: tuple[Claims, ...]
    kem_alg: str
    kem_public: bytes
    sig_public: bytes
    build: BuildInfo
    evidence_digest: bytes
    verified_at: datetime

    def to_json_obj(self) -> dict:
        return {
            "cpu": self.cpu.to_json_obj(),
            "gpus": [g.to_json_obj() for g in self.gpus],
            "kem_alg": self.kem_alg,
            "kem_public": self.kem_public.hex(),
            "sig_public": self.sig_public.hex(),
            "build": self.build.to_json_obj(),
            "evidence_digest": self.evidence_digest.hex(),
            "verified_at": self.verified_at.isoformat(),
        }
