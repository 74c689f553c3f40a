"""What both eras must see: the tool list for a token, schemas cut from the OpenAPI document,
every tool's structured result equal to the same call over HTTP."""

from __future__ import annotations

import anyio
import pytest
from conftest import http, is_error, mcp_url, session, structured


def test_connects_and_lists_every_tool_for_an_admin_token(ferry_server_any) -> None:
    async def main() -> None:
        async with session(mcp_url(ferry_server_any), ferry_server_any.token) as c:
            tools = (await c.list_tools()).tools
            names = {t.name for t in tools}
            assert {"jobs_enqueue", "jobs_claim", "jobs_heartbeat", "jobs_complete", "jobs_fail", "jobs_get",
                    "jobs_list", "queues_stats", "events_wait", "items_get", "items_update", "messages_send",
                    "messages_receive", "memory_search"} <= names
            r = await c.call_tool("jobs_enqueue", {"queue": "mcp", "payload": {"n": 1}})
            assert not is_error(r), r
            job_id = structured(r)["id"]
            got = await c.call_tool("jobs_get", {"id": job_id})
            status, body = http(ferry_server_any, "GET", f"/v1/jobs/{job_id}")
            assert status == 200
            assert structured(got) == body

    anyio.run(main)
