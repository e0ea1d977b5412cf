from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetLogRequest(_message.Message):
    __slots__ = ("job_id", "from_seq", "evidence_digests", "head_nonce")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    HEAD_NONCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_seq: int
    evidence_digests: _containers.RepeatedScalarFieldContainer[str]
    head_nonce: bytes
    def __init__(self, job_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., evidence_digests: _Optional[_Iterable[str]] = ..., head_nonce: _Optional[bytes] = ...) -> None: ...

class JobHead(_message.Message):
    __slots__ = ("job_id", "segment", "job_seq", "hash", "nonce", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    JOB_SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    segment: int
    job_seq: int
    hash: str
    nonce: bytes
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., segment: _Optional[int] = ..., job_seq: _Optional[int] = ..., hash: _Optional[str] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("line", "data", "head")
    LINE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    line: int
    data: bytes
    head: JobHead
    def __init__(self, line: _Optional[int] = ..., data: _Optional[bytes] = ..., head: _Optional[_Union[JobHead, _Mapping]] = ...) -> None: ...
