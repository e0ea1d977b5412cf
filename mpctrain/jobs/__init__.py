"""Job manifest, digest and consent: shared by the enclave, the parties and the CLI."""

from mpctrain.jobs.consent import Consent, ConsentError, missing_consents, sign_consent, verify_consent
from mpctrain.jobs.manifest import JOB_ID, JobManifest, ManifestError, PartySpec

__all__ = [
    "JOB_ID",
    "Consent",
    "ConsentError",
    "JobManifest",
    "ManifestError",
    "PartySpec",
    "missing_consents",
    "sign_consent",
    "verify_consent",
]
