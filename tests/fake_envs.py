"""A third-party-style module that registers environments on import (used as ``fake_envs:Id``)."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TextObsEnv(gym.Env):
    """An environment whose observations no policy here can encode."""

    observation_space = spaces.Text(8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "hello", {}

    def step(self, action):
        return "hello", 0.0, True, False, {}


class DictObsEnv(gym.Env):
    """Dict observations with a discrete part: the encoding must one-hot it."""

    observation_space = spaces.Dict({"cue": spaces.Discrete(2), "pos": spaces.Box(0, 1, (1,), np.float32)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return {"cue": self._cue, "pos": np.zeros(1, np.float32)}, {}

    def step(self, action):
        self._t += 1
        done = self._t >= 3
        reward = float(done and int(action) == self._cue)
        return {"cue": 0, "pos": np.full(1, self._t / 3, np.float32)}, reward, done, False, {"is_success": bool(reward)} if done else {}


for _id, _cls in (("FakeText-v0", TextObsEnv), ("FakeDict-v0", DictObsEnv)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)
