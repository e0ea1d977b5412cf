"""Vendor root pins (SHA-256 of the DER certificate), published by the vendors."""

from __future__ import annotations

AMD_ARK_SHA256 = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
NVIDIA_DEVICE_IDENTITY_CA_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"

DEFAULT_ROOTS: dict[str, tuple[str, ...]] = {
    "snp": tuple(AMD_ARK_SHA256.values()),
    "tdx": (INTEL_SGX_ROOT_CA_SHA256,),
    "nvidia-gpu": (NVIDIA_DEVICE_IDENTITY_CA_SHA256,),
}
