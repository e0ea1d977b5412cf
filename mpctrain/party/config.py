"""party.toml: who the party is, where its keys, policy and data are, and its approval rules.

```toml
id = "hospital-a"
aggregator = "127.0.0.1:50051"
policy = "policy.toml"          # the party's own attestation policy
data = "../../examples/hospitals_pooled/data/hospital-a.csv"   # .csv or .parquet
keys_dir = "keys"               # identity.key + kem.key, created on first run (never commit them)
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
from mpctrain.seal.keys import IdentityKey, KemKey, write_public_files


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

    def load_keys(self, create: bool = True) -> tuple[IdentityKey, KemKey]:
        """Load the party's keys; generate them on first run (private files 0600, public files beside).

        ``identity.key``/``kem.key`` (written here) or ``identity.pem``/``kem.pem`` (``mpctrain keys
        generate``). Half a pair is an error, never a reason to generate a new identity over it.
        """
        found = key_files(self.keys_dir)
        if found is not None:
            ident, kem = found
            return IdentityKey.load(ident), KemKey.load(kem)
        partial = sorted(n for n in PRIVATE_KEY_FILES if (self.keys_dir / n).exists())
        if partial:
            raise PartyConfigError(f"{self.keys_dir} holds {', '.join(partial)} but not the matching identity and KEM "
                                   "key: restore the missing file (or `mpctrain keys generate --force`)")
        if not create:
            raise PartyConfigError(f"no keys in {self.keys_dir}; run `mpctrain keys generate --out {self.keys_dir}`")
        ident, kem = self.keys_dir / "identity.key", self.keys_dir / "kem.key"
        i, k = IdentityKey.generate(), KemKey.generate()
        i.save(ident)
        k.save(kem)
        write_public_files(self.keys_dir, i, k)
        return IdentityKey.load(ident), KemKey.load(kem)


PRIVATE_KEY_FILES = ("identity.key", "kem.key", "identity.pem", "kem.pem")


def key_files(keys_dir: Path) -> tuple[Path, Path] | None:
    """The (identity, KEM) private key files in ``keys_dir``: a party's ``.key`` pair or ``keys generate``'s
    ``.pem`` pair; None when neither pair is complete."""
    for ext in (".key", ".pem"):
        ident, kem = keys_dir / f"identity{ext}", keys_dir / f"kem{ext}"
        if ident.is_file() and kem.is_file():
            return ident, kem
    return None
