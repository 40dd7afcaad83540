"""Tests that need a system component (Node.js, npm packages, Chromium) skip without it, saying why.

Under ``RNNPOLICY_REQUIRE_ALL=1`` (set by ``.ci/run``) a missing component fails the test instead,
so CI cannot pass by skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL_ENV = "RNNPOLICY_REQUIRE_ALL"


def require(missing: str | None) -> None:
    """Skip the calling test when ``missing`` names a missing component; fail under RNNPOLICY_REQUIRE_ALL=1."""
    if missing is None:
        return
    if os.environ.get(REQUIRE_ALL_ENV) == "1":
        pytest.fail(f"{missing} ({REQUIRE_ALL_ENV}=1: this run needs every component)", pytrace=False)
    pytest.skip(missing)
