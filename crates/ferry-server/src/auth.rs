//! API tokens: minting, hashing, the node's cache of stored tokens, and the check every request
//! passes (called from `protect::guard`).
//!
//! A token is `fy_<id>_<secret>`; the store keeps only the SHA-256 of the whole string. Auth is
//! on when configured (`auth = true`), or, when not configured either way, as soon as one
//! unrevoked token exists, so the first admin token can be minted over a loopback listener and
//! from then on everything needs one. Checks run before any lookup, so a 401 or 403 never says
//! whether a queue or a job exists.

use crate::AppState;
use axum::extract::Request;
use axum::http::{Method, header};
use ferry_core::{Error, ErrorCode, Scope, TokenRecord};
use ferry_store::Store;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The caller a valid token identifies.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id.
    pub token_id: Uuid,
    /// Token name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// The queues it is limited to, if any.
    pub queues: Option<Vec<String>>,
}

impl Principal {
    /// Whether the token carries `scope` (`admin` carries all).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }

    /// Whether the token may touch `queue`.
    pub fn allows_queue(&self, queue: &str) -> bool {
        self.queues.as_ref().is_none_or(|qs| qs.iter().any(|q| q == queue))
    }
}

/// Checks, in a handler, that the caller (if auth is on) may touch `queue`; 403 otherwise.
pub fn check_queue(principal: Option<&Principal>, queue: &str) -> Result<(), Error> {
    match principal {
        Some(p) if !p.allows_queue(queue) => Err(forbidden()),
        _ => Ok(()),
    }
}

fn forbidden() -> Error {
    Error::new(ErrorCode::Forbidden, "this token may not do this")
}

/// Lower-case hex SHA-256, the only form in which secrets are stored.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new secret for token `id`: `fy_<id hex>_<128 random bits hex>`.
pub fn new_secret(id: Uuid) -> String {
    let random: u128 = rand::random();
    format!("fy_{}_{random:032x}", id.simple())
}

fn secret_id(secret: &str) -> Option<Uuid> {
    let rest = secret.strip_prefix("fy_")?;
    Uuid::try_parse(rest.get(..32)?).ok()
}

/// Builds a token record and its secret (shown once), validating name, scopes and queues.
pub fn mint(
    name: &str,
    scopes: &[Scope],
    queues: Option<Vec<String>>,
    limits: &ferry_core::Limits,
    now_ms: i64,
) -> Result<(TokenRecord, String), Error> {
    if name.is_empty() || name.len() > limits.max_name_len {
        return Err(Error::invalid("name", format!("name must be 1..={} bytes", limits.max_name_len)));
    }
    if scopes.is_empty() {
        return Err(Error::invalid("scopes", "at least one scope is required (admin, produce, work, read)"));
    }
    if let Some(qs) = &queues {
        if qs.is_empty() || qs.len() > limits.max_tags {
            return Err(Error::invalid("queues", format!("queues must list 1..={} queues", limits.max_tags)));
        }
        for (i, q) in qs.iter().enumerate() {
            ferry_core::validate::queue_name(q, limits, &format!("queues[{i}]"))?;
        }
    }
    let id = Uuid::now_v7();
    let secret = new_secret(id);
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let rec = TokenRecord {
        id,
        name: name.to_string(),
        hash: hash_secret(&secret),
        scopes,
        queues,
        created_at: now_ms,
        revoked_at: None,
    };
    Ok((rec, secret))
}

/// The node's view of stored tokens, refreshed every second and on an unknown id.
pub struct Tokens {
    configured: Option<bool>,
    by_id: RwLock<HashMap<Uuid, TokenRecord>>,
    loaded_at: std::sync::Mutex<Option<Instant>>,
    /// Whether an unrevoked token exists (read on every request, so kept apart).
    any_active: std::sync::atomic::AtomicBool,
}

impl Tokens {
    /// `configured`: `Some(true)` forces auth on, `Some(false)` off, `None` follows the store.
    pub fn new(configured: Option<bool>) -> Tokens {
        Tokens {
            configured,
            by_id: RwLock::new(HashMap::new()),
            loaded_at: std::sync::Mutex::new(None),
            any_active: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reads every token from the store.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), Error> {
        let all = store.list_tokens().await?;
        let any = all.iter().any(|t| t.revoked_at.is_none());
        let map = all.into_iter().map(|t| (t.id, t)).collect();
        *self.by_id.write().expect("tokens lock") = map;
        self.any_active.store(any, std::sync::atomic::Ordering::Relaxed);
        *self.loaded_at.lock().expect("tokens lock") = Some(Instant::now());
        Ok(())
    }

    /// Whether requests need a token now.
    pub fn active(&self) -> bool {
        self.configured.unwrap_or_else(|| self.any())
    }

    /// Whether any unrevoked token exists.
    pub fn any(&self) -> bool {
        self.any_active.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lookup(&self, id: Uuid) -> Option<TokenRecord> {
        self.by_id.read().expect("tokens lock").get(&id).cloned()
    }

    /// Reloads every second until `stop`, so revocations on any node take effect within ~1 s.
    pub async fn refresh_loop(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.reload(store.as_ref()).await {
                tracing::warn!(error = %e.message, "cannot reload API tokens");
            }
        }
    }
}

/// The scope a route needs; `None` for the public liveness probe.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let get = *method == Method::GET || *method == Method::HEAD;
    Some(match segs.as_slice() {
        ["healthz"] => return None,
        ["readyz"] | ["metrics"] => Scope::Read,
        ["v1", "jobs"] if !get => Scope::Produce,
        ["v1", "import"] => Scope::Produce,
        ["v1", "jobs", "complete" | "fail"] => Scope::Work,
        ["v1", "jobs", _, "heartbeat" | "complete" | "fail" | "release"] => Scope::Work,
        ["v1", "jobs", _, "cancel"] => Scope::Produce,
        ["v1", "queues", _, "claim"] => Scope::Work,
        ["v1", "tokens", ..] => Scope::Admin,
        _ if get => Scope::Read,
        _ => Scope::Admin,
    })
}

/// Queue named in the path of a queue route (`/v1/queues/{queue}/...`).
fn path_queue(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/queues/")?;
    let q = rest.split('/').next()?;
    if q.is_empty() { None } else { Some(percent_decode(q)) }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && let Some(h) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Job id in the path of a job route (`/v1/jobs/{id}/...`).
fn path_job(path: &str) -> Option<Uuid> {
    let rest = path.strip_prefix("/v1/jobs/")?;
    Uuid::try_parse(rest.split('/').next()?).ok()
}

/// Authenticates a request: `Ok(None)` when auth is off or the route is public, the caller
/// when its token is valid and carries the route's scope; 401 or 403 otherwise.
pub fn authenticate(
    st: &AppState,
    req: &Request,
) -> Option<impl std::future::Future<Output = Result<Option<Principal>, Error>> + Send + 'static> {
    if !st.tokens.active() {
        return None;
    }
    let scope = required_scope(req.method(), req.uri().path())?;
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let st = st.clone();
    Some(async move { check(&st, scope, method, uri, bearer).await.map(Some) })
}

async fn check(
    st: &AppState,
    scope: Scope,
    method: Method,
    uri: axum::http::Uri,
    bearer: Option<String>,
) -> Result<Principal, Error> {
    let tokens = &st.tokens;
    let unauthorized = || {
        Error::new(ErrorCode::Unauthorized, "a valid API token is required (Authorization: Bearer <token>)")
    };
    let secret = bearer
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|s| s.trim().to_string())
        .ok_or_else(unauthorized)?;
    let secret = secret.as_str();
    let id = secret_id(secret).ok_or_else(unauthorized)?;
    let rec = match tokens.lookup(id) {
        Some(r) => r,
        None => {
            // Minted on another node (or by the CLI) since the last refresh: reload once.
            let stale = tokens
                .loaded_at
                .lock()
                .expect("tokens lock")
                .is_none_or(|t| t.elapsed() > Duration::from_millis(200));
            if stale {
                tokens.reload(st.store.as_ref()).await?;
            }
            tokens.lookup(id).ok_or_else(unauthorized)?
        }
    };
    if rec.revoked_at.is_some() || rec.hash != hash_secret(secret) {
        return Err(unauthorized());
    }
    let p = Principal { token_id: rec.id, name: rec.name, scopes: rec.scopes, queues: rec.queues };
    if !p.has(scope) {
        return Err(forbidden());
    }
    if p.queues.is_some() {
        let path = uri.path();
        if let Some(q) = path_queue(path) {
            check_queue(Some(&p), &q)?;
        } else if let Some(id) = path_job(path) {
            // Unknown and foreign jobs get the same 403, so nothing leaks about either.
            match st.store.get_job(id).await {
                Ok(job) if p.allows_queue(&job.queue) => {}
                Ok(_) => return Err(forbidden()),
                Err(e) if e.code == ErrorCode::NotFound => return Err(forbidden()),
                Err(e) => return Err(e),
            }
        } else {
            // Reports by lease prove a claim on an allowed queue; an enqueue's queues are
            // checked by its handler. Anything else must name an allowed `?queue=`.
            let by_body = matches!(path, "/v1/jobs/complete" | "/v1/jobs/fail")
                || (path == "/v1/jobs" && method == Method::POST);
            let queue = uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("queue=")))
                .map(percent_decode);
            if !by_body && !queue.is_some_and(|q| p.allows_queue(&q)) {
                return Err(forbidden());
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_and_name_their_token() {
        let id = Uuid::now_v7();
        let s = new_secret(id);
        assert_eq!(secret_id(&s), Some(id));
        assert_eq!(hash_secret(&s).len(), 64);
        assert_ne!(new_secret(id), s);
        assert_eq!(secret_id("fy_nothex"), None);
        assert_eq!(secret_id(""), None);
    }

    #[test]
    fn scopes_by_route() {
        let p = |m: Method, path: &str| required_scope(&m, path);
        assert_eq!(p(Method::GET, "/healthz"), None);
        assert_eq!(p(Method::GET, "/readyz"), Some(Scope::Read));
        assert_eq!(p(Method::POST, "/v1/jobs"), Some(Scope::Produce));
        assert_eq!(p(Method::GET, "/v1/jobs"), Some(Scope::Read));
        assert_eq!(p(Method::POST, "/v1/queues/q/claim"), Some(Scope::Work));
        assert_eq!(p(Method::POST, "/v1/jobs/x/complete"), Some(Scope::Work));
        assert_eq!(p(Method::POST, "/v1/jobs/complete"), Some(Scope::Work));
        assert_eq!(p(Method::POST, "/v1/jobs/x/cancel"), Some(Scope::Produce));
        assert_eq!(p(Method::POST, "/v1/queues/q/pause"), Some(Scope::Admin));
        assert_eq!(p(Method::GET, "/v1/tokens"), Some(Scope::Admin));
        assert_eq!(p(Method::DELETE, "/v1/schedules/x"), Some(Scope::Admin));
        assert_eq!(p(Method::GET, "/v1/workers"), Some(Scope::Read));
    }

    #[test]
    fn queue_from_path_is_decoded() {
        assert_eq!(path_queue("/v1/queues/a%3Ab/claim").as_deref(), Some("a:b"));
        assert_eq!(path_queue("/v1/queues"), None);
    }
}
