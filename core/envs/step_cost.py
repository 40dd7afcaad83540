"""An environment whose every step costs CPU time, standing in for a heavy simulator."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym


class StepCost(gym.Wrapper):
    """Busy-wait ``seconds`` of CPU time in every ``step`` (a simulator's physics, not an idle sleep)."""

    def __init__(self, env: gym.Env, seconds: float = 0.001) -> None:
        if seconds < 0:
            raise ValueError(f"StepCost seconds must be >= 0, got {seconds}")
        super().__init__(env)
        self.seconds = seconds

    def step(self, action: Any):
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        return self.env.step(action)


def slow_cartpole_no_velocity(step_cost_s: float = 0.001, **kwargs) -> gym.Env:
    """``rnnpolicy/CartPoleNoVel-v0`` whose steps each burn ``step_cost_s`` of CPU (default 1 ms)."""
    from rnnpolicy.envs.masked import cartpole_no_velocity

    return StepCost(cartpole_no_velocity(**kwargs), step_cost_s)
