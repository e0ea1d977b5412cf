"""The TDX-specific policy knobs (``[tdx]`` table options), validated once so a typo cannot weaken a check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mpctrain.attest.policy import BackendPolicy, PolicyError
from mpctrain.attest.tdx.collateral import ALL_STATUSES, SW_HARDENING, UP_TO_DATE

DEFAULT_ACCEPTED = (UP_TO_DATE, SW_HARDENING)
ALLOWLIST_FIELDS = ("mrconfigid", "mrowner", "mrownerconfig", "mrseam")
MASK_FIELDS = ("td_attributes", "xfam")
RTMR_NAMES = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")
KNOWN = {
    "accepted_tcb_statuses", "require_collateral", "require_fresh_collateral", "max_collateral_age_days",
    "rtmrs", *ALLOWLIST_FIELDS, *MASK_FIELDS,
}


@dataclass(frozen=True)
class MaskRule:
    """``(value_u64 & mask) == value``; values are the little-endian u64 as Intel documents them."""

    mask: int
    value: int


@dataclass(frozen=True)
class TdxOptions:
    accepted_tcb_statuses: tuple[str, ...] = DEFAULT_ACCEPTED
    require_collateral: bool = True
    require_fresh_collateral: bool = False
    max_collateral_age_days: int | None = None
    rtmrs: Mapping[str, tuple[bytes, ...]] | None = None
    allowlists: Mapping[str, tuple[bytes, ...]] | None = None
    masks: Mapping[str, MaskRule] | None = None

    @property
    def fresh_required(self) -> bool:
        return self.require_fresh_collateral or self.max_collateral_age_days is not None


def _hex_list(value: Any, name: str, size: int) -> tuple[bytes, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise PolicyError(f"[tdx].{name} must be a non-empty list of hex strings")
    out = []
    for item in value:
        try:
            raw = bytes.fromhex(item)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"[tdx].{name} entry {item!r} is not hex") from exc
        if len(raw) != size:
            raise PolicyError(f"[tdx].{name} entry {item!r} must be {size} bytes")
        out.append(raw)
    return tuple(out)


def _u64(value: Any, name: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 16)
        except ValueError as exc:
            raise PolicyError(f"[tdx].{name} must be an integer or a hex string") from exc
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise PolicyError(f"[tdx].{name} must be a 64-bit unsigned value")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"[tdx].{name} must be true or false")
    return value


def check_options(options: Mapping[str, Any]) -> None:
    """Validate the ``[tdx]`` policy knobs when the policy loads (``Policy.from_dict``)."""
    tdx_options(BackendPolicy(kind="tdx", options=options))


def tdx_options(policy: BackendPolicy) -> TdxOptions:
    """Validate ``policy.options``; unknown keys are refused (a misspelt knob must not be ignored)."""
    opts = dict(policy.options)
    unknown = set(opts) - KNOWN
    if unknown:
        raise PolicyError(f"unknown [tdx] options {sorted(unknown)}; known: {sorted(KNOWN)}")
    accepted = opts.get("accepted_tcb_statuses", DEFAULT_ACCEPTED)
    if not isinstance(accepted, list | tuple) or not all(s in ALL_STATUSES for s in accepted):
        raise PolicyError(f"[tdx].accepted_tcb_statuses must list statuses from {list(ALL_STATUSES)}")
    age = opts.get("max_collateral_age_days")
    if age is not None and (not isinstance(age, int) or isinstance(age, bool) or age < 0):
        raise PolicyError("[tdx].max_collateral_age_days must be a non-negative integer")
    rtmrs = None
    if "rtmrs" in opts:
        table = opts["rtmrs"]
        if not isinstance(table, Mapping) or not table or set(table) - set(RTMR_NAMES):
            raise PolicyError(f"[tdx].rtmrs must be a table with keys among {list(RTMR_NAMES)}")
        rtmrs = {k: _hex_list(v, f"rtmrs.{k}", 48) for k, v in table.items()}
    allow = {f: _hex_list(opts[f], f, 48) for f in ALLOWLIST_FIELDS if f in opts}
    masks = {}
    for f in MASK_FIELDS:
        if f in opts:
            rule = opts[f]
            if not isinstance(rule, Mapping) or set(rule) != {"mask", "value"}:
                raise PolicyError(f"[tdx].{f} must be a table {{ mask = ..., value = ... }}")
            mask, value = _u64(rule["mask"], f"{f}.mask"), _u64(rule["value"], f"{f}.value")
            if value & ~mask:
                raise PolicyError(f"[tdx].{f}.value has bits outside its mask")
            masks[f] = MaskRule(mask, value)
    return TdxOptions(
        accepted_tcb_statuses=tuple(accepted),
        require_collateral=_bool(opts.get("require_collateral", True), "require_collateral"),
        require_fresh_collateral=_bool(opts.get("require_fresh_collateral", False), "require_fresh_collateral"),
        max_collateral_age_days=age,
        rtmrs=rtmrs,
        allowlists=allow or None,
        masks=masks or None,
    )
