"""Rate limits on what any network caller can make the enclave do (evidence, refusal records)."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from mpctrain.attest.sim import SimAttester, create_sim_root
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.ratelimit import LOCAL_CALLER, UNREADABLE_PEER, CallerRateLimit, ThrottledSink, peer_host
from mpctrain.enclave.server import Aggregator, build_info
from mpctrain.wire import attestation_pb2, attestation_pb2_grpc


def test_peer_host_drops_the_port_and_groups_ipv6_by_its_64_block():
    assert peer_host("ipv4:10.0.0.7:50512") == peer_host("ipv4:10.0.0.7:1") == "ipv4:10.0.0.7"
    assert peer_host("ipv6:[2001:db8::1]:443") == peer_host("ipv6:[2001:db8::ffff:1]:9") == "ipv6:2001:db8::/64"
    assert peer_host("ipv6:[2001:db8:0:1::1]:443") != peer_host("ipv6:[2001:db8::1]:443")


def test_peer_host_reads_the_forms_grpc_really_writes():
    """gRPC percent-encodes the brackets of an IPv6 peer: read raw, each connection (port) was its own caller."""
    assert peer_host("ipv6:%5B::1%5D:54321") == peer_host("ipv6:%5B::1%5D:40000") == "ipv6:::/64"
    assert peer_host("ipv6:%5B2001:db8::7%5D:443") == "ipv6:2001:db8::/64"
    assert peer_host("ipv6:%5Bfe80::1%25eth0%5D:443") == "ipv6:fe80::/64"  # a zone id is dropped
    assert peer_host("ipv6:%5B::ffff:10.0.0.7%5D:443") == peer_host("ipv4:10.0.0.7:9") == "ipv4:10.0.0.7"
    assert peer_host("ipv4:127.0.0.1:54321") == peer_host("ipv4:127.0.0.1:1") == "ipv4:127.0.0.1"
    assert peer_host("unix:/run/agg.sock") == peer_host("unix-abstract:agg") == peer_host("unix:") == LOCAL_CALLER


@pytest.mark.parametrize("peer", [
    "ipv4:not-an-address:1", "ipv4:10.0.0.7", "ipv4:10.0.0.7:", "ipv4:10.0.0.7:port", "ipv4:%5B::1%5D:1",
    "ipv6:::1:54321", "ipv6:%5B::1%5D", "ipv6:%5Bnope%5D:1", "ipv6:%5B10.0.0.7%5D:1", "vsock:3:1024", "", "junk",
])
def test_an_unreadable_peer_shares_one_bucket_never_its_own_per_port(peer):
    assert peer_host(peer) == UNREADABLE_PEER


def test_two_connections_from_one_ipv6_host_share_its_bucket(tmp_path):
    """Over real gRPC on [::1]: each channel is a new connection from a new port, yet one caller."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    create_sim_root(tmp_path)
    identity = EnclaveIdentity.generate(SimAttester(tmp_path, config_digest=bytes(32)), build_info(bytes(32)))
    agg = Aggregator(identity, limits=Limits(evidence_per_minute_per_peer=2), events=MemoryEventSink(), device="cpu")
    port = agg.start("[::1]:0")
    try:
        codes = []
        for _ in range(3):
            with grpc.insecure_channel(f"[::1]:{port}") as channel:
                try:
                    attestation_pb2_grpc.AttestationStub(channel).GetEvidence(
                        attestation_pb2.GetEvidenceRequest(nonce=bytes(32)), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
    finally:
        agg.stop(grace=0)


def test_one_busy_address_is_stopped_without_using_up_everyone_elses_share():
    rate = CallerRateLimit("t", per_peer=2, total=3)
    a, b, c = "ipv4:10.0.0.1:1", "ipv4:10.0.0.2:1", "ipv4:10.0.0.3:1"
    assert [rate.allow(a) for _ in range(5)] == [True, True, False, False, False]
    assert rate.allow(b)  # a's refused calls counted nothing against the total
    assert not rate.allow(c)  # the total is reached
    assert not rate.allow("ipv4:10.0.0.1:2")  # another port of a is still a


def test_refusal_records_are_capped_and_the_rest_counted():
    inner = MemoryEventSink()
    sink = ThrottledSink(inner, per_minute=2)
    for i in range(5):
        sink.emit("rejected", method="m", reason=str(i))
    sink.emit("job.proposed", job_id="j")  # other kinds always pass
    assert inner.kinds() == ["rejected", "rejected", "job.proposed"] and sink.held() == 3
    sink._limiter.storage.reset()  # the minute has passed
    sink.emit("rejected", method="m", reason="late")
    assert inner.events[-1] == ("rejected", {"method": "m", "reason": "late", "suppressed": 3})
    assert sink.held() == 0


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_flood_that_stops_still_has_its_count_written_in_the_next_window():
    """No further refusal comes after the flood: a summary record carries the count once the window has room."""
    inner = MemoryEventSink()
    sink = ThrottledSink(inner, per_minute=2, flush_after_s=0.05)
    for i in range(5):
        sink.emit("rejected", method="m", reason=str(i))
    time.sleep(0.2)  # the window is still full: the summary waits (and counts against the cap when written)
    assert inner.kinds() == ["rejected", "rejected"] and sink.held() == 3
    sink._limiter.storage.reset()  # the minute has passed
    assert _wait_for(lambda: len(inner.events) == 3)
    assert inner.events[-1] == ("rejected", {"reason": ThrottledSink.SUMMARY_REASON, "suppressed": 3})
    assert sink.held() == 0
    time.sleep(0.2)
    assert len(inner.events) == 3  # written once


def test_held_counts_are_flushed_when_the_aggregator_stops():
    from mpctrain.attest import BuildInfo
    from mpctrain.attest.sim import SimAttester, SimRoot
    from mpctrain.enclave.identity import EnclaveIdentity
    from mpctrain.enclave.limits import Limits
    from mpctrain.enclave.server import Aggregator

    attester = SimAttester(SimRoot.generate(), config_digest=b"\x07" * 32)
    inner = MemoryEventSink()
    agg = Aggregator(EnclaveIdentity.generate(attester, BuildInfo("test", b"\x01" * 32, b"\x02" * 32)),
                     limits=Limits(rejections_per_minute=1), events=inner)
    agg.start()
    for i in range(4):
        agg.events.emit("rejected", method="m", reason=str(i))
    assert agg.throttle.held() == 3
    agg.stop()
    kinds = inner.kinds()
    summary = inner.events[kinds.index("aggregator.stopped") - 1]
    assert summary == ("rejected", {"reason": ThrottledSink.SUMMARY_REASON, "suppressed": 3})
    assert agg.throttle.held() == 0
