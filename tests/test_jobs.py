from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

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
        ({"quorum": 4}, "quorum"),
        ({"recipients": ["stranger"]}, "recipient"),
        ({"proposer": "stranger"}, "proposer"),
        ({"enclave_policy": {}}, "enclave_policy"),
    ],
)
def test_bad_manifests_are_refused(over, match):
    with pytest.raises(ManifestError, match=match):
        JobManifest.from_authoring(_doc(_keys(3), **over))


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
