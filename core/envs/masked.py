"""Classic-control tasks with their velocities hidden, so that a policy must infer them."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv


class MaskObservation(gym.ObservationWrapper):
    """Keep only the observation entries at ``keep`` (indices into a flat ``Box``)."""

    def __init__(self, env: gym.Env, keep: Sequence[int]) -> None:
        super().__init__(env)
        box = env.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"MaskObservation needs a flat Box observation space, got {box}")
        self._keep = np.asarray(keep, dtype=np.int64)
        self.observation_space = spaces.Box(box.low[self._keep], box.high[self._keep], dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self._keep].astype(np.float32)


def cartpole_no_velocity(**kwargs) -> gym.Env:
    """CartPole observing cart position and pole angle only (velocities masked)."""
    return MaskObservation(CartPoleEnv(**kwargs), keep=(0, 2))


def pendulum_no_velocity(**kwargs) -> gym.Env:
    """Pendulum observing cos and sin of the angle only (angular velocity masked)."""
    return MaskObservation(PendulumEnv(**kwargs), keep=(0, 1))
