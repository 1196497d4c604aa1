//! The live view behind the status page: once a second the gateway notes
//! its requests per second, the p99 latency of that second and each
//! worker's lag and in-sync state as the master reports them, and keeps the
//! last five minutes (`GET /v1/stats`). The page reads it every second, so
//! it shows the recent past at once, not only what happened while open.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::*;

/// Samples kept: five minutes at one a second.
const KEEP: usize = 300;
const INTERVAL: Duration = Duration::from_secs(1);
/// Latency buckets: four per power of two of microseconds (each about 19%
/// wide), the last holding everything from about 2^31 µs (36 min) on.
const BUCKETS: usize = 128;
/// How long a sample waits for the master's status; it goes without lag
/// figures rather than late.
const STATUS_WAIT: Duration = Duration::from_millis(800);

pub(super) struct Live {
    requests: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    samples: Mutex<VecDeque<Value>>,
}

impl Live {
    pub(super) fn new() -> Live {
        Live {
            requests: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }

    /// Counts one request that took `d` (two relaxed additions: this is on
    /// every request's path).
    pub(super) fn record(&self, d: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency[bucket(d)].fetch_add(1, Ordering::Relaxed);
    }

    /// The samples taken after `since` (milliseconds since the Unix epoch).
    pub(super) fn since(&self, since: u64) -> Vec<Value> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s["t"].as_u64().is_some_and(|t| t > since))
            .cloned()
            .collect()
    }

    fn push(&self, sample: Value) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back(sample);
    }
}

fn bucket(d: Duration) -> usize {
    let us = d.as_micros().max(1) as f64;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// The upper edge of bucket `i`, in milliseconds.
fn bucket_top_ms(i: usize) -> f64 {
    2f64.powf((i + 1) as f64 / 4.0) / 1000.0
}

/// The 99th percentile of a second's bucket counts: the upper edge of the
/// bucket that holds it (so at most about 19% high), `None` without requests.
fn p99_ms(counts: &[u64]) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = n - n / 100;
    let mut seen = 0;
    counts.iter().enumerate().find_map(|(i, c)| {
        seen += c;
        (seen >= rank).then(|| bucket_top_ms(i))
    })
}

/// Bytes between a worker's acknowledged cursor and the master's, when
/// they are in the same data file of the same log (else not comparable).
pub(super) fn lag_bytes(master: Cursor, acked: Cursor) -> Option<u32> {
    (acked.epoch == master.epoch && acked.at.file_nr == master.at.file_nr)
        .then(|| master.at.position.saturating_sub(acked.at.position))
}

/// Samples every second for as long as the gateway lives.
pub(super) fn start(gw: &Arc<Gateway>) {
    let weak: Weak<Gateway> = Arc::downgrade(gw);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_requests = 0u64;
        let mut last_counts = vec![0u64; BUCKETS];
        loop {
            tick.tick().await;
            let Some(gw) = weak.upgrade() else { return };
            let live = &gw.live;
            let requests = live.requests.load(Ordering::Relaxed);
            let counts: Vec<u64> = live
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            let delta: Vec<u64> = counts
                .iter()
                .zip(&last_counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let workers = match tokio::time::timeout(STATUS_WAIT, ops::master_status(&gw)).await {
                Ok(Ok((_, cursor, workers))) => workers
                    .iter()
                    .map(|w| {
                        json!({
                            "addr": w.addr,
                            "in_sync": w.in_sync,
                            "lag_ms": w.lag_ms,
                            "lag_bytes": lag_bytes(cursor, w.acked),
                        })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            live.push(json!({
                "t": t,
                "requests_per_second": requests.saturating_sub(last_requests),
                "p99_ms": p99_ms(&delta),
                "workers": workers,
            }));
            last_requests = requests;
            last_counts = counts;
        }
    });
}

/// `GET /v1/stats?since=T`: the samples after T (milliseconds since the
/// Unix epoch; all five minutes without it).
/// The gateway's last five minutes
///
/// One sample a second: requests/s, p99 latency, worker lag and in-sync
/// state (the status page's charts).
#[utoipa::path(get, path = "/v1/stats", tag = "ops",
    params(api::StatsQuery),
    responses(
        api::Common,
        (status = 200, description = "The samples", body = api::Stats),
        (status = 400, response = api::BadRequest),
    ))]
pub(super) async fn stats(State(gw): Gw, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let since = match q.get("since")? {
            None => 0,
            // Digits only (no sign), within a signed 64-bit integer, as
            // the OpenAPI document says.
            Some(s) => match s.parse::<i64>() {
                Ok(ms) if s.bytes().all(|b| b.is_ascii_digit()) => ms as u64,
                _ => {
                    return Err(ApiError::bad_request(
                        "since must be milliseconds since the Unix epoch",
                    ))
                }
            },
        };
        Ok(Json(json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "samples": gw.live.since(since),
        })))
    }
    .await;
    counted(&gw, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_the_p99_is_the_edge_above_it() {
        let ds = [1u64, 15, 16, 100, 999, 1_000, 50_000, 3_000_000];
        let bs: Vec<usize> = ds
            .iter()
            .map(|&us| bucket(Duration::from_micros(us)))
            .collect();
        assert!(bs.windows(2).all(|w| w[0] <= w[1]), "{bs:?}");
        for (&us, &b) in ds.iter().zip(&bs) {
            let top = bucket_top_ms(b) * 1000.0;
            assert!(
                top >= us as f64 && top <= us as f64 * 1.2 + 1.0,
                "{us} µs: {top}"
            );
        }
        let mut counts = vec![0u64; BUCKETS];
        // 990 fast requests and 10 slow ones: the p99 is a fast one.
        counts[bucket(Duration::from_micros(200))] = 990;
        counts[bucket(Duration::from_millis(40))] = 10;
        let p = p99_ms(&counts).unwrap();
        assert!((0.2..0.24).contains(&p), "{p}");
        // One more slow request puts the 99th percentile among the slow.
        counts[bucket(Duration::from_millis(40))] = 11;
        let p = p99_ms(&counts).unwrap();
        assert!((40.0..48.0).contains(&p), "{p}");
        assert_eq!(p99_ms(&[0; BUCKETS]), None);
        assert_eq!(bucket(Duration::from_secs(1 << 40)), BUCKETS - 1);
    }
}
