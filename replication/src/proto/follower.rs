//! The worker side of log shipping: which segment to apply, when to
//! acknowledge, when to subscribe again and when only a snapshot helps.
//! Pure decisions: the caller moves the frames and writes the bytes, and
//! tells this what happened.
//!
//! The rules, in order of a segment's arrival:
//! * a segment of another epoch than the subscription's is refused: the
//!   log it came from is not ours (a stale stream after a compaction);
//! * a segment that ends at or before what is applied is a duplicate:
//!   nothing is written, what is applied is acknowledged again;
//! * a segment that starts after what is applied leaves a gap: the bytes in
//!   between are missing, so the worker subscribes again from its end;
//! * a segment that starts before what is applied and ends after it
//!   overlaps: its first records are ours already, but positions inside
//!   a segment are not known here, so the worker subscribes again too;
//! * a segment that starts exactly at what is applied is applied, and so
//!   is one that starts the next data file (position 1 of file n + 1 when
//!   file n is applied): the master moves to the next file only past the
//!   end of the current one, and a stream delivers in order, so what was
//!   applied of file n is all of it.
//!
//! A refusal from the master of the epoch or of the bytes before the cursor
//! (`Code::Epoch`, `Code::Cursor`) means the log differs from the master's:
//! only a snapshot brings the worker back. Any other refusal is retried.

use ourdb::Location;

use crate::cursor::Cursor;
use crate::error::Code;

/// Where the worker is in following the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No subscription is open (start, after a crash, or after a refusal).
    Idle,
    /// Subscribed from a cursor: segments are expected.
    Following,
    /// A snapshot is being fetched; segments are ignored until it is in.
    Snapshot,
}

/// What the caller does with an arriving segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Write its bytes at the applied end, then report with `applied`.
    Apply,
    /// Nothing to write: acknowledge this cursor again.
    Duplicate(Cursor),
    /// Not at the applied end (a gap or an overlap): subscribe again from
    /// this cursor.
    Resubscribe(Cursor),
    /// Not for this subscription (another epoch, or no subscription open):
    /// drop it.
    Ignore,
}

/// What the caller does after a refusal or a failure to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Subscribe again from this cursor (after the retry pause).
    Resubscribe(Cursor),
    /// Fetch the master's whole log.
    FetchSnapshot,
}

/// One worker's following state.
#[derive(Clone, Debug)]
pub struct Follower {
    /// What the store holds, in the epoch of the store.
    applied: Cursor,
    phase: Phase,
}

impl Follower {
    /// A worker whose store ends at `end` in log `epoch`.
    pub fn new(epoch: u64, end: Location) -> Follower {
        Follower {
            applied: Cursor::new(epoch, end),
            phase: Phase::Idle,
        }
    }

    /// The end of what the worker has applied.
    pub fn applied(&self) -> Cursor {
        self.applied
    }

    /// Idle, following, or fetching a snapshot.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A subscription is about to be sent: the cursor it names.
    pub fn subscribe(&mut self) -> Cursor {
        self.phase = Phase::Following;
        self.applied
    }

    /// A segment `[start, next)` of log `epoch` arrived.
    pub fn on_segment(&mut self, epoch: u64, start: Location, next: Location) -> Segment {
        if self.phase != Phase::Following || epoch != self.applied.epoch || next < start {
            return Segment::Ignore;
        }
        let applied = self.applied.at;
        if next <= applied {
            Segment::Duplicate(self.applied)
        } else if start == applied || start == Location::new(applied.file_nr + 1, 1) {
            Segment::Apply
        } else {
            // A gap (start past the end) or an overlap (start before it):
            // ask again from the end.
            self.phase = Phase::Idle;
            Segment::Resubscribe(self.applied)
        }
    }

    /// The segment that `on_segment` said to apply is written and the store
    /// now ends at `end`; `next` is where the master said it ends. The
    /// cursor to acknowledge, or a recovery when the two differ (the bytes
    /// framed differently here than on the master: the logs differ).
    pub fn on_applied(&mut self, end: Location, next: Location) -> Result<Cursor, Recovery> {
        if end != next {
            self.phase = Phase::Snapshot;
            return Err(Recovery::FetchSnapshot);
        }
        self.applied.at = end;
        Ok(self.applied)
    }

    /// Writing the segment failed because the store does not end where this
    /// follower thought (`ours`): the store is the truth.
    pub fn on_diverged(&mut self) -> Recovery {
        self.phase = Phase::Snapshot;
        Recovery::FetchSnapshot
    }

    /// The master refused the subscription or the stream with `code`.
    pub fn on_refused(&mut self, code: &Code) -> Recovery {
        match code {
            Code::Epoch | Code::Cursor => {
                self.phase = Phase::Snapshot;
                Recovery::FetchSnapshot
            }
            _ => {
                self.phase = Phase::Idle;
                Recovery::Resubscribe(self.applied)
            }
        }
    }

    /// The stream ended or the connection broke: subscribe again later.
    pub fn on_disconnected(&mut self) {
        self.phase = Phase::Idle;
    }

    /// A snapshot of log `epoch` ending at `end` is installed: the
    /// master's log is the truth, whatever was applied before.
    pub fn on_snapshot(&mut self, epoch: u64, end: Location) {
        self.phase = Phase::Idle;
        self.applied = Cursor::new(epoch, end);
    }

    /// The store was reopened after a crash and ends at `end` (what it had
    /// made durable: perhaps less than was applied before).
    pub fn on_reopened(&mut self, epoch: u64, end: Location) {
        self.applied = Cursor::new(epoch, end);
        self.phase = Phase::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: u32) -> Location {
        Location::new(0, p)
    }

    #[test]
    fn applies_in_order_and_acknowledges() {
        let mut f = Follower::new(1, at(1));
        assert_eq!(f.subscribe(), Cursor::new(1, at(1)));
        assert_eq!(f.on_segment(1, at(1), at(40)), Segment::Apply);
        assert_eq!(f.on_applied(at(40), at(40)), Ok(Cursor::new(1, at(40))));
        assert_eq!(f.on_segment(1, at(40), at(90)), Segment::Apply);
        assert_eq!(f.on_applied(at(90), at(90)), Ok(Cursor::new(1, at(90))));
    }

    #[test]
    fn duplicates_gaps_and_overlaps() {
        let mut f = Follower::new(1, at(100));
        f.subscribe();
        assert_eq!(
            f.on_segment(1, at(1), at(100)),
            Segment::Duplicate(Cursor::new(1, at(100)))
        );
        assert_eq!(
            f.on_segment(1, at(120), at(150)),
            Segment::Resubscribe(Cursor::new(1, at(100)))
        );
        assert_eq!(f.phase(), Phase::Idle);
        // Nothing more is taken until the next subscription.
        assert_eq!(f.on_segment(1, at(100), at(150)), Segment::Ignore);
        f.subscribe();
        assert_eq!(
            f.on_segment(1, at(60), at(150)),
            Segment::Resubscribe(Cursor::new(1, at(100)))
        );
    }

    #[test]
    fn another_epoch_is_ignored_and_refusals_pick_the_way_back() {
        let mut f = Follower::new(1, at(100));
        f.subscribe();
        assert_eq!(f.on_segment(2, at(100), at(150)), Segment::Ignore);
        assert_eq!(f.on_refused(&Code::Epoch), Recovery::FetchSnapshot);
        assert_eq!(f.on_segment(1, at(100), at(150)), Segment::Ignore);
        f.on_snapshot(2, at(70));
        assert_eq!(f.applied(), Cursor::new(2, at(70)));
        f.subscribe();
        assert_eq!(
            f.on_refused(&Code::Lagging),
            Recovery::Resubscribe(Cursor::new(2, at(70)))
        );
        assert_eq!(f.on_refused(&Code::Cursor), Recovery::FetchSnapshot);
    }

    #[test]
    fn the_next_file_follows_the_applied_end() {
        let mut f = Follower::new(1, Location::new(0, 4000));
        f.subscribe();
        assert_eq!(
            f.on_segment(1, Location::new(1, 1), Location::new(1, 90)),
            Segment::Apply
        );
        assert_eq!(
            f.on_applied(Location::new(1, 90), Location::new(1, 90)),
            Ok(Cursor::new(1, Location::new(1, 90)))
        );
        // Two files on is a gap.
        assert_eq!(
            f.on_segment(1, Location::new(3, 1), Location::new(3, 50)),
            Segment::Resubscribe(Cursor::new(1, Location::new(1, 90)))
        );
    }

    #[test]
    fn a_misframed_apply_needs_a_snapshot() {
        let mut f = Follower::new(1, at(1));
        f.subscribe();
        assert_eq!(f.on_segment(1, at(1), at(40)), Segment::Apply);
        assert_eq!(f.on_applied(at(30), at(40)), Err(Recovery::FetchSnapshot));
        assert_eq!(f.phase(), Phase::Snapshot);
    }

    /// Over random deliveries of the segments of one log (duplicated,
    /// reordered, dropped), with resubscriptions when asked: what is applied
    /// only grows, is always a prefix of the log made of whole segments,
    /// and the worker reaches the end.
    #[test]
    fn any_delivery_order_applies_a_prefix_and_reaches_the_end() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            // Segment boundaries of one log.
            let mut bounds = vec![1u32];
            for _ in 0..(2 + next() % 12) {
                let last = *bounds.last().unwrap();
                bounds.push(last + 1 + (next() % 50) as u32);
            }
            let end = *bounds.last().unwrap();
            let mut f = Follower::new(1, at(1));
            let mut from = f.subscribe().at;
            let mut inflight: Vec<(u32, u32)> = Vec::new();
            for _ in 0..2000 {
                if f.applied().at == at(end) {
                    break;
                }
                // A lost segment with nothing else in flight: the stream
                // would time out and the worker subscribe again.
                if inflight.is_empty() && from == at(end) {
                    f.on_disconnected();
                    from = f.subscribe().at;
                }
                // The master sends the segments from the subscription on.
                if inflight.is_empty() || next() % 3 == 0 {
                    let i = bounds.iter().position(|&b| at(b) == from).unwrap();
                    if i + 1 < bounds.len() {
                        inflight.push((bounds[i], bounds[i + 1]));
                        from = at(bounds[i + 1]);
                    }
                }
                if inflight.is_empty() {
                    continue;
                }
                let k = (next() % inflight.len() as u64) as usize;
                let (s, n) = inflight[k];
                match next() % 10 {
                    0 => {
                        inflight.remove(k);
                        continue;
                    }
                    1 => {}
                    _ => {
                        inflight.remove(k);
                    }
                }
                let before = f.applied();
                match f.on_segment(1, at(s), at(n)) {
                    Segment::Apply => {
                        assert_eq!(at(s), before.at);
                        f.on_applied(at(n), at(n)).unwrap();
                    }
                    Segment::Duplicate(c) => assert_eq!(c, before),
                    Segment::Resubscribe(c) => {
                        assert_eq!(c, before);
                        inflight.clear();
                        from = f.subscribe().at;
                    }
                    Segment::Ignore => {}
                }
                assert!(f.applied() >= before);
                assert!(bounds.iter().any(|&b| at(b) == f.applied().at));
            }
            assert_eq!(f.applied().at, at(end));
        }
    }
}
