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


class AppendConstant(gym.ObservationWrapper):
    """A wrapper for ``--wrapper fake_envs:AppendConstant:value=2.0``: appends ``value`` to a flat Box observation."""

    def __init__(self, env, value=1.0):
        super().__init__(env)
        box = env.observation_space
        self.value = float(value)
        self.observation_space = spaces.Box(
            np.append(box.low, -np.inf).astype(np.float32), np.append(box.high, np.inf).astype(np.float32), dtype=np.float32
        )

    def observation(self, observation):
        return np.append(observation, self.value).astype(np.float32)


class TextToBox(gym.ObservationWrapper):
    """Makes FakeText-v0's unencodable text observation a one-number Box."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = spaces.Box(0.0, 10.0, (1,), np.float32)

    def observation(self, observation):
        return np.array([len(observation)], np.float32)


NOT_CALLABLE = 3


for _id, _cls in (("FakeText-v0", TextObsEnv), ("FakeDict-v0", DictObsEnv)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)
