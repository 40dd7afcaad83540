"""The synchronous client: ``PolicyClient`` (a channel) and its sessions, unary and streaming."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np

from rnnpolicy.clients._channel import open_channel, with_token
from rnnpolicy.clients._convert import (
    ModelInfo,
    StepResult,
    check_step,
    encode_obs,
    model_info,
    state_message,
    state_tensors,
    step_request,
    step_result,
)
from rnnpolicy.clients._errors import RETRYABLE, PolicyError
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

__all__ = ["DEFAULT_HISTORY", "PolicyClient", "Session", "StreamSession"]

DEFAULT_HISTORY = 512
"""Steps a session keeps to replay to a server restored from an older checkpoint; keep it at least the
server's ``--checkpoint-interval`` times the step rate."""

CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 64 * 1024 * 1024),)


class PolicyClient:
    """A connection to a PolicyService. Use as a context manager; every call has a ``timeout`` in seconds."""

    def __init__(self, target: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.05,
                 channel: grpc.Channel | None = None, token: str | None = None, tls: bool = False,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> None:
        """``token``: sent as ``authorization: Bearer <token>`` on every call. TLS when ``tls`` or any ``tls_*``
        file is given: ``tls_ca`` verifies the server (default: the system's roots), ``tls_cert`` and ``tls_key``
        are the client certificate for mutual TLS (PEM files). ``channel``: an existing channel to use instead."""
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

    def call(self, method: str, request: Any, timeout: float | None = None, retry: bool = False) -> Any:
        """Call ``method`` of the stub; ``PolicyError`` on failure, retrying transient ones when ``retry``."""
        rpc = getattr(self.stub, method)
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return rpc(request, timeout=self.timeout if timeout is None else timeout)
            except grpc.RpcError as exc:
                if attempt + 1 < attempts and exc.code() in RETRYABLE:
                    time.sleep(self.backoff * (2 ** attempt))
                    continue
                raise PolicyError.from_rpc_error(exc) from None
        raise AssertionError("unreachable")

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return [model_info(m) for m in self.call("ListModels", pb.ListModelsRequest(), timeout, retry=True).models]

    def session(self, model: str = "", *, seed: int | None = None, deterministic: bool = True,
                timeout: float | None = None, history: int = DEFAULT_HISTORY) -> Session:
        """Open a session on ``model`` (empty: the server's only model); close it with ``with`` or ``close()``.
        ``history``: steps kept to replay to a server restored from an older checkpoint."""
        check_history(history)  # before the session exists on the server
        response = self._create(model, seed, timeout)
        return Session(self, response.session_id, model_info(response.model), deterministic, history)

    def stream_session(self, model: str = "", *, seed: int | None = None, deterministic: bool = True,
                       timeout: float | None = None, history: int = DEFAULT_HISTORY) -> StreamSession:
        """Open a session stepped over a dedicated bidirectional stream (lowest latency)."""
        check_history(history)
        response = self._create(model, seed, timeout)
        return StreamSession(self, response.session_id, model_info(response.model), deterministic, history)

    def _create(self, model: str, seed: int | None, timeout: float | None) -> pb.CreateSessionResponse:
        request = pb.CreateSessionRequest(model=model, seed=seed) if seed is not None else pb.CreateSessionRequest(model=model)
        return self.call("CreateSession", request, timeout)


def check_history(history: int) -> None:
    """``ValueError`` unless ``history`` (steps a session keeps for replay) is >= 0."""
    if history < 0:
        raise ValueError(f"history must be >= 0 steps, got {history}")


class SessionBase:
    """What the sync and asyncio sessions share: identity, seq numbering and the step message."""

    def __init__(self, client: Any, session_id: str, model: ModelInfo, deterministic: bool,
                 history: int = DEFAULT_HISTORY) -> None:
        check_history(history)
        self.client = client
        self.session_id = session_id
        self.model = model
        self.spec = model.spec
        self.deterministic = deterministic
        self.seq = 0
        """The last seq the server applied."""
        self._discrete = model.spec.action.is_discrete
        self._closed = False
        self._history: deque[pb.StepRequest] = deque(maxlen=history)
        """The last ``history`` steps sent, replayed to a server restored from an older checkpoint."""

    def _next_request(self, obs: Any, episode_start: bool, deterministic: bool | None) -> pb.StepRequest:
        """The step after the last applied one: ``seq + 1``, the observation encoded by the spec."""
        det = self.deterministic if deterministic is None else deterministic
        return step_request(self.session_id, self.seq + 1, encode_obs(self.spec, obs), episode_start, det)

    def _replay_plan(self, error: PolicyError) -> list[pb.StepRequest] | None:
        """The steps to resend when ``error`` says the server is behind this client (it was restored from a
        checkpoint older than our last step): every step from its expected seq on. None: not that error.
        A ``PolicyError`` when the history no longer holds them (then :meth:`resync` and start a new episode)."""
        expected = error.expected_seq
        if error.code != grpc.StatusCode.FAILED_PRECONDITION or not 0 < expected <= self.seq:
            return None
        replay = [r for r in self._history if r.seq >= expected]
        if not replay or replay[0].seq != expected:
            held = f"seqs {self._history[0].seq}..{self._history[-1].seq}" if self._history else "no steps"
            raise PolicyError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"session {self.session_id!r}: the server expects seq {expected} but this client is at "
                              f"seq {self.seq} and its history holds {held}, so the lost steps cannot be replayed; "
                              f"call resync() and start a new episode (episode_start=True)", expected_seq=expected)
        return replay

    def _applied(self, request: pb.StepRequest, response: pb.StepResponse) -> None:
        self.seq = response.seq
        if self._history.maxlen:
            self._history.append(request)

    def resync(self, expected_seq: int) -> None:
        """Continue from the server's ``expected_seq`` after steps were lost beyond replay (``PolicyError.expected_seq``);
        the state the server holds is older than this client's episode, so send the next step with ``episode_start=True``."""
        if expected_seq < 1:
            raise ValueError(f"expected_seq must be >= 1, got {expected_seq}")
        self.seq = expected_seq - 1
        self._history.clear()


class Session(SessionBase):
    """One server-side session: ``step`` numbers seq itself and retries transient failures with the same seq."""

    client: PolicyClient

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def step(self, obs: Any, episode_start: bool = False, *, deterministic: bool | None = None,
             timeout: float | None = None) -> StepResult:
        """Send one observation (raw, as the environment returns it); get the action.

        After a ``PolicyError`` with a transient code, step again with the same observation:
        the same seq is reused and the server answers it at most once. A server restored from a crash
        checkpoint that expects an older seq gets the lost steps replayed from this session's history first.
        """
        request = self._next_request(obs, episode_start, deterministic)
        try:
            response = self._exchange(request, timeout)
        except PolicyError as error:
            replay = self._replay_plan(error)
            if replay is None:
                raise
            for old in replay:
                self._exchange(old, timeout)
            response = self._exchange(request, timeout)
        self._applied(request, response)
        return step_result(response, self._discrete)

    def _exchange(self, request: pb.StepRequest, timeout: float | None) -> pb.StepResponse:
        return check_step(self._send(request, timeout))

    def _send(self, request: pb.StepRequest, timeout: float | None) -> pb.StepResponse:
        return self.client.call("Step", request, timeout, retry=True)

    def reset(self, timeout: float | None = None) -> None:
        """Zero the state; seq numbering carries on."""
        self.client.call("ResetSession", pb.ResetSessionRequest(session_id=self.session_id), timeout, retry=True)

    def get_state(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """This session's hidden state by tensor name, each ``(layers, hidden)``."""
        return state_tensors(self.client.call("GetSessionState", pb.GetSessionStateRequest(session_id=self.session_id),
                                              timeout, retry=True))

    def set_state(self, state: dict[str, np.ndarray], timeout: float | None = None) -> None:
        self.client.call("SetSessionState", state_message(self.spec, self.session_id, state), timeout, retry=True)

    def close(self, timeout: float | None = None) -> None:
        """Close the session on the server (once; errors closing are ignored when the server is gone)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.session_id), timeout)
        except PolicyError as exc:
            if exc.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise


class StreamSession(Session):
    """A session stepped over its own StepStream; a broken stream is reopened and the step resent with its seq."""

    def __init__(self, client: PolicyClient, session_id: str, model: ModelInfo, deterministic: bool,
                 history: int = DEFAULT_HISTORY) -> None:
        super().__init__(client, session_id, model, deterministic, history)
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = self.client.stub.StepStream(_drain(self._requests))
        # A reader thread hands answers over, so that each step can wait with its own timeout.
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_pump, args=(self._call, self._answers), name="rnnpolicy-stream-reader", daemon=True).start()

    def _reopen(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._open()

    def _send(self, request: pb.StepRequest, timeout: float | None) -> pb.StepResponse:
        timeout = self.client.timeout if timeout is None else timeout
        with self._lock:
            for attempt in range(self.client.retries + 1):
                self._requests.put(request)
                try:
                    answer = self._answers.get(timeout=timeout)
                except queue.Empty:
                    error = PolicyError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer to step seq {request.seq} within {timeout} s")
                else:
                    if isinstance(answer, pb.StepResponse):
                        return answer
                    if answer is None:
                        error = PolicyError(grpc.StatusCode.UNAVAILABLE, "the server ended the step stream")
                    else:
                        error = PolicyError.from_rpc_error(answer)
                if attempt < self.client.retries and error.code in RETRYABLE:
                    time.sleep(self.client.backoff * (2 ** attempt))
                    self._reopen()  # a fresh stream; the server answers a repeated seq from its cache
                    continue
                raise error
            raise AssertionError("unreachable")

    def close(self, timeout: float | None = None) -> None:
        if not self._closed:
            self._requests.put(None)
            self._call.cancel()
        super().close(timeout)


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
