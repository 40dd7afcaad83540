"""``--wrapper module:Callable[:key=value,...]``: parsing, one-line errors, and the same environment in eval and play."""

import numpy as np
import pytest

from rnnpolicy.cli import main
from rnnpolicy.envs import make_env, parse_wrapper
from rnnpolicy.train.checkpoint import load_checkpoint
from rnnpolicy.train.evaluate import evaluate


def test_parse_names_keywords_and_literal_values():
    spec = parse_wrapper("gymnasium.wrappers:TimeLimit:max_episode_steps=7")
    assert (spec.module, spec.attribute, spec.kwargs) == ("gymnasium.wrappers", "TimeLimit", {"max_episode_steps": 7})
    spec = parse_wrapper("pkg.mod:Cls.factory:a=0.5, b=True,c=(1, 2),d='x,y',e=plain")
    assert spec.attribute == "Cls.factory"
    assert spec.kwargs == {"a": 0.5, "b": True, "c": (1, 2), "d": "x,y", "e": "plain"}
    assert parse_wrapper("m:F:").kwargs == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("ImgObsWrapper", "expected module:Callable or module:Callable:key=value,key2=value"),
        ("minigrid.wrappers:", "expected module:Callable"),
        ("bad module:X", "with dotted Python names"),
        ("m:F:novalue", "keyword argument 'novalue' is not key=value"),
        ("m:F:1x=2", "keyword argument '1x=2' is not key=value"),
    ],
)
def test_malformed_values_are_refused_naming_the_part(text, message):
    with pytest.raises(ValueError, match=message):
        parse_wrapper(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("no_such_module_xyz:Wrap", "cannot import module 'no_such_module_xyz'"),
        ("fake_envs:NoSuchWrapper", "module 'fake_envs' has no attribute 'NoSuchWrapper'"),
        ("fake_envs:NOT_CALLABLE", "fake_envs:NOT_CALLABLE is not callable"),
        ("fake_envs:AppendConstant:colour=1", "calling it on the environment failed: TypeError"),
    ],
)
def test_wrappers_that_cannot_be_loaded_or_applied_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        make_env("rnnpolicy/CartPoleNoVel-v0", [text])


def test_wrappers_apply_in_order():
    env = make_env("rnnpolicy/CartPoleNoVel-v0", ["fake_envs:AppendConstant:value=1", "fake_envs:AppendConstant:value=2"])
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and obs[-2:].tolist() == [1.0, 2.0]


def test_bad_wrapper_on_the_command_line_gets_one_line(capsys, tmp_path):
    code = main(["train", "--algo", "ppo", "--env", "rnnpolicy/TMaze-v0", "--wrapper", "fake_envs:Nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == "rnnpolicy train: error: --wrapper 'fake_envs:Nope': module 'fake_envs' has no attribute 'Nope'"


def test_a_wrapped_env_with_an_unsupported_space_still_gets_the_space_error(capsys, tmp_path):
    # Wrapping may leave the observation unencodable: the existing error names the space.
    code = main(["train", "--algo", "ppo", "--env", "fake_envs:FakeText-v0", "--wrapper", "fake_envs:AppendConstant:value=1",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "Text" in capsys.readouterr().err


def test_train_records_the_wrappers_and_eval_rebuilds_the_same_env(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--algo", "ppo", "--env", "fake_envs:FakeText-v0", "--wrapper", "fake_envs:TextToBox",
            "--wrapper", "fake_envs:AppendConstant:value=2.5", "--total-steps", "512", "--num-envs", "2",
            "--rollout-steps", "32", "--num-minibatches", "1", "--hidden-size", "8", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    wrappers = ("fake_envs:TextToBox", "fake_envs:AppendConstant:value=2.5")
    for name in ("checkpoint.pt", "last.pt"):
        checkpoint = load_checkpoint(out / name)
        assert checkpoint.spec.env_wrappers == wrappers and checkpoint.spec.obs_dim == 2
        assert tuple(checkpoint.config["train"]["wrapper"]) == wrappers
    # eval rebuilds the wrapped env from the checkpoint alone (the bare env's text could not be encoded) ...
    assert evaluate(out / "checkpoint.pt", episodes=2).episodes == 2
    # ... and an explicit --wrapper list replaces the recorded one.
    assert main(["eval", str(out / "checkpoint.pt"), "--episodes", "2", "--wrapper", "fake_envs:TextToBox"]) == 2
    assert "encodes to 1 observation values, but the policy takes 2" in capsys.readouterr().err


def test_play_rebuilds_the_wrapped_env_from_the_served_spec(tmp_path):
    from rnnpolicy.clients import PolicyClient
    from rnnpolicy.clients.cli import play_episodes
    from rnnpolicy.export.exporter import export_checkpoint
    from rnnpolicy.serve import create_server
    from rnnpolicy.train.api import train
    from rnnpolicy.train.config import TrainConfig

    config = TrainConfig(algo="ppo", env="fake_envs:FakeText-v0", wrapper=("fake_envs:TextToBox",), out=str(tmp_path / "run"),
                         total_steps=256, hidden_size=8, progress=False, eval_every=0)
    path = train(config, {"num_envs": 2, "rollout_steps": 32, "num_minibatches": 1})
    export_dir = tmp_path / "export"
    export_checkpoint(path, export_dir)
    server, port = create_server({"m": export_dir})
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            result = play_episodes(client, "m", "fake_envs:FakeText-v0", episodes=2)
            # another environment (wrapped to 1 observation value too, but 3 actions) is refused before its first step
            with pytest.raises(ValueError, match=r"environment 'Acrobot-v1' with wrappers \['fake_envs:TextToBox'\] acts in Discrete\(3\)"):
                play_episodes(client, "m", "Acrobot-v1", episodes=1)
    finally:
        server.stop(0)
    assert len(result.returns) == 2 and np.isfinite(result.returns).all()
