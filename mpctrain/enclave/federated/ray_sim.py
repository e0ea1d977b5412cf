"""Large simulations on Flower's Ray backend (optional extra: ``pip install 'mpctrain[ray]'``).

Ray runs ClientApps in worker processes, so nothing that holds keys can be shipped to them: each virtual
SuperNode finds its party by ``partition-id`` in a list of party profile directories (keys, approved job,
policy on disk) and attests the aggregator over gRPC like a real SuperNode. The ServerApp, with the
enclave keys, stays in the driver process. Not part of the test suite (Ray is not a test dependency);
the partition-to-party mapping it relies on is tested with the in-process runtime, and
``scripts/run_ray_federated.py`` runs the banks example on Ray and compares it with the in-process runtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp

from mpctrain.enclave.federated.errors import JobNotReady
from mpctrain.enclave.federated.server_app import FederatedJob, make_server_app
from mpctrain.enclave.federated.strategy import FederatedResult
from mpctrain.party.flower.mod import ConfidentialMod
from mpctrain.party.flower.runtime import NODE_CONFIG_KEY, PartyRuntime, resolve_party

# Small by default: Ray would otherwise reserve 2 CPUs per virtual SuperNode and start a dashboard.
DEFAULT_BACKEND_CONFIG: dict[str, Any] = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {"num_cpus": 2, "include_dashboard": False},
}
# Ray's GCS, raylet and workers accept unauthenticated work; on Linux they listen on the machine's address
# (``ray.init(_node_ip_address="127.0.0.1")`` is rewritten to it). With Ray's single-node switch (read when
# ``ray`` is imported) they listen on loopback only, and Ray sends no usage reports.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class RayNotLocal(RuntimeError):
    """Ray would listen on a non-loopback address while this process holds enclave keys."""


def _require_loopback() -> None:
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    import ray.util

    ip = ray.util.get_node_ip_address()
    if ip not in LOOPBACK:
        raise RayNotLocal(f"Ray would run on {ip}, reachable from the network: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                          "before anything imports ray, or pass loopback_only=False for a deliberate multi-node run")


def partition_resolver(profiles: Sequence[str]) -> Callable[[Context], PartyRuntime]:
    """Map a simulated node's ``partition-id`` to the party profile at that index.

    The node also gets the ``mpctrain-party`` node config a real SuperNode is started with, so the app
    behind the mod finds its party (and its data) exactly as it does in deployment.
    """
    dirs = [str(p) for p in profiles]

    def resolve(context: Context) -> PartyRuntime:
        pid = context.node_config.get("partition-id")
        if not isinstance(pid, int) or not 0 <= pid < len(dirs):
            raise JobNotReady(f"node has partition-id {pid!r}; {len(dirs)} party profiles are configured")
        context.node_config[NODE_CONFIG_KEY] = dirs[pid]
        return resolve_party({NODE_CONFIG_KEY: dirs[pid]})

    return resolve


def run_on_ray(job: FederatedJob, make_client_app: Callable[[list], ClientApp], profiles: Sequence[str], *,
               backend_config: dict | None = None, loopback_only: bool = True) -> FederatedResult:
    """Run ``job`` on Flower's Ray simulation backend, one virtual SuperNode per profile; returns the result.

    ``loopback_only`` (default) keeps every Ray process on loopback and raises ``RayNotLocal`` otherwise.
    """
    try:
        if loopback_only:
            _require_loopback()
        from flwr.simulation import run_simulation
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise RuntimeError("the Ray backend needs the optional extra: pip install 'mpctrain[ray]'") from exc
    results: list[FederatedResult] = []
    client_app = make_client_app([ConfidentialMod(partition_resolver(profiles))])
    server_app = make_server_app(lambda _context: job, on_result=results.append)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(profiles),
                   backend_name="ray", backend_config=backend_config or DEFAULT_BACKEND_CONFIG)
    if not results:
        raise RuntimeError("the Ray simulation ended without a result from the ServerApp; see Flower's log above")
    return results[0]
