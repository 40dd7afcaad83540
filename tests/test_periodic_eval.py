"""Evaluation during training: the schedule, the best-policy bookkeeping and the run's two checkpoints."""

import math

import pytest
import torch

from rnnpolicy.train.checkpoint import load_checkpoint
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.evaluate import EvalResult
from rnnpolicy.train.models import build_model
from rnnpolicy.train.evaluate import evaluate_model
from rnnpolicy.train.periodic_eval import EVAL_WIDTH_MAX, BestScore, EvalSchedule, TrainingEvaluator
from rnnpolicy import ActionSpec, ObsEncoding, PolicySpec


def test_best_score_keeps_the_highest_and_a_later_tie_wins():
    best = BestScore()
    assert best.offer(100, 1.0) and (best.step, best.mean_return) == (100, 1.0)
    assert not best.offer(200, 0.5)
    assert best.offer(300, 1.0) and best.step == 300  # a tie: the later, longer-trained policy
    assert not best.offer(400, math.nan) and best.step == 300


def test_schedule_without_a_cap_is_due_every_n_steps_whatever_the_time_taken():
    schedule = EvalSchedule(every=1000)
    assert not schedule.due(999, elapsed_s=1.0, spent_s=0.0, last_cost_s=0.0)
    assert schedule.due(1000, elapsed_s=1.0, spent_s=50.0, last_cost_s=50.0)
    schedule.done(1000)
    assert not schedule.due(1999, elapsed_s=1.0, spent_s=50.0, last_cost_s=50.0)
    assert schedule.due(2000, elapsed_s=1.0, spent_s=50.0, last_cost_s=50.0)


def test_schedule_with_a_share_is_due_every_n_steps_within_the_time_share():
    schedule = EvalSchedule(every=1000, max_share=0.1)
    assert not schedule.due(999, elapsed_s=100.0, spent_s=0.0, last_cost_s=0.0)
    assert schedule.due(1000, elapsed_s=100.0, spent_s=0.0, last_cost_s=0.0)
    schedule.done(1000)
    assert schedule.next_step == 2000
    # 9 s spent and the last evaluation cost 2 s: 11 s > 10% of 100 s, so it waits ...
    assert not schedule.due(2000, elapsed_s=100.0, spent_s=9.0, last_cost_s=2.0)
    # ... until training has run long enough (11 s <= 10% of 110 s).
    assert schedule.due(2100, elapsed_s=110.0, spent_s=9.0, last_cost_s=2.0)
    assert not EvalSchedule(every=0, max_share=1.0).due(10**9, 1.0, 0.0, 0.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _evaluator(tmp_path, returns, clock=None, played=None, notes=None, **train):
    """An evaluator whose evaluations return ``returns`` in turn, each taking 1 s of ``clock``;
    each call's ``(episodes, seed)`` is appended to ``played``, each note to ``notes``."""
    clock = clock or FakeClock()
    queue = list(returns)
    played = [] if played is None else played

    def evaluate(model, spec, env_id, episodes, seed, batch, wrappers):
        assert batch == min(episodes, EVAL_WIDTH_MAX)  # every episode side by side: one wave
        played.append((episodes, seed))
        clock.now += 1.0
        value = queue.pop(0)
        return EvalResult(episodes, value, 0.0, None, [value] * episodes)

    config = TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out=str(tmp_path), eval_every=100, eval_episodes=3, **train)
    note = (lambda message: None) if notes is None else notes.append
    return TrainingEvaluator(config, {"train": {"seed": 1}}, clock=clock, evaluate=evaluate, note=note), clock


def _policy(marker: float):
    spec = PolicySpec(kind="policy", cell="lstm", num_layers=1, hidden_size=4, obs_encoding=ObsEncoding.flat(2),
                      action=ActionSpec("discrete", n=2), env_id="rnnpolicy/TMaze-v0", algo="ppo")
    model = build_model(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(marker)
    return spec, model


def _marker(path) -> float:
    """The value every weight of the saved policy was filled with."""
    checkpoint = load_checkpoint(path)
    name = next(name for name, _ in checkpoint.build().named_parameters())
    return float(checkpoint.state_dict[name].flatten()[0])


def test_checkpoint_keeps_the_best_evaluated_policy_and_last_the_final_one(tmp_path):
    evaluator, clock = _evaluator(tmp_path, [0.2, 0.9, 0.4, 0.3])
    for step, marker in ((100, 1.0), (200, 2.0), (300, 3.0)):
        clock.now += 10.0
        assert evaluator.maybe_evaluate(step, lambda m=marker: _policy(m)) is not None
        assert evaluator.row()["best_eval_return"] == max([0.2, 0.9, 0.4][: step // 100])
    assert evaluator.maybe_evaluate(350, lambda: _policy(9.0)) is None  # not due
    assert math.isnan(evaluator.row()["eval_return"])
    evaluator.maybe_evaluate(350, lambda: _policy(4.0), final=True)  # the final evaluation always runs
    path = evaluator.finish(*_policy(4.0))
    assert path == tmp_path / "checkpoint.pt"
    assert _marker(path) == 2.0 and _marker(tmp_path / "last.pt") == 4.0
    saved = load_checkpoint(path).config
    assert saved["evaluation"]["step"] == 200 and saved["evaluation"]["mean_return"] == 0.9
    assert saved["train"] == {"seed": 1}
    assert load_checkpoint(tmp_path / "last.pt").config["evaluation"]["mean_return"] == 0.3
    assert evaluator.eval_time == 4.0
    assert evaluator.postfix() == {"eval": "0.30", "best": "0.90"}


def test_a_final_policy_as_good_as_the_best_replaces_it(tmp_path):
    evaluator, clock = _evaluator(tmp_path, [0.5, 0.5])
    evaluator.maybe_evaluate(100, lambda: _policy(1.0))
    clock.now += 10.0
    evaluator.maybe_evaluate(150, lambda: _policy(2.0), final=True)
    evaluator.finish(*_policy(2.0))
    assert _marker(tmp_path / "checkpoint.pt") == 2.0


def test_the_time_share_holds_evaluations_back(tmp_path):
    clock = FakeClock()
    evaluator, _ = _evaluator(tmp_path, [0.1, 0.2], clock=clock, target_return=None)
    evaluator.schedule.max_share = 0.1
    clock.now = 5.0
    assert evaluator.maybe_evaluate(100, lambda: _policy(1.0)) is not None  # the first costs nothing yet
    clock.now = 12.0  # 1 s spent + 1 s expected > 10% of 12 s
    assert evaluator.maybe_evaluate(200, lambda: _policy(2.0)) is None
    clock.now = 20.0  # 2 s <= 10% of 20 s
    assert evaluator.maybe_evaluate(200, lambda: _policy(2.0)) is not None


def test_target_return_is_reached_by_an_evaluation(tmp_path):
    evaluator, clock = _evaluator(tmp_path, [0.5, 1.0], target_return=1.0)
    evaluator.maybe_evaluate(100, lambda: _policy(1.0))
    assert not evaluator.reached_target
    clock.now += 10.0
    evaluator.maybe_evaluate(200, lambda: _policy(2.0))
    assert evaluator.reached_target


def test_an_evaluation_at_the_target_is_confirmed_on_further_episodes_before_the_run_stops(tmp_path):
    played, notes = [], []
    # 3 episodes at 1.0 reach the target, 6 more at 0.4 bring the mean to 0.6: not confirmed.
    evaluator, clock = _evaluator(tmp_path, [1.0, 0.4, 1.0, 1.0], played=played, notes=notes,
                                  target_return=1.0, confirm_episodes=6, eval_seed=50)
    result = evaluator.maybe_evaluate(100, lambda: _policy(1.0))
    assert played == [(3, 50), (6, 53)]  # the confirming episodes take the seeds after the evaluation's own
    assert (result.episodes, result.mean_return) == (9, pytest.approx(0.6))
    assert not evaluator.reached_target and evaluator.best.mean_return == pytest.approx(0.6)
    assert evaluator.row()["eval_return"] == pytest.approx(0.6)
    assert notes == ["evaluation at step 100 reached the target 1 on its 3 episodes (1.000) but not over 9 "
                     "with the 6 confirming ones (0.600): training on"]
    clock.now += 10.0
    evaluator.maybe_evaluate(200, lambda: _policy(2.0))  # this one holds over all 9 episodes
    assert played[2:] == [(3, 50), (6, 53)] and evaluator.reached_target and len(notes) == 1
    assert evaluator.stop_note(200) == "stopping early at step 200: evaluation return 1.000 over 9 episodes reached the target 1"
    assert _marker(tmp_path / "checkpoint.pt") == 2.0


def test_an_evaluation_below_the_target_or_without_confirmation_plays_its_own_episodes_only(tmp_path):
    played = []
    evaluator, clock = _evaluator(tmp_path, [0.5, 1.0], played=played, target_return=1.0, confirm_episodes=0)
    evaluator.maybe_evaluate(100, lambda: _policy(1.0))
    clock.now += 10.0
    evaluator.maybe_evaluate(200, lambda: _policy(2.0))
    assert played == [(3, 1_000_000), (3, 1_000_000)] and evaluator.reached_target


def test_a_mean_at_the_target_up_to_float_rounding_reaches_it(tmp_path):
    import numpy as np

    from rnnpolicy.train.periodic_eval import reaches

    perfect = float(np.mean([0.95] * 96))  # MemoryGrid's perfect return, 96 times: 0.9499999999999998
    assert perfect < 0.95 and reaches(perfect, 0.95)
    assert not reaches(0.9499, 0.95) and reaches(500.0, 500.0) and not reaches(499.99, 500.0)
    evaluator, _ = _evaluator(tmp_path, [0.95, 0.95], target_return=0.95, confirm_episodes=93)
    result = evaluator.maybe_evaluate(100, lambda: _policy(1.0))  # 3 + 93 episodes, each returning 0.95
    assert result.episodes == 96 and result.mean_return == perfect and evaluator.reached_target


def test_extended_results_average_over_all_the_episodes():
    first = EvalResult(2, 1.0, 0.0, 1.0, [1.0, 1.0])
    both = first.extended(EvalResult(2, 0.0, 0.0, 0.5, [0.0, 0.0]))
    assert (both.episodes, both.mean_return, both.std_return, both.success_rate) == (4, 0.5, 0.5, 0.75)
    assert both.returns == [1.0, 1.0, 0.0, 0.0]
    assert first.extended(EvalResult(1, 0.0, 0.0, None, [0.0])).success_rate is None


def test_confirm_episodes_must_not_be_negative():
    with pytest.raises(ValueError, match="confirm_episodes must be >= 0 \\(0: no confirmation\\), got -1"):
        TrainConfig(algo="ppo", env="x", out="y", confirm_episodes=-1)


def test_without_evaluation_both_files_hold_the_final_policy(tmp_path):
    config = TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out=str(tmp_path), eval_every=0)
    evaluator = TrainingEvaluator(config, {})
    assert evaluator.maybe_evaluate(100, lambda: pytest.fail("evaluated with eval_every=0"), final=True) is None
    evaluator.finish(*_policy(7.0))
    assert _marker(tmp_path / "checkpoint.pt") == 7.0 == _marker(tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt").config["evaluation"] is None


def test_a_rank_other_than_0_evaluates_and_writes_nothing(tmp_path):
    evaluator, _ = _evaluator(tmp_path, [])
    evaluator.write = False
    assert evaluator.maybe_evaluate(100, lambda: pytest.fail("evaluated on rank 1"), final=True) is None
    evaluator.finish(*_policy(1.0))
    assert not any(tmp_path.iterdir())


def test_target_return_needs_evaluation():
    with pytest.raises(ValueError, match="target_return=1.0 needs evaluation, got eval_every=0"):
        TrainConfig(algo="ppo", env="x", out="y", eval_every=0, target_return=1.0)


def test_resolve_fills_the_evaluation_options():
    from rnnpolicy.train.api import resolve

    plain, _ = resolve(TrainConfig(algo="ppo", env="CartPole-v1", out="x", total_steps=40_000))
    assert (plain.eval_every, plain.eval_episodes, plain.eval_max_share, plain.target_return) == (2_000, 10, 0.1, None)
    entry, _ = resolve(TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out="x"))
    assert (entry.eval_every, entry.eval_episodes, entry.target_return) == (8192, 32, 1.0)
    mine, _ = resolve(TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out="x", eval_every=100, target_return=0.5))
    assert (mine.eval_every, mine.target_return) == (100, 0.5)
    assert (plain.confirm_episodes, entry.confirm_episodes) == (20, 64)  # twice eval_episodes
    given, _ = resolve(TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out="x", eval_episodes=5, confirm_episodes=0))
    assert given.confirm_episodes == 0
    assert resolve(TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out="x", eval_episodes=5))[0].confirm_episodes == 10
    off, _ = resolve(TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out="x", eval_every=0))
    assert (off.evaluates, off.target_return) == (False, None)  # the entry's target is dropped with evaluation


def test_an_evaluation_gives_the_same_returns_whatever_the_number_of_episodes_side_by_side():
    torch.manual_seed(3)
    spec = PolicySpec(kind="policy", cell="lstm", num_layers=1, hidden_size=8, obs_encoding=ObsEncoding.flat(2),
                      action=ActionSpec("discrete", n=2), env_id="rnnpolicy/CartPoleNoVel-v0", algo="ppo")
    model = build_model(spec)
    results = [evaluate_model(model, spec, "rnnpolicy/CartPoleNoVel-v0", episodes=6, seed=7, batch=batch)
               for batch in (1, 4, 6)]
    returns = sorted(results[0].returns)
    assert len(returns) == 6 and len(set(returns)) > 1  # episodes that differ, so a mix-up would show
    assert [sorted(r.returns) for r in results[1:]] == [returns, returns]
