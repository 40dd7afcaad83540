"""Data-parallel recurrent PPO under torchrun (gloo on the CPU): the same update as one process, and a real two-rank run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dp_update
from rnnpolicy.cli import main
from rnnpolicy.train import distributed
from rnnpolicy.train.checkpoint import load_checkpoint

TESTS = Path(__file__).resolve().parent


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_compute_the_same_update_as_one_process(tmp_path):
    single = dp_update.updated_weights(distributed.SINGLE)
    out = tmp_path / "two_ranks.pt"
    done = _torchrun(str(TESTS / "dp_update.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out, weights_only=True)
    assert single.keys() == two.keys()
    for name in single:
        torch.testing.assert_close(two[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
    # The update did change the weights: the comparison is not between two untouched models.
    torch.manual_seed(0)
    initial = dp_update.ActorCritic(dp_update.SPEC).state_dict()
    assert any(not torch.equal(initial[k], single[k]) for k in single)


def test_a_two_rank_run_trains_and_rank_0_alone_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    done = _torchrun(
        "-m", "rnnpolicy.cli", "train", "--algo", "ppo", "--env", "rnnpolicy/CartPoleNoVel-v0", "--total-steps", "2048",
        "--num-envs", "4", "--rollout-steps", "64", "--seq-len", "32", "--num-minibatches", "2", "--hidden-size", "16",
        "--eval-every", "1024", "--eval-episodes", "2", "--out", str(out), "--no-progress",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # one report, from rank 0
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "last.pt", "metrics.csv", "learning_curve.png"}
    rows = (out / "metrics.csv").read_text().splitlines()
    # 4 environments in all (2 per rank) x 64 steps = 256 steps per update, 8 updates.
    assert [int(float(r.split(",")[0])) for r in rows[1:]] == list(range(256, 2049, 256))
    assert load_checkpoint(out / "last.pt").config["train"]["total_steps"] == 2048


def test_drqn_under_torchrun_says_it_is_single_process(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["train", "--algo", "drqn", "--env", "rnnpolicy/TMaze-v0", "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "drqn trains in a single process only" in err and "WORLD_SIZE=2" in err


def test_num_envs_must_split_evenly_across_ranks():
    from rnnpolicy.train import ppo

    with pytest.raises(ValueError, match="num_envs must be a multiple of the 3 data-parallel ranks, got 8"):
        ppo.Config(num_envs=8).check_split(3)


@pytest.mark.parametrize("ranks, num_envs, expected", [(1, 8, 4), (2, 8, 4), (4, 8, 2), (2, 4, 2), (2, 2, 1)])
def test_the_default_minibatch_count_fits_each_ranks_rollout(monkeypatch, ranks, num_envs, expected):
    from rnnpolicy.train import ppo

    monkeypatch.setenv("WORLD_SIZE", str(ranks))
    algo = ppo.Config(num_envs=num_envs)  # seq_len 0: one sequence per environment, num_envs / ranks per rank
    assert algo.num_minibatches == expected
    algo.check_split(ranks)  # a rollout split across the ranks fills every minibatch
