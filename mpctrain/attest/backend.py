"""The two small interfaces every TEE backend implements, and the registry that finds them.

Like Trustee's verifier drivers: a backend turns evidence into claims (cryptographic checks and its
own policy knobs); the common checks (binding, measurement, debug, TCB) run once in ``verify``.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mpctrain.attest.errors import BackendNotAllowed

if TYPE_CHECKING:
    from mpctrain.attest.claims import Claims
    from mpctrain.attest.collateral import Collateral
    from mpctrain.attest.evidence import Evidence
    from mpctrain.attest.policy import BackendPolicy


@runtime_checkable
class Attester(Protocol):
    """Produces CPU evidence inside the TEE with the caller's 64 bytes as REPORT_DATA."""

    kind: str

    def attest(self, report_data: bytes) -> Evidence: ...


@runtime_checkable
class GpuAttester(Protocol):
    """Produces one GPU report per confidential GPU, each over the 32-byte nonce it is given."""

    kind: str

    def gpu_count(self) -> int: ...

    def attest_gpu(self, index: int, nonce: bytes) -> Evidence: ...


@runtime_checkable
class Verifier(Protocol):
    """Checks signatures, chain to a pinned root, validity at ``at`` and backend-specific policy.

    Returns claims; raises an ``AttestationError`` subclass naming the failed check. It does not
    compare REPORT_DATA, measurement, debug or minimum TCB: ``verify`` does that for every backend.
    """

    kind: str

    def verify(
        self, evidence: Evidence, *, policy: BackendPolicy, at: datetime, collateral: Collateral
    ) -> Claims: ...


VERIFIERS: dict[str, str] = {
    "sim": "mpctrain.attest.sim:SimVerifier",
    "snp": "mpctrain.attest.snp:SnpVerifier",
    "tdx": "mpctrain.attest.tdx:TdxVerifier",
    "nvidia-gpu": "mpctrain.attest.nvidia:NvidiaGpuVerifier",
}


def get_verifier(kind: str) -> Verifier:
    """Import the backend lazily so a party only loads the verifiers it uses."""
    target = VERIFIERS.get(kind)
    if target is None:
        raise BackendNotAllowed("unknown evidence kind", field="kind", expected=sorted(VERIFIERS), actual=kind)
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls()
