"""aggregator.toml: where to listen, which attester, limits.

```toml
listen = "127.0.0.1:50051"
attester = "sim"                 # sim | snp | tdx | auto (configfs-tsm inside a confidential VM)
gpu = "off"                      # auto: add evidence of every CC-mode NVIDIA GPU (default auto off sim)
proposers = ["<hex identity key>"] # optional: only these identity keys may propose jobs
version = "0.1.0"
device = "auto"                  # training device: auto | cpu | cuda
audit_log = "audit.jsonl"        # optional: append-only signed audit log on the host (docs/audit.md)
[sim]
root_dir = "../../.mpctrain/sim-root"   # simulated vendor root (created on first run when missing)
[limits]
max_concurrent_uploads = 16
[tls]                            # optional transport TLS (the data is sealed end to end either way)
cert_file = "server.pem"
key_file = "server.key"
[federated]                      # optional: serve federated jobs through a Flower SuperLink
superlink = "127.0.0.1:9091"     # its ServerApp API (`flower-superlink --isolation process`)
root_certificates = "superlink-ca.pem"  # the SuperLink's TLS CA, or `insecure = true` (loopback only)
timeout_s = 3600                 # wait for `flwr run`, and for each round's replies
```
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpctrain.enclave.limits import Limits
from mpctrain.seal.keys import KEM_ALGS

log = logging.getLogger("mpctrain.enclave")

ATTESTERS = ("sim", "snp", "tdx", "auto")
DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]{1,2})?")
GPU_CHOICES = ("auto", "off")


class ConfigError(ValueError):
    """aggregator.toml is unreadable or holds a wrong value; the message names the key."""


@dataclass(frozen=True)
class FederatedConfig:
    """``[federated]``: where the SuperLink is; the ServerApp of each consented job runs in this process."""

    superlink: str
    root_certificates: Path | None = None  # None: plaintext to the SuperLink (messages stay sealed end to end)
    timeout_s: int = 3600

    @classmethod
    def from_dict(cls, doc: Any, base_dir: Path) -> FederatedConfig:
        if not isinstance(doc, dict):
            raise ConfigError("[federated] must be a table")
        known = {"superlink", "root_certificates", "insecure", "timeout_s"}
        if set(doc) - known:
            raise ConfigError(f"unknown [federated] keys {sorted(set(doc) - known)}; known: {sorted(known)}")
        superlink = doc.get("superlink")
        if not isinstance(superlink, str) or ":" not in superlink:
            raise ConfigError("[federated] superlink must be the SuperLink's ServerApp API as \"host:port\"")
        ca, insecure = doc.get("root_certificates"), doc.get("insecure", False)
        if not isinstance(insecure, bool) or (ca is None) != insecure:
            raise ConfigError("[federated] takes root_certificates (the SuperLink's TLS CA) or insecure = true, "
                              "exactly one")
        timeout = doc.get("timeout_s", 3600)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            raise ConfigError(f"[federated] timeout_s must be a positive integer, got {timeout!r}")
        return cls(superlink=superlink, root_certificates=(base_dir / str(ca)) if ca is not None else None,
                   timeout_s=timeout)


@dataclass(frozen=True)
class AggregatorConfig:
    listen: str = "127.0.0.1:50051"
    attester: str = "sim"
    version: str = "0.1.0"
    device: str = "auto"
    sim_root_dir: Path | None = None
    kem_alg: str = "x25519"
    gpu: str = "off"
    limits: Limits = field(default_factory=Limits)
    audit_log: Path | None = None
    proposers: tuple[bytes, ...] = ()  # identity keys allowed to propose jobs; () = anyone with a valid manifest
    auditors: dict[str, bytes] = field(default_factory=dict)  # party id -> identity key allowed the whole audit log
    tls_cert: Path | None = None  # PEM chain; transport TLS, independent of the end-to-end sealing
    tls_key: Path | None = None
    federated: FederatedConfig | None = None  # None: this aggregator refuses federated jobs
    raw: bytes = b""  # the file's bytes: its digest is the config digest the TEE measures

    @property
    def config_digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @classmethod
    def load(cls, path: str | Path) -> AggregatorConfig:
        path = Path(path)
        try:
            raw = path.read_bytes()
            doc = tomllib.loads(raw.decode())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read aggregator config {path}: {exc}") from exc
        try:
            return cls.from_dict(doc, base_dir=path.parent, raw=raw)
        except ConfigError as exc:  # name the file the mistake is in
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base_dir: Path = Path("."), raw: bytes = b"") -> AggregatorConfig:
        known = {"listen", "attester", "version", "device", "sim", "limits", "kem_alg", "audit_log", "tls", "gpu",
                 "proposers", "auditors", "federated"}
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"unknown aggregator config keys {sorted(unknown)}; known: {sorted(known)}")
        attester = doc.get("attester", "sim")
        if attester not in ATTESTERS:
            raise ConfigError(f"attester must be one of {ATTESTERS}, got {attester!r}")
        if "attester" not in doc:
            log.warning("aggregator config sets no attester: serving the SIMULATED TEE; parties with production "
                        "policies will refuse it (inside a confidential VM set attester = \"auto\")")
        for key in ("listen", "version", "device", "kem_alg", "gpu", "audit_log"):
            if key in doc and not isinstance(doc[key], str):
                raise ConfigError(f"{key} must be a string, got {doc[key]!r}")
        for key in ("sim", "limits"):
            if not isinstance(doc.get(key, {}), dict):
                raise ConfigError(f"[{key}] must be a table")
        if doc.get("kem_alg", "x25519") not in KEM_ALGS:
            raise ConfigError(f"kem_alg must be one of {KEM_ALGS}, got {doc['kem_alg']!r}")
        device = doc.get("device", "auto")
        if not DEVICE.fullmatch(device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        sim = doc.get("sim", {})
        if set(sim) - {"root_dir"}:
            raise ConfigError(f"unknown [sim] keys {sorted(set(sim) - {'root_dir'})}; known: ['root_dir']")
        root = sim.get("root_dir")
        try:
            limits = Limits.from_dict(doc.get("limits", {}))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        gpu = str(doc.get("gpu", "off" if attester == "sim" else "auto"))
        if gpu not in GPU_CHOICES:
            raise ConfigError(f"gpu must be one of {GPU_CHOICES}, got {gpu!r}")
        tls_doc = doc.get("tls", {})
        if not isinstance(tls_doc, dict) or set(tls_doc) - {"cert_file", "key_file"} or \
                ("cert_file" in tls_doc) != ("key_file" in tls_doc):
            raise ConfigError("[tls] takes cert_file and key_file, both or neither")
        tls = ((base_dir / str(tls_doc["cert_file"]), base_dir / str(tls_doc["key_file"])) if tls_doc
               else (None, None))
        return cls(listen=str(doc.get("listen", "127.0.0.1:50051")), attester=attester,
                   version=str(doc.get("version", "0.1.0")), device=str(doc.get("device", "auto")),
                   sim_root_dir=(base_dir / root) if root else None, kem_alg=str(doc.get("kem_alg", "x25519")),
                   limits=limits, raw=raw or repr(sorted(doc.items())).encode(),
                   audit_log=(base_dir / str(doc["audit_log"])) if doc.get("audit_log") else None,
                   tls_cert=tls[0], tls_key=tls[1], gpu=gpu, proposers=_proposers(doc.get("proposers", [])),
                   auditors=_auditors(doc.get("auditors", {})),
                   federated=(FederatedConfig.from_dict(doc["federated"], base_dir) if "federated" in doc else None))


def _auditors(value: Any) -> dict[str, bytes]:
    """``[auditors]`` table: party id = hex Ed25519 identity key, allowed to fetch the whole audit log."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError("[auditors] must map party ids to hex Ed25519 identity public keys")
    try:
        keys = {k: bytes.fromhex(v) for k, v in value.items()}
    except ValueError as exc:
        raise ConfigError(f"auditors: {exc}") from exc
    if any(len(k) != 32 for k in keys.values()):
        raise ConfigError("auditors: each value must be a 32-byte Ed25519 public key in hex")
    return keys


def _proposers(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("proposers must be a list of hex Ed25519 identity public keys")
    try:
        keys = tuple(bytes.fromhex(v) for v in value)
    except ValueError as exc:
        raise ConfigError(f"proposers: {exc}") from exc
    if any(len(k) != 32 for k in keys):
        raise ConfigError("proposers: each entry must be a 32-byte Ed25519 public key in hex")
    return keys
