"""What both eras must see: the tool list for a token, schemas cut from the OpenAPI document,
every tool's structured result equal to the same call over HTTP, errors as `isError` results,
auth and restricted tokens, the `ferry://queues` resource."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import (
    PG,
    call_ok,
    error_of,
    http,
    is_error,
    mcp_url,
    new_token,
    raw_post,
    read_json,
    run,
    session,
    structured,
    tool_json,
)

# Every tool the domains give, as tools.rs declares it: the route it wraps, the scope that
# route needs and how a restricted token is checked on it (auth.rs, the routes' policies):
# "handler": the handler narrows what it answers to the token's resources (any token may call);
# "queues": the handler checks the queues the call names or reads, so only tokens restricted to
# queues (or unrestricted ones) can pass; "queue"/"job"/"convoy": the path's queue, job or convoy
# must be the token's; "agent": the path's agent; "agents"/"namespaces": only tokens restricted to
# agents / namespaces (or unrestricted ones); "refused": no restricted token.
TOOLS: dict[str, tuple[str, str, str, str]] = {
    "jobs_enqueue": ("POST", "/v1/jobs", "produce", "queues"),
    "jobs_claim": ("POST", "/v1/queues/{queue}/claim", "work", "queue"),
    "jobs_heartbeat": ("POST", "/v1/jobs/{id}/heartbeat", "work", "job"),
    "jobs_complete": ("POST", "/v1/jobs/{id}/complete", "work", "job"),
    "jobs_fail": ("POST", "/v1/jobs/{id}/fail", "work", "job"),
    "jobs_release": ("POST", "/v1/jobs/{id}/release", "work", "job"),
    "jobs_cancel": ("POST", "/v1/jobs/{id}/cancel", "produce", "job"),
    "jobs_get": ("GET", "/v1/jobs/{id}", "read", "job"),
    "jobs_list": ("GET", "/v1/jobs", "read", "queues"),
    "queues_stats": ("GET", "/v1/queues", "read", "handler"),
    "events_wait": ("GET", "/v1/events", "read", "handler"),
    "dlq_list": ("GET", "/v1/dlq", "read", "queues"),
    "dlq_replay": ("POST", "/v1/dlq/replay", "admin", "queues"),
    "items_create": ("POST", "/v1/items", "items", "agents"),
    "items_get": ("GET", "/v1/items/{id}", "read", "agents"),
    "items_list": ("GET", "/v1/items", "read", "agents"),
    "items_update": ("PATCH", "/v1/items/{id}", "items", "agents"),
    "items_history": ("GET", "/v1/items/{id}/history", "read", "agents"),
    "messages_send": ("POST", "/v1/messages", "messages", "agents"),
    "messages_receive": ("POST", "/v1/agents/{agent}/receive", "messages", "agent"),
    "messages_ack": ("POST", "/v1/agents/{agent}/ack", "messages", "agent"),
    "messages_nack": ("POST", "/v1/agents/{agent}/nack", "messages", "agent"),
    "broadcasts_send": ("POST", "/v1/broadcasts", "messages", "agents"),
    "convoys_create": ("POST", "/v1/convoys", "produce", "queues"),
    "convoys_get": ("GET", "/v1/convoys/{id}", "read", "convoy"),
    "convoys_list": ("GET", "/v1/convoys", "read", "queues"),
    "convoys_add_members": ("POST", "/v1/convoys/{id}/members", "produce", "convoy"),
    "convoys_seal": ("POST", "/v1/convoys/{id}/seal", "produce", "convoy"),
    "convoys_cancel": ("POST", "/v1/convoys/{id}/cancel", "produce", "convoy"),
    "ledger_accounts_create": ("POST", "/v1/ledger/accounts", "ledger", "refused"),
    "ledger_accounts_get": ("GET", "/v1/ledger/accounts/{id}", "read", "refused"),
    "ledger_transfer": ("POST", "/v1/ledger/transfers", "ledger", "refused"),
    "ledger_transfers_get": ("GET", "/v1/ledger/transfers/{id}", "read", "refused"),
    "checkpoints_list": ("GET", "/v1/checkpoints", "read", "refused"),
    "checkpoints_get": ("GET", "/v1/threads/{thread}/checkpoints/{id}", "read", "refused"),
    "checkpoints_put": ("PUT", "/v1/threads/{thread}/checkpoints/{id}", "checkpoints", "refused"),
    "threads_get": ("GET", "/v1/threads/{thread}", "read", "refused"),
    "memory_add": ("POST", "/v1/memory/episodes", "memory", "namespaces"),
    "memory_search": ("POST", "/v1/memory/search", "memory", "namespaces"),
    "memory_get": ("GET", "/v1/memory/episodes/{id}", "read", "namespaces"),
    "memory_delete": ("DELETE", "/v1/memory/episodes/{id}", "memory", "namespaces"),
}
DESTRUCTIVE = {"jobs_cancel", "convoys_cancel", "memory_delete"}
# A POST that only reads (a search with its query in the body).
READ_ONLY_POSTS = {"memory_search"}


def expected_tools(scopes: list[str], queues: Any = None, agents: Any = None, namespaces: Any = None) -> set[str]:
    """The tools a token with `scopes` (and restrictions) may call: each one's route scope held,
    and for a restricted token a restriction its route can narrow."""
    restricted = queues is not None or agents is not None or namespaces is not None
    out = set()
    for name, (_, _, scope, restriction) in TOOLS.items():
        if "admin" not in scopes and scope not in scopes:
            continue
        if restricted:
            needs = {
                "refused": False,
                "queues": queues is not None,
                "queue": queues is not None,
                "job": queues is not None,
                "convoy": queues is not None,
                "agent": agents is not None,
                "agents": agents is not None,
                "namespaces": namespaces is not None,
            }
            if not needs.get(restriction, True):
                continue
        out.add(name)
    return out


async def listed(c: Any) -> dict[str, dict[str, Any]]:
    return {t.name: tool_json(t) for t in (await c.list_tools()).tools}


def test_connects_and_lists_every_tool_for_an_admin_token(ferry_server_any) -> None:
    async def main() -> None:
        async with session(mcp_url(ferry_server_any), ferry_server_any.token) as c:
            tools = (await c.list_tools()).tools
            names = {t.name for t in tools}
            assert {
                "jobs_enqueue",
                "jobs_claim",
                "jobs_heartbeat",
                "jobs_complete",
                "jobs_fail",
                "jobs_get",
                "jobs_list",
                "queues_stats",
                "events_wait",
                "items_get",
                "items_update",
                "messages_send",
                "messages_receive",
                "memory_search",
            } <= names
            r = await c.call_tool("jobs_enqueue", {"queue": "mcp", "payload": {"n": 1}})
            assert not is_error(r), r
            job_id = structured(r)["id"]
            got = await c.call_tool("jobs_get", {"id": job_id})
            status, body = http(ferry_server_any, "GET", f"/v1/jobs/{job_id}")
            assert status == 200
            assert structured(got) == body

    run(main)


# ---- tools/list per token ------------------------------------------------------------------


AGENT_SCOPES = ["read", "items", "messages", "memory"]


def test_tools_list_is_the_expected_set_for_each_token(ferry_server_any) -> None:
    server = ferry_server_any
    tokens = {
        "admin": (server.token, ["admin"]),
        "read": (new_token(server, ["read"])[0], ["read"]),
        "worker": (new_token(server, ["read", "work"])[0], ["read", "work"]),
        "agent": (new_token(server, AGENT_SCOPES)[0], AGENT_SCOPES),
    }

    async def main() -> None:
        for who, (token, scopes) in tokens.items():
            async with session(mcp_url(server), token) as c:
                tools = await listed(c)
            assert set(tools) == expected_tools(scopes), (
                f"{who}: extra {sorted(set(tools) - expected_tools(scopes))}, "
                f"missing {sorted(expected_tools(scopes) - set(tools))}"
            )
            if who == "admin":
                assert set(tools) == set(TOOLS)
            if who == "read":
                # A read token sees read-only tools, and every read-only tool its scope reaches.
                writes = [n for n, t in tools.items() if not t.get("annotations", {}).get("readOnlyHint")]
                assert writes == [], f"a read token lists write tools {writes}"
                assert "jobs_enqueue" not in tools and "jobs_claim" not in tools

    run(main)


def test_a_restricted_token_lists_only_the_tools_it_may_call(ferry_server_any) -> None:
    """A restricted token reaches only its own resources: tools whose routes refuse any
    restricted token, or need a restriction of another kind than the token's (a queue-restricted
    token and an item, an agent-restricted one and a job), always answer `forbidden` to it, so
    `tools/list` must not show them."""
    server = ferry_server_any
    queue_token, _ = new_token(server, ["read", "work", "produce"], queues=["a"])
    agent_token, _ = new_token(server, ["messages", "read"], agents=["alice"])
    wrong: list[str] = []

    async def main() -> None:
        for token, scopes, kw in (
            (queue_token, ["read", "work", "produce"], {"queues": ["a"]}),
            (agent_token, ["messages", "read"], {"agents": ["alice"]}),
        ):
            async with session(mcp_url(server), token) as c:
                tools = await listed(c)
                # Each listed read that takes no argument must not answer `forbidden`.
                refused = []
                for name in sorted(tools):
                    if not tools[name]["inputSchema"].get("required") and TOOLS[name][0] == "GET":
                        r = await c.call_tool(name, {})
                        if is_error(r) and structured(r)["error"]["code"] == "forbidden":
                            refused.append(name)
            want = expected_tools(scopes, **kw)
            if set(tools) != want or refused:
                wrong.append(
                    f"{kw} {scopes}: listed but never callable {sorted(set(tools) - want)} (of them, answering "
                    f"forbidden when called without arguments: {refused}); missing {sorted(want - set(tools))}"
                )

    run(main)
    assert not wrong, "\n".join(wrong)


# ---- schemas and annotations ---------------------------------------------------------------


def canonical(node: Any, lookup: Any, stack: tuple[str, ...] = ()) -> Any:
    """`node` with every `$ref` resolved in place (`{"$ref": r, ...}` becomes
    `{"$resolved": <target>, ...}`), recursively, a cycle ending as `cycle:<name>`; so that a
    schema referring to `#/$defs/X` and one referring to `#/components/schemas/X` compare equal
    when X is the same."""
    if isinstance(node, list):
        return [canonical(x, lookup, stack) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: canonical(v, lookup, stack) for k, v in node.items() if k != "$ref"}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        target = lookup(ref)
        assert target is not None, f"dangling $ref {ref}"
        out["$resolved"] = f"cycle:{name}" if name in stack else canonical(target, lookup, (*stack, name))
    return out


def unwrap(schema: Any) -> Any:
    """A schema that is only a resolved reference: its target."""
    while isinstance(schema, dict) and set(schema) - {"description"} == {"$resolved"}:
        schema = schema["$resolved"]
    return schema


def test_each_input_schema_is_its_routes_schema(ferry_server_any) -> None:
    server = ferry_server_any
    status, doc = http(server, "GET", "/v1/openapi.json")
    assert status == 200
    assert "/mcp" not in doc["paths"], "/mcp is not part of the OpenAPI document"
    components = doc["components"]["schemas"]

    def api_ref(ref: str) -> Any:
        assert ref.startswith("#/components/schemas/"), ref
        return components.get(ref.rsplit("/", 1)[-1])

    async def main() -> dict[str, dict[str, Any]]:
        async with session(mcp_url(server), server.token) as c:
            return await listed(c)

    tools = run(main)
    assert set(tools) == set(TOOLS)
    problems: list[str] = []

    def check(ok: Any, why: str) -> None:
        if not ok:
            problems.append(why)

    for name, tool in tools.items():
        method, path, _, _ = TOOLS[name]
        assert re.fullmatch(r"[a-z0-9_]{1,64}", name), name
        check(tool.get("description"), f"{name} has no description")
        op = doc["paths"][path][method.lower()]
        schema = tool["inputSchema"]
        defs = schema.get("$defs", {})

        def tool_ref(ref: str, defs: Any = defs) -> Any:
            assert ref.startswith("#/$defs/"), ref
            return defs.get(ref.rsplit("/", 1)[-1])

        mine = canonical({k: v for k, v in schema.items() if k != "$defs"}, tool_ref)
        assert mine.get("type") == "object", name
        props = mine.get("properties", {})
        required = set(mine.get("required", []))
        params = {p["name"]: p for p in op.get("parameters", [])}
        path_params = {n for n, p in params.items() if p["in"] == "path"}
        for pname, p in params.items():
            if p["in"] not in ("path", "query"):
                continue
            want = canonical(p["schema"], api_ref)
            if p.get("description"):
                want.setdefault("description", p["description"])
            check(pname in props, f"{name}: parameter {pname} of {method} {path} is not an argument")
            check(props.get(pname) == want, f"{name}: argument {pname} differs from the route's parameter")
            check(pname in required or not p.get("required"), f"{name}: {pname} is required by the route")
            if p["in"] == "path":
                check(props.get(pname, {}).get("description"), f"{name}: path parameter {pname} is not described")
        body_props: dict[str, Any] = {}
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if body is not None:
            b = unwrap(canonical(body, api_ref))
            alts = b.get("oneOf") or []
            if len(alts) == 2 and {"type": "null"} in alts:
                b = unwrap(next(a for a in alts if a != {"type": "null"}))
            if "properties" in b:
                body_props = b["properties"]
                for k, v in body_props.items():
                    if k in path_params:
                        continue  # an id both in the path and the body: the path's argument serves
                    check(k in props, f"{name}: body field {k} is not an argument")
                    check(props.get(k) == v, f"{name}: argument {k} differs from the body's field")
                missing = set(b.get("required", [])) - required
                check(not missing, f"{name}: body fields {missing} are not required")
            else:
                # A body of alternatives (one job or a batch): kept whole.
                for key in ("oneOf", "anyOf"):
                    if key in b:
                        check(mine.get(key) == b[key], f"{name}: the body's {key} differs")
                check("oneOf" in b or "anyOf" in b, f"{name}: body {b}")
        # Nothing but the route's parameters and body fields.
        extra = set(props) - set(params) - set(body_props)
        check(not extra, f"{name}: arguments {extra} are not the route's")
        # Every argument is described for a model.
        for k, v in props.items():
            alternatives = [v, unwrap(v), *v.get("oneOf", []), *v.get("anyOf", [])]
            described = any(isinstance(a, dict) and a.get("description") for a in alternatives)
            check(described, f"{name}: argument {k} has no description")
        # The output schema is the success response's.
        ok = [r for s, r in op["responses"].items() if s.startswith("2") and "content" in r]
        out = tool.get("outputSchema")
        if len(ok) == 1 and out is not None:
            resp = unwrap(canonical(ok[0]["content"]["application/json"]["schema"], api_ref))
            got = canonical(
                {k: v for k, v in out.items() if k != "$defs"}, lambda r, o=out: o["$defs"].get(r.rsplit("/", 1)[-1])
            )
            check(got.get("properties") == resp.get("properties"), f"{name}: output schema differs")
            check(set(got.get("required", [])) == set(resp.get("required", [])), f"{name}: output required differs")
        elif not ok:
            check(out is None, f"{name}: an output schema for a route without a JSON answer")
        # Annotations follow the route.
        ann = tool.get("annotations", {})
        if method == "GET" or name in READ_ONLY_POSTS:
            check(ann.get("readOnlyHint") is True, f"{name}: a read without readOnlyHint")
        else:
            check(ann.get("readOnlyHint") is False, f"{name}: a write marked read-only")
        if name in DESTRUCTIVE:
            check(ann.get("destructiveHint") is True, f"{name}: not marked destructive")
        else:
            check(not ann.get("destructiveHint"), f"{name}: marked destructive")
    assert not problems, "\n".join(problems)


def test_every_advertised_argument_reaches_the_route(ferry_server) -> None:
    """An argument a tool's schema advertises must take effect, never be dropped: `items_update`
    lists `If-Match` (the route's header) and `checkpoints_put` `If-None-Match`; sent as the
    route's header they refuse a stale write, so through the tool they must too (or the tool must
    not offer them)."""
    server = ferry_server
    dropped: list[str] = []

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            tools = await listed(c)
            await call_ok(c, "items_create", {"id": "hdr", "title": "t"})
            if "If-Match" in tools["items_update"]["inputSchema"].get("properties", {}):
                r = await c.call_tool("items_update", {"id": "hdr", "title": "changed", "If-Match": '"7"'})
                if not is_error(r):
                    dropped.append(f'items_update If-Match "7" on an item at version 1 -> {structured(r)}')
                else:
                    assert error_of(r)["code"] in ("precondition_failed", "validation_failed"), structured(r)
            put = {
                "thread": "hdr",
                "id": "c1",
                "checkpoint": {"type": "json", "data": "e30="},
                "metadata": {},
                "channel_versions": {},
                "blobs": [],
            }
            await call_ok(c, "checkpoints_put", put)
            if "If-None-Match" in tools["checkpoints_put"]["inputSchema"].get("properties", {}):
                other = {**put, "checkpoint": {"type": "json", "data": "eyJhIjoxfQ=="}, "If-None-Match": "*"}
                r = await c.call_tool("checkpoints_put", other)
                if not is_error(r):
                    dropped.append(f"checkpoints_put If-None-Match * over another checkpoint -> {structured(r)}")
                else:
                    assert error_of(r)["code"] in ("conflict", "validation_failed"), structured(r)

    run(main)
    # Over HTTP, the same headers refuse the writes.
    status, _ = http_with(server, "PATCH", "/v1/items/hdr", {"title": "x"}, {"If-Match": '"99"'})
    assert status == 412, status
    assert not dropped, "arguments advertised but ignored:\n" + "\n".join(dropped)


def http_with(server: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    """An HTTP call with extra headers: (status, JSON body)."""
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method=method)
    req.add_header("Authorization", f"Bearer {server.token}")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# ---- every tool against the same call over HTTP ----------------------------------------------


def steady(queues: Any) -> Any:
    """`GET /v1/queues` without what moves with the clock (the oldest ready job's age)."""
    return {"queues": [{k: v for k, v in q.items() if k != "oldest_ready_age_ms"} for q in queues["queues"]]}


def same_shape(a: Any, b: Any) -> bool:
    """Whether two JSON values have the same keys at every level (values aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return all(same_shape(x, y) for x, y in zip(a, b, strict=False))
    return type(a) is type(b) or (a is None or b is None)


def test_every_tool_answers_what_the_api_answers(ferry_server_any) -> None:
    server = ferry_server_any
    called: set[str] = set()

    def get(path: str) -> Any:
        status, body = http(server, "GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(path: str, body: Any, method: str = "POST") -> Any:
        status, out = http(server, method, path, body)
        assert 200 <= status < 300, (path, status, out)
        return out

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:

            async def tool(name: str, args: dict[str, Any] | None = None) -> Any:
                called.add(name)
                return await call_ok(c, name, args)

            # Jobs: enqueue one and a batch.
            one = await tool("jobs_enqueue", {"queue": "q1", "payload": {"n": 1}, "lease_ms": 60000})
            assert same_shape(one, post("/v1/jobs", {"queue": "q1", "payload": {"n": 2}, "lease_ms": 60000}))
            job = get(f"/v1/jobs/{one['id']}")
            assert (job["queue"], job["payload"], job["state"]) == ("q1", {"n": 1}, "ready")
            batch = await tool("jobs_enqueue", {"jobs": [{"queue": "q2", "payload": {"i": i}} for i in range(3)]})
            assert same_shape(batch, post("/v1/jobs", {"jobs": [{"queue": "q2"}, {"queue": "q2"}, {"queue": "q2"}]}))
            assert [get(f"/v1/jobs/{i}")["payload"] for i in batch["ids"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert await tool("jobs_get", {"id": one["id"]}) == get(f"/v1/jobs/{one['id']}")
            assert await tool("jobs_list", {"queue": "q2", "limit": 10}) == get("/v1/jobs?queue=q2&limit=10")
            assert await tool("jobs_list", {"state": "ready"}) == get("/v1/jobs?state=ready")
            assert steady(await tool("queues_stats")) == steady(get("/v1/queues"))

            # Claim, heartbeat, release, complete, fail: each as the job then reads over HTTP.
            [mine] = (await tool("jobs_claim", {"queue": "q1", "worker": "mcp-w", "max": 1}))["jobs"]
            [theirs] = post("/v1/queues/q1/claim", {"worker": "http-w", "max": 1})["jobs"]
            assert same_shape(mine, theirs)
            now = get(f"/v1/jobs/{mine['id']}")
            assert (now["state"], now["worker"], now["attempt"]) == ("running", "mcp-w", mine["attempt"])
            assert now["lease_expires_at"] == mine["lease_expires_at"]
            beat = await tool("jobs_heartbeat", {"id": mine["id"], "lease": mine["lease"], "extend_ms": 90000})
            assert beat["id"] == mine["id"]
            assert beat["lease_expires_at"] == get(f"/v1/jobs/{mine['id']}")["lease_expires_at"]
            assert same_shape(beat, post(f"/v1/jobs/{theirs['id']}/heartbeat", {"lease": theirs["lease"]}))
            released = await tool("jobs_release", {"id": mine["id"], "lease": mine["lease"]})
            assert (
                released
                == {"id": mine["id"], "state": get(f"/v1/jobs/{mine['id']}")["state"]}
                == {"id": mine["id"], "state": "ready"}
            )
            claim = {"queue": "q1", "worker": "mcp-w", "max": 1, "lease_ms": 60000}
            [again] = (await tool("jobs_claim", claim))["jobs"]
            assert again["id"] == mine["id"]
            done = await tool("jobs_complete", {"id": again["id"], "lease": again["lease"], "result": {"ok": 1}})
            after = get(f"/v1/jobs/{again['id']}")
            assert done == {"id": again["id"], "state": after["state"]} and after["result"] == {"ok": 1}
            assert same_shape(done, post(f"/v1/jobs/{theirs['id']}/complete", {"lease": theirs["lease"]}))
            [f1, f2] = (await tool("jobs_claim", {"queue": "q2", "worker": "mcp-w", "max": 2}))["jobs"]
            failed = await tool("jobs_fail", {"id": f1["id"], "lease": f1["lease"], "error": "boom"})
            after = get(f"/v1/jobs/{f1['id']}")
            assert (failed["state"], failed["attempt"]) == (after["state"], after["attempt"]) == ("scheduled", 1)
            assert after["errors"][-1]["message"] == "boom"
            assert same_shape(failed, post(f"/v1/jobs/{f2['id']}/fail", {"lease": f2["lease"], "error": "x"}))
            cancelled = await tool("jobs_cancel", {"id": batch["ids"][2], "reason": "not needed"})
            assert cancelled == {"id": batch["ids"][2], "state": get(f"/v1/jobs/{batch['ids'][2]}")["state"]}
            assert cancelled["state"] == "cancelled"

            # The dead-letter queue.
            dead = await tool("jobs_enqueue", {"queue": "qd", "max_attempts": 1})
            [d] = (await tool("jobs_claim", {"queue": "qd", "worker": "mcp-w"}))["jobs"]
            assert (await tool("jobs_fail", {"id": d["id"], "lease": d["lease"], "error": "fatal"}))["state"] == "dead"
            dlq = await tool("dlq_list", {"queue": "qd"})
            assert dlq == get("/v1/dlq?queue=qd") and [j["id"] for j in dlq["jobs"]] == [dead["id"]]
            assert await tool("dlq_replay", {"ids": [dead["id"]]}) == {"replayed": 1}
            assert get(f"/v1/jobs/{dead['id']}")["state"] == "ready"

            # Events: the same page as the long-poll.
            events = await tool("events_wait", {"since": 0, "limit": 1000})
            # (A retry's backoff may end meanwhile and add an event: compare the same page.)
            assert events == get(f"/v1/events?since=0&limit={len(events['events'])}")
            assert {e["type"] for e in events["events"]} >= {"job.enqueued", "job.started", "job.completed"}
            mine_events = await tool("events_wait", {"since": 0, "job_id": again["id"], "type": "job.completed"})
            assert mine_events == get(f"/v1/events?since=0&job_id={again['id']}&type=job.completed")
            assert len(mine_events["events"]) == 1

            # Work items.
            created = await tool("items_create", {"id": "task-1", "title": "Write the report", "agent": "alice"})
            assert created["item"]["version"] == 1
            assert await tool("items_get", {"id": "task-1"}) == get("/v1/items/task-1")
            assert created["item"] == get("/v1/items/task-1")["item"]
            updated = await tool(
                "items_update",
                {
                    "id": "task-1",
                    "expected_version": 1,
                    "status": "in_progress",
                    "assignee": "bob",
                    "agent": "bob",
                    "context": {"step": 1},
                },
            )
            assert updated["changed"] is True and updated["item"]["version"] == 2
            assert updated["item"] == get("/v1/items/task-1")["item"]
            assert await tool("items_list", {"assignee": "bob"}) == get("/v1/items?assignee=bob")
            history = await tool("items_history", {"id": "task-1"})
            assert history == get("/v1/items/task-1/history") and len(history["history"]) == 2

            # Messages and broadcasts.
            sent = await tool("messages_send", {"to": ["bob"], "from": "alice", "body": {"hello": 1}})
            sent2 = await tool("messages_send", {"to": ["bob"], "from": "alice", "body": {"hello": 2}})
            assert same_shape(sent, post("/v1/messages", {"to": ["dave"], "from": "alice", "body": 0}))
            assert get("/v1/agents/bob")["ready"] == 2
            got = (await tool("messages_receive", {"agent": "bob", "max": 2, "visibility_ms": 60000}))["messages"]
            assert [(m["id"], m["body"], m["from"]) for m in got] == [
                (sent["id"], {"hello": 1}, "alice"),
                (sent2["id"], {"hello": 2}, "alice"),
            ]
            assert get("/v1/agents/bob")["in_flight"] == 2
            acked = await tool("messages_ack", {"agent": "bob", "receipts": [got[0]["receipt"]]})
            assert acked == {"results": [{"id": sent["id"], "ok": True}]}
            nacked = await tool("messages_nack", {"agent": "bob", "receipts": [got[1]["receipt"]], "delay_ms": 0})
            assert nacked == {"results": [{"id": sent2["id"], "ok": True}]}
            bob = get("/v1/agents/bob")
            assert (bob["ready"], bob["in_flight"]) == (1, 0), bob
            cast = await tool("broadcasts_send", {"from": "alice", "channel": "news", "body": "hi"})
            assert same_shape(cast, post("/v1/broadcasts", {"from": "alice", "channel": "news", "body": "again"}))
            assert cast["channel"] == "news"

            # Convoys.
            convoy = await tool(
                "convoys_create", {"queue": "cq", "name": "cv", "sealed": False, "members": [{"payload": {"m": 1}}]}
            )
            cid = convoy["convoy"]["id"]
            assert await tool("convoys_get", {"id": cid}) == get(f"/v1/convoys/{cid}") == convoy["convoy"]
            added = await tool("convoys_add_members", {"id": cid, "members": [{"payload": {"m": 2}}]})
            assert len(added["ids"]) == 1 and get(f"/v1/jobs/{added['ids'][0]}")["payload"] == {"m": 2}
            assert await tool("convoys_seal", {"id": cid}) == get(f"/v1/convoys/{cid}")
            assert await tool("convoys_list", {"queue": "cq"}) == get("/v1/convoys?queue=cq")
            stopped = await tool("convoys_cancel", {"id": cid})
            assert stopped == get(f"/v1/convoys/{cid}") and stopped["state"] == "cancelled"

            # Ledger.
            bank = await tool("ledger_accounts_create", {"id": "bank"})
            await tool("ledger_accounts_create", {"id": "alice"})
            transfer = await tool(
                "ledger_transfer", {"id": "t-1", "debit_account": "bank", "credit_account": "alice", "amount": 7}
            )
            assert transfer == get("/v1/ledger/transfers/t-1") and transfer["state"] == "posted"
            assert await tool("ledger_transfers_get", {"id": "t-1"}) == transfer
            alice = await tool("ledger_accounts_get", {"id": "alice"})
            assert alice == get("/v1/ledger/accounts/alice") and alice["balance"] == 7
            assert {k: v for k, v in bank.items() if k not in ("balance", "available", "debits_posted")} == {
                k: v
                for k, v in get("/v1/ledger/accounts/bank").items()
                if k not in ("balance", "available", "debits_posted")
            }

            # Checkpoints.
            put = await tool(
                "checkpoints_put",
                {
                    "thread": "run-1",
                    "id": "c1",
                    "checkpoint": {"type": "json", "data": "e30="},
                    "metadata": {"step": 1},
                    "channel_versions": {},
                    "blobs": [],
                },
            )
            assert (put["thread"], put["checkpoint_id"]) == ("run-1", "c1")
            cp = await tool("checkpoints_get", {"thread": "run-1", "id": "c1"})
            assert cp == get("/v1/threads/run-1/checkpoints/c1") and cp["metadata"] == {"step": 1}
            assert await tool("checkpoints_list", {"thread": "run-1"}) == get("/v1/checkpoints?thread=run-1")
            assert await tool("threads_get", {"thread": "run-1"}) == get("/v1/threads/run-1")

            # Memory.
            ep = await tool(
                "memory_add",
                {
                    "namespace": "ns",
                    "description": "pinned the cache to fix the deploy",
                    "outcome": {"status": "success"},
                    "tags": ["deploy"],
                },
            )
            episode = await tool("memory_get", {"id": ep["id"]})
            assert episode == get(f"/v1/memory/episodes/{ep['id']}") and episode["tags"] == ["deploy"]
            query = {"namespace": "ns", "text": "deploy cache", "k": 5}
            found = await tool("memory_search", query)
            via_http = post("/v1/memory/search", query)
            assert [r["id"] for r in found["results"]] == [r["id"] for r in via_http["results"]] == [ep["id"]]
            assert found["results"][0]["episode"] == via_http["results"][0]["episode"] == episode
            assert same_shape(found, via_http)
            assert await tool("memory_delete", {"id": ep["id"]}) == {}
            assert http(server, "GET", f"/v1/memory/episodes/{ep['id']}")[0] == 404

    run(main)
    assert called == set(TOOLS), f"tools not exercised: {sorted(set(TOOLS) - called)}"


# ---- errors ----------------------------------------------------------------------------------


def test_errors_are_tool_results(ferry_server) -> None:
    server = ferry_server

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            # Invalid input: the route's validation, with the field.
            e = error_of(await c.call_tool("jobs_enqueue", {"queue": "no spaces", "payload": {}}))
            assert (e["code"], e["field"]) == ("validation_failed", "queue"), e
            e = error_of(await c.call_tool("jobs_claim", {"queue": "q", "worker": "w", "wait_ms": 10**9}))
            assert (e["code"], e["field"]) == ("validation_failed", "wait_ms"), e
            # A missing path parameter or an argument the route does not take.
            e = error_of(await c.call_tool("jobs_get", {}))
            assert (e["code"], e["field"]) == ("validation_failed", "id"), e
            e = error_of(await c.call_tool("queues_stats", {"bogus": 1}))
            assert (e["code"], e["field"]) == ("validation_failed", "bogus"), e
            # The same error body as HTTP.
            r = await c.call_tool("items_create", {"title": ""})
            status, body = http(server, "POST", "/v1/items", {"title": ""})
            assert status == 422 and structured(r) == body, (structured(r), body)
            # Stale lease.
            job = await call_ok(c, "jobs_enqueue", {"queue": "e"})
            [claimed] = (await call_ok(c, "jobs_claim", {"queue": "e", "worker": "w"}))["jobs"]
            assert claimed["id"] == job["id"]
            wrong = claimed["lease"].split(".")[0] + ".000000000000000000000000"
            e = error_of(await c.call_tool("jobs_complete", {"id": job["id"], "lease": wrong}))
            assert e["code"] == "stale_lease", e
            assert http(server, "GET", f"/v1/jobs/{job['id']}")[1]["state"] == "running"
            # Unknown job id.
            e = error_of(await c.call_tool("jobs_get", {"id": "01a00000-0000-7000-8000-000000000000"}))
            assert e["code"] == "not_found", e
            e = error_of(
                await c.call_tool("jobs_complete", {"id": "01a00000-0000-7000-8000-000000000000", "lease": "1.x"})
            )
            assert e["code"] == "not_found", e

    run(main)


def test_an_unknown_tool_is_a_protocol_error(ferry_server) -> None:
    server = ferry_server

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            with pytest.raises(Exception) as info:
                await c.call_tool("no_such_tool", {})
            error = info.value.error  # the JSON-RPC error the server answered
            assert (error.code, error.message) == (-32602, "no tool named no_such_tool"), error
            # The session goes on.
            assert "queues" in await call_ok(c, "queues_stats")

    run(main)


def test_a_routes_rate_limit_is_rate_limited_with_retry_after(ferry_server_factory) -> None:
    server = ferry_server_factory(config={"messages": {"rate_per_min": 60, "rate_burst": 2}})

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            for i in range(2):
                await call_ok(c, "messages_send", {"to": ["bob"], "from": "alice", "body": i})
            e = error_of(await c.call_tool("messages_send", {"to": ["bob"], "from": "alice", "body": 3}))
            assert e["code"] == "rate_limited", e
            assert isinstance(e["details"]["retry_after_ms"], int) and 0 < e["details"]["retry_after_ms"] <= 60_000

    run(main)


def test_a_tool_call_counts_once_against_the_rate_limit(ferry_server_factory) -> None:
    """The `/mcp` request is the one charge: the route it runs in process is not charged again.
    With a burst of 6, six HTTP requests pass (whatever mix of handshake, listing and calls the
    client sends) and every tool call among them succeeds; then the POST itself is refused with
    HTTP 429 `rate_limited` and `Retry-After`, which the client raises."""
    burst = 6
    server = ferry_server_factory(config={"protection": {"rate_per_sec": 1, "rate_burst": burst}})
    exchanges: list[tuple[str, int]] = []

    async def on_response(response: Any) -> None:
        method = response.request.method
        if method == "POST":
            with contextlib.suppress(ValueError):
                method = json.loads(response.request.content).get("method", "POST")
        exchanges.append((method, response.status_code))

    results: list[Any] = []

    async def main() -> None:
        async with session(mcp_url(server), server.token, event_hooks={"response": [on_response]}) as c:
            for _ in range(2 * burst):
                results.append(await c.call_tool("queues_stats", {}))

    started = time.monotonic()
    with pytest.raises(BaseException) as info:  # each era raises its own type
        run(main)
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, (KeyboardInterrupt, AssertionError)), info.value
    first_refusal = next(i for i, (_, s) in enumerate(exchanges) if s == 429)
    admitted = exchanges[:first_refusal]
    assert all(s < 400 for _, s in admitted), exchanges
    # The bucket refills one a second: allow what refilled while the test ran.
    assert burst <= len(admitted) <= burst + int(elapsed) + 1, (exchanges, elapsed)
    assert results and all(not is_error(r) for r in results), [structured(r) for r in results]
    calls = sum(1 for m, _ in admitted if m == "tools/call")
    assert calls == len(results) >= 1, (exchanges, len(results))
    # The refusal itself: the guard's 429 with Retry-After, as for /v1 (a token may have refilled).
    for _ in range(3):
        status, headers, raw = raw_post(mcp_url(server), b"{}", {"Authorization": f"Bearer {server.token}"})
        if status == 429:
            break
    assert status == 429 and int(headers["retry-after"]) >= 1, (status, headers, raw)
    assert json.loads(raw)["error"]["code"] == "rate_limited"


def test_an_oversized_body_is_413(ferry_server_factory) -> None:
    server = ferry_server_factory(config={"limits": {"max_request_bytes": 4096}})
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "jobs_enqueue", "arguments": {"queue": "big", "payload": {"blob": "x" * 10_000}}},
    }
    status, _, raw = raw_post(mcp_url(server), json.dumps(call).encode(), {"Authorization": f"Bearer {server.token}"})
    assert status == 413, (status, raw)
    assert json.loads(raw)["error"]["code"] == "payload_too_large", raw
    # Nothing was enqueued, and a body under the limit is served.
    assert http(server, "GET", "/v1/jobs?queue=big")[1]["jobs"] == []

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            await call_ok(c, "jobs_enqueue", {"queue": "big", "payload": {"blob": "x" * 100}})

    run(main)


@pytest.mark.skipif(not PG, reason="making storage fail needs PostgreSQL (FERRY_TEST_PG_URL)")
def test_an_open_breaker_is_circuit_open(ferry_server_factory) -> None:
    """The breaker opened by storage failures: a tool call answers `circuit_open` with
    `retry_after_ms`, as a result. Storage fails by refusing the server's database connections."""
    import os
    import subprocess

    pg = os.environ["FERRY_TEST_PG_URL"]
    server = ferry_server_factory(
        pg_url=pg, config={"protection": {"breaker_failures": 2, "breaker_cooldown_ms": 30_000}}
    )
    db = server.database_url.rsplit("/", 1)[-1]

    def psql(sql: str) -> None:
        subprocess.run(["psql", pg, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True)

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            await call_ok(c, "queues_stats")
            psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
            psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
            try:
                deadline = time.monotonic() + 20
                while True:
                    assert time.monotonic() < deadline, "the breaker did not open"
                    r = await c.call_tool("jobs_enqueue", {"queue": "b"})
                    code = structured(r)["error"]["code"] if is_error(r) else None
                    if code == "circuit_open":
                        break
                    # Before it opens: the storage failures themselves (a pooled connection may
                    # still have served one).
                    assert code in ("unavailable", None), structured(r)
                e = error_of(r)
                assert e["details"]["retry_after_ms"] >= 1000, e
            finally:
                psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")

    run(main)


# ---- auth ------------------------------------------------------------------------------------

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def test_no_token_or_a_revoked_one_is_401(ferry_server) -> None:
    server = ferry_server
    body = json.dumps(INIT).encode()
    for headers in ({}, {"Authorization": "Bearer fy_not_a_token"}):
        status, h, raw = raw_post(mcp_url(server), body, headers)
        assert status == 401, (status, raw)
        assert "bearer" in h.get("www-authenticate", "").lower(), h
        assert json.loads(raw)["error"]["code"] == "unauthorized"
    token, token_id = new_token(server, ["read"])

    async def main() -> None:
        async with session(mcp_url(server), token) as c:
            await call_ok(c, "queues_stats")

    run(main)
    server.client().revoke_token(token_id)
    time.sleep(0.3)  # tokens are re-read at most every 200 ms
    status, h, raw = raw_post(mcp_url(server), body, {"Authorization": f"Bearer {token}"})
    assert status == 401, (status, raw)
    assert "bearer" in h.get("www-authenticate", "").lower(), h
    # And through a client: it cannot connect, or its first call fails.
    with pytest.raises(BaseException) as info:  # each era raises its own type

        async def again() -> None:
            async with session(mcp_url(server), token) as c:
                await c.call_tool("queues_stats", {})

        run(again)
    assert not isinstance(info.value, AssertionError)


def test_a_foreign_origin_is_403(ferry_server) -> None:
    server = ferry_server
    status, _, raw = raw_post(
        mcp_url(server),
        json.dumps(INIT).encode(),
        {"Authorization": f"Bearer {server.token}", "Origin": "http://evil.example"},
    )
    assert status == 403, (status, raw)


def test_a_read_token_cannot_enqueue(ferry_server_any) -> None:
    server = ferry_server_any
    token, _ = new_token(server, ["read"])

    async def main() -> None:
        async with session(mcp_url(server), token) as c:
            names = set(await listed(c))
            assert "jobs_enqueue" not in names and "jobs_complete" not in names
            assert "jobs_get" in names and "queues_stats" in names
            e = error_of(await c.call_tool("jobs_enqueue", {"queue": "q", "payload": {}}))
            assert e["code"] == "forbidden", e
            assert http(server, "GET", "/v1/jobs?queue=q")[1]["jobs"] == []
            await call_ok(c, "queues_stats")

    run(main)


def test_a_queue_restricted_token_reaches_only_its_queues(ferry_server_any) -> None:
    server = ferry_server_any
    token, _ = new_token(server, ["read", "work", "produce"], queues=["a"])
    status, other = http(server, "POST", "/v1/jobs", {"queue": "b", "payload": {"secret": 1}})
    assert status == 201

    async def main() -> None:
        async with session(mcp_url(server), token) as c:
            mine = await call_ok(c, "jobs_enqueue", {"queue": "a", "payload": {}})
            assert (await call_ok(c, "jobs_get", {"id": mine["id"]}))["queue"] == "a"
            foreign = error_of(await c.call_tool("jobs_get", {"id": other["id"]}))
            unknown = error_of(await c.call_tool("jobs_get", {"id": "01a00000-0000-7000-8000-000000000000"}))
            assert foreign["code"] == unknown["code"] == "forbidden", (foreign, unknown)
            assert foreign["message"] == unknown["message"], "a foreign job must look like an unknown one"
            assert "secret" not in json.dumps(foreign)
            e = error_of(await c.call_tool("jobs_enqueue", {"queue": "b", "payload": {}}))
            assert e["code"] == "forbidden", e
            e = error_of(await c.call_tool("jobs_claim", {"queue": "b", "worker": "w"}))
            assert e["code"] == "forbidden", e
            stats = await call_ok(c, "queues_stats")
            assert [q["queue"] for q in stats["queues"]] == ["a"]

    run(main)
    assert http(server, "GET", f"/v1/jobs/{other['id']}")[1]["state"] == "ready"


def test_an_agent_restricted_token_reads_only_its_inbox(ferry_server_any) -> None:
    server = ferry_server_any
    token, _ = new_token(server, ["messages"], agents=["alice"])
    for to in ("alice", "bob"):
        assert http(server, "POST", "/v1/messages", {"to": [to], "from": "carol", "body": to})[0] == 201

    async def main() -> None:
        async with session(mcp_url(server), token) as c:
            e = error_of(await c.call_tool("messages_receive", {"agent": "bob"}))
            assert e["code"] == "forbidden", e
            got = await call_ok(c, "messages_receive", {"agent": "alice"})
            assert [m["body"] for m in got["messages"]] == ["alice"]
            e = error_of(await c.call_tool("messages_send", {"to": ["bob"], "from": "bob", "body": "as bob"}))
            assert e["code"] == "forbidden", e

    run(main)
    bob = http(server, "GET", "/v1/agents/bob")[1]
    assert (bob["ready"], bob["in_flight"]) == (1, 0), bob


# ---- resources -------------------------------------------------------------------------------


def test_the_queues_resource_is_get_queues(ferry_server_any) -> None:
    server = ferry_server_any
    for q in ("r1", "r1", "r2"):
        assert http(server, "POST", "/v1/jobs", {"queue": q})[0] == 201

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert "ferry://queues" in uris
            got = await read_json(c, "ferry://queues")
            assert steady(got) == steady(http(server, "GET", "/v1/queues")[1])
            assert {q["queue"]: q["counts"]["ready"] for q in got["queues"]} == {"r1": 2, "r2": 1}
            job = (await call_ok(c, "jobs_enqueue", {"queue": "r3", "payload": {"x": 1}}))["id"]
            assert await read_json(c, f"ferry://jobs/{job}") == http(server, "GET", f"/v1/jobs/{job}")[1]

    run(main)
