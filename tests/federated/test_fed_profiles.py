"""The banks example's job file and party profiles: code digest pinned, approval, loading a SuperNode's party."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from mpctrain.enclave.federated import CodeDigestMismatch, JobNotReady
from mpctrain.enclave.federated.server_app import build_strategy
from mpctrain.jobs import JobManifest
from mpctrain.party.flower import app_code_digest, resolve_party
from mpctrain.party.flower.profile import approve_federated_job, load_profile
from mpctrain.seal.keys import IdentityKey, KemKey, write_public_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "banks_federated"
BANKS = ("bank-a", "bank-b", "bank-c", "bank-d")


def _manifest(keys: dict[str, tuple[IdentityKey, KemKey]]) -> JobManifest:
    doc = tomllib.loads((EXAMPLE / "job.toml").read_text())
    doc["enclave_policy"] = {"backends": ["sim"], "sim": {"roots": [], "measurements": []}}  # written at deploy time
    for p in doc["parties"]:
        ident, kem = keys[p["id"]]
        p.pop("identity_public_file"), p.pop("kem_public_file")
        p["identity_public"], p["kem_public"] = ident.public_bytes().hex(), kem.public_bytes().hex()
    return JobManifest.from_authoring(doc, base_dir=EXAMPLE)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[IdentityKey, KemKey]]:
    return {pid: (IdentityKey.generate(), KemKey.generate()) for pid in (*BANKS, "researcher")}


def test_job_file_pins_the_app_code_and_builds_its_strategy(keys):
    manifest = _manifest(keys)
    assert manifest.mode == "federated" and len(manifest.data_parties()) == 4
    assert manifest.training["flower"]["code_digest"] == app_code_digest(EXAMPLE / "app"), (
        "app/ changed: update code_digest in examples/banks_federated/job.toml")
    assert type(build_strategy(manifest)).__name__ == "FedAvg"


def _profile(tmp_path: Path, bank: str, keys) -> Path:
    """A copy of the committed profile with keys, as `mpctrain party run` would leave it."""
    prof = tmp_path / "parties" / bank
    shutil.copytree(ROOT / "parties" / bank, prof)
    shutil.copytree(EXAMPLE / "app", tmp_path / "examples" / "banks_federated" / "app",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    ident, kem = keys[bank]
    (prof / "keys").mkdir()
    ident.save(prof / "keys" / "identity.key")
    kem.save(prof / "keys" / "kem.key")
    write_public_files(prof / "keys", ident, kem)
    return prof


def test_approve_then_load_profile_gives_the_supernode_its_party(tmp_path, keys):
    manifest = _manifest(keys)
    prof = _profile(tmp_path, "bank-b", keys)
    consent = approve_federated_job(prof, manifest)
    assert consent.party_id == "bank-b" and consent.manifest_digest == manifest.digest()
    runtime = load_profile(prof)
    assert runtime.party_id == "bank-b" and runtime.manifest.digest() == manifest.digest()
    assert runtime.sent_log == prof / "jobs" / manifest.job_id / "sent.jsonl"  # the audit check's note
    assert resolve_party({"mpctrain-party": str(prof)}) is resolve_party({"mpctrain-party": str(prof)})
    assert runtime.evidence.credentials is None  # the committed profile names no tls_ca: plaintext transport
    from mpctrain.enclave.federated.deploy import tls_material

    ca = tls_material(tmp_path / "tls").ca
    text = (prof / "party.toml").read_text()
    (prof / "party.toml").write_text(f'tls_ca = "{ca}"\n' + text)  # a top-level key: before [rules]
    assert load_profile(prof).evidence.credentials is not None  # the SuperNode's GetEvidence speaks TLS


def test_profile_refuses_changed_app_code_and_unapproved_jobs(tmp_path, keys):
    manifest = _manifest(keys)
    prof = _profile(tmp_path, "bank-c", keys)
    with pytest.raises(JobNotReady, match="not approved"):
        load_profile(prof)
    (tmp_path / "examples" / "banks_federated" / "app" / "task.py").write_text("# swapped code\n")
    with pytest.raises(CodeDigestMismatch):
        approve_federated_job(prof, manifest)
    with pytest.raises(JobNotReady, match="mpctrain-party"):
        resolve_party({})


def test_partition_resolver_maps_simulated_nodes_to_parties(sim_root, sim_attester):
    from fedkit import build_job, initial_arrays, toy_app
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from mpctrain.enclave.federated.ray_sim import partition_resolver
    from mpctrain.party.flower import ConfidentialMod, register_party, unregister_party

    job = build_job(sim_root, sim_attester, n=2)
    names = [f"sim-{p.id}" for p in job.parties]
    for name, p in zip(names, job.parties, strict=True):
        register_party(name, job.runtime(p))
    try:
        mod = ConfidentialMod(partition_resolver(names))
        grid = job.grid(lambda p, i: toy_app(0.1 * (i + 1), 10, mod=mod), node_config=lambda p, i: {"partition-id": i})
        strategy = job.confidential(FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0))
        result = strategy.start(grid, initial_arrays(), num_rounds=1)
        assert result.rounds_completed == 1 and not strategy.rejections
        bad = job.grid(lambda p, i: toy_app(0.1, 10, mod=mod), node_config=lambda p, i: {"partition-id": 7})
        replies = list(bad.send_and_receive(strategy.configure_train(2, initial_arrays(), ConfigRecord(), bad)))
        assert all(r.has_error() and "partition-id" in r.error.reason for r in replies)
    finally:
        for name in names:
            unregister_party(name)


def test_fl_audit_cli_refuses_a_profile_without_an_approved_job(tmp_path, keys):
    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    prof = _profile(tmp_path, "bank-d", keys)
    out = CliRunner().invoke(app, ["party", "fl-audit", "--profile", str(prof)])
    assert out.exit_code == 2 and "not approved" in out.output


def test_a_job_name_from_the_superlink_is_never_a_path(tmp_path):
    """A run's ``mpctrain-job`` comes from the SuperLink: ``../`` or an absolute path must not reach a job the
    bank moved out of its jobs directory (withdrawn), and a job dir holding another job's files is refused."""
    from mpctrain.enclave.federated.simulation import build_federation
    from mpctrain.party.flower.executor import ApprovedJobs

    example = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"
    fed = build_federation(["bank-a"], job_id="job-1", code_digest=app_code_digest(example / "app"),
                           training={"rounds": 1})
    profile = fed.write_profile(fed.parties[0], tmp_path / "bank-a", "127.0.0.1:1", example / "app")
    approve_federated_job(profile, fed.manifest)
    assert ApprovedJobs(profile).runtime("job-1").manifest.job_id == "job-1"
    (tmp_path / "archive").mkdir()
    shutil.move(str(profile / "jobs" / "job-1"), str(tmp_path / "archive" / "job-1"))
    for named in ("job-1", "../../archive/job-1", str(tmp_path / "archive" / "job-1"), "..", "a/b"):
        with pytest.raises(JobNotReady):
            ApprovedJobs(profile).runtime(named)
    shutil.copytree(tmp_path / "archive" / "job-1", profile / "jobs" / "job-2")  # job-1's files under job-2
    with pytest.raises(JobNotReady, match="not 'job-2'"):
        ApprovedJobs(profile).runtime("job-2")
