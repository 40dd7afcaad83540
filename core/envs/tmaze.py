"""T-maze (Bakker, 2002): a cue at the start of a corridor says which way to turn at its end."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FORWARD, LEFT, RIGHT = 0, 1, 2


class TMazeEnv(gym.Env):
    """Walk a corridor of ``corridor_length`` cells, then turn the way the first observation said.

    Observation (4 floats): ``[cue_left, cue_right, in_corridor, at_junction]``; the cue is
    shown only on the first step. Actions: 0 forward, 1 turn left, 2 turn right (turns do
    nothing inside the corridor). Reward +1 for the right turn at the junction, -0.1 for the
    wrong one (so reaching the junction pays even before the cue is remembered, as in
    Bakker's +4 / -0.1); the episode is truncated after ``2 * corridor_length + 10`` steps, and
    ``info["is_success"]`` comes with the end of every episode. A policy without memory turns
    the right way half the time.
    """

    metadata = {"render_modes": []}

    def __init__(self, corridor_length: int = 10) -> None:
        if corridor_length < 1:
            raise ValueError(f"corridor_length must be >= 1, got {corridor_length}")
        self.corridor_length = corridor_length
        self.observation_space = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self.max_steps = 2 * corridor_length + 10
        self._t = 0
        self._position = 0
        self._goal = LEFT

    def _obs(self, show_cue: bool) -> np.ndarray:
        obs = np.zeros(4, dtype=np.float32)
        if show_cue:
            obs[0 if self._goal == LEFT else 1] = 1.0
        obs[3 if self._position == self.corridor_length else 2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = 0
        self._t = 0
        self._goal = LEFT if self.np_random.random() < 0.5 else RIGHT
        return self._obs(show_cue=True), {}

    def step(self, action: int):
        action = int(action)
        if action not in (FORWARD, LEFT, RIGHT):
            raise ValueError(f"T-maze action must be 0, 1 or 2, got {action}")
        self._t += 1
        at_junction = self._position == self.corridor_length
        if not at_junction or action == FORWARD:
            if action == FORWARD and not at_junction:
                self._position += 1
            if self._t >= self.max_steps:
                return self._obs(show_cue=False), 0.0, False, True, {"is_success": False}
            return self._obs(show_cue=False), 0.0, False, False, {}
        success = action == self._goal
        return self._obs(show_cue=False), 1.0 if success else -0.1, True, False, {"is_success": success}
