"""Every wire limit and malformed request maps to a clear status and a typed client error."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from mpctrain.enclave.auth import MD_SIGNATURE, MD_TIME, AuthError, RequestAuthenticator, auth_metadata
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.identity import ENCLAVE_ID
from mpctrain.enclave.limits import Limits
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import (
    AlreadyExists,
    AttestationRefused,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    from_rpc_error,
)
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.stream import StreamSealer
from mpctrain.sim.cluster import SimCluster
from mpctrain.wire import attestation_pb2, data_pb2, jobs_pb2
from pooled_kit import open_job

SMALL = Limits(max_message_bytes=64 << 10, max_chunk_bytes=16 << 10, max_chunks=8, max_shard_bytes=100 << 10,
               max_concurrent_uploads=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    c = SimCluster(tmp_path_factory.mktemp("limits"), limits=SMALL, events=MemoryEventSink())
    with c:
        yield c



@pytest.fixture(scope="module")
def opened(small):
    return open_job(small, "limits")


def _sealer(ag, m, total, chunk=4096, object_id=None):
    return StreamSealer(sender=ag.identity, sender_id=ag.party_id,
                        recipients=[(ENCLAVE_ID, ag.enclave.kem_alg, ag.enclave.kem_public)], purpose="shard",
                        job_id=m.job_id, object_id=object_id or f"shard/{ag.party_id}/{time.time_ns()}",
                        chunk_size=chunk, total_size=total)


def test_shard_size_and_chunk_count_limits(opened):
    m, agents = opened
    a = agents["hospital-a"]
    with pytest.raises(ResourceExhausted, match=r"exceeds the limit|over the limit"):
        list(a.client.upload(m.job_id, _sealer(a, m, 200 << 10).header_bytes, lambda s: iter(())))
    with pytest.raises(ResourceExhausted, match="chunks exceed"):
        list(a.client.upload(m.job_id, _sealer(a, m, 90 << 10, chunk=1024).header_bytes, lambda s: iter(())))
    with pytest.raises(ResourceExhausted, match="chunk size"):
        list(a.client.upload(m.job_id, _sealer(a, m, 90 << 10, chunk=32 << 10).header_bytes, lambda s: iter(())))


def test_oversized_message_is_resource_exhausted(opened):
    m, agents = opened
    b = agents["hospital-b"]
    s = _sealer(b, m, 16 << 10, chunk=16 << 10)

    def chunks(start):
        yield data_pb2.UploadChunk(index=0, frame=b"\0" * (80 << 10), last=True)

    with pytest.raises(ResourceExhausted):
        list(b.client.upload(m.job_id, s.header_bytes, chunks))


def test_out_of_order_and_malformed_stream_messages(opened):
    m, agents = opened
    c = agents["hospital-c"]
    s = _sealer(c, m, 8192)

    def skip(start):
        yield data_pb2.UploadChunk(index=start + 1, frame=s.seal_chunk(1, b"\0" * 4096, True), last=True)

    with pytest.raises(InvalidArgument, match="expected chunk 0"):
        list(c.client.upload(m.job_id, s.header_bytes, skip))
    # a stream that starts with a chunk, not an UploadOpen
    first = data_pb2.UploadRequest(chunk=data_pb2.UploadChunk(index=0, frame=b"x"))
    md = auth_metadata(c.identity, c.party_id, "/mpctrain.v1.Data/UploadShard", first)
    with pytest.raises(grpc.RpcError) as err:
        list(c.client.data.UploadShard(iter([first]), metadata=md, timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # an empty stream
    with pytest.raises(grpc.RpcError) as err:
        list(c.client.data.UploadShard(iter([]), timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_upload_limit(opened):
    m, agents = opened
    a, b = agents["hospital-a"], agents["hospital-b"]
    hold, started = threading.Event(), threading.Event()
    errors = []

    def held(start):
        started.set()
        hold.wait(10)
        return iter(())

    def run():
        try:
            list(a.client.upload(m.job_id, _sealer(a, m, 4096).header_bytes, held))
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert started.wait(10)
        with pytest.raises(ResourceExhausted, match="already in progress"):
            list(b.client.upload(m.job_id, _sealer(b, m, 4096).header_bytes, lambda s: iter(())))
    finally:
        hold.set()
        t.join(10)
    assert errors == []


def test_job_calls_refused_with_clear_codes(small, opened):
    m, agents = opened
    a = agents["hospital-a"]
    with pytest.raises(AlreadyExists):
        a.client.propose(m)
    with pytest.raises(PermissionDenied, match="not the proposer"):
        agents["hospital-b"].client.propose(small.manifest("by-b", proposer="hospital-a"))
    with pytest.raises(FailedPrecondition, match="expired"):
        a.client.propose(small.manifest("old", expires=int(time.time()) - 1))
    with pytest.raises(FailedPrecondition, match="does not run 'federated'"):
        a.client.propose(small.manifest("fed", mode="federated",
                                        training={"rounds": 1, "flower": {"code_digest": "ab" * 48}}))
    req = jobs_pb2.ProposeJobRequest(manifest=b"{not json")
    md = auth_metadata(a.identity, "hospital-a", "/mpctrain.v1.Jobs/ProposeJob", req)
    with pytest.raises(grpc.RpcError) as err:
        a.client.jobs.ProposeJob(req, metadata=md, timeout=5)
    assert isinstance(from_rpc_error(err.value), InvalidArgument)
    good = jobs_pb2.ProposeJobRequest(manifest=small.manifest("unsigned").to_bytes())
    with pytest.raises(grpc.RpcError) as err:
        a.client.jobs.ProposeJob(good, timeout=5)  # no metadata
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stale = auth_metadata(a.identity, "hospital-a", "/mpctrain.v1.Jobs/ProposeJob", good, now=time.time() - 3600)
    with pytest.raises(grpc.RpcError) as err:
        a.client.jobs.ProposeJob(good, metadata=stale, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "freshness" in err.value.details()
    # signature over another request (the metadata was moved to a different call)
    other = jobs_pb2.ProposeJobRequest(manifest=small.manifest("other").to_bytes())
    moved = auth_metadata(a.identity, "hospital-a", "/mpctrain.v1.Jobs/ProposeJob", other)
    with pytest.raises(grpc.RpcError) as err:
        a.client.jobs.ProposeJob(good, metadata=moved, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(FailedPrecondition, match="not done"):
        a.client.fetch_output(m.job_id, "hospital-a", "model")
    with pytest.raises(FailedPrecondition, match="no receipt"):
        a.client.get_receipt(m.job_id)
    with pytest.raises(grpc.RpcError) as err:
        a.client.attestation.GetEvidence(attestation_pb2.GetEvidenceRequest(nonce=b"short"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rejected = [f for k, f in small.events.events if k == "rejected"]
    assert rejected and all("manifest" not in f for f in rejected)


def test_authenticator_unit_checks():
    now = [1_000_000.0]
    auth = RequestAuthenticator(window_s=60, cache_max=2, clock=lambda: now[0])
    key = IdentityKey.generate()
    req = jobs_pb2.GetJobRequest(job_id="j")
    ids = {"p": [key.public_bytes()]}

    def md(**kw):
        return auth_metadata(key, "p", "/m", req, now=now[0], **kw)

    caller = auth.authenticate(md(), "/m", req, lambda pid: ids.get(pid, []))
    assert caller.party_id == "p"
    with pytest.raises(AuthError, match=r"does not verify"):
        auth.authenticate(md(), "/other-method", req, lambda pid: ids.get(pid, []))
    bad = tuple((k, v if k != MD_SIGNATURE else bytes(64)) for k, v in md())
    with pytest.raises(AuthError, match="does not verify"):
        auth.authenticate(bad, "/m", req, lambda pid: ids.get(pid, []))
    garbage = tuple((k, v if k != MD_TIME else "soon") for k, v in md())
    with pytest.raises(AuthError, match="not an integer"):
        auth.authenticate(garbage, "/m", req, lambda pid: ids.get(pid, []))
    auth.authenticate(md(), "/m", req, lambda pid: ids.get(pid, []))
    with pytest.raises(AuthError, match="too many requests"):  # cache full within the window
        auth.authenticate(md(), "/m", req, lambda pid: ids.get(pid, []))
    now[0] += 1000  # old sessions expire from the cache
    auth.authenticate(md(), "/m", req, lambda pid: ids.get(pid, []))


def test_unknown_caller_on_every_mutating_call(small, opened):
    m, _ = opened
    stranger = AggregatorClient(small.target, "nobody", IdentityKey.generate())
    from mpctrain.jobs import Consent

    with pytest.raises(Unauthenticated, match="unknown party"):
        stranger.approve(Consent(m.job_id, "nobody", m.digest(), bytes(64)))
    with pytest.raises(Unauthenticated, match="unknown party"):
        stranger.fetch_output(m.job_id, "nobody", "model")
    with pytest.raises(Unauthenticated, match="unknown party"):
        list(stranger.upload(m.job_id, b"header", lambda s: iter(())))
    with pytest.raises(Unauthenticated, match="unknown party"):
        stranger.upload_status(m.job_id, "x")
    stranger.close()


def test_only_configured_proposers_may_propose(tmp_path):
    from mpctrain.enclave.config import AggregatorConfig, ConfigError
    from mpctrain.enclave.server import Aggregator

    c = SimCluster(tmp_path, events=MemoryEventSink())
    c.start()
    try:
        allowed = c.parties["hospital-b"].identity.public_bytes()
        c.aggregator.jobs.proposers = frozenset({allowed})
        seen = len(c.aggregator.auth._seen)
        for _ in range(3):
            with pytest.raises(PermissionDenied, match="may not propose"):
                c.agent("hospital-a").client.propose(c.manifest("by-a"))
        assert len(c.aggregator.auth._seen) == seen  # refused before its sessions reach the replay cache
        c.agent("hospital-b").client.propose(c.manifest("by-b", proposer="hospital-b"))
    finally:
        c.stop()
    cfg = tmp_path / "agg.toml"
    cfg.write_text(f'device = "cpu"\nproposers = ["{allowed.hex()}"]\n[sim]\nroot_dir = "root"\n')
    agg = Aggregator.from_config(AggregatorConfig.load(cfg))
    assert agg.jobs.proposers == {allowed}
    cfg.write_text('proposers = ["abcd"]\n')
    with pytest.raises(ConfigError, match="32-byte"):
        AggregatorConfig.load(cfg)


def test_garbage_on_every_method_gets_a_status_and_the_server_stays_up(small, opened):
    import os
    import random

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    m, agents = opened
    rng = random.Random(7)
    ch = agents["hospital-a"].client.channel
    unary = ["/mpctrain.v1.Attestation/GetEvidence", "/mpctrain.v1.Jobs/ProposeJob", "/mpctrain.v1.Jobs/ApproveJob",
             "/mpctrain.v1.Jobs/GetJob", "/mpctrain.v1.Data/GetUploadStatus", "/mpctrain.v1.Results/GetReceipt"]
    for _ in range(30):
        method = rng.choice(unary)
        blob = os.urandom(rng.randrange(0, 2048))
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(method)(blob, timeout=5)
        assert err.value.code() != grpc.StatusCode.OK
    # well-formed protobuf with hostile contents on the upload stream: header of random bytes
    a = agents["hospital-a"]
    for _ in range(10):
        with pytest.raises((InvalidArgument, ResourceExhausted)):
            list(a.client.upload(m.job_id, os.urandom(rng.randrange(1, 4096)), lambda s: iter(())))
    health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert a.client.get_job(m.job_id).state == "open"


def test_auditors_come_from_the_config(tmp_path):
    from mpctrain.enclave.config import AggregatorConfig, ConfigError
    from mpctrain.enclave.server import Aggregator

    key = "11" * 32
    cfg = tmp_path / "agg.toml"
    cfg.write_text(f'device = "cpu"\n[sim]\nroot_dir = "root"\n[auditors]\nsecurity-office = "{key}"\n')
    agg = Aggregator.from_config(AggregatorConfig.load(cfg))
    assert agg.auditors == {"security-office": bytes.fromhex(key)}
    for bad in ('[auditors]\nx = "abcd"\n', '[auditors]\nx = 3\n', 'auditors = ["11"]\n'):
        cfg.write_text(bad)
        with pytest.raises(ConfigError, match="auditors"):
            AggregatorConfig.load(cfg)


def test_open_watch_streams_never_starve_the_other_calls(tmp_path):
    """Every WatchJob stream holds a server thread until its job ends: with every watch slot taken (on a job
    nobody will ever consent to), one more watch is refused and attestation and status still answer."""
    from mpctrain.enclave.auth import auth_metadata
    from mpctrain.wire import jobs_pb2_grpc

    limits = Limits(max_watchers=32, max_concurrent_uploads=2)  # as many watches as the old fixed pool had threads
    with SimCluster(tmp_path, limits=limits, researchers=("researcher",), events=MemoryEventSink()) as c:
        assert c.aggregator.max_workers >= limits.max_watchers + limits.max_concurrent_uploads + 8
        c.agent("researcher").client.propose(c.manifest("never", parties=["researcher", "hospital-a"]))
        researcher = c.parties["researcher"]
        with grpc.insecure_channel(c.target) as channel:
            stub = jobs_pb2_grpc.JobsStub(channel)

            def watch():
                req = jobs_pb2.WatchJobRequest(job_id="never")
                return stub.WatchJob(req, metadata=auth_metadata(researcher.identity, "researcher",
                                                                 "/mpctrain.v1.Jobs/WatchJob", req))

            streams = [watch() for _ in range(limits.max_watchers)]
            for s in streams:
                next(s)  # the job's first event: the stream is open and holds its thread
            with pytest.raises(grpc.RpcError) as err:
                next(watch())
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            agent = c.agent("hospital-b")
            agent.client.timeout = 10
            assert agent.attest().cpu.backend == "sim"  # unary calls have threads of their own
            assert c.agent("researcher").client.get_job("never").state == "proposed"
            for s in streams:
                s.cancel()


def test_an_open_upload_holds_only_the_bytes_sent(opened, small):
    """A header declaring the largest shard reserves nothing: memory grows with the chunks that arrive."""
    m, agents = opened
    ag = agents["hospital-b"]
    sealer = _sealer(ag, m, SMALL.max_shard_bytes, chunk=SMALL.max_chunk_bytes)

    def requests():
        first = data_pb2.UploadRequest()
        first.chunk.index, first.chunk.frame, first.chunk.last = 0, sealer.seal_chunk(0, bytes(16 << 10), False), False
        yield first

    acks = list(ag.client.upload(m.job_id, sealer.header_bytes, lambda start: requests()))
    assert acks[-1].next_index == 1
    upload = small.aggregator.uploads.get(m.job_id, sealer.header.object_id)
    assert upload is not None and upload.total_size == SMALL.max_shard_bytes
    assert len(upload.buf) == 16 << 10  # one chunk's worth, not the declared 100 KiB


def test_silent_upload_streams_are_cut_and_free_their_slot(tmp_path):
    """The only upload slot is taken before the caller is known. A stream that never sends its signed opening
    is cut after ``upload_first_message_s``; one that opens and then goes quiet is cut after ``upload_idle_s``
    and stays resumable. Either way the slot comes back and the cut is recorded."""
    from mpctrain.wire import data_pb2_grpc

    limits = Limits(max_concurrent_uploads=1, upload_first_message_s=1, upload_idle_s=1)
    events = MemoryEventSink()
    with SimCluster(tmp_path, limits=limits, events=events) as c:
        m, agents = open_job(c, "silent")
        a = agents["hospital-a"]
        release = threading.Event()

        def silent(*msgs):
            yield from msgs
            release.wait(30)

        with grpc.insecure_channel(c.target) as channel:
            stub = data_pb2_grpc.DataStub(channel)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                list(stub.UploadShard(silent(), timeout=20))  # a network caller that never speaks
            assert err.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - t0 < 10

            sealer = _sealer(a, m, 4096)
            first = data_pb2.UploadRequest(open=data_pb2.UploadOpen(job_id=m.job_id, header=sealer.header_bytes))
            md = auth_metadata(a.identity, a.party_id, "/mpctrain.v1.Data/UploadShard", first)
            deadline = time.monotonic() + 10
            while True:  # the cut stream's handler may still be giving its slot back
                stream = stub.UploadShard(silent(first), metadata=md, timeout=20)
                try:
                    assert next(stream).next_index == 0  # opened, then nothing more
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                        raise
                    md = auth_metadata(a.identity, a.party_id, "/mpctrain.v1.Data/UploadShard", first)
                    time.sleep(0.1)
            with pytest.raises(grpc.RpcError) as err:
                next(stream)
            assert err.value.code() == grpc.StatusCode.CANCELLED
        release.set()
        status = a.client.upload_status(m.job_id, sealer.header.object_id)
        assert status.known and not status.complete  # what was opened can be resumed
        b = agents["hospital-b"]
        for _ in range(50):  # the slot is free again, once the cut handler has ended
            try:
                acks = list(b.client.upload(m.job_id, _sealer(b, m, 4096).header_bytes, lambda s: iter(())))
                break
            except ResourceExhausted:
                time.sleep(0.1)
        assert acks[0].next_index == 0
        cuts = [f["reason"] for k, f in events.events if k == "rejected" and f.get("code") == "CANCELLED"]
        assert cuts == ["silent stream (before its opening)", "silent stream (after 0 chunk(s))"]


def test_evidence_requests_and_refusal_records_are_rate_limited(tmp_path):
    """Anyone may ask for evidence and anyone can cause refusals: both are capped per minute, so a network
    caller can neither keep the TEE busy nor grow the host's audit log without bound."""
    from mpctrain.enclave.audit import read_lines
    from mpctrain.wire import attestation_pb2_grpc, jobs_pb2_grpc

    limits = Limits(evidence_per_minute_per_peer=3, evidence_per_minute=50, rejections_per_minute=2)
    events = MemoryEventSink()
    with SimCluster(tmp_path, limits=limits, events=events) as c:
        a = c.agent("hospital-a")
        for _ in range(3):
            a.attest()
        with pytest.raises(AttestationRefused, match=r"\(busy\).*too many evidence requests"):
            a.attest()
        with grpc.insecure_channel(c.target) as channel:
            stub = jobs_pb2_grpc.JobsStub(channel)
            for _ in range(6):  # unsigned calls: each is refused
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetJob(jobs_pb2.GetJobRequest(job_id="x"), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # still refused, just not recorded
            ev = attestation_pb2_grpc.AttestationStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                ev.GetEvidence(attestation_pb2.GetEvidenceRequest(nonce=bytes(32)), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        rejected = [f for k, f in events.events if k == "rejected"]
        assert len(rejected) == 2 and c.aggregator.events.held() == 6  # 1 evidence + 6 calls + 1 evidence - 2
        stored = [raw for _, raw in read_lines(c.workdir / "audit.jsonl") if b'"kind":"rejected"' in raw]
        assert len(stored) == 2
        assert len([k for k, _ in events.events if k == "evidence.served"]) == 3
