"""EvidenceBundle <-> protobuf, here so that ``mpctrain.attest`` stays free of protobuf and gRPC.

Everything decoded from the wire is size-checked before it becomes an ``EvidenceBundle``: a hostile
aggregator or relay can send anything, and the verifier should fail with ``Malformed``, not crash or
allocate without bound.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from mpctrain.attest.errors import Malformed
from mpctrain.attest.evidence import MAX_EVIDENCE_BYTES, MAX_GPUS, BuildInfo, Evidence, EvidenceBundle
from mpctrain.wire import attestation_pb2 as pb

MAX_KIND_CHARS = 32
MAX_CERTS = 16
MAX_CERT_NAME_CHARS = 64
MAX_CERT_BYTES = MAX_EVIDENCE_BYTES
MAX_KEY_BYTES = 4096  # ML-KEM-768 + X25519 hybrid public keys are ~1.2 KB
MAX_ALG_CHARS = 64
MAX_VERSION_CHARS = 128
MAX_DIGEST_BYTES = 64
MAX_BUNDLE_BYTES = MAX_EVIDENCE_BYTES * (MAX_GPUS + 2)


def evidence_to_proto(ev: Evidence) -> pb.Evidence:
    return pb.Evidence(kind=ev.kind, data=ev.data, certs=dict(ev.certs))


def bundle_to_proto(bundle: EvidenceBundle) -> pb.EvidenceBundle:
    """The message ``GetEvidence`` returns."""
    return pb.EvidenceBundle(
        cpu=evidence_to_proto(bundle.cpu),
        gpus=[evidence_to_proto(g) for g in bundle.gpus],
        keys=pb.EnclaveKeys(kem_alg=bundle.kem_alg, kem_public=bundle.kem_public, sig_public=bundle.sig_public),
        build=pb.BuildInfo(
            version=bundle.build.version,
            build_digest=bundle.build.build_digest,
            config_digest=bundle.build.config_digest,
        ),
    )


def evidence_from_proto(msg: pb.Evidence, where: str) -> Evidence:
    if not msg.kind or len(msg.kind) > MAX_KIND_CHARS:
        raise Malformed("evidence kind missing or too long", field=f"{where}.kind", actual=msg.kind[:MAX_KIND_CHARS])
    if not msg.data:
        raise Malformed("evidence carries no data", field=f"{where}.data")
    _bounded(msg.data, MAX_EVIDENCE_BYTES, f"{where}.data")
    if len(msg.certs) > MAX_CERTS:
        raise Malformed("too many certificates", field=f"{where}.certs", expected=MAX_CERTS, actual=len(msg.certs))
    certs: dict[str, bytes] = {}
    for name, blob in msg.certs.items():
        if not name or len(name) > MAX_CERT_NAME_CHARS:
            raise Malformed("certificate name empty or too long", field=f"{where}.certs", actual=name[:64])
        certs[name] = _bounded(blob, MAX_CERT_BYTES, f"{where}.certs.{name}")
    return Evidence(kind=msg.kind, data=bytes(msg.data), certs=certs)


def bundle_from_proto(msg: pb.EvidenceBundle) -> EvidenceBundle:
    """Check sizes and presence, then build the dataclass; ``Malformed`` on anything out of bounds."""
    if not isinstance(msg, pb.EvidenceBundle):
        raise Malformed("not an EvidenceBundle message", field="bundle", actual=type(msg).__name__)
    if not msg.HasField("cpu"):
        raise Malformed("bundle has no CPU evidence", field="cpu")
    if not msg.HasField("keys"):
        raise Malformed("bundle has no enclave keys", field="keys")
    if not msg.HasField("build"):
        raise Malformed("bundle has no build info", field="build")
    if len(msg.gpus) > MAX_GPUS:
        raise Malformed("too many GPU reports", field="gpus", expected=MAX_GPUS, actual=len(msg.gpus))
    keys, build = msg.keys, msg.build
    if not keys.kem_alg or len(keys.kem_alg) > MAX_ALG_CHARS:
        raise Malformed("KEM algorithm missing or too long", field="keys.kem_alg")
    if len(build.version) > MAX_VERSION_CHARS:
        raise Malformed("build version too long", field="build.version", actual=len(build.version))
    for name, value in (("keys.kem_public", keys.kem_public), ("keys.sig_public", keys.sig_public)):
        if not value:
            raise Malformed("enclave public key missing", field=name)
        _bounded(value, MAX_KEY_BYTES, name)
    _bounded(build.build_digest, MAX_DIGEST_BYTES, "build.build_digest")
    _bounded(build.config_digest, MAX_DIGEST_BYTES, "build.config_digest")
    return EvidenceBundle(
        cpu=evidence_from_proto(msg.cpu, "cpu"),
        gpus=tuple(evidence_from_proto(g, f"gpus[{i}]") for i, g in enumerate(msg.gpus)),
        kem_alg=keys.kem_alg,
        kem_public=bytes(keys.kem_public),
        sig_public=bytes(keys.sig_public),
        build=BuildInfo(
            version=build.version,
            build_digest=bytes(build.build_digest),
            config_digest=bytes(build.config_digest),
        ),
    )


def bundle_from_bytes(raw: bytes) -> EvidenceBundle:
    """Parse serialized ``EvidenceBundle`` bytes (e.g. from a file): bounded, ``Malformed`` on garbage."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise Malformed("evidence bundle too large", field="bundle", expected=MAX_BUNDLE_BYTES, actual=len(raw))
    msg = pb.EvidenceBundle()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise Malformed(f"evidence bundle is not a valid protobuf message: {exc}", field="bundle") from exc
    return bundle_from_proto(msg)


def _bounded(value: bytes, limit: int, name: str) -> bytes:
    if len(value) > limit:
        raise Malformed("field too large", field=name, expected=f"<={limit}", actual=len(value))
    return bytes(value)
