import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from rnnpolicy.cli import main
from rnnpolicy.train import ppo
from rnnpolicy.train.api import resolve, seed_everything, train
from rnnpolicy.train.checkpoint import load_checkpoint
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.envs import make_vector_env
from rnnpolicy.train.evaluate import evaluate, evaluate_model
from rnnpolicy.train.episode_carry import EpisodeCarry
from rnnpolicy.train.models import RecurrentState, initial_state
from rnnpolicy.train.normalize import RunningMeanStd
from rnnpolicy.train.periodic_eval import TrainingEvaluator
from rnnpolicy.train.runlog import EpisodeTracker, RunLog
from rnnpolicy.train.sequences import split_sequences, with_prefixes


def test_gae_matches_a_hand_computed_case_with_truncation_and_termination():
    gamma, lam = 0.9, 0.5
    rewards = np.ones((3, 2))
    values = np.full((3, 2), 0.5)
    terminated = np.array([[0, 0], [0, 1], [0, 0]], dtype=bool)
    truncated = np.array([[0, 0], [1, 0], [0, 0]], dtype=bool)
    # Env 0 is truncated at t=1 with V(final_obs) = 2; env 1 terminates there (its final value is ignored).
    final_values = np.array([[0.0, 0.0], [2.0, 7.0], [0.0, 0.0]])
    advantages, returns = ppo.compute_gae(rewards, values, terminated, truncated, final_values, np.array([0.5, 0.5]), gamma, lam)
    a2 = 1 + gamma * 0.5 - 0.5  # 0.95, bootstrapped from last_value
    env0 = [a2 + gamma * lam * (1 + gamma * 2.0 - 0.5), 1 + gamma * 2.0 - 0.5, a2]
    env1 = [a2 + gamma * lam * (1 - 0.5), 1 - 0.5, a2]
    np.testing.assert_allclose(advantages, np.array([env0, env1]).T)
    np.testing.assert_allclose(returns, advantages + values)


def test_split_sequences_cuts_at_chunk_and_episode_starts_and_pads():
    episode_start = np.zeros((8, 2), dtype=bool)
    episode_start[2, 0] = True
    episode_start[5, 1] = True
    seqs = split_sequences(episode_start, seq_len=4)
    # env 0: t 0-1, 2-3, 4-7; env 1: t 0-3, 4, 5-7
    np.testing.assert_array_equal(seqs.lengths, [2, 2, 4, 4, 1, 3])
    np.testing.assert_array_equal(seqs.chunk, [0, 0, 2, 1, 3, 3])
    first_steps = [(t, b) for t, b in [(0, 0), (2, 0), (4, 0), (0, 1), (4, 1), (5, 1)]]
    np.testing.assert_array_equal(seqs.index[0], [t * 2 + b for t, b in first_steps])
    np.testing.assert_array_equal(seqs.mask.sum(0), seqs.lengths)
    np.testing.assert_array_equal(seqs.index[:3, 5], [5 * 2 + 1, 6 * 2 + 1, 7 * 2 + 1])
    small = seqs.select(np.array([0, 4]))
    assert small.index.shape == (2, 2) and small.mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match="seq_len must divide the rollout's 8 steps, got 3"):
        split_sequences(episode_start, seq_len=3)


def test_with_prefixes_puts_earlier_steps_in_front_as_inputs_only():
    episode_start = np.zeros((4, 2), dtype=bool)
    episode_start[0] = True
    episode_start[2, 0] = True
    seqs = split_sequences(episode_start, seq_len=4)  # env 0: t 0-1, 2-3; env 1: t 0-3 (chunks 0 and 1)
    # Env 1's episode had 3 earlier steps, stored at flat rows 8-10, begun from stored state 2.
    out = with_prefixes(seqs, rows=np.array([2]), first=np.array([8]), lengths=np.array([3]), chunk=np.array([2]))
    np.testing.assert_array_equal(out.lengths, [2, 2, 7])
    np.testing.assert_array_equal(out.index[:, 2], [8, 9, 10, 1, 3, 5, 7])
    np.testing.assert_array_equal(out.mask[:, 2], [False, False, False, True, True, True, True])
    np.testing.assert_array_equal(out.mask[:, 0], [True, True, False, False, False, False, False])
    np.testing.assert_array_equal(out.index[:2, 0], seqs.index[:2, 0])
    np.testing.assert_array_equal(out.chunk, [0, 0, 2])


def _rollout(cell="lstm", shared_core=True, env="rnnpolicy/CartPoleNoVel-v0"):
    torch.manual_seed(0)
    config = TrainConfig(algo="ppo", env=env, out="unused", hidden_size=16, cell=cell)
    algo = ppo.Config(num_envs=3, rollout_steps=48, seq_len=16, num_minibatches=2, shared_core=shared_core)
    envs = make_vector_env(env, algo.num_envs, seed=0)
    spec, model = ppo._build(config, algo, envs, None)
    obs, _ = envs.reset(seed=0)
    state = initial_state(spec, algo.num_envs)
    next_obs = torch.as_tensor(spec.obs_encoding.encode_batch(obs))
    rollout, *_ = ppo._collect(model, envs, algo, EpisodeTracker(algo.num_envs), next_obs, torch.ones(algo.num_envs), state)
    return model, rollout, algo


@pytest.mark.parametrize("cell,shared_core", [("lstm", True), ("lstm", False), ("gru", True), ("lmu", False)])
def test_padded_sequence_pass_equals_the_per_step_loop(cell, shared_core):
    model, rollout, algo = _rollout(cell, shared_core)
    steps, envs = algo.rollout_steps, algo.num_envs
    starts = rollout.episode_start.view(steps, envs)
    assert starts[1:].sum() > 0, "the rollout should contain episode starts inside chunks"
    chunk0 = type(rollout.chunk_states)(*(s[:, :envs] if s is not None else None for s in rollout.chunk_states))
    with torch.no_grad():
        # The model's per-step path (episode starts inside the sequence) over the whole rollout.
        params, log_std, values, _ = model(rollout.obs.view(steps, envs, -1), chunk0, starts)
        step_logprobs = torch.log_softmax(params, -1).gather(-1, rollout.actions.view(steps, envs, 1)).squeeze(-1)
        logprob, _, value, index = ppo.evaluate_sequences(model, rollout, rollout.sequences)
    mask = torch.as_tensor(rollout.sequences.mask)
    torch.testing.assert_close(logprob[mask], step_logprobs.flatten()[index][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value[mask], values.flatten()[index][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logprob[mask], rollout.logprobs[index][mask], atol=1e-5, rtol=1e-5)
    assert int(mask.sum()) == steps * envs


def test_whole_episode_bptt_replays_each_unfinished_episode_from_its_start():
    torch.manual_seed(0)
    env, T, B = "rnnpolicy/CartPoleNoVel-v0", 8, 3  # random CartPole episodes last 10-40 steps: most span rollouts
    config = TrainConfig(algo="ppo", env=env, out="unused", hidden_size=16, cell="lstm")
    algo = ppo.Config(num_envs=B, rollout_steps=T, seq_len=0, num_minibatches=1, episode_bptt=True)
    envs = make_vector_env(env, B, seed=0)
    spec, model = ppo._build(config, algo, envs, None)
    raw, _ = envs.reset(seed=0)
    next_obs, start, state = torch.as_tensor(spec.obs_encoding.encode_batch(raw)), torch.ones(B), initial_state(spec, B)
    carry, tracker, rollouts = EpisodeCarry(B, algo.episode_bptt_max), EpisodeTracker(B), []
    for _ in range(4):
        rollout, next_obs, start, state = ppo._collect(model, envs, algo, tracker, next_obs, start, state, carry)
        rollouts.append(rollout)
    last = rollouts[-1]
    assert (last.sequences.lengths > last.sequences.mask.sum(0)).any(), "some episode should have begun in an earlier rollout"
    with torch.no_grad():
        for p in model.parameters():  # the weights an update has changed since the steps were collected
            p.add_(0.1 * torch.randn_like(p))
        # The reference: every environment's 4 * T steps from the first, one model pass with the new weights.
        steps = lambda r, x: x[: T * B].view(T, B, *x.shape[1:])  # noqa: E731
        obs = torch.cat([steps(r, r.obs) for r in rollouts])  # (4T, B, F)
        starts = torch.cat([steps(r, r.episode_start) for r in rollouts])  # (4T, B)
        params, _, values, _ = model(obs, initial_state(spec, B), starts)
        logprobs = torch.log_softmax(params, -1).gather(-1, torch.cat([steps(r, r.actions) for r in rollouts]).unsqueeze(-1))
        reference = logprobs.squeeze(-1)[-T:].flatten()  # (T * B,) the last rollout's steps, time-major
        logprob, _, value, index = ppo.evaluate_sequences(model, last, last.sequences)
        mask = torch.as_tensor(last.sequences.mask)
        torch.testing.assert_close(logprob[mask], reference[index[mask]], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value[mask], values[-T:].flatten()[index[mask]], atol=1e-5, rtol=1e-5)
        assert int(mask.sum()) == T * B
        # Without the replay the continuing episodes start from their stored (old-weight) states instead.
        plain = dataclasses.replace(last, sequences=split_sequences(steps(last, last.episode_start).numpy() > 0, T))
        plain_logprob, *_, plain_index = ppo.evaluate_sequences(model, plain, plain.sequences)
        plain_mask = torch.as_tensor(plain.sequences.mask)
        assert not torch.allclose(plain_logprob[plain_mask], reference[plain_index[plain_mask]], atol=1e-4)
    envs.close()


def test_episode_carry_keeps_the_unfinished_episode_up_to_its_cap():
    carry = EpisodeCarry(num_envs=2, max_steps=5)
    state = lambda v: RecurrentState(torch.full((1, 2, 1), float(v)), None)  # noqa: E731
    obs = torch.arange(8.0).view(4, 2, 1)  # (T, B, F): step t of env b holds 2t + b
    starts = np.zeros((4, 2), dtype=bool)
    starts[0] = True  # both begin an episode
    starts[2, 1] = True  # env 1 begins another at t=2
    carry.extend(obs, starts, [state(t) for t in range(4)], next_start=np.array([False, False]))
    first = carry.prefixes()
    np.testing.assert_array_equal(first.envs, [0, 1])
    np.testing.assert_array_equal(first.lengths, [4, 2])
    np.testing.assert_array_equal(first.offsets, [0, 4])
    assert first.obs.flatten().tolist() == [0, 2, 4, 6, 5, 7]
    assert first.episode_start.tolist() == [1, 0, 0, 0, 1, 0]  # both replays begin at their episode's first step
    carry.extend(obs + 100, np.zeros((4, 2), dtype=bool), [state(10 + t) for t in range(4)], next_start=np.array([False, True]))
    second = carry.prefixes()
    np.testing.assert_array_equal(second.envs, [0])  # env 1's episode ended with the rollout
    assert second.obs.flatten().tolist() == [6, 100, 102, 104, 106]  # the last 5 of its 8 steps
    assert second.episode_start.tolist() == [0, 0, 0, 0, 0]  # cut: it starts from the state step 3 began from
    assert second.state.h.flatten().tolist() == [3.0]
    with pytest.raises(ValueError, match="max_steps must be >= 1, got 0"):
        EpisodeCarry(1, 0)


def test_whole_episode_bptt_needs_whole_rollouts():
    with pytest.raises(ValueError, match="needs seq_len 0 .*got seq_len=16"):
        ppo.Config(rollout_steps=64, seq_len=16, episode_bptt=True)


def test_build_sets_the_forget_gate_bias_of_every_core_and_the_initial_log_std():
    config = TrainConfig(algo="ppo", env="rnnpolicy/PendulumNoVel-v0", out="unused", hidden_size=8, cell="lstm")
    algo = ppo.Config(forget_bias=1.0, init_log_std=-0.5, shared_core=False)
    envs = make_vector_env(config.env, 1, seed=0)
    _, model = ppo._build(config, algo, envs, None)
    envs.close()
    for core in (model.actor_core, model.critic_core):
        forget = core.rnn.bias_ih_l0[8:16] + core.rnn.bias_hh_l0[8:16]  # gates: input, forget, cell, output
        torch.testing.assert_close(forget, torch.ones(8))
    torch.testing.assert_close(model.log_std.detach(), torch.tensor([-0.5]))


def test_running_mean_std_matches_numpy():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 2))
    rms = RunningMeanStd(2, epsilon=0.0)
    rms.count = 0.0
    rms.mean[:] = 0.0
    for batch in np.array_split(data, 7):
        rms.update(batch)
    np.testing.assert_allclose(rms.mean, data.mean(0))
    np.testing.assert_allclose(rms.var, data.var(0))


def _learn(tmp_path, env, seed=3, total_steps=512, evaluation=None, **algo):
    config, algo_config = resolve(
        TrainConfig(algo="ppo", env=env, out=str(tmp_path), total_steps=total_steps, hidden_size=16, seed=seed, progress=False,
                    **(evaluation or {"eval_every": 0})),
        dict(num_envs=4, rollout_steps=32, seq_len=16, num_minibatches=2, update_epochs=2, **algo),
    )
    seed_everything(seed)
    run = RunLog(tmp_path, total_steps, progress=False)
    now = [0.0]

    def slow_evaluate(*args, **kwargs):
        now[0] += 1000.0  # every evaluation seems to take 1000 s, and training no time at all
        return evaluate_model(*args, **kwargs)

    spec, model = ppo.learn(config, algo_config, run, TrainingEvaluator(config, {}, clock=lambda: now[0], evaluate=slow_evaluate))
    run.close()
    return spec, model, run.rows


@pytest.mark.parametrize("share, evaluated", [(math.inf, [128, 256, 384, 512]), (None, [128, 512])])
def test_the_wall_time_cap_holds_slow_evaluations_back_unless_it_is_inf(tmp_path, share, evaluated):
    # _learn's evaluations each seem to take 1000 s and training none: the default cap (0.1) lets the first and
    # the final one run; with inf every one due runs.
    _, _, rows = _learn(tmp_path, "rnnpolicy/TMaze-v0", evaluation=dict(eval_every=128, eval_episodes=2, eval_max_share=share))
    assert [r["step"] for r in rows if not np.isnan(r["eval_return"])] == evaluated


def test_learn_smoke_discrete(tmp_path):
    spec, model, rows = _learn(tmp_path, "rnnpolicy/TMaze-v0", evaluation=dict(eval_every=256, eval_episodes=4))
    assert (spec.action.kind, spec.algo, spec.num_cores, spec.obs_norm) == ("discrete", "ppo", 1, None)
    assert [r["step"] for r in rows] == [128, 256, 384, 512]
    assert {"policy_loss", "value_loss", "entropy", "approx_kl", "steps_per_s", "eval_return", "best_eval_return"} <= set(rows[0])
    assert np.isnan(rows[0]["eval_return"]) and not np.isnan(rows[1]["eval_return"])
    assert not np.isnan(rows[-1]["eval_return"])  # the final policy is always evaluated
    assert (tmp_path / "checkpoint.pt").is_file()


def test_learn_smoke_continuous_with_obs_norm(tmp_path):
    spec, model, rows = _learn(tmp_path, "rnnpolicy/PendulumNoVel-v0", normalize_obs=True, shared_core=False)
    assert spec.action.kind == "box" and spec.num_cores == 2
    assert spec.obs_norm is not None and spec.obs_norm.var != (1.0, 1.0)
    # The returned model's normaliser holds exactly the statistics the spec carries.
    np.testing.assert_allclose(model.normalizer.mean.numpy(), spec.obs_norm.mean, rtol=1e-6)
    np.testing.assert_allclose(model.normalizer.var.numpy(), spec.obs_norm.var, rtol=1e-6)
    assert all(np.isfinite(r["value_loss"]) for r in rows)


def test_same_seed_gives_identical_metrics(tmp_path):
    timing = {"wall_time", "steps_per_s", "eval_time"}
    runs = [_learn(tmp_path / str(i), "rnnpolicy/CartPoleNoVel-v0", seed=5, total_steps=256)[2] for i in range(2)]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    np.testing.assert_equal(strip(runs[0]), strip(runs[1]))  # NaN-aware
    other = _learn(tmp_path / "other", "rnnpolicy/CartPoleNoVel-v0", seed=6, total_steps=256)[2]
    assert strip(other)[-1]["policy_loss"] != strip(runs[0])[-1]["policy_loss"]


def test_early_stop_at_target_return(tmp_path, capsys):
    # T-maze returns lie in [-0.1, 1]: a target of -1 is met by the first evaluation.
    evaluation = dict(eval_every=256, eval_episodes=2, target_return=-1.0)
    _, _, rows = _learn(tmp_path, "rnnpolicy/TMaze-v0", total_steps=2048, evaluation=evaluation)
    assert rows[-1]["step"] == 256 and rows[-1]["eval_return"] >= -1.0
    assert "stopping early at step 256" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("seq_len", 5, "seq_len must divide rollout_steps \\(128\\) or be 0"),
        ("num_envs", 0, "num_envs must be >= 1, got 0"),
        ("gamma", 1.5, "gamma must lie in \\[0, 1\\], got 1.5"),
        ("num_minibatches", 100, "num_minibatches must be at most .* got 100"),
        ("seq_len", -1, "or be 0 \\(whole rollout\\), got -1"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        ppo.Config(**{field: value})


def test_the_default_minibatch_count_shrinks_to_the_sequences_a_rollout_holds():
    assert ppo.Config().num_minibatches == ppo.DEFAULT_MINIBATCHES == 4
    assert ppo.Config(num_envs=2).num_minibatches == 2  # whole-rollout sequences: one per environment
    assert ppo.Config(num_envs=1, seq_len=32).num_minibatches == 4  # 128 / 32 chunks
    assert ppo.Config(num_envs=1, seq_len=64).num_minibatches == 2
    with pytest.raises(ValueError, match="num_minibatches must be at most the number of sequences per rollout "
                                         "\\(2: num_envs 2, one whole rollout each with seq_len 0\\), got 4"):
        ppo.Config(num_envs=2, num_minibatches=4)  # a value given is kept, and refused where it cannot fit


def test_env_defaults_build_valid_configs():
    from rnnpolicy.envs import BUILTIN_ENV_IDS

    for env_id in BUILTIN_ENV_IDS:
        config, algo = resolve(TrainConfig(algo="ppo", env=env_id, out="unused"))
        assert config.total_steps and config.hidden_size
        assert dataclasses.is_dataclass(algo)


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--total-steps", "2000", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "last.pt").is_file() and (out / "metrics.csv").is_file()
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint.pt"), "--episodes", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 5 and "success_rate" in result


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "lmu"])
def test_ppo_learns_tmaze(tmp_path, cell):
    # The defaults stop once a deterministic evaluation is solved (about 25k-40k of the 150k steps; lmu about 16k).
    path = train(TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out=str(tmp_path), cell=cell, progress=False))
    assert evaluate(path, episodes=100).success_rate >= 0.95
    assert load_checkpoint(path).spec.cell == cell


def _tmaze_run(out, init_from=None, seed=1, hidden_size=16, **algo):
    config = TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out=str(out), total_steps=256, hidden_size=hidden_size, seed=seed,
                         progress=False, eval_every=0, init_from=init_from)
    return train(config, dict(num_envs=4, rollout_steps=32, seq_len=16, num_minibatches=2, update_epochs=1, **algo))


def _max_difference(a, b):
    return max((load_checkpoint(a).state_dict[k] - w).abs().max().item() for k, w in load_checkpoint(b).state_dict.items())


def test_init_from_starts_the_network_from_the_checkpoints_weights(tmp_path):
    first = _tmaze_run(tmp_path / "first").parent / "last.pt"
    # With a vanishing learning rate the continued run ends where the first one did; a fresh start does not.
    continued = _tmaze_run(tmp_path / "continued", init_from=str(first), seed=2, learning_rate=1e-9).parent / "last.pt"
    fresh = _tmaze_run(tmp_path / "fresh", seed=2, learning_rate=1e-9).parent / "last.pt"
    assert _max_difference(continued, first) < 1e-5
    assert _max_difference(fresh, first) > 0.1
    assert load_checkpoint(continued).config["train"]["init_from"] == str(first)


def test_init_from_names_the_part_of_the_network_that_differs(tmp_path):
    first = _tmaze_run(tmp_path / "first").parent / "last.pt"
    with pytest.raises(ValueError, match=r"last.pt' holds a network with hidden_size 16, but this run builds 8"):
        _tmaze_run(tmp_path / "wider", init_from=str(first), hidden_size=8)
    with pytest.raises(ValueError, match="init_from must be a checkpoint file"):
        _tmaze_run(tmp_path / "missing", init_from=str(tmp_path / "nope.pt"))


def test_init_from_refuses_a_run_that_normalises_observations(tmp_path):
    first = _tmaze_run(tmp_path / "first").parent / "last.pt"
    with pytest.raises(ValueError, match="cannot continue a run that normalises observations.*got normalize_obs in this run"):
        _tmaze_run(tmp_path / "norm", init_from=str(first), normalize_obs=True)
    # Weights trained on normalised inputs are refused too: without the statistics they would read raw ones.
    normalised = _tmaze_run(tmp_path / "normalised", normalize_obs=True).parent / "last.pt"
    with pytest.raises(ValueError, match="got normalize_obs in the checkpoint$"):
        _tmaze_run(tmp_path / "raw", init_from=str(normalised))
