"""`mpctrain job approve` signs only the job asked for, and only within the party's rules unless forced."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpctrain.cli.main import app
from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.server import Aggregator
from mpctrain.jobs import PartySpec
from mpctrain.party.client import AggregatorClient
from mpctrain.party.flower import app_code_digest
from mpctrain.seal.keys import IdentityKey, KemKey

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banks_federated"


@pytest.fixture
def served(tmp_path):
    """An aggregator holding cli-fed and evil-job (same banks and code, plus an output recipient mallory);
    bank-a's profile allows only the job's own recipients."""
    fed = build_federation(["bank-a", "bank-b"], job_id="cli-fed", code_digest=app_code_digest(EXAMPLE / "app"),
                           training={"rounds": 1})
    mallory = PartySpec("mallory", "researcher", IdentityKey.generate().public_bytes(), "x25519",
                        KemKey.generate("x25519").public_bytes())
    evil = dataclasses.replace(fed.manifest, job_id="evil-job", parties=(*fed.manifest.parties, mallory),
                               recipients=(*fed.manifest.recipients, "mallory"))
    agg = Aggregator(fed.enclave, events=fed.events)
    agg.store.runners["federated"] = object()  # never started: consent from bank-b is missing
    port = agg.start()
    profiles = tmp_path / "profiles"
    fed.write_profile(fed.parties[0], profiles / "bank-a", f"127.0.0.1:{port}", EXAMPLE / "app")
    good = agg.store.add(fed.manifest, fed.manifest.to_bytes())
    bad = agg.store.add(evil, evil.to_bytes())
    yield profiles, good, bad
    agg.stop()


def _approve(profiles: Path, job: str, *extra: str):
    return CliRunner().invoke(app, ["job", "approve", job, "--as", "bank-a", "--profiles", str(profiles), *extra])


def test_a_substituted_manifest_is_never_consented(served, monkeypatch):
    profiles, good, bad = served
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
    profiles, _, bad = served
    res = _approve(profiles, "evil-job")
    assert res.exit_code == 1
    flat = "".join(res.output.split())
    assert "mallory" in flat and "--force" in flat
    assert bad.consents == {}
    res = _approve(profiles, "evil-job", "--force")
    assert res.exit_code == 0, res.output
    assert set(bad.consents) == {"bank-a"}


def test_a_job_within_the_rules_needs_no_force(served):
    profiles, good, _ = served
    res = _approve(profiles, "cli-fed")
    assert res.exit_code == 0, res.output
    assert set(good.consents) == {"bank-a"}
