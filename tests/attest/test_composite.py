"""Composite bundles: simulated CPU evidence plus NVIDIA GPU evidence through the one ``verify()`` path.

GPU i must sign ``gpu_nonce(binding, i)``; the real H100 vector signs a nonce derived from no binding,
so in a bundle it is a replay. Synthetic GPU evidence (real SPDM, real P-384, test root pinned by the
policy) shows the accepting path and GPU-order swaps.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import nvidia_synth as synth
from mpctrain.attest import (
    BackendNotAllowed,
    BindingMismatch,
    BuildInfo,
    Collateral,
    Evidence,
    EvidenceBundle,
    Policy,
    PolicyViolation,
    UntrustedRoot,
    verify,
    verify_evidence,
)
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.seal.binding import evidence_binding, gpu_nonce

NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
BUILD = BuildInfo(version="0.1.0", build_digest=hashlib.sha256(b"build").digest(),
                  config_digest=hashlib.sha256(b"config").digest())


@pytest.fixture(scope="module")
def root(vector_time: datetime) -> SimRoot:
    return SimRoot.generate(now=vector_time - timedelta(days=30))


@pytest.fixture(scope="module")
def attester(root: SimRoot, vector_time: datetime) -> SimAttester:
    return SimAttester(root, config_digest=BUILD.config_digest, clock=lambda: vector_time)


@pytest.fixture(scope="module")
def device() -> synth.Chain:
    return synth.make_chain(leaf_ext=synth.composite_ext(b"\x42" * 48), prefix="Device")


@pytest.fixture(scope="module")
def h100(vectors: Path) -> Evidence:
    nv = vectors / "nvidia"
    return Evidence(kind="nvidia-gpu", data=bytes.fromhex(nv.joinpath("h100_report.hex").read_text().strip()),
                    certs={"chain": nv.joinpath("h100_cert_chain.pem").read_bytes()})


def make_policy(root: SimRoot, *, min_gpus: int = 0, gpu_roots: list[str] | None = None) -> Policy:
    nvidia: dict[str, object] = {"measurements": "report-only"}
    if gpu_roots is not None:
        nvidia["roots"] = gpu_roots
    return Policy.from_dict({
        "backends": ["sim"],
        "min_gpus": min_gpus,
        "sim": {"roots": [root.sha256], "measurements": "report-only"},
        "nvidia-gpu": nvidia,
    })


def make_bundle(attester: SimAttester, gpus=lambda binding: ()) -> tuple[EvidenceBundle, bytes]:
    kem = X25519PrivateKey.generate().public_key().public_bytes_raw()
    sig = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    binding = evidence_binding(os.urandom(32), kem, sig, BUILD.build_digest)
    bundle = EvidenceBundle(cpu=attester.attest(binding), kem_public=kem, sig_public=sig, build=BUILD,
                            gpus=tuple(gpus(binding)))
    return bundle, binding


def test_real_h100_through_verify_evidence(h100, vector_time) -> None:
    claims = verify_evidence(h100, NONCE, Policy.default(), vector_time, Collateral(), gpu=True)
    assert claims.backend == "nvidia-gpu" and claims.report_data == NONCE
    with pytest.raises(BindingMismatch):
        verify_evidence(h100, hashlib.sha256(NONCE).digest(), Policy.default(), vector_time, Collateral(), gpu=True)


def test_real_h100_in_a_bundle_is_a_replay(root, attester, h100, vector_time) -> None:
    bundle, binding = make_bundle(attester, lambda _: (h100,))
    with pytest.raises(BindingMismatch) as err:
        verify(bundle, binding, make_policy(root, min_gpus=1), vector_time)
    assert err.value.expected == gpu_nonce(binding, 0)
    assert err.value.actual == NONCE


def test_cpu_only_bundle_and_min_gpus(root, attester, vector_time) -> None:
    bundle, binding = make_bundle(attester)
    result = verify(bundle, binding, make_policy(root), vector_time)
    assert result.cpu.backend == "sim" and result.gpus == ()
    with pytest.raises(PolicyViolation) as err:
        verify(bundle, binding, make_policy(root, min_gpus=1), vector_time)
    assert err.value.field == "gpus"


def test_bundle_with_gpus_bound_to_the_binding_verifies(root, attester, device, vector_time) -> None:
    second = synth.sibling(device, synth.composite_ext(b"\x42" * 48), prefix="Device2")
    bundle, binding = make_bundle(
        attester, lambda b: [synth.gpu_evidence(d, gpu_nonce(b, i)) for i, d in enumerate((device, second))])
    bundle = EvidenceBundle.from_json(bundle.to_json())
    result = verify(bundle, binding, make_policy(root, min_gpus=2, gpu_roots=[device.root_sha256]), vector_time)
    assert [g.report_data for g in result.gpus] == [gpu_nonce(binding, 0), gpu_nonce(binding, 1)]
    assert all(g.backend == "nvidia-gpu" and g.product == "1010_0200_882" for g in result.gpus)
    with pytest.raises(PolicyViolation):
        verify(bundle, binding, make_policy(root, min_gpus=3, gpu_roots=[device.root_sha256]), vector_time)
    with pytest.raises(UntrustedRoot):
        verify(bundle, binding, make_policy(root, min_gpus=2), vector_time)


def test_one_gpu_cannot_fill_two_slots(root, attester, device, vector_time) -> None:
    """A host with one confidential GPU must not satisfy min_gpus = 2 by reporting it twice."""
    bundle, binding = make_bundle(
        attester, lambda b: [synth.gpu_evidence(device, gpu_nonce(b, i)) for i in range(2)])
    with pytest.raises(PolicyViolation) as err:
        verify(bundle, binding, make_policy(root, min_gpus=2, gpu_roots=[device.root_sha256]), vector_time)
    assert err.value.field == "gpus[1].device"


def test_swapped_or_replayed_gpu_reports_are_binding_mismatches(root, attester, device, vector_time) -> None:
    pol = make_policy(root, min_gpus=1, gpu_roots=[device.root_sha256])
    swapped, binding = make_bundle(
        attester, lambda b: [synth.gpu_evidence(device, gpu_nonce(b, i)) for i in (1, 0)])
    with pytest.raises(BindingMismatch):
        verify(swapped, binding, pol, vector_time)
    old, old_binding = make_bundle(attester, lambda b: [synth.gpu_evidence(device, gpu_nonce(b, 0))])
    fresh, binding = make_bundle(attester, lambda _: old.gpus)
    verify(old, old_binding, pol, vector_time)
    with pytest.raises(BindingMismatch):
        verify(fresh, binding, pol, vector_time)


def test_gpu_slot_holding_cpu_evidence_is_refused(root, attester, vector_time) -> None:
    bundle, binding = make_bundle(attester, lambda b: [attester.attest(b)])
    with pytest.raises(BackendNotAllowed):
        verify(bundle, binding, make_policy(root, min_gpus=1), vector_time)
