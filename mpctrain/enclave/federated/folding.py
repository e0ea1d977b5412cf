"""Folding replies on a second thread while the next ones are pulled.

One fold thread works on update k while the pulling thread waits for update k+1 (a network wait in a
deployment; in the in-process runtime, party k+1's own work). Off by default: on two cores it was not
faster, since AES-GCM in ``cryptography`` holds the GIL (two threads decrypting measured no faster than
one) and Flower's serde does too, so only numpy's parts overlap. At most
``ahead`` pulled replies wait for it, so memory stays a constant number of updates (O(model), whatever
the number of parties), and a single worker folds them in arrival order: the sum, and so the result, is
the same as folding inline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class FoldBehind(Generic[T]):
    """Runs ``fold`` on each submitted item in order, on one worker thread, ``ahead`` items at most queued.

    ``ahead=0`` folds inline in the caller's thread. Use as a context manager: leaving it waits for every
    queued fold and re-raises the first failure (a fold's own errors, not a rejected reply, which ``fold``
    records itself).
    """

    def __init__(self, fold: Callable[[T], None], ahead: int) -> None:
        if ahead < 0:
            raise ValueError(f"ahead must be 0 or more, got {ahead}")
        self._fold = fold
        self._ahead = ahead
        self._queued: deque[Future[None]] = deque()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fold") if ahead else None

    def submit(self, item: T) -> None:
        if self._pool is None:
            self._fold(item)
            return
        while len(self._queued) >= self._ahead:
            self._queued.popleft().result()
        self._queued.append(self._pool.submit(self._fold, item))

    def drain(self) -> None:
        """Wait until every submitted item is folded; the first failure is raised after all have run."""
        first: BaseException | None = None
        while self._queued:
            try:
                self._queued.popleft().result()
            except BaseException as exc:  # re-raised below, once the queue is empty
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> FoldBehind[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
