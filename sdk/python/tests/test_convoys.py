"""Convoys against the real server: a sealed convoy run by a worker under its `max_parallel`
(never more ready + running, each member once) ending `completed` with its `on_complete` job
(unique key `convoy:<id>:complete`, the convoy's summary as payload), the `get_convoy`
long-poll, member pages, open convoys (add, dedup by `unique_key`, seal; add after seal is
`invalid_state`), a repeated id (`duplicate`, or `conflict` naming the differing fields),
cancel, `fail_fast`, `pressure` on job reports, convoy lists by state and queue, tokens
restricted to queues, validation naming the field; the async client on the same flow; and
what each method sends (no server)."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

import ferry
from ferry._http import ALWAYS, REFUSED
from ferry.testing import FerryServer
from ferry.types import Convoy, ConvoyCompletePayload

pytestmark = pytest.mark.timeout(60)

E = TypeVar("E", bound=ferry.FerryError)

COUNTS = ("total", "held", "ready", "running", "retrying", "completed", "failed", "cancelled")
ZERO = dict.fromkeys(COUNTS, 0)


def _raises(cls: type[E], fn: Callable[[], Any]) -> E:
    with pytest.raises(cls) as info:
        fn()
    return info.value


def _counts(**kw: int) -> dict[str, int]:
    return {**ZERO, **kw}


def _on_complete(c: ferry.Client, view: Convoy) -> ConvoyCompletePayload:
    """The ended convoy's `on_complete` job's payload, after checking its key."""
    job_id = view.get("on_complete_job_id")
    assert job_id, "an ended convoy with on_complete names its job"
    job = c.get_job(job_id)
    assert job["unique_key"] == f"convoy:{view['id']}:complete"
    payload: ConvoyCompletePayload = job["payload"]
    assert payload["convoy"]["id"] == view["id"] and payload["convoy"]["name"] == view["name"]
    assert payload["convoy"]["state"] == view["state"]
    assert payload["convoy"]["counts"] == view["counts"]
    assert payload["convoy"]["failed_total"] == view["failed_total"]
    return payload


def _all_members(c: ferry.Client, cid: str, limit: int, state: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        page = c.convoy_members(cid, state=state, limit=limit, cursor=cursor)
        assert len(page["members"]) <= limit
        rows.extend(page["members"])
        cursor = page.get("next_cursor")
        if not cursor:
            return rows
    raise AssertionError("the member pages end")


def _all_convoys(c: ferry.Client, limit: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = c.list_convoys(limit=limit, cursor=cursor, **filters)
        assert len(page["convoys"]) <= limit
        ids.extend(v["id"] for v in page["convoys"])
        cursor = page.get("next_cursor")
        if not cursor:
            return ids
    raise AssertionError("the convoy pages end")


@pytest.mark.timeout(120)
def test_a_sealed_convoy_runs_under_its_limit_and_enqueues_on_complete_once(
    ferry_server_any: FerryServer,
) -> None:
    server = ferry_server_any
    c = server.client()
    made = c.create_convoy(
        "convoy-work",
        [{"payload": {"n": i}} for i in range(20)],
        max_parallel=3,
        on_complete={"queue": "convoy-done", "payload": {"report": "r1"}},
    )
    view, ids = made["convoy"], made["ids"]
    cid = view["id"]
    assert uuid.UUID(cid).version == 7, "the server's id is a UUIDv7"
    assert "duplicate" not in made and made["duplicates"] == []
    assert len(ids) == 20 and len(set(ids)) == 20
    assert (view["name"], view["queue"], view["max_parallel"], view["limit"]) == (cid, "convoy-work", 3, 3)
    assert (view["state"], view["sealed"], view["on_failure"]) == ("sealed", True, "continue")
    assert view["on_complete"]["queue"] == "convoy-done"
    assert view["counts"] == _counts(total=20, ready=3, held=17)
    assert view["failed_total"] == 0 and view["created_at"]
    assert not view.get("finished_at") and not view.get("on_complete_job_id")

    # Members are jobs: held over the limit, with their convoy's id; queue counts show them.
    assert c.get_job(ids[0])["state"] == "ready" and c.get_job(ids[0])["convoy_id"] == cid
    assert c.get_job(ids[19])["state"] == "held" and c.get_job(ids[19])["convoy_id"] == cid
    assert len(list(c.list_jobs("convoy-work", "held"))) == 17
    stats = next(s for s in c.queues() if s["queue"] == "convoy-work")
    assert stats["counts"]["held"] == 17
    assert "convoy_id" not in c.get_job(c.enqueue("plain")["id"])

    # A sampler reads the convoy every 10 ms while a worker (8 handlers) runs its members.
    stop = threading.Event()
    sampled: list[int] = []

    def sample() -> None:
        with server.client(name="sampler") as s:
            while not stop.is_set():
                counts = s.get_convoy(cid)["counts"]
                sampled.append(counts["ready"] + counts["running"] + counts["retrying"])
                time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    worker = ferry.Worker(server.url, token=server.token, concurrency=8)
    handled: collections.Counter[str] = collections.Counter()
    running = {"now": 0, "peak": 0}

    @worker.task("convoy-work")
    async def member(n: int) -> int:
        handled[ferry.current_job().id] += 1
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.03)
        running["now"] -= 1
        return n

    try:
        worker.drain(timeout=90)
    finally:
        stop.set()
        sampler.join()

    assert set(handled) == set(ids) and max(handled.values()) == 1, "each member once"
    assert 1 <= running["peak"] <= 3, running
    assert sampled and max(sampled) <= 3, "never more than the limit hold a slot"

    done = c.get_convoy(cid, wait_ms=10_000)
    assert done["state"] == "completed" and done["sealed"] is True
    assert done["counts"] == _counts(total=20, completed=20)
    assert done["failed_total"] == 0 and done["finished_at"]
    payload = _on_complete(c, done)
    assert payload["convoy"]["state"] == "completed"
    assert payload["convoy"]["failed_ids"] == [] and payload["payload"] == {"report": "r1"}
    finals = [c.get_job(i) for i in ids]
    assert {(j["state"], j["attempt"]) for j in finals} == {("completed", 1)}
    assert sorted(j["result"] for j in finals) == list(range(20))
    enqueued = list(c.list_jobs("convoy-done"))
    assert [j["id"] for j in enqueued] == [done["on_complete_job_id"]], "on_complete enqueued once"


def test_an_empty_sealed_convoy_completes_at_once(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    view = c.create_convoy("empty", on_complete={"queue": "empty-done"})["convoy"]
    assert view["state"] == "completed" and view["counts"] == ZERO and view["finished_at"]
    payload = _on_complete(c, view)
    assert payload["payload"] is None and payload["convoy"]["failed_ids"] == []
    bare = c.create_convoy("empty")["convoy"]
    assert bare["state"] == "completed" and not bare.get("on_complete_job_id")


def test_get_convoy_long_polls_until_the_convoy_ends(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    made = c.create_convoy("lp", [{"payload": {"n": 1}}], id="lp-1")
    started = time.monotonic()
    view = c.get_convoy("lp-1", wait_ms=300)
    assert view["state"] == "sealed" and time.monotonic() - started >= 0.25, "answered at the wait's end"
    assert c.get_convoy("lp-1", wait_ms=0)["state"] == "sealed"
    [job] = c.claim("lp", wait_ms=1000)
    assert job["id"] == made["ids"][0]

    def finish() -> None:
        time.sleep(0.3)
        with ferry_server_any.client() as other:
            other.complete(job["id"], job["lease"], {"ok": True}, pressure=0.5)

    finisher = threading.Thread(target=finish)
    finisher.start()
    started = time.monotonic()
    view = c.get_convoy("lp-1", wait_ms=10_000)
    took = time.monotonic() - started
    finisher.join()
    assert view["state"] == "completed" and view["counts"] == _counts(total=1, completed=1)
    assert 0.2 <= took < 8, "answered when the convoy ended"


def test_members_are_listed_in_order_added_by_pages(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    made = c.create_convoy("pages", [{"payload": {"n": i}} for i in range(7)], id="pg", max_parallel=2)
    ids = made["ids"]
    first = c.convoy_members("pg", limit=3)
    assert [m["id"] for m in first["members"]] == ids[:3] and first["next_cursor"]
    row = first["members"][0]
    assert (row["state"], row["attempt"]) == ("ready", 0) and not row.get("finished_at")
    rest = c.convoy_members("pg", limit=3, cursor=first["next_cursor"])
    assert [m["id"] for m in rest["members"]] == ids[3:6]
    assert [m["id"] for m in _all_members(c, "pg", 3)] == ids
    assert [m["id"] for m in _all_members(c, "pg", 100)] == ids
    assert [m["id"] for m in c.convoy_members("pg")["members"]] == ids, "the default page holds 7"
    assert [m["id"] for m in _all_members(c, "pg", 2, state="held")] == ids[2:]
    assert [m["id"] for m in _all_members(c, "pg", 2, state="ready")] == ids[:2]

    [job] = c.claim("pages")
    c.complete(job["id"], job["lease"])
    shown = {m["id"]: m for m in _all_members(c, "pg", 10)}
    assert shown[ids[0]]["state"] == "completed" and shown[ids[0]]["attempt"] == 1
    assert shown[ids[0]].get("started_at") and shown[ids[0]].get("finished_at")
    assert [m["id"] for m in _all_members(c, "pg", 10, state="ready")] == ids[1:3], "the next one released"
    assert [m["id"] for m in _all_members(c, "pg", 10, state="completed")] == [ids[0]]


def test_an_open_convoy_takes_members_until_sealed(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    made = c.create_convoy(
        "open-q",
        [{"payload": {"n": 0}, "unique_key": "k0"}],
        id="open-1",
        sealed=False,
        on_complete={"queue": "open-done"},
    )
    view = made["convoy"]
    assert (view["state"], view["sealed"]) == ("open", False)
    added = c.add_convoy_members(
        "open-1",
        [
            {"payload": {"n": 1}},
            {"payload": {"n": 0}, "unique_key": "k0"},
            {"payload": {"n": 2}, "unique_key": "k2"},
        ],
    )
    assert len(added["ids"]) == 3 and added["duplicates"] == [1]
    assert added["ids"][1] == made["ids"][0], "a duplicate answers the earlier member's id"
    again = c.add_convoy_members("open-1", [{"payload": {"n": 2}, "unique_key": "k2"}])
    assert again["ids"] == [added["ids"][2]] and again["duplicates"] == [0], (
        "a retried add adds nothing twice"
    )
    assert c.get_convoy("open-1")["counts"]["total"] == 3

    # Every member done, but open: it ends only once sealed.
    jobs = c.claim("open-q", max=10, wait_ms=1000)
    assert len(jobs) == 3
    for job in jobs:
        c.complete(job["id"], job["lease"])
    view = c.get_convoy("open-1", wait_ms=300)
    assert view["state"] == "open" and view["counts"] == _counts(total=3, completed=3)
    assert not view.get("on_complete_job_id")
    sealed = c.seal_convoy("open-1")
    assert (sealed["state"], sealed["sealed"]) == ("completed", True), "sealed with no live member: ended"
    assert _on_complete(c, sealed)["convoy"]["counts"]["completed"] == 3
    assert c.seal_convoy("open-1")["state"] == "completed", "sealing again changes nothing"
    err = _raises(ferry.InvalidState, lambda: c.add_convoy_members("open-1", [{"payload": 9}]))
    assert (err.status, err.code) == (409, "invalid_state")

    # Sealed but still running: no more members either.
    c.create_convoy("open-q", [{"payload": 1}], id="open-2", sealed=False)
    assert c.seal_convoy("open-2")["state"] == "sealed"
    _raises(ferry.InvalidState, lambda: c.add_convoy_members("open-2", [{"payload": 2}]))
    assert c.get_convoy("open-2")["counts"]["total"] == 1
    _raises(ferry.NotFound, lambda: c.add_convoy_members("no-such-convoy", [{"payload": 1}]))


def test_a_repeated_id_is_a_duplicate_and_another_body_a_conflict(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    first = c.create_convoy(
        "dup-q", [{"payload": 1}, {"payload": 2}], id="nightly", name="Nightly", max_parallel=5
    )
    assert first["convoy"]["name"] == "Nightly" and "duplicate" not in first
    again = c.create_convoy("dup-q", [{"payload": 3}], id="nightly", name="Nightly", max_parallel=5)
    assert again["duplicate"] is True and again["ids"] == [] and again["duplicates"] == []
    assert again["convoy"]["id"] == "nightly" and again["convoy"]["counts"]["total"] == 2, "nothing added"
    assert len(list(c.list_jobs("dup-q"))) == 2

    err = _raises(
        ferry.Conflict, lambda: c.create_convoy("other-q", id="nightly", name="Nightly", max_parallel=6)
    )
    assert err.status == 409 and sorted((err.details or {})["fields"]) == ["max_parallel", "queue"]
    err = _raises(
        ferry.Conflict, lambda: c.create_convoy("dup-q", id="nightly", name="Daily", max_parallel=5)
    )
    assert (err.details or {})["fields"] == ["name"]
    err = _raises(
        ferry.Conflict, lambda: c.create_convoy("dup-q", id="nightly", name="Nightly", adaptive=(1, 5))
    )
    assert (err.details or {})["fields"] == ["max_parallel"]

    # The name defaults to the id; a unique_key repeated within one create is a duplicate.
    keyed = c.create_convoy(
        "dup-q", [{"payload": 1, "unique_key": "a"}, {"payload": 2, "unique_key": "a"}], id="keyed"
    )
    assert keyed["convoy"]["name"] == "keyed"
    assert keyed["duplicates"] == [1] and keyed["ids"][1] == keyed["ids"][0]
    assert keyed["convoy"]["counts"]["total"] == 1


def test_cancel_stops_a_convoy(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    made = c.create_convoy(
        "cancel-q",
        [{"payload": {"n": i}} for i in range(5)],
        max_parallel=2,
        on_complete={"queue": "cancel-done", "payload": {"why": "cleanup"}},
    )
    cid, ids = made["convoy"]["id"], made["ids"]
    assert c.cancel(ids[4])["state"] == "cancelled", "a held member cancels like any job"
    assert c.get_convoy(cid)["counts"] == _counts(total=5, ready=2, held=2, cancelled=1)
    [running] = c.claim("cancel-q")
    assert running["id"] == ids[0]

    view = c.cancel_convoy(cid)
    assert (view["state"], view["sealed"]) == ("sealed", True), "it ends once the running member ends"
    assert view["counts"] == _counts(total=5, running=1, cancelled=4)
    assert [c.get_job(i)["state"] for i in ids[1:]] == ["cancelled"] * 4
    assert c.cancel_convoy(cid)["counts"]["cancelled"] == 4, "cancelling again changes nothing"

    assert c.complete(running["id"], running["lease"])["state"] == "completed", "running members finish"
    done = c.get_convoy(cid, wait_ms=10_000)
    assert done["state"] == "cancelled" and done["counts"] == _counts(total=5, completed=1, cancelled=4)
    payload = _on_complete(c, done)
    assert payload["convoy"]["state"] == "cancelled" and payload["payload"] == {"why": "cleanup"}
    assert c.cancel_convoy(cid)["state"] == "cancelled"

    idle = c.create_convoy("cancel-q", [{"payload": 1}], id="idle")
    assert c.cancel_convoy("idle")["state"] == "cancelled", "no member running: ended at once"
    c.create_convoy("cancel-q", id="empty")
    err = _raises(ferry.InvalidState, lambda: c.cancel_convoy("empty"))
    assert err.status == 409
    assert c.get_job(idle["ids"][0])["state"] == "cancelled"


def test_fail_fast_cancels_the_rest_on_the_first_dead_member(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    made = c.create_convoy(
        "ff-q",
        [{"payload": {"n": i}, "max_attempts": 1} for i in range(6)],
        max_parallel=2,
        on_failure="fail_fast",
        on_complete={"queue": "ff-done"},
    )
    cid = made["convoy"]["id"]
    assert made["convoy"]["on_failure"] == "fail_fast"
    a, b = c.claim("ff-q", max=10, wait_ms=1000)
    assert c.fail(a["id"], a["lease"], "boom", retry=False)["state"] == "dead"
    view = c.get_convoy(cid)
    assert view["sealed"] is True and view["state"] == "sealed"
    assert view["counts"] == _counts(total=6, running=1, failed=1, cancelled=4)

    c.complete(b["id"], b["lease"])
    done = c.get_convoy(cid, wait_ms=10_000)
    assert done["state"] == "failed" and done["failed_total"] == 1
    assert done["counts"] == _counts(total=6, completed=1, failed=1, cancelled=4)
    payload = _on_complete(c, done)
    assert payload["convoy"]["state"] == "failed"
    assert payload["convoy"]["failed_ids"] == [a["id"]] and payload["convoy"]["failed_total"] == 1


def test_a_dead_member_under_continue_fails_the_convoy_at_its_end(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    made = c.create_convoy("cont-q", [{"payload": {"n": i}, "max_attempts": 1} for i in range(3)])
    cid = made["convoy"]["id"]
    jobs = c.claim("cont-q", max=10, wait_ms=1000)
    assert [j["id"] for j in jobs] == made["ids"]
    c.fail(jobs[0]["id"], jobs[0]["lease"], "boom")
    assert c.get_convoy(cid)["state"] == "sealed", "the others run on"
    for job in jobs[1:]:
        c.complete(job["id"], job["lease"])
    done = c.get_convoy(cid, wait_ms=10_000)
    assert done["state"] == "failed" and done["counts"] == _counts(total=3, completed=2, failed=1)
    assert done["failed_total"] == 1 and not done.get("on_complete_job_id")


def test_pressure_on_job_reports(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    for n in range(4):
        c.enqueue("pressure", {"n": n})
    a, b, d, e = c.claim("pressure", max=4)
    assert c.heartbeat(a["id"], a["lease"], pressure=0.0)["id"] == a["id"]
    err = _raises(ferry.ValidationFailed, lambda: c.heartbeat(a["id"], a["lease"], pressure=-0.1))
    assert (err.status, err.field) == (422, "pressure")
    err = _raises(ferry.ValidationFailed, lambda: c.complete(a["id"], a["lease"], pressure=1.5))
    assert err.field == "pressure"
    assert c.get_job(a["id"])["state"] == "running", "a refused report changes nothing"
    assert c.complete(a["id"], a["lease"], {"r": 1}, pressure=1.0)["state"] == "completed"
    _raises(ferry.ValidationFailed, lambda: c.fail(b["id"], b["lease"], "x", pressure=2))
    assert c.fail(b["id"], b["lease"], "x", retry=False, pressure=0.3)["state"] == "dead"

    beats = c.heartbeat_batch([{"id": d["id"], "lease": d["lease"], "pressure": 0.5}])
    assert beats[0]["ok"] is True
    too_high = [{"id": d["id"], "lease": d["lease"], "pressure": 1.5}]
    err = _raises(ferry.ValidationFailed, lambda: c.complete_batch(too_high))
    assert (err.status, err.field) == (422, "items[0].pressure"), "the whole batch is refused"
    assert c.complete_batch([{"id": d["id"], "lease": d["lease"], "pressure": 0.9}])[0]["ok"] is True
    too_low = [{"id": e["id"], "lease": e["lease"], "error": "x", "pressure": -1}]
    err = _raises(ferry.ValidationFailed, lambda: c.fail_batch(too_low))
    assert (err.status, err.field) == (422, "items[0].pressure")
    failed = c.fail_batch([{"id": e["id"], "lease": e["lease"], "error": "x", "retry": False, "pressure": 1}])
    assert failed[0]["ok"] is True and failed[0]["state"] == "dead"


def test_convoys_are_listed_oldest_first_by_state_and_queue(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_convoy("list-q", id="l-open", sealed=False)
    time.sleep(0.01)
    c.create_convoy("list-q", id="l-done")
    time.sleep(0.01)
    c.create_convoy("list-q", [{"payload": 1}], id="l-cancelled")
    assert c.cancel_convoy("l-cancelled")["state"] == "cancelled"
    time.sleep(0.01)
    c.create_convoy("list-other", [{"payload": 1}], id="l-sealed")

    everything = ["l-open", "l-done", "l-cancelled", "l-sealed"]
    assert [v["id"] for v in c.list_convoys()["convoys"]] == everything
    assert _all_convoys(c, 1) == everything
    assert _all_convoys(c, 3) == everything
    first = c.list_convoys(limit=2)
    assert [v["id"] for v in first["convoys"]] == everything[:2] and first["next_cursor"]
    for state, want in [
        ("open", ["l-open"]),
        ("sealed", ["l-sealed"]),
        ("completed", ["l-done"]),
        ("cancelled", ["l-cancelled"]),
        ("failed", []),
    ]:
        page = c.list_convoys(state=state)
        assert [v["id"] for v in page["convoys"]] == want, state
        assert all(v["state"] == state for v in page["convoys"])
    assert _all_convoys(c, 1, queue="list-q") == everything[:3]
    assert [v["id"] for v in c.list_convoys(state="sealed", queue="list-q")["convoys"]] == []
    assert [v["id"] for v in c.list_convoys(state="sealed", queue="list-other")["convoys"]] == ["l-sealed"]
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)):
        c.list_convoys(state="sideways")


def test_adaptive_and_fixed_limits_round_trip(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    view = c.create_convoy("ad-q", adaptive=(1, 10), sealed=False)["convoy"]
    assert view["max_parallel"] == {"adaptive": {"min": 1, "max": 10, "start": 1}} and view["limit"] == 1
    view = c.create_convoy("ad-q", adaptive={"min": 2, "max": 8, "start": 4}, sealed=False)["convoy"]
    assert view["max_parallel"] == {"adaptive": {"min": 2, "max": 8, "start": 4}} and view["limit"] == 4
    view = c.create_convoy("ad-q", adaptive=(3, 9, 5), sealed=False)["convoy"]
    assert view["limit"] == 5
    view = c.create_convoy("ad-q", max_parallel=7, sealed=False)["convoy"]
    assert (view["max_parallel"], view["limit"]) == (7, 7)
    view = c.create_convoy("ad-q", sealed=False)["convoy"]
    assert (view["max_parallel"], view["limit"], view["on_failure"]) == (10_000, 10_000, "continue")
    assert "on_complete" not in view


def test_a_token_restricted_to_queues(ferry_server: FerryServer) -> None:
    admin = ferry_server.client()
    admin.create_convoy("mine", [{"payload": 1}], id="own")
    admin.create_convoy("theirs", [{"payload": 1}], id="foreign", sealed=False)
    tok = admin.create_token("mine-only", ["produce", "read"], queues=["mine"])
    with ferry.Client(ferry_server.url, tok["token"], retries=0) as t:
        assert t.get_convoy("own")["queue"] == "mine"
        assert len(t.convoy_members("own")["members"]) == 1
        made = t.create_convoy("mine", [{"payload": 2}], id="own-2", on_complete={"queue": "mine"})
        assert len(made["ids"]) == 1
        assert _raises(ferry.Forbidden, lambda: t.get_convoy("foreign")).status == 403
        _raises(ferry.Forbidden, lambda: t.get_convoy("no-such-convoy"))  # alike for unknown ones
        _raises(ferry.Forbidden, lambda: t.convoy_members("foreign"))
        _raises(ferry.Forbidden, lambda: t.add_convoy_members("foreign", [{"payload": 3}]))
        _raises(ferry.Forbidden, lambda: t.seal_convoy("foreign"))
        _raises(ferry.Forbidden, lambda: t.cancel_convoy("foreign"))
        _raises(ferry.Forbidden, lambda: t.create_convoy("theirs", [{"payload": 4}]))
        _raises(ferry.Forbidden, lambda: t.create_convoy("mine", on_complete={"queue": "theirs"}))
    assert admin.get_convoy("foreign")["counts"]["total"] == 1
    _raises(ferry.NotFound, lambda: admin.get_convoy("no-such-convoy"))


def test_invalid_input_names_its_field(ferry_server: FerryServer) -> None:
    c = ferry_server.client()

    def field(fn: Callable[[], Any]) -> str | None:
        err = _raises(ferry.ValidationFailed, fn)
        assert err.status == 422
        return err.field

    for name, value in [
        ("queue", "x"),
        ("depends_on", [str(uuid.uuid4())]),
        ("run_at", "2030-01-01T00:00:00Z"),
        ("delay_ms", 10),
    ]:
        members = [{"payload": 1}, {"payload": 2, name: value}]
        assert field(lambda m=members: c.create_convoy("v", m)) == f"members[1].{name}"
    assert field(lambda: c.create_convoy("v", max_parallel=0)) == "max_parallel"
    assert field(lambda: c.create_convoy("v", max_parallel=10_001)) == "max_parallel"
    assert c.create_convoy("v", max_parallel=10_000)["convoy"]["limit"] == 10_000
    assert (field(lambda: c.create_convoy("v", adaptive=(5, 2))) or "").startswith("max_parallel")
    assert (field(lambda: c.create_convoy("v", adaptive=(0, 2))) or "").startswith("max_parallel")
    assert (field(lambda: c.create_convoy("v", adaptive=(1, 10_001))) or "").startswith("max_parallel")
    assert (field(lambda: c.create_convoy("v", adaptive=(2, 8, 9))) or "").startswith("max_parallel")
    assert field(lambda: c.create_convoy("v", on_complete={"queue": "d", "unique_key": "k"})) == (
        "on_complete.unique_key"
    )
    dep = {"queue": "d", "depends_on": [str(uuid.uuid4())]}
    assert field(lambda: c.create_convoy("v", on_complete=dep)) == "on_complete.depends_on"
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)):
        c.create_convoy("v", on_failure="sometimes")
    assert field(lambda: c.create_convoy("v", id="a b")) == "id"
    assert field(lambda: c.create_convoy("v", id="x" * 129)) == "id"
    assert c.create_convoy("v", id="x" * 128)["convoy"]["id"] == "x" * 128
    assert field(lambda: c.create_convoy("v", name="n" * 129)) == "name"
    assert field(lambda: c.create_convoy("v", name="bad\nname")) == "name"
    many = [{"payload": 1}] * 10_001
    assert field(lambda: c.create_convoy("v", many)) == "members"
    c.create_convoy("v", id="open-v", sealed=False)
    assert field(lambda: c.add_convoy_members("open-v", many)) == "members"
    assert c.get_convoy("open-v")["counts"]["total"] == 0, "a refused add adds nothing"
    assert field(lambda: c.get_convoy("open-v", wait_ms=30_001)) == "wait_ms"
    assert field(lambda: c.list_convoys(limit=1001)) == "limit"
    assert field(lambda: c.convoy_members("open-v", limit=1001)) == "limit"
    for call in (c.get_convoy, c.seal_convoy, c.cancel_convoy):
        _raises(ferry.NotFound, lambda call=call: call("no-such-convoy"))

    # Arguments the client refuses before sending.
    with pytest.raises(ValueError):
        c.create_convoy("v", max_parallel=3, adaptive=(1, 3))
    with pytest.raises(ValueError):
        c.create_convoy("v", adaptive=(1,))
    with pytest.raises(ValueError):
        c.create_convoy("v", adaptive=(1, 2, 3, 4))


def test_the_async_client(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with ferry_server.async_client(name="async-convoys") as c:
            made = await c.create_convoy(
                "aq", [{"payload": {"n": i}} for i in range(3)], id="ac", max_parallel=1, sealed=False
            )
            assert made["convoy"]["counts"]["held"] == 2
            added = await c.add_convoy_members("ac", [{"payload": {"n": 3}, "unique_key": "three"}])
            ids = made["ids"] + added["ids"]
            waiter = asyncio.create_task(c.get_convoy("ac", wait_ms=10_000))
            await asyncio.sleep(0.2)
            assert (await c.seal_convoy("ac"))["state"] == "sealed"
            assert not waiter.done()
            for want in ids:
                [job] = await c.claim("aq", wait_ms=2000)
                assert job["id"] == want, "one at a time, in order added"
                await c.heartbeat(job["id"], job["lease"], pressure=0.1)
                await c.complete(job["id"], job["lease"], pressure=0.25)
            view = await asyncio.wait_for(waiter, 15)
            assert view["state"] == "completed" and view["counts"]["completed"] == 4
            page = await c.convoy_members("ac", limit=3)
            assert [m["id"] for m in page["members"]] == ids[:3] and page["next_cursor"]
            rest = await c.convoy_members("ac", cursor=page["next_cursor"])
            assert [m["id"] for m in rest["members"]] == ids[3:]
            assert [v["id"] for v in (await c.list_convoys(state="completed"))["convoys"]] == ["ac"]
            with pytest.raises(ferry.InvalidState):
                await c.cancel_convoy("ac")

    asyncio.run(run())


# ---- what each method sends (no server) --------------------------------------------------------


class _Recorder:
    """A transport that records calls and answers `{}`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def call(self, method: str, path: str, **kw: Any) -> Any:
        self.calls.append((method, path, kw))
        return {}

    def close(self) -> None:
        pass

    def last(self) -> tuple[str, str, dict[str, Any]]:
        return self.calls[-1]


class _AsyncRecorder(_Recorder):
    async def call(self, method: str, path: str, **kw: Any) -> Any:  # type: ignore[override]
        return super().call(method, path, **kw)

    async def aclose(self) -> None:
        pass


def test_what_the_convoy_methods_send() -> None:
    rec = _Recorder()
    c = ferry.Client("http://127.0.0.1:9", token="t", name="wire")
    c._t.close()
    c._t = rec  # type: ignore[assignment]

    c.create_convoy("q", [{"payload": 1}], id="c1", adaptive=(1, 10))
    method, path, kw = rec.last()
    assert (method, path, kw["retry"], kw["has_body"]) == ("POST", "/v1/convoys", ALWAYS, True)
    assert kw["body"] == {
        "queue": "q",
        "sealed": True,
        "members": [{"payload": 1}],
        "id": "c1",
        "max_parallel": {"adaptive": {"min": 1, "max": 10}},
    }
    c.create_convoy(
        "q", adaptive=(1, 10, 4), sealed=False, on_failure="fail_fast", on_complete={"queue": "d"}
    )
    _, _, kw = rec.last()
    assert kw["retry"] == REFUSED, "without an id only a refused create is retried"
    assert kw["body"] == {
        "queue": "q",
        "sealed": False,
        "max_parallel": {"adaptive": {"min": 1, "max": 10, "start": 4}},
        "on_failure": "fail_fast",
        "on_complete": {"queue": "d"},
    }
    c.create_convoy("q", name="n", max_parallel=5, adaptive=None)
    assert rec.last()[2]["body"] == {"queue": "q", "sealed": True, "name": "n", "max_parallel": 5}
    c.create_convoy("q", adaptive={"min": 2, "max": 3})
    assert rec.last()[2]["body"]["max_parallel"] == {"adaptive": {"min": 2, "max": 3}}

    c.add_convoy_members("a/b", [{"payload": 1, "unique_key": "k"}])
    method, path, kw = rec.last()
    assert (method, path, kw["retry"]) == ("POST", "/v1/convoys/a%2Fb/members", ALWAYS)
    assert kw["body"] == {"members": [{"payload": 1, "unique_key": "k"}]}
    c.add_convoy_members("c1", [{"payload": 1, "unique_key": "k"}, {"payload": 2}])
    assert rec.last()[2]["retry"] == REFUSED, "a member without a key could be added twice"

    c.seal_convoy("c1")
    assert rec.last()[:2] == ("POST", "/v1/convoys/c1/seal")
    c.cancel_convoy("c1")
    assert rec.last()[:2] == ("POST", "/v1/convoys/c1/cancel")
    c.get_convoy("c1")
    assert rec.last()[:2] == ("GET", "/v1/convoys/c1") and not rec.last()[2]["params"]
    c.get_convoy("c1", wait_ms=0)
    assert rec.last()[2]["params"] == {"wait_ms": 0}
    c.get_convoy("c1", wait_ms=5000)
    assert rec.last()[2]["params"] == {"wait_ms": 5000} and rec.last()[2]["wait_ms"] == 5000
    c.list_convoys(state="open", limit=2)
    assert rec.last()[:2] == ("GET", "/v1/convoys")
    assert rec.last()[2]["params"] == {"state": "open", "limit": 2}
    c.list_convoys(queue="q", cursor="abc")
    assert rec.last()[2]["params"] == {"queue": "q", "cursor": "abc"}
    c.convoy_members("c1", state="held", limit=5, cursor="x")
    assert rec.last()[:2] == ("GET", "/v1/convoys/c1/members")
    assert rec.last()[2]["params"] == {"state": "held", "limit": 5, "cursor": "x"}

    with pytest.raises(ValueError):
        c.create_convoy("q", max_parallel=3, adaptive=(1, 3))
    with pytest.raises(ValueError):
        c.create_convoy("q", adaptive=[1])
    assert len(rec.calls) == 14, "refused arguments send nothing"


def test_pressure_is_sent_only_when_given() -> None:
    rec = _Recorder()
    c = ferry.Client("http://127.0.0.1:9", token="t", name="wire")
    c._t.close()
    c._t = rec  # type: ignore[assignment]

    c.complete("j", "l")
    assert rec.last()[2]["body"] == {"lease": "l"}
    c.complete("j", "l", {"r": 1}, pressure=0.5)
    assert rec.last()[2]["body"] == {"lease": "l", "result": {"r": 1}, "pressure": 0.5}
    c.complete("j", "l", pressure=0.0)
    assert rec.last()[2]["body"] == {"lease": "l", "pressure": 0.0}, "0.0 is a pressure too"
    c.fail("j", "l", "e")
    assert "pressure" not in rec.last()[2]["body"]
    c.fail("j", "l", "e", retry=False, pressure=1.0)
    assert rec.last()[2]["body"] == {"lease": "l", "error": "e", "retry": False, "pressure": 1.0}
    c.heartbeat("j", "l")
    assert "pressure" not in rec.last()[2]["body"]
    c.heartbeat("j", "l", extend_ms=100, pressure=0.75)
    assert rec.last()[2]["body"] == {"lease": "l", "extend_ms": 100, "worker": "wire", "pressure": 0.75}
    c.complete("j", "l", pressure=1.5)
    assert rec.last()[2]["body"]["pressure"] == 1.5, "the server judges the range (422 `pressure`)"


def test_the_async_client_sends_the_same() -> None:
    async def run() -> list[tuple[str, str, dict[str, Any]]]:
        rec = _AsyncRecorder()
        c = ferry.AsyncClient("http://127.0.0.1:9", token="t", name="wire")
        await c.aclose()
        c._t = rec  # type: ignore[assignment]
        await c.create_convoy("q", [{"payload": 1}], id="c1", max_parallel=2, on_complete={"queue": "d"})
        await c.add_convoy_members("c1", [{"payload": 2}])
        await c.seal_convoy("c1")
        await c.cancel_convoy("c1")
        await c.get_convoy("c1", wait_ms=10)
        await c.list_convoys(state="failed")
        await c.convoy_members("c1", limit=1)
        await c.complete("j", "l", pressure=0.2)
        await c.fail("j", "l", "e", pressure=0.3)
        await c.heartbeat("j", "l", pressure=0.4)
        return rec.calls

    calls = asyncio.run(run())
    assert [(m, p) for m, p, _ in calls] == [
        ("POST", "/v1/convoys"),
        ("POST", "/v1/convoys/c1/members"),
        ("POST", "/v1/convoys/c1/seal"),
        ("POST", "/v1/convoys/c1/cancel"),
        ("GET", "/v1/convoys/c1"),
        ("GET", "/v1/convoys"),
        ("GET", "/v1/convoys/c1/members"),
        ("POST", "/v1/jobs/j/complete"),
        ("POST", "/v1/jobs/j/fail"),
        ("POST", "/v1/jobs/j/heartbeat"),
    ]
    assert calls[0][2]["body"] == {
        "queue": "q",
        "sealed": True,
        "members": [{"payload": 1}],
        "id": "c1",
        "max_parallel": 2,
        "on_complete": {"queue": "d"},
    }
    assert calls[1][2]["retry"] == REFUSED
    assert calls[4][2]["params"] == {"wait_ms": 10} and calls[4][2]["wait_ms"] == 10
    assert [kw["body"]["pressure"] for _, _, kw in calls[7:]] == [0.2, 0.3, 0.4]
