"""The banks example: confidential FedAvg equals plain Flower FedAvg, and robust strategies resist poisoning."""

from __future__ import annotations

import numpy as np
import pytest
from fedkit import build_job
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from examples.banks_federated.app.client_app import make_client_app
from examples.banks_federated.app.data import BANKS, generate_bank, split
from examples.banks_federated.app.task import initial_arrays, loss_and_accuracy
from mpctrain.party.flower import ConfidentialMod

ROUNDS = 5
RUN_CONFIG = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}


@pytest.fixture
def banks(sim_root, sim_attester):
    job = build_job(sim_root, sim_attester, n=4, run_config=RUN_CONFIG)
    assert tuple(p.id for p in job.parties) == BANKS
    return job


def _validation() -> tuple[np.ndarray, np.ndarray]:
    parts = [split(*generate_bank(b, seed=7), seed=7) for b in BANKS]
    return np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])


def _accuracy(arrays) -> float:
    xv, yv = _validation()
    return loss_and_accuracy(arrays["w"].numpy(), arrays["b"].numpy(), xv, yv)[1]


def _run(job, strategy, *, confidential: bool, poison: str | None = None):
    def node_config(p, i):
        cfg = {"bank": p.id}
        if poison and p.id == "bank-c":
            cfg["poison"] = poison
        return cfg

    grid = job.grid(lambda p, i: make_client_app([ConfidentialMod(job.runtime(p))] if confidential else []),
                    node_config=node_config, run_config=RUN_CONFIG)
    if not confidential:
        return strategy.start(grid, initial_arrays(), num_rounds=ROUNDS).arrays
    result = job.confidential(strategy).start(grid, initial_arrays(), num_rounds=ROUNDS)
    assert result.rounds_completed == ROUNDS
    return job.open_output(result)


def _fedavg(cls=FedAvg, **kw):
    return cls(min_available_nodes=4, min_train_nodes=4, min_evaluate_nodes=4, **kw)


def test_confidential_run_equals_plain_flower_fedavg(banks):
    plain = _run(banks, _fedavg(), confidential=False)
    conf = _run(banks, _fedavg(), confidential=True)
    for key in ("w", "b"):
        np.testing.assert_allclose(conf[key].numpy(), plain[key].numpy(), rtol=1e-5, atol=1e-6)
    assert _accuracy(conf) > 0.7  # the model learned something real


@pytest.mark.parametrize("poison", ["scale", "flip"])
def test_robust_strategies_in_the_enclave_resist_a_poisoned_bank(banks, poison):
    clean = _accuracy(_run(banks, _fedavg(), confidential=True))
    poisoned_fedavg = _accuracy(_run(banks, _fedavg(), confidential=True, poison=poison))
    robust = {
        "Krum": _accuracy(_run(banks, _fedavg(Krum, num_malicious_nodes=1), confidential=True, poison=poison)),
        "FedMedian": _accuracy(_run(banks, _fedavg(FedMedian), confidential=True, poison=poison)),
        "FedTrimmedAvg": _accuracy(_run(banks, _fedavg(FedTrimmedAvg, beta=0.25), confidential=True,
                                        poison=poison)),
    }
    print(f"clean={clean:.3f} fedavg+{poison}={poisoned_fedavg:.3f} robust={robust}")
    for name, acc in robust.items():
        assert acc >= clean - 0.03, (name, acc, clean)
    assert poisoned_fedavg < clean - 0.05, (poisoned_fedavg, clean)  # FedAvg is dragged off by one bank


def test_federated_demo_runs_and_matches_plain_flower():
    from mpctrain.enclave.federated.demo import run_federated_demo

    lines: list[str] = []
    assert run_federated_demo(rounds=2, out=lines.append) < 1e-5
    assert any("attestations: 4" in line for line in lines)


def test_cli_demo_refuses_unknown_mode():
    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    result = CliRunner().invoke(app, ["demo", "--mode", "nonsense"])
    assert result.exit_code != 0 and "unknown mode" in result.output
