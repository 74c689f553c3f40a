"""Work items against the real server: create (and its duplicate), get with its ETag, lists and
history, merge patches of `context`, artifacts, compare-and-set (`expected_version` → 409
`version_conflict`, `If-Match` → 412 `precondition_failed`, `update_item` re-running its
function on the conflict's `current` item), transitions and claims, atomic batches, long-polls;
and the retry class of each write."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

import ferry
from ferry._client_base import _batch_retry, _patch_retry
from ferry._http import ALWAYS, NEVER, REFUSED
from ferry.testing import FerryServer
from ferry.types import Item


def _raw_get(server: FerryServer, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"authorization": f"Bearer {server.token}"}, timeout=10)


def test_create_get_and_the_etag(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    out = c.create_item(
        "write the report",
        description="quarterly",
        context={"lang": "en"},
        artifacts=[{"uri": "s3://b/draft", "meta": {"pages": 3}}, {"uri": "s3://b/notes"}],
        agent="planner",
    )
    assert not out.get("duplicate")
    item = out["item"]
    assert item["title"] == "write the report" and item["description"] == "quarterly"
    assert item["status"] == "todo" and item["assignee"] is None and item["version"] == 1
    assert item["context"] == {"lang": "en"}
    assert item["artifacts"] == [{"uri": "s3://b/draft", "meta": {"pages": 3}}, {"uri": "s3://b/notes"}]
    assert item["created_at"] == item["updated_at"]
    assert c.get_item(item["id"]) == item

    resp = _raw_get(ferry_server_any, f"/v1/items/{item['id']}")
    assert resp.status_code == 200 and resp.headers["etag"] == '"1"'
    c.patch_item(item["id"], title="write the annual report")
    assert _raw_get(ferry_server_any, f"/v1/items/{item['id']}").headers["etag"] == '"2"'
    assert c.get_item(item["id"])["version"] == 2

    # Defaults, a client id, and in_progress at creation (needs an agent, who holds it).
    bare = c.create_item("bare", id="bare:1.a_b-c")["item"]
    assert bare["id"] == "bare:1.a_b-c" and bare["description"] == "" and bare["context"] == {}
    assert bare["artifacts"] == []
    held = c.create_item("held", status="in_progress", agent="ann")["item"]
    assert held["status"] == "in_progress" and held["assignee"] == "ann"
    with pytest.raises(ferry.ValidationFailed) as info:
        c.create_item("nobody", status="in_progress")
    assert info.value.field == "agent"
    with pytest.raises(ferry.NotFound):
        c.get_item("no-such-item")


def test_a_repeated_create_is_a_duplicate_and_another_body_a_conflict(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    first = c.create_item("t", id="dup-1", context={"k": 1})
    assert not first.get("duplicate")
    again = c.create_item("t", id="dup-1", context={"k": 1})
    assert again.get("duplicate") is True and again["item"] == first["item"]
    with pytest.raises(ferry.Conflict):
        c.create_item("another title", id="dup-1")
    assert [i["id"] for i in c.list_items()] == ["dup-1"]


def test_list_filters_and_pages(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    for n in range(5):
        c.create_item(f"todo {n}", id=f"item-{n}")
    c.create_item("mine", id="item-5", status="in_progress", agent="ann")
    c.create_item("theirs", id="item-6", status="in_progress", agent="bob")
    c.create_item("stuck", id="item-7", status="blocked")

    everything = list(c.list_items())
    assert [i["id"] for i in everything] == [f"item-{n}" for n in range(8)], "ordered by id"
    assert [i["id"] for i in c.list_items(status="todo")] == [f"item-{n}" for n in range(5)]
    assert [i["id"] for i in c.list_items(status="in_progress")] == ["item-5", "item-6"]
    assert [i["id"] for i in c.list_items(assignee="bob")] == ["item-6"]
    assert [i["id"] for i in c.list_items(status="in_progress", assignee="ann")] == ["item-5"]
    assert list(c.list_items(status="done")) == []

    assert [i["id"] for i in c.list_items(page_size=3)] == [f"item-{n}" for n in range(8)]
    assert len(list(c.list_items(limit=4, page_size=3))) == 4
    page = c.list_items(status="todo", page_size=2).page()
    assert [i["id"] for i in page["items"]] == ["item-0", "item-1"] and page["next_cursor"]
    rest = c.list_items(status="todo", page_size=2, cursor=page["next_cursor"]).all()
    assert [i["id"] for i in rest] == ["item-2", "item-3", "item-4"]


def test_history_is_newest_first_with_modes_paths_and_patches(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    item = c.create_item("h", id="hist", context={"a": {"b": {"c": {"d": 1}}}}, agent="ann")["item"]
    c.patch_item("hist", agent="ann", expected_version=1, status="in_progress", reason="starting")
    c.patch_item("hist", agent="ann", context={"a": {"b": {"c": {"d": 2}}}, "x": 1})
    c.patch_item("hist", agent="bob", expected_version=3, mode="strict", title="H")

    history = list(c.item_history("hist"))
    assert [h["version"] for h in history] == [4, 3, 2, 1]
    v4, v3, v2, v1 = history
    assert (v1["mode"], v1["agent"], v1["version"]) == ("create", "ann", 1)
    assert v1["patch"]["title"] == "h" and v1["patch"]["context"] == item["context"]
    assert v2["mode"] == "merge" and sorted(v2["paths"]) == ["/assignee", "/status"]
    assert v2["patch"] == {"status": "in_progress", "assignee": "ann"} and v2["reason"] == "starting"
    assert sorted(v3["paths"]) == ["/context/a/b/c", "/context/x"], "context paths cut at depth 3"
    assert v3["patch"] == {"context": {"a": {"b": {"c": {"d": 2}}}, "x": 1}}
    assert "reason" not in v3
    assert (v4["mode"], v4["agent"], v4["paths"]) == ("strict", "bob", ["/title"])
    assert v4["patch"] == {"title": "H"}

    newest = c.item_history("hist", page_size=1).page()
    assert [h["version"] for h in newest["history"]] == [4] and newest["next_cursor"]
    older = c.item_history("hist", cursor=newest["next_cursor"], limit=2).all()
    assert [h["version"] for h in older] == [3, 2]
    with pytest.raises(ferry.NotFound):
        c.item_history("no-such-item").page()


def test_context_is_merge_patched_rfc_7396(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    c.create_item("m", id="m", context={"a": {"b": 1, "c": 2}, "d": 1, "list": [1, 2]})
    out = c.patch_item("m", context={"a": {"b": None, "e": {"f": 3}}, "d": None, "list": [3]})
    assert out["changed"] is True
    assert out["item"]["context"] == {"a": {"c": 2, "e": {"f": 3}}, "list": [3]}
    assert out["item"]["version"] == 2
    same = c.patch_item("m", context={"a": {"c": 2}})
    assert same["changed"] is False and same["item"]["version"] == 2, "a no-op write makes no version"
    replaced = c.patch_item("m", context={"a": "scalar"})
    assert replaced["item"]["context"] == {"a": "scalar", "list": [3]}


def test_artifacts_are_added_replaced_and_removed_by_uri(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    c.create_item("a", id="art", artifacts=[{"uri": "s3://x/1"}])
    out = c.patch_item("art", artifacts_add=[{"uri": "s3://x/2", "meta": {"size": 10}}, {"uri": "s3://x/3"}])
    assert [a["uri"] for a in out["item"]["artifacts"]] == ["s3://x/1", "s3://x/2", "s3://x/3"]
    out = c.patch_item(
        "art", artifacts_add=[{"uri": "s3://x/1", "meta": {"v": 2}}], artifacts_remove=["s3://x/2"]
    )
    assert out["item"]["artifacts"] == [{"uri": "s3://x/1", "meta": {"v": 2}}, {"uri": "s3://x/3"}]
    history = list(c.item_history("art", limit=1))
    assert history[0]["paths"] == ["/artifacts"]


def test_a_stale_expected_version_is_a_version_conflict_with_the_current_item(
    ferry_server_any: FerryServer,
) -> None:
    c = ferry_server_any.client()
    c.create_item("c", id="cas", context={"n": 0, "other": 0})
    c.patch_item("cas", expected_version=1, context={"n": 1})
    # Merge mode: a write touching only paths unchanged since its version goes through.
    ok = c.patch_item("cas", expected_version=1, context={"other": 5})
    assert ok["changed"] and ok["item"]["version"] == 3
    with pytest.raises(ferry.VersionConflict) as info:
        c.patch_item("cas", expected_version=1, context={"n": 7})
    err = info.value
    assert err.status == 409 and err.code == "version_conflict"
    assert (err.expected_version, err.actual_version) == (1, 3)
    assert err.conflicting_paths == ["/context/n"]
    assert err.details and err.details["item_id"] == "cas"
    assert err.current is not None and err.current["version"] == 3 and err.current["context"]["n"] == 1
    # Strict: any change since conflicts.
    with pytest.raises(ferry.VersionConflict) as strict:
        c.patch_item("cas", expected_version=2, mode="strict", title="s")
    assert strict.value.current and strict.value.current["version"] == 3
    assert c.get_item("cas")["context"] == {"n": 1, "other": 5}


def test_update_item_reruns_its_function_on_the_conflicts_current_item(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    other = ferry_server.client(name="other-agent")
    c.create_item("counter", id="ctr", context={"n": 0})
    seen: list[int] = []

    def increment(item: Item) -> dict[str, Any]:
        seen.append(item["version"])
        if len(seen) == 1:  # another agent writes between our read and our write
            other.patch_item("ctr", agent="other", context={"n": 10})
        return {"context": {"n": item["context"]["n"] + 1}}

    out = c.update_item("ctr", "me", increment)
    assert seen == [1, 2], "the second call got the conflict's current item (no extra read)"
    assert out["changed"] and out["item"]["context"] == {"n": 11} and out["item"]["version"] == 3
    assert c.item_history("ctr", limit=1).page()["history"][0]["agent"] == "me"

    # Three writes in all, then the last conflict is raised.
    calls = 0

    def always_raced(item: Item) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        other.patch_item("ctr", context={"n": item["context"]["n"] + 100})
        return {"context": {"n": -1}}

    started = time.monotonic()
    with pytest.raises(ferry.VersionConflict):
        c.update_item("ctr", "me", always_raced)
    assert calls == 3 and time.monotonic() - started >= 0.004, "two jittered waits of 2 to 50 ms"

    # Nothing to write: no request, unchanged.
    same = c.update_item("ctr", "me", lambda item: None)
    assert same["changed"] is False and same["item"]["version"] == c.get_item("ctr")["version"]

    # invalid_state is never retried.
    calls = 0

    def finish(item: Item) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"status": "done"}  # todo -> done is not a move

    with pytest.raises(ferry.InvalidState):
        c.update_item("ctr", "me", finish)
    assert calls == 1


def test_if_match_sends_the_version_and_a_stale_one_is_412(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_item("i", id="im")
    out = c.patch_item("im", if_match=1, title="i2")
    assert out["item"]["version"] == 2
    with pytest.raises(ferry.PreconditionFailed) as info:
        c.patch_item("im", if_match=1, title="i3")
    err = info.value
    assert err.status == 412 and err.code == "precondition_failed"
    assert (err.expected_version, err.actual_version) == (1, 2) and err.conflicting_paths == ["/title"]
    assert err.current is not None and err.current["title"] == "i2"
    with pytest.raises(ferry.ValidationFailed) as bad:
        c.patch_item("im", if_match=2, expected_version=1, title="i3")
    assert bad.value.field == "expected_version"
    assert c.patch_item("im", if_match=2, expected_version=2, title="i3")["item"]["version"] == 3


def test_a_precondition_can_be_required(ferry_server_factory: Any) -> None:
    server: FerryServer = ferry_server_factory(config={"items": {"require_precondition": True}})
    c = server.client()
    c.create_item("p", id="p")
    with pytest.raises(ferry.PreconditionRequired) as info:
        c.patch_item("p", title="q")
    assert info.value.status == 428
    assert c.patch_item("p", title="q", expected_version=1)["item"]["version"] == 2
    assert c.patch_item("p", title="r", if_match=2)["item"]["version"] == 3
    assert c.update_item("p", "me", lambda item: {"title": "s"})["item"]["version"] == 4


def test_transitions_are_checked(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    c.create_item("t", id="tr")
    with pytest.raises(ferry.InvalidState) as info:
        c.patch_item("tr", status="done")
    err = info.value
    assert err.status == 409 and err.details is not None
    assert (err.details["item_id"], err.details["from"], err.details["to"]) == ("tr", "todo", "done")
    assert err.details["current"]["status"] == "todo"
    with pytest.raises(ferry.ValidationFailed) as no_agent:
        c.patch_item("tr", status="in_progress")
    assert no_agent.value.field == "agent"

    item = c.patch_item("tr", agent="ann", status="in_progress")["item"]
    assert (item["status"], item["assignee"]) == ("in_progress", "ann")
    assert c.patch_item("tr", status="blocked")["item"]["status"] == "blocked"
    assert c.patch_item("tr", agent="ann", status="in_progress")["item"]["status"] == "in_progress"
    back = c.patch_item("tr", status="todo")["item"]
    assert (back["status"], back["assignee"]) == ("todo", None), "back to todo clears the assignee"
    c.patch_item("tr", agent="ann", status="in_progress")
    done = c.patch_item("tr", status="done")["item"]
    assert done["status"] == "done"
    with pytest.raises(ferry.InvalidState):
        c.patch_item("tr", status="cancelled")  # terminal
    with pytest.raises(ferry.ValidationFailed) as merge:
        c.patch_item("tr", expected_version=done["version"], status="todo", reopen=True)
    assert merge.value.field == "reopen", "reopen needs a strict write"
    reopened = c.patch_item("tr", expected_version=done["version"], mode="strict", status="todo", reopen=True)
    assert reopened["item"]["status"] == "todo"
    assert c.patch_item("tr", status="cancelled")["item"]["status"] == "cancelled"


def test_a_claim_of_an_item_held_by_another_agent_is_refused(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_item("claim me", id="cl")
    ann = c.patch_item("cl", agent="ann", expected_version=1, status="in_progress")["item"]
    assert ann["assignee"] == "ann"
    with pytest.raises(ferry.InvalidState) as info:
        c.patch_item("cl", agent="bob", expected_version=ann["version"], status="in_progress")
    details = info.value.details
    assert details is not None
    assert details["reason"] == "assigned_to_other" and details["assignee"] == "ann"
    assert details["current"]["assignee"] == "ann"
    # Two agents racing from todo: exactly one holds it.
    c.create_item("race", id="race")
    results: dict[str, Any] = {}

    def claim(agent: str) -> None:
        try:
            results[agent] = c.patch_item("race", agent=agent, status="in_progress")["item"]["assignee"]
        except ferry.FerryError as e:
            results[agent] = e

    threads = [threading.Thread(target=claim, args=(a,)) for a in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holder = c.get_item("race")["assignee"]
    assert holder in ("x", "y")
    loser = "y" if holder == "x" else "x"
    assert results[holder] == holder
    assert isinstance(results[loser], ferry.InvalidState)
    assert results[loser].details["reason"] == "assigned_to_other"


def test_a_batch_is_all_or_nothing(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_item("existing", id="b-1")
    items = c.batch_items(
        [
            {"op": "create", "id": "b-2", "title": "new"},
            {"op": "patch", "id": "b-1", "expected_version": 1, "context": {"k": 1}},
            {"op": "check", "id": "b-1", "expected_version": 2},
        ]
    )
    assert [(i["id"], i["version"]) for i in items] == [("b-2", 1), ("b-1", 2), ("b-1", 2)]
    assert items[1]["context"] == {"k": 1}

    with pytest.raises(ferry.VersionConflict) as info:
        c.batch_items(
            [
                {"op": "create", "id": "b-3", "title": "never"},
                {"op": "patch", "id": "b-2", "expected_version": 1, "title": "changed"},
                {"op": "check", "id": "b-1", "expected_version": 1},
            ]
        )
    assert info.value.field == "ops[2]" and info.value.current and info.value.current["version"] == 2
    with pytest.raises(ferry.NotFound):
        c.get_item("b-3")
    assert c.get_item("b-2")["title"] == "new", "nothing of the failed batch was written"
    with pytest.raises(ferry.InvalidState) as state:
        c.batch_items([{"op": "patch", "id": "b-2", "status": "done"}])
    assert state.value.field == "ops[0]"
    with pytest.raises(ferry.ValidationFailed):
        c.batch_items([{"op": "check", "id": "b-1", "expected_version": 2}], atomic=False)


def test_get_item_long_polls_until_a_newer_version(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_item("w", id="lp")

    def write_later() -> None:
        time.sleep(0.4)
        ferry_server_any.client().patch_item("lp", context={"woken": True})

    t = threading.Thread(target=write_later)
    started = time.monotonic()
    t.start()
    try:
        item = c.get_item("lp", wait_version_gt=1, wait_ms=10_000)
    finally:
        t.join()
    elapsed = time.monotonic() - started
    assert item["version"] == 2 and item["context"] == {"woken": True}
    assert 0.3 <= elapsed < 5, elapsed
    # Already newer: at once. Nothing newer: the item as it is when the wait ends.
    started = time.monotonic()
    assert c.get_item("lp", wait_version_gt=1, wait_ms=10_000)["version"] == 2
    assert time.monotonic() - started < 1
    started = time.monotonic()
    assert c.get_item("lp", wait_version_gt=2, wait_ms=300)["version"] == 2
    assert 0.25 <= time.monotonic() - started < 5


def test_the_async_client(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with ferry_server.async_client(name="async-items") as c:
            item = (await c.create_item("a", id="as", context={"n": 0}))["item"]
            waiter = asyncio.create_task(c.get_item("as", wait_version_gt=1, wait_ms=10_000))
            await asyncio.sleep(0.2)
            out = await c.update_item("as", "me", lambda it: {"context": {"n": it["context"]["n"] + 1}})
            assert out["item"]["version"] == 2
            assert (await asyncio.wait_for(waiter, 10))["context"] == {"n": 1}
            patched = await c.patch_item("as", if_match=2, agent="me", status="in_progress")
            assert patched["item"]["assignee"] == "me"
            assert [i["id"] async for i in c.list_items(assignee="me")] == ["as"]
            assert [h["version"] for h in await c.item_history("as").all()] == [3, 2, 1]
            assert (await c.list_items().page())["items"][0]["id"] == item["id"]
            with pytest.raises(ferry.VersionConflict):
                await c.patch_item("as", expected_version=1, context={"n": 5})
            batch = await c.batch_items([{"op": "check", "id": "as", "expected_version": 3}])
            assert batch[0]["version"] == 3

    asyncio.run(run())


def test_what_is_safe_to_retry() -> None:
    # A CAS write either applies once or conflicts on a repeat: strict, or merge touching only
    # conflict-checked fields. Status and artifacts never conflict in merge mode.
    assert _patch_retry({"title": "t", "context": {"a": 1}, "expected_version": 3}, None) == ALWAYS
    assert _patch_retry({"title": "t"}, 3) == ALWAYS
    assert _patch_retry({"status": "done"}, 3) == ALWAYS, "If-Match without a mode is strict"
    assert _patch_retry({"status": "done", "mode": "merge"}, 3) == REFUSED
    assert _patch_retry({"title": "t"}, None) == REFUSED
    assert _patch_retry({"status": "done", "expected_version": 3}, None) == REFUSED
    assert _patch_retry({"artifacts_add": [{"uri": "u"}], "expected_version": 3}, None) == REFUSED
    assert _patch_retry({"status": "done", "mode": "strict", "expected_version": 3}, None) == ALWAYS
    assert _patch_retry({"status": "done", "mode": "strict"}, None) == REFUSED
    assert _batch_retry([{"op": "check", "id": "a", "expected_version": 1}]) == ALWAYS
    assert _batch_retry([{"op": "create", "id": "a", "title": "t"}]) == ALWAYS
    assert _batch_retry([{"op": "create", "title": "t"}, {"op": "check", "id": "a"}]) == NEVER
    assert _batch_retry([{"op": "create", "id": "a", "title": "t"}, {"op": "patch", "id": "b"}]) == REFUSED
    patch = {"op": "patch", "id": "b", "expected_version": 2, "context": {}}
    assert _batch_retry([{"op": "create", "id": "a", "title": "t"}, patch]) == ALWAYS


@pytest.mark.timeout(60)
def test_keyed_creates_and_cas_patches_wait_out_a_restart_plain_ones_do_not(
    ferry_server: FerryServer,
) -> None:
    c = ferry_server.client(retry_budget=2.0)
    c.create_item("r", id="r")
    ferry_server.kill()
    started = time.monotonic()
    with pytest.raises(ferry.FerryConnectionError):
        c.create_item("no id")
    with pytest.raises(ferry.FerryConnectionError):
        c.patch_item("r", title="no precondition")
    assert time.monotonic() - started < 1.0, "raised at once, not after backoff"

    def restart_later() -> None:
        time.sleep(0.5)
        ferry_server.restart()

    t = threading.Thread(target=restart_later)
    t.start()
    c = ferry_server.client(retry_budget=30.0)
    try:
        assert c.patch_item("r", expected_version=1, title="cas")["item"]["version"] == 2
    finally:
        t.join()
    ferry_server.kill()
    t = threading.Thread(target=restart_later)
    t.start()
    try:
        assert c.create_item("keyed", id="k")["item"]["id"] == "k"
    finally:
        t.join()
