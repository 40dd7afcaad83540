"""PolicyService against a real in-process server on port 0: ordering, isolation, limits, bad input."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc
from rollout import OfflineRollout

OBS_DIM = {"q_lstm": 5, "pg_gru": 4, "box_lstm": 3, "pg_lmu": 4}


@pytest.fixture(scope="module")
def server(serve_export_dirs):
    srv, port = create_server(serve_export_dirs, "127.0.0.1:0", ServeConfig(max_sessions=500, session_ttl=60))
    yield srv, port
    srv.stop(None)


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server[1]}")
    yield policy_pb2_grpc.PolicyServiceStub(channel)
    channel.close()


def _open(stub, model, **kw):
    return stub.CreateSession(pb.CreateSessionRequest(model=model, **kw)).session_id


def _check_same(response, ref, model):
    if model == "box_lstm":
        np.testing.assert_allclose(response.continuous_action, ref["action"][0], atol=1e-5)
        np.testing.assert_allclose(response.mean, ref["mean"][0], atol=1e-5)
    else:
        assert response.discrete_action == int(ref["action"][0])
        head = "q_values" if model == "q_lstm" else "logits"
        np.testing.assert_allclose(getattr(response, head), ref[head][0], atol=1e-5)
    if "value" in ref:
        assert response.value == pytest.approx(float(ref["value"][0]), abs=1e-5)


@pytest.mark.parametrize("model", ["q_lstm", "pg_gru", "box_lstm", "pg_lmu"])
def test_32_interleaved_sessions_match_independent_offline_rollouts(server, stub, serve_export_dirs, model):
    rng = random.Random(7)
    ids = [_open(stub, model) for _ in range(32)]
    refs = [OfflineRollout(serve_export_dirs[model]) for _ in ids]
    seqs = [0] * 32
    plan = [i for i in range(32) for _ in range(12)]
    rng.shuffle(plan)
    work = [plan[t::4] for t in range(4)]  # 4 threads, each a random interleaving; sessions shared across threads
    locks = [threading.Lock() for _ in ids]
    errors = []

    def drive(items, seed):
        local = np.random.default_rng(seed)
        for i in items:
            with locks[i]:
                seqs[i] += 1
                obs = local.normal(size=OBS_DIM[model]).astype(np.float32)
                start = seqs[i] == 1 or local.random() < 0.15
                mode = local.integers(3)
                try:
                    if mode == 0:
                        r = stub.Step(pb.StepRequest(session_id=ids[i], seq=seqs[i], obs=obs, episode_start=start,
                                                     deterministic=True))
                    elif mode == 1:
                        r = next(stub.StepStream(iter([pb.StepRequest(session_id=ids[i], seq=seqs[i], obs=obs,
                                                                      episode_start=start, deterministic=True)])))
                    else:
                        b = stub.StepBatch(pb.StepBatchRequest(session_ids=[ids[i]], seqs=[seqs[i]], obs=obs,
                                                               episode_start=[start], deterministic=True))
                        r = pb.StepResponse(session_id=ids[i], seq=b.seqs[0])
                        if b.discrete_actions:
                            r.discrete_action = b.discrete_actions[0]
                        r.continuous_action.extend(b.continuous_actions)
                        r.q_values.extend(b.q_values)
                        r.logits.extend(b.logits)
                        r.mean.extend(b.mean)
                        if b.values:
                            r.value = b.values[0]
                    _check_same(r, refs[i].step(obs, start), model)
                except Exception as exc:  # collected for the main thread
                    errors.append(exc)

    threads = [threading.Thread(target=drive, args=(w, k)) for k, w in enumerate(work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_step_batch_of_many_sessions_matches_offline(server, stub, serve_export_dirs):
    ids = [_open(stub, "q_lstm") for _ in range(40)]
    refs = [OfflineRollout(serve_export_dirs["q_lstm"]) for _ in ids]
    rng = np.random.default_rng(0)
    for seq in range(1, 6):
        obs = rng.normal(size=(40, 5)).astype(np.float32)
        starts = rng.random(40) < 0.2
        resp = stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[seq] * 40, obs=obs.ravel(),
                                                  episode_start=starts.tolist(), deterministic=True))
        assert not resp.errors
        q = np.array(resp.q_values).reshape(40, 3)
        for i in range(40):
            ref = refs[i].step(obs[i], starts[i])
            assert resp.discrete_actions[i] == int(ref["action"][0])
            np.testing.assert_allclose(q[i], ref["q_values"][0], atol=1e-5)


def test_concurrent_streams_batch_across_sessions_and_match_offline(server, serve_export_dirs):
    """64 streams stepping at once: steps admitted in one turn of the server's event loop share an
    onnxruntime call, and every session still gets exactly its own offline rollout."""
    srv, port = server
    sessions, steps = 64, 8
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(sessions, steps, OBS_DIM["q_lstm"])).astype(np.float32)
    starts = rng.random((sessions, steps)) < 0.2
    starts[:, 0] = True
    batches_before = srv.metrics.value("rnnpolicy_batch_size_count", {"model": "q_lstm"})
    rows_before = srv.metrics.value("rnnpolicy_batch_size_sum", {"model": "q_lstm"})

    async def drive() -> list[list[pb.StepResponse]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            aio_stub = policy_pb2_grpc.PolicyServiceStub(channel)
            ids = [(await aio_stub.CreateSession(pb.CreateSessionRequest(model="q_lstm"))).session_id
                   for _ in range(sessions)]

            async def one(i: int) -> list[pb.StepResponse]:
                call = aio_stub.StepStream()
                answers = []
                for t in range(steps):
                    await call.write(pb.StepRequest(session_id=ids[i], seq=t + 1, obs=obs[i, t],
                                                    episode_start=bool(starts[i, t]), deterministic=True))
                    answers.append(await call.read())
                await call.done_writing()
                return answers

            return await asyncio.gather(*(one(i) for i in range(sessions)))

    answers = asyncio.run(drive())
    for i in range(sessions):
        ref = OfflineRollout(serve_export_dirs["q_lstm"])
        for t in range(steps):
            assert not answers[i][t].HasField("error"), answers[i][t].error.message
            _check_same(answers[i][t], ref.step(obs[i, t], starts[i, t]), "q_lstm")
    calls = srv.metrics.value("rnnpolicy_batch_size_count", {"model": "q_lstm"}) - batches_before
    rows = srv.metrics.value("rnnpolicy_batch_size_sum", {"model": "q_lstm"}) - rows_before
    assert rows == sessions * steps
    assert calls < rows / 2, f"{rows} steps took {calls} onnxruntime calls: streams were not batched together"


def test_repeat_of_last_seq_returns_same_response_without_advancing(stub):
    sid = _open(stub, "q_lstm")
    obs = [0.3] * 5
    first = stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=obs, episode_start=True))
    state = stub.GetSessionState(pb.GetSessionStateRequest(session_id=sid))
    again = stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=[9.0] * 5))
    assert again == first
    assert stub.GetSessionState(pb.GetSessionStateRequest(session_id=sid)) == state
    assert stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=obs)).seq == 2


def test_seq_gap_is_refused_naming_the_expected_seq(stub):
    sid = _open(stub, "q_lstm")
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=[0.0] * 5))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected 1" in err.value.details()
    stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=[0.0] * 5))
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(pb.StepRequest(session_id=sid, seq=3, obs=[0.0] * 5))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected 2" in err.value.details()


def test_concurrent_steps_on_one_session_are_serialised(stub, serve_export_dirs):
    sid = _open(stub, "q_lstm")
    ref = OfflineRollout(serve_export_dirs["q_lstm"])
    obs = np.linspace(-1, 1, 5).astype(np.float32)
    for seq in range(1, 21):
        results = []

        def send():
            results.append(stub.Step(pb.StepRequest(session_id=sid, seq=seq, obs=obs, episode_start=seq == 1)))

        threads = [threading.Thread(target=send) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = ref.step(obs, seq == 1)
        assert all(r == results[0] for r in results)  # applied once, the others answered from the cache
        _check_same(results[0], expected, "q_lstm")


@pytest.mark.parametrize("model", ["q_lstm", "box_lstm", "pg_lmu"])
def test_get_and_set_session_state_transplants_memory(stub, model):
    a, b = _open(stub, model), _open(stub, model)
    obs = [0.7] * OBS_DIM[model]
    for seq in (1, 2, 3):
        stub.Step(pb.StepRequest(session_id=a, seq=seq, obs=obs, episode_start=seq == 1, deterministic=True))
    state = stub.GetSessionState(pb.GetSessionStateRequest(session_id=a))
    assert state.seq == 3 and list(state.names)[0] == "state_h"
    stub.SetSessionState(pb.SetSessionStateRequest(session_id=b, state=state.state))
    ra = stub.Step(pb.StepRequest(session_id=a, seq=4, obs=obs, deterministic=True))
    rb = stub.Step(pb.StepRequest(session_id=b, seq=1, obs=obs, deterministic=True))
    assert list(ra.mean or ra.q_values or ra.logits) == list(rb.mean or rb.q_values or rb.logits)
    stub.ResetSession(pb.ResetSessionRequest(session_id=b))
    zeros = stub.GetSessionState(pb.GetSessionStateRequest(session_id=b))
    assert all(v == 0.0 for t in zeros.state for v in t.data) and zeros.seq == 1


def test_stochastic_actions_follow_the_session_seed(stub):
    def actions(seed):
        sid = _open(stub, "pg_gru", seed=seed)
        return [stub.Step(pb.StepRequest(session_id=sid, seq=s, obs=[0.1] * 4, deterministic=False)).discrete_action
                for s in range(1, 41)]

    assert actions(3) == actions(3)
    assert actions(3) != actions(4)


def test_list_models_describes_each_spec(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert set(OBS_DIM) <= set(models)
    box = models["box_lstm"]
    assert list(box.obs_shape) == [3] and box.action.kind == "box" and list(box.action.shape) == [2]
    assert [(s.name, s.layers, s.hidden) for s in box.state] == [("state_h", 2, 8), ("state_c", 2, 8)]
    assert len(box.version) == 12 and box.cell == "lstm"
    lmu = models["pg_lmu"]  # the Legendre memory's state is as wide as its memory, not its units
    assert [(s.name, s.layers, s.hidden) for s in lmu.state] == [("state_h", 1, 8), ("state_m", 1, 12)] and lmu.cell == "lmu"


# ------------------------------------------------------------------------------ bad input


def _code(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_bad_inputs_name_the_problem_and_leave_state_untouched(stub):
    sid = _open(stub, "q_lstm")
    stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=[0.2] * 5, episode_start=True))
    before = stub.GetSessionState(pb.GetSessionStateRequest(session_id=sid))
    code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=[0.2] * 4)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "4 values, expected obs_dim=5" in msg
    code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=[0.2, float("nan"), 0, 0, 0])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN or Inf at index 1" in msg
    code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=[float("inf")] * 5)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = _code(lambda: stub.CreateSession(pb.CreateSessionRequest(model="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in msg and "q_lstm" in msg
    code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id="forged", seq=1, obs=[0.0] * 5)))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown session 'forged'" in msg
    code, msg = _code(lambda: stub.SetSessionState(pb.SetSessionStateRequest(
        session_id=sid, state=[pb.Tensor(shape=[1, 3], data=[0, 0, 0])])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected 2" in msg
    code, msg = _code(lambda: stub.StepBatch(pb.StepBatchRequest(session_ids=[sid], seqs=[2], obs=[0.0] * 7)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected 1 sessions x obs_dim 5 = 5" in msg
    code, msg = _code(lambda: stub.StepBatch(pb.StepBatchRequest(session_ids=[sid, sid], seqs=[2, 3], obs=[0.0] * 10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than once" in msg
    assert stub.GetSessionState(pb.GetSessionStateRequest(session_id=sid)) == before
    assert stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=[0.2] * 5)).seq == 2


def test_step_batch_rows_fail_alone(stub):
    good, gap = _open(stub, "q_lstm"), _open(stub, "q_lstm")
    resp = stub.StepBatch(pb.StepBatchRequest(
        session_ids=[good, gap, "forged", _open(stub, "q_lstm")], seqs=[1, 5, 1, 1],
        obs=[0.1] * 15 + [float("nan")] * 5))
    errors = {e.index: e for e in resp.errors}
    assert sorted(errors) == [1, 2, 3]
    assert errors[1].code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and "expected 1" in errors[1].message
    assert errors[2].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert errors[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "NaN" in errors[3].message
    assert stub.GetSessionState(pb.GetSessionStateRequest(session_id=good)).seq == 1
    assert stub.GetSessionState(pb.GetSessionStateRequest(session_id=gap)).seq == 0


def test_stream_answers_errors_in_band_and_carries_on(stub):
    a, b = _open(stub, "q_lstm"), _open(stub, "pg_gru")
    requests = [pb.StepRequest(session_id=a, seq=1, obs=[0.0] * 5), pb.StepRequest(session_id=b, seq=1, obs=[0.0] * 5),
                pb.StepRequest(session_id=b, seq=1, obs=[0.0] * 4), pb.StepRequest(session_id=a, seq=2, obs=[0.0] * 5)]
    responses = list(stub.StepStream(iter(requests)))
    assert [r.HasField("error") for r in responses] == [False, True, False, False]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [r.seq for r in responses] == [1, 1, 1, 2]


def test_oversize_message_is_refused(serve_export_dirs):
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0",
                              ServeConfig(max_message_bytes=1024, max_batch_rows=8))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id="x", seq=1, obs=[0.0] * 1000)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in msg
            code, msg = _code(lambda: stub.StepBatch(pb.StepBatchRequest(session_ids=[str(i) for i in range(9)],
                                                                         seqs=[1] * 9)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit of 8" in msg
    finally:
        srv.stop(None)


# ------------------------------------------------------------------------------ limits


def test_session_limit_refuses_with_a_retry_hint(serve_export_dirs):
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0",
                              ServeConfig(max_sessions=3, session_ttl=30))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            ids = [_open(stub, "q_lstm") for _ in range(3)]
            with pytest.raises(grpc.RpcError) as err:
                _open(stub, "q_lstm")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "maximum of 3 sessions" in err.value.details() and "retry in" in err.value.details()
            assert dict(err.value.trailing_metadata())["retry-after-ms"].isdigit()
            stub.CloseSession(pb.CloseSessionRequest(session_id=ids[0]))
            _open(stub, "q_lstm")
            code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id=ids[0], seq=1, obs=[0.0] * 5)))
            assert code == grpc.StatusCode.NOT_FOUND and "was closed at" in msg
    finally:
        srv.stop(None)


def test_idle_sessions_expire_and_say_when(serve_export_dirs):
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0",
                              ServeConfig(max_sessions=2, session_ttl=0.3))
    now = [1000.0]
    srv.directory.clock = lambda: now[0]  # idle time passes only when the test says (the reaper reads it too)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            keep, idle = _open(stub, "q_lstm"), _open(stub, "q_lstm")
            for seq in range(1, 6):
                now[0] += 0.1
                stub.Step(pb.StepRequest(session_id=keep, seq=seq, obs=[0.0] * 5))
            code, msg = _code(lambda: stub.Step(pb.StepRequest(session_id=idle, seq=1, obs=[0.0] * 5)))
            assert code == grpc.StatusCode.NOT_FOUND
            assert "expired at 20" in msg and "0.3 s idle" in msg
            _open(stub, "q_lstm")  # the expired session's slot is free again
    finally:
        srv.stop(None)


# ------------------------------------------------------------------------------ standard services


def test_health_and_reflection_answer(server):
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rnnpolicy.v1.PolicyService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"rnnpolicy.v1.PolicyService", "grpc.health.v1.Health"} <= names


def test_server_and_clients_never_import_torch():
    code = ("import sys, rnnpolicy.serve, rnnpolicy.clients, rnnpolicy.serve.cli, rnnpolicy.clients.cli; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_model_call_failing_mid_batch_advances_no_session(serve_export_dirs):
    """With max_batch=2 a 3-row StepBatch is two onnxruntime calls; the second failing must leave all three untouched."""
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(max_batch=2))
    model = srv.models["q_lstm"]
    real_run = model.backend.run_values
    calls = []

    def second_call_fails(feeds):
        calls.append(len(feeds["obs"]))
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real_run(feeds)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            ids = [_open(stub, "q_lstm") for _ in range(3)]
            obs = [0.3] * 15
            stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[1, 1, 1], obs=obs))
            before = [stub.GetSessionState(pb.GetSessionStateRequest(session_id=i)) for i in ids]
            model.backend.run_values = second_call_fails
            failed = stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[2, 2, 2], obs=obs))
            assert calls == [2, 1]
            assert sorted(e.index for e in failed.errors) == [0, 1, 2]
            assert all(e.code == grpc.StatusCode.INTERNAL.value[0] and "injected" not in e.message for e in failed.errors)
            after = [stub.GetSessionState(pb.GetSessionStateRequest(session_id=i)) for i in ids]
            for b, a in zip(before, after):
                assert a.seq == b.seq == 1
                assert [list(t.data) for t in a.state] == [list(t.data) for t in b.state]
            model.backend.run_values = real_run
            retried = stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[2, 2, 2], obs=obs))
            assert not retried.errors and list(retried.seqs) == [2, 2, 2]
    finally:
        srv.stop(None)


def test_split_batches_answer_as_whole_ones_and_a_failing_half_advances_nothing(serve_export_dirs):
    """With split_batch_rows=2 and max_batch=4 a 5-row StepBatch is three onnxruntime calls (2 + 2 rows, the
    halves at once on two threads, then 1): the same answers as unsplit calls; a failure in the half on the
    helper thread fails every row and advances no session."""
    import threading

    split, split_port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0",
                                      ServeConfig(max_batch=4, split_batch_rows=2))
    whole, whole_port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0",
                                      ServeConfig(max_batch=4, split_batch_rows=0))
    model = split.models["q_lstm"]
    real_run = model.backend.run_values
    helper_calls = []

    def helper_fails(feeds):
        if threading.current_thread().name.startswith("rnnpolicy-split"):
            helper_calls.append(len(feeds["obs"]))
            raise RuntimeError("injected failure")
        return real_run(feeds)

    rng = np.random.default_rng(3)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{split_port}") as a, grpc.insecure_channel(f"127.0.0.1:{whole_port}") as b:
            stubs = [policy_pb2_grpc.PolicyServiceStub(a), policy_pb2_grpc.PolicyServiceStub(b)]
            ids = [[_open(stub, "q_lstm") for _ in range(5)] for stub in stubs]
            for seq in range(1, 5):
                obs = rng.normal(size=5 * 5).astype(np.float32).tolist()
                starts = [seq == 1 or bool(x) for x in rng.integers(0, 2, size=5)]
                answers = [stub.StepBatch(pb.StepBatchRequest(session_ids=i, seqs=[seq] * 5, obs=obs, episode_start=starts))
                           for stub, i in zip(stubs, ids)]
                assert not answers[0].errors and not answers[1].errors
                np.testing.assert_allclose(answers[0].q_values, answers[1].q_values, rtol=1e-6, atol=1e-6)
                assert list(answers[0].discrete_actions) == list(answers[1].discrete_actions)
            assert split.metrics.value("rnnpolicy_batch_size_count", {"model": "q_lstm"}) == 3 * 4
            assert whole.metrics.value("rnnpolicy_batch_size_count", {"model": "q_lstm"}) == 2 * 4
            stub, sids = stubs[0], ids[0]
            before = [stub.GetSessionState(pb.GetSessionStateRequest(session_id=i)) for i in sids]
            model.backend.run_values = helper_fails
            failed = stub.StepBatch(pb.StepBatchRequest(session_ids=sids, seqs=[5] * 5, obs=[0.3] * 25), timeout=10)
            assert helper_calls == [2]
            assert sorted(e.index for e in failed.errors) == [0, 1, 2, 3, 4]
            assert all(e.code == grpc.StatusCode.INTERNAL.value[0] for e in failed.errors)
            after = [stub.GetSessionState(pb.GetSessionStateRequest(session_id=i), timeout=10) for i in sids]
            for x, y in zip(before, after):
                assert x.seq == y.seq == 4 and [list(t.data) for t in x.state] == [list(t.data) for t in y.state]
            model.backend.run_values = real_run
            assert not stub.StepBatch(pb.StepBatchRequest(session_ids=sids, seqs=[5] * 5, obs=[0.3] * 25)).errors
    finally:
        split.stop(None)
        whole.stop(None)


def test_a_lone_step_failing_in_the_model_advances_nothing(serve_export_dirs):
    """A lone Step or StepStream step runs at once (StepCoordinator._run_lone); a model failure there is INTERNAL,
    leaves the session's state and seq as they were, and the same seq then succeeds."""
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0")
    model = srv.models["q_lstm"]
    real_run = model.backend.run_values

    def failing(feeds):
        raise RuntimeError("injected failure")

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            sid = _open(stub, "q_lstm")
            obs = [0.3] * 5
            stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=obs))
            before = stub.GetSessionState(pb.GetSessionStateRequest(session_id=sid))
            model.backend.run_values = failing
            with pytest.raises(grpc.RpcError) as err:
                stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=obs), timeout=10)
            assert err.value.code() == grpc.StatusCode.INTERNAL and "injected" not in err.value.details()
            [answer] = stub.StepStream(iter([pb.StepRequest(session_id=sid, seq=2, obs=obs)]), timeout=10)
            assert answer.error.code == grpc.StatusCode.INTERNAL.value[0] and answer.seq == 2
            # A session left busy would make this wait for ever: the deadline turns that into a failure.
            after = stub.GetSessionState(pb.GetSessionStateRequest(session_id=sid), timeout=10)
            assert after.seq == before.seq == 1
            assert [list(t.data) for t in after.state] == [list(t.data) for t in before.state]
            model.backend.run_values = real_run
            assert stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=obs)).seq == 2
    finally:
        srv.stop(None)


def test_a_bad_second_model_stops_the_first_models_worker(serve_export_dirs, tmp_path):
    import threading

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError):
        create_server({"q_lstm": serve_export_dirs["q_lstm"], "broken": tmp_path}, "127.0.0.1:0")
    leaked = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not leaked, leaked


def test_messages_never_echo_unbounded_client_input(stub, server):
    """A status message travels as a trailer that clients refuse beyond 8-16 KiB: huge ids must still get their status."""
    huge = "é" * 12_000
    for call, request, code in (
        (stub.Step, pb.StepRequest(session_id=huge, seq=1, obs=[0.0] * 5), grpc.StatusCode.NOT_FOUND),
        (stub.CreateSession, pb.CreateSessionRequest(model=huge), grpc.StatusCode.NOT_FOUND),
        (stub.CloseSession, pb.CloseSessionRequest(session_id=huge), grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == code and "(12000 characters)" in err.value.details()
        assert len(err.value.details().encode()) < 512
    (answer,) = stub.StepStream(iter([pb.StepRequest(session_id="z" * 100_000, seq=1)]))
    assert answer.error.code == grpc.StatusCode.NOT_FOUND.value[0] and answer.session_id == ""  # not echoed back


def test_an_unparsable_request_is_invalid_argument_and_a_stream_carries_on(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server[1]}")
    try:
        step = channel.unary_unary("/rnnpolicy.v1.PolicyService/Step", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            step(b"\xff\xff\xff")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("the request is not a valid rnnpolicy.v1.StepRequest (3 bytes)")
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        sid = _open(stub, "q_lstm")
        stream = channel.stream_stream("/rnnpolicy.v1.PolicyService/StepStream", request_serializer=None,
                                       response_deserializer=pb.StepResponse.FromString)
        good = pb.StepRequest(session_id=sid, seq=1, obs=[0.0] * 5, episode_start=True).SerializeToString()
        bad, ok = stream(iter([b"\xff\xff", good]))
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "rnnpolicy.v1.StepRequest" in bad.error.message
        assert not ok.HasField("error") and ok.seq == 1
    finally:
        channel.close()
