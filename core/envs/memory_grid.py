"""The tutorial's grid world made partially observable: the goal is shown only at the start."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# up, down, left, right as (dx, dy)
_MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))


class MemoryGridEnv(gym.Env):
    """A ``size`` x ``size`` room; the agent starts in the middle, the goal is one of the four corners.

    Observation (15 floats): the goal corner one-hot (shown on the first step only, zeros
    after), the agent's position scaled to [-1, 1], and the 3x3 neighbourhood's walls (1 for
    a wall). Actions: up, down, left, right. For the first ``wait_steps`` steps the agent is
    held in the middle (its actions do nothing), so that it cannot turn the cue into a
    position and must remember it. Entering the goal corner gives +1 and ends the episode
    with success; entering another corner ends it with 0; each step costs 0.01; the episode
    is truncated after ``4 * size + wait_steps`` steps. Without memory a policy finds the
    goal a quarter of the time.
    """

    metadata = {"render_modes": []}

    def __init__(self, size: int = 5, wait_steps: int = 2) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"grid size must be an odd number >= 3, got {size}")
        if wait_steps < 0:
            raise ValueError(f"wait_steps must be >= 0, got {wait_steps}")
        self.size = size
        self.wait_steps = wait_steps
        self.max_steps = 4 * size + wait_steps
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(15,), dtype=np.float32)
        self.action_space = spaces.Discrete(4)
        last = size - 1
        self._corners = ((0, 0), (last, 0), (0, last), (last, last))
        self._goal = 0
        self._pos = (size // 2, size // 2)
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(15, dtype=np.float32)
        if self._t == 0:
            obs[self._goal] = 1.0
        scale = (self.size - 1) / 2
        obs[4] = self._pos[0] / scale - 1.0
        obs[5] = self._pos[1] / scale - 1.0
        x, y = self._pos
        cells = [(x + dx, y + dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        obs[6:] = [0.0 if 0 <= cx < self.size and 0 <= cy < self.size else 1.0 for cx, cy in cells]
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._goal = int(self.np_random.integers(4))
        self._pos = (self.size // 2, self.size // 2)
        self._t = 0
        return self._obs(), {}

    def step(self, action: int):
        action = int(action)
        if not 0 <= action < 4:
            raise ValueError(f"MemoryGrid action must be in [0, 4), got {action}")
        dx, dy = _MOVES[action] if self._t >= self.wait_steps else (0, 0)
        x = min(max(self._pos[0] + dx, 0), self.size - 1)
        y = min(max(self._pos[1] + dy, 0), self.size - 1)
        self._pos = (x, y)
        self._t += 1
        obs = self._obs()
        if self._pos in self._corners:
            success = self._pos == self._corners[self._goal]
            return obs, 1.0 if success else 0.0, True, False, {"is_success": success}
        truncated = self._t >= self.max_steps
        info = {"is_success": False} if truncated else {}
        return obs, -0.01, False, truncated, info
