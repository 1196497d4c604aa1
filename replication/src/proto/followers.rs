//! The master's view of its workers: what each has acknowledged, the wait
//! set W that `ack=all` writes wait for, the in-sync set S, and the
//! high-water mark. Pure decisions (in the manner of etcd raft's
//! `tracker/progress.go`): the caller feeds it acknowledgements, timeouts and
//! departures with the commit cursor of the moment, proposes the in-sync
//! changes that come back to the metadata group, and reports each commit.
//!
//! The rule that makes failover safe (docs/FAILOVER-DESIGN.md §2.3-2.4): a
//! worker counts in W from the moment it joins (always safe: waiting for one
//! more never loses a write), but leaves W only once its removal from S is
//! committed. So every member of S holds everything below the high-water
//! mark, the most any read answered or any `ack=all` write acknowledged.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;

use ourdb::Location;

/// A worker this close to the master's commit cursor (in bytes of log)
/// counts as caught up and joins the in-sync set: under a steady write load
/// the cursor moves on while an acknowledgement travels, so "at the cursor"
/// may never hold.
pub const JOIN_LAG_BYTES: u64 = 256 << 10;

/// What every waited-for worker has applied when none is waited for:
/// `ack=all` then waits for nobody.
pub const ALL: Location = Location::new(u16::MAX, u32::MAX);

/// Where a worker stands towards the in-sync set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not waited for, not in S.
    Out,
    /// Waited for; its join to S is proposed, not yet committed.
    Joining,
    /// In S (committed) and waited for.
    In,
    /// Still in S and waited for; its removal is proposed, not yet committed.
    Leaving,
}

/// One worker's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The end the worker last acknowledged.
    pub acked: Location,
    /// Its place towards the in-sync set.
    pub state: State,
    /// Whether its shipping stream is up.
    pub connected: bool,
}

impl Progress {
    /// In the committed in-sync set S (may become master).
    pub fn in_sync(&self) -> bool {
        matches!(self.state, State::In | State::Leaving)
    }

    /// In the wait set W (`ack=all` writes and the high-water mark wait for it).
    pub fn waited_for(&self) -> bool {
        self.state != State::Out
    }
}

/// A change to propose to the metadata group (and to log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition<K = SocketAddr> {
    /// Caught up to within `JOIN_LAG_BYTES`, at or past the high-water mark:
    /// waited for now, in S once committed.
    Joined {
        /// The worker.
        worker: K,
        /// Its acknowledged end.
        acked: Location,
    },
    /// Lacked a commit for longer than the maximum lag time (or fell more
    /// than the maximum lag in bytes behind, where one is set).
    Lagged {
        /// The worker.
        worker: K,
        /// Its acknowledged end.
        acked: Location,
    },
    /// Did not acknowledge an `ack=all` write in time.
    TimedOut {
        /// The worker.
        worker: K,
        /// Its acknowledged end.
        acked: Location,
    },
    /// Its stream ended while it was waited for.
    Departed {
        /// The worker.
        worker: K,
    },
}

impl<K: Copy> Transition<K> {
    /// The worker it is about.
    pub fn worker(&self) -> K {
        match *self {
            Transition::Joined { worker, .. }
            | Transition::Lagged { worker, .. }
            | Transition::TimedOut { worker, .. }
            | Transition::Departed { worker } => worker,
        }
    }

    /// Whether it proposes a join (else a removal).
    pub fn joins(&self) -> bool {
        matches!(self, Transition::Joined { .. })
    }
}

/// The workers of one master (one log: locations of one epoch), keyed by
/// `K` (their address today, their node id in a failover cluster).
#[derive(Clone, Debug)]
pub struct Followers<K = SocketAddr> {
    workers: BTreeMap<K, Progress>,
    /// A worker further behind than this leaves the in-sync set; 0: no
    /// limit in bytes (only in time, `on_lag`).
    max_lag_bytes: u64,
    /// The data file size, to measure lag across files.
    file_size: u64,
    /// The high-water mark: never moves back.
    hw: Location,
    /// Where this master's term began: a worker joins S only past it.
    start: Location,
}

/// Bytes of log from `from` to `to` (files before `to`'s count as full).
pub fn lag_bytes(from: Location, to: Location, file_size: u64) -> u64 {
    if from >= to {
        return 0;
    }
    let files = (to.file_nr - from.file_nr) as u64;
    (files * file_size + to.position as u64).saturating_sub(from.position as u64)
}

impl<K: Ord + Copy + Debug> Followers<K> {
    /// No workers yet; a worker more than `max_lag_bytes` behind leaves the
    /// in-sync set, unless that is 0 (`file_size` converts locations into
    /// byte distances).
    pub fn new(max_lag_bytes: u64, file_size: u64) -> Followers<K> {
        Followers {
            workers: BTreeMap::new(),
            max_lag_bytes,
            file_size,
            hw: Location::NONE,
            start: Location::NONE,
        }
    }

    /// The followers of a master appointed with its log ending at `start`.
    /// A worker joins S only once it holds that much: writes acknowledged
    /// in earlier terms lie below `start` (the new master held them), while
    /// this master's own high-water mark starts from nothing and so does
    /// not cover them.
    pub fn starting_at(mut self, start: Location) -> Followers<K> {
        self.start = start;
        self
    }

    /// A new master takes over the committed in-sync set: each member is
    /// waited for from the start, its progress unknown (nothing acked) until
    /// it acknowledges, or until its removal commits. Without this a new
    /// master would acknowledge `ack=all` writes that a member of S, which
    /// may be the next master, does not hold.
    pub fn inherit(&mut self, worker: K) {
        self.workers.entry(worker).or_insert(Progress {
            acked: Location::NONE,
            state: State::In,
            connected: false,
        });
    }

    /// `worker` has applied everything before `acked`; `commit` is the
    /// master's commit cursor now. A new worker starts out.
    pub fn on_ack(
        &mut self,
        worker: K,
        acked: Location,
        commit: Location,
    ) -> Option<Transition<K>> {
        let floor = self.hw.max(self.start);
        let w = self.workers.entry(worker).or_insert(Progress {
            acked,
            state: State::Out,
            connected: true,
        });
        w.acked = acked;
        w.connected = true;
        let lag = lag_bytes(acked, commit, self.file_size);
        match w.state {
            // At or past the high-water mark, so that joining W cannot move
            // it back, and past the term's start.
            State::Out if lag <= JOIN_LAG_BYTES && acked >= floor => {
                w.state = State::Joining;
                Some(Transition::Joined { worker, acked })
            }
            State::Joining | State::In if self.max_lag_bytes > 0 && lag > self.max_lag_bytes => {
                w.state = State::Leaving;
                Some(Transition::Lagged { worker, acked })
            }
            _ => None,
        }
    }

    /// `worker`, having acknowledged `acked`, has lacked a commit for
    /// `lagging_for`: past `max` it is proposed for removal, whatever the
    /// writes' ack levels (a slow member holds back the high-water mark, so
    /// every read, as an `ack=all` write holds its client). Time, not bytes:
    /// a burst of large writes puts every worker many bytes behind for a
    /// moment, while it keeps up. Stale (`acked` moved on since): nothing.
    pub fn on_lag(
        &mut self,
        worker: K,
        acked: Location,
        lagging_for: std::time::Duration,
        max: std::time::Duration,
    ) -> Option<Transition<K>> {
        let w = self.workers.get_mut(&worker)?;
        if matches!(w.state, State::Joining | State::In) && w.acked == acked && lagging_for > max {
            w.state = State::Leaving;
            return Some(Transition::Lagged { worker, acked });
        }
        None
    }

    /// What `worker` last acknowledged, if it is known.
    pub fn acked(&self, worker: K) -> Option<Location> {
        self.workers.get(&worker).map(|w| w.acked)
    }

    /// An `ack=all` wait for `target` timed out: every waited-for worker
    /// that has not reached it is proposed for removal (the write is
    /// acknowledged once that commits); the others stay.
    pub fn on_ack_timeout(&mut self, target: Location) -> Vec<Transition<K>> {
        let mut out = Vec::new();
        for (&worker, w) in self.workers.iter_mut() {
            if matches!(w.state, State::Joining | State::In) && w.acked < target {
                w.state = State::Leaving;
                out.push(Transition::TimedOut {
                    worker,
                    acked: w.acked,
                });
            }
        }
        out
    }

    /// `worker`'s stream ended. Out of W it is forgotten; in W it stays
    /// there until its removal, proposed here, commits.
    pub fn remove(&mut self, worker: K) -> Option<Transition<K>> {
        let w = self.workers.get_mut(&worker)?;
        w.connected = false;
        match w.state {
            State::Out => {
                self.workers.remove(&worker);
                None
            }
            State::Leaving => None,
            State::Joining | State::In => {
                w.state = State::Leaving;
                Some(Transition::Departed { worker })
            }
        }
    }

    /// The metadata group committed `worker`'s join (`joined`) or removal.
    /// Changes commit in the order they were proposed, so a stale one (a join
    /// followed by a removal still in flight) changes nothing.
    pub fn on_committed(&mut self, worker: K, joined: bool) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        match (w.state, joined) {
            (State::Joining, true) => w.state = State::In,
            (State::Leaving, false) => {
                w.state = State::Out;
                if !w.connected {
                    self.workers.remove(&worker);
                }
            }
            _ => {}
        }
    }

    /// The lowest location every waited-for worker has applied (`ALL` when
    /// none is waited for): an `ack=all` write is done once this passes its
    /// end (its end is below the commit cursor by then).
    pub fn wait_set_applied(&self) -> Location {
        self.workers
            .values()
            .filter(|w| w.waited_for())
            .map(|w| w.acked)
            .min()
            .unwrap_or(ALL)
    }

    /// Advances and returns the high-water mark: the most that every member
    /// of S is sure to hold, so the most a read may answer from.
    pub fn high_water(&mut self, commit: Location) -> Location {
        self.hw = self.hw.max(commit.min(self.wait_set_applied()));
        self.hw
    }

    /// Every worker and its progress.
    pub fn iter(&self) -> impl Iterator<Item = (K, Progress)> + '_ {
        self.workers.iter().map(|(a, p)| (*a, *p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: u64 = 1 << 20;

    fn at(file: u16, pos: u32) -> Location {
        Location::new(file, pos)
    }

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    fn followers() -> Followers {
        Followers::new(4 << 20, FILE)
    }

    /// Commits every transition at once (a master without a metadata group).
    fn commit_all(f: &mut Followers, ts: impl IntoIterator<Item = Transition>) {
        for t in ts {
            f.on_committed(t.worker(), t.joins());
        }
    }

    #[test]
    fn lag_counts_whole_files_between() {
        assert_eq!(lag_bytes(at(0, 100), at(0, 50), FILE), 0);
        assert_eq!(lag_bytes(at(0, 100), at(0, 150), FILE), 50);
        assert_eq!(lag_bytes(at(0, 100), at(2, 10), FILE), 2 * FILE + 10 - 100);
    }

    #[test]
    fn a_worker_joins_only_when_close_to_the_commit_cursor() {
        let mut f = followers();
        let commit = at(0, 1_000_000);
        let far = at(0, 1_000_000 - JOIN_LAG_BYTES as u32 - 1);
        assert_eq!(f.on_ack(addr(1), far, commit), None);
        assert_eq!(f.wait_set_applied(), ALL, "nobody waited for");
        assert_eq!(f.high_water(commit), commit);
        // Out of W, it does not hold the mark back; once the mark has passed
        // it, it may not join even when close to the commit cursor.
        let near = at(0, 1_000_000 - JOIN_LAG_BYTES as u32);
        assert_eq!(f.on_ack(addr(1), near, commit), None);
        assert_eq!(
            f.on_ack(addr(1), commit, commit),
            Some(Transition::Joined {
                worker: addr(1),
                acked: commit
            })
        );
        // Waited for at once, in S only once committed.
        let p = f.iter().next().unwrap().1;
        assert!(p.waited_for() && !p.in_sync());
        f.on_committed(addr(1), true);
        assert!(f.iter().next().unwrap().1.in_sync());
        // Joining again is no transition.
        assert_eq!(f.on_ack(addr(1), commit, commit), None);
    }

    #[test]
    fn a_worker_joins_close_to_the_cursor_when_the_mark_allows() {
        let mut f = followers();
        let commit = at(0, 1_000_000);
        let near = at(0, 1_000_000 - JOIN_LAG_BYTES as u32);
        // The mark has not moved yet (nothing computed it): the worker joins.
        assert!(matches!(
            f.on_ack(addr(1), near, commit),
            Some(Transition::Joined { .. })
        ));
        assert_eq!(f.wait_set_applied(), near);
        assert_eq!(f.high_water(commit), near);
    }

    #[test]
    fn a_worker_leaves_past_the_maximum_lag_and_can_rejoin() {
        let mut f = followers();
        let t = f.on_ack(addr(1), at(0, 10), at(0, 10));
        commit_all(&mut f, t);
        // Behind by the maximum: still in sync.
        let commit = at(4, 10);
        assert_eq!(f.on_ack(addr(1), at(0, 10), commit), None);
        let commit = at(4, 11);
        let t = f.on_ack(addr(1), at(0, 10), commit);
        assert_eq!(
            t,
            Some(Transition::Lagged {
                worker: addr(1),
                acked: at(0, 10)
            })
        );
        // Until the removal commits it is still waited for and in S.
        assert_eq!(f.wait_set_applied(), at(0, 10));
        assert!(f.iter().next().unwrap().1.in_sync());
        commit_all(&mut f, t);
        assert_eq!(f.wait_set_applied(), ALL);
        assert!(matches!(
            f.on_ack(addr(1), at(4, 11), commit),
            Some(Transition::Joined { .. })
        ));
    }

    #[test]
    fn without_a_byte_limit_only_time_drops_a_worker() {
        use std::time::Duration;
        let mut f = Followers::new(0, FILE);
        let t = f.on_ack(addr(1), at(0, 10), at(0, 10));
        commit_all(&mut f, t);
        // A burst: the commit cursor 300 files ahead, the worker keeping up.
        assert_eq!(f.on_ack(addr(1), at(0, 500), at(300, 0)), None);
        let max = Duration::from_millis(2000);
        assert_eq!(
            f.on_lag(addr(1), at(0, 500), Duration::from_millis(1999), max),
            None
        );
        // A stale look (the worker acknowledged more since) changes nothing.
        assert_eq!(f.on_ack(addr(1), at(1, 0), at(300, 0)), None);
        assert_eq!(
            f.on_lag(addr(1), at(0, 500), Duration::from_secs(9), max),
            None
        );
        // Lacking a commit for longer than the maximum: proposed to leave,
        // still waited for until that commits.
        let t = f.on_lag(addr(1), at(1, 0), Duration::from_millis(2001), max);
        assert_eq!(
            t,
            Some(Transition::Lagged {
                worker: addr(1),
                acked: at(1, 0)
            })
        );
        assert_eq!(f.wait_set_applied(), at(1, 0));
        assert_eq!(
            f.on_lag(addr(1), at(1, 0), Duration::from_secs(9), max),
            None
        );
        commit_all(&mut f, t);
        assert_eq!(f.wait_set_applied(), ALL);
        assert_eq!(f.acked(addr(1)), Some(at(1, 0)));
        // Unknown workers and workers out of W: nothing.
        assert_eq!(
            f.on_lag(addr(1), at(1, 0), Duration::from_secs(9), max),
            None
        );
        assert_eq!(
            f.on_lag(addr(2), at(1, 0), Duration::from_secs(9), max),
            None
        );
    }

    #[test]
    fn a_timeout_drops_exactly_the_workers_behind_the_target() {
        let mut f = followers();
        let commit = at(0, 1000);
        for (w, a) in [(1, 1000), (2, 900), (3, 950)] {
            let t = f.on_ack(addr(w), at(0, a), commit);
            commit_all(&mut f, t);
        }
        assert_eq!(f.wait_set_applied(), at(0, 900));
        let dropped = f.on_ack_timeout(at(0, 950));
        assert_eq!(
            dropped,
            vec![Transition::TimedOut {
                worker: addr(2),
                acked: at(0, 900)
            }]
        );
        // Held back until the removal commits.
        assert_eq!(f.wait_set_applied(), at(0, 900));
        commit_all(&mut f, dropped);
        // The one at the target stays, and so does the one past it.
        assert_eq!(f.wait_set_applied(), at(0, 950));
        assert!(f.on_ack_timeout(at(0, 950)).is_empty());
    }

    #[test]
    fn a_departed_worker_is_waited_for_until_its_removal_commits() {
        let mut f = followers();
        let commit = at(0, 500);
        for (w, a) in [(1, 500), (2, 400)] {
            let t = f.on_ack(addr(w), at(0, a), commit);
            commit_all(&mut f, t);
        }
        assert_eq!(f.wait_set_applied(), at(0, 400));
        let t = f.remove(addr(2));
        assert_eq!(t, Some(Transition::Departed { worker: addr(2) }));
        assert_eq!(f.wait_set_applied(), at(0, 400));
        commit_all(&mut f, t);
        assert_eq!(f.wait_set_applied(), at(0, 500));
        assert_eq!(
            f.iter().count(),
            1,
            "a departed worker is forgotten once out"
        );
        let t = f.remove(addr(1));
        commit_all(&mut f, t);
        assert_eq!(f.wait_set_applied(), ALL);
        assert_eq!(f.iter().count(), 0);
        // A worker out of W is forgotten at once.
        f.on_ack(addr(3), at(0, 1), at(9, 0));
        assert_eq!(f.remove(addr(3)), None);
        assert_eq!(f.iter().count(), 0);
    }

    #[test]
    fn a_new_master_waits_for_the_inherited_set_and_joins_start_past_its_start() {
        let start = at(0, 1000);
        let mut f = followers().starting_at(start);
        f.inherit(addr(1));
        // Nothing acked yet: nothing above the start of the log is covered.
        assert_eq!(f.wait_set_applied(), Location::NONE);
        assert_eq!(f.high_water(at(0, 1200)), Location::NONE);
        assert!(f.iter().next().unwrap().1.in_sync());
        f.on_ack(addr(1), at(0, 1100), at(0, 1200));
        assert_eq!(f.high_water(at(0, 1200)), at(0, 1100));
        // Another worker close to the cursor but short of the term's start
        // may not join; past it, it may.
        let mut g = followers().starting_at(start);
        assert_eq!(g.on_ack(addr(2), at(0, 999), at(0, 1000)), None);
        assert!(matches!(
            g.on_ack(addr(2), start, at(0, 1000)),
            Some(Transition::Joined { .. })
        ));
        // An inherited member that never comes back leaves by a committed removal.
        let t = f.on_ack_timeout(at(0, 1200));
        assert_eq!(
            t,
            vec![Transition::TimedOut {
                worker: addr(1),
                acked: at(0, 1100)
            }]
        );
    }

    #[test]
    fn a_stale_commit_changes_nothing() {
        let mut f = followers();
        let c = at(0, 100);
        let join = f.on_ack(addr(1), c, c).unwrap();
        let leave = f.remove(addr(1)).unwrap();
        // The join commits after the removal was proposed: still leaving.
        f.on_committed(addr(1), join.joins());
        assert_eq!(f.iter().next().unwrap().1.state, State::Leaving);
        f.on_committed(addr(1), leave.joins());
        assert_eq!(f.iter().count(), 0);
    }

    /// Model check over random event sequences, with proposals committed
    /// late and in order: S is always inside W, the high-water mark never
    /// moves back and never passes what a member of W holds, a join happens
    /// only at or past the mark, a worker leaves W only when its removal
    /// commits, and `ack=all` for a target is done exactly when every
    /// waited-for worker has applied it.
    #[test]
    fn random_sequences_keep_the_sets_and_the_high_water_mark_consistent() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut f = Followers::new(3 * FILE / 2, FILE);
            let mut pending: std::collections::VecDeque<Transition> = Default::default();
            let mut commit = at(0, 1);
            let mut hw = Location::NONE;
            // A worker's end never moves back within one log.
            let mut ends: BTreeMap<SocketAddr, Location> = BTreeMap::new();
            for _ in 0..300 {
                let w = addr((next() % 4) as u16);
                let before: BTreeMap<_, _> = f.iter().collect();
                let mut proposed = Vec::new();
                match next() % 12 {
                    0..=5 => {
                        // The commit cursor only grows; acks are at or behind it.
                        let step = next() % (FILE / 2);
                        let pos = commit.position as u64 + step;
                        commit = at(commit.file_nr + (pos / FILE) as u16, (pos % FILE) as u32);
                        let back = next() % (2 * FILE);
                        let total = commit.file_nr as u64 * FILE + commit.position as u64;
                        let a = total.saturating_sub(back);
                        let acked = at((a / FILE) as u16, (a % FILE) as u32);
                        let acked = *ends
                            .entry(w)
                            .and_modify(|e| *e = (*e).max(acked))
                            .or_insert(acked);
                        let t = f.on_ack(w, acked, commit);
                        if let Some(Transition::Joined { acked, .. }) = t {
                            assert!(acked >= hw, "joined below the mark");
                        }
                        proposed.extend(t);
                    }
                    6 => {
                        let target = commit;
                        let low = f.wait_set_applied();
                        let dropped = f.on_ack_timeout(target);
                        assert_eq!(
                            dropped.is_empty(),
                            low >= target
                                || before.values().all(|p| p.state == State::Out
                                    || p.state == State::Leaving
                                    || p.acked >= target)
                        );
                        proposed.extend(dropped);
                    }
                    7 => proposed.extend(f.remove(w)),
                    8 => {
                        // A lag check, fresh or stale, over or under the limit.
                        let limit = std::time::Duration::from_millis(100);
                        let lag = std::time::Duration::from_millis(next() % 200);
                        let acked = f.acked(w).unwrap_or(Location::NONE);
                        let acked = if next() % 4 == 0 { at(0, 0) } else { acked };
                        let t = f.on_lag(w, acked, lag, limit);
                        let p = before.get(&w);
                        assert_eq!(
                            t.is_some(),
                            p.is_some_and(|p| matches!(p.state, State::Joining | State::In)
                                && p.acked == acked)
                                && lag > limit
                        );
                        proposed.extend(t);
                    }
                    _ => {
                        // Commit the oldest proposal.
                        if let Some(t) = pending.pop_front() {
                            let was = f.iter().find(|(a, _)| *a == t.worker()).map(|p| p.1);
                            f.on_committed(t.worker(), t.joins());
                            let now = f.iter().find(|(a, _)| *a == t.worker()).map(|p| p.1);
                            if let (Some(was), false) = (was, t.joins()) {
                                if was.state == State::Leaving {
                                    assert!(now.is_none_or(|p| p.state == State::Out));
                                }
                            }
                        }
                    }
                }
                pending.extend(proposed);
                // Nobody leaves W except by a committed removal.
                for (a, p) in &before {
                    let now = f.iter().find(|(b, _)| b == a).map(|x| x.1);
                    if p.waited_for() && !now.is_some_and(|n| n.waited_for()) {
                        assert!(p.state == State::Leaving, "{a} left W from {:?}", p.state);
                    }
                }
                for (_, p) in f.iter() {
                    assert!(!p.in_sync() || p.waited_for(), "S inside W");
                }
                let new_hw = f.high_water(commit);
                assert!(new_hw >= hw, "the mark moved back");
                assert!(new_hw <= commit.max(hw));
                for (_, p) in f.iter().filter(|(_, p)| p.waited_for()) {
                    assert!(p.acked >= new_hw, "a member of W below the mark");
                }
                hw = new_hw;
                let low = f
                    .iter()
                    .filter(|(_, p)| p.waited_for())
                    .map(|(_, p)| p.acked)
                    .min()
                    .unwrap_or(ALL);
                assert_eq!(f.wait_set_applied(), low);
            }
        }
    }
}
