"""Rate limits on what any network caller can make the enclave do: produce evidence, record a refusal.

``GetEvidence`` is unauthenticated by design (a party attests before it trusts anything), and each call
costs a hardware report and an audit record; each refused call costs an audit record. Without limits a
caller could grow the host's log without bound and keep the TEE busy. Calls are counted per caller
address (an IPv6 caller per /64, the block one host usually holds) and in total, over a moving minute.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Collection
from urllib.parse import unquote

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from mpctrain.enclave.events import EventSink

LOCAL_CALLER = "local"  # unix sockets: only the host's own processes can connect, one caller for the limits
UNREADABLE_PEER = "unreadable"  # every peer string this code cannot read shares one bucket


def peer_host(peer: str) -> str:
    """The bucket key of ``context.peer()``: the caller's address without its port.

    gRPC writes ``ipv4:10.0.0.7:50512`` and ``ipv6:%5B2001:db8::1%5D:443`` (brackets percent-encoded), which
    give ``ipv4:10.0.0.7`` and ``ipv6:2001:db8::/64``. A peer that cannot be read shares ``UNREADABLE_PEER``
    with every other such peer: the raw string holds the port, so keying on it would give every connection a
    fresh budget; shared, such callers are limited together, and never more than the total.
    """
    scheme, _, rest = peer.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return LOCAL_CALLER
    if scheme not in ("ipv4", "ipv6"):
        return UNREADABLE_PEER
    host, sep, port = unquote(rest).rpartition(":")
    if not sep or not port.isdigit():
        return UNREADABLE_PEER
    if scheme == "ipv6":
        if not (host.startswith("[") and host.endswith("]")):
            return UNREADABLE_PEER
        host = host[1:-1].split("%", 1)[0]  # drop a zone id (fe80::1%eth0)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return UNREADABLE_PEER
    if scheme != f"ipv{addr.version}":
        return UNREADABLE_PEER
    if addr.version == 6:
        if addr.ipv4_mapped is not None:  # ::ffff:10.0.0.7 is that IPv4 caller
            return f"ipv4:{addr.ipv4_mapped}"
        return f"ipv6:{ipaddress.ip_network(f'{addr}/64', strict=False)}"
    return f"ipv4:{addr}"


class CallerRateLimit:
    """At most ``per_peer`` calls per minute from one address and ``total`` from all of them."""

    def __init__(self, name: str, *, per_peer: int, total: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._peer = RateLimitItemPerMinute(per_peer, namespace=f"{name}-peer")
        self._total = RateLimitItemPerMinute(total, namespace=f"{name}-total")

    def allow(self, peer: str) -> bool:
        """Count one call from ``peer`` (``context.peer()``); False when it is over either limit.

        A caller over its own limit uses up nothing of the total, so one busy address cannot lock out the rest.
        """
        host = peer_host(peer)
        if not self._limiter.test(self._peer, host):
            return False
        return self._limiter.hit(self._total, "all") and self._limiter.hit(self._peer, host)


class ThrottledSink:
    """Passes every event on, but records of ``kinds`` (refusals any caller can cause) at most ``per_minute``.

    The ones held back are counted, and the count rides on the next one passed (``suppressed``), so the log
    still says how many refusals there were without holding each. A flood that simply stops would leave its
    count unwritten, so ``flush_after_s`` after the first record held, and again until the window has room, a
    summary record (the kind, ``suppressed`` and a fixed ``reason``) is written; ``flush()`` writes it at once
    (the aggregator calls it when it stops). Summaries count against the same per-minute cap.
    """

    SUMMARY_REASON = "refusals held back by the rate limit"

    def __init__(self, inner: EventSink, *, per_minute: int, kinds: Collection[str] = ("rejected",),
                 flush_after_s: float = 60.0) -> None:
        self.inner = inner
        self.kinds = frozenset(kinds)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._item = RateLimitItemPerMinute(per_minute, namespace="events")
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._flush_after_s = flush_after_s
        self._timer: threading.Timer | None = None

    def emit(self, kind: str, /, **fields: object) -> None:
        if kind in self.kinds:
            with self._lock:
                if not self._limiter.hit(self._item, kind):
                    self._held[kind] = self._held.get(kind, 0) + 1
                    self._schedule()
                    return
                held = self._held.pop(kind, 0)
            if held:
                fields["suppressed"] = held
        self.inner.emit(kind, **fields)

    def held(self, kind: str = "rejected") -> int:
        """How many records of ``kind`` are held back and not yet reported."""
        with self._lock:
            return self._held.get(kind, 0)

    def flush(self) -> None:
        """Write a summary of every count held back now, whatever the window (called when the server stops)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            due, self._held = self._held, {}
        self._summarise(due)

    def _schedule(self) -> None:
        """(Under the lock) make sure a summary is due ``flush_after_s`` from now."""
        if self._timer is None:
            self._timer = threading.Timer(self._flush_after_s, self._flush_due)
            self._timer.daemon = True
            self._timer.start()

    def _flush_due(self) -> None:
        with self._lock:
            self._timer = None
            due = {k: self._held.pop(k) for k in sorted(self._held) if self._limiter.hit(self._item, k)}
            if self._held:  # the window is still full: try again later
                self._schedule()
        self._summarise(due)

    def _summarise(self, due: dict[str, int]) -> None:
        for kind, count in sorted(due.items()):
            if count:
                self.inner.emit(kind, reason=self.SUMMARY_REASON, suppressed=count)
