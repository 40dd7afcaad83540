import dataclasses
import math

import pytest
import torch

from rnnpolicy import ActionSpec, ObsEncoding, PolicySpec
from rnnpolicy.train import drqn
from rnnpolicy.train.api import train
from rnnpolicy.train.checkpoint import load_checkpoint
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.evaluate import evaluate
from rnnpolicy.train.models import QNetwork, initial_state
from rnnpolicy.train.periodic_eval import TrainingEvaluator
from rnnpolicy.train.runlog import RunLog


TINY = dict(num_envs=4, buffer_size=200, seq_len=10, burn_in=2, batch_size=8, learning_starts=200, target_update_interval=20, log_interval=200)


def test_n_step_targets_bootstrap_on_truncation_not_on_termination():
    gamma, n = 0.5, 2
    # Columns: terminated after 3 steps; truncated after 3 steps; cut by the sequence's end after 4.
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [4.0, 4.0, 4.0], [0.0, 0.0, 8.0]])  # (T, B)
    mask = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [False, False, True]])
    terminated = torch.zeros(4, 3, dtype=torch.bool)
    terminated[2, 0] = True
    bootstrap = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]).unsqueeze(1).expand(5, 3)  # (T + 1, B)
    targets = drqn.n_step_targets(rewards, terminated, mask, bootstrap, gamma, n)
    expected = torch.tensor(
        [
            [1 + 0.5 * 2 + 0.25 * 30, 1 + 0.5 * 2 + 0.25 * 30, 1 + 0.5 * 2 + 0.25 * 30],
            [2 + 0.5 * 4, 2 + 0.5 * 4 + 0.25 * 40, 2 + 0.5 * 4 + 0.25 * 40],
            [4, 4 + 0.5 * 40, 4 + 0.5 * 8 + 0.25 * 50],
            [0, 0, 8 + 0.5 * 50],
        ]
    )
    torch.testing.assert_close(targets * mask, expected)


def test_burn_in_gets_no_gradient_unless_the_sequence_starts_its_episode():
    torch.manual_seed(0)
    spec = PolicySpec(kind="q", cell="lstm", num_layers=1, hidden_size=8, obs_encoding=ObsEncoding.flat(3), action=ActionSpec("discrete", n=2))
    model = QNetwork(spec)
    T, burn_in = 6, 2
    obs = torch.randn(T, 2, 3, requires_grad=True)
    state = initial_state(spec, 2)
    state = state._replace(h=torch.randn_like(state.h).requires_grad_(), c=torch.randn_like(state.c))
    episode_first = torch.tensor([False, True])
    q = drqn.sequence_q_values(model, obs, state, burn_in, episode_first)  # (T, B, A)
    q[burn_in:].sum().backward()
    assert (obs.grad[:burn_in, 0] == 0).all() and (state.h.grad[:, 0] == 0).all()
    assert (obs.grad[:burn_in, 1] != 0).any() and (state.h.grad[:, 1] != 0).any()
    assert (obs.grad[burn_in:, 0] != 0).any()
    with torch.no_grad():  # the burn-in still refreshes the state: same values as one unbroken pass
        whole, _ = model(obs, state, torch.zeros(T, 2))
    torch.testing.assert_close(q, whole)


def test_epsilon_decays_linearly_then_stays():
    config = drqn.Config(epsilon_start=1.0, epsilon_end=0.1, epsilon_fraction=0.5)
    assert drqn.epsilon_at(0, 1000, config) == 1.0
    assert drqn.epsilon_at(250, 1000, config) == pytest.approx(0.55)
    assert drqn.epsilon_at(500, 1000, config) == pytest.approx(0.1)
    assert drqn.epsilon_at(900, 1000, config) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(seq_len=20, burn_in=20), r"burn_in must be in \[0, seq_len=20\), got 20"),
        (dict(num_envs=0), "num_envs must be >= 1, got 0"),
        (dict(gamma=1.5), r"gamma must be in \(0, 1\], got 1.5"),
        (dict(tau=0.0), r"tau must be in \(0, 1\], got 0.0"),
        (dict(learning_rate=0.0), "learning_rate must be > 0, got 0.0"),
        (dict(epsilon_start=0.1, epsilon_end=0.5), "epsilon_end=0.5, epsilon_start=0.1"),
        (dict(learning_starts=-1), "learning_starts must be >= 0, got -1"),
    ],
)
def test_config_rejects_bad_values_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        drqn.Config(**values)


def _learn(tmp_path, cell="lstm", seed=0, env="rnnpolicy/RepeatFirst-v0", total_steps=800, evaluation=None, **overrides):
    config = TrainConfig(algo="drqn", env=env, out=str(tmp_path), total_steps=total_steps, hidden_size=8, seed=seed, cell="lstm" if cell == "ff" else cell, feedforward=cell == "ff", progress=False,
                         **(evaluation or {}))
    run = RunLog(tmp_path, total_steps, progress=False)
    try:
        spec, model = drqn.learn(config, drqn.Config(**{**TINY, **overrides}), run, TrainingEvaluator(config, {}))
    finally:
        run.close()
    return spec, model, run.rows


@pytest.mark.parametrize("cell", ["lstm", "gru", "lmu", "ff"])
def test_learn_smoke_run_logs_metrics_and_returns_a_q_network(tmp_path, cell):
    spec, model, rows = _learn(tmp_path, cell)
    assert (spec.kind, spec.cell, spec.algo, spec.env_id) == ("q", cell, "drqn", "rnnpolicy/RepeatFirst-v0")
    assert isinstance(model, QNetwork)
    assert [row["step"] for row in rows] == [200, 400, 600, 800]
    assert {"loss", "q_mean", "epsilon", "steps_per_s", "success_rate"} <= rows[-1].keys()
    assert rows[-1]["episodes"] > 0 and rows[-1]["success_rate"] == rows[-1]["success_rate"]  # not NaN
    assert rows[-1]["loss"] == rows[-1]["loss"]


def test_evaluations_follow_eval_every_not_the_log_interval(tmp_path):
    # rows every 200 steps (TINY's log_interval), evaluations every 100: each gets a row of its own
    evaluation = dict(eval_every=100, eval_episodes=2, eval_max_share=math.inf)
    _, _, rows = _learn(tmp_path, evaluation=evaluation)
    assert [row["step"] for row in rows] == [100, 200, 300, 400, 500, 600, 700, 800]
    assert all(row["eval_return"] == row["eval_return"] for row in rows)  # none NaN: every row holds one


def test_learn_is_deterministic_given_the_seed(tmp_path):
    # A constant learning rate: annealed, online and target network pick the same bootstrap actions in these
    # 800 steps, so double_q would change nothing to compare against.
    runs = [_learn(tmp_path / str(i), seed=3, double_q=i < 2, tau=0.5, anneal_lr=False) for i in range(3)]
    timing = ("wall_time", "steps_per_s")
    metrics = [[{k: v for k, v in row.items() if k not in timing} for row in rows] for _, _, rows in runs]
    assert metrics[0] == metrics[1]
    for a, b in zip(runs[0][1].state_dict().values(), runs[1][1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert metrics[0] != metrics[2]  # double_q changes the updates


@pytest.mark.parametrize("anneal_lr", [True, False])
def test_the_learning_rate_decays_linearly_to_zero_over_the_run_unless_switched_off(tmp_path, monkeypatch, anneal_lr):
    rates: list[float] = []

    class RecordingAdam(drqn.FusedAdam):
        def step(self) -> None:
            rates.append(self.lr)
            super().step()

    monkeypatch.setattr(drqn, "FusedAdam", RecordingAdam)
    _learn(tmp_path, anneal_lr=anneal_lr, learning_rate=1e-3)
    # TINY: 4 environments, learning from step 200 of 800: one gradient step per 4 environment steps.
    steps = range(200, 801, 4)
    expected = [1e-3 * (1 - s / 800) if anneal_lr else 1e-3 for s in steps]
    assert rates == pytest.approx(expected)


def test_learn_rejects_a_continuous_action_space(tmp_path):
    with pytest.raises(ValueError, match=r"drqn needs a discrete action space, got Box\("):
        _learn(tmp_path, env="rnnpolicy/PendulumNoVel-v0")


def test_train_writes_a_checkpoint_that_evaluates(tmp_path):
    config = TrainConfig(algo="drqn", env="rnnpolicy/TMaze-v0", out=str(tmp_path), total_steps=400, hidden_size=8, progress=False)
    path = train(config, {"learning_starts": 200, "batch_size": 8, "log_interval": 200})
    result = evaluate(path, episodes=4)
    assert result.episodes == 4 and result.success_rate is not None


def test_init_from_starts_the_q_network_from_the_checkpoints_weights(tmp_path):
    def run(out, **options):
        config = TrainConfig(algo="drqn", env="rnnpolicy/TMaze-v0", out=str(tmp_path / out), total_steps=400, hidden_size=8,
                             progress=False, eval_every=0, **options)
        return load_checkpoint(train(config, {"learning_starts": 200, "batch_size": 8, "learning_rate": 1e-9}).parent / "last.pt")

    first = run("first")
    continued = run("continued", seed=2, init_from=str(tmp_path / "first" / "last.pt"))
    fresh = run("fresh", seed=2)
    # With a vanishing learning rate the continued network ends where the first one did; a fresh one does not.
    assert max((continued.state_dict[k] - w).abs().max().item() for k, w in first.state_dict.items()) < 1e-5
    assert max((fresh.state_dict[k] - w).abs().max().item() for k, w in first.state_dict.items()) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "lmu"])
def test_drqn_learns_tmaze(tmp_path, cell):
    config = TrainConfig(algo="drqn", env="rnnpolicy/TMaze-v0", out=str(tmp_path), cell=cell, progress=False)
    result = evaluate(train(config), episodes=100)
    assert result.success_rate >= 0.95, dataclasses.asdict(result)
