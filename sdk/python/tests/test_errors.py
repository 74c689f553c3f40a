"""Every server error code maps to its exception class, by `error.code` (never the status):
the table matches the OpenAPI document's `ErrorCode` enum, and each code the real server can
be made to answer arrives as its class."""

from __future__ import annotations

import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import ferry
from ferry._errors import CODES, FerryError, error_from
from ferry._http import error_of
from ferry.testing import FerryServer

# What the server answers each code with (helper-common's wire facts).
STATUS = {
    "bad_request": 400,
    "validation_failed": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "stale_lease": 409,
    "invalid_state": 409,
    "conflict": 409,
    "version_conflict": 409,
    "precondition_failed": 412,
    "precondition_required": 428,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "request_timeout": 408,
    "uri_too_long": 414,
    "headers_too_large": 431,
    "rate_limited": 429,
    "queue_full": 429,
    "server_saturated": 503,
    "circuit_open": 503,
    "unavailable": 503,
    "schema_too_new": 500,
    "internal": 500,
}


def test_the_code_table_is_the_servers_enum(ferry_server: FerryServer) -> None:
    enum = ferry_server.client().openapi()["components"]["schemas"]["ErrorCode"]["enum"]
    assert sorted(CODES) == sorted(enum)
    assert sorted(STATUS) == sorted(enum)
    for code, cls in CODES.items():
        assert issubclass(cls, FerryError) and cls is not FerryError
        assert cls.code_name == code
        assert getattr(ferry, cls.__name__) is cls, f"ferry.{cls.__name__} is exported"
    assert len(set(CODES.values())) == len(CODES), "one class per code"


def test_mapping_is_by_code_never_by_status() -> None:
    for code, cls in CODES.items():
        err = error_from({"code": code, "message": "m"}, status=599)
        assert type(err) is cls and err.code == code and err.status == 599
    unknown = error_from({"code": "brand_new_code", "message": "from a newer server"}, status=409)
    assert type(unknown) is FerryError
    assert (unknown.code, unknown.status, unknown.message) == ("brand_new_code", 409, "from a newer server")
    full = error_from(
        {
            "code": "validation_failed",
            "message": "bad cron",
            "field": "cron",
            "position": 4,
            "details": {"a": 1},
        },
        status=422,
        retry_after=1.5,
    )
    assert (full.field, full.position, full.details, full.retry_after) == ("cron", 4, {"a": 1}, 1.5)
    conn = ferry.FerryConnectionError("no answer")
    assert isinstance(conn, FerryError) and conn.code == "connection_failed"
    back = pickle.loads(pickle.dumps(full))
    assert type(back) is ferry.ValidationFailed and back.field == "cron" and back.position == 4


def _raises(cls: type[FerryError], fn: Callable[[], Any]) -> FerryError:
    with pytest.raises(FerryError) as info:
        fn()
    err = info.value
    assert type(err) is cls, f"{err!r} is not {cls.__name__}"
    assert err.code == cls.code_name
    assert err.status == STATUS[err.code], err
    assert err.message
    return err


def _raw(server: FerryServer, request: bytes) -> FerryError:
    """Sends a raw request (what the client never sends) and maps the answer."""
    import httpx

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return error_of(httpx.Response(status, content=body))


@pytest.mark.timeout(60)
def test_each_code_the_server_answers_arrives_as_its_class(ferry_server_factory: Any) -> None:
    server: FerryServer = ferry_server_factory(
        config={
            "limits": {
                "max_batch": 10,
                "body_read_timeout_ms": 300,
                "max_uri_bytes": 4096,
                "max_header_bytes": 8192,
            },
            "items": {"require_precondition": True},
        }
    )
    c = server.client(retries=0)
    seen: dict[str, FerryError] = {}

    def expect(cls: type[FerryError], fn: Callable[[], Any]) -> FerryError:
        err = _raises(cls, fn)
        seen[err.code] = err
        return err

    auth = f"Authorization: Bearer {server.token}\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    err = _raw(
        server,
        f"POST /v1/jobs HTTP/1.1\r\n{auth}Content-Type: application/json\r\n".encode()
        + b"Content-Length: 1\r\n\r\n{",
    )
    assert type(err) is ferry.BadRequest and err.status == 400
    seen[err.code] = err
    err = _raw(
        server,
        f"POST /v1/jobs HTTP/1.1\r\n{auth}Content-Type: text/plain\r\n".encode()
        + b"Content-Length: 2\r\n\r\n{}",
    )
    assert type(err) is ferry.UnsupportedMediaType and err.status == 415
    seen[err.code] = err
    # Headers and a Content-Length, then no body: the server stops waiting for it.
    err = _raw(
        server,
        f"POST /v1/jobs HTTP/1.1\r\n{auth}Content-Type: application/json\r\n".encode()
        + b"Content-Length: 50\r\n\r\n{",
    )
    assert type(err) is ferry.RequestTimeout and err.status == 408
    seen[err.code] = err

    expect(ferry.Unauthorized, lambda: ferry.Client(server.url, "not-a-token", retries=0).server_info())
    reader = c.create_token("reader", ["read"])["token"]
    expect(ferry.Forbidden, lambda: ferry.Client(server.url, reader, retries=0).enqueue("q"))
    expect(ferry.NotFound, lambda: c.get_job(str(uuid.uuid4())))
    bad = expect(ferry.ValidationFailed, lambda: c.claim("q", worker="w", max=0))
    assert bad.field == "max"
    cron = expect(ferry.ValidationFailed, lambda: c.create_schedule("bad", "* * x * *", {"queue": "q"}))
    assert cron.field == "cron" and cron.position is not None
    c.enqueue("q")
    job = c.claim("q", worker="w")[0]
    expect(ferry.StaleLease, lambda: c.complete(job["id"], "1.not-the-lease"))
    expect(ferry.InvalidState, lambda: c.cancel(job["id"]))
    c.create_schedule("nightly", "@daily", {"queue": "q"})
    expect(ferry.Conflict, lambda: c.create_schedule("nightly", "@daily", {"queue": "q"}))
    too_many = expect(ferry.PayloadTooLarge, lambda: c.enqueue_batch([{"queue": "q"}] * 11))
    assert too_many.field == "jobs"
    items = [{"id": job["id"], "lease": job["lease"]}] * 11
    assert _raises(ferry.PayloadTooLarge, lambda: c.heartbeat_batch(items)).field == "items"
    expect(ferry.UriTooLong, lambda: c.list_jobs(queue="a" * 5000).page())
    big = server.client(retries=0, headers={"x-padding": "a" * 10_000})
    expect(ferry.HeadersTooLarge, big.server_info)
    c.set_queue_limits("full", max_depth=1)
    c.enqueue("full")
    full = expect(ferry.QueueFull, lambda: c.enqueue("full"))
    assert full.retry_after is not None and full.details and full.details.get("max_depth") == 1

    c.create_item("work", id="w-1")
    c.patch_item("w-1", expected_version=1, title="again")
    stale = expect(ferry.VersionConflict, lambda: c.patch_item("w-1", expected_version=1, title="t"))
    assert stale.current and stale.current["version"] == 2 and stale.conflicting_paths == ["/title"]
    failed = expect(ferry.PreconditionFailed, lambda: c.patch_item("w-1", if_match=1, title="t"))
    assert (failed.expected_version, failed.actual_version) == (1, 2)
    expect(ferry.PreconditionRequired, lambda: c.patch_item("w-1", title="t"))

    produced = set(seen)
    assert produced >= set(STATUS) - {
        "rate_limited",
        "server_saturated",
        "circuit_open",
        "unavailable",
        "schema_too_new",
        "internal",
    }


@pytest.mark.timeout(60)
def test_rate_limited_carries_retry_after(ferry_server_factory: Any) -> None:
    server = ferry_server_factory(config={"protection": {"rate_per_sec": 1, "rate_burst": 1}})
    c = server.client(retries=0)
    c.server_info()
    err = _raises(ferry.RateLimited, c.server_info)
    assert err.retry_after is not None and err.retry_after >= 1


@pytest.mark.timeout(60)
def test_server_saturated_when_every_request_slot_is_taken(ferry_server_factory: Any) -> None:
    server = ferry_server_factory(config={"limits": {"max_concurrent_requests": 1}})
    holder = server.client()
    # A long-poll claim holds the only slot while it waits.
    poll = threading.Thread(target=lambda: holder.claim("empty", worker="w", wait_ms=2000))
    poll.start()
    try:
        c = server.client(retries=0)
        deadline = time.monotonic() + 10
        while True:
            try:
                c.server_info()
            except ferry.ServerSaturated as e:
                assert e.status == 503 and e.retry_after is not None
                break
            assert time.monotonic() < deadline, "the long-poll never took the slot"
            time.sleep(0.05)
    finally:
        poll.join()


@pytest.mark.pg
@pytest.mark.timeout(60)
def test_a_lost_database_is_unavailable_then_circuit_open(pg_url: str) -> None:
    server = FerryServer.start(pg_url=pg_url)
    try:
        c = server.client(retries=0)
        c.enqueue("q")
        from ferry.testing._server import _psql

        assert server._pg_database
        _psql(pg_url, f"DROP DATABASE {server._pg_database} WITH (FORCE)")
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while not {"unavailable", "circuit_open"} <= seen:
            assert time.monotonic() < deadline, f"saw only {seen}"
            try:
                c.get_job(str(uuid.uuid4()))
            except (ferry.Unavailable, ferry.CircuitOpen) as e:
                assert e.status == 503 and e.retry_after is not None
                seen.add(e.code)
            except ferry.NotFound:
                pass
            time.sleep(0.02)
    finally:
        server.close()
