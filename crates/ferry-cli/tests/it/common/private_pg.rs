//! A PostgreSQL cluster of a test's own (initdb into a temp dir, run as `postgres`, on a free
//! port), so stopping and restarting it disturbs no other test (`faults.rs`, `pg_outage.rs`,
//! `items.rs`).

use std::path::PathBuf;
use std::process::Command;

/// A private PostgreSQL cluster, stopped (immediately) when dropped.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePg {
    /// Creates and starts the cluster, or says why it cannot (no server binaries, not root).
    pub fn start() -> Result<PrivatePg, String> {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "no PostgreSQL server binaries under /usr/lib/postgresql".to_string())?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .collect();
        versions.sort();
        let bin = versions.pop().ok_or("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let owned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        if !owned.is_ok_and(|s| s.success()) {
            return Err("cannot hand a directory to the postgres user (not root?)".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePg { dir, bin, port };
        pg.run("initdb", &["-D", &pg.data(), "-A", "trust", "-U", "postgres"])?;
        pg.up()?;
        Ok(pg)
    }

    /// `PrivatePg::start`, or `None` with a printed reason when PostgreSQL is not required
    /// (`FERRY_REQUIRE_PG=1` turns the reason into a panic).
    pub fn start_or_skip(test: &str) -> Option<PrivatePg> {
        match PrivatePg::start() {
            Ok(pg) => Some(pg),
            Err(why) if std::env::var("FERRY_REQUIRE_PG").as_deref() == Ok("1") => {
                panic!("PostgreSQL is required (FERRY_REQUIRE_PG=1) but {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: {why}; set FERRY_REQUIRE_PG=1 to fail instead");
                None
            }
        }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a server program as the `postgres` user.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .map_err(|e| format!("runuser {program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Starts the cluster (again) and waits until it accepts connections.
    pub fn up(&self) -> Result<(), String> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("pg.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"])
    }

    /// Stops the cluster (`fast` or `immediate`) and waits until it is down.
    pub fn down(&self, mode: &str) -> Result<(), String> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"])
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.down("immediate");
    }
}
