//! The HTTP gateway: writes go to the master, reads to a worker (the master
//! only when no worker answers), at the consistency level the request asks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use ourdb::Location;
use replication::{Ack, Client, Expect, Version};
use serde_json::json;

/// Largest request body read; larger values are refused with 413 anyway.
const BODY_LIMIT: usize = 1 << 20;
/// How long a client may take to send its headers, and then its body.
pub const DEFAULT_CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const CURSOR_HEADER: &str = "x-ourkv-cursor";

pub struct Gateway {
    client: Arc<Client>,
    master: SocketAddr,
    workers: Vec<SocketAddr>,
    next: AtomicUsize,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Bearer token every request but /health must carry, if set.
    token: Option<String>,
    /// How long a client may take to send its request headers (the
    /// listener's limit) and then its body (408 after).
    client_timeout: std::time::Duration,
    load: Vec<Load>,
    batch: Arc<std::sync::Mutex<Batch>>,
    /// The nodes, when they live in this process (`ourkv dev`).
    local: Option<Local>,
    read_index_rounds: Arc<AtomicU64>,
}

/// Master and workers in this process: requests skip the network. The
/// workers are in the same order as the gateway's worker addresses.
pub struct Local {
    pub master: Arc<replication::Master>,
    pub workers: Vec<Arc<replication::Worker>>,
}

/// A worker's load as the gateway sees it.
#[derive(Default)]
struct Load {
    in_flight: AtomicU64,
    /// Exponentially weighted latency, microseconds.
    ewma_us: AtomicU64,
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

/// Strong reads waiting for the next read-index round.
#[derive(Default)]
struct Batch {
    running: bool,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<Location, String>>>,
}

impl Gateway {
    pub fn new(
        client: Client,
        master: SocketAddr,
        workers: Vec<SocketAddr>,
        token: Option<String>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            token,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            load: workers.iter().map(|_| Load::default()).collect(),
            batch: Arc::default(),
            local: None,
            read_index_rounds: Arc::default(),
            client: Arc::new(client),
            master,
            workers,
            next: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// Sets how long a client may take to send a request's headers, then
    /// its body.
    pub fn with_client_timeout(mut self: Arc<Self>, t: std::time::Duration) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("not yet shared")
            .client_timeout = t;
        self
    }

    pub fn client_timeout(&self) -> std::time::Duration {
        self.client_timeout
    }

    /// Serves from nodes in this process instead of over the network.
    pub fn with_local(mut self: Arc<Self>, local: Local) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("not yet shared").local = Some(local);
        self
    }

    pub fn router(self: Arc<Self>) -> Router {
        // Bodies are read (bounded in size and time) before the handlers,
        // which then never hit a limit of their own; only routes that take
        // one pay for the layer.
        let body = axum::middleware::from_fn_with_state(self.clone(), read_body);
        let router = Router::new()
            .route("/", get(status_page))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/v1/cluster", get(cluster))
            .route("/set", post(seed_set).layer(body.clone()))
            .route("/get", get(seed_get))
            .route("/delete", post(seed_delete).layer(body.clone()))
            .route("/v1/kv", get(list))
            .route(
                "/v1/kv/{*key}",
                put(kv_put).delete(kv_delete).layer(body).get(kv_get),
            )
            .route("/v1/records/{id}", get(by_id))
            .route("/v1/watch", get(watch))
            .route(
                "/openapi.json",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        include_str!("openapi.json"),
                    )
                }),
            )
            .fallback(|| async {
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
            .layer(axum::extract::DefaultBodyLimit::disable());
        // Without a token there is nothing to check: no layer at all.
        let router = match self.token {
            Some(_) => router.layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authorize,
            )),
            None => router,
        };
        router.with_state(self)
    }

    /// Worker indexes, least loaded first: fewest requests in flight,
    /// weighted by recent latency (failures count as slow).
    fn by_load(&self) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        // Rotating the start breaks ties evenly.
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Every 64th read goes round-robin, so a worker that failed once is
        // tried again and its score can recover. Else the least loaded goes
        // first; the others only matter if it fails.
        if !start.is_multiple_of(64) {
            if let Some(best) = (0..n).min_by_key(|&k| self.load[order[k]].score()) {
                order.swap(0, best);
            }
        }
        order
    }

    /// The master's commit cursor for a strong read. Concurrent strong reads
    /// share one request, but only one sent after they arrived: a read never
    /// takes an index older than itself. The rounds run in a task of their
    /// own, so a client that goes away mid-round (its request dropped) never
    /// stops them for the reads still waiting.
    async fn read_index(&self) -> Result<Location, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            b.waiters.push(tx);
            !std::mem::replace(&mut b.running, true)
        };
        if lead {
            let (client, batch, rounds, master) = (
                self.client.clone(),
                self.batch.clone(),
                self.read_index_rounds.clone(),
                self.master,
            );
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut b = batch.lock().unwrap_or_else(|e| e.into_inner());
                        if b.waiters.is_empty() {
                            b.running = false;
                            return;
                        }
                        std::mem::take(&mut b.waiters)
                    };
                    let r = client.read_index(master).await.map_err(|e| e.to_string());
                    rounds.fetch_add(1, Ordering::Relaxed);
                    for w in waiting {
                        let _ = w.send(r.clone());
                    }
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err("read-index round went away".into()))
    }

    /// Runs the read on the least loaded worker that has applied `min` (the
    /// next one on failure), then on the master if no worker answered:
    /// `remote` over QUIC, or `local` on the store when the nodes live in
    /// this process (`ourkv dev`).
    async fn read<T, F, Fut, L>(&self, min: Location, remote: F, local: L) -> Result<T, ApiError>
    where
        F: Fn(SocketAddr, Location) -> Fut,
        Fut: std::future::Future<Output = replication::Result<T>>,
        L: Fn(&ourdb::keyed::KeyedStore) -> ourdb::Result<T>,
    {
        if let Some(nodes) = &self.local {
            let mut lagging = None;
            for i in self.by_load() {
                let w = &nodes.workers[i];
                if !w.wait_applied(min).await {
                    lagging = Some(w.applied());
                    continue;
                }
                let load = &self.load[i];
                let t = std::time::Instant::now();
                let r = local(&w.store());
                load.observe(t.elapsed(), r.is_ok());
                if let Ok(v) = r {
                    return Ok(v);
                }
            }
            // The master has applied everything; it answers when no worker can.
            return match local(nodes.master.store()) {
                Ok(v) => Ok(v),
                Err(e) => Err(match lagging {
                    Some(a) => ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        format!("no worker reached {min} (one is at {a}); the master failed: {e}"),
                    ),
                    None => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "read_failed",
                        e.to_string(),
                    ),
                }),
            };
        }
        let f = remote;
        let mut last = None;
        for i in self.by_load() {
            let load = &self.load[i];
            load.in_flight.fetch_add(1, Ordering::Relaxed);
            let t = std::time::Instant::now();
            let r = f(self.workers[i], min).await;
            load.in_flight.fetch_sub(1, Ordering::Relaxed);
            load.observe(t.elapsed(), r.is_ok());
            match r {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        match f(self.master, min).await {
            Ok(v) => Ok(v),
            Err(e) => Err(ApiError::from_replication(last.unwrap_or(e))),
        }
    }

    /// The cursor a read must see, by consistency level.
    async fn min_cursor(&self, params: &Params, headers: &HeaderMap) -> Result<Location, ApiError> {
        match params
            .get("consistency")
            .map(String::as_str)
            .unwrap_or("strong")
        {
            // Read-index: the master's commit cursor now.
            "strong" if self.local.is_some() => Ok(self
                .local
                .as_ref()
                .expect("checked")
                .master
                .store()
                .db()
                .end()),
            "strong" => self
                .read_index()
                .await
                .map_err(|e| ApiError::unavailable(format!("no master for a strong read: {e}"))),
            "session" => match headers.get(CURSOR_HEADER) {
                Some(v) => parse_cursor(v.to_str().unwrap_or_default())
                    .ok_or_else(|| ApiError::bad_request("X-OurKV-Cursor must be file:offset")),
                None => Ok(Location::NONE),
            },
            "stale" => Ok(Location::NONE),
            other => Err(ApiError::bad_request(format!(
                "consistency must be strong, session or stale, not {other:?}"
            ))),
        }
    }

    async fn write(
        &self,
        key: &str,
        value: &[u8],
        ack: Ack,
        expect: Expect,
    ) -> Result<(Location, Version), ApiError> {
        check_key(key)?;
        let max = ourdb::keyed::max_value_len(key);
        if value.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "value of {} bytes; at most {max} with this key",
                    value.len()
                ),
            ));
        }
        if let Some(nodes) = &self.local {
            return match nodes
                .master
                .put(key.into(), value.to_vec(), ack, expect)
                .await
            {
                Ok(Some(w)) => Ok(w),
                Ok(None) => Err(precondition_failed()),
                Err(e) => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "write_failed",
                    e.to_string(),
                )),
            };
        }
        self.client
            .set_if(self.master, key, value, ack, expect)
            .await
            .map_err(ApiError::from_write)
    }

    async fn delete(
        &self,
        key: &str,
        ack: Ack,
        expect: Expect,
    ) -> Result<(bool, Location), ApiError> {
        if let Some(nodes) = &self.local {
            return match nodes.master.delete(key.into(), ack, expect).await {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(precondition_failed()),
                Err(e) => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "write_failed",
                    e.to_string(),
                )),
            };
        }
        self.client
            .delete_if(self.master, key, ack, expect)
            .await
            .map_err(ApiError::from_write)
    }
}

/// With `--api-token`, every request but `/health` needs
/// `Authorization: Bearer <token>`.
async fn authorize(
    State(gw): Gw,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &gw.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare without an early exit, so timing tells nothing.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok && req.uri().path() != "/health" {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Reads the whole body, at most `BODY_LIMIT` bytes and within the client
/// timeout: a slow or endless upload gets 408 or 413 and costs no more.
async fn read_body(
    State(gw): Gw,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A GET or an empty body has nothing to wait for (watches stay open).
    let empty = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    if empty || req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, BODY_LIMIT);
    let bytes = match tokio::time::timeout(gw.client_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request bodies are limited to {BODY_LIMIT} bytes"),
                )
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body did not arrive within {:?}",
                    gw.client_timeout
                ),
            )
            .into_response()
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

fn precondition_failed() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "the key's current version is not the one expected",
    )
}

fn parse_cursor(s: &str) -> Option<Location> {
    let (f, p) = s.split_once(':')?;
    Some(Location::new(f.parse().ok()?, p.parse().ok()?))
}

fn cursor_text(c: Location) -> String {
    format!("{}:{}", c.file_nr, c.position)
}

fn check_key(key: &str) -> Result<(), ApiError> {
    ourdb::keyed::check_key(key).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn ack_of(params: &Params) -> Result<Ack, ApiError> {
    params
        .get("ack")
        .map(|a| a.parse::<Ack>())
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .map(Option::unwrap_or_default)
}

/// An error answer: status and `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    fn not_found(key: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("key {key:?} not found"),
        )
    }
    fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }
    fn from_replication(e: replication::Error) -> ApiError {
        match e {
            replication::Error::Remote { code, message } if code == "lagging" => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            replication::Error::Remote { message, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            e => ApiError::unavailable(format!("no node answered: {e}")),
        }
    }
    fn from_write(e: replication::Error) -> ApiError {
        match e {
            replication::Error::Remote { code, message } if code == "precondition" => {
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    message,
                )
            }
            replication::Error::Remote { message, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", message)
            }
            e => ApiError::unavailable(format!("the master is unreachable: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut r = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type Gw = State<Arc<Gateway>>;

fn counted<T: IntoResponse>(gw: &Gateway, r: Result<T, ApiError>) -> Response {
    gw.requests.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(v) => v.into_response(),
        Err(e) => {
            gw.errors.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

fn with_etag(mut r: Response, v: Version) -> Response {
    if let Ok(h) = HeaderValue::from_str(&v.etag()) {
        r.headers_mut().insert(header::ETAG, h);
    }
    r
}

/// `If-Match: "etag"` or `If-None-Match: *` as a write condition. An entity
/// tag this gateway did not make can match nothing.
fn expectation(headers: &HeaderMap) -> Result<Expect, ApiError> {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Expect::Absent),
            _ => Err(ApiError::bad_request("If-None-Match supports only *")),
        };
    }
    match headers.get(header::IF_MATCH) {
        None => Ok(Expect::Any),
        Some(v) => {
            let tag = v.to_str().unwrap_or_default();
            Ok(Expect::Version(Version::from_etag(tag).unwrap_or(
                Version {
                    epoch: u64::MAX,
                    at: Location::NONE,
                },
            )))
        }
    }
}

fn with_cursor(mut r: Response, c: Location) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cursor_text(c)) {
        r.headers_mut().insert(CURSOR_HEADER, v);
    }
    r
}

/// `application/x-www-form-urlencoded` pairs, refusing malformed percent
/// escapes (which lenient parsers keep as literal text).
fn parse_pairs(raw: &[u8]) -> Result<Params, ApiError> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let ok = raw.len() > i + 2
                && raw[i + 1].is_ascii_hexdigit()
                && raw[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "invalid percent-encoding at byte {i}"
                )));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(Params(
        form_urlencoded::parse(raw)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

/// Query or form parameters in order; a name given twice means its last
/// value. A request has a handful: a list beats a hash map here.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

fn query(q: &RawQuery) -> Result<Params, ApiError> {
    parse_pairs(q.0.as_deref().unwrap_or_default().as_bytes())
}

fn field(pairs: &Params, name: &str) -> Result<String, ApiError> {
    pairs
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("missing form field {name:?}")))
}

async fn seed_set(State(gw): Gw, body: Bytes) -> Response {
    let r = async {
        let form = parse_pairs(&body)?;
        let key = field(&form, "key")?;
        let value = field(&form, "value")?;
        let (c, _) = gw
            .write(&key, value.as_bytes(), Ack::Master, Expect::Any)
            .await?;
        Ok(with_cursor(
            Json(json!({"ok": true, "key": key, "cursor": cursor_text(c)})).into_response(),
            c,
        ))
    }
    .await;
    counted(&gw, r)
}

async fn seed_get(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let key = q
            .get("key")
            .ok_or_else(|| ApiError::bad_request("missing query parameter \"key\""))?;
        get_value(&gw, key, &q, &headers).await
    }
    .await;
    counted(&gw, r)
}

async fn seed_delete(State(gw): Gw, body: Bytes) -> Response {
    let r = async {
        let key = field(&parse_pairs(&body)?, "key")?;
        delete_key(&gw, &key, Ack::Master, Expect::Any).await
    }
    .await;
    counted(&gw, r)
}

async fn get_value(
    gw: &Gateway,
    key: &str,
    q: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_key(key)?;
    let min = gw.min_cursor(q, headers).await?;
    if let Some(depth) = q.get("history") {
        let depth: u32 = depth
            .parse()
            .map_err(|_| ApiError::bad_request("history must be a number"))?;
        let depth = depth.min(1000);
        let values = gw
            .read(
                min,
                |n, c| gw.client.history(n, key, depth, c),
                |s| s.history(key, depth as usize),
            )
            .await?;
        if values.is_empty() {
            return Err(ApiError::not_found(key));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let history: Vec<String> = values.iter().map(|v| b64.encode(v)).collect();
        return Ok(Json(json!({"key": key, "history": history})).into_response());
    }
    let local = |s: &ourdb::keyed::KeyedStore| {
        let epoch = s.db().meta().epoch;
        Ok(s.get_versioned(key)?
            .map(|(v, at)| (v, Version { epoch, at })))
    };
    match gw
        .read(min, |n, c| gw.client.get_versioned(n, key, c), local)
        .await?
    {
        Some((v, version)) => Ok(with_etag(
            with_cursor(
                ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
                min,
            ),
            version,
        )),
        None => Err(ApiError::not_found(key)),
    }
}

async fn delete_key(
    gw: &Gateway,
    key: &str,
    ack: Ack,
    expect: Expect,
) -> Result<Response, ApiError> {
    check_key(key)?;
    let (existed, c) = gw.delete(key, ack, expect).await?;
    if !existed {
        return Err(ApiError::not_found(key));
    }
    Ok(with_cursor(
        Json(json!({"ok": true, "key": key, "cursor": cursor_text(c)})).into_response(),
        c,
    ))
}

async fn kv_get(
    State(gw): Gw,
    Path(key): Path<String>,
    headers: HeaderMap,
    q: RawQuery,
) -> Response {
    let r = async {
        let q = query(&q)?;
        get_value(&gw, &key, &q, &headers).await
    }
    .await;
    counted(&gw, r)
}

async fn kv_put(
    State(gw): Gw,
    Path(key): Path<String>,
    headers: HeaderMap,
    q: RawQuery,
    body: Bytes,
) -> Response {
    let r = async {
        let q = query(&q)?;
        let (c, version) = gw.write(&key, &body, ack_of(&q)?, expectation(&headers)?).await?;
        Ok(with_etag(
            with_cursor(
                Json(json!({"ok": true, "key": key, "cursor": cursor_text(c), "etag": version.etag()})).into_response(),
                c,
            ),
            version,
        ))
    }
    .await;
    counted(&gw, r)
}

async fn kv_delete(
    State(gw): Gw,
    Path(key): Path<String>,
    headers: HeaderMap,
    q: RawQuery,
) -> Response {
    let r = async {
        let q = query(&q)?;
        delete_key(&gw, &key, ack_of(&q)?, expectation(&headers)?).await
    }
    .await;
    counted(&gw, r)
}

async fn list(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let prefix = q.get("prefix").cloned().unwrap_or_default();
        let limit: u32 = match q.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request("limit must be a number"))?,
            None => 100,
        };
        let limit = limit.clamp(1, 1000);
        let after = q.get("after").cloned();
        let min = gw.min_cursor(&q, &headers).await?;
        let keys = gw
            .read(
                min,
                |n, c| gw.client.list(n, &prefix, after.as_deref(), limit, c),
                |s| Ok(s.list(&prefix, after.as_deref(), limit as usize)),
            )
            .await?;
        let next = (keys.len() == limit as usize)
            .then(|| keys.last().cloned())
            .flatten();
        Ok(Json(json!({"keys": keys, "next": next})).into_response())
    }
    .await;
    counted(&gw, r)
}

async fn by_id(State(gw): Gw, Path(id): Path<String>, headers: HeaderMap, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let id: u32 = id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("record id {id:?} is not a number")))?;
        let min = gw.min_cursor(&q, &headers).await?;
        match gw
            .read(min, |n, c| gw.client.by_id(n, id, c), |s| s.get_by_id(id))
            .await?
        {
            Some((key, value)) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                Ok(Json(
                    json!({"id": id, "key": key, "value": b64.encode(value)}),
                ))
            }
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("record {id} not found"),
            )),
        }
    }
    .await;
    counted(&gw, r)
}

/// Server-sent events for changes under `prefix` from `cursor` (or the
/// `Last-Event-ID` a reconnecting client sends): each event's id is the
/// cursor to resume after it, so a reconnect loses and repeats nothing.
async fn watch(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let r = async {
        let q = query(&q)?;
        let prefix = q.get("prefix").cloned().unwrap_or_default();
        let from = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| q.get("cursor").cloned());
        let cursor = match from {
            Some(c) => parse_cursor(&c)
                .ok_or_else(|| ApiError::bad_request("cursor must be file:offset"))?,
            None => Location::NONE,
        };
        let mut last = None;
        let mut stream = None;
        let n = gw.workers.len();
        let start = gw.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match gw
                .client
                .watch(gw.workers[(start + i) % n], &prefix, cursor)
                .await
            {
                Ok(w) => {
                    stream = Some(w);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(w) = stream else {
            return Err(ApiError::unavailable(format!(
                "no worker to watch from: {}",
                last.map(|e| e.to_string())
                    .unwrap_or_else(|| "none configured".into())
            )));
        };
        let events = futures_util::stream::unfold(w, |mut w| async move {
            let b64 = base64::engine::general_purpose::STANDARD;
            match w.next().await {
                Ok(Some(c)) => {
                    let (kind, data) = match &c.value {
                        Some(v) => ("put", json!({"key": c.key, "value": b64.encode(v)})),
                        None => ("delete", json!({"key": c.key})),
                    };
                    let ev = Event::default()
                        .id(cursor_text(c.cursor))
                        .event(kind)
                        .data(data.to_string());
                    Some((Ok::<_, std::convert::Infallible>(ev), w))
                }
                _ => None,
            }
        });
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    }
    .await;
    counted(&gw, r)
}

async fn cluster_json(gw: &Gateway) -> Result<serde_json::Value, ApiError> {
    let (cursor, workers) = gw
        .client
        .status(gw.master)
        .await
        .map_err(|e| ApiError::unavailable(format!("the master is unreachable: {e}")))?;
    let workers: Vec<_> = workers
        .iter()
        .map(|w| json!({"addr": w.addr, "acked": cursor_text(w.acked), "in_sync": w.in_sync}))
        .collect();
    Ok(json!({
        "master": {"addr": gw.master.to_string(), "cursor": cursor_text(cursor)},
        "workers": workers,
    }))
}

async fn cluster(State(gw): Gw) -> Response {
    let r = cluster_json(&gw).await.map(Json);
    counted(&gw, r)
}

async fn ready(State(gw): Gw, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let (cursor, workers) = gw
            .client
            .status(gw.master)
            .await
            .map_err(|e| ApiError::unavailable(format!("the master is unreachable: {e}")))?;
        // ?sync: every worker this gateway uses has caught up with the master.
        if q.get("sync").is_some() {
            for w in &gw.workers {
                let caught_up = workers
                    .iter()
                    .any(|s| s.addr == w.to_string() && s.in_sync && s.acked >= cursor);
                if !caught_up {
                    return Err(ApiError::unavailable(format!(
                        "worker {w} is not caught up"
                    )));
                }
            }
        }
        Ok(Json(json!({"ready": true})))
    }
    .await;
    counted(&gw, r)
}

async fn metrics(State(gw): Gw) -> Response {
    let mut out = String::new();
    out.push_str("# TYPE ourkv_http_requests_total counter\n");
    out.push_str(&format!(
        "ourkv_http_requests_total {}\n",
        gw.requests.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE ourkv_read_index_rounds_total counter\n");
    out.push_str(&format!(
        "ourkv_read_index_rounds_total {}\n",
        gw.read_index_rounds.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE ourkv_http_errors_total counter\n");
    out.push_str(&format!(
        "ourkv_http_errors_total {}\n",
        gw.errors.load(Ordering::Relaxed)
    ));
    if let Ok((cursor, workers)) = gw.client.status(gw.master).await {
        out.push_str("# TYPE ourkv_worker_in_sync gauge\n");
        for w in &workers {
            out.push_str(&format!(
                "ourkv_worker_in_sync{{worker=\"{}\"}} {}\n",
                w.addr, w.in_sync as u8
            ));
        }
        out.push_str("# TYPE ourkv_worker_lag_bytes gauge\n");
        for w in &workers {
            let lag = if w.acked.file_nr == cursor.file_nr {
                cursor.position.saturating_sub(w.acked.position) as u64
            } else {
                u64::MAX
            };
            out.push_str(&format!(
                "ourkv_worker_lag_bytes{{worker=\"{}\"}} {lag}\n",
                w.addr
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn status_page(State(gw): Gw) -> Response {
    let body = match cluster_json(&gw).await {
        Ok(c) => {
            let mut rows = format!(
                "<tr><td>master</td><td>{}</td><td>{}</td><td>-</td></tr>",
                c["master"]["addr"].as_str().unwrap_or_default(),
                c["master"]["cursor"].as_str().unwrap_or_default()
            );
            for w in c["workers"].as_array().into_iter().flatten() {
                rows.push_str(&format!(
                    "<tr><td>worker</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    w["addr"].as_str().unwrap_or_default(),
                    w["acked"].as_str().unwrap_or_default(),
                    if w["in_sync"].as_bool().unwrap_or(false) {
                        "in sync"
                    } else {
                        "behind"
                    }
                ));
            }
            format!("<table><tr><th>role</th><th>address</th><th>cursor</th><th>state</th></tr>{rows}</table>")
        }
        Err(e) => format!("<p>master unreachable: {}</p>", e.message),
    };
    let html = format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>ourkv</title></head><body><h1>ourkv</h1>{body}</body></html>");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}
