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
}

/// What a request may touch: every queue (auth off, or an unrestricted token), or only the
/// queues its token names. Handlers take it as an extractor and check every queue a body,
/// filter or batch item names before reading or writing anything.
#[derive(Debug, Clone, Default)]
pub struct Access {
    queues: Option<Arc<[String]>>,
}

impl Access {
    /// The access of `principal` (everything when there is none).
    pub fn of(principal: Option<&Principal>) -> Access {
        Access { queues: principal.and_then(|p| p.queues.as_ref()).map(|q| q.as_slice().into()) }
    }

    /// Whether the caller is limited to some queues.
    pub fn is_restricted(&self) -> bool {
        self.queues.is_some()
    }

    /// The queues the caller is limited to, if any.
    pub fn queues(&self) -> Option<&[String]> {
        self.queues.as_deref()
    }

    /// Whether the caller may touch `queue`.
    pub fn allows(&self, queue: &str) -> bool {
        self.queues.as_ref().is_none_or(|qs| qs.iter().any(|q| q == queue))
    }

    /// 403 unless the caller may touch `queue`.
    pub fn check(&self, queue: &str) -> Result<(), Error> {
        if self.allows(queue) { Ok(()) } else { Err(forbidden()) }
    }

    /// 403 unless job `id` exists in a queue the caller may touch; an unknown job gets the same
    /// 403 as a foreign one, so a restricted caller never learns whether it exists.
    pub async fn check_job(&self, store: &dyn Store, id: Uuid) -> Result<(), Error> {
        if !self.is_restricted() {
            return Ok(());
        }
        match store.get_job(id).await {
            Ok(job) if self.allows(&job.queue) => Ok(()),
            Ok(_) => Err(forbidden()),
            Err(e) if e.code == ErrorCode::NotFound => Err(forbidden()),
            Err(e) => Err(e),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Access, std::convert::Infallible> {
        Ok(Access::of(parts.extensions.get::<Principal>()))
    }
}

/// The generic 403: the same words whatever was refused, so it reveals nothing.
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
    if name.is_empty() || name.chars().count() > limits.max_name_len {
        return Err(Error::invalid("name", format!("name must be 1..={} characters", limits.max_name_len)));
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
    /// Whether a token was ever created (revoked ones stay stored), read on every request.
    any_ever: std::sync::atomic::AtomicBool,
}

impl Tokens {
    /// `configured`: `Some(true)` forces auth on, `Some(false)` off, `None` follows the store.
    pub fn new(configured: Option<bool>) -> Tokens {
        Tokens {
            configured,
            by_id: RwLock::new(HashMap::new()),
            loaded_at: std::sync::Mutex::new(None),
            any_ever: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reads every token from the store. Revoked tokens stay stored, so once a token has
    /// existed auth stays on (unless configured off), across revocations and restarts.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), Error> {
        let all = store.list_tokens().await?;
        let any = !all.is_empty();
        let map = all.into_iter().map(|t| (t.id, t)).collect();
        *self.by_id.write().expect("tokens lock") = map;
        let was = self.any_ever.swap(any, std::sync::atomic::Ordering::Relaxed);
        let first_load = self.loaded_at.lock().expect("tokens lock").replace(Instant::now()).is_none();
        if any && !was && !first_load && self.configured.is_none() {
            tracing::warn!(
                "auth is now on: the first API token was created, so from now on every request but \
                 /healthz needs `Authorization: Bearer <token>`; it stays on (set auth = false to turn it off)"
            );
        }
        Ok(())
    }

    /// Whether requests need a token now.
    pub fn active(&self) -> bool {
        self.configured.unwrap_or_else(|| self.any_ever.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Why auth is on or off, for the startup line and `/v1/server`.
    pub fn mode(&self) -> &'static str {
        match self.configured {
            Some(true) => "on (configured)",
            Some(false) => "off (configured)",
            None if self.active() => "on (a token exists)",
            None => "off (no token yet; the first one turns it on for good)",
        }
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
    if q.is_empty() {
        None
    } else {
        Some(percent_encoding::percent_decode_str(q).decode_utf8_lossy().into_owned())
    }
}

/// Job id in the path of a job route (`/v1/jobs/{id}/...`).
fn path_job(path: &str) -> Option<Uuid> {
    let rest = path.strip_prefix("/v1/jobs/")?;
    Uuid::try_parse(rest.split('/').next()?).ok()
}

/// How a route treats a token limited to some queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restriction {
    /// Touches no queue's data (or is an unknown route, which answers 404 to anyone).
    Open,
    /// The queue in the path must be allowed.
    PathQueue,
    /// The job in the path must exist in an allowed queue.
    PathJob,
    /// The handler checks every queue its body, filters or items name ([`Access`]).
    Handler,
    /// Cluster-wide data that cannot be filtered by queue: refused.
    Refused,
}

/// The restriction rule of a route (by its template). A route not listed here is refused to a
/// restricted token, so a new route is closed until its handler checks its queues.
fn restriction(method: &Method, template: Option<&str>) -> Restriction {
    let Some(t) = template else { return Restriction::Open };
    if t.contains("{queue}") {
        return Restriction::PathQueue;
    }
    if t.starts_with("/v1/jobs/{id}") {
        return Restriction::PathJob;
    }
    let get = *method == Method::GET || *method == Method::HEAD;
    match t {
        "/healthz" | "/readyz" | "/v1/server" | "/v1/openapi.json" => Restriction::Open,
        "/v1/jobs" | "/v1/jobs/complete" | "/v1/jobs/fail" | "/v1/import" | "/v1/dlq" | "/v1/dlq/replay"
        | "/v1/dlq/purge" | "/v1/events" | "/v1/events/stream" | "/v1/ws" => Restriction::Handler,
        "/v1/queues" if get => Restriction::Handler,
        t if t.starts_with("/v1/schedules") => Restriction::Handler,
        _ => Restriction::Refused,
    }
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
    let template = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let st = st.clone();
    Some(async move { check(&st, scope, (method, uri, template), bearer).await.map(Some) })
}

async fn check(
    st: &AppState,
    scope: Scope,
    (method, uri, template): (Method, axum::http::Uri, Option<String>),
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
        let access = Access::of(Some(&p));
        match restriction(&method, template.as_deref()) {
            Restriction::Open | Restriction::Handler => {}
            Restriction::Refused => return Err(forbidden()),
            Restriction::PathQueue => {
                let q = path_queue(uri.path()).ok_or_else(forbidden)?;
                access.check(&q)?;
            }
            Restriction::PathJob => {
                // Anything that is not a job id names no job: the same 403 as a foreign one.
                let id = path_job(uri.path()).ok_or_else(forbidden)?;
                access.check_job(st.store.as_ref(), id).await?;
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
