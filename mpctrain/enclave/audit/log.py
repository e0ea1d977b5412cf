"""``AuditLog``: the event sink that appends signed, hash-chained records to a JSON Lines file on the host.

The file lives outside the enclave and the host may do anything to it; what it cannot do is produce a
record the enclave key signed, so every edit, deletion, reordering or substituted segment shows up in
``verify_log``. Each start of an enclave opens a new segment: its first record carries the new enclave's
public keys and its evidence, attested over a nonce derived from the previous record's hash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mpctrain.enclave.audit.errors import AuditLogInUse, AuditWriteError
from mpctrain.enclave.audit.head import JobHead
from mpctrain.enclave.audit.reader import read_lines
from mpctrain.enclave.audit.record import SEGMENT_KIND, AuditRecord, RecordFormatError, sanitize, segment_nonce
from mpctrain.enclave.identity import EnclaveIdentity

log = logging.getLogger("mpctrain.enclave.audit")

EVIDENCE_DIR_SUFFIX = ".evidence"
MAX_AHEAD_MS = 24 * 3600 * 1000  # a last record dated further ahead of this enclave's clock is refused


class AuditLog:
    """EventSink: one signed record per event; thread-safe; appends with O_APPEND, one write per record.

    ``embed_evidence=False`` keeps segment records small: the evidence bundle goes to
    ``<log>.evidence/<digest>.json`` and the record holds its digest (verifiers pass it with ``--evidence``).

    One writer per file: the log is opened once and an exclusive ``flock`` is held on that descriptor from
    opening until :meth:`close`, and every record is appended through it. ``flock`` locks the file itself
    (its inode), so a second aggregator fails with :class:`AuditLogInUse` whichever name it uses for the
    file (the same path, or a hard link); a log path that is itself a symbolic link is refused.
    """

    def __init__(self, path: str | os.PathLike[str], identity: EnclaveIdentity, *,
                 clock: Callable[[], float] = time.time, embed_evidence: bool = True, fsync: bool = False) -> None:
        self.path = Path(path)
        self.identity = identity
        self.clock = clock
        self.embed_evidence = embed_evidence
        self.fsync = fsync
        self._lock = threading.Lock()
        self._failed: str | None = None
        self._seq = 0
        self._segment = 0
        self._prev_hash = ""
        self._time_ms = 0
        self._jobs: dict[str, tuple[int, str]] = {}  # this segment's jobs: a restarted enclave holds none
        self._fd: int | None = None
        self._fd = _open_locked(self.path)
        try:
            self._resume()
            self._start_segment()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop writing and release the lock; later events are refused (another writer may own the file)."""
        with self._lock:
            if self._failed is None:
                self._failed = "the log was closed"
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Continue after the last record already in the file (a restart): next seq, link hash, segment."""
        if not self.path.exists():
            return
        last: AuditRecord | None = None
        try:
            for line_no, raw in read_lines(self.path):
                if not raw.endswith(b"\n"):
                    raise AuditWriteError(f"{self.path} ends inside a record at line {line_no} (cut short); move it "
                                          "aside to start a new log, and keep it for the verifier")
                try:
                    rec = AuditRecord.from_line(raw[:-1])
                except RecordFormatError as exc:
                    raise AuditWriteError(f"{self.path} line {line_no} is not an audit record ({exc}); refusing to "
                                          "extend it: move it aside to start a new log") from None
                last = rec
        except OSError as exc:
            raise AuditWriteError(f"cannot read the audit log {self.path}: {exc}") from exc
        if last is not None:
            self._check_last(last)
            self._seq = last.seq + 1
            self._segment = last.segment + 1
            self._prev_hash = last.hash
            self._time_ms = last.time_ms

    def _check_last(self, last: AuditRecord) -> None:
        """The new segment links to the last record and never dates a record before it: a last line the host
        edited or planted (an absurd time) would make this enclave sign its link and its timestamps."""
        where = f"{self.path} (last record, seq {last.seq})"
        if not hmac.compare_digest(last.compute_hash(), last.hash):
            raise AuditWriteError(f"{where} does not match its hash (edited?); refusing to extend it: keep it for "
                                  "the verifier and move it aside to start a new log")
        now_ms = int(self.clock() * 1000)
        if last.time_ms > now_ms + MAX_AHEAD_MS:
            raise AuditWriteError(f"{where} is dated {last.time_ms} ms, more than a day after this machine's clock "
                                  f"({now_ms} ms); refusing to extend it: fix the clock, or keep the log for the "
                                  "verifier and move it aside to start a new one")

    def _start_segment(self) -> None:
        """First record of this enclave's segment: keys, build, evidence bound to the link point."""
        nonce = segment_nonce(self._prev_hash, self._segment)
        bundle = self.identity.evidence(nonce)
        evidence = bundle.to_json()
        digest = hashlib.sha256(evidence).hexdigest()
        fields: dict[str, object] = {
            "sig_public": bundle.sig_public.hex(),
            "kem_public": bundle.kem_public.hex(),
            "kem_alg": bundle.kem_alg,
            "build_digest": bundle.build.build_digest.hex(),
            "config_digest": bundle.build.config_digest.hex(),
            "version": bundle.build.version,
            "backend": bundle.cpu.kind,
            "gpus": len(bundle.gpus),
            "nonce": nonce.hex(),
            "evidence_digest": digest,
        }
        measurement = getattr(self.identity.attester, "measurement", None)
        if isinstance(measurement, bytes):
            fields["measurement"] = measurement.hex()  # informational: verifiers take it from the evidence
        if self.embed_evidence:
            fields["evidence"] = evidence.decode()
        else:
            side = self.path.with_name(self.path.name + EVIDENCE_DIR_SUFFIX)
            side.mkdir(exist_ok=True)
            (side / f"{digest}.json").write_bytes(evidence)
            fields["evidence_file"] = f"{side.name}/{digest}.json"
        with self._lock:
            self._append(SEGMENT_KIND, None, fields)

    # -- EventSink ----------------------------------------------------------------------------
    def emit(self, kind: str, /, **fields: object) -> None:
        if kind == SEGMENT_KIND:
            raise ValueError(f"{SEGMENT_KIND!r} records are written by the audit log itself")
        job_id = fields.pop("job_id", None)
        job = str(job_id)[:256] if job_id is not None and job_id != "" else None
        clean = {str(k)[:64]: sanitize(v) for k, v in fields.items()}
        with self._lock:
            self._append(str(kind)[:64], job, clean)

    # -- writing ------------------------------------------------------------------------------
    def _append(self, kind: str, job_id: str | None, fields: dict[str, object]) -> None:
        if self._failed is not None:
            raise AuditWriteError(f"audit log {self.path} stopped after a failed write: {self._failed}")
        now_ms = max(int(self.clock() * 1000), self._time_ms)  # timestamps never run backwards
        job_seq, job_prev = None, ""
        if job_id is not None:
            head = self._jobs.get(job_id)
            job_seq, job_prev = (0, "") if head is None else (head[0] + 1, head[1])
        rec = AuditRecord(seq=self._seq, segment=self._segment, time_ms=now_ms, kind=kind,
                          prev_hash=self._prev_hash, fields=fields, job_id=job_id, job_seq=job_seq,
                          job_prev=job_prev).signed(self.identity.sig)
        line = rec.to_line()
        if self._fd is None:
            raise AuditWriteError(f"audit log {self.path} is closed")
        try:  # through the locked descriptor (O_APPEND): the file this writer locked, whatever the path holds now
            written = os.write(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._failed = str(exc)
            raise AuditWriteError(f"cannot append to the audit log {self.path}: {exc}") from exc
        if written != len(line):
            self._failed = f"short write ({written} of {len(line)} bytes)"
            raise AuditWriteError(f"audit log {self.path}: {self._failed}")
        self._seq += 1
        self._prev_hash = rec.hash
        self._time_ms = now_ms
        if job_id is not None:
            self._jobs[job_id] = (rec.job_seq or 0, rec.hash)

    # -- facts --------------------------------------------------------------------------------
    @property
    def segment(self) -> int:
        return self._segment

    def job_head(self, job_id: str, nonce: bytes) -> JobHead:
        """``job_id``'s last record in this segment, signed for ``nonce``: a view served after this call must
        reach it. ``job_seq`` is None when this enclave has recorded nothing of the job."""
        with self._lock:
            job_seq, digest = self._jobs.get(job_id, (None, ""))
            segment = self._segment
        return JobHead(job_id, segment, job_seq, digest, nonce).signed(self.identity.sig)

    @property
    def head(self) -> tuple[int, str]:
        """(next sequence number, hash of the last record): what a party may pin as an anchor."""
        with self._lock:
            return self._seq, self._prev_hash


def _open_locked(path: Path) -> int:
    """Open the log for appending (created if absent) and take an exclusive, non-blocking ``flock`` on it.

    The lock is on the log itself, not on a sibling lock file named after the path: ``flock`` locks the
    open file, so a second writer reaching the same file by a hard link is refused too. A symbolic link at
    the log path is refused (``O_NOFOLLOW``) rather than resolved: the evidence directory, ``audit fetch``
    and the operator's ``mv`` all work on the path, and they should name the file that is written. The
    descriptor is ``O_CLOEXEC``: a child process would otherwise hold the lock after the writer closed it.
    The kernel drops the lock when the process dies.
    """
    shown = os.path.normpath(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: opening a FIFO planted at the path fails (ENXIO) instead of hanging; a no-op for files
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP and path.is_symlink():
            raise AuditWriteError(f"audit log {shown} is a symbolic link (to {os.readlink(path)}); set audit_log "
                                  "to the file itself: the log's lock, its evidence directory and `audit fetch` "
                                  "go by the path") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO with no reader, a directory
            raise AuditWriteError(f"audit log {shown} is not a regular file; set audit_log to a file path") from None
        raise AuditWriteError(f"cannot open the audit log {shown}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuditWriteError(f"audit log {shown} is not a regular file; set audit_log to a file path")
        os.set_blocking(fd, True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditLogInUse(shown, _lock_holder(st)) from None
        except OSError as exc:
            raise AuditWriteError(f"cannot lock the audit log {shown}: {exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_holder(st: os.stat_result, locks: str = "/proc/locks") -> int | None:
    """The pid holding a ``flock`` write lock on the file ``st`` describes, from the kernel's lock table
    (Linux); None where the table is absent or names no holder (another pid namespace shows 0)."""
    try:
        with open(locks, encoding="ascii", errors="replace") as f:
            table = f.read(1 << 22)
    except OSError:
        return None
    for line in table.splitlines():
        parts = line.split()  # "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"; waiters ("N: -> FLOCK ...") skipped
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            pid, dev, ino = int(parts[4]), (int(major, 16), int(minor, 16)), int(inode)
        except ValueError:
            continue
        if ino == st.st_ino and dev == (os.major(st.st_dev), os.minor(st.st_dev)) and pid > 0:
            return pid
    return None
