"""benchmarks/delay_recall_bench.py: the task's deals, the recall labels, the label check and the supervised training."""

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from delay_recall_bench import (  # noqa: E402
    LegendreMemoryPolicy, build_policy, check_labels, chrono_init, recall_labels,
    shuffled_suits, train_delay,
)


class _Cards(gym.Env):
    """Only the spaces of popgym's RepeatPrevious (a suit in, a suit out): what build_policy reads."""

    observation_space = spaces.Discrete(4)
    action_space = spaces.Discrete(4)


def test_each_episode_deals_a_shuffled_deck_but_its_last_card():
    suits = shuffled_suits(np.random.default_rng(0), episodes=3, num_cards=104)
    assert suits.shape == (103, 3)
    for column in suits.T:
        counts = np.bincount(column, minlength=4)
        assert sorted(counts.tolist()) == [25, 26, 26, 26]  # one card of 26 per suit stays in the deck


def test_the_label_at_each_scored_step_is_the_suit_seen_delay_steps_earlier():
    suits = np.arange(10).reshape(10, 1) % 4  # (T, B)
    labels = recall_labels(suits, 3)
    assert labels.shape == (7, 1)
    assert labels[:, 0].tolist() == suits[:7, 0].tolist()  # step 3 answers step 0, ..., step 9 answers step 6
    assert recall_labels(suits, 0) is suits


def test_labels_earn_the_real_environments_maximum_return():
    assert check_labels("popgym:popgym-RepeatPreviousEasy-v0", episodes=3, seed=0) == 4


def test_training_learns_a_short_recall_and_records_when():
    torch.manual_seed(0)
    args = argparse.Namespace(seed=0, learning_rate=1e-2, batch=16, total_steps=30_000, eval_every=5_000, solved=0.9)
    run = train_delay(args, build_policy(_Cards(), "gru", 16), delay=2, num_cards=20)
    assert run["cell"] == "gru" and run["delay"] == 2
    assert run["curve"][0][1] < 0.9 <= run["final_accuracy"], run["curve"]
    assert run["learned_at"] == next(step for step, accuracy in run["curve"] if accuracy >= 0.9)
    assert run["steps"] >= 30_000


def test_chrono_spreads_the_forget_gate_biases_and_closes_the_input_gates_as_much():
    torch.manual_seed(0)
    model = build_policy(_Cards(), "lstm", 32)
    chrono_init(model, 64.0)
    lstm = model.actor_core.rnn
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0  # (4 * H,): input, forget, cell, output
    forget, input_gate = bias[32:64], bias[:32]
    assert torch.all(forget >= 0) and torch.all(forget <= torch.log(torch.tensor(63.0)))
    assert forget.std() > 0.3  # spread, not one value
    assert torch.equal(input_gate, -forget)
    assert torch.all(bias[64:] == 0)


def test_the_legendre_candidate_learns_a_short_recall():
    torch.manual_seed(0)
    args = argparse.Namespace(seed=0, learning_rate=1e-2, batch=16, total_steps=20_000, eval_every=5_000, solved=0.9)
    run = train_delay(args, LegendreMemoryPolicy(4, 16, order=8, theta=8.0), delay=4, num_cards=20)
    assert run["cell"] == "lmu" and run["final_accuracy"] >= 0.9, run["curve"]


def test_bad_lmu_settings_are_refused_by_name():
    import subprocess

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "delay_recall_bench.py"
    for flags, message in ((["--lmu-theta", "0"], "--lmu-theta must be > 0 steps, got 0.0"),
                           (["--lmu-order", "0"], "--lmu-order must be >= 1, got 0")):
        done = subprocess.run([sys.executable, str(bench), "--cells", "lmu", *flags], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, done.stderr
