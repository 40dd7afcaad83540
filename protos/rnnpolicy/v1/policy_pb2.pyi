from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateTensorSpec(_message.Message):
    __slots__ = ("name", "layers", "hidden")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: int
    hidden: int
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[int] = ..., hidden: _Optional[int] = ...) -> None: ...

class ActionSpace(_message.Message):
    __slots__ = ("kind", "n", "shape", "low", "high", "nvec")
    KIND_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    NVEC_FIELD_NUMBER: _ClassVar[int]
    kind: str
    n: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    nvec: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[str] = ..., n: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., nvec: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "obs_shape", "action", "state", "kind", "cell", "outputs", "spec_json", "sessions", "latest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OBS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    obs_shape: _containers.RepeatedScalarFieldContainer[int]
    action: ActionSpace
    state: _containers.RepeatedCompositeFieldContainer[StateTensorSpec]
    kind: str
    cell: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    spec_json: str
    sessions: int
    latest: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., obs_shape: _Optional[_Iterable[int]] = ..., action: _Optional[_Union[ActionSpace, _Mapping]] = ..., state: _Optional[_Iterable[_Union[StateTensorSpec, _Mapping]]] = ..., kind: _Optional[str] = ..., cell: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., spec_json: _Optional[str] = ..., sessions: _Optional[int] = ..., latest: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "seed", "affinity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    seed: int
    affinity: str
    def __init__(self, model: _Optional[str] = ..., seed: _Optional[int] = ..., affinity: _Optional[str] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "model", "ttl_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: ModelInfo
    ttl_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[_Iterable[float]] = ...) -> None: ...

class GetSessionStateRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionStateResponse(_message.Message):
    __slots__ = ("names", "state", "seq")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    state: _containers.RepeatedCompositeFieldContainer[Tensor]
    seq: int
    def __init__(self, names: _Optional[_Iterable[str]] = ..., state: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class SetSessionStateRequest(_message.Message):
    __slots__ = ("session_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class SetSessionStateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MigrateSessionRequest(_message.Message):
    __slots__ = ("session_id", "version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    version: str
    def __init__(self, session_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class MigrateSessionResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "seq", "obs", "episode_start", "deterministic")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OBS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_START_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    obs: _containers.RepeatedScalarFieldContainer[float]
    episode_start: bool
    deterministic: bool
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., obs: _Optional[_Iterable[float]] = ..., episode_start: _Optional[bool] = ..., deterministic: _Optional[bool] = ...) -> None: ...

class StepError(_message.Message):
    __slots__ = ("code", "message", "expected_seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    expected_seq: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., expected_seq: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "seq", "discrete_action", "continuous_action", "q_values", "logits", "mean", "log_std", "value", "model_version", "error", "multi_action")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTION_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_ACTION_FIELD_NUMBER: _ClassVar[int]
    Q_VALUES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOG_STD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MULTI_ACTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    discrete_action: int
    continuous_action: _containers.RepeatedScalarFieldContainer[float]
    q_values: _containers.RepeatedScalarFieldContainer[float]
    logits: _containers.RepeatedScalarFieldContainer[float]
    mean: _containers.RepeatedScalarFieldContainer[float]
    log_std: _containers.RepeatedScalarFieldContainer[float]
    value: float
    model_version: str
    error: StepError
    multi_action: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., discrete_action: _Optional[int] = ..., continuous_action: _Optional[_Iterable[float]] = ..., q_values: _Optional[_Iterable[float]] = ..., logits: _Optional[_Iterable[float]] = ..., mean: _Optional[_Iterable[float]] = ..., log_std: _Optional[_Iterable[float]] = ..., value: _Optional[float] = ..., model_version: _Optional[str] = ..., error: _Optional[_Union[StepError, _Mapping]] = ..., multi_action: _Optional[_Iterable[int]] = ...) -> None: ...

class StepBatchRequest(_message.Message):
    __slots__ = ("session_ids", "seqs", "obs", "episode_start", "deterministic")
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    OBS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_START_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    obs: _containers.RepeatedScalarFieldContainer[float]
    episode_start: _containers.RepeatedScalarFieldContainer[bool]
    deterministic: bool
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ..., seqs: _Optional[_Iterable[int]] = ..., obs: _Optional[_Iterable[float]] = ..., episode_start: _Optional[_Iterable[bool]] = ..., deterministic: _Optional[bool] = ...) -> None: ...

class StepBatchResponse(_message.Message):
    __slots__ = ("seqs", "discrete_actions", "continuous_actions", "q_values", "logits", "mean", "log_std", "values", "model_version", "errors", "multi_actions")
    SEQS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    Q_VALUES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOG_STD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MULTI_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    discrete_actions: _containers.RepeatedScalarFieldContainer[int]
    continuous_actions: _containers.RepeatedScalarFieldContainer[float]
    q_values: _containers.RepeatedScalarFieldContainer[float]
    logits: _containers.RepeatedScalarFieldContainer[float]
    mean: _containers.RepeatedScalarFieldContainer[float]
    log_std: _containers.RepeatedScalarFieldContainer[float]
    values: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    errors: _containers.RepeatedCompositeFieldContainer[BatchRowError]
    multi_actions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seqs: _Optional[_Iterable[int]] = ..., discrete_actions: _Optional[_Iterable[int]] = ..., continuous_actions: _Optional[_Iterable[float]] = ..., q_values: _Optional[_Iterable[float]] = ..., logits: _Optional[_Iterable[float]] = ..., mean: _Optional[_Iterable[float]] = ..., log_std: _Optional[_Iterable[float]] = ..., values: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ..., errors: _Optional[_Iterable[_Union[BatchRowError, _Mapping]]] = ..., multi_actions: _Optional[_Iterable[int]] = ...) -> None: ...

class BatchRowError(_message.Message):
    __slots__ = ("index", "session_id", "code", "message", "expected_seq")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    index: int
    session_id: str
    code: int
    message: str
    expected_seq: int
    def __init__(self, index: _Optional[int] = ..., session_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., expected_seq: _Optional[int] = ...) -> None: ...
