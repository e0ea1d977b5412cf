"""Data-key wrapping with RFC 9180 HPKE (base mode) from ``cryptography``.

HPKE ``info`` carries the wrap context (purpose, job, object, sender), so a wrapped key lifted into
another job, object or purpose does not open. Base mode is sender-anonymous: the sender is
authenticated by the Ed25519 signature on the stream header, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke

from mpctrain.seal.binding import canonical
from mpctrain.seal.errors import KeyFormatError, WrongRecipient
from mpctrain.seal.keys import KEM_ALGS, KemKey, public_kem_key

WRAP_DOMAIN = b"mpctrain/v1/wrap"

SUITES: dict[str, hpke.Suite] = {
    "x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    "mlkem768-x25519": hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
# encapsulated key + AES-GCM tag: a wrapped 32-byte key is 32 + this many bytes.
WRAP_OVERHEAD = {"x25519": 32 + 16, "mlkem768-x25519": 1088 + 32 + 16}


@dataclass(frozen=True)
class WrapContext:
    """What a wrapped key is for; both sides must agree on every field or the unwrap fails."""

    purpose: str
    job_id: str
    object_id: str
    sender: str

    def info(self) -> bytes:
        return canonical(WRAP_DOMAIN, self.purpose, self.job_id, self.object_id, self.sender)


def _suite(alg: str) -> hpke.Suite:
    try:
        return SUITES[alg]
    except KeyError:
        raise KeyFormatError(f"unknown KEM algorithm {alg!r}; use one of {', '.join(KEM_ALGS)}") from None


def wrap_key(recipient_alg: str, recipient_public: bytes, key: bytes, ctx: WrapContext) -> bytes:
    """HPKE-seal ``key`` to the recipient: returns enc ‖ ciphertext (single-shot ``Suite.encrypt``)."""
    suite = _suite(recipient_alg)
    public = public_kem_key(recipient_alg, recipient_public)
    try:
        return suite.encrypt(bytes(key), public, info=ctx.info())
    except ValueError as e:  # e.g. a low-order X25519 point: the DH output is all zeros
        raise KeyFormatError(f"cannot wrap to this {recipient_alg} public key: {e}") from None


def unwrap_key(recipient: KemKey, wrapped: bytes, ctx: WrapContext) -> bytes:
    """Open a wrapped key; :class:`WrongRecipient` if it was wrapped to another key or another context."""
    suite = _suite(recipient.alg)
    try:
        return suite.decrypt(bytes(wrapped), recipient.hpke_private_key(), info=ctx.info())
    except (InvalidTag, ValueError):
        raise WrongRecipient(
            f"cannot unwrap the data key with {recipient.alg} key {recipient.key_id()}: it was wrapped to "
            f"another key, or for another purpose/job/object/sender than {ctx}"
        ) from None
