"""Live events: the server-sent-event follower behind `Client.events()` (resumes after every
disconnect and server restart from the last cursor it delivered, with `Last-Event-ID`, so no
event is skipped or repeated) and the WebSocket on `/v1/ws` (the `ws` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx

from ferry._errors import FerryError, error_from
from ferry._http import RETRY_EXCEPTIONS, _connection_error, error_of, is_transient

if TYPE_CHECKING:
    from ferry._http import AsyncTransport, SyncTransport
    from ferry.types import Event

__all__ = ["AsyncEventSocket", "AsyncEventStream", "EventSocket", "EventStream"]

# The server sends a keep-alive comment every 15 s; silence much longer means a dead peer.
_STREAM_READ_TIMEOUT = 45.0


class _Sse:
    """Incremental SSE parser: feed lines, get (event type, id, data) at each blank line."""

    __slots__ = ("data", "event", "id")

    def __init__(self) -> None:
        self.event = ""
        self.id: str | None = None
        self.data: list[str] = []

    def line(self, line: str) -> tuple[str, str | None, str] | None:
        if not line:
            if not self.data:
                self.event = ""
                return None
            out = (self.event or "message", self.id, "\n".join(self.data))
            self.event, self.data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.id = value
        return None


class _Follow:
    """What both stream followers share: the query, the cursor, what a message means."""

    def __init__(self, params: Mapping[str, Any], since: int | None) -> None:
        self.params = {k: v for k, v in params.items() if v is not None}
        self.cursor = since
        self.connects = 0

    def headers(self) -> dict[str, str]:
        h = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if self.cursor is not None:
            h["last-event-id"] = str(self.cursor)
        return h

    def handle(self, kind: str, data: str) -> Event | None:
        """The event a message carries; None for one to skip; a `FerryError` raised for an
        `error` message (transient ones are retried by the caller)."""
        msg = json.loads(data)
        if kind == "lagged" or msg.get("type") == "lagged":
            # Fell behind the server's buffer: reconnect from the cursor it names.
            self.cursor = int(msg["cursor"])
            raise _Reconnect
        if kind == "error" or msg.get("type") == "error":
            raise error_from(msg.get("error"))
        cursor = msg.get("cursor")
        if isinstance(cursor, int):
            if self.cursor is not None and cursor <= self.cursor:
                return None  # already delivered before a reconnect
            self.cursor = cursor
        return cast("Event", msg)


class _Reconnect(Exception):
    """The stream ended on purpose (lagged, or the server shut down): connect again."""


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(_STREAM_READ_TIMEOUT, connect=10.0)


class EventStream(Iterator["Event"]):
    """Server-sent events, resumed from the last delivered cursor after any disconnect.

    Iterate it for events (dicts as `GET /v1/events` returns them); `.cursor` is the last one
    delivered, to resume from later with `since=`. Waiting for the server after a disconnect
    is bounded by the client's retry budget per outage; past it, `FerryConnectionError`.
    """

    def __init__(self, transport: SyncTransport, params: Mapping[str, Any], since: int | None) -> None:
        self._t = transport
        self._f = _Follow(params, since)
        self._gen = self._run()

    @property
    def cursor(self) -> int | None:
        """The cursor of the last event delivered (resume from it with `since=`)."""
        return self._f.cursor

    @property
    def reconnects(self) -> int:
        """How many times the stream reconnected (after a disconnect, restart or lag)."""
        return max(0, self._f.connects - 1)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return next(self._gen)

    def close(self) -> None:
        """Ends the stream and its connection."""
        self._gen.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _head(self) -> None:
        # Without `since`, start at the server's newest cursor (not at the first connect),
        # so a disconnect before the first event loses nothing.
        out = self._t.call("GET", "/v1/events", params={**self._f.params, "limit": 1})
        self._f.cursor = int(out["next_cursor"])

    def _run(self) -> Generator[Event, None, None]:
        f = self._f
        attempt, started = 0, time.monotonic()
        while True:
            try:
                if f.cursor is None:
                    self._head()
                with self._t.http.stream(
                    "GET", "/v1/events/stream", params=f.params, headers=f.headers(), timeout=_timeout()
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise error_of(resp)
                    attempt, started = 0, time.monotonic()
                    f.connects += 1
                    parser = _Sse()
                    for line in resp.iter_lines():
                        msg = parser.line(line)
                        if msg is not None:
                            event = f.handle(msg[0], msg[2])
                            if event is not None:
                                yield event
                raise _Reconnect
            except _Reconnect:
                continue
            except RETRY_EXCEPTIONS as exc:
                err: FerryError = _connection_error(exc, self._t.url)
                cause: BaseException | None = exc
            except FerryError as exc:
                err, cause = exc, None
            if not is_transient(err):
                raise err from cause
            delay = self._t.policy.delay(attempt, err, started)
            if delay is None:
                raise err from cause
            time.sleep(delay)
            attempt += 1


class AsyncEventStream(AsyncIterator["Event"]):
    """The asyncio form of `EventStream`: `async for event in client.events(...)`.

    A plain async iterator (no async generator of its own), so leaving an `async for` early
    leaves nothing for the event loop to finalize; `aclose()` (or `async with`) closes the
    connection at once.
    """

    def __init__(self, transport: AsyncTransport, params: Mapping[str, Any], since: int | None) -> None:
        self._t = transport
        self._f = _Follow(params, since)
        self._resp: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._parser = _Sse()
        self._attempt = 0
        self._started = time.monotonic()
        self._closed = False

    @property
    def cursor(self) -> int | None:
        """The cursor of the last event delivered (resume from it with `since=`)."""
        return self._f.cursor

    @property
    def reconnects(self) -> int:
        """How many times the stream reconnected (after a disconnect, restart or lag)."""
        return max(0, self._f.connects - 1)

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def aclose(self) -> None:
        """Ends the stream and its connection."""
        self._closed = True
        await self._drop()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _drop(self) -> None:
        lines, resp = self._lines, self._resp
        self._lines = self._resp = None
        if lines is not None:
            with contextlib.suppress(Exception):
                await lines.aclose()  # type: ignore[attr-defined]
        if resp is not None:
            with contextlib.suppress(Exception):
                await resp.aclose()

    async def _connect(self) -> AsyncIterator[str]:
        f = self._f
        if f.cursor is None:
            # Without `since`, start at the server's newest cursor (see `EventStream`).
            out = await self._t.call("GET", "/v1/events", params={**f.params, "limit": 1})
            f.cursor = int(out["next_cursor"])
        http = self._t.http
        request = http.build_request(
            "GET", "/v1/events/stream", params=f.params, headers=f.headers(), timeout=_timeout()
        )
        resp = await http.send(request, stream=True)
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
            raise error_of(resp)
        self._resp = resp
        self._parser = _Sse()
        self._attempt, self._started = 0, time.monotonic()
        f.connects += 1
        lines = resp.aiter_lines()
        self._lines = lines
        return lines

    async def __anext__(self) -> Event:
        while not self._closed:
            try:
                lines = self._lines or await self._connect()
                try:
                    line = await lines.__anext__()
                except StopAsyncIteration:
                    raise _Reconnect from None  # the server ended the stream (shutdown)
                msg = self._parser.line(line)
                if msg is None:
                    continue
                event = self._f.handle(msg[0], msg[2])
                if event is not None:
                    return event
                continue
            except _Reconnect:
                await self._drop()
                continue
            except RETRY_EXCEPTIONS as exc:
                err: FerryError = _connection_error(exc, self._t.url)
                cause: BaseException | None = exc
            except FerryError as exc:
                err, cause = exc, None
            await self._drop()
            if not is_transient(err):
                raise err from cause
            delay = self._t.policy.delay(self._attempt, err, self._started)
            if delay is None:
                raise err from cause
            await asyncio.sleep(delay)
            self._attempt += 1
        raise StopAsyncIteration


# ---- WebSocket (`pip install ferry-client[ws]`) --------------------------------------------------


def _ws_url(base: str, params: Mapping[str, Any]) -> str:
    url = httpx.URL(base + "/v1/ws").copy_merge_params({k: v for k, v in params.items() if v is not None})
    scheme = "wss" if url.scheme == "https" else "ws"
    return str(url.copy_with(scheme=scheme))


def _ws_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in ("authorization", "x-ferry-client", "user-agent")}


def _missing_ws() -> ImportError:
    return ImportError("the WebSocket needs the `ws` extra: pip install 'ferry-client[ws]'")


def _ws_error(exc: Exception) -> FerryError:
    """The FerryError a refused WebSocket handshake stands for (its HTTP error body)."""
    response = getattr(exc, "response", None)
    body = getattr(response, "body", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return error_from(parsed["error"], status=status)
    return FerryError(f"WebSocket handshake refused: {exc}", code="unknown", status=status)


class EventSocket:
    """A WebSocket on `/v1/ws` (blocking): join rooms, then iterate messages — events and
    the server's notices (`subscribed`, `unsubscribed`, `pong`, `lagged`, `error`)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, transport: SyncTransport, params: Mapping[str, Any]) -> EventSocket:
        """Opens the socket with the client's token and name."""
        try:
            from websockets.sync.client import connect
        except ImportError as e:
            raise _missing_ws() from e
        from websockets.exceptions import InvalidStatus

        try:
            conn = connect(
                _ws_url(transport.url, params),
                additional_headers=_ws_headers(transport.headers),
                open_timeout=transport.timeout,
                close_timeout=2.0,
            )
        except InvalidStatus as e:
            raise _ws_error(e) from e
        except OSError as e:
            raise _connection_error(e, transport.url) from e
        # Entered as its context manager (websockets >= 17.1 warns otherwise); `close()` ends it.
        conn.__enter__()
        return cls(conn)

    def send(self, msg: Mapping[str, Any]) -> None:
        """Sends a request (`{"op": ...}`); its answer arrives as a message."""
        self._conn.send(json.dumps(msg))

    def subscribe(self, *rooms: str) -> None:
        """Joins rooms: `queue:<name>`, `job:<id>`, `schedule:<name>`, `tag:<t>`, or `*`."""
        self.send({"op": "subscribe", "rooms": list(rooms)})

    def unsubscribe(self, *rooms: str) -> None:
        """Leaves rooms."""
        self.send({"op": "unsubscribe", "rooms": list(rooms)})

    def ping(self) -> None:
        """Asks for a `pong` carrying the stream's cursor."""
        self.send({"op": "ping"})

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message (an event or a notice); None once the socket is closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            text = self._conn.recv(timeout=timeout)
        except ConnectionClosed:
            return None
        return cast("dict[str, Any]", json.loads(text))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (msg := self.recv()) is not None:
            yield msg

    def close(self) -> None:
        """Closes the socket (messages not read yet are dropped)."""
        # Unread messages pause the connection's reader (flow control), so the server's close
        # frame would wait behind them until the close timeout: drain them meanwhile.
        drain = threading.Thread(target=self._drain, daemon=True)
        drain.start()
        with contextlib.suppress(Exception):
            self._conn.close()
        drain.join(timeout=1.0)

    def _drain(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                self._conn.recv()

    def __enter__(self) -> EventSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEventSocket:
    """A WebSocket on `/v1/ws` for asyncio: `await sock.subscribe(...)`, `async for msg in sock`."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, transport: AsyncTransport, params: Mapping[str, Any]) -> AsyncEventSocket:
        """Opens the socket with the client's token and name."""
        try:
            from websockets.asyncio.client import connect
        except ImportError as e:
            raise _missing_ws() from e
        from websockets.exceptions import InvalidStatus

        try:
            conn = await connect(
                _ws_url(transport.url, params),
                additional_headers=_ws_headers(transport.headers),
                open_timeout=transport.timeout,
                close_timeout=2.0,
            )
        except InvalidStatus as e:
            raise _ws_error(e) from e
        except OSError as e:
            raise _connection_error(e, transport.url) from e
        return cls(conn)

    async def send(self, msg: Mapping[str, Any]) -> None:
        """Sends a request (`{"op": ...}`); its answer arrives as a message."""
        await self._conn.send(json.dumps(msg))

    async def subscribe(self, *rooms: str) -> None:
        """Joins rooms: `queue:<name>`, `job:<id>`, `schedule:<name>`, `tag:<t>`, or `*`."""
        await self.send({"op": "subscribe", "rooms": list(rooms)})

    async def unsubscribe(self, *rooms: str) -> None:
        """Leaves rooms."""
        await self.send({"op": "unsubscribe", "rooms": list(rooms)})

    async def ping(self) -> None:
        """Asks for a `pong` carrying the stream's cursor."""
        await self.send({"op": "ping"})

    async def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message (an event or a notice); None once the socket is closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            if timeout is None:
                text = await self._conn.recv()
            else:
                text = await asyncio.wait_for(self._conn.recv(), timeout)
        except ConnectionClosed:
            return None
        return cast("dict[str, Any]", json.loads(text))

    def __aiter__(self) -> AsyncEventSocket:
        return self

    async def __anext__(self) -> dict[str, Any]:
        msg = await self.recv()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def aclose(self) -> None:
        """Closes the socket (messages not read yet are dropped)."""
        # See `EventSocket.close`: drain unread messages so the close handshake completes.
        drain = asyncio.ensure_future(self._drain())
        try:
            with contextlib.suppress(Exception):
                await self._conn.close()
        finally:
            drain.cancel()
            with contextlib.suppress(BaseException):
                await drain

    async def _drain(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self._conn.recv()

    async def __aenter__(self) -> AsyncEventSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
