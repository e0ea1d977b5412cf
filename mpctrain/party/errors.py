"""Typed client-side errors: one class per way the aggregator can refuse a party's call."""

from __future__ import annotations

import grpc


class PartyError(Exception):
    """Base of every party-agent failure; the message says what to do."""


class AttestationRefused(PartyError):
    """The aggregator's evidence failed this party's policy: nothing was sent to it."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"attestation failed ({check}): {message}")
        self.check = check


class ManifestRejected(PartyError):
    """The proposed job breaks this party's local rules; the party does not consent."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("job refused by local rules: " + "; ".join(problems))
        self.problems = problems


class ShardRefused(PartyError):
    """This party's own table does not fit the job (schema, or too few rows for its validation floors): found
    before it consents or uploads, where it can be fixed."""


class WaitTimeout(PartyError):
    """The job did not reach the awaited state in time; the message names its state and what it still lacks."""

    def __init__(self, message: str, job_id: str, state: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state


class OutputError(PartyError):
    """An output could not be fetched, opened or verified against the receipt."""


class AggregatorError(PartyError):
    """The aggregator refused a call; ``code`` is the gRPC status."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class Unauthenticated(AggregatorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AggregatorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(AggregatorError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AggregatorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AggregatorError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgument(AggregatorError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(AggregatorError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AggregatorError):
    code = grpc.StatusCode.UNAVAILABLE


class Aborted(AggregatorError):
    """A concurrent operation on the same object (e.g. a dropped stream not yet noticed): retry shortly."""

    code = grpc.StatusCode.ABORTED


_BY_CODE = {c.code: c for c in (Unauthenticated, PermissionDenied, NotFound, AlreadyExists, FailedPrecondition,
                                InvalidArgument, ResourceExhausted, Unavailable, Aborted)}


def from_rpc_error(exc: grpc.RpcError) -> AggregatorError:
    """Map a gRPC failure to its typed error, keeping the server's message."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, AggregatorError)
    return cls(f"{code.name}: {details}", code)
