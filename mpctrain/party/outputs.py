"""Fetch a job's sealed outputs, open them with the party's KEM key, verify them against the receipt."""

from __future__ import annotations

from datetime import datetime

from mpctrain.attest import AttestationError, AttestationResult, EvidenceBundle, Policy, verify
from mpctrain.enclave.identity import ENCLAVE_ID
from mpctrain.enclave.outputs import OUTPUT_PURPOSE, output_object_id
from mpctrain.enclave.receipt import Receipt, ReceiptError, receipt_nonce, verify_receipt
from mpctrain.jobs import JobManifest
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import OutputError
from mpctrain.seal.binding import evidence_binding
from mpctrain.seal.errors import SealError
from mpctrain.seal.keys import KemKey
from mpctrain.seal.stream import StreamOpener

OUTPUT_NAMES = ("model", "metrics")
MAX_OUTPUT_BYTES = 1 << 30


def open_output(header: bytes, frames: list[tuple[int, bytes, bool]], *, recipient_id: str, kem: KemKey,
                enclave_sig_public: bytes, job_id: str, name: str) -> bytes:
    """Open one sealed output; the header must be signed by the attested enclave key."""
    try:
        opener = StreamOpener(header, recipient_id=recipient_id, recipient_key=kem,
                              expected_sender_public=enclave_sig_public, expected_purpose=OUTPUT_PURPOSE,
                              expected_job_id=job_id, expected_object_id=output_object_id(name, recipient_id),
                              max_total=MAX_OUTPUT_BYTES)
        chunks: dict[int, bytes] = {}
        for index, frame, last in frames:  # the opener refuses duplicates and a chunk past the final one
            chunks[index] = opener.open_chunk(index, frame, last)
        opener.finish()  # every chunk up to the final one is there
        out = b"".join(chunks[i] for i in range(len(chunks)))  # by index: frames may arrive in any order
    except SealError as exc:
        raise OutputError(f"output {name!r} does not open: {type(exc).__name__}: {exc}") from exc
    return out


def verify_receipt_evidence(receipt: Receipt, enclave: AttestationResult, policy: Policy,
                            at: datetime | None = None) -> AttestationResult:
    """The receipt's evidence must verify under ``policy`` with the nonce derived from this job and these
    outputs, and come from the same enclave key that was attested before the upload."""
    try:
        bundle = EvidenceBundle.from_json(receipt.evidence)
        nonce = receipt_nonce(receipt.job_digest, receipt.output_digest)
        binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
        result = verify(bundle, binding, policy, at)
    except AttestationError as exc:
        raise OutputError(f"receipt evidence does not verify ({exc.check}): {exc}") from exc
    if result.sig_public != enclave.sig_public:
        raise OutputError("receipt evidence comes from another enclave key than the one attested before upload")
    return result


def fetch_outputs(client: AggregatorClient, enclave: AttestationResult, manifest: JobManifest, recipient_id: str,
                  kem: KemKey, *, policy: Policy,
                  at: datetime | None = None) -> tuple[dict[str, bytes], Receipt]:
    """Fetch, open and verify every output of a job for ``recipient_id``; return them and the receipt.

    The evidence the receipt carries is verified under ``policy`` too (fresh, bound to these outputs): a
    receipt stripped of its evidence is refused, so ``policy`` is not optional.
    """
    receipt = client.get_receipt(manifest.job_id)
    opened: dict[str, bytes] = {}
    for name in OUTPUT_NAMES:
        header, frames = client.fetch_output(manifest.job_id, recipient_id, name)
        opened[name] = open_output(header, frames, recipient_id=recipient_id, kem=kem,
                                   enclave_sig_public=enclave.sig_public, job_id=manifest.job_id, name=name)
    try:
        verify_receipt(receipt, enclave.sig_public, manifest.digest(), opened)
    except ReceiptError as exc:
        raise OutputError(f"receipt check failed: {exc}") from exc
    verify_receipt_evidence(receipt, enclave, policy, at)
    return opened, receipt


__all__ = ["ENCLAVE_ID", "fetch_outputs", "open_output", "verify_receipt_evidence"]
