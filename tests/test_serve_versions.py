"""Model updates without dropping sessions: hot reload, version pinning, migration, and session ownership."""

from __future__ import annotations

import os
import shutil
import time

import grpc
import numpy as np
import pytest

from rnnpolicy.export.interface import ONNX_FILE
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.serve.errors import ServeError
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc
from rollout import OfflineRollout


def _replace_model(source_dir, export_dir):
    """Put ``export_dir``'s model.onnx into ``source_dir`` the way a deploy should: copy beside it, then rename."""
    tmp = source_dir / f"{ONNX_FILE}.tmp"
    shutil.copyfile(export_dir / ONNX_FILE, tmp)
    os.replace(tmp, source_dir / ONNX_FILE)


@pytest.fixture
def reloadable(tmp_path, serve_export_dirs):
    """A server over a copy of q_lstm's export directory, which the test may overwrite."""
    source = tmp_path / "q"
    shutil.copytree(serve_export_dirs["q_lstm"], source)
    srv, port = create_server({"q": source}, "127.0.0.1:0", ServeConfig(max_sessions=32, session_ttl=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield srv, policy_pb2_grpc.PolicyServiceStub(channel), source
    channel.close()
    srv.stop(None)


def _step(stub, session_id, seq, obs, start=False):
    return stub.Step(pb.StepRequest(session_id=session_id, seq=seq, obs=obs.tolist(), episode_start=start,
                                    deterministic=True))


def _versions(stub):
    return {(m.version, m.latest): m.sessions for m in stub.ListModels(pb.ListModelsRequest()).models}


def test_new_version_serves_new_sessions_while_old_sessions_stay_pinned(reloadable, serve_export_dirs, q_lstm_v2_export):
    srv, stub, source = reloadable
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(12, 5)).astype(np.float32)
    old_ref, new_ref = OfflineRollout(serve_export_dirs["q_lstm"]), OfflineRollout(q_lstm_v2_export)
    first = stub.CreateSession(pb.CreateSessionRequest(model="q"))
    v1 = first.model.version
    for t in range(4):
        answer = _step(stub, first.session_id, t + 1, obs[t], t == 0)
        np.testing.assert_allclose(answer.q_values, old_ref.step(obs[t], t == 0)["q_values"][0], atol=1e-5)

    assert srv.reload_models() == []  # nothing changed yet
    _replace_model(source, q_lstm_v2_export)
    loaded = srv.reload_models()
    assert [m.version for m in loaded] != [v1] and len(loaded) == 1
    v2 = loaded[0].version
    assert _versions(stub) == {(v1, False): 1, (v2, True): 0}

    second = stub.CreateSession(pb.CreateSessionRequest(model="q"))
    assert second.model.version == v2 and second.model.latest
    for t in range(4):
        answer = _step(stub, second.session_id, t + 1, obs[t], t == 0)
        assert answer.model_version == v2
        np.testing.assert_allclose(answer.q_values, new_ref.step(obs[t], t == 0)["q_values"][0], atol=1e-5)
    for t in range(4, 8):  # the first session is still on v1, its state intact
        answer = _step(stub, first.session_id, t + 1, obs[t])
        assert answer.model_version == v1
        np.testing.assert_allclose(answer.q_values, old_ref.step(obs[t], False)["q_values"][0], atol=1e-5)

    # Explicit migration: the state moves to v2 and the episode goes on there.
    migrated = stub.MigrateSession(pb.MigrateSessionRequest(session_id=first.session_id, version=v2))
    assert migrated.model.version == v2 and migrated.model.sessions == 2
    new_ref.state = {name: value.copy() for name, value in old_ref.state.items()}
    for t in range(8, 12):
        answer = _step(stub, first.session_id, t + 1, obs[t])
        assert answer.model_version == v2
        np.testing.assert_allclose(answer.q_values, new_ref.step(obs[t], False)["q_values"][0], atol=1e-5)
    assert _step(stub, first.session_id, 12, obs[11]).model_version == v2  # the cached repeat, too

    # v1 holds no session any more: it is unloaded.
    assert [m.version for m in srv.catalog.retire()] == [v1]
    assert _versions(stub) == {(v2, True): 2}


def test_migration_to_an_incompatible_version_is_refused_and_leaves_the_session(reloadable, serve_export_dirs):
    srv, stub, source = reloadable
    session = stub.CreateSession(pb.CreateSessionRequest(model="q"))
    obs = np.ones(5, np.float32)
    before = _step(stub, session.session_id, 1, obs, True)
    _replace_model(source, serve_export_dirs["pg_gru"])  # another state shape, observation size and action space
    (new,) = srv.reload_models()
    assert stub.CreateSession(pb.CreateSessionRequest(model="q")).model.version == new.version
    with pytest.raises(grpc.RpcError) as err:
        stub.MigrateSession(pb.MigrateSessionRequest(session_id=session.session_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "state tensors differ" in err.value.details() and "open a new session" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.MigrateSession(pb.MigrateSessionRequest(session_id=session.session_id, version="0123456789ab"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "only to the latest version" in err.value.details()
    repeat = _step(stub, session.session_id, 1, obs, True)
    assert repeat == before  # still pinned to v1, seq and cache untouched
    assert _step(stub, session.session_id, 2, obs).model_version == session.model.version


def test_an_unloadable_file_is_skipped_and_the_loaded_version_keeps_serving(reloadable, caplog):
    srv, stub, source = reloadable
    session = stub.CreateSession(pb.CreateSessionRequest(model="q"))
    (source / ONNX_FILE).write_bytes(b"half-written")
    with caplog.at_level("ERROR", logger="rnnpolicy.serve"):
        assert srv.reload_models() == []
    assert "event=reload_failed model=q" in caplog.text
    assert srv.reload_models() == []  # the same bad file is not retried until it changes
    assert _step(stub, session.session_id, 1, np.zeros(5, np.float32), True).model_version == session.model.version
    assert _versions(stub) == {(session.model.version, True): 1}


def test_the_reload_interval_picks_up_a_new_file(tmp_path, serve_export_dirs, q_lstm_v2_export):
    source = tmp_path / "q"
    shutil.copytree(serve_export_dirs["q_lstm"], source)
    srv, port = create_server({"q": source}, "127.0.0.1:0", ServeConfig(reload_interval=0.05))
    try:
        old = srv.models["q"].version
        _replace_model(source, q_lstm_v2_export)
        for _ in range(200):
            if srv.models["q"].version != old:
                break
            time.sleep(0.02)
        assert srv.models["q"].version != old
    finally:
        srv.stop(None)


def test_an_empty_model_name_needs_a_single_model_server(serve_export_dirs):
    srv, port = create_server({"q": serve_export_dirs["q_lstm"], "g": serve_export_dirs["pg_gru"]}, "127.0.0.1:0")
    try:
        with pytest.raises(ServeError) as err:
            srv.catalog.latest("")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "['g', 'q']: expected one of them" in err.value.message
        assert srv.catalog.latest("q").name == "q"
    finally:
        srv.stop(None)
