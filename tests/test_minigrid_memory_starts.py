"""benchmarks/minigrid_memory_starts.py: success, turning back and seeing the cue, counted per start column."""

import sys
from pathlib import Path

import pytest
import torch

from rnnpolicy.train.api import train
from rnnpolicy.train.checkpoint import load_checkpoint, save_checkpoint
from rnnpolicy.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from minigrid_memory_starts import episodes_by_start, trained_with  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("start_column")
    train(TrainConfig(algo="ppo", env="fake_envs:FakeStartColumn-v0", out=str(out), total_steps=1024, eval_every=0, progress=False))
    return out / "checkpoint.pt"


def _with_policy_bias(checkpoint: Path, bias: list[float], path: Path) -> Path:
    """The checkpoint's policy, made to pick by ``bias`` alone (zero weights into the policy head)."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.build()
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.copy_(torch.tensor(bias))
    return save_checkpoint(path, loaded.spec, model, loaded.config)


@pytest.mark.parametrize("bias, success, west", [([8.0, 0.0, 0.0], 1.0, 0.0), ([0.0, 0.0, 8.0], 0.0, 1.0)])
def test_success_facing_west_and_seeing_the_cue_are_counted_per_start_column(trained, tmp_path, bias, success, west):
    checkpoint = _with_policy_bias(trained, bias, tmp_path / "biased.pt")
    for sampled in (False, True):
        columns = episodes_by_start(checkpoint, episodes=60, sampled=sampled, seed=0)
        assert set(columns) == {1, 2, 3}
        assert sum(c["episodes"] for c in columns.values()) == 60
        # sampled: a logit 8 above the others still leaves about 1 episode in 1,500 to another action
        assert all(c["success_rate"] == pytest.approx(success, abs=0.05) for c in columns.values()), columns
        assert all(c["faced_west"] == pytest.approx(west, abs=0.05) for c in columns.values()), columns
        assert all(c["saw_cue"] == pytest.approx(west, abs=0.05) for c in columns.values()), columns


def test_the_training_run_is_named_from_the_checkpoint(trained):
    assert trained_with(trained).startswith("algo ppo, env fake_envs:FakeStartColumn-v0, seed 1, total_steps 1024")
