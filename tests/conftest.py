"""Shared pytest fixtures."""

import importlib.util

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Small recurrent nets run fastest on one thread; more only contend for the 2 cores (30x slower here)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- serving fixtures (serve/clients tests)


def _serve_specs():
    from rnnpolicy.encoding import ObsEncoding
    from rnnpolicy.envs import make_env
    from rnnpolicy.spec import ActionSpec, PolicySpec

    env = make_env("rnnpolicy/TMaze-v0")
    return {
        "tmaze": PolicySpec(kind="q", cell="lstm", num_layers=1, hidden_size=16,
                            obs_encoding=ObsEncoding.from_space(env.observation_space),
                            action=ActionSpec("discrete", n=int(env.action_space.n)), env_id="rnnpolicy/TMaze-v0"),
        "q_lstm": PolicySpec(kind="q", cell="lstm", num_layers=1, hidden_size=16,
                             obs_encoding=ObsEncoding.flat(5), action=ActionSpec("discrete", n=3)),
        "pg_gru": PolicySpec(kind="policy", cell="gru", num_layers=2, hidden_size=8,
                             obs_encoding=ObsEncoding.flat(4), action=ActionSpec("discrete", n=4)),
        "box_lstm": PolicySpec(kind="policy", cell="lstm", num_layers=1, hidden_size=8, num_cores=2,
                               obs_encoding=ObsEncoding.flat(3),
                               action=ActionSpec("box", shape=(2,), low=(-1.0, -1.0), high=(1.0, 1.0))),
    }


def _export_random(root, name, spec, seed):
    """Export a random-weight model of ``spec`` to ``root/name/export``; return that directory."""
    import torch

    from rnnpolicy.export import export_checkpoint
    from rnnpolicy.train.checkpoint import save_checkpoint
    from rnnpolicy.train.models import build_model

    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():  # larger weights than the init, so actions vary with the state
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    ckpt = save_checkpoint(root / name / "checkpoint.pt", spec, model, {})
    export_checkpoint(ckpt, root / name / "export", verify=False)
    return root / name / "export"


@pytest.fixture(scope="session")
def serve_export_dirs(tmp_path_factory):
    """Exported random-weight models for serving tests: name -> export directory (model.onnx, spec.json)."""
    root = tmp_path_factory.mktemp("serve_models")
    return {name: _export_random(root, name, spec, 100 + i) for i, (name, spec) in enumerate(_serve_specs().items())}


@pytest.fixture(scope="session")
def q_lstm_v2_export(tmp_path_factory):
    """A second version of ``q_lstm``: the same spec (state, observation and action shapes), other weights."""
    return _export_random(tmp_path_factory.mktemp("serve_models_v2"), "q_lstm", _serve_specs()["q_lstm"], 999)


# ---------------------------------------------------------------- cluster fixtures (tests/cluster_procs.py)


@pytest.fixture
def redis_server(tmp_path):
    """A ``redis-server`` on a free loopback port in a temporary directory, AOF on; stopped afterwards
    (skips, or fails with RNNPOLICY_REQUIRE_ALL=1, where redis-server is missing)."""
    from cluster_procs import start_redis

    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
