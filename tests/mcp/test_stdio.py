"""`ferry mcp`: an MCP client that speaks only stdio reaches a server's /mcp through it; the
bridge answers `isError` `unavailable` while the server is down, works again once it is back
(re-initializing a handshake session the restarted server no longer knows), and exits 0 when
its stdin closes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from ferry.testing import FerryServer
from ferry.testing._server import find_binary

from conftest import MODERN, is_error, structured, text


@contextlib.asynccontextmanager
async def stdio_session(server: FerryServer) -> AsyncIterator[Any]:
    """An MCP client of the installed SDK era, speaking stdio to `ferry mcp`."""
    from mcp import StdioServerParameters

    params = StdioServerParameters(
        command=find_binary(),
        args=["mcp", "--url", server.url],
        env={"FERRY_TOKEN": server.token, "PATH": os.environ.get("PATH", "")},
    )
    if MODERN:
        from mcp import Client

        async with Client(params, mode="2026-07-28") as c:
            yield c
    else:
        from mcp import ClientSession
        from mcp.client.stdio import stdio_client

        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            yield s


def test_a_stdio_client_lists_and_calls_tools_and_survives_a_server_restart(ferry_server: FerryServer) -> None:
    async def main() -> None:
        async with stdio_session(ferry_server) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"jobs_enqueue", "queues_stats", "events_wait"} <= names
            r = await c.call_tool("jobs_enqueue", {"queue": "stdio", "payload": {"n": 1}})
            assert not is_error(r), text(r)
            r = await c.call_tool("queues_stats", {})
            assert [q["queue"] for q in structured(r)["queues"]] == ["stdio"]

            ferry_server.kill()
            r = await c.call_tool("queues_stats", {})
            assert is_error(r)
            assert structured(r)["error"]["code"] == "unavailable"
            assert text(r).startswith("unavailable: ")

            ferry_server.restart()
            r = await c.call_tool("queues_stats", {})
            assert not is_error(r), text(r)
            assert structured(r)["queues"][0]["counts"]["ready"] == 1

    anyio.run(main)


def test_the_bridge_exits_0_when_stdin_closes(ferry_server: FerryServer) -> None:
    proc = subprocess.Popen(
        [find_binary(), "mcp", "--url", ferry_server.url, "--token", ferry_server.token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    ping = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    proc.stdin.write((json.dumps(ping) + "\n").encode())
    proc.stdin.flush()
    answer = json.loads(proc.stdout.readline())
    assert answer["id"] == 1 and answer["result"]["protocolVersion"] == "2025-06-18"
    started = time.monotonic()
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
