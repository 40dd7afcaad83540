"""Registered gymnasium environments that need memory (torch-free).

Importing this module registers ``rnnpolicy/MemoryGrid-v0``, ``rnnpolicy/TMaze-v0``,
``rnnpolicy/RepeatFirst-v0``, ``rnnpolicy/CartPoleNoVel-v0`` and ``rnnpolicy/PendulumNoVel-v0``.
"""

from __future__ import annotations

import gymnasium as gym

from rnnpolicy.envs.masked import MaskObservation
from rnnpolicy.envs.memory_grid import MemoryGridEnv
from rnnpolicy.envs.repeat_first import RepeatFirstEnv
from rnnpolicy.envs.tmaze import TMazeEnv

__all__ = ["make_env", "MaskObservation", "MemoryGridEnv", "RepeatFirstEnv", "TMazeEnv", "BUILTIN_ENV_IDS"]

_REGISTRATIONS = {
    "rnnpolicy/MemoryGrid-v0": dict(entry_point="rnnpolicy.envs.memory_grid:MemoryGridEnv"),
    "rnnpolicy/TMaze-v0": dict(entry_point="rnnpolicy.envs.tmaze:TMazeEnv"),
    "rnnpolicy/RepeatFirst-v0": dict(entry_point="rnnpolicy.envs.repeat_first:RepeatFirstEnv"),
    "rnnpolicy/CartPoleNoVel-v0": dict(
        entry_point="rnnpolicy.envs.masked:cartpole_no_velocity", max_episode_steps=500
    ),
    "rnnpolicy/PendulumNoVel-v0": dict(
        entry_point="rnnpolicy.envs.masked:pendulum_no_velocity", max_episode_steps=200
    ),
}
BUILTIN_ENV_IDS: tuple[str, ...] = tuple(_REGISTRATIONS)

for _env_id, _kwargs in _REGISTRATIONS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, **_kwargs)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` with the built-in ids registered; accepts ``module:EnvId`` ids.

    Raises ``ValueError`` naming the id when no registered or importable environment matches.
    """
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment {env_id!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ValueError(f"environment {env_id!r}: cannot import its module: {exc}") from None
