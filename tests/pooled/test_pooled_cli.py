"""The CLI path: `job propose/approve/status/fetch` and `party run` against a live loopback aggregator."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from mpctrain.attest.measure import sim_measurement
from mpctrain.cli.main import app
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.party.config import PartyConfig
from mpctrain.party.profile import agent_from_config, policy_toml, run_party
from mpctrain.sim.cluster import EXAMPLE, SimCluster

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    c = SimCluster(work, events=MemoryEventSink())
    with c:
        profiles = work / "profiles"
        good = profiles / "sim-policy.toml"
        profiles.mkdir()
        good.write_text(policy_toml(c.enclave_policy()))
        (profiles / "wrong-policy.toml").write_text(policy_toml(c.enclave_policy(sim_measurement(b"other"))))
        for pid in HOSPITALS:
            d = profiles / pid
            d.mkdir()
            keys = c.parties[pid].dir / "keys"
            (d / "party.toml").write_text(
                f'id = "{pid}"\naggregator = "{c.target}"\npolicy = "../sim-policy.toml"\n'
                f'data = "{EXAMPLE / "data" / (pid + ".csv")}"\nkeys_dir = "{keys}"\noutputs_dir = "outputs"\n'
                f'[rules]\nauto_approve = {"false" if pid == "hospital-a" else "true"}\n'
                f'allowed_recipients = {list(HOSPITALS)!r}\n[rules.known_parties]\n'.replace("'", '"')
                + "".join(f'{o} = "{c.parties[o].dir / "keys"}"\n' for o in HOSPITALS if o != pid))
        job = work / "job.toml"
        lines = ['job_id = "cli-job"', 'mode = "pooled"', 'proposer = "hospital-a"', "expires_in_days = 1",
                 'public_metrics = ["accuracy"]']
        for pid in HOSPITALS:
            keys = c.parties[pid].dir / "keys"
            lines += ["[[parties]]", f'id = "{pid}"', 'role = "data"',
                      f'identity_public_file = "{keys / "identity.pub"}"', f'kem_public_file = "{keys / "kem.pub"}"']
        lines += ["[schema]", f'file = "{EXAMPLE / "data" / "schema.toml"}"', "[model]", 'name = "logreg"',
                  "[training]", "epochs = 2", "batch_size = 64", "lr = 0.01", "seed = 3"]
        job.write_text("\n".join(lines) + "\n" + "[enclave_policy]\n" + policy_toml(c.enclave_policy()).replace(
            "[sim]", "[enclave_policy.sim]"))
        yield c, profiles, job


def test_cli_job_lifecycle(live, tmp_path):
    _, profiles, job = live
    runner = CliRunner()
    res = runner.invoke(app, ["job", "propose", str(job), "--as", "hospital-a", "--profiles", str(profiles)])
    assert res.exit_code == 0, res.output
    assert "digest" in res.output and "hospital-a" in res.output
    results, errors = {}, []

    def party(pid):
        try:
            agent = agent_from_config(PartyConfig.load(profiles / pid / "party.toml"))
            results[pid] = run_party(agent, "cli-job", timeout=60, say=lambda s: None)
        except Exception as exc:
            errors.append((pid, exc))

    threads = [threading.Thread(target=party, args=(p,)) for p in HOSPITALS]
    for t in threads:
        t.start()
    # hospital-a does not auto-approve: a human runs `job approve`
    res = runner.invoke(app, ["job", "approve", "cli-job", "--as", "hospital-a", "--profiles", str(profiles)])
    assert res.exit_code == 0, res.output
    for t in threads:
        t.join(90)
    assert errors == []
    assert set(results) == set(HOSPITALS) and all(r and "model" in r for r in results.values())
    res = runner.invoke(app, ["job", "status", "cli-job", "--as", "hospital-b", "--profiles", str(profiles)])
    assert res.exit_code == 0 and "done" in res.output and "accuracy" in res.output, res.output
    c = live[0]
    log = tmp_path / "view.jsonl"
    res = runner.invoke(app, ["audit", "fetch", c.target, "--out", str(log), "--job", "cli-job", "--as", "hospital-b",
                              "--profiles", str(profiles)])  # signed with the profile's identity key
    assert res.exit_code == 0, res.output
    assert b'"job_id":"cli-job"' in log.read_bytes() and b'"kind":"job.proposed"' in log.read_bytes()
    out = tmp_path / "fetched"
    res = runner.invoke(app, ["job", "fetch", "cli-job", "--as", "hospital-c", "--profiles", str(profiles),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "cli-job" / "model.safetensors").is_file() and (out / "cli-job" / "metrics.json").is_file()
    assert "receipt verified" in res.output
    planted, elsewhere = tmp_path / "planted", tmp_path / "elsewhere"  # <out>/<job> is a link someone planted
    planted.mkdir()
    elsewhere.mkdir()
    (planted / "cli-job").symlink_to(elsewhere)
    res = runner.invoke(app, ["job", "fetch", "cli-job", "--as", "hospital-c", "--profiles", str(profiles),
                              "--out", str(planted)])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and f"{planted / 'cli-job'} is a symbolic link; refusing to write through" in said, said
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert list(elsewhere.iterdir()) == []


def test_cli_fetch_of_a_failed_job_gives_its_error(live, tmp_path):
    import numpy as np

    from mpctrain.party.uploader import ShardUpload
    from mpctrain.train.data import table_to_bytes

    c, profiles, _ = live
    m = c.manifest("cli-failed", parties=["hospital-a"], quorum=1)
    a = c.agent("hospital-a")
    a.client.propose(m)
    a.attest()
    a.approve(m)
    shard = table_to_bytes(np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.int64))  # wrong columns
    assert ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard).send().complete
    assert a.wait(m.job_id, ("done",), timeout=60) == "failed"
    res = CliRunner().invoke(app, ["job", "fetch", "cli-failed", "--as", "hospital-a", "--profiles", str(profiles),
                                   "--out", str(tmp_path)])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "error: job cli-failed failed: TensorFormatError: a shard does not match" in text, text
    assert text.endswith("; it has no outputs") and "FAILED_PRECONDITION" not in text


def test_cli_party_refuses_unattested_aggregator(live):
    c, profiles, _ = live
    c.agent("hospital-b").client.propose(c.manifest("cli-known-b", parties=["hospital-b"]))  # a party it knows
    runner = CliRunner()
    res = runner.invoke(app, ["party", "run", "--config", str(profiles / "hospital-b" / "party.toml"),
                              "--policy", str(profiles / "wrong-policy.toml"), "--timeout", "5"])
    assert res.exit_code == 1
    assert "measurement-not-allowed" in res.output and "nothing was sent" in res.output
    res = runner.invoke(app, ["job", "status", "nope", "--as", "hospital-b", "--profiles", str(profiles)])
    assert res.exit_code == 1 and "PERMISSION_DENIED" in res.output  # existence is not revealed
    res = runner.invoke(app, ["job", "propose", str(profiles / "missing.toml"), "--as", "hospital-b",
                              "--profiles", str(profiles)])
    assert res.exit_code == 1 and "cannot read job file" in res.output


def test_approve_and_run_warn_when_the_policy_only_reports_the_measurement(live, tmp_path):
    from mpctrain.party.errors import PartyError

    c, profiles, _ = live
    report_only = c.enclave_policy()
    report_only["sim"]["measurements"] = "report-only"
    policy = tmp_path / "report-only.toml"
    policy.write_text(policy_toml(report_only))
    c.agent("hospital-b").client.propose(c.manifest("cli-unpinned", parties=["hospital-b"]))
    res = CliRunner().invoke(app, ["job", "approve", "cli-unpinned", "--as", "hospital-b", "--profiles",
                                   str(profiles), "--policy", str(policy)])
    text = " ".join(res.output.split())
    assert "warning: the policy is report-only for sim: the measurement was NOT compared" in text, text
    said: list[str] = []
    agent = agent_from_config(PartyConfig.load(profiles / "hospital-c" / "party.toml"), policy_file=policy)
    with pytest.raises(PartyError, match="waiting for job nope"):
        run_party(agent, "nope", timeout=0, say=said.append)
    assert any("warning: the policy is report-only for sim" in s for s in said), said
    res = CliRunner().invoke(app, ["job", "approve", "cli-unpinned", "--as", "hospital-b", "--profiles",
                                   str(profiles)])  # its pinned policy: no warning
    assert "NOT compared" not in res.output, res.output


def test_cli_job_status_of_a_party_no_job_names_gives_a_hint(live, tmp_path):
    c, profiles, _ = live
    (tmp_path / "party.toml").write_text(f'id = "newcomer"\naggregator = "{c.target}"\n'
                                         f'policy = "{profiles / "sim-policy.toml"}"\n')
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["job", "status", "cli-jbo", "--as", str(tmp_path / "party.toml")])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "unknown party 'newcomer'" in text
    assert "no job on this aggregator names this party yet, or the job id is wrong" in text


def test_cli_job_status_is_signed_and_for_the_jobs_parties(live, tmp_path):
    c, profiles, _ = live
    c.agent("hospital-b").client.propose(c.manifest("cli-status", parties=["hospital-b", "hospital-c"]))
    c.agent("hospital-a").client.propose(c.manifest("cli-status-a", parties=["hospital-a"]))
    runner = CliRunner()

    def status(*args: str):
        return runner.invoke(app, ["job", "status", "cli-status", "--profiles", str(profiles), *args])

    res = status("--as", "hospital-c")
    assert res.exit_code == 0 and "proposed" in res.output, res.output
    res = status("--as", "hospital-c", "--keys", str(c.parties["hospital-c"].dir / "keys"))
    assert res.exit_code == 0 and "proposed" in res.output, res.output
    res = status("--as", "hospital-a")  # known to the aggregator, not a party of this job
    assert res.exit_code == 1 and "PERMISSION_DENIED" in res.output, res.output
    res = status("--as", "hospital-c", "--keys", str(c.parties["hospital-a"].dir / "keys"))  # someone else's key
    assert res.exit_code == 1 and "UNAUTHENTICATED" in res.output, res.output
    res = status("--as", "hospital-c", "--keys", str(tmp_path))
    assert res.exit_code == 2 and "identity.key" in res.output and not (tmp_path / "identity.key").exists()


def test_job_approve_wants_force_while_the_rules_name_no_allowed_recipients(live, tmp_path):
    """Rules without allowed_recipients checked nobody who receives outputs: `party run` does not consent on
    them, and neither does `job approve` unless a person who reviewed the recipients passes --force."""
    from mpctrain.party.errors import PartyError

    c, profiles, _ = live
    toml = tmp_path / "open" / "party.toml"
    toml.parent.mkdir()
    toml.write_text(f'id = "hospital-b"\naggregator = "{c.target}"\npolicy = "{profiles / "sim-policy.toml"}"\n'
                    f'keys_dir = "{c.parties["hospital-b"].dir / "keys"}"\n'
                    f'data = "{EXAMPLE / "data" / "hospital-b.csv"}"\n[rules]\nauto_approve = true\n')
    m = c.manifest("cli-open", parties=["hospital-b", "hospital-c"])
    c.agent("hospital-b").client.propose(m)
    job = c.aggregator.store.get("cli-open")

    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if "waiting for" in line:
            raise PartyError("stop: the test only reads what it waits for")

    with pytest.raises(PartyError, match="stop"):
        run_party(agent_from_config(PartyConfig.load(toml)), "cli-open", timeout=10, say=say)
    assert "no allowed_recipients" in said[-1] and "--force` once a person has checked its recipients" in said[-1]
    runner = CliRunner()
    res = runner.invoke(app, ["job", "approve", "cli-open", "--as", str(toml), "--profiles", str(profiles)])
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "no allowed_recipients" in flat and "--force" in flat, res.output
    assert f"(this job's: {', '.join(m.recipients)})" in flat and job.consents == {}
    res = runner.invoke(app, ["job", "approve", "cli-open", "--as", str(toml), "--profiles", str(profiles), "--force"])
    assert res.exit_code == 0, res.output
    assert set(job.consents) == {"hospital-b"}


def test_cli_propose_refuses_a_job_whose_pinned_policy_the_live_enclave_fails(live, tmp_path):
    """Every approval of such a job would fail: the proposer is told so at once, with what differs."""
    c, profiles, job = live
    other = sim_measurement(b"another build").hex()
    stale = tmp_path / "stale.toml"
    stale.write_text(job.read_text().replace('job_id = "cli-job"', 'job_id = "cli-stale"').replace(
        c.attester.measurement.hex(), other))
    runner = CliRunner()
    propose = ["job", "propose", str(stale), "--as", "hospital-a", "--profiles", str(profiles)]
    res = runner.invoke(app, propose)
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "not proposed" in said and "measurement-not-allowed" in said, said
    packed = "".join(res.output.split())  # long hex values wrap at the console width
    assert other in packed and c.attester.measurement.hex() in packed  # pinned and live values, side by side
    assert "Fix the enclave_policy table in" in said
    assert "--skip-enclave-check" in said
    assert "cli-stale" not in {j.manifest.job_id for j in c.aggregator.store.list()}
    res = runner.invoke(app, [*propose, "--skip-enclave-check"])
    assert res.exit_code == 0 and "proposed cli-stale" in res.output, res.output


def test_cli_propose_to_an_unreachable_aggregator_says_so_not_that_the_policy_is_wrong(live):
    """A refused connection was reported as the job's enclave_policy failing ("fix the enclave_policy table"),
    with --skip-enclave-check as the way out: neither is the fix when nothing answers."""
    import socket

    _, profiles, job = live
    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(app, ["job", "propose", str(job), "--as", "hospital-a", "--profiles", str(profiles),
                                   "--aggregator", f"127.0.0.1:{port}"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert f"not proposed: the aggregator at 127.0.0.1:{port} did not answer" in said, said
    assert "unreachable" in said and "then propose again" in said
    assert "enclave_policy" not in said and "--skip-enclave-check" not in said


def test_only_party_run_and_propose_create_keys(live, tmp_path):
    """A typo in keys_dir must not mint a new identity: status/approve/fetch say there are no keys (and how to make
    them) and create nothing; `job propose` (the documented researcher flow) and `party run` still create them."""
    c, profiles, job = live
    typo = tmp_path / "party-typo.toml"
    typo.write_text((profiles / "hospital-b" / "party.toml").read_text().replace(
        f'keys_dir = "{c.parties["hospital-b"].dir / "keys"}"', 'keys_dir = "kyes"'))
    assert 'keys_dir = "kyes"' in typo.read_text()
    runner = CliRunner()
    for args in (["status", "cli-job"], ["approve", "cli-job"], ["fetch", "cli-job", "--out", str(tmp_path / "o")]):
        res = runner.invoke(app, ["job", *args, "--as", str(typo), "--profiles", str(profiles)])
        flat = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert f"no keys in {tmp_path / 'kyes'}" in flat and f"keys generate --out {tmp_path / 'kyes'}" in flat
        assert "Traceback" not in res.output and not (tmp_path / "kyes").exists()

    fresh = tmp_path / "clinic-z"  # a new proposer: the manifest names its public files, made by propose
    fresh.mkdir()
    (fresh / "party.toml").write_text(f'id = "clinic-z"\naggregator = "{c.target}"\n'
                                      f'policy = "{profiles / "sim-policy.toml"}"\nkeys_dir = "keys"\n')
    text = job.read_text().replace('job_id = "cli-job"', 'job_id = "cli-fresh"').replace(
        'proposer = "hospital-a"', 'proposer = "clinic-z"')
    pub = fresh / "keys"
    text = text.replace("[schema]", f'[[parties]]\nid = "clinic-z"\nrole = "researcher"\nidentity_public_file = '
                                    f'"{pub / "identity.pub"}"\nkem_public_file = "{pub / "kem.pub"}"\n[schema]', 1)
    (tmp_path / "job.toml").write_text(text)
    res = runner.invoke(app, ["job", "propose", str(tmp_path / "job.toml"), "--as", str(fresh / "party.toml")])
    assert res.exit_code == 0, res.output
    assert (fresh / "keys" / "identity.key").is_file() and (fresh / "keys" / "identity.pub").is_file()


def test_party_run_timeout_names_the_state_and_what_is_missing(live):
    """`party run --timeout` used to end in the watch stream's bare DEADLINE_EXCEEDED, whatever it waited for."""
    c, profiles, _ = live
    m = c.manifest("cli-timeout", parties=["hospital-b", "hospital-c"])
    c.agent("hospital-b").client.propose(m)
    runner = CliRunner()
    run = ["party", "run", "--config", str(profiles / "hospital-b" / "party.toml"), "--job", "cli-timeout",
           "--timeout", "2"]
    res = runner.invoke(app, run)
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "DEADLINE_EXCEEDED" not in flat, res.output
    assert ("timed out after 2 s waiting for job cli-timeout to be open or training (state proposed; missing "
            "consent: hospital-c)") in flat
    other = c.agent("hospital-c")
    other.attest()
    other.approve(m)
    res = runner.invoke(app, run)  # uploads, then waits for hospital-c's shard
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "DEADLINE_EXCEEDED" not in flat, res.output
    assert "timed out after 2 s waiting for job cli-timeout to be done (state open; missing upload: hospital-c)" in flat
    res = runner.invoke(app, [*run[:-4], "--job", "cli-no-such-job", "--timeout", "1"])
    assert res.exit_code == 1 and "timed out after 1 s waiting for job cli-no-such-job naming hospital-b" in res.output


@pytest.mark.parametrize("defect", ["missing-column", "29-rows"])
def test_party_run_checks_its_table_before_approving(live, tmp_path, defect):
    """A table the job cannot use is refused before consent: no consent reaches the aggregator (it used to approve,
    then fail on the schema; a 29-row shard failed the whole job with ValidationTooSmall after every upload)."""
    import pandas as pd

    c, profiles, _ = live
    table = pd.read_csv(EXAMPLE / "data" / "hospital-b.csv")
    table = table.drop(columns=["mean_radius"]) if defect == "missing-column" else table.head(29)
    table.to_csv(tmp_path / "b.csv", index=False)
    toml = tmp_path / "party.toml"
    toml.write_text((profiles / "hospital-b" / "party.toml").read_text().replace(
        str(EXAMPLE / "data" / "hospital-b.csv"), str(tmp_path / "b.csv")).replace(
        'policy = "../sim-policy.toml"', f'policy = "{profiles / "sim-policy.toml"}"'))
    job_id = f"cli-data-{defect}"
    c.agent("hospital-b").client.propose(c.manifest(job_id, parties=["hospital-b", "hospital-c"],
                                                    training={"epochs": 1, "batch_size": 32, "lr": 0.01, "seed": 7,
                                                              "val_fraction": 0.2}))
    res = CliRunner().invoke(app, ["party", "run", "--config", str(toml), "--job", job_id, "--timeout", "10"])
    flat = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert f"error: not approving job {job_id}: {tmp_path / 'b.csv'}:" in flat and "nothing was sent" in flat
    assert "approved job" not in flat
    if defect == "missing-column":
        assert "missing column(s) ['mean_radius']" in flat
    else:
        assert "of this table's 29 rows" in flat and "at least 10 from each party" in flat
        assert "raise [training] val_fraction" in flat  # printed as text, not taken for rich markup
    assert c.aggregator.store.get(job_id).consents == {}
    res = CliRunner().invoke(app, ["job", "approve", job_id, "--as", str(toml)])  # the same check by hand
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "this party's data does not fit the job" in flat, res.output
    assert c.aggregator.store.get(job_id).consents == {}


def test_party_run_again_says_it_already_uploaded_and_follows_the_job(live):
    """A re-run after its upload says so (it skipped silently), counts chunks in proper English, and, once the job
    is done, still follows it to its outputs (a named job past taking data is followed when consented to)."""
    c, profiles, _ = live
    m = c.manifest("cli-rerun", parties=["hospital-b", "hospital-c"],
                   training={"epochs": 1, "batch_size": 32, "lr": 0.01, "seed": 7, "val_fraction": 0.2})
    c.agent("hospital-b").client.propose(m)
    other = c.agent("hospital-c")
    other.attest()
    other.approve(m)
    runner = CliRunner()
    run = ["party", "run", "--config", str(profiles / "hospital-b" / "party.toml"), "--job", "cli-rerun"]
    res = runner.invoke(app, [*run, "--timeout", "2"])
    flat = " ".join(res.output.split())
    assert "on the wire, 1 chunk)" in flat and "1 chunks" not in flat, res.output
    res = runner.invoke(app, [*run, "--timeout", "2"])
    flat = " ".join(res.output.split())
    assert "hospital-b: already uploaded 1 chunk for job cli-rerun; not uploading again" in flat, res.output
    assert "missing upload: hospital-c" in flat
    other.upload(m)
    assert other.wait(m.job_id, ("done",), timeout=60) == "done"
    res = runner.invoke(app, [*run, "--timeout", "30"])
    flat = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "already uploaded 1 chunk for job cli-rerun" in flat and "outputs opened and receipt verified" in flat


def test_job_approve_twice_says_already_approved_and_sends_nothing(live):
    """The second `job approve` printed 'approved' again and the audit view got a second consent record."""
    c, profiles, _ = live
    m = c.manifest("cli-twice", parties=["hospital-a", "hospital-b"])
    c.agent("hospital-a").client.propose(m)
    job = c.aggregator.store.get("cli-twice")
    runner = CliRunner()
    approve = ["job", "approve", "cli-twice", "--as", "hospital-a", "--profiles", str(profiles)]
    res = runner.invoke(app, approve)
    assert res.exit_code == 0 and "hospital-a approved cli-twice" in res.output, res.output
    res = runner.invoke(app, approve)
    flat = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert (f"hospital-a already approved cli-twice (consent digest {m.digest().hex()}, confirmed by the enclave's "
            "audit log); nothing sent") in flat

    def consents():
        return ([e.party_id for e in job.events if e.kind == "consent"],
                [f["party"] for k, f in c.events.events if k == "job.consent" and f["job_id"] == "cli-twice"])

    assert consents() == (["hospital-a"], ["hospital-a"])
    a = c.agent("hospital-a")  # a client that sends its consent again anyway: the enclave records it once
    a.attest()
    a.approve(m)
    assert consents() == (["hospital-a"], ["hospital-a"])


def test_job_approve_does_not_take_the_hosts_word_for_an_earlier_consent(live, monkeypatch):
    """"already approved" trusted the unsigned GetJob reply: a host listing the party as consented stopped its
    consent from ever being sent, and the digest printed was only the fetched manifest's. Unconfirmed by the
    enclave-signed audit view, the claim is said to be unconfirmed and the consent is sent (recorded once)."""
    from mpctrain.party.client import AggregatorClient

    c, profiles, _ = live
    m = c.manifest("cli-claim", parties=["hospital-a", "hospital-b"])
    c.agent("hospital-a").client.propose(m)
    job = c.aggregator.store.get("cli-claim")
    real = AggregatorClient.get_job

    def lying(self, job_id):  # the host adds hospital-a to the (unsigned) consented list
        status = real(self, job_id)
        if "hospital-a" not in status.consented:
            status.consented.append("hospital-a")
        return status

    monkeypatch.setattr(AggregatorClient, "get_job", lying)
    approve = ["job", "approve", "cli-claim", "--as", "hospital-a", "--profiles", str(profiles)]
    res = CliRunner().invoke(app, approve)
    flat = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "the aggregator reports hospital-a already consented to cli-claim; not confirmed by a signed record" in flat
    assert "already approved" not in flat and "hospital-a approved cli-claim" in flat
    assert set(job.consents) == {"hospital-a"}
    res = CliRunner().invoke(app, approve)  # now the signed record is there: nothing is sent again
    flat = " ".join(res.output.split())
    assert res.exit_code == 0 and "confirmed by the enclave's audit log); nothing sent" in flat, res.output
    assert [f["party"] for k, f in c.events.events if k == "job.consent" and f["job_id"] == "cli-claim"] == \
        ["hospital-a"]
