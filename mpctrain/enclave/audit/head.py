"""A job's signed head: where the enclave says a job's records end, so a relayed view cannot be cut short.

A job's view is served through the host, which can drop any records at the end of the stream; the job
chain only shows gaps *before* the last record a party receives. With a fresh nonce in ``GetLog`` the
enclave signs the job's last record in its own segment (``job_seq``, ``hash``) as it stands when the
request arrives; a party that verifies the signature with the key it attested and finds that record in
its verified view knows nothing was dropped up to that point (docs/audit.md, "A job's view").
"""

from __future__ import annotations

from dataclasses import dataclass

from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.sign import sign_fields, verify_fields

HEAD_DOMAIN = "mpctrain/v1/audit-job-head"
HEAD_NONCE_BYTES = 32
NO_RECORD = -1  # signed in place of job_seq when the segment holds no record of the job


@dataclass(frozen=True)
class JobHead:
    """The job's last record in ``segment`` (``job_seq`` None: none there), for the request's ``nonce``."""

    job_id: str
    segment: int
    job_seq: int | None
    hash: str
    nonce: bytes
    signature: bytes = b""

    def _fields(self) -> tuple[str, int, int, str, bytes]:
        return (self.job_id, self.segment, NO_RECORD if self.job_seq is None else self.job_seq, self.hash,
                self.nonce)

    def signed(self, key: IdentityKey) -> JobHead:
        """This head with the enclave's signature over every field (a new object)."""
        return JobHead(self.job_id, self.segment, self.job_seq, self.hash, self.nonce,
                       sign_fields(key, HEAD_DOMAIN, *self._fields()))

    def verify(self, sig_public: bytes) -> None:
        """Raise ``BadSignature`` unless ``sig_public``'s holder signed exactly these fields."""
        verify_fields(sig_public, self.signature, HEAD_DOMAIN, *self._fields())
