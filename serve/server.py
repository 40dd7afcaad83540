"""``create_server``: the PolicyService with health and reflection, persistence, metrics and graceful shutdown.

The gRPC server is grpcio's asyncio server, running on the process's one server event loop in a
thread of its own (:func:`server_loop`), so ``create_server`` and :class:`PolicyServer` keep a
plain blocking API. Every RPC is a coroutine on that loop, which owns all session state (see
:mod:`rnnpolicy.serve.coordinator`): thousands of open streams cost no thread each, and steps
arriving together batch across sessions without thread hand-offs. ``max_concurrent_rpcs`` bounds
the calls in progress, open streams included; a call beyond it is refused RESOURCE_EXHAUSTED
(:mod:`rnnpolicy.serve.admission`).
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Coroutine, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from rnnpolicy.serve.admission import Admission, grpc_backstop
from rnnpolicy.serve.auth import Security, principal_of
from rnnpolicy.serve.backend import load_backend
from rnnpolicy.serve.catalog import ModelCatalog
from rnnpolicy.serve.coordinator import StepCoordinator
from rnnpolicy.serve.directory import SessionDirectory
from rnnpolicy.serve.handlers import add_policy_service
from rnnpolicy.serve.metrics import ServeMetrics
from rnnpolicy.serve.model import ServedModel
from rnnpolicy.serve.persistence import StateDirStore, restore_sessions
from rnnpolicy.serve.redis_store import open_store
from rnnpolicy.serve.servicer import PolicyServicer
from rnnpolicy.serve.store import MemoryStore, SessionStore
from rnnpolicy.v1 import policy_pb2

__all__ = ["BusyPollSelector", "EventLoopThread", "MAX_BUSY_POLL_US", "PolicyServer", "ServeConfig", "create_server",
           "server_loop", "serve_until_signal", "SERVICE_NAME"]

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
MAX_BUSY_POLL_US = 10_000
STORE_CHECK_INTERVAL = 1.0
"""Seconds between checks that a write-through session store can be reached (health follows it)."""
_log = logging.getLogger("rnnpolicy.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and tuning; ``rnnpolicy serve`` makes one option of each field, its docstring the help."""

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
    split_batch_rows: int = 128
    """An onnxruntime call of at least this many rows runs as two halves at once on two threads, when
    there is one intra-op thread (0: never). A 256-row call of a 128-unit LSTM took 0.85-0.92 ms so,
    against 1.16 ms whole, while the other core was free."""
    max_concurrent_rpcs: int = 15_000
    """Most calls in progress at once, open streams included; a call beyond it is refused at once with
    RESOURCE_EXHAUSTED. An open stream costs memory, not a thread: room for a stream per session
    (max_sessions) and half as many other calls."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request accepted; gRPC refuses larger ones with RESOURCE_EXHAUSTED."""
    max_batch_rows: int = 4096
    """Most sessions in one StepBatch (INVALID_ARGUMENT beyond)."""
    max_sessions_per_principal: int = 0
    """Most sessions one principal (auth token) may hold; 0: no limit beyond max_sessions."""
    state_dir: str | None = None
    """Directory where sessions are saved on shutdown (and every checkpoint_interval) and restored on
    start, so clients continue across restarts."""
    session_store: str = ""
    """Where sessions live, shared by every replica: a ``redis://[:PASSWORD@]HOST:PORT/DB`` (or ``rediss://``) URL;
    each step is committed there before it is answered, so any replica can continue any session
    (docs/cluster.md; needs rnnpolicy[cluster]). Unset: sessions live in this process."""
    checkpoint_interval: float = 0.0
    """Seconds between periodic session snapshots to state_dir; a crash (kill -9) loses at most the
    steps of that many seconds (0: only on graceful shutdown)."""
    reload_interval: float = 0.0
    """Seconds between checks of the served export directories for a changed model file, loaded as a
    new version (0: only on SIGHUP)."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint (0 picks a free one; unset: no endpoint)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
    busy_poll_us: int = 0
    """Microseconds the event loop polls for the next message before it sleeps (0: sleep at once; at
    most 10000). A low-latency mode for clients that step back to back: it keeps the loop's CPU
    awake between messages, at the cost of that CPU time (see docs/serving.md)."""

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_batch", "intra_op_threads", "max_concurrent_rpcs", "max_message_bytes",
                     "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("session_ttl", "checkpoint_interval", "reload_interval", "max_wait_us", "max_sessions_per_principal",
                     "split_batch_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.session_store and self.state_dir:
            raise ValueError(f"session_store {self.session_store.split('@')[-1]!r} and state_dir {self.state_dir!r} "
                             "are two homes for the sessions; choose one (a cluster uses the session store)")
        if self.checkpoint_interval and not self.state_dir:
            raise ValueError(f"checkpoint_interval {self.checkpoint_interval} needs a state_dir to write to")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0..65535, got {self.metrics_port}")
        if not 0 <= self.busy_poll_us <= MAX_BUSY_POLL_US:
            raise ValueError(f"busy_poll_us must be 0..{MAX_BUSY_POLL_US} (0: off), got {self.busy_poll_us}")


class BusyPollSelector(selectors.DefaultSelector):
    """The event loop's selector: asked to wait, it first polls without waiting for up to
    :attr:`busy_poll` seconds, then waits as usual.

    On this project's 2-vCPU virtual machines a thread that sleeps between messages wakes on a
    CPU whose caches and branch predictors the host has meanwhile given to others; polling keeps
    it awake. Each poll is one ``epoll_wait`` with a zero timeout, which releases the GIL.
    """

    def __init__(self) -> None:
        super().__init__()
        self.busy_poll = 0.0

    def select(self, timeout: float | None = None) -> list:
        poll = self.busy_poll
        if not poll or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        if timeout is not None:
            poll = min(poll, timeout)
        deadline = time.perf_counter() + poll
        while time.perf_counter() < deadline:
            ready = super().select(0)
            if ready:
                return ready
        return super().select(None if timeout is None else timeout - poll)


class EventLoopThread:
    """An asyncio event loop running forever in a daemon thread, with blocking calls into it from other threads."""

    def __init__(self, name: str = "rnnpolicy-loop") -> None:
        self._selector = BusyPollSelector()
        self._busy_poll: dict[object, float] = {}
        self._busy_poll_lock = threading.Lock()
        self.loop = asyncio.SelectorEventLoop(self._selector)
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the loop and return its result (``TimeoutError`` after ``timeout`` s)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def busy_poll(self, owner: object, seconds: float) -> None:
        """Set how long ``owner`` (a server on this loop) wants the loop to poll before it sleeps; 0 withdraws
        the wish. The loop polls for the longest wish of its servers."""
        with self._busy_poll_lock:
            if seconds:
                self._busy_poll[owner] = seconds
            else:
                self._busy_poll.pop(owner, None)
            self._selector.busy_poll = max(self._busy_poll.values(), default=0.0)

    @property
    def busy_poll_seconds(self) -> float:
        """How long the loop now polls before it sleeps."""
        return self._selector.busy_poll


_server_loop: EventLoopThread | None = None
_server_loop_lock = threading.Lock()


def server_loop() -> EventLoopThread:
    """The event loop every PolicyServer of this process runs on, started on first use.

    One loop for the process's lifetime: grpcio's asyncio layer keeps process-wide state (a poller
    thread) that goes on delivering events to the loop it started on; closing that loop after one
    server stopped made every later event fail with "Event loop is closed".
    """
    global _server_loop
    with _server_loop_lock:
        if _server_loop is None:
            _server_loop = EventLoopThread()
        return _server_loop


class PolicyServer:
    """A started-or-not gRPC server plus the models, sessions and background threads it owns.

    Background threads: the event loop the gRPC server runs on, the reaper (expires idle sessions,
    unloads versions no session uses), the reloader (``reload_interval``) and the checkpointer
    (``checkpoint_interval``).
    """

    def __init__(self, server: grpc.aio.Server, loop: EventLoopThread, servicer: PolicyServicer,
                 health_servicer: health_aio.HealthServicer, config: ServeConfig, address: str, store: SessionStore,
                 port: int = 0) -> None:
        self.grpc_server = server
        self._loop = loop
        self.servicer = servicer
        self.coordinator = servicer.coordinator
        self.health = health_servicer
        self.config = config
        self.address = address
        """The address asked for (its port may be 0)."""
        self.port = port
        """The port bound."""
        self.store = store
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._stopped = False
        ttl = config.session_ttl
        self._threads = [threading.Thread(target=self._every, args=(min(5.0, max(0.05, ttl / 4)) if ttl else 5.0,
                                                                     self._reap), name="rnnpolicy-reaper", daemon=True)]
        if config.reload_interval:
            self._threads.append(threading.Thread(target=self._every, args=(config.reload_interval, self.reload_models),
                                                  name="rnnpolicy-reloader", daemon=True))
        if config.checkpoint_interval:
            self._threads.append(threading.Thread(target=self._every, args=(config.checkpoint_interval, self.checkpoint),
                                                  name="rnnpolicy-checkpointer", daemon=True))
        self._store_reachable = True
        if store.write_through:
            self._threads.append(threading.Thread(target=self._every, args=(STORE_CHECK_INTERVAL, self.check_store),
                                                  name="rnnpolicy-store-health", daemon=True))

    @property
    def catalog(self) -> ModelCatalog:
        return self.servicer.catalog

    @property
    def models(self) -> dict[str, ServedModel]:
        """Each served name's latest version."""
        return self.catalog.latest_models

    @property
    def directory(self) -> SessionDirectory:
        return self.coordinator.directory

    @property
    def metrics(self) -> ServeMetrics:
        return self.servicer.metrics

    def start(self) -> PolicyServer:
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(self.config.metrics_port, self.config.metrics_host)
        self._loop.call(self.grpc_server.start())
        self._loop.busy_poll(self, self.config.busy_poll_us / 1e6)
        if self.store.write_through:  # a store unreachable from the start: NOT_SERVING from the start
            self._store_reachable = self._loop.call(self.store.healthy(), timeout=STORE_CHECK_INTERVAL + 5.0)
            if not self._store_reachable:
                _log.error("event=session_store_unreachable store=%s", self.store.describe)
        for thread in self._threads:
            thread.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING if self._store_reachable
                         else health_pb2.HealthCheckResponse.NOT_SERVING)
        return self

    def _set_health(self, status: int) -> None:
        async def set_all() -> None:
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)

        self._loop.call(set_all())

    def stop(self, grace: float | None = 5.0) -> None:
        """Answer NOT_SERVING to health checks, stop accepting calls, let in-flight steps finish (up to
        ``grace`` s), save the sessions to the state directory, then stop the batchers."""
        if self._stopped:
            return
        self._stopped = True
        self._loop.busy_poll(self, 0.0)
        self._loop.call(self.health.enter_graceful_shutdown())  # NOT_SERVING first: proxies stop routing here
        limit = (grace or 0.0) + 5.0
        try:
            self._loop.call(self.grpc_server.stop(grace), timeout=limit)
        except futures.TimeoutError:
            _log.warning("gRPC did not finish stopping within %.1f s; saving and closing anyway", limit)
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        try:
            if isinstance(self.store, StateDirStore):
                self.checkpoint()
        except OSError:  # e.g. a full disk: say so, and still release the models
            _log.exception("event=snapshot_failed store=%s: the sessions were not saved", self.store.describe)
        finally:
            self.catalog.close()
            self.metrics.close()
            try:
                self._loop.call(self.store.close(), timeout=5.0)
            except Exception:  # noqa: BLE001 - closing connections must not stop the shutdown
                _log.exception("closing the session store failed")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` s pass (False)."""
        return self._loop.call(self.grpc_server.wait_for_termination(timeout))

    def reload_models(self) -> list[ServedModel]:
        """Load every served export directory whose model file changed as a new version; return those."""
        loaded = self.catalog.reload()
        self._on_loop(self.catalog.retire)
        return loaded

    def checkpoint(self) -> int:
        """Write every session to the state directory now; return how many (``ValueError`` without one)."""
        if not isinstance(self.store, StateDirStore):
            raise ValueError(f"this server has no state_dir to checkpoint to (its sessions live in {self.store.describe})")
        snapshot = self._on_loop(self.coordinator.snapshot)
        self.store.checkpoint(snapshot)
        return len(snapshot.records)

    def expire_idle(self) -> int:
        """Expire the sessions idle past the TTL now; return how many (the reaper does it every few seconds)."""
        return self._on_loop(self.coordinator.expire_idle)

    def _on_loop(self, action):
        """Run ``action()`` on the server's event loop, which owns the sessions, and return its result."""
        async def run():
            return action()

        return self._loop.call(run())

    def check_store(self) -> bool:
        """Ask the session store whether it can be reached; health turns NOT_SERVING while it cannot (a proxy then
        routes elsewhere) and SERVING again when it can. Runs every STORE_CHECK_INTERVAL seconds."""
        reachable = self._loop.call(self.store.healthy(), timeout=STORE_CHECK_INTERVAL + 5.0)
        if reachable != self._store_reachable and not self._stopped:
            self._store_reachable = reachable
            self._set_health(health_pb2.HealthCheckResponse.SERVING if reachable
                             else health_pb2.HealthCheckResponse.NOT_SERVING)
            _log.log(logging.INFO if reachable else logging.ERROR, "event=session_store_%s store=%s",
                     "reachable" if reachable else "unreachable", self.store.describe)
        return reachable

    def _reap(self) -> None:
        if self.config.session_ttl:
            self.expire_idle()
        self._on_loop(self.catalog.retire)

    def _every(self, interval: float, action) -> None:
        while not self._stop.wait(interval):
            try:
                action()
            except Exception:  # noqa: BLE001 - a background task must not die; the next round tries again
                _log.exception("%s failed", getattr(action, "__name__", action))


def create_server(models: Mapping[str, str | Path], address: str = "127.0.0.1:0",
                  config: ServeConfig | None = None, *, start: bool = True,
                  security: Security | None = None, store: SessionStore | None = None) -> tuple[PolicyServer, int]:
    """Load ``models`` (name -> export directory or ``.onnx`` file) and bind ``address``; return the server and its port.

    ``security``: TLS (optionally mutual) and token authentication (:class:`~rnnpolicy.serve.auth.Security`).
    ``store``: where sessions live beyond this process (default: ``config.session_store``'s Redis, or
    ``config.state_dir``'s snapshots, or memory only).
    ``ValueError`` names a model that cannot be loaded, an address that cannot be bound, or an unreadable or
    mismatched certificate, key or token file.
    """
    config = config or ServeConfig()
    if not models:
        raise ValueError("create_server needs at least one model (name -> export directory)")
    security = security or Security()
    credentials = security.server_credentials()  # before loading models: bad files fail fast
    interceptor = security.interceptor()
    if store is None and config.session_store:
        store = open_store(config.session_store, config.session_ttl)
    if store is None:
        store = StateDirStore(config.state_dir) if config.state_dir else MemoryStore()
    metrics = ServeMetrics()
    directory = SessionDirectory(max_sessions=config.max_sessions, ttl=config.session_ttl,
                                 max_sessions_per_principal=config.max_sessions_per_principal,
                                 private_ids=security.auth,  # unknown ids answer like others' (nothing to probe)
                                 listener=metrics.session_event)
    loop = server_loop()
    coordinator: StepCoordinator | None = None

    def load(name: str, path: Path) -> ServedModel:
        backend = load_backend(path, intra_op_threads=config.intra_op_threads)
        return ServedModel(name, backend, capacity=config.max_sessions, deliver=coordinator.deliver,
                           max_batch=config.max_batch, max_wait_us=config.max_wait_us,
                           observe_batch=metrics.batch_size.labels(name).observe,
                           split_rows=config.split_batch_rows if config.intra_op_threads == 1 else 0)

    keep = store.keep_model if isinstance(store, StateDirStore) else None
    catalog = ModelCatalog(load, directory.sessions_of, on_load=keep)
    coordinator = StepCoordinator(directory, store, catalog, metrics)
    coordinator.bind_loop(loop.loop)
    metrics.bind_versions(lambda: [(m.name, m.version, directory.sessions_of(m), m.slots.bytes_per_slot)
                                   for m in catalog.versions()])
    try:
        for name, path in models.items():
            catalog.add(name, path)
        if isinstance(store, StateDirStore):
            restore_sessions(store, catalog, directory)  # before the server starts: nothing else runs yet
    except Exception:  # a later model failed to load: stop the workers of those already loaded
        catalog.close()
        raise
    servicer = PolicyServicer(coordinator, max_batch_rows=config.max_batch_rows,
                              **({"principal_of": principal_of} if security.auth else {}))  # else: everyone is ""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # Answers may be larger than requests (a StepBatch's head outputs): room above the request limit.
        ("grpc.max_send_message_length", max(2 * config.max_message_bytes, 16 * 1024 * 1024)),
        ("grpc.so_reuseport", 0),
        # Calls that arrived but that the asyncio server has not picked up yet: grpc core refuses some beyond 1,000
        # and all beyond 3,000 by default, so thousands of streams opening together would lose some. Our admission
        # decides instead (rnnpolicy.serve.admission).
        ("grpc.server.max_pending_requests", grpc_backstop(config.max_concurrent_rpcs)),
        ("grpc.server.max_pending_requests_hard_limit", grpc_backstop(config.max_concurrent_rpcs)),
    ]

    # Our admission refuses calls beyond max_concurrent_rpcs so that clients see RESOURCE_EXHAUSTED, never INTERNAL;
    # grpcio's own limit stays, above it, as a backstop (rnnpolicy.serve.admission).
    interceptors = [Admission(config.max_concurrent_rpcs)] + ([interceptor] if interceptor is not None else [])

    async def build() -> tuple[grpc.aio.Server, health_aio.HealthServicer]:  # both belong to the loop they are made on
        server = grpc.aio.server(options=options, interceptors=interceptors,
                                 maximum_concurrent_rpcs=grpc_backstop(config.max_concurrent_rpcs))
        return server, health_aio.HealthServicer()

    server, health_servicer = loop.call(build())
    add_policy_service(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        port = 0
        _log.debug("bind failed: %s", exc)
    if port == 0:  # a successful bind, even to port 0, returns the port it got
        catalog.close()
        raise ValueError(f"cannot bind {address!r}: expected a free HOST:PORT")
    policy_server = PolicyServer(server, loop, servicer, health_servicer, config, address, store, port)
    if start:
        policy_server.start()
    return policy_server, port


def serve_until_signal(server: PolicyServer, grace: float = 5.0) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully: stop accepting, finish in-flight steps,
    save the sessions. SIGHUP checks the served export directories for new model versions."""
    stopping = threading.Event()
    reload = threading.Event()

    def handle(signum, frame) -> None:
        _log.info("received %s: stopping (grace %.1f s)", signal.Signals(signum).name, grace)
        stopping.set()

    def handle_hup(signum, frame) -> None:
        reload.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, handle_hup)
    try:
        while not stopping.wait(0.2):
            if reload.is_set():
                reload.clear()
                loaded = server.reload_models()
                _log.info("SIGHUP: %d new model versions", len(loaded))
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    server.stop(grace)
    _log.info("stopped")
