"""What a party's Flower mod needs to act: its keys, the job it consented to, its policy, its evidence source.

Built once per party; construction refuses a manifest the party has not validly consented to, a manifest
that is not federated, keys that are not the ones the manifest names, and app code whose digest differs
from the one the manifest (and so the consent) covers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mpctrain.attest import AttestationResult, Policy, PolicyError
from mpctrain.attest.measure import code_digest
from mpctrain.enclave.federated.apps import manifest_code_digest
from mpctrain.enclave.federated.errors import AttestationRefused, CodeDigestMismatch, JobNotReady
from mpctrain.enclave.federated.protocol import enclave_key_id
from mpctrain.jobs import Consent, ConsentError, JobManifest, verify_consent
from mpctrain.party.flower.attestation import EvidenceSource, attest_enclave
from mpctrain.party.flower.sent import SentUpdate, append_sent, read_sent
from mpctrain.seal.keys import IdentityKey, KemKey

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30


def app_code_digest(app_dir: str | Path) -> str:
    """SHA-384 (hex) over the ``.py`` files of a Flower app directory: what a manifest pins."""
    return code_digest(Path(app_dir)).hex()


def check_app_code(manifest: JobManifest, app_dir: str | Path) -> None:
    """Refuse to run app code other than the code the manifest names."""
    want = manifest_code_digest(manifest)
    have = app_code_digest(app_dir)
    if have != want:
        raise CodeDigestMismatch(f"the Flower app in {app_dir} has digest {have[:16]}…, but job {manifest.job_id} "
                                 f"covers {want[:16]}…: run exactly the consented code, or approve a new manifest")


@dataclass
class PartyRuntime:
    """One party in one federated job."""

    party_id: str
    identity: IdentityKey
    kem: KemKey
    manifest: JobManifest
    consent: Consent
    policy: Policy
    evidence: EvidenceSource
    app_dir: Path | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    max_bytes: int = DEFAULT_MAX_BYTES
    sent_log: Path | None = None  # where each sealed reply is noted (JSON lines), for the audit check later
    sent: list[SentUpdate] = field(default_factory=list, repr=False)  # this process's sealed replies
    _attested: dict[int, tuple[str, AttestationResult]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _claimed: set[str] = field(default_factory=set, repr=False)  # reply object ids this process sealed or seals
    attestations: int = 0

    def __post_init__(self) -> None:
        m = self.manifest
        if m.mode != "federated":
            raise JobNotReady(f"job {m.job_id} is {m.mode!r}, not federated")
        spec = m.party(self.party_id)
        if spec.role != "data":
            raise JobNotReady(f"{self.party_id} is not a data party of job {m.job_id}")
        if spec.identity_public != self.identity.public_bytes():
            raise JobNotReady(f"this identity key is not the one job {m.job_id} names for {self.party_id}")
        if spec.kem_public != self.kem.public_bytes() or spec.kem_alg != self.kem.alg:
            raise JobNotReady(f"this KEM key is not the one job {m.job_id} names for {self.party_id}")
        if self.consent.party_id != self.party_id:
            raise JobNotReady(f"the consent is {self.consent.party_id}'s, not {self.party_id}'s")
        try:
            verify_consent(m, self.consent)
        except ConsentError as exc:
            raise JobNotReady(f"no valid consent of {self.party_id} for this manifest: {exc}") from exc
        if self.app_dir is None:
            manifest_code_digest(m)  # the manifest must at least pin the code
        else:
            check_app_code(m, self.app_dir)
        self.job_digest = m.digest().hex()
        try:
            self.job_policy = Policy.from_dict(m.enclave_policy)
        except PolicyError as exc:
            raise JobNotReady(f"job {m.job_id}'s enclave_policy does not parse: {exc}") from exc

    def attestation(self, run_id: int, key_hint: str) -> AttestationResult:
        """The attested enclave for this run: attest before the first reply and whenever the key changes."""
        with self._lock:
            cached = self._attested.get(run_id)
            if cached is not None and cached[0] == key_hint:
                return cached[1]
            result = attest_enclave(self.evidence, self.policy, at=self.clock(), job_policy=self.job_policy)
            self.attestations += 1
            key_id = enclave_key_id(result.kem_public, result.sig_public)
            if key_id != key_hint:
                raise AttestationRefused(f"the enclave that attested (key {key_id[:12]}…) is not the one that sealed "
                                         f"this instruction (key {key_hint[:12]}…): refusing to answer",
                                         check="enclave-key")
            self._attested[run_id] = (key_id, result)
            log.info("party %s attested enclave key %s… for run %s", self.party_id, key_id[:12], run_id)
            return result

    def claim_reply(self, object_id: str) -> bool:
        """Reserve ``object_id`` for the one reply this party seals under it; ``False`` when it already sealed
        (or is sealing) one: a replayed instruction, which must not be answered twice (a host could forward
        one answer and let the enclave's log be held against the other). The sent log covers the replies of
        earlier processes (a stock SuperNode runs each message in a fresh one)."""
        with self._lock:
            if object_id in self._claimed:
                return False
            if self.sent_log is not None and any(s.object_id == object_id
                                                 for s in read_sent(self.sent_log, self.manifest.job_id)):
                return False
            self._claimed.add(object_id)
            return True

    def record_sent(self, update: SentUpdate) -> None:
        """Note a sealed reply: kept here and appended to ``sent_log`` (a SuperNode runs each message in a
        fresh process, so only the file lasts the run). What the party's audit check compares the log with."""
        with self._lock:
            self.sent.append(update)
            if self.sent_log is not None:
                append_sent(self.sent_log, update)

    def forget(self) -> None:
        with self._lock:
            self._attested.clear()


_REGISTRY: dict[str, PartyRuntime] = {}
_REGISTRY_LOCK = threading.Lock()
NODE_CONFIG_KEY = "mpctrain-party"


def register_party(name: str, runtime: PartyRuntime) -> None:
    """Make ``runtime`` the one used by nodes whose ``node_config['mpctrain-party']`` is ``name``."""
    with _REGISTRY_LOCK:
        _REGISTRY[name] = runtime


def unregister_party(name: str) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.pop(name, None)


def resolve_party(node_config: dict[str, Any]) -> PartyRuntime:
    """The party runtime of a node: a registered name, or a party profile directory (loaded once)."""
    name = node_config.get(NODE_CONFIG_KEY)
    if not isinstance(name, str) or not name:
        raise JobNotReady(f"node_config has no {NODE_CONFIG_KEY!r}: start the SuperNode with "
                          f"--node-config \"{NODE_CONFIG_KEY}='parties/bank-a'\"")
    with _REGISTRY_LOCK:
        runtime = _REGISTRY.get(name)
    if runtime is not None:
        return runtime
    from mpctrain.party.flower.profile import load_profile

    runtime = load_profile(Path(name))
    register_party(name, runtime)
    return runtime
