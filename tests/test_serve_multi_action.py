"""A MultiDiscrete policy served end to end: a real server on loopback against the offline onnxruntime rollout."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from conftest import _export_random
from rollout import OfflineRollout
from test_node_grpc_client import _node_skip_reason, run_node

from rnnpolicy.clients import PolicyClient
from rnnpolicy.clients.cli import play_episodes
from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.serve.layout import OutputLayout
from rnnpolicy.spec import ActionSpec, PolicySpec
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

NVEC = (3, 2, 4)
BOUNDS = np.cumsum((0,) + NVEC)


def _spec(**kw) -> PolicySpec:
    values = dict(kind="policy", cell="lstm", num_layers=1, hidden_size=8, obs_encoding=ObsEncoding.flat(4),
                  action=ActionSpec.multi_discrete(NVEC))
    return PolicySpec(**{**values, **kw})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_action")
    recall = _spec(obs_encoding=ObsEncoding.flat(3), action=ActionSpec.multi_discrete((3, 2)),
                   env_id="fake_envs:FakeRecallPair-v0")
    return {"md": _export_random(root, "md", _spec(), 7), "bits": _export_random(root, "bits", _spec(
                cell="gru", action=ActionSpec.multi_binary((2, 2))), 8),
            "recall": _export_random(root, "recall", recall, 9)}


@pytest.fixture(scope="module")
def target(exports):
    srv, port = create_server(exports, "127.0.0.1:0", ServeConfig(max_sessions=100, session_ttl=60))
    yield f"127.0.0.1:{port}"
    srv.stop(None)


@pytest.fixture(scope="module")
def stub(target):
    channel = grpc.insecure_channel(target)
    yield policy_pb2_grpc.PolicyServiceStub(channel)
    channel.close()


def test_list_models_describes_the_factored_action_space(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    md, bits = models["md"].action, models["bits"].action
    assert (md.kind, list(md.shape), list(md.nvec)) == ("multi_discrete", [3], list(NVEC))
    assert (bits.kind, list(bits.shape), list(bits.nvec)) == ("multi_binary", [2, 2], [2, 2, 2, 2])
    assert list(models["md"].outputs[:3]) == ["logits", "action", "value"]


@pytest.mark.parametrize("model, k", [("md", 3), ("bits", 4)])
def test_steps_of_interleaved_sessions_equal_the_offline_rollout(stub, exports, model, k):
    rng = np.random.default_rng(0)
    ids = [stub.CreateSession(pb.CreateSessionRequest(model=model)).session_id for _ in range(4)]
    refs = [OfflineRollout(exports[model]) for _ in ids]
    for seq in range(1, 31):
        for sid, ref in zip(ids, refs):
            obs = rng.uniform(-2, 2, 4).astype(np.float32)
            start = seq == 1 or rng.random() < 0.1
            response = stub.Step(pb.StepRequest(session_id=sid, seq=seq, obs=obs.tolist(), episode_start=start,
                                                deterministic=True))
            expected = ref.step(obs, start)
            assert list(response.multi_action) == expected["action"][0].tolist() and len(response.multi_action) == k
            np.testing.assert_allclose(response.logits, expected["logits"][0], atol=1e-5)
            assert response.discrete_action == 0 and not response.continuous_action


def test_step_batch_answers_multi_actions_row_major(stub, exports):
    ids = [stub.CreateSession(pb.CreateSessionRequest(model="md")).session_id for _ in range(5)]
    refs = [OfflineRollout(exports["md"]) for _ in ids]
    rng = np.random.default_rng(1)
    for seq in range(1, 6):
        obs = rng.uniform(-2, 2, (5, 4)).astype(np.float32)
        response = stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[seq] * 5, obs=obs.ravel().tolist(),
                                                      episode_start=[seq == 1] * 5, deterministic=True))
        expected = np.stack([ref.step(o, seq == 1)["action"][0] for ref, o in zip(refs, obs)])  # (5, 3)
        np.testing.assert_array_equal(np.array(response.multi_actions).reshape(5, 3), expected)
        assert not response.discrete_actions and len(response.logits) == 5 * sum(NVEC)


def test_sampled_actions_follow_each_entrys_softmax_and_the_session_seed(stub):
    obs = [0.5, -1.0, 0.25, 2.0]

    def draws(seed, n):
        sid = stub.CreateSession(pb.CreateSessionRequest(model="md", seed=seed)).session_id
        out = [stub.Step(pb.StepRequest(session_id=sid, seq=s, obs=obs, episode_start=True, deterministic=False))
               for s in range(1, n + 1)]
        return np.array([r.multi_action for r in out]), np.array(out[0].logits)

    actions, logits = draws(3, 1500)  # every step starts an episode: the same logits each time
    assert np.array_equal(draws(3, 40)[0], actions[:40]) and not np.array_equal(draws(4, 40)[0], actions[:40])
    for j, (lo, hi) in enumerate(zip(BOUNDS[:-1], BOUNDS[1:])):
        probs = np.exp(logits[lo:hi] - logits[lo:hi].max())
        freq = np.bincount(actions[:, j], minlength=hi - lo) / len(actions)
        np.testing.assert_allclose(freq, probs / probs.sum(), atol=0.05)


def test_python_client_returns_the_action_vector(target, exports):
    ref = OfflineRollout(exports["bits"])
    with PolicyClient(target) as client, client.session("bits") as session:
        for t in range(5):
            obs = np.full(4, t / 5 - 0.5, np.float32)
            result = session.step(obs, episode_start=t == 0)
            np.testing.assert_array_equal(result.action, ref.step(obs, t == 0)["action"][0])
            assert result.action.dtype == np.int64 and session.spec.action.to_env(result.action).shape == (2, 2)


def test_play_drives_a_multi_discrete_environment(target):
    # FakeRecallPair asserts every action lies in its MultiDiscrete([3, 2]) space.
    with PolicyClient(target) as client:
        result = play_episodes(client, "recall", "fake_envs:FakeRecallPair-v0", episodes=3, deterministic=False)
    assert len(result.returns) == 3 and all(0.0 <= r <= 1.0 for r in result.returns)


def test_layout_packs_and_unpacks_factored_rows():
    layout = OutputLayout(_spec(), ("logits", "action", "value"))
    assert layout.width == sum(NVEC) + 3 + 1
    rows = layout.pack({"logits": np.zeros((2, 9)), "action": np.array([[2, 1, 3], [0, 0, 1]]),
                        "value": np.array([0.5, -1.0])}, 2)
    assert layout.step_fields(rows[0])["multi_action"] == [2, 1, 3]
    assert layout.batch_fields(rows)["multi_actions"] == [2, 1, 3, 0, 0, 1]


@pytest.mark.skipif(_node_skip_reason() is not None, reason=str(_node_skip_reason()))
def test_node_client_prints_the_action_entries(target, tmp_path):
    observations = np.random.default_rng(5).uniform(-2, 2, (6, 4)).astype(np.float32)
    (tmp_path / "obs.json").write_text(json.dumps(observations.tolist()))
    result = run_node("--target", target, "--model", "md", "--obs-json", str(tmp_path / "obs.json"))
    assert result.returncode == 0, result.stderr
    with PolicyClient(target) as client, client.session("md") as session:
        expected = [session.step(o, episode_start=t == 0).action.tolist() for t, o in enumerate(observations)]
    assert [s["action"] for s in json.loads(result.stdout)["steps"]] == expected
