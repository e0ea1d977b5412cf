"""Replies are folded into the streaming FedAvg as they arrive, so little is left after the last one.

``Confidential.start`` pushes the round's messages and pulls replies a few ids at a time (like Flower's
``send_and_receive`` but without waiting for all): late replies are waited for, duplicates ignored, and
the timeout ends the round with the replies that came.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fedkit import initial_arrays, toy_app
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from mpctrain.party.flower import ConfidentialMod


def _fedavg(n: int) -> FedAvg:
    return FedAvg(min_available_nodes=n, min_train_nodes=n, fraction_evaluate=0.0)


def _logged_run(job, order: list[str], fold_ahead: int):
    """One round of ``start``; ``order`` gets "ran X" as each app starts and "folded X" as each update is added."""

    class Sink:
        def emit(self, kind, /, **fields):
            if kind == "fl.update_accepted":
                order.append(f"folded {fields['party']}")

    def app_for(p, i):
        def log_run(msg, ctx, call_next):  # runs inside confidential_mod, right before the app
            order.append(f"ran {p.id}")
            return call_next(msg, ctx)

        app = ClientApp(mods=[ConfidentialMod(job.runtime(p)), log_run])

        @app.train()
        def train(msg, context):
            arrays = ArrayRecord({k: Array(v.numpy() + 0.1) for k, v in msg.content["arrays"].items()})
            return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10 + i})}),
                           reply_to=msg)

        return app

    grid = job.grid(app_for)
    strategy = job.confidential(_fedavg(3), fold_ahead=fold_ahead)
    strategy.events = Sink()
    result = strategy.start(grid, initial_arrays(), num_rounds=1)
    assert result.rounds_completed == 1
    return strategy, result


def test_start_inline_folds_each_reply_before_the_next_client_runs(job):
    order: list[str] = []
    strategy, _ = _logged_run(job, order, fold_ahead=0)
    ran = [x.split()[1] for x in order[0::2] if x.startswith("ran ")]
    assert sorted(ran) == sorted(p.id for p in job.parties)  # sampling order is random
    assert order == [x for pid in ran for x in (f"ran {pid}", f"folded {pid}")]
    (timing,) = strategy.timings
    assert timing.updates == 3 and 0 < timing.after_last_reply_s < timing.busy_s


@pytest.mark.parametrize("fold_ahead, overlapped", [(1, True), (0, False)])
def test_start_folds_on_a_second_thread_while_the_next_client_runs(job, fold_ahead, overlapped):
    """The first update's fold waits until the second party's app is running: only a fold thread can see
    that happen (folding inline, the second app starts only after the first fold returned)."""
    second_running = threading.Event()
    saw_second: list[bool] = []

    class Order(list):
        def append(self, x):
            super().append(x)
            if x.startswith("ran ") and len([y for y in self if y.startswith("ran ")]) == 2:
                second_running.set()
            if x.startswith("folded ") and not saw_second:  # still inside the first fold
                saw_second.append(second_running.wait(timeout=10 if overlapped else 0.3))

    order = Order()
    strategy, _ = _logged_run(job, order, fold_ahead=fold_ahead)
    assert saw_second == [overlapped], order
    ran = [x.split()[1] for x in order if x.startswith("ran ")]
    folded = [x.split()[1] for x in order if x.startswith("folded ")]
    assert folded == ran  # one fold thread: updates are added in the order they arrived
    # at most fold_ahead=1 reply waits: the first is folded before the third party runs
    assert order.index(f"folded {ran[0]}") < order.index(f"ran {ran[2]}")
    assert strategy.timings[0].updates == 3


def test_fold_behind_keeps_order_bounds_the_queue_and_reraises():
    from mpctrain.enclave.federated.folding import FoldBehind

    release = threading.Event()
    done: list[int] = []

    def fold(i):
        release.wait(timeout=10)
        if i == 3:
            raise RuntimeError("fold 3 broke")
        done.append(i)

    folder = FoldBehind(fold, ahead=2)
    folder.submit(0)
    folder.submit(1)
    blocked = threading.Thread(target=folder.submit, args=(2,))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive()  # two queued already: the third submit waits for a fold to finish
    release.set()
    blocked.join(timeout=10)
    assert not blocked.is_alive()
    folder.submit(3)
    folder.submit(4)
    with pytest.raises(RuntimeError, match="fold 3 broke"):
        folder.__exit__(None, None, None)
    assert done == [0, 1, 2, 4]  # the failure did not stop the later fold, and order held
    with pytest.raises(ValueError, match="ahead"):
        FoldBehind(fold, ahead=-1)
    inline: list[int] = []
    with FoldBehind(inline.append, ahead=0) as f:
        f.submit(7)
        assert inline == [7]  # ahead=0 folds in the caller's thread, at once


def test_fold_ahead_must_not_be_negative(job):
    with pytest.raises(ValueError, match="fold_ahead"):
        job.confidential(_fedavg(3), fold_ahead=-1)


class _SlowGrid:
    """A grid whose replies become ready only after ``polls`` pulls, optionally never."""

    def __init__(self, grid, polls: int, never: int | None = None, duplicate: bool = False) -> None:
        self._grid, self._polls, self._never, self._duplicate = grid, polls, never, duplicate
        self.pulls: list[list[str]] = []
        self._seen: dict[str, int] = {}
        self._ids: list[str] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def push_messages(self, messages):
        self._ids = list(self._grid.push_messages(messages))
        return self._ids

    def pull_messages(self, message_ids):
        ids = list(message_ids)
        self.pulls.append(ids)
        ready = []
        for mid in ids:
            self._seen[mid] = self._seen.get(mid, 0) + 1
            if self._seen[mid] > self._polls and (self._never is None or mid != self._ids[self._never]):
                ready.append(mid)
        replies = list(self._grid.pull_messages(ready))
        return replies + replies if self._duplicate else replies


def test_pull_loop_waits_for_late_replies_one_message_per_call(job):
    grid = _SlowGrid(job.grid(lambda p, i: toy_app(0.1, 10, mod=ConfidentialMod(job.runtime(p)))), polls=2,
                     duplicate=True)
    strategy = job.confidential(_fedavg(3))
    result = strategy.start(grid, initial_arrays(), num_rounds=1)
    assert result.rounds_completed == 1 and strategy.timings[0].updates == 3 and not strategy.rejections
    assert all(len(ids) == 1 for ids in grid.pulls) and len(grid.pulls) == 9  # 3 polls x 3 messages


def test_pull_loop_gives_up_at_the_timeout_with_the_replies_it_has(job):
    grid = _SlowGrid(job.grid(lambda p, i: toy_app(0.2, 10, mod=ConfidentialMod(job.runtime(p)))), polls=0,
                     never=1)
    strategy = job.confidential(_fedavg(3), pull_batch=2)
    started = time.perf_counter()
    result = strategy.start(grid, initial_arrays(), num_rounds=1, timeout=0.15)
    assert 0.15 <= time.perf_counter() - started < 5
    assert result.rounds_completed == 1 and strategy.timings[0].updates == 2
    assert max(len(ids) for ids in grid.pulls) == 2
    arrays = job.open_output(result)
    np.testing.assert_allclose(arrays["w"].numpy(), initial_arrays()["w"].numpy() + 0.2, rtol=1e-6)


def test_pull_batch_must_be_positive(job):
    with pytest.raises(ValueError, match="pull_batch"):
        job.confidential(_fedavg(3), pull_batch=0)


def test_streaming_round_on_a_non_fedavg_strategy_is_refused(job):
    from flwr.serverapp.strategy import FedMedian

    strategy = job.confidential(FedMedian(min_available_nodes=3, min_train_nodes=3))
    with pytest.raises(ValueError, match="every reply at once"):
        strategy.begin_streaming_round(1)


def test_aggregate_train_on_a_list_reports_all_of_it_as_critical_path(job):
    grid = job.grid(lambda p, i: toy_app(0.1, 10, mod=ConfidentialMod(job.runtime(p))))
    strategy = job.confidential(_fedavg(3))
    replies = list(grid.send_and_receive(strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    (timing,) = strategy.timings
    assert timing.after_last_reply_s >= timing.busy_s > 0
