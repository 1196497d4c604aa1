//! How far behind a worker is in time: the age of the oldest commit it has
//! not acknowledged. The master notes when its commit cursor moves (marks
//! at most one per `GRAIN`, so a mark's time is at or before the commits it
//! covers: a lag is never under-reported by more than the oldest mark's
//! reach, and over-reported by at most one grain).

use std::collections::VecDeque;
use std::time::Duration;

use ourdb::Location;

/// Marks closer together than this share one (the earlier time).
pub const GRAIN: Duration = Duration::from_millis(20);
/// Marks kept: with one per grain, about 160 s of history. A worker further
/// behind shows the oldest mark's age.
pub const MARKS: usize = 8192;

/// Commit points and when they were reached, oldest first. Time is a
/// `Duration` on any monotonic clock the caller keeps.
#[derive(Debug, Default)]
pub struct LagClock {
    marks: VecDeque<(Location, Duration)>,
}

impl LagClock {
    /// The commit cursor reached `at` at time `t`.
    pub fn note(&mut self, at: Location, t: Duration) {
        match self.marks.back_mut() {
            Some((l, _)) if *l >= at => {}
            // Within a grain of the last mark: it covers this commit too.
            Some((l, lt)) if t.saturating_sub(*lt) < GRAIN => *l = at,
            _ => {
                self.marks.push_back((at, t));
                if self.marks.len() > MARKS {
                    self.marks.pop_front();
                }
            }
        }
    }

    /// How long at `now` the oldest commit past `acked` has waited (zero
    /// when the worker has everything committed).
    pub fn lag(&self, acked: Location, now: Duration) -> Duration {
        // Marks are in location order: the first past `acked` is the
        // oldest commit the worker lacks.
        let i = self.marks.partition_point(|(l, _)| *l <= acked);
        self.marks
            .get(i)
            .map_or(Duration::ZERO, |(_, t)| now.saturating_sub(*t))
    }
}

/// A worker this far behind its master says how its catch-up goes.
pub const CATCH_UP_BYTES: u64 = 8 << 20;
/// At most one progress line per this long.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// A worker's catch-up, for its log: once it is `CATCH_UP_BYTES` behind,
/// a line every `REPORT_EVERY` with what is left and the rate, and one when
/// it is within a segment of the master again.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// When it started, and the bytes applied by then.
    started: Option<(Duration, u64)>,
    last_report: Duration,
}

/// What to log.
#[derive(Debug, PartialEq, Eq)]
pub enum CatchUpReport {
    /// Still behind by `behind` bytes, applying `bytes_per_second`.
    Behind {
        /// Bytes of the master's log not applied yet.
        behind: u64,
        /// Applied since the catch-up started, per second.
        bytes_per_second: u64,
    },
    /// Caught up: `bytes` applied over `took`.
    CaughtUp {
        /// Bytes applied during the catch-up.
        bytes: u64,
        /// How long it took.
        took: Duration,
    },
}

impl CatchUp {
    /// After an apply: `behind` bytes left, `applied` bytes applied in all
    /// (a running count), at `now`.
    pub fn on_applied(
        &mut self,
        behind: u64,
        applied: u64,
        now: Duration,
    ) -> Option<CatchUpReport> {
        match self.started {
            None if behind >= CATCH_UP_BYTES => {
                self.started = Some((now, applied));
                self.last_report = now;
                Some(CatchUpReport::Behind {
                    behind,
                    bytes_per_second: 0,
                })
            }
            None => None,
            Some((t0, a0)) if behind < CATCH_UP_BYTES / 8 => {
                self.started = None;
                Some(CatchUpReport::CaughtUp {
                    bytes: applied - a0,
                    took: now.saturating_sub(t0),
                })
            }
            Some((t0, a0)) if now.saturating_sub(self.last_report) >= REPORT_EVERY => {
                self.last_report = now;
                let secs = now.saturating_sub(t0).as_secs_f64().max(1e-3);
                Some(CatchUpReport::Behind {
                    behind,
                    bytes_per_second: ((applied - a0) as f64 / secs) as u64,
                })
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_reports_now_and_then_and_once_done() {
        let mut c = CatchUp::default();
        let mib = 1u64 << 20;
        assert_eq!(c.on_applied(mib, 0, ms(0)), None, "a little behind: quiet");
        assert_eq!(
            c.on_applied(100 * mib, 0, ms(10)),
            Some(CatchUpReport::Behind {
                behind: 100 * mib,
                bytes_per_second: 0
            })
        );
        assert_eq!(
            c.on_applied(90 * mib, 10 * mib, ms(1_000)),
            None,
            "within 2 s"
        );
        assert_eq!(
            c.on_applied(60 * mib, 40 * mib, ms(2_010)),
            Some(CatchUpReport::Behind {
                behind: 60 * mib,
                bytes_per_second: 20 * mib
            })
        );
        assert_eq!(
            c.on_applied(0, 100 * mib, ms(4_010)),
            Some(CatchUpReport::CaughtUp {
                bytes: 100 * mib,
                took: ms(4_000)
            })
        );
        assert_eq!(c.on_applied(0, 100 * mib, ms(9_000)), None, "quiet again");
    }

    fn at(p: u32) -> Location {
        Location::new(0, p)
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_caught_up_worker_has_no_lag_and_a_stalled_one_ages() {
        let mut c = LagClock::default();
        c.note(at(100), ms(1_000));
        c.note(at(200), ms(2_000));
        c.note(at(300), ms(3_000));
        assert_eq!(c.lag(at(300), ms(5_000)), Duration::ZERO, "has it all");
        assert_eq!(c.lag(at(400), ms(5_000)), Duration::ZERO, "ahead");
        assert_eq!(c.lag(at(200), ms(5_000)), ms(2_000), "lacks the 3 s commit");
        assert_eq!(c.lag(at(150), ms(5_000)), ms(3_000), "lacks the 2 s one");
        assert_eq!(c.lag(at(1), ms(5_000)), ms(4_000));
        // Time goes on with no commit: the stalled worker's lag grows.
        assert_eq!(c.lag(at(200), ms(9_000)), ms(6_000));
    }

    #[test]
    fn commits_within_a_grain_share_the_earlier_time() {
        let mut c = LagClock::default();
        c.note(at(100), ms(1_000));
        c.note(at(150), ms(1_005));
        c.note(at(150), ms(1_900)); // no move: nothing noted
        c.note(at(120), ms(1_950)); // backwards: ignored
        assert_eq!(c.marks.len(), 1);
        assert_eq!(
            c.lag(at(120), ms(2_000)),
            ms(1_000),
            "over-reported by under a grain"
        );
        c.note(at(160), ms(2_000));
        assert_eq!(c.marks.len(), 2);
        assert_eq!(c.lag(at(150), ms(2_500)), ms(500));
    }

    #[test]
    fn history_is_bounded() {
        let mut c = LagClock::default();
        for i in 0..(MARKS as u32 + 10) {
            c.note(at(i + 1), GRAIN * i);
        }
        assert_eq!(c.marks.len(), MARKS);
        // Further behind than the marks reach: the oldest mark's age.
        let oldest = GRAIN * 10;
        assert_eq!(c.lag(at(0), GRAIN * 20_000), GRAIN * 20_000 - oldest);
    }
}
