"""Constants and the key set shared by the sealing tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpctrain.seal import IdentityKey, KemKey

NOW = 1_795_000_000
CHUNK = 64


@dataclass(frozen=True)
class Parties:
    sender: IdentityKey
    other_sender: IdentityKey
    enclave: KemKey
    enclave2: KemKey
    outsider: KemKey
    hybrid: KemKey

    def seal_kw(self, **over: Any) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            sender=self.sender, sender_id="hospital-a",
            recipients=[("enclave", "x25519", self.enclave.public_bytes())],
            purpose="shard", job_id="job-1", object_id="shard-0", chunk_size=CHUNK, created=NOW,
        )
        kw.update(over)
        return kw

    def open_kw(self, **over: Any) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            recipient_id="enclave", recipient_key=self.enclave, expected_sender_public=self.sender.public_bytes(),
            expected_purpose="shard", expected_job_id="job-1", expected_object_id="shard-0",
        )
        kw.update(over)
        return kw


def make_parties() -> Parties:
    return Parties(IdentityKey.generate(), IdentityKey.generate(), KemKey.generate(), KemKey.generate(),
                   KemKey.generate(), KemKey.generate("mlkem768-x25519"))
