"""A whole federated job in one process: simulated TEE, enclave keys, parties, manifest and consents.

Used by ``mpctrain demo --mode federated``, the benchmark and tests. Nothing here is trusted: the
simulated root's private key lives in this process. Real deployments attest SNP/TDX evidence instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp

from mpctrain.attest import BuildInfo, Policy
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.events import EventSink, MemoryEventSink
from mpctrain.enclave.federated.runtime import InProcessGrid, Node, Tap
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.jobs import Consent, JobManifest, PartySpec, sign_consent
from mpctrain.party.flower.attestation import CallableEvidenceSource
from mpctrain.party.flower.mod import ConfidentialMod
from mpctrain.party.flower.runtime import PartyRuntime
from mpctrain.seal.keys import IdentityKey, KemKey

SIM_CONFIG_DIGEST = hashlib.sha256(b"mpctrain federated simulation").digest()
FAR_FUTURE = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())


@dataclass
class SimParty:
    id: str
    identity: IdentityKey
    kem: KemKey
    role: str = "data"

    def spec(self) -> PartySpec:
        return PartySpec(self.id, self.role, self.identity.public_bytes(), self.kem.alg, self.kem.public_bytes())


@dataclass
class SimFederation:
    """An enclave and its parties; ``runtime(party)`` is what that party's mod runs with."""

    root: SimRoot
    attester: SimAttester
    enclave: EnclaveIdentity
    parties: list[SimParty]
    researcher: SimParty
    manifest: JobManifest
    consents: list[Consent]
    policy: Policy
    events: EventSink = field(default_factory=MemoryEventSink)
    runtimes: dict[str, PartyRuntime] = field(default_factory=dict)

    def runtime(self, party: SimParty) -> PartyRuntime:
        if party.id not in self.runtimes:
            consent = next(c for c in self.consents if c.party_id == party.id)
            self.runtimes[party.id] = PartyRuntime(
                party_id=party.id, identity=party.identity, kem=party.kem, manifest=self.manifest, consent=consent,
                policy=self.policy, evidence=CallableEvidenceSource(self.enclave.evidence))
        return self.runtimes[party.id]

    def write_profile(self, party: SimParty, directory: str | Path, aggregator: str,
                      app_dir: str | Path | None = None) -> Path:
        """``party``'s profile as a bank keeps it: keys, ``party.toml``, this enclave's policy, and (with
        ``app_dir``) ``flower.toml`` naming this job; approve the job with ``mpctrain job approve``."""
        from mpctrain.party.profile import policy_toml
        from mpctrain.seal.keys import write_public_files

        prof = Path(directory)
        (prof / "keys").mkdir(parents=True)
        party.identity.save(prof / "keys" / "identity.key")
        party.kem.save(prof / "keys" / "kem.key")
        write_public_files(prof / "keys", party.identity, party.kem)
        # as a bank's rules: the job's parties may receive outputs, each known by the keys the manifest gives
        ids = ", ".join(f'"{q.id}"' for q in self.manifest.parties)
        pins = "".join(f'{q.id} = {{ identity = "{q.identity_public.hex()}", '
                       f'kem = "{q.kem_alg} {q.kem_public.hex()}" }}\n'
                       for q in self.manifest.parties if q.id != party.id)
        (prof / "party.toml").write_text(f'id = "{party.id}"\naggregator = "{aggregator}"\npolicy = "policy.toml"\n'
                                         f'[rules]\nallowed_modes = ["federated"]\nallowed_recipients = [{ids}]\n'
                                         f'[rules.known_parties]\n{pins}')
        (prof / "policy.toml").write_text(policy_toml(dict(self.manifest.enclave_policy)))  # pins this enclave
        if app_dir is not None:
            (prof / "flower.toml").write_text(f'app_dir = "{app_dir}"\njob = "{self.manifest.job_id}"\n')
        return prof

    def grid(self, make_app: Callable[[list], ClientApp], *, confidential: bool = True,
             node_config: Callable[[SimParty], dict[str, Any]] | None = None,
             run_config: Mapping[str, Any] | None = None, tap: Tap | None = None,
             workers: int = 1) -> InProcessGrid:
        """One node per data party; ``make_app(mods)`` builds each party's ClientApp."""
        nodes = []
        for i, party in enumerate(self.parties):
            mods = [ConfidentialMod(self.runtime(party))] if confidential else []
            cfg = node_config(party) if node_config else {"bank": party.id}
            nodes.append(Node(node_id=1000 + i, app=make_app(mods), node_config=cfg))
        return InProcessGrid(nodes, tap=tap, run_config=run_config, workers=workers)


def build_federation(party_ids: Sequence[str], *, job_id: str = "federated-sim", training: Mapping[str, Any],
                     privacy: Mapping[str, Any] | None = None, public_metrics: Sequence[str] = ("loss", "accuracy"),
                     code_digest: str = "", schema: Mapping[str, Any] | None = None,
                     model: Mapping[str, Any] | None = None) -> SimFederation:
    """Fresh keys for every party and the enclave, a signed manifest, and every data party's consent."""
    root = SimRoot.generate()
    attester = SimAttester(root, config_digest=SIM_CONFIG_DIGEST)
    enclave = EnclaveIdentity.generate(attester, BuildInfo("sim", hashlib.sha256(b"federated-build").digest()))
    parties = [SimParty(pid, IdentityKey.generate(), KemKey.generate()) for pid in party_ids]
    researcher = SimParty("researcher", IdentityKey.generate(), KemKey.generate(), role="researcher")
    policy_dict = {"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": [attester.measurement.hex()]}}
    flower = dict(training.get("flower", {}))
    flower.setdefault("code_digest", code_digest or "00" * 48)
    manifest = JobManifest(
        job_id=job_id, mode="federated", proposer="researcher",
        parties=(*[p.spec() for p in parties], researcher.spec()), quorum=len(parties),
        schema=dict(schema or {"format": "generated"}), model=dict(model or {"name": "logreg"}),
        training={**training, "flower": flower}, privacy=dict(privacy or {}),
        recipients=("researcher", *[p.id for p in parties]), public_metrics=tuple(public_metrics),
        enclave_policy=policy_dict, expires=FAR_FUTURE,
    )
    consents = [sign_consent(manifest, p.id, p.identity) for p in parties]
    return SimFederation(root=root, attester=attester, enclave=enclave, parties=parties, researcher=researcher,
                         manifest=manifest, consents=consents, policy=Policy.from_dict(policy_dict))
