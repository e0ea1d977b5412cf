"""The party agent: attest, review and approve the job, validate/seal/upload data, fetch outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from mpctrain.attest import AttestationResult, Policy
from mpctrain.jobs import Consent, JobManifest, ManifestError, sign_consent
from mpctrain.party.attestation import Attested, attest_aggregator_evidence, check_job_policy
from mpctrain.party.audit_check import SentInput, confirm_consent, confirm_job
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import AggregatorError, ManifestRejected, OutputError, PartyError, ShardRefused, WaitTimeout
from mpctrain.party.outputs import fetch_outputs
from mpctrain.party.rules import PartyRules, measurement_problems, rule_problems
from mpctrain.party.uploader import Progress, UploadResult, upload_shard
from mpctrain.seal.errors import SealError
from mpctrain.seal.keys import IdentityKey, KemKey, write_private

log = logging.getLogger("mpctrain.party")


def load_table(path: Path, manifest: JobManifest) -> tuple[Any, Any]:
    """Read the party's table (CSV/Parquet) and validate it against the job schema: (X, y)."""
    from mpctrain.enclave.pooled import table_schema
    from mpctrain.train.data import read_table, row_locator, validate

    return validate(read_table(path), table_schema(manifest.schema), where=row_locator(path))


def load_shard(path: Path, manifest: JobManifest) -> bytes:
    """Read and validate the party's table, encode the shard."""
    from mpctrain.train.data import table_to_bytes

    return table_to_bytes(*load_table(path, manifest))


def describe_wait(status: Any) -> str:
    """A job's state and what it still lacks, from its status alone (party ids, never data)."""
    if status.state == "proposed":
        return f"state proposed; missing consent: {', '.join(status.missing_consents) or '-'}"
    if status.state == "open":
        try:  # the host relays the reply unsigned: a manifest it garbled must not hide the timeout behind a traceback
            manifest = JobManifest.from_bytes(status.manifest)
        except ManifestError:
            return ("state open; missing uploads unknown (the aggregator's reply carries a manifest that does not "
                    "parse; uploaded so far: " + (", ".join(status.uploaded) or "-") + ")")
        missing = [p.id for p in manifest.data_parties() if p.id not in status.uploaded]
        need = max(manifest.quorum - len(status.uploaded), 0)
        quorum = f", {need} more needed for the quorum of {manifest.quorum}" if need < len(missing) else ""
        return f"state open; missing upload: {', '.join(missing) or '-'}{quorum}"
    if status.state == "training":
        return "state training: the enclave is still training"
    return f"state {status.state}"


@dataclass(frozen=True)
class Review:
    """A job's problems, the enclave's apart: ``--force`` may override the ``rules`` ones after a person reviewed
    them, never the ``enclave`` ones (the enclave fails the job's policy, or that policy accepts measurements
    this party's rules do not). Typed, as a problem's text (a recipient called ``attestation-lab``) decides
    nothing."""

    rules: list[str]
    enclave: list[str]

    @property
    def problems(self) -> list[str]:
        return [*self.rules, *self.enclave]


@dataclass
class PartyAgent:
    """One party: its keys, its policy, its data, its rules, and a client to the aggregator."""

    party_id: str
    identity: IdentityKey
    kem: KemKey
    policy: Policy
    client: AggregatorClient
    data_path: Path | None = None
    rules: PartyRules = field(default_factory=PartyRules)
    outputs_dir: Path | None = None
    at: Callable[[], datetime] | None = None
    enclave: AttestationResult | None = None
    attested: Attested | None = None  # the evidence behind ``enclave``: the job's own policy is checked on it
    sent: dict[str, list[SentInput]] = field(default_factory=dict)  # job id -> shards this agent uploaded

    # -- steps ----------------------------------------------------------------------------------
    def attest(self) -> AttestationResult:
        """Verify the aggregator against this party's own policy; refuse everything else on failure."""
        self.attested = attest_aggregator_evidence(self.client, self.policy, self.at() if self.at else None)
        self.enclave = self.attested.result
        return self.enclave

    def _attested(self) -> AttestationResult:
        if self.enclave is None:
            raise PartyError("attest the aggregator first: nothing is sent to an unverified enclave")
        return self.enclave

    def manifest(self, job_id: str) -> JobManifest:
        """The job's manifest as the aggregator gives it, refused unless it is the job asked for: the reply
        is not signed, so a host that answers with another job's manifest must not get that one consented."""
        manifest = JobManifest.from_bytes(self.client.get_job(job_id).manifest)
        if manifest.job_id != job_id:
            raise PartyError(f"asked for job {job_id!r}, the aggregator answered with the manifest of "
                             f"{manifest.job_id!r}: refusing it (a host or aggregator substituting jobs)")
        return manifest

    def assess(self, manifest: JobManifest) -> Review:
        """``manifest``'s problems under this party's rules, the enclave's apart (see ``Review``)."""
        rules = rule_problems(manifest, self.rules, self.party_id, self.identity, self.kem)
        enclave = measurement_problems(manifest, self.rules)
        try:
            if self.attested is None or self.attested.result is not self._attested():
                raise PartyError("attest the aggregator first: the job's policy is checked on its evidence")
            check_job_policy(self.attested, manifest)
        except PartyError as exc:
            enclave.append(str(exc))
        return Review(rules, enclave)

    def review(self, manifest: JobManifest) -> list[str]:
        """Every reason this party would refuse ``manifest`` (empty: acceptable)."""
        return self.assess(manifest).problems

    def approve(self, manifest: JobManifest, *, force: bool = False) -> Consent:
        """Sign consent over the manifest digest: automatic when the rules pass, else only with ``force``."""
        problems = self.review(manifest)
        if problems and not force:
            raise ManifestRejected(problems)
        consent = sign_consent(manifest, self.party_id, self.identity)
        self.client.approve(consent)
        return consent

    def confirm_consent(self, manifest: JobManifest) -> None:
        """Raise ``AuditCheckFailed`` unless the enclave-signed audit view of the job records this party's consent
        to ``manifest`` (``audit_check.confirm_consent``): the host's ``consented`` list is not signed."""
        confirm_consent(self.client.channel, manifest=manifest, party_id=self.party_id, identity=self.identity,
                        enclave=self._attested(), policy=self.policy, at=self.at() if self.at else None)

    def check_data(self, manifest: JobManifest) -> bytes:
        """This party's shard for ``manifest``, checked as far as the party can before it consents: the schema, and
        the validation floors the enclave applies to each shard (``enclave.pooled.own_shard_floor``). Otherwise
        the job fails only once every party uploaded. Raises ``ShardRefused`` (the message carries no values)."""
        from mpctrain.enclave.pooled import own_shard_floor
        from mpctrain.train.data import DataError, table_to_bytes

        if self.data_path is None:
            raise ShardRefused(f"{self.party_id} has no data file configured: set data in its party.toml")
        try:
            X, y = load_table(self.data_path, manifest)
        except DataError as exc:
            raise ShardRefused(f"{self.data_path}: {exc}") from None
        problem = own_shard_floor(y, manifest)
        if problem is not None:
            raise ShardRefused(f"{self.data_path}: {problem}")
        return table_to_bytes(X, y)

    def upload(self, manifest: JobManifest, progress: Progress | None = None, *,
               chunk_size: int = 1 << 20, shard: bytes | None = None) -> UploadResult:
        """Seal and upload this party's shard (``shard``: already checked by ``check_data``, else loaded here)."""
        enclave = self._attested()
        if shard is None:
            if self.data_path is None:
                raise PartyError(f"{self.party_id} has no data file configured")
            shard = load_shard(self.data_path, manifest)
        result = upload_shard(self.client, manifest.job_id, enclave, self.identity, self.party_id, shard,
                              progress=progress, chunk_size=chunk_size)
        self.sent.setdefault(manifest.job_id, []).append(SentInput.from_upload(result))
        return result

    def accepted_chunks(self, job_id: str) -> int | None:
        """How many chunks of this party's shard the enclave accepted for ``job_id``: its own signed
        ``shard.accepted`` record in the job's audit view (None when the view cannot tell)."""
        from mpctrain.enclave.audit.record import AuditRecord, RecordFormatError
        from mpctrain.party.audit_check import fetch_audit_log
        from mpctrain.seal.errors import SealError

        enclave = self._attested()
        try:
            lines = fetch_audit_log(self.client.channel, job_id, party_id=self.party_id, identity=self.identity)
        except PartyError:
            return None
        for _, raw in lines:
            try:
                rec = AuditRecord.from_line(raw.rstrip(b"\n"))
                if rec.kind != "shard.accepted" or rec.job_id != job_id or rec.fields.get("party") != self.party_id:
                    continue
                rec.verify_signature(enclave.sig_public)
            except (RecordFormatError, SealError, ValueError):
                continue
            chunks = rec.fields.get("chunks")
            return chunks if isinstance(chunks, int) and not isinstance(chunks, bool) else None
        return None

    def wait(self, job_id: str, states: tuple[str, ...], timeout: float = 300.0,
             on_event: Callable[[object], None] | None = None) -> str:
        """Follow WatchJob until the job reaches one of ``states`` (or a terminal one).

        Raises ``WaitTimeout`` past ``timeout``, naming the job's state and what it lacks (consents, shards): the
        stream's own DEADLINE_EXCEEDED says neither.
        """
        deadline = time.monotonic() + timeout
        try:
            for ev in self.client.watch(job_id, timeout=timeout):
                if on_event is not None:
                    on_event(ev)
                if ev.kind == "state" and (ev.state in states or ev.state in ("done", "failed")):
                    return self.check_audit(job_id) if ev.state == "done" else ev.state
                if time.monotonic() > deadline:
                    break
        except AggregatorError as exc:
            if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        status = self.client.get_job(job_id)
        if status.state == "done":
            return self.check_audit(job_id)
        if status.state not in states and status.state != "failed" and time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for job {job_id} to be {' or '.join(states)} "
                              f"({describe_wait(status)})", job_id, status.state)
        return status.state

    def check_audit(self, job_id: str) -> str:
        """Before reporting ``done``: the enclave's audit log must show this party's job as it did it."""
        manifest = self.manifest(job_id)
        confirm_job(self.client.channel, manifest=manifest, party_id=self.party_id, identity=self.identity,
                    enclave=self._attested(), policy=self.policy, sent=self.sent.get(job_id),
                    at=self.at() if self.at else None)
        return "done"

    def fetch(self, manifest: JobManifest) -> dict[str, bytes]:
        """Fetch, open and verify this party's outputs; write them to ``outputs_dir`` when set."""
        opened, _receipt = fetch_outputs(self.client, self._attested(), manifest, self.party_id, self.kem,
                                         policy=self.policy, at=self.at() if self.at else None)
        if self.outputs_dir is not None:  # plaintext derived from every party's data: owner-only, never via a link
            d = self.outputs_dir / manifest.job_id  # the job directory too: a planted <outputs>/<job> link is refused
            try:
                write_private(d / "model.safetensors", opened["model"], root=self.outputs_dir)
                write_private(d / "metrics.json", opened["metrics"], root=self.outputs_dir)
            except (OSError, SealError) as exc:
                raise OutputError(f"outputs of {manifest.job_id} not written: {exc}") from None
        return opened
