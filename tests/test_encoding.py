import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from rnnpolicy import ObsEncoding


def test_box_is_flattened():
    enc = ObsEncoding.from_space(spaces.Box(0, 1, shape=(2, 3)))
    obs = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert enc.flat_dim == 6
    np.testing.assert_array_equal(enc.encode(obs), np.arange(6))


def test_discrete_parts_are_one_hot_with_start_offset():
    enc = ObsEncoding.from_space(spaces.Discrete(3, start=-1))
    np.testing.assert_array_equal(enc.encode(np.int64(0)), [0, 1, 0])
    multi = ObsEncoding.from_space(spaces.MultiDiscrete([2, 3]))
    np.testing.assert_array_equal(multi.encode(np.array([1, 2])), [0, 1, 0, 0, 1])


def test_nested_dict_and_tuple_spaces_in_order():
    space = spaces.Dict(
        {"pos": spaces.Box(-1, 1, (2,)), "key": spaces.Tuple((spaces.Discrete(2), spaces.MultiBinary(2)))}
    )
    enc = ObsEncoding.from_space(space)
    assert enc.flat_dim == 2 + 2 + 4
    obs = {"pos": np.array([0.5, -0.5], np.float32), "key": (1, np.array([1, 0]))}
    # gymnasium sorts Dict keys: "key" comes before "pos"
    np.testing.assert_array_equal(enc.encode(obs), [0, 1, 0, 1, 1, 0, 0.5, -0.5])
    again = ObsEncoding.from_dict(enc.to_dict())
    assert again == enc


def test_batch_encoding_matches_single_encoding():
    space = spaces.Dict({"a": spaces.Discrete(4), "b": spaces.Box(0, 1, (3,))})
    space.seed(0)
    samples = [space.sample() for _ in range(5)]
    enc = ObsEncoding.from_space(space)
    batch = {"a": np.array([s["a"] for s in samples]), "b": np.stack([s["b"] for s in samples])}
    np.testing.assert_array_equal(enc.encode_batch(batch), np.stack([enc.encode(s) for s in samples]))


def test_unsupported_space_is_named():
    with pytest.raises(ValueError, match="cannot encode observation space Text"):
        ObsEncoding.from_space(spaces.Text(5))
    nested = spaces.Dict({"image": spaces.Box(0, 1, (2,)), "goal": spaces.Dict({"mission": spaces.Text(5)})})
    with pytest.raises(ValueError, match=r"cannot encode observation space Text\(.*\) \(the observation's entry 'goal/mission'\)"):
        ObsEncoding.from_space(nested)


def test_out_of_range_discrete_value_is_refused():
    enc = ObsEncoding.from_space(spaces.Discrete(3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\], got \[5\]"):
        enc.encode(np.int64(5))


def test_vector_env_observations_encode(tmp_path):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("FrozenLake-v1") for _ in range(3)])
    obs, _ = envs.reset(seed=0)
    enc = ObsEncoding.from_space(envs.single_observation_space)
    assert enc.encode_batch(obs).shape == (3, 16)
