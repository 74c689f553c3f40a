//! Episodic memory end to end: the real `ferry serve` over real HTTP with raw JSON, on SQLite
//! and on PostgreSQL (a database of its own).
//!
//! - `round_trip_*`: add (201), resend (200 `duplicate`), other body under the key (409,
//!   `details.id`), a batch (201 `ids`) and an all-or-nothing refusal, GET with `ETag`, list
//!   filters and cursor paging newest first, PATCH with `If-Match` (200, then 412 with
//!   `details.actual_version`), search (flat and hierarchical, `features`, `disable`), stats,
//!   DELETE (204, then 404), the `episode.*` events in `namespace:<ns>`; the server's
//!   `check_invariants` after a clean stop.
//! - `limits_sqlite`: every memory limit at its edge (accepted) and one past (413 for the body,
//!   422 naming the field with `details.violations` for the rest); three violations in one
//!   request are one 422 listing three.
//! - `reconcile_*`: derived rows corrupted with raw SQL (a full-text row changed and one
//!   deleted, a tag row deleted, a vector row changed); `ferry memory reconcile` reports the
//!   exact counts and exits 1; `--repair` rewrites them; a rerun exits 0; search finds the
//!   repaired episodes again.
//! - `failed_derived_writes_*`: with `FERRY_MEMORY_FAULT=fts|tags|embeddings` an episode tagged
//!   `ferry:fault` is refused with 500 and leaves nothing (absent from GET, list and search),
//!   while concurrent episodes succeed (after retrying a 503); reconcile stays clean.
//! - `restricted_tokens`: a token limited to namespace `a` adds, reads and searches there and gets
//!   403 for namespace `b`, for `b`'s episode ids and for absent ids; a queue-limited token
//!   gets 403 on every memory route; `read` alone cannot add.
//! - `export_import_round_trip`: `ferry memory export` of one server, `ferry memory import` into
//!   another: the same episodes (ids, content, tags, embeddings); a second import adds none.

use crate::common::pg::TestDb;
use crate::common::{Server, error_code};
use serde_json::{Value, json};
use std::time::Duration;

/// A server's URL and how to reach it.
struct Api {
    url: String,
    token: Option<String>,
}

impl Api {
    fn of(s: &Server) -> Api {
        Api { url: s.url.clone(), token: None }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let (status, h) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v, h)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::POST, path, Some(body), &[]).await;
        (s, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::GET, path, None, &[]).await;
        (s, v)
    }

    /// A GET retried while the circuit breaker is open (a storage failure opens it).
    async fn get_past_breaker(&self, path: &str) -> (u16, Value) {
        for _ in 0..200 {
            let (s, v) = self.get(path).await;
            if s != 503 {
                return (s, v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{path}: still 503 after 10 s")
    }
}

async fn start(db: Option<&TestDb>, toml: &str, envs: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    let url = db.map(|d| d.url.clone());
    let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match &url {
            Some(u) => Server::start_with_env(&["--database", u], dir, &e),
            None => Server::start_with_env(&[], dir, &e),
        }
    })
    .await
    .unwrap()
}

fn episode(ns: &str, desc: &str) -> Value {
    json!({"namespace": ns, "description": desc})
}

async fn add(api: &Api, body: Value) -> String {
    let (s, v) = api.post("/v1/memory/episodes", &body).await;
    assert_eq!(s, 201, "add {body}: {v}");
    v["id"].as_str().unwrap().to_string()
}

async fn search_descriptions(api: &Api, body: Value) -> Vec<String> {
    let (s, v) = api.post("/v1/memory/search", &body).await;
    assert_eq!(s, 200, "search {body}: {v}");
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["episode"]["description"].as_str().unwrap().to_string())
        .collect()
}

async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&args)
            .env_remove("FERRY_URL")
            .env_remove("FERRY_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    })
    .await
    .unwrap()
}

async fn round_trip(db: Option<&TestDb>) {
    let mut server = start(db, "", &[]).await;
    let api = Api::of(&server);
    let mut first = episode("ns", "scrape the pricing page with a headless browser");
    first["idempotency_key"] = json!("k1");
    first["agent"] = json!("scraper");
    first["domain"] = json!("web");
    first["task_type"] = json!("scrape");
    first["tags"] = json!(["web", "prices"]);
    first["outcome"] = json!({"status": "success", "summary": "got all prices", "reward": 0.8});
    first["steps"] = json!([{"tool": "browser", "action": "open the page", "status": "ok", "latency_ms": 120, "tokens": 50}]);
    first["embedding"] = json!([1.0, 0.0, 0.0]);
    let (s, created) = api.post("/v1/memory/episodes", &first).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["created_at"].is_string());
    let (s, dup) = api.post("/v1/memory/episodes", &first).await;
    assert_eq!((s, dup["id"].as_str(), dup["duplicate"].as_bool()), (200, Some(id.as_str()), Some(true)));
    let mut other = first.clone();
    other["description"] = json!("something else");
    let (s, conflict) = api.post("/v1/memory/episodes", &other).await;
    assert_eq!((s, error_code(&conflict)), (409, "conflict".to_string()));
    assert_eq!(conflict["error"]["details"]["id"].as_str(), Some(id.as_str()));
    let (s, batch) = api
        .post(
            "/v1/memory/episodes/batch",
            &json!({"episodes": [
                {"namespace": "ns", "agent": "scraper", "domain": "web", "task_type": "scrape", "description": "pricing page scrape failed on a captcha", "outcome": {"status": "failure"}, "embedding": [0.0, 1.0, 0.0]},
                {"namespace": "ns", "agent": "deployer", "domain": "ops", "task_type": "deploy", "description": "deploy the api to staging", "outcome": {"status": "success"}, "tags": ["ops"]},
            ]}),
        )
        .await;
    assert_eq!(s, 201, "{batch}");
    assert_eq!(batch["ids"].as_array().unwrap().len(), 2);
    // All or nothing: a conflicting member stores none.
    let (s, _) = api
        .post("/v1/memory/episodes/batch", &json!({"episodes": [episode("ns", "never stored"), other]}))
        .await;
    assert_eq!(s, 409);
    let (_, page) = api.get("/v1/memory/episodes?namespace=ns&limit=10").await;
    assert_eq!(page["episodes"].as_array().unwrap().len(), 3, "{page}");

    let (s, got, headers) =
        api.call(reqwest::Method::GET, &format!("/v1/memory/episodes/{id}"), None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(got["steps"][0]["tool"], "browser");
    assert_eq!(got["outcome"]["reward"], 0.8);
    assert_eq!(got["embedding"], json!([1.0, 0.0, 0.0]));

    // Lists: newest first, filters, pages.
    let (_, p1) = api.get("/v1/memory/episodes?namespace=ns&limit=2").await;
    let descs: Vec<&str> =
        p1["episodes"].as_array().unwrap().iter().map(|e| e["description"].as_str().unwrap()).collect();
    assert_eq!(descs, ["deploy the api to staging", "pricing page scrape failed on a captcha"]);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = api.get(&format!("/v1/memory/episodes?namespace=ns&limit=2&cursor={cursor}")).await;
    assert_eq!(p2["episodes"][0]["id"].as_str(), Some(id.as_str()));
    assert!(p2["next_cursor"].is_null());
    for (q, n) in [
        ("agent=scraper", 2),
        ("tag=ops", 1),
        ("outcome=failure", 1),
        ("domain=web&task_type=scrape", 2),
        ("since=2999-01-01T00:00:00Z", 0),
    ] {
        let (s, p) = api.get(&format!("/v1/memory/episodes?namespace=ns&{q}")).await;
        assert_eq!((s, p["episodes"].as_array().map(Vec::len)), (200, Some(n)), "{q}: {p}");
    }

    // PATCH: tags and importance only, under If-Match.
    let path = format!("/v1/memory/episodes/{id}");
    let (s, patched, h) = api
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(&json!({"tags": ["gold"], "importance": 0.9})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(
        (s, &patched["tags"], &patched["importance"]),
        (200, &json!(["gold"]), &json!(0.9)),
        "{patched}"
    );
    assert_eq!(h["etag"], "\"2\"");
    let (s, stale, _) = api
        .call(reqwest::Method::PATCH, &path, Some(&json!({"importance": 0.1})), &[("if-match", "\"1\"")])
        .await;
    assert_eq!((s, stale["error"]["details"]["actual_version"].as_i64()), (412, Some(2)), "{stale}");
    let (s, _, _) = api.call(reqwest::Method::PATCH, &path, Some(&json!({"description": "no"})), &[]).await;
    assert_eq!(s, 400, "only tags and importance change");

    // Search: flat (any term), hierarchical (widening), switches.
    assert_eq!(
        search_descriptions(
            &api,
            json!({"namespace": "ns", "text": "pricing page", "disable": ["diversity"]})
        )
        .await,
        ["pricing page scrape failed on a captcha", "scrape the pricing page with a headless browser"]
    );
    let (_, r) = api.post("/v1/memory/search", &json!({"namespace": "ns", "text": "page", "context": {"domain": "web", "task_type": "scrape"}, "embedding": [1, 0, 0], "k": 2})).await;
    assert_eq!(
        (r["served_by"].as_str(), r["level"].as_str()),
        (Some("hierarchical"), Some("namespace")),
        "{r}"
    );
    assert!(r["fallback_reason"].as_str().unwrap().contains("fewer than 20"), "{r}");
    assert_eq!(
        r["results"][0]["id"].as_str(),
        Some(id.as_str()),
        "the vector and the outcome favour the success: {r}"
    );
    assert!(r["results"][0]["components"]["vector"].as_f64().unwrap() > 0.99);
    let (_, r) = api.post("/v1/memory/search", &json!({"namespace": "ns", "text": "deploy", "disable": ["recency", "vectors", "diversity", "hierarchical"]})).await;
    assert_eq!(
        r["features"],
        json!({"hierarchical": false, "diversity": false, "recency": false, "vectors": false})
    );
    assert!(r["diversity"]["lambda"].is_null());
    assert_eq!(r["results"][0]["components"]["recency"], 0.0);
    let (s, e) = api.post("/v1/memory/search", &json!({"namespace": "ns", "embedding": [1, 0]})).await;
    assert_eq!((s, e["error"]["field"].as_str()), (422, Some("embedding")), "{e}");

    let (_, stats) = api.get("/v1/memory/stats?namespace=ns").await;
    assert_eq!((stats["episodes"].as_u64(), stats["embedding_dims"].as_u64()), (Some(3), Some(3)), "{stats}");
    // A word longer than PostgreSQL's lexeme limit is indexed (cut) on both engines.
    let long = "w".repeat(3_000);
    add(&api, episode("long", &format!("{long} findme"))).await;
    assert_eq!(search_descriptions(&api, json!({"namespace": "long", "text": long})).await.len(), 1);
    assert_eq!(search_descriptions(&api, json!({"namespace": "long", "text": "findme"})).await.len(), 1);

    // Delete, then it is gone everywhere.
    let (s, _, _) = api.call(reqwest::Method::DELETE, &path, None, &[]).await;
    assert_eq!(s, 204);
    let (s, _, _) = api.call(reqwest::Method::DELETE, &path, None, &[]).await;
    assert_eq!(s, 404);
    assert_eq!(api.get(&path).await.0, 404);
    assert!(
        !search_descriptions(&api, json!({"namespace": "ns", "text": "headless"}))
            .await
            .iter()
            .any(|d| d.contains("headless"))
    );

    // Events, in the namespace's room.
    // PostgreSQL numbers events after their commit: wait for the last one.
    let mut ev = Value::Null;
    for _ in 0..200 {
        ev = api
            .get("/v1/events?since=0&type=episode.added,episode.updated,episode.deleted&limit=100")
            .await
            .1;
        if ev["events"].as_array().is_some_and(|e| e.len() >= 6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: Vec<&str> =
        ev["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "episode.added",
            "episode.added",
            "episode.added",
            "episode.updated",
            "episode.added",
            "episode.deleted"
        ],
        "{ev}"
    );
    assert_eq!(ev["events"][0]["subject"], json!({"kind": "namespace", "id": "ns"}));
    let (_, clean) = api.post("/v1/memory/reconcile", &json!({})).await;
    assert_eq!(clean["mismatches"], json!({"fts": 0, "tags": 0, "embeddings": 0}), "{clean}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_sqlite() {
    tokio::time::timeout(Duration::from_secs(60), round_trip(None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_postgres() {
    let Some(db) = TestDb::create("ferry_mem_rt").await else { return };
    tokio::time::timeout(Duration::from_secs(60), round_trip(Some(&db))).await.unwrap();
}

/// Sets one field of an episode at its limit's edge (`false`) or one past it (`true`).
type Setter = Box<dyn Fn(&mut Value, bool)>;

const SMALL_LIMITS: &str = "[limits]
max_episode_bytes = 4000
max_episode_text_bytes = 100
max_episode_steps = 3
max_step_text_bytes = 20
max_episode_tags = 2
max_tag_len = 8
max_episode_artifacts = 2
max_episode_metadata_bytes = 50
max_embedding_dims = 4
max_memory_batch = 3
max_search_k = 5
max_name_len = 10
max_url_len = 30
max_unique_key_len = 6
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_sqlite() {
    let mut server = start(None, SMALL_LIMITS, &[]).await;
    let api = Api::of(&server);
    let s = |n: usize| "x".repeat(n);
    let base = || episode("ns", "ok");
    // (the field as named in the error, the value at the edge, the value one past)
    let cases: Vec<(&str, Setter)> = vec![
        (
            "description",
            Box::new(move |e: &mut Value, past| e["description"] = json!(s(100 + usize::from(past)))),
        ),
        (
            "outcome.summary",
            Box::new(move |e: &mut Value, past| {
                e["outcome"] = json!({"status": "partial", "summary": s(100 + usize::from(past))})
            }),
        ),
        (
            "steps",
            Box::new(move |e: &mut Value, past| {
                e["steps"] = json!(vec![json!({"tool": "t"}); 3 + usize::from(past)])
            }),
        ),
        (
            "steps[0].action",
            Box::new(move |e: &mut Value, past| e["steps"] = json!([{"action": s(20 + usize::from(past))}])),
        ),
        (
            "tags",
            Box::new(move |e: &mut Value, past| {
                e["tags"] = json!((0..2 + usize::from(past)).map(|i| format!("t{i}")).collect::<Vec<_>>())
            }),
        ),
        ("tags[0]", Box::new(move |e: &mut Value, past| e["tags"] = json!([s(8 + usize::from(past))]))),
        (
            "artifacts",
            Box::new(move |e: &mut Value, past| {
                e["artifacts"] = json!(vec![json!({"kind": "f", "uri": "u"}); 2 + usize::from(past)])
            }),
        ),
        (
            "artifacts[0].uri",
            Box::new(move |e: &mut Value, past| {
                e["artifacts"] = json!([{"kind": "f", "uri": s(30 + usize::from(past))}])
            }),
        ),
        (
            "metadata",
            Box::new(move |e: &mut Value, past| e["metadata"] = json!({"k": s(42 + usize::from(past))})),
        ),
        (
            "embedding",
            Box::new(move |e: &mut Value, past| e["embedding"] = json!(vec![1.0; 4 + usize::from(past)])),
        ),
        ("agent", Box::new(move |e: &mut Value, past| e["agent"] = json!(s(10 + usize::from(past))))),
        (
            "idempotency_key",
            Box::new(move |e: &mut Value, past| e["idempotency_key"] = json!(s(6 + usize::from(past)))),
        ),
        (
            "importance",
            Box::new(move |e: &mut Value, past| e["importance"] = json!(if past { 1.01 } else { 1.0 })),
        ),
        (
            "outcome.reward",
            Box::new(move |e: &mut Value, past| {
                e["outcome"] = json!({"status": "failure", "reward": if past { -1.01 } else { -1.0 }})
            }),
        ),
    ];
    for (i, (field, set)) in cases.iter().enumerate() {
        let mut at = base();
        at["namespace"] = json!(format!("n{i}"));
        set(&mut at, false);
        let (st, v) = api.post("/v1/memory/episodes", &at).await;
        assert_eq!(st, 201, "{field} at its edge: {v}");
        let mut past = base();
        past["namespace"] = json!(format!("n{i}"));
        set(&mut past, true);
        let (st, v) = api.post("/v1/memory/episodes", &past).await;
        assert_eq!((st, v["error"]["field"].as_str()), (422, Some(*field)), "{field} one past: {v}");
        assert_eq!(v["error"]["details"]["violations"][0]["field"].as_str(), Some(*field));
    }
    // The body: 413 past max_episode_bytes.
    let mut big = base();
    big["metadata"] = json!({"pad": s(4_100)});
    let (st, v) = api.post("/v1/memory/episodes", &big).await;
    assert_eq!((st, error_code(&v)), (413, "payload_too_large".to_string()), "{v}");
    // Three violations: one 422 listing three, `field` the first.
    let mut three = base();
    three["description"] = json!(s(101));
    three["tags"] = json!([s(9)]);
    three["importance"] = json!(-0.5);
    let (st, v) = api.post("/v1/memory/episodes", &three).await;
    assert_eq!(st, 422);
    let fields: Vec<&str> = v["error"]["details"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["description", "importance", "tags[0]"]
            .iter()
            .copied()
            .filter(|f| fields.contains(f))
            .collect::<Vec<_>>()
    );
    assert_eq!(fields.len(), 3, "{v}");
    assert_eq!(v["error"]["field"].as_str(), Some(fields[0]));
    // Batch size and k.
    let (st, _) = api.post("/v1/memory/episodes/batch", &json!({"episodes": vec![base(); 3]})).await;
    assert_eq!(st, 201);
    let (st, v) = api.post("/v1/memory/episodes/batch", &json!({"episodes": vec![base(); 4]})).await;
    assert_eq!((st, v["error"]["field"].as_str()), (422, Some("episodes")), "{v}");
    let (st, _) = api.post("/v1/memory/search", &json!({"namespace": "ns", "k": 5})).await;
    assert_eq!(st, 200);
    let (st, v) = api.post("/v1/memory/search", &json!({"namespace": "ns", "k": 6})).await;
    assert_eq!((st, v["error"]["field"].as_str()), (422, Some("k")), "{v}");
    server.stop();
}

/// Corrupts four derived rows of the server's database with raw SQL.
async fn corrupt(db: Option<&TestDb>, data_dir: &std::path::Path) {
    match db {
        None => {
            let c = rusqlite::Connection::open(data_dir.join("ferry.db")).unwrap();
            c.execute_batch(
                "DELETE FROM episode_fts WHERE rowid = 1;
                 INSERT INTO episode_fts (rowid, terms, facets) VALUES (1, 'nothing', 'nothing');
                 UPDATE episode_scan SET terms = 'nothing' WHERE seq = 2;
                 DELETE FROM episode_tags WHERE seq = 3;
                 UPDATE episode_vectors SET vec = zeroblob(12) WHERE seq = 4;",
            )
            .unwrap();
        }
        Some(d) => {
            let (c, conn) = tokio_postgres::connect(&d.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c.batch_execute(
                "UPDATE episodes SET terms = 'nothing' WHERE seq = 1;
                 UPDATE episodes SET terms = '' WHERE seq = 2;
                 DELETE FROM episode_tags WHERE seq = 3;
                 UPDATE episode_vectors SET vec = '\\x000000000000000000000000' WHERE seq = 4;",
            )
            .await
            .unwrap();
        }
    }
}

async fn reconcile(db: Option<&TestDb>) {
    let mut server = start(db, "", &[]).await;
    let api = Api::of(&server);
    for i in 1..=5 {
        let mut e = episode("ns", &format!("unique{i} shared words here"));
        e["tags"] = json!([format!("tag{i}")]);
        e["embedding"] = json!([i as f64, 1.0, 0.0]);
        add(&api, e).await;
    }
    // SQLite's file belongs to its server: stop it to corrupt the file, then start it again.
    if db.is_none() {
        server.stop();
        let dir = server.take_dir();
        corrupt(None, dir.path()).await;
        server = tokio::task::spawn_blocking(move || Server::start_with(&[], dir)).await.unwrap();
    } else {
        corrupt(db, server.dir.path()).await;
    }
    let api = Api::of(&server);
    assert!(
        search_descriptions(&api, json!({"namespace": "ns", "text": "unique1", "mode": "flat"}))
            .await
            .is_empty()
    );
    let (code, out, err) = cli(&["memory", "reconcile", "--url", &server.url, "--json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["checked"], 5);
    assert_eq!(report["mismatches"], json!({"fts": 2, "tags": 1, "embeddings": 1}), "{report}");
    let (code, out, _) = cli(&["memory", "reconcile", "--repair", "--url", &server.url]).await;
    assert_eq!(code, 1, "the repairing run still reports what it found: {out}");
    assert!(out.contains("4 repaired"), "{out}");
    let (code, out, err) = cli(&["memory", "reconcile", "--url", &server.url]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        search_descriptions(&api, json!({"namespace": "ns", "text": "unique1", "mode": "flat"})).await.len(),
        1
    );
    let (_, tagged) = api.get("/v1/memory/episodes?tag=tag3").await;
    assert_eq!(tagged["episodes"].as_array().unwrap().len(), 1);
    // A rebuild runs in the background and reports in stats.
    let (s, started) = api.post("/v1/memory/rebuild", &json!({})).await;
    assert_eq!((s, started["running"].as_bool()), (202, Some(true)), "{started}");
    for _ in 0..100 {
        let (_, st) = api.get("/v1/memory/stats").await;
        if st["rebuild"]["running"] == false {
            assert_eq!(st["rebuild"]["done"], 5, "{st}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_sqlite() {
    tokio::time::timeout(Duration::from_secs(60), reconcile(None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_postgres() {
    let Some(db) = TestDb::create("ferry_mem_rc").await else { return };
    tokio::time::timeout(Duration::from_secs(60), reconcile(Some(&db))).await.unwrap();
}

async fn failed_derived_writes(db: Option<&TestDb>) {
    for kind in ["fts", "tags", "embeddings"] {
        let mut server = start(db, "", &[("FERRY_MEMORY_FAULT", kind)]).await;
        let api = std::sync::Arc::new(Api::of(&server));
        let ns = format!("fault-{kind}");
        // Good episodes race the faulty one; a 503 (its batch rolled back) is retried.
        let mut good = Vec::new();
        for i in 0..8 {
            let (api, ns) = (api.clone(), ns.clone());
            good.push(tokio::spawn(async move {
                let body = json!({"namespace": ns, "description": format!("good episode {i}"), "tags": ["ok"], "embedding": [1.0, 0.0]});
                loop {
                    let (s, v) = api.post("/v1/memory/episodes", &body).await;
                    match s {
                        201 => return v["id"].as_str().unwrap().to_string(),
                        503 => tokio::time::sleep(Duration::from_millis(5)).await,
                        _ => panic!("good episode: {s} {v}"),
                    }
                }
            }));
        }
        let bad = json!({"namespace": ns, "description": "poisoned episode", "tags": ["ferry:fault"], "embedding": [0.0, 1.0]});
        let (s, v) = api.post("/v1/memory/episodes", &bad).await;
        assert_eq!((s, error_code(&v)), (500, "internal".to_string()), "{kind}: {v}");
        for g in good {
            let id = g.await.unwrap();
            assert_eq!(api.get_past_breaker(&format!("/v1/memory/episodes/{id}")).await.0, 200);
        }
        let (_, page) = api.get_past_breaker(&format!("/v1/memory/episodes?namespace={ns}")).await;
        let descs: Vec<&str> =
            page["episodes"].as_array().unwrap().iter().map(|e| e["description"].as_str().unwrap()).collect();
        assert_eq!(descs.len(), 8, "{kind}: {page}");
        assert!(!descs.contains(&"poisoned episode"));
        assert!(
            search_descriptions(&api, json!({"namespace": ns, "text": "poisoned", "mode": "flat"}))
                .await
                .is_empty()
        );
        let (_, stats) = api.get_past_breaker(&format!("/v1/memory/stats?namespace={ns}")).await;
        assert_eq!(stats["episodes"], 8, "{kind}: {stats}");
        let (_, clean) = api.post("/v1/memory/reconcile", &json!({})).await;
        assert_eq!(clean["mismatches"], json!({"fts": 0, "tags": 0, "embeddings": 0}), "{kind}: {clean}");
        server.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_derived_writes_sqlite() {
    tokio::time::timeout(Duration::from_secs(90), failed_derived_writes(None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_derived_writes_postgres() {
    let Some(db) = TestDb::create("ferry_mem_fault").await else { return };
    tokio::time::timeout(Duration::from_secs(90), failed_derived_writes(Some(&db))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_tokens() {
    let mut server = start(None, "auth = true\n", &[]).await;
    let (code, admin, err) = cli(&["tokens", "create", "--scopes", "admin", "--url", &server.url]).await;
    assert_ne!(code, 0, "auth is on: minting needs a token ({admin}{err})");
    // The first admin token is minted straight into the stopped server's database.
    server.stop();
    let dir = server.take_dir();
    let db = dir.path().join("ferry.db");
    let (code, admin, err) =
        cli(&["tokens", "create", "--scopes", "admin", "--database", db.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let admin = admin.trim().to_string();
    std::fs::write(dir.path().join("ferry.toml"), "auth = true\n").unwrap();
    let mut server = tokio::task::spawn_blocking(move || Server::start_with(&[], dir)).await.unwrap();
    let root = Api { url: server.url.clone(), token: Some(admin) };
    let mint = |body: Value| {
        let root = &root;
        async move {
            let (s, v) = root.post("/v1/tokens", &body).await;
            assert_eq!(s, 201, "{v}");
            v["token"].as_str().unwrap().to_string()
        }
    };
    let in_a = Api {
        url: server.url.clone(),
        token: Some(mint(json!({"name": "a", "scopes": ["memory", "read"], "namespaces": ["a"]})).await),
    };
    let queues = Api {
        url: server.url.clone(),
        token: Some(mint(json!({"name": "q", "scopes": ["memory", "read"], "queues": ["q"]})).await),
    };
    let reader =
        Api { url: server.url.clone(), token: Some(mint(json!({"name": "r", "scopes": ["read"]})).await) };
    let a_id = add(&in_a, episode("a", "in a")).await;
    let b_id = add(&root, episode("b", "in b")).await;
    assert_eq!(in_a.get(&format!("/v1/memory/episodes/{a_id}")).await.0, 200);
    for path in [
        format!("/v1/memory/episodes/{b_id}"),
        "/v1/memory/episodes/01900000-0000-7000-8000-000000000000".to_string(),
    ] {
        assert_eq!(in_a.get(&path).await.0, 403, "{path}");
        let (s, _, _) = in_a.call(reqwest::Method::DELETE, &path, None, &[]).await;
        assert_eq!(s, 403);
    }
    assert_eq!(in_a.post("/v1/memory/episodes", &episode("b", "no")).await.0, 403);
    assert_eq!(in_a.post("/v1/memory/search", &json!({"namespace": "b"})).await.0, 403);
    assert_eq!(in_a.post("/v1/memory/search", &json!({"namespace": "a", "text": "in"})).await.0, 200);
    let (_, mine) = in_a.get("/v1/memory/episodes").await;
    assert_eq!(mine["episodes"].as_array().unwrap().len(), 1, "only namespace a: {mine}");
    assert_eq!(in_a.get("/v1/memory/episodes?namespace=b").await.0, 403);
    assert_eq!(in_a.post("/v1/memory/reconcile", &json!({})).await.0, 403);
    assert_eq!(queues.post("/v1/memory/episodes", &episode("a", "no")).await.0, 403);
    assert_eq!(queues.get(&format!("/v1/memory/episodes/{a_id}")).await.0, 403);
    assert_eq!(reader.post("/v1/memory/episodes", &episode("a", "no")).await.0, 403);
    assert_eq!(reader.get(&format!("/v1/memory/episodes/{b_id}")).await.0, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trip() {
    let mut one = start(None, "", &[]).await;
    let api = Api::of(&one);
    for i in 0..250 {
        let mut e = episode(if i % 2 == 0 { "even" } else { "odd" }, &format!("episode number {i}"));
        e["tags"] = json!([format!("t{}", i % 5)]);
        e["embedding"] = json!([i as f64, 0.5, -1.0]);
        e["outcome"] = json!({"status": "partial", "summary": "s", "reward": 0.25});
        e["steps"] = json!([{"tool": "shell", "action": "ran it", "status": "ok"}]);
        if i % 3 == 0 {
            e["idempotency_key"] = json!(format!("key-{i}"));
        }
        add(&api, e).await;
    }
    let file = one.dir.path().join("export.jsonl");
    let (code, _, err) = cli(&["memory", "export", "--url", &one.url, "--out", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let mut two = start(None, "", &[]).await;
    let (code, out, err) =
        cli(&["memory", "import", file.to_str().unwrap(), "--url", &two.url, "--json"]).await;
    assert_eq!((code, out.trim()), (0, "{\n  \"imported\": 250\n}"), "{err}");
    let (code, _, _) = cli(&["memory", "import", file.to_str().unwrap(), "--url", &two.url]).await;
    assert_eq!(code, 0);
    let api2 = Api::of(&two);
    let (_, s2) = api2.get("/v1/memory/stats").await;
    assert_eq!(s2["episodes"], 250, "a second import adds nothing: {s2}");
    let strip = |mut v: Value| {
        for e in v["episodes"].as_array_mut().unwrap() {
            for k in ["created_at", "updated_at"] {
                e.as_object_mut().unwrap().remove(k);
            }
        }
        v["episodes"].clone()
    };
    let (_, a) = api.get("/v1/memory/episodes?limit=1000").await;
    let (_, b) = api2.get("/v1/memory/episodes?limit=1000").await;
    assert_eq!(strip(a), strip(b), "the same episodes, in the same order");
    one.stop();
    two.stop();
}
