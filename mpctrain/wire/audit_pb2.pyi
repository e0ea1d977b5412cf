from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetLogRequest(_message.Message):
    __slots__ = ("job_id", "from_seq", "evidence_digests")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_seq: int
    evidence_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., evidence_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("line", "data")
    LINE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    line: int
    data: bytes
    def __init__(self, line: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
