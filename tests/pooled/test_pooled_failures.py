"""Jobs that cannot train fail visibly without data in the error; quorum jobs stop taking data."""

from __future__ import annotations

import numpy as np
import pytest

from mpctrain.party.errors import FailedPrecondition
from mpctrain.party.uploader import ShardUpload
from mpctrain.train.data import table_to_bytes
from pooled_kit import FAST_TRAINING


def _approved(cluster, job_id, **kw):
    m = cluster.manifest(job_id, parties=["hospital-a", "hospital-b", "hospital-c"], training=FAST_TRAINING, **kw)
    agents = {p: cluster.agent(p) for p in ("hospital-a", "hospital-b", "hospital-c")}
    agents["hospital-a"].client.propose(m)
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    return m, agents


def test_malformed_shard_fails_the_job_without_leaking_values(cluster):
    m, agents = _approved(cluster, "bad-shard", quorum=1)
    a = agents["hospital-a"]
    X = np.full((20, 5), 98765.4321, dtype=np.float32)  # five columns where the schema has thirty
    y = np.zeros(20, dtype=np.int64)
    up = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", table_to_bytes(X, y))
    assert up.send().complete
    assert a.wait(m.job_id, ("done",), timeout=60) == "failed"
    status = a.client.get_job(m.job_id)
    assert status.state == "failed" and status.error.startswith("TensorFormatError: a shard does not match")
    assert "98765" not in status.error
    events = list(a.client.watch(m.job_id, timeout=10))
    assert events[-1].state == "failed"
    with pytest.raises(FailedPrecondition, match="failed, not done"):
        a.client.fetch_output(m.job_id, "hospital-a", "model")


def test_quorum_starts_training_and_later_shards_are_refused(cluster):
    m, agents = _approved(cluster, "quorum-two", quorum=2)
    agents["hospital-a"].upload(m)
    assert agents["hospital-a"].client.get_job(m.job_id).state == "open"
    agents["hospital-b"].upload(m)
    with pytest.raises(FailedPrecondition, match="takes no data"):
        agents["hospital-c"].upload(m)
    assert agents["hospital-a"].wait(m.job_id, ("done",), timeout=60) == "done"
    status = agents["hospital-a"].client.get_job(m.job_id)
    assert list(status.uploaded) == ["hospital-a", "hospital-b"]


def test_public_error_hides_data_derived_messages():
    from mpctrain.enclave.state import public_error
    from mpctrain.train.registry import ModelSpecError
    from mpctrain.train.tensors import TensorFormatError

    assert "label 7" not in public_error(TensorFormatError("table has label 7, the job's schema has only 2 classes"))
    assert public_error(ModelSpecError("unknown model 'x'")) == "ModelSpecError: unknown model 'x'"
    assert public_error(RuntimeError("value 98765.4321")) == "RuntimeError: training failed inside the enclave"


def test_dp_job_reports_the_privacy_spent(cluster):
    import json

    from pooled_kit import run_job

    m, agents = run_job(cluster, "dp", privacy={"epsilon": 8.0, "delta": 1e-5, "clip": 1.0})
    metrics = json.loads(agents["hospital-a"].fetch(m)["metrics"])
    assert 0 < metrics["validation"]["epsilon_spent"] <= 8.0 + 1e-6
