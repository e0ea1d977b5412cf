"""``StreamWatchdog``: cancels streams that stop sending, so a silent caller cannot hold a slot for ever.

An upload takes one of the few upload slots (and a server thread) before its caller is known: the first
message carries the signature. Without a deadline, a network caller that opens streams and sends nothing
would keep every slot. One thread watches every stream's deadline; a stream moves its deadline forward each
time a message arrives. gRPC's own deadlines are the client's to set, so they cannot serve here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mpctrain.enclave")


class Watch:
    """One stream's deadline; ``touch`` after each message, ``close`` when the stream ends."""

    def __init__(self, dog: StreamWatchdog, cancel: Callable[[], object], timeout_s: float) -> None:
        self._dog = dog
        self._cancel = cancel
        self.timeout_s = timeout_s
        self.deadline = dog.clock() + timeout_s
        self.expired = False

    def touch(self, timeout_s: float | None = None) -> None:
        """The stream is alive: its next message is due within ``timeout_s`` (default: as before)."""
        if timeout_s is not None:
            self.timeout_s = timeout_s
        self.deadline = self._dog.clock() + self.timeout_s

    def close(self) -> None:
        self._dog._forget(self)

    def _fire(self) -> None:
        self.expired = True
        try:
            self._cancel()
        except Exception as exc:  # the stream is ending anyway; nothing left to cancel
            log.debug("cancelling a silent stream failed: %s", type(exc).__name__)


class StreamWatchdog:
    """One daemon thread for all of a service's streams; it wakes every ``tick_s`` seconds while any is open."""

    def __init__(self, tick_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.tick_s = tick_s
        self.clock = clock
        self._watches: set[Watch] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, cancel: Callable[[], object], timeout_s: float) -> Watch:
        """Call ``cancel`` (e.g. ``context.cancel``) unless the stream touches its watch within ``timeout_s``."""
        w = Watch(self, cancel, timeout_s)
        with self._cond:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stream-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return w

    def _forget(self, w: Watch) -> None:
        with self._cond:
            self._watches.discard(w)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watches:
                    self._cond.wait()
                now = self.clock()
                due = [w for w in self._watches if w.deadline <= now]
                self._watches.difference_update(due)
            for w in due:
                w._fire()
            time.sleep(self.tick_s)
