"""The output receipt: the enclave's signature over (job digest, output digest, evidence digest, time).

A recipient verifies it with the ``sig_public`` it attested, recomputes the output digest from what it
opened, and the evidence digest from the evidence bundle carried in the receipt.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from mpctrain.seal.binding import canonical
from mpctrain.seal.errors import BadSignature
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.sign import sign_fields, verify_fields

RECEIPT_DOMAIN = "mpctrain/v1/receipt"
OUTPUT_DOMAIN = b"mpctrain/v1/output-digest"
RECEIPT_NONCE_DOMAIN = b"mpctrain/v1/receipt-nonce"


class ReceiptError(ValueError):
    """The receipt does not verify or does not match the job or the opened outputs."""


@dataclass(frozen=True)
class Receipt:
    job_id: str
    job_digest: bytes
    output_digest: bytes
    evidence_digest: bytes
    time: int
    signature: bytes
    outputs: tuple[tuple[str, bytes], ...]  # (name, SHA-256 of plaintext), sorted by name
    evidence: bytes = b""  # EvidenceBundle JSON attested with receipt_nonce(...)


def output_digest(outputs: Mapping[str, bytes]) -> bytes:
    """Digest over every output's name and the SHA-256 of its plaintext (names sorted)."""
    fields: list[bytes | str] = [OUTPUT_DOMAIN]
    for name in sorted(outputs):
        fields += [name, outputs[name]]
    return hashlib.sha256(canonical(*fields)).digest()


def plaintext_digests(outputs: Mapping[str, bytes]) -> dict[str, bytes]:
    return {name: hashlib.sha256(data).digest() for name, data in outputs.items()}


def receipt_nonce(job_digest: bytes, out_digest: bytes) -> bytes:
    """The 32-byte attestation nonce for the receipt's evidence: ties that evidence to these outputs."""
    return hashlib.sha256(canonical(RECEIPT_NONCE_DOMAIN, job_digest, out_digest)).digest()


def sign_receipt(key: IdentityKey, job_id: str, job_digest: bytes, digests: Mapping[str, bytes],
                 evidence: bytes, evidence_digest: bytes, time: int) -> Receipt:
    out = output_digest(digests)
    sig = sign_fields(key, RECEIPT_DOMAIN, job_id, job_digest, out, evidence_digest, time)
    return Receipt(job_id=job_id, job_digest=job_digest, output_digest=out, evidence_digest=evidence_digest,
                   time=time, signature=sig, outputs=tuple(sorted(digests.items())), evidence=evidence)


def verify_receipt(receipt: Receipt, sig_public: bytes, job_digest: bytes,
                   opened: Mapping[str, bytes] | None = None) -> None:
    """Check the enclave signature, the job, the evidence digest and (if given) the opened outputs."""
    try:
        verify_fields(sig_public, receipt.signature, RECEIPT_DOMAIN, receipt.job_id, receipt.job_digest,
                      receipt.output_digest, receipt.evidence_digest, receipt.time)
    except (BadSignature, ValueError) as exc:
        raise ReceiptError("receipt signature does not verify with the attested enclave key "
                           "(forged, altered, or from another enclave)") from exc
    if not hmac.compare_digest(receipt.job_digest, job_digest):
        raise ReceiptError("receipt is for another manifest than the one this party approved")
    if len({name for name, _ in receipt.outputs}) != len(receipt.outputs):
        raise ReceiptError("receipt lists an output name twice (an entry added to the signed list)")
    if hmac.compare_digest(receipt.output_digest, output_digest(dict(receipt.outputs))) is False:
        raise ReceiptError("receipt's output list does not match its signed output digest")
    if receipt.evidence and not hmac.compare_digest(hashlib.sha256(receipt.evidence).digest(),
                                                    receipt.evidence_digest):
        raise ReceiptError("receipt's evidence does not match its signed evidence digest")
    if opened is not None:
        mine = plaintext_digests(opened)
        listed = dict(receipt.outputs)
        for name, d in mine.items():
            if name not in listed or not hmac.compare_digest(listed[name], d):
                raise ReceiptError(f"output {name!r} differs from what the enclave signed")
