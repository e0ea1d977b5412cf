"""Job state machine and the in-enclave job store, shared by the pooled and federated modes.

proposed --(every data party consented)--> open --(quorum of shards in)--> training --> done | failed.
State lives in enclave memory only; progress events are kept per job for ``WatchJob``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mpctrain.enclave.events import EventSink
from mpctrain.jobs import Consent, JobManifest, ManifestError, missing_consents, verify_consent


class JobState(StrEnum):
    PROPOSED = "proposed"
    OPEN = "open"
    TRAINING = "training"
    DONE = "done"
    FAILED = "failed"


TERMINAL = (JobState.DONE, JobState.FAILED)


class JobError(Exception):
    """A job operation is not possible; ``reason`` maps to a gRPC status in the services."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # not_found | already_exists | failed_precondition | invalid | exhausted


@dataclass
class JobEventRecord:
    seq: int
    kind: str
    time_ms: int
    state: str
    epoch: int = 0
    loss: float = 0.0
    party_id: str = ""
    message: str = ""
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """One job in the enclave: the manifest bytes as proposed, consents, shards, outputs, events."""

    manifest: JobManifest
    manifest_bytes: bytes
    digest: bytes
    state: JobState = JobState.PROPOSED
    consents: dict[str, Consent] = field(default_factory=dict)
    shards: dict[str, Any] = field(default_factory=dict)  # party id -> completed upload (enclave memory)
    outputs: dict[tuple[str, str], Any] = field(default_factory=dict)  # (recipient, name) -> sealed object
    receipt: Any = None
    public_metrics: dict[str, float] = field(default_factory=dict)
    unavailable_metrics: dict[str, str] = field(default_factory=dict)  # requested public metric -> why it is missing
    error: str = ""
    events: list[JobEventRecord] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    # each upload stream and each output fetch is a record in the job's audit view, which every party fetches
    # and checks: counted here so that one party cannot grow that view without bound (``Limits``)
    upload_streams: dict[str, int] = field(default_factory=dict)  # party id -> streams opened
    fetches: dict[tuple[str, str], int] = field(default_factory=dict)  # (recipient, name) -> fetches

    @property
    def job_id(self) -> str:
        return self.manifest.job_id

    def missing(self) -> list[str]:
        with self.cond:  # consents arrive concurrently: check a snapshot
            consents = list(self.consents.values())
        return missing_consents(self.manifest, consents)


class JobFailed(Exception):
    """A runner's own account of a failure, worded for every party of the job: ``kind`` names it (and is what the
    audit log records), the message says what to change. Runners raise it in place of errors whose messages or
    types could depend on party data."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind


# Exception classes whose messages come from the manifest or the platform, never from party data: shown
# verbatim. Matched by exact class, not by name: another error that happens to share a name, or a subclass
# with its own message, is not shown. Runners add their classes with ``show_verbatim``.
_VERBATIM: set[type[BaseException]] = {ManifestError}


def show_verbatim(*classes: type[BaseException]) -> None:
    """Let ``public_error`` show these exact classes' messages: only for messages built from no party data."""
    _VERBATIM.update(classes)


def public_error(exc: BaseException) -> str:
    """What ``GetJob`` may show about a failed job: a runner's ``JobFailed``, a message of an allowlisted class,
    or else the exception type and a generic reason (an arbitrary message could quote a value from a shard)."""
    if type(exc) is JobFailed:
        return str(exc)[:500]
    name = type(exc).__name__
    if type(exc) in _VERBATIM:
        return f"{name}: {exc}"[:500]
    return f"{name}: training failed inside the enclave"


# A runner trains one job; it is started in a thread once the quorum's shards are in, or as soon as the
# job opens when the runner sets ``starts_on_open`` (federated: the data never comes to the enclave). A runner
# with a ``check(manifest)`` method has it called at propose time; it raises ManifestError to refuse the job.
Runner = Callable[[Job, "JobStore"], None]


class JobStore:
    """All jobs; the mode-dispatch point (``runners``) lets the federated mode plug in its own runner."""

    def __init__(self, events: EventSink, runners: dict[str, Runner] | None = None, max_jobs: int = 1000,
                 known_parties: dict[str, set[bytes]] | None = None) -> None:
        self.events = events
        self.runners: dict[str, Runner] = dict(runners or {})
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}
        self._known: dict[str, set[bytes]] = {k: set(v) for k, v in (known_parties or {}).items()}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- identities ---------------------------------------------------------------------------
    def identities(self, party_id: str) -> list[bytes]:
        """Identity keys known for a party id: from the aggregator config and every stored manifest."""
        with self._lock:
            return sorted(self._known.get(party_id, ()))

    # -- jobs ---------------------------------------------------------------------------------
    def add(self, manifest: JobManifest, raw: bytes, now: float | None = None) -> Job:
        now = time.time() if now is None else now
        if manifest.expires <= now:
            raise JobError("failed_precondition", f"job {manifest.job_id} expired at {manifest.expires}")
        if manifest.mode not in self.runners:
            raise JobError("failed_precondition",
                           f"this aggregator does not run {manifest.mode!r} jobs (runs: {sorted(self.runners)})")
        check = getattr(self.runners[manifest.mode], "check", None)
        if check is not None:  # what the manifest alone decides is refused now, before any party sends data
            try:
                check(manifest)
            except ManifestError as exc:
                raise JobError("invalid", f"manifest refused: {exc}") from None
        with self._lock:
            if manifest.job_id in self._jobs:
                raise JobError("already_exists", f"job {manifest.job_id} already exists")
            if len(self._jobs) >= self.max_jobs:
                raise JobError("exhausted", f"the aggregator holds its maximum of {self.max_jobs} jobs")
            job = Job(manifest=manifest, manifest_bytes=raw, digest=manifest.digest())
            self._jobs[manifest.job_id] = job
            for p in manifest.parties:
                self._known.setdefault(p.id, set()).add(p.identity_public)
        self.events.emit("job.proposed", job_id=manifest.job_id, digest=job.digest.hex(), mode=manifest.mode,
                         proposer=manifest.proposer, parties=[p.id for p in manifest.parties])
        self.record(job, "state", message="proposed")
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobError("not_found", f"no job {job_id!r} on this aggregator")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    # -- transitions ---------------------------------------------------------------------------
    def add_consent(self, job: Job, consent: Consent) -> None:
        verify_consent(job.manifest, consent)  # ConsentError on wrong digest / party / signature
        with job.cond:  # record the consent and, if it was the last one, open the job: one atomic step
            if consent.party_id in job.consents:  # verified for the same digest and key: the same consent again,
                return  # which must not add a second record to the job's audit view
            job.consents[consent.party_id] = consent
            self.record(job, "consent", party_id=consent.party_id)
            opened = job.state == JobState.PROPOSED and not job.missing()
            if opened:
                job.state = JobState.OPEN
                self.record(job, "state", message=str(JobState.OPEN))
        self.events.emit("job.consent", job_id=job.job_id, party=consent.party_id, digest=job.digest.hex(),
                         signature=consent.signature.hex())
        if opened:
            self.events.emit("job.state", job_id=job.job_id, state=str(JobState.OPEN))
            if getattr(self.runners[job.manifest.mode], "starts_on_open", False):
                self._start(job)

    def shard_complete(self, job: Job, party_id: str, shard: Any,
                       accepted: Callable[[], None] | None = None) -> None:
        """Record a complete shard (``accepted`` runs once it is, before any training it completes starts);
        start the job's runner when the quorum's shards are in."""
        start = False
        with job.cond:
            if party_id in job.shards:
                raise JobError("already_exists", f"{party_id} already uploaded its shard for {job.job_id}")
            if job.state != JobState.OPEN:  # a shard completing after the quorum's started training is unused
                raise JobError("failed_precondition", f"job {job.job_id} is {job.state}: its training started "
                                                      "without this shard, which is discarded")
            job.shards[party_id] = shard
            self.record(job, "shard", party_id=party_id)
            start = job.state == JobState.OPEN and len(job.shards) >= job.manifest.quorum
        if accepted is not None:
            accepted()
        if start:
            self._start(job)

    def _start(self, job: Job) -> None:
        """OPEN -> TRAINING once, then run the job's runner in its own thread."""
        with job.cond:
            if job.state != JobState.OPEN:
                return
            job.state = JobState.TRAINING
            self.record(job, "state", message=str(JobState.TRAINING))
        self.events.emit("job.state", job_id=job.job_id, state=str(JobState.TRAINING))
        runner = self.runners[job.manifest.mode]
        t = threading.Thread(target=self._run, args=(runner, job), name=f"job-{job.job_id}", daemon=True)
        self._threads.append(t)
        t.start()

    def _run(self, runner: Runner, job: Job) -> None:
        self.events.emit("training.started", job_id=job.job_id, parties=sorted(job.shards))
        try:
            runner(job, self)
        except Exception as exc:  # the runner's error is reported, never its data
            job.error = public_error(exc)
            kind = exc.kind if type(exc) is JobFailed else type(exc).__name__
            self.events.emit("training.failed", job_id=job.job_id, error=kind)
            self.set_state(job, JobState.FAILED, message=job.error)
            return
        finally:  # success or not, the shards' plaintext is overwritten and its memory given back
            for shard in job.shards.values():
                wipe = getattr(shard, "wipe", None)
                if wipe is not None:
                    wipe()
        missing = {"unavailable": sorted(job.unavailable_metrics)} if job.unavailable_metrics else {}
        self.events.emit("training.finished", job_id=job.job_id, metrics=dict(job.public_metrics), **missing)
        self.set_state(job, JobState.DONE)

    def set_state(self, job: Job, state: JobState, message: str = "") -> None:
        with job.cond:  # state and its event change together, so a watcher never misses the last one
            job.state = state
            self.record(job, "state", message=message or str(state))
        self.events.emit("job.state", job_id=job.job_id, state=str(state))

    def join(self, timeout: float | None = None) -> None:
        for t in list(self._threads):
            t.join(timeout)

    # -- events --------------------------------------------------------------------------------
    def record(self, job: Job, kind: str, **fields: Any) -> None:
        """Append a progress event for watchers (metadata only) and wake them."""
        with job.cond:
            rec = JobEventRecord(seq=len(job.events), kind=kind, time_ms=int(time.time() * 1000),
                                 state=str(job.state), **fields)
            job.events.append(rec)
            job.cond.notify_all()

    def watch(self, job: Job, alive: Callable[[], bool], poll_s: float = 0.5) -> Iterator[JobEventRecord]:
        """Past events, then live ones, until the job is terminal or ``alive()`` turns false."""
        seq = 0
        while True:
            with job.cond:
                while seq >= len(job.events) and job.state not in TERMINAL and alive():
                    job.cond.wait(poll_s)
                batch = job.events[seq:]
                seq = len(job.events)
                done = job.state in TERMINAL or not alive()
            yield from batch
            if done and seq >= len(job.events):
                return
