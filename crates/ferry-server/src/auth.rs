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
use ferry_core::wire::TokenBody;
use ferry_core::{Error, ErrorCode, ResourceKind, Scope, TokenRecord};
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
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// The queues it is limited to, if any.
    pub queues: Option<Vec<String>>,
    /// The agents it is limited to, if any.
    pub agents: Option<Vec<String>>,
    /// The memory namespaces it is limited to, if any.
    pub namespaces: Option<Vec<String>>,
}

impl Principal {
    /// Whether the token carries `scope` (`admin` carries all).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }
}

/// What a request may touch: everything (auth off, or an unrestricted token), or only the
/// resources of each kind its token names (today: queues). Handlers take it as an extractor
/// and check every resource a body, filter or batch item names before reading or writing.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None`: unrestricted. Otherwise the allowed names per kind; a kind not listed allows
    /// nothing.
    only: Option<Arc<[Allowed]>>,
    /// The token's scopes; `None` when auth is off (everything).
    scopes: Option<Arc<[Scope]>>,
}

/// The names of one kind of resource a restricted token may touch.
type Allowed = (ResourceKind, Vec<String>);

impl Access {
    /// The access of `principal` (everything when there is none).
    pub fn of(principal: Option<&Principal>) -> Access {
        let Some(p) = principal else { return Access::default() };
        let scopes = Some(p.scopes.as_slice().into());
        let mut only: Vec<Allowed> = Vec::new();
        if let Some(q) = &p.queues {
            only.push((ResourceKind::Queue, q.clone()));
        }
        if let Some(a) = &p.agents {
            only.push((ResourceKind::Agent, a.clone()));
        }
        if let Some(n) = &p.namespaces {
            only.push((ResourceKind::Namespace, n.clone()));
        }
        Access { only: (!only.is_empty()).then(|| only.into()), scopes }
    }

    /// Whether the caller holds `scope` (`admin` holds all; everything when auth is off), for
    /// requests that need more than their route's scope (a paid enqueue, a ledger repair).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.iter().any(|x| *x == scope || *x == Scope::Admin))
    }

    /// 403 unless the caller may act as agent `name`; a restricted caller must name one
    /// (`None` is refused), an unrestricted one may name any or none.
    pub fn check_agent(&self, name: Option<&str>) -> Result<(), Error> {
        match (self.allowed(ResourceKind::Agent), name) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(forbidden()),
            (Some(_), Some(n)) => self.check_in(ResourceKind::Agent, n),
        }
    }

    /// Whether the caller is limited to some resources.
    pub fn is_restricted(&self) -> bool {
        self.only.is_some()
    }

    /// The names of `kind` the caller is limited to (`None`: any).
    pub fn allowed(&self, kind: ResourceKind) -> Option<&[String]> {
        let only = self.only.as_ref()?;
        Some(only.iter().find(|(k, _)| *k == kind).map_or(&[][..], |(_, names)| names.as_slice()))
    }

    /// Whether the caller may touch the resource of `kind` called `name`.
    pub fn allows_in(&self, kind: ResourceKind, name: &str) -> bool {
        self.allowed(kind).is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// 403 unless the caller may touch the resource of `kind` called `name`; the same 403
    /// whether or not it exists.
    pub fn check_in(&self, kind: ResourceKind, name: &str) -> Result<(), Error> {
        if self.allows_in(kind, name) { Ok(()) } else { Err(forbidden()) }
    }

    /// The queues the caller is limited to, if any.
    pub fn queues(&self) -> Option<&[String]> {
        self.allowed(ResourceKind::Queue)
    }

    /// Whether the caller may touch `queue`.
    pub fn allows(&self, queue: &str) -> bool {
        self.allows_in(ResourceKind::Queue, queue)
    }

    /// 403 unless the caller may touch `queue`.
    pub fn check(&self, queue: &str) -> Result<(), Error> {
        self.check_in(ResourceKind::Queue, queue)
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

    /// 403 unless convoy `id` exists with its queue, and its completion job's, ones the caller
    /// may touch; an unknown convoy gets the same 403 as a foreign one.
    pub async fn check_convoy(&self, store: &dyn Store, id: &str) -> Result<(), Error> {
        if !self.is_restricted() {
            return Ok(());
        }
        match store.get_convoy(id).await {
            Ok(c)
                if self.allows(&c.queue) && c.on_complete.as_ref().is_none_or(|o| self.allows(&o.queue)) =>
            {
                Ok(())
            }
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
pub(crate) fn forbidden() -> Error {
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

/// Builds a token record and its secret (shown once) from a checked body.
pub fn mint(
    body: TokenBody,
    limits: &ferry_core::Limits,
    now_ms: i64,
) -> Result<(TokenRecord, String), Error> {
    body.validate(limits)?;
    let TokenBody { name, scopes, queues, agents, namespaces } = body;
    let id = Uuid::now_v7();
    let secret = new_secret(id);
    let mut scopes = scopes;
    scopes.sort();
    scopes.dedup();
    let rec = TokenRecord {
        id,
        name,
        hash: hash_secret(&secret),
        scopes,
        queues,
        agents,
        namespaces,
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

/// What a route asks of its caller, declared beside the route in `api/<domain>.rs`: there is
/// no other table of scopes, so a route cannot be added without saying what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The scope a token must carry; `None`: any valid token, or none at all if `public`.
    pub scope: Option<Scope>,
    /// How a token restricted to some resources is checked before the handler runs.
    pub restriction: Restriction,
    /// No token needed even when auth is on.
    pub public: bool,
}

impl Policy {
    /// A route open to anyone (the liveness probe).
    pub const PUBLIC: Policy = Policy { scope: None, restriction: Restriction::Open, public: true };

    /// A route any valid token may call, whatever its scopes (`/mcp`, whose tools check the
    /// scopes of the routes they wrap).
    pub const ANY_TOKEN: Policy = Policy { scope: None, restriction: Restriction::Open, public: false };

    /// A route that needs `scope`, with `restriction` for restricted tokens.
    pub const fn needs(scope: Scope, restriction: Restriction) -> Policy {
        Policy { scope: Some(scope), restriction, public: false }
    }
}

/// How a route treats a token restricted to some resources (today: queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// Touches no restricted resource's data.
    Open,
    /// The resource of this kind named in the path (`{queue}`) must be one the token may touch.
    Path(ResourceKind),
    /// The job `{id}` in the path must exist in a queue the token may touch.
    PathJob,
    /// The convoy `{id}` in the path must exist, its queue and its completion job's queue
    /// both ones the token may touch.
    PathConvoy,
    /// The handler checks every resource its body, filters or items name ([`Access`]).
    Handler,
    /// Only tokens restricted to some resources of this kind (or unrestricted ones) pass,
    /// before the body or query is read; the handler checks which one the body names.
    Agents(ResourceKind),
    /// Data that cannot be narrowed to a token's resources (cluster-wide): refused.
    Refused,
}

/// Every route's [`Policy`] by method and path template, collected as the router is built.
#[derive(Debug, Default)]
pub struct Policies(HashMap<String, Vec<(Method, Policy)>>);

impl Policies {
    /// Records what `method` on `template` asks; a route declared twice is a bug.
    pub fn declare(&mut self, method: Method, template: &str, policy: Policy) {
        let methods = self.0.entry(template.to_string()).or_default();
        assert!(methods.iter().all(|(m, _)| *m != method), "{method} {template} declared twice");
        methods.push((method, policy));
    }

    /// The declared policy of `method` on `template`, if any (looked up on every request:
    /// by the template as a borrowed key, without allocating).
    fn declared(&self, method: &Method, template: &str) -> Option<Policy> {
        self.0.get(template)?.iter().find(|(m, _)| m == method).map(|(_, p)| *p)
    }

    /// Whether `method` on `template` was declared.
    #[cfg(test)]
    pub fn is_declared(&self, method: &Method, template: &str) -> bool {
        self.declared(method, template).is_some()
    }

    /// Every declared policy.
    #[cfg(test)]
    pub fn all(&self) -> impl Iterator<Item = &Policy> {
        self.0.values().flatten().map(|(_, p)| p)
    }

    /// The policy of a request. HEAD is GET's; a known path with an undeclared method (405)
    /// needs any valid token; an unknown path (404) needs `read` to GET and `admin` otherwise.
    pub fn of(&self, method: &Method, template: Option<&str>) -> Policy {
        let method = if *method == Method::HEAD { &Method::GET } else { method };
        match template {
            Some(t) => self.declared(method, t).unwrap_or(Policy::needs(Scope::Read, Restriction::Open)),
            None if *method == Method::GET => Policy::needs(Scope::Read, Restriction::Open),
            None => Policy::needs(Scope::Admin, Restriction::Open),
        }
    }
}

/// The value of path parameter `{name}` of `template` in `path`, percent-decoded.
fn path_param(template: &str, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    let at = template.split('/').position(|seg| seg == wanted)?;
    let raw = path.split('/').nth(at).filter(|s| !s.is_empty())?;
    Some(percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned())
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
    let template = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
    let policy = req
        .extensions()
        .get::<Arc<Policies>>()
        .expect("the router layers its policies outside the guard")
        .of(req.method(), template.as_deref());
    if policy.public {
        return None;
    }
    let scope = policy.scope;
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (st, path) = (st.clone(), req.uri().path().to_string());
    Some(async move { check(&st, (scope, policy.restriction), (template, path), bearer).await.map(Some) })
}

async fn check(
    st: &AppState,
    (scope, restriction): (Option<Scope>, Restriction),
    (template, path): (Option<String>, String),
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
    let p = Principal {
        token_id: rec.id,
        scopes: rec.scopes,
        queues: rec.queues,
        agents: rec.agents,
        namespaces: rec.namespaces,
    };
    if scope.is_some_and(|s| !p.has(s)) {
        return Err(forbidden());
    }
    let access = Access::of(Some(&p));
    if access.is_restricted() {
        let param = |name: &str| template.as_deref().and_then(|t| path_param(t, &path, name));
        match restriction {
            Restriction::Open | Restriction::Handler => {}
            Restriction::Refused => return Err(forbidden()),
            Restriction::Agents(kind) => {
                if access.allowed(kind).is_some_and(<[String]>::is_empty) {
                    return Err(forbidden());
                }
            }
            Restriction::Path(kind) => {
                let name = param(kind.as_str()).ok_or_else(forbidden)?;
                access.check_in(kind, &name)?;
            }
            Restriction::PathJob => {
                // Anything that is not a job id names no job: the same 403 as a foreign one.
                let id = param("id").and_then(|i| Uuid::try_parse(&i).ok()).ok_or_else(forbidden)?;
                access.check_job(st.store.as_ref(), id).await?;
            }
            Restriction::PathConvoy => {
                let id = param("id").ok_or_else(forbidden)?;
                access.check_convoy(st.store.as_ref(), &id).await?;
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
    fn path_parameters_are_found_and_decoded() {
        let t = "/v1/queues/{queue}/claim";
        assert_eq!(path_param(t, "/v1/queues/a%3Ab/claim", "queue").as_deref(), Some("a:b"));
        assert_eq!(path_param(t, "/v1/queues//claim", "queue"), None);
        assert_eq!(path_param("/v1/jobs/{id}", "/v1/jobs/x", "queue"), None);
    }

    #[test]
    fn unknown_methods_and_paths_keep_their_scopes() {
        let mut p = Policies::default();
        p.declare(Method::POST, "/v1/jobs", Policy::needs(Scope::Produce, Restriction::Handler));
        assert_eq!(p.of(&Method::POST, Some("/v1/jobs")).scope, Some(Scope::Produce));
        assert_eq!(p.of(&Method::PUT, Some("/v1/jobs")), Policy::needs(Scope::Read, Restriction::Open));
        assert_eq!(p.of(&Method::GET, None).scope, Some(Scope::Read));
        assert_eq!(p.of(&Method::POST, None).scope, Some(Scope::Admin));
    }
}
