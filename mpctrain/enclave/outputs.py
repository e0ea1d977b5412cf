"""Seal a finished job's outputs to every recipient and sign the receipt."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from mpctrain.enclave.events import EventSink
from mpctrain.enclave.identity import ENCLAVE_ID, EnclaveIdentity
from mpctrain.enclave.receipt import Receipt, output_digest, plaintext_digests, receipt_nonce, sign_receipt
from mpctrain.enclave.state import Job
from mpctrain.seal.stream import StreamSealer

OUTPUT_PURPOSE = "output"
OUTPUT_CHUNK = 1 << 20


@dataclass(frozen=True)
class SealedObject:
    """A sealed stream held for download: header, then frames in order."""

    header: bytes
    frames: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return len(self.header) + sum(len(f) for f in self.frames)


def output_object_id(name: str, recipient: str) -> str:
    return f"output/{name}/{recipient}"


def seal_for(identity: EnclaveIdentity, job_id: str, recipient: str, kem_alg: str, kem_public: bytes,
             name: str, data: bytes, chunk_size: int = OUTPUT_CHUNK) -> SealedObject:
    sealer = StreamSealer(sender=identity.sig, sender_id=ENCLAVE_ID, recipients=[(recipient, kem_alg, kem_public)],
                          purpose=OUTPUT_PURPOSE, job_id=job_id, object_id=output_object_id(name, recipient),
                          chunk_size=chunk_size, total_size=len(data))
    n = max(1, -(-len(data) // chunk_size))
    frames = tuple(sealer.seal_chunk(i, data[i * chunk_size:(i + 1) * chunk_size], i == n - 1) for i in range(n))
    return SealedObject(header=sealer.header_bytes, frames=frames)


def seal_outputs(job: Job, identity: EnclaveIdentity, outputs: Mapping[str, bytes], events: EventSink,
                 now: int | None = None) -> Receipt:
    """Seal each output to each recipient of the manifest; return the enclave-signed receipt."""
    sealed: dict[tuple[str, str], SealedObject] = {}
    for rid in job.manifest.recipients:
        spec = job.manifest.party(rid)
        for name, data in outputs.items():
            obj = seal_for(identity, job.job_id, rid, spec.kem_alg, spec.kem_public, name, data)
            sealed[(rid, name)] = obj
            events.emit("output.sealed", job_id=job.job_id, recipient=rid, name=name, size=obj.size,
                        digest=hashlib.sha256(obj.header).hexdigest())
    digests = plaintext_digests(outputs)
    bundle = identity.evidence(receipt_nonce(job.digest, output_digest(digests)))
    evidence = bundle.to_json()
    receipt = sign_receipt(identity.sig, job.job_id, job.digest, digests, evidence, bundle.digest(),
                           int(time.time() if now is None else now))
    with job.cond:
        job.outputs.update(sealed)
        job.receipt = receipt
    events.emit("receipt.signed", job_id=job.job_id, output_digest=receipt.output_digest.hex(),
                evidence_digest=receipt.evidence_digest.hex())
    return receipt
