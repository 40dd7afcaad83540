"""Bad serving settings get one line naming the value and what was expected, and nothing is left behind."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest

from rnnpolicy.cli import main
from rnnpolicy.clients import PolicyClient
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint-interval", "5"], "--checkpoint-interval 5.0 needs a --state-dir to write to"),
        (["--reload-interval", "-1"], "--reload-interval must be >= 0 (0: off), got -1.0"),
        (["--max-sessions-per-principal", "-2"], "--max-sessions-per-principal must be >= 0 (0: off), got -2"),
        (["--max-message-bytes", "0"], "--max-message-bytes must be >= 1, got 0"),
        (["--metrics-port", "70000"], "--metrics-port must be 0..65535, got 70000"),
        (["--busy-poll-us", "20000"], "--busy-poll-us must be 0..10000 (0: off), got 20000"),
        (["--split-batch-rows", "-1"], "--split-batch-rows must be >= 0 (0: off), got -1"),
        (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs must be >= 1, got 0"),
        (["--state-dir", "{file}/state"], "cannot be created or written"),
    ],
)
def test_bad_serve_flags_get_one_line_and_exit_code_2(capsys, tmp_path, serve_export_dirs, extra, message):
    (tmp_path / "file").write_text("not a directory")
    argv = ["serve", "--model", f"q={serve_export_dirs['q_lstm']}", "--port", "0"]
    code = main(argv + [a.replace("{file}", str(tmp_path / "file")) for a in extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1], err
    assert "Traceback" not in err


def test_a_bad_client_history_is_refused_before_a_session_is_opened(serve_export_dirs):
    srv, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig())
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(ValueError, match="history must be >= 0 steps, got -1"):
                client.session("q", history=-1)
            with pytest.raises(ValueError, match="history must be >= 0 steps, got -1"):
                client.session("q", history=-1, transport="unary")
            with pytest.raises(ValueError, match="transport must be one of 'stream', 'unary', got 'tcp'"):
                client.session("q", transport="tcp")
            assert len(srv.directory) == 0  # nothing opened on the server
            session = client.session("q")
            with pytest.raises(ValueError, match="expected_seq must be >= 1, got 0"):
                session.resync(0)
            session.close()
    finally:
        srv.stop(None)


def test_migrating_an_unknown_session_is_refused(serve_export_dirs):
    srv, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.MigrateSession(pb.MigrateSessionRequest(session_id="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "unknown session 'nope'" in err.value.details()
    finally:
        srv.stop(None)


def test_a_server_starts_no_handler_threads_and_servers_share_one_event_loop(serve_export_dirs):
    """Every RPC runs on the event loop (no thread per call or per open stream), and stopping one server
    leaves the process's event loop serving the next."""
    before = set(threading.enumerate())  # other tests' threads may still be winding down: count new threads only
    first, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0")
    started = sorted(t.name for t in set(threading.enumerate()) - before)
    assert not any(name.startswith("rnnpolicy-rpc") for name in started), started
    first.stop(None)
    second, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0")
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client, client.session("q") as session:
            assert session.step([0.1] * 5, episode_start=True).seq == 1
    finally:
        second.stop(None)


def test_busy_poll_selector_polls_then_waits_and_never_past_the_timeout():
    from rnnpolicy.serve.server import BusyPollSelector

    reader, writer = socket.socketpair()
    selector = BusyPollSelector()
    try:
        selector.register(reader, 1)  # selectors.EVENT_READ
        selector.busy_poll = 0.5
        started = time.perf_counter()
        assert selector.select(0.01) == []  # a timeout shorter than the poll ends the poll
        assert time.perf_counter() - started < 0.3
        threading.Timer(0.02, writer.send, (b"x",)).start()  # arrives while polling: seen at once
        started = time.perf_counter()
        assert [key.fileobj for key, _ in selector.select(None)] == [reader]
        assert time.perf_counter() - started < 0.3
        reader.recv(1)
        selector.busy_poll = 0.05
        started = time.perf_counter()
        assert selector.select(0.3) == []  # polls 50 ms, then waits the remaining 250 ms
        assert 0.29 <= time.perf_counter() - started < 2.0
        threading.Timer(0.2, writer.send, (b"x",)).start()  # arrives after the poll: the blocking wait sees it
        assert [key.fileobj for key, _ in selector.select(5.0)] == [reader]
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_busy_poll_serves_and_is_withdrawn_when_its_server_stops(serve_export_dirs):
    from rnnpolicy.serve.server import server_loop

    srv, port = create_server({"q": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(busy_poll_us=300))
    try:
        assert server_loop().busy_poll_seconds == pytest.approx(300e-6)
        with PolicyClient(f"127.0.0.1:{port}") as client, client.session("q") as session:
            assert session.transport == "stream"
            assert [session.step([0.1] * 5).seq for _ in range(3)] == [1, 2, 3]
    finally:
        srv.stop(None)
    assert server_loop().busy_poll_seconds == 0.0


def test_serve_bench_refuses_an_unknown_scenario_naming_it_and_the_choices():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_bench.py"
    done = subprocess.run([sys.executable, str(bench), "--only", "stream:1,stream:7"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "unknown scenario 'stream:7'; expected KIND:SESSIONS from unary:1, unary:16" in done.stderr


def test_serve_bench_baseline_names_its_checkout_or_refuses_an_interpreter_without_rnnpolicy(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bench = root / "benchmarks" / "serve_bench.py"
    sys.path.insert(0, str(bench.parent))
    try:
        from serve_bench import baseline_version
    finally:
        sys.path.remove(str(bench.parent))
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert baseline_version(sys.executable) == f"{root / 'serve'} at {commit.stdout.strip() or 'an unknown commit'}"
    missing = tmp_path / "no-python"
    done = subprocess.run([sys.executable, str(bench), "--only", "stream:1", "--baseline", str(missing)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"--baseline '{missing}' cannot be run: No such file or directory" in done.stderr
    # python3 on PATH, unless it can import rnnpolicy (another checkout's activated environment, say)
    probe = "import importlib.util, sys; print('' if importlib.util.find_spec('rnnpolicy') else sys.executable)"
    bare = subprocess.run(["python3", "-c", probe], capture_output=True, text=True)
    if bare.returncode == 0 and bare.stdout.strip():  # an interpreter without rnnpolicy
        done = subprocess.run([sys.executable, str(bench), "--only", "stream:1", "--baseline", bare.stdout.strip()],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "cannot import rnnpolicy.serve: ModuleNotFoundError" in done.stderr


def test_serve_options_are_the_config_fields_under_their_names_and_docs():
    import argparse
    import dataclasses

    from rnnpolicy.configcli import dataclass_from_args, field_docs
    from rnnpolicy.serve.cli import add_serve_arguments

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    for field in dataclasses.fields(ServeConfig):  # every field an option, its docstring the help
        assert " ".join(field_docs(ServeConfig)[field.name].split()) in help_text, field.name
    argv = ["--model", "m", "--max-sessions", "7", "--session-ttl", "1.5", "--max-batch", "9", "--max-wait-us", "3",
            "--threads", "2", "--split-batch-rows", "0", "--max-concurrent-rpcs", "11",
            "--max-message-bytes", "4096", "--max-batch-rows", "8", "--max-sessions-per-principal", "2",
            "--state-dir", "s", "--checkpoint-interval", "4", "--reload-interval", "6", "--metrics-port", "0",
            "--metrics-host", "0.0.0.0", "--busy-poll-us", "10"]
    assert dataclass_from_args(ServeConfig, parser.parse_args(argv)) == ServeConfig(
        max_sessions=7, session_ttl=1.5, max_batch=9, max_wait_us=3, intra_op_threads=2, split_batch_rows=0,
        max_concurrent_rpcs=11, max_message_bytes=4096, max_batch_rows=8, max_sessions_per_principal=2,
        state_dir="s", checkpoint_interval=4.0, reload_interval=6.0, metrics_port=0, metrics_host="0.0.0.0",
        busy_poll_us=10)
    assert dataclass_from_args(ServeConfig, parser.parse_args(["--model", "m"])) == ServeConfig()


def test_the_open_file_limit_is_raised_for_the_connections_and_a_shortfall_is_logged(caplog):
    import resource

    from rnnpolicy.serve.limits import OTHER_FILES, raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * OTHER_FILES + 100:
        pytest.skip(f"the hard open-file limit {hard} leaves no room to raise")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OTHER_FILES, hard))
        with caplog.at_level("INFO", logger="rnnpolicy.serve"):
            assert raise_open_file_limit(100) == OTHER_FILES + 100
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (OTHER_FILES + 100, hard)
        assert f"open-file limit raised from {OTHER_FILES} to {OTHER_FILES + 100}: room for 100 client connections" \
            in caplog.text
        assert raise_open_file_limit(50) == OTHER_FILES + 100  # never lowered
        if hard != resource.RLIM_INFINITY:
            caplog.clear()
            with caplog.at_level("INFO", logger="rnnpolicy.serve"):
                assert raise_open_file_limit(hard) == hard
            assert f"open-file limit {hard} (hard limit {hard}) holds about {hard - OTHER_FILES} client connections, " \
                   f"fewer than the {hard} wanted" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
