"""The ledger against the real server: accounts (create, a repeat as `duplicate`, other fields a
`conflict` naming them, batches all or nothing, close, pages, limits one past their edge),
transfers refused by flags (`exceeds_credits`, `exceeds_debits`, `account_closed`, `overflow`)
and a refused id remembered (`id_already_failed` with `original_reason`), two-phase transfers
(partial post, void, repeats, timeouts expiring and releasing their hold), atomic batches
writing nothing on one bad item (`details.index`), non-atomic batches answering per item, the
statement and the audit trail paged with the hash chain checked here, verify, scopes, paid jobs
(a hold from the payer, posted and paid to `worker:<name>` on completion, voided when the job is
cancelled or dies, held again on a DLQ replay); the async client on the same flow; and what each
method sends (no server)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import pytest

import ferry
from ferry._http import ALWAYS, NEVER, REFUSED
from ferry.testing import FerryServer

pytestmark = pytest.mark.timeout(60)

E = TypeVar("E", bound=ferry.FerryError)

MAX_AMOUNT = 2**53 - 1
FLAG_DEBITS = "debits_must_not_exceed_credits"
FLAG_CREDITS = "credits_must_not_exceed_debits"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _raises(cls: type[E], fn: Callable[[], Any]) -> E:
    with pytest.raises(cls) as info:
        fn()
    return info.value


def _reason(err: ferry.FerryError) -> Any:
    return (err.details or {}).get("reason")


def _refused(fn: Callable[[], Any], reason: str) -> ferry.InvalidState:
    err = _raises(ferry.InvalidState, fn)
    assert (err.status, err.code, _reason(err)) == (409, "invalid_state", reason), err.details
    return err


def _field(fn: Callable[[], Any]) -> str | None:
    err = _raises(ferry.ValidationFailed, fn)
    assert err.status == 422
    return err.field


def _balances(a: dict[str, Any]) -> tuple[int, int, int, int, int, int]:
    """(debits_posted, credits_posted, debits_pending, credits_pending, balance, available)"""
    sums = (a["debits_posted"], a["credits_posted"], a["debits_pending"], a["credits_pending"])
    assert a["balance"] == a["credits_posted"] - a["debits_posted"]
    assert a["available"] == a["balance"] - a["debits_pending"]
    return (*sums, a["balance"], a["available"])


def _sums(c: ferry.Client, account: str) -> tuple[int, int, int, int, int, int]:
    """An account's balances now (see `_balances`)."""
    return _balances(c.get_account(account))


def _ms(rfc3339: str) -> int:
    """Epoch milliseconds of an RFC 3339 UTC time as the server writes it (`...T..:..:..mmmZ`)."""
    at = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (at - EPOCH) // timedelta(milliseconds=1)


def _all_events(c: ferry.Client, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        page = c.ledger_events(limit=limit, cursor=cursor)
        assert len(page["events"]) <= limit
        rows.extend(page["events"])
        cursor = page.get("next_cursor")
        if not cursor:
            return rows
    raise AssertionError("the event pages end")


def _statement(c: ferry.Client, account: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        page = c.statement(account, limit=limit, cursor=cursor)
        assert len(page["transfers"]) <= limit
        rows.extend(page["transfers"])
        cursor = page.get("next_cursor")
        if not cursor:
            return rows
    raise AssertionError("the statement pages end")


def _all_accounts(c: ferry.Client, limit: int, ledger: int | None = None) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        page = c.list_accounts(ledger=ledger, limit=limit, cursor=cursor)
        assert len(page["accounts"]) <= limit
        ids.extend(a["id"] for a in page["accounts"])
        cursor = page.get("next_cursor")
        if not cursor:
            return ids
    raise AssertionError("the account pages end")


def _check_chain(events: list[dict[str, Any]]) -> None:
    """The audit trail as a client can check it: `seq` 1, 2, 3, ... and each `hash` the SHA-256
    of the previous hash (32 zero bytes first) and `"{seq}\\n{type}\\n{at_ms}\\n{data}"`."""
    prev = bytes(32)
    for n, e in enumerate(events, 1):
        assert e["seq"] == n, "seq is gap-free from 1"
        at_ms = _ms(e["at"])
        assert e.get("at_ms", at_ms) == at_ms
        data = e["data"]
        # The stored text is serde_json's compact form, keys in order: as served.
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        assert HEX64.match(e["hash"]), e
        want = hashlib.sha256(prev + f"{e['seq']}\n{e['type']}\n{at_ms}\n{text}".encode()).hexdigest()
        assert e["hash"] == want, f"event {e['seq']} ({e['type']}) hashes as the contract says"
        prev = bytes.fromhex(e["hash"])
    assert len({e["hash"] for e in events}) == len(events)


def _fund(c: ferry.Client, bank: str, account: str, amount: int, tid: str | None = None) -> None:
    t = c.transfer(tid or f"fund-{account}-{uuid.uuid4().hex[:8]}", bank, account, amount)
    assert t["state"] == "posted"


# ---- accounts ----------------------------------------------------------------------------------


def test_accounts_are_created_once_and_a_changed_repeat_conflicts(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    made = c.create_account("alice", flags=[FLAG_DEBITS], metadata={"owner": "Alice", "tier": 2})
    assert (made["id"], made["ledger"], made["code"], made["flags"]) == ("alice", 1, 0, [FLAG_DEBITS])
    assert made["metadata"] == {"owner": "Alice", "tier": 2}
    assert _balances(made) == (0, 0, 0, 0, 0, 0)
    assert made["created_at"] and "closed_at" not in made and "duplicate" not in made

    again = c.create_account("alice", flags=[FLAG_DEBITS], metadata={"owner": "Alice", "tier": 2})
    assert again["duplicate"] is True
    assert {k: v for k, v in again.items() if k != "duplicate"} == made
    err = _raises(
        ferry.Conflict,
        lambda: c.create_account("alice", code=7, flags=[FLAG_DEBITS], metadata={"owner": "Bob"}),
    )
    assert err.status == 409 and sorted((err.details or {})["fields"]) == ["code", "metadata"]
    err = _raises(ferry.Conflict, lambda: c.create_account("alice", metadata={"owner": "Alice", "tier": 2}))
    assert (err.details or {})["fields"] == ["flags"]
    shown = c.get_account("alice")
    assert (shown["code"], shown["metadata"]) == (0, {"owner": "Alice", "tier": 2}), (
        "a conflict changes nothing"
    )

    other = c.create_account("eur-cash", ledger=978, code=10, flags="credits_must_not_exceed_debits")
    assert (other["ledger"], other["code"], other["flags"]) == (978, 10, [FLAG_CREDITS])
    assert c.get_account("eur-cash") == other
    _raises(ferry.NotFound, lambda: c.get_account("nobody"))
    _raises(ferry.NotFound, lambda: c.close_account("nobody"))

    # Closing: the flag and closed_at; again is a duplicate; a closed account takes no transfer.
    c.create_account("bank")
    _fund(c, "bank", "alice", 10)
    closed = c.close_account("alice")
    assert FLAG_DEBITS in closed["flags"] and "closed" in closed["flags"] and closed["closed_at"]
    assert "duplicate" not in closed
    assert c.close_account("alice")["duplicate"] is True
    _refused(lambda: c.transfer("to-closed", "bank", "alice", 1), "account_closed")
    _refused(lambda: c.transfer("from-closed", "alice", "bank", 1), "account_closed")
    assert c.get_account("alice")["balance"] == 10

    # Flags given as an object (`{"closed": true}`): created closed.
    [shut] = c.create_accounts([{"id": "shut", "flags": {"closed": True}}])
    assert shut["flags"] == ["closed"]
    _refused(lambda: c.transfer("to-shut", "bank", "shut", 1), "account_closed")


def test_account_input_is_checked_naming_the_field(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    assert _field(lambda: c.create_account("a b")) == "id"
    assert _field(lambda: c.create_account("")) == "id"
    assert _field(lambda: c.create_account("x/y")) == "id"
    assert _field(lambda: c.create_account("x" * 513)) == "id"
    assert c.create_account("x" * 512)["id"] == "x" * 512
    assert c.create_account("a.b_c:d%20-e")["id"] == "a.b_c:d%20-e", "every allowed character"
    assert _field(lambda: c.create_account("escrow")) == "id", "ferry's own"
    assert _field(lambda: c.create_account("worker:bob")) == "id", "ferry's own"
    assert _field(lambda: c.create_account("both", flags=[FLAG_DEBITS, FLAG_CREDITS])) == "flags"
    assert _field(lambda: c.create_account("l0", ledger=0)) == "ledger"
    assert _field(lambda: c.create_account("l-big", ledger=2**32)) == "ledger"
    assert c.create_account("l-max", ledger=2**32 - 1)["ledger"] == 2**32 - 1
    assert _field(lambda: c.create_account("c-big", code=65536)) == "code"
    assert c.create_account("c-max", code=65535)["code"] == 65535
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)):
        c.create_account("odd-flag", flags=["sometimes"])

    # metadata: at most 4,096 bytes serialized (`{"k":"..."}` is 8 bytes around the text).
    assert len(json.dumps({"k": "x" * 4088}, separators=(",", ":"))) == 4096
    assert c.create_account("meta-edge", metadata={"k": "x" * 4088})["metadata"]["k"] == "x" * 4088
    err = _raises(ferry.PayloadTooLarge, lambda: c.create_account("meta-over", metadata={"k": "x" * 4089}))
    assert (err.status, err.code, err.field) == (413, "payload_too_large", "metadata")
    _raises(ferry.NotFound, lambda: c.get_account("meta-over"))
    for bad in ("both", "l0", "l-big", "c-big", "odd-flag"):
        _raises(ferry.NotFound, functools.partial(c.get_account, bad))


def test_accounts_in_a_batch_are_created_all_or_nothing(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    err: ferry.FerryError
    c.create_account("existing", code=1)
    made = c.create_accounts(
        [{"id": "b-1"}, {"id": "b-2", "ledger": 2, "metadata": {"n": 2}}, {"id": "existing", "code": 1}]
    )
    assert [a["id"] for a in made] == ["b-1", "b-2", "existing"]
    assert [a.get("duplicate", False) for a in made] == [False, False, True]
    assert (made[1]["ledger"], made[1]["metadata"]) == (2, {"n": 2})

    err = _raises(ferry.ValidationFailed, lambda: c.create_accounts([{"id": "b-3"}, {"id": "bad id"}]))
    assert err.field == "accounts[1].id" and (err.details or {}).get("index") == 1
    err = _raises(ferry.Conflict, lambda: c.create_accounts([{"id": "b-4"}, {"id": "existing", "code": 2}]))
    assert (err.details or {}).get("index") == 1 and (err.details or {})["fields"] == ["code"]
    err = _raises(ferry.ValidationFailed, lambda: c.create_accounts([{"id": "b-5"}, {"id": "escrow"}]))
    assert err.field == "accounts[1].id" and (err.details or {}).get("index") == 1
    err = _raises(
        ferry.PayloadTooLarge,
        lambda: c.create_accounts([{"id": "b-6"}, {"id": "b-7", "metadata": {"k": "x" * 4089}}]),
    )
    assert err.field == "accounts[1].metadata" and (err.details or {}).get("index") == 1
    for never in ("b-3", "b-4", "b-5", "b-6", "b-7"):
        _raises(ferry.NotFound, functools.partial(c.get_account, never))
    assert c.get_account("existing")["code"] == 1
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)):
        c.create_accounts([])


def test_accounts_are_listed_by_id_in_pages(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    mine = {"acct-c": 7, "acct-a": 7, "acct-e": 7, "acct-b": 1, "acct-d": 1}
    for name, ledger in mine.items():
        c.create_account(name, ledger=ledger)
    everything = _all_accounts(c, 100)
    assert set(mine) <= set(everything) and everything == sorted(everything), "in id order"
    assert _all_accounts(c, 1) == everything and _all_accounts(c, 2) == everything
    assert _all_accounts(c, 1, ledger=7) == ["acct-a", "acct-c", "acct-e"]
    first = c.list_accounts(ledger=7, limit=2)
    assert [a["id"] for a in first["accounts"]] == ["acct-a", "acct-c"] and first["next_cursor"]
    rest = c.list_accounts(ledger=7, limit=2, cursor=first["next_cursor"])
    assert [a["id"] for a in rest["accounts"]] == ["acct-e"] and rest.get("next_cursor") is None
    assert all(a["ledger"] == 7 for a in first["accounts"] + rest["accounts"])
    assert c.list_accounts(ledger=8)["accounts"] == []
    assert _field(lambda: c.list_accounts(limit=1001)) == "limit"


# ---- transfers ---------------------------------------------------------------------------------


def test_flags_refuse_a_transfer_and_its_id_stays_refused(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    err: ferry.FerryError
    c.create_account("bank")  # no flags: may go negative
    c.create_account("alice", flags=[FLAG_DEBITS])
    c.create_account("shop")

    t = c.transfer("t1", "bank", "alice", 100, code=5, metadata={"memo": "café"})
    assert (t["id"], t["debit_account"], t["credit_account"], t["amount"]) == ("t1", "bank", "alice", 100)
    assert (t["ledger"], t["code"], t["metadata"], t["pending"]) == (1, 5, {"memo": "café"}, False)
    assert (t["state"], t["posted_amount"]) == ("posted", 100)
    assert isinstance(t["seq"], int) and t["created_at"] and "reason" not in t and "duplicate" not in t
    assert _sums(c, "bank") == (100, 0, 0, 0, -100, -100)
    assert _sums(c, "alice") == (0, 100, 0, 0, 100, 100)

    # One more than alice holds: refused, and the refusal is kept under its id.
    err = _refused(lambda: c.transfer("t2", "alice", "shop", 101), "exceeds_credits")
    assert err.status == 409
    refused = c.get_transfer("t2")
    assert (refused["state"], refused["reason"], refused["amount"]) == ("refused", "exceeds_credits", 101)
    assert "seq" not in refused and "posted_amount" not in refused
    err = _refused(lambda: c.transfer("t2", "alice", "shop", 101), "id_already_failed")
    assert (err.details or {})["original_reason"] == "exceeds_credits"
    err = _refused(lambda: c.transfer("t2", "alice", "shop", 5), "id_already_failed")
    assert (err.details or {})["original_reason"] == "exceeds_credits", "whatever the fields"
    _refused(lambda: c.post_transfer("t2"), "not_pending")
    _refused(lambda: c.void_transfer("t2"), "not_pending")
    assert _sums(c, "alice") == (0, 100, 0, 0, 100, 100), "a refusal moves nothing"

    # Exactly what it holds: never negative.
    assert c.transfer("t3", "alice", "shop", 100)["state"] == "posted"
    assert _sums(c, "alice") == (100, 100, 0, 0, 0, 0)
    _refused(lambda: c.transfer("t4", "alice", "shop", 1), "exceeds_credits")

    # The mirror flag: credits may not pass debits.
    c.create_account("capped", flags=[FLAG_CREDITS])
    _refused(lambda: c.transfer("t5", "bank", "capped", 1), "exceeds_debits")
    assert c.transfer("t6", "capped", "shop", 40)["state"] == "posted"
    assert c.transfer("t7", "bank", "capped", 40)["state"] == "posted"
    _refused(lambda: c.transfer("t8", "bank", "capped", 1), "exceeds_debits")
    assert _sums(c, "capped") == (40, 40, 0, 0, 0, 0)

    # A repeat is a duplicate; other fields a conflict naming them.
    again = c.transfer("t1", "bank", "alice", 100, code=5, metadata={"memo": "café"})
    assert again["duplicate"] is True and again["seq"] == t["seq"]
    err = _raises(
        ferry.Conflict, lambda: c.transfer("t1", "bank", "alice", 99, code=5, metadata={"memo": "café"})
    )
    assert err.status == 409 and (err.details or {})["fields"] == ["amount"]
    err = _raises(
        ferry.Conflict, lambda: c.transfer("t1", "bank", "shop", 100, code=6, metadata={"memo": "café"})
    )
    assert sorted((err.details or {})["fields"]) == ["code", "credit_account"]
    assert _sums(c, "alice") == (100, 100, 0, 0, 0, 0), "a repeat moves nothing"

    # An unknown account is 404 and not remembered.
    _raises(ferry.NotFound, lambda: c.transfer("t9", "bank", "nobody", 1))
    _raises(ferry.NotFound, lambda: c.get_transfer("t9"))
    c.create_account("nobody")
    assert c.transfer("t9", "bank", "nobody", 1)["state"] == "posted"
    _raises(ferry.NotFound, lambda: c.get_transfer("no-such-transfer"))


def test_transfer_input_is_checked_naming_the_field(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    for name in ("src", "dst"):
        c.create_account(name)
    c.create_account("other-ledger", ledger=2)
    c.create_account("other-ledger-2", ledger=2)

    assert _field(lambda: c.transfer("v1", "src", "dst", 0)) == "amount"
    assert _field(lambda: c.transfer("v1", "src", "dst", -5)) == "amount"
    assert _field(lambda: c.transfer("v1", "src", "dst", MAX_AMOUNT + 1)) == "amount"
    half: Any = 5.5
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)) as info:
        c.transfer("v1", "src", "dst", half)
    assert info.value.field == "amount"
    whole: Any = 5.0
    assert c.transfer("v-whole", "src", "dst", whole)["amount"] == 5, "5.0 is the whole number 5"
    assert c.transfer("v-max", "src", "dst", MAX_AMOUNT)["amount"] == MAX_AMOUNT
    assert _field(lambda: c.transfer("v2", "src", "src", 1)) == "credit_account"
    assert _field(lambda: c.transfer("v3", "src", "other-ledger", 1)) == "ledger"
    assert _field(lambda: c.transfer("v3", "other-ledger", "other-ledger-2", 1, ledger=1)) == "ledger"
    assert c.transfer("v3", "other-ledger", "other-ledger-2", 1)["ledger"] == 2, "the accounts' ledger"
    assert _field(lambda: c.transfer("v4", "src", "dst", 1, timeout_ms=100)) == "timeout_ms"
    assert _field(lambda: c.transfer("v4", "src", "dst", 1, pending=True, timeout_ms=0)) == "timeout_ms"
    too_long = 366 * 86_400_000 + 1
    assert (
        _field(lambda: c.transfer("v4", "src", "dst", 1, pending=True, timeout_ms=too_long)) == "timeout_ms"
    )
    assert _field(lambda: c.transfer("v5", "src", "dst", 1, code=65536)) == "code"
    assert _field(lambda: c.transfer("bad id", "src", "dst", 1)) == "id"
    assert _field(lambda: c.transfer("x" * 513, "src", "dst", 1)) == "id"
    assert c.transfer("x" * 512, "src", "dst", 1)["id"] == "x" * 512
    err = _raises(
        ferry.PayloadTooLarge, lambda: c.transfer("v6", "src", "dst", 1, metadata={"k": "x" * 4089})
    )
    assert err.field == "metadata"
    assert c.transfer("v6", "src", "dst", 1, metadata={"k": "x" * 4088})["state"] == "posted"

    # Ferry's own names: `job:` transfers, `escrow`, debiting a `worker:` account.
    assert _field(lambda: c.transfer("job:x", "src", "dst", 1)) == "id"
    assert _field(lambda: c.transfer("v7", "src", "escrow", 1)) == "credit_account"
    assert _field(lambda: c.transfer("v7", "escrow", "dst", 1)) == "debit_account"
    assert _field(lambda: c.transfer("v7", "worker:bob", "dst", 1)) == "debit_account"
    for never in ("v1", "v2", "v4", "v5", "v7", "job:x"):
        _raises(ferry.NotFound, functools.partial(c.get_transfer, never))

    # Crediting a missing `worker:` account creates it (ledger 1, no flags).
    paid = c.transfer("tip", "src", "worker:gpu%20box", 7)
    assert paid["credit_account"] == "worker:gpu%20box"
    bob = c.get_account("worker:gpu%20box")
    assert (bob["ledger"], bob["flags"], bob["balance"]) == (1, [], 7)
    assert [t["id"] for t in c.statement("worker:gpu%20box")["transfers"]] == ["tip"]


@pytest.mark.timeout(120)
def test_a_sum_past_64_bits_is_refused_as_overflow(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_account("source")
    c.create_account("sink")
    batch = [
        {"id": f"big-{i}", "debit_account": "source", "credit_account": "sink", "amount": MAX_AMOUNT}
        for i in range(1025)
    ]
    # 1,024 of the largest amount fit in a signed 64-bit sum, the 1,025th does not.
    err = _refused(lambda: c.transfers(batch), "overflow")
    assert (err.details or {}).get("index") == 1024
    _raises(ferry.NotFound, lambda: c.get_transfer("big-0"))
    made = c.transfers(batch[:1024])
    assert len(made) == 1024 and {t["state"] for t in made} == {"posted"}
    top = 1024 * MAX_AMOUNT
    assert top <= 2**63 - 1 < top + MAX_AMOUNT
    assert _sums(c, "source") == (top, 0, 0, 0, -top, -top)
    _refused(lambda: c.transfer("big-1024", "source", "sink", MAX_AMOUNT), "overflow")
    assert c.get_transfer("big-1024")["reason"] == "overflow"
    assert _sums(c, "sink") == (0, top, 0, 0, top, top)
    assert c.verify_ledger()["ok"] is True


def test_pending_transfers_post_in_part_void_and_answer_repeats(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    c.create_account("shop")
    _fund(c, "bank", "alice", 100)

    p1 = c.transfer("p1", "alice", "shop", 60, pending=True)
    assert (p1["state"], p1["pending"], p1["amount"]) == ("pending", True, 60)
    assert "posted_amount" not in p1 and "expires_at" not in p1 and "settled_at" not in p1
    assert _sums(c, "alice") == (0, 100, 60, 0, 100, 40)
    assert _sums(c, "shop") == (0, 0, 0, 60, 0, 0)
    _refused(lambda: c.transfer("p-over", "alice", "shop", 41, pending=True), "exceeds_credits")
    _refused(lambda: c.transfer("d-over", "alice", "shop", 41), "exceeds_credits")  # a hold counts

    # Post part of it: the rest is released.
    posted = c.post_transfer("p1", 25)
    assert (posted["state"], posted["posted_amount"], posted["amount"]) == ("posted", 25, 60)
    assert posted["settled_at"] and "duplicate" not in posted
    assert _sums(c, "alice") == (25, 100, 0, 0, 75, 75)
    assert _sums(c, "shop") == (0, 25, 0, 0, 25, 25)
    assert c.post_transfer("p1")["duplicate"] is True, "no amount: a repeat"
    repeat = c.post_transfer("p1", 25)
    assert (repeat["duplicate"], repeat["posted_amount"]) == (True, 25)
    _refused(lambda: c.post_transfer("p1", 30), "pending_already_posted")
    _refused(lambda: c.void_transfer("p1"), "pending_already_posted")
    assert _sums(c, "alice") == (25, 100, 0, 0, 75, 75), "repeats move nothing"

    # More than held is invalid; void releases it all; repeats answer duplicate.
    c.transfer("p2", "alice", "shop", 40, pending=True)
    assert _field(lambda: c.post_transfer("p2", 41)) == "amount"
    assert _field(lambda: c.post_transfer("p2", 0)) == "amount"
    voided = c.void_transfer("p2")
    assert voided["state"] == "voided" and voided["settled_at"] and "posted_amount" not in voided
    assert c.void_transfer("p2")["duplicate"] is True
    _refused(lambda: c.post_transfer("p2"), "pending_already_voided")
    assert _sums(c, "alice") == (25, 100, 0, 0, 75, 75)

    # Posting all of it by default.
    c.transfer("p3", "alice", "shop", 75, pending=True)
    assert c.post_transfer("p3")["posted_amount"] == 75
    assert _sums(c, "alice") == (100, 100, 0, 0, 0, 0)

    # A direct transfer is not pending; unknown ones are 404.
    direct = c.transfer("d1", "bank", "shop", 1)
    _refused(lambda: c.post_transfer(direct["id"]), "not_pending")
    _refused(lambda: c.void_transfer(direct["id"]), "not_pending")
    _raises(ferry.NotFound, lambda: c.post_transfer("no-such"))
    _raises(ferry.NotFound, lambda: c.void_transfer("no-such"))
    # A repeated pending create is a duplicate even once settled.
    again = c.transfer("p1", "alice", "shop", 60, pending=True)
    assert (again["duplicate"], again["state"], again["posted_amount"]) == (True, "posted", 25)
    err = _raises(ferry.Conflict, lambda: c.transfer("p1", "alice", "shop", 60))
    assert (err.details or {})["fields"] == ["pending"]
    assert c.verify_ledger()["ok"] is True


def test_a_pending_transfer_expires_and_releases_its_hold(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    c.create_account("shop")
    _fund(c, "bank", "alice", 100)

    held = c.transfer("hold-1", "alice", "shop", 100, pending=True, timeout_ms=1000)
    assert held["state"] == "pending" and held["timeout_ms"] == 1000
    assert 0 < _ms(held["expires_at"]) - _ms(held["created_at"]) <= 1000 + 5
    assert _sums(c, "alice") == (0, 100, 100, 0, 100, 0)
    _refused(lambda: c.transfer("early", "alice", "shop", 1), "exceeds_credits")

    # Once due, the hold never counts: a write on the account expires it first.
    time.sleep(max(0.0, (_ms(held["expires_at"]) - _ms(held["created_at"])) / 1000) + 0.2)
    assert c.transfer("after", "alice", "shop", 100)["state"] == "posted"
    expired = c.get_transfer("hold-1")
    assert (expired["state"], "posted_amount" in expired) == ("expired", False) and expired["settled_at"]
    assert _sums(c, "alice") == (100, 100, 0, 0, 0, 0)
    assert _sums(c, "shop") == (0, 100, 0, 0, 100, 100)
    _refused(lambda: c.post_transfer("hold-1"), "pending_expired")
    _refused(lambda: c.void_transfer("hold-1"), "pending_expired")

    # Untouched, the expiry pass releases it.
    _fund(c, "bank", "alice", 50)
    c.transfer("hold-2", "alice", "shop", 50, pending=True, timeout_ms=100)
    deadline = time.monotonic() + 15
    while c.get_transfer("hold-2")["state"] != "expired" or c.get_account("alice")["debits_pending"]:
        assert time.monotonic() < deadline, "the pass expires a due hold ([ledger] expire_interval_ms)"
        time.sleep(0.1)
    assert _sums(c, "alice") == (100, 150, 0, 0, 50, 50)
    assert _sums(c, "shop") == (0, 100, 0, 0, 100, 100)
    types = [e["type"] for e in _all_events(c, 100)]
    assert types.count("transfer.expired") == 2
    assert c.verify_ledger(full=True)["ok"] is True


def test_an_atomic_batch_writes_nothing_on_one_bad_item(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    err: ferry.FerryError
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    c.create_account("shop")
    _fund(c, "bank", "alice", 50)
    head = c.verify_ledger()["head_seq"]

    def tr(tid: str, amount: Any, debit: str = "alice", credit: str = "shop", **kw: Any) -> dict[str, Any]:
        return {"id": tid, "debit_account": debit, "credit_account": credit, "amount": amount, **kw}

    # The second would pass alice's credits once the first applied: the batch is one write.
    err = _refused(lambda: c.transfers([tr("a1", 30), tr("a2", 30), tr("a3", 1, "bank")]), "exceeds_credits")
    assert (err.details or {}).get("index") == 1
    for tid in ("a1", "a2", "a3"):  # nothing written, not even the refusal
        _raises(ferry.NotFound, functools.partial(c.get_transfer, tid))
    assert _sums(c, "alice") == (0, 50, 0, 0, 50, 50)
    assert c.verify_ledger()["head_seq"] == head, "no event"

    err = _raises(ferry.ValidationFailed, lambda: c.transfers([tr("a1", 1), tr("a2", 1), tr("a3", 0)]))
    assert err.field == "transfers[2].amount" and (err.details or {}).get("index") == 2
    err = _raises(ferry.ValidationFailed, lambda: c.transfers([tr("a1", 1), tr("job:a2", 1)]))
    assert err.field == "transfers[1].id" and (err.details or {}).get("index") == 1
    err = _raises(ferry.NotFound, lambda: c.transfers([tr("a1", 1), tr("a2", 1, credit="nobody")]))
    assert (err.details or {}).get("index") == 1
    c.transfer("x1", "bank", "shop", 5)
    err = _raises(ferry.Conflict, lambda: c.transfers([tr("a1", 1), tr("x1", 6, "bank")]))
    assert (err.details or {}).get("index") == 1 and (err.details or {})["fields"] == ["amount"]
    _raises(ferry.NotFound, lambda: c.get_transfer("a1"))

    # The same ids are free: a refused atomic batch remembered nothing.
    made = c.transfers([tr("a1", 30), tr("a2", 20), tr("a3", 1, "bank")])
    assert [(t["id"], t["state"]) for t in made] == [("a1", "posted"), ("a2", "posted"), ("a3", "posted")]
    seqs = [t["seq"] for t in made]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert _sums(c, "alice") == (50, 50, 0, 0, 0, 0)
    again = c.transfers([tr("a1", 30), tr("a2", 20), tr("a3", 1, "bank"), tr("a4", 2, "bank")])
    assert [t.get("duplicate", False) for t in again] == [True, True, True, False]
    assert _sums(c, "shop")[1] == 5 + 30 + 20 + 1 + 2
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)):
        c.transfers([])


def test_a_non_atomic_batch_answers_each_transfer(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    c.create_account("shop")
    _fund(c, "bank", "alice", 50)
    c.transfer("n0", "alice", "shop", 10)

    items = [
        {"id": "n0", "debit_account": "alice", "credit_account": "shop", "amount": 10},
        {"id": "n1", "debit_account": "alice", "credit_account": "shop", "amount": 30},
        {"id": "n2", "debit_account": "alice", "credit_account": "shop", "amount": 30},
        {"id": "n3", "debit_account": "alice", "credit_account": "shop", "amount": 0},
        {"id": "n4", "debit_account": "alice", "credit_account": "nobody", "amount": 1},
        {"id": "n5", "debit_account": "alice", "credit_account": "shop", "amount": 10, "pending": True},
    ]
    results = c.transfers(items, atomic=False)
    assert [r["id"] for r in results] == ["n0", "n1", "n2", "n3", "n4", "n5"]
    assert [r["ok"] for r in results] == [True, True, False, False, False, True]
    dup, ok, refused, invalid, missing, held = results
    assert dup["duplicate"] is True and dup["transfer"]["id"] == "n0"
    assert not ok.get("duplicate") and ok["transfer"]["state"] == "posted"
    assert held["transfer"]["state"] == "pending"
    assert refused["error"]["code"] == "invalid_state"
    assert refused["error"]["details"]["reason"] == "exceeds_credits", "n1 applied before it"
    assert invalid["error"]["code"] == "validation_failed"
    assert str(invalid["error"].get("field", "")).endswith("amount")
    assert missing["error"]["code"] == "not_found"
    assert _sums(c, "alice") == (40, 50, 10, 0, 10, 0)

    # The refusal is kept; the 422 and the 404 are not.
    err = _refused(lambda: c.transfer("n2", "alice", "shop", 30), "id_already_failed")
    assert (err.details or {})["original_reason"] == "exceeds_credits"
    assert c.get_transfer("n2")["state"] == "refused"
    _raises(ferry.NotFound, lambda: c.get_transfer("n3"))
    _raises(ferry.NotFound, lambda: c.get_transfer("n4"))
    c.void_transfer("n5")
    assert c.transfer("n3", "alice", "shop", 10)["state"] == "posted"
    again = c.transfers(items[:3], atomic=False)
    assert [r["ok"] for r in again] == [True, True, False]
    assert [r.get("duplicate", False) for r in again] == [True, True, False]
    assert again[2]["error"]["details"]["reason"] == "id_already_failed"
    assert again[2]["error"]["details"]["original_reason"] == "exceeds_credits"


# ---- statement, audit trail, verify ------------------------------------------------------------


def test_the_statement_and_the_audit_trail_page_and_the_chain_checks_out(
    ferry_server_any: FerryServer,
) -> None:
    c = ferry_server_any.client()
    n0 = len(_all_events(c, 1000))  # ferry's own, if any (none on a fresh server)
    c.create_account("bank", metadata={"name": "Bänk", "n": [1, {"b": True, "a": None}]})
    c.create_account("alice", flags=[FLAG_DEBITS])
    c.create_account("shop", code=3)
    c.transfer("s1", "bank", "alice", 100, metadata={"why": "salary", "line\n": "tab\there"})
    c.transfer("s2", "alice", "shop", 20)
    _refused(lambda: c.transfer("s-refused", "alice", "shop", 1000), "exceeds_credits")
    c.transfer("s3", "alice", "shop", 30, pending=True)
    c.post_transfer("s3", 10)
    c.transfer("s4", "alice", "shop", 5, pending=True)
    c.void_transfer("s4")
    c.transfer("s5", "bank", "shop", 7)
    c.close_account("shop")

    rows = _statement(c, "alice", 2)
    assert [t["id"] for t in rows] == ["s1", "s2", "s3", "s4"], "oldest first, refused left out"
    assert [t["state"] for t in rows] == ["posted", "posted", "posted", "voided"]
    assert [t["seq"] for t in rows] == sorted(t["seq"] for t in rows)
    assert _statement(c, "alice", 100) == rows
    first = c.statement("alice", limit=3)
    assert [t["id"] for t in first["transfers"]] == ["s1", "s2", "s3"] and first["next_cursor"]
    assert [t["id"] for t in _statement(c, "shop", 1)] == ["s2", "s3", "s4", "s5"]
    _raises(ferry.NotFound, lambda: c.statement("nobody"))
    assert _field(lambda: c.statement("alice", limit=1001)) == "limit"

    events = _all_events(c, 3)
    assert _all_events(c, 1000) == events
    _check_chain(events)
    assert [e["type"] for e in events[n0:]] == [
        "account.created",
        "account.created",
        "account.created",
        "transfer.posted",  # s1
        "transfer.posted",  # s2
        "transfer.pending",  # s3
        "transfer.posted",  # s3 posted
        "transfer.pending",  # s4
        "transfer.voided",  # s4
        "transfer.posted",  # s5
        "account.closed",
    ]
    assert [t["seq"] - n0 for t in rows] == [4, 5, 6, 8], "a transfer's seq is the event that made it"
    page = c.ledger_events(limit=4)
    assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4] and page["next_cursor"]
    rest = c.ledger_events(cursor=page["next_cursor"])
    assert [e["seq"] for e in rest["events"]] == list(range(5, n0 + 12)) and not rest.get("next_cursor")
    assert _field(lambda: c.ledger_events(limit=1001)) == "limit"

    # Copies go to /v1/events, one per side, subject kind `account`.
    posted = c.poll_events(since=0, type="transfer.posted", limit=100)["events"]
    sides = sorted(e["subject"]["id"] for e in posted)
    assert {e["subject"]["kind"] for e in posted} == {"account"}
    assert sides == sorted(["bank", "alice", "alice", "shop", "alice", "shop", "bank", "shop"])

    verified = c.verify_ledger()
    assert (verified["ok"], verified["head_seq"], verified["problems"]) == (True, n0 + 11, [])
    assert HEX64.match(verified["digest"])
    full = c.verify_ledger(full=True)
    assert (full["ok"], full["head_seq"], full["digest"]) == (True, n0 + 11, verified["digest"])
    assert full.get("repaired") is False


def test_scopes_guard_the_ledger(ferry_server: FerryServer) -> None:
    admin = ferry_server.client()
    admin.create_account("bank")
    admin.create_account("alice")
    reader = admin.create_token("reader", ["read"])["token"]
    writer = admin.create_token("ledger-writer", ["ledger", "read"])["token"]
    with ferry.Client(ferry_server.url, reader, retries=0) as r:
        assert r.get_account("bank")["id"] == "bank"
        assert {"bank", "alice"} <= {a["id"] for a in r.list_accounts()["accounts"]}
        assert r.ledger_events()["events"]
        assert _raises(ferry.Forbidden, lambda: r.create_account("mine")).status == 403
        _raises(ferry.Forbidden, lambda: r.transfer("r1", "bank", "alice", 1))
        _raises(ferry.Forbidden, lambda: r.close_account("alice"))
        _raises(ferry.Forbidden, lambda: r.verify_ledger())
    with ferry.Client(ferry_server.url, writer, retries=0) as w:
        assert w.create_account("mine")["id"] == "mine"
        assert w.transfer("w1", "bank", "mine", 3)["state"] == "posted"
        assert w.verify_ledger(full=True)["ok"] is True
        assert _raises(ferry.Forbidden, lambda: w.verify_ledger(repair=True)).status == 403
    repaired = admin.verify_ledger(full=True, repair=True)
    assert repaired["ok"] is True and repaired["problems"] == []
    assert admin.verify_ledger()["ok"] is True


# ---- paid jobs ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_paid_job_pays_the_worker_that_completes_it(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any
    c = server.client()
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    _fund(c, "bank", "alice", 100)

    worker = ferry.Worker(server.url, token=server.token, name="gpu box", concurrency=2)

    @worker.task("paid-render")
    def render(frame: int) -> int:
        return frame * 2

    paid = render.with_options(payment={"from": "alice", "amount": 30})
    job_id = paid.enqueue(frame=21)["id"]
    hold = f"job:{job_id}:hold"
    job = c.get_job(job_id)
    assert job["state"] == "ready"
    assert dict(job)["payment"] == {"from": "alice", "amount": 30, "ledger": 1, "code": 0, "hold": hold}
    held = c.get_transfer(hold)
    assert (held["state"], held["debit_account"], held["credit_account"]) == ("pending", "alice", "escrow")
    assert (held["amount"], held["job_id"], "timeout_ms" in held) == (30, job_id, False)
    assert _sums(c, "alice") == (0, 100, 30, 0, 100, 70)
    assert _sums(c, "escrow") == (0, 0, 0, 30, 0, 0)

    worker.drain(timeout=60)
    done = c.get_job(job_id)
    assert (done["state"], done["result"]) == ("completed", 42)
    posted = c.get_transfer(hold)
    assert (posted["state"], posted["posted_amount"]) == ("posted", 30)
    pay = c.get_transfer(f"job:{job_id}:pay")
    assert (pay["debit_account"], pay["credit_account"]) == ("escrow", "worker:gpu%20box")
    assert (pay["state"], pay["amount"], pay["job_id"]) == ("posted", 30, job_id)
    assert _sums(c, "alice") == (30, 100, 0, 0, 70, 70)
    assert _sums(c, "worker:gpu%20box") == (0, 30, 0, 0, 30, 30)
    escrow = _sums(c, "escrow")
    assert escrow[2:] == (0, 0, 0, 0) and escrow[0] == escrow[1] == 30, "escrow ends at 0"
    assert c.get_account("worker:gpu%20box")["ledger"] == 1
    assert [t["id"] for t in c.statement("worker:gpu%20box")["transfers"]] == [f"job:{job_id}:pay"]

    # A second job by the plain client, completed by hand: paid once, to its completer.
    second = c.enqueue("paid-hand", {"n": 1}, payment={"from": "alice", "amount": 20, "code": 4})
    [claimed] = c.claim("paid-hand", worker="hand")
    assert c.complete(claimed["id"], claimed["lease"])["state"] == "completed"
    pay2 = c.get_transfer(f"job:{second['id']}:pay")
    assert (pay2["credit_account"], pay2["amount"], pay2["code"]) == ("worker:hand", 20, 4)
    # A repeated report answers as before (reports are idempotent); it never pays twice.
    assert c.complete(claimed["id"], claimed["lease"])["state"] == "completed"
    assert _sums(c, "worker:hand")[1] == 20, "paid once"
    assert _sums(c, "alice") == (50, 100, 0, 0, 50, 50)
    assert _sums(c, "escrow")[2:] == (0, 0, 0, 0)
    assert c.verify_ledger(full=True)["ok"] is True


def test_a_paid_enqueue_is_refused_whole(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    err: ferry.FerryError
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    _fund(c, "bank", "alice", 50)

    def count() -> int:
        return len(list(c.list_jobs("paid-q")))

    _refused(lambda: c.enqueue("paid-q", payment={"from": "alice", "amount": 51}), "exceeds_credits")
    assert count() == 0 and _sums(c, "alice") == (0, 50, 0, 0, 50, 50)
    batch = [
        {"queue": "paid-q", "payment": {"from": "alice", "amount": 30}},
        {"queue": "paid-q", "payment": {"from": "alice", "amount": 30}},
    ]
    err = _refused(lambda: c.enqueue_batch(batch), "exceeds_credits")
    assert (err.details or {}).get("index") == 1
    assert count() == 0 and _sums(c, "alice") == (0, 50, 0, 0, 50, 50), "nothing enqueued, nothing held"
    made = c.enqueue_batch([batch[0], {"queue": "paid-q", "payment": {"from": "alice", "amount": 20}}])
    assert len(made["ids"]) == 2 and count() == 2
    assert _sums(c, "alice") == (0, 50, 50, 0, 50, 0)
    assert c.enqueue("free-q", {"n": 1})["id"], "an unpaid job needs no funds"

    def field(payment: dict[str, Any]) -> str | None:
        return _field(lambda: c.enqueue("paid-q", payment=payment))

    assert field({"from": "nobody", "amount": 1}) == "payment.from"
    assert field({"from": "escrow", "amount": 1}) == "payment.from"
    assert field({"from": "worker:x", "amount": 1}) == "payment.from"
    assert field({"from": "alice", "amount": 0}) == "payment.amount"
    assert field({"from": "alice", "amount": MAX_AMOUNT + 1}) == "payment.amount"
    assert field({"from": "alice", "amount": 1, "ledger": 2}) == "payment.ledger"
    c.create_account("closed-payer")
    c.close_account("closed-payer")
    _refused(lambda: c.enqueue("paid-q", payment={"from": "closed-payer", "amount": 1}), "account_closed")
    assert count() == 2

    # Not for schedules, convoys or imports.
    scheduled = {"queue": "q", "payment": {"from": "alice", "amount": 1}}
    err = _raises(ferry.ValidationFailed, lambda: c.create_schedule("paid-s", "@daily", scheduled))
    assert "payment" in (err.field or "")
    err = _raises(
        ferry.ValidationFailed,
        lambda: c.create_convoy("q", [{"payload": 1, "payment": {"from": "alice", "amount": 1}}]),
    )
    assert "payment" in (err.field or "")
    imported = {"queue": "q", "unique_key": "i", "payment": {"from": "alice", "amount": 1}}
    err = _raises(ferry.ValidationFailed, lambda: c.import_jobs([{"job": imported, "state": "ready"}]))
    assert "payment" in (err.field or "")

    # A paid enqueue needs scopes `ledger` and `produce`.
    producer = c.create_token("producer", ["produce", "read"])["token"]
    payer = c.create_token("payer", ["produce", "ledger", "read"])["token"]
    with ferry.Client(c.url, producer, retries=0) as p:
        _raises(ferry.Forbidden, lambda: p.enqueue("paid-q", payment={"from": "bank", "amount": 1}))
        assert p.enqueue("paid-q")["id"]
    with ferry.Client(c.url, payer, retries=0) as p:
        assert p.enqueue("paid-q", payment={"from": "bank", "amount": 1})["id"]


def test_a_cancelled_or_dead_paid_job_voids_its_hold(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.create_account("bank")
    c.create_account("alice", flags=[FLAG_DEBITS])
    _fund(c, "bank", "alice", 100)

    # Cancelled: the hold is voided in the same write.
    a = c.enqueue("paid-a", payment={"from": "alice", "amount": 30})["id"]
    assert _sums(c, "alice")[5] == 70
    assert c.cancel(a, "not needed")["state"] == "cancelled"
    assert c.get_transfer(f"job:{a}:hold")["state"] == "voided"
    assert _sums(c, "alice") == (0, 100, 0, 0, 100, 100)
    assert _sums(c, "escrow")[2:] == (0, 0, 0, 0)

    # Dead: voided too; a DLQ replay holds again under a new id.
    b = c.enqueue("paid-b", payment={"from": "alice", "amount": 60}, max_attempts=1)["id"]
    [job] = c.claim("paid-b", worker="w1")
    assert c.fail(job["id"], job["lease"], "boom", retry=False)["state"] == "dead"
    assert c.get_transfer(f"job:{b}:hold")["state"] == "voided"
    assert _sums(c, "alice")[2] == 0
    replay = c.dlq_replay([b])
    assert replay["replayed"] == 1 and not cast("dict[str, Any]", replay).get("refused")
    assert cast("dict[str, Any]", c.get_job(b))["payment"]["hold"] == f"job:{b}:hold:1"
    rehold = c.get_transfer(f"job:{b}:hold:1")
    assert (rehold["state"], rehold["amount"], rehold["job_id"]) == ("pending", 60, b)
    assert _sums(c, "alice") == (0, 100, 60, 0, 100, 40)

    # Dead again, and this time alice cannot pay: the replay leaves it dead and says why.
    [job] = c.claim("paid-b", worker="w1")
    c.fail(job["id"], job["lease"], "boom again", retry=False)
    assert c.get_transfer(f"job:{b}:hold:1")["state"] == "voided"
    other = c.enqueue("paid-c", payment={"from": "alice", "amount": 50})["id"]
    replay = c.dlq_replay([b])
    refused = cast("dict[str, Any]", replay)["refused"]
    assert replay["replayed"] == 0 and [r["id"] for r in refused] == [b]
    assert refused[0]["error"]["code"] == "invalid_state"
    assert refused[0]["error"]["details"]["reason"] == "exceeds_credits"
    assert c.get_job(b)["state"] == "dead"
    assert _sums(c, "alice") == (0, 100, 50, 0, 100, 50)

    c.cancel(other)
    assert _sums(c, "alice") == (0, 100, 0, 0, 100, 100)
    escrow = _sums(c, "escrow")
    assert escrow == (0, 0, 0, 0, 0, 0), "nothing paid, every hold released"
    statement = [t["id"] for t in c.statement("escrow")["transfers"]]
    assert statement == [f"job:{a}:hold", f"job:{b}:hold", f"job:{b}:hold:1", f"job:{other}:hold"]
    assert c.verify_ledger(full=True)["ok"] is True


# ---- the async client --------------------------------------------------------------------------


def test_the_async_client(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with ferry_server.async_client(name="async-ledger") as c:
            await c.create_accounts([{"id": "bank"}, {"id": "alice", "flags": [FLAG_DEBITS]}])
            assert (await c.create_account("shop", code=2))["code"] == 2
            await c.transfer("f1", "bank", "alice", 10)
            held = await c.transfer("h1", "alice", "shop", 10, pending=True, timeout_ms=60_000)
            assert held["state"] == "pending"
            results = await c.transfers(
                [{"id": "h2", "debit_account": "alice", "credit_account": "shop", "amount": 1}], atomic=False
            )
            assert results[0]["ok"] is False and results[0]["error"]["details"]["reason"] == "exceeds_credits"
            with pytest.raises(ferry.InvalidState):
                await c.transfer("h2", "alice", "shop", 1)
            assert (await c.post_transfer("h1", 4))["posted_amount"] == 4
            h3 = {
                "id": "h3",
                "debit_account": "alice",
                "credit_account": "shop",
                "amount": 6,
                "pending": True,
            }
            made = await c.transfers([h3])
            assert (await c.void_transfer(made[0]["id"]))["state"] == "voided"
            assert (await c.get_transfer("h3"))["state"] == "voided"
            alice = await c.get_account("alice")
            assert (alice["balance"], alice["available"]) == (6, 6)
            page = await c.statement("alice", limit=2)
            assert [t["id"] for t in page["transfers"]] == ["f1", "h1"] and page["next_cursor"]
            events = (await c.ledger_events(limit=100))["events"]
            _check_chain(events)
            assert [a["id"] for a in (await c.list_accounts(ledger=1, limit=1))["accounts"]] == ["alice"]
            assert (await c.verify_ledger(full=True))["ok"] is True
            assert "closed" in (await c.close_account("shop"))["flags"]
            paid = await c.enqueue("aq", {"n": 1}, payment={"from": "alice", "amount": 6}, unique_key="k1")
            assert (await c.get_transfer(f"job:{paid['id']}:hold"))["state"] == "pending"

    asyncio.run(run())


# ---- what each method sends (no server) --------------------------------------------------------


class _Recorder:
    """A transport that records calls and answers an empty page of every list."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def call(self, method: str, path: str, **kw: Any) -> Any:
        self.calls.append((method, path, kw))
        return {"accounts": [], "transfers": [], "results": []}

    def close(self) -> None:
        pass

    def last(self) -> tuple[str, str, dict[str, Any]]:
        return self.calls[-1]


class _AsyncRecorder(_Recorder):
    async def call(self, method: str, path: str, **kw: Any) -> Any:
        return super().call(method, path, **kw)

    async def aclose(self) -> None:
        pass


def test_what_the_ledger_methods_send() -> None:
    rec = _Recorder()
    c = ferry.Client("http://127.0.0.1:9", token="t", name="wire")
    c._t.close()
    c._t = rec  # type: ignore[assignment]

    c.create_account("a")
    method, path, kw = rec.last()
    assert (method, path, kw["body"], kw["has_body"]) == ("POST", "/v1/ledger/accounts", {"id": "a"}, True)
    assert kw.get("retry", ALWAYS) == ALWAYS, "idempotent by id"
    c.create_account("a/b", ledger=2, code=3, flags="closed", metadata={"k": 1})
    assert rec.last()[2]["body"] == {
        "id": "a/b",
        "ledger": 2,
        "code": 3,
        "flags": ["closed"],
        "metadata": {"k": 1},
    }
    c.create_account("a", flags=(FLAG_DEBITS,), code=0)
    assert rec.last()[2]["body"] == {"id": "a", "code": 0, "flags": [FLAG_DEBITS]}
    assert c.create_accounts([{"id": "x"}, {"id": "y", "ledger": 2}]) == []
    assert rec.last()[:2] == ("POST", "/v1/ledger/accounts")
    assert rec.last()[2]["body"] == {"accounts": [{"id": "x"}, {"id": "y", "ledger": 2}]}

    c.close_account("worker:gpu%20box")
    assert rec.last()[:2] == ("POST", "/v1/ledger/accounts/worker%3Agpu%2520box/close")
    assert rec.last()[2].get("retry", ALWAYS) == ALWAYS
    c.get_account("a/b c")
    assert rec.last()[:2] == ("GET", "/v1/ledger/accounts/a%2Fb%20c")
    c.list_accounts()
    assert rec.last()[:2] == ("GET", "/v1/ledger/accounts") and not rec.last()[2]["params"]
    c.list_accounts(ledger=2, limit=5, cursor="abc")
    assert rec.last()[2]["params"] == {"ledger": 2, "limit": 5, "cursor": "abc"}

    c.transfer("t/1", "a", "b", 5)
    method, path, kw = rec.last()
    assert (method, path) == ("POST", "/v1/ledger/transfers")
    assert kw["body"] == {"id": "t/1", "debit_account": "a", "credit_account": "b", "amount": 5}
    assert kw.get("retry", ALWAYS) == ALWAYS, "idempotent by id"
    c.transfer("t2", "a", "b", 5, ledger=1, code=2, metadata={"m": True}, pending=True, timeout_ms=100)
    assert rec.last()[2]["body"] == {
        "id": "t2",
        "debit_account": "a",
        "credit_account": "b",
        "amount": 5,
        "ledger": 1,
        "code": 2,
        "metadata": {"m": True},
        "pending": True,
        "timeout_ms": 100,
    }
    one = {"id": "t3", "debit_account": "a", "credit_account": "b", "amount": 1}
    assert c.transfers([one]) == []
    assert rec.last()[:2] == ("POST", "/v1/ledger/transfers")
    assert rec.last()[2]["body"] == {"transfers": [one], "atomic": True}
    assert c.transfers([one], atomic=False) == []
    assert rec.last()[2]["body"] == {"transfers": [one], "atomic": False}

    c.post_transfer("p 1")
    assert rec.last()[:2] == ("POST", "/v1/ledger/transfers/p%201/post") and rec.last()[2]["body"] == {}
    c.post_transfer("p1", 7)
    assert rec.last()[2]["body"] == {"amount": 7}
    c.void_transfer("job:x")
    assert rec.last()[:2] == ("POST", "/v1/ledger/transfers/job%3Ax/void")
    c.get_transfer("t/1")
    assert rec.last()[:2] == ("GET", "/v1/ledger/transfers/t%2F1")
    c.statement("worker:a b", limit=2, cursor="9")
    assert rec.last()[:2] == ("GET", "/v1/ledger/accounts/worker%3Aa%20b/transfers")
    assert rec.last()[2]["params"] == {"limit": 2, "cursor": "9"}
    c.statement("a")
    assert not rec.last()[2]["params"]
    c.ledger_events(limit=3)
    assert rec.last()[:2] == ("GET", "/v1/ledger/events") and rec.last()[2]["params"] == {"limit": 3}
    c.verify_ledger()
    method, path, kw = rec.last()
    assert (method, path, kw["body"]) == ("POST", "/v1/ledger/verify", {"full": False, "repair": False})
    assert kw.get("retry", ALWAYS) == ALWAYS
    c.verify_ledger(full=True, repair=True)
    assert rec.last()[2]["body"] == {"full": True, "repair": True}
    assert rec.last()[2]["retry"] == REFUSED, "a repair is not repeated after a lost answer"

    # Paid enqueues: retried only with a unique_key, as any enqueue.
    c.enqueue("q", {"n": 1}, payment={"from": "alice", "amount": 5})
    method, path, kw = rec.last()
    assert (method, path, kw["retry"]) == ("POST", "/v1/jobs", NEVER)
    assert kw["body"] == {"queue": "q", "payload": {"n": 1}, "payment": {"from": "alice", "amount": 5}}
    c.enqueue("q", payment={"from": "alice", "amount": 5, "ledger": 1, "code": 2}, unique_key="k")
    assert rec.last()[2]["retry"] == ALWAYS
    assert rec.last()[2]["body"]["payment"] == {"from": "alice", "amount": 5, "ledger": 1, "code": 2}
    c.enqueue("q")
    assert "payment" not in rec.last()[2]["body"]


def test_the_async_client_sends_the_same() -> None:
    async def run() -> list[tuple[str, str, dict[str, Any]]]:
        rec = _AsyncRecorder()
        c = ferry.AsyncClient("http://127.0.0.1:9", token="t", name="wire")
        await c.aclose()
        c._t = rec  # type: ignore[assignment]
        await c.create_account("a", flags=[FLAG_DEBITS])
        await c.create_accounts([{"id": "b"}])
        await c.close_account("a")
        await c.get_account("a")
        await c.list_accounts(limit=1)
        await c.transfer("t", "a", "b", 1, pending=True)
        await c.transfers([{"id": "u"}], atomic=False)
        await c.post_transfer("t", 1)
        await c.void_transfer("t")
        await c.get_transfer("t")
        await c.statement("a")
        await c.ledger_events()
        await c.verify_ledger(full=True)
        await c.enqueue("q", payment={"from": "a", "amount": 1})
        return rec.calls

    calls = asyncio.run(run())
    assert [(m, p) for m, p, _ in calls] == [
        ("POST", "/v1/ledger/accounts"),
        ("POST", "/v1/ledger/accounts"),
        ("POST", "/v1/ledger/accounts/a/close"),
        ("GET", "/v1/ledger/accounts/a"),
        ("GET", "/v1/ledger/accounts"),
        ("POST", "/v1/ledger/transfers"),
        ("POST", "/v1/ledger/transfers"),
        ("POST", "/v1/ledger/transfers/t/post"),
        ("POST", "/v1/ledger/transfers/t/void"),
        ("GET", "/v1/ledger/transfers/t"),
        ("GET", "/v1/ledger/accounts/a/transfers"),
        ("GET", "/v1/ledger/events"),
        ("POST", "/v1/ledger/verify"),
        ("POST", "/v1/jobs"),
    ]
    assert calls[0][2]["body"] == {"id": "a", "flags": [FLAG_DEBITS]}
    assert calls[5][2]["body"]["pending"] is True
    assert calls[6][2]["body"] == {"transfers": [{"id": "u"}], "atomic": False}
    assert calls[7][2]["body"] == {"amount": 1}
    assert calls[12][2]["body"] == {"full": True, "repair": False}
    assert calls[13][2]["body"]["payment"] == {"from": "a", "amount": 1} and calls[13][2]["retry"] == NEVER


def test_a_task_carries_its_payment_to_the_enqueue() -> None:
    rec = _AsyncRecorder()
    client = ferry.AsyncClient("http://127.0.0.1:9", token="t", name="wire")
    asyncio.run(client.aclose())
    client._t = rec  # type: ignore[assignment]
    worker = ferry.Worker(client=client)

    @worker.task("paid-task")
    def job(n: int) -> int:
        return n

    job.with_options(payment={"from": "alice", "amount": 9}, unique_key="u1").enqueue(n=3)
    method, path, kw = rec.last()
    assert (method, path, kw["retry"]) == ("POST", "/v1/jobs", ALWAYS)
    assert kw["body"] == {
        "queue": "paid-task",
        "payload": {"n": 3},
        "payment": {"from": "alice", "amount": 9},
        "unique_key": "u1",
    }
