"""The client package's one exception: a gRPC status code and the server's message."""

from __future__ import annotations

import grpc

__all__ = ["PolicyError", "RETRYABLE"]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Transient failures a step is retried on, with the same seq (the server answers a repeat from its cache)."""


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
        return cls(code if code is not None else grpc.StatusCode.UNKNOWN, details or "", retry_after, expected_seq)

    @classmethod
    def from_code_number(cls, number: int, message: str, expected_seq: int = 0) -> PolicyError:
        for code in grpc.StatusCode:
            if code.value[0] == number:
                return cls(code, message, expected_seq=expected_seq)
        return cls(grpc.StatusCode.UNKNOWN, message, expected_seq=expected_seq)
