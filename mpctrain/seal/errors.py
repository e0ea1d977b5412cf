"""Typed sealing errors: one class per way a key file, a wrapped key or a sealed stream can be refused.

Callers (the enclave data store, the party uploader, the CLI) branch on the class, so each failed check
has its own type; the message says what to do about it.
"""

from __future__ import annotations


class SealError(Exception):
    """Base of every sealing, key-file and signature failure."""


class TamperedChunk(SealError):
    """A chunk frame failed authentication or is out of place (modified, reordered, replayed, extra)."""


class TruncatedStream(SealError):
    """The stream ended before its final chunk, or holds fewer bytes than its header declares."""


class BadHeaderSignature(SealError):
    """The stream header's Ed25519 signature does not verify under the sender key it names."""


class WrongRecipient(SealError):
    """The data key cannot be unwrapped with this key: not addressed to it, or another wrap context."""


class UnexpectedSender(SealError):
    """The header is validly signed, but by a key other than the one the opener expects."""


class ContextMismatch(SealError):
    """Job id, object id or purpose in the header differ from what the opener expects."""


class StaleStream(SealError):
    """The header's creation time is outside the accepted window (replay of an old stream, or bad clock)."""


class MalformedStream(SealError):
    """Bytes that cannot be parsed as a stream header or frame file (garbage, bad lengths, over caps)."""


class StreamTooLarge(SealError):
    """A chunk or the whole stream exceeds the chunk size, the declared total or the opener's limit."""


class ChunkAlreadySealed(SealError):
    """The sealer was asked to seal a chunk index twice: that would reuse an AES-GCM nonce."""


class InsecureKeyFile(SealError):
    """A private key file is readable or writable by group/others."""


class KeyFormatError(SealError):
    """A key file or public key has the wrong type, length or encoding."""


class BadSignature(SealError):
    """A detached Ed25519 signature does not verify."""
