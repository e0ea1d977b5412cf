from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchOutputRequest(_message.Message):
    __slots__ = ("job_id", "recipient", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    recipient: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., recipient: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class OutputPart(_message.Message):
    __slots__ = ("header", "frame")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    frame: OutputFrame
    def __init__(self, header: _Optional[bytes] = ..., frame: _Optional[_Union[OutputFrame, _Mapping]] = ...) -> None: ...

class OutputFrame(_message.Message):
    __slots__ = ("index", "frame", "last")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    index: int
    frame: bytes
    last: bool
    def __init__(self, index: _Optional[int] = ..., frame: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class GetReceiptRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class OutputDigest(_message.Message):
    __slots__ = ("name", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: bytes
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("job_id", "job_digest", "output_digest", "evidence_digest", "time", "signature", "outputs", "evidence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job_digest: bytes
    output_digest: bytes
    evidence_digest: bytes
    time: int
    signature: bytes
    outputs: _containers.RepeatedCompositeFieldContainer[OutputDigest]
    evidence: bytes
    def __init__(self, job_id: _Optional[str] = ..., job_digest: _Optional[bytes] = ..., output_digest: _Optional[bytes] = ..., evidence_digest: _Optional[bytes] = ..., time: _Optional[int] = ..., signature: _Optional[bytes] = ..., outputs: _Optional[_Iterable[_Union[OutputDigest, _Mapping]]] = ..., evidence: _Optional[bytes] = ...) -> None: ...
