"""GPU evidence from the NVIDIA driver through NVML (``nvidia-ml-py``, module ``pynvml``).

Per GPU: ``nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)`` returns the SPDM
GET_MEASUREMENTS request ‖ response the GPU signed over our 32-byte nonce (exactly what
``mpctrain.attest.nvidia`` verifies), and ``nvmlDeviceGetConfComputeGpuCertificate(handle)`` the device
certificate chain (PEM). The NVML module is a constructor argument so tests can inject a fake one and
hosts without a GPU never import the real library.
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mpctrain.attest.configfs import CollectionError
from mpctrain.attest.errors import Malformed
from mpctrain.attest.evidence import MAX_EVIDENCE_BYTES, Evidence
from mpctrain.attest.nvidia import KIND, parse_report

log = logging.getLogger(__name__)

NONCE_BYTES = 32
NONCE_OFFSET = 4  # SPDM GET_MEASUREMENTS request: 11 E0 p1 p2, then the nonce
CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
DEVTOOLS_ON = 1  # NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
MAX_CHAIN_BYTES = 64 << 10


def load_pynvml() -> ModuleType | None:
    """The real ``pynvml`` module, or None when ``nvidia-ml-py`` is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class NvmlGpuAttester:
    """Implements ``mpctrain.attest.backend.GpuAttester`` over NVML.

    ``gpu_count()`` is 0 (never an exception) when NVML is missing, the driver is not loaded, or the
    system is not in confidential-computing mode: the aggregator then serves CPU-only evidence and
    a party's ``min_gpus`` decides. ``check_nonce`` refuses a report that does not answer the nonce
    asked for (a driver bug or a replay by the host), before it ever leaves the enclave.
    """

    kind = KIND

    def __init__(self, nvml: Any = None, *, check_nonce: bool = True, allow_devtools: bool = False) -> None:
        self._nvml = nvml if nvml is not None else load_pynvml()
        self.check_nonce = check_nonce
        self.allow_devtools = allow_devtools
        self._lock = threading.Lock()
        self._initialised = False
        self._count: int | None = None

    # ------------------------------------------------------------------ public

    def gpu_count(self) -> int:
        """Number of GPUs this attester can attest; 0 when NVML or CC mode is unavailable."""
        with self._lock:
            if self._count is None:
                self._count = self._discover()
            return self._count

    def attest_gpu(self, index: int, nonce: bytes) -> Evidence:
        """Evidence of GPU ``index`` over ``nonce`` (32 bytes): SPDM request ‖ response, chain PEM."""
        if not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_BYTES:
            raise CollectionError("GPU nonce must be exactly 32 bytes", field="nonce", expected=NONCE_BYTES,
                                  actual=len(nonce) if isinstance(nonce, bytes | bytearray) else None)
        count = self.gpu_count()
        if not 0 <= index < count:
            raise CollectionError("no confidential GPU with this index", field="index",
                                  expected=f"0..{count - 1}" if count else "no CC GPUs", actual=index)
        nvml = self._nvml
        with self._lock:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, bytes(nonce))
                cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            except Exception as exc:  # NVMLError and ctypes errors: the driver said no
                raise CollectionError(f"NVML could not produce GPU {index}'s attestation report: {exc}",
                                      field="nvml") from exc
        data = _sized(report, "attestationReport", "attestationReportSize", MAX_EVIDENCE_BYTES)
        try:
            parsed = parse_report(data)
        except Malformed as exc:
            raise CollectionError(f"GPU {index} returned a malformed SPDM report: {exc}", field="report") from exc
        if self.check_nonce and parsed.requester_nonce != bytes(nonce):
            raise CollectionError(f"GPU {index}'s report answers another nonce (stale or replayed)",
                                  field="nonce", expected=bytes(nonce), actual=parsed.requester_nonce)
        chain = _leaf_first_pem(_sized(cert, "attestationCertChain", "attestationCertChainSize", MAX_CHAIN_BYTES))
        return Evidence(kind=KIND, data=data, certs={"chain": chain})

    # ------------------------------------------------------------------ internals

    def _discover(self) -> int:
        nvml = self._nvml
        if nvml is None:
            log.info("nvidia-ml-py is not installed: no GPU evidence")
            return 0
        try:
            if not self._initialised:
                nvml.nvmlInit()
                self._initialised = True
            state = nvml.nvmlSystemGetConfComputeState()
            if int(state.ccFeature) != CC_FEATURE_ENABLED:
                log.info("GPUs are not in confidential-computing mode: no GPU evidence")
                return 0
            if int(getattr(state, "devToolsMode", 0)) == DEVTOOLS_ON and not self.allow_devtools:
                log.warning("GPU CC devtools mode is on (GPU memory readable by tools): no GPU evidence")
                return 0
            return int(nvml.nvmlDeviceGetCount())
        except Exception as exc:  # missing libnvidia-ml, driver not loaded, CC API unsupported
            log.info("NVML unavailable (%s): no GPU evidence", exc)
            return 0


def _sized(struct: Any, field: str, size_field: str, limit: int) -> bytes:
    """Bytes of an NVML output array, trimmed to the size NVML reports (bounded)."""
    try:
        raw = bytes(getattr(struct, field))
        size = int(getattr(struct, size_field))
    except (AttributeError, TypeError, ValueError) as exc:
        raise CollectionError(f"NVML returned no {field}", field=field) from exc
    if not 0 < size <= min(len(raw), limit):
        raise CollectionError(f"NVML {size_field} is out of range", field=size_field,
                              expected=f"1..{min(len(raw), limit)}", actual=size)
    return raw[:size]


def _leaf_first_pem(raw: bytes) -> bytes:
    """The device chain as PEM, leaf first (the verifier's order), whatever order NVML used."""
    try:
        certs = x509.load_pem_x509_certificates(raw.rstrip(b"\x00"))
    except ValueError as exc:
        raise CollectionError(f"NVML certificate chain is not PEM: {exc}", field="chain") from exc
    if len(certs) > 1 and certs[0].subject == certs[0].issuer:
        certs.reverse()
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
