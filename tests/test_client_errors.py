"""PolicyError from a gRPC error: a stream reset in transit is a transient failure, other INTERNAL errors are not."""

import grpc

from rnnpolicy.clients import PolicyError
from rnnpolicy.clients._errors import RETRYABLE


class _Failed(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()


def test_a_stream_reset_in_transit_is_unavailable_and_retried():
    error = PolicyError.from_rpc_error(_Failed(grpc.StatusCode.INTERNAL,
                                               "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))"))
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.code in RETRYABLE
    assert "reset in transit" in error.message and "RST_STREAM" in error.message


def test_a_server_side_internal_error_stays_internal():
    error = PolicyError.from_rpc_error(_Failed(grpc.StatusCode.INTERNAL, "step failed inside the server"))
    assert error.code == grpc.StatusCode.INTERNAL and error.code not in RETRYABLE
