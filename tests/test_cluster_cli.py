"""``rnnpolicy cluster`` (the local launcher) and ``rnnpolicy serve --session-store``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from cluster_procs import require_envoy, require_redis

from rnnpolicy.cli import main
from rnnpolicy.serve.processes import free_port
from rnnpolicy.serve.server import ServeConfig
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _health(address: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="rnnpolicy.v1.PolicyService"), timeout=1)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_the_launcher_starts_a_working_cluster_and_stops_it_all_on_sigint(serve_export_dirs, tmp_path):
    require_redis()
    require_envoy()
    port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "rnnpolicy.cli", "cluster", "--model", f"q_lstm={serve_export_dirs['q_lstm']}",
         "--replicas", "2", "--port", str(port), "--dir", str(tmp_path / "cluster"), "--serve-args=--quiet-sessions"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ready = launcher.stdout.readline()  # blocks until the launcher prints its one line (or exits)
        assert "cluster ready" in ready, ready + launcher.stderr.read()
        assert f"gRPC endpoint 127.0.0.1:{port}" in ready
        replicas = re.search(r"-> replicas (\S+), (\S+);", ready).groups()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            sid = stub.CreateSession(pb.CreateSessionRequest(model="q_lstm"), timeout=10).session_id
            for seq in (1, 2, 3):
                reply = stub.Step(pb.StepRequest(session_id=sid, seq=seq, obs=[0.1] * 5),
                                  metadata=(("x-session-id", sid),), timeout=10)
                assert reply.seq == seq
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(60) == 0
        assert "stopping envoy, the replicas (draining) and redis-server" in launcher.stderr.read()
        for address in (f"127.0.0.1:{port}", *replicas):
            assert not _listening(address), address
        assert (tmp_path / "cluster" / "redis" / "appendonlydir").is_dir()  # Redis' AOF, kept with --dir
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_the_launcher_names_a_bad_model_before_starting_anything(tmp_path, capsys):
    assert main(["cluster", "--model", str(tmp_path / "missing"), "--port", str(free_port())]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_refuses_a_session_store_url_it_cannot_use(serve_export_dirs, capsys):
    args = ["serve", "--model", f"q_lstm={serve_export_dirs['q_lstm']}", "--port", "0"]
    assert main(args + ["--session-store", "http://127.0.0.1:6379"]) == 2
    assert "expected a redis://, rediss:// or unix:// URL" in capsys.readouterr().err


def test_a_session_store_and_a_state_dir_are_refused_together():
    with pytest.raises(ValueError, match="two homes for the sessions"):
        ServeConfig(session_store="redis://:pw@127.0.0.1:6379/0", state_dir="/tmp/x")


def test_a_replica_starts_while_redis_is_down_and_serves_once_it_is_up(serve_export_dirs, tmp_path):
    """NOT_SERVING while its store is unreachable, from the start; SERVING by itself once Redis answers."""
    from cluster_procs import RedisServer, Replica

    require_redis()
    from rnnpolicy.serve.processes import wait_until

    redis = RedisServer(tmp_path / "redis")
    replica = Replica({"q_lstm": serve_export_dirs["q_lstm"]}, tmp_path, store_url=redis.url).start()
    try:
        wait_until(lambda: _health(replica.address) == "NOT_SERVING", 60, "the replica to report NOT_SERVING", replica)
        redis.start().wait_ready()
        replica.wait_ready(15)
    finally:
        replica.stop()
        redis.stop()
