"""Request authentication: a party's identity key signs (method, request digest, time, session).

Every call but attestation, health and reflection is signed, reads included. The signature travels in
gRPC metadata. The server checks freshness against a window and refuses a session it has seen (replay).
Authorization (is this party named by the job?) is the caller's next step: an unknown or badly signed
caller is UNAUTHENTICATED, a known one outside the job PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message

from mpctrain.seal.errors import BadSignature
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.sign import sign_fields, verify_fields

AUTH_DOMAIN = "mpctrain/v1/request"
MD_PARTY = "x-mpctrain-party"
MD_TIME = "x-mpctrain-time"
MD_SESSION = "x-mpctrain-session"
MD_SIGNATURE = "x-mpctrain-signature-bin"
SESSION_BYTES = 16
DEFAULT_WINDOW_S = 300
DEFAULT_CACHE_MAX = 200_000
UNKNOWN_PARTY = "unknown party"  # start of the refusal for a party id no manifest names (yet)


class AuthError(Exception):
    """A request failed authentication or authorization; ``code`` is the gRPC status to return."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the party id it claimed and the key that signed."""

    party_id: str
    identity_public: bytes


def request_digest(request: Message) -> bytes:
    """SHA-256 of the deterministic serialisation: what the signature covers."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def auth_metadata(
    key: IdentityKey, party_id: str, method: str, request: Message, *, now: float | None = None
) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata a client attaches to one signed call, a read or a write (for a stream: over its opening message)."""
    ts = int((time.time() if now is None else now) * 1000)
    session = os.urandom(SESSION_BYTES).hex()
    sig = sign_fields(key, AUTH_DOMAIN, method, request_digest(request), ts, session, party_id)
    return ((MD_PARTY, party_id), (MD_TIME, str(ts)), (MD_SESSION, session), (MD_SIGNATURE, sig))


class RequestAuthenticator:
    """Checks request signatures, freshness and replay; thread-safe."""

    def __init__(self, window_s: int = DEFAULT_WINDOW_S, cache_max: int = DEFAULT_CACHE_MAX,
                 clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.cache_max = cache_max
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def authenticate(
        self,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        method: str,
        request: Message,
        identities: Callable[[str], Iterable[bytes]],
    ) -> Caller:
        """Return the caller, or raise AuthError(UNAUTHENTICATED) naming what is wrong."""
        md = {k: v for k, v in (metadata or ())}
        party_id, ts_raw, session, sig = (md.get(MD_PARTY), md.get(MD_TIME), md.get(MD_SESSION),
                                          md.get(MD_SIGNATURE))
        if not isinstance(party_id, str) or not isinstance(ts_raw, str) or not isinstance(session, str) \
                or not isinstance(sig, bytes):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"request lacks authentication metadata ({MD_PARTY}, {MD_TIME}, {MD_SESSION}, "
                            f"{MD_SIGNATURE}); sign it with the party's identity key")
        if len(party_id) > 64 or len(session) != 2 * SESSION_BYTES or len(sig) > 128 or len(ts_raw) > 20:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "malformed authentication metadata")
        try:
            ts = int(ts_raw)
        except ValueError:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "authentication time is not an integer") from None
        now = self._clock()
        if abs(now - ts / 1000) > self.window_s:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"request time is outside the {self.window_s}s freshness window: check the clock")
        keys = list(identities(party_id))
        if not keys:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"{UNKNOWN_PARTY} {party_id!r}")
        digest = request_digest(request)
        signer = None
        for public in keys:
            try:
                verify_fields(public, sig, AUTH_DOMAIN, method, digest, ts, session, party_id)
            except (BadSignature, ValueError):
                continue
            signer = public
            break
        if signer is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            f"request signature does not verify for party {party_id!r} "
                            "(wrong key, or the request was altered)")
        self._remember(party_id, session, now)
        return Caller(party_id=party_id, identity_public=signer)

    def _remember(self, party_id: str, session: str, now: float) -> None:
        with self._lock:
            key = (party_id, session)
            if key in self._seen:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "replayed request: this session was already used")
            if len(self._seen) >= self.cache_max:
                cutoff = now - 2 * self.window_s
                self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
                if len(self._seen) >= self.cache_max:
                    raise AuthError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests in the freshness window")
            self._seen[key] = now
