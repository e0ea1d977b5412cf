"""Detached Ed25519 signatures over domain-separated canonical fields (consents, receipts, requests, audit).

Every signature made here covers ``canonical(FIELDS_DOMAIN, domain, *fields)``: the fixed first field
keeps these signatures from ever being valid as a stream-header signature (and vice versa), and the
caller's ``domain`` keeps a consent signature from being replayed as, say, a request signature.
"""

from __future__ import annotations

from mpctrain.seal.binding import canonical
from mpctrain.seal.errors import BadSignature
from mpctrain.seal.keys import IdentityKey, verify_signature

FIELDS_DOMAIN = b"mpctrain/v1/signed-fields"

Field = bytes | str | int


def signed_payload(domain: str, *fields: Field) -> bytes:
    """The exact bytes :func:`sign_fields` signs (for audit tools that store or re-check them)."""
    if not isinstance(domain, str) or not domain:
        raise ValueError("domain must be a non-empty string naming what is signed, e.g. 'mpctrain/v1/consent'")
    return canonical(FIELDS_DOMAIN, domain, *fields)


def sign_fields(key: IdentityKey, domain: str, *fields: Field) -> bytes:
    """Sign ``fields`` under ``domain``; returns the 64-byte Ed25519 signature."""
    return key.sign(signed_payload(domain, *fields))


def verify_fields(public: bytes, signature: bytes, domain: str, *fields: Field) -> None:
    """Verify a :func:`sign_fields` signature; raises :class:`BadSignature` naming the domain."""
    try:
        verify_signature(public, signature, signed_payload(domain, *fields))
    except BadSignature as e:
        raise BadSignature(f"{domain}: {e}") from None
