//! The memory part of the `Store` contract: episodes stored all or none with their derived rows,
//! idempotency keys and conflicts, the namespace's embedding dimension, lists newest first with
//! filters and cursors, tags and importance changed under `If-Match`, deletes, events, the
//! derived-row passes and retention; and search: pinned orders (every backend asserts the same
//! literal order, truncated cases included) and agreement with a brute-force oracle of the
//! formula written here independently of `ferry_core::memory`.

use super::{Harness, T0, events_after};
use ferry_core::memory::{self, OutcomeStatus, Ranking, Weights};
use ferry_core::wire::{EpisodeBody, OutcomeBody};
use ferry_core::*;
use ferry_store::memory_rows::{SearchPlan, search};
use ferry_store::{DerivedPass, EpisodeFilter, EpisodeList, PassMode};
use std::collections::HashSet;
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

fn body(ns: &str, desc: &str) -> EpisodeBody {
    EpisodeBody { namespace: ns.into(), description: Some(desc.into()), ..Default::default() }
}

fn new(n: u128, b: EpisodeBody) -> memory::NewEpisode {
    b.validate(id(n), &Limits::default()).unwrap()
}

fn plan(ns: &str, text: &str, k: usize) -> SearchPlan {
    SearchPlan {
        filter: EpisodeFilter { namespace: Some(ns.into()), ..Default::default() },
        context: None,
        fallback: None,
        ranking: Ranking {
            terms: memory::query_terms(text, memory::MAX_QUERY_TERMS),
            vector: None,
            weights: Weights::default(),
            half_life_ms: memory::DEFAULT_HALF_LIFE_MS,
            lambda: None,
            k,
            now_ms: T0 + 3_600_000,
        },
        candidates: 2_000,
        max_scanned: 50_000,
    }
}

async fn descriptions(h: &Harness, p: SearchPlan) -> Vec<String> {
    let out = search(&*h.store, p).await.unwrap();
    out.hits.into_iter().map(|(_, e)| e.content.description).collect()
}

pub async fn add_get_list_and_idempotency(h: Harness) {
    let s = &h.store;
    let mut keyed = body("ns", "first");
    keyed.idempotency_key = Some("k1".into());
    keyed.tags = vec!["a".into(), "b".into(), "a".into()];
    let out = s.add_episodes(vec![new(1, keyed.clone())]).await.unwrap();
    assert!(!out[0].duplicate && out[0].id == id(1) && out[0].created_at == Some(Timestamp(T0)));
    // A resend (new server id, same key and body) answers the stored id.
    let again = s.add_episodes(vec![new(2, keyed.clone())]).await.unwrap();
    assert_eq!((again[0].id, again[0].duplicate), (id(1), true));
    let mut other = keyed.clone();
    other.description = Some("changed".into());
    let e = s.add_episodes(vec![new(3, other)]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.details.unwrap()["id"], serde_json::json!(id(1)));
    let got = s.get_episode(id(1)).await.unwrap().unwrap();
    assert_eq!((got.version, got.tags.clone(), got.importance), (1, vec!["a".to_string(), "b".into()], 0.5));
    assert_eq!(got.idempotency_key.as_deref(), Some("k1"));
    assert!(s.get_episode(id(99)).await.unwrap().is_none());

    // A batch is all or nothing: a conflict in it stores none of it.
    let mut bad = keyed.clone();
    bad.description = Some("other body".into());
    let e = s.add_episodes(vec![new(10, body("ns", "ten")), new(11, bad)]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(s.get_episode(id(10)).await.unwrap().is_none());
    // The namespace's first embedding fixes its dimension, within a batch too.
    let with = |n: u128, dims: usize| {
        let mut b = body("ns", &format!("vec {n}"));
        b.embedding = Some(vec![1.0; dims]);
        new(n, b)
    };
    let e = s.add_episodes(vec![with(20, 3), with(21, 4)]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert_eq!(e.field.as_deref(), Some("episodes[1].embedding"));
    s.add_episodes(vec![with(20, 3)]).await.unwrap();
    let e = s.add_episodes(vec![with(22, 2)]).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("embedding")));
    s.add_episodes(
        vec![with(23, 2)]
            .into_iter()
            .map(|mut e| {
                e.namespace = "other".into();
                e
            })
            .collect(),
    )
    .await
    .unwrap();

    // Lists: newest first, filtered, paged.
    let mut batch = Vec::new();
    for n in 30..36u128 {
        let mut b = body("ns", &format!("ep {n}"));
        b.agent = Some(if n % 2 == 0 { "even" } else { "odd" }.into());
        b.outcome =
            Some(OutcomeBody { status: OutcomeStatus::Success, summary: String::new(), reward: None });
        b.tags = vec![format!("t{}", n % 3)];
        batch.push(new(n, b));
    }
    s.add_episodes(batch).await.unwrap();
    let page = |filter: EpisodeFilter, before: Option<i64>, limit: usize| {
        let s = s.clone();
        async move { s.list_episodes(EpisodeList { filter, before, limit }).await.unwrap() }
    };
    let ns = || EpisodeFilter { namespace: Some("ns".into()), ..Default::default() };
    let (first, next) = page(ns(), None, 3).await;
    let ids: Vec<Uuid> = first.iter().map(|e| e.id).collect();
    assert_eq!(ids, [id(35), id(34), id(33)]);
    let (second, _) = page(ns(), next, 100).await;
    let ids: Vec<Uuid> = second.iter().map(|e| e.id).collect();
    assert_eq!(ids, [id(32), id(31), id(30), id(20), id(1)]);
    let (odd, _) = page(EpisodeFilter { agents: vec!["odd".into()], ..ns() }, None, 100).await;
    assert_eq!(odd.iter().map(|e| e.id).collect::<Vec<_>>(), [id(35), id(33), id(31)]);
    let (t0, _) = page(EpisodeFilter { tags_all: vec!["t0".into()], ..ns() }, None, 100).await;
    assert_eq!(t0.iter().map(|e| e.id).collect::<Vec<_>>(), [id(33), id(30)]);
    let (won, _) = page(EpisodeFilter { outcomes: vec![OutcomeStatus::Success], ..ns() }, None, 100).await;
    assert_eq!(won.len(), 6);
    let (mine, _) =
        page(EpisodeFilter { namespaces: Some(vec!["other".into()]), ..Default::default() }, None, 100).await;
    assert_eq!(mine.iter().map(|e| e.id).collect::<Vec<_>>(), [id(23)]);

    let stats = s.memory_stats(Some("ns".into()), None).await.unwrap();
    assert_eq!((stats.episodes, stats.embedding_dims), (8, Some(3)));
    assert_eq!(stats.oldest_at, Some(Timestamp(T0)));
    let all = s.memory_stats(None, None).await.unwrap();
    assert_eq!((all.episodes, all.embedding_dims), (9, None));

    let events = events_after(&h, 0, 9).await;
    let added: Vec<&Event> = events.iter().filter(|e| e.kind == EventType::EpisodeAdded).collect();
    assert_eq!(added.len(), 9);
    assert_eq!(added[0].subject, Subject::new(SubjectKind::Namespace, "ns"));
    assert_eq!(added[0].data.as_ref().unwrap()["id"], serde_json::json!(id(1)));
    h.finish().await;
}

pub async fn patch_and_delete(h: Harness) {
    let s = &h.store;
    let mut b = body("ns", "patch me");
    b.tags = vec!["old".into()];
    s.add_episodes(vec![new(1, b)]).await.unwrap();
    h.clock.advance(1_000);
    let p = memory::EpisodePatch {
        id: id(1),
        tags: Some(vec!["new".into()]),
        importance: Some(0.9),
        if_version: Some(1),
        namespaces: None,
    };
    let e = s.patch_episode(p.clone()).await.unwrap();
    assert_eq!((e.version, e.tags.clone(), e.importance), (2, vec!["new".to_string()], 0.9));
    assert_eq!(e.updated_at, Timestamp(T0 + 1_000));
    let stale = s.patch_episode(p).await.unwrap_err();
    assert_eq!(stale.code, ErrorCode::PreconditionFailed);
    assert_eq!(stale.details.unwrap()["actual_version"], 2);
    let missing =
        memory::EpisodePatch { id: id(9), tags: None, importance: None, if_version: None, namespaces: None };
    assert_eq!(s.patch_episode(missing).await.unwrap_err().code, ErrorCode::NotFound);
    let tagged = |t: &str| EpisodeFilter { tags_all: vec![t.into()], ..Default::default() };
    let list = |f: EpisodeFilter| {
        let s = s.clone();
        async move { s.list_episodes(EpisodeList { filter: f, before: None, limit: 10 }).await.unwrap().0.len() }
    };
    assert_eq!((list(tagged("old")).await, list(tagged("new")).await), (0, 1));
    assert!(s.delete_episode(id(1)).await.unwrap());
    assert!(!s.delete_episode(id(1)).await.unwrap());
    assert!(s.get_episode(id(1)).await.unwrap().is_none());
    assert_eq!(search(&**s, plan("ns", "patch", 10)).await.unwrap().hits.len(), 0);
    assert_eq!(s.memory_stats(Some("ns".into()), None).await.unwrap().episodes, 0);
    let kinds: Vec<EventType> = events_after(&h, 0, 3).await.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::EpisodeAdded, EventType::EpisodeUpdated, EventType::EpisodeDeleted]);
    h.finish().await;
}

/// A small corpus whose orders every backend must reproduce literally.
async fn corpus(h: &Harness) {
    let eps = [
        ("web", "scrape", "scrape the pricing page with a headless browser", OutcomeStatus::Success),
        ("web", "scrape", "pricing page scrape failed on a captcha", OutcomeStatus::Failure),
        ("web", "login", "log in to the vendor portal", OutcomeStatus::Success),
        ("ops", "deploy", "deploy the api service to staging", OutcomeStatus::Success),
        ("ops", "deploy", "rollback the api deploy after errors", OutcomeStatus::Partial),
        ("ops", "backup", "nightly database backup and restore check", OutcomeStatus::Success),
    ];
    let mut batch = Vec::new();
    for (i, (domain, task, desc, status)) in eps.iter().enumerate() {
        let mut b = body("corp", desc);
        b.domain = Some(domain.to_string());
        b.task_type = Some(task.to_string());
        b.outcome = Some(OutcomeBody { status: *status, summary: String::new(), reward: None });
        b.importance = Some(0.1 * (i as f64 + 1.0));
        b.ended_at = Some(time::format_ms(T0 - 3_600_000 * i as i64));
        b.embedding = Some(vec![(i % 3) as f64, ((i + 1) % 3) as f64, 1.0]);
        batch.push(new(i as u128 + 1, b));
    }
    h.store.add_episodes(batch).await.unwrap();
}

pub async fn search_orders_are_pinned(h: Harness) {
    corpus(&h).await;
    let flat = descriptions(&h, plan("corp", "pricing page", 3)).await;
    assert_eq!(
        flat,
        ["pricing page scrape failed on a captcha", "scrape the pricing page with a headless browser"],
        "only episodes matching a term are flat candidates"
    );
    let deploy = descriptions(&h, plan("corp", "api deploy", 10)).await;
    // Equal text scores: importance and outcome (0.2 + 0.5 against 0.25 + 0.25) decide.
    assert_eq!(deploy, ["deploy the api service to staging", "rollback the api deploy after errors"]);
    // Bounds cut on episodes, newest first: one candidate is the newest match.
    let mut one = plan("corp", "pricing page", 3);
    one.candidates = 1;
    let out = search(&*h.store, one).await.unwrap();
    assert!(out.truncated);
    assert_eq!(out.hits[0].1.content.description, "pricing page scrape failed on a captcha");
    // A scan window of 4 keeps out the two oldest (and their matches).
    let mut window = plan("corp", "pricing page scrape", 10);
    window.max_scanned = 4;
    let out = search(&*h.store, window).await.unwrap();
    assert!(out.truncated);
    assert!(out.hits.is_empty(), "both matches are among the two oldest");
    let mut window = plan("corp", "deploy", 10);
    window.max_scanned = 4;
    let out = search(&*h.store, window).await.unwrap();
    assert_eq!((out.truncated, out.hits.len()), (true, 2));

    // Hierarchical: too few signals at the task type and the domain, so the namespace serves.
    let mut hier = plan("corp", "page", 2);
    hier.context = Some((Some("web".into()), Some("scrape".into())));
    let out = search(&*h.store, hier).await.unwrap();
    assert_eq!((out.served_by, out.level), ("hierarchical", "namespace"));
    assert!(out.fallback_reason.unwrap().contains("at domain"));
    // Without text or vector every candidate carries a signal: 20 are needed, 2 exist.
    let mut none = plan("corp", "", 1);
    none.context = Some((Some("ops".into()), None));
    let out = search(&*h.store, none).await.unwrap();
    assert_eq!(out.level, "namespace");
    assert_eq!(out.candidates_scored, 6);
    // The full formula, diversity on, vectors on: the same literal order everywhere. With a
    // query vector a flat search also takes the newest episodes, so the backup episode (no
    // query word, the nearest vector) leads.
    let mut full = plan("corp", "scrape deploy", 6);
    full.ranking.vector = Some(memory::unit(&[1.0, 0.0, 1.0]));
    full.ranking.lambda = Some(0.7);
    let all: Vec<String> = descriptions(&h, full).await;
    assert_eq!(
        all,
        [
            "nightly database backup and restore check",
            "deploy the api service to staging",
            "rollback the api deploy after errors",
            "log in to the vendor portal",
            "scrape the pricing page with a headless browser",
            "pricing page scrape failed on a captcha",
        ]
    );
    h.finish().await;
}

/// A deterministic generator (xorshift), so both backends see the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const WORDS: [&str; 12] = [
    "alpha", "beta", "gamma", "delta", "deploy", "scrape", "login", "api", "page", "error", "retry", "cache",
];

/// One corpus episode as the oracle sees it.
struct Spec {
    id: Uuid,
    agent: String,
    tags: Vec<String>,
    outcome: OutcomeStatus,
    at: i64,
    importance: f64,
    tokens: Vec<String>,
}

/// The formula, computed from scratch: filters, newest first, the scan window and any-term
/// match, the candidate bound, then BM25 (IDF over candidates) min-max normalized, recency,
/// importance and outcome, best first, ties newer first.
fn oracle(
    corpus: &[Spec],
    terms: &[String],
    filter: &dyn Fn(&Spec) -> bool,
    k: usize,
    cands: usize,
    scan: usize,
    now: i64,
) -> Vec<Uuid> {
    let passing: Vec<&Spec> = corpus.iter().rev().filter(|s| filter(s)).take(scan).collect();
    let pool: Vec<&Spec> = passing
        .into_iter()
        .filter(|s| terms.is_empty() || s.tokens.iter().any(|t| terms.contains(t)))
        .take(cands)
        .collect();
    let n = pool.len() as f64;
    let avg = (pool.iter().map(|s| s.tokens.len() as f64).sum::<f64>() / n.max(1.0)).max(1.0);
    let bm: Vec<f64> = pool
        .iter()
        .map(|s| {
            terms
                .iter()
                .map(|t| {
                    let f = s.tokens.iter().filter(|x| *x == t).count() as f64;
                    let df = pool.iter().filter(|p| p.tokens.contains(t)).count() as f64;
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    if f == 0.0 {
                        0.0
                    } else {
                        idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * s.tokens.len() as f64 / avg))
                    }
                })
                .sum()
        })
        .collect();
    let (lo, hi) = bm.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let mut scored: Vec<(f64, usize)> = pool
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = if hi > lo {
                (bm[i] - lo) / (hi - lo)
            } else if bm[i] > 0.0 {
                1.0
            } else {
                0.0
            };
            let r = 0.5f64.powf((now - s.at).max(0) as f64 / memory::DEFAULT_HALF_LIFE_MS as f64);
            let o = match s.outcome {
                OutcomeStatus::Success => 1.0,
                OutcomeStatus::Partial => 0.5,
                _ => 0.0,
            };
            (t + r + 0.5 * s.importance + 0.5 * o, i)
        })
        .collect();
    // `pool` is newest first: a lower index is newer.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| pool[i].id).collect()
}

pub async fn search_agrees_with_a_brute_force_oracle(h: Harness) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut corpus = Vec::new();
    let mut batch = Vec::new();
    for n in 0..150u128 {
        let words: Vec<&str> = (0..(3 + rng.next() % 8)).map(|_| rng.pick(&WORDS)).collect();
        let desc = words.join(" ");
        let outcome = [OutcomeStatus::Success, OutcomeStatus::Partial, OutcomeStatus::Failure]
            [(rng.next() % 3) as usize];
        let spec = Spec {
            id: id(n),
            agent: rng.pick(&["a1", "a2", "a3"]).into(),
            tags: vec![rng.pick(&["red", "green", "blue"]).into()],
            outcome,
            at: T0 - (rng.next() % 1_000) as i64 * 3_600_000,
            importance: (rng.next() % 11) as f64 / 10.0,
            tokens: words.iter().map(|w| w.to_string()).collect(),
        };
        let b = EpisodeBody {
            namespace: "p".into(),
            agent: Some(spec.agent.clone()),
            domain: Some(rng.pick(&["web", "ops"]).into()),
            description: Some(desc),
            outcome: Some(OutcomeBody { status: outcome, summary: String::new(), reward: None }),
            importance: Some(spec.importance),
            tags: spec.tags.clone(),
            ended_at: Some(time::format_ms(spec.at)),
            ..Default::default()
        };
        batch.push(new(n, b));
        corpus.push(spec);
        if batch.len() == 50 {
            h.store.add_episodes(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    let now = T0 + 3_600_000;
    for case in 0..40 {
        let terms: Vec<String> = (0..1 + rng.next() % 3).map(|_| rng.pick(&WORDS).to_string()).collect();
        let terms = memory::query_terms(&terms.join(" "), 64);
        let agent = (case % 3 == 0).then(|| rng.pick(&["a1", "a2", "a3"]).to_string());
        let tag = (case % 4 == 1).then(|| rng.pick(&["red", "green", "blue"]).to_string());
        let won = case % 5 == 2;
        let k = 1 + (rng.next() % 20) as usize;
        let (cands, scan) = if case % 2 == 0 {
            (2_000, 50_000)
        } else {
            (1 + (rng.next() % 40) as usize, 10 + (rng.next() % 100) as usize)
        };
        let mut p = plan("p", &terms.join(" "), k);
        p.ranking.now_ms = now;
        p.candidates = cands;
        p.max_scanned = scan;
        p.filter.agents = agent.iter().cloned().collect();
        p.filter.tags_all = tag.iter().cloned().collect();
        if won {
            p.filter.outcomes = vec![OutcomeStatus::Success];
        }
        let got: Vec<Uuid> = search(&*h.store, p).await.unwrap().hits.iter().map(|(_, e)| e.id).collect();
        let keep = |s: &Spec| {
            agent.as_ref().is_none_or(|a| *a == s.agent)
                && tag.as_ref().is_none_or(|t| s.tags.contains(t))
                && (!won || s.outcome == OutcomeStatus::Success)
        };
        let want = oracle(&corpus, &terms, &keep, k, cands, scan, now);
        assert_eq!(
            got, want,
            "case {case}: terms {terms:?} agent {agent:?} tag {tag:?} k {k} cands {cands} scan {scan}"
        );
        let distinct: HashSet<Uuid> = got.iter().copied().collect();
        assert!(got.len() <= k && distinct.len() == got.len());
    }
    h.finish().await;
}

/// One check pass over every namespace in pages of `batch`, asserting each page finds no
/// mismatch (`what` names the pass in a failure); the episodes checked.
async fn check_clean(h: &Harness, batch: usize, what: &str) -> u64 {
    let (mut after, mut checked) = (0, 0);
    loop {
        let o = h
            .store
            .memory_pass(DerivedPass { namespace: None, after, batch, mode: PassMode::Check })
            .await
            .unwrap();
        assert_eq!(o.mismatches.total(), 0, "{what} from {after}: {:?}", o.mismatches);
        checked += o.checked;
        match o.next {
            Some(n) => after = n,
            None => return checked,
        }
    }
}

pub async fn passes_find_nothing_on_a_clean_store_and_retention_retires(h: Harness) {
    corpus(&h).await;
    assert_eq!(check_clean(&h, 4, "").await, 6);
    let o = h
        .store
        .memory_pass(DerivedPass {
            namespace: Some("corp".into()),
            after: 0,
            batch: 100,
            mode: PassMode::Rewrite,
        })
        .await
        .unwrap();
    assert_eq!((o.checked, o.repaired, o.next), (6, 6, None));
    assert_eq!(descriptions(&h, plan("corp", "api deploy", 10)).await.len(), 2, "rewritten rows still match");
    h.clock.advance(1_000);
    h.store.add_episodes(vec![new(50, body("corp", "fresh"))]).await.unwrap();
    assert_eq!(h.store.retire_episodes(T0 + 1, 100).await.unwrap(), 6);
    assert_eq!(h.store.memory_stats(Some("corp".into()), None).await.unwrap().episodes, 1);
    h.finish().await;
}

/// A check pass reads each page at one point in time: episodes deleted and re-tagged while the
/// passes run (as retention and clients do) are never reported as mismatches. Each delete and
/// patch changes an episode and its derived rows in one transaction, so any mismatch a pass sees
/// is between two moments it read.
pub async fn check_passes_beside_deletes_and_patches_find_nothing(h: Harness) {
    const EPISODES: u128 = 600;
    for start in (0..EPISODES).step_by(100) {
        let batch = (start..start + 100)
            .map(|n| {
                let mut b = body("churn", &format!("episode {n} about deploys and retries"));
                b.tags = vec![format!("t{}", n % 5)];
                new(1_000 + n, b)
            })
            .collect();
        h.store.add_episodes(batch).await.unwrap();
    }
    let changer = {
        let s = h.store.clone();
        tokio::spawn(async move {
            for n in 0..EPISODES / 2 {
                // Newest first: the pages a pass has not read yet keep changing under it.
                let victim = id(1_000 + EPISODES - 1 - n);
                assert!(s.delete_episode(victim).await.unwrap());
                let retag = memory::EpisodePatch {
                    id: id(1_000 + n),
                    tags: Some(vec![format!("r{n}"), "moved".into()]),
                    importance: None,
                    if_version: None,
                    namespaces: None,
                };
                s.patch_episode(retag).await.unwrap();
            }
        })
    };
    let mut passes = 0;
    while !changer.is_finished() || passes == 0 {
        check_clean(&h, 150, &format!("pass {passes}")).await;
        passes += 1;
    }
    changer.await.unwrap();
    assert!(passes > 1, "the passes ran beside the changes ({passes})");
    h.finish().await;
}

/// Concurrent adds: one key sent by many at once is stored once (the others are duplicates of
/// it), and concurrent first embeddings of two dimensions leave one dimension, refusing the
/// other; the counters match the rows.
pub async fn concurrent_adds_agree(h: Harness) {
    let mut keyed = body("race", "one body under one key");
    keyed.idempotency_key = Some("same".into());
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..8u128 {
        let (s, e) = (h.store.clone(), new(100 + n, keyed.clone()));
        calls.spawn(async move { s.add_episodes(vec![e]).await });
    }
    let mut outs = Vec::new();
    while let Some(r) = calls.join_next().await {
        outs.push(r.unwrap().unwrap().remove(0));
    }
    let first: Vec<_> = outs.iter().filter(|o| !o.duplicate).collect();
    assert_eq!(first.len(), 1, "{outs:?}");
    assert!(outs.iter().all(|o| o.id == first[0].id), "{outs:?}");
    for n in 0..8u128 {
        let (s, mut b) = (h.store.clone(), body("dims", &format!("vector {n}")));
        b.embedding = Some(vec![1.0; 2 + (n % 2) as usize]);
        let e = new(200 + n, b);
        calls.spawn(async move { s.add_episodes(vec![e]).await });
    }
    let mut dims = HashSet::new();
    while let Some(r) = calls.join_next().await {
        match r.unwrap() {
            Ok(o) => {
                let got = h.store.get_episode(o[0].id).await.unwrap().unwrap();
                dims.insert(got.embedding.unwrap().len());
            }
            Err(e) => assert_eq!(e.code, ErrorCode::ValidationFailed),
        }
    }
    assert_eq!(dims.len(), 1, "one dimension stored: {dims:?}");
    let stats = h.store.memory_stats(Some("race".into()), None).await.unwrap();
    assert_eq!(stats.episodes, 1);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend.
macro_rules! memory_rules {
    () => {
        domain_tests!(memory:
            add_get_list_and_idempotency, patch_and_delete, search_orders_are_pinned,
            search_agrees_with_a_brute_force_oracle,
            passes_find_nothing_on_a_clean_store_and_retention_retires, concurrent_adds_agree,
            check_passes_beside_deletes_and_patches_find_nothing,
        );
    };
}
