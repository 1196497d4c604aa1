//! The gateway's Prometheus metrics, kept with `prometheus-client`: requests
//! by route, method and status class, latency histograms per route, the
//! read-index and hedging counters, and the workers as the master sees them
//! (sampled at each scrape).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};

use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WorkerLabels {
    pub(super) worker: String,
}

/// A member of a failover cluster: its id, address, role (`master`,
/// `in_sync`, `out_of_sync`) and whether it votes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MemberLabels {
    pub(super) id: String,
    pub(super) addr: String,
    pub(super) role: String,
    pub(super) voter: String,
}

/// A histogram another process keeps (the master's group commits): its
/// bucket counts as last fetched, encoded as they are.
#[derive(Clone, Debug, Default)]
pub(super) struct RemoteHistogram {
    state: std::sync::Arc<std::sync::Mutex<(Buckets, f64)>>,
}

/// Upper bounds and per-bucket counts (the last bound `+Inf`); with the sum.
type Buckets = Vec<(f64, u64)>;

impl RemoteHistogram {
    /// The counts now: one per bound in `bounds` and one past them, and the
    /// sum of what was observed (a mismatched count list is ignored).
    pub(super) fn set(&self, bounds: &[f64], counts: &[u64], sum: f64) {
        if counts.len() != bounds.len() + 1 {
            return;
        }
        let buckets = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.iter().copied())
            .collect();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (buckets, sum);
    }
}

impl prometheus_client::encoding::EncodeMetric for RemoteHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (buckets, sum) = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The gateway's routes as axum matches them; requests to these take the
/// cached handles below (no label set built per request).
const ROUTES: &[&str] = &[
    "/",
    "/health",
    "/ready",
    "/livez",
    "/readyz",
    "/metrics",
    "/v1/cluster",
    "/set",
    "/get",
    "/delete",
    "/v1/kv",
    "/v1/kv/{*key}",
    "/v1/txn",
    "/v1/lease",
    "/v1/lease/{id}",
    "/v1/lease/{id}/keepalive",
    "/v1/records/{id}",
    "/v1/watch",
    "/v1/backup",
    "/v1/stats",
    "/openapi.json",
];

/// A request's counter and latency histogram, resolved once per
/// (route, method, status class).
#[derive(Clone)]
struct Handles {
    requests: Counter,
    latency: Histogram,
}

/// Every metric of one gateway, registered once.
pub(super) struct Metrics {
    registry: Registry,
    /// (index in `ROUTES` or `ROUTES.len()` for none, method, status class).
    cache: RwLock<HashMap<(usize, &'static str, u16), Handles>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// API requests that ended in an error answer.
    pub(super) errors: Counter,
    /// Read-index rounds sent to the master.
    pub(super) read_index_rounds: Counter,
    /// Reads also sent to another worker (or the master, after the last)
    /// because the one asked was slow.
    pub(super) hedges: Counter,
    /// Reads that failed while the master changed and went once more.
    pub(super) reads_retried: Counter,
    /// Reads the member this gateway runs in answered (`--http` on a node).
    pub(super) reads_local: Counter,
    pub(super) worker_in_sync: Family<WorkerLabels, Gauge>,
    pub(super) worker_lag_bytes: Family<WorkerLabels, Gauge>,
    pub(super) worker_lag_seconds: Family<WorkerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The master's group commits (from its status, at each scrape).
    pub(super) commit_seconds: RemoteHistogram,
    pub(super) commit_writes: RemoteHistogram,
    /// Times the gateway switched to another master or member list.
    pub(super) topology_changes: Counter,
    /// Online backups started (`/v1/backup`).
    pub(super) backups: Counter,
    /// HTTP connections open now.
    pub(super) connections_open: Gauge,
    /// Connections refused because the connection cap was reached.
    pub(super) connections_refused: Counter,
    /// Watches open now (set at each scrape).
    pub(super) watches_open: Gauge,
    /// The term of the master the gateway follows (0: not a failover cluster).
    pub(super) master_term: Gauge,
    /// The members of the failover cluster, as the gateway last learned.
    pub(super) members: Family<MemberLabels, Gauge>,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut root = Registry::default();
        // `process_*` keep their standard names; everything else is ourkv_*.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("ourkv");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status class",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route and method",
            latency.clone(),
        );
        let errors = Counter::default();
        registry.register(
            "http_errors",
            "API requests answered with an error",
            errors.clone(),
        );
        let read_index_rounds = Counter::default();
        registry.register(
            "read_index_rounds",
            "Read-index rounds this gateway sent to the master (backups, checks of a cursor; strong reads take theirs on the node that reads)",
            read_index_rounds.clone(),
        );
        let hedges = Counter::default();
        registry.register(
            "read_hedges",
            "Reads also sent to another worker (the master, after the last) because the one asked was slow",
            hedges.clone(),
        );
        let reads_retried = Counter::default();
        registry.register(
            "reads_retried",
            "Reads that failed while the cluster changed master and went once more to the nodes as they are now",
            reads_retried.clone(),
        );
        // Constant for the process's life: set once, here, in its runtime.
        let threads = Gauge::<i64>::default();
        threads.set(
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers()) as i64,
        );
        registry.register(
            "runtime_threads",
            "Threads of the runtime that serves this API (--threads; default one per core)",
            threads,
        );
        let reads_local = Counter::default();
        registry.register(
            "reads_local",
            "Reads answered by the node this HTTP API runs in (a node's --http), without a hop",
            reads_local.clone(),
        );
        let worker_in_sync = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_in_sync",
            "1 when the master counts the worker in the in-sync set",
            worker_in_sync.clone(),
        );
        let worker_lag_bytes = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_lag_bytes",
            "Bytes the worker's acknowledged cursor is behind the master's (same data file only)",
            worker_lag_bytes.clone(),
        );
        let worker_lag_seconds =
            Family::<WorkerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "worker_lag_seconds",
            "How long the oldest commit the worker has not acknowledged has waited (0 when it has them all)",
            worker_lag_seconds.clone(),
        );
        let topology_changes = Counter::default();
        registry.register(
            "gateway_topology_changes",
            "Times the gateway followed a failover cluster to another master or member list",
            topology_changes.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "http_connections_open",
            "HTTP connections open now",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections refused with 503 because --max-connections were open",
            connections_refused.clone(),
        );
        let watches_open = Gauge::default();
        registry.register(
            "watches_open",
            "Watches (server-sent event streams) open now",
            watches_open.clone(),
        );
        let backups = Counter::default();
        registry.register(
            "backups",
            "Online backups started through /v1/backup",
            backups.clone(),
        );
        let master_term = Gauge::default();
        registry.register(
            "master_term",
            "The term of the master the gateway sends writes to (0 outside a failover cluster)",
            master_term.clone(),
        );
        let commit_seconds = RemoteHistogram::default();
        registry.register(
            "master_commit_duration_seconds",
            "The master's group commits by duration (write(2) and fdatasync), as the master counted them",
            commit_seconds.clone(),
        );
        let commit_writes = RemoteHistogram::default();
        registry.register(
            "master_commit_writes",
            "The master's group commits by how many writes each covered",
            commit_writes.clone(),
        );
        let members = Family::<MemberLabels, Gauge>::default();
        registry.register(
            "cluster_member",
            "1 for each member of the failover cluster, labelled with its id, address, role (master, in_sync, out_of_sync) and whether it votes",
            members.clone(),
        );
        Metrics {
            registry: root,
            connections_open,
            connections_refused,
            watches_open,
            backups,
            members,
            topology_changes,
            master_term,
            cache: RwLock::default(),
            requests,
            latency,
            errors,
            read_index_rounds,
            hedges,
            reads_retried,
            reads_local,
            worker_in_sync,
            worker_lag_bytes,
            worker_lag_seconds,
            commit_seconds,
            commit_writes,
        }
    }

    /// The handles for one request's labels, made on first use.
    fn handles(&self, route: &str, method: &hyper::Method, class: u16) -> Handles {
        let method = method_label(method);
        let index = ROUTES.iter().position(|r| *r == route);
        let key = (index.unwrap_or(ROUTES.len()), method, class);
        // A route missing from `ROUTES` takes the slow path each time rather
        // than share the cache slot of "unmatched".
        let cacheable = index.is_some() || route == "unmatched";
        if cacheable {
            if let Some(h) = self
                .cache
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                return h.clone();
            }
        }
        let route = route_label(route);
        let h = Handles {
            requests: self
                .requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    method: method.to_string(),
                    status: format!("{class}xx"),
                })
                .clone(),
            latency: self
                .latency
                .get_or_create(&RouteLabels {
                    route,
                    method: method.to_string(),
                })
                .clone(),
        };
        // Only the fixed routes are cached: a bounded set of keys.
        if cacheable {
            self.cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, h.clone());
        }
        h
    }

    /// The text exposition format.
    pub(super) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A method as a label: the standard ones, else `OTHER` (a client's made-up
/// methods must not make series without bound).
fn method_label(m: &hyper::Method) -> &'static str {
    use hyper::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A route as a label: `{*key}` as `*key`, `{id}` as `:id` (braces in
/// label values trip up some exposition parsers).
fn route_label(path: &str) -> String {
    path.replace("{*", "*").replace('{', ":").replace('}', "")
}

/// Middleware: counts every request and times it, by the route it matched:
/// a route's service, tracked. A service of its own rather than `from_fn`,
/// which boxes the rest of the stack and every request's future once more.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) gw: std::sync::Arc<super::Gateway>,
    pub(super) inner: S,
}

impl<S> tower::Service<Request> for Tracked<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        Timed {
            gw: self.gw.clone(),
            route,
            method,
            start: Instant::now(),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way, with what it is counted under.
    pub(super) struct Timed<F> {
        gw: std::sync::Arc<super::Gateway>,
        route: Option<MatchedPath>,
        method: axum::http::Method,
        start: Instant,
        #[pin]
        inner: F,
    }
}

impl<F, E> std::future::Future for Timed<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let r = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &r {
            let class = resp.status().as_u16() / 100;
            let h = this.gw.metrics.handles(
                this.route.as_ref().map_or("unmatched", |m| m.as_str()),
                this.method,
                class,
            );
            let took = this.start.elapsed();
            h.latency.observe(took.as_secs_f64());
            this.gw.live.record(took);
            h.requests.inc();
        }
        std::task::Poll::Ready(r)
    }
}

/// The standard `process_*` metrics of this process, read from /proc on
/// each scrape: CPU time, resident and virtual memory, open and allowed
/// file descriptors, threads, start time.
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        // A figure /proc does not give (it should not happen) is left out
        // rather than reported as zero.
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let gauge = |encoder: &mut prometheus_client::encoding::DescriptorEncoder,
                     name: &str,
                     help: &str,
                     v: f64|
         -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                (stat.rss * procfs::page_size()) as f64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as f64,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Threads of the process",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        if let Ok(n) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                n as f64,
            )?;
        }
        if let Ok(l) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = l.max_open_files.soft_limit {
                gauge(
                    &mut encoder,
                    "process_max_fds",
                    "The most file descriptors the process may open",
                    max as f64,
                )?;
            }
        }
        Ok(())
    }
}
