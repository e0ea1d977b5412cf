"""The demo's flow over real loopback gRPC: attest, consent, sealed upload, training, sealed outputs."""

from __future__ import annotations

import json
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mpctrain.enclave.receipt import verify_receipt
from mpctrain.enclave.server import SERVICE_NAMES
from mpctrain.party.client import AggregatorClient
from mpctrain.train.tensors import state_from_bytes
from pooled_kit import run_job


def test_pooled_job_end_to_end(cluster):
    m, agents = run_job(cluster, "e2e")
    a = agents["hospital-a"]
    events = list(a.client.watch(m.job_id, timeout=10))
    kinds = [e.kind for e in events]
    assert kinds.count("consent") == 3 and kinds.count("shard") == 3
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert all(e.loss > 0 for e in epochs)
    states = [e.state for e in events if e.kind == "state"]
    assert states[-1] == "done" and "training" in states
    status = a.client.get_job(m.job_id)
    assert set(status.public_metrics) == {"accuracy", "auc"}  # only what the manifest makes public
    assert status.public_metrics["accuracy"] > 0.85
    models = {}
    victim = cluster.workdir / "victim.conf"  # someone planted a link where an output will be written
    victim.write_text("keep me")
    planted = agents["hospital-b"].outputs_dir / m.job_id / "metrics.json"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(victim)
    for pid, ag in agents.items():
        opened = ag.fetch(m)
        state = state_from_bytes(opened["model"])
        assert state and all(t.dtype.is_floating_point or t.numel() >= 0 for t in state.values())
        metrics = json.loads(opened["metrics"])
        assert metrics["manifest_digest"] == m.digest().hex()
        assert metrics["rows"]["per_party"] == {"hospital-a": 260, "hospital-b": 190, "hospital-c": 119}
        assert (ag.outputs_dir / m.job_id / "model.safetensors").read_bytes() == opened["model"]
        for name in ("model.safetensors", "metrics.json"):  # plaintext outputs: owner-only regular files
            written = ag.outputs_dir / m.job_id / name
            assert not written.is_symlink() and written.stat().st_mode & 0o777 == 0o600
        models[pid] = opened["model"]
    assert len(set(models.values())) == 1  # every recipient got the same model
    assert victim.read_text() == "keep me"
    receipt = a.client.get_receipt(m.job_id)
    verify_receipt(receipt, a.enclave.sig_public, m.digest(), {"model": models["hospital-a"],
                                                               "metrics": opened["metrics"]})


def test_health_and_reflection_are_served(cluster):
    with grpc.insecure_channel(cluster.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", *SERVICE_NAMES):
            resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=5))
        listed = {s.name for s in reply.list_services_response.service}
        assert set(SERVICE_NAMES) <= listed
        assert "grpc.health.v1.Health" in listed


def test_unknown_job_is_denied_like_a_job_of_others(cluster):
    """A missing job must not be told apart from someone else's: both are PERMISSION_DENIED, same wording."""
    from mpctrain.party.errors import PermissionDenied

    client = AggregatorClient(cluster.target, "hospital-a", cluster.parties["hospital-a"].identity)
    try:
        with pytest.raises(PermissionDenied, match="'hospital-a' is not named by job 'no-such-job'"):
            client.get_job("no-such-job")
    finally:
        client.close()


def test_training_loss_is_withheld_from_watchers_unless_public(cluster):
    """Without ``train_loss`` in public_metrics the job's watchers (its parties) see epochs, not losses."""
    m, agents = run_job(cluster, "e2e-private-loss", public_metrics=["accuracy"])
    epochs = [e for e in agents["hospital-b"].client.watch(m.job_id, timeout=10) if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert all(math.isnan(e.loss) for e in epochs)
