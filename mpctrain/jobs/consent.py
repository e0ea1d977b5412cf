"""Consent: a data party's Ed25519 signature over the manifest digest, bound to the job and party."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mpctrain.jobs.manifest import JobManifest, ManifestError
from mpctrain.seal.errors import BadSignature
from mpctrain.seal.keys import IdentityKey
from mpctrain.seal.sign import sign_fields, verify_fields

CONSENT_DOMAIN = "mpctrain/v1/consent"


class ConsentError(ValueError):
    """A consent does not match the manifest, the party, or its key."""


@dataclass(frozen=True)
class Consent:
    job_id: str
    party_id: str
    manifest_digest: bytes
    signature: bytes


def sign_consent(manifest: JobManifest, party_id: str, key: IdentityKey) -> Consent:
    party = manifest.party(party_id)
    if party.identity_public != key.public_bytes():
        raise ConsentError(f"this key is not the identity key job {manifest.job_id} names for {party_id}")
    digest = manifest.digest()
    sig = sign_fields(key, CONSENT_DOMAIN, manifest.job_id, party_id, digest)
    return Consent(job_id=manifest.job_id, party_id=party_id, manifest_digest=digest, signature=sig)


def verify_consent(manifest: JobManifest, consent: Consent) -> None:
    if consent.job_id != manifest.job_id:
        raise ConsentError(f"consent is for job {consent.job_id!r}, not {manifest.job_id!r}")
    try:
        party = manifest.party(consent.party_id)
    except ManifestError as exc:
        raise ConsentError(str(exc)) from exc
    if party.role != "data":
        raise ConsentError(f"{consent.party_id} is not a data party; its consent is not required or accepted")
    if consent.manifest_digest != manifest.digest():
        raise ConsentError(
            f"{consent.party_id} consented to manifest {consent.manifest_digest.hex()[:16]}…, "
            f"not to {manifest.digest().hex()[:16]}…"
        )
    try:
        verify_fields(party.identity_public, consent.signature, CONSENT_DOMAIN, consent.job_id, consent.party_id,
                      consent.manifest_digest)
    except BadSignature as exc:
        raise ConsentError(f"consent signature of {consent.party_id} does not verify") from exc


def missing_consents(manifest: JobManifest, consents: Iterable[Consent]) -> list[str]:
    """Data parties that have not given a valid consent (invalid ones count as missing)."""
    valid = set()
    for c in consents:
        try:
            verify_consent(manifest, c)
        except ConsentError:
            continue
        valid.add(c.party_id)
    return [p.id for p in manifest.data_parties() if p.id not in valid]
