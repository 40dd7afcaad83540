"""``--max-concurrent-rpcs``: the most calls in progress at once, open streams included, each one
beyond refused at once with ``RESOURCE_EXHAUSTED``.

grpcio's own limit (``grpc.aio.server(maximum_concurrent_rpcs=...)``) refuses with
``RESOURCE_EXHAUSTED`` too, but it answers before reading anything, and an asyncio client whose
first ``write`` is still on its way when that answer lands reports ``INTERNAL "Internal error
from Core"`` instead of the server's status (grpc/grpc#36066: the failed write overwrites the
status). With 2,000 ``StepStream`` calls against a limit of 256, 217 of the 1,744 refused calls
saw ``INTERNAL`` so (grpcio 1.85.1). :class:`Admission` refuses a streaming call only after its
first message arrived (or the client half-closed, or :data:`FIRST_MESSAGE_WAIT` passed), so the
client's write has completed and the client sees ``RESOURCE_EXHAUSTED``. The server keeps grpcio's
limit as a backstop above this one (:func:`grpc_backstop`). Every handler is a coroutine or an async
generator on the server's event loop, so the count needs no lock.

grpc core also holds the calls that arrived before the asyncio server picked them up, and by default
refuses some beyond 1,000 such calls and all beyond 3,000 (``grpc.server.max_pending_requests`` and
``..._hard_limit``), again with the same ``INTERNAL`` risk: 2,000 streams opening at once against a
limit of 15,000 lost 228 so. The server raises both to the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from typing import Any, Awaitable, Callable

import grpc

__all__ = ["Admission", "FIRST_MESSAGE_WAIT", "REFUSAL_ROOM", "grpc_backstop"]

FIRST_MESSAGE_WAIT = 10.0
"""Seconds a refused streaming call may take to send its first message before it is refused anyway."""


REFUSAL_ROOM = 10_000
"""Calls above the limit that grpcio lets through for :class:`Admission` to refuse (each for at most
:data:`FIRST_MESSAGE_WAIT`), before its own limit refuses the rest in its way."""


def grpc_backstop(limit: int) -> int:
    """grpcio's own limits for a server whose :class:`Admission` takes ``limit`` calls: its
    ``maximum_concurrent_rpcs`` and its backlog of calls not yet picked up, :data:`REFUSAL_ROOM` above ours."""
    return limit + REFUSAL_ROOM


class Admission(grpc.aio.ServerInterceptor):
    """Counts the calls in progress (every service's, health and reflection included) and refuses each
    one beyond ``limit`` with ``RESOURCE_EXHAUSTED``, saying so."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrent_rpcs must be >= 1, got {limit}")
        self.limit = limit
        self._active = 0
        self._refused = 0

    @property
    def active(self) -> int:
        """Calls in progress now."""
        return self._active

    @property
    def refused(self) -> int:
        """Calls refused so far."""
        return self._refused

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpcio answers UNIMPLEMENTED
            return None
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._counted(handler.unary_unary, streaming_request=False))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._counted(handler.unary_stream, streaming_request=False))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._counted(handler.stream_unary, streaming_request=True))
        return handler._replace(stream_stream=self._counted(handler.stream_stream, streaming_request=True))

    def _admit(self) -> bool:
        if self._active >= self.limit:
            self._refused += 1
            return False
        self._active += 1
        return True

    def _release(self, *_: object) -> None:
        self._active -= 1

    def _message(self) -> str:
        return (f"server busy: {self.limit} calls in progress (open streams included), the most it takes "
                f"(--max-concurrent-rpcs); retry later or on another server")

    async def _refuse(self, request: Any, context: grpc.aio.ServicerContext, streaming_request: bool) -> None:
        if streaming_request:  # let the client's first write complete: then it sees this status (module docstring)
            with contextlib.suppress(asyncio.TimeoutError, StopAsyncIteration):
                await asyncio.wait_for(anext(aiter(request)), FIRST_MESSAGE_WAIT)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._message())

    def _counted(self, behavior: Callable, *, streaming_request: bool) -> Callable:
        """``behavior`` counted while it runs, or refused beyond the limit; of the same kind (a coroutine
        function or an async generator function), which tells grpcio how to run it."""
        if inspect.isasyncgenfunction(behavior):
            @functools.wraps(behavior)
            async def stream(request: Any, context: grpc.aio.ServicerContext):
                if not self._admit():
                    await self._refuse(request, context, streaming_request)
                context.add_done_callback(self._release)  # also when cancelled with the generator suspended
                async for response in behavior(request, context):
                    yield response

            return stream
        if inspect.iscoroutinefunction(behavior):
            @functools.wraps(behavior)
            async def call(request: Any, context: grpc.aio.ServicerContext):
                if not self._admit():
                    await self._refuse(request, context, streaming_request)
                context.add_done_callback(self._release)
                return await behavior(request, context)

            return call

        raise TypeError(f"{behavior.__name__} must be a coroutine or an async generator: every handler runs on "
                        f"the server's event loop")
