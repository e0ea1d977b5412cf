"""Rate limits on what any network caller can make the enclave do (evidence, refusal records)."""

from __future__ import annotations

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
