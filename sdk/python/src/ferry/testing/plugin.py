"""pytest fixtures that start the real ferry server (registered as the `ferry` pytest11 entry
point, so any project with `ferry-client` installed gets them): `ferry_server` (SQLite),
`ferry_server_any` (SQLite, and PostgreSQL when `FERRY_TEST_PG_URL` is set) and
`ferry_server_factory` (servers with a custom `config=`), each stopped and removed after the
test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ferry.testing._server import FerryServer

PG_ENV = "FERRY_TEST_PG_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg: also runs against PostgreSQL when FERRY_TEST_PG_URL is set")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `ferry_server_any` runs each test once per available backend.
    if "ferry_server_any" in metafunc.fixturenames:
        backends: list[Any] = [pytest.param("sqlite", id="sqlite")]
        if os.environ.get(PG_ENV):
            backends.append(pytest.param("pg", id="pg", marks=pytest.mark.pg))
        metafunc.parametrize("ferry_server_any", backends, indirect=True)


@pytest.fixture
def ferry_server() -> Iterator[FerryServer]:
    """A fresh SQLite-backed server with auth on; `.client()`, `.token`, `.url`, `.kill()`."""
    server = FerryServer.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def ferry_server_any(request: pytest.FixtureRequest) -> Iterator[FerryServer]:
    """A fresh server on each backend in turn: SQLite, then PostgreSQL when configured."""
    backend = getattr(request, "param", "sqlite")
    pg_url = os.environ[PG_ENV] if backend == "pg" else None
    server = FerryServer.start(pg_url=pg_url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def ferry_server_factory() -> Iterator[Callable[..., FerryServer]]:
    """Starts servers with `FerryServer.start`'s options (`config=`, `pg_url=`); all are
    closed after the test."""
    servers: list[FerryServer] = []

    def make(**kw: Any) -> FerryServer:
        server = FerryServer.start(**kw)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for s in servers:
            s.close()
