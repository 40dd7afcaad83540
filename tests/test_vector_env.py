"""``--vector-env``: the async workers step the same environments as the in-process ones; the slow test env costs CPU."""

import time

import numpy as np
import pytest

from rnnpolicy.envs import make_env
from rnnpolicy.train.envs import make_vector_env


def test_async_workers_give_the_same_steps_as_sync():
    outcomes = {}
    for mode in ("sync", "async"):
        envs = make_vector_env("rnnpolicy/CartPoleNoVel-v0", 2, seed=3, wrappers=("fake_envs:AppendConstant:value=4",), mode=mode)
        try:
            obs, _ = envs.reset(seed=3)
            steps = [obs]
            for _ in range(30):  # long enough for an episode to end and reset in the same step
                obs, reward, terminated, truncated, info = envs.step(np.array([1, 1]))
                steps.append(obs)
            outcomes[mode] = np.stack(steps)
        finally:
            envs.close()
    np.testing.assert_array_equal(outcomes["sync"], outcomes["async"])
    assert (outcomes["async"][..., -1] == 4).all()  # the wrapper ran inside the workers


def test_unknown_vector_mode_is_refused():
    with pytest.raises(ValueError, match="vector_env must be one of \\('sync', 'async'\\), got 'threads'"):
        make_vector_env("rnnpolicy/CartPoleNoVel-v0", 1, seed=0, mode="threads")


def test_slow_cartpole_burns_a_millisecond_of_cpu_per_step():
    env = make_env("rnnpolicy/SlowCartPoleNoVel-v0")
    env.reset(seed=0)
    start = time.thread_time()
    for _ in range(10):
        env.step(0)
    assert time.thread_time() - start >= 0.010
    assert env.observation_space.shape == (2,)
