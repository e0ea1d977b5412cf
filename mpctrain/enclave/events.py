"""The one funnel every enclave event goes through, so an audit log can hook in at a single place.

Fields are metadata only (ids, digests, counts, sizes, metric values): never plaintext party data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

log = logging.getLogger("mpctrain.enclave.events")

_SCALARS = (str, int, float, bool, type(None))


@runtime_checkable
class EventSink(Protocol):
    """Receives every enclave event: ``kind`` such as ``job.proposed``; keyword fields are metadata."""

    def emit(self, kind: str, /, **fields: object) -> None: ...


def _safe(value: object) -> object:
    """Render a field for a log line: bytes become a short hex prefix, containers their length."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()[:16]
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [v for v in value if isinstance(v, str)][:32]
    return type(value).__name__


WARNING_KINDS = frozenset(("rejected",))


class LogEventSink:
    """Default sink: one line per event with its metadata fields; refusals at WARNING, the rest at INFO."""

    def emit(self, kind: str, /, **fields: object) -> None:
        shown = " ".join(f"{k}={_safe(v)}" for k, v in sorted(fields.items()))
        log.log(logging.WARNING if kind in WARNING_KINDS else logging.INFO, "%s %s", kind, shown)


class MemoryEventSink:
    """Keeps events in memory: for tests and the demo's summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, kind: str, /, **fields: object) -> None:
        with self._lock:
            self.events.append((kind, dict(fields)))

    def kinds(self) -> list[str]:
        with self._lock:
            return [k for k, _ in self.events]


class FanoutEventSink:
    """Sends each event to several sinks; a failing sink is logged and does not stop the others."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, kind: str, /, **fields: object) -> None:
        for sink in self.sinks:
            try:
                sink.emit(kind, **fields)
            except Exception:
                log.exception("event sink %s failed on %s", type(sink).__name__, kind)
