"""FedAvg aggregation that streams: one running weighted sum, each reply opened, added and dropped.

Flower's ``aggregate_arrayrecords`` needs every update in memory at once (O(parties x model)); inside an
enclave, memory is the scarce resource, so the FedAvg path keeps one running sum per array (O(model)) and
opens the next sealed reply only after the previous one has been added.

Speed and precision: a float32 update is added block by block (the weighted temporary stays in cache)
into a float32 sum, the precision Flower's own FedAvg sums in, so adding it costs about one pass instead
of a float64 conversion per element. Every ``FOLD_EVERY`` updates that sum is folded into a float64 one,
so rounding never grows past what Flower's sum over that many updates has (a job has at most 64 data
parties, so in practice the fold never runs). Other dtypes are summed in float64 directly.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from mpctrain.enclave.federated.codec import to_flower_array

log = logging.getLogger(__name__)

BLOCK = 1 << 16  # elements per step of the weighted add: the temporary stays in cache
FOLD_EVERY = 64  # float32 updates summed before the partial sums are folded into float64 ones


def _axpy(acc: np.ndarray, x: np.ndarray, weight: float, tmp: np.ndarray) -> None:
    """``acc += weight * x`` in ``acc``'s dtype, in cache-sized blocks, allocating nothing."""
    flat_acc, flat_x = acc.reshape(-1), x.reshape(-1)
    size = flat_x.size
    for start in range(0, size, BLOCK):
        end = min(start + BLOCK, size)
        t = tmp[: end - start]
        np.multiply(flat_x[start:end], weight, out=t)
        np.add(flat_acc[start:end], t, out=flat_acc[start:end])


def _axpby(acc: np.ndarray, x: np.ndarray, a: float, b: float, tmp: np.ndarray) -> None:
    """``acc = a * acc + b * x`` in cache-sized blocks: the last add and the division in one pass."""
    flat_acc, flat_x = acc.reshape(-1), x.reshape(-1)
    size = flat_x.size
    for start in range(0, size, BLOCK):
        end = min(start + BLOCK, size)
        t, block = tmp[: end - start], flat_acc[start:end]
        np.multiply(flat_x[start:end], b, out=t)
        np.multiply(block, a, out=block)
        np.add(block, t, out=block)


class InconsistentUpdate(ValueError):
    """An update's record name, keys, shapes, dtypes, weight or metric values are unusable for this round."""


MAX_INT_METRIC = (1 << 63) - 1  # Flower carries integer metrics as 64-bit integers


def is_weight(value: Any) -> bool:
    """A usable aggregation weight: a finite non-negative number a float can hold (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return 0 <= value <= MAX_INT_METRIC
    return math.isfinite(value) and value >= 0


def check_metric_values(metrics: dict[str, Any]) -> None:
    """Every metric a number (or list of numbers) that averaging can handle: integers within 64 bits."""
    for key, value in metrics.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InconsistentUpdate(f"metric {key!r} holds a {type(v).__name__}, not a number")
            if isinstance(v, int) and not -MAX_INT_METRIC - 1 <= v <= MAX_INT_METRIC:
                raise InconsistentUpdate(f"metric {key!r} holds an integer outside 64 bits")


def check_finite(arrays: Iterable[np.ndarray]) -> None:
    """A NaN or infinite value in one update turns any mean (and Krum's distances, which then rank the
    poisoned update first) into garbage for every party, so such an update is refused, whatever the strategy."""
    for arr in arrays:
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise InconsistentUpdate("the update holds NaN or infinite values")


class StreamingMean:
    """Weighted mean of array records and metric records, fed one reply at a time.

    ``expected`` (the keys and shapes of the model sent this round) fixes the structure updates must
    have, so no single party decides it by replying first. Each metric is averaged over the updates that
    report it (with consistent replies this is exactly Flower's ``aggregate_metricrecords``).
    """

    def __init__(self, weighted_by_key: str, expected: list[tuple[str, tuple[int, ...], str]] | None = None) -> None:
        self.weighted_by_key = weighted_by_key
        self.expected = expected
        self.total_weight = 0.0
        self.count = 0
        self._name: str | None = None
        self._keys: list[str] = []
        self._dtypes: list[np.dtype] = []
        self._shapes: list[tuple[int, ...]] = []
        self._sums: list[np.ndarray | None] = []
        self._partials: list[np.ndarray | None] = []
        self._tmp: dict[np.dtype, np.ndarray] = {}
        self._unfolded = 0
        self._folded = False  # whether any float32 partial sum has been moved into float64 yet
        self._scaled: list[bool] = []  # partial sums that already hold the mean (the last update fused in)
        # per metric, per form (None: a number; n: a list of n numbers): weighted sum, weight, updates
        self._metric_sums: dict[str, dict[int | None, Any]] = {}
        self._metric_weights: dict[str, dict[int | None, float]] = {}
        self._metric_counts: dict[str, Counter[int | None]] = {}

    def check(self, name: str, keys: list[str], arrays: list[np.ndarray], metrics: dict[str, Any]) -> float:
        """Validate one update; return its weight. Raises ``InconsistentUpdate`` before any state changes.

        The model sent this round (``expected``) fixes keys, shapes and dtypes, so no party decides them by
        replying first; a metric's form (number or list) is settled by the majority in ``result``.
        """
        weight = metrics.get(self.weighted_by_key)
        if not is_weight(weight):
            raise InconsistentUpdate(f"metric {self.weighted_by_key!r} must be a finite non-negative number")
        check_metric_values(metrics)
        structure = [(k, tuple(a.shape), a.dtype.str) for k, a in zip(keys, arrays, strict=True)]
        if self.expected is not None and structure != self.expected:
            raise InconsistentUpdate("array keys, shapes or dtypes differ from the model sent this round")
        if self._name is not None and (keys != self._keys or
                                       any(a.shape != b for a, b in zip(arrays, self._shapes, strict=True)) or
                                       any(a.dtype != b for a, b in zip(arrays, self._dtypes, strict=True))):
            raise InconsistentUpdate("array keys, shapes or dtypes differ from the round's other updates")
        check_finite(arrays)
        return float(weight)

    def add(self, name: str, keys: list[str], arrays: list[np.ndarray], metrics: dict[str, Any], *,
            last: bool = False) -> None:
        """Add one update (after ``check``); the caller drops its arrays afterwards.

        ``last``: no update follows, so float32 sums take the division in the same pass as this add
        (``result`` then has one pass less to do: the part of a round left after its last reply).
        """
        weight = self.check(name, keys, arrays, metrics)
        if any(self._scaled):
            raise RuntimeError("an update came after the one added as the last: the sums already hold the mean")
        if self._name is None:
            self._name, self._keys = name, list(keys)
            self._dtypes = [a.dtype for a in arrays]
            self._shapes = [a.shape for a in arrays]
            f32 = [a.dtype == np.float32 for a in arrays]
            self._partials = [np.zeros(a.shape, np.float32) if f else None for a, f in zip(arrays, f32, strict=True)]
            self._sums = [None if f else np.zeros(a.shape, np.float64) for a, f in zip(arrays, f32, strict=True)]
            self._scaled = [False] * len(arrays)
        total = self.total_weight + weight
        fuse = last and not self._folded and self._unfolded + 1 < FOLD_EVERY and total > 0
        for i, (buf, partial, arr) in enumerate(zip(self._sums, self._partials, arrays, strict=True)):
            if partial is not None and fuse:
                _axpby(partial, arr, 1.0 / total, weight / total, self._scratch(np.dtype(np.float32)))
                self._scaled[i] = True
            elif partial is not None:
                _axpy(partial, arr, weight, self._scratch(np.dtype(np.float32)))
            elif arr.dtype == np.float64:
                _axpy(buf, arr, weight, self._scratch(np.dtype(np.float64)))
            else:  # other dtypes (ints, float16): weighted in float64, never in their own narrow type
                np.add(buf, np.multiply(arr, weight, dtype=np.float64), out=buf)
        self._unfolded += 1
        if self._unfolded >= FOLD_EVERY:
            self._fold()
        for key, value in metrics.items():
            if key == self.weighted_by_key:
                continue
            form = len(value) if isinstance(value, list) else None
            sums = self._metric_sums.setdefault(key, {})
            if form is None:
                sums[form] = sums.get(form, 0.0) + float(value) * weight
            else:
                prev = sums.get(form, [0.0] * form)
                sums[form] = [p + float(v) * weight for p, v in zip(prev, value, strict=True)]
            weights = self._metric_weights.setdefault(key, {})
            weights[form] = weights.get(form, 0.0) + weight
            self._metric_counts.setdefault(key, Counter())[form] += 1
        self.total_weight += weight
        self.count += 1

    def _scratch(self, dtype: np.dtype) -> np.ndarray:
        tmp = self._tmp.get(dtype)
        if tmp is None:
            tmp = self._tmp[dtype] = np.empty(BLOCK, dtype=dtype)
        return tmp

    def _fold(self) -> None:
        """Move the float32 partial sums into float64 sums (allocated at the first fold)."""
        if any(self._scaled):
            raise RuntimeError("a sum that already holds the mean cannot be folded")
        self._folded = True
        for i, partial in enumerate(self._partials):
            if partial is None:
                continue
            buf = self._sums[i]
            if buf is None:
                self._sums[i] = partial.astype(np.float64)
            else:
                np.add(buf, partial, out=buf)
            partial.fill(0)
        self._unfolded = 0

    def result(self) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The weighted means, in each array's original dtype; (None, None) when nothing was added."""
        if self.count == 0 or self._name is None:
            return None, None
        if self.total_weight <= 0:
            raise InconsistentUpdate(f"the sum of {self.weighted_by_key!r} over the round is zero")
        if self._unfolded and any(p is not None and b is not None for p, b in zip(self._partials, self._sums,
                                                                                  strict=True)):
            self._fold()  # a float64 sum exists already: the rest joins it
        inv = 1.0 / self.total_weight
        means = []
        for i, (buf, partial, dtype, shape) in enumerate(zip(self._sums, self._partials, self._dtypes, self._shapes,
                                                             strict=True)):
            if self._scaled[i] and partial is not None:
                means.append(partial)  # the last add divided it already
                continue
            if buf is None and partial is not None and partial.dtype == dtype:
                out = partial  # scaled in place: its pages are warm, a fresh array would fault them in
            else:
                out = np.empty(shape, dtype=dtype)
            np.multiply(partial if buf is None else buf, inv, out=out, casting="unsafe")  # one pass, like astype
            means.append(out)
        self._partials = [None] * len(self._partials)
        arrays = ArrayRecord({key: to_flower_array(mean) for key, mean in zip(self._keys, means, strict=True)})
        metrics = {}
        for key, sums in self._metric_sums.items():
            form = self._common_form(key)
            if (w := self._metric_weights[key][form]) > 0:
                v = sums[form]
                metrics[key] = [x / w for x in v] if isinstance(v, list) else v / w
        return arrays, MetricRecord(metrics)

    def _common_form(self, key: str) -> int | None:
        """The form most updates reported ``key`` in (ties: the larger weight, then a number before lists);
        values in other forms are left out of the average, as Flower would fail on the mix."""
        counts = self._metric_counts[key]
        weights = self._metric_weights[key]
        form = max(counts, key=lambda f: (counts[f], weights[f], f is None, -(f or 0)))
        if len(counts) > 1:
            log.info("metric %r: %d update(s) reported it in another form than the %d that were averaged", key,
                     sum(counts.values()) - counts[form], counts[form])
        return form

    @property
    def record_name(self) -> str | None:
        return self._name
