"""Rate limits on what any network caller can make the enclave do (evidence, refusal records)."""

from __future__ import annotations

import time

from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.ratelimit import CallerRateLimit, ThrottledSink, peer_host


def test_peer_host_drops_the_port_and_groups_ipv6_by_its_64_block():
    assert peer_host("ipv4:10.0.0.7:50512") == peer_host("ipv4:10.0.0.7:1") == "ipv4:10.0.0.7"
    assert peer_host("ipv6:[2001:db8::1]:443") == peer_host("ipv6:[2001:db8::ffff:1]:9") == "ipv6:2001:db8::/64"
    assert peer_host("ipv6:[2001:db8:0:1::1]:443") != peer_host("ipv6:[2001:db8::1]:443")
    assert peer_host("unix:/run/agg.sock") == "unix:/run/agg.sock"
    assert peer_host("ipv4:not-an-address:1") == "ipv4:not-an-address:1"


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
