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
    with pytest.raises(FailedPrecondition, match=r"bad-shard failed: TensorFormatError: .*; it has no outputs"):
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


def test_public_error_shows_messages_by_class_only():
    from mpctrain.enclave.state import JobFailed, public_error
    from mpctrain.jobs import ManifestError
    from mpctrain.train.registry import ModelSpecError
    from mpctrain.train.tensors import TensorFormatError

    assert "label 7" not in public_error(TensorFormatError("table has label 7, the job's schema has only 2 classes"))
    assert public_error(ManifestError("quorum must be 1..3")) == "ManifestError: quorum must be 1..3"
    assert public_error(JobFailed("TrainingFailed", "withheld")) == "TrainingFailed: withheld"
    # a model error can carry a size computed from the data's class count: pooled checks models at propose
    assert public_error(ModelSpecError("mlp too large: 402 parameters")) == (
        "ModelSpecError: training failed inside the enclave")
    # by class, not by name: an unrelated error called ManifestError, or a subclass, shows no message
    impostor = type("ManifestError", (Exception,), {})
    assert public_error(impostor("label 7")) == "ManifestError: training failed inside the enclave"
    sub = type("Sub", (ManifestError,), {})
    assert public_error(sub("label 7")) == "Sub: training failed inside the enclave"
    assert public_error(type("JobFailed", (Exception,), {})("label 7")) == (
        "JobFailed: training failed inside the enclave")


def test_a_shard_finishing_after_training_started_is_refused_and_wiped(cluster):
    """Quorum 2 of 3: hospital-c's upload opened while the job took data, but its last chunk comes after the
    quorum's training started. It is refused (not acknowledged complete, not listed as uploaded, no
    shard.accepted), and nothing of it stays in enclave memory."""
    import threading
    import time

    from mpctrain.party.agent import load_shard
    from mpctrain.wire import data_pb2

    m, agents = _approved(cluster, "late-shard", quorum=2)
    late = agents["hospital-c"]
    up = ShardUpload(late.client, m.job_id, late.enclave, late.identity, "hospital-c",
                     load_shard(late.data_path, m), chunk_size=4096)
    assert up.n_chunks >= 2
    go = threading.Event()
    acks, errors = [], []

    def request(i):
        r = data_pb2.UploadRequest()
        r.chunk.index, r.chunk.frame, r.chunk.last = i, up.frame(i), i == up.n_chunks - 1
        return r

    def chunks(start):
        for i in range(start, up.n_chunks - 1):
            yield request(i)
        go.wait(60)
        yield request(up.n_chunks - 1)

    def run():
        try:
            for ack in late.client.upload(m.job_id, up.header, chunks):
                acks.append(ack)
        except FailedPrecondition as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while (not acks or acks[-1].next_index < up.n_chunks - 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    agents["hospital-a"].upload(m)
    agents["hospital-b"].upload(m)
    while late.client.get_job(m.job_id).state == "open" and time.monotonic() < deadline:
        time.sleep(0.02)
    go.set()
    t.join(60)
    assert errors and "no longer takes data" in str(errors[0])
    assert not any(a.complete for a in acks)
    assert late.wait(m.job_id, ("done",), timeout=120) == "done"
    assert sorted(late.client.get_job(m.job_id).uploaded) == ["hospital-a", "hospital-b"]
    kinds = [(k, f.get("party")) for k, f in cluster.events.events if f.get("job_id") == m.job_id]
    assert ("shard.accepted", "hospital-c") not in kinds
    assert up.object_id.startswith("shard/")
    assert cluster.aggregator.uploads.get(m.job_id, up.object_id) is None  # dropped, its plaintext overwritten
    job = cluster.aggregator.store.get(m.job_id)
    assert all(len(s.buf) == 0 for s in job.shards.values())  # the quorum's shards: wiped and released
