"""The whole path on a fresh clone: train, evaluate, export, serve, play through gRPC, shut down.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py``). Every step is a real
``rnnpolicy`` command, printed before it runs, so each can be copied and run by hand.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RNNPOLICY = [sys.executable, "-m", "rnnpolicy.cli"]


def run(args: list[str]) -> None:
    print(f"\n$ rnnpolicy {shlex.join(args)}", flush=True)
    subprocess.run(RNNPOLICY + args, check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(target: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited early with code {server.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise SystemExit(f"the server at {target} did not report SERVING within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="rnnpolicy/TMaze-v0", help="Environment to train on. (default: rnnpolicy/TMaze-v0)")
    parser.add_argument("--algo", default="ppo", choices=["ppo", "drqn"], help="Algorithm. (default: ppo)")
    parser.add_argument("--dir", default="demo", help="Where the run and the export go. (default: demo)")
    parser.add_argument("--episodes", type=int, default=20, help="Episodes to play through the server. (default: 20)")
    args = parser.parse_args()

    work = Path(args.dir)
    run_dir, export_dir = work / "run", work / "export"
    run(["train", "--algo", args.algo, "--env", args.env, "--seed", "1", "--out", str(run_dir)])
    run(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "100"])
    run(["export", str(run_dir / "checkpoint.pt"), "--out", str(export_dir)])

    port = free_port()
    target = f"127.0.0.1:{port}"
    serve_args = ["serve", "--model", f"demo={export_dir}", "--host", "127.0.0.1", "--port", str(port)]
    print(f"\n$ rnnpolicy {shlex.join(serve_args)} &", flush=True)
    server = subprocess.Popen(RNNPOLICY + serve_args)
    try:
        wait_until_serving(target, server)
        run(["play", "--target", target, "--model", "demo", "--env", args.env, "--episodes", str(args.episodes)])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        print(f"\nserver stopped (exit code {code})")
    print(f"\ndone: checkpoint in {run_dir}, exported model in {export_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
