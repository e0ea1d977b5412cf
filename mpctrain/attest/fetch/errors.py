"""Typed failures of the collateral fetcher; each message says what to change (URL, flag, network)."""

from __future__ import annotations

from mpctrain.attest.errors import AttestationError


class FetchError(AttestationError):
    """Collateral could not be fetched or stored; nothing partial is left under its cache name."""

    check = "fetch"


class InsecureUrl(FetchError):
    """A URL is not https (plain http is allowed only to a loopback address, for tests and local mirrors)."""

    check = "fetch-insecure-url"


class HttpStatusError(FetchError):
    """The server answered with an error status that retrying will not fix (or retries ran out)."""

    check = "fetch-http-status"

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message, field="url", expected="2xx", actual=f"{status} {url}")
        self.url = url
        self.status = status


class NotFound(HttpStatusError):
    """404: the service has no such item (unknown chip id/TCB, FMSPC, RIM id, or wrong product)."""

    check = "fetch-not-found"


class ResponseTooLarge(FetchError):
    """A response exceeds the size limit for its kind of collateral."""

    check = "fetch-too-large"


class BadResponse(FetchError):
    """A response is not the collateral it should be (not a certificate, CRL, JSON, RIM, or a missing header)."""

    check = "fetch-bad-response"


class NetworkError(FetchError):
    """The server could not be reached within the retries (DNS, connection, TLS, timeout)."""

    check = "fetch-network"
