//! The HTTP listener: connections, slow clients, limits and shutdown.
//!
//! axum's own `serve` sets no header timeout, and hyper's starts only once
//! the first byte has arrived, so a client that connects and sends nothing
//! holds its connection (and a file descriptor) for ever. Here:
//! * a connection must deliver its first request's headers within the
//!   client timeout *from accept*, else it is closed; later requests on a
//!   kept-alive connection get hyper's header timeout, bodies the gateway's
//!   (408);
//! * at most `max_connections` are open at once (default: what the
//!   descriptor limit leaves); at the cap, the oldest connection that has
//!   not sent a request for a second is closed to make room, and when there
//!   is none the new client gets an immediate 503 instead of silence;
//! * a connection buffers at most `HEADER_BYTES` of request head (431
//!   beyond), so unfinished huge headers cost little memory;
//! * the errors hyper answers by itself (400, 414, 431) get the API's JSON
//!   body like every other error.
//!
//! Shutdown lets requests in flight finish, for up to a few seconds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::gateway::Gateway;

/// How long shutdown waits for requests in flight (watches never end).
const DRAIN: Duration = Duration::from_secs(3);
/// The most request head (request line and headers) one connection buffers.
/// Keys are at most 1 KiB (3 KiB percent-encoded), so this leaves room.
pub(crate) const HEADER_BYTES: usize = 16 * 1024;
/// Descriptors kept free for QUIC sockets, data files and logs (besides
/// those of the 503 answers).
const RESERVED_FDS: u64 = 128;
/// The default connection cap, where descriptors allow it.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// A connection without a request for this long may be closed to admit a
/// new one at the cap.
const EVICT_IDLE: Duration = Duration::from_secs(1);
/// Refused connections being answered 503 at once; past this, dropped.
const REFUSING: usize = 64;

/// The listener's limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Time from accept to the first request's complete headers.
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// Raises the descriptor limit to its hard maximum and sizes the
    /// connection cap to fit under it (unless `max_connections` is given).
    pub(crate) fn new(header_timeout: Duration, max_connections: Option<usize>) -> Limits {
        let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        let fit = fds.saturating_sub(RESERVED_FDS + REFUSING as u64).max(16) as usize;
        let max_connections = match max_connections {
            Some(n) => {
                if n > fit {
                    tracing::warn!(
                        max_connections = n,
                        fds,
                        "--max-connections is above what the descriptor limit allows"
                    );
                }
                n.max(1)
            }
            None => fit.min(DEFAULT_MAX_CONNECTIONS),
        };
        Limits {
            header_timeout,
            max_connections,
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Slot {
    accepted: Instant,
    /// A request has arrived (its headers parsed).
    seen: AtomicBool,
    evict: Notify,
}

/// Connections that have not sent a request yet, oldest first (entries of
/// closed or active connections are skipped and pruned).
#[derive(Default)]
struct Waiting(Mutex<VecDeque<Weak<Slot>>>);

impl Waiting {
    fn push(&self, slot: &Arc<Slot>, cap: usize) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= 2 * cap {
            q.retain(|w| w.upgrade().is_some_and(|s| !s.seen.load(Ordering::Relaxed)));
        }
        q.push_back(Arc::downgrade(slot));
    }

    /// Asks the oldest connection idle since `EVICT_IDLE` to close; false if
    /// there is none.
    fn evict_one(&self) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(w) = q.pop_front() {
            let Some(s) = w.upgrade() else { continue };
            if s.seen.load(Ordering::Relaxed) {
                continue;
            }
            if s.accepted.elapsed() < EVICT_IDLE {
                q.push_front(w);
                return false;
            }
            s.evict.notify_one();
            return true;
        }
        false
    }
}

/// Serves the gateway on `http` until SIGINT or SIGTERM. `ready` is printed
/// once the socket is bound, so whoever waits for it can connect at once.
pub(crate) async fn serve(
    gw: Arc<Gateway>,
    http: SocketAddr,
    limits: Limits,
    ready: String,
) -> Result<()> {
    serve_on(gw, bind(http)?, limits, ready).await
}

/// The HTTP listening socket on `http`, for `serve_on`: a node binds it
/// before it joins its cluster, so a port in use stops it before that.
pub(crate) fn bind(http: SocketAddr) -> Result<tokio::net::TcpListener> {
    listen(http).with_context(|| format!("listen on {http}"))
}

/// `serve` on a socket bound already.
pub(crate) async fn serve_on(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    limits: Limits,
    ready: String,
) -> Result<()> {
    tracing::info!(max_connections = limits.max_connections, "HTTP limits");
    println!("{ready}");
    gw.start_live();
    let service = TowerToHyperService::new(gw.clone().router());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HEADER_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .keep_alive_timeout(Duration::from_secs(10));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let waiting = Arc::new(Waiting::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = crate::shutdown();
    tokio::pin!(stop);
    let mut accept_errors = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: the listener stays, the client goes.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = accept_errors, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if waiting.evict_one() => {
                // The evicted connection's task lets its permit go at once.
                tokio::time::timeout(Duration::from_millis(100), permits.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            gw.connection_refused();
            refuse(tcp, &refusing);
            continue;
        };
        let open = gw.connection_opened();
        // Answers go out at once, not held back by Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let slot = Arc::new(Slot {
            accepted: Instant::now(),
            seen: AtomicBool::new(false),
            evict: Notify::new(),
        });
        waiting.push(&slot, limits.max_connections);
        let seen = slot.clone();
        let svc = service.clone();
        let service = hyper::service::service_fn(move |req| {
            seen.seen.store(true, Ordering::Relaxed);
            hyper::service::Service::call(&svc, req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(JsonErrors::new(tcp)), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let first_by = slot.accepted + limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let no_request = async {
                tokio::time::sleep_until(first_by).await;
                if slot.seen.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                },
                _ = no_request => tracing::debug!(%peer, "no request within the header timeout: closed"),
                _ = slot.evict.notified() => tracing::debug!(%peer, "idle at the connection cap: closed"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("shutdown: requests still open after {DRAIN:?} were dropped");
    }
    Ok(())
}

/// A listening socket with a deep accept queue: a burst of connects (a
/// thousand clients starting at once) waits there instead of being dropped
/// and retried by the kernel a second later, as with the usual 128.
fn listen(http: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if http.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(http)?;
    socket.listen(4096)
}

/// A JSON error response in the API's shape, for answers written below axum.
fn raw_error(status: u16, reason: &str, code: &str, message: &str, extra: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n{extra}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// At the cap: a fast 503, then the socket is closed. The request is read
/// (briefly) before closing, so the client sees the answer and not a reset.
/// Past `REFUSING` such answers at once, the 503 is written without waiting
/// (it fits the socket buffer) and the socket closed at once.
fn refuse(tcp: TcpStream, refusing: &Arc<Semaphore>) {
    static BUSY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        raw_error(
            503,
            "Service Unavailable",
            "unavailable",
            "too many open connections; retry shortly",
            "retry-after: 1\r\n",
        )
    });
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        let _ = tcp.try_write(&BUSY);
        return;
    };
    let mut tcp = tcp;
    tokio::spawn(async move {
        let _permit = permit;
        let answer = async {
            tcp.write_all(&BUSY).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), answer).await;
    });
}

/// The socket as hyper sees it. hyper answers a request it cannot parse by
/// itself (400, 414 URI too long, 431 headers too large) with an empty body;
/// this swaps such an answer for the API's JSON error. The gateway's own
/// errors always have a body, so an empty 400/414/431 can only be hyper's.
struct JsonErrors {
    io: TcpStream,
    /// A replacement being written, and how much of it is out.
    swap: Option<(Vec<u8>, usize)>,
}

impl JsonErrors {
    fn new(io: TcpStream) -> JsonErrors {
        JsonErrors { io, swap: None }
    }

    /// The JSON answer for hyper's own error response in `buf`, if it is one.
    fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
        let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
        let (status, reason, message) = match rest.get(..4)? {
            b"400 " => (400, "Bad Request", "the request is not valid HTTP"),
            b"414 " => (414, "URI Too Long", "the request target is too long"),
            b"431 " => (
                431,
                "Request Header Fields Too Large",
                "the request headers are too large (at most 16 KiB in all)",
            ),
            _ => return None,
        };
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = &buf[..end + 2];
        let empty = head
            .split(|&b| b == b'\n')
            .any(|l| l.eq_ignore_ascii_case(b"content-length: 0\r"));
        // Only a bare head with no body after it is hyper's.
        (empty && buf.len() == end + 4).then(|| {
            let code = if status == 400 {
                "bad_request"
            } else {
                "too_large"
            };
            raw_error(status, reason, code, message, "")
        })
    }
}

impl AsyncRead for JsonErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.swap.is_none() && buf.starts_with(b"HTTP/1.1 4") {
            this.swap = JsonErrors::replacement(buf).map(|r| (r, 0));
        }
        let Some((swap, done)) = &mut this.swap else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        // hyper offers the same buffer again after Pending; it counts as
        // written once the whole replacement is.
        while *done < swap.len() {
            match Pin::new(&mut this.io).poll_write(cx, &swap[*done..]) {
                Poll::Ready(Ok(n)) => *done += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper's own error answer is a head alone, in one slice.
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        match (parts.next(), parts.next()) {
            (Some(only), None) if self.swap.is_some() || only.starts_with(b"HTTP/1.1 4") => {
                self.poll_write(cx, only)
            }
            _ => Pin::new(&mut self.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl crate::cli::HttpOpts {
    /// Refuses a token nobody could send (empty, or only blanks: a blank
    /// `OURKV_API_TOKEN=` would start a node that answers every request 401),
    /// and warns loudly when a non-loopback API has no token at all.
    pub(crate) fn check(&self, http: std::net::SocketAddr) -> Result<()> {
        if let Some(t) = &self.api_token {
            if t.trim().is_empty() || t.chars().any(|c| c.is_ascii_control() || c == ' ') {
                bail!("--api-token (or OURKV_API_TOKEN) is empty or holds spaces or control characters: give a usable token, or none");
            }
        }
        if self.api_token.is_none() && !http.ip().is_loopback() {
            tracing::warn!(%http, "the HTTP API listens beyond loopback without --api-token: anyone who reaches it can read and write, in plain text");
            eprintln!("WARNING: the HTTP API on {http} has no --api-token: anyone who reaches it can read and write, in plain text");
        }
        Ok(())
    }

    pub(crate) fn client_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.client_timeout_ms.max(1))
    }

    /// `gw` with these options' timeout and bounds.
    pub(crate) fn configure(&self, gw: Arc<Gateway>) -> Arc<Gateway> {
        gw.with_client_timeout(self.client_timeout())
            .with_max_watches(self.max_watches)
            .with_max_value_bytes(self.max_value_bytes)
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits::new(self.client_timeout(), self.max_connections)
    }
}
