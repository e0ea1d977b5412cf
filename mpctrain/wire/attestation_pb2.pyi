from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetEvidenceRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("kind", "data", "certs")
    class CertsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CERTS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    data: bytes
    certs: _containers.ScalarMap[str, bytes]
    def __init__(self, kind: _Optional[str] = ..., data: _Optional[bytes] = ..., certs: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class EnclaveKeys(_message.Message):
    __slots__ = ("kem_alg", "kem_public", "sig_public")
    KEM_ALG_FIELD_NUMBER: _ClassVar[int]
    KEM_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIG_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    kem_alg: str
    kem_public: bytes
    sig_public: bytes
    def __init__(self, kem_alg: _Optional[str] = ..., kem_public: _Optional[bytes] = ..., sig_public: _Optional[bytes] = ...) -> None: ...

class BuildInfo(_message.Message):
    __slots__ = ("version", "build_digest", "config_digest")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    version: str
    build_digest: bytes
    config_digest: bytes
    def __init__(self, version: _Optional[str] = ..., build_digest: _Optional[bytes] = ..., config_digest: _Optional[bytes] = ...) -> None: ...

class EvidenceBundle(_message.Message):
    __slots__ = ("cpu", "gpus", "keys", "build")
    CPU_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    cpu: Evidence
    gpus: _containers.RepeatedCompositeFieldContainer[Evidence]
    keys: EnclaveKeys
    build: BuildInfo
    def __init__(self, cpu: _Optional[_Union[Evidence, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ..., keys: _Optional[_Union[EnclaveKeys, _Mapping]] = ..., build: _Optional[_Union[BuildInfo, _Mapping]] = ...) -> None: ...
