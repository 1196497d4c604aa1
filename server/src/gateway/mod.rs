//! The HTTP gateway: writes go to the master, reads to a worker (the master
//! only when no worker answers), at the consistency level the request asks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use replication::frame::Frame;
use replication::Cursor;
use replication::{Ack, Client, Expect, Lifetime, Version};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

mod api;
mod error;
mod kv;
mod lease;
mod live;
mod metrics;
mod middleware;
mod ops;
mod params;
mod topology;
mod txn;
mod watch;

use error::*;
use kv::*;
use middleware::*;
use ops::*;
use params::*;
use topology::Routes;
use watch::*;

/// Largest request body read; larger values are refused with 413 anyway.
const BODY_LIMIT: usize = 1 << 20;
/// How long a client may take to send its headers, and then its body.
pub(crate) const DEFAULT_CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub(crate) use watch::DEFAULT_MAX_WATCHES;
pub(crate) const CURSOR_HEADER: &str = "x-ourkv-cursor";
/// Below this average latency (µs) the member in this process takes the
/// reads first; one failure (weighed as a second) lifts it past for
/// several answers, so a failing local store is not tried first.
const LOCAL_HEALTHY_US: u64 = 50_000;
/// A worker whose connection failed this recently, and is not open again,
/// gets no reads (they go to the other workers, or the master): each would
/// wait out a connect timeout. A probe in the background, at most once a
/// second, finds it back.
const DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(5);
const PROBE_EVERY_MS: u64 = 1000;

/// The OpenAPI document, made from the handlers' annotations when the first
/// router is built.
static OPENAPI: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The gateway is up
#[utoipa::path(get, path = "/health", tag = "ops", security(()),
    responses(
        (status = 200, description = "Up", body = api::Health),
        (status = 431, response = api::HeadersTooLarge),
        (status = 503, response = api::Unavailable),
    ))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// This document
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses(
        api::Common,
        (status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object),
    ))]
async fn openapi_json() -> Response {
    let doc = OPENAPI.get().map(String::as_str).unwrap_or("{}");
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

pub(crate) struct Gateway {
    client: Arc<Client>,
    /// The master and workers, from the flags or the failover metadata.
    routes: Arc<Routes>,
    next: AtomicUsize,
    metrics: metrics::Metrics,
    /// Bearer token every request but /health must carry, if set.
    token: Option<String>,
    /// How long a client may take to send its request headers (the
    /// listener's limit) and then its body (408 after).
    client_timeout: std::time::Duration,
    /// The largest value a PUT may store (`--max-value-bytes`).
    max_value_bytes: usize,
    /// Read-index rounds of the gateway's own (backups, a cursor's check).
    rounds: replication::ReadIndexRounds,
    /// The watches, fanned out from one stream.
    hub: Arc<Hub>,
    /// The last minutes, second by second, for the status page.
    live: live::Live,
    /// The member this gateway runs in (`ourkv worker --http`): reads go
    /// to it first while it answers well.
    local: Option<SocketAddr>,
}

/// An HTTP connection counted as open (`ourkv_http_connections_open`).
pub(crate) struct OpenConnection(Arc<Gateway>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connections_open.dec();
    }
}

/// A worker's load as the gateway sees it.
#[derive(Default)]
struct Load {
    in_flight: AtomicU64,
    /// Exponentially weighted latency, microseconds.
    ewma_us: AtomicU64,
    /// When the last probe of this worker, down, went out (`since_start`).
    probed_ms: AtomicU64,
}

/// Milliseconds since the first call (a clock for atomics).
fn since_start() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Load {
    fn observe(&self, took: std::time::Duration, ok: bool) {
        // A failure weighs like a one-second answer, so the worker is avoided
        // until it answers well again.
        let sample = if ok {
            took.as_micros() as u64
        } else {
            1_000_000
        };
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    fn score(&self) -> u64 {
        (self.in_flight.load(Ordering::Relaxed) + 1) * self.ewma_us.load(Ordering::Relaxed).max(1)
    }
}

/// One read in flight on a worker: counted while it runs; one dropped
/// unanswered (another worker answered first) counts as a failure, so a
/// paused worker is avoided until it answers well again.
struct Attempt<'a> {
    load: &'a Load,
    start: std::time::Instant,
    finished: bool,
}

impl<'a> Attempt<'a> {
    fn start(load: &'a Load) -> Attempt<'a> {
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt {
            load,
            start: std::time::Instant::now(),
            finished: false,
        }
    }

    fn done(mut self, ok: bool) {
        self.finished = true;
        self.load.observe(self.start.elapsed(), ok);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            self.load.observe(self.start.elapsed(), false);
        }
    }
}

impl Gateway {
    pub(crate) fn new(
        client: Client,
        master: SocketAddr,
        workers: Vec<SocketAddr>,
        token: Option<String>,
    ) -> Arc<Gateway> {
        let client = Arc::new(client);
        Arc::new(Gateway {
            token,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            max_value_bytes: ourdb::keyed::MAX_VALUE_BYTES,
            routes: Arc::new(Routes::new(master, workers, client.clone())),
            rounds: Default::default(),
            hub: Arc::new(Hub::new(DEFAULT_MAX_WATCHES)),
            client,
            next: AtomicUsize::new(0),
            metrics: metrics::Metrics::new(),
            live: live::Live::new(),
            local: None,
        })
    }

    /// Reads prefer `addr`, the member in this process, while it is a
    /// worker that answers well.
    pub(crate) fn with_local(mut self: Arc<Self>, addr: SocketAddr) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("not yet shared").local = Some(addr);
        self
    }

    /// Sets how long a client may take to send a request's headers, then
    /// its body.
    pub(crate) fn with_client_timeout(mut self: Arc<Self>, t: std::time::Duration) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("not yet shared")
            .client_timeout = t;
        self
    }

    /// Sets the largest value a PUT may store (at most 16 MiB).
    pub(crate) fn with_max_value_bytes(mut self: Arc<Self>, n: usize) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("not yet shared")
            .max_value_bytes = n.min(ourdb::keyed::MAX_VALUE_BYTES);
        self
    }

    /// Follows a failover cluster's master from now on (see topology.rs).
    pub(crate) fn discover(self: &Arc<Self>) {
        Routes::discover(self);
    }

    /// Counts an HTTP connection as open until the guard is dropped.
    pub(crate) fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.metrics.connections_open.inc();
        OpenConnection(self.clone())
    }

    /// Counts a connection refused at the connection cap.
    pub(crate) fn connection_refused(&self) {
        self.metrics.connections_refused.inc();
    }

    /// Starts sampling the figures of the status page (`/v1/stats`).
    pub(crate) fn start_live(self: &Arc<Self>) {
        live::start(self);
    }

    /// The master and workers requests go to now.
    fn topology(&self) -> Arc<topology::Topology> {
        self.routes.now()
    }

    /// Sets how many watches may be open at once (503 past it).
    pub(crate) fn with_max_watches(mut self: Arc<Self>, n: usize) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("not yet shared").hub = Arc::new(Hub::new(n));
        self
    }

    pub(crate) fn router(self: Arc<Self>) -> Router {
        // Bodies are read (bounded in size and time) before the handlers,
        // which then never hit a limit of their own; only routes that take
        // one pay for the layer.
        let body = axum::middleware::from_fn_with_state(self.clone(), read_body);
        // A value's body may be as large as the largest value.
        let value_body = axum::middleware::from_fn_with_state(self.clone(), read_value_body);
        // axum's own 2 MB limit would refuse a large value before its layer
        // reads it; other routes' bodies are 1 MiB at most (and a layer on
        // every route costs every request).
        let value_body = tower::ServiceBuilder::new()
            .layer(axum::extract::DefaultBodyLimit::disable())
            .layer(value_body);
        let (router, doc) = OpenApiRouter::with_openapi(api::ApiDoc::openapi())
            .routes(routes!(status_page))
            .routes(routes!(health))
            .routes(routes!(ready))
            .routes(routes!(ops::livez))
            .routes(routes!(ops::readyz))
            .routes(routes!(metrics))
            .routes(routes!(cluster))
            .routes(routes!(seed_set).layer(body.clone()))
            .routes(routes!(seed_get))
            .routes(routes!(seed_delete).layer(body.clone()))
            .routes(routes!(list))
            .routes(routes!(txn::txn).layer(body.clone()))
            .routes(routes!(lease::grant).layer(body.clone()))
            .routes(routes!(lease::info))
            .routes(routes!(lease::revoke).layer(body.clone()))
            .routes(routes!(lease::keep_alive).layer(body.clone()))
            .routes(routes!(kv_put).layer(value_body))
            .routes(routes!(kv_delete).layer(body.clone()))
            .routes(routes!(kv_get))
            .routes(routes!(by_id))
            .routes(routes!(watch))
            .routes(routes!(backup))
            .routes(routes!(live::stats))
            .routes(routes!(openapi_json))
            .split_for_parts();
        OPENAPI.get_or_init(|| api::document(doc));
        let router = router
            .fallback(|uri: axum::http::Uri| async move {
                // `/v1/kv/` names no route, but what was meant is plain.
                if uri.path() == "/v1/kv/" {
                    return ApiError::bad_request("the key is empty: a key is one byte or more");
                }
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    "no such endpoint (see /openapi.json)",
                )
            })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this endpoint does not take that method (see /openapi.json)",
                )
            })
            .layer({
                let gw = self.clone();
                tower::layer::layer_fn(move |inner| metrics::Tracked {
                    gw: gw.clone(),
                    inner,
                })
            });
        // Without a token there is nothing to check: no layer at all.
        let router = match self.token {
            Some(_) => {
                let gw = self.clone();
                router.layer(tower::layer::layer_fn(move |inner| Authorized {
                    gw: gw.clone(),
                    inner,
                }))
            }
            None => router,
        };
        router.with_state(self)
    }

    /// Worker indexes, least loaded first: fewest requests in flight,
    /// weighted by recent latency (failures count as slow). Workers that are
    /// down (`DOWN_FOR`) are left out, and probed in the background.
    fn by_load(&self, topo: &topology::Topology) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = topo.workers.len();
        // Rotating the start breaks ties evenly.
        let mut order: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| !self.down(topo, i))
            .collect();
        // Every 64th read goes round-robin, so a worker that failed once is
        // tried again and its score can recover. Else the least loaded goes
        // first; the others only matter if it fails.
        if !start.is_multiple_of(64) {
            // The member in this process costs no hop: first, unless it
            // failed lately (a failure weighs a second in its average).
            let local = self.local.and_then(|a| {
                (0..order.len()).find(|&k| {
                    let i = order[k];
                    topo.workers[i] == a
                        && topo.load[i].ewma_us.load(Ordering::Relaxed) < LOCAL_HEALTHY_US
                })
            });
            let first =
                local.or_else(|| (0..order.len()).min_by_key(|&k| topo.load[order[k]].score()));
            if let Some(best) = first {
                order.swap(0, best);
            }
        }
        order
    }

    /// Whether worker `i` is down: its connection failed lately and is not
    /// open again. Starts a probe (a connection attempt, no request) at most
    /// once a second while it is.
    fn down(&self, topo: &topology::Topology, i: usize) -> bool {
        let addr = topo.workers[i];
        if !self.client.failed_lately(addr, DOWN_FOR) {
            return false;
        }
        let now = since_start();
        let probed = &topo.load[i].probed_ms;
        let last = probed.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PROBE_EVERY_MS
            && probed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let client = self.client.clone();
            tokio::spawn(async move {
                // Its outcome is the client's to note (a failure keeps the
                // worker down, a connection brings it back).
                let _ = client.ready(addr).await;
            });
        }
        true
    }

    /// The master's commit cursor, from a read-index round sent after this
    /// call began (rounds shared by concurrent callers).
    async fn read_index(&self) -> Result<Cursor, String> {
        self.rounds
            .index(|| {
                let (client, routes, rounds) = (
                    self.client.clone(),
                    self.routes.clone(),
                    self.metrics.read_index_rounds.clone(),
                );
                move || {
                    let (client, routes, rounds) = (client.clone(), routes.clone(), rounds.clone());
                    async move {
                        // A read-index changes nothing: any failure may go again.
                        let r = routes
                            .on_master(true, |m| client.read_index(m))
                            .await
                            .map_err(|e| e.to_string());
                        rounds.inc();
                        r
                    }
                }
            })
            .await
    }

    /// Runs the read on the least loaded worker that has applied `min`, then
    /// on the master if no worker answered. A worker that has not answered
    /// within a small budget over its usual latency (a paused or dead one)
    /// gets company: the read goes to the next worker too (after the last,
    /// to the master), and the first answer wins. A worker that is down
    /// gets no read at all. The same code serves `ourkv dev`, whose nodes the client
    /// reaches in process.
    ///
    /// A read that failed while the cluster changed master goes once more,
    /// to the nodes as they are now (within the failover wait): the nodes it
    /// waited on may have been following a master that is gone.
    async fn read<T, F, Fut>(&self, min: Cursor, remote: F) -> Result<T, ApiError>
    where
        F: Fn(SocketAddr, Cursor) -> Fut,
        Fut: std::future::Future<Output = replication::Result<T>>,
    {
        let started = std::time::Instant::now();
        let mut topo = self.topology();
        let mut again = true;
        loop {
            // A strong read names this view's master (in a failover
            // cluster): a node that follows another, or that is no member
            // of this cluster at a member's address, refuses it.
            let min = match min.strong_master() {
                Some(_) => {
                    Cursor::strong(topo.cluster.as_ref().and_then(|c| c.master).unwrap_or(0))
                }
                None => min,
            };
            match self.read_on(&topo, min, &remote).await {
                Err(e)
                    if again && e.may_pass() && started.elapsed() < self.routes.failover_wait() =>
                {
                    let now = self.topology();
                    if now.master == topo.master && now.workers == topo.workers {
                        return Err(e);
                    }
                    self.metrics.reads_retried.inc();
                    topo = now;
                    again = false;
                }
                r => return r,
            }
        }
    }

    /// One pass of `read` over the nodes of `topo`.
    async fn read_on<T, F, Fut>(
        &self,
        topo: &Arc<topology::Topology>,
        min: Cursor,
        remote: &F,
    ) -> Result<T, ApiError>
    where
        F: Fn(SocketAddr, Cursor) -> Fut,
        Fut: std::future::Future<Output = replication::Result<T>>,
    {
        let order = self.by_load(topo);
        let mut last = None;
        let launch = |i: usize| {
            let attempt = Attempt::start(&topo.load[i]);
            let local = self.local == Some(topo.workers[i]);
            let call = remote(topo.workers[i], min);
            async move {
                let r = call.await;
                attempt.done(r.is_ok());
                if local && r.is_ok() {
                    self.metrics.reads_local.inc();
                }
                r
            }
        };
        if let Some(&head) = order.first() {
            // Most reads end with their first attempt: it is polled in place,
            // and the set for hedged attempts is made only once one starts
            // (a set costs two allocations and a move of the attempt).
            let first = launch(head);
            tokio::pin!(first);
            let mut first_running = true;
            let mut more = None;
            let mut tried = 1;
            let hedge = tokio::time::sleep(self.hedge_budget(topo, Some(head)));
            tokio::pin!(hedge);
            loop {
                let is_idle = |more: &Option<futures_util::stream::FuturesUnordered<_>>| {
                    more.as_ref().is_none_or(|m| m.is_empty())
                };
                if !first_running && is_idle(&more) {
                    // Every attempt so far failed: the next worker at once.
                    let Some(&next) = order.get(tried) else { break };
                    more.get_or_insert_with(futures_util::stream::FuturesUnordered::new)
                        .push(launch(next));
                    tried += 1;
                    let budget = self.hedge_budget(topo, Some(next));
                    hedge.as_mut().reset(tokio::time::Instant::now() + budget);
                }
                let idle = is_idle(&more);
                tokio::select! {
                    biased;
                    r = &mut first, if first_running => {
                        first_running = false;
                        match r {
                            Ok(v) => return Ok(v),
                            Err(e) => last = Some(e),
                        }
                    }
                    // (select! makes a disabled branch's future too, unpolled.)
                    Some(r) = async { futures_util::StreamExt::next(more.as_mut()?).await }, if !idle => match r {
                        Ok(v) => return Ok(v),
                        Err(e) => last = Some(e),
                    },
                    _ = &mut hedge => {
                        self.metrics.hedges.inc();
                        // Every worker has the read and none answered in
                        // time: the master answers it (one worker, paused).
                        let Some(&next) = order.get(tried) else { break };
                        more.get_or_insert_with(futures_util::stream::FuturesUnordered::new)
                            .push(launch(next));
                        tried += 1;
                        let budget = self.hedge_budget(topo, Some(next));
                        hedge.as_mut().reset(tokio::time::Instant::now() + budget);
                    }
                }
            }
        }
        match remote(topo.master, min).await {
            Ok(v) => Ok(v),
            // The master's word on a cursor it has not committed is final.
            Err(e @ replication::Error::Remote { .. }) => {
                if matches!(
                    e,
                    replication::Error::Remote {
                        code: replication::Code::NotMaster,
                        ..
                    }
                ) {
                    self.routes.poke();
                }
                if let replication::Error::Remote {
                    code: replication::Code::NotReached,
                    ..
                } = e
                {
                    // A cursor past the master's commit cursor names a write
                    // nobody made (or one a failover lost): waiting longer
                    // would not help, so it is the client's to fix.
                    let ahead = !min.is_strong()
                        && matches!(self.read_index().await, Ok(commit) if min > commit);
                    if ahead {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "cursor_ahead",
                            format!("cursor {min} is past the end of the master's log"),
                        ));
                    }
                }
                Err(ApiError::from_replication(e))
            }
            Err(e) => Err(ApiError::from_replication(last.unwrap_or(e))),
        }
    }

    /// How long a read waits on a worker before asking the next one too:
    /// four times its recent latency, within 100 ms to 500 ms (below that, a
    /// loaded machine's scheduling tail alone would double the reads).
    fn hedge_budget(
        &self,
        topo: &topology::Topology,
        worker: Option<usize>,
    ) -> std::time::Duration {
        let ewma = worker
            .and_then(|i| topo.load.get(i))
            .map(|l| l.ewma_us.load(Ordering::Relaxed))
            .unwrap_or(0);
        std::time::Duration::from_micros((ewma * 4).clamp(100_000, 500_000))
    }

    /// The cursor a read must see, by consistency level.
    fn min_cursor(&self, params: &Params, headers: &HeaderMap) -> Result<Cursor, ApiError> {
        // A malformed cursor is refused whatever the level, so a typo in a
        // level does not hide one.
        let mut given = headers.get_all(CURSOR_HEADER).iter();
        let session = match given.next() {
            Some(v) => Some(v.to_str().ok().and_then(parse_cursor).ok_or_else(|| {
                ApiError::bad_request("X-OurKV-Cursor must be epoch:file:offset")
            })?),
            None => None,
        };
        // As for a repeated query parameter: which one was meant is a guess.
        if given.next().is_some() {
            return Err(ApiError::bad_request(
                "X-OurKV-Cursor is given more than once",
            ));
        }
        match params.get("consistency")?.unwrap_or("strong") {
            // The node that reads takes the master's commit cursor after the
            // request reaches it (a worker asks its master): the gateway
            // sends one request per read, not two.
            "strong" => Ok(Cursor::strong(0)),
            "session" => Ok(session.unwrap_or(Cursor::ZERO)),
            "stale" => Ok(Cursor::ZERO),
            other => Err(ApiError::bad_request(format!(
                "consistency must be strong, session or stale, not {other:?}"
            ))),
        }
    }

    async fn write(
        &self,
        key: &str,
        value: Bytes,
        ack: Ack,
        expect: Expect,
        ttl_ms: u64,
        lease: u32,
    ) -> Result<(Cursor, Version), ApiError> {
        check_key(key)?;
        let max = self.max_value_bytes;
        if value.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "value of {} bytes; at most {max} (--max-value-bytes)",
                    value.len()
                ),
            ));
        }
        self.routes
            .on_master(false, |m| {
                self.client.set_if(
                    m,
                    key,
                    // Shared with the request body, not copied.
                    value.clone(),
                    ack,
                    expect.clone(),
                    Lifetime { ttl_ms, lease },
                )
            })
            .await
            .map_err(ApiError::from_write)
    }

    async fn delete(
        &self,
        key: &str,
        ack: Ack,
        expect: Expect,
    ) -> Result<(bool, Cursor), ApiError> {
        self.routes
            .on_master(false, |m| {
                self.client.delete_if(m, key, ack, expect.clone())
            })
            .await
            .map_err(ApiError::from_write)
    }
}

#[cfg(test)]
mod router_tests;
