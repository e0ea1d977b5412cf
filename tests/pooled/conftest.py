"""One aggregator (simulated TEE, real gRPC on loopback) shared by the pooled tests; jobs differ by id."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

import grpc
import pytest

from mpctrain.enclave.events import MemoryEventSink
from mpctrain.sim.cluster import SimCluster


class CallCounter(grpc.ServerInterceptor):
    """Counts every RPC the server receives, by method, before any handler runs."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        with self.lock:
            self.counts[handler_call_details.method] += 1
        return continuation(handler_call_details)


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster than two on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def counter() -> CallCounter:
    return CallCounter()


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, counter: CallCounter) -> Iterator[SimCluster]:
    workdir = tmp_path_factory.mktemp("pooled")
    c = SimCluster(workdir, researchers=("researcher",), events=MemoryEventSink(), interceptors=[counter])
    with c:
        yield c
