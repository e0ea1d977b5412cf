"""Reads are signed and authorized like writes: a job, its events, receipt and audit view are its parties' only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpctrain.enclave.audit_service import GET_LOG, AuditService
from mpctrain.enclave.auth import RequestAuthenticator, auth_metadata
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.state import JobStore
from mpctrain.party.audit_check import AuditCheckFailed, fetch_audit_log, fetch_job_view
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import PermissionDenied
from mpctrain.seal.keys import IdentityKey
from mpctrain.wire import (
    attestation_pb2,
    attestation_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
)
from pooled_kit import FAST_TRAINING

GET = "/mpctrain.v1.Jobs/GetJob"
LIST = "/mpctrain.v1.Jobs/ListJobs"
WATCH = "/mpctrain.v1.Jobs/WatchJob"
RECEIPT = "/mpctrain.v1.Results/GetReceipt"
FETCH = "/mpctrain.v1.Results/FetchOutput"
AB = "readauth-ab"  # hospital-a, hospital-b
CR = "readauth-cr"  # hospital-c, researcher
MISSING = "readauth-missing"

Call = Callable[[grpc.Channel, object, object], list]


def _unary(stub: Callable, name: str) -> Call:
    return lambda ch, req, md: [getattr(stub(ch), name)(req, metadata=md, timeout=10)]


def _stream(stub: Callable, name: str) -> Call:
    return lambda ch, req, md: list(getattr(stub(ch), name)(req, metadata=md, timeout=10))


# method -> (request for a job id, how to call it)
JOB_READS: dict[str, tuple[Callable[[str], object], Call]] = {
    GET: (lambda j: jobs_pb2.GetJobRequest(job_id=j), _unary(jobs_pb2_grpc.JobsStub, "GetJob")),
    WATCH: (lambda j: jobs_pb2.WatchJobRequest(job_id=j), _stream(jobs_pb2_grpc.JobsStub, "WatchJob")),
    RECEIPT: (lambda j: results_pb2.GetReceiptRequest(job_id=j), _unary(results_pb2_grpc.ResultsStub, "GetReceipt")),
    GET_LOG: (lambda j: audit_pb2.GetLogRequest(job_id=j), _stream(audit_pb2_grpc.AuditStub, "GetLog")),
    FETCH: (lambda j: results_pb2.FetchOutputRequest(job_id=j, recipient="hospital-c", name="model"),
            _stream(results_pb2_grpc.ResultsStub, "FetchOutput")),
}
ALL_READS = {**JOB_READS, LIST: (lambda j: jobs_pb2.ListJobsRequest(), _unary(jobs_pb2_grpc.JobsStub, "ListJobs")),
             "whole-log": (lambda j: audit_pb2.GetLogRequest(), _stream(audit_pb2_grpc.AuditStub, "GetLog"))}


def _method(name: str) -> str:
    return GET_LOG if name == "whole-log" else name


@pytest.fixture(scope="module")
def jobs(cluster) -> dict[str, object]:
    out = {}
    for job_id, parties in ((AB, ["hospital-a", "hospital-b"]), (CR, ["hospital-c", "researcher"])):
        m = cluster.manifest(job_id, parties=parties, training=FAST_TRAINING, recipients=parties)
        cluster.agent(m.proposer).client.propose(m)
        out[job_id] = m
    return out


@pytest.fixture(scope="module")
def channel(cluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.target) as ch:
        yield ch


def _md(cluster, pid: str, method: str, req, *, key: IdentityKey | None = None, now: float | None = None):
    return auth_metadata(key or cluster.parties[pid].identity, pid, method, req, now=now)


def _code(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("name", sorted(ALL_READS))
def test_unsigned_read_is_unauthenticated(cluster, jobs, channel, name):
    make, call = ALL_READS[name]
    code, details = _code(lambda: call(channel, make(AB), None))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "lacks authentication metadata" in details


@pytest.mark.parametrize("name", sorted(ALL_READS))
def test_read_signed_by_another_key_is_unauthenticated(cluster, jobs, channel, name):
    make, call = ALL_READS[name]
    req = make(AB)
    forged = _md(cluster, "hospital-a", _method(name), req, key=IdentityKey.generate())
    code, details = _code(lambda: call(channel, req, forged))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "does not verify" in details
    # another party's genuine key under hospital-a's name is no better
    borrowed = _md(cluster, "hospital-a", _method(name), req, key=cluster.parties["hospital-c"].identity)
    assert _code(lambda: call(channel, req, borrowed))[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("name", sorted(JOB_READS))
def test_signature_is_bound_to_the_request_and_the_method(cluster, jobs, channel, name):
    make, call = JOB_READS[name]
    moved = _md(cluster, "hospital-a", name, make(CR))  # signed for another job id
    code, details = _code(lambda: call(channel, make(AB), moved))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "does not verify" in details
    other = RECEIPT if name == GET else GET  # GetJobRequest and GetReceiptRequest serialise alike
    wrong_method = _md(cluster, "hospital-a", other, JOB_READS[other][0](AB))
    assert _code(lambda: call(channel, make(AB), wrong_method))[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("name", sorted(ALL_READS))
def test_stale_read_is_unauthenticated(cluster, jobs, channel, name):
    make, call = ALL_READS[name]
    req = make(AB)
    stale = _md(cluster, "hospital-a", _method(name), req, now=time.time() - 3600)
    code, details = _code(lambda: call(channel, req, stale))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "freshness" in details


def test_replayed_reads_are_unauthenticated(cluster, jobs, channel):
    for name in (GET, RECEIPT, LIST, GET_LOG, "whole-log"):
        make, call = ALL_READS[name]
        req = make(AB)
        md = _md(cluster, "hospital-a", _method(name), req)
        try:
            call(channel, req, md)  # the first use is served (or refused for its content, not its signature)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and name == RECEIPT  # no receipt yet
        code, details = _code(lambda: call(channel, req, md))  # noqa: B023 - called at once
        assert code == grpc.StatusCode.UNAUTHENTICATED and "replayed" in details, name


def test_replayed_watch_is_unauthenticated(cluster, jobs, channel):
    req = jobs_pb2.WatchJobRequest(job_id=AB)
    md = _md(cluster, "hospital-b", WATCH, req)
    stream = jobs_pb2_grpc.JobsStub(channel).WatchJob(req, metadata=md, timeout=10)
    first = next(stream)  # the job is open to its party: the stream starts with its past events
    stream.cancel()
    assert first.job_id == AB
    code, details = _code(lambda: list(jobs_pb2_grpc.JobsStub(channel).WatchJob(req, metadata=md, timeout=10)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "replayed" in details


@pytest.mark.parametrize("name", sorted(JOB_READS))
@pytest.mark.parametrize("outsider", ["hospital-c", "researcher"])
def test_party_outside_the_job_is_denied_and_cannot_tell_if_it_exists(cluster, jobs, channel, name, outsider):
    make, call = JOB_READS[name]
    details = {}
    for job_id in (AB, MISSING):
        req = make(job_id)
        code, details[job_id] = _code(lambda: call(channel, req, _md(cluster, outsider, name, req)))  # noqa: B023
        assert code == grpc.StatusCode.PERMISSION_DENIED, (job_id, details[job_id])
    assert details[AB].replace(AB, "J") == details[MISSING].replace(MISSING, "J")  # same answer, either way


def test_parties_of_the_job_read_it_in_any_role(cluster, jobs, channel):
    for pid, job_id in (("hospital-a", AB), ("hospital-b", AB), ("hospital-c", CR), ("researcher", CR)):
        req = jobs_pb2.GetJobRequest(job_id=job_id)
        status = jobs_pb2_grpc.JobsStub(channel).GetJob(req, metadata=_md(cluster, pid, GET, req), timeout=10)
        assert status.job_id == job_id and status.manifest == jobs[job_id].to_bytes()
        req = results_pb2.GetReceiptRequest(job_id=job_id)
        code, details = _code(lambda: results_pb2_grpc.ResultsStub(channel).GetReceipt(
            req, metadata=_md(cluster, pid, RECEIPT, req), timeout=10))  # noqa: B023
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no receipt yet" in details, details


def test_list_shows_only_the_callers_jobs(cluster, jobs):
    for pid, mine, theirs in (("hospital-a", AB, CR), ("hospital-b", AB, CR), ("hospital-c", CR, AB),
                              ("researcher", CR, AB)):
        with AggregatorClient(cluster.target, pid, cluster.parties[pid].identity) as client:
            listed = client.list_jobs()
        ids = {s.job_id for s in listed}
        assert mine in ids and theirs not in ids, pid
        assert all(pid in s.manifest.decode() for s in listed)  # every job shown names the caller


def test_client_reads_are_signed_and_typed(cluster, jobs):
    with AggregatorClient(cluster.target, "hospital-c", cluster.parties["hospital-c"].identity) as client:
        assert client.get_job(CR).state == "proposed"
        with pytest.raises(PermissionDenied, match="not named by job"):
            client.get_job(AB)
        with pytest.raises(PermissionDenied):
            list(client.watch(AB, timeout=10))
        with pytest.raises(PermissionDenied):
            client.get_receipt(AB)
    ident = cluster.parties["hospital-c"].identity
    with grpc.insecure_channel(cluster.target) as ch:
        view = fetch_audit_log(ch, CR, party_id="hospital-c", identity=ident)
        assert {json.loads(raw)["job_id"] for _, raw in view} <= {None, CR}
        with pytest.raises(AuditCheckFailed, match="PERMISSION_DENIED"):
            fetch_audit_log(ch, AB, party_id="hospital-c", identity=ident)
        with pytest.raises(AuditCheckFailed, match="UNAUTHENTICATED"):
            fetch_audit_log(ch, CR, party_id="hospital-c", identity=IdentityKey.generate())


def test_whole_log_is_for_known_parties_only(cluster, jobs):
    with grpc.insecure_channel(cluster.target) as ch:
        whole = fetch_audit_log(ch, party_id="hospital-c", identity=cluster.parties["hospital-c"].identity)
        # documented (docs/audit.md): the whole log shows other jobs' metadata to any known party
        assert AB in {json.loads(raw)["job_id"] for _, raw in whole}
        with pytest.raises(AuditCheckFailed, match="UNAUTHENTICATED"):
            fetch_audit_log(ch, party_id="stranger", identity=IdentityKey.generate())


def test_attestation_and_health_stay_open(cluster, channel):
    import os

    ev = attestation_pb2_grpc.AttestationStub(channel).GetEvidence(
        attestation_pb2.GetEvidenceRequest(nonce=os.urandom(32)), timeout=10)
    assert ev.cpu  # served to anyone: attestation comes before any trust
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def bare_audit(tmp_path) -> Iterator[tuple[str, IdentityKey, IdentityKey]]:
    """An Audit service alone: one party known from the config (no job names it) and one auditor."""
    known, auditor = IdentityKey.generate(), IdentityKey.generate()
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":0,"kind":"segment.started","job_id":null}\n')
    store = JobStore(MemoryEventSink(), known_parties={"old": {known.public_bytes()}})
    service = AuditService(path, MemoryEventSink(), RequestAuthenticator(), store,
                           auditors={"auditor": auditor.public_bytes()})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    audit_pb2_grpc.add_AuditServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", known, auditor
    finally:
        server.stop(0)


def test_whole_log_needs_a_job_or_the_auditors_list(bare_audit):
    target, known, auditor = bare_audit
    with grpc.insecure_channel(target) as ch:
        assert len(fetch_audit_log(ch, party_id="auditor", identity=auditor)) == 1
        with pytest.raises(AuditCheckFailed, match=r"PERMISSION_DENIED.*auditor"):
            fetch_audit_log(ch, party_id="old", identity=known)  # authentic, but named by no job
        with pytest.raises(AuditCheckFailed, match="PERMISSION_DENIED"):
            fetch_audit_log(ch, "some-job", party_id="auditor", identity=auditor)  # an auditor is no job party
        with pytest.raises(AuditCheckFailed, match="UNAUTHENTICATED"):
            fetch_audit_log(ch, party_id="auditor", identity=known)  # the auditor's id, another key
        with pytest.raises(AuditCheckFailed, match=r"FAILED_PRECONDITION.*signs no job heads"):
            fetch_job_view(ch, "some-job", party_id="auditor", identity=auditor)  # no AuditLog to sign with


def test_party_waiting_for_its_first_job_keeps_polling_but_a_wrong_key_fails(tmp_path):
    """`party run` may start before the proposal: "unknown party" then means "no job yet", nothing else does."""
    import threading

    from mpctrain.party.errors import Unauthenticated
    from mpctrain.party.profile import find_job
    from mpctrain.sim.cluster import SimCluster

    with SimCluster(tmp_path, events=MemoryEventSink()) as c:
        found: dict[str, object] = {}
        waiter = c.agent("hospital-b")
        t = threading.Thread(target=lambda: found.setdefault("m", find_job(waiter, None, timeout=20, poll=0.1)))
        t.start()
        time.sleep(0.5)  # hospital-b polls while no manifest names it
        assert t.is_alive() and not found
        c.agent("hospital-a").client.propose(c.manifest("late", parties=["hospital-a", "hospital-b"]))
        t.join(20)
        assert found["m"].job_id == "late"
        impostor = c.agent("hospital-b", client=AggregatorClient(c.target, "hospital-b", IdentityKey.generate()))
        with pytest.raises(Unauthenticated, match="does not verify"):
            find_job(impostor, None, timeout=0)
        impostor.client.close()
        waiter.client.close()


def test_list_pages_jobs_that_would_not_fit_one_reply(cluster, jobs, monkeypatch):
    """Anyone may propose jobs naming a party, with manifests up to 1 MiB: one reply holding them all would
    pass gRPC's 4 MiB limit and the party could not list its jobs. The list comes in pages (here made small,
    so a few ordinary jobs fill several), each within the limit, each job on exactly one page."""
    from mpctrain.enclave.jobs_service import LIST_PAGE_BYTES
    from mpctrain.enclave.limits import Limits
    from mpctrain.jobs.manifest import MAX_MANIFEST_BYTES

    # a page stops before it would pass LIST_PAGE_BYTES, or is one job alone (a manifest and a few ids)
    assert max(LIST_PAGE_BYTES, MAX_MANIFEST_BYTES) + (64 << 10) <= Limits().max_message_bytes
    padded = []
    for i in range(5):
        m = cluster.manifest(f"readauth-pad-{i}", parties=["hospital-c", "researcher"], training=FAST_TRAINING,
                             recipients=["hospital-c"])
        cluster.agent(m.proposer).client.propose(m)
        padded.append(m.job_id)
    monkeypatch.setattr(cluster.aggregator.jobs, "page_bytes", 2 * len(jobs[CR].to_bytes()))
    req = jobs_pb2.ListJobsRequest()
    first = jobs_pb2_grpc.JobsStub(grpc.insecure_channel(cluster.target)).ListJobs(
        req, metadata=_md(cluster, "hospital-c", LIST, req), timeout=10)
    assert first.next_page_token and 0 < len(first.jobs) < 6
    with AggregatorClient(cluster.target, "hospital-c", cluster.parties["hospital-c"].identity) as client:
        listed = [s.job_id for s in client.list_jobs()]
    assert listed == sorted(listed) and set(padded) | {CR} <= set(listed) and AB not in listed
    assert len(listed) == len(set(listed))  # no job on two pages


def test_list_pages_follow_a_smaller_message_limit(tmp_path):
    """An aggregator configured with a smaller max_message_bytes sends pages under that limit, not under the
    default one: otherwise a party's list fails (RESOURCE_EXHAUSTED) once its jobs pass the smaller limit."""
    from mpctrain.enclave.jobs_service import list_page_bytes
    from mpctrain.enclave.limits import Limits
    from mpctrain.sim.cluster import SimCluster

    limit = 192 << 10
    assert list_page_bytes(limit) == 128 << 10 and list_page_bytes(4 << 20) == (4 << 20) - (512 << 10)
    assert list_page_bytes(64 << 10) == 32 << 10  # half the limit, at least
    with SimCluster(tmp_path, limits=Limits(max_message_bytes=limit), events=MemoryEventSink()) as c:
        proposed = []
        for i in range(8):  # 8 x 40 KiB of manifests: well past the limit in one reply
            m = c.manifest(f"small-limit-{i}", parties=["hospital-a", "hospital-b"], training=FAST_TRAINING)
            m = m.from_obj({**json.loads(m.to_bytes()), "schema": {**m.schema, "notes": "x" * (40 << 10)}})
            c.agent("hospital-a").client.propose(m)
            proposed.append(m.job_id)
        with grpc.insecure_channel(c.target) as channel:
            token, pages = "", []
            while True:
                req = jobs_pb2.ListJobsRequest(page_token=token)
                page = jobs_pb2_grpc.JobsStub(channel).ListJobs(req, metadata=_md(c, "hospital-b", LIST, req),
                                                                timeout=10)
                pages.append(page)
                if not (token := page.next_page_token):
                    break
        assert len(pages) > 2 and all(p.ByteSize() <= list_page_bytes(limit) + 1024 for p in pages)
        with AggregatorClient(c.target, "hospital-b", c.parties["hospital-b"].identity) as client:
            assert [j.job_id for j in client.list_jobs()] == sorted(proposed)


def test_list_pages_fit_the_party_client_under_a_larger_message_limit(tmp_path):
    """`max_message_bytes = 16 MiB` lets parties send more, but their client still receives at most 4 MiB:
    pages sized to the server's limit (14 MiB) made every ListJobs fail with RESOURCE_EXHAUSTED once a
    party's jobs passed 4 MiB. Pages follow the smaller of the two limits."""
    from mpctrain.enclave.jobs_service import list_page_bytes
    from mpctrain.enclave.limits import CLIENT_MAX_MESSAGE_BYTES, Limits
    from mpctrain.party.client import MAX_MESSAGE_BYTES
    from mpctrain.sim.cluster import SimCluster

    big = Limits(max_message_bytes=16 << 20)
    assert MAX_MESSAGE_BYTES == CLIENT_MAX_MESSAGE_BYTES == big.reply_bytes == 4 << 20
    with SimCluster(tmp_path, limits=big, events=MemoryEventSink()) as c:
        assert c.aggregator.jobs.page_bytes == list_page_bytes(4 << 20)
        proposed = []
        for i in range(6):  # 6 x 800 KiB of manifests: past the client's 4 MiB in one reply
            m = c.manifest(f"big-limit-{i}", parties=["hospital-a", "hospital-b"], training=FAST_TRAINING)
            m = m.from_obj({**json.loads(m.to_bytes()), "schema": {**m.schema, "notes": "x" * (800 << 10)}})
            c.agent("hospital-a").client.propose(m)
            proposed.append(m.job_id)
        with AggregatorClient(c.target, "hospital-b", c.parties["hospital-b"].identity) as client:
            assert [j.job_id for j in client.list_jobs()] == sorted(proposed)


def test_list_refuses_an_oversized_page_token(cluster, jobs, channel):
    req = jobs_pb2.ListJobsRequest(page_token="j" * 257)
    code, details = _code(lambda: jobs_pb2_grpc.JobsStub(channel).ListJobs(
        req, metadata=_md(cluster, "hospital-c", LIST, req), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page token" in details
