"""``mpctrain demo --mode federated``: the four-bank example, confidential, in one process.

Simulated TEE, fresh keys, every bank attests the enclave, five rounds of FedAvg inside ``Confidential``,
the final model sealed to the researcher, then the same run on plain Flower to show the models agree.
The example app is read from the source checkout's ``examples/banks_federated`` (not shipped in a wheel).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

ROUNDS = 5
RUN_CONFIG = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}


def _example():
    """The banks' Flower app from the checkout this package runs from (whatever the current directory)."""
    from mpctrain.sim.demo import DemoError

    root = Path(__file__).resolve().parents[3]
    app = root / "examples" / "banks_federated" / "app"
    if not (app / "client_app.py").is_file():
        raise DemoError(f"the federated demo's example app is missing: {app}. It lives in examples/ of the source "
                        "checkout, which a non-editable install does not ship: run `pip install -e .` in a checkout "
                        "of mpctrain")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from examples.banks_federated.app import client_app, data, task
    except ImportError as exc:
        raise DemoError(f"the banks example app in {app} is not importable: {exc}") from None
    return client_app, data, task


def run_federated_demo(rounds: int = ROUNDS, out=print) -> float:
    """Run the demo; returns the largest difference between the confidential and the plain model."""
    from flwr.serverapp.strategy import FedAvg

    from mpctrain.enclave.federated.simulation import build_federation
    from mpctrain.enclave.federated.strategy import Confidential
    from mpctrain.party.flower import app_code_digest, open_output

    client_app, data, task = _example()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    app_dir = Path(client_app.__file__).parent
    fed = build_federation(data.BANKS, job_id="banks-federated-demo", code_digest=app_code_digest(app_dir),
                           training={"rounds": rounds, "strategy": "FedAvg", "flower": {"run_config": RUN_CONFIG}})
    out(f"enclave: simulated TEE, measurement {fed.attester.measurement.hex()[:16]}…, "
        f"job {fed.manifest.job_id} digest {fed.manifest.digest().hex()[:16]}…, "
        f"consents from {len(fed.consents)} banks")

    def fedavg() -> FedAvg:
        n = len(fed.parties)
        return FedAvg(min_available_nodes=n, min_train_nodes=n, min_evaluate_nodes=n)

    grid = fed.grid(client_app.make_client_app, run_config=RUN_CONFIG)
    strategy = Confidential(fedavg(), manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave,
                            events=fed.events)
    result = strategy.start(grid, task.initial_arrays(), num_rounds=rounds)
    for rnd, metrics in sorted(result.evaluate_metrics_clientapp.items()):
        out(f"round {rnd}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    out(f"attestations: {sum(rt.attestations for rt in fed.runtimes.values())} (one per bank); "
        f"rejected replies: {len(strategy.rejections)}; stop: {result.stop_reason}")
    arrays, _ = open_output(result.sealed_output, manifest=fed.manifest, recipient_id="researcher",
                            kem=fed.researcher.kem, enclave_sig_public=fed.enclave.sig.public_bytes())
    plain = fedavg().start(fed.grid(client_app.make_client_app, confidential=False, run_config=RUN_CONFIG),
                           task.initial_arrays(), num_rounds=rounds).arrays
    diff = max(float(np.abs(arrays[k].numpy() - plain[k].numpy()).max()) for k in plain)
    out(f"researcher opened the sealed model ({len(result.sealed_output)} frames); "
        f"max |confidential - plain Flower FedAvg| = {diff:.2e}")
    return diff


if __name__ == "__main__":
    run_federated_demo()
