"""Conversions between numpy/gymnasium values and PolicyService messages, shared by the sync and asyncio clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from rnnpolicy.clients._errors import PolicyError
from rnnpolicy.spec import PolicySpec
from rnnpolicy.v1 import policy_pb2 as pb

__all__ = ["ModelInfo", "StepResult", "encode_obs", "model_info", "step_result"]


@dataclass(frozen=True)
class ModelInfo:
    """A served model: its ``name``, content ``version`` and full :class:`~rnnpolicy.PolicySpec`."""

    name: str
    version: str
    spec: PolicySpec


@dataclass(frozen=True)
class StepResult:
    """One step's answer. ``action`` is an int (discrete), an int64 vector of the ``k`` entries
    (multi-discrete and multi-binary; ``spec.action.to_env`` gives it the space's shape) or a float32
    vector (box)."""

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
    encoding = spec.obs_encoding
    if encoding.is_flat_box:
        array = np.asarray(obs)
        if array.dtype.kind not in "biuf":
            raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"obs has dtype {array.dtype}, expected real numbers (sent as float32)")
        return array.astype(np.float32, copy=False).ravel()
    try:
        return encoding.encode(obs)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise PolicyError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot encode obs for this model: {exc}") from None


def step_request(session_id: str, seq: int, obs: np.ndarray, episode_start: bool, deterministic: bool) -> pb.StepRequest:
    return pb.StepRequest(session_id=session_id, seq=seq, obs=obs.tolist(), episode_start=bool(episode_start),
                          deterministic=bool(deterministic))


def _floats(field: Any) -> np.ndarray | None:
    """A repeated float field as float32, None when empty (``field[:]`` first: numpy reads a list several times faster)."""
    values = field[:]
    return np.array(values, dtype=np.float32) if values else None


def check_step(response: pb.StepResponse) -> pb.StepResponse:
    """``response``, or its in-band error (StepStream) raised as a :class:`PolicyError`."""
    if response.HasField("error"):
        error = response.error
        raise PolicyError.from_code_number(error.code, error.message, error.expected_seq)
    return response


def step_result(response: pb.StepResponse, discrete: bool) -> StepResult:
    check_step(response)
    action: int | np.ndarray
    if response.multi_action:  # only a multi-discrete or multi-binary model fills it, with k >= 1 entries
        action = np.array(response.multi_action[:], dtype=np.int64)
    elif discrete:
        action = int(response.discrete_action)
    else:
        action = np.array(response.continuous_action[:], dtype=np.float32)
    return StepResult(
        action=action,
        seq=response.seq,
        model_version=response.model_version,
        q_values=_floats(response.q_values),
        logits=_floats(response.logits),
        mean=_floats(response.mean),
        log_std=_floats(response.log_std),
        value=float(response.value) if response.HasField("value") else None,
    )


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
