"""An aggregator with the simulated TEE and N party agents in one process, over loopback gRPC.

Used by ``mpctrain demo`` and the end-to-end tests. The simulated root, party keys and outputs live in
``workdir`` (never in the repository); the parties' policies pin this run's root and measurement.
"""

from __future__ import annotations

import hashlib
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpctrain.attest import Policy
from mpctrain.attest.sim import ROOT_PEM, SimAttester, create_sim_root, root_pin
from mpctrain.enclave.events import EventSink, LogEventSink
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.server import Aggregator, build_info
from mpctrain.jobs import JobManifest
from mpctrain.party.agent import PartyAgent
from mpctrain.party.client import AggregatorClient
from mpctrain.party.rules import PartyRules
from mpctrain.seal.keys import IdentityKey, KemKey, write_public_files

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hospitals_pooled"
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
SIM_CONFIG = b"mpctrain sim aggregator (demo)"


@dataclass
class PartyIdentity:
    id: str
    role: str
    identity: IdentityKey
    kem: KemKey
    dir: Path

    @classmethod
    def create(cls, party_id: str, role: str, base: Path, kem_alg: str = "x25519") -> PartyIdentity:
        d = base / party_id
        keys = d / "keys"
        ident, kem = IdentityKey.generate(), KemKey.generate(kem_alg)
        ident.save(keys / "identity.key")
        kem.save(keys / "kem.key")
        write_public_files(keys, ident, kem)
        return cls(party_id, role, ident, kem, d)

    def spec(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "identity_public": self.identity.public_bytes().hex(),
                "kem_alg": self.kem.alg, "kem_public": self.kem.public_bytes().hex()}


@dataclass
class SimCluster:
    """Aggregator + parties; ``start()`` binds the server on 127.0.0.1 with an OS-chosen port."""

    workdir: Path
    party_ids: Sequence[str] = HOSPITALS
    researchers: Sequence[str] = ()
    events: EventSink = field(default_factory=LogEventSink)
    limits: Limits = field(default_factory=Limits)
    device: str = "cpu"
    config_digest: bytes = hashlib.sha256(SIM_CONFIG).digest()
    aggregator: Aggregator | None = None
    parties: dict[str, PartyIdentity] = field(default_factory=dict)
    attester: SimAttester | None = None
    interceptors: Sequence[Any] = ()
    kem_alg: str = "x25519"  # enclave and party KEM: "x25519" or the post-quantum hybrid "mlkem768-x25519"
    tls: tuple[Path, Path] | None = None  # (PEM certificate chain, PEM key): the port speaks TLS

    def start(self) -> SimCluster:
        root_dir = self.workdir / "sim-root"
        if not (root_dir / ROOT_PEM).exists():
            create_sim_root(root_dir)
        self.root_pin = root_pin(root_dir / ROOT_PEM)
        self.attester = SimAttester(root_dir, config_digest=self.config_digest)
        identity = EnclaveIdentity.generate(self.attester, build_info(self.config_digest), kem_alg=self.kem_alg)
        self.aggregator = Aggregator(identity, limits=self.limits, events=self.events, device=self.device,
                                     interceptors=self.interceptors, audit_log=self.workdir / "audit.jsonl")
        credentials = None
        if self.tls is not None:
            import grpc

            credentials = grpc.ssl_server_credentials([(self.tls[1].read_bytes(), self.tls[0].read_bytes())])
        self.aggregator.start("127.0.0.1:0", credentials)
        for pid in self.party_ids:
            self.parties[pid] = PartyIdentity.create(pid, "data", self.workdir, self.kem_alg)
        for pid in self.researchers:
            self.parties[pid] = PartyIdentity.create(pid, "researcher", self.workdir, self.kem_alg)
        return self

    def stop(self) -> None:
        if self.aggregator is not None:
            self.aggregator.stop(grace=0.5)

    def __enter__(self) -> SimCluster:
        return self.start() if self.aggregator is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def target(self) -> str:
        assert self.aggregator is not None
        return self.aggregator.target

    def enclave_policy(self, measurement: bytes | None = None) -> dict[str, Any]:
        """The policy dict pinning this run's simulated root and the enclave's measurement."""
        assert self.attester is not None
        m = self.attester.measurement if measurement is None else measurement
        return {"backends": ["sim"], "sim": {"roots": [self.root_pin], "measurements": [m.hex()]}}

    def policy(self, measurement: bytes | None = None) -> Policy:
        return Policy.from_dict(self.enclave_policy(measurement))

    def manifest(self, job_id: str = "hospitals-pooled", *, parties: Sequence[str] | None = None,
                 job_toml: Path | None = EXAMPLE / "job.toml", **overrides: Any) -> JobManifest:
        """A manifest from the example job.toml with this run's parties, keys and enclave policy."""
        doc: dict[str, Any] = {}
        if job_toml is not None and job_toml.exists():
            doc = tomllib.loads(job_toml.read_text())
        names = list(parties) if parties is not None else list(self.parties)
        obj: dict[str, Any] = {
            "format": "mpctrain.job/v1",
            "job_id": job_id,
            "mode": "pooled",
            "proposer": names[0],
            "parties": [self.parties[n].spec() for n in names],
            "quorum": len([n for n in names if self.parties[n].role == "data"]),
            "schema": _schema(doc),
            "model": doc.get("model", {"name": "mlp", "hidden": [16]}),
            "training": doc.get("training", {"epochs": 5, "batch_size": 32, "lr": 0.01, "seed": 7,
                                             "val_fraction": 0.2}),
            "privacy": doc.get("privacy", {}),
            "recipients": [r for r in doc.get("recipients", names) if r in names] or names[:1],
            "public_metrics": doc.get("public_metrics", ["accuracy", "auc"]),
            "enclave_policy": self.enclave_policy(),
            "expires": int(time.time()) + 3600,
        }
        obj.update(overrides)
        return JobManifest.from_obj(obj)

    def agent(self, party_id: str, *, policy: Policy | None = None, data: Path | None = None,
              rules: PartyRules | None = None, client: AggregatorClient | None = None) -> PartyAgent:
        p = self.parties[party_id]
        return PartyAgent(
            party_id=party_id, identity=p.identity, kem=p.kem, policy=policy or self.policy(),
            client=client or AggregatorClient(self.target, party_id, p.identity),
            data_path=data if data is not None else EXAMPLE / "data" / f"{party_id}.csv",
            rules=rules or PartyRules(), outputs_dir=p.dir / "outputs",
        )


def _schema(doc: Mapping[str, Any]) -> dict[str, Any]:
    schema = dict(doc.get("schema", {}))
    fname = schema.pop("file", None)
    if fname is not None:
        loaded = tomllib.loads((EXAMPLE / str(fname)).read_text())
        loaded.update(schema)
        schema = loaded
    if not schema:
        schema = tomllib.loads((EXAMPLE / "data" / "schema.toml").read_text())
    return schema
