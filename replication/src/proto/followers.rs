//! The master's view of its workers: what each has acknowledged, and which
//! are in the in-sync set that `ack=all` writes wait for. Pure decisions
//! (in the manner of etcd raft's `tracker/progress.go`): the caller feeds it
//! acknowledgements, timeouts and departures with the commit cursor of the
//! moment, and applies what comes back (log lines, wake-ups).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ourdb::Location;

/// A worker this close to the master's commit cursor (in bytes of log)
/// counts as caught up and joins the in-sync set: under a steady write load
/// the cursor moves on while an acknowledgement travels, so "at the cursor"
/// may never hold.
pub const JOIN_LAG_BYTES: u64 = 256 << 10;

/// What every in-sync worker has applied when none is in sync: `ack=all`
/// then waits for nobody.
pub const ALL: Location = Location::new(u16::MAX, u32::MAX);

/// One worker's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The end the worker last acknowledged.
    pub acked: Location,
    /// Whether `ack=all` writes wait for it.
    pub in_sync: bool,
}

/// A change of the in-sync set, for the caller to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Caught up to within `JOIN_LAG_BYTES`: now counted by `ack=all`.
    Joined {
        /// The worker.
        worker: SocketAddr,
        /// Its acknowledged end.
        acked: Location,
    },
    /// Fell more than the maximum lag behind.
    Lagged {
        /// The worker.
        worker: SocketAddr,
        /// Its acknowledged end.
        acked: Location,
    },
    /// Did not acknowledge an `ack=all` write in time.
    TimedOut {
        /// The worker.
        worker: SocketAddr,
        /// Its acknowledged end.
        acked: Location,
    },
}

/// The workers of one master (one log: locations of one epoch).
#[derive(Clone, Debug)]
pub struct Followers {
    workers: BTreeMap<SocketAddr, Progress>,
    /// A worker further behind than this leaves the in-sync set.
    max_lag_bytes: u64,
    /// The data file size, to measure lag across files.
    file_size: u64,
}

/// Bytes of log from `from` to `to` (files before `to`'s count as full).
pub fn lag_bytes(from: Location, to: Location, file_size: u64) -> u64 {
    if from >= to {
        return 0;
    }
    let files = (to.file_nr - from.file_nr) as u64;
    (files * file_size + to.position as u64).saturating_sub(from.position as u64)
}

impl Followers {
    /// No workers yet; a worker more than `max_lag_bytes` behind leaves the
    /// in-sync set (`file_size` converts locations into byte distances).
    pub fn new(max_lag_bytes: u64, file_size: u64) -> Followers {
        Followers {
            workers: BTreeMap::new(),
            max_lag_bytes,
            file_size,
        }
    }

    /// `worker` has applied everything before `acked`; `commit` is the
    /// master's commit cursor now. A new worker starts out of sync.
    pub fn on_ack(
        &mut self,
        worker: SocketAddr,
        acked: Location,
        commit: Location,
    ) -> Option<Transition> {
        let w = self.workers.entry(worker).or_insert(Progress {
            acked,
            in_sync: false,
        });
        w.acked = acked;
        let lag = lag_bytes(acked, commit, self.file_size);
        if !w.in_sync && lag <= JOIN_LAG_BYTES {
            w.in_sync = true;
            Some(Transition::Joined { worker, acked })
        } else if w.in_sync && lag > self.max_lag_bytes {
            w.in_sync = false;
            Some(Transition::Lagged { worker, acked })
        } else {
            None
        }
    }

    /// An `ack=all` wait for `target` timed out: every in-sync worker that
    /// has not reached it leaves the set (so later writes do not wait for
    /// it); the others stay.
    pub fn on_ack_timeout(&mut self, target: Location) -> Vec<Transition> {
        let mut out = Vec::new();
        for (&worker, w) in self.workers.iter_mut() {
            if w.in_sync && w.acked < target {
                w.in_sync = false;
                out.push(Transition::TimedOut {
                    worker,
                    acked: w.acked,
                });
            }
        }
        out
    }

    /// `worker`'s stream ended: it is no longer counted at all.
    pub fn remove(&mut self, worker: SocketAddr) {
        self.workers.remove(&worker);
    }

    /// The lowest location every in-sync worker has applied (`ALL` when none
    /// is in sync): an `ack=all` write is done once this passes its end.
    pub fn in_sync_applied(&self) -> Location {
        self.workers
            .values()
            .filter(|w| w.in_sync)
            .map(|w| w.acked)
            .min()
            .unwrap_or(ALL)
    }

    /// Every worker and its progress, by address.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, Progress)> + '_ {
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
        assert_eq!(
            f.in_sync_applied(),
            ALL,
            "nobody in sync: nobody waited for"
        );
        let near = at(0, 1_000_000 - JOIN_LAG_BYTES as u32);
        assert_eq!(
            f.on_ack(addr(1), near, commit),
            Some(Transition::Joined {
                worker: addr(1),
                acked: near
            })
        );
        assert_eq!(f.in_sync_applied(), near);
        // Joining again is no transition.
        assert_eq!(f.on_ack(addr(1), commit, commit), None);
    }

    #[test]
    fn a_worker_leaves_past_the_maximum_lag_and_can_rejoin() {
        let mut f = followers();
        f.on_ack(addr(1), at(0, 10), at(0, 10));
        // Behind by the maximum: still in sync.
        let commit = at(4, 10);
        assert_eq!(f.on_ack(addr(1), at(0, 10), commit), None);
        let commit = at(4, 11);
        assert_eq!(
            f.on_ack(addr(1), at(0, 10), commit),
            Some(Transition::Lagged {
                worker: addr(1),
                acked: at(0, 10)
            })
        );
        assert_eq!(f.in_sync_applied(), ALL);
        assert!(matches!(
            f.on_ack(addr(1), at(4, 11), commit),
            Some(Transition::Joined { .. })
        ));
    }

    #[test]
    fn a_timeout_drops_exactly_the_workers_behind_the_target() {
        let mut f = followers();
        let commit = at(0, 1000);
        f.on_ack(addr(1), at(0, 1000), commit);
        f.on_ack(addr(2), at(0, 900), commit);
        f.on_ack(addr(3), at(0, 950), commit);
        assert_eq!(f.in_sync_applied(), at(0, 900));
        let dropped = f.on_ack_timeout(at(0, 950));
        assert_eq!(
            dropped,
            vec![Transition::TimedOut {
                worker: addr(2),
                acked: at(0, 900)
            }]
        );
        // The one at the target stays, and so does the one past it.
        assert_eq!(f.in_sync_applied(), at(0, 950));
        assert!(f.on_ack_timeout(at(0, 950)).is_empty());
    }

    #[test]
    fn a_departed_worker_is_not_waited_for() {
        let mut f = followers();
        let commit = at(0, 500);
        f.on_ack(addr(1), at(0, 500), commit);
        f.on_ack(addr(2), at(0, 400), commit);
        assert_eq!(f.in_sync_applied(), at(0, 400));
        f.remove(addr(2));
        assert_eq!(f.in_sync_applied(), at(0, 500));
        assert_eq!(f.iter().count(), 1);
        f.remove(addr(1));
        assert_eq!(f.in_sync_applied(), ALL);
    }

    /// Model check over random event sequences: the in-sync set is always
    /// exactly the workers whose last transition was a join, and the
    /// `ack=all` low-water mark is the minimum of their acknowledgements.
    #[test]
    fn random_sequences_keep_the_set_and_the_low_water_mark_consistent() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut f = Followers::new(3 * FILE / 2, FILE);
            let mut model: BTreeMap<SocketAddr, (Location, bool)> = BTreeMap::new();
            let mut commit = at(0, 1);
            for _ in 0..200 {
                let w = addr((next() % 4) as u16);
                match next() % 10 {
                    0..=5 => {
                        // The commit cursor only grows; acks are at or behind it.
                        let step = (next() % (FILE / 2)) as u32;
                        let pos = commit.position as u64 + step as u64;
                        commit = at(commit.file_nr + (pos / FILE) as u16, (pos % FILE) as u32);
                        let back = next() % (2 * FILE);
                        let total = commit.file_nr as u64 * FILE + commit.position as u64;
                        let a = total.saturating_sub(back);
                        let acked = at((a / FILE) as u16, (a % FILE) as u32);
                        let before = model.get(&w).map(|m| m.1).unwrap_or(false);
                        let t = f.on_ack(w, acked, commit);
                        let lag = lag_bytes(acked, commit, FILE);
                        let now = if before {
                            lag <= 3 * FILE / 2
                        } else {
                            lag <= JOIN_LAG_BYTES
                        };
                        assert_eq!(t.is_some(), before != now, "{t:?}");
                        model.insert(w, (acked, now));
                    }
                    6..=7 => {
                        let target = commit;
                        let dropped = f.on_ack_timeout(target);
                        for (a, m) in model.iter_mut() {
                            let should = m.1 && m.0 < target;
                            let did = dropped.iter().any(
                                |t| matches!(t, Transition::TimedOut { worker, .. } if worker == a),
                            );
                            assert_eq!(should, did);
                            if should {
                                m.1 = false;
                            }
                        }
                    }
                    _ => {
                        f.remove(w);
                        model.remove(&w);
                    }
                }
                let low = model
                    .values()
                    .filter(|m| m.1)
                    .map(|m| m.0)
                    .min()
                    .unwrap_or(ALL);
                assert_eq!(f.in_sync_applied(), low);
                let set: Vec<_> = f
                    .iter()
                    .filter(|(_, p)| p.in_sync)
                    .map(|(a, _)| a)
                    .collect();
                let want: Vec<_> = model.iter().filter(|(_, m)| m.1).map(|(a, _)| *a).collect();
                assert_eq!(set, want);
            }
        }
    }
}
