"""The crash suite: `scripts/mec test` runs it last, on its own (`tests/crash/`, suite "crash"),
because it kills the cluster and the gateway under the other tests' feet."""

from __future__ import annotations

import pytest

from crash_helpers import env


@pytest.fixture(scope="session")
def mec_env() -> dict[str, str]:
    return env()
