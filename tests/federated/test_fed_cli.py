"""The federated job through the CLI, as the banks and the researcher run it, against a live aggregator.

Each bank approves with ``mpctrain job approve``: its profile's ClientApp code is checked against the
manifest before anything is signed, and the consent is stored for its SuperNode. The last consent starts
the job on the aggregator (here on an in-process grid whose nodes run the banks' stored profiles); the
researcher then fetches the sealed model with ``mpctrain job fetch``, which verifies the receipt.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import safetensors.numpy
from flwr.serverapp.strategy import FedAvg
from typer.testing import CliRunner

from examples.banks_federated.app.client_app import make_client_app
from examples.banks_federated.app.task import initial_arrays
from mpctrain.cli.main import app
from mpctrain.enclave.federated.apps import consented_initial_arrays, read_app
from mpctrain.enclave.federated.runner import FederatedRunner
from mpctrain.enclave.federated.runtime import InProcessGrid, Node
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.server import Aggregator
from mpctrain.enclave.state import JobState
from mpctrain.party.flower import ConfidentialMod, app_code_digest
from mpctrain.party.flower.profile import load_profile

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"
RUN_CONFIG = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}
BANKS = ["bank-a", "bank-b"]


def test_banks_approve_and_the_researcher_fetches_through_the_cli(tmp_path):
    fed = build_federation(BANKS, job_id="cli-fed", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 2, "strategy": "FedAvg",
                                     "flower": {"initial_arrays": "task:initial_arrays", "run_config": RUN_CONFIG}})
    profiles = tmp_path / "profiles"

    def grid():  # the banks' SuperNodes: each runs its stored profile (approved manifest and consent)
        nodes = [Node(node_id=10 + i, app=make_client_app([ConfidentialMod(load_profile(profiles / b))]),
                      node_config={"bank": b}) for i, b in enumerate(BANKS)]
        return InProcessGrid(nodes, run_config=RUN_CONFIG)

    agg = Aggregator(fed.enclave, events=fed.events)
    agg.store.runners["federated"] = FederatedRunner(
        fed.enclave, agg.events, grid_for=lambda job: nullcontext(grid()),
        initial_arrays=lambda job, g: consented_initial_arrays(job.manifest, read_app(EXAMPLE / "app")))
    port = agg.start()
    try:
        target = f"127.0.0.1:{port}"
        tampered = tmp_path / "tampered-app"
        shutil.copytree(EXAMPLE / "app", tampered, ignore=shutil.ignore_patterns("__pycache__"))
        (tampered / "task.py").write_text((tampered / "task.py").read_text() + "\n# changed\n")
        fed.write_profile(fed.parties[0], profiles / "bank-a", target, EXAMPLE / "app")
        prof_b = fed.write_profile(fed.parties[1], profiles / "bank-b", target, tampered)
        fed.write_profile(fed.researcher, profiles / "researcher", target)
        job = agg.store.add(fed.manifest, fed.manifest.to_bytes())
        cli = CliRunner()

        def approve(bank: str):
            return cli.invoke(app, ["job", "approve", "cli-fed", "--as", bank, "--profiles", str(profiles)])

        res = approve("bank-a")
        assert res.exit_code == 0, res.output
        assert (profiles / "bank-a" / "jobs" / "cli-fed" / "consent.json").is_file()  # for its SuperNode
        res = approve("bank-b")  # its ClientApp is not the consented code: nothing is signed or sent
        assert res.exit_code == 1 and "digest" in res.output, res.output
        assert set(job.consents) == {"bank-a"} and job.state == JobState.PROPOSED
        assert not (prof_b / "jobs").exists()
        (prof_b / "flower.toml").write_text(f'app_dir = "{EXAMPLE / "app"}"\njob = "cli-fed"\n')
        res = approve("bank-b")  # the last consent starts the rounds
        assert res.exit_code == 0, res.output
        agg.store.join(timeout=120)
        assert job.state == JobState.DONE, job.error
        out = tmp_path / "results"
        res = cli.invoke(app, ["job", "fetch", "cli-fed", "--as", "researcher", "--profiles", str(profiles),
                               "--out", str(out)])
        assert res.exit_code == 0, res.output
    finally:
        agg.stop()
    model = safetensors.numpy.load((out / "cli-fed" / "model.safetensors").read_bytes())
    plain_grid = InProcessGrid([Node(node_id=10 + i, app=make_client_app([]), node_config={"bank": b})
                                for i, b in enumerate(BANKS)], run_config=RUN_CONFIG)
    plain = FedAvg(min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2).start(
        plain_grid, initial_arrays(), num_rounds=2).arrays
    for k in ("w", "b"):  # the confidential run is plain Flower FedAvg, up to float rounding
        np.testing.assert_allclose(model[k], plain[k].numpy(), atol=1e-6)
    assert b'"rounds": 2' in (out / "cli-fed" / "metrics.json").read_bytes()


def test_app_digest_prints_what_the_banks_and_the_enclave_compute(tmp_path):
    res = CliRunner().invoke(app, ["job", "app-digest", str(EXAMPLE / "app")])
    assert res.exit_code == 0 and res.output.strip() == app_code_digest(EXAMPLE / "app")
    res = CliRunner().invoke(app, ["job", "app-digest", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "doesnotexist" in "".join(res.output.split())  # rich wraps long paths


def test_flower_exec_refuses_a_profile_it_cannot_serve(tmp_path):
    fed = build_federation(["bank-a"], job_id="cli-fed", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1})
    prof = fed.write_profile(fed.parties[0], tmp_path / "bank-a", "127.0.0.1:1", EXAMPLE / "app")
    cli = CliRunner()
    for name in ("identity.key", "kem.key"):  # a bank without its keys has approved nothing it could serve
        (prof / "keys" / name).unlink()
    res = cli.invoke(app, ["party", "flower-exec", "--profile", str(prof)])
    assert res.exit_code == 2 and "no keys" in res.output
    res = cli.invoke(app, ["party", "flower-exec", "--profile", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "error" in res.output
    fed.write_profile(fed.parties[0], tmp_path / "again", "127.0.0.1:1", EXAMPLE / "app")
    res = cli.invoke(app, ["party", "flower-exec", "--profile", str(tmp_path / "again"), "--root-certificates",
                           str(tmp_path / "missing-ca.pem")])
    assert res.exit_code == 2 and "missing-ca.pem" in "".join(res.output.split())  # rich wraps mid-path
    res = cli.invoke(app, ["party", "flower-exec", "--profile", str(tmp_path / "again"), "--policy",
                           str(tmp_path / "missing-policy.toml")])
    assert res.exit_code == 2


def test_job_status_of_a_federated_job_says_no_data_is_uploaded(tmp_path):
    fed = build_federation(BANKS, job_id="st-fed", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1, "strategy": "FedAvg",
                                     "flower": {"initial_arrays": "task:initial_arrays", "run_config": RUN_CONFIG}})
    agg = Aggregator(fed.enclave, events=fed.events)
    agg.store.runners["federated"] = FederatedRunner(fed.enclave, agg.events, grid_for=lambda job: nullcontext(None),
                                                     initial_arrays=lambda job, g: initial_arrays())
    port = agg.start()
    try:
        profiles = tmp_path / "profiles"
        fed.write_profile(fed.researcher, profiles / "researcher", f"127.0.0.1:{port}")
        agg.store.add(fed.manifest, fed.manifest.to_bytes())
        res = CliRunner().invoke(app, ["job", "status", "st-fed", "--as", "researcher", "--profiles", str(profiles)],
                                 env={"COLUMNS": "200"})
    finally:
        agg.stop()
    assert res.exit_code == 0, res.output
    assert "federated" in res.output and "n/a (federated: data stays with each party)" in res.output, res.output
    assert not any(line.split() == ["│", "uploaded", "│", "-", "│"] for line in res.output.splitlines())
