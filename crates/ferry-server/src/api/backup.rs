//! `GET /v1/backup`: a consistent copy of a running SQLite server's database, streamed to the
//! caller (`ferry backup --to FILE`). The store writes the copy from one read snapshot beside
//! the database (writes go on meanwhile); this handler hashes it, streams it with its size and
//! SHA-256 in headers so the caller can verify what it wrote, and deletes it once sent. One
//! backup runs at a time per node.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ferry_core::{Error, ErrorCode};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The header carrying the copy's lower-case hex SHA-256.
pub const SHA256_HEADER: &str = "x-ferry-backup-sha256";

/// Bytes read at a time while hashing and streaming the copy.
const CHUNK_BYTES: usize = 1 << 20;

/// At most one backup at a time on a node: each needs the database's size again on disk.
pub struct Backups(Arc<Semaphore>);

impl Default for Backups {
    fn default() -> Self {
        Backups(Arc::new(Semaphore::new(1)))
    }
}

/// A consistent copy of the SQLite database (online: writes go on while it is made), as a
/// SQLite file; `x-ferry-backup-sha256` and `content-length` let the caller verify it.
#[utoipa::path(get, path = "/v1/backup", tag = "health",
    responses(
        (status = 200, description = "the database file, from one consistent snapshot (`x-ferry-backup-sha256`: its SHA-256)",
            content_type = "application/vnd.sqlite3", body = String),
        (status = 409, description = "invalid_state: the server runs on PostgreSQL (use pg_dump), not enough free space beside the database, or the copy could not be written; conflict: a backup is already running", body = ferry_core::wire::ErrorBody)))]
pub async fn backup(State(st): State<AppState>) -> ApiResult<Response> {
    let permit = st.backups.0.clone().try_acquire_owned().map_err(|_| {
        ApiError(Error::new(
            ErrorCode::Conflict,
            "a backup is already running on this node; retry when it ends",
        ))
    })?;
    // The copy is made by a task of its own that owns the permit and, from the moment the
    // file exists, a guard deleting it: a client that goes away mid-copy leaves no file behind
    // and no second copy starts before this one ends.
    let store = st.store.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let made = async {
            let copy = store.backup().await?;
            let path = tempfile::TempPath::try_from_path(&copy)
                .map_err(|e| Error::internal(format!("backup copy {}: {e}", copy.display())))?;
            let hashed = path.to_path_buf();
            let (file, bytes, sha) = tokio::task::spawn_blocking(move || hash(&hashed))
                .await
                .map_err(|e| Error::internal(format!("backup hash task failed: {e}")))??;
            Ok::<_, Error>((path, file, bytes, sha))
        }
        .await;
        // Unsent (the client left): the guard and the permit drop here, deleting the copy.
        let _ = tx.send((made, permit));
    });
    let (made, permit) = rx.await.map_err(|_| Error::internal("the backup task ended without an answer"))?;
    let (path, file, bytes, sha) = made.map_err(|e| {
        // A copy that could not be made is this request's failure, not the store's: it must
        // not count toward the circuit breaker.
        if e.code == ErrorCode::Unavailable || e.code == ErrorCode::Internal {
            Error::new(ErrorCode::InvalidState, format!("the backup could not be made: {}", e.message))
        } else {
            e
        }
    })?;
    tracing::info!(bytes, sha256 = %sha, "backup streamed to a client");
    // The temporary copy and the permit live as long as the stream: the file is deleted once
    // sent (or when the client goes away).
    let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), CHUNK_BYTES)
        .map(move |chunk| {
            let _keep = (&path, &permit);
            chunk
        });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.sqlite3"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    h.insert(SHA256_HEADER, HeaderValue::from_str(&sha).expect("hex is a header value"));
    Ok(resp)
}

/// Hashes the copy; returns it opened at its start, its size and its hex SHA-256.
fn hash(path: &std::path::Path) -> Result<(std::fs::File, u64, String), Error> {
    let io = |e: std::io::Error| Error::unavailable(format!("cannot read the backup copy: {e}"));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        bytes += n as u64;
    }
    let file = std::fs::File::open(path).map_err(io)?;
    Ok((file, bytes, digest.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// The backup route: the whole database, so admin scope and no queue restriction.
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(backup), Scope::Admin, Refused)
}
