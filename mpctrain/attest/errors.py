"""One exception type per failed attestation check, so callers and the CLI can name the check."""

from __future__ import annotations


class AttestationError(Exception):
    """Base of every attestation failure; ``check`` is the stable name printed by the CLI."""

    check = "attestation"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        expected: object = None,
        actual: object = None,
    ) -> None:
        self.field = field
        self.expected = expected
        self.actual = actual
        detail = message
        if field is not None:
            detail = f"{message} [field={field}"
            if expected is not None:
                detail += f" expected={_show(expected)}"
            if actual is not None:
                detail += f" actual={_show(actual)}"
            detail += "]"
        super().__init__(detail)


def _show(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value)


class Malformed(AttestationError):
    """Evidence or collateral cannot be parsed (wrong length, bad encoding, garbage)."""

    check = "malformed"


class UntrustedRoot(AttestationError):
    """The certificate chain does not end in a root pinned by the policy."""

    check = "untrusted-root"


class BadSignature(AttestationError):
    """A signature (report, quote, certificate link, collateral) does not verify."""

    check = "bad-signature"


class BindingMismatch(AttestationError):
    """REPORT_DATA (or a GPU nonce) is not the binding the verifier computed: replay or key swap."""

    check = "binding-mismatch"


class MeasurementNotAllowed(AttestationError):
    """The launch measurement (or MRTD/RTMR, GPU measurement) is not in the policy's allowlist."""

    check = "measurement-not-allowed"


class DebugEnabled(AttestationError):
    """The TEE runs in debug mode, so its memory is readable by the host."""

    check = "debug-enabled"


class TcbTooLow(AttestationError):
    """A TCB component's security version is below the policy's minimum."""

    check = "tcb-too-low"


class TcbStatusNotAllowed(AttestationError):
    """Collateral evaluation gave a TCB status (OutOfDate, Revoked, ...) that the policy refuses."""

    check = "tcb-status-not-allowed"


class CertificateExpired(AttestationError):
    """A certificate or CRL is outside its validity window at the verification time."""

    check = "certificate-expired"


class CertificateRevoked(AttestationError):
    """A certificate in the chain is listed in a CRL."""

    check = "certificate-revoked"


class CollateralStale(AttestationError):
    """Collateral (TCB info, QE identity, CRL, RIM) is past its nextUpdate or the policy's maximum age."""

    check = "collateral-stale"


class CollateralMissing(AttestationError):
    """Verification needs collateral that is neither in the evidence nor in the collateral cache."""

    check = "collateral-missing"


class BackendNotAllowed(AttestationError):
    """The evidence comes from a TEE kind the policy does not accept."""

    check = "backend-not-allowed"


class PolicyViolation(AttestationError):
    """A backend-specific policy knob failed (VMPL, migration agent, chip id, GPU count, driver version)."""

    check = "policy-violation"


class ReferenceMismatch(AttestationError):
    """GPU measurements differ from the reference integrity manifest (RIM) values."""

    check = "reference-mismatch"


ALL_ERRORS: tuple[type[AttestationError], ...] = (
    Malformed,
    UntrustedRoot,
    BadSignature,
    BindingMismatch,
    MeasurementNotAllowed,
    DebugEnabled,
    TcbTooLow,
    TcbStatusNotAllowed,
    CertificateExpired,
    CertificateRevoked,
    CollateralStale,
    CollateralMissing,
    BackendNotAllowed,
    PolicyViolation,
    ReferenceMismatch,
)
