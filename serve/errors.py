"""The one error type the serving code raises: a gRPC status code and a message naming the problem."""

from __future__ import annotations

import grpc

__all__ = ["ServeError", "shown"]

_SHOWN_CHARS = 48


class ServeError(Exception):
    """A refused request: ``code`` and ``message`` go to the client as the call's status."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...] = (), *,
                 expected_seq: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.expected_seq = expected_seq
        """For a seq out of order: the seq the session expects (0 otherwise)."""
        self.trailing = trailing + ((("expected-seq", str(expected_seq)),) if expected_seq else ())
        """Trailing metadata sent with the status, e.g. ``(("retry-after-ms", "250"),)``; ``expected-seq`` is
        added from ``expected_seq``."""


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut short when long: a status message travels as a gRPC trailer,
    which clients refuse beyond 8-16 KiB, so a message must never echo unbounded client input."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= _SHOWN_CHARS:
        return repr(text) if isinstance(value, str) else text
    cut = repr(text[:_SHOWN_CHARS]) if isinstance(value, str) else text[:_SHOWN_CHARS]
    return f"{cut}... ({len(text)} characters)"
