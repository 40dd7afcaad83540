"""``create_server``: the PolicyService with health and reflection, and graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnpolicy.serve.backend import load_backend
from rnnpolicy.serve.model import ServedModel
from rnnpolicy.serve.servicer import PolicyServicer
from rnnpolicy.serve.sessions import SessionRegistry
from rnnpolicy.v1 import policy_pb2, policy_pb2_grpc

__all__ = ["PolicyServer", "ServeConfig", "create_server", "serve_until_signal", "SERVICE_NAME"]

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
_log = logging.getLogger("rnnpolicy.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and tuning."""

    max_sessions: int = 10_000
    """Most sessions held at once, over all models; CreateSession beyond it is RESOURCE_EXHAUSTED."""
    session_ttl: float = 300.0
    """Seconds a session may sit idle before it expires (0: never)."""
    max_batch: int = 256
    """Most steps in one onnxruntime call."""
    max_wait_us: int = 0
    """Microseconds a batch waits to fill (0: run at once; steps arriving meanwhile join the next batch)."""
    intra_op_threads: int = 1
    """onnxruntime intra-op threads per model."""
    max_workers: int = 256
    """gRPC handler threads; also the most concurrent RPCs (open streams included), beyond which calls are refused."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request accepted; gRPC refuses larger ones with RESOURCE_EXHAUSTED."""
    max_batch_rows: int = 4096
    """Most sessions in one StepBatch (INVALID_ARGUMENT beyond)."""

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_batch", "intra_op_threads", "max_workers", "max_message_bytes", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.session_ttl < 0:
            raise ValueError(f"session_ttl must be >= 0 seconds (0: never expire), got {self.session_ttl}")
        if self.max_wait_us < 0:
            raise ValueError(f"max_wait_us must be >= 0, got {self.max_wait_us}")


class PolicyServer:
    """A started-or-not gRPC server plus the models, batchers and reaper it owns."""

    def __init__(self, server: grpc.Server, servicer: PolicyServicer, health_servicer: health.HealthServicer,
                 config: ServeConfig, address: str) -> None:
        self.grpc_server = server
        self.servicer = servicer
        self.health = health_servicer
        self.config = config
        self.address = address
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="rnnpolicy-session-reaper", daemon=True)

    @property
    def models(self) -> dict[str, ServedModel]:
        return self.servicer.models

    @property
    def registry(self) -> SessionRegistry:
        return self.servicer.registry

    def start(self) -> PolicyServer:
        self.grpc_server.start()
        self._reaper.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, let in-flight steps finish (up to ``grace`` s), then stop the batchers."""
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        self._stop.set()
        for model in self.models.values():
            model.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def _reap(self) -> None:
        ttl = self.config.session_ttl
        interval = min(5.0, max(0.05, ttl / 4)) if ttl else 5.0
        while not self._stop.wait(interval):
            if ttl:
                self.registry.expire_idle()


def create_server(models: Mapping[str, str | Path], address: str = "127.0.0.1:0",
                  config: ServeConfig | None = None, *, start: bool = True) -> tuple[PolicyServer, int]:
    """Load ``models`` (name -> export directory or ``.onnx`` file) and bind ``address``; return the server and its port.

    ``ValueError`` names a model that cannot be loaded or an address that cannot be bound.
    """
    config = config or ServeConfig()
    if not models:
        raise ValueError("create_server needs at least one model (name -> export directory)")
    registry = SessionRegistry(max_sessions=config.max_sessions, ttl=config.session_ttl)
    served: dict[str, ServedModel] = {}
    try:
        for name, path in models.items():
            backend = load_backend(path, intra_op_threads=config.intra_op_threads)
            served[name] = ServedModel(name, backend, registry, capacity=config.max_sessions,
                                       max_batch=config.max_batch, max_wait_us=config.max_wait_us)
    except Exception:  # a later model failed to load: stop the workers of those already loaded
        for model in served.values():
            model.close()
        raise
    servicer = PolicyServicer(served, registry, max_batch_rows=config.max_batch_rows)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", max(config.max_message_bytes, 4 * 1024 * 1024)),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rnnpolicy-rpc"),
                         options=options, maximum_concurrent_rpcs=config.max_workers)
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        port = 0
        _log.debug("bind failed: %s", exc)
    if port == 0:  # a successful bind, even to port 0, returns the port it got
        for model in served.values():
            model.close()
        raise ValueError(f"cannot bind {address!r}: expected a free HOST:PORT")
    policy_server = PolicyServer(server, servicer, health_servicer, config, address)
    if start:
        policy_server.start()
    return policy_server, port


def serve_until_signal(server: PolicyServer, grace: float = 5.0) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully: stop accepting, finish in-flight steps."""
    stopping = threading.Event()

    def handle(signum, frame) -> None:
        _log.info("received %s: stopping (grace %.1f s)", signal.Signals(signum).name, grace)
        stopping.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    server.stop(grace)
    _log.info("stopped")
