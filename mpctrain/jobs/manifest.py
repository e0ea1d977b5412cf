"""The job manifest: authored in TOML, serialised once to canonical JSON, digested over those bytes.

Every party signs the digest of the exact bytes it was shown; the enclave stores and serves those bytes,
so no party ever has to trust a re-serialisation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mpctrain.seal.errors import KeyFormatError
from mpctrain.seal.keys import KEM_ALGS, check_identity_public, public_kem_key

FORMAT = "mpctrain.job/v1"
MAX_MANIFEST_BYTES = 1 << 20
MAX_PARTIES = 256
MODES = ("pooled", "federated")
ROLES = ("data", "researcher")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
JOB_ID = _ID
"""What a job id (and a party id) may be: also safe as one path component."""
MAX_DELTA = 1e-3
"""Largest DP delta a job may set (also ``train.dp.MAX_DELTA``). Delta is the chance the epsilon guarantee fails
outright, so it must sit well below 1/rows; 1e-3 is the loosest that means anything for a 1000-row table."""
MIN_VAL_FRACTION = 0.05
"""Smallest ``val_fraction`` of a pooled job without DP: public metrics must average over many rows (the enclave
also requires ``MIN_VAL_ROWS`` overall and per party once it sees the shards)."""
DP_PUBLIC_METRICS = ("epsilon_spent",)
"""What a pooled DP job may make public: the privacy accounting. Every other metric is computed from the
parties' rows without accounted noise."""


class ManifestError(ValueError):
    """The manifest is malformed or inconsistent; the message names the field."""


@dataclass(frozen=True)
class PartySpec:
    """A party of the job: ``identity_public`` authenticates it, ``kem_public`` is where its outputs go."""

    id: str
    role: str
    identity_public: bytes
    kem_alg: str
    kem_public: bytes

    def to_obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "identity_public": self.identity_public.hex(),
            "kem_alg": self.kem_alg,
            "kem_public": self.kem_public.hex(),
        }


@dataclass(frozen=True)
class JobManifest:
    job_id: str
    mode: str
    proposer: str
    parties: tuple[PartySpec, ...]
    quorum: int
    schema: Mapping[str, Any]
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    recipients: tuple[str, ...]
    enclave_policy: Mapping[str, Any]
    expires: int
    privacy: Mapping[str, Any] = field(default_factory=dict)
    public_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    # -- queries -------------------------------------------------------------------------------
    def data_parties(self) -> tuple[PartySpec, ...]:
        return tuple(p for p in self.parties if p.role == "data")

    def party(self, party_id: str) -> PartySpec:
        for p in self.parties:
            if p.id == party_id:
                return p
        raise ManifestError(f"party {party_id!r} is not named in job {self.job_id!r}")

    def has_party(self, party_id: str) -> bool:
        return any(p.id == party_id for p in self.parties)

    def party_by_identity(self, identity_public: bytes) -> PartySpec | None:
        for p in self.parties:
            if p.identity_public == identity_public:
                return p
        return None

    def expired(self, now: datetime | None = None) -> bool:
        """``expires`` is a Unix time; a naive ``now`` is UTC (not local time, which would shift expiry)."""
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.timestamp() >= self.expires

    # -- canonical form ------------------------------------------------------------------------
    def to_obj(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "job_id": self.job_id,
            "mode": self.mode,
            "proposer": self.proposer,
            "parties": [p.to_obj() for p in self.parties],
            "quorum": self.quorum,
            "schema": self.schema,
            "model": self.model,
            "training": self.training,
            "privacy": self.privacy,
            "recipients": list(self.recipients),
            "public_metrics": list(self.public_metrics),
            "enclave_policy": self.enclave_policy,
            "expires": self.expires,
        }

    def to_bytes(self) -> bytes:
        return _canonical_json(self.to_obj())

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, raw: bytes) -> JobManifest:
        """Parse canonical bytes; non-canonical input is refused so every holder digests the same bytes."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; nesting bombs recurse
            raise ManifestError(f"manifest is not JSON: {exc}") from exc
        manifest = cls.from_obj(obj)
        if manifest.to_bytes() != raw:
            raise ManifestError("manifest bytes are not in canonical form (sorted keys, compact separators)")
        return manifest

    @classmethod
    def from_obj(cls, obj: Any) -> JobManifest:
        if not isinstance(obj, dict):
            raise ManifestError("manifest must be an object")
        if obj.get("format") != FORMAT:
            raise ManifestError(f"manifest format must be {FORMAT!r}, got {obj.get('format')!r}")
        try:
            parties_raw = obj["parties"]
            if not isinstance(parties_raw, list):
                raise ManifestError("parties must be a list")
            parties = tuple(
                PartySpec(
                    id=_str(p["id"], "parties.id"),
                    role=_str(p["role"], "parties.role"),
                    identity_public=_hex(p["identity_public"], "parties.identity_public"),
                    kem_alg=_str(p["kem_alg"], "parties.kem_alg"),
                    kem_public=_hex(p["kem_public"], "parties.kem_public"),
                )
                for p in parties_raw
            )
            return cls(
                job_id=_str(obj["job_id"], "job_id"),
                mode=_str(obj["mode"], "mode"),
                proposer=_str(obj["proposer"], "proposer"),
                parties=parties,
                quorum=_int(obj["quorum"], "quorum"),
                schema=_table(obj["schema"], "schema"),
                model=_table(obj["model"], "model"),
                training=_table(obj["training"], "training"),
                privacy=_table(obj.get("privacy", {}), "privacy"),
                recipients=tuple(_str(r, "recipients") for r in _list(obj["recipients"], "recipients")),
                public_metrics=tuple(
                    _str(m, "public_metrics") for m in _list(obj.get("public_metrics", []), "public_metrics")
                ),
                enclave_policy=_table(obj["enclave_policy"], "enclave_policy"),
                expires=_int(obj["expires"], "expires"),
            )
        except KeyError as exc:
            raise ManifestError(f"manifest lacks required field {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise ManifestError(f"manifest has a field of the wrong type: {exc}") from exc

    # -- authoring -----------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path) -> JobManifest:
        """Read the authoring format; ``*_file`` keys are resolved relative to the TOML file."""
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ManifestError(f"cannot read job file {path}: {exc}") from exc
        try:
            return cls.from_authoring(doc, base_dir=path.parent)
        except ManifestError as exc:  # name the file the mistake is in
            raise ManifestError(f"{path}: {exc}") from exc

    @classmethod
    def from_authoring(cls, doc: Mapping[str, Any], base_dir: Path = Path(".")) -> JobManifest:
        """Build from the authoring form; a hand-written value of the wrong shape is a ``ManifestError``."""
        try:
            obj = cls._authoring_obj(doc, base_dir)
        except ManifestError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"job file has a value of the wrong type or form: {exc}") from exc
        return cls.from_obj(json.loads(_canonical_json(obj)))

    @staticmethod
    def _authoring_obj(doc: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
        def load_key(p: Mapping[str, Any], name: str) -> str:
            if name in p:
                return str(p[name])
            fname = p.get(f"{name}_file")
            if fname is None:
                raise ManifestError(f"party {p.get('id')!r} needs {name} or {name}_file")
            try:
                return _read_pub_hex(base_dir / str(fname))
            except OSError as exc:
                raise ManifestError(f"party {p.get('id')!r}: cannot read {name}_file {fname}: {exc}") from exc

        def load_table(name: str) -> dict[str, Any]:
            table = dict(doc.get(name, {}))
            fname = table.pop("file", None)
            if fname is not None:
                try:
                    loaded = tomllib.loads((base_dir / str(fname)).read_text())
                except (OSError, tomllib.TOMLDecodeError) as exc:
                    raise ManifestError(f"cannot read [{name}] file {fname}: {exc}") from exc
                loaded.update(table)
                table = loaded
            return table

        parties = []
        for p in doc.get("parties", []):
            kem_pub = load_key(p, "kem_public")
            kem_alg = p.get("kem_alg")
            if " " in kem_pub:  # "alg hex" form written by `mpctrain keys generate`
                kem_alg_file, kem_pub = kem_pub.split(" ", 1)
                kem_alg = kem_alg or kem_alg_file
            parties.append(
                {
                    "id": p.get("id"),
                    "role": p.get("role", "data"),
                    "identity_public": load_key(p, "identity_public"),
                    "kem_alg": kem_alg or "x25519",
                    "kem_public": kem_pub.strip(),
                }
            )
        expires = doc.get("expires")
        if isinstance(expires, datetime):
            expires = int(expires.replace(tzinfo=expires.tzinfo or UTC).timestamp())
        elif expires is None and "expires_in_days" in doc:
            days = doc["expires_in_days"]
            if isinstance(days, bool) or not isinstance(days, int) or not 0 < days <= 3660:
                raise ManifestError(f"expires_in_days must be a whole number of days in 1..3660, got {days!r}")
            expires = int(datetime.now(UTC).timestamp()) + 86400 * days
        obj = {
            "format": FORMAT,
            "job_id": doc.get("job_id"),
            "mode": doc.get("mode"),
            "proposer": doc.get("proposer"),
            "parties": parties,
            "quorum": doc.get("quorum", len([p for p in parties if p["role"] == "data"])),
            "schema": load_table("schema"),
            "model": load_table("model"),
            "training": load_table("training"),
            "privacy": load_table("privacy"),
            "recipients": doc.get("recipients", [p["id"] for p in parties]),
            "public_metrics": doc.get("public_metrics", []),
            "enclave_policy": load_table("enclave_policy"),
            "expires": expires,
        }
        return obj


def _read_pub_hex(path: Path) -> str:
    text = path.read_text().strip()
    return text.splitlines()[0].strip() if text else ""


def _canonical_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest holds a value JSON cannot carry exactly: {exc}") from exc


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(f"{name} must be a string, got {type(v).__name__}")
    return v


def _int(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ManifestError(f"{name} must be an integer, got {v!r}")
    return v


def _list(v: Any, name: str) -> list:
    if not isinstance(v, list):
        raise ManifestError(f"{name} must be a list")
    return v


def _table(v: Any, name: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(f"{name} must be a table")
    return v


def _hex(v: Any, name: str) -> bytes:
    try:
        return bytes.fromhex(_str(v, name))
    except ValueError as exc:
        raise ManifestError(f"{name} must be hex: {exc}") from exc


def _validate(m: JobManifest) -> None:
    if not _ID.fullmatch(m.job_id):
        raise ManifestError(f"job_id {m.job_id!r} must match {_ID.pattern}")
    if m.mode not in MODES:
        raise ManifestError(f"mode must be one of {MODES}, got {m.mode!r}")
    if not m.parties or len(m.parties) > MAX_PARTIES:
        raise ManifestError(f"a job needs 1..{MAX_PARTIES} parties, got {len(m.parties)}")
    ids = [p.id for p in m.parties]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"party ids must be unique: {ids}")
    keys = [p.identity_public for p in m.parties]
    if len(set(keys)) != len(keys):
        raise ManifestError("two parties share one identity key")
    for p in m.parties:
        if not _ID.fullmatch(p.id):
            raise ManifestError(f"party id {p.id!r} must match {_ID.pattern}")
        if p.role not in ROLES:
            raise ManifestError(f"party {p.id}: role must be one of {ROLES}, got {p.role!r}")
        try:
            check_identity_public(p.identity_public)
        except KeyFormatError as exc:
            raise ManifestError(f"party {p.id}: identity_public is not a usable Ed25519 key: {exc}") from exc
        if p.kem_alg not in KEM_ALGS:
            raise ManifestError(f"party {p.id}: kem_alg must be one of {KEM_ALGS}, got {p.kem_alg!r}")
        try:  # checked here, not when outputs are sealed at the end of training
            public_kem_key(p.kem_alg, p.kem_public)
        except KeyFormatError as exc:
            raise ManifestError(f"party {p.id}: kem_public is not a valid {p.kem_alg} public key: {exc}") from exc
    n_data = len(m.data_parties())
    if n_data == 0:
        raise ManifestError("a job needs at least one data party")
    if not 1 <= m.quorum <= n_data:
        raise ManifestError(f"quorum must be between 1 and the {n_data} data parties, got {m.quorum}")
    for r in m.recipients:
        if r not in ids:
            raise ManifestError(f"recipient {r!r} is not a party of the job")
    if m.proposer not in ids:
        raise ManifestError(f"proposer {m.proposer!r} is not a party of the job")
    if m.expires <= 0:
        raise ManifestError("expires must be a positive unix time")
    if not isinstance(m.enclave_policy, Mapping) or not m.enclave_policy.get("backends"):
        raise ManifestError("enclave_policy must name the accepted backends (the policy parties approve)")
    if m.privacy:
        _validate_delta(m.privacy)
        _validate_dp_public(m)
    if m.mode == "federated":
        _validate_flower(m.training.get("flower"))
        if "sample_rate" in m.privacy:
            raise ManifestError("[privacy] sample_rate is for pooled DP-SGD: a federated round takes every bank's "
                                "update, and its accounting samples no one; remove sample_rate")
    if m.mode == "pooled":
        _validate_pooled(m)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _validate_delta(privacy: Mapping[str, Any]) -> None:
    """A delta near 1 makes any epsilon meaningless (b0: delta=0.99 spends "epsilon 0" with almost no noise)."""
    if "delta" not in privacy:
        return  # each mode's own check names the missing setting
    delta = privacy["delta"]
    if not _number(delta) or not 0 < delta <= MAX_DELTA:
        raise ManifestError(f"[privacy] delta must be a number in (0, {MAX_DELTA:g}], got {delta!r}: "
                            "choose delta well below 1/rows of the pooled data (typically 1e-5)")


def _validate_dp_public(m: JobManifest) -> None:
    """Under DP, what is published must be covered by the budget: validation metrics (pooled) and the banks'
    evaluation metrics (federated) are computed from the parties' rows without accounted noise."""
    shown = sorted(set(m.public_metrics) - set(DP_PUBLIC_METRICS))
    if shown:
        raise ManifestError(
            f"public_metrics {shown} cannot be released by a DP job: they are computed from the parties' "
            f"rows without accounted noise; a DP job may make public only {list(DP_PUBLIC_METRICS)} (federated "
            "jobs publish each round's epsilon in any case)")


def _validate_pooled(m: JobManifest) -> None:
    """What a pooled job may release, decided from the manifest alone so parties see it before consenting."""
    vf = m.training.get("val_fraction")
    if m.privacy:
        q = m.privacy.get("sample_rate")
        if q is None:
            raise ManifestError("a DP job must set [privacy] sample_rate, each row's Poisson sampling probability per "
                                "step (e.g. batch_size / the rows you expect): derived from the row count, the "
                                "noise, steps and epsilon spent would publish that count")
        if not _number(q) or not 0 < q <= 1:
            raise ManifestError(f"[privacy] sample_rate must be a number in (0, 1], got {q!r}")
        if vf is not None:
            raise ManifestError("a DP job trains on every row and reports no validation metrics: remove "
                                "[training] val_fraction")
        lv = m.schema.get("label_values")
        if not isinstance(lv, list) or len(lv) < 2:
            raise ManifestError("a DP job must list the classes in [schema] label_values: otherwise the model's "
                                "output size is set by the largest label in the data, outside the DP guarantee")
    elif vf is not None and (not _number(vf) or not MIN_VAL_FRACTION <= vf < 1):
        raise ManifestError(f"[training] val_fraction must be a number in [{MIN_VAL_FRACTION:g}, 1), got {vf!r}: "
                            "the public and validation metrics must average over enough held-out rows")


_HEX_DIGEST = re.compile(r"^[0-9a-f]{96}$")
# "module.path:attribute" (a Flower app's entry points), as (module, attribute) groups
FLOWER_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")


def _validate_flower(flower: Any) -> None:
    """``[training.flower]`` of a federated job: what each party and the enclave will hold the run to."""
    if not isinstance(flower, Mapping):
        raise ManifestError("a federated job needs [training.flower] with the code_digest of its Flower app")
    digest = flower.get("code_digest")
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ManifestError("[training.flower] code_digest must be the app's SHA-384 in lowercase hex "
                            "(mpctrain.party.flower.app_code_digest)")
    entry = flower.get("initial_arrays")
    if entry is not None and (not isinstance(entry, str) or not FLOWER_ENTRY.fullmatch(entry)):
        raise ManifestError(f"[training.flower] initial_arrays must be \"module:function\", got {entry!r}")
    run_config = flower.get("run_config")
    if run_config is not None and not isinstance(run_config, Mapping):
        raise ManifestError("[training.flower.run_config] must be a table of the values the ClientApp reads")
