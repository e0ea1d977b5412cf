"""A party's local rules: every reason to refuse a proposed job is reported (no silent approval)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mpctrain.jobs import JobManifest
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.party.rules import PartyRules, check_manifest
from mpctrain.seal.keys import IdentityKey, KemKey

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"label": "diagnosis", "features": ["a", "b"]}


def _manifest(me: tuple[IdentityKey, KemKey], **kw) -> JobManifest:
    other = IdentityKey.generate(), KemKey.generate()
    parties = [("hospital-a", *me), ("hospital-b", *other)]
    obj = {
        "format": "mpctrain.job/v1", "job_id": "j", "mode": "pooled", "proposer": "hospital-b", "quorum": 2,
        "parties": [{"id": pid, "role": "data", "identity_public": i.public_bytes().hex(), "kem_alg": k.alg,
                     "kem_public": k.public_bytes().hex()} for pid, i, k in parties],
        "schema": SCHEMA, "model": {"name": "mlp"}, "training": {"epochs": 1, "batch_size": 8, "lr": 0.1, "seed": 0},
        "privacy": {}, "recipients": ["hospital-a", "hospital-b"], "public_metrics": [],
        "enclave_policy": {"backends": ["sim"], "sim": {"measurements": ["ab" * 48]}},
        "expires": int(time.time()) + 60,
    }
    obj.update(kw)
    return JobManifest.from_obj(obj)


def test_acceptable_job_has_no_problems():
    me = IdentityKey.generate(), KemKey.generate()
    rules = PartyRules(schema=SCHEMA, allowed_recipients=("hospital-a", "hospital-b"), allowed_models=("mlp",),
                       allowed_measurements=("ab" * 48,))
    assert check_manifest(_manifest(me), rules, "hospital-a", *me) == []


def test_every_violation_is_named():
    me = IdentityKey.generate(), KemKey.generate()
    rules = PartyRules(schema={"label": "diagnosis", "features": ["a"]}, allowed_recipients=("hospital-a",),
                       allowed_models=("logreg",), allowed_modes=("pooled",), allowed_measurements=("cd" * 48,))
    m = _manifest(me, mode="federated", training={"rounds": 1, "flower": {"code_digest": "ab" * 48}})
    problems = " | ".join(check_manifest(m, rules, "hospital-a", *me))
    for expected in ("mode 'federated'", "model 'mlp'", "['hospital-b'] are not allowed", "schema features",
                     "measurements this party does not"):
        assert expected in problems, expected
    # the job names other keys for this party (a substituted identity or output key)
    stranger = IdentityKey.generate(), KemKey.generate()
    problems = check_manifest(_manifest(me), PartyRules(), "hospital-a", *stranger)
    assert any("identity key" in p for p in problems) and any("output key" in p for p in problems)
    assert check_manifest(_manifest(me), PartyRules(), "hospital-z", *me) == ["the job does not name hospital-z"]
    report_only = _manifest(me, enclave_policy={"backends": ["sim"], "sim": {"measurements": "report-only"}})
    assert any("report-only" in p for p in check_manifest(report_only, PartyRules(allowed_measurements=("ab",)),
                                                           "hospital-a", *me))


def test_party_config_errors_name_the_key(tmp_path):

    (tmp_path / "p.toml").write_text('id = "x"\nsurprise = 1\n')
    with pytest.raises(PartyConfigError, match="surprise"):
        PartyConfig.load(tmp_path / "p.toml")
    (tmp_path / "q.toml").write_text('id = "x"\n[rules]\nauto_aprove = true\n')
    with pytest.raises(PartyConfigError, match="auto_aprove"):
        PartyConfig.load(tmp_path / "q.toml")
    (tmp_path / "r.toml").write_text('aggregator = "h:1"\n')
    with pytest.raises(PartyConfigError, match="needs an id"):
        PartyConfig.load(tmp_path / "r.toml")
    cfg = PartyConfig.load(ROOT / "parties" / "hospital-a" / "party.toml")
    assert cfg.id == "hospital-a" and cfg.rules.schema["label"] == "diagnosis"

