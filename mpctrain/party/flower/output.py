"""Opening the sealed final model of a federated job, as one of the manifest's recipients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord

from mpctrain.enclave.federated.protocol import PURPOSE_OUTPUT, open_content
from mpctrain.enclave.federated.strategy import output_object_id
from mpctrain.jobs import JobManifest
from mpctrain.seal.keys import KemKey


def open_output(frames: Sequence[bytes], *, manifest: JobManifest, recipient_id: str, kem: KemKey,
                enclave_sig_public: bytes, max_bytes: int = 1 << 30) -> tuple[ArrayRecord, dict[str, Any]]:
    """The final model and the run's facts (rounds, stop reason, ε per round); seal errors if not ours/authentic.

    ``enclave_sig_public`` is the signing key from this recipient's own attestation of the enclave.
    """
    content, ctx = open_content(
        frames, recipient_id=recipient_id, recipient_key=kem, sender_public=enclave_sig_public,
        purpose=PURPOSE_OUTPUT, job_id=manifest.job_id, object_id=output_object_id(manifest.digest().hex()),
        max_bytes=max_bytes,
    )
    arrays = content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    return arrays, ctx
