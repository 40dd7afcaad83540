import csv

import numpy as np

from rnnpolicy.train.envs import make_vector_env
from rnnpolicy.train.runlog import EpisodeTracker, RunLog


def test_tracker_reads_success_from_a_same_step_autoreset_vector_env():
    envs = make_vector_env("rnnpolicy/RepeatFirst-v0", num_envs=3, seed=0)
    envs.reset(seed=0)
    tracker = EpisodeTracker(3)
    finished = []
    for _ in range(9 * 2):
        _, rewards, terminated, truncated, infos = envs.step(np.zeros(3, dtype=np.int64))
        finished += tracker.update(rewards, terminated | truncated, infos)
    assert tracker.episodes == len(finished) == 6
    assert len(tracker.recent_successes) == 6
    assert tracker.success_rate == tracker.mean_return  # reward 1 exactly on success


def test_note_reaches_stderr(tmp_path, capsys):
    RunLog(tmp_path, total_steps=10, progress=False).note("stopping early at step 5")
    assert "stopping early at step 5" in capsys.readouterr().err


def test_runlog_writes_rows_and_curve_only_once_logging_starts(tmp_path):
    out = tmp_path / "run"
    tracker = EpisodeTracker(2)
    tracker.update(np.array([1.0, 0.0]), np.array([True, False]), {"is_success": np.array([True, False]), "_is_success": np.array([True, False])})
    run = RunLog(out, total_steps=20, progress=False)
    assert not out.exists()
    run.log(10, tracker, loss=0.5)
    run.log(20, tracker, loss=0.25)
    run.close()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["step"] for r in rows] == ["10", "20"]
    assert rows[0]["success_rate"] == "1.0" and rows[1]["loss"] == "0.25"
    assert set(rows[0]) >= {"step", "wall_time", "episodes", "mean_return", "success_rate"}
    assert (out / "learning_curve.png").stat().st_size > 0


def test_tensorboard_event_files_are_written(tmp_path):
    import pytest

    pytest.importorskip("tensorboard")
    tracker = EpisodeTracker(1)
    run = RunLog(tmp_path / "run", total_steps=10, progress=False, tensorboard=True)
    run.log(10, tracker, loss=1.0)
    run.close()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents*"))


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    import pytest

    from rnnpolicy.train.api import train
    from rnnpolicy.train.config import TrainConfig

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    config = TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out=str(tmp_path / "run"), tensorboard=True, progress=False)
    with pytest.raises(ValueError, match=r"--tensorboard needs the tensorboard package"):
        train(config)
