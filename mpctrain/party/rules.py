"""A party's local rules for approving a proposed job automatically (else it waits for `job approve`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mpctrain.jobs import JobManifest, ManifestError
from mpctrain.seal.keys import IdentityKey, KemKey


@dataclass(frozen=True)
class PartyRules:
    """What this party accepts: its schema, recipients, models, modes, and enclave measurements."""

    schema: Mapping[str, Any] = field(default_factory=dict)  # {} = accept the job's schema as is
    allowed_recipients: tuple[str, ...] = ()                 # () = anyone named by the job
    allowed_models: tuple[str, ...] = ("logreg", "mlp")
    allowed_modes: tuple[str, ...] = ("pooled",)
    allowed_measurements: tuple[str, ...] = ()               # hex; () = the party's own policy decides
    auto_approve: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> PartyRules:
        known = {"allowed_recipients", "allowed_models", "allowed_modes", "allowed_measurements", "auto_approve"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown [rules] keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(schema=dict(schema or {}),
                   allowed_recipients=tuple(d.get("allowed_recipients", ())),
                   allowed_models=tuple(d.get("allowed_models", ("logreg", "mlp"))),
                   allowed_modes=tuple(d.get("allowed_modes", ("pooled",))),
                   allowed_measurements=tuple(m.lower() for m in d.get("allowed_measurements", ())),
                   auto_approve=bool(d.get("auto_approve", True)))


def check_manifest(manifest: JobManifest, rules: PartyRules, party_id: str, identity: IdentityKey,
                   kem: KemKey) -> list[str]:
    """Every reason this party would refuse the job (empty: acceptable)."""
    problems: list[str] = []
    try:
        me = manifest.party(party_id)
    except ManifestError:
        return [f"the job does not name {party_id}"]
    if me.identity_public != identity.public_bytes():
        problems.append("the job names another identity key for this party")
    if me.kem_public != kem.public_bytes() or me.kem_alg != kem.alg:
        problems.append("the job names another output key for this party")
    if me.role != "data":
        problems.append(f"this party is a {me.role} in the job, not a data party")
    if manifest.mode not in rules.allowed_modes:
        problems.append(f"mode {manifest.mode!r} not in allowed modes {list(rules.allowed_modes)}")
    model = manifest.model.get("name")
    if model not in rules.allowed_models:
        problems.append(f"model {model!r} not in allowed models {list(rules.allowed_models)}")
    if rules.allowed_recipients:
        extra = [r for r in manifest.recipients if r not in rules.allowed_recipients]
        if extra:
            problems.append(f"recipients {extra} are not allowed to receive outputs of this party's data")
    if rules.schema:
        for key in ("label", "features"):
            if key in rules.schema and manifest.schema.get(key) != rules.schema[key]:
                problems.append(f"the job's schema {key} differs from this party's schema")
    if rules.allowed_measurements:
        pinned = _pinned_measurements(manifest.enclave_policy)
        if pinned is None:
            problems.append("the job's enclave policy accepts any measurement (report-only)")
        else:
            bad = [m for m in pinned if m not in rules.allowed_measurements]
            if bad:
                problems.append(f"the job's enclave policy allows measurements this party does not: {bad}")
    return problems


def _pinned_measurements(policy: Mapping[str, Any]) -> list[str] | None:
    out: list[str] = []
    for kind in policy.get("backends", ()):
        table = policy.get(kind, {})
        meas = table.get("measurements", "report-only") if isinstance(table, Mapping) else "report-only"
        if meas == "report-only":
            return None
        out += [str(m).lower() for m in meas]
    return out
