"""Episodic memory against the real server (SQLite, and PostgreSQL when `FERRY_TEST_PG_URL` is
set): idempotency by key and by id, all-or-nothing batches, list filters and pages, a token
restricted to namespaces, and a search by real sentence embeddings (WordLlama's weights, shipped
in its wheel: extra `memory-test`; skipped without it) that finds paraphrases sharing no word
with the episode they describe.

(`tests/test_memory.py` is about `ferry.testing.InMemoryClient`, not this.)
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ferry
from ferry.testing import FerryServer

pytestmark = pytest.mark.timeout(60)

IMPORTED_ID = "01890000-0000-7000-8000-000000000001"
ABSENT_ID = "01890000-0000-7000-8000-0000000000ff"


def test_a_resend_is_a_duplicate_and_another_body_a_conflict(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    ns = "idem"
    fields: dict[str, Any] = {
        "agent": "ann",
        "tags": ["ops"],
        "outcome": "success",
        "embedding": [0.25, 0.5],
        "idempotency_key": "nightly-1",
    }
    first = c.add_episode(ns, "ran the nightly backup", **fields)
    assert first["created_at"] and "duplicate" not in first
    assert c.add_episode(ns, "ran the nightly backup", **fields) == {"id": first["id"], "duplicate": True}
    with pytest.raises(ferry.Conflict) as conflict:
        c.add_episode(ns, "ran the nightly backup", **{**fields, "tags": ["other"]})
    assert conflict.value.status == 409 and conflict.value.details == {"id": first["id"]}
    # The key is per namespace.
    elsewhere = c.add_episode(f"{ns}-2", "ran the nightly backup", **fields)
    assert elsewhere["id"] != first["id"] and "duplicate" not in elsewhere
    # An id of the caller's (an import) is kept, and deduplicates as a key does.
    imported = c.add_episode(ns, "imported from the old store", id=IMPORTED_ID)
    assert imported["id"] == IMPORTED_ID and imported["created_at"]
    assert c.add_episode(ns, "imported from the old store", id=IMPORTED_ID)["duplicate"] is True
    with pytest.raises(ferry.Conflict):
        c.add_episode(ns, "another text under that id", id=IMPORTED_ID)
    stored = c.get_episode(first["id"])
    assert (stored["version"], stored["outcome"]["status"], stored["idempotency_key"]) == (
        1,
        "success",
        "nightly-1",
    )
    assert (c.memory_stats(ns)["episodes"], c.memory_stats(ns)["embedding_dims"]) == (2, 2)
    # PATCH changes tags and importance only, version by version; a stale If-Match is refused.
    assert c.patch_episode(first["id"], tags=["ops", "db"])["version"] == 2
    with pytest.raises(ferry.PreconditionFailed) as stale:
        c.patch_episode(first["id"], importance=0.1, if_match=1)
    assert stale.value.status == 412 and stale.value.details is not None
    assert stale.value.details["actual_version"] == 2
    now = c.patch_episode(first["id"], importance=0.1, if_match=2)
    assert (now["version"], now["tags"], now["importance"]) == (3, ["ops", "db"], 0.1)
    assert now["description"] == "ran the nightly backup" and now["created_at"] == stored["created_at"]
    with pytest.raises(ferry.NotFound):
        c.patch_episode(ABSENT_ID, importance=0.5)
    with pytest.raises(ferry.NotFound):
        c.delete_episode(ABSENT_ID)


def test_a_batch_is_all_or_nothing(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    ns = "batch"

    def ep(description: str, key: str | None = None, **more: Any) -> dict[str, Any]:
        return {"namespace": ns, "description": description, "idempotency_key": key, **more}

    ids = c.add_episodes([ep("one", "b1"), ep("two", "b2")])["ids"]
    assert len(set(ids)) == 2
    assert c.add_episodes([ep("one", "b1"), ep("two", "b2")])["ids"] == ids, "a resend keeps the ids"
    # An invalid episode stores none of the batch.
    with pytest.raises(ferry.ValidationFailed) as invalid:
        c.add_episodes([ep("three", "b3"), ep("four", importance=2.0)])
    assert invalid.value.field == "episodes[1].importance"
    # A key that holds another body stores none of it.
    with pytest.raises(ferry.Conflict) as conflict:
        c.add_episodes([ep("three", "b3"), ep("one, changed", "b1")])
    assert conflict.value.details is not None and conflict.value.details["id"] == ids[0]
    # The namespace's first embedding fixes its dimension, within one batch too.
    with pytest.raises(ferry.ValidationFailed) as dims:
        c.add_episodes([ep("five", embedding=[1.0, 0.0]), ep("six", embedding=[1.0, 0.0, 0.0])])
    assert dims.value.field == "episodes[1].embedding"
    with pytest.raises(ferry.ValidationFailed):
        c.add_episodes([])
    assert [e["description"] for e in c.list_episodes(ns)] == ["two", "one"]
    stats = c.memory_stats(ns)
    assert (stats["episodes"], stats.get("embedding_dims")) == (2, None)
    assert c.reconcile_memory(ns)["mismatches"] == {"fts": 0, "tags": 0, "embeddings": 0}


def test_list_filters_and_pages(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    ns = "listing"
    rows = [
        ("deploy-1", "ann", "ops", "deploy", "success", ["t1"], "2001-01-01T00:00:00Z"),
        ("incident", "bob", "ops", None, "failure", ["t1", "t2"], "2001-01-02T00:00:00Z"),
        ("docs", "ann", "docs", None, "partial", [], "2001-01-03T00:00:00Z"),
        ("deploy-2", "cid", "ops", "deploy", "abandoned", ["t2"], None),
    ]
    ids = c.add_episodes(
        [
            {
                "namespace": ns,
                "description": d,
                "agent": a,
                "domain": dom,
                "task_type": tt,
                "outcome": o,
                "tags": t,
                "ended_at": end,
            }
            for d, a, dom, tt, o, t, end in rows
        ]
    )["ids"]
    by_id = dict(zip(ids, (r[0] for r in rows), strict=True))

    def names(**filters: Any) -> list[str]:
        return [by_id[e["id"]] for e in c.list_episodes(ns, **filters)]

    assert names() == ["deploy-2", "docs", "incident", "deploy-1"], "newest first"
    assert names(agent="ann") == ["docs", "deploy-1"]
    assert names(domain="ops", task_type="deploy") == ["deploy-2", "deploy-1"]
    assert names(tag="t2") == ["deploy-2", "incident"]
    assert names(outcome="failure") == ["incident"]
    # Times are the end, else the storing (deploy-2 has no end: it was stored now).
    assert names(since="2001-01-02T00:00:00Z") == ["deploy-2", "docs", "incident"]
    assert names(until="2001-01-02T00:00:00Z") == ["deploy-1"]
    assert names(since="2001-01-02T00:00:00Z", until="2001-01-03T00:00:00Z") == ["incident"]
    # Pages: `limit` bounds the rows, `page_size` the pages; `.pages()` follows the cursor.
    pager = c.list_episodes(ns, page_size=3)
    assert [len(p["episodes"]) for p in pager.pages()] == [3, 1]
    assert [by_id[e["id"]] for e in c.list_episodes(ns, limit=2)] == ["deploy-2", "docs"]
    first = c.list_episodes(ns, limit=1).page()
    assert first["next_cursor"]
    rest = c.list_episodes(ns, cursor=first["next_cursor"]).all()
    assert [by_id[e["id"]] for e in rest] == ["docs", "incident", "deploy-1"]
    with pytest.raises(ferry.ValidationFailed) as bad:
        c.list_episodes(ns, cursor="not-a-cursor").page()
    assert bad.value.field == "cursor"
    assert names(agent="nobody") == []


def test_a_token_limited_to_namespaces_reaches_only_their_episodes(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any
    admin = server.client()
    tok = admin.create_token("ns-a", ["memory", "read"], namespaces=["a"])
    assert tok["namespaces"] == ["a"]
    reader = admin.create_token("ns-a-read", ["read"], namespaces=["a"])
    theirs = admin.add_episode("b", "an episode of namespace b", tags=["x"])["id"]
    with ferry.Client(server.url, tok["token"]) as c:
        mine = c.add_episode("a", "an episode of namespace a", tags=["x"])["id"]
        assert c.get_episode(mine)["namespace"] == "a"
        assert c.patch_episode(mine, importance=0.9)["importance"] == 0.9
        assert [e["id"] for e in c.list_episodes()] == [mine], "only its namespaces"
        assert [e["id"] for e in c.list_episodes("a")] == [mine]
        assert c.memory_stats()["episodes"] == 1
        assert [h["id"] for h in c.search_memory("a", "episode namespace")["results"]] == [mine]
    refused: dict[str, tuple[str, Callable[[ferry.Client], object]]] = {
        "add to b": (tok["token"], lambda c: c.add_episode("b", "not mine")),
        "a batch touching b": (
            tok["token"],
            lambda c: c.add_episodes([{"namespace": "a"}, {"namespace": "b"}]),
        ),
        "get b's": (tok["token"], lambda c: c.get_episode(theirs)),
        "get an absent id": (tok["token"], lambda c: c.get_episode(ABSENT_ID)),  # absent looks foreign
        "patch b's": (tok["token"], lambda c: c.patch_episode(theirs, tags=["y"])),
        "delete b's": (tok["token"], lambda c: c.delete_episode(theirs)),
        "list b": (tok["token"], lambda c: c.list_episodes("b").page()),
        "search b": (tok["token"], lambda c: c.search_memory("b", "episode")),
        "stats of b": (tok["token"], lambda c: c.memory_stats("b")),
        "reconcile (scope admin)": (tok["token"], lambda c: c.reconcile_memory("a")),
        "rebuild (scope admin)": (tok["token"], lambda c: c.rebuild_memory("a")),
        "add (scope memory)": (reader["token"], lambda c: c.add_episode("a", "a reader does not write")),
        "search (scope memory)": (reader["token"], lambda c: c.search_memory("a", "episode")),
    }
    for what, (token, call) in refused.items():
        # Each on a connection of its own: the server answers a request its token's scopes
        # refuse before reading the body, then closes the connection without saying so
        # (`Connection: close`), which the next request on it from a keep-alive pool trips over.
        with ferry.Client(server.url, token) as c:
            with pytest.raises(ferry.Forbidden) as err:
                call(c)
            assert err.value.status == 403, what
    with ferry.Client(server.url, reader["token"]) as r:
        assert r.get_episode(mine)["id"] == mine
        assert r.memory_stats("a")["episodes"] == 1, "the refused batch stored nothing"
    with ferry.Client(server.url, tok["token"]) as c:
        c.delete_episode(mine)
        with pytest.raises(ferry.Forbidden):
            c.get_episode(mine)  # now absent: 403 too, for a restricted token
    with pytest.raises(ferry.NotFound):
        admin.get_episode(mine)
    untouched = admin.get_episode(theirs)
    assert (untouched["version"], untouched["tags"]) == (1, ["x"])
    assert admin.memory_stats("b")["episodes"] == 1


def test_search_by_text_with_filters(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    ns = "text"
    ids = c.add_episodes(
        [
            {
                "namespace": ns,
                "description": "rotated the TLS certificates of the edge proxy",
                "agent": "ann",
                "domain": "ops",
                "tags": ["security", "proxy"],
                "outcome": "success",
            },
            {
                "namespace": ns,
                "description": "investigated slow checkout pages",
                "agent": "bob",
                "domain": "web",
                "steps": [{"tool": "profiler", "action": "traced the proxy latency", "status": "ok"}],
                "outcome": {"status": "partial", "summary": "a cold cache"},
                "tags": ["proxy"],
            },
            {"namespace": ns, "description": "wrote release notes", "agent": "ann", "domain": "docs"},
        ]
    )["ids"]
    certs, checkout, notes = ids
    # Description, step actions and the outcome's summary are searched; BM25 ranks the episode
    # matching more of the query first.
    found = c.search_memory(ns, "proxy certificates", weights={"recency": 0, "importance": 0, "outcome": 0})
    assert [h["id"] for h in found["results"]] == [certs, checkout]
    assert found["results"][0]["components"]["text"] == 1.0 and found["candidates_scored"] == 2
    assert (found["served_by"], found["level"], found["truncated"]) == ("flat", "namespace", False)
    assert [h["id"] for h in c.search_memory(ns, "cache", k=1)["results"]] == [checkout]
    assert [h["id"] for h in c.search_memory(ns, "release notes", k=1)["results"]] == [notes]
    # Filters always apply.
    only = c.search_memory(ns, "proxy certificates", filters={"agents": ["bob"]})
    assert [h["id"] for h in only["results"]] == [checkout]
    tagged = c.search_memory(ns, "proxy", filters={"tags_all": ["security", "proxy"]})
    assert [h["id"] for h in tagged["results"]] == [certs]
    outcomes = c.search_memory(ns, filters={"outcome": ["partial", "failure"], "tags_any": ["proxy"]})
    assert [h["id"] for h in outcomes["results"]] == [checkout]
    # A context starts a hierarchical search at its domain; few candidates there widen it.
    ctx = c.search_memory(ns, "proxy", context={"domain": "web"})
    assert (ctx["served_by"], ctx["level"]) == ("hierarchical", "namespace")
    assert ctx["fallback_reason"] and checkout in [h["id"] for h in ctx["results"]]
    flat = c.search_memory(ns, "proxy", context={"domain": "web"}, mode="flat")
    assert flat["served_by"] == "flat" and flat["features"]["hierarchical"] is False
    with pytest.raises(ferry.ValidationFailed) as bad:
        c.search_memory(ns, "proxy", k=0)
    assert bad.value.field == "k"


def test_a_search_by_text_and_vector_keeps_the_vector_matches(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    ns = "hybrid"
    near, far = c.add_episodes(
        [
            {"namespace": ns, "description": "alpha beta", "embedding": [1.0, 0.0]},
            {"namespace": ns, "description": "gamma delta", "embedding": [0.0, 1.0]},
        ]
    )["ids"]
    assert [h["id"] for h in c.search_memory(ns, embedding=[1.0, 0.0])["results"]] == [near, far]
    both = c.search_memory(ns, "zeta", embedding=[1.0, 0.0])
    assert [h["id"] for h in both["results"]][:1] == [near]


# ---- real embeddings -----------------------------------------------------------------------------

# Eight episodes on unrelated topics, and for each a paraphrase that shares no word with it: only
# the embeddings can tie them together.
EPISODES = [
    "Fixed a flaky integration test caused by a race in the database connection pool",
    "Translated the marketing brochure from English into French and Spanish",
    "Tuned the neural network's learning rate and batch size to speed up training",
    "Booked flights and hotel rooms for the team offsite in Lisbon",
    "Diagnosed a memory leak in the image resizing service using heap profiles",
    "Reviewed the quarterly invoices and corrected the sales tax totals",
    "Planted tomatoes, basil and peppers in the vegetable garden beds",
    "Composed a cheerful birthday poem for a colleague's celebration",
]
PARAPHRASES = [
    "sporadic testing errors from simultaneous Postgres clients",
    "converting promotional pamphlets to other languages",
    "adjusting hyperparameters so deep models converge faster",
    "reserving plane tickets plus lodging ahead of a company retreat",
    "process RAM keeps growing while shrinking pictures",
    "bookkeeping review: receipts, revenue plus VAT mistakes",
    "sowing herbs alongside salad crops outdoors",
    "verses honouring coworkers on their anniversary",
]
VECTORS_ONLY = {"text": 0.0, "recency": 0.0, "importance": 0.0, "outcome": 0.0}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _no_network(sock: socket.socket, address: Any, *args: Any) -> None:
    raise OSError(f"this test runs offline: no connection to {address!r}")


@pytest.fixture
def embed(monkeypatch: pytest.MonkeyPatch) -> Any:
    """WordLlama (`l2_supercat`, 256 dimensions: static token embeddings, mean-pooled) from the
    files its wheel ships, loaded with every socket connection refused. `WordLlama.load()` is
    not used: 0.4 looks for the shipped tokenizer under `tokenizer/` (the wheel has
    `tokenizers/`) and then downloads it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wordllama = pytest.importorskip("wordllama", reason="the memory-test extra is not installed")
    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", _no_network)
        from safetensors.numpy import load_file
        from wordllama.inference import WordLlamaInference
        from wordllama.tokenizers import tokenizer_from_file

        weights = Path(wordllama.__file__).parent / "weights" / "l2_supercat_256.safetensors"
        model = WordLlamaInference(
            load_file(str(weights))["embedding.weight"],
            tokenizer_from_file("l2_supercat_tokenizer_config.json"),
        )
        model.embed(["warm up"], norm=True)

    def run(texts: list[str]) -> Any:
        return model.embed(texts, norm=True)

    return run


def test_real_embeddings_rank_paraphrases_first(ferry_server_any: FerryServer, embed: Any) -> None:
    c = ferry_server_any.client()
    ns = "semantic"
    vectors = embed(EPISODES)  # a numpy array: its rows go as they are
    ids = c.add_episodes(
        [
            {"namespace": ns, "description": text, "embedding": vec, "outcome": "success"}
            for text, vec in zip(EPISODES, vectors, strict=True)
        ]
    )["ids"]
    assert c.memory_stats(ns)["embedding_dims"] == 256
    queries = embed(PARAPHRASES)
    for i, (text, query) in enumerate(zip(PARAPHRASES, queries, strict=True)):
        assert not _words(text) & _words(EPISODES[i]), "a paraphrase shares no word with its episode"
        found = c.search_memory(ns, embedding=query, k=3, weights=VECTORS_ONLY)
        got = [h["id"] for h in found["results"]]
        assert got[0] == ids[i], (text, [h["episode"]["description"] for h in found["results"]])
        assert found["results"][0]["components"]["vector"] == 1.0
        assert found["features"]["vectors"] is True and found["served_by"] == "flat"
        # By words alone the target has no signal.
        by_text = c.search_memory(ns, text, k=8, disable=["vectors"])
        assert all(h["components"]["text"] == 0 for h in by_text["results"] if h["id"] == ids[i])
    # Turning vectors off for one request leaves no vector signal.
    off = c.search_memory(ns, embedding=queries[0], weights=VECTORS_ONLY, disable=["vectors"])
    assert off["features"]["vectors"] is False
    assert all(h["components"]["vector"] == 0 for h in off["results"])
