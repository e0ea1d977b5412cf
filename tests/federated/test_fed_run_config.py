"""The Flower run config is consented too: a bank trains only with the values the manifest pins.

``flwr run --run-config`` and the FAB's pyproject defaults feed the consented ClientApp (learning rate,
epochs, seeds). A run whose config differs in any key from the manifest's ``[training.flower.run_config]``
(none pinned: an empty config) is refused by every bank's mod before its app runs, and by the aggregator
before anything is sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedAvg

from examples.banks_federated.app.client_app import make_client_app
from examples.banks_federated.app.task import initial_arrays
from mpctrain.enclave.federated.apps import check_run_config
from mpctrain.enclave.federated.errors import RunConfigMismatch
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.federated.strategy import Confidential

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"
PINNED = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}


def _fed(pinned=PINNED):
    flower = {"run_config": dict(pinned)} if pinned is not None else {}
    return build_federation(["bank-a", "bank-b"], job_id="pinned", training={"rounds": 1, "flower": flower})


@pytest.mark.parametrize(("run_config", "bad"), [
    ({**PINNED, "lr": 0.5}, "'lr'"),
    ({**PINNED, "extra": 1}, "'extra'"),
    ({k: v for k, v in PINNED.items() if k != "seed"} | {"local-epochs": True}, "'local-epochs'"),
    ({k: v for k, v in PINNED.items() if k != "lr"}, "'lr'"),
])
def test_any_difference_from_the_pinned_config_is_refused(run_config, bad):
    with pytest.raises(RunConfigMismatch, match=bad):
        check_run_config(_fed().manifest, run_config)


def test_the_pinned_config_passes_and_the_job_name_is_not_a_training_input():
    manifest = _fed().manifest
    check_run_config(manifest, dict(PINNED))
    check_run_config(manifest, {**PINNED, "mpctrain-job": "pinned", "batch-size": 32.0})  # 32 and 32.0 are one value
    unpinned = _fed(pinned=None).manifest  # nothing pinned: nothing allowed but the job's own name
    check_run_config(unpinned, {})
    check_run_config(unpinned, {"mpctrain-job": "pinned"})
    with pytest.raises(RunConfigMismatch, match="'lr'"):
        check_run_config(unpinned, {"lr": 99.0})
    nested = _fed(pinned={"optim": {"lr": 0.1, "momentum": 0.9}}).manifest  # [optim] tables, as Flower flattens them
    check_run_config(nested, {"optim.lr": 0.1, "optim.momentum": 0.9})
    with pytest.raises(RunConfigMismatch, match=r"'optim\.momentum'"):
        check_run_config(nested, {"optim.lr": 0.1, "optim.momentum": 0.0})


def _round(fed, run_config):
    grid = fed.grid(make_client_app, run_config=run_config)
    n = len(fed.parties)
    strategy = Confidential(FedAvg(min_available_nodes=n, min_train_nodes=n, fraction_evaluate=0.0),
                            manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave, events=fed.events)
    return strategy.start(grid, initial_arrays(), num_rounds=1)


def test_banks_refuse_a_run_with_another_config_before_their_app_runs():
    fed = _fed()
    result = _round(fed, {**PINNED, "lr": 5.0})
    assert all(fed.runtime(p).sent == [] for p in fed.parties)  # no bank sealed a reply
    accepted = [k for k, _ in fed.events.events if k == "fl.update_accepted"]
    assert accepted == [] and result.rounds_completed == 0
    assert result.stop_reason.startswith("round 1: no update was accepted")  # stopped, not run on regardless
    ok = _fed()
    _round(ok, dict(PINNED))
    assert all(len(ok.runtime(p).sent) == 1 for p in ok.parties)  # the pinned config trains


def test_the_example_job_pins_what_its_app_reads():
    import tomllib

    job = tomllib.loads((EXAMPLE / "job.toml").read_text())
    fab = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert job["training"]["flower"]["run_config"] == {k: v for k, v in fab.items() if k != "mpctrain-job"}
