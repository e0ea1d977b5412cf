"""``aggregator serve`` with ``[federated]``: the config section, and the runner it installs on the job store."""

from __future__ import annotations

import pytest

from mpctrain.enclave.config import AggregatorConfig, ConfigError
from mpctrain.enclave.federated.runner import FederatedRunner
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.server import Aggregator
from mpctrain.enclave.state import JobError, JobState

BASE = 'attester = "sim"\ndevice = "cpu"\n[sim]\nroot_dir = "root"\n'


def _load(tmp_path, federated: str) -> AggregatorConfig:
    path = tmp_path / "aggregator.toml"
    path.write_text(BASE + federated)
    return AggregatorConfig.load(path)


def test_the_federated_section_is_read_relative_to_the_config(tmp_path):
    cfg = _load(tmp_path, '[federated]\nsuperlink = "10.0.0.5:9091"\nroot_certificates = "tls/ca.pem"\n'
                          "timeout_s = 600\n")
    assert cfg.federated is not None
    assert cfg.federated.superlink == "10.0.0.5:9091"
    assert cfg.federated.root_certificates == tmp_path / "tls" / "ca.pem"
    assert cfg.federated.timeout_s == 600
    plain = _load(tmp_path, '[federated]\nsuperlink = "127.0.0.1:9091"\ninsecure = true\n')
    assert plain.federated is not None and plain.federated.root_certificates is None
    assert _load(tmp_path, "").federated is None


@pytest.mark.parametrize(("section", "message"), [
    ("[federated]\ninsecure = true\n", "superlink must be"),
    ('[federated]\nsuperlink = "no-port"\ninsecure = true\n', "superlink must be"),
    ('[federated]\nsuperlink = "h:1"\n', "root_certificates .* or insecure = true"),
    ('[federated]\nsuperlink = "h:1"\nroot_certificates = "ca.pem"\ninsecure = true\n', "exactly one"),
    ('[federated]\nsuperlink = "h:1"\ninsecure = "yes"\n', "exactly one"),
    ('[federated]\nsuperlink = "h:1"\ninsecure = true\ntimeout_s = 0\n', "timeout_s must be a positive"),
    ('[federated]\nsuperlink = "h:1"\ninsecure = true\napps = []\n', "unknown \\[federated\\] keys"),
    ('federated = "h:1"\n', "must be a table"),
])
def test_a_wrong_federated_section_names_the_key(tmp_path, section, message):
    path = tmp_path / "aggregator.toml"
    path.write_text(section + BASE if not section.startswith("[") else BASE + section)
    with pytest.raises(ConfigError, match=message):
        AggregatorConfig.load(path)


def _job():
    return build_federation(["bank-a", "bank-b"], job_id="served", training={"rounds": 1}).manifest


def test_an_aggregator_without_the_section_refuses_federated_jobs(tmp_path):
    agg = Aggregator.from_config(_load(tmp_path, ""))
    manifest = _job()
    with pytest.raises(JobError, match="does not run 'federated' jobs"):
        agg.store.add(manifest, manifest.to_bytes())


def test_with_the_section_federated_jobs_wait_for_their_consents(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    agg = Aggregator.from_config(_load(tmp_path, '[federated]\nsuperlink = "127.0.0.1:1"\n'
                                                 'root_certificates = "ca.pem"\n'))
    assert isinstance(agg.store.runners["federated"], FederatedRunner)
    manifest = _job()
    job = agg.store.add(manifest, manifest.to_bytes())
    assert job.state == JobState.PROPOSED  # nothing is sent to the SuperLink before every consent is in


def test_an_unreadable_superlink_ca_stops_the_aggregator_at_startup(tmp_path):
    cfg = _load(tmp_path, '[federated]\nsuperlink = "127.0.0.1:1"\nroot_certificates = "missing.pem"\n')
    with pytest.raises(ConfigError, match="cannot read \\[federated\\] root_certificates"):
        Aggregator.from_config(cfg)


def test_a_job_whose_app_is_not_the_consented_code_fails_before_any_party_hears_of_it(tmp_path):
    from contextlib import nullcontext
    from pathlib import Path

    from mpctrain.enclave.federated.apps import consented_initial_arrays, read_app
    from mpctrain.enclave.federated.runtime import InProcessGrid
    from mpctrain.enclave.state import JobStore
    from mpctrain.party.flower import app_code_digest

    example = Path(__file__).resolve().parents[2] / "examples" / "banks_federated" / "app"
    other = tmp_path / "app"
    other.mkdir()
    (other / "task.py").write_text("def initial_arrays():\n    raise SystemExit('never runs')\n")
    fed = build_federation(["bank-a"], job_id="wrong-code", code_digest=app_code_digest(example),
                           training={"rounds": 1, "flower": {"initial_arrays": "task:initial_arrays"}})
    relayed: list = []
    grid = InProcessGrid([], tap=lambda kind, wire: relayed.append(kind))
    runner = FederatedRunner(fed.enclave, fed.events, grid_for=lambda job: nullcontext(grid),
                             initial_arrays=lambda job, g: consented_initial_arrays(job.manifest, read_app(other)))
    store = JobStore(fed.events, runners={"federated": runner})
    job = store.add(fed.manifest, fed.manifest.to_bytes())
    store.add_consent(job, fed.consents[0])
    store.join(timeout=30)
    assert job.state == JobState.FAILED
    assert job.error.startswith("CodeDigestMismatch: ") and "covers" in job.error  # the reason is shown
    assert relayed == [] and job.outputs == {}


def test_a_remote_superlink_without_tls_is_flagged(tmp_path, caplog):
    Aggregator.from_config(_load(tmp_path, '[federated]\nsuperlink = "127.0.0.1:9091"\ninsecure = true\n'))
    assert "without TLS" not in caplog.text  # loopback: nothing travels off the machine
    Aggregator.from_config(_load(tmp_path, '[federated]\nsuperlink = "10.0.0.5:9091"\ninsecure = true\n'))
    assert "10.0.0.5:9091 is reached without TLS" in caplog.text


def test_a_submitted_run_is_held_to_the_job_before_anything_is_sent():
    from pathlib import Path

    from flwr.cli.build import build_fab_from_disk

    from mpctrain.enclave.federated.deploy import ServerTask, task_initial_arrays
    from mpctrain.enclave.federated.errors import CodeDigestMismatch, RunConfigMismatch
    from mpctrain.party.flower import app_code_digest

    example = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"
    pinned = {"local-epochs": 2, "lr": 0.1, "batch-size": 32, "data-seed": 7, "train-seed": 7}
    manifest = build_federation(["bank-a"], job_id="held", code_digest=app_code_digest(example / "app"),
                                training={"rounds": 1, "flower": {"initial_arrays": "task:initial_arrays",
                                                                  "run_config": pinned}}).manifest
    fab = build_fab_from_disk(example)  # what `flwr run` submits

    def task(run_config, fab=fab):
        return ServerTask(grid=None, run_id=1, fab=fab, run_config=run_config)  # type: ignore[arg-type]

    arrays = task_initial_arrays(manifest, task({**pinned, "mpctrain-job": "held"}))
    assert set(arrays) == {"w", "b"}
    with pytest.raises(RunConfigMismatch, match="'lr'"):
        task_initial_arrays(manifest, task({**pinned, "lr": 1.0, "mpctrain-job": "held"}))
    other = build_federation(["bank-a"], job_id="held", code_digest="ab" * 48,
                             training={"rounds": 1, "flower": {"initial_arrays": "task:initial_arrays",
                                                               "run_config": pinned}}).manifest
    with pytest.raises(CodeDigestMismatch, match="no directory of the submitted FAB"):
        task_initial_arrays(other, task(dict(pinned)))


def test_a_job_whose_superlink_is_down_fails_in_time_with_the_reason():
    import socket
    import time

    from mpctrain.enclave.federated.deploy import NoRunSubmitted, superlink_task

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(NoRunSubmitted, match="stayed unreachable"):
        with superlink_task(f"127.0.0.1:{port}", root_certificates=None, timeout=1.5, poll_s=0.1):
            pytest.fail("no task can come from a SuperLink that is down")
    assert time.monotonic() - started < 10  # the job's deadline holds, whatever Flower's retry policy is


def test_deployment_private_keys_are_never_readable_by_others(tmp_path, monkeypatch):
    """The TLS and SuperNode keys are created 0600 (not written 0644 and chmod'ed afterwards), atomically,
    and a link planted at the key's path is replaced, never written through."""
    import os
    import stat

    from mpctrain.enclave.federated.deploy import supernode_keypair, tls_material

    old_umask = os.umask(0o022)  # the common default: a plain write would create the key 0644
    decoy = tmp_path / "decoy"
    decoy.write_text("untouched")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "bank-a.key").symlink_to(decoy)
    created: list[int] = []
    real_open = os.open

    def spying_open(path, flags, *a, **k):  # the mode a new file has at creation, before any chmod
        fd = real_open(path, flags, *a, **k)
        if flags & os.O_CREAT and stat.S_ISREG(os.fstat(fd).st_mode):
            created.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr("os.open", spying_open)
    priv, _ = supernode_keypair(tmp_path / "keys", "bank-a")
    files = tls_material(tmp_path / "tls", ("127.0.0.1",))
    assert created and all(m == 0o600 for m in created)
    for key in (priv, files.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and not key.is_symlink()
    assert decoy.read_text() == "untouched"
    os.umask(old_umask)
