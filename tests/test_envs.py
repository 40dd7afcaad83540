import numpy as np
import pytest

from rnnpolicy.envs import BUILTIN_ENV_IDS, check_fits, make_env


@pytest.mark.parametrize("env_id", BUILTIN_ENV_IDS)
def test_builtin_envs_pass_gymnasium_checks(env_id):
    from gymnasium.utils.env_checker import check_env

    env = make_env(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def _run(env_id, policy, seed=0, **kwargs):
    env = make_env(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    first = obs
    total, t = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(first, obs, t))
        total += reward
        t += 1
        if terminated or truncated:
            return total, info, t


def test_tmaze_cue_is_only_shown_first_and_the_right_turn_succeeds():
    env = make_env("rnnpolicy/TMaze-v0", corridor_length=3)
    obs, _ = env.reset(seed=1)
    assert obs[:2].sum() == 1
    obs, *_ = env.step(0)
    assert obs[:2].sum() == 0
    remember = lambda first, obs, t: 0 if obs[3] == 0 else (1 if first[0] == 1 else 2)
    ret, info, steps = _run("rnnpolicy/TMaze-v0", remember, corridor_length=10)
    assert (ret, info["is_success"], steps) == (1.0, True, 11)
    wrong = lambda first, obs, t: 0 if obs[3] == 0 else (2 if first[0] == 1 else 1)
    ret, info, _ = _run("rnnpolicy/TMaze-v0", wrong)
    assert (ret, info["is_success"]) == (-0.1, False)


def test_repeat_first_rewards_the_remembered_symbol():
    recall = lambda first, obs, t: int(np.argmax(first[:-1]))
    ret, info, steps = _run("rnnpolicy/RepeatFirst-v0", recall)
    assert (ret, info["is_success"], steps) == (1.0, True, 9)


def test_memory_grid_goal_is_shown_once_and_reachable():
    env = make_env("rnnpolicy/MemoryGrid-v0")
    obs, _ = env.reset(seed=3)
    goal = int(np.argmax(obs[:4]))
    assert obs[:4].sum() == 1
    # corners: 0 (0,0) up-left, 1 (last,0) up-right, 2 (0,last) down-left, 3 (last,last) down-right
    vertical = 0 if goal in (0, 1) else 1
    horizontal = 2 if goal in (0, 2) else 3
    for _ in range(2):  # held in the middle while waiting: position carries no cue
        obs, *_ = env.step(vertical)
        assert obs[:4].sum() == 0 and tuple(obs[4:6]) == (0.0, 0.0)
    obs, *_ = env.step(vertical)
    total, success = 0.0, False
    for action in [vertical, horizontal, horizontal]:
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        if terminated:
            success = info["is_success"]
            break
    assert success and terminated


def test_masked_classic_control_hides_velocities():
    assert make_env("rnnpolicy/CartPoleNoVel-v0").observation_space.shape == (2,)
    pendulum = make_env("rnnpolicy/PendulumNoVel-v0")
    assert pendulum.observation_space.shape == (2,)
    assert pendulum.spec.max_episode_steps == 200


def test_unknown_ids_get_a_clear_error():
    with pytest.raises(ValueError, match="unknown environment 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="cannot import its module"):
        make_env("no_such_module_xyz:Thing-v0")
    # a third-party id given without the module that registers it: the error says how to name it
    with pytest.raises(ValueError, match=r"unknown environment 'MiniGrid-MemoryS11-v0': .* named module:EnvId"):
        make_env("MiniGrid-MemoryS11-v0")
    with pytest.raises(ValueError, match=r"unknown environment 'rnnpolicy/Tmaze-v0'") as typo:
        make_env("rnnpolicy/Tmaze-v0")  # a typo inside a known namespace: gymnasium's suggestion, no module hint
    assert "module:EnvId" not in str(typo.value)


def test_check_fits_names_the_observations_or_actions_that_differ():
    from rnnpolicy.encoding import ObsEncoding
    from rnnpolicy.spec import ActionSpec, PolicySpec

    tmaze = make_env("rnnpolicy/TMaze-v0")
    spec = PolicySpec(kind="policy", cell="lstm", num_layers=1, hidden_size=8,
                      obs_encoding=ObsEncoding.from_space(tmaze.observation_space),
                      action=ActionSpec.from_space(tmaze.action_space))
    check_fits(spec, tmaze, "rnnpolicy/TMaze-v0")
    # CartPole's observation has T-maze's 4 values, but 2 actions where the policy chooses among 3
    with pytest.raises(ValueError, match=r"environment 'CartPole-v1' acts in Discrete\(2\), but the policy chooses "
                                         r"3 discrete actions: use the environment and wrappers it was trained with"):
        check_fits(spec, make_env("CartPole-v1"), "CartPole-v1")
    with pytest.raises(ValueError, match=r"environment 'rnnpolicy/MemoryGrid-v0' with wrappers \['m:W'\] encodes to 15 "
                                         r"observation values, but the policy takes 4"):
        check_fits(spec, make_env("rnnpolicy/MemoryGrid-v0"), "rnnpolicy/MemoryGrid-v0", ["m:W"])
    pendulum = make_env("Pendulum-v1")  # 3 observation values: a policy of its own size, box actions
    box = PolicySpec(kind="policy", cell="gru", num_layers=1, hidden_size=8,
                     obs_encoding=ObsEncoding.flat(3), action=ActionSpec("box", shape=(1,), low=(-1.0,), high=(1.0,)))
    with pytest.raises(ValueError, match=r"acts in Box\(-2.0, 2.0, \(1,\), float32\), but the policy chooses a box "
                                         r"action of shape \(1,\) in \[-1, 1\]"):
        check_fits(box, pendulum, "Pendulum-v1")


def test_action_specs_describe_what_tells_them_apart():
    from gymnasium import spaces

    from rnnpolicy.spec import ActionSpec

    assert ActionSpec.from_space(spaces.MultiDiscrete([[2, 3], [4, 5]])).describe() == (
        "a multi_discrete action of shape (2, 2) with choices [2, 3, 4, 5]")
    assert ActionSpec.from_space(spaces.MultiDiscrete([2, 3, 4, 5])).describe() == (
        "a multi_discrete action of shape (4,) with choices [2, 3, 4, 5]")
    box = spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 2.0], np.float32))
    assert ActionSpec.from_space(box).describe() == "a box action of shape (2,) in low [-1.0, 0.0], high [1.0, 2.0]"
    with pytest.raises(ValueError, match=r"discrete action spaces must start at 0, got start=1"):
        ActionSpec.from_space(spaces.Discrete(3, start=1))


def test_module_colon_id_imports_the_registering_module():
    env = make_env("rnnpolicy.envs:rnnpolicy/TMaze-v0")
    assert env.action_space.n == 3


def test_tmaze_times_out_as_a_failure():
    ret, info, steps = _run("rnnpolicy/TMaze-v0", lambda first, obs, t: 0, corridor_length=4)
    assert (ret, info["is_success"], steps) == (0.0, False, 18)
