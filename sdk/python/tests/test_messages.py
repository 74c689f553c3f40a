"""Agent messages against the real server: send → receive → ack (a second ack of a receipt is
`stale_lease`), nack and visibility bringing a message back with `delivery_count` + 1,
`dedup_key` duplicates, broadcasts (each subscriber once, never the sender, new subscribers at
the head), channels, the agent list, dead letters after `[messages] max_deliveries` and their
replay, tokens restricted to agents, the 429s (`rate_limited`, `queue_full`), validation; the
async client on the same flow."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

import ferry
from ferry.testing import FerryServer

pytestmark = pytest.mark.timeout(60)

E = TypeVar("E", bound=ferry.FerryError)


def _raises(cls: type[E], fn: Callable[[], Any]) -> E:
    with pytest.raises(cls) as info:
        fn()
    return info.value


def test_send_receive_ack(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    sent = c.send_message("bob", "ann", {"n": 1}, reply_to="ann", correlation_id="conv-1")
    assert uuid.UUID(sent["id"]) and sent["expires_at"]
    assert sent["recipients"] == [{"agent": "bob", "last_seen_at": None}], "bob never received"
    assert "duplicate" not in sent
    c.send_message(["bob"], "ann", "two")
    c.send_message("bob", "ann", None)  # a JSON null body

    got = c.receive("bob", max=10)
    assert [m["body"] for m in got] == [{"n": 1}, "two", None], "oldest first"
    first = got[0]
    assert (first["id"], first["kind"], first["from"]) == (sent["id"], "direct", "ann")
    assert (first["reply_to"], first["correlation_id"]) == ("ann", "conv-1")
    assert first["delivery_count"] == 1 and first["receipt"] and first["sent_at"]
    assert first["expires_at"]
    assert "channel" not in first and "reply_to" not in got[1] and "correlation_id" not in got[1]
    assert len({m["receipt"] for m in got}) == 3
    assert c.receive("bob", max=10) == [], "received messages are hidden while visible"

    acked = c.ack("bob", [m["receipt"] for m in got])
    assert acked == [{"id": m["id"], "ok": True} for m in got]
    again = c.ack("bob", first["receipt"])
    assert len(again) == 1 and again[0]["id"] == first["id"] and again[0]["ok"] is False
    assert again[0]["error"]["code"] == "stale_lease"
    assert c.receive("bob", max=10) == [], "an acked message is never delivered again"

    later = c.send_message("bob", "ann", 4)
    assert later["recipients"][0]["agent"] == "bob" and later["recipients"][0]["last_seen_at"]


def test_nack_and_visibility_bring_a_message_back(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    sent = c.send_message("bob", "ann", "x")
    m1 = c.receive("bob")[0]
    assert c.nack("bob", [m1["receipt"]]) == [{"id": sent["id"], "ok": True}]
    m2 = c.receive("bob")[0]
    assert (m2["id"], m2["delivery_count"]) == (sent["id"], 2)
    assert m2["receipt"] != m1["receipt"]
    stale = c.nack("bob", m1["receipt"])[0]
    assert stale["ok"] is False and stale["error"]["code"] == "stale_lease"
    assert c.ack("bob", m1["receipt"])[0]["ok"] is False, "the old receipt went stale"

    # A delayed nack: visible again after delay_ms.
    started = time.monotonic()
    assert c.nack("bob", m2["receipt"], delay_ms=500)[0]["ok"] is True
    assert c.receive("bob") == []
    deadline = time.monotonic() + 10
    while not (back := c.receive("bob")):
        assert time.monotonic() < deadline, "the nacked message comes back"
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.4
    assert (back[0]["id"], back[0]["delivery_count"]) == (sent["id"], 3)

    # Visibility ends unacked: delivered again, the old receipt stale.
    c.send_message("carol", "ann", "y")
    v1 = c.receive("carol", visibility_ms=200)[0]
    time.sleep(0.5)
    v2 = c.receive("carol", max=10)
    assert [(m["id"], m["delivery_count"]) for m in v2] == [(v1["id"], 2)]
    assert c.ack("carol", v1["receipt"])[0]["error"]["code"] == "stale_lease"
    assert c.ack("carol", v2[0]["receipt"])[0]["ok"] is True


def test_a_repeated_dedup_key_is_a_duplicate(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    first = c.send_message(["bob", "carol"], "ann", {"v": 1}, dedup_key="k1")
    assert "duplicate" not in first
    again = c.send_message(["bob", "carol"], "ann", {"v": 1}, dedup_key="k1")
    assert again["duplicate"] is True
    assert (again["id"], again["expires_at"], again["recipients"]) == (
        first["id"],
        first["expires_at"],
        first["recipients"],
    ), "the first answer"
    other = c.send_message("bob", "dan", {"v": 1}, dedup_key="k1")
    assert other["id"] != first["id"] and "duplicate" not in other, "keys are per sender"
    fresh = c.send_message("bob", "ann", {"v": 2}, dedup_key="k2")
    assert fresh["id"] != first["id"]
    assert [m["id"] for m in c.receive("bob", max=10)] == [first["id"], other["id"], fresh["id"]]
    assert [m["id"] for m in c.receive("carol", max=10)] == [first["id"]]


def test_a_broadcast_reaches_each_subscriber_once_and_never_its_sender(
    ferry_server_any: FerryServer,
) -> None:
    c = ferry_server_any.client()
    for agent in ("ann", "bob", "carol"):
        assert c.receive(agent) == []  # the inbox exists, at the head of channel `all`
    b = c.broadcast("ann", {"alert": 1})
    assert b["channel"] == "all" and isinstance(b["seq"], int) and uuid.UUID(b["id"]) and b["expires_at"]
    for agent in ("bob", "carol"):
        got = c.receive(agent, max=10)
        assert len(got) == 1, agent
        m = got[0]
        assert (m["id"], m["kind"], m["channel"], m["from"], m["body"], m["delivery_count"]) == (
            b["id"],
            "broadcast",
            "all",
            "ann",
            {"alert": 1},
            1,
        )
        assert c.ack(agent, m["receipt"]) == [{"id": b["id"], "ok": True}]
        assert c.receive(agent, max=10) == [], "once"
    assert c.receive("ann", max=10) == [], "never to its sender"
    assert c.receive("dave", max=10) == [], "a new inbox starts at the head"

    # Under the direct contract: a nacked broadcast comes back to that agent only.
    b2 = c.broadcast("ann", "again")
    m = c.receive("bob")[0]
    assert c.nack("bob", m["receipt"])[0]["ok"] is True
    back = c.receive("bob")[0]
    assert (back["id"], back["delivery_count"]) == (b2["id"], 2)
    assert [x["id"] for x in c.receive("carol", max=10)] == [b2["id"]]
    assert [x["id"] for x in c.receive("dave", max=10)] == [b2["id"]]


def test_channels(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    assert c.receive("bob") == []
    chans = c.set_channels("bob", ["news", "all"])
    assert sorted(ch["channel"] for ch in chans) == ["all", "news"]
    assert all(isinstance(ch["seq"], int) for ch in chans)
    news = c.broadcast("ann", "headline", channel="news")
    assert news["channel"] == "news"
    got = c.receive("bob", max=10)
    assert [(m["id"], m["channel"]) for m in got] == [(news["id"], "news")]
    assert c.ack("bob", got[0]["receipt"])[0]["ok"] is True
    all_seq = next(ch["seq"] for ch in chans if ch["channel"] == "all")
    cursors = sorted(c.get_agent("bob")["channels"], key=lambda ch: ch["channel"])
    assert cursors == [
        {"channel": "all", "seq": all_seq},
        {"channel": "news", "seq": news["seq"]},
    ], "the cursor passed the acked broadcast"

    # `all` may be dropped.
    assert [ch["channel"] for ch in c.set_channels("bob", ["news"])] == ["news"]
    c.broadcast("ann", "to everyone")
    assert c.receive("bob", max=10) == []
    assert [ch["channel"] for ch in c.get_agent("bob")["channels"]] == ["news"]

    # A new subscriber starts at the channel's head: older broadcasts are not received.
    ops = c.broadcast("ann", "old news", channel="ops")
    assert c.set_channels("carol", ["ops"]) == [{"channel": "ops", "seq": ops["seq"]}]
    assert c.receive("carol", max=10) == []
    newer = c.broadcast("ann", "new news", channel="ops")
    assert [m["id"] for m in c.receive("carol", max=10)] == [newer["id"]]
    assert c.set_channels("dave", []) == []
    assert c.get_agent("dave")["channels"] == []


def test_agents_list_and_show(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.send_message("bob", "ann", 1)
    c.send_message("bob", "ann", 2)
    c.send_message("carol", "ann", 3)
    got = c.receive("bob")
    assert len(got) == 1

    bob = c.get_agent("bob")
    assert (bob["name"], bob["ready"], bob["in_flight"], bob["dead"]) == ("bob", 1, 1, 0)
    assert bob["last_seen_at"] and [ch["channel"] for ch in bob["channels"]] == ["all"]
    carol = c.get_agent("carol")
    assert (carol["ready"], carol["in_flight"], carol["dead"], carol["last_seen_at"]) == (1, 0, 0, None)
    ann = c.get_agent("ann")  # named as a sender: it has an inbox too
    assert (ann["ready"], ann["in_flight"], ann["dead"]) == (0, 0, 0)

    rows = list(c.list_agents())
    assert [r["name"] for r in rows] == ["ann", "bob", "carol"], "by name"
    assert rows[1] == {
        "name": "bob",
        "ready": 1,
        "in_flight": 1,
        "dead": 0,
        "last_seen_at": bob["last_seen_at"],
    }, "no channels in the list"
    page = c.list_agents(page_size=2).page()
    assert [r["name"] for r in page["agents"]] == ["ann", "bob"] and page["next_cursor"]
    rest = c.list_agents(cursor=page["next_cursor"]).all()
    assert [r["name"] for r in rest] == ["carol"]
    assert len(list(c.list_agents(limit=1))) == 1
    with pytest.raises(ferry.NotFound):
        c.get_agent("nobody")

    c.ack("bob", got[0]["receipt"])
    bob = c.get_agent("bob")
    assert (bob["ready"], bob["in_flight"]) == (1, 0)


def test_dead_letters_after_max_deliveries_and_replay(ferry_server_factory: Any) -> None:
    server: FerryServer = ferry_server_factory(config={"messages": {"max_deliveries": 2}})
    c = server.client()
    ids = [c.send_message("bob", "ann", {"n": n})["id"] for n in range(2)]
    # carol alone reads channel `ch` (bob's inbox, made by the sends, reads only `all`).
    assert c.set_channels("carol", ["ch"])[0]["channel"] == "ch"
    cast_ = c.broadcast("ann", "b", channel="ch")
    for count in (1, 2):
        got = c.receive("bob", max=10)
        assert [(m["id"], m["delivery_count"]) for m in got] == [(i, count) for i in ids]
        assert all(r["ok"] for r in c.nack("bob", [m["receipt"] for m in got]))
        bgot = c.receive("carol", max=10)
        assert [(m["id"], m["delivery_count"]) for m in bgot] == [(cast_["id"], count)]
        assert c.nack("carol", bgot[0]["receipt"])[0]["ok"] is True
    assert c.receive("bob", max=10) == [], "past max_deliveries: dead, not delivered"
    assert c.receive("carol", max=10) == []

    dead = {d["id"]: d for d in c.dead_messages("bob")}
    assert sorted(dead) == sorted(ids)
    assert all((d["kind"], d["from"], d["delivery_count"]) == ("direct", "ann", 2) for d in dead.values())
    first = dead[ids[0]]
    assert first["body"] == {"n": 0} and first["dead_at"] and first["sent_at"] and "receipt" not in first
    page = c.dead_messages("bob", page_size=1).page()
    assert len(page["messages"]) == 1 and page["next_cursor"]
    rest = c.dead_messages("bob", cursor=page["next_cursor"]).all()
    assert [d["id"] for d in page["messages"] + rest] == [d["id"] for d in list(c.dead_messages("bob"))]
    bdead = list(c.dead_messages("carol"))
    assert [(d["id"], d["kind"], d["channel"]) for d in bdead] == [(cast_["id"], "broadcast", "ch")]
    bob = c.get_agent("bob")
    assert (bob["ready"], bob["in_flight"], bob["dead"]) == (0, 0, 2)

    # One `message.dead` event per dead letter, about the agent.
    deadline = time.monotonic() + 10
    while True:
        events = c.poll_events(since=0, type="message.dead", wait_ms=500)["events"]
        if len(events) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_agent = sorted((e["subject"]["id"], e["data"]["id"]) for e in events if e["data"])
    assert by_agent == sorted([("bob", ids[0]), ("bob", ids[1]), ("carol", cast_["id"])])
    assert all(e["subject"]["kind"] == "agent" for e in events)

    # Replay: by id, then the rest; the delivery count starts again.
    assert c.replay_dead("bob", [ids[0]]) == 1
    got = c.receive("bob", max=10)
    assert [(m["id"], m["delivery_count"]) for m in got] == [(ids[0], 1)]
    assert c.ack("bob", got[0]["receipt"])[0]["ok"] is True
    assert c.replay_dead("bob") == 1
    assert [m["id"] for m in c.receive("bob", max=10)] == [ids[1]]
    assert list(c.dead_messages("bob")) == []
    assert c.replay_dead("bob") == 0
    assert c.replay_dead("carol") == 1
    assert [m["id"] for m in c.receive("carol", max=10)] == [cast_["id"]]


def test_a_token_restricted_to_agents(ferry_server: FerryServer) -> None:
    admin = ferry_server.client()
    tok = admin.create_token("ann-only", ["messages", "read"], agents=["ann"])
    assert tok["token"] and tok.get("agents") == ["ann"]
    listed = next(t for t in admin.tokens() if t["id"] == tok["id"])
    assert listed.get("agents") == ["ann"]
    admin.send_message("bob", "carol", "for bob")
    with ferry.Client(ferry_server.url, tok["token"], retries=0) as ann:
        assert ann.send_message("bob", "ann", "hi")["recipients"][0]["agent"] == "bob"
        assert _raises(ferry.Forbidden, lambda: ann.send_message("bob", "bob", "spoof")).status == 403
        _raises(ferry.Forbidden, lambda: ann.broadcast("bob", "spoof"))
        _raises(ferry.Forbidden, lambda: ann.receive("bob"))
        _raises(ferry.Forbidden, lambda: ann.receive("nobody"))  # alike for unknown agents
        _raises(ferry.Forbidden, lambda: ann.ack("bob", ["0" * 32 + ".1"]))
        _raises(ferry.Forbidden, lambda: ann.set_channels("bob", ["x"]))
        _raises(ferry.Forbidden, lambda: ann.dead_messages("bob").page())
        _raises(ferry.Forbidden, lambda: ann.replay_dead("bob"))
        assert ann.receive("ann") == []
        assert [a["name"] for a in ann.list_agents()] == ["ann"], "only its own agents"
    assert [a["name"] for a in admin.list_agents()] == ["ann", "bob", "carol"]
    assert len(admin.receive("bob", max=10)) == 2


def test_the_sending_agents_rate_limit(ferry_server_factory: Any) -> None:
    server: FerryServer = ferry_server_factory(config={"messages": {"rate_per_min": 60, "rate_burst": 2}})
    c = server.client(retries=0)
    c.send_message("bob", "ann", 1)
    c.broadcast("ann", 2)  # a broadcast takes a token too (bob reads channel `all`)
    err = _raises(ferry.RateLimited, lambda: c.send_message("bob", "ann", 3))
    assert err.status == 429 and err.code == "rate_limited"
    assert err.retry_after is not None and err.retry_after >= 1
    _raises(ferry.RateLimited, lambda: c.broadcast("ann", 4))
    c.send_message("bob", "carl", 5)  # each sender has its own bucket

    # A refused send wrote nothing, so the client waits it out (Retry-After) and sends.
    started = time.monotonic()
    c2 = server.client()
    c2.send_message("bob", "ann", 6)
    assert time.monotonic() - started >= 0.5
    assert sorted(m["body"] for m in c.receive("bob", max=10)) == [1, 2, 5, 6]


def test_a_full_inbox_refuses_the_whole_send(ferry_server_factory: Any) -> None:
    server: FerryServer = ferry_server_factory(config={"limits": {"max_inbox_depth": 2}})
    c = server.client(retries=0)
    c.send_message("bob", "ann", 1)
    c.send_message("bob", "ann", 2)
    full = _raises(ferry.QueueFull, lambda: c.send_message(["carol", "bob"], "ann", 3))
    assert full.status == 429 and full.details and full.details["agent"] == "bob"
    assert c.receive("carol", max=10) == [], "nothing was written for any recipient"
    got = c.receive("bob", max=10)
    assert len(got) == 2
    _raises(ferry.QueueFull, lambda: c.send_message("bob", "ann", 3))  # in flight counts
    c.ack("bob", [m["receipt"] for m in got])
    c.send_message(["carol", "bob"], "ann", 3)
    assert [m["body"] for m in c.receive("carol", max=10)] == [3]


def test_invalid_input_names_its_field(ferry_server: FerryServer) -> None:
    c = ferry_server.client()

    def field(fn: Callable[[], Any]) -> str | None:
        return _raises(ferry.ValidationFailed, fn).field

    assert field(lambda: c.send_message("x/y", "ann", 1)) == "to[0]"
    assert field(lambda: c.send_message([], "ann", 1)) == "to"
    assert field(lambda: c.send_message([f"a{i}" for i in range(101)], "ann", 1)) == "to"
    assert field(lambda: c.send_message("bob", "", 1)) == "from"
    assert field(lambda: c.send_message("bob", "ann", 1, ttl_ms=0)) == "ttl_ms"
    assert field(lambda: c.send_message("bob", "ann", 1, reply_to="a b")) == "reply_to"
    assert field(lambda: c.send_message("bob", "ann", 1, dedup_key="k" * 257)) == "dedup_key"
    big = "x" * 262_145
    assert _raises(ferry.PayloadTooLarge, lambda: c.send_message("bob", "ann", big)).field == "body"
    assert field(lambda: c.broadcast("ann", 1, channel="a/b")) == "channel"
    assert field(lambda: c.receive("bob", max=0)) == "max"
    assert field(lambda: c.receive("bob", visibility_ms=1)) == "visibility_ms"
    assert field(lambda: c.ack("bob", ["x"])) == "receipts[0]"
    assert field(lambda: c.nack("bob", [])) == "receipts"
    assert field(lambda: c.set_channels("bob", ["a b"])) == "channels[0]"


def test_the_async_client(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with ferry_server.async_client(name="async-messages") as c:
            assert await c.receive("bob") == []
            waiter = asyncio.create_task(c.receive("bob", max=10, wait_ms=10_000))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            sent = await c.send_message("bob", "ann", {"hello": True})
            got = await asyncio.wait_for(waiter, 10)
            assert time.monotonic() - started < 5, "a waiting receive wakes on the send"
            assert [(m["id"], m["body"]) for m in got] == [(sent["id"], {"hello": True})]
            assert (await c.ack("bob", [got[0]["receipt"]]))[0]["ok"] is True
            stale = (await c.ack("bob", got[0]["receipt"]))[0]
            assert stale["ok"] is False and stale["error"]["code"] == "stale_lease"

            b = await c.broadcast("ann", "all hands")
            m = (await c.receive("bob"))[0]
            assert (m["id"], m["kind"]) == (b["id"], "broadcast")
            assert (await c.nack("bob", m["receipt"]))[0]["ok"] is True
            again = (await c.receive("bob"))[0]
            assert (again["id"], again["delivery_count"]) == (b["id"], 2)
            await c.ack("bob", again["receipt"])
            assert await c.receive("ann") == []

            assert [a["name"] async for a in c.list_agents()] == ["ann", "bob"]
            assert (await c.list_agents(page_size=1).page())["agents"][0]["name"] == "ann"
            bob = await c.get_agent("bob")
            assert (bob["ready"], bob["in_flight"], bob["dead"]) == (0, 0, 0)
            chans = await c.set_channels("bob", ["all", "x"])
            assert sorted(ch["channel"] for ch in chans) == ["all", "x"]
            assert (await c.dead_messages("bob").page())["messages"] == []
            assert await c.dead_messages("bob").all() == []
            assert await c.replay_dead("bob") == 0
            dup = await c.send_message("bob", "ann", 1, dedup_key="d")
            assert (await c.send_message("bob", "ann", 1, dedup_key="d"))["id"] == dup["id"]

    asyncio.run(run())
