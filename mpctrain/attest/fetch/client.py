"""HTTPS GET/POST with the standard library: bounded size, timeouts, retries with backoff, rate limit.

Retried: 429 and 5xx (honouring ``Retry-After`` up to ``max_delay``) and network errors. Not retried:
other 4xx (404 is ``NotFound``). Only https URLs are fetched, except plain http to a loopback address
(a local mirror or a test server); redirects are held to the same rule.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mpctrain.attest.fetch.errors import (
    HttpStatusError,
    InsecureUrl,
    NetworkError,
    NotFound,
    ResponseTooLarge,
)
from mpctrain.attest.fetch.ratelimit import RateLimiter

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
DEFAULT_MAX_BYTES = 4 << 20
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_DELAY = 60.0
USER_AGENT = "mpctrain-collateral-fetcher/1"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Response:
    """A successful (2xx) response; header names are lower-case."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, *names: str) -> str | None:
        for name in names:
            value = self.headers.get(name.lower())
            if value is not None:
                return value
        return None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> urllib.parse.SplitResult:
    """https anywhere, http only to loopback; anything else is ``InsecureUrl``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return parts
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return parts
    raise InsecureUrl("collateral URLs must be https (plain http only to 127.0.0.1/::1/localhost)",
                      field="url", expected="https://...", actual=url)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpClient:
    """One client per fetch run: shared rate limiter, retry policy and limits.

    ``sleep``/``clock`` are injectable so retry and rate tests do not wait in real time.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        rate: float | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backoff: float = DEFAULT_BACKOFF,
        max_delay: float = DEFAULT_MAX_DELAY,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout <= 0 or max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")
        self.timeout = timeout
        self.retries = retries
        self.max_bytes = max_bytes
        self.backoff = backoff
        self.max_delay = max_delay
        self._sleep = sleep
        self.limiter = RateLimiter(rate, clock=clock, sleep=sleep)
        self._opener = urllib.request.build_opener(_CheckedRedirects())
        # Loopback never goes through an environment proxy.
        self._direct = urllib.request.build_opener(_CheckedRedirects(), urllib.request.ProxyHandler({}))
        self.requests = 0

    def get(self, url: str, *, max_bytes: int | None = None, accept: str | None = None) -> Response:
        return self._request(url, None, None, max_bytes, accept)

    def post(self, url: str, body: bytes, content_type: str, *, max_bytes: int | None = None) -> Response:
        return self._request(url, body, content_type, max_bytes, None)

    def _request(
        self, url: str, body: bytes | None, content_type: str | None, max_bytes: int | None, accept: str | None
    ) -> Response:
        parts = check_url(url)
        limit = max_bytes or self.max_bytes
        opener = self._direct if is_loopback(parts.hostname) else self._opener
        headers = {"User-Agent": USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        attempt = 0
        while True:
            self.limiter.acquire()
            self.requests += 1
            method = "POST" if body is not None else "GET"
            req = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - checked
            retry_after: float | None = None
            try:
                with opener.open(req, timeout=self.timeout) as resp:
                    return Response(url=url, status=resp.status, headers=_headers(resp.headers),
                                    body=_read(resp, limit, url))
            except urllib.error.HTTPError as exc:
                status = exc.code
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                exc.close()
                if status == 404:
                    raise NotFound(f"not found at {url}: the service has no such item", url=url,
                                   status=status) from None
                if status not in _RETRY_STATUS:
                    raise HttpStatusError(f"HTTP {status} from {url}", url=url, status=status) from None
                if attempt >= self.retries:
                    raise HttpStatusError(f"HTTP {status} from {url} after {attempt + 1} attempts; try later or "
                                          "raise --retries", url=url, status=status) from None
                what = f"HTTP {status}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                if attempt >= self.retries:
                    reason = getattr(exc, "reason", exc)
                    raise NetworkError(f"cannot reach {url} after {attempt + 1} attempts: {reason}", field="url",
                                       actual=url) from None
                what = type(exc).__name__
            delay = min(self.max_delay, max(self.backoff * (2**attempt), retry_after or 0.0))
            log.info("%s from %s; retrying in %.1fs (attempt %d/%d)", what, url, delay, attempt + 1, self.retries)
            self._sleep(delay)
            attempt += 1


def _headers(msg: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in msg.items()}


def _read(resp, limit: int, url: str) -> bytes:  # type: ignore[no-untyped-def]
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ResponseTooLarge(f"response from {url} is too large", field="size", expected=f"<={limit}",
                               actual=int(length))
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise ResponseTooLarge(f"response from {url} is too large", field="size", expected=f"<={limit}",
                               actual=f">{limit}")
    return data


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
