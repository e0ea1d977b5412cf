"""Appraisal policy as data: a TOML file, never code.

```toml
backends = ["snp", "tdx"]          # CPU TEEs accepted
min_gpus = 0                       # GPUs in confidential-computing mode required
clock_skew_seconds = 300
collateral_dir = "collateral"      # optional, relative to the policy file

[snp]                              # one table per backend
roots = ["69d0...bcd"]             # SHA-256 of pinned root DER; default: the vendor's
measurements = ["7a1e...841f"]     # or "report-only"
allow_debug = false
min_tcb = { bl = 3, snp = 8 }
vmpl = 0                           # anything else is a backend-specific option
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpctrain.attest.roots import DEFAULT_ROOTS

REPORT_ONLY = "report-only"
MAX_CLOCK_SKEW_SECONDS = 86400  # more would quietly stretch every certificate and collateral validity window
_COMMON_KEYS = {"roots", "measurements", "allow_debug", "min_tcb"}
_TOP_KEYS = {"backends", "min_gpus", "clock_skew_seconds", "collateral_dir"}
# The size of a measurement per backend, so a truncated or mistyped one fails when the policy loads, not as
# an unexplained mismatch later: sim, SNP (MEASUREMENT) and TDX (MRTD) launch digests and the GPU's
# digest over its measurement blocks are all SHA-384.
MEASUREMENT_BYTES = {"sim": 48, "snp": 48, "tdx": 48, "nvidia-gpu": 48}
# Each backend's own keys (module, name of its set of key names, its validator). Imported only when a table
# sets such a key, so a party loads just the backends it uses; validated at load, so a typo or a wrong type
# is a policy error naming the file, never a failed attestation.
_BACKEND_OPTIONS = {
    "sim": ("mpctrain.attest.sim", "KNOWN_OPTIONS", "check_options"),
    "snp": ("mpctrain.attest.snp.verifier", "OPTIONS", "check_options"),
    "tdx": ("mpctrain.attest.tdx.options", "KNOWN", "check_options"),
    "nvidia-gpu": ("mpctrain.attest.nvidia.verifier", "KNOWN_OPTIONS", "check_options"),
}


class PolicyError(ValueError):
    """The policy file itself is wrong (unknown backend, bad hex, wrong type)."""


@dataclass(frozen=True)
class BackendPolicy:
    """Policy for one backend. ``measurements`` None means report-only (any value accepted)."""

    kind: str
    roots: tuple[str, ...] = ()
    measurements: tuple[bytes, ...] | None = ()
    allow_debug: bool = False
    min_tcb: Mapping[str, int] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    clock_skew_seconds: int = 300

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


@dataclass(frozen=True)
class Policy:
    backends: tuple[str, ...]
    tables: Mapping[str, BackendPolicy]
    min_gpus: int = 0
    clock_skew_seconds: int = 300
    collateral_dir: Path | None = None

    def backend(self, kind: str) -> BackendPolicy:
        found = self.tables.get(kind)
        if found is None:
            return BackendPolicy(
                kind=kind, roots=DEFAULT_ROOTS.get(kind, ()), clock_skew_seconds=self.clock_skew_seconds
            )
        return found

    def report_only(self, backends: Iterable[str]) -> list[str]:
        """Those of ``backends`` whose measurement this policy only reports: a pass says "genuine hardware",
        not "the expected code"."""
        return sorted({b for b in backends if self.backend(b).measurements is None})

    @classmethod
    def default(cls) -> Policy:
        """Real vendors only, vendor roots pinned, debug forbidden, measurements reported, no simulation."""
        return cls.from_dict(
            {
                "backends": ["snp", "tdx"],
                "snp": {"measurements": REPORT_ONLY},
                "tdx": {"measurements": REPORT_ONLY},
                "nvidia-gpu": {"measurements": REPORT_ONLY},
            }
        )

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"cannot read policy {path}: {exc}") from exc
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except PolicyError as exc:  # name the file: a party or operator may hold several policies
            raise PolicyError(f"policy {path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> Policy:
        from mpctrain.attest.backend import VERIFIERS

        raw_backends = data.get("backends", ())
        if not isinstance(raw_backends, list | tuple) or not all(isinstance(k, str) for k in raw_backends):
            raise PolicyError(f"policy key backends must be a list of backend names, got {raw_backends!r}")
        backends = tuple(raw_backends)
        for kind in backends:
            if kind not in VERIFIERS or kind == "nvidia-gpu":
                raise PolicyError(f"policy names unknown CPU backend {kind!r}; known: sim, snp, tdx")
        skew = _int(data.get("clock_skew_seconds", 300), "clock_skew_seconds")
        if skew > MAX_CLOCK_SKEW_SECONDS:
            raise PolicyError(f"clock_skew_seconds {skew} is over the maximum of {MAX_CLOCK_SKEW_SECONDS}: a skew "
                              "that large would accept expired certificates and collateral")
        tables: dict[str, BackendPolicy] = {}
        for kind in VERIFIERS:
            if kind in data:
                tables[kind] = _backend_policy(kind, data[kind], skew)
        coll = data.get("collateral_dir")
        coll_path = None
        if coll is not None:
            if not isinstance(coll, str) or not coll or "\x00" in coll:
                raise PolicyError(f"policy key collateral_dir must be a path string, got {coll!r}")
            coll_path = Path(coll) if base_dir is None else (base_dir / coll)
        unknown = set(data) - set(VERIFIERS) - _TOP_KEYS
        if unknown:
            raise PolicyError(f"unknown policy keys: {sorted(unknown)}; known: {', '.join(sorted(_TOP_KEYS))} and "
                              f"the backend tables {', '.join(f'[{k}]' for k in VERIFIERS)}")
        return cls(
            backends=backends,
            tables=tables,
            min_gpus=_int(data.get("min_gpus", 0), "min_gpus"),
            clock_skew_seconds=skew,
            collateral_dir=coll_path,
        )


def report_only_warning(backends: Sequence[str], where: str = "the policy file") -> str:
    """The one warning for evidence that passed a report-only policy (``attest verify``, ``job approve``, ...)."""
    return (f"the policy is report-only for {', '.join(backends)}: the measurement was NOT compared with an "
            "allowlist, so this could be any code on genuine hardware; pin measurements in "
            f"{where} before trusting it with data")


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PolicyError(f"policy key {name} must be a non-negative integer, got {value!r}")
    return value


def _check_backend_options(kind: str, options: Mapping[str, Any]) -> None:
    """Refuse unknown keys in ``[kind]`` listing every key it takes, then let the backend check its values."""
    import importlib

    module_name, names, check = _BACKEND_OPTIONS[kind]
    module = importlib.import_module(module_name)
    unknown = set(options) - set(getattr(module, names))
    if unknown:
        known = sorted(_COMMON_KEYS) + sorted(getattr(module, names))
        raise PolicyError(f"unknown key(s) {sorted(unknown)} in [{kind}]; known: {', '.join(known)}")
    getattr(module, check)(options)


def _backend_policy(kind: str, table: Any, skew: int) -> BackendPolicy:
    if not isinstance(table, Mapping):
        raise PolicyError(f"policy [{kind}] must be a table")
    roots = table.get("roots", DEFAULT_ROOTS.get(kind, ()))
    if not isinstance(roots, list | tuple) or not all(isinstance(r, str) for r in roots):
        raise PolicyError(f"[{kind}].roots must be a list of SHA-256 hex strings")
    roots = tuple(r.lower() for r in roots)
    for r in roots:
        if len(r) != 64 or any(c not in "0123456789abcdef" for c in r):
            raise PolicyError(f"[{kind}].roots entry {r!r} is not a SHA-256 hex digest")
    meas = table.get("measurements", ())
    measurements: tuple[bytes, ...] | None
    if meas == REPORT_ONLY:
        measurements = None
    elif isinstance(meas, list | tuple):
        try:
            measurements = tuple(bytes.fromhex(m) for m in meas)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"[{kind}].measurements must be hex strings: {exc}") from exc
        size = MEASUREMENT_BYTES.get(kind)
        for m, raw in zip(meas, measurements, strict=True):
            if size is not None and len(raw) != size:
                raise PolicyError(f"[{kind}].measurements entry {m!r} is {len(raw)} bytes; a {kind} measurement is "
                                  f"{size} bytes ({2 * size} hex digits): copy it whole")
    else:
        raise PolicyError(f'[{kind}].measurements must be a list of hex strings or "{REPORT_ONLY}"')
    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise PolicyError(f"[{kind}].allow_debug must be true or false")
    min_tcb = table.get("min_tcb", {})
    if not isinstance(min_tcb, Mapping):
        raise PolicyError(f"[{kind}].min_tcb must be a table of component = version")
    min_tcb = {str(k): _int(v, f"{kind}.min_tcb.{k}") for k, v in min_tcb.items()}
    options = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    if options:
        _check_backend_options(kind, options)
    return BackendPolicy(
        kind=kind,
        roots=roots,
        measurements=measurements,
        allow_debug=allow_debug,
        min_tcb=min_tcb,
        options=options,
        clock_skew_seconds=skew,
    )
