"""Evidence as it travels: raw vendor bytes plus the collateral the attester had at hand.

Kept free of gRPC: the wire layer converts to and from these dataclasses, and files use the JSON form.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

from mpctrain.attest.errors import Malformed

MAX_EVIDENCE_BYTES = 1 << 20
MAX_GPUS = 16


@dataclass(frozen=True)
class Evidence:
    """One TEE's evidence: ``kind`` names the backend (``sim``, ``snp``, ``tdx``, ``nvidia-gpu``).

    ``data`` is the report/quote exactly as the hardware produced it; ``certs`` holds named
    certificates or collateral blobs shipped with it (e.g. ``vcek`` DER, ``chain`` PEM).
    """

    kind: str
    data: bytes
    certs: dict[str, bytes] = field(default_factory=dict)

    def to_json_obj(self) -> dict:
        return {
            "kind": self.kind,
            "data": base64.b64encode(self.data).decode(),
            "certs": {k: base64.b64encode(v).decode() for k, v in sorted(self.certs.items())},
        }

    @classmethod
    def from_json_obj(cls, obj: dict) -> Evidence:
        try:
            data = base64.b64decode(obj["data"], validate=True)
            certs = {str(k): base64.b64decode(v, validate=True) for k, v in obj.get("certs", {}).items()}
            kind = str(obj["kind"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Malformed(f"evidence JSON is not valid: {exc}") from exc
        if len(data) > MAX_EVIDENCE_BYTES:
            raise Malformed("evidence too large", field="data", expected=MAX_EVIDENCE_BYTES, actual=len(data))
        return cls(kind=kind, data=data, certs=certs)


@dataclass(frozen=True)
class BuildInfo:
    """What the aggregator says it runs.

    Only ``build_digest`` is bound into the evidence (REPORT_DATA); ``version`` and ``config_digest`` travel
    beside it and a host could change them, so they are labels: the configuration a party relies on is
    attested through the measurement (the simulated TEE measures code and config digest together).
    """

    version: str
    build_digest: bytes
    config_digest: bytes = b""

    def to_json_obj(self) -> dict[str, str]:
        return {
            "version": self.version,
            "build_digest": self.build_digest.hex(),
            "config_digest": self.config_digest.hex(),
        }


@dataclass(frozen=True)
class EvidenceBundle:
    """Everything ``GetEvidence`` returns: CPU evidence, GPU evidence, enclave public keys, build info."""

    cpu: Evidence
    kem_public: bytes
    sig_public: bytes
    build: BuildInfo
    kem_alg: str = "x25519"
    gpus: tuple[Evidence, ...] = ()

    def to_json(self) -> bytes:
        obj = {
            "cpu": self.cpu.to_json_obj(),
            "gpus": [g.to_json_obj() for g in self.gpus],
            "kem_alg": self.kem_alg,
            "kem_public": self.kem_public.hex(),
            "sig_public": self.sig_public.hex(),
            "build": self.build.to_json_obj(),
        }
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EvidenceBundle:
        if len(raw) > MAX_EVIDENCE_BYTES * (MAX_GPUS + 2):
            raise Malformed("evidence bundle too large", field="bundle", actual=len(raw))
        try:
            obj = json.loads(raw)
            gpus = tuple(Evidence.from_json_obj(g) for g in obj.get("gpus", []))
            if len(gpus) > MAX_GPUS:
                raise Malformed("too many GPU reports", field="gpus", expected=MAX_GPUS, actual=len(gpus))
            build = obj["build"]
            return cls(
                cpu=Evidence.from_json_obj(obj["cpu"]),
                gpus=gpus,
                kem_alg=str(obj.get("kem_alg", "x25519")),
                kem_public=bytes.fromhex(obj["kem_public"]),
                sig_public=bytes.fromhex(obj["sig_public"]),
                build=BuildInfo(
                    version=str(build["version"]),
                    build_digest=bytes.fromhex(build["build_digest"]),
                    config_digest=bytes.fromhex(build.get("config_digest", "")),
                ),
            )
        except Malformed:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:  # nesting bombs recurse
            raise Malformed(f"evidence bundle JSON is not valid: {exc}") from exc

    def digest(self) -> bytes:
        """SHA-256 over the canonical JSON: what receipts and the audit log cite."""
        return hashlib.sha256(self.to_json()).digest()
