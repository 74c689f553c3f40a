//! The conformance suite against the PostgreSQL backend: the same tests as SQLite, one
//! schema per test, dropped afterwards.
//!
//! The server comes from `FERRY_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Without a reachable server the tests skip with a printed reason, unless
//! `FERRY_REQUIRE_PG=1` (as in CI), where they fail.

mod conformance;

use conformance::Harness;
use ferry_core::ManualClock;
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

async fn harness(clock: Arc<ManualClock>) -> Option<Harness> {
    let schema = format!(
        "ferry_t_{}_{}_{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    );
    let mut cfg = PgConfig::new(url());
    cfg.schema = Some(schema.clone());
    cfg.pool_size = 20;
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
