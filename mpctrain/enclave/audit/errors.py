"""Typed audit failures: a broken log names the line, the sequence number and the check that failed."""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every audit-trail failure."""


class AuditWriteError(AuditError):
    """The enclave cannot append to its audit log (unwritable path, or an existing log it cannot extend)."""


class AuditLogInUse(AuditWriteError):
    """Another live writer (a second aggregator on the same config) holds the log's lock: two writers would
    interleave two hash chains in one file and the log would no longer verify."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"audit log {path} is in use by another aggregator ({holder}); stop it first, or point "
                         "this one's audit_log at another file")
        self.path = path
        self.pid = pid


class AuditBroken(AuditError):
    """The log fails verification at one record.

    ``line`` is the 1-based line number in the file (or in the fetched stream), ``seq`` the record's
    sequence number when it could be read (``None`` otherwise) and ``check`` names the failed check:
    ``parse``, ``encoding``, ``hash``, ``signature``, ``sequence``, ``chain``, ``segment``, ``evidence``,
    ``time``, ``job-chain``, ``truncated`` or ``empty``.
    """

    def __init__(self, check: str, message: str, *, line: int, seq: int | None = None) -> None:
        where = f"line {line}" + (f", seq {seq}" if seq is not None else "")
        super().__init__(f"audit log broken at {where} [{check}]: {message}")
        self.check = check
        self.line = line
        self.seq = seq
        self.detail = message
