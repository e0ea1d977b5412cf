"""Test kit: a federated job in one process (simulated TEE, enclave keys, N parties, manifest, consents)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mpctrain.attest import BuildInfo, Policy
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.federated import Confidential, InProcessGrid, Node
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.jobs import Consent, JobManifest, PartySpec, sign_consent
from mpctrain.party.flower import CallableEvidenceSource, ConfidentialMod, PartyRuntime
from mpctrain.seal.keys import IdentityKey, KemKey

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

CODE_DIGEST = "ab" * 48


def make_enclave(attester: SimAttester, kem_alg: str = "x25519") -> EnclaveIdentity:
    return EnclaveIdentity.generate(attester, BuildInfo("test", b"\x01" * 32), kem_alg=kem_alg)


@dataclass
class Party:
    id: str
    identity: IdentityKey
    kem: KemKey

    def spec(self, role: str = "data") -> PartySpec:
        return PartySpec(self.id, role, self.identity.public_bytes(), self.kem.alg, self.kem.public_bytes())


@dataclass
class Job:
    """Everything one test needs; ``source`` is the evidence source parties use (swappable)."""

    manifest: JobManifest
    parties: list[Party]
    consents: list[Consent]
    enclave: EnclaveIdentity
    policy: Policy
    attester: SimAttester
    researcher: Party
    events: MemoryEventSink = field(default_factory=MemoryEventSink)
    evidence_fn: Callable[[bytes], object] | None = None
    runtimes: dict[str, PartyRuntime] = field(default_factory=dict)
    relayed: list[tuple[str, bytes]] = field(default_factory=list)

    def evidence(self, nonce: bytes):
        fn = self.evidence_fn or self.enclave.evidence
        return fn(nonce)

    def runtime(self, party: Party) -> PartyRuntime:
        if party.id not in self.runtimes:
            self.runtimes[party.id] = PartyRuntime(
                party_id=party.id, identity=party.identity, kem=party.kem, manifest=self.manifest,
                consent=next(c for c in self.consents if c.party_id == party.id), policy=self.policy,
                evidence=CallableEvidenceSource(self.evidence), clock=lambda: datetime.now(UTC))
        return self.runtimes[party.id]

    def confidential(self, strategy, **kw) -> Confidential:
        return Confidential(strategy, manifest=self.manifest, consents=self.consents, enclave=self.enclave,
                            events=self.events, **kw)

    def grid(self, app_for: Callable[[Party, int], ClientApp], *, extra: list[Node] | None = None,
             node_config: Callable[[Party, int], dict] | None = None,
             run_config: dict | None = None, workers: int = 1) -> InProcessGrid:
        nodes = []
        for i, p in enumerate(self.parties):
            cfg = node_config(p, i) if node_config is not None else {}
            nodes.append(Node(node_id=100 + i, app=app_for(p, i), node_config=cfg))
        nodes.extend(extra or [])
        return InProcessGrid(nodes, tap=lambda kind, wire: self.relayed.append((kind, wire)), run_config=run_config,
                             workers=workers)

    def open_output(self, result) -> ArrayRecord:
        from mpctrain.party.flower import open_output

        arrays, _ = open_output(result.sealed_output, manifest=self.manifest, recipient_id="researcher",
                                kem=self.researcher.kem, enclave_sig_public=self.enclave.sig.public_bytes())
        return arrays


def build_job(sim_root: SimRoot, sim_attester: SimAttester, n: int = 3, *, privacy: dict | None = None, rounds: int = 2,
              public_metrics: tuple[str, ...] | None = None, kem_alg: str = "x25519",
              run_config: dict | None = None) -> Job:
    """A federated job of ``n`` banks; ``run_config``: the Flower run config the manifest pins (none: empty)."""
    parties = [Party(f"bank-{chr(ord('a') + i)}", IdentityKey.generate(), KemKey.generate(kem_alg)) for i in range(n)]
    researcher = Party("researcher", IdentityKey.generate(), KemKey.generate(kem_alg))
    root_sha = sim_root.sha256
    policy_dict = {"backends": ["sim"], "sim": {"roots": [root_sha],
                                                 "measurements": [sim_attester.measurement.hex()]}}
    manifest = JobManifest(
        job_id="fed-test", mode="federated", proposer="researcher",
        parties=(*[p.spec() for p in parties], researcher.spec("researcher")), quorum=n,
        schema={"label": "default", "format": "csv"}, model={"name": "logreg"},
        training={"rounds": rounds, "strategy": "FedAvg", "seed": 7,
                  "flower": {"client_app": "tests:app", "server_app": "tests:app", "code_digest": CODE_DIGEST,
                             **({"run_config": dict(run_config)} if run_config else {})}},
        privacy=privacy or {}, recipients=("researcher", parties[0].id),
        public_metrics=public_metrics if public_metrics is not None else () if privacy else ("loss", "accuracy"),
        enclave_policy=policy_dict, expires=int(datetime(2100, 1, 1, tzinfo=UTC).timestamp()),
    )
    consents = [sign_consent(manifest, p.id, p.identity) for p in parties]
    return Job(manifest=manifest, parties=parties, consents=consents, enclave=make_enclave(sim_attester, kem_alg),
               policy=Policy.from_dict(policy_dict), attester=sim_attester, researcher=researcher)


def toy_app(delta: float, n_examples: int, *, mod: ConfidentialMod | None,
            seen: list[Message] | None = None, extra: list | None = None) -> ClientApp:
    """A ClientApp that 'trains' by adding ``delta`` to every weight; metrics include a loss."""
    app = ClientApp(mods=([mod] if mod is not None else []) + list(extra or []))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if seen is not None:
            seen.append(msg)
        arrays = msg.content["arrays"]
        new = ArrayRecord({k: Array(np.asarray(v.numpy() + delta)) for k, v in arrays.items()})
        metrics = MetricRecord({"num-examples": n_examples, "loss": float(delta)})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": n_examples, "accuracy": 0.5 + delta})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def initial_arrays(size: int = 10) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.arange(size, dtype=np.float32)), "b": Array(np.zeros(2, dtype=np.float32))})


def app_outside_consent(example: Path, dst: Path, marker: Path) -> Path:
    """A copy of a Flower app whose consented ``app/`` is intact, but whose FAB names a ClientApp outside it
    (``evil.py``: it would answer in clear, and touches ``marker`` if a line of it ever runs)."""
    shutil.copytree(example, dst, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    (dst / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                 "from flwr.clientapp import ClientApp\napp = ClientApp()\n")
    pyproject = dst / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('clientapp = "app.client_app:app"', 'clientapp = "evil:app"')
                         .replace('fab-include = ["app/*.py", "pyproject.toml"]',
                                  'fab-include = ["app/*.py", "evil.py", "pyproject.toml"]'))
    return dst
