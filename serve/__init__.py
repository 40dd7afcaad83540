"""Serve exported recurrent policies over gRPC with per-session hidden state (torch-free).

``create_server({"name": EXPORT_DIR}, "127.0.0.1:0", ServeConfig(...), security=Security(...))``
returns ``(server, port)``; the command line is ``rnnpolicy serve`` (:mod:`rnnpolicy.serve.cli`).
Semantics: docs/serving.md.
"""

from rnnpolicy.serve.auth import Security
from rnnpolicy.serve.backend import OnnxBackend, load_backend
from rnnpolicy.serve.server import PolicyServer, ServeConfig, create_server, serve_until_signal

__all__ = ["OnnxBackend", "PolicyServer", "Security", "ServeConfig", "create_server", "load_backend",
           "serve_until_signal"]
