//! The conformance suite against the PostgreSQL backend: the same tests as SQLite, one
//! schema per test, dropped afterwards.
//!
//! The server comes from `FERRY_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Without a reachable server the tests skip with a printed reason, unless
//! `FERRY_REQUIRE_PG=1` (as in CI), where they fail.

use crate::conformance::{self, Harness};
use ferry_core::{Limits, ManualClock};
use ferry_store::prelude::*;
use ferry_store::{PgConfig, PgStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn url() -> String {
    std::env::var("FERRY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Drops the test's schema when the test ends, pass or fail.
struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(PgStore::drop_schema(&url(), &schema))
        })
        .join();
    }
}

static N: AtomicUsize = AtomicUsize::new(0);

async fn harness(clock: Arc<ManualClock>, limits: Limits) -> Option<Harness> {
    let schema = format!(
        "ferry_t_{}_{}_{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    );
    let mut cfg = PgConfig::new(url());
    cfg.schema = Some(schema.clone());
    cfg.pool_size = 20;
    cfg.limits = limits;
    match PgStore::open(cfg, clock.clone()).await {
        Ok(store) => Some(Harness { store: Arc::new(store), clock, guard: Box::new(SchemaGuard(schema)) }),
        Err(e) if std::env::var("FERRY_REQUIRE_PG").as_deref() != Ok("1") => {
            eprintln!(
                "SKIPPED: PostgreSQL at {} is not reachable ({e}); set FERRY_REQUIRE_PG=1 to fail instead",
                url()
            );
            None
        }
        Err(e) => panic!("PostgreSQL is required (FERRY_REQUIRE_PG=1) but {} is not usable: {e}", url()),
    }
}

conformance_tests!(harness);

// ---------- PostgreSQL-only: several nodes on one database ----------

/// Opens `n` stores (nodes) on one fresh schema; None when PostgreSQL is absent and optional.
async fn nodes(n: usize, fallback_poll_ms: u64) -> Option<(Vec<Arc<PgStore>>, SchemaGuard)> {
    let clock = ManualClock::new(conformance::T0);
    let h = harness(clock.clone(), Limits::default()).await?;
    let guard = *h.guard.downcast::<SchemaGuard>().expect("postgres guard");
    h.store.close().await;
    let mut out = Vec::new();
    for _ in 0..n {
        let mut cfg = PgConfig::new(url());
        cfg.schema = Some(guard.0.clone());
        cfg.fallback_poll_ms = fallback_poll_ms;
        out.push(Arc::new(PgStore::open(cfg, clock.clone()).await.unwrap()));
    }
    Some((out, guard))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_on_one_node_wakes_a_claimer_on_another() {
    // A 60 s fallback poll: only the notification can wake the claimer in time.
    let Some((nodes, _guard)) = nodes(2, 60_000).await else { return };
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let waiter = tokio::spawn(async move {
        let req = ferry_core::ClaimRequest { queue: "x".into(), worker: "w".into(), max: 1, lease_ms: None };
        let jobs =
            ferry_store::claim_wait(b.as_ref(), req, std::time::Duration::from_secs(30)).await.unwrap();
        (jobs, std::time::Instant::now())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = std::time::Instant::now();
    a.enqueue(vec![conformance::job("x")]).await.unwrap();
    let (jobs, got) =
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1);
    let latency = got.duration_since(sent);
    assert!(latency < std::time::Duration::from_millis(500), "cross-node wake-up took {latency:?}");
    for n in nodes {
        n.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_newer_schemas_are_refused() {
    let Some((first, guard)) = nodes(1, 1_000).await else { return };
    first[0].close().await;
    // Four nodes open the same schema at once: the advisory lock serializes them.
    let opens = (0..4).map(|_| {
        let mut cfg = PgConfig::new(url());
        cfg.schema = Some(guard.0.clone());
        PgStore::open(cfg, ManualClock::new(conformance::T0))
    });
    for r in futures_util::future::join_all(opens).await {
        r.expect("concurrent open").close().await;
    }
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let table = format!("{}.ferry_meta", guard.0);
    let v: String = client
        .query_one(&format!("SELECT value FROM {table} WHERE key = 'schema_version'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, ferry_store::postgres::schema::SCHEMA_VERSION.to_string());
    client
        .execute(&format!("UPDATE {table} SET value = '999' WHERE key = 'schema_version'"), &[])
        .await
        .unwrap();
    let mut cfg = PgConfig::new(url());
    cfg.schema = Some(guard.0.clone());
    let err =
        PgStore::open(cfg, ManualClock::new(conformance::T0)).await.err().expect("a newer schema is refused");
    assert_eq!(err.code, ferry_core::ErrorCode::SchemaTooNew);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_of_an_unexpected_type_is_an_internal_error_not_a_panic() {
    let Some((nodes, guard)) = nodes(1, 1_000).await else { return };
    let id = nodes[0].enqueue(vec![conformance::job("x")]).await.unwrap()[0].id;
    // `priority` is read as an INTEGER: widen it behind the store's back.
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("ALTER TABLE {}.jobs ALTER COLUMN priority TYPE BIGINT", guard.0))
        .await
        .unwrap();
    let err = nodes[0].get_job(id).await.expect_err("a mismatched column is an error");
    assert_eq!(err.code, ferry_core::ErrorCode::Internal);
    assert!(err.message.contains("column 5 (priority)"), "{}", err.message);
    nodes[0].close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_on_three_nodes_lease_each_job_once() {
    let Some((nodes, _guard)) = nodes(3, 1_000).await else { return };
    for _ in 0..5 {
        let batch = (0..1_000).map(|_| conformance::job("m")).collect();
        nodes[0].enqueue(batch).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..12 {
        let node = nodes[w % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let req = ferry_core::ClaimRequest {
                    queue: "m".into(),
                    worker: format!("w{w}"),
                    max: 25,
                    lease_ms: None,
                };
                let jobs = node.claim(req).await.unwrap();
                if jobs.is_empty() {
                    return seen;
                }
                let items = jobs
                    .iter()
                    .map(|j| ferry_core::CompleteItem {
                        id: j.id,
                        lease: j.lease.clone(),
                        result: None,
                        pressure: None,
                    })
                    .collect();
                for r in node.complete(items).await.unwrap() {
                    r.unwrap();
                }
                seen.extend(jobs.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (5_000, 5_000), "every job leased exactly once across nodes");
    assert!(nodes[1].check_invariants().await.unwrap().is_empty());
    for n in nodes {
        n.close().await;
    }
}

// ---------- PostgreSQL-only: memory plan shapes ----------

/// 10,000 synthetic episodes stored in namespace `plans` (30 words with a skew, `task` in every
/// one; 10 domains × 5 task types, 20 agents, 7 tags), copied 29 times by SQL (new ids and
/// positions, the same rows otherwise) to 300,000, the size where plans settle, then vacuumed
/// and analysed.
async fn plan_corpus(store: &PgStore, guard: &SchemaGuard) {
    use ferry_core::wire::EpisodeBody;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut word = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = (x % 1_000_000) as f64 / 1_000_000.0;
        format!("w{}", (5_000f64.powf(u) - 1.0) as u64)
    };
    let limits = Limits::default();
    for b in 0..100u64 {
        let batch = (0..100u64)
            .map(|j| {
                let i = b * 100 + j;
                let mut words: Vec<String> = (0..29).map(|_| word()).collect();
                words.push("task".into());
                let body = EpisodeBody {
                    namespace: "plans".into(),
                    agent: Some(format!("agent{}", i % 20)),
                    domain: Some(format!("d{}", i % 10)),
                    task_type: Some(format!("t{}", (i / 10) % 5)),
                    description: Some(words.join(" ")),
                    tags: vec![format!("tag{}", i % 7)],
                    ..Default::default()
                };
                body.validate(uuid::Uuid::now_v7(), &limits).unwrap()
            })
            .collect();
        store.add_episodes(batch).await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let cols = "namespace, agent, domain, task_type, outcome, at, importance, tags, version, created_at, \
                updated_at, body_hash, bytes, content, terms";
    client
        .batch_execute(&format!(
            "SET search_path TO {}; CREATE TEMP TABLE copies AS SELECT generate_series(1, 29) AS n;
             INSERT INTO episodes (id, {cols}) SELECT gen_random_uuid(), {cols} FROM episodes, copies ORDER BY n, seq;
             INSERT INTO episode_tags (seq, tag) SELECT e.seq, 'tag' || (e.seq % 7) FROM episodes e
                 WHERE NOT EXISTS (SELECT 1 FROM episode_tags t WHERE t.seq = e.seq);
             ANALYZE",
            guard.0
        ))
        .await
        .unwrap();
    // As ferry's vacuum loop leaves a table past a tenth of new rows: the visibility map set, so
    // index-only walks stay index-only.
    client.batch_execute("VACUUM (ANALYZE) episodes, episode_tags").await.unwrap();
}

/// Memory's statements keep their plan shapes over 300,000 analysed episodes: no statement
/// reads a whole table; the span and the window's edge walk the index made for their filter
/// (namespace, domain, domain and task type, agent) backwards, from the index alone, instead of
/// sorting the filter's rows (a tag filter excepted: its edge reads every tagged episode
/// whatever the plan); a common term walks newest first; a rare one reads the `tsvector`'s GIN
/// index past the first span. Every plan is made with the search connections' `work_mem`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_plans_keep_their_shapes() {
    use ferry_store::{CandidateQuery, EpisodeFilter, EpisodeList};
    let Some((nodes, guard)) = nodes(1, 1_000).await else { return };
    let store = nodes[0].clone();
    plan_corpus(&store, &guard).await;
    let ns = |f: EpisodeFilter| EpisodeFilter { namespace: Some("plans".into()), ..f };
    let query = |filter: EpisodeFilter, terms: Option<&[&str]>| CandidateQuery {
        filter: ns(filter),
        terms: terms.map(|t| t.iter().map(|s| s.to_string()).collect()),
        limit: 2_000,
        max_scanned: 50_000,
        vectors: false,
    };
    // (case, query, [(statement, what its plan must show)])
    type Case<'a> = (&'a str, CandidateQuery, &'a [(&'a str, &'a str)]);
    let cases: Vec<Case> = vec![
        (
            "rare term",
            query(EpisodeFilter::default(), Some(&["w4000", "w4500"])),
            &[("rest", "episodes_tsv")],
        ),
        (
            "common term",
            query(EpisodeFilter::default(), Some(&["task"])),
            &[("first", "Index Scan Backward")],
        ),
        ("newest", query(EpisodeFilter::default(), None), &[("first", "Index Scan Backward")]),
        (
            "rare term in a domain",
            query(
                EpisodeFilter { domain: Some("d3".into()), ..Default::default() },
                Some(&["w4000", "w4500"]),
            ),
            &[("span", "Index Only Scan Backward using episodes_domain"), ("edge", "episodes_domain")],
        ),
        (
            "domain and task type",
            query(
                EpisodeFilter {
                    domain: Some("d3".into()),
                    task_type: Some("t1".into()),
                    ..Default::default()
                },
                None,
            ),
            &[("span", "Index Only Scan Backward using episodes_task")],
        ),
        (
            "agent",
            query(EpisodeFilter { agents: vec!["agent7".into()], ..Default::default() }, None),
            &[("span", "Index Only Scan Backward using episodes_agent")],
        ),
        (
            "tag",
            query(EpisodeFilter { tags_any: vec!["tag3".into()], ..Default::default() }, None),
            &[("span", "episode_tags_tag")],
        ),
    ];
    for (name, q, want) in cases {
        let list = EpisodeList { filter: q.filter.clone(), before: None, limit: 100 };
        let plans = store.explain_memory(&q, &list).await.unwrap();
        for (stmt, plan) in &plans {
            eprintln!("--- {name}: {stmt}\n{plan}");
            // A tag filter's edge counts up to `max_scanned` tagged episodes, 41,850 here: any plan
            // reads them all, and PostgreSQL may rightly choose a hash join for it.
            if *stmt == "edge" && !q.filter.tags_any.is_empty() {
                continue;
            }
            assert!(!plan.contains("Seq Scan"), "{name}: {stmt} reads a whole table:\n{plan}");
            // Search connections keep a bitmap over the whole history exact (not lossy).
            assert!(
                plan.contains("work_mem = '32MB'"),
                "{name}: {stmt} without the search work_mem:\n{plan}"
            );
            if matches!(*stmt, "edge" | "span") && q.filter.tags_any.is_empty() {
                assert!(
                    plan.contains("Scan Backward"),
                    "{name}: {stmt} sorts instead of walking an index:\n{plan}"
                );
            }
        }
        for (stmt, needle) in want {
            let plan = &plans.iter().find(|(s, _)| s == stmt).unwrap().1;
            assert!(plan.contains(needle), "{name}: {stmt} does not show {needle}:\n{plan}");
        }
    }
    store.close().await;
}
