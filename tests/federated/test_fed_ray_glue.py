"""The Ray glue without Ray: virtual SuperNodes known only by ``partition-id`` run the banks app correctly,
and ``run_on_ray`` refuses to start Ray anywhere but on loopback or without the optional extra.

Ray itself stays out of the test environment; ``scripts/run_ray_federated.py`` runs the real thing.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from examples.banks_federated.app.client_app import make_client_app
from examples.banks_federated.app.data import BANKS
from examples.banks_federated.app.task import initial_arrays
from mpctrain.enclave.federated import ray_sim
from mpctrain.enclave.federated.ray_sim import RayNotLocal, partition_resolver, run_on_ray
from mpctrain.enclave.federated.runtime import InProcessGrid, Node
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.federated.strategy import Confidential
from mpctrain.party.flower import ConfidentialMod, app_code_digest, open_output, register_party, unregister_party

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "banks_federated" / "app"


def test_partition_only_nodes_run_the_banks_app_like_named_nodes():
    """A Ray node's config holds only partition-id: the resolver must give the app its bank, as on a SuperNode."""
    fed = build_federation(BANKS, job_id="ray-glue", code_digest=app_code_digest(APP_DIR),
                           training={"rounds": 2, "strategy": "FedAvg"})
    names = [f"ray-glue/{p.id}" for p in fed.parties]  # profile-like names: the app reads the bank from the last part
    for name, party in zip(names, fed.parties, strict=True):
        register_party(name, fed.runtime(party))
    n = len(fed.parties)

    def run(grid: InProcessGrid):
        strategy = Confidential(FedAvg(min_available_nodes=n, min_train_nodes=n, min_evaluate_nodes=n),
                                manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave)
        result = strategy.start(grid, initial_arrays(), num_rounds=2)
        assert result.rounds_completed == 2 and not strategy.rejections
        arrays, _ = open_output(result.sealed_output, manifest=fed.manifest, recipient_id="researcher",
                                kem=fed.researcher.kem, enclave_sig_public=fed.enclave.sig.public_bytes())
        return result, arrays

    try:
        mod = ConfidentialMod(partition_resolver(names))
        ray_like = InProcessGrid([Node(node_id=500 + i, app=make_client_app([mod]),
                                       node_config={"partition-id": i, "num-partitions": n}) for i in range(n)])
        result, arrays = run(ray_like)
    finally:
        for name in names:
            unregister_party(name)
    reference, ref_arrays = run(fed.grid(make_client_app))  # nodes named by bank, as in the demo
    assert len(result.evaluate_metrics_clientapp) == 2  # every bank evaluated: the app found its data
    assert result.evaluate_metrics_clientapp[2]["accuracy"] == pytest.approx(
        reference.evaluate_metrics_clientapp[2]["accuracy"])
    for key in ref_arrays:
        np.testing.assert_allclose(arrays[key].numpy(), ref_arrays[key].numpy(), atol=1e-6)


def _clean_env(monkeypatch) -> None:
    for key in ray_sim.LOOPBACK_ENV:  # run_on_ray sets these; restored after the test
        monkeypatch.delenv(key, raising=False)


def _fake_ray(monkeypatch, ip: str) -> None:
    ray = types.ModuleType("ray")
    util = types.ModuleType("ray.util")
    util.get_node_ip_address = lambda: ip  # type: ignore[attr-defined]
    ray.util = util  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", util)


def test_run_on_ray_refuses_a_ray_reachable_from_the_network(monkeypatch):
    _clean_env(monkeypatch)
    _fake_ray(monkeypatch, "192.0.2.2")
    with pytest.raises(RayNotLocal, match=r"192\.0\.2\.2.*RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        run_on_ray(None, make_client_app, ["p"])  # type: ignore[arg-type]
    assert all(os.environ.get(k) == v for k, v in ray_sim.LOOPBACK_ENV.items())


def test_run_on_ray_without_the_extra_says_how_to_install_it(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, whatever is installed
    monkeypatch.setitem(sys.modules, "ray.util", None)
    with pytest.raises(RuntimeError, match=r"mpctrain\[ray\]"):
        run_on_ray(None, make_client_app, ["p"])  # type: ignore[arg-type]
