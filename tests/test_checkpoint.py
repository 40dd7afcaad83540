import pytest
import torch

from rnnpolicy import ActionSpec, ObsEncoding, PolicySpec
from rnnpolicy.train.checkpoint import load_checkpoint, save_checkpoint
from rnnpolicy.train.evaluate import evaluate
from rnnpolicy.train.models import build_model


def tmaze_spec(cell="gru"):
    return PolicySpec(
        kind="q", cell=cell, num_layers=1, hidden_size=8, obs_encoding=ObsEncoding.flat(4),
        action=ActionSpec("discrete", n=3), env_id="rnnpolicy/TMaze-v0", algo="drqn",
    )


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    spec = tmaze_spec()
    model = build_model(spec)
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", spec, model, {"train": {"seed": 3}})
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"train": {"seed": 3}}
    checkpoint = load_checkpoint(path)
    assert checkpoint.spec == spec
    for key, value in model.state_dict().items():
        torch.testing.assert_close(checkpoint.build().state_dict()[key], value)


def test_missing_corrupt_and_foreign_checkpoints_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt' is not a readable torch file"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="is not an rnnpolicy checkpoint"):
        load_checkpoint(foreign)


def test_weights_that_do_not_match_the_spec_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", tmaze_spec("gru"), build_model(tmaze_spec("gru")), {})
    payload = torch.load(path, weights_only=True)
    payload["spec"]["cell"] = "lstm"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="weights do not match its spec"):
        load_checkpoint(path)


def test_evaluate_reports_returns_and_success(tmp_path):
    torch.manual_seed(0)
    spec = tmaze_spec()
    path = save_checkpoint(tmp_path / "c.pt", spec, build_model(spec), {})
    result = evaluate(path, episodes=7, batch=3)
    assert result.episodes == 7 == len(result.returns)
    assert result.success_rate is not None and 0.0 <= result.success_rate <= 1.0
    assert set(result.to_dict()) == {"episodes", "mean_return", "std_return", "success_rate"}
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        evaluate(path, episodes=0)
