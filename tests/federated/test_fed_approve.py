"""`mpctrain job approve` signs only the job asked for, and only within the party's rules unless forced."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpctrain.cli.main import app
from mpctrain.enclave.federated.simulation import SimFederation, build_federation
from mpctrain.enclave.server import Aggregator
from mpctrain.enclave.state import Job
from mpctrain.jobs import JobManifest, PartySpec
from mpctrain.party.client import AggregatorClient
from mpctrain.party.flower import app_code_digest
from mpctrain.seal.keys import IdentityKey, KemKey

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"


def _with_recipient(manifest: JobManifest, job_id: str, name: str) -> JobManifest:
    """``manifest`` as ``job_id``, with one more output recipient ``name`` (fresh keys no profile knows)."""
    extra = PartySpec(name, "researcher", IdentityKey.generate().public_bytes(), "x25519",
                      KemKey.generate("x25519").public_bytes())
    return dataclasses.replace(manifest, job_id=job_id, parties=(*manifest.parties, extra),
                               recipients=(*manifest.recipients, name))


@dataclass
class Served:
    profiles: Path
    good: Job
    bad: Job
    fed: SimFederation
    agg: Aggregator

    def add(self, manifest: JobManifest) -> Job:
        return self.agg.store.add(manifest, manifest.to_bytes())


@pytest.fixture
def served(tmp_path):
    """An aggregator (with an audit log) holding cli-fed and evil-job (same banks and code, plus an output
    recipient mallory); bank-a's profile allows only the job's own recipients."""
    fed = build_federation(["bank-a", "bank-b"], job_id="cli-fed", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1})
    agg = Aggregator(fed.enclave, events=fed.events, audit_log=tmp_path / "audit.jsonl")
    agg.store.runners["federated"] = object()  # never started: consent from bank-b is missing
    port = agg.start()
    profiles = tmp_path / "profiles"
    fed.write_profile(fed.parties[0], profiles / "bank-a", f"127.0.0.1:{port}", EXAMPLE / "app")
    evil = _with_recipient(fed.manifest, "evil-job", "mallory")
    served = Served(profiles, agg.store.add(fed.manifest, fed.manifest.to_bytes()),
                    agg.store.add(evil, evil.to_bytes()), fed, agg)
    yield served
    agg.stop()


def _approve(profiles: Path, job: str, *extra: str):
    return CliRunner().invoke(app, ["job", "approve", job, "--as", "bank-a", "--profiles", str(profiles), *extra])


def test_a_substituted_manifest_is_never_consented(served, monkeypatch):
    profiles, good, bad = served.profiles, served.good, served.bad
    real = AggregatorClient.get_job
    # the host rewrites the (unsigned) GetJob reply: asked for cli-fed, it answers with evil-job's manifest
    monkeypatch.setattr(AggregatorClient, "get_job",
                        lambda self, job_id: real(self, "evil-job" if job_id == "cli-fed" else job_id))
    for extra in ((), ("--force",)):
        res = _approve(profiles, "cli-fed", *extra)
        assert res.exit_code == 1, res.output
        assert "answeredwiththemanifestof'evil-job'" in "".join(res.output.split())
    assert good.consents == {} and bad.consents == {}
    assert not (profiles / "bank-a" / "jobs").exists() or not any((profiles / "bank-a" / "jobs").iterdir())


def test_a_job_breaking_the_rules_is_consented_only_with_force(served):
    profiles, bad = served.profiles, served.bad
    res = _approve(profiles, "evil-job")
    assert res.exit_code == 1
    flat = "".join(res.output.split())
    assert "mallory" in flat and "--force" in flat
    assert bad.consents == {}
    res = _approve(profiles, "evil-job", "--force")
    assert res.exit_code == 0, res.output
    assert set(bad.consents) == {"bank-a"}


def test_a_job_within_the_rules_needs_no_force(served):
    profiles, good = served.profiles, served.good
    res = _approve(profiles, "cli-fed")
    assert res.exit_code == 0, res.output
    assert set(good.consents) == {"bank-a"}


def test_force_overrides_a_rule_about_a_recipient_whose_name_mentions_attestation(served):
    """The refusal --force cannot override was decided by "attest" or "measurement" in a problem's text: a recipient
    called attestation-lab made a rules problem look like an enclave one, so no person could ever consent."""
    lab = served.add(_with_recipient(served.fed.manifest, "lab-job", "attestation-lab"))
    res = _approve(served.profiles, "lab-job")
    flat = " ".join(res.output.split())
    assert res.exit_code == 1 and "attestation-lab" in flat and "re-run with --force" in flat, res.output
    assert "with or without --force" not in flat and lab.consents == {}
    res = _approve(served.profiles, "lab-job", "--force")
    assert res.exit_code == 0, res.output
    assert set(lab.consents) == {"bank-a"}


def test_force_never_overrides_an_enclave_that_fails_the_jobs_policy(served):
    """The typed enclave problems still refuse with --force: here the job pins a measurement the enclave lacks."""
    policy = {**served.fed.manifest.enclave_policy, "sim": {**served.fed.manifest.enclave_policy["sim"],
                                                            "measurements": ["00" * 48]}}
    stale = served.add(dataclasses.replace(served.fed.manifest, job_id="stale-job", enclave_policy=policy))
    for extra in ((), ("--force",)):
        res = _approve(served.profiles, "stale-job", *extra)
        flat = " ".join(res.output.split())
        assert res.exit_code == 1 and "with or without --force" in flat, res.output
        assert "measurement" in flat
    assert stale.consents == {}


def test_without_an_audit_log_an_earlier_consent_is_not_claimed_as_signed(tmp_path):
    """An aggregator with no audit log cannot confirm the consent it reports: approve says so instead of claiming a
    signed digest, and sends the consent again, which the enclave records once."""
    fed = build_federation(["bank-a", "bank-b"], job_id="cli-fed", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1})
    agg = Aggregator(fed.enclave, events=fed.events)
    agg.store.runners["federated"] = object()
    port = agg.start()
    try:
        profiles = tmp_path / "profiles"
        fed.write_profile(fed.parties[0], profiles / "bank-a", f"127.0.0.1:{port}", EXAMPLE / "app")
        job = agg.store.add(fed.manifest, fed.manifest.to_bytes())
        assert _approve(profiles, "cli-fed").exit_code == 0
        res = _approve(profiles, "cli-fed")
        flat = " ".join(res.output.split())
        assert res.exit_code == 0, res.output
        assert "reports bank-a already consented to cli-fed; not confirmed by a signed record" in flat
        assert "cannot fetch the audit log" in flat and "already approved" not in flat
        assert set(job.consents) == {"bank-a"}
        assert [f["party"] for k, f in fed.events.events if k == "job.consent"] == ["bank-a"]
    finally:
        agg.stop()


def test_approve_again_restores_a_lost_local_record_without_a_second_consent(served, monkeypatch):
    """`job approve` run again on a consented federated job returned before writing jobs/<id>/manifest.json and
    consent.json, which `party flower-exec` (load_profile) needs: a bank that lost them could never serve the job.
    The local steps run again; nothing is sent."""
    import shutil

    from mpctrain.enclave.federated.errors import JobNotReady
    from mpctrain.party.flower.profile import load_profile

    profile = served.profiles / "bank-a"
    assert _approve(served.profiles, "cli-fed").exit_code == 0
    shutil.rmtree(profile / "jobs" / "cli-fed")
    with pytest.raises(JobNotReady):
        load_profile(profile, job_id="cli-fed")
    sent = []
    real = AggregatorClient.approve
    monkeypatch.setattr(AggregatorClient, "approve", lambda self, consent: sent.append(consent) or real(self, consent))
    res = _approve(served.profiles, "cli-fed")
    flat = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "bank-a already approved cli-fed" in flat and "confirmed by the enclave's audit log); nothing sent" in flat
    assert f"stored the manifest and this party's consent in {profile / 'jobs' / 'cli-fed'}" in flat
    rt = load_profile(profile, job_id="cli-fed")
    assert rt.manifest.digest() == served.fed.manifest.digest() and rt.consent.party_id == "bank-a"
    assert sent == [] and set(served.good.consents) == {"bank-a"}
    assert [f["party"] for k, f in served.fed.events.events if k == "job.consent"] == ["bank-a"]
    res = _approve(served.profiles, "cli-fed")  # the record held: said once only
    assert res.exit_code == 0 and "stored the manifest" not in res.output and sent == [], res.output
