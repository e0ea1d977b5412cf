"""Which attester the aggregator uses, from its config, and the composite evidence bundle it serves.

``attester = "auto"`` in aggregator.toml (``tee`` here) means "the hardware this VM runs on":
configfs-tsm with a known provider, else an error. It never falls back to simulation silently, because
simulated evidence protects nothing; the operator must write ``attester = "sim"`` to get it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpctrain.attest.backend import Attester, GpuAttester
from mpctrain.attest.configfs import DEFAULT_ROOT, CollectionError, ConfigfsTsmAttester, TsmFs
from mpctrain.attest.evidence import MAX_GPUS, BuildInfo, EvidenceBundle
from mpctrain.seal.binding import gpu_nonce

TEE_CHOICES = ("auto", "snp", "tdx", "sim")
GPU_CHOICES = ("auto", "off")
SIM_KEYS = frozenset({"root_dir", "config_digest", "debug", "tcb"})

log = logging.getLogger(__name__)


class SelectionError(CollectionError):
    """The configured TEE is not what this machine offers, or the ``tee``/``gpu``/``[sim]`` settings are wrong."""

    check = "attester-selection"


def select_attester(
    tee: str = "auto",
    *,
    sim: Mapping[str, Any] | None = None,
    configfs_root: str | Path = DEFAULT_ROOT,
    privlevel: int | None = None,
    fs: TsmFs | None = None,
) -> Attester:
    """The CPU attester for ``tee`` (``auto`` | ``snp`` | ``tdx`` | ``sim``).

    ``sim`` settings: ``root_dir`` (simulated vendor root, required), ``config_digest`` (bytes or hex,
    required: what the simulated measurement covers), ``debug`` (bool), ``tcb`` (name → version).
    """
    if tee not in TEE_CHOICES:
        raise SelectionError(f"unknown attester {tee!r}", field="tee", expected=list(TEE_CHOICES), actual=tee)
    if tee == "sim":
        log.warning('attester = "sim": simulated TEE evidence protects nothing; only policies pinning this '
                    "simulated root will accept it")
        return _sim_attester(sim or {})
    try:
        attester = ConfigfsTsmAttester(configfs_root, privlevel, fs=fs)
    except CollectionError as exc:
        if tee == "auto":
            raise SelectionError(
                f"no usable confidential-computing attestation interface ({exc}). If this machine is not an "
                "SEV-SNP or TDX guest and a simulation (no protection at all) is wanted, set attester = \"sim\" "
                "explicitly in aggregator.toml.",
                field="tee", expected="snp or tdx guest", actual="none") from exc
        raise SelectionError(f"attester = {tee!r} but configfs-tsm is not usable: {exc}", field="tee",
                             expected=tee, actual="none") from exc
    if tee != "auto" and attester.kind != tee:
        raise SelectionError(f"attester = {tee!r} but this VM is a {attester.kind} guest; fix the config",
                             field="tee", expected=tee, actual=attester.kind)
    return attester


def select_gpu_attester(gpu: str = "auto", *, nvml: Any = None) -> GpuAttester | None:
    """NVML GPU attester for ``gpu = "auto"`` when at least one CC-mode GPU is present, else None."""
    if gpu not in GPU_CHOICES:
        raise SelectionError(f"unknown gpu setting {gpu!r}", field="gpu", expected=list(GPU_CHOICES), actual=gpu)
    if gpu == "off":
        return None
    from mpctrain.attest.nvml import NvmlGpuAttester

    attester = NvmlGpuAttester(nvml)
    return attester if attester.gpu_count() > 0 else None


def collect_bundle(
    attester: Attester,
    gpu_attester: GpuAttester | None,
    binding: bytes,
    kem_alg: str,
    kem_public: bytes,
    sig_public: bytes,
    build: BuildInfo,
) -> EvidenceBundle:
    """CPU evidence over ``binding``; GPU i's evidence over ``gpu_nonce(binding, i)``; keys and build.

    ``binding`` is ``evidence_binding(nonce, kem_public, sig_public, build.build_digest)``: the caller
    computes it so the same value is what a party recomputes.
    """
    cpu = attester.attest(binding)
    gpus = []
    if gpu_attester is not None:
        count = gpu_attester.gpu_count()
        if count > MAX_GPUS:
            raise SelectionError("more confidential GPUs than a bundle may carry", field="gpus",
                                 expected=f"<={MAX_GPUS}", actual=count)
        gpus = [gpu_attester.attest_gpu(i, gpu_nonce(binding, i)) for i in range(count)]
    return EvidenceBundle(cpu=cpu, kem_public=kem_public, sig_public=sig_public, build=build, kem_alg=kem_alg,
                          gpus=tuple(gpus))


def _sim_attester(settings: Mapping[str, Any]) -> Attester:
    from mpctrain.attest.sim import SimAttester, SimRootError

    unknown = set(settings) - SIM_KEYS
    if unknown:
        raise SelectionError(f"unknown [sim] settings {sorted(unknown)}", field="sim",
                             expected=sorted(SIM_KEYS), actual=sorted(unknown))
    root_dir = settings.get("root_dir")
    if root_dir is None:
        raise SelectionError('attester = "sim" needs [sim] root_dir (create one: mpctrain attest sim-root --out DIR)',
                             field="sim.root_dir")
    digest = settings.get("config_digest")
    if isinstance(digest, str):
        try:
            digest = bytes.fromhex(digest)
        except ValueError as exc:
            raise SelectionError("sim config_digest is not hex", field="sim.config_digest") from exc
    if not isinstance(digest, bytes | bytearray) or not digest:
        raise SelectionError("sim config_digest (bytes or hex) is required: the measurement covers it",
                             field="sim.config_digest")
    debug = settings.get("debug", False)
    if not isinstance(debug, bool):
        raise SelectionError("sim debug must be true or false", field="sim.debug", actual=debug)
    tcb = settings.get("tcb")
    if tcb is not None and not isinstance(tcb, Mapping):
        raise SelectionError("sim tcb must be a table of component = version", field="sim.tcb")
    try:
        return SimAttester(Path(root_dir), config_digest=bytes(digest), debug=debug,
                           tcb=dict(tcb) if tcb is not None else None)
    except SimRootError as exc:
        raise SelectionError(str(exc), field="sim.root_dir", actual=str(root_dir)) from exc
    except ValueError as exc:
        raise SelectionError(f"sim settings rejected: {exc}", field="sim") from exc
