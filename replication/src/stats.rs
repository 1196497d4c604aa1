//! The master's group commits in numbers: how long each took (write(2) and
//! fdatasync) and how many writes it covered, as histogram bucket counts
//! that travel in `StatusIs` and that a gateway exports as Prometheus
//! histograms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit-duration buckets, in seconds (one more bucket
/// counts the rest).
pub const COMMIT_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of the group-size buckets, in writes (one more bucket
/// counts the rest).
pub const GROUP_WRITES: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Group commits so far, as bucket counts (not cumulative; the last bucket
/// is past every bound).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commits by duration, one count per bucket of `COMMIT_SECONDS` and
    /// one past them.
    pub duration_counts: Vec<u64>,
    /// Their total duration, in microseconds.
    pub duration_sum_us: u64,
    /// Commits by writes covered, one count per bucket of `GROUP_WRITES`
    /// and one past them.
    pub size_counts: Vec<u64>,
    /// Writes they covered in all.
    pub size_sum: u64,
}

impl CommitStats {
    /// Commits counted.
    pub fn commits(&self) -> u64 {
        self.duration_counts.iter().sum()
    }
}

/// Counts group commits as they happen (the syncer thread), read by status
/// requests.
#[derive(Debug)]
pub(crate) struct CommitRecorder {
    duration: [AtomicU64; COMMIT_SECONDS.len() + 1],
    duration_sum_us: AtomicU64,
    size: [AtomicU64; GROUP_WRITES.len() + 1],
    size_sum: AtomicU64,
}

impl Default for CommitRecorder {
    fn default() -> CommitRecorder {
        CommitRecorder {
            duration: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_us: AtomicU64::new(0),
            size: std::array::from_fn(|_| AtomicU64::new(0)),
            size_sum: AtomicU64::new(0),
        }
    }
}

/// The bucket of `v` among upper bounds `bounds` (the last: past them all).
fn bucket(bounds: &[f64], v: f64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

impl CommitRecorder {
    /// One group commit of `writes` writes that took `took`.
    pub(crate) fn record(&self, took: Duration, writes: u64) {
        self.duration[bucket(&COMMIT_SECONDS, took.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.size[bucket(&GROUP_WRITES, writes as f64)].fetch_add(1, Ordering::Relaxed);
        self.size_sum.fetch_add(writes, Ordering::Relaxed);
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> CommitStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CommitStats {
            duration_counts: self.duration.iter().map(load).collect(),
            duration_sum_us: load(&self.duration_sum_us),
            size_counts: self.size.iter().map(load).collect(),
            size_sum: load(&self.size_sum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_land_in_their_buckets() {
        let r = CommitRecorder::default();
        r.record(Duration::from_micros(80), 1);
        r.record(Duration::from_millis(3), 7);
        r.record(Duration::from_secs(9), 10_000);
        let s = r.snapshot();
        assert_eq!(s.commits(), 3);
        assert_eq!(s.duration_counts[0], 1, "80 µs ≤ 100 µs");
        assert_eq!(s.duration_counts[5], 1, "3 ms ≤ 5 ms");
        assert_eq!(
            s.duration_counts[COMMIT_SECONDS.len()],
            1,
            "9 s past them all"
        );
        assert_eq!(s.duration_sum_us, 80 + 3_000 + 9_000_000);
        assert_eq!(s.size_counts[0], 1);
        assert_eq!(s.size_counts[3], 1, "7 ≤ 8");
        assert_eq!(s.size_counts[GROUP_WRITES.len()], 1);
        assert_eq!(s.size_sum, 10_008);
    }
}
