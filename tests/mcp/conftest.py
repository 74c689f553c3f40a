"""Fixtures and helpers shared by the MCP tests: a real `ferry serve` (the Python SDK's
`ferry.testing` plugin: auth on, its own data) and MCP clients of the installed official SDK
(2.x speaks the 2026-07-28 revision statelessly, 1.x the initialize handshake), connected with
a bearer header. Both eras go through `session()`, which yields an object with the same
`list_tools`, `call_tool`, `read_resource` methods."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import mcp

MCP_MAJOR = int(mcp.__version__.split(".")[0]) if hasattr(mcp, "__version__") else 0
if MCP_MAJOR == 0:
    from importlib.metadata import version

    MCP_MAJOR = int(version("mcp").split(".")[0])

MODERN = MCP_MAJOR >= 2
"""Whether the installed SDK is 2.x (revision 2026-07-28) rather than 1.x (handshake)."""


@contextlib.asynccontextmanager
async def session(url: str, token: str | None, **kw: Any) -> AsyncIterator[Any]:
    """An MCP client connected to `url` (the server's `/mcp`) with `Authorization: Bearer token`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # `event_hooks` (httpx's: {"request": [...], "response": [...]}) see every HTTP exchange.
    hooks = kw.pop("event_hooks", None)
    if MODERN:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        mode = kw.pop("mode", "2026-07-28")
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0), event_hooks=hooks) as http,
            Client(streamable_http_client(url, http_client=http), mode=mode, **kw) as c,
        ):
            yield c
    else:
        import httpx
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async with (
            httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60.0), event_hooks=hooks) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write, **kw) as s,
        ):
            await s.initialize()
            yield s


def mcp_url(server: Any) -> str:
    return f"{server.url}/mcp"


def http(server: Any, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """The same call over plain HTTP: (status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token or server.token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else {}


def structured(result: Any) -> Any:
    """A tool result's `structuredContent` (2.x names it `structured_content`)."""
    return result.structured_content if MODERN else result.structuredContent


def is_error(result: Any) -> bool:
    """Whether a tool result is flagged `isError`."""
    return bool(result.is_error if MODERN else result.isError)


def text(result: Any) -> str:
    """A tool result's first text block."""
    return str(result.content[0].text)


PG = bool(os.environ.get("FERRY_TEST_PG_URL"))


def tool_json(tool: Any) -> dict[str, Any]:
    """A listed tool as the wire has it (camelCase keys: `inputSchema`, `annotations.readOnlyHint`)."""
    return dict(tool.model_dump(mode="json", by_alias=True, exclude_none=True))


def error_of(result: Any) -> dict[str, Any]:
    """The `error` object of an `isError` result (asserting it is one, with the text the issue asks)."""
    assert is_error(result), f"expected an error result, got {structured(result)}"
    body = structured(result)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    e = body["error"]
    assert text(result) == f"{e['code']}: {e['message']}", text(result)
    return dict(e)


async def call_ok(c: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    """Calls a tool that must succeed; its `structuredContent`, which the text repeats."""
    r = await c.call_tool(name, args or {})
    assert not is_error(r), f"{name}({args}) -> {text(r)}"
    body = structured(r)
    assert json.loads(text(r)) == body, f"{name}: the text is not the structured content"
    return body


async def read_json(c: Any, uri: str) -> Any:
    """`resources/read` of `uri`: its one text content, parsed."""
    if MODERN:
        r = await c.read_resource(uri)
    else:
        from pydantic import AnyUrl

        r = await c.read_resource(AnyUrl(uri))
    assert len(r.contents) == 1, r
    content = r.contents[0]
    mime = content.mime_type if MODERN else content.mimeType
    assert mime == "application/json", mime
    return json.loads(content.text)


def new_token(server: Any, scopes: list[str], **kw: Any) -> tuple[str, str]:
    """A fresh token with `scopes` (and `queues=`, `agents=`, `namespaces=` restrictions): (secret, id)."""
    made = server.client().create_token(f"mcp-{'-'.join(scopes)}", scopes, **kw)
    return str(made["token"]), str(made["id"])


def raw_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP POST (no MCP client): (status, lower-cased headers, body)."""
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json, text/event-stream")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def run(fn: Any) -> Any:
    """`anyio.run(fn)`, re-raising a lone exception out of the task groups' exception groups, so a
    failed assertion reads as itself."""
    import anyio

    try:
        return anyio.run(fn)
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []

        def walk(e: BaseException) -> None:
            if isinstance(e, BaseExceptionGroup):
                for x in e.exceptions:
                    walk(x)
            else:
                leaves.append(e)

        walk(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
