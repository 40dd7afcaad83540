"""Registered gymnasium environments that need memory (torch-free).

Importing this module registers ``rnnpolicy/MemoryGrid-v0``, ``rnnpolicy/TMaze-v0``,
``rnnpolicy/RepeatFirst-v0``, ``rnnpolicy/CartPoleNoVel-v0``, ``rnnpolicy/PendulumNoVel-v0`` and
``rnnpolicy/SlowCartPoleNoVel-v0`` (CartPoleNoVel with 1 ms of CPU work per step, a stand-in for a
heavy simulator).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym

from rnnpolicy.envs.masked import MaskObservation
from rnnpolicy.envs.memory_grid import MemoryGridEnv
from rnnpolicy.envs.repeat_first import RepeatFirstEnv
from rnnpolicy.envs.tmaze import TMazeEnv
from rnnpolicy.envs.wrappers import apply_wrappers, parse_wrapper

__all__ = ["make_env", "MaskObservation", "MemoryGridEnv", "RepeatFirstEnv", "TMazeEnv", "BUILTIN_ENV_IDS", "parse_wrapper"]

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
    # CartPoleNoVel whose every step burns 1 ms of CPU: the test bed for --vector-env async and torchrun.
    "rnnpolicy/SlowCartPoleNoVel-v0": dict(
        entry_point="rnnpolicy.envs.step_cost:slow_cartpole_no_velocity", max_episode_steps=500
    ),
}
BUILTIN_ENV_IDS: tuple[str, ...] = tuple(_REGISTRATIONS)

for _env_id, _kwargs in _REGISTRATIONS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, **_kwargs)


def make_env(env_id: str, wrappers: Sequence[str] = (), **kwargs) -> gym.Env:
    """``gymnasium.make`` with the built-in ids registered; accepts ``module:EnvId`` ids.

    ``wrappers`` (``module:Callable[:key=value,...]`` each, see :mod:`rnnpolicy.envs.wrappers`)
    are applied in order. Raises ``ValueError`` naming the id when no registered or importable
    environment matches, or naming the wrapper that cannot be loaded or applied.
    """
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment {env_id!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ValueError(f"environment {env_id!r}: cannot import its module: {exc}") from None
    try:
        return apply_wrappers(env, wrappers)
    except ValueError:
        env.close()
        raise
