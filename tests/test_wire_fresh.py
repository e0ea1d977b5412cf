"""mpctrain/wire is regenerated from protos/ whenever a .proto changes; bundles survive the wire intact."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctrain.attest import BindingMismatch, BuildInfo, Evidence, EvidenceBundle, Malformed, Policy, verify
from mpctrain.attest.evidence import MAX_EVIDENCE_BYTES, MAX_GPUS
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.seal.binding import evidence_binding
from mpctrain.wire import attestation_pb2 as pb
from mpctrain.wire import attestation_pb2_grpc as pb_grpc
from mpctrain.wire.convert import MAX_BUNDLE_BYTES, bundle_from_bytes, bundle_from_proto, bundle_to_proto

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_protos.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


# --------------------------------------------------------------------------- freshness


def test_generated_code_is_fresh() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def _modified_protos(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    proto = copy / "mpctrain" / "v1" / "attestation.proto"
    text = proto.read_text()
    assert "bytes nonce = 1;" in text
    proto.write_text(text.replace("bytes nonce = 1;", "bytes nonce = 1;\n  string hint = 2;"))
    return copy


def test_check_fails_when_a_proto_changes_without_regeneration(tmp_path, capsys) -> None:
    protos = _modified_protos(tmp_path)
    assert gen.main(["--check", "--proto-dir", str(protos)]) == 1
    err = capsys.readouterr().err
    assert "stale" in err
    assert "differs attestation_pb2.py" in err


def test_check_fails_when_wire_was_generated_from_other_protos(tmp_path) -> None:
    out = tmp_path / "wire"
    gen.generate(_modified_protos(tmp_path), out)
    assert (out / "__init__.py").is_file()
    assert gen.main(["--check", "--out-dir", str(out)]) == 1
    assert gen.main(["--check", "--proto-dir", str(tmp_path / "protos"), "--out-dir", str(out)]) == 0


def test_new_and_removed_protos_are_noticed(tmp_path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    out = tmp_path / "wire"
    gen.generate(protos, out)
    extra = protos / "mpctrain" / "v1" / "extra.proto"
    extra.write_text('syntax = "proto3";\npackage mpctrain.v1;\nimport "mpctrain/v1/attestation.proto";\n'
                     "message Extra { Evidence ev = 1; }\n")
    assert "missing extra_pb2.py" in gen.stale(protos, out)
    gen.generate(protos, out)
    assert gen.stale(protos, out) == []
    text = (out / "extra_pb2.py").read_text()
    assert "from mpctrain.wire import attestation_pb2" in text
    assert "from mpctrain.v1" not in text
    extra.unlink()
    assert "left over extra_pb2.py (its .proto is gone)" in gen.stale(protos, out)
    gen.generate(protos, out)
    assert not (out / "extra_pb2.py").exists()


def test_every_proto_in_the_package_is_generated() -> None:
    protos = sorted(p.stem for p in (ROOT / "protos" / "mpctrain" / "v1").glob("*.proto"))
    assert "attestation" in protos and "common" in protos
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (ROOT / "mpctrain" / "wire" / f"{stem}{suffix}").is_file()


def test_protoc_errors_are_reported(tmp_path, capsys) -> None:
    bad = tmp_path / "protos"
    (bad / "mpctrain" / "v1").mkdir(parents=True)
    assert gen.main(["--proto-dir", str(bad), "--out-dir", str(tmp_path / "out")]) == 2
    assert "no .proto files" in capsys.readouterr().err
    (bad / "mpctrain" / "v1" / "broken.proto").write_text('syntax = "proto3";\nmessage {')
    assert gen.main(["--proto-dir", str(bad), "--out-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- conversion


def _keys() -> tuple[bytes, bytes]:
    return (X25519PrivateKey.generate().public_key().public_bytes_raw(),
            Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def _bundle(**over: object) -> EvidenceBundle:
    kem, sig = _keys()
    fields: dict[str, object] = {
        "cpu": Evidence("snp", b"\x01" * 1184, {"vcek": b"\x30\x82", "ask_ark": b"-----BEGIN"}),
        "gpus": (Evidence("nvidia-gpu", b"\x11\xe0" * 100, {"chain": b"pem"}),),
        "kem_public": kem,
        "sig_public": sig,
        "build": BuildInfo("0.1.0", b"\xaa" * 32, b"\xbb" * 32),
        "kem_alg": "x25519",
    }
    fields.update(over)
    return EvidenceBundle(**fields)  # type: ignore[arg-type]


def test_bundle_round_trips_through_protobuf_bytes() -> None:
    bundle = _bundle()
    raw = bundle_to_proto(bundle).SerializeToString()
    back = bundle_from_bytes(raw)
    assert back == bundle
    assert back.digest() == bundle.digest()
    no_gpu = _bundle(gpus=(), build=BuildInfo("v", b"\x01", b""))
    assert bundle_from_proto(bundle_to_proto(no_gpu)) == no_gpu


_SMALL = bundle_to_proto(_bundle(cpu=Evidence("sim", b"r" * 40, {"ak": b"a" * 8}))).SerializeToString()


def _msg() -> pb.EvidenceBundle:
    return bundle_to_proto(_bundle())


def _without(field: str) -> pb.EvidenceBundle:
    msg = _msg()
    msg.ClearField(field)
    return msg


def _mutate(fn) -> pb.EvidenceBundle:
    msg = _msg()
    fn(msg)
    return msg


@pytest.mark.parametrize(("name", "msg"), [
    ("no cpu", _without("cpu")),
    ("no keys", _without("keys")),
    ("no build", _without("build")),
    ("empty kind", _mutate(lambda m: m.cpu.ClearField("kind"))),
    ("long kind", _mutate(lambda m: setattr(m.cpu, "kind", "k" * 33))),
    ("empty data", _mutate(lambda m: m.cpu.ClearField("data"))),
    ("big data", _mutate(lambda m: setattr(m.cpu, "data", b"\x00" * (MAX_EVIDENCE_BYTES + 1)))),
    ("many certs", _mutate(lambda m: m.cpu.certs.update({f"c{i}": b"x" for i in range(17)}))),
    ("empty cert name", _mutate(lambda m: m.cpu.certs.update({"": b"x"}))),
    ("big cert", _mutate(lambda m: m.gpus[0].certs.update({"chain": b"x" * (MAX_EVIDENCE_BYTES + 1)}))),
    ("many gpus", _mutate(lambda m: m.gpus.extend([m.gpus[0]] * MAX_GPUS))),
    ("no kem alg", _mutate(lambda m: m.keys.ClearField("kem_alg"))),
    ("no kem key", _mutate(lambda m: m.keys.ClearField("kem_public"))),
    ("no sig key", _mutate(lambda m: m.keys.ClearField("sig_public"))),
    ("big key", _mutate(lambda m: setattr(m.keys, "kem_public", b"k" * 4097))),
    ("big digest", _mutate(lambda m: setattr(m.build, "build_digest", b"d" * 65))),
    ("big config digest", _mutate(lambda m: setattr(m.build, "config_digest", b"d" * 65))),
    ("long version", _mutate(lambda m: setattr(m.build, "version", "v" * 129))),
])
def test_out_of_bounds_messages_are_malformed(name, msg) -> None:
    with pytest.raises(Malformed):
        bundle_from_proto(msg)
    with pytest.raises(Malformed):
        bundle_from_bytes(msg.SerializeToString())


def test_wrong_message_type_is_malformed() -> None:
    with pytest.raises(Malformed, match="not an EvidenceBundle"):
        bundle_from_proto(pb.GetEvidenceRequest(nonce=b"x"))


@pytest.mark.parametrize("raw", [
    b"\xff\xff\xff\xff",
    b"\x0a\x05abc",  # truncated length-delimited field
    bytes(range(64)) + b"\x0a\xff\xff\xff\xff\x0f",
])
def test_garbage_bytes_are_malformed(raw) -> None:
    with pytest.raises(Malformed):
        bundle_from_bytes(raw)


def test_invalid_utf8_in_a_string_field_is_malformed() -> None:
    raw = _msg().SerializeToString()
    raw = raw.replace(b"\x0a\x03snp", b"\x0a\x03s\xc3\x28", 1)
    with pytest.raises(Malformed):
        bundle_from_bytes(raw)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=512))
def test_random_bytes_give_a_bundle_or_malformed(raw) -> None:
    try:
        bundle = bundle_from_bytes(raw)
    except Malformed:
        return
    assert isinstance(bundle, EvidenceBundle) and bundle.cpu.kind and bundle.kem_public


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), value=st.integers(min_value=1, max_value=255))
def test_mutated_bundles_give_a_bundle_or_malformed(position, value) -> None:
    raw = bytearray(_SMALL)
    raw[position % len(raw)] ^= value
    try:
        bundle_from_bytes(bytes(raw))
    except Malformed:
        pass


def test_oversized_bytes_are_refused_before_parsing() -> None:
    with pytest.raises(Malformed, match="too large"):
        bundle_from_bytes(b"\x00" * (MAX_BUNDLE_BYTES + 1))


# --------------------------------------------------------------------------- over real gRPC (loopback)


class _SimEnclave(pb_grpc.AttestationServicer):
    def __init__(self, attester: SimAttester) -> None:
        self.attester = attester
        self.kem, self.sig = _keys()
        self.build = BuildInfo("0.1.0", hashlib.sha256(b"build").digest(), b"cfg")

    def GetEvidence(self, request, context):
        if len(request.nonce) != 32:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nonce must be 32 bytes")
        binding = evidence_binding(request.nonce, self.kem, self.sig, self.build.build_digest)
        bundle = EvidenceBundle(cpu=self.attester.attest(binding), kem_public=self.kem, sig_public=self.sig,
                                build=self.build)
        return bundle_to_proto(bundle)


def test_get_evidence_over_loopback_grpc_verifies() -> None:
    root = SimRoot.generate()
    attester = SimAttester(root, config_digest=b"cfg")
    policy = Policy.from_dict({"backends": ["sim"],
                               "sim": {"roots": [root.sha256], "measurements": [attester.measurement.hex()]}})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AttestationServicer_to_server(_SimEnclave(attester), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AttestationStub(channel)
            nonce = os.urandom(32)
            bundle = bundle_from_proto(stub.GetEvidence(pb.GetEvidenceRequest(nonce=nonce), timeout=10))
            expected = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
            result = verify(bundle, expected, policy, datetime.now(UTC))
            assert result.cpu.measurement == attester.measurement
            other = evidence_binding(os.urandom(32), bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
            with pytest.raises(BindingMismatch):
                verify(bundle, other, policy, datetime.now(UTC))
            with pytest.raises(grpc.RpcError) as err:
                stub.GetEvidence(pb.GetEvidenceRequest(nonce=b"short"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None)
