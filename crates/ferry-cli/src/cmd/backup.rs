//! `ferry backup --to FILE`: a consistent copy of a running SQLite server's database, taken
//! through the API and verified (size, SHA-256, SQLite's integrity check, schema) before it
//! takes its name; `ferry restore --from FILE --data-dir DIR`: the copy put back, refused
//! while a server holds the directory.

use crate::ClientOpts;
use crate::output::{fail, print_json};
use std::path::PathBuf;

/// Options of `ferry backup`.
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// File to write the copy to (a SQLite database; written as FILE.part, renamed when verified).
    #[arg(long)]
    to: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientOpts,
}

/// Runs `ferry backup`.
pub async fn backup(a: BackupArgs) -> i32 {
    if a.to.exists() && !a.force {
        return fail(format!("{} exists; pass --force to replace it", a.to.display()));
    }
    let mut part = a.to.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let result = async {
        let file =
            std::fs::File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let receipt = a.client.client().backup(&mut out).await.map_err(|e| e.to_string())?;
        let file = out.into_inner().map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        file.sync_all().map_err(|e| format!("cannot sync {}: {e}", part.display()))?;
        let info = ferry_store::backup::verify(&part)
            .map_err(|e| format!("the copy is not usable: {}", e.message))?;
        std::fs::rename(&part, &a.to).map_err(|e| format!("cannot name the copy {}: {e}", a.to.display()))?;
        Ok::<_, String>((receipt, info))
    }
    .await;
    match result {
        Ok((receipt, info)) => {
            if a.client.json {
                print_json(&serde_json::json!({
                    "file": a.to, "bytes": receipt.bytes, "sha256": receipt.sha256,
                    "schema_version": info.schema_version, "jobs": info.jobs, "integrity": "ok",
                }));
            } else {
                println!(
                    "backup written to {}: {} bytes, sha256 {}, schema version {}, {} jobs, integrity ok",
                    a.to.display(),
                    receipt.bytes,
                    receipt.sha256,
                    info.schema_version,
                    info.jobs
                );
            }
            0
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            fail(format!("backup failed: {e}"))
        }
    }
}

/// Options of `ferry restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup to restore (a file written by ferry backup).
    #[arg(long)]
    from: PathBuf,
    /// Data directory to restore into (its server must be stopped).
    #[arg(long)]
    data_dir: PathBuf,
    /// Replace a database already there (it is kept as ferry.db.before-restore-<ms>).
    #[arg(long)]
    force: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ferry restore`.
pub fn restore(a: RestoreArgs) -> i32 {
    match ferry_store::backup::restore(&a.from, &a.data_dir, a.force) {
        Ok(r) => {
            if a.json {
                print_json(&serde_json::json!({
                    "database": r.database, "kept": r.kept, "bytes": r.copy.bytes,
                    "schema_version": r.copy.schema_version, "jobs": r.copy.jobs,
                }));
            } else {
                println!(
                    "restored {} into {} ({} bytes, schema version {}, {} jobs)",
                    a.from.display(),
                    r.database.display(),
                    r.copy.bytes,
                    r.copy.schema_version,
                    r.copy.jobs
                );
                if let Some(k) = r.kept {
                    println!("the database it replaced is kept as {}", k.display());
                }
                println!("start the server with: ferry serve --data-dir {}", a.data_dir.display());
            }
            0
        }
        Err(e) => fail(format!("restore refused: {}", e.message)),
    }
}
