from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadOpen(_message.Message):
    __slots__ = ("job_id", "header")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    header: bytes
    def __init__(self, job_id: _Optional[str] = ..., header: _Optional[bytes] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("index", "frame", "last")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    index: int
    frame: bytes
    last: bool
    def __init__(self, index: _Optional[int] = ..., frame: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("open", "chunk")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    open: UploadOpen
    chunk: UploadChunk
    def __init__(self, open: _Optional[_Union[UploadOpen, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("next_index", "received_bytes", "complete")
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    next_index: int
    received_bytes: int
    complete: bool
    def __init__(self, next_index: _Optional[int] = ..., received_bytes: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class UploadStatusRequest(_message.Message):
    __slots__ = ("job_id", "object_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    object_id: str
    def __init__(self, job_id: _Optional[str] = ..., object_id: _Optional[str] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("known", "next_index", "received_bytes", "complete", "header_digest")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    HEADER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    known: bool
    next_index: int
    received_bytes: int
    complete: bool
    header_digest: bytes
    def __init__(self, known: _Optional[bool] = ..., next_index: _Optional[int] = ..., received_bytes: _Optional[int] = ..., complete: _Optional[bool] = ..., header_digest: _Optional[bytes] = ...) -> None: ...
