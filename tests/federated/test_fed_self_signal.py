"""The ServerApp runs inside the aggregator: Flower's habit of sending SIGINT to its own process when a task
ends must not stop the aggregator (it did, at random, right after a federated run: its heartbeat, one beat
past the task's end, was told the task was gone and raised SIGINT; a late call's 401 does the same)."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import httpx
import pytest
from flwr.supercore.retry import make_simple_http_retry_invoker

from mpctrain.enclave.federated.deploy import _never_signal_self, _task_heartbeat


@pytest.fixture
def sigints():
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:9091/x")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(code, request=request))


def test_a_401_ends_the_call_without_signalling_the_process(sigints):
    invoker = _never_signal_self(make_simple_http_retry_invoker())
    assert invoker.should_giveup(_status_error(401)) is True
    assert sigints == []


def test_a_heartbeat_after_the_task_ended_does_not_signal_the_process(sigints):
    ended = SimpleNamespace(SendTaskHeartbeat=lambda request: SimpleNamespace(success=False))
    assert _task_heartbeat(ended)() is True
    alive = SimpleNamespace(SendTaskHeartbeat=lambda request: SimpleNamespace(success=True))
    assert _task_heartbeat(alive)() is True
    assert sigints == []


def test_flowers_own_heartbeat_would_have_signalled(sigints):
    """The control: Flower's own heartbeat function does raise SIGINT in the same situation."""
    from flwr.supercore.heartbeat import make_task_heartbeat_fn_http

    ended = SimpleNamespace(SendTaskHeartbeat=lambda request: SimpleNamespace(success=False))
    make_task_heartbeat_fn_http(ended)()
    assert sigints == [signal.SIGINT]
