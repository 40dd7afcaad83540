"""Two servers sharing one write-through store: any server steps any session, a stale copy is fenced and redone,
a retried seq returns the stored answer wherever it lands, an unreachable store changes nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fake_store import SharedDictStore
from rnnpolicy.serve import create_server
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc
from rollout import OfflineRollout


@pytest.fixture
def pair(serve_export_dirs):
    store = SharedDictStore()
    models = {"q_lstm": serve_export_dirs["q_lstm"], "pg_gru": serve_export_dirs["pg_gru"]}
    a, port_a = create_server(models, "127.0.0.1:0", store=store)
    b, port_b = create_server(models, "127.0.0.1:0", store=store)
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in (port_a, port_b)]
    try:
        yield store, [policy_pb2_grpc.PolicyServiceStub(c) for c in channels], (a, b)
    finally:
        for channel in channels:
            channel.close()
        a.stop(None)
        b.stop(None)


def _obs(t: int) -> list[float]:
    return [float(np.sin(t + i)) for i in range(5)]


def test_steps_alternating_between_servers_equal_one_offline_rollout(pair, serve_export_dirs):
    store, stubs, _ = pair
    sid = stubs[0].CreateSession(pb.CreateSessionRequest(model="q_lstm")).session_id
    ref = OfflineRollout(serve_export_dirs["q_lstm"])
    # A, A, B, B, A (A's copy is stale: its commit is fenced and the step redone from the store), B, ...
    for t, server in enumerate([0, 0, 1, 1, 0, 1, 0, 0, 1, 0]):
        start = t in (0, 6)
        answer = stubs[server].Step(pb.StepRequest(session_id=sid, seq=t + 1, obs=_obs(t), episode_start=start))
        np.testing.assert_allclose(answer.q_values, ref.step(_obs(t), start)["q_values"][0], atol=1e-5)
        assert answer.seq == t + 1
    assert all(n == 1 for n in store.commits.values()) and len(store.commits) == 10


def test_a_retried_seq_returns_the_stored_answer_on_the_other_server(pair):
    _, stubs, _ = pair
    sid = stubs[0].CreateSession(pb.CreateSessionRequest(model="q_lstm")).session_id
    first = stubs[0].Step(pb.StepRequest(session_id=sid, seq=1, obs=_obs(0), episode_start=True))
    again = stubs[1].Step(pb.StepRequest(session_id=sid, seq=1, obs=_obs(99)))  # the answer was lost; retried there
    assert list(again.q_values) == list(first.q_values)
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Step(pb.StepRequest(session_id=sid, seq=3, obs=_obs(2)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expected 2" in err.value.details()


def test_an_unreachable_store_answers_unavailable_and_changes_nothing(pair):
    store, stubs, _ = pair
    sid = stubs[0].CreateSession(pb.CreateSessionRequest(model="pg_gru", seed=3)).session_id
    obs = [0.1] * 4
    stubs[0].Step(pb.StepRequest(session_id=sid, seq=1, obs=obs, episode_start=True, deterministic=False))
    store.down = True
    for stub in stubs:
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=obs, deterministic=False))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "session store unreachable" in err.value.details()
    store.down = False
    after = stubs[0].Step(pb.StepRequest(session_id=sid, seq=2, obs=obs, deterministic=False))
    # The same seeded session on a store that never failed draws the same action.
    clean = SharedDictStore()
    srv, port = create_server({"pg_gru": pair[2][0].models["pg_gru"].backend.path.parent}, "127.0.0.1:0", store=clean)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            other = stub.CreateSession(pb.CreateSessionRequest(model="pg_gru", seed=3)).session_id
            stub.Step(pb.StepRequest(session_id=other, seq=1, obs=obs, episode_start=True, deterministic=False))
            expected = stub.Step(pb.StepRequest(session_id=other, seq=2, obs=obs, deterministic=False))
    finally:
        srv.stop(None)
    assert after.discrete_action == expected.discrete_action and list(after.logits) == list(expected.logits)


def test_closing_on_one_server_is_seen_on_the_other(pair):
    _, stubs, _ = pair
    sid = stubs[0].CreateSession(pb.CreateSessionRequest(model="q_lstm")).session_id
    stubs[0].Step(pb.StepRequest(session_id=sid, seq=1, obs=_obs(0), episode_start=True))
    stubs[1].CloseSession(pb.CloseSessionRequest(session_id=sid))
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Step(pb.StepRequest(session_id=sid, seq=2, obs=_obs(1)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "was closed at" in err.value.details()


def test_a_step_batch_on_either_server_steps_sessions_created_anywhere(pair, serve_export_dirs):
    _, stubs, _ = pair
    sids = [stubs[i % 2].CreateSession(pb.CreateSessionRequest(model="q_lstm")).session_id for i in range(4)]
    refs = [OfflineRollout(serve_export_dirs["q_lstm"]) for _ in sids]
    for t in range(4):
        server = stubs[t % 2]
        answer = server.StepBatch(pb.StepBatchRequest(session_ids=sids, seqs=[t + 1] * 4,
                                                      obs=[v for _ in sids for v in _obs(t)],
                                                      episode_start=[t == 0] * 4))
        assert not answer.errors, answer.errors
        q = np.array(answer.q_values).reshape(4, -1)
        for i, ref in enumerate(refs):
            np.testing.assert_allclose(q[i], ref.step(_obs(t), t == 0)["q_values"][0], atol=1e-5)


def test_health_follows_the_store(pair):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    store, _, (a, _) = pair
    with grpc.insecure_channel(f"127.0.0.1:{a.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        store.down = True
        assert a.check_store() is False
        assert health.Check(health_pb2.HealthCheckRequest(service="rnnpolicy.v1.PolicyService")).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        store.down = False
        assert a.check_store() is True
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
