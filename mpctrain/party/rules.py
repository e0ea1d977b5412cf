"""A party's local rules for approving a proposed job automatically (else it waits for `job approve`).

A manifest is written by the proposer, and a party id in it is only a name: any key can stand behind
it. So a rule that names parties (``allowed_recipients``) holds only together with the keys this party
knows them by (``known_parties``, its address book). Otherwise a proposer could list a non-data party
called ``hospital-a`` with its own keys and receive the outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpctrain.jobs import JobManifest, ManifestError, PartySpec
from mpctrain.seal.errors import KeyFormatError
from mpctrain.seal.keys import IdentityKey, KemKey, load_identity_public, load_kem_public


@dataclass(frozen=True)
class KnownKeys:
    """The keys a party knows another party by: given inline, or read from its ``keys`` directory
    (``identity.pub`` and ``kem.pub``) when a job is checked, so keys made after this profile still count."""

    identity_public: bytes = b""
    kem_alg: str = ""
    kem_public: bytes = b""
    keys_dir: Path | None = None

    @classmethod
    def from_value(cls, name: str, value: Any, base: Path) -> KnownKeys:
        if isinstance(value, str):
            return cls(keys_dir=base / value)
        if isinstance(value, Mapping) and set(value) == {"identity", "kem"}:  # both: outputs go to the KEM key
            try:
                kem_alg, kem_hex = str(value["kem"]).split()
                return cls(identity_public=bytes.fromhex(str(value["identity"])), kem_alg=kem_alg,
                           kem_public=bytes.fromhex(kem_hex))
            except ValueError:
                pass
        raise ValueError(f"[rules.known_parties] {name!r}: give the path of its keys directory, or "
                         "{ identity = \"<hex>\", kem = \"x25519 <hex>\" } as in its identity.pub and kem.pub")

    def resolve(self) -> tuple[bytes, str, bytes]:
        """(identity key, KEM algorithm, KEM key); ``KeyFormatError`` when the files cannot be read."""
        if self.keys_dir is None:
            return self.identity_public, self.kem_alg, self.kem_public
        alg, kem = load_kem_public(self.keys_dir / "kem.pub")
        return load_identity_public(self.keys_dir / "identity.pub"), alg, kem

    def mismatch(self, spec: PartySpec) -> str | None:
        """Why ``spec`` is not the party this one knows, or None when the keys are the known ones."""
        try:
            identity, alg, kem = self.resolve()
        except (KeyFormatError, OSError) as exc:
            return f"the keys this party knows {spec.id!r} by cannot be read ({exc})"
        if spec.identity_public != identity:
            return f"the job names {spec.id!r} with another identity key than the one this party knows it by"
        if spec.kem_public != kem or spec.kem_alg != alg:
            return f"the job names {spec.id!r} with another output key than the one this party knows it by"
        return None


@dataclass(frozen=True)
class PartyRules:
    """What this party accepts: its schema, recipients, models, modes, and enclave measurements."""

    schema: Mapping[str, Any] = field(default_factory=dict)  # {} = accept the job's schema as is
    allowed_recipients: tuple[str, ...] = ()                 # () = anyone named by the job
    allowed_models: tuple[str, ...] = ("logreg", "mlp")
    allowed_modes: tuple[str, ...] = ("pooled",)
    allowed_measurements: tuple[str, ...] = ()               # hex; () = the party's own policy decides
    auto_approve: bool = True
    known_parties: Mapping[str, KnownKeys] = field(default_factory=dict)  # id -> the keys it is known by

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], schema: Mapping[str, Any] | None = None,
                  base: Path | None = None) -> PartyRules:
        known = {"allowed_recipients", "allowed_models", "allowed_modes", "allowed_measurements", "auto_approve",
                 "known_parties"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown [rules] keys {sorted(unknown)}; known: {sorted(known)}")
        parties = d.get("known_parties", {})
        if not isinstance(parties, Mapping):
            raise ValueError("[rules.known_parties] maps party ids to their keys")
        return cls(known_parties={str(k): KnownKeys.from_value(str(k), v, base or Path("."))
                                  for k, v in parties.items()},
                   schema=dict(schema or {}),
                   allowed_recipients=_strings(d, "allowed_recipients", ()),
                   allowed_models=_strings(d, "allowed_models", ("logreg", "mlp")),
                   allowed_modes=_strings(d, "allowed_modes", ("pooled",)),
                   allowed_measurements=tuple(m.lower() for m in _strings(d, "allowed_measurements", ())),
                   auto_approve=_flag(d, "auto_approve", True))


def _strings(d: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of strings: a bare string would become its letters, each an allowed name."""
    value = d.get(key, default)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"[rules] {key} must be a list of strings, e.g. {key} = [\"a\", \"b\"]; got {value!r}")
    return tuple(value)


def _flag(d: Mapping[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):  # "false" as a string would be true
        raise ValueError(f"[rules] {key} must be true or false (no quotes), got {value!r}")
    return value


def check_manifest(manifest: JobManifest, rules: PartyRules, party_id: str, identity: IdentityKey,
                   kem: KemKey) -> list[str]:
    """Every reason this party would refuse the job (empty: acceptable)."""
    return rule_problems(manifest, rules, party_id, identity, kem) + measurement_problems(manifest, rules)


def rule_problems(manifest: JobManifest, rules: PartyRules, party_id: str, identity: IdentityKey,
                  kem: KemKey) -> list[str]:
    """``check_manifest`` less ``measurement_problems``: what ``job approve --force`` may override."""
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
    for spec in manifest.parties:  # a known name must come with its known keys
        pinned = rules.known_parties.get(spec.id)
        why = pinned.mismatch(spec) if pinned is not None and spec.id != party_id else None
        if why:
            problems.append(why)
    if rules.allowed_recipients:
        extra = [r for r in manifest.recipients if r not in rules.allowed_recipients]
        if extra:
            problems.append(f"recipients {extra} are not allowed to receive outputs of this party's data")
        unpinned = [r for r in manifest.recipients
                    if r in rules.allowed_recipients and r != party_id and r not in rules.known_parties]
        if unpinned:
            problems.append(f"recipients {unpinned} are allowed by name only: a job can give a name any key, so pin "
                            "their keys in [rules.known_parties]")
    if rules.schema:
        for key in ("label", "features", "label_values"):  # label_values: a job without them takes any label
            if key in rules.schema and manifest.schema.get(key) != rules.schema[key]:
                problems.append(f"the job's schema {key} differs from this party's schema")
    return problems


def measurement_problems(manifest: JobManifest, rules: PartyRules) -> list[str]:
    """Where the job's enclave policy accepts measurements ``allowed_measurements`` does not: apart from the
    other rules, as ``job approve --force`` never overrides them (the job would run on an enclave refused here)."""
    if not rules.allowed_measurements:
        return []
    pinned = _pinned_measurements(manifest.enclave_policy)
    if pinned is None:
        return ["the job's enclave policy accepts any measurement (report-only)"]
    bad = [m for m in pinned if m not in rules.allowed_measurements]
    return [f"the job's enclave policy allows measurements this party does not: {bad}"] if bad else []


def recipients_unchecked(rules: PartyRules) -> str | None:
    """Why passing ``rules`` says nothing about who receives outputs of this party's data (None: it does).

    Without ``allowed_recipients`` any recipient a job names passes ``check_manifest``, so such rules never
    consent alone: ``run_party`` waits for a person, and ``job approve`` consents only with ``--force``.
    """
    if rules.allowed_recipients:
        return None
    return "its rules name no allowed_recipients, so they cannot approve who receives outputs"


def _pinned_measurements(policy: Mapping[str, Any]) -> list[str] | None:
    out: list[str] = []
    for kind in policy.get("backends", ()):
        table = policy.get(kind, {})
        meas = table.get("measurements", "report-only") if isinstance(table, Mapping) else "report-only"
        if meas == "report-only":
            return None
        out += [str(m).lower() for m in meas]
    return out
