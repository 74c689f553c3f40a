//! A PostgreSQL database of a test's own, created from `FERRY_TEST_PG_URL` and dropped at the
//! end; `None` (with a printed reason) when PostgreSQL is absent and not required.

pub fn admin_url() -> String {
    std::env::var("FERRY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for this test, dropped at the end.
pub struct TestDb {
    name: String,
    /// URL of the test's database.
    pub url: String,
}

impl TestDb {
    /// Creates the database, named after `prefix`.
    pub async fn create(prefix: &str) -> Option<TestDb> {
        let admin = admin_url();
        let (client, conn) = match tokio_postgres::connect(&admin, tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) if std::env::var("FERRY_REQUIRE_PG").as_deref() != Ok("1") => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {admin} is not reachable ({e}); set FERRY_REQUIRE_PG=1 to fail instead"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL is required (FERRY_REQUIRE_PG=1) but {admin} is not usable: {e}"),
        };
        tokio::spawn(conn);
        let name = format!("{prefix}_{}_{:x}", std::process::id(), rand::random::<u32>());
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        Some(TestDb { url: format!("{base}/{name}"), name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ =
                        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            })
        })
        .join();
    }
}
