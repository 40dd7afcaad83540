"""The ``rnnpolicy`` command: help, and one-line errors for bad input (no tracebacks)."""

import json
import subprocess
import sys

import pytest

from rnnpolicy.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "export", "verify", "serve", "play", "web"):
        assert command in out


def test_train_help_shows_the_algorithm_hyperparameters(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--algo", "ppo", "--help"])
    out = capsys.readouterr().out
    assert "ppo hyperparameters" in out and "--total-steps" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--algo", "ppo", "--env", "NoSuchEnv-v0", "--out", "{tmp}/x"], "unknown environment 'NoSuchEnv-v0'"),
        (["train", "--algo", "drqn", "--env", "fake_envs:FakeText-v0", "--out", "{tmp}/x"], "cannot encode observation space Text"),
        (["train", "--algo", "ppo", "--env", "fake_envs:FakeText-v0", "--out", "{tmp}/x"],
         "a wrapper can drop or convert it (--wrapper module:Callable, e.g. minigrid.wrappers:ImgObsWrapper"),
        (["train", "--algo", "drqn", "--env", "rnnpolicy/PendulumNoVel-v0", "--out", "{tmp}/x"], "drqn needs a discrete action space"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--total-steps", "0", "--out", "{tmp}/x"], "--total-steps must be >= 1, got 0"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--eval-max-share", "1.5", "--out", "{tmp}/x"],
         "--eval-max-share must lie in (0, 1] or be inf (no cap), got 1.5"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--episode-bptt-max", "0", "--out", "{tmp}/x"],
         "--episode-bptt-max must be >= 1, got 0"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--confirm-episodes", "-1", "--out", "{tmp}/x"],
         "--confirm-episodes must be >= 0 (0: no confirmation), got -1"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--episode-bptt", "--seq-len", "16", "--out", "{tmp}/x"],
         "--episode-bptt replays whole episodes, so it needs --seq-len 0 (whole rollouts), got --seq-len=16"),
        # a value the user did not give is said to come from the environment's entry
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--rollout-steps", "100", "--out", "{tmp}/x"],
         "--seq-len must divide --rollout-steps (100) or be 0 (whole rollout), got 128 (the entry for rnnpolicy/TMaze-v0 "
         "set --seq-len 128; a value you give overrides them)"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--num-minibatches", "1000", "--out", "{tmp}/x"],
         "(8: --num-envs 8 x --rollout-steps 128 / --seq-len 128), got 1000 (the entry for rnnpolicy/TMaze-v0 set "
         "--num-envs 8, --rollout-steps 128, --seq-len 128; a value you give overrides them)"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--num-minibatches", "0", "--out", "{tmp}/x"],
         "--num-minibatches must be >= 1, got 0"),
        (["train", "--algo", "ppo", "--env", "fake_envs:FakeImageCue-v0", "--image-scale", "0", "--out", "{tmp}/x"],
         "--image-scale must be a finite number > 0, got 0.0"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--image-scale", "0.5", "--out", "{tmp}/x"],
         "--image-scale 0.5 has nothing to scale: rnnpolicy/TMaze-v0 observes Box(0.0, 1.0, (4,), float32), not an image"),
        (["train", "--algo", "ppo", "--env", "fake_envs:FakeImageCue-v0", "--image-scale", "0.5", "--image-encoder", "flatten",
          "--out", "{tmp}/x"], "--image-scale 0.5 has nothing to scale: --image-encoder 'flatten' reads no image"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--image-codes", "32", "--out", "{tmp}/x"],
         "--image-codes 32 has no image to read: rnnpolicy/TMaze-v0 observes Box(0.0, 1.0, (4,), float32), not an image"),
        (["train", "--algo", "ppo", "--env", "fake_envs:FakeImageCue-v0", "--image-codes", "8", "--image-scale", "0.5",
          "--out", "{tmp}/x"], "--image-scale 0.5 has nothing to scale: --image-codes 8 reads the image one-hot"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--lmu-theta", "64", "--out", "{tmp}/x"],
         "--lmu-theta set the Legendre memory of cell 'lmu', but cell is unset: give cell 'lmu'"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--cell", "gru", "--lmu-theta", "64", "--out", "{tmp}/x"],
         "--lmu-theta set the Legendre memory of cell 'lmu', got cell 'gru'"),
        (["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--cell", "lmu", "--lmu-theta", "0", "--out", "{tmp}/x"],
         "--lmu-theta must be a finite number of steps > 0, got 0.0"),
        (["train", "--algo", "drqn", "--env", "rnnpolicy/TMaze-v0", "--cell", "lmu", "--lmu-order", "0", "--out", "{tmp}/x"],
         "--lmu-order must be >= 1, got 0"),
        (["eval", "{tmp}/missing.pt"], "missing.pt' does not exist"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert code == 2
    assert message in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_unknown_algorithm_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algo", "a2c", "--env", "rnnpolicy/TMaze-v0", "--out", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'a2c'" in capsys.readouterr().err


def test_corrupt_checkpoint_gets_one_line(capsys, tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_text("garbage")
    code, _, err = run_cli(capsys, "eval", str(bad))
    assert code == 2 and "is not a readable torch file" in err and "Traceback" not in err


def test_train_then_eval_through_the_command_on_dict_observations(capsys, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--algo", "ppo", "--env", "fake_envs:FakeDict-v0", "--total-steps", "512", "--no-progress", "--out", str(run))
    assert code == 0, err
    for name in ("checkpoint.pt", "metrics.csv", "learning_curve.png"):
        assert (run / name).is_file()
    code, out, err = run_cli(capsys, "eval", str(run / "checkpoint.pt"), "--episodes", "5", "--env", "fake_envs:FakeDict-v0", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["episodes"] == 5 and 0.0 <= result["success_rate"] <= 1.0


def test_serve_play_and_web_commands_do_not_import_torch():
    code = (
        "import sys; from rnnpolicy.cli import main\n"
        "for argv in (['serve', '--help'], ['play', '--help'], ['web', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unwritable_output_gets_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(capsys, "train", "--algo", "ppo", "--env", "rnnpolicy/RepeatFirst-v0", "--total-steps", "256",
                           "--no-progress", "--out", str(blocker / "run"))
    assert code == 2 and "Traceback" not in err
    assert str(blocker) in err.strip().splitlines()[-1]


@pytest.mark.parametrize("algo, total, runs", [("ppo", 3000, 2048), ("drqn", 1001, 1008)])
def test_train_says_how_many_steps_it_runs_and_what_checkpoint_pt_holds(capsys, tmp_path, algo, total, runs):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--algo", algo, "--env", "fake_envs:FakeDict-v0", "--total-steps", str(total),
                             "--eval-every", "0", "--no-progress", "--out", str(run))
    assert code == 0, err
    rounding = "whole updates of 8 x 128 steps" if algo == "ppo" else "8 environments step together"
    assert f"{total} steps (runs {runs}: {rounding})" in err.splitlines()[0]
    assert int(float((run / "metrics.csv").read_text().splitlines()[-1].split(",")[0])) == runs
    assert "checkpoint.pt (final policy: no evaluation during training)" in out


def test_the_first_line_names_a_target_return_only_where_one_can_stop_the_run(capsys, tmp_path):
    base = ["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--total-steps", "512", "--no-progress"]
    code, _, err = run_cli(capsys, *base, "--out", str(tmp_path / "entry"))
    assert code == 0 and "every 8192 steps, stopping at return 1 (held over 64 more episodes)" in err.splitlines()[0]
    code, _, err = run_cli(capsys, *base, "--target-return", "inf", "--out", str(tmp_path / "off"))
    assert code == 0 and "stopping at return" not in err and "evaluating 32 episodes every 8192 steps" in err.splitlines()[0]


@pytest.mark.parametrize(
    "env, source",
    [
        ("fake_envs:FakeCodedImage-v0", "(unset ones from the defaults for images of codes, fake_envs:FakeCodedImage-v0 having no entry)"),
        ("fake_envs:FakeDict-v0", "(unset ones from the generic defaults, fake_envs:FakeDict-v0 having no entry)"),
        ("rnnpolicy/TMaze-v0", "(unset ones from the entry for rnnpolicy/TMaze-v0)"),
    ],
)
def test_the_second_line_names_where_the_unset_hyperparameters_came_from(capsys, tmp_path, env, source):
    code, _, err = run_cli(capsys, "train", "--algo", "ppo", "--env", env, "--total-steps", "512", "--eval-every", "0",
                           "--no-progress", "--out", str(tmp_path / "run"))
    assert code == 0, err
    first, second = err.splitlines()[:2]
    assert second.startswith(f"ppo hyperparameters {source}: {{")
    assert ("gru 1x64" in first) == (env == "fake_envs:FakeCodedImage-v0")
