"""The serving examples run against a real server: game_bot's returns equal the offline rollout, robot_loop reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnpolicy.serve import ServeConfig, create_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def target(serve_export_dirs):
    server, port = create_server({"tmaze": serve_export_dirs["tmaze"], "q": serve_export_dirs["q_lstm"]},
                                 "127.0.0.1:0", ServeConfig(max_sessions=50))
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=120)


def test_game_bot_returns_match_the_offline_rollout(target, serve_export_dirs):
    done = _run("game_bot.py", "--target", target, "--model", "tmaze", "--export", str(serve_export_dirs["tmaze"]),
                "--env", "rnnpolicy/TMaze-v0", "--episodes", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "returns match the offline rollout" in done.stdout
    assert len(re.findall(r"episode \d: server", done.stdout)) == 3


def test_robot_loop_reports_latency_and_deadline_misses(target):
    done = _run("robot_loop.py", "--target", target, "--model", "q", "--hz", "100", "--seconds", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^50 ticks at 100 Hz: latency p50 [\d.]+ ms, .* deadline misses \d+ \([\d.]+%\)$", done.stdout.strip())
