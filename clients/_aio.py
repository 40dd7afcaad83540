"""The asyncio client: ``AsyncPolicyClient`` and ``AsyncSession`` over ``grpc.aio``, stepped over a stream or unary calls.

The protocol is :mod:`rnnpolicy.clients._protocol`'s, as for the sync client; this module only performs its calls.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, Generator, TypeVar

import grpc
import numpy as np

from rnnpolicy.clients._channel import open_aio_channel, token_metadata
from rnnpolicy.clients._client import CHANNEL_OPTIONS, SessionFields
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
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

__all__ = ["AsyncPolicyClient", "AsyncSession", "drive_async"]

T = TypeVar("T")


async def drive_async(plan: Plan[T], perform: Callable[[Call], Awaitable[Any]],
                      pause: Callable[[float], Awaitable[None]]) -> T:
    """:func:`~rnnpolicy.clients._client.drive` for asyncio: ``perform`` and ``pause`` are awaited."""
    outcome: Any = None
    try:
        while True:
            command = plan.send(outcome)
            if type(command) is Backoff:
                await pause(command.seconds)
                outcome = None
                continue
            try:
                outcome = await perform(command)
            except PolicyError as error:
                outcome = error
    except StopIteration as done:
        return done.value


class AsyncPolicyClient:
    """``PolicyClient`` for asyncio: ``async with AsyncPolicyClient(target) as client``."""

    def __init__(self, target: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.05,
                 token: str | None = None, tls: bool = False, tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None) -> None:
        """``token``, ``tls``, the ``tls_*`` files and ``retries`` as for :class:`~rnnpolicy.clients.PolicyClient`."""
        RetryPolicy(retries, backoff)  # validates both
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._channel = open_aio_channel(target, CHANNEL_OPTIONS, token=token, tls=tls, tls_ca=tls_ca,
                                         tls_cert=tls_cert, tls_key=tls_key)
        self.metadata: tuple[tuple[str, str], ...] = token_metadata(token.strip()) if token is not None else ()
        """Sent with every call (the token)."""
        self.stub = policy_pb2_grpc.PolicyServiceStub(self._channel)

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff)

    async def run(self, plan: Plan[T], timeout: float | None = None, *,
                  metadata: tuple[tuple[str, str], ...] | None = None, stream: _AioStepStream | None = None) -> T:
        """Perform ``plan``'s calls, each with ``timeout`` and ``metadata`` (default: the client's); steps over
        ``stream`` when given."""
        timeout = self.timeout if timeout is None else timeout
        metadata = self.metadata if metadata is None else metadata

        async def perform(call: Call) -> Any:
            if stream is not None and call.method == "Step":
                return await stream.send(call.request, timeout)
            try:
                return await getattr(self.stub, call.method)(call.request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                raise PolicyError.from_rpc_error(exc) from None

        return await drive_async(plan, perform, asyncio.sleep)

    async def call(self, method: str, request: Any, timeout: float | None = None, retry: bool = False) -> Any:
        return await self.run(call_plan(method, request, self.retry_policy() if retry else None), timeout)

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        return await self.run(list_models_plan(self.retry_policy()), timeout)

    def session(self, model: str = "", *, seed: int | None = None, deterministic: bool = True,
                timeout: float | None = None, history: int = DEFAULT_HISTORY,
                transport: str = "stream", affinity: str = "") -> OpeningSession:
        """Open a session: ``async with client.session(model) as session`` (closed on exit), or
        ``session = await client.session(model)`` and ``await session.close()``.

        ``transport``, ``history``, ``affinity`` as for :meth:`~rnnpolicy.clients.PolicyClient.session`."""
        check_history(history)  # before the session exists on the server
        check_transport(transport)
        return OpeningSession(lambda: self._open(model, seed, deterministic, timeout, history, transport, affinity))

    async def _open(self, model: str, seed: int | None, deterministic: bool, timeout: float | None, history: int,
                    transport: str, affinity: str) -> AsyncSession:
        created = await self.run(create_plan(model, seed, affinity), timeout,
                                 metadata=self.metadata + affinity_metadata(affinity))
        protocol = SessionProtocol(created, deterministic=deterministic, history=history, retry=self.retry_policy(),
                                   affinity=affinity)
        return AsyncSession(self, protocol, transport)


class OpeningSession:
    """A session being opened: awaitable (the :class:`AsyncSession`) and an async context manager (closing it)."""

    def __init__(self, open_: Callable[[], Awaitable[AsyncSession]]) -> None:
        self._open: Callable[[], Awaitable[AsyncSession]] | None = open_
        self._session: AsyncSession | None = None

    def _take(self) -> Awaitable[AsyncSession]:
        if self._open is None:
            raise RuntimeError("this client.session(...) was already awaited or entered; call client.session again")
        open_, self._open = self._open, None
        return open_()

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._take().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._take()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncSession(SessionFields):
    """The asyncio twin of :class:`~rnnpolicy.clients.Session`: ``await session.step(obs)``.

    Every call carries the metadata ``x-session-id``. Step a session from one task at a time."""

    def __init__(self, client: AsyncPolicyClient, protocol: SessionProtocol, transport: str = "stream") -> None:
        check_transport(transport)
        self.client = client
        self.protocol = protocol
        self.transport = transport
        """``"stream"`` or ``"unary"``: how steps travel."""
        self._metadata = client.metadata + protocol.metadata
        self._stream = _AioStepStream(client, self._metadata) if transport == "stream" else None

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, plan: Plan[T], timeout: float | None) -> T:
        return await self.client.run(plan, timeout, metadata=self._metadata, stream=self._stream)

    async def step(self, obs: Any, episode_start: bool = False, *, deterministic: bool | None = None,
                   timeout: float | None = None) -> StepResult:
        """As :meth:`~rnnpolicy.clients.Session.step`: seq numbered, retried with the same seq, replayed."""
        request = self.protocol.step_request(obs, episode_start, deterministic)
        return self.protocol.step_result(await self._run(self.protocol.step_plan(request), timeout))

    async def reset(self, timeout: float | None = None) -> None:
        await self._run(self.protocol.reset_plan(), timeout)

    async def get_state(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        return await self._run(self.protocol.get_state_plan(), timeout)

    async def set_state(self, state: dict[str, np.ndarray], timeout: float | None = None) -> None:
        await self._run(self.protocol.set_state_plan(state), timeout)

    async def migrate(self, version: str = "", timeout: float | None = None) -> ModelInfo:
        return await self._run(self.protocol.migrate_plan(version), timeout)

    async def close(self, timeout: float | None = None) -> None:
        if self._stream is not None:
            self._stream.drop()
        await self._run(self.protocol.close_plan(), timeout)


class _AioStepStream:
    """One session's ``StepStream`` on ``grpc.aio``, opened at its first step with the session's metadata. A failed
    or unanswered step drops it (no stale answer can reach a later step); the next step opens a fresh one, as does
    a step after the stream ended while idle."""

    def __init__(self, client: AsyncPolicyClient, metadata: tuple[tuple[str, str], ...]) -> None:
        self._client = client
        self._metadata = metadata
        self._call: Any = None
        self._expired = False

    def _open(self) -> Any:
        self._call = self._client.stub.StepStream(metadata=self._metadata)
        return self._call

    def _expire(self) -> None:
        self._expired = True
        self.drop()

    async def send(self, request: pb.StepRequest, timeout: float) -> pb.StepResponse:
        call = self._call
        if call is not None and call.done():
            call = None  # it ended while idle (say the server restarted)
        fresh = call is None
        if fresh:
            call = self._open()
        self._expired = False
        expiry = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            try:
                await call.write(request)
            except grpc.RpcError:
                if fresh:
                    raise
                # It broke while idle, and this loop has not run since to learn it: this step on a fresh one.
                call = self._open()
                await call.write(request)
            response = await call.read()
        except (grpc.RpcError, asyncio.CancelledError) as exc:
            self.drop()
            if self._expired:
                raise step_timed_out(request, timeout) from None
            if isinstance(exc, asyncio.CancelledError):
                raise  # the caller's task was cancelled
            raise PolicyError.from_rpc_error(exc) from None
        finally:
            expiry.cancel()
        if response is grpc.aio.EOF:
            self.drop()
            if self._expired:
                raise step_timed_out(request, timeout)
            raise PolicyError(grpc.StatusCode.UNAVAILABLE, "the server ended the step stream")
        return response

    def drop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
