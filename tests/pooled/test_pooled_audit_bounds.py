"""What one party can write into a job's audit view is bounded, and what it writes prints as plain text."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.identity import ENCLAVE_ID
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.uploads import SHARD_OBJECT_ID
from mpctrain.party.agent import load_shard
from mpctrain.party.errors import Aborted, InvalidArgument, ResourceExhausted
from mpctrain.party.uploader import ShardUpload
from mpctrain.seal.stream import StreamSealer
from mpctrain.sim.cluster import SimCluster
from pooled_kit import open_job, run_job

LIMITS = Limits(max_upload_streams=3, max_output_fetches=2)
_JOBS = itertools.count()


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    c = SimCluster(tmp_path_factory.mktemp("bounds"), limits=LIMITS, events=MemoryEventSink())
    with c:
        yield c



def _records(cluster: SimCluster, job_id: str, *kinds: str) -> list[dict]:
    return [f for k, f in cluster.events.events if k in kinds and f.get("job_id") == job_id]


def test_the_uploaders_object_ids_are_plain_names(bounded):
    m, agents = open_job(bounded, "ids-ok")
    a = agents["hospital-a"]
    up = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", load_shard(a.data_path, m))
    assert SHARD_OBJECT_ID.fullmatch(up.object_id)
    for ok in ("shard/hospital-a/0123456789abcdef", "shard/shared-name", "a", "A.b_c-d/e/f/g"):
        assert SHARD_OBJECT_ID.fullmatch(ok)


@pytest.mark.parametrize("object_id", [
    "shard/c/1, header sha256 cccc… (seq 9)\n  output b: model, 1227 bytes",  # a forged summary line
    "shard/c/\x1b[2A\x1b[K",  # erases lines on a terminal
    "shard/c/\u202eevil",  # reverses what follows
    "shard c", "/shard", "shard//c", "shard/.", "x" * 65, "a/b/c/d/e",
])
def test_object_ids_that_are_not_plain_names_are_refused(bounded, object_id):
    m, agents = open_job(bounded, f"ids-{next(_JOBS)}")
    b = agents["hospital-b"]
    sealer = StreamSealer(sender=b.identity, sender_id="hospital-b",
                          recipients=[(ENCLAVE_ID, b.enclave.kem_alg, b.enclave.kem_public)], purpose="shard",
                          job_id=m.job_id, object_id=object_id, total_size=10)
    with pytest.raises(InvalidArgument, match="object id is 1 to 4 '/'-separated names"):
        list(b.client.upload(m.job_id, sealer.header_bytes, lambda s: iter(())))
    assert _records(bounded, m.job_id, "shard.started", "shard.resumed") == []


def test_upload_streams_of_one_party_and_job_are_bounded(bounded):
    m, agents = open_job(bounded, "streams")
    a, b = agents["hospital-a"], agents["hospital-b"]
    shard = load_shard(a.data_path, m)
    up = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard, chunk_size=1024)
    assert up.n_chunks > LIMITS.max_upload_streams
    for stream in range(LIMITS.max_upload_streams):  # one start, then resumes
        assert not up.send(stop_after=stream + 1).complete
    with pytest.raises(ResourceExhausted, match="max_upload_streams"):
        up.send()  # one resume too many
    fresh = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard, chunk_size=1024)
    with pytest.raises(ResourceExhausted, match="max_upload_streams"):
        fresh.send()  # nor can a new header start over
    opened = _records(bounded, m.job_id, "shard.started", "shard.resumed", "shard.replaced")
    assert len(opened) == LIMITS.max_upload_streams and {f["party"] for f in opened} == {"hospital-a"}
    other = ShardUpload(b.client, m.job_id, b.enclave, b.identity, "hospital-b", load_shard(b.data_path, m))
    assert other.send().complete  # another party's budget is its own


def _sealer(ag, m, *, purpose: str = "shard", total: int = 4096) -> StreamSealer:
    return StreamSealer(sender=ag.identity, sender_id=ag.party_id,
                        recipients=[(ENCLAVE_ID, ag.enclave.kem_alg, ag.enclave.kem_public)], purpose=purpose,
                        job_id=m.job_id, object_id=f"shard/{ag.party_id}/{next(_JOBS)}", total_size=total,
                        chunk_size=1024)


def test_streams_refused_before_they_open_use_up_nothing_of_the_budget(bounded):
    """A stream refused before it opens (ABORTED while the party's earlier stream still runs, a header that
    does not open) leaves no record in the job's view, so it counts nothing against max_upload_streams; nor
    does a bad header replace the party's unfinished upload."""
    m, agents = open_job(bounded, "refused-streams")
    a = agents["hospital-a"]
    release = threading.Event()

    def hold(start):  # the first stream stays open, sending nothing, until released
        release.wait(30)
        return iter(())

    held = _sealer(a, m)
    acks = a.client.upload(m.job_id, held.header_bytes, hold)
    try:
        assert next(acks).next_index == 0  # opened: one stream of the budget of 3
        for _ in range(LIMITS.max_upload_streams):
            with pytest.raises(Aborted, match="still streaming"):
                list(a.client.upload(m.job_id, _sealer(a, m).header_bytes, lambda s: iter(())))
            with pytest.raises(InvalidArgument, match="ContextMismatch"):  # sealed as an output, not a shard
                list(a.client.upload(m.job_id, _sealer(a, m, purpose="output").header_bytes, lambda s: iter(())))
    finally:
        release.set()
    list(acks)
    assert a.client.upload_status(m.job_id, held.header.object_id).known  # the bad headers replaced nothing
    for _ in range(50):  # the held stream's handler ends just after the client sees it end
        try:
            assert ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a",
                               load_shard(a.data_path, m)).send().complete
            break
        except Aborted:
            time.sleep(0.1)
    assert bounded.aggregator.store.get(m.job_id).upload_streams["hospital-a"] == 2
    mine = [k for k, f in bounded.events.events if f.get("job_id") == m.job_id and f.get("party") == "hospital-a"]
    assert [k for k in mine if k.startswith("shard.")] == ["shard.started", "shard.replaced", "shard.started",
                                                          "shard.accepted"]


def test_fetches_of_one_output_are_bounded(bounded):
    m, agents = run_job(bounded, "fetches")
    a = agents["hospital-a"]
    for _ in range(LIMITS.max_output_fetches):
        a.client.fetch_output(m.job_id, "hospital-a", "model")
    with pytest.raises(ResourceExhausted, match="max_output_fetches"):
        a.client.fetch_output(m.job_id, "hospital-a", "model")
    a.client.fetch_output(m.job_id, "hospital-a", "metrics")  # counted per output
    fetched = _records(bounded, m.job_id, "output.fetched")
    assert [f["name"] for f in fetched].count("model") == LIMITS.max_output_fetches
