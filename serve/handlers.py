"""Register PolicyService with requests parsed by rnnpolicy, not by grpcio.

The generated ``add_PolicyServiceServicer_to_server`` lets grpcio deserialize each request; a
payload that does not parse (corrupt bytes, a message of another type, a string that is not
UTF-8) then ends the call with ``INTERNAL "Exception deserializing request!"``, logs a traceback
per call, kills a whole ``StepStream``, and in grpcio 1.85 can leave ``server.stop()`` waiting
forever. Here every method receives raw bytes and parses them itself: an unparsable unary request
is ``INVALID_ARGUMENT`` naming the expected message type, and an unparsable ``StepStream`` message
gets an in-band ``INVALID_ARGUMENT`` answer while the stream carries on.
"""

from __future__ import annotations

import functools
import inspect
from typing import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from rnnpolicy.serve.errors import ServeError
from rnnpolicy.serve.servicer import PolicyServicer
from rnnpolicy.v1 import policy_pb2 as pb

__all__ = ["SERVICE", "add_policy_service"]

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyService"]


def add_policy_service(servicer: PolicyServicer, server: grpc.aio.Server) -> None:
    """Register every PolicyService method of ``servicer`` on ``server``, parsing requests where the method runs
    (coroutines on the event loop, plain methods in the server's thread pool)."""
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _parsing_stream(behavior, request_type), request_deserializer=None, response_serializer=serialize)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing_unary(behavior, request_type), request_deserializer=None, response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _parse(request_type: type, data: bytes) -> object:
    """``data`` as a ``request_type`` message; ServeError(INVALID_ARGUMENT) when it is not one."""
    message = request_type()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise ServeError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"the request is not a valid {request_type.DESCRIPTOR.full_name} "
                         f"({len(data)} bytes): {str(exc)[:120]}") from None
    return message


def _parsing_unary(behavior: Callable, request_type: type) -> Callable:
    if inspect.iscoroutinefunction(behavior):
        @functools.wraps(behavior)
        async def handle_async(data: bytes, context: grpc.aio.ServicerContext):
            try:
                request = _parse(request_type, data)
            except ServeError as exc:
                await context.abort(exc.code, exc.message)
            return await behavior(request, context)

        return handle_async

    @functools.wraps(behavior)
    def handle(data: bytes, context: grpc.ServicerContext):
        try:
            request = _parse(request_type, data)
        except ServeError as exc:
            context.abort(exc.code, exc.message)
        return behavior(request, context)

    return handle


def _parsing_stream(behavior: Callable, request_type: type) -> Callable:
    if not inspect.isasyncgenfunction(behavior):
        raise TypeError(f"{behavior.__name__} must be an async generator (a streaming method on the event loop)")

    @functools.wraps(behavior)
    async def handle(data_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
        async def requests():
            async for data in data_iterator:
                try:
                    yield _parse(request_type, data)
                except ServeError as exc:
                    yield exc  # answered in-band by the servicer, in order

        async for response in behavior(requests(), context):
            yield response

    return handle
