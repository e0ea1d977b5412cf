"""The tamper-evident audit trail: signed, hash-chained JSON Lines records of what the enclave did.

Writing: :class:`AuditLog` (an ``EventSink``). Reading: :func:`read_lines`, :func:`verify_log`,
:func:`summarize`. Format and trust argument: docs/audit.md.
"""

from mpctrain.enclave.audit.errors import AuditBroken, AuditError, AuditLogInUse, AuditWriteError
from mpctrain.enclave.audit.head import HEAD_DOMAIN, HEAD_NONCE_BYTES, JobHead
from mpctrain.enclave.audit.log import AuditLog
from mpctrain.enclave.audit.reader import RawLine, lines_from_bytes, read_lines
from mpctrain.enclave.audit.record import SEGMENT_KIND, AuditRecord, RecordFormatError, segment_nonce
from mpctrain.enclave.audit.summary import InputEntry, JobSummary, OutputEntry, printable, render, summarize
from mpctrain.enclave.audit.verify import AuditReport, CrossCheck, Segment, cross_check, verify_log

__all__ = [
    "HEAD_DOMAIN",
    "HEAD_NONCE_BYTES",
    "SEGMENT_KIND",
    "AuditBroken",
    "AuditError",
    "AuditLog",
    "AuditLogInUse",
    "AuditRecord",
    "AuditReport",
    "AuditWriteError",
    "CrossCheck",
    "InputEntry",
    "JobHead",
    "JobSummary",
    "OutputEntry",
    "RawLine",
    "RecordFormatError",
    "Segment",
    "cross_check",
    "lines_from_bytes",
    "printable",
    "read_lines",
    "render",
    "segment_nonce",
    "summarize",
    "verify_log",
]
