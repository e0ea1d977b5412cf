"""NVML GPU attester (fake NVML module), attester selection, and the composite bundle through verify()."""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_configfs import ROOT, FakeKernel

import nvidia_synth as synth
from mpctrain.attest import (
    BindingMismatch,
    BuildInfo,
    Collateral,
    Evidence,
    EvidenceBundle,
    Policy,
    PolicyViolation,
    verify,
    verify_evidence,
)
from mpctrain.attest.backend import Attester, GpuAttester
from mpctrain.attest.configfs import CollectionError, ConfigfsTsmAttester
from mpctrain.attest.nvml import NvmlGpuAttester, load_pynvml
from mpctrain.attest.select import SelectionError, collect_bundle, select_attester, select_gpu_attester
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.seal.binding import evidence_binding, gpu_nonce

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

H100_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
BUILD = BuildInfo(version="0.1.0", build_digest=hashlib.sha256(b"build").digest(),
                  config_digest=hashlib.sha256(b"config").digest())
REPORT_SIZE = 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE
CHAIN_SIZE = 0x1400  # NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """The slice of ``pynvml`` the attester calls, with NVML's fixed-size ctypes output arrays."""

    report: Callable[[bytes], bytes] | bytes  # fixed bytes, or a function of the nonce
    chain_pem: bytes
    count: int = 1
    cc_feature: int = 1
    devtools: int = 0
    init_error: Exception | None = None
    nonces: list[bytes] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)
    inits: int = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlSystemGetConfComputeState(self) -> SimpleNamespace:
        return SimpleNamespace(environment=2, ccFeature=self.cc_feature, devToolsMode=self.devtools)

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        if not 0 <= index < self.count:
            raise NVMLError("Invalid Argument")
        self.handles.append(index)
        return ("handle", index)

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: object, nonce: bytes) -> SimpleNamespace:
        self.nonces.append(bytes(nonce))
        data = self.report(bytes(nonce)) if callable(self.report) else self.report
        buf = (ctypes.c_uint8 * REPORT_SIZE)(*data)
        return SimpleNamespace(isCecAttestationReportPresent=0, attestationReportSize=len(data),
                               attestationReport=buf)

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: object) -> SimpleNamespace:
        buf = (ctypes.c_uint8 * CHAIN_SIZE)(*self.chain_pem)
        return SimpleNamespace(attestationCertChainSize=len(self.chain_pem), attestationCertChain=buf,
                               certChainSize=0, certChain=b"")


@pytest.fixture(scope="module")
def h100(vectors: Path) -> tuple[bytes, bytes]:
    nv = vectors / "nvidia"
    return bytes.fromhex(nv.joinpath("h100_report.hex").read_text().strip()), nv.joinpath(
        "h100_cert_chain.pem").read_bytes()


@pytest.fixture(scope="module")
def device() -> synth.Chain:
    return synth.make_chain(leaf_ext=synth.composite_ext(b"\x42" * 48), prefix="Device")


@pytest.fixture(scope="module")
def sim_root_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimRoot]:
    d = tmp_path_factory.mktemp("simroot")
    root = SimRoot.generate()
    root.save(d)
    return d, root


def sim_settings(d: Path) -> dict[str, object]:
    return {"root_dir": d, "config_digest": BUILD.config_digest.hex(), "tcb": {"svn": 3}}


def keys() -> tuple[bytes, bytes]:
    return (X25519PrivateKey.generate().public_key().public_bytes_raw(),
            Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def policy(root: SimRoot, *, min_gpus: int = 0, gpu_roots: list[str] | None = None) -> Policy:
    nvidia: dict[str, object] = {"measurements": "report-only"}
    if gpu_roots is not None:
        nvidia["roots"] = gpu_roots
    return Policy.from_dict({"backends": ["sim"], "min_gpus": min_gpus,
                             "sim": {"roots": [root.sha256], "measurements": "report-only"}, "nvidia-gpu": nvidia})


# ------------------------------------------------------------------ NVML attester


def test_nvml_attester_returns_vector_and_passes_nonce_through(h100, vector_time) -> None:
    report, chain = h100
    nvml = FakeNvml(report, chain)
    gpu = NvmlGpuAttester(nvml)
    assert isinstance(gpu, GpuAttester) and gpu.kind == "nvidia-gpu"
    assert gpu.gpu_count() == 1
    ev = gpu.attest_gpu(0, H100_NONCE)
    assert nvml.nonces == [H100_NONCE] and nvml.handles == [0]
    assert ev.kind == "nvidia-gpu" and ev.data == report
    assert ev.certs["chain"].count(b"BEGIN CERTIFICATE") == 5
    claims = verify_evidence(ev, H100_NONCE, Policy.default(), vector_time, Collateral(), gpu=True)
    assert claims.details["driver_version"] == "550.90.07"


def test_nvml_attester_refuses_report_for_another_nonce(h100) -> None:
    report, chain = h100
    nvml = FakeNvml(report, chain)
    asked = bytes(range(32))
    with pytest.raises(CollectionError) as err:
        NvmlGpuAttester(nvml).attest_gpu(0, asked)
    assert nvml.nonces == [asked]  # the nonce NVML got is the one asked for ...
    assert err.value.field == "nonce" and err.value.actual == H100_NONCE  # ... the GPU answered another


def test_nvml_attester_signing_fake_answers_each_nonce(device) -> None:
    nvml = FakeNvml(lambda n: synth.gpu_evidence(device, n).data, device.pem, count=2)
    gpu = NvmlGpuAttester(nvml)
    for i in range(2):
        nonce = os.urandom(32)
        assert gpu.attest_gpu(i, nonce).data[4:36] == nonce
    assert nvml.handles == [0, 1] and nvml.inits == 1


def test_nvml_chain_root_first_is_reordered(h100) -> None:
    report, chain = h100
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certs = x509.load_pem_x509_certificates(chain)
    reversed_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in reversed(certs))
    ev = NvmlGpuAttester(FakeNvml(report, reversed_pem)).attest_gpu(0, H100_NONCE)
    assert x509.load_pem_x509_certificates(ev.certs["chain"])[0] == certs[0]


def test_gpu_count_zero_without_pynvml(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert load_pynvml() is None
    gpu = NvmlGpuAttester()
    assert gpu.gpu_count() == 0
    assert select_gpu_attester("auto") is None
    with pytest.raises(CollectionError):
        gpu.attest_gpu(0, bytes(32))


def test_gpu_count_zero_with_real_pynvml_and_no_driver() -> None:
    if load_pynvml() is None:
        pytest.fail("nvidia-ml-py is a pinned dependency and must import")
    # This machine has no NVIDIA driver: nvmlInit fails inside, and the count is 0, not an exception.
    if not Path("/dev/nvidiactl").exists():
        assert NvmlGpuAttester().gpu_count() == 0


@pytest.mark.parametrize("changes", [
    {"cc_feature": 0}, {"devtools": 1}, {"init_error": NVMLError("Driver Not Loaded")}, {"count": 0}])
def test_gpu_count_zero_when_cc_unavailable(h100, changes) -> None:
    nvml = FakeNvml(*h100, **changes)
    assert NvmlGpuAttester(nvml).gpu_count() == 0
    assert select_gpu_attester("auto", nvml=nvml) is None


def test_devtools_allowed_explicitly(h100) -> None:
    assert NvmlGpuAttester(FakeNvml(*h100, devtools=1), allow_devtools=True).gpu_count() == 1


@pytest.mark.parametrize("nonce", [b"", bytes(31), bytes(33), "x" * 32])
def test_nvml_bad_nonce_refused(h100, nonce) -> None:
    nvml = FakeNvml(*h100)
    with pytest.raises(CollectionError):
        NvmlGpuAttester(nvml).attest_gpu(0, nonce)  # type: ignore[arg-type]
    assert nvml.nonces == []


@pytest.mark.parametrize("index", [-1, 1, 99])
def test_nvml_bad_index(h100, index) -> None:
    with pytest.raises(CollectionError) as err:
        NvmlGpuAttester(FakeNvml(*h100)).attest_gpu(index, H100_NONCE)
    assert err.value.field == "index"


def test_nvml_errors_are_typed(h100) -> None:
    class Failing(FakeNvml):
        def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle, nonce):
            raise NVMLError("Not Supported")

    with pytest.raises(CollectionError, match="Not Supported"):
        NvmlGpuAttester(Failing(*h100)).attest_gpu(0, H100_NONCE)


def test_nvml_truncated_or_garbage_report(h100) -> None:
    report, chain = h100
    for bad in (report[:100], report[:-1], os.urandom(len(report))):
        with pytest.raises(CollectionError) as err:
            NvmlGpuAttester(FakeNvml(bad, chain)).attest_gpu(0, H100_NONCE)
        assert err.value.field == "report"


def test_nvml_size_fields_out_of_range(h100) -> None:
    report, chain = h100

    class Lying(FakeNvml):
        def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle, nonce):
            out = super().nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            out.attestationReportSize = REPORT_SIZE + 1
            return out

    with pytest.raises(CollectionError, match="attestationReportSize"):
        NvmlGpuAttester(Lying(report, chain)).attest_gpu(0, H100_NONCE)
    with pytest.raises(CollectionError, match="chain"):
        NvmlGpuAttester(FakeNvml(report, b"not a pem")).attest_gpu(0, H100_NONCE)


# ------------------------------------------------------------------ selection


def test_select_sim(sim_root_dir, caplog) -> None:
    d, _ = sim_root_dir
    with caplog.at_level("WARNING", logger="mpctrain.attest.select"):
        att = select_attester("sim", sim=sim_settings(d))
    assert "protects nothing" in caplog.text
    assert isinstance(att, SimAttester) and isinstance(att, Attester)
    assert att.kind == "sim" and att.tcb == {"svn": 3} and att.debug is False


@pytest.mark.parametrize("settings, match", [
    ({}, "root_dir"),
    ({"root_dir": "x"}, "config_digest"),
    ({"root_dir": "x", "config_digest": "zz"}, "hex"),
    ({"root_dir": "x", "config_digest": "aa", "debug": "yes"}, "debug"),
    ({"root_dir": "x", "config_digest": "aa", "tcb": [1]}, "tcb"),
    ({"root_dir": "x", "config_digest": "aa", "colour": 1}, "unknown"),
    ({"root_dir": "/nonexistent/root", "config_digest": "aa"}, "sim-root"),
])
def test_select_sim_bad_settings(settings, match) -> None:
    with pytest.raises(SelectionError, match=match):
        select_attester("sim", sim=settings)


def test_select_sim_bad_tcb_value(sim_root_dir) -> None:
    d, _ = sim_root_dir
    with pytest.raises(SelectionError, match="rejected"):
        select_attester("sim", sim={**sim_settings(d), "tcb": {"BAD NAME": 1}})


@pytest.mark.parametrize("tee", ["auto", "snp"])
def test_select_configfs_snp(tee, vectors) -> None:
    kernel = FakeKernel("sev_guest", (vectors / "snp" / "milan_v2_report.bin").read_bytes())
    att = select_attester(tee, configfs_root=ROOT, fs=kernel)
    assert isinstance(att, ConfigfsTsmAttester) and att.kind == "snp"


def test_select_configfs_wrong_kind(vectors) -> None:
    kernel = FakeKernel("tdx_guest", (vectors / "tdx" / "spr_v4_quote.dat").read_bytes())
    assert select_attester("tdx", configfs_root=ROOT, fs=kernel).kind == "tdx"
    with pytest.raises(SelectionError, match="tdx guest"):
        select_attester("snp", configfs_root=ROOT, fs=kernel)


def test_auto_never_falls_back_to_simulation(tmp_path) -> None:
    with pytest.raises(SelectionError, match=r'set attester = "sim" explicitly in aggregator\.toml') as err:
        select_attester("auto", configfs_root=tmp_path / "missing")
    assert err.value.check == "attester-selection"
    with pytest.raises(SelectionError, match="not usable"):
        select_attester("tdx", configfs_root=tmp_path / "missing")


def test_auto_with_unknown_provider_is_an_error() -> None:
    with pytest.raises(SelectionError, match="not an SEV-SNP or TDX"):
        select_attester("auto", configfs_root=ROOT, fs=FakeKernel("arm_cca_guest", b""))


@pytest.mark.parametrize("tee", ["", "SNP", "simulated", "azure"])
def test_unknown_tee(tee) -> None:
    with pytest.raises(SelectionError):
        select_attester(tee)


def test_select_gpu(h100) -> None:
    assert select_gpu_attester("off", nvml=FakeNvml(*h100)) is None
    assert isinstance(select_gpu_attester("auto", nvml=FakeNvml(*h100)), NvmlGpuAttester)
    with pytest.raises(SelectionError):
        select_gpu_attester("on")


# ------------------------------------------------------------------ bundles


def bundle_for(att: Attester, gpu: GpuAttester | None) -> tuple[EvidenceBundle, bytes]:
    kem, sig = keys()
    binding = evidence_binding(os.urandom(32), kem, sig, BUILD.build_digest)
    return collect_bundle(att, gpu, binding, "x25519", kem, sig, BUILD), binding


def test_cpu_only_bundle_verifies(sim_root_dir) -> None:
    d, root = sim_root_dir
    bundle, binding = bundle_for(select_attester("sim", sim=sim_settings(d)), None)
    assert bundle.gpus == ()
    bundle = EvidenceBundle.from_json(bundle.to_json())
    result = verify(bundle, binding, policy(root), datetime.now(UTC))
    assert result.cpu.backend == "sim" and result.cpu.report_data == binding and result.gpus == ()
    assert result.kem_public == bundle.kem_public and result.build == BUILD


def test_fixed_gpu_vector_in_bundle_is_binding_mismatch(sim_root_dir, h100) -> None:
    d, root = sim_root_dir
    nvml = FakeNvml(*h100)
    gpu = NvmlGpuAttester(nvml, check_nonce=False)
    bundle, binding = bundle_for(select_attester("sim", sim=sim_settings(d)), gpu)
    assert nvml.nonces == [gpu_nonce(binding, 0)]
    assert len(bundle.gpus) == 1 and bundle.gpus[0].data == h100[0]
    at = datetime.now(UTC)
    pol = policy(root, min_gpus=1)
    verify_evidence(bundle.cpu, binding, pol, at)  # the CPU part is fine on its own
    with pytest.raises(BindingMismatch) as err:
        verify(bundle, binding, pol, at)
    assert err.value.field == "report_data"
    assert err.value.expected == gpu_nonce(binding, 0) and err.value.actual == H100_NONCE


def test_default_nonce_check_stops_the_fixed_vector_at_collection(sim_root_dir, h100) -> None:
    d, _ = sim_root_dir
    with pytest.raises(CollectionError, match="another nonce"):
        bundle_for(select_attester("sim", sim=sim_settings(d)), NvmlGpuAttester(FakeNvml(*h100)))


def test_bundle_with_signing_fake_gpus_verifies(sim_root_dir, device) -> None:
    d, root = sim_root_dir
    nvml = FakeNvml(lambda n: synth.gpu_evidence(device, n).data, device.pem, count=3)
    gpu = select_gpu_attester("auto", nvml=nvml)
    assert gpu is not None
    bundle, binding = bundle_for(select_attester("sim", sim=sim_settings(d)), gpu)
    assert nvml.nonces == [gpu_nonce(binding, i) for i in range(3)]
    # the fake serves one device three times: every report verifies and is bound, but it is one GPU
    with pytest.raises(PolicyViolation, match="more than once"):
        verify(bundle, binding, policy(root, min_gpus=3, gpu_roots=[device.root_sha256]), datetime.now(UTC))
    single = EvidenceBundle(cpu=bundle.cpu, kem_public=bundle.kem_public, sig_public=bundle.sig_public,
                            build=bundle.build, kem_alg=bundle.kem_alg, gpus=bundle.gpus[:1])
    result = verify(single, binding, policy(root, min_gpus=1, gpu_roots=[device.root_sha256]), datetime.now(UTC))
    assert [g.report_data for g in result.gpus] == [gpu_nonce(binding, 0)]


def test_too_many_gpus_refused(sim_root_dir, device) -> None:
    d, _ = sim_root_dir
    nvml = FakeNvml(lambda n: synth.gpu_evidence(device, n).data, device.pem, count=17)
    with pytest.raises(SelectionError, match="more confidential GPUs"):
        bundle_for(select_attester("sim", sim=sim_settings(d)), NvmlGpuAttester(nvml))


def test_bundle_from_configfs_attester(vectors, vector_time) -> None:
    """The TDX quote from a fake configfs lands in the bundle unchanged (its binding is the vector's)."""
    quote = (vectors / "tdx" / "spr_v4_quote.dat").read_bytes()
    att = select_attester("auto", configfs_root=ROOT, fs=FakeKernel("tdx_guest", quote))
    bundle, _ = bundle_for(att, None)
    assert bundle.cpu == Evidence("tdx", quote, {})
