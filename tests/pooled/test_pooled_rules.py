"""A party's local rules: every reason to refuse a proposed job is reported (no silent approval)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mpctrain.jobs import JobManifest
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.party.rules import KnownKeys, PartyRules, check_manifest, recipients_unchecked
from mpctrain.seal.keys import IdentityKey, KemKey

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"label": "diagnosis", "features": ["a", "b"]}


OTHER = IdentityKey.generate(), KemKey.generate()  # hospital-b's keys, as hospital-a knows them
KNOWN_B = {"hospital-b": KnownKeys(OTHER[0].public_bytes(), OTHER[1].alg, OTHER[1].public_bytes())}


def _spec(pid: str, i: IdentityKey, k: KemKey, role: str = "data") -> dict:
    return {"id": pid, "role": role, "identity_public": i.public_bytes().hex(), "kem_alg": k.alg,
            "kem_public": k.public_bytes().hex()}


def _manifest(me: tuple[IdentityKey, KemKey], **kw) -> JobManifest:
    parties = [("hospital-a", *me), ("hospital-b", *OTHER)]
    obj = {
        "format": "mpctrain.job/v1", "job_id": "j", "mode": "pooled", "proposer": "hospital-b", "quorum": 2,
        "parties": [_spec(pid, i, k) for pid, i, k in parties],
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
                       allowed_measurements=("ab" * 48,), known_parties=KNOWN_B)
    assert check_manifest(_manifest(me), rules, "hospital-a", *me) == []


def test_a_job_without_the_partys_label_values_breaks_its_rules():
    """A party whose schema pins its classes does not consent to a job that takes any label: there a typo such as 7
    for 1 would train on a class that does not exist instead of being refused at the party."""
    me = IdentityKey.generate(), KemKey.generate()
    rules = PartyRules(schema={**SCHEMA, "label_values": [0, 1]}, allowed_recipients=("hospital-a", "hospital-b"),
                       known_parties=KNOWN_B)
    assert check_manifest(_manifest(me, schema={**SCHEMA, "label_values": [0, 1]}), rules, "hospital-a", *me) == []
    problems = check_manifest(_manifest(me), rules, "hospital-a", *me)
    assert problems == ["the job's schema label_values differs from this party's schema"]


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



def test_a_name_is_not_a_party_recipients_need_their_known_keys(tmp_path):
    """A proposer lists a non-data party called 'hospital-b' with its own keys as the only recipient: the
    real hospital-b is never asked, so hospital-a's rules must tell the name from the keys."""
    me = IdentityKey.generate(), KemKey.generate()
    mallory = IdentityKey.generate(), KemKey.generate()
    impostor = _manifest(me, parties=[_spec("hospital-a", *me), _spec("hospital-b", *mallory, role="researcher")],
                         quorum=1, proposer="hospital-b", recipients=["hospital-b"])
    named = PartyRules(allowed_recipients=("hospital-a", "hospital-b"))
    assert any("allowed by name only" in p for p in check_manifest(impostor, named, "hospital-a", *me))
    pinned = PartyRules(allowed_recipients=("hospital-a", "hospital-b"), known_parties=KNOWN_B)
    assert any("another identity key than the one this party knows it by" in p
               for p in check_manifest(impostor, pinned, "hospital-a", *me))
    # the real identity key with the impostor's output key: outputs would be sealed to mallory
    half = _manifest(me, parties=[_spec("hospital-a", *me), _spec("hospital-b", OTHER[0], mallory[1], "researcher")],
                     quorum=1, recipients=["hospital-b"])
    assert any("another output key" in p for p in check_manifest(half, pinned, "hospital-a", *me))
    assert check_manifest(_manifest(me), pinned, "hospital-a", *me) == []

    # in party.toml: a keys directory read when a job is checked, or both keys inline (never one alone)
    keys = tmp_path / "hospital-b" / "keys"
    keys.mkdir(parents=True)
    from mpctrain.seal.keys import write_public_files

    write_public_files(keys, *OTHER)
    kem_line = f"{OTHER[1].alg} {OTHER[1].public_bytes().hex()}"
    for entry in ('"../hospital-b/keys"',
                  f'{{ identity = "{OTHER[0].public_bytes().hex()}", kem = "{kem_line}" }}'):
        (tmp_path / "me").mkdir(exist_ok=True)
        (tmp_path / "me" / "party.toml").write_text(
            f'id = "hospital-a"\n[rules]\nallowed_recipients = ["hospital-a", "hospital-b"]\n'
            f'[rules.known_parties]\nhospital-b = {entry}\n')
        rules = PartyConfig.load(tmp_path / "me" / "party.toml").rules
        assert check_manifest(_manifest(me), rules, "hospital-a", *me) == []
        assert any("another identity key" in p for p in check_manifest(impostor, rules, "hospital-a", *me))
    (tmp_path / "me" / "party.toml").write_text(
        f'id = "hospital-a"\n[rules.known_parties]\nhospital-b = {{ identity = "{OTHER[0].public_bytes().hex()}" }}\n')
    with pytest.raises(PartyConfigError, match="known_parties"):
        PartyConfig.load(tmp_path / "me" / "party.toml")


def test_rules_without_recipients_never_approve_alone():
    from mpctrain.party.profile import manual_approval

    assert "auto_approve is off" in manual_approval(PartyRules(auto_approve=False, allowed_recipients=("a",)))
    assert "no allowed_recipients" in manual_approval(PartyRules(auto_approve=True))
    assert manual_approval(PartyRules(allowed_recipients=("hospital-a",))) is None
    # the same rule holds for `job approve` without --force (tests/pooled/test_pooled_cli.py)
    assert "no allowed_recipients" in recipients_unchecked(PartyRules(auto_approve=False))
    assert recipients_unchecked(PartyRules(allowed_recipients=("hospital-a",))) is None


@pytest.mark.parametrize("rules, match", [
    ('auto_approve = "false"', "true or false"),
    ('allowed_recipients = "hospital-a"', "list of strings"),  # would allow the recipients 'h', 'o', ...
    ("allowed_models = 5", "list of strings"),
    ("allowed_measurements = [1]", "list of strings"),
])
def test_rule_values_of_the_wrong_type_are_config_errors(tmp_path, rules, match):
    (tmp_path / "p.toml").write_text(f'id = "x"\n[rules]\n{rules}\n')
    with pytest.raises(PartyConfigError, match=match):
        PartyConfig.load(tmp_path / "p.toml")
    (tmp_path / "q.toml").write_text('id = "x"\nrules = 5\n')
    with pytest.raises(PartyConfigError, match="table"):
        PartyConfig.load(tmp_path / "q.toml")
