"""The synchronous client: ``PolicyClient`` (a channel) and its sessions, stepped over a stream or unary calls.

The protocol (seq numbering, retries, replay, session calls) is :mod:`rnnpolicy.clients._protocol`'s; this
module only performs its calls with grpc's sync API.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import grpc
import numpy as np

from rnnpolicy.clients._channel import open_channel, with_token
from rnnpolicy.clients._convert import ModelInfo, StepResult
from rnnpolicy.clients._errors import PolicyError
from rnnpolicy.clients._protocol import (
    DEFAULT_HISTORY,
    Backoff,
    Call,
    Plan,
    RetryPolicy,
    SessionProtocol,
    call_plan,
    check_history,
    check_transport,
    affinity_metadata,
    create_plan,
    list_models_plan,
    step_timed_out,
)
from rnnpolicy.spec import PolicySpec
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

__all__ = ["DEFAULT_HISTORY", "PolicyClient", "Session", "StreamSession", "drive"]

T = TypeVar("T")

CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 64 * 1024 * 1024),)


def drive(plan: Plan[T], perform: Callable[[Call], Any], pause: Callable[[float], None]) -> T:
    """Run ``plan`` to its result: ``perform`` each :class:`Call` (a response, or a raised ``PolicyError`` handed
    to the plan), ``pause`` on each :class:`Backoff`. The plan's own ``PolicyError`` propagates."""
    outcome: Any = None
    try:
        while True:
            command = plan.send(outcome)
            if type(command) is Backoff:
                pause(command.seconds)
                outcome = None
                continue
            try:
                outcome = perform(command)
            except PolicyError as error:
                outcome = error
    except StopIteration as done:
        return done.value


class PolicyClient:
    """A connection to a PolicyService. Use as a context manager; every call has a ``timeout`` in seconds."""

    def __init__(self, target: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.05,
                 channel: grpc.Channel | None = None, token: str | None = None, tls: bool = False,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> None:
        """``token``: sent as ``authorization: Bearer <token>`` on every call. TLS when ``tls`` or any ``tls_*``
        file is given: ``tls_ca`` verifies the server (default: the system's roots), ``tls_cert`` and ``tls_key``
        are the client certificate for mutual TLS (PEM files). ``channel``: an existing channel to use instead.
        ``retries``: times a call is resent after a transient failure, ``backoff * 2**attempt`` seconds apart."""
        RetryPolicy(retries, backoff)  # validates both
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        if channel is not None and (tls or any(f is not None for f in (tls_ca, tls_cert, tls_key))):
            raise ValueError("give either channel= or TLS settings (tls, tls_ca, tls_cert, tls_key), not both")
        if channel is None:
            channel = open_channel(target, CHANNEL_OPTIONS, token=token, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert,
                                   tls_key=tls_key)
        elif token is not None:
            channel = with_token(channel, token)
        self._channel = channel
        self.stub = policy_pb2_grpc.PolicyServiceStub(self._channel)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff)

    def run(self, plan: Plan[T], timeout: float | None = None, *, metadata: tuple[tuple[str, str], ...] | None = None,
            stream: _StepStream | None = None) -> T:
        """Perform ``plan``'s calls, each with ``timeout`` and ``metadata``; its steps over ``stream`` when given."""
        timeout = self.timeout if timeout is None else timeout

        def perform(call: Call) -> Any:
            if stream is not None and call.method == "Step":
                return stream.send(call.request, timeout)
            try:
                return getattr(self.stub, call.method)(call.request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                raise PolicyError.from_rpc_error(exc) from None

        return drive(plan, perform, time.sleep)

    def call(self, method: str, request: Any, timeout: float | None = None, retry: bool = False) -> Any:
        """Call ``method`` of the stub; ``PolicyError`` on failure, retrying transient ones when ``retry``."""
        return self.run(call_plan(method, request, self.retry_policy() if retry else None), timeout)

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return self.run(list_models_plan(self.retry_policy()), timeout)

    def session(self, model: str = "", *, seed: int | None = None, deterministic: bool = True,
                timeout: float | None = None, history: int = DEFAULT_HISTORY, transport: str = "stream",
                affinity: str = "") -> Session:
        """Open a session on ``model`` (empty: the server's only model); close it with ``with`` or ``close()``.

        ``transport``: ``"stream"`` (default) steps over a ``StepStream`` of this session's own, opened at its
        first step; ``"unary"`` sends each step as a ``Step`` call. ``history``: steps kept to replay to a
        server restored from an older checkpoint. ``affinity``: a routing key (e.g. a game server's id) sent
        with the session's every call as ``x-session-affinity``, so that behind a proxy hashing on it the
        sessions sharing it land on one replica (docs/cluster.md)."""
        check_history(history)  # before the session exists on the server
        check_transport(transport)
        protocol = self._open(model, seed, deterministic, timeout, history, affinity)
        return Session(self, protocol, transport)

    def stream_session(self, model: str = "", *, seed: int | None = None, deterministic: bool = True,
                       timeout: float | None = None, history: int = DEFAULT_HISTORY) -> StreamSession:
        """Deprecated: :meth:`session` steps over a stream by default."""
        warnings.warn("PolicyClient.stream_session() is deprecated: session() steps over a stream by default",
                      DeprecationWarning, stacklevel=2)
        check_history(history)
        return StreamSession(self, self._open(model, seed, deterministic, timeout, history))

    def _open(self, model: str, seed: int | None, deterministic: bool, timeout: float | None,
              history: int, affinity: str = "") -> SessionProtocol:
        created = self.run(create_plan(model, seed, affinity), timeout, metadata=affinity_metadata(affinity) or None)
        return SessionProtocol(created, deterministic=deterministic, history=history, retry=self.retry_policy(),
                               affinity=affinity)


class SessionFields:
    """What the sync and asyncio sessions show of their :class:`SessionProtocol`."""

    protocol: SessionProtocol

    @property
    def session_id(self) -> str:
        return self.protocol.session_id

    @property
    def model(self) -> ModelInfo:
        return self.protocol.model

    @property
    def spec(self) -> PolicySpec:
        return self.protocol.model.spec

    @property
    def deterministic(self) -> bool:
        return self.protocol.deterministic

    @property
    def seq(self) -> int:
        """The last seq the server applied; the next step sends ``seq + 1``."""
        return self.protocol.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self.protocol.seq = value

    def resync(self, expected_seq: int) -> None:
        """Continue from the server's ``expected_seq`` after steps were lost beyond replay (``PolicyError.expected_seq``);
        the state the server holds is older than this client's episode, so send the next step with ``episode_start=True``."""
        self.protocol.resync(expected_seq)


class Session(SessionFields):
    """One server-side session: ``step`` numbers seq itself and retries transient failures with the same seq.

    Every call carries the metadata ``x-session-id``. Step a session from one thread at a time."""

    def __init__(self, client: PolicyClient, protocol: SessionProtocol, transport: str = "stream") -> None:
        check_transport(transport)
        self.client = client
        self.protocol = protocol
        self.transport = transport
        """``"stream"`` or ``"unary"``: how steps travel."""
        self._stream = _StepStream(client, protocol.metadata) if transport == "stream" else None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, plan: Plan[T], timeout: float | None) -> T:
        return self.client.run(plan, timeout, metadata=self.protocol.metadata, stream=self._stream)

    def step(self, obs: Any, episode_start: bool = False, *, deterministic: bool | None = None,
             timeout: float | None = None) -> StepResult:
        """Send one observation (raw, as the environment returns it); get the action.

        After a ``PolicyError`` with a transient code, step again with the same observation:
        the same seq is reused and the server answers it at most once. A server restored from a crash
        checkpoint that expects an older seq gets the lost steps replayed from this session's history first.
        """
        request = self.protocol.step_request(obs, episode_start, deterministic)
        return self.protocol.step_result(self._run(self.protocol.step_plan(request), timeout))

    def reset(self, timeout: float | None = None) -> None:
        """Zero the state; seq numbering carries on."""
        self._run(self.protocol.reset_plan(), timeout)

    def get_state(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """This session's hidden state by tensor name, each ``(layers, hidden)``."""
        return self._run(self.protocol.get_state_plan(), timeout)

    def set_state(self, state: dict[str, np.ndarray], timeout: float | None = None) -> None:
        self._run(self.protocol.set_state_plan(state), timeout)

    def migrate(self, version: str = "", timeout: float | None = None) -> ModelInfo:
        """Move this session to another loaded ``version`` of its model (empty: the latest), keeping its state."""
        return self._run(self.protocol.migrate_plan(version), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Close the session on the server (once; errors closing are ignored when the server is gone)."""
        if self._stream is not None:
            self._stream.drop()
        self._run(self.protocol.close_plan(), timeout)


class StreamSession(Session):
    """What the deprecated :meth:`PolicyClient.stream_session` returns: a :class:`Session` over a stream."""

    def __init__(self, client: PolicyClient, protocol: SessionProtocol) -> None:
        super().__init__(client, protocol, "stream")


class _StepStream:
    """One session's ``StepStream``, opened at its first step with the session's metadata. A failed or unanswered
    step drops it (no stale answer can reach a later step); the next step opens a fresh one, as does a step
    after the stream ended while idle."""

    def __init__(self, client: PolicyClient, metadata: tuple[tuple[str, str], ...]) -> None:
        self._client = client
        self._metadata = metadata
        self._call: Any = None

    def _open(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = self._client.stub.StepStream(_drain(self._requests), metadata=self._metadata)
        # A reader thread hands answers over, so that each step can wait with its own timeout.
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_pump, args=(self._call, self._answers), name="rnnpolicy-stream-reader",
                         daemon=True).start()

    def send(self, request: pb.StepRequest, timeout: float) -> pb.StepResponse:
        if self._call is not None and not self._answers.empty():
            self.drop()  # it ended while idle (say the server restarted): not this step's failure, open a fresh one
        if self._call is None:
            self._open()
        self._requests.put(request)
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            self.drop()
            raise step_timed_out(request, timeout) from None
        if type(answer) is pb.StepResponse:
            return answer
        self.drop()
        if answer is None:
            raise PolicyError(grpc.StatusCode.UNAVAILABLE, "the server ended the step stream")
        raise PolicyError.from_rpc_error(answer)

    def drop(self) -> None:
        if self._call is not None:
            self._requests.put(None)
            self._call.cancel()
            self._call = None

    def __del__(self) -> None:
        self.drop()  # a session dropped without close(): its stream and the stream's threads end with it


def _pump(call: Iterator[pb.StepResponse], answers: queue.SimpleQueue) -> None:
    """Move a stream's answers to ``answers``; then ``None`` at its end, or the error that broke it."""
    try:
        for response in call:
            answers.put(response)
        answers.put(None)
    except grpc.RpcError as exc:
        answers.put(exc)


def _drain(requests: queue.SimpleQueue) -> Iterator[pb.StepRequest]:
    while True:
        request = requests.get()
        if request is None:
            return
        yield request
