"""Registered gymnasium environments that need memory (torch-free).

Importing this module registers ``rnnpolicy/MemoryGrid-v0``, ``rnnpolicy/TMaze-v0``,
``rnnpolicy/RepeatFirst-v0``, ``rnnpolicy/CartPoleNoVel-v0``, ``rnnpolicy/PendulumNoVel-v0`` and
``rnnpolicy/SlowCartPoleNoVel-v0`` (CartPoleNoVel with 1 ms of CPU work per step, a stand-in for a
heavy simulator).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.envs.masked import MaskObservation
from rnnpolicy.envs.memory_grid import MemoryGridEnv
from rnnpolicy.envs.repeat_first import RepeatFirstEnv
from rnnpolicy.envs.tmaze import TMazeEnv
from rnnpolicy.envs.wrappers import apply_wrappers, parse_wrapper
from rnnpolicy.spec import ActionSpec, PolicySpec

__all__ = ["make_env", "check_fits", "MaskObservation", "MemoryGridEnv", "RepeatFirstEnv", "TMazeEnv", "BUILTIN_ENV_IDS", "parse_wrapper"]

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
        hint = ""
        unregistered = isinstance(exc, gym.error.NamespaceNotFound) or (isinstance(exc, gym.error.NameNotFound) and "/" not in env_id)
        if ":" not in env_id and unregistered:
            hint = " (an id a package registers on import is named module:EnvId, e.g. minigrid:MiniGrid-MemoryS11-v0)"
        raise ValueError(f"unknown environment {env_id!r}: {exc}{hint}") from None
    except ModuleNotFoundError as exc:
        raise ValueError(f"environment {env_id!r}: cannot import its module: {exc}") from None
    try:
        return apply_wrappers(env, wrappers)
    except ValueError:
        env.close()
        raise


def check_fits(spec: PolicySpec, env: gym.Env, env_id: str, wrappers: Sequence[str] = ()) -> None:
    """``ValueError`` unless ``env`` (``env_id`` with ``wrappers``) gives the observations ``spec``'s policy takes
    and acts in the action space it chooses from."""
    where = f"environment {env_id!r}" + (f" with wrappers {list(wrappers)}" if wrappers else "")
    features = ObsEncoding.from_space(env.observation_space).flat_dim
    if features != spec.obs_dim:
        raise ValueError(
            f"{where} encodes to {features} observation values, but the policy takes {spec.obs_dim}: "
            "use the environment and wrappers it was trained with"
        )
    try:
        action = ActionSpec.from_space(env.action_space)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}, but the policy chooses {spec.action.describe()}") from None
    if action != spec.action:
        raise ValueError(
            f"{where} acts in {env.action_space}, but the policy chooses {spec.action.describe()}: "
            "use the environment and wrappers it was trained with"
        )
