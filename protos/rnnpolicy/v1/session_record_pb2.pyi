from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionRecord(_message.Message):
    __slots__ = ("format_version", "session_id", "model", "version", "principal", "seed", "rng_json", "last_seq", "last_used", "epoch", "state", "last_out", "affinity")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RNG_JSON_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_OUT_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    session_id: str
    model: str
    version: str
    principal: str
    seed: int
    rng_json: str
    last_seq: int
    last_used: float
    epoch: int
    state: _containers.RepeatedCompositeFieldContainer[StateRow]
    last_out: _containers.RepeatedScalarFieldContainer[float]
    affinity: str
    def __init__(self, format_version: _Optional[int] = ..., session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., principal: _Optional[str] = ..., seed: _Optional[int] = ..., rng_json: _Optional[str] = ..., last_seq: _Optional[int] = ..., last_used: _Optional[float] = ..., epoch: _Optional[int] = ..., state: _Optional[_Iterable[_Union[StateRow, _Mapping]]] = ..., last_out: _Optional[_Iterable[float]] = ..., affinity: _Optional[str] = ...) -> None: ...

class StateRow(_message.Message):
    __slots__ = ("name", "layers", "hidden", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: int
    hidden: int
    data: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ..., data: _Optional[_Iterable[float]] = ...) -> None: ...

class Tombstone(_message.Message):
    __slots__ = ("session_id", "fate", "wall", "principal")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FATE_FIELD_NUMBER: _ClassVar[int]
    WALL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    fate: str
    wall: float
    principal: str
    def __init__(self, session_id: _Optional[str] = ..., fate: _Optional[str] = ..., wall: _Optional[float] = ..., principal: _Optional[str] = ...) -> None: ...

class SessionSnapshot(_message.Message):
    __slots__ = ("format", "format_version", "written_at", "sessions", "tombstones")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_AT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    format: str
    format_version: int
    written_at: float
    sessions: _containers.RepeatedCompositeFieldContainer[SessionRecord]
    tombstones: _containers.RepeatedCompositeFieldContainer[Tombstone]
    def __init__(self, format: _Optional[str] = ..., format_version: _Optional[int] = ..., written_at: _Optional[float] = ..., sessions: _Optional[_Iterable[_Union[SessionRecord, _Mapping]]] = ..., tombstones: _Optional[_Iterable[_Union[Tombstone, _Mapping]]] = ...) -> None: ...
