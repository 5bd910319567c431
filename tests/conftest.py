"""Shared fixtures. Integration tests share one local Ray instance per module."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest


def services_required() -> bool:
    """True in CI: a server a test needs that cannot start fails the test instead of skipping it."""
    return os.environ.get("RAYSTREAM_REQUIRE_SERVICES") == "1"


def missing_service(reason: str) -> None:
    """Skip the test, or fail it when services are required."""
    if services_required():
        pytest.fail(f"{reason} (RAYSTREAM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)
