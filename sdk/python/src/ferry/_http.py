"""HTTP transport of both clients: keep-alive connection pools, JSON in and out with the
stdlib, error bodies turned into `FerryError`s, and the retry policy.

`Client` sends through httpx. `AsyncClient` sends its JSON calls through `_Wire`, a lean
HTTP/1.1 pool on asyncio streams (about a tenth of httpx's CPU per request, measured against
the server: the worker's claim and report path is all such calls), and keeps httpx for the
event stream, for proxied URLs, and when `FERRY_HTTPX=1` asks for it.

Retries: an answer 429 or 503 and a connection failure are transient. What is retried depends
on whether repeating the request is safe:

- `ALWAYS`: reads, lease-fenced job reports (complete, fail, heartbeat, release: repeating one
  that already applied is refused as `stale_lease` or changes nothing), claims (a lost answer
  only delays its jobs until their lease expires), and everything idempotent by key (an
  enqueue whose every job has a `unique_key`, an import, PUT/DELETE, pause/resume, a work
  item created with its `id`: a repeat answers `duplicate`), and work-item PATCHes that
  apply at most once (with a precondition, strict or touching only conflict-checked fields:
  a repeat of one that applied conflicts; see `_client_base._patch_retry`);
- `REFUSED`: writes that must not run twice (minting a token, creating a schedule or a
  host, any other work-item PATCH) are retried only when the server said it did nothing: 429
  (`rate_limited`, `queue_full`) and 503 `server_saturated` / `circuit_open`, refused before
  any write. A connection failure or `unavailable` might have followed a commit, so it is
  raised at once;
- `NEVER`: raised at once: an enqueue without `unique_key` (the issue's contract: only a
  keyed enqueue is retried), a work item created without `id` (or a batch holding such a
  create), and streams (they handle their own reconnects).

Waits are jittered exponential backoff (0.1 s doubling, capped at 5 s), never shorter than the
server's `Retry-After`, bounded by `retries` and a total `retry_budget` in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import select
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx

from ferry._errors import FerryConnectionError, FerryError, error_from

__all__ = ["ALWAYS", "NEVER", "REFUSED", "AsyncTransport", "RetryPolicy", "SyncTransport", "WireError"]

ALWAYS: Final = 0
REFUSED: Final = 1
NEVER: Final = 2

# How an answer is decoded.
JSON: Final = 0
TEXT: Final = 1
EMPTY: Final = 2

# Codes that are worth waiting out.
TRANSIENT_CODES: Final = frozenset(
    {"rate_limited", "queue_full", "server_saturated", "circuit_open", "unavailable"}
)
# Codes the server answers before writing anything: safe to retry any request.
REFUSED_CODES: Final = frozenset({"rate_limited", "queue_full", "server_saturated", "circuit_open"})
TRANSIENT_STATUSES: Final = frozenset({429, 502, 503, 504})

# Transport failures worth retrying (not our own protocol errors or a bad URL).
RETRY_EXCEPTIONS: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads
_JSON_HEADERS: Final = {"content-type": "application/json"}


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (NaN and infinities are refused here, not by the server)."""
    return _encode(value).encode()


def retry_after_of(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_of(resp: httpx.Response) -> FerryError:
    """The exception for a 4xx/5xx answer, by its body's `error.code`."""
    return error_of_parts(resp.status_code, resp.content, resp.headers.get("retry-after"))


def error_of_parts(status: int, content: bytes, retry_after_header: str | None) -> FerryError:
    """`error_of` from an answer's status, body and `Retry-After` header."""
    retry_after = retry_after_of(retry_after_header)
    try:
        body = _loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from(body["error"], status=status, retry_after=retry_after)
    text = content[:300].decode(errors="replace")
    return FerryError(
        f"HTTP {status} without a ferry error body: {text}",
        code="unknown",
        status=status,
        retry_after=retry_after,
    )


def is_transient(err: FerryError) -> bool:
    """Whether waiting might help: a 429/503-class answer or no answer at all."""
    if isinstance(err, FerryConnectionError) or err.code in TRANSIENT_CODES:
        return True
    return err.code == "unknown" and err.status in TRANSIENT_STATUSES


class RetryPolicy:
    """How long to keep trying a transient failure: at most `retries` more attempts within
    `budget` seconds, with jittered exponential backoff that honours `Retry-After`."""

    __slots__ = ("base", "budget", "cap", "retries")

    def __init__(self, retries: int = 8, budget: float = 30.0, base: float = 0.1, cap: float = 5.0) -> None:
        self.retries = max(0, retries)
        self.budget = budget
        self.base = base
        self.cap = cap

    def delay(self, attempt: int, err: FerryError, started: float) -> float | None:
        """Seconds to wait before retry number `attempt + 1`; None to give up."""
        if attempt >= self.retries:
            return None
        step = min(self.cap, self.base * (2**attempt))
        wait = random.uniform(step / 2, step)
        if err.retry_after is not None:
            # At least what the server asked, spread a little so a fleet does not return at once.
            wait = max(wait, err.retry_after * random.uniform(1.0, 1.2))
        if time.monotonic() + wait - started > self.budget:
            return None
        return wait


def should_retry(retry: int, err: FerryError) -> bool:
    """Whether `err` may be retried under the request's retry class."""
    if retry == ALWAYS:
        return is_transient(err)
    if retry == REFUSED:
        return err.code in REFUSED_CODES
    return False


def _connection_error(exc: Exception, url: str) -> FerryConnectionError:
    detail = str(exc) or type(exc).__name__
    return FerryConnectionError(f"cannot reach ferry at {url}: {detail}")


class _Base:
    """Settings shared by the sync and async transports."""

    def __init__(
        self,
        url: str,
        token: str | None,
        name: str | None,
        timeout: float,
        retries: int,
        retry_budget: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token or None
        self.name = name
        self.timeout = timeout
        self.policy = RetryPolicy(retries, retry_budget)
        h = {"accept": "application/json", "user-agent": "ferry-python"}
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        if name:
            h["x-ferry-client"] = name
        if headers:
            h.update(headers)
        self.headers = h
        self._timeouts: dict[int, httpx.Timeout] = {}

    def httpx_timeout(self, extra_ms: int = 0) -> httpx.Timeout:
        """The default timeout plus a long-poll's wait (cached per wait)."""
        t = self._timeouts.get(extra_ms)
        if t is None:
            t = httpx.Timeout(self.timeout + extra_ms / 1000.0, connect=min(self.timeout, 10.0))
            self._timeouts[extra_ms] = t
        return t

    def limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=100, max_keepalive_connections=64, keepalive_expiry=30.0)


def _request_headers(has_body: bool, extra: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """A request's own headers: the JSON content type with a body, and a call's extras."""
    if not extra:
        return _JSON_HEADERS if has_body else None
    return {**_JSON_HEADERS, **extra} if has_body else extra


def _decode(resp: httpx.Response, kind: int) -> Any:
    if kind == JSON:
        content = resp.content
        return _loads(content) if content else None
    if kind == TEXT:
        return resp.text
    return None


_DOWNLOAD_CHUNK: Final = 1 << 20


def _part_of(to: Path) -> Path:
    """Where a download is written until it is verified."""
    return to.with_name(to.name + ".part")


def _finish_download(
    part: Path, to: Path, got: int, digest: str, stated: str | None, length: str | None
) -> dict[str, Any]:
    """Names the verified download `to`, or deletes it and says how it differs."""
    if stated is None or digest != stated or (length is not None and int(length) != got):
        part.unlink(missing_ok=True)
        raise FerryError(
            f"the download arrived altered or short: {got} bytes with SHA-256 {digest}, "
            f"the server sent {length} bytes with SHA-256 {stated}",
            code="decode",
        )
    os.replace(part, to)
    return {"bytes": got, "sha256": digest}


class SyncTransport(_Base):
    """Blocking requests over one keep-alive pool (thread-safe, as httpx.Client is)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.httpx_timeout(), limits=self.limits()
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        has_body: bool = False,
        retry: int = ALWAYS,
        kind: int = JSON,
        wait_ms: int = 0,
        accept: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Sends one request (with extra `headers`, if any), retrying per `retry`; returns the
        decoded answer."""
        content = dumps(body) if has_body else None
        sent = _request_headers(has_body, headers)
        timeout = self.httpx_timeout(wait_ms) if wait_ms else None
        request = self.http.request
        attempt = 0
        started = 0.0
        while True:
            try:
                if timeout is None:
                    resp = request(method, path, params=params, content=content, headers=sent)
                else:
                    resp = request(
                        method, path, params=params, content=content, headers=sent, timeout=timeout
                    )
            except RETRY_EXCEPTIONS as exc:
                err: FerryError = _connection_error(exc, self.url)
                cause: BaseException | None = exc
            else:
                status = resp.status_code
                if status < 400 or status == accept:
                    return _decode(resp, kind)
                err = error_of(resp)
                cause = None
            if not should_retry(retry, err):
                raise err from cause
            if attempt == 0:
                started = time.monotonic()
            delay = self.policy.delay(attempt, err, started)
            if delay is None:
                raise err from cause
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Closes the connection pool."""
        self.http.close()

    def download(self, path: str, to: Path, digest_header: str) -> dict[str, Any]:
        """Streams `path` into `to` (through `to`.part, renamed once the size and the SHA-256
        in `digest_header` match); no retries, no overall timeout (a large file takes long)."""
        part = _part_of(to)
        digest, got = hashlib.sha256(), 0
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(None, connect=10.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_of_parts(resp.status_code, resp.content, resp.headers.get("retry-after"))
                with open(part, "wb") as f:
                    for chunk in resp.iter_bytes(_DOWNLOAD_CHUNK):
                        digest.update(chunk)
                        got += len(chunk)
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                stated, length = resp.headers.get(digest_header), resp.headers.get("content-length")
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise _connection_error(exc, self.url) from exc
        except BaseException:
            # A full disk, an interrupt: no partial file is left behind.
            part.unlink(missing_ok=True)
            raise
        return _finish_download(part, to, got, digest.hexdigest(), stated, length)


class AsyncTransport(_Base):
    """asyncio requests: JSON calls over `_Wire` (a lean HTTP/1.1 keep-alive pool on asyncio
    streams, several times cheaper per request than httpx's asyncio stack, which matters on
    a worker's claim/report path), streams and proxied setups over httpx."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._http: httpx.AsyncClient | None = None
        self._wire = _Wire.for_url(self.url, self.headers, self.timeout)

    @property
    def http(self) -> httpx.AsyncClient:
        """The httpx client (server-sent events; every call when `_Wire` does not apply)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.url, headers=self.headers, timeout=self.httpx_timeout(), limits=self.limits()
            )
        return self._http

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        has_body: bool = False,
        retry: int = ALWAYS,
        kind: int = JSON,
        wait_ms: int = 0,
        accept: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Sends one request (with extra `headers`, if any), retrying per `retry`; returns the
        decoded answer."""
        content = dumps(body) if has_body else None
        wire = self._wire
        timeout = self.timeout + wait_ms / 1000.0
        attempt = 0
        started = 0.0
        while True:
            try:
                if wire is not None:
                    status, answer, retry_after = await wire.request(
                        method, path, params, content, timeout, headers
                    )
                else:
                    resp = await self.http.request(
                        method,
                        path,
                        params=params,
                        content=content,
                        headers=_request_headers(has_body, headers),
                        timeout=self.httpx_timeout(wait_ms),
                    )
                    status, answer = resp.status_code, resp.content
                    retry_after = resp.headers.get("retry-after")
            except WIRE_EXCEPTIONS as exc:
                err: FerryError = _connection_error(exc, self.url)
                cause: BaseException | None = exc
            else:
                if status < 400 or status == accept:
                    if kind == JSON:
                        return _loads(answer) if answer else None
                    return answer.decode() if kind == TEXT else None
                err = error_of_parts(status, answer, retry_after)
                cause = None
            if not should_retry(retry, err):
                raise err from cause
            if attempt == 0:
                started = time.monotonic()
            delay = self.policy.delay(attempt, err, started)
            if delay is None:
                raise err from cause
            await asyncio.sleep(delay)
            attempt += 1

    async def download(self, path: str, to: Path, digest_header: str) -> dict[str, Any]:
        """Streams `path` into `to` (through `to`.part, renamed once the size and the SHA-256
        in `digest_header` match); no retries, no overall timeout (a large file takes long)."""
        part = _part_of(to)
        digest, got = hashlib.sha256(), 0
        try:
            async with self.http.stream("GET", path, timeout=httpx.Timeout(None, connect=10.0)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_of_parts(resp.status_code, resp.content, resp.headers.get("retry-after"))
                with open(part, "wb") as f:
                    async for chunk in resp.aiter_bytes(_DOWNLOAD_CHUNK):
                        digest.update(chunk)
                        got += len(chunk)
                        await asyncio.to_thread(f.write, chunk)
                    f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
                stated, length = resp.headers.get(digest_header), resp.headers.get("content-length")
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise _connection_error(exc, self.url) from exc
        except BaseException:
            # A full disk, a cancellation: no partial file is left behind.
            part.unlink(missing_ok=True)
            raise
        return _finish_download(part, to, got, digest.hexdigest(), stated, length)

    async def aclose(self) -> None:
        """Closes the connection pools."""
        if self._wire is not None:
            await self._wire.aclose()
        if self._http is not None:
            await self._http.aclose()


class WireError(Exception):
    """The server's answer could not be read as HTTP/1.1."""


_Answer = tuple[int, bytes, "str | None"]


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Wire:
    """A minimal HTTP/1.1 client for JSON calls: keep-alive connections on asyncio streams
    (at most `MAX_CONNECTIONS` at once, `MAX_IDLE` kept), one write per request,
    Content-Length or chunked answers. Connections idle past `IDLE_EXPIRY` seconds (under
    the server's 60 s idle timeout) or closed by the server are not reused."""

    MAX_CONNECTIONS = 100
    MAX_IDLE = 64
    IDLE_EXPIRY = 25.0

    def __init__(
        self, host: str, port: int, tls: bool, prefix: str, headers: Mapping[str, str], timeout: float
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.prefix = prefix
        self.connect_timeout = min(timeout, 10.0)
        default_port = 443 if tls else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        lines = [f"host: {authority}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.fixed = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.idle: list[_Conn] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.slots: asyncio.Semaphore | None = None
        self.ssl: Any = None

    @classmethod
    def for_url(cls, url: str, headers: Mapping[str, str], timeout: float) -> _Wire | None:
        """The wire for `url`, or None where httpx must do the work (a proxy applies, an
        unusual scheme, or `FERRY_HTTPX=1` asks for it)."""
        if os.environ.get("FERRY_HTTPX") == "1":
            return None
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        proxies = urllib.request.getproxies()
        proxied = proxies.get(parts.scheme) or proxies.get("all")
        if proxied and not urllib.request.proxy_bypass(parts.hostname):
            return None
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(parts.hostname, port, tls, parts.path.rstrip("/"), headers, timeout)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # Streams belong to one event loop: a client reused under another loop starts afresh.
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        self.loop = loop
        self.slots = asyncio.Semaphore(self.MAX_CONNECTIONS)

    async def _open(self) -> _Conn:
        ssl_ctx = None
        if self.tls:
            if self.ssl is None:
                import ssl

                try:
                    import certifi

                    self.ssl = ssl.create_default_context(cafile=certifi.where())
                except ImportError:  # pragma: no cover - httpx depends on certifi
                    self.ssl = ssl.create_default_context()
            ssl_ctx = self.ssl
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=ssl_ctx, limit=1 << 20), self.connect_timeout
        )
        return _Conn(reader, writer)

    def _take(self) -> _Conn | None:
        idle = self.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing() or now - conn.idle_since > self.IDLE_EXPIRY:
                conn.close()
                continue
            # An idle connection with something to read was closed by the server (a restart,
            # its idle timeout) after the event loop last looked: never send on it.
            sock = conn.writer.get_extra_info("socket")
            if sock is not None and select.select([sock], [], [], 0)[0]:
                conn.close()
                continue
            return conn
        return None

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: bytes | None,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """Sends one request (with extra `headers`, if any) and reads its answer: (status,
        body, Retry-After)."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self._bind(loop)
        target = self.prefix + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self.fixed
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        if body is not None:
            data = head + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        elif method in ("POST", "PUT", "PATCH"):
            data = head + b"content-length: 0\r\n\r\n"
        else:
            data = head + b"\r\n"
        assert self.slots is not None
        async with self.slots:
            conn = self._take() or await self._open()
            try:
                if _timeout is not None:
                    async with _timeout(timeout):
                        answer, keep = await self._exchange(conn, data)
                else:  # Python 3.10
                    answer, keep = await asyncio.wait_for(self._exchange(conn, data), timeout)
            except BaseException:
                conn.close()
                raise
            if keep and len(self.idle) < self.MAX_IDLE:
                conn.idle_since = time.monotonic()
                self.idle.append(conn)
            else:
                conn.close()
            return answer

    @staticmethod
    async def _exchange(conn: _Conn, data: bytes) -> tuple[_Answer, bool]:
        conn.writer.write(data)
        await conn.writer.drain()
        reader = conn.reader
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        first = lines[0]
        if not first.startswith(b"HTTP/1.") or len(first) < 12:
            raise WireError(f"not an HTTP/1.1 answer: {first[:80]!r}")
        status = int(first[9:12])
        keep = first.startswith(b"HTTP/1.1")
        length = -1
        chunked = False
        retry_after = None
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                keep = v != b"close" and (keep or v == b"keep-alive")
            elif name == b"retry-after":
                retry_after = value.strip().decode("latin-1")
        if status in (204, 304) or 100 <= status < 200:
            content = b""
        elif chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            content = b"".join(parts)
        elif length >= 0:
            content = await reader.readexactly(length)
        else:
            content = await reader.read()
            keep = False
        return (status, content, retry_after), keep

    async def aclose(self) -> None:
        """Closes the idle connections."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()


_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+

# What a failed exchange can raise (each is a connection failure to the retry policy).
WIRE_EXCEPTIONS: Final = (
    *RETRY_EXCEPTIONS,
    OSError,
    EOFError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncio.LimitOverrunError,
    WireError,
    ValueError,
)
