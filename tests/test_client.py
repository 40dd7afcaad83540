"""rnnpolicy.clients against a real server: sessions, streams, asyncio, errors, retries, play."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest

from rnnpolicy.clients import AsyncPolicyClient, PolicyClient, PolicyError, StreamSession
from rnnpolicy.clients.cli import add_play_arguments, play_episodes, run_play
from rnnpolicy.serve import ServeConfig, create_server


@pytest.fixture(scope="module")
def target(serve_export_dirs):
    srv, port = create_server(serve_export_dirs, "127.0.0.1:0", ServeConfig(max_sessions=100))
    yield f"127.0.0.1:{port}"
    srv.stop(None)


def test_unary_and_stream_sessions_agree(target):
    obs = np.random.default_rng(1).normal(size=(15, 5)).astype(np.float32)
    with PolicyClient(target) as client:
        assert {m.name for m in client.list_models()} >= {"q_lstm", "box_lstm"}
        with client.session("q_lstm", transport="unary") as unary, client.session("q_lstm") as stream:
            assert (unary.transport, stream.transport) == ("unary", "stream")  # a stream is the default
            for i, o in enumerate(obs):
                a, b = unary.step(o, episode_start=i == 0), stream.step(o, episode_start=i == 0)
                assert a.action == b.action and a.seq == b.seq == i + 1
                np.testing.assert_array_equal(a.q_values, b.q_values)
            state = unary.get_state()
            assert state["state_h"].shape == (1, 16)
            stream.set_state(state)
            unary.reset()
            assert not unary.get_state()["state_h"].any()


def test_stream_session_still_works_and_is_deprecated(target):
    with PolicyClient(target) as client:
        with pytest.warns(DeprecationWarning, match="session\\(\\) steps over a stream by default"):
            session = client.stream_session("q_lstm")
        with session:
            assert isinstance(session, StreamSession) and session.transport == "stream"
            assert session.step([0.0] * 5, episode_start=True).seq == 1


def test_a_sync_session_dropped_without_close_ends_its_stream_threads(target):
    import gc
    import threading
    import time

    def readers():
        return sum(t.name == "rnnpolicy-stream-reader" for t in threading.enumerate())

    with PolicyClient(target) as client:
        before = readers()
        session = client.session("q_lstm")
        session.step([0.0] * 5, episode_start=True)
        assert readers() == before + 1
        del session
        gc.collect()
        deadline = time.monotonic() + 10
        while readers() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert readers() == before


def test_continuous_result_and_value(target):
    with PolicyClient(target) as client, client.session("box_lstm") as session:
        result = session.step([0.1, 0.2, 0.3], episode_start=True)
        assert result.action.shape == (2,) and result.value is not None and result.mean is not None
        version = session.model.version
        assert session.migrate().version == version == session.model.version  # already on the latest
        assert session.step([0.1, 0.2, 0.3]).seq == 2


def test_errors_are_one_exception_with_code_and_message(target):
    with PolicyClient(target) as client:
        with pytest.raises(PolicyError, match="unknown model 'nope'") as err:
            client.session("nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        with client.session("q_lstm") as session:
            with pytest.raises(PolicyError, match="expected obs_dim=5") as err:
                session.step([1.0, 2.0])
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(PolicyError, match="dtype"):
                session.step(np.array(["a"] * 5))
            assert session.step([0.0] * 5).seq == 1  # nothing was consumed by the failures


def test_step_retries_transient_failures_with_the_same_seq(target):
    with PolicyClient(target, backoff=0.001) as client, client.session("q_lstm", transport="unary") as session:
        real = client.stub.Step
        seen = []

        class Unavailable(grpc.RpcError):
            def code(self):
                return grpc.StatusCode.UNAVAILABLE

            def details(self):
                return "connection reset"

            def trailing_metadata(self):
                return ()

        def flaky(request, **kwargs):
            seen.append(request.seq)
            response = real(request, **kwargs)
            if len(seen) == 1:
                raise Unavailable()  # applied on the server, answer lost
            return response

        client.stub.Step = flaky
        first = session.step([0.5] * 5, episode_start=True)
        assert seen == [1, 1] and first.seq == 1
        assert session.step([0.5] * 5).seq == 2


def test_asyncio_client(target):
    async def run():
        async with AsyncPolicyClient(target) as client:
            models = await client.list_models()
            async with client.session("pg_gru", seed=1) as session:  # a stream by default
                assert session.transport == "stream"
                results = [await session.step([0.2] * 4, episode_start=i == 0) for i in range(5)]
            async with await client.session("pg_gru", seed=1, transport="unary") as unary:  # the older spelling
                unary_results = [await unary.step([0.2] * 4, episode_start=i == 0) for i in range(5)]
            opening = client.session("pg_gru")
            session = await opening
            with pytest.raises(RuntimeError, match="already awaited"):
                await opening
            state = await session.get_state()
            await session.reset()
            assert not (await session.get_state())["state_h"].any() and state["state_h"].shape == (2, 8)
            await session.close()
            with pytest.raises(PolicyError) as err:
                await client.session("nope")
            with pytest.raises(ValueError, match="transport must be one of"):
                client.session("pg_gru", transport="grpc")
            return models, results, unary_results, err.value.code

    models, results, unary_results, code = asyncio.run(run())
    assert [r.seq for r in results] == [1, 2, 3, 4, 5] and code == grpc.StatusCode.NOT_FOUND
    assert all(r.logits.shape == (4,) for r in results)
    assert [r.action for r in results] == [r.action for r in unary_results]
    np.testing.assert_array_equal([r.logits for r in results], [r.logits for r in unary_results])


def test_play_episodes_and_cli(target, capsys):
    with PolicyClient(target) as client:
        unary = play_episodes(client, "tmaze", "rnnpolicy/TMaze-v0", 3, seed=5, transport="unary")
        stream = play_episodes(client, "tmaze", "rnnpolicy/TMaze-v0", 3, seed=5)
        recorded = play_episodes(client, "tmaze", None, 3, seed=5)  # the environment named in the served spec
    assert unary.returns == stream.returns == recorded.returns and len(unary.returns) == 3
    assert len(unary.successes) == 3
    assert len(unary.step_latencies_s) == len(stream.step_latencies_s) > 3
    import argparse

    parser = argparse.ArgumentParser()
    add_play_arguments(parser)
    args = parser.parse_args(["--target", target, "--model", "tmaze", "--env", "rnnpolicy/TMaze-v0", "--episodes", "2"])
    assert run_play(args) == 0
    out = capsys.readouterr().out
    assert "mean return over 2 episodes" in out and "success rate" in out
    assert "round-trip latency p50" in out
    with pytest.raises(ValueError, match="--episodes 0"):
        run_play(parser.parse_args(["--env", "x", "--episodes", "0"]))


def test_serve_command_starts_logs_and_stops_on_sigterm(serve_export_dirs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnpolicy.cli", "serve", "--model", f"tm={serve_export_dirs['tmaze']}",
         "--port", "0", "--max-sessions", "10", "--session-ttl", "5"],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert "serving tm=q/lstm" in line and "max_sessions=10" in line, line
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        with PolicyClient(f"127.0.0.1:{port}") as client, client.session("tm") as session:
            session.step(np.zeros(session.spec.obs_dim), episode_start=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stream_step_times_out_then_retries_with_the_same_seq(serve_export_dirs):
    import time

    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0")
    model = srv.models["q_lstm"]
    real_run = model.backend.run_values
    stalls = [0.6]  # the first model call stalls longer than the step timeout

    def stalling(feeds):
        if stalls:
            time.sleep(stalls.pop())
        return real_run(feeds)

    model.backend.run_values = stalling
    try:
        with PolicyClient(f"127.0.0.1:{port}", retries=0) as client, client.session("q_lstm") as session:
            with pytest.raises(PolicyError) as info:
                session.step([0.0] * 5, episode_start=True, timeout=0.2)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "within 0.2 s" in info.value.message
        stalls.append(0.6)
        with PolicyClient(f"127.0.0.1:{port}", retries=2, backoff=0.01) as client, client.session("q_lstm") as session:
            first = session.step([0.0] * 5, episode_start=True, timeout=0.4)  # times out once, resent with seq 1
            second = session.step([0.0] * 5, timeout=2.0)
            assert (first.seq, second.seq) == (1, 2)
            assert session.get_state()  # the session is alive and stepped exactly twice
    finally:
        srv.stop(None)


def test_a_stream_ended_by_a_server_restart_is_reopened_and_the_sessions_carry_on(serve_export_dirs, tmp_path):
    """Both clients' default (stream) sessions: the server stops (saving its sessions) and starts again on the same
    port; the next step opens a fresh stream, with the seq numbering and the state carried on."""
    from rollout import OfflineRollout

    config = ServeConfig(state_dir=str(tmp_path / "state"))
    srv, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", config)
    obs = np.random.default_rng(7).normal(size=(6, 5)).astype(np.float32)
    refs = [OfflineRollout(serve_export_dirs["q_lstm"]) for _ in range(2)]
    expected = [[int(ref.step(o, t == 0)["action"][0]) for t, o in enumerate(obs)] for ref in refs]

    async def step_async(session, rows, first):
        return [(await session.step(o, episode_start=first + t == 0)).action for t, o in enumerate(rows)]

    loop = asyncio.new_event_loop()
    client, aclient = PolicyClient(f"127.0.0.1:{port}", backoff=0.2), None
    try:
        aclient = loop.run_until_complete(_async_client(f"127.0.0.1:{port}"))
        session = client.session("q")
        asession = loop.run_until_complete(aclient.session("q"))
        actions = [session.step(o, episode_start=t == 0).action for t, o in enumerate(obs[:3])]
        async_actions = loop.run_until_complete(step_async(asession, obs[:3], 0))
        srv.stop(None)
        srv, _ = create_server({"q": serve_export_dirs["q_lstm"]}, f"127.0.0.1:{port}", config)
        actions += [session.step(o).action for o in obs[3:]]
        async_actions += loop.run_until_complete(step_async(asession, obs[3:], 3))
        assert (session.seq, asession.seq) == (6, 6)
        assert actions == expected[0] and async_actions == expected[1]
        session.close()
        loop.run_until_complete(asession.close())
    finally:
        client.close()
        if aclient is not None:
            loop.run_until_complete(aclient.close())
        loop.close()
        srv.stop(None)


async def _async_client(target):
    return AsyncPolicyClient(target, backoff=0.2)  # a grpc.aio channel belongs to the running loop


def test_asyncio_stream_step_times_out_then_retries_with_the_same_seq(serve_export_dirs):
    import time

    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0")
    model = srv.models["q_lstm"]
    real_run = model.backend.run_values
    stalls = [0.6]

    def stalling(feeds):
        if stalls:
            time.sleep(stalls.pop())
        return real_run(feeds)

    model.backend.run_values = stalling

    async def run():
        async with AsyncPolicyClient(f"127.0.0.1:{port}", retries=0) as client:
            async with client.session("q_lstm") as session:
                with pytest.raises(PolicyError) as info:
                    await session.step([0.0] * 5, episode_start=True, timeout=0.2)
                assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "within 0.2 s" in info.value.message
        stalls.append(0.6)
        async with AsyncPolicyClient(f"127.0.0.1:{port}", retries=2, backoff=0.01) as client:
            async with client.session("q_lstm") as session:
                first = await session.step([0.0] * 5, episode_start=True, timeout=0.4)  # resent with seq 1
                second = await session.step([0.0] * 5, timeout=2.0)
                return first.seq, second.seq, await session.get_state()

    try:
        first, second, state = asyncio.run(run())
        assert (first, second) == (1, 2) and state
    finally:
        srv.stop(None)
