from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctrain.jobs import ConsentError, JobManifest, ManifestError, missing_consents, sign_consent, verify_consent
from mpctrain.seal.keys import IdentityKey, KemKey


def _keys(n):
    return [(IdentityKey.generate(), KemKey.generate()) for _ in range(n)]


def _doc(keys, **over):
    doc = {
        "job_id": "job-1",
        "mode": "pooled",
        "proposer": "p0",
        "parties": [
            {"id": f"p{i}", "role": "data", "identity_public": k.public_bytes().hex(),
             "kem_alg": "x25519", "kem_public": kk.public_bytes().hex()}
            for i, (k, kk) in enumerate(keys)
        ],
        "schema": {"label": "y", "features": ["a", "b"]},
        "model": {"name": "logreg"},
        "training": {"epochs": 2, "lr": 0.01, "seed": 1},
        "enclave_policy": {"backends": ["sim"], "sim": {"measurements": ["00" * 48]}},
        "expires": 4_000_000_000,
    }
    doc.update(over)
    return doc


def test_manifest_roundtrip_is_canonical_and_digest_stable():
    keys = _keys(3)
    m = JobManifest.from_authoring(_doc(keys))
    raw = m.to_bytes()
    again = JobManifest.from_bytes(raw)
    assert again == m
    assert again.digest() == m.digest()
    assert m.quorum == 3 and m.recipients == ("p0", "p1", "p2")
    # a semantically equal but re-serialised manifest is refused: everyone digests the same bytes
    pretty = json.dumps(json.loads(raw), indent=2).encode()
    with pytest.raises(ManifestError, match="canonical"):
        JobManifest.from_bytes(pretty)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"mode": "magic"}, "mode"),
        ({"job_id": "../etc"}, "job_id"),
        ({"job_id": "study\n"}, "job_id"),  # `$` alone would let a trailing newline through into paths
        ({"quorum": 4}, "quorum"),
        ({"recipients": ["stranger"]}, "recipient"),
        ({"proposer": "stranger"}, "proposer"),
        ({"enclave_policy": {}}, "enclave_policy"),
    ],
)
def test_bad_manifests_are_refused(over, match):
    with pytest.raises(ManifestError, match=match):
        JobManifest.from_authoring(_doc(_keys(3), **over))


DP = {"epsilon": 1.0, "delta": 1e-5, "clip": 1.0, "sample_rate": 0.1}
LABELS = {"label": "y", "features": ["a", "b"], "label_values": [0, 1]}


@pytest.mark.parametrize(
    "over, match",
    [
        # b0: delta 0.99 "spends epsilon 0" with almost no noise; delta must sit well below 1/rows
        ({"privacy": {**DP, "delta": 0.99}}, r"delta must be a number in \(0, 0.001\]"),
        ({"privacy": {**DP, "delta": 0.01}}, "delta"),
        ({"privacy": {**DP, "delta": 0}}, "delta"),
        ({"privacy": {**DP, "delta": "1e-5"}}, "delta"),
        ({"mode": "federated", "privacy": {**DP, "delta": 0.5}}, "delta"),
        # a DP job releases only the privacy accounting: validation metrics carry no accounted noise
        ({"privacy": DP, "schema": LABELS, "public_metrics": ["loss", "epsilon_spent"]},
         r"public_metrics \['loss'\] cannot be released by a DP job.*only \['epsilon_spent'\]"),
        ({"privacy": DP, "schema": LABELS, "public_metrics": ["train_loss"]}, "train_loss"),
        # federated too: the banks' evaluation metrics are not covered by the central DP budget
        ({"mode": "federated", "privacy": DP, "public_metrics": ["accuracy"]}, r"\['accuracy'\] cannot be released"),
        ({"privacy": DP, "schema": LABELS, "training": {"epochs": 2, "lr": 0.01, "seed": 1, "val_fraction": 0.2}},
         "remove \\[training\\] val_fraction"),
        # without label_values the model's output size is the largest label in the data
        ({"privacy": DP}, "label_values"),
        ({"privacy": DP, "schema": {**LABELS, "label_values": "01"}}, "label_values"),
        # the sampling rate is declared: derived from the row count, the accounting would publish that count
        ({"privacy": {k: v for k, v in DP.items() if k != "sample_rate"}, "schema": LABELS},
         r"must set \[privacy\] sample_rate"),
        ({"privacy": {**DP, "sample_rate": 0}, "schema": LABELS}, r"sample_rate must be a number in \(0, 1\]"),
        ({"privacy": {**DP, "sample_rate": 1.5}, "schema": LABELS}, "sample_rate must be"),
        ({"privacy": {**DP, "sample_rate": True}, "schema": LABELS}, "sample_rate must be"),
        ({"privacy": {**DP, "sample_rate": "0.1"}, "schema": LABELS}, "sample_rate must be"),
        # a federated round samples no one: a sample rate there would be silently meaningless
        ({"mode": "federated", "privacy": {**DP, "noise_multiplier": 1.0},
          "training": {"flower": {"code_digest": "0" * 96}}}, "sample_rate is for pooled DP-SGD"),
        # e_val_zero: val_fraction 0 used to pass here and fail after training
        ({"training": {"epochs": 2, "lr": 0.01, "seed": 1, "val_fraction": 0}}, "val_fraction must be"),
        ({"training": {"epochs": 2, "lr": 0.01, "seed": 1, "val_fraction": 1e-9}}, "val_fraction must be"),
        ({"training": {"epochs": 2, "lr": 0.01, "seed": 1, "val_fraction": 1}}, "val_fraction must be"),
        ({"training": {"epochs": 2, "lr": 0.01, "seed": 1, "val_fraction": True}}, "val_fraction must be"),
    ],
)
def test_what_a_job_would_release_is_checked_from_the_manifest(over, match):
    with pytest.raises(ManifestError, match=match):
        JobManifest.from_authoring(_doc(_keys(2), **over))


def test_release_rules_accept_what_they_allow():
    ok = JobManifest.from_authoring(_doc(_keys(2), privacy=DP, schema=LABELS, public_metrics=["epsilon_spent"]))
    assert ok.privacy["delta"] == 1e-5 and ok.privacy["sample_rate"] == 0.1
    every_row = JobManifest.from_authoring(_doc(_keys(2), privacy={**DP, "sample_rate": 1}, schema=LABELS))
    assert every_row.privacy["sample_rate"] == 1
    plain = _doc(_keys(2), training={"epochs": 2, "lr": 0.01, "seed": 1, "val_fraction": 0.05})
    assert JobManifest.from_authoring(plain).training["val_fraction"] == 0.05


def test_the_manifest_and_dp_training_share_one_delta_limit():
    from mpctrain.jobs.manifest import MAX_DELTA
    from mpctrain.train.dp import MAX_DELTA as TRAIN_MAX_DELTA

    assert MAX_DELTA == TRAIN_MAX_DELTA


def test_garbage_and_oversized_manifest_bytes():
    with pytest.raises(ManifestError):
        JobManifest.from_bytes(b"\xff\x00garbage")
    with pytest.raises(ManifestError):
        JobManifest.from_bytes(b"[" * (2 << 20))
    with pytest.raises(ManifestError):
        JobManifest.from_bytes(b'{"format": "mpctrain.job/v1"}')


def test_consent_signatures():
    keys = _keys(3)
    m = JobManifest.from_authoring(_doc(keys))
    consents = [sign_consent(m, f"p{i}", k) for i, (k, _) in enumerate(keys[:2])]
    for c in consents:
        verify_consent(m, c)
    assert missing_consents(m, consents) == ["p2"]
    # a consent to a different manifest (e.g. more epochs) does not count
    other = JobManifest.from_authoring(_doc(keys, training={"epochs": 99, "lr": 0.01, "seed": 1}))
    c_other = sign_consent(other, "p2", keys[2][0])
    with pytest.raises(ConsentError, match="consented to manifest"):
        verify_consent(m, c_other)
    assert missing_consents(m, [*consents, c_other]) == ["p2"]
    # someone else's key cannot consent for p2
    with pytest.raises(ConsentError):
        sign_consent(m, "p2", keys[0][0])
    forged = type(consents[0])(job_id=m.job_id, party_id="p2", manifest_digest=m.digest(),
                               signature=consents[0].signature)
    with pytest.raises(ConsentError, match="signature"):
        verify_consent(m, forged)
    assert missing_consents(m, [*consents, sign_consent(m, "p2", keys[2][0])]) == []


def test_expiry():
    m = JobManifest.from_authoring(_doc(_keys(1), expires=1_000))
    assert m.expired(datetime(2026, 1, 1, tzinfo=UTC))


def test_nesting_bomb_is_a_manifest_error():
    with pytest.raises(ManifestError, match="not JSON"):
        JobManifest.from_bytes(b"[" * 100_000)


@pytest.mark.parametrize("over", [
    {"parties": 5},
    {"parties": [{"id": "p0", "kem_public": 1, "identity_public": "00"}]},
    {"schema": [1, 2]},
    {"schema": "abc"},
    {"expires": None, "expires_in_days": "soon"},
    {"expires": None, "expires_in_days": {"a": 1}},
    {"expires": None, "expires_in_days": float("inf")},  # found by the property test below: an OverflowError
    {"expires": None, "expires_in_days": 10**30},
    {"expires": None, "expires_in_days": 0},
])
def test_authoring_values_of_the_wrong_shape_are_manifest_errors(over):
    with pytest.raises(ManifestError):
        JobManifest.from_authoring(_doc(_keys(1), **over))


_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=4))
_value = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c,
                                                                                           max_size=3)), max_leaves=8)
_fields = st.sampled_from(["job_id", "mode", "proposer", "parties", "quorum", "schema", "model", "training", "privacy",
                           "recipients", "public_metrics", "enclave_policy", "expires", "expires_in_days"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_fields, _value, max_size=8))
def test_any_authoring_document_is_a_manifest_or_a_manifest_error(over):
    for parse in (lambda: JobManifest.from_authoring(_doc(_keys(1), **over)),
                  lambda: JobManifest.from_authoring(over),
                  lambda: JobManifest.from_bytes(json.dumps(over).encode())):
        try:
            parse()
        except ManifestError:
            pass


@pytest.mark.parametrize("kem", [
    {"kem_alg": "x25519", "kem_public": "00" * 33},
    {"kem_alg": "mlkem768-x25519", "kem_public": "11" * 32},
    {"kem_alg": "x25519", "kem_public": "00" * 1216},
])
def test_party_kem_key_must_fit_its_algorithm(kem):
    keys = _keys(1)
    doc = _doc(keys)
    doc["parties"][0].update(kem)
    with pytest.raises(ManifestError, match="kem_public"):
        JobManifest.from_authoring(doc)
    hybrid = KemKey.generate("mlkem768-x25519")
    doc["parties"][0].update(kem_alg="mlkem768-x25519", kem_public=hybrid.public_bytes().hex())
    assert JobManifest.from_authoring(doc).parties[0].kem_public == hybrid.public_bytes()


@pytest.fixture
def zone_west_of_utc(monkeypatch):
    """Local time 5 h behind UTC: reading a naive time as local would expire a job 5 h late."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_expiry_with_a_naive_time_is_utc(zone_west_of_utc):
    expires = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    m = JobManifest.from_authoring(_doc(_keys(1), expires=expires))
    assert m.expired(datetime(2030, 1, 1)) and not m.expired(datetime(2029, 12, 31, 23, 59, 59))


def test_a_manifest_naming_a_small_order_identity_key_is_refused():
    """Signatures under the identity point verify for every message: anyone could consent for that party."""
    doc = _doc(_keys(2))
    doc["parties"][1]["identity_public"] = "01" + "00" * 31
    with pytest.raises(ManifestError, match="p1: identity_public is not a usable Ed25519 key"):
        JobManifest.from_authoring(doc)
