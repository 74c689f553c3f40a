//! The listener and its connections: binds with a configurable backlog, serves at most
//! `limits.max_connections` connections (the rest wait in the kernel's accept queue), and
//! closes a connection that idles past `idle_timeout_ms` or takes longer than
//! `header_read_timeout_ms` to send a request's headers once it started. The body's own time
//! limit is enforced per request in `edge.rs`.
//!
//! Each connection has a watchdog that reads two atomics its I/O and its requests update, so
//! time limits cost no timer reset per read.

use axum::Router;
use axum::extract::ConnectInfo;
use ferry_core::{Error, ErrorCode, Limits};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// The kernel's cap on listen backlogs, the default backlog (128 stalled bursts of connects on
/// SYN retransmits).
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Raises the soft limit on open files to the hard one, so `max_connections` is not cut short
/// by a default of 1,024 descriptors.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

/// Binds `listen` with `backlog` pending connects (0: the system's `somaxconn`).
pub async fn bind(listen: &str, backlog: u32) -> Result<TcpListener, Error> {
    let fail = |e: io::Error| Error::new(ErrorCode::Unavailable, format!("cannot listen on {listen}: {e}"));
    let addr = tokio::net::lookup_host(listen).await.map_err(fail)?.next().ok_or_else(|| {
        Error::new(ErrorCode::ValidationFailed, format!("cannot listen on {listen}: no such address"))
    })?;
    raise_fd_limit();
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(if backlog == 0 { somaxconn() } else { backlog }).map_err(fail)
}

/// Where a connection is in its request cycle, for the watchdog.
const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// What a connection's watchdog reads: its phase, when that phase began, and requests open.
struct Watch {
    born: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    last_io_ms: AtomicU64,
    open_requests: AtomicU64,
}

impl Watch {
    /// A new connection is in its first request's head: it has `header_read_timeout_ms` to
    /// send it, so silent connections cannot hold the connection slots for long.
    fn new() -> Watch {
        Watch {
            born: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            last_io_ms: AtomicU64::new(0),
            open_requests: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn io(&self, read: bool) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        // The first byte after an idle spell starts a request's head.
        if read && self.phase.compare_exchange(IDLE, HEAD, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.since_ms.store(now, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
    }

    fn request_done(&self) {
        if self.open_requests.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
            self.phase.store(IDLE, Ordering::Relaxed);
        }
    }

    /// `Ok(wait)` until the next check, or `Err(reason)` when a limit has passed.
    fn check(&self, limits: &Limits) -> Result<Duration, &'static str> {
        let now = self.now_ms();
        let (limit, since, reason) = match self.phase.load(Ordering::Relaxed) {
            IDLE => (
                limits.idle_timeout_ms,
                self.since_ms.load(Ordering::Relaxed).max(self.last_io_ms.load(Ordering::Relaxed)),
                "idle",
            ),
            HEAD => {
                (limits.header_read_timeout_ms, self.since_ms.load(Ordering::Relaxed), "headers too slow")
            }
            _ => return Ok(Duration::from_millis(limits.idle_timeout_ms.min(limits.header_read_timeout_ms))),
        };
        let deadline = since.saturating_add(limit);
        if now >= deadline { Err(reason) } else { Ok(Duration::from_millis(deadline - now)) }
    }
}

/// A socket whose reads and writes tell its [`Watch`].
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.io(true);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.io(false);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.io(false);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks a request done when dropped, whichever way the request ends.
struct OpenRequest(Arc<Watch>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish
/// (at most `drain` long) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let watch = Arc::new(Watch::new());
        let io = TokioIo::new(Watched { inner: stream, watch: watch.clone() });
        let (app, limits, builder, mut stop) = (app.clone(), limits.clone(), builder.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let w = watch.clone();
            let service =
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    w.request_started();
                    let open = OpenRequest(w.clone());
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let app = app.clone();
                    async move {
                        let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                        drop(open);
                        resp
                    }
                });
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                let wait = match watch.check(&limits) {
                    Ok(wait) => wait,
                    Err(reason) => {
                        tracing::debug!(%peer, reason, "closing connection");
                        return;
                    }
                };
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    // Every connection gives its slot back when it ends.
    let _ = tokio::time::timeout(drain, slots.acquire_many(max as u32)).await;
}
