"""A party profile for federated jobs: ``party.toml`` (shared with pooled mode) plus ``flower.toml``.

```toml
# parties/bank-a/flower.toml
app_dir = "../../examples/banks_federated/app"   # the ClientApp code; its digest must match the manifest
jobs_dir = "jobs"                                 # approved jobs: jobs/<job_id>/manifest.json + consent.json
job = "banks-federated"                           # the job this node serves
```

``approve_federated_job`` is how the party consents: it checks the app digest, signs the manifest digest
with the identity key and stores both, so a SuperNode started later only serves what was approved.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from mpctrain.attest import Policy
from mpctrain.enclave.federated.errors import JobNotReady
from mpctrain.jobs import JOB_ID, Consent, JobManifest, sign_consent
from mpctrain.party.config import PartyConfig
from mpctrain.party.flower.attestation import GrpcEvidenceSource
from mpctrain.party.flower.runtime import PartyRuntime, check_app_code
from mpctrain.party.profile import channel_credentials
from mpctrain.seal.keys import IdentityKey

FLOWER_FILE = "flower.toml"
MAX_CONSENT_BYTES = 4096
SENT_FILE = "sent.jsonl"  # jobs/<job_id>/sent.jsonl: every sealed reply of this party, for its audit check


def _flower_settings(profile: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((profile / FLOWER_FILE).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise JobNotReady(f"cannot read {profile / FLOWER_FILE}: {exc}") from exc


def _job_dir(profile: Path, settings: dict[str, Any], job_id: str) -> Path:
    return profile / str(settings.get("jobs_dir", "jobs")) / job_id


def approved_job_dir(profile: str | Path, job_id: str) -> Path:
    """Where ``approve_federated_job`` stores ``job_id``'s manifest and consent (``load_profile`` reads them)."""
    profile = Path(profile)
    return _job_dir(profile, _flower_settings(profile), job_id)


def holds_approval(profile: str | Path, manifest: JobManifest) -> bool:
    """Whether the profile already stores ``manifest`` and a consent over its digest, so ``job approve`` run
    again need not rewrite them; False for anything missing, unreadable or another job's."""
    try:
        job_dir = approved_job_dir(profile, manifest.job_id)
        raw = (job_dir / "consent.json").read_bytes()
        consent = json.loads(raw) if len(raw) <= MAX_CONSENT_BYTES else {}
        return ((job_dir / "manifest.json").read_bytes() == manifest.to_bytes() and isinstance(consent, dict)
                and consent.get("manifest_digest") == manifest.digest().hex()
                and consent.get("job_id") == manifest.job_id and isinstance(consent.get("signature"), str))
    except (OSError, ValueError, JobNotReady):
        return False


def check_federated_profile(profile: str | Path, manifest: JobManifest) -> None:
    """Before consenting: the profile can serve this job, and its app code is the code the manifest pins."""
    profile = Path(profile)
    settings = _flower_settings(profile)
    if manifest.mode != "federated":
        raise JobNotReady(f"job {manifest.job_id} is not federated")
    if not isinstance(settings.get("app_dir"), str):
        raise JobNotReady(f"{profile / FLOWER_FILE} names no app_dir: the ClientApp code this party runs")
    check_app_code(manifest, profile / settings["app_dir"])


def approve_federated_job(profile: str | Path, manifest: JobManifest, identity: IdentityKey | None = None) -> Consent:
    """Consent to ``manifest`` as this profile's party, after checking the app code it will run.

    The manifest and the consent are stored in the profile, so a SuperNode started later serves only
    what was approved (``load_profile``). ``identity`` defaults to the profile's own key.
    """
    profile = Path(profile)
    cfg = PartyConfig.load(profile / "party.toml")
    check_federated_profile(profile, manifest)
    settings = _flower_settings(profile)
    if identity is None:
        identity, _ = cfg.load_keys(create=False)
    consent = sign_consent(manifest, cfg.id, identity)
    job_dir = _job_dir(profile, settings, manifest.job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "manifest.json").write_bytes(manifest.to_bytes())
    (job_dir / "consent.json").write_text(json.dumps({
        "job_id": consent.job_id, "party_id": consent.party_id, "manifest_digest": consent.manifest_digest.hex(),
        "signature": consent.signature.hex()}))
    return consent


def load_profile(profile: str | Path, *, job_id: str | None = None) -> PartyRuntime:
    """The runtime a SuperNode's mod uses: keys, policy, the approved manifest and consent, the app dir."""
    profile = Path(profile)
    cfg = PartyConfig.load(profile / "party.toml")
    settings = _flower_settings(profile)
    job = job_id or settings.get("job")
    if not isinstance(job, str):
        raise JobNotReady(f"{profile / FLOWER_FILE} names no job; approve one with approve_federated_job")
    if not JOB_ID.fullmatch(job):  # the name may come from the SuperLink (a run's mpctrain-job): never a path
        raise JobNotReady(f"{job!r} is not a job id (letters, digits, '.', '_', '-'; 64 at most)")
    job_dir = _job_dir(profile, settings, job)
    try:
        manifest = JobManifest.from_bytes((job_dir / "manifest.json").read_bytes())
        raw = (job_dir / "consent.json").read_bytes()
        if len(raw) > MAX_CONSENT_BYTES:
            raise JobNotReady(f"{job_dir / 'consent.json'} is too large")
        c = json.loads(raw)
        consent = Consent(job_id=str(c["job_id"]), party_id=str(c["party_id"]),
                          manifest_digest=bytes.fromhex(c["manifest_digest"]), signature=bytes.fromhex(c["signature"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobNotReady(f"job {job} is not approved in {job_dir}: {exc}") from exc
    if manifest.job_id != job or consent.job_id != job:
        raise JobNotReady(f"{job_dir} holds the manifest or consent of job {manifest.job_id!r}, not {job!r}")
    identity, kem = cfg.load_keys(create=False)
    evidence = GrpcEvidenceSource(cfg.aggregator, credentials=channel_credentials(cfg))
    return PartyRuntime(party_id=cfg.id, identity=identity, kem=kem, manifest=manifest, consent=consent,
                        policy=Policy.load(cfg.policy), evidence=evidence,
                        app_dir=profile / str(settings["app_dir"]), sent_log=job_dir / SENT_FILE)
