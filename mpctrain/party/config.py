"""party.toml: who the party is, where its keys, policy and data are, and its approval rules.

```toml
id = "hospital-a"
aggregator = "127.0.0.1:50051"
policy = "policy.toml"          # the party's own attestation policy
data = "../../examples/hospitals_pooled/data/hospital-a.csv"   # .csv or .parquet
keys_dir = "keys"               # identity.key, kem.key (+ .pub): `mpctrain keys generate` or the first `party run`
outputs_dir = "outputs"         # where opened outputs go when this party is a recipient
tls_ca = "aggregator-ca.pem"    # optional: the aggregator's transport TLS roots
[rules]
auto_approve = true
allowed_recipients = ["hospital-a", "hospital-b", "hospital-c"]   # each pinned below (or this party itself)
allowed_models = ["mlp", "logreg"]
[rules.known_parties]           # the keys other parties are known by: a name in a manifest is only a name
hospital-b = "../hospital-b/keys"                 # its keys directory (identity.pub, kem.pub) ...
hospital-c = { identity = "<hex>", kem = "x25519 <hex>" }   # ... or the keys themselves
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpctrain.party.rules import PartyRules
from mpctrain.seal.keydir import KeyDirError, load_or_generate_pair, load_pair
from mpctrain.seal.keys import IdentityKey, KemKey


class PartyConfigError(ValueError):
    """party.toml is unreadable or wrong; the message names the key."""


@dataclass(frozen=True)
class PartyConfig:
    id: str
    aggregator: str
    policy: Path
    data: Path | None
    keys_dir: Path
    outputs_dir: Path
    rules: PartyRules
    tls_ca: Path | None = None  # PEM roots for the aggregator's transport TLS (None: plaintext)

    @classmethod
    def load(cls, path: str | Path) -> PartyConfig:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PartyConfigError(f"cannot read party config {path}: {exc}") from exc
        try:
            return cls.from_dict(doc, path.parent)
        except PartyConfigError as exc:  # name the file: a machine often holds several parties' profiles
            raise PartyConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base: Path) -> PartyConfig:
        known = {"id", "aggregator", "policy", "data", "keys_dir", "outputs_dir", "rules", "schema", "tls_ca"}
        unknown = set(doc) - known
        if unknown:
            raise PartyConfigError(f"unknown party config keys {sorted(unknown)}; known: {sorted(known)}")
        if "id" not in doc:
            raise PartyConfigError("party config needs an id")
        schema: dict[str, Any] = {}
        if "schema" in doc:
            try:
                schema = tomllib.loads((base / str(doc["schema"])).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise PartyConfigError(f"cannot read schema {doc['schema']}: {exc}") from exc
        if not isinstance(doc.get("rules", {}), dict):
            raise PartyConfigError("[rules] must be a table")
        try:
            rules = PartyRules.from_dict(doc.get("rules", {}), schema, base)
        except ValueError as exc:
            raise PartyConfigError(str(exc)) from exc
        return cls(id=str(doc["id"]), aggregator=str(doc.get("aggregator", "127.0.0.1:50051")),
                   policy=base / str(doc.get("policy", "policy.toml")),
                   data=(base / str(doc["data"])) if "data" in doc else None,
                   keys_dir=base / str(doc.get("keys_dir", "keys")),
                   outputs_dir=base / str(doc.get("outputs_dir", "outputs")), rules=rules,
                   tls_ca=(base / str(doc["tls_ca"])) if "tls_ca" in doc else None)

    def load_keys(self, create: bool = False) -> tuple[IdentityKey, KemKey]:
        """Load the party's keys (``identity.key``, ``kem.key``); with ``create``, generate them when the directory
        holds none (private files 0600, public files beside). Only the commands that start a party's part in a job
        (``party run``, ``job propose``) create: any other command would sign with an identity no job names, and a
        typo in ``keys_dir`` would leave a stray identity behind.

        Half a pair, or keys under both namings, is an error (``seal.keydir``), never a reason to make a new identity.
        """
        try:
            if create:  # checked and created under the directory's lock: two first runs end with one identity
                return load_or_generate_pair(self.keys_dir)
            return load_pair(self.keys_dir)
        except KeyDirError as exc:
            raise PartyConfigError(str(exc)) from None
