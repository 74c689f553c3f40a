//! Checking and restoring SQLite backups (`ferry backup`, `ferry restore`): a copy is trusted
//! only after SQLite's integrity check passes and its schema is one this build can open; a
//! restore refuses a data directory whose database a running server holds, keeps what it
//! replaces, and lands the copy by rename, so a crash mid-restore leaves the old database or
//! the new one, never half of either.

use crate::sqlite::schema::SCHEMA_VERSION;
use crate::sqlite::{db_err, lock_file};
use ferry_core::{Error, ErrorCode, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};

/// What a verified copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInfo {
    /// File size.
    pub bytes: u64,
    /// The schema version it was written with.
    pub schema_version: i64,
    /// Rows of the jobs table (a figure a person can compare with the source).
    pub jobs: u64,
}

/// Checks that `path` is a whole ferry database this build can open: `PRAGMA
/// integrity_check` is `ok` and its schema version is not newer than this build's.
pub fn verify(path: &Path) -> Result<CopyInfo> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::invalid("from", format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::invalid("from", format!("{} is not a file", path.display())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err)?;
    let not_ferry = |e: rusqlite::Error| {
        Error::invalid("from", format!("{} is not a ferry database: {e}", path.display()))
    };
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(not_ferry)?;
    if check != "ok" {
        return Err(Error::invalid(
            "from",
            format!("{} fails SQLite's integrity check: {check}", path.display()),
        ));
    }
    let version: String = conn
        .query_row("SELECT value FROM ferry_meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .map_err(not_ferry)?;
    let schema_version: i64 = version.parse().unwrap_or(i64::MAX);
    if schema_version > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorCode::SchemaTooNew,
            format!(
                "{} has schema version {version}, written by a newer ferry; this build knows versions up to \
                 {SCHEMA_VERSION}",
                path.display()
            ),
        ));
    }
    let jobs: i64 = conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)).map_err(not_ferry)?;
    Ok(CopyInfo { bytes: meta.len(), schema_version, jobs: jobs as u64 })
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The database file now in place.
    pub database: PathBuf,
    /// Where the database it replaced was kept, if there was one.
    pub kept: Option<PathBuf>,
    /// The copy's contents.
    pub copy: CopyInfo,
}

/// Puts the verified copy `from` in place as `<data_dir>/ferry.db`. Refuses while a server
/// holds that database, and refuses to replace an existing one unless `replace` (then the old
/// one, with its WAL, is kept beside it as `ferry.db.before-restore-<ms>`).
pub fn restore(from: &Path, data_dir: &Path, replace: bool) -> Result<Restored> {
    let copy = verify(from)?;
    std::fs::create_dir_all(data_dir).map_err(|e| {
        Error::invalid("data_dir", format!("cannot create data directory {}: {e}", data_dir.display()))
    })?;
    let target = data_dir.join("ferry.db");
    if let (Ok(a), Ok(b)) = (from.canonicalize(), target.canonicalize())
        && a == b
    {
        return Err(Error::invalid("from", format!("{} is the database being replaced", from.display())));
    }
    let _lock =
        lock_file(&target).map_err(|e| match e.message.contains("in use by another ferry process") {
            true => Error::new(
                ErrorCode::InvalidState,
                format!("{}; stop the server first, then restore", e.message),
            ),
            false => e,
        })?;
    let sibling = |suffix: &str| {
        let mut s = target.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let io = |what: &str, e: std::io::Error| Error::unavailable(format!("cannot {what}: {e}"));
    if target.exists() && !replace {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!(
                "{} already holds a database; pass --force to replace it (the old one is kept beside it)",
                data_dir.display()
            ),
        ));
    }
    // The new file is written and synced first, read through the copy's own WAL if it has one
    // (`VACUUM INTO`, not a byte copy, so committed writes still in a WAL come along); only
    // then is the old database moved aside, so a failure leaves the old one in place.
    let partial = sibling(".restore.tmp");
    let _ = std::fs::remove_file(&partial);
    let made = (|| {
        let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err)?;
        let out =
            partial.to_str().ok_or_else(|| Error::invalid("data_dir", "the data directory is not UTF-8"))?;
        src.execute("VACUUM INTO ?1", [out]).map_err(db_err)?;
        std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(|e| io("sync the copy", e))
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let mut kept = None;
    if target.exists() {
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let old = sibling(&format!(".before-restore-{stamp}"));
        // The WAL holds committed writes: it goes with its database, under the matching name.
        std::fs::rename(&target, &old).map_err(|e| io("keep the old database", e))?;
        let wal = sibling("-wal");
        if wal.exists() {
            let mut old_wal = old.as_os_str().to_owned();
            old_wal.push("-wal");
            if let Err(e) = std::fs::rename(&wal, old_wal) {
                let _ = std::fs::rename(&old, &target);
                let _ = std::fs::remove_file(&partial);
                return Err(io("keep the old WAL", e));
            }
        }
        kept = Some(old);
    } else {
        // A WAL without its database belongs to nothing; replayed into the copy it would
        // corrupt it.
        let _ = std::fs::remove_file(sibling("-wal"));
    }
    let _ = std::fs::remove_file(sibling("-shm"));
    std::fs::rename(&partial, &target).map_err(|e| io("put the copy in place", e))?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(|e| io("sync the data directory", e))?;
    Ok(Restored { database: target, kept, copy })
}
