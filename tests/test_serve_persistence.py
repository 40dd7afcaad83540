"""No state lost across restarts: graceful restarts, crash checkpoints, and snapshots that cannot be restored."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rnnpolicy.clients import PolicyClient, PolicyError
from rnnpolicy.export.interface import ONNX_FILE
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.serve.persistence import SNAPSHOT_FILE
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc
from rollout import OfflineRollout

MODELS = ("q_lstm", "pg_gru", "box_lstm")
OBS_DIM = {"q_lstm": 5, "pg_gru": 4, "box_lstm": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _observations(model: str, steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, OBS_DIM[model])).astype(np.float32)


def _play(stub, session_id, obs, first_seq, start_at_first=True, deterministic=True):
    """Step ``obs`` from ``first_seq``; return the responses."""
    return [stub.Step(pb.StepRequest(session_id=session_id, seq=first_seq + t, obs=o.tolist(),
                                     episode_start=start_at_first and t == 0 and first_seq == 1,
                                     deterministic=deterministic))
            for t, o in enumerate(obs)]


def _action(response):
    return response.discrete_action if response.continuous_action == [] else list(response.continuous_action)


def test_a_graceful_restart_continues_every_session_exactly(tmp_path, serve_export_dirs):
    """Sessions mid-episode (greedy and sampled), restart, continue: the actions equal an uninterrupted run."""
    models = {name: serve_export_dirs[name] for name in MODELS}
    port = _free_port()
    config = ServeConfig(state_dir=str(tmp_path / "state"), session_ttl=600)
    steps, cut = 16, 7
    reference, ref_port = create_server(models, "127.0.0.1:0", ServeConfig())  # the uninterrupted run
    ref_channel = grpc.insecure_channel(f"127.0.0.1:{ref_port}")
    ref_stub = policy_pb2_grpc.PolicyServiceStub(ref_channel)
    srv, _ = create_server(models, f"127.0.0.1:{port}", config)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    try:
        plans = []
        for i, name in enumerate(MODELS):
            for deterministic in (True, False):
                seed = 10 + i
                sid = stub.CreateSession(pb.CreateSessionRequest(model=name, seed=seed)).session_id
                ref_sid = ref_stub.CreateSession(pb.CreateSessionRequest(model=name, seed=seed)).session_id
                plans.append((name, deterministic, sid, ref_sid, _observations(name, steps, i)))
        before = {}
        for name, det, sid, ref_sid, obs in plans:
            before[sid] = _play(stub, sid, obs[:cut], 1, deterministic=det)
        srv.stop(1.0)
        assert (tmp_path / "state" / SNAPSHOT_FILE).is_file()
        srv, _ = create_server(models, f"127.0.0.1:{port}", config)
        assert len(srv.directory) == len(plans)
        for name, det, sid, ref_sid, obs in plans:
            # The lost-answer retry of the last step before the restart gets the same answer again.
            assert _play(stub, sid, obs[cut - 1:cut], cut, deterministic=det)[0] == before[sid][-1]
            got = before[sid] + _play(stub, sid, obs[cut:], cut + 1, deterministic=det)
            expected = _play(ref_stub, ref_sid, obs, 1, deterministic=det)
            assert [_action(r) for r in got] == [_action(r) for r in expected], (name, det)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(list(g.q_values) + list(g.logits) + list(g.mean),
                                           list(e.q_values) + list(e.logits) + list(e.mean), atol=1e-5)
            if det:  # and the greedy episodes equal the file stepped offline
                offline = OfflineRollout(serve_export_dirs[name])
                for t, response in enumerate(got):
                    step = offline.step(obs[t], t == 0)
                    assert _action(response) == (int(step["action"][0]) if name != "box_lstm"
                                                 else pytest.approx(step["action"][0].tolist(), abs=1e-5))
    finally:
        channel.close()
        ref_channel.close()
        srv.stop(None)
        reference.stop(None)


def test_sessions_pinned_to_an_old_version_survive_a_restart_after_the_model_changed(
        tmp_path, serve_export_dirs, q_lstm_v2_export):
    source = tmp_path / "q"
    shutil.copytree(serve_export_dirs["q_lstm"], source)
    config = ServeConfig(state_dir=str(tmp_path / "state"))
    obs = _observations("q_lstm", 8, 3)
    ref = OfflineRollout(serve_export_dirs["q_lstm"])
    srv, port = create_server({"q": source}, "127.0.0.1:0", config)
    with PolicyClient(f"127.0.0.1:{port}") as client:
        session = client.session("q")
        for t in range(4):
            np.testing.assert_allclose(session.step(obs[t], t == 0).q_values, ref.step(obs[t], t == 0)["q_values"][0],
                                       atol=1e-5)
    srv.stop(None)
    shutil.copyfile(q_lstm_v2_export / ONNX_FILE, source / ONNX_FILE)  # deployed while the server was down
    srv, port = create_server({"q": source}, "127.0.0.1:0", config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            listed = policy_pb2_grpc.PolicyServiceStub(channel).ListModels(pb.ListModelsRequest()).models
        versions = {m.version: (m.latest, m.sessions) for m in listed}
        assert versions == {session.model.version: (False, 1), srv.models["q"].version: (True, 0)}
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        for t, response in enumerate(_play(stub, session.session_id, obs[4:], 5), start=4):
            assert response.model_version == session.model.version
            np.testing.assert_allclose(response.q_values, ref.step(obs[t], False)["q_values"][0], atol=1e-5)
        channel.close()
    finally:
        srv.stop(None)


def test_a_corrupt_snapshot_is_moved_aside_and_the_server_starts_empty(tmp_path, serve_export_dirs, caplog):
    state = tmp_path / "state"
    state.mkdir()
    (state / SNAPSHOT_FILE).write_bytes(b"\xff\xff\xff this is not a snapshot")
    (state / (SNAPSHOT_FILE + ".tmp")).write_bytes(b"an interrupted write")
    with caplog.at_level("WARNING", logger="rnnpolicy.serve"):
        srv, _ = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(state_dir=str(state)))
    srv.stop(None)
    assert "event=snapshot_rejected" in caplog.text and "unreadable snapshot" in caplog.text
    assert "event=snapshot_tmp_removed" in caplog.text
    rejected = list(state.glob(SNAPSHOT_FILE + ".rejected-*"))
    assert len(rejected) == 1 and rejected[0].read_bytes().startswith(b"\xff\xff\xff this is not")
    assert not (state / (SNAPSHOT_FILE + ".tmp")).exists()


def test_a_snapshot_for_a_model_no_longer_served_is_refused_whole(tmp_path, serve_export_dirs, caplog):
    config = ServeConfig(state_dir=str(tmp_path / "state"))
    both = {"q": serve_export_dirs["q_lstm"], "g": serve_export_dirs["pg_gru"]}
    srv, port = create_server(both, "127.0.0.1:0", config)
    with PolicyClient(f"127.0.0.1:{port}") as client:
        for name in both:
            client.session(name).step(np.zeros(OBS_DIM["q_lstm" if name == "q" else "pg_gru"]), True)
    srv.stop(None)
    with caplog.at_level("ERROR", logger="rnnpolicy.serve"):
        srv, _ = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", config)
    try:
        assert len(srv.directory) == 0  # never half-loaded: not even the "q" session
        assert "on model 'g', which this server does not serve" in caplog.text
        assert len(list((tmp_path / "state").glob(SNAPSHOT_FILE + ".rejected-*"))) == 1
    finally:
        srv.stop(None)


# ---------------------------------------------------------------------------- crash (kill -9)


def _start_cli_server(model_dir, port, state_dir, interval):
    return subprocess.Popen(
        [sys.executable, "-m", "rnnpolicy.cli", "serve", "--model", f"q={model_dir}", "--port", str(port),
         "--state-dir", str(state_dir), "--checkpoint-interval", str(interval), "--session-ttl", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_serving(port, proc, timeout=60.0):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        raise AssertionError("the server did not start")
    finally:
        channel.close()


def _snapshot_seq(path, session_id: str) -> int | None:
    """The last seq the snapshot at ``path`` holds for ``session_id`` (None: no snapshot, or not in it). The server
    renames whole snapshots into place, so a read sees one whole snapshot."""
    from rnnpolicy.v1 import session_record_pb2

    if not path.exists():
        return None
    records = session_record_pb2.SessionSnapshot.FromString(path.read_bytes()).sessions
    return next((r.last_seq for r in records if r.session_id == session_id), None)


def test_after_kill_9_sessions_resume_from_the_checkpoint_and_the_client_replays_the_rest(tmp_path, serve_export_dirs):
    state = tmp_path / "state"
    snapshot = state / SNAPSHOT_FILE
    port = _free_port()
    obs = _observations("q_lstm", 12, 5)
    ref = OfflineRollout(serve_export_dirs["q_lstm"])
    expected = [int(ref.step(obs[t], t == 0)["action"][0]) for t in range(12)]
    proc = _start_cli_server(serve_export_dirs["q_lstm"], port, state, 1.0)
    try:
        _wait_serving(port, proc)
        with PolicyClient(f"127.0.0.1:{port}", retries=0) as client:
            session = client.session("q", history=64)
            actions = [session.step(obs[t], t == 0).action for t in range(5)]
            deadline = time.monotonic() + 30
            while _snapshot_seq(snapshot, session.session_id) != 5:  # a periodic checkpoint holds seqs 1..5
                assert time.monotonic() < deadline, "no periodic checkpoint within 30 s"
                time.sleep(0.02)
            actions += [session.step(obs[t]).action for t in range(5, 8)]  # applied, then lost in the crash
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = _start_cli_server(serve_export_dirs["q_lstm"], port, state, 1.0)
            _wait_serving(port, proc)
            state_seq = client.call("GetSessionState", pb.GetSessionStateRequest(session_id=session.session_id)).seq
            assert state_seq == 5  # restored from the checkpoint, steps 6..8 lost
            # The client's next step (seq 9) is refused with expected seq 6; it replays 6..8 from its history.
            actions += [session.step(obs[t]).action for t in range(8, 12)]
        assert actions == expected
    finally:
        proc.kill()
        proc.wait(10)


def test_a_client_without_the_lost_steps_is_told_how_to_resync(tmp_path, serve_export_dirs):
    """History 0: the replay is impossible; the error says so, and resync() + a new episode carries on."""
    config = ServeConfig(state_dir=str(tmp_path / "state"))
    srv, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", config)
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            session = client.session("q", history=0)
            obs = _observations("q_lstm", 6, 1)
            session.step(obs[0], True)
            srv.checkpoint()
            session.step(obs[1])
            snapshot = (tmp_path / "state" / SNAPSHOT_FILE).read_bytes()
            srv.stop(None)
            (tmp_path / "state" / SNAPSHOT_FILE).write_bytes(snapshot)  # as if it crashed after the checkpoint
            srv, port2 = create_server({"q": serve_export_dirs["q_lstm"]}, f"127.0.0.1:{port}", config)
            with pytest.raises(PolicyError) as err:
                session.step(obs[2])
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and err.value.expected_seq == 2
            assert "call resync() and start a new episode" in err.value.message
            session.resync(err.value.expected_seq)
            ref = OfflineRollout(serve_export_dirs["q_lstm"])
            for t in range(2, 6):
                assert session.step(obs[t], t == 2).action == int(ref.step(obs[t], t == 2)["action"][0])
    finally:
        srv.stop(None)


def test_checkpoint_needs_a_state_dir(serve_export_dirs):
    with pytest.raises(ValueError, match="checkpoint_interval 1.0 needs a state_dir"):
        ServeConfig(checkpoint_interval=1.0)
    srv, _ = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(), start=False)
    with pytest.raises(ValueError, match="no state_dir"):
        srv.checkpoint()
    srv.catalog.close()


def test_snapshot_file_is_replaced_atomically(tmp_path, serve_export_dirs):
    """Each write goes to a temporary file renamed over the snapshot: the old snapshot's inode is never rewritten."""
    config = ServeConfig(state_dir=str(tmp_path / "state"))
    srv, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", config)
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            client.session("q").step(np.zeros(5), True)
            assert srv.checkpoint() == 1
            path = tmp_path / "state" / SNAPSHOT_FILE
            first = os.stat(path).st_ino
            with open(path, "rb") as held:  # a reader holding the old file keeps reading the old content
                old = held.read()
                assert srv.checkpoint() == 1
                held.seek(0)
                assert held.read() == old
            assert os.stat(path).st_ino != first
    finally:
        srv.stop(None)


def test_a_snapshot_that_cannot_be_written_at_shutdown_is_logged_and_the_models_still_close(
        tmp_path, serve_export_dirs, caplog, monkeypatch):
    srv, _ = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(state_dir=str(tmp_path)))

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(srv.store, "checkpoint", disk_full)
    with caplog.at_level("ERROR", logger="rnnpolicy.serve"):
        srv.stop(None)
    assert "event=snapshot_failed" in caplog.text and "the sessions were not saved" in caplog.text
    assert not srv.models["q"].batcher.alive
