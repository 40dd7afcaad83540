"""The Node.js gRPC client (clients/node/policy_client.mjs) steps an episode on a real server as the Python client does."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from recording_server import start_recording_server
from tls_certs import have_openssl, make_pki, write_tokens

from rnnpolicy.clients import PolicyClient, PolicyError
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.serve.auth import Security
from rnnpolicy.v1 import policy_pb2 as pb
from components import require

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
SCRIPT = NODE_DIR / "policy_client.mjs"
MODELS = ("q_lstm", "pg_gru", "box_lstm", "pg_lmu")  # discrete Q, discrete policy with a value, continuous policy, a Legendre memory
TOKEN = "node-client-token-0123456789"


def _node_skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (needs Node.js >= 18)"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return f"@grpc/grpc-js is not installed in {NODE_DIR}: run `make test` or `cd clients/node && npm install`"
    return None


@pytest.fixture(autouse=True)
def node() -> None:
    require(_node_skip_reason())


@pytest.fixture(scope="module")
def server(serve_export_dirs):
    srv, port = create_server({name: serve_export_dirs[name] for name in MODELS}, "127.0.0.1:0",
                              ServeConfig(max_sessions=100, session_ttl=60))
    yield srv, f"127.0.0.1:{port}"
    srv.stop(None)


def run_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def python_steps(target: str, model: str, observations: np.ndarray) -> list:
    """The reference: the Python client on a fresh session, the same observations, episode_start on step 1."""
    with PolicyClient(target) as client, client.session(model) as session:
        return [session.step(obs, episode_start=t == 0) for t, obs in enumerate(observations)]


def assert_same_steps(node_steps: list[dict], expected: list, discrete: bool) -> None:
    assert [s["seq"] for s in node_steps] == [r.seq for r in expected] == list(range(1, len(expected) + 1))
    for t, (got, want) in enumerate(zip(node_steps, expected)):
        if discrete:
            assert got["action"] == want.action, f"step {t + 1}"
        else:
            np.testing.assert_allclose(got["action"], want.action, atol=1e-5, err_msg=f"step {t + 1}")
        if want.value is None:
            assert got["value"] is None, f"step {t + 1}"
        else:
            assert got["value"] == pytest.approx(want.value, abs=1e-5), f"step {t + 1}"


def lcg_observations(seed: int, steps: int, dim: int) -> np.ndarray:
    """The client's documented default observations."""
    s, values = seed % 2**32, []
    for _ in range(steps * dim):
        s = (1664525 * s + 1013904223) % 2**32
        values.append(s / 2**32 * 2 - 1)
    return np.array(values, dtype=np.float32).reshape(steps, dim)


@pytest.mark.parametrize("model", MODELS)
def test_node_episode_matches_python_client_and_closes_its_session(server, model, tmp_path):
    srv, target = server
    with PolicyClient(target) as client:
        spec = next(m.spec for m in client.list_models() if m.name == model)
    observations = np.random.default_rng(3).uniform(-2, 2, (12, spec.obs_dim)).astype(np.float32)
    obs_json = tmp_path / "obs.json"
    obs_json.write_text(json.dumps(observations.tolist()))
    sessions_before = len(srv.directory)

    result = run_node("--target", target, "--model", model, "--obs-json", str(obs_json), "--token", "t0k3n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    out = json.loads(result.stdout)

    assert len(srv.directory) == sessions_before  # CloseSession freed the slot
    with PolicyClient(target) as client, pytest.raises(PolicyError) as closed:
        client.call("Step", pb.StepRequest(session_id=out["session_id"], seq=13, obs=observations[0].tolist()))
    assert closed.value.code == grpc.StatusCode.NOT_FOUND

    expected = python_steps(target, model, observations)
    assert (out["model"], out["model_version"]) == (model, expected[0].model_version)
    assert_same_steps(out["steps"], expected, spec.action.is_discrete)
    assert (expected[0].value is not None) == (model != "q_lstm")  # the value path is exercised where it exists


def test_node_default_observations_are_the_documented_lcg(server):
    _, target = server
    result = run_node("--target", target, "--model", "pg_gru", "--steps", "7", "--seed", "5")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["steps"]) == 7
    assert_same_steps(out["steps"], python_steps(target, "pg_gru", lcg_observations(5, 7, 4)), discrete=True)


def test_node_unknown_model_is_one_line_and_exit_2(server):
    _, target = server
    result = run_node("--target", target, "--model", "no_such_model")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CreateSession: NOT_FOUND: "), result.stderr
    assert "no_such_model" in lines[0]


def test_node_bad_arguments_are_one_line_and_exit_2(server):
    _, target = server
    for args in (["--model", "q_lstm"], ["--target", target, "--steps", "zero"], ["--target", target, "--nope"]):
        result = run_node(*args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr


@pytest.fixture(scope="module")
def secure_server(serve_export_dirs, tmp_path_factory):
    """Mutual TLS plus bearer tokens, as `rnnpolicy serve --tls-cert/--tls-key/--tls-client-ca/--auth-tokens` runs it."""
    if not have_openssl():
        pytest.skip("the openssl command line is needed to make test certificates")
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tokens = write_tokens(tmp_path_factory.mktemp("auth") / "tokens", {"node-client": TOKEN})
    security = Security(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca, auth_tokens=tokens)
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", security=security)
    yield srv, f"127.0.0.1:{port}", pki
    srv.stop(None)


def test_node_over_mutual_tls_sends_the_token_on_every_call(secure_server, tmp_path):
    srv, target, pki = secure_server
    tls = ["--target", target, "--ca", str(pki.ca)]
    client_cert = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    result = run_node(*tls, *client_cert, "--token-file", str(token_file), "--steps", "3")
    assert result.returncode == 0, result.stderr  # every RPC kind (list, create, step, close) passed the token check
    assert [s["seq"] for s in json.loads(result.stdout)["steps"]] == [1, 2, 3]
    assert len(srv.directory) == 0

    wrong_token = run_node(*tls, *client_cert, "--token", "not-a-token-0123456789")
    assert wrong_token.returncode == 2
    assert wrong_token.stderr.startswith("error: ListModels: UNAUTHENTICATED: "), wrong_token.stderr
    no_client_cert = run_node(*tls, "--token", TOKEN, "--timeout-ms", "5000")
    assert no_client_cert.returncode == 2
    assert no_client_cert.stderr.startswith("error: ListModels: UNAVAILABLE: "), no_client_cert.stderr
    assert len(wrong_token.stderr.splitlines()) == len(no_client_cert.stderr.splitlines()) == 1


def test_node_sends_x_session_id_on_every_call_on_the_session():
    """As the Python clients do (tests/test_client_metadata.py): proxies route a session's calls by it."""
    recorder, servicer, target = start_recording_server()
    try:
        result = run_node("--target", target, "--steps", "3", "--token", TOKEN)
    finally:
        recorder.stop(None)
    assert result.returncode == 0, result.stderr
    session_id = json.loads(result.stdout)["session_id"]
    assert [method for method, _, _ in servicer.calls] == ["ListModels", "CreateSession", "Step", "Step", "Step",
                                                          "CloseSession"]
    for method, metadata, request_session in servicer.calls:
        assert metadata.get("authorization") == f"Bearer {TOKEN}"
        if method in ("Step", "CloseSession"):
            assert metadata.get("x-session-id") == session_id == request_session, (method, metadata)
        else:
            assert "x-session-id" not in metadata, (method, metadata)
