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


class RecallPairEnv(gym.Env):
    """MultiDiscrete([3, 2]) actions: repeat at step 2 the pair of cues shown at step 1 (0.5 reward per entry right)."""

    observation_space = spaces.Box(0, 1, (3,), np.float32)
    action_space = spaces.MultiDiscrete([3, 2])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue = (int(self.np_random.integers(3)), int(self.np_random.integers(2)))
        self._t = 0
        return np.array([self._cue[0] / 2, self._cue[1], 1.0], np.float32), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action)), action
        self._t += 1
        if self._t < 2:
            return np.zeros(3, np.float32), 0.0, False, False, {}
        reward = 0.5 * (int(action[0]) == self._cue[0]) + 0.5 * (int(action[1]) == self._cue[1])
        return np.zeros(3, np.float32), reward, True, False, {"is_success": reward == 1.0}


class CopyBitsEnv(gym.Env):
    """MultiBinary((2, 2)) actions: copy the four bits shown; one step per episode."""

    observation_space = spaces.MultiBinary(4)
    action_space = spaces.MultiBinary((2, 2))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._bits = self.np_random.integers(0, 2, 4).astype(np.int8)
        return self._bits.copy(), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action)), action
        reward = float(np.mean(np.asarray(action).ravel() == self._bits))
        return self._bits.copy(), reward, True, False, {}


class ImageCueEnv(gym.Env):
    """uint8 7x7x3 images: the first shows a cue in its centre pixel's red channel; act on it at step 2."""

    observation_space = spaces.Box(0, 255, (7, 7, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        image = np.zeros((7, 7, 3), np.uint8)
        image[3, 3, 0] = 255 * self._cue
        image[0, 0, 1] = 255  # marks the first step
        return image, {}

    def step(self, action):
        self._t += 1
        blank = np.zeros((7, 7, 3), np.uint8)
        if self._t < 2:
            return blank, 0.0, False, False, {}
        reward = float(int(action) == self._cue)
        return blank, reward, True, False, {"is_success": bool(reward)}


class CodedImageEnv(ImageCueEnv):
    """ImageCueEnv whose images hold small codes (10 where it shows 255), as MiniGrid's, in the same uint8 Box(0, 255)."""

    def reset(self, *, seed=None, options=None):
        image, info = super().reset(seed=seed, options=options)
        return np.where(image > 0, 10, 0).astype(np.uint8), info


class StartColumnEnv(gym.Env):
    """MiniGrid Memory's bookkeeping in one step: the agent starts in column 1-3 (``agent_pos[0]``, shown
    one-hot) facing east (``agent_dir`` 0); action 0 succeeds, action 2 turns west (``agent_dir`` 2), which
    brings the cue at (1, height // 2 - 1) into view (``agent_sees``), and fails."""

    observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(3)
    height = 7

    def agent_sees(self, x, y):
        return (x, y) == (1, self.height // 2 - 1) and self.agent_dir == 2

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.agent_pos = np.array([int(self.np_random.integers(1, 4)), 3])
        self.agent_dir = 0
        return np.eye(3, dtype=np.float32)[self.agent_pos[0] - 1], {}

    def step(self, action):
        if int(action) == 2:
            self.agent_dir = 2
        return np.zeros(3, np.float32), float(int(action) == 0), True, False, {}


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


for _id, _cls in (("FakeText-v0", TextObsEnv), ("FakeDict-v0", DictObsEnv), ("FakeRecallPair-v0", RecallPairEnv),
                  ("FakeCopyBits-v0", CopyBitsEnv), ("FakeImageCue-v0", ImageCueEnv), ("FakeCodedImage-v0", CodedImageEnv),
                  ("FakeStartColumn-v0", StartColumnEnv)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)
