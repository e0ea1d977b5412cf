"""Typed audit failures: a broken log names the line, the sequence number and the check that failed."""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every audit-trail failure."""


class AuditWriteError(AuditError):
    """The enclave cannot append to its audit log (unwritable path, or an existing log it cannot extend)."""


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
