"""Large simulations on Flower's Ray backend (optional extra: ``pip install 'mpctrain[ray]'``).

Ray runs ClientApps in worker processes, so nothing that holds keys can be shipped to them: each virtual
SuperNode finds its party by ``partition-id`` in a list of party profile directories (keys, approved job,
policy on disk) and attests the aggregator over gRPC like a real SuperNode. The ServerApp, with the
enclave keys, stays in the driver process. Not part of the test suite (Ray is not a test dependency);
the partition-to-party mapping it relies on is tested with the in-process runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flwr.app import Context
from flwr.clientapp import ClientApp

from mpctrain.enclave.federated.errors import JobNotReady
from mpctrain.enclave.federated.server_app import FederatedJob, make_server_app
from mpctrain.party.flower.mod import ConfidentialMod
from mpctrain.party.flower.runtime import PartyRuntime, resolve_party


def partition_resolver(profiles: Sequence[str]) -> Callable[[Context], PartyRuntime]:
    """Map a simulated node's ``partition-id`` to the party profile at that index."""
    dirs = [str(p) for p in profiles]

    def resolve(context: Context) -> PartyRuntime:
        pid = context.node_config.get("partition-id")
        if not isinstance(pid, int) or not 0 <= pid < len(dirs):
            raise JobNotReady(f"node has partition-id {pid!r}; {len(dirs)} party profiles are configured")
        return resolve_party({"mpctrain-party": dirs[pid]})

    return resolve


def run_on_ray(job: FederatedJob, make_client_app: Callable[[list], ClientApp], profiles: Sequence[str], *,
               backend_config: dict | None = None) -> None:
    """Run ``job`` on Flower's Ray simulation backend, one virtual SuperNode per profile."""
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise RuntimeError("the Ray backend needs the optional extra: pip install 'mpctrain[ray]'") from exc
    client_app = make_client_app([ConfidentialMod(partition_resolver(profiles))])
    server_app = make_server_app(lambda _context: job)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(profiles),
                   backend_name="ray", backend_config=backend_config or {"client_resources": {"num_cpus": 1}})
