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
    from rnnpolicy.spec import ActionSpec, LmuSpec, PolicySpec

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
        "pg_lmu": PolicySpec(kind="policy", cell="lmu", num_layers=1, hidden_size=8, lmu=LmuSpec(order=6, theta=8.0),
                             obs_encoding=ObsEncoding.flat(4), action=ActionSpec("discrete", n=3)),
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


# ---------------------------------------------------------------- AOTInductor and C++ (tests marked cpp)


def require_tools(*tools):
    """Skip (or, with RNNPOLICY_REQUIRE_ALL=1 as in CI, fail) when a command-line tool is missing."""
    import os
    import shutil

    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = f"{', '.join(missing)} not found (needed to build C++: apt-get install -y g++ cmake make)"
        if os.environ.get("RNNPOLICY_REQUIRE_ALL") == "1":
            pytest.fail(reason + "; RNNPOLICY_REQUIRE_ALL=1 makes this an error")
        pytest.skip(reason)


def aot_specs():
    """The policies compiled with AOTInductor: a discrete LSTM actor-critic and a continuous GRU one in the default
    suite; ``lmu-discrete`` (two state tensors of different widths) only where a test marked ``slow`` asks for it."""
    from rnnpolicy.encoding import ObsEncoding
    from rnnpolicy.spec import ActionSpec, LmuSpec, ObsNormSpec, PolicySpec

    return {
        "lstm-discrete": PolicySpec(kind="policy", cell="lstm", num_layers=2, hidden_size=16, num_cores=2,
                                    obs_encoding=ObsEncoding.flat(6), action=ActionSpec("discrete", n=4),
                                    obs_norm=ObsNormSpec(mean=(0.1,) * 6, var=(2.0,) * 6)),
        "gru-box": PolicySpec(kind="policy", cell="gru", num_layers=1, hidden_size=8,
                              obs_encoding=ObsEncoding.flat(3),
                              action=ActionSpec("box", shape=(2,), low=(-1.0, -0.5), high=(1.0, 0.5))),
        "lmu-discrete": PolicySpec(kind="policy", cell="lmu", num_layers=1, hidden_size=12, lmu=LmuSpec(order=5, theta=6.0),
                                   obs_encoding=ObsEncoding.flat(4), action=ActionSpec("discrete", n=3)),
    }


def _aot_export(root, name, seed):
    """``aot_specs()[name]`` with random weights, exported with ``aot=True`` and verified (one ~35 s compile)."""
    import torch

    from rnnpolicy.export import export_checkpoint
    from rnnpolicy.train.checkpoint import save_checkpoint
    from rnnpolicy.train.models import build_model

    require_tools("g++")
    spec = aot_specs()[name]
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():  # larger weights than the init and no head bias, so actions follow the state
        for param_name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * 0.5)
            if param_name.endswith("head.bias"):
                param.zero_()
    checkpoint = save_checkpoint(root / name / "checkpoint.pt", spec, model, {})
    return export_checkpoint(checkpoint, root / name / "export", aot=True)


@pytest.fixture(scope="session")
def aot_exports(tmp_path_factory):
    """The default suite's two AOT policies, ``lstm-discrete`` and ``gru-box``: name -> ExportReport (once per session)."""
    root = tmp_path_factory.mktemp("aot_models")
    return {name: _aot_export(root, name, seed) for name, seed in (("lstm-discrete", 200), ("gru-box", 201))}


@pytest.fixture(scope="session")
def lmu_aot_export(tmp_path_factory):
    """``lmu-discrete`` exported with ``aot=True`` (a third compile, so only the ``slow`` test uses it)."""
    return _aot_export(tmp_path_factory.mktemp("aot_lmu"), "lmu-discrete", 202)


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
