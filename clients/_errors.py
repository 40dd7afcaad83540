"""The client package's one exception: a gRPC status code and the server's message."""

from __future__ import annotations

import grpc

__all__ = ["PolicyError", "RETRYABLE"]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Transient failures a step is retried on, with the same seq (the server answers a repeat from its cache)."""
_RESET_IN_TRANSIT = "Stream removed"
"""How grpcio words a stream reset by the peer (RST_STREAM), which it reports as INTERNAL."""


class PolicyError(Exception):
    """A refused or failed call: ``code`` (a ``grpc.StatusCode``) and ``message``; ``retry_after`` in seconds when
    the server gave one; ``expected_seq`` when a step's seq was out of order (the seq the server expects)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None,
                 expected_seq: int = 0) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.expected_seq = expected_seq

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> PolicyError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        retry_after = None
        expected_seq = 0
        trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == "retry-after-ms":
                retry_after = int(value) / 1000.0
            elif key == "expected-seq":
                expected_seq = int(value)
        if code == grpc.StatusCode.INTERNAL and _RESET_IN_TRANSIT in (details or ""):
            # gRPC's own report of a stream reset in transit (RST_STREAM), e.g. by a proxy whose server went away
            # mid-stream: no answer came, so it is a transient failure like a lost connection, retried the same way.
            code, details = grpc.StatusCode.UNAVAILABLE, f"the call's stream was reset in transit ({details})"
        return cls(code if code is not None else grpc.StatusCode.UNKNOWN, details or "", retry_after, expected_seq)

    @classmethod
    def from_code_number(cls, number: int, message: str, expected_seq: int = 0) -> PolicyError:
        for code in grpc.StatusCode:
            if code.value[0] == number:
                return cls(code, message, expected_seq=expected_seq)
        return cls(grpc.StatusCode.UNKNOWN, message, expected_seq=expected_seq)
