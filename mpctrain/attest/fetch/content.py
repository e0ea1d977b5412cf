"""Checks that a response is the kind of collateral asked for, so an error page is never cached.

These are format checks only; signatures and chains are the verifiers' job, offline, every time.
"""

from __future__ import annotations

import json
import urllib.parse
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mpctrain.attest.errors import Malformed
from mpctrain.attest.fetch.errors import BadResponse
from mpctrain.attest.tdx.collateral import load_crl

T = TypeVar("T")
MAX_CHAIN_CERTS = 8


def _quietly(fn: Callable[[bytes], T], data: bytes) -> T:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD certificates have serial number 0
        return fn(data)


def der_certificate(body: bytes, url: str, cn: str | None = None) -> bytes:
    """``body`` is one DER certificate (with common name ``cn`` when given); returned unchanged."""
    try:
        cert = _quietly(x509.load_der_x509_certificate, body)
    except ValueError as exc:
        raise BadResponse(f"{url} did not return a DER certificate: {exc}", field="body") from exc
    if cn is not None:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        if names != [cn]:
            raise BadResponse(f"{url} returned a certificate for {names}, not {cn}", field="subject", expected=cn,
                              actual=names)
    return body


def pem_chain(body: bytes, url: str, *, count: int | None = None) -> bytes:
    """``body`` holds PEM certificates (exactly ``count`` when given); returned re-encoded, nothing else."""
    try:
        certs = _quietly(x509.load_pem_x509_certificates, body)
    except ValueError as exc:
        raise BadResponse(f"{url} did not return PEM certificates: {exc}", field="body") from exc
    if (count is not None and len(certs) != count) or len(certs) > MAX_CHAIN_CERTS:
        raise BadResponse(f"{url} returned the wrong number of certificates", field="body",
                          expected=count or f"<={MAX_CHAIN_CERTS}", actual=len(certs))
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def header_chain(value: str | None, url: str, header: str) -> bytes:
    """An issuer chain from a URL-encoded PEM response header (Intel PCS)."""
    if not value:
        raise BadResponse(f"{url} did not send the {header} header", field=header)
    return pem_chain(urllib.parse.unquote(value).encode(), f"{url} ({header})")


def crl_der(body: bytes, url: str) -> bytes:
    """A CRL as DER, from DER, PEM or hex-encoded DER (vendors use each)."""
    try:
        return load_crl(body, "crl").public_bytes(serialization.Encoding.DER)
    except Malformed as exc:
        raise BadResponse(f"{url} did not return a CRL: {exc}", field="body") from exc


def json_object(body: bytes, url: str, key: str) -> dict[str, Any]:
    """``body`` is a JSON object with top-level ``key``."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadResponse(f"{url} did not return JSON: {exc}", field="body") from exc
    if not isinstance(obj, dict) or key not in obj:
        raise BadResponse(f"{url} returned JSON without {key!r}", field="body", expected=key)
    return obj
