"""The MCP Inspector's CLI (npm `@modelcontextprotocol/inspector-cli`, pinned by
inspector/package-lock.json) lists ferry's tools and calls `queues_stats` over Streamable HTTP
with the bearer header, as a user checking a server by hand would."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from conftest import http, mcp_url

MODULES = Path(__file__).resolve().parent / "inspector" / "node_modules"
CLI = "@modelcontextprotocol/inspector-cli/build/index.js"


def inspector(server: Any, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is not on PATH (tests/mcp/check.sh needs Node from Debian)"
    assert (MODULES / CLI).is_file(), f"{MODULES / CLI} is missing: run tests/mcp/check.sh --install-only"
    header = ["--header", f"Authorization: Bearer {token}"] if token else []
    # The CLI reads ../package.json relative to its working directory: run it from node_modules.
    return subprocess.run(
        [node, CLI, mcp_url(server), "--transport", "http", *args, *header],
        cwd=MODULES,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_inspector_lists_tools_and_calls_queues_stats(ferry_server) -> None:
    server = ferry_server
    assert http(server, "POST", "/v1/jobs", {"queue": "seen-by-inspector"})[0] == 201
    listed = inspector(server, "--method", "tools/list", token=server.token)
    assert listed.returncode == 0, listed.stderr
    tools = {t["name"]: t for t in json.loads(listed.stdout)["tools"]}
    assert {"queues_stats", "jobs_enqueue", "jobs_claim", "events_wait"} <= set(tools)
    assert tools["queues_stats"]["annotations"]["readOnlyHint"] is True

    called = inspector(server, "--method", "tools/call", "--tool-name", "queues_stats", token=server.token)
    assert called.returncode == 0, called.stderr
    out = json.loads(called.stdout)
    assert not out.get("isError"), out
    queues = out["structuredContent"]["queues"]
    assert [(q["queue"], q["counts"]["ready"]) for q in queues] == [("seen-by-inspector", 1)]
    assert json.loads(out["content"][0]["text"]) == out["structuredContent"]


def test_the_inspector_without_the_header_is_refused(ferry_server) -> None:
    refused = inspector(ferry_server, "--method", "tools/list")
    assert refused.returncode != 0, refused.stdout
    assert "401" in refused.stdout + refused.stderr or "nauthorized" in refused.stdout + refused.stderr, (
        refused.stdout,
        refused.stderr,
    )
