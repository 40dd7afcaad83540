"""RepeatFirst: report after ``delay`` steps the symbol shown on the first step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class RepeatFirstEnv(gym.Env):
    """A symbol out of ``num_symbols`` is shown at step 0; at step ``delay`` the agent must name it.

    Observation (``num_symbols + 1`` floats): the symbol one-hot on step 0 (zeros after) and a
    query flag that is 1 on the step where the answer counts. Actions: the symbols. Reward +1
    for the right answer; the episode ends after the query; ``info["is_success"]`` tells. A
    policy without memory answers right with probability ``1 / num_symbols``.
    """

    metadata = {"render_modes": []}

    def __init__(self, num_symbols: int = 4, delay: int = 8) -> None:
        if num_symbols < 2 or delay < 1:
            raise ValueError(f"need num_symbols >= 2 and delay >= 1, got {num_symbols} and {delay}")
        self.num_symbols = num_symbols
        self.delay = delay
        self.observation_space = spaces.Box(0.0, 1.0, shape=(num_symbols + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(num_symbols)
        self._symbol = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_symbols + 1, dtype=np.float32)
        if self._t == 0:
            obs[self._symbol] = 1.0
        if self._t == self.delay:
            obs[-1] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._symbol = int(self.np_random.integers(self.num_symbols))
        self._t = 0
        return self._obs(), {}

    def step(self, action: int):
        action = int(action)
        if not 0 <= action < self.num_symbols:
            raise ValueError(f"RepeatFirst action must be in [0, {self.num_symbols}), got {action}")
        if self._t < self.delay:
            self._t += 1
            return self._obs(), 0.0, False, False, {}
        success = action == self._symbol
        return self._obs(), float(success), True, False, {"is_success": success}
