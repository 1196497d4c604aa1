//! The gateway's Prometheus metrics, kept with `prometheus-client`: requests
//! by route, method and status class, latency histograms per route, the
//! read-index and hedging counters, and the workers as the master sees them
//! (sampled at each scrape).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};

use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Gw;

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

fn latency_histogram() -> Histogram {
    // 50 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Every metric of one gateway, registered once.
pub(super) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// API requests that ended in an error answer.
    pub(super) errors: Counter,
    /// Read-index rounds sent to the master.
    pub(super) read_index_rounds: Counter,
    /// Reads also sent to another worker because the first was slow.
    pub(super) hedges: Counter,
    pub(super) worker_in_sync: Family<WorkerLabels, Gauge>,
    pub(super) worker_lag_bytes: Family<WorkerLabels, Gauge>,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ourkv");
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
            "Read-index rounds sent to the master (shared by concurrent strong reads)",
            read_index_rounds.clone(),
        );
        let hedges = Counter::default();
        registry.register(
            "read_hedges",
            "Reads also sent to another worker because the first was slow",
            hedges.clone(),
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
        Metrics {
            registry,
            requests,
            latency,
            errors,
            read_index_rounds,
            hedges,
            worker_in_sync,
            worker_lag_bytes,
        }
    }

    /// The text exposition format.
    pub(super) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A route as a label: `{*key}` as `*key`, `{id}` as `:id` (braces in
/// label values trip up some exposition parsers).
fn route_label(path: &str) -> String {
    path.replace("{*", "*").replace('{', ":").replace('}', "")
}

/// Middleware: counts every request and times it, by the route it matched.
pub(super) async fn track(State(gw): Gw, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| route_label(m.as_str()));
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = format!("{}xx", resp.status().as_u16() / 100);
    let m = &gw.metrics;
    m.latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    resp
}
