"""NVIDIA H100/H200 confidential-computing GPU evidence: SPDM parsing, device chain, RIMs, verifier."""

from mpctrain.attest.nvidia.rim import NVIDIA_RIM_ROOT_SHA256, Rim, verify_rim
from mpctrain.attest.nvidia.spdm import GpuReport, parse_report
from mpctrain.attest.nvidia.verifier import KIND, NvidiaGpuVerifier, NvidiaOptions, rim_collateral_names

__all__ = [
    "KIND",
    "NVIDIA_RIM_ROOT_SHA256",
    "GpuReport",
    "NvidiaGpuVerifier",
    "NvidiaOptions",
    "Rim",
    "parse_report",
    "rim_collateral_names",
    "verify_rim",
]
