"""Register PolicyService with requests parsed by rnnpolicy, not by grpcio.

The generated ``add_PolicyServiceServicer_to_server`` lets grpcio deserialize each request; a
payload that does not parse (corrupt bytes, a message of another type, a string that is not
UTF-8) then ends the call with ``INTERNAL "Exception deserializing request!"``, logs a traceback
per call, kills a whole ``StepStream``, and in grpcio 1.85 can leave ``server.stop()`` waiting
forever. Here each method's deserializer never raises: a payload that does not parse becomes a
:class:`ServeError` in place of the request. An unparsable unary request is then answered
``INVALID_ARGUMENT`` naming the expected message type, and an unparsable ``StepStream`` message
gets an in-band ``INVALID_ARGUMENT`` answer while the stream carries on (the servicer's
``StepStream`` takes such errors among its requests).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import grpc
from google.protobuf.message import DecodeError

from rnnpolicy.serve.errors import ServeError
from rnnpolicy.serve.servicer import PolicyServicer
from rnnpolicy.v1 import policy_pb2 as pb

__all__ = ["SERVICE", "add_policy_service"]

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyService"]


def add_policy_service(servicer: PolicyServicer, server: grpc.aio.Server) -> None:
    """Register every PolicyService method of ``servicer`` on ``server`` (coroutines on the event loop), each
    request parsed by :func:`_parser`."""
    handlers = {}
    for method in SERVICE.methods:
        parse = _parser(getattr(pb, method.input_type.name))
        serialize = getattr(pb, method.output_type.name).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.client_streaming:
            if not inspect.isasyncgenfunction(behavior):
                raise TypeError(f"{method.name} must be an async generator (a streaming method on the event loop)")
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behavior, request_deserializer=parse, response_serializer=serialize)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _refusing_unparsed(behavior), request_deserializer=parse, response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _parser(request_type: type) -> Callable[[bytes], object]:
    """A deserializer that returns ``data`` as a ``request_type`` message, or the ServeError(INVALID_ARGUMENT)
    saying why it is not one (grpcio would end the call on an exception)."""
    name = request_type.DESCRIPTOR.full_name
    from_string = request_type.FromString

    def parse(data: bytes) -> object:
        try:
            return from_string(data)
        except (DecodeError, ValueError) as exc:
            return ServeError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the request is not a valid {name} ({len(data)} bytes): {str(exc)[:120]}")

    return parse


def _refusing_unparsed(behavior: Callable) -> Callable:
    """``behavior`` (a coroutine), with a request that did not parse answered by its ServeError instead."""
    if not inspect.iscoroutinefunction(behavior):
        raise TypeError(f"{behavior.__name__} must be a coroutine (every RPC runs on the event loop)")

    @functools.wraps(behavior)
    async def handle(request: object, context: grpc.aio.ServicerContext):
        if isinstance(request, ServeError):
            await context.abort(request.code, request.message)
        return await behavior(request, context)

    return handle
