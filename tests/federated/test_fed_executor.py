"""The bank's ClientApp executor runs only the consented code from the FAB the SuperLink relays.

Each FAB here is built by Flower itself (``build_fab_from_disk``) from a copy of the banks example: the
consented one loads; one whose ClientApp lost the confidential mod, and one that keeps the consented
``app/`` but points its ClientApp at a module outside it, are refused before any of their code runs.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest
from fedkit import app_outside_consent
from flwr.cli.build import build_fab_from_disk
from flwr.clientapp import ClientApp

from mpctrain.enclave.federated.apps import AppEntryError
from mpctrain.enclave.federated.errors import CodeDigestMismatch
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.party.flower import app_code_digest
from mpctrain.party.flower.executor import consented_client_app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"


def _manifest():
    return build_federation(["bank-a"], job_id="exec", code_digest=app_code_digest(EXAMPLE / "app"),
                            training={"rounds": 1}).manifest


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "fab-src"
    shutil.copytree(EXAMPLE, d, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    return d


def test_the_consented_fab_yields_its_client_app():
    app = consented_client_app(build_fab_from_disk(EXAMPLE), _manifest()).client_app
    assert isinstance(app, ClientApp)
    assert app._mods and type(app._mods[0]).__name__ == "ConfidentialMod"  # the mod the banks reviewed


def test_a_client_app_without_the_mod_is_refused_before_it_runs(tmp_path):
    d = _copy(tmp_path)
    marker = tmp_path / "ran"
    client = d / "app" / "client_app.py"
    client.write_text(client.read_text().replace("return make_client_app([confidential_mod])",
                                                 "return make_client_app([])")
                      + f"\nopen({str(marker)!r}, 'w').close()\n")
    with pytest.raises(CodeDigestMismatch, match="no directory of the submitted FAB"):
        consented_client_app(build_fab_from_disk(d), _manifest())
    assert not marker.exists()  # not one line of it was executed


def test_a_client_app_outside_the_consented_directory_is_refused(tmp_path):
    marker = tmp_path / "ran"
    d = app_outside_consent(EXAMPLE, tmp_path / "fab-src", marker)
    fab = build_fab_from_disk(d)  # app/ is exactly the consented code; the ClientApp is not in it
    assert "evil.py" in zipfile.ZipFile(io.BytesIO(fab)).namelist()
    with pytest.raises(CodeDigestMismatch, match="outside the consented code"):
        consented_client_app(fab, _manifest())
    assert not marker.exists()


def test_a_component_that_is_not_a_client_app_is_refused(tmp_path):
    d = _copy(tmp_path)
    pyproject = d / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('clientapp = "app.client_app:app"',
                                                       'clientapp = "app.client_app:make_client_app"'))
    with pytest.raises(AppEntryError, match="not a flwr ClientApp"):
        consented_client_app(build_fab_from_disk(d), _manifest())


def test_the_executor_waits_out_an_unreachable_supernode_and_stops_on_request(tmp_path, caplog):
    import socket
    import threading

    from mpctrain.party.flower.executor import ApprovedJobs, serve_tasks

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    stats = serve_tasks(f"127.0.0.1:{port}", ApprovedJobs(tmp_path / "parties" / "bank-a"), root_certificates=None,
                        stop=stop, poll_s=0.05)
    timer.join()
    assert (stats.tasks, stats.failed) == (0, 0)
    assert "unreachable (ConnectError)" in caplog.text


def test_the_executor_serves_only_its_own_party(tmp_path):
    from flwr.app import Context, RecordDict

    from mpctrain.party.flower.executor import PartyMismatch, _bind_party
    from mpctrain.party.flower.runtime import NODE_CONFIG_KEY, resolve_party

    fed = build_federation(["bank-a", "bank-b"], job_id="exec", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1})
    rt = fed.runtime(fed.parties[0])
    mine = tmp_path / "parties" / "bank-a"

    def context(node_config):
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})

    named = context({NODE_CONFIG_KEY: str(mine)})
    _bind_party(named, rt, mine)  # the SuperNode names this profile: the mod gets the executor's runtime
    assert resolve_party(named.node_config) is rt
    unnamed = context({})
    _bind_party(unnamed, rt, mine)  # it names none: the executor's profile is filled in
    assert unnamed.node_config[NODE_CONFIG_KEY] == str(mine) and resolve_party(unnamed.node_config) is rt
    with pytest.raises(PartyMismatch, match="names party profile"):
        _bind_party(context({NODE_CONFIG_KEY: str(tmp_path / "parties" / "bank-b")}), rt, mine)


def test_one_executor_serves_every_job_its_bank_approved_and_no_other(tmp_path):
    from mpctrain.enclave.federated.errors import JobNotReady
    from mpctrain.party.flower.executor import ApprovedJobs
    from mpctrain.party.flower.profile import approve_federated_job

    digest = app_code_digest(EXAMPLE / "app")
    first = build_federation(["bank-a"], job_id="job-1", code_digest=digest, training={"rounds": 1})
    prof = first.write_profile(first.parties[0], tmp_path / "bank-a", "127.0.0.1:1", EXAMPLE / "app")
    approve_federated_job(prof, first.manifest)
    second = first.manifest.__class__.from_bytes(first.manifest.to_bytes().replace(b'"job-1"', b'"job-2"'))
    approve_federated_job(prof, second)  # a later job, approved with the same keys
    jobs = ApprovedJobs(prof)
    assert jobs.runtime("job-2").manifest.job_id == "job-2"
    assert jobs.runtime(None) is jobs.runtime("job-1")  # flower.toml names job-1: one runtime, one attestation
    with pytest.raises(JobNotReady, match="not approved"):
        jobs.runtime("job-3")


def test_each_job_and_run_gets_modules_of_its_own(tmp_path):
    """Module state of one job or run never reaches another (Flower itself runs a ClientApp process per run);
    a job's previous run's modules are unloaded when its next run starts."""
    import sys

    from mpctrain.party.flower.executor import ApprovedJobs
    from mpctrain.party.flower.profile import approve_federated_job

    digest = app_code_digest(EXAMPLE / "app")
    first = build_federation(["bank-a"], job_id="job-1", code_digest=digest, training={"rounds": 1})
    prof = first.write_profile(first.parties[0], tmp_path / "bank-a", "127.0.0.1:1", EXAMPLE / "app")
    approve_federated_job(prof, first.manifest)
    second = first.manifest.__class__.from_bytes(first.manifest.to_bytes().replace(b'"job-1"', b'"job-2"'))
    approve_federated_job(prof, second)
    jobs = ApprovedJobs(prof)
    fab = build_fab_from_disk(EXAMPLE)
    run1 = jobs.client_app(fab, jobs.runtime("job-1"), run_id=1)
    again = jobs.client_app(fab, jobs.runtime("job-1"), run_id=1)
    assert again.client_app is run1.client_app  # the messages of one run share the app, as in one process
    module = sys.modules[f"{run1.app.package}.task"]
    module.leaked = "state of job-1"  # what an app might keep in a module global
    other_job = jobs.client_app(fab, jobs.runtime("job-2"), run_id=1)
    assert other_job.client_app is not run1.client_app
    assert not hasattr(sys.modules[f"{other_job.app.package}.task"], "leaked")
    run2 = jobs.client_app(fab, jobs.runtime("job-1"), run_id=2)
    assert not hasattr(sys.modules[f"{run2.app.package}.task"], "leaked")
    assert not any(n.startswith(run1.app.package) for n in sys.modules)  # run 1 of job-1 left nothing behind
    assert f"{other_job.app.package}.task" in sys.modules  # job-2's run is untouched
