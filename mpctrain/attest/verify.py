"""The one verification path every backend goes through, simulated or real."""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from mpctrain.attest.backend import get_verifier
from mpctrain.attest.claims import AttestationResult, Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    AttestationError,
    BackendNotAllowed,
    BindingMismatch,
    DebugEnabled,
    Malformed,
    MeasurementNotAllowed,
    PolicyViolation,
    TcbTooLow,
)
from mpctrain.attest.evidence import Evidence, EvidenceBundle
from mpctrain.attest.policy import BackendPolicy, Policy, PolicyError
from mpctrain.seal.binding import gpu_nonce
from mpctrain.seal.errors import KeyFormatError
from mpctrain.seal.keys import ED25519_PUBLIC_BYTES, public_kem_key

log = logging.getLogger(__name__)


def verify_evidence(
    evidence: Evidence,
    expected_report_data: bytes | None,
    policy: Policy,
    at: datetime | None = None,
    collateral: Collateral | None = None,
    *,
    gpu: bool = False,
) -> Claims:
    """Verify one piece of evidence: backend checks, then the common policy checks.

    Whatever a backend lets escape from parsing hostile bytes (``cryptography`` parses some certificate
    fields lazily) becomes ``Malformed``: callers handle one error family, never a stray ``ValueError``.
    """
    at = _aware(at)
    if gpu:
        if evidence.kind != "nvidia-gpu":
            raise BackendNotAllowed("GPU evidence of unknown kind", field="kind", expected="nvidia-gpu",
                                    actual=evidence.kind)
    elif evidence.kind not in policy.backends:
        raise BackendNotAllowed("policy does not accept this TEE", field="backend",
                                expected=list(policy.backends), actual=evidence.kind)
    bpol = policy.backend(evidence.kind)
    if collateral is None:
        collateral = Collateral(directory=policy.collateral_dir)
    try:
        claims = get_verifier(evidence.kind).verify(evidence, policy=bpol, at=at, collateral=collateral)
    except (AttestationError, PolicyError):
        raise
    except (ValueError, TypeError, OverflowError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType) as exc:  # cryptography's X.509 parse errors that are not ValueError
        raise Malformed(f"{evidence.kind} evidence cannot be processed ({type(exc).__name__}: {exc})",
                        field="evidence") from exc
    check_claims(claims, bpol, expected_report_data)
    return claims


def _check_enclave_keys(bundle: EvidenceBundle) -> None:
    """The keys a party will trust must be usable: fail here, typed, not when the first upload is sealed.

    ``kem_alg`` is not in the binding; only a label that fits the bound ``kem_public`` passes.
    """
    try:
        public_kem_key(bundle.kem_alg, bundle.kem_public)
    except KeyFormatError as exc:
        raise Malformed(f"enclave KEM key is not a valid {bundle.kem_alg!r} public key: {exc}", field="kem_public",
                        actual=bundle.kem_alg) from exc
    if len(bundle.sig_public) != ED25519_PUBLIC_BYTES:
        raise Malformed("enclave signing key is not a 32-byte Ed25519 public key", field="sig_public",
                        expected=ED25519_PUBLIC_BYTES, actual=len(bundle.sig_public))


def _check_distinct_gpus(gpus: tuple[Claims, ...]) -> None:
    """One device must not fill several GPU slots: each report has to come from its own device certificate."""
    seen: set[str] = set()
    for i, g in enumerate(gpus):
        leaf = g.chain[0].sha256 if g.chain else ""
        if leaf in seen:
            raise PolicyViolation("the same GPU is reported more than once", field=f"gpus[{i}].device",
                                  expected="a distinct device certificate per GPU", actual=leaf)
        seen.add(leaf)


def _aware(at: datetime | None) -> datetime:
    """The verification time, timezone-aware: a naive time is taken as UTC (certificate times are UTC)."""
    if at is None:
        return datetime.now(UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def check_claims(claims: Claims, bpol: BackendPolicy, expected_report_data: bytes | None) -> None:
    """The checks common to every backend, applied to verified claims."""
    if expected_report_data is not None and not hmac.compare_digest(claims.report_data, expected_report_data):
        raise BindingMismatch("report data is not the expected binding (replayed or substituted evidence)",
                              field="report_data", expected=expected_report_data, actual=claims.report_data)
    if claims.debug and not bpol.allow_debug:
        raise DebugEnabled("TEE runs in debug mode", field="debug", expected=False, actual=True)
    if bpol.measurements is not None and claims.measurement not in bpol.measurements:
        raise MeasurementNotAllowed("measurement not in the policy's allowlist", field="measurement",
                                    expected=[m.hex() for m in bpol.measurements], actual=claims.measurement)
    for component, minimum in bpol.min_tcb.items():
        if component not in claims.tcb:
            raise TcbTooLow("TCB component missing from evidence", field=f"tcb.{component}",
                            expected=minimum, actual=None)
        if claims.tcb[component] < minimum:
            raise TcbTooLow("TCB component below the policy minimum", field=f"tcb.{component}",
                            expected=f">={minimum}", actual=claims.tcb[component])


def verify(
    bundle: EvidenceBundle,
    expected_binding: bytes,
    policy: Policy,
    at: datetime | None = None,
    collateral: Collateral | None = None,
) -> AttestationResult:
    """Verify a composite bundle against ``policy``; raise the failed check's error type."""
    at = _aware(at)
    try:
        cpu = verify_evidence(bundle.cpu, expected_binding, policy, at, collateral)
        gpus = tuple(
            verify_evidence(ev, gpu_nonce(expected_binding, i), policy, at, collateral, gpu=True)
            for i, ev in enumerate(bundle.gpus)
        )
        _check_distinct_gpus(gpus)
        if len(gpus) < policy.min_gpus:
            raise PolicyViolation("too few confidential GPUs", field="gpus", expected=f">={policy.min_gpus}",
                                  actual=len(gpus))
        _check_enclave_keys(bundle)
    except AttestationError as exc:
        log.warning("attestation rejected: %s: %s", exc.check, exc)
        raise
    return AttestationResult(
        cpu=cpu,
        gpus=gpus,
        kem_alg=bundle.kem_alg,
        kem_public=bundle.kem_public,
        sig_public=bundle.sig_public,
        build=bundle.build,
        evidence_digest=bundle.digest(),
        verified_at=at,
    )
