"""MultiDiscrete and MultiBinary actions: the factored categorical head, training, export and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.export import export_checkpoint, graph_outputs, load_onnx_policy, zero_state
from rnnpolicy.spec import ActionSpec, PolicySpec
from rnnpolicy.train import ppo
from rnnpolicy.train.api import resolve, seed_everything, train
from rnnpolicy.train.checkpoint import save_checkpoint
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.envs import action_spec
from rnnpolicy.train.evaluate import evaluate
from rnnpolicy.train.models import (
    ActorCritic,
    build_model,
    factored_greedy,
    factored_log_prob_entropy,
    factored_sample,
    initial_state,
)
from rnnpolicy.train.periodic_eval import TrainingEvaluator
from rnnpolicy.train.runlog import RunLog


class _Env:
    def __init__(self, space):
        self.action_space = space


@pytest.mark.parametrize("nvec", [(3, 3, 3), (4, 2, 5)])  # equal counts take the reshaped path, unequal the loop
def test_factored_log_prob_and_entropy_equal_a_categorical_per_entry(nvec):
    torch.manual_seed(0)
    logits = torch.randn(5, 7, sum(nvec))  # (T, B, sum(nvec))
    actions = torch.stack([torch.randint(n, (5, 7)) for n in nvec], dim=-1)  # (T, B, k)
    log_prob, entropy = factored_log_prob_entropy(logits, actions, nvec)
    dists = [torch.distributions.Categorical(logits=part) for part in logits.split(list(nvec), dim=-1)]
    expected_lp = sum(d.log_prob(actions[..., j]) for j, d in enumerate(dists))
    expected_ent = sum(d.entropy() for d in dists)
    assert log_prob.shape == entropy.shape == (5, 7)
    torch.testing.assert_close(log_prob, expected_lp)
    torch.testing.assert_close(entropy, expected_ent)
    greedy = factored_greedy(logits, nvec)
    assert greedy.shape == (5, 7, len(nvec)) and greedy.dtype == torch.int64
    torch.testing.assert_close(greedy, torch.stack([d.probs.argmax(-1) for d in dists], dim=-1))


@pytest.mark.parametrize("nvec", [(3, 3), (4, 2)])
def test_factored_sample_follows_each_entrys_probabilities(nvec):
    torch.manual_seed(1)
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5][: nvec[0]] + [1.0, -1.0, 0.0][: nvec[1]]])  # (1, sum(nvec))
    draws = factored_sample(logits.expand(20_000, -1), nvec)  # (N, 2)
    assert draws.shape == (20_000, 2)
    for j, part in enumerate(logits[0].split(list(nvec))):
        freq = torch.bincount(draws[:, j], minlength=nvec[j]).float() / draws.shape[0]
        torch.testing.assert_close(freq, torch.softmax(part, -1), atol=0.015, rtol=0)


def test_action_spec_reads_multi_discrete_and_multi_binary_spaces():
    md = action_spec(_Env(spaces.MultiDiscrete([[3, 2], [4, 5]])))
    assert (md.kind, md.shape, md.nvec, md.dim, md.num_logits) == ("multi_discrete", (2, 2), (3, 2, 4, 5), 4, 14)
    mb = action_spec(_Env(spaces.MultiBinary(3)))
    assert (mb.kind, mb.shape, mb.nvec, mb.num_logits) == ("multi_binary", (3,), (2, 2, 2), 6)
    assert mb.to_env(np.array([1, 0, 1])).dtype == np.int8
    assert md.to_env(np.arange(4)).shape == (2, 2)
    with pytest.raises(ValueError, match=r"must start at 0, got start=\[1, 0\]"):
        action_spec(_Env(spaces.MultiDiscrete([3, 2], start=[1, 0])))
    with pytest.raises(ValueError, match="cannot act in action space Text.*expected Discrete, MultiDiscrete, MultiBinary or Box"):
        action_spec(_Env(spaces.Text(3)))


def _spec(action: ActionSpec, cell="gru") -> PolicySpec:
    return PolicySpec(kind="policy", cell=cell, num_layers=1, hidden_size=8, obs_encoding=ObsEncoding.flat(4), action=action)


def test_actor_critic_step_gives_concatenated_logits_and_one_action_per_entry():
    spec = _spec(ActionSpec.multi_discrete((3, 2, 4)))
    model = build_model(spec)
    assert isinstance(model, ActorCritic) and spec.output_names[:3] == ("logits", "action", "value")
    (logits, action, value), _ = model.step(torch.randn(5, 4), initial_state(spec, 5), torch.ones(5))
    assert logits.shape == (5, 9) and action.shape == (5, 3) and value.shape == (5,)
    assert [o.shape for o in graph_outputs(spec)[:3]] == [("batch", 9), ("batch", 3), ("batch",)]


def _learn(tmp_path, env, total_steps=512):
    config, algo = resolve(
        TrainConfig(algo="ppo", env=env, out=str(tmp_path), total_steps=total_steps, hidden_size=16, seed=3, progress=False,
                    eval_every=0),
        dict(num_envs=4, rollout_steps=32, seq_len=16, num_minibatches=2, update_epochs=2),
    )
    seed_everything(3)
    run = RunLog(tmp_path, total_steps, progress=False)
    spec, model = ppo.learn(config, algo, run, TrainingEvaluator(config, {}, clock=lambda: 0.0))
    run.close()
    return spec, model, run.rows


@pytest.mark.parametrize("env, kind", [("fake_envs:FakeRecallPair-v0", "multi_discrete"), ("fake_envs:FakeCopyBits-v0", "multi_binary")])
def test_ppo_trains_on_factored_action_spaces(tmp_path, env, kind):
    # The environments assert that every action lies in their space (right shape and dtype).
    spec, model, rows = _learn(tmp_path, env)
    assert spec.action.kind == kind and spec.format_version == 2
    assert all(np.isfinite(r["policy_loss"]) and r["entropy"] > 0 for r in rows)
    # Entropy starts near the uniform policy's: the sum of log(n) over the entries.
    assert rows[0]["entropy"] == pytest.approx(float(np.sum(np.log(spec.action.nvec))), rel=0.05)


def test_drqn_refuses_factored_actions_with_one_line_before_training(tmp_path):
    config = TrainConfig(algo="drqn", env="fake_envs:FakeRecallPair-v0", out=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"^drqn needs a discrete action space, got MultiDiscrete\(\[3 2\]\) .*--algo ppo$"):
        train(config)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_factored_policy_exports_with_parity(tmp_path, cell):
    spec = _spec(ActionSpec.multi_discrete((3, 2, 4), shape=(3,)), cell=cell)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # larger heads than the init's, so actions are far from ties
        for p in model.parameters():
            p.mul_(3.0)
    report = export_checkpoint(save_checkpoint(tmp_path / "checkpoint.pt", spec, model, {}), tmp_path / "export")
    assert report.verify is not None and report.verify.passed, report.verify.failures
    session, onnx_spec = load_onnx_policy(report.onnx_path)
    assert onnx_spec == spec
    feed = {"obs": np.random.default_rng(0).standard_normal((6, 4), dtype=np.float32),
            "episode_start": np.ones(6, np.float32), **zero_state(spec, 6)}
    logits, action, _value, *_ = session.run(None, feed)
    assert logits.shape == (6, 9) and action.shape == (6, 3) and action.dtype == np.int64
    bounds = [0, 3, 5, 9]
    expected = np.stack([logits[:, lo:hi].argmax(1) for lo, hi in zip(bounds[:-1], bounds[1:])], axis=1)
    np.testing.assert_array_equal(action, expected)


def test_a_trained_factored_policy_evaluates_through_its_env(tmp_path):
    config = TrainConfig(algo="ppo", env="fake_envs:FakeCopyBits-v0", out=str(tmp_path), total_steps=256, hidden_size=8,
                         progress=False)
    path = train(config, dict(num_envs=4, rollout_steps=32, seq_len=16, num_minibatches=2, update_epochs=1))
    result = evaluate(path, episodes=6)
    assert result.episodes == 6 and 0.0 <= result.mean_return <= 1.0


@pytest.mark.slow
def test_ppo_learns_to_recall_a_pair_of_cues(tmp_path):
    config = TrainConfig(algo="ppo", env="fake_envs:FakeRecallPair-v0", out=str(tmp_path), total_steps=60_000,
                         hidden_size=32, progress=False)
    path = train(config, dict(num_envs=8, rollout_steps=32, seq_len=32, num_minibatches=2, update_epochs=4,
                              learning_rate=3e-3))
    assert evaluate(path, episodes=100).mean_return >= 0.95
