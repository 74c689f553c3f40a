"""Shared test helpers. The `ferry_server`, `ferry_server_any` and `ferry_server_factory`
fixtures come from the package's own pytest plugin (`ferry.testing.plugin`)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL admin URL (`FERRY_TEST_PG_URL`); the test is skipped without one."""
    url = os.environ.get("FERRY_TEST_PG_URL")
    if not url:
        pytest.skip("FERRY_TEST_PG_URL is not set")
    return url
