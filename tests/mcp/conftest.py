"""Fixtures and helpers shared by the MCP tests: a real `ferry serve` (the Python SDK's
`ferry.testing` plugin: auth on, its own data) and MCP clients of the installed official SDK
(2.x speaks the 2026-07-28 revision statelessly, 1.x the initialize handshake), connected with
a bearer header. Both eras go through `session()`, which yields an object with the same
`list_tools`, `call_tool`, `read_resource` methods."""

from __future__ import annotations

import contextlib
import json
import os
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
    if MODERN:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        mode = kw.pop("mode", "2026-07-28")
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode, **kw) as c:
                yield c
    else:
        import httpx
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60.0)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, _):
                async with ClientSession(read, write, **kw) as s:
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
