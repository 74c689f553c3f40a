//! `ferry migrate`: SQLite → PostgreSQL, or PostgreSQL → SQLite (the rollback), with a
//! progress bar, then a per-table summary of rows and checksums (see `ferry_store::migrate`).

use ferry_store::migrate::{MigrateOptions, Progress, postgres_to_sqlite, sqlite_to_postgres};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Options of `ferry migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Source: a SQLite file path or sqlite: URL, or a postgres:// URL to copy back (the
    /// servers using it must be stopped).
    #[arg(long)]
    from: String,
    /// Target: a postgres:// URL, or (from PostgreSQL) a SQLite file path (an empty
    /// database, unless --resume).
    #[arg(long)]
    to: String,
    /// Continue an interrupted migration into a non-empty target.
    #[arg(long)]
    resume: bool,
    /// Rows per INSERT.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// Runs the migration; prints the summary; returns the exit code.
pub async fn run(a: MigrateArgs) -> i32 {
    let is_pg = |s: &str| s.starts_with("postgres://") || s.starts_with("postgresql://");
    let sqlite_path = |s: &str| {
        PathBuf::from(s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")).unwrap_or(s))
    };
    let back = is_pg(&a.from);
    if back == is_pg(&a.to) {
        return crate::output::fail(
            "one side of a migration is SQLite and the other PostgreSQL: --from ./ferry-data/ferry.db --to \
             postgres://..., or back with --from postgres://... --to ./ferry-data/ferry.db",
        );
    }
    let opts = MigrateOptions { resume: a.resume, batch: a.batch.clamp(1, 2_000), schema: None };
    let show_bar = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut show = |p| match p {
        Progress::Table { name, total, skipped } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!(
                "copying {name}: {total} rows{}",
                if skipped > 0 { format!(" ({skipped} already there)") } else { String::new() }
            );
            if show_bar {
                let b = indicatif::ProgressBar::new(total.saturating_sub(skipped));
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "  {bar:40} {pos}/{len} rows {per_sec} eta {eta}",
                    )
                    .expect("template"),
                );
                bar = Some(b);
            }
        }
        Progress::Rows(n) => {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
        Progress::Verified { name, rows, checksum } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!("verified {name}: {rows} rows, checksum {checksum:016x} on both sides");
        }
    };
    let result = if back {
        postgres_to_sqlite(&a.from, &sqlite_path(&a.to), &opts, &mut show).await
    } else {
        sqlite_to_postgres(&sqlite_path(&a.from), &a.to, &opts, &mut show).await
    };
    match result {
        Ok(reports) => {
            println!("{:<10} {:>10} {:>10}  {:<16}", "TABLE", "ROWS", "COPIED", "CHECKSUM");
            for r in reports {
                println!("{:<10} {:>10} {:>10}  {:016x}", r.name, r.rows, r.copied, r.checksum);
            }
            let target = if back { a.to.clone() } else { ferry_server::redact(&a.to) };
            println!("migration complete: start ferry with --database {target}");
            0
        }
        Err(e) => crate::output::fail(e.message),
    }
}
