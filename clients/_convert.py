"""Conversions between numpy/gymnasium values and PolicyService messages, shared by the sync and asyncio clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import grpc
import numpy as np

from rnnpolicy.clients._errors import PolicyError
from rnnpolicy.spec import PolicySpec
from rnnpolicy.v1 import policy_pb2 as pb

__all__ = ["ModelInfo", "StepResult", "encode_obs", "model_info", "obs_encoder", "result_decoder"]


@dataclass(frozen=True)
class ModelInfo:
    """A served model: its ``name``, content ``version`` and full :class:`~rnnpolicy.PolicySpec`."""

    name: str
    version: str
    spec: PolicySpec


@dataclass(slots=True)
class StepResult:
    """One step's answer. ``action`` is an int (discrete), an int64 vector of the ``k`` entries
    (multi-discrete and multi-binary; ``spec.action.to_env`` gives it the space's shape) or a float32
    vector (box).

    (Not a frozen dataclass: building one of those costs about five times as long, on every step.)"""

    action: int | np.ndarray
    seq: int
    model_version: str
    q_values: np.ndarray | None = None
    logits: np.ndarray | None = None
    mean: np.ndarray | None = None
    log_std: np.ndarray | None = None
    value: float | None = None


def model_info(message: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(message.name, message.version, PolicySpec.from_json(message.spec_json))


def encode_obs(spec: PolicySpec, obs: Any) -> np.ndarray:
    """A raw observation (as the environment returns it) as the model's flat float32 ``obs``."""
    return obs_encoder(spec)(obs)


def obs_encoder(spec: PolicySpec) -> Callable[[Any], np.ndarray]:
    """:func:`encode_obs` for one spec, its encoding looked up once (a session encodes every step with it)."""
    encoding = spec.obs_encoding
    if encoding.is_flat_box:
        return _flat_obs

    def encode(obs: Any) -> np.ndarray:
        try:
            return encoding.encode(obs)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot encode obs for this model: {exc}") from None

    return encode


def _flat_obs(obs: Any) -> np.ndarray:
    array = np.asarray(obs)
    if array.dtype.kind not in "biuf":
        raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"obs has dtype {array.dtype}, expected real numbers (sent as float32)")
    return array.astype(np.float32, copy=False).ravel()


def step_request(session_id: str, seq: int, obs: np.ndarray, episode_start: bool, deterministic: bool) -> pb.StepRequest:
    return pb.StepRequest(session_id=session_id, seq=seq, obs=obs.tolist(), episode_start=bool(episode_start),
                          deterministic=bool(deterministic))


def _floats(field: Any) -> np.ndarray | None:
    """A repeated float field as float32, None when empty (``field[:]`` first: numpy reads a list several times faster)."""
    return np.array(field[:], dtype=np.float32) if field else None


_HEADS = ("q_values", "logits", "mean", "log_std")


def result_decoder(spec: PolicySpec) -> Callable[[pb.StepResponse], StepResult]:
    """The :class:`StepResult` of a step that succeeded, for one spec: only the outputs its model has are read
    (a session decodes every step with it; the client protocol raised in-band errors already)."""
    outputs = spec.output_names
    heads = tuple(head for head in _HEADS if head in outputs)
    discrete = spec.action.is_discrete
    factored = spec.action.is_factored
    has_value = "value" in outputs

    def decode(response: pb.StepResponse) -> StepResult:
        action: int | np.ndarray
        if factored:  # the k entries of a multi-discrete or multi-binary action
            action = np.array(response.multi_action[:], dtype=np.int64)
        elif discrete:
            action = int(response.discrete_action)
        else:
            action = np.array(response.continuous_action[:], dtype=np.float32)
        result = StepResult(action, response.seq, response.model_version)
        for head in heads:
            setattr(result, head, _floats(getattr(response, head)))
        if has_value and response.HasField("value"):
            result.value = float(response.value)
        return result

    return decode


def state_tensors(response: pb.GetSessionStateResponse) -> dict[str, np.ndarray]:
    return {name: np.array(t.data, dtype=np.float32).reshape(tuple(t.shape))
            for name, t in zip(response.names, response.state)}


def state_message(spec: PolicySpec, session_id: str, state: dict[str, np.ndarray]) -> pb.SetSessionStateRequest:
    names = [s.name for s in spec.state_tensors]
    if set(state) != set(names):
        raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"state has tensors {sorted(state)}, expected {names}")
    tensors = []
    for name in names:
        array = np.asarray(state[name], dtype=np.float32)
        tensors.append(pb.Tensor(shape=list(array.shape), data=array.ravel().tolist()))
    return pb.SetSessionStateRequest(session_id=session_id, state=tensors)
