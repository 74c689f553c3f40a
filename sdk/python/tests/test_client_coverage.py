"""Every operation of the running server's OpenAPI document has a method on both clients,
and each method works against the real server (sync and async, same scenario)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import ferry
from ferry._client import operations
from ferry.testing import FerryServer


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_every_operation_has_a_sync_and_an_async_method(ferry_server: FerryServer) -> None:
    doc = ferry_server.client().openapi()
    ops = documented(doc)
    assert len(ops) >= 62, sorted(ops)
    for cls in (ferry.Client, ferry.AsyncClient):
        covered = operations(cls)
        missing = sorted(ops - covered.keys())
        assert not missing, f"{cls.__name__} lacks a method for {missing}"
        extra = sorted(covered.keys() - ops)
        assert not extra, f"{cls.__name__} has methods for operations the server lacks: {extra}"
    sync, asyn = operations(ferry.Client), operations(ferry.AsyncClient)
    assert sync == asyn, "both clients name their methods alike"


class Recorder:
    """Calls client methods (awaiting the async ones) and records the operations hit."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.hit: set[tuple[str, str]] = set()

    async def __call__(self, name: str, *args: Any, **kw: Any) -> Any:
        fn = getattr(self.client, name)
        self.hit.add(fn.__ferry_operation__)
        out = fn(*args, **kw)
        if inspect.isawaitable(out):
            out = await out
        return out

    async def collect(self, pager: Any) -> list[Any]:
        if hasattr(pager, "__aiter__"):
            return [x async for x in pager]
        return list(pager)

    async def page(self, pager: Any) -> Any:
        out = pager.page()
        return await out if inspect.isawaitable(out) else out


async def scenario(server: FerryServer, client: Any, tag: str) -> set[tuple[str, str]]:
    c = Recorder(client)
    q = f"cov-{tag}"

    # Health and observability.
    assert (await c("health"))["status"] == "ok"
    assert (await c("ready"))["status"] == "ready"
    info = await c("server_info")
    assert info["auth"] is True and info["backend"] == "sqlite"
    assert "/v1/jobs" in (await c("openapi"))["paths"]
    assert "ferry_" in await c("metrics")
    assert set((await c("stats"))["windows"]) >= {"1m", "5m", "1h"}
    assert (await c("advice"))["verdict"] in ("STAY", "PLAN MIGRATION", "ACT", "MIGRATE NOW")
    assert isinstance(await c("advice_history"), list)
    assert (await c("advice", record=True))["trigger"] == "request"

    # A verified copy of the database, and no partial file left beside it.
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"backup-{tag}.db"
        receipt = await c("backup", copy)
        assert receipt["bytes"] == copy.stat().st_size > 0
        assert receipt["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
        assert copy.read_bytes()[:16] == b"SQLite format 3\x00"
        assert sorted(p.name for p in Path(tmp).iterdir()) == [copy.name]

    # Jobs: enqueue, batch, import.
    one = await c("enqueue", q, {"n": 0}, unique_key=f"{tag}-0", timeout_ms=60_000)
    assert uuid.UUID(one["id"])
    again = await c("enqueue", q, {"n": 0}, unique_key=f"{tag}-0")
    assert again == {"id": one["id"], "duplicate": True}
    batch = await c("enqueue_batch", [{"queue": q, "payload": {"n": i}} for i in range(1, 5)])
    assert len(batch["ids"]) == 4
    imported = await c(
        "import_jobs",
        [{"job": {"queue": q, "unique_key": f"{tag}-imp"}, "state": "completed", "result": {"r": 1}}],
    )
    assert len(imported["ids"]) == 1

    # Claim and report.
    jobs = await c("claim", q, worker=f"w-{tag}", max=10, wait_ms=200)
    assert [j["payload"]["n"] for j in jobs] == [0, 1, 2, 3, 4]
    assert jobs[0]["timeout_ms"] == 60_000
    j0, j1, j2, j3, j4 = jobs
    assert (await c("heartbeat", j0["id"], j0["lease"], extend_ms=10_000))["id"] == j0["id"]
    beats = await c("heartbeat_batch", [{"id": j["id"], "lease": j["lease"]} for j in (j0, j1)])
    assert [b["ok"] for b in beats] == [True, True]
    assert (await c("complete", j0["id"], j0["lease"], {"done": True}))["state"] == "completed"
    assert (await c("complete_batch", [{"id": j1["id"], "lease": j1["lease"]}]))[0]["ok"] is True
    assert (await c("fail", j2["id"], j2["lease"], "boom", retry=False))["state"] == "dead"
    failed = await c("fail_batch", [{"id": j3["id"], "lease": j3["lease"], "error": "x", "retry": False}])
    assert failed[0]["state"] == "dead"
    assert (await c("release", j4["id"], j4["lease"]))["state"] == "ready"
    assert (await c("cancel", j4["id"], "not needed"))["state"] == "cancelled"

    job = await c("get_job", j0["id"])
    assert job["state"] == "completed" and job["result"] == {"done": True}
    listed = await c.collect(await c("list_jobs", q, page_size=2))
    assert len(listed) == 6
    first = await c.page(await c("list_jobs", q, limit=2))
    assert len(first["jobs"]) == 2 and first["next_cursor"]
    dead = await c.collect(await c("dlq", q))
    assert {d["id"] for d in dead} == {j2["id"], j3["id"]}
    assert (await c("dlq_replay", [j2["id"]]))["replayed"] == 1
    assert (await c("dlq_purge", queue=q))["purged"] == 1

    # Queues.
    assert q in {s["queue"] for s in await c("queues")}
    assert (await c("pause", q))["paused"] is True
    assert (await c("resume", q))["paused"] is False
    assert (await c("set_queue_limits", q, max_running=3))["limits"]["max_running"] == 3
    assert (await c("queue_limits", q))["limits"]["max_running"] == 3

    # Convoys.
    cq, cid = f"{q}-convoy", f"convoy-{tag}"
    made = await c(
        "create_convoy",
        cq,
        [{"payload": {"n": 0}}],
        id=cid,
        max_parallel=1,
        sealed=False,
        on_complete={"queue": cq},
    )
    assert made["convoy"]["state"] == "open" and len(made["ids"]) == 1
    added = await c("add_convoy_members", cid, [{"payload": {"n": 1}, "unique_key": f"{tag}-m1"}])
    assert len(added["ids"]) == 1 and added["duplicates"] == []
    assert (await c("seal_convoy", cid))["state"] == "sealed"
    shown = await c("get_convoy", cid, wait_ms=0)
    assert (shown["counts"]["total"], shown["counts"]["ready"], shown["counts"]["held"]) == (2, 1, 1)
    members = await c("convoy_members", cid, limit=1)
    assert [m["id"] for m in members["members"]] == made["ids"] and members["next_cursor"]
    assert [v["id"] for v in (await c("list_convoys", queue=cq))["convoys"]] == [cid]
    cancelled = await c("cancel_convoy", cid)
    assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] == 2

    # Ledger.
    bank, payer = f"bank-{tag}", f"payer-{tag}"
    made = await c("create_account", bank, metadata={"kind": "bank"})
    assert (made["id"], made["ledger"], made["balance"]) == (bank, 1, 0) and not made.get("duplicate")
    accounts = await c(
        "create_accounts",
        [
            {"id": payer, "flags": ["debits_must_not_exceed_credits"]},
            {"id": bank, "metadata": {"kind": "bank"}},
        ],
    )
    assert [(a["id"], a.get("duplicate", False)) for a in accounts] == [(payer, False), (bank, True)]
    funded = await c("transfer", f"fund-{tag}", bank, payer, 100)
    assert (funded["state"], funded["posted_amount"]) == ("posted", 100)
    held = await c("transfer", f"hold-{tag}", payer, bank, 30, pending=True, timeout_ms=600_000)
    assert held["state"] == "pending" and held["expires_at"]
    assert (await c("post_transfer", f"hold-{tag}", 10))["posted_amount"] == 10
    small = {"id": f"b1-{tag}", "debit_account": payer, "credit_account": bank, "amount": 5, "pending": True}
    assert [t["state"] for t in await c("transfers", [small])] == ["pending"]
    big = {"id": f"b2-{tag}", "debit_account": payer, "credit_account": bank, "amount": 1000}
    results = await c("transfers", [small, big], atomic=False)
    assert [(r["ok"], r.get("duplicate", False)) for r in results] == [(True, True), (False, False)]
    assert results[1]["error"]["details"]["reason"] == "exceeds_credits"
    assert (await c("void_transfer", f"b1-{tag}"))["state"] == "voided"
    assert (await c("get_transfer", f"b2-{tag}"))["state"] == "refused"
    shown = await c("get_account", payer)
    assert (shown["balance"], shown["available"], shown["debits_pending"]) == (90, 90, 0)
    page = await c("list_accounts", limit=1)
    assert len(page["accounts"]) == 1 and page["next_cursor"]
    statement = await c("statement", payer, limit=10)
    assert [t["id"] for t in statement["transfers"]] == [f"fund-{tag}", f"hold-{tag}", f"b1-{tag}"]
    events = await c("ledger_events", limit=2)
    assert [e["seq"] for e in events["events"]] == [1, 2] and events["next_cursor"]
    assert (await c("verify_ledger", full=True))["ok"] is True
    closed = await c("close_account", payer)
    assert "closed" in closed["flags"] and closed["closed_at"]

    # Checkpoints (LangGraph): typed values go as bytes and come back as bytes.
    th, th2 = f"thread-{tag}", f"thread-{tag}-copy"
    put = await c(
        "put_checkpoint",
        th,
        "cp-1",
        checkpoint=("msgpack", b"\x80"),
        metadata={"run_id": f"run-{tag}"},
        channel_versions={"x": "1"},
        blobs=[{"channel": "x", "version": "1", "type": "msgpack", "data": b"\x01"}],
    )
    assert put["blobs_written"] == 1 and not put.get("duplicate")
    w = await c(
        "put_checkpoint_writes",
        th,
        "cp-1",
        task_id="k",
        writes=[{"channel": "x", "type": "msgpack", "data": b"\x02"}],
    )
    assert w == {"written": 1}
    got = await c("get_checkpoint", th)
    assert got["checkpoint"]["data"] == b"\x80" and [p["data"] for p in got["pending_writes"]] == [b"\x02"]
    listed = await c.collect(await c("list_checkpoints", th, full=True))
    assert [r["blobs"][0]["data"] for r in listed] == [b"\x01"]
    assert (await c("patch_thread", th, metadata={"tag": tag}))["metadata"] == {"tag": tag}
    assert (await c("get_thread", th))["checkpoints"] == 1
    assert th in {t["thread"] for t in await c.collect(await c("list_threads"))}
    assert await c("copy_thread", th, th2) == {"thread": th2, "copied": 1}
    assert await c("prune_checkpoints", [th2], "delete") == {"deleted": 1}
    assert await c("delete_checkpoint_runs", [f"run-{tag}"]) == {"deleted": 1}
    assert await c("delete_thread", th) == {"thread": th, "deleted": 0}

    # Episodic memory: add (a resend is a duplicate, another body a conflict), batch, get,
    # list, patch (a stale If-Match is refused), search, stats, delete, reconcile, rebuild.
    ns = f"mem-{tag}"
    fields: dict[str, Any] = {
        "agent": f"ann-{tag}",
        "domain": "ops",
        "task_type": "deploy",
        "steps": [{"tool": "kubectl", "action": "applied the manifest", "status": "ok", "latency_ms": 120}],
        "outcome": {"status": "success", "summary": "rolled out cleanly", "reward": 1.0},
        "importance": 0.8,
        "tags": ["prod", "payments"],
        "artifacts": [{"kind": "pr", "uri": "https://example.invalid/pr/1"}],
        "metadata": {"run": tag},
        "embedding": [1.0, 0.0, 0.0],
        "idempotency_key": f"{tag}-ep-1",
    }
    ep = await c("add_episode", ns, "deployed the payments service to production", **fields)
    assert ep["created_at"] and not ep.get("duplicate")
    resend = await c("add_episode", ns, "deployed the payments service to production", **fields)
    assert resend == {"id": ep["id"], "duplicate": True}
    with pytest.raises(ferry.Conflict) as conflict:
        await c("add_episode", ns, "something else", idempotency_key=f"{tag}-ep-1")
    assert conflict.value.details is not None and conflict.value.details["id"] == ep["id"]
    eps = await c(
        "add_episodes",
        [
            {
                "namespace": ns,
                "description": "wrote the search API docs",
                "domain": "docs",
                "outcome": "failure",
                "embedding": [0.0, 1.0, 0.0],
                "tags": ["docs"],
            },
            {
                "namespace": ns,
                "description": "rolled back a broken release",
                "domain": "ops",
                "task_type": "deploy",
                "outcome": "partial",
                "embedding": [0.6, 0.8, 0.0],
            },
        ],
    )
    assert len(eps["ids"]) == 2 and ep["id"] not in eps["ids"]
    docs_id, rollback_id = eps["ids"]
    got = await c("get_episode", ep["id"])
    assert (got["namespace"], got["version"], got["agent"], got["domain"]) == (ns, 1, f"ann-{tag}", "ops")
    assert got["steps"][0]["tool"] == "kubectl" and got["outcome"]["reward"] == 1.0
    assert got["artifacts"] == [{"kind": "pr", "uri": "https://example.invalid/pr/1"}]
    assert got["embedding"] == [1.0, 0.0, 0.0] and got["idempotency_key"] == f"{tag}-ep-1"
    listed = await c.collect(await c("list_episodes", ns, page_size=2))
    assert [e["id"] for e in listed] == [rollback_id, docs_id, ep["id"]], "newest first"
    page = await c.page(await c("list_episodes", ns, domain="ops", limit=1))
    assert [e["id"] for e in page["episodes"]] == [rollback_id] and page["next_cursor"]
    tagged = await c.collect(await c("list_episodes", ns, tag="docs", outcome="failure"))
    assert [e["id"] for e in tagged] == [docs_id]
    patched = await c("patch_episode", ep["id"], tags=["prod"], importance=0.9, if_match=1)
    assert (patched["version"], patched["tags"], patched["importance"]) == (2, ["prod"], 0.9)
    with pytest.raises(ferry.PreconditionFailed) as stale:
        await c("patch_episode", ep["id"], importance=0.1, if_match=1)
    assert stale.value.details is not None and stale.value.details["actual_version"] == 2
    found = await c("search_memory", ns, "payments production", k=2)
    assert found["results"][0]["id"] == ep["id"] and found["results"][0]["components"]["text"] == 1.0
    assert found["served_by"] == "flat" and found["candidates_scored"] >= 1
    near = await c(
        "search_memory",
        ns,
        embedding=[0.0, 1.0, 0.1],
        weights={"text": 0, "recency": 0, "importance": 0, "outcome": 0},
        filters={"outcome": ["failure", "partial"]},
        disable=["diversity"],
    )
    assert [r["id"] for r in near["results"]] == [docs_id, rollback_id]
    assert near["features"]["diversity"] is False and near["diversity"].get("lambda") is None
    ctx = await c("search_memory", ns, "deploy", context={"domain": "ops", "task_type": "deploy"})
    assert ctx["served_by"] == "hierarchical" and ctx["features"]["hierarchical"] is True
    stats = await c("memory_stats", ns)
    assert (stats["episodes"], stats["embedding_dims"]) == (3, 3) and stats["bytes"] > 0
    assert await c("delete_episode", docs_id) is None
    with pytest.raises(ferry.NotFound):
        await c("get_episode", docs_id)
    with pytest.raises(ferry.NotFound):
        await c("delete_episode", docs_id)
    assert (await c("memory_stats", ns))["episodes"] == 2
    report = await c("reconcile_memory", ns)
    mismatches = {"fts": 0, "tags": 0, "embeddings": 0}
    assert report == {"checked": 2, "mismatches": mismatches, "repaired": 0, "next_cursor": None}
    assert (await c("reconcile_memory", ns, repair=True))["repaired"] == 0
    started = await c("rebuild_memory", ns)
    assert (started["running"], started["total"], started["namespace"]) == (True, 2, ns)
    try:  # refused while one runs; two episodes may be rebuilt already, then it starts again
        again = await c("rebuild_memory", ns)
        assert (again["running"], again["total"]) == (True, 2)
    except ferry.InvalidState:
        pass
    for _ in range(200):  # it runs in the background
        rebuild = (await c("memory_stats", ns))["rebuild"]
        if not rebuild["running"]:
            break
        await asyncio.sleep(0.05)
    assert (rebuild["running"], rebuild["done"], rebuild.get("error")) == (False, 2, None)

    # Schedules.
    name = f"sched-{tag}"
    created = await c("create_schedule", name, "@daily", {"queue": q}, timezone="UTC")
    assert created["name"] == name
    assert name in {s["name"] for s in await c("schedules")}
    assert len((await c("schedule", name, count=3))["next_runs"]) == 3
    assert (await c("patch_schedule", name, cron="0 * * * *"))["cron"] == "0 * * * *"
    assert (await c("pause_schedule", name))["paused"] is True
    assert (await c("resume_schedule", name))["paused"] is False
    assert (await c("delete_schedule", name))["deleted"] is True

    # Work items.
    agent = f"agent-{tag}"
    created = await c("create_item", f"item {tag}", id=f"item-{tag}", context={"a": 1}, agent=agent)
    item = created["item"]
    assert item["version"] == 1 and not created.get("duplicate")
    assert (await c("get_item", item["id"]))["title"] == f"item {tag}"
    waited = await c("get_item", item["id"], wait_version_gt=0, wait_ms=1000)
    assert waited["version"] == 1
    patched = await c(
        "patch_item", item["id"], agent=agent, expected_version=1, status="in_progress", context={"b": 2}
    )
    assert patched["changed"] and patched["item"]["context"] == {"a": 1, "b": 2}
    assert patched["item"]["assignee"] == agent
    assert (await c("patch_item", item["id"], if_match=2, title="renamed"))["item"]["version"] == 3
    mine = await c.collect(await c("list_items", status="in_progress", assignee=agent))
    assert [i["id"] for i in mine] == [item["id"]]
    assert len((await c.page(await c("list_items", limit=1)))["items"]) == 1
    history = await c.collect(await c("item_history", item["id"]))
    assert [h["version"] for h in history] == [3, 2, 1]
    batch = await c(
        "batch_items",
        [
            {"op": "check", "id": item["id"], "expected_version": 3},
            {"op": "create", "id": f"item-{tag}-2", "title": "second"},
        ],
    )
    assert [(i["id"], i["version"]) for i in batch] == [(item["id"], 3), (f"item-{tag}-2", 1)]
    updated = client.update_item(item["id"], agent, lambda it: {"context": {"n": len(it["context"])}})
    updated = await updated if inspect.isawaitable(updated) else updated
    assert updated["item"]["version"] == 4 and updated["item"]["context"]["n"] == 2

    # Agent messages: send, receive, nack, ack, channels, broadcasts, dead letters, agents.
    ann, bob, news = f"ann-{tag}", f"bob-{tag}", f"news-{tag}"
    assert await c("receive", bob) == []
    sent = await c("send_message", bob, ann, {"n": 1}, dedup_key=f"{tag}-m", correlation_id="c")
    assert [r["agent"] for r in sent["recipients"]] == [bob] and not sent.get("duplicate")
    assert (await c("send_message", [bob], ann, {"n": 1}, dedup_key=f"{tag}-m"))["duplicate"] is True
    got = await c("receive", bob, max=10, wait_ms=1000, visibility_ms=60_000)
    assert [(m["id"], m["from"], m["body"]) for m in got] == [(sent["id"], ann, {"n": 1})]
    assert (await c("nack", bob, [got[0]["receipt"]]))[0]["ok"] is True
    again = await c("receive", bob)
    assert [(m["id"], m["delivery_count"]) for m in again] == [(sent["id"], 2)]
    assert (await c("ack", bob, [again[0]["receipt"]]))[0]["ok"] is True
    stale = (await c("ack", bob, [again[0]["receipt"]]))[0]
    assert stale["ok"] is False and stale["error"]["code"] == "stale_lease"
    channels = await c("set_channels", bob, ["all", news])
    assert sorted(ch["channel"] for ch in channels) == sorted(["all", news])
    cast_ = await c("broadcast", ann, "hello", channel=news)
    assert cast_["channel"] == news
    got = await c("receive", bob)
    assert [(m["id"], m["kind"], m.get("channel")) for m in got] == [(cast_["id"], "broadcast", news)]
    assert (await c("ack", bob, got[0]["receipt"]))[0]["ok"] is True
    assert await c.collect(await c("dead_messages", bob)) == []
    assert await c("replay_dead", bob) == 0
    agents = {a["name"] for a in await c.collect(await c("list_agents"))}
    assert {ann, bob} <= agents
    shown = await c("get_agent", bob)
    assert (shown["name"], shown["ready"], shown["in_flight"], shown["dead"]) == (bob, 0, 0, 0)
    assert sorted(ch["channel"] for ch in shown["channels"]) == sorted(["all", news])

    # Events: long-poll, server-sent events, WebSocket.
    page = await c("poll_events", since=0, limit=3, queue=q)
    assert [e["cursor"] for e in page["events"]] == sorted(e["cursor"] for e in page["events"])
    assert page["events"] and page["next_cursor"] >= page["events"][-1]["cursor"]
    stream = await c("events", since=0, queue=q)
    if hasattr(stream, "__anext__"):
        ev = await stream.__anext__()
        await stream.aclose()
    else:
        ev = next(stream)
        stream.close()
    assert ev["queue"] == q and ev["type"] == "job.enqueued"
    sock = await c("event_socket", since=0, queue=q)
    msg = sock.recv(timeout=10)
    msg = await msg if inspect.isawaitable(msg) else msg
    assert msg is not None and msg["type"] == "job.enqueued"
    closed = sock.aclose() if hasattr(sock, "aclose") else sock.close()
    if inspect.isawaitable(closed):
        await closed

    # Tokens, workers, hosts.
    tok = await c("create_token", f"tok-{tag}", ["read"], queues=[q])
    assert tok["token"] and tok["scopes"] == ["read"]
    assert tok["id"] in {t["id"] for t in await c("tokens")}
    assert (await c("revoke_token", tok["id"]))["revoked_at"]
    agent_tok = await c("create_token", f"agent-tok-{tag}", ["messages", "read"], agents=[ann])
    assert agent_tok["token"] and agent_tok.get("agents") == [ann]
    ns_tok = await c("create_token", f"ns-tok-{tag}", ["memory", "read"], namespaces=[ns])
    assert ns_tok["token"] and ns_tok.get("namespaces") == [ns]
    for _ in range(100):  # the registry is written behind the claims
        if f"w-{tag}" in {w["name"] for w in await c("workers")}:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the claiming worker is registered")
    host = await c("create_host", f"host-{tag}", f"{server.url}/healthz")
    assert host["name"] == f"host-{tag}"
    assert f"host-{tag}" in {h["name"] for h in await c("hosts")}
    assert await c("delete_host", f"host-{tag}") is None
    return c.hit


@pytest.mark.timeout(60)
def test_every_method_works_sync_and_async(ferry_server: FerryServer) -> None:
    ops = documented(ferry_server.client().openapi())
    with ferry_server.client(name="coverage-sync") as client:
        hit = asyncio.run(scenario(ferry_server, client, "sync"))
    assert ops - hit == set(), "the scenario calls every operation"

    async def run_async() -> set[tuple[str, str]]:
        async with ferry_server.async_client(name="coverage-async") as client:
            return await scenario(ferry_server, client, "async")

    hit = asyncio.run(run_async())
    assert ops - hit == set(), "the scenario calls every operation"


def test_env_defaults_and_client_name(ferry_server: FerryServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ferry_server.env().items():
        monkeypatch.setenv(k, v)
    with ferry.Client(name="named-client") as c:
        assert c.url == ferry_server.url
        c.enqueue("env-q")
        assert len(c.claim("env-q")) == 1  # the worker defaults to the client's name
        deadline = time.monotonic() + 5
        while "named-client" not in {w["name"] for w in c.workers()}:
            assert time.monotonic() < deadline, "the claiming worker is registered"
            time.sleep(0.05)
    monkeypatch.delenv("FERRY_TOKEN")
    with ferry.Client() as anon, pytest.raises(ferry.Unauthorized):
        anon.server_info()
