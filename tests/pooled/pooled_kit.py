"""Builders shared by the pooled tests (imported by name: tests/pooled is on sys.path)."""

from __future__ import annotations

from pathlib import Path

from mpctrain.jobs import JobManifest
from mpctrain.party.agent import PartyAgent
from mpctrain.sim.cluster import SimCluster

FAST_TRAINING = {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 7, "val_fraction": 0.2}



def run_job(cluster: SimCluster, job_id: str, *, data: dict[str, Path] | None = None,
            **overrides: object) -> tuple[JobManifest, dict[str, PartyAgent]]:
    """Propose, attest, approve and upload for every data party; wait until done."""
    overrides.setdefault("training", FAST_TRAINING)
    m = cluster.manifest(job_id, parties=["hospital-a", "hospital-b", "hospital-c"], **overrides)
    agents = {p: cluster.agent(p, data=(data or {}).get(p)) for p in ("hospital-a", "hospital-b", "hospital-c")}
    agents["hospital-a"].client.propose(m)
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    for ag in agents.values():
        ag.upload(m)
    state = agents["hospital-a"].wait(m.job_id, ("done",), timeout=120)
    assert state == "done", agents["hospital-a"].client.get_job(m.job_id).error
    return m, agents
