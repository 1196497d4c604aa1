//! The cluster metadata that failover agrees on through Raft: the master's
//! term, who the master is, the in-sync set, and the chain of appointments
//! from which a returning node learns where its log left the master's.
//!
//! Every node's Raft state machine runs [`apply`] on each committed command,
//! so all nodes hold the same [`MetaState`]. The rules that make stale
//! proposals harmless live here: an appointment counts only in the Raft term
//! that committed it, and an in-sync change only in the term of the master
//! that proposed it. See docs/FAILOVER-DESIGN.md §2.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::cursor::Cursor;

/// A node's identity in the cluster (random, made at its first start).
pub type NodeId = u64;

/// A master's term: the Raft term in which it was appointed. Term 0 is the
/// root before any appointment (a log written before failover existed).
pub type Term = u64;

/// Appointments kept in [`MetaState::history`]. A node whose last term fell
/// out of it cannot be told its branch point and takes a snapshot instead.
pub const HISTORY_KEPT: usize = 1024;

/// One appointment: from `start` on, the log is `master`'s of this term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermStart {
    /// The term of the appointment.
    pub term: Term,
    /// The node appointed.
    pub master: NodeId,
    /// The term whose master's log the new master last followed (or wrote):
    /// below `start` its log is that term's.
    pub parent: Term,
    /// The new master's end when it was appointed.
    pub start: Cursor,
}

/// What the Raft group agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// The current master's term (0: none appointed yet).
    pub term: Term,
    /// The current master.
    pub master: Option<NodeId>,
    /// The committed in-sync set S, the master not included: the workers
    /// that hold everything acknowledged to `ack=all` writes and answered by
    /// reads, and so may become master.
    pub in_sync: BTreeSet<NodeId>,
    /// The appointments, oldest first (terms increasing), the last
    /// [`HISTORY_KEPT`] of them.
    pub history: Vec<TermStart>,
}

/// A metadata change, proposed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCmd {
    /// Make `master` the master of `term`. Proposed by the Raft leader of
    /// `term` (the controller), for itself or after a leadership transfer.
    Appoint {
        /// The node appointed.
        master: NodeId,
        /// Its term; must be the Raft term of the entry.
        term: Term,
        /// The term whose log it last followed.
        parent: Term,
        /// Its end at the appointment.
        start: Cursor,
    },
    /// The master of `term` changes its in-sync set.
    InSync {
        /// The proposing master's term.
        term: Term,
        /// Workers that caught up.
        join: Vec<NodeId>,
        /// Workers that fell behind or left.
        leave: Vec<NodeId>,
    },
}

/// What applying a command did; tells the proposer whether it took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The master changed.
    Appointed,
    /// The in-sync set changed (or already was as asked).
    InSyncChanged,
    /// Of an older (or not its own) term: ignored. `term` is the current one.
    Stale {
        /// The state's term after (unchanged by) the command.
        term: Term,
    },
}

/// Applies a committed command. `raft_term` is the Raft term of the log
/// entry that carries it (the term of the leader that proposed it).
pub fn apply(state: &mut MetaState, raft_term: Term, cmd: &MetaCmd) -> Applied {
    match *cmd {
        MetaCmd::Appoint {
            master,
            term,
            parent,
            start,
        } => {
            // Only the leader of `term` appoints for `term`: a leader deposed
            // before its entry committed cannot install a master later (its
            // entry, if a newer leader commits it, carries the old Raft term).
            if term != raft_term || term <= state.term {
                return Applied::Stale { term: state.term };
            }
            state.term = term;
            state.master = Some(master);
            // The old master is not in S (S never holds the master): its tail
            // may be unreplicated until it has resynced.
            state.in_sync.remove(&master);
            state.history.push(TermStart {
                term,
                master,
                parent,
                start,
            });
            if state.history.len() > HISTORY_KEPT {
                let extra = state.history.len() - HISTORY_KEPT;
                state.history.drain(..extra);
            }
            Applied::Appointed
        }
        MetaCmd::InSync {
            term,
            ref join,
            ref leave,
        } => {
            // A deposed master's late proposal must not change the new
            // master's set.
            if term != state.term {
                return Applied::Stale { term: state.term };
            }
            for id in join {
                if Some(*id) != state.master {
                    state.in_sync.insert(*id);
                }
            }
            for id in leave {
                state.in_sync.remove(id);
            }
            Applied::InSyncChanged
        }
    }
}

/// Where two terms' logs part, as far as the history tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Branch {
    /// The same term: one log, nothing to cut.
    Same,
    /// The logs agree below this cursor and may differ from it on.
    At(Cursor),
    /// A term is not in the history (pruned, or never appointed): only a
    /// snapshot can bring the node back.
    Unknown,
}

impl MetaState {
    /// The appointment of `term`, if still in the history.
    pub fn appointment(&self, term: Term) -> Option<&TermStart> {
        self.history
            .binary_search_by_key(&term, |t| t.term)
            .ok()
            .map(|i| &self.history[i])
    }

    /// Where the log of a node that last followed `from` leaves the log of
    /// the master of `to`: walk both appointment chains back to their common
    /// ancestor (always stepping the newer term to its parent, as parents are
    /// older); each appointment on either path copied its parent's log only
    /// below its start, so the two logs agree below the smallest start on the
    /// two paths (the ancestor's own start excluded).
    pub fn branch(&self, from: Term, to: Term) -> Branch {
        let (mut a, mut b) = (from, to);
        let mut cut: Option<Cursor> = None;
        while a != b {
            let newer = a.max(b);
            // Term 0 is the root and is always the older one here.
            let Some(t) = self.appointment(newer) else {
                return Branch::Unknown;
            };
            if t.parent >= newer {
                return Branch::Unknown;
            }
            cut = Some(cut.map_or(t.start, |c| c.min(t.start)));
            if a == newer {
                a = t.parent;
            } else {
                b = t.parent;
            }
        }
        cut.map_or(Branch::Same, Branch::At)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ourdb::Location;
    use proptest::prelude::*;

    fn at(n: u32) -> Cursor {
        Cursor::new(1, Location::new(0, n))
    }

    fn appoint(master: NodeId, term: Term, parent: Term, start: u32) -> MetaCmd {
        MetaCmd::Appoint {
            master,
            term,
            parent,
            start: at(start),
        }
    }

    #[test]
    fn appointment_needs_its_own_raft_term_and_a_newer_one() {
        let mut s = MetaState::default();
        assert_eq!(apply(&mut s, 1, &appoint(7, 1, 0, 0)), Applied::Appointed);
        assert_eq!(s.master, Some(7));
        // Proposed by the leader of term 2 but committed under term 3's leader:
        // the entry keeps its Raft term 2, and term 2's appointment stands.
        assert_eq!(
            apply(&mut s, 2, &appoint(8, 3, 1, 10)),
            Applied::Stale { term: 1 }
        );
        // Older or equal terms never replace the master.
        assert_eq!(
            apply(&mut s, 1, &appoint(8, 1, 0, 10)),
            Applied::Stale { term: 1 }
        );
        assert_eq!(s.master, Some(7));
        assert_eq!(apply(&mut s, 4, &appoint(8, 4, 1, 10)), Applied::Appointed);
        assert_eq!((s.term, s.master), (4, Some(8)));
        assert_eq!(s.history.len(), 2);
    }

    #[test]
    fn in_sync_changes_only_in_the_proposers_term() {
        let mut s = MetaState::default();
        apply(&mut s, 1, &appoint(1, 1, 0, 0));
        let join = |term, ids: &[NodeId]| MetaCmd::InSync {
            term,
            join: ids.to_vec(),
            leave: vec![],
        };
        assert_eq!(
            apply(&mut s, 1, &join(1, &[2, 3, 1])),
            Applied::InSyncChanged
        );
        // The master itself never enters S.
        assert_eq!(s.in_sync, BTreeSet::from([2, 3]));
        apply(&mut s, 5, &appoint(2, 5, 1, 40));
        // The new master leaves S; the old one was never in it.
        assert_eq!(s.in_sync, BTreeSet::from([3]));
        // The deposed master's late removal of 3 is ignored...
        let leave3 = MetaCmd::InSync {
            term: 1,
            join: vec![],
            leave: vec![3],
        };
        assert_eq!(apply(&mut s, 5, &leave3), Applied::Stale { term: 5 });
        assert_eq!(s.in_sync, BTreeSet::from([3]));
        // ...and so is its late join of itself.
        assert_eq!(apply(&mut s, 5, &join(1, &[1])), Applied::Stale { term: 5 });
        assert!(!s.in_sync.contains(&1));
    }

    #[test]
    fn history_is_bounded_and_pruned_terms_are_unknown() {
        let mut s = MetaState::default();
        for t in 1..=(HISTORY_KEPT as u64 + 10) {
            apply(&mut s, t, &appoint(t % 3, t, t - 1, t as u32));
        }
        assert_eq!(s.history.len(), HISTORY_KEPT);
        assert_eq!(s.history[0].term, 11);
        assert_eq!(s.branch(5, s.term), Branch::Unknown);
        // Within the kept history: 1030 and 1034 on one line; 1031 started at 1031.
        assert_eq!(s.branch(1030, 1034), Branch::At(at(1031)));
    }

    #[test]
    fn a_deposed_master_is_cut_at_its_successors_start() {
        let mut s = MetaState::default();
        apply(&mut s, 1, &appoint(1, 1, 0, 0)); // A writes 0..150
        apply(&mut s, 2, &appoint(2, 2, 1, 100)); // B had 100 of A's
        assert_eq!(s.branch(1, 2), Branch::At(at(100)));
        assert_eq!(s.branch(2, 1), Branch::At(at(100)));
        // C followed A to 120 (A still writing after B's appointment).
        apply(&mut s, 3, &appoint(3, 3, 1, 120));
        // B's term-2 records start at 100, C's copy of A at 120 goes past it.
        assert_eq!(s.branch(2, 3), Branch::At(at(100)));
        assert_eq!(s.branch(1, 3), Branch::At(at(120)));
        assert_eq!(s.branch(0, 3), Branch::At(at(0)));
        assert_eq!(s.branch(3, 3), Branch::Same);
        assert_eq!(s.branch(9, 3), Branch::Unknown);
    }

    /// A step of a random history: appoint a node that followed `parent`'s
    /// log to some length, or append to some term's log (a deposed master
    /// may write on until it is fenced).
    #[derive(Clone, Debug)]
    enum Step {
        Appoint { parent: usize, keep: usize },
        Append { term: usize, n: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<usize>(), any::<usize>())
                .prop_map(|(parent, keep)| Step::Appoint { parent, keep }),
            (any::<usize>(), 1usize..20).prop_map(|(term, n)| Step::Append { term, n }),
        ]
    }

    proptest! {
        /// Over logs of unique entries, the branch point the history gives
        /// is exactly where two terms' logs stop agreeing.
        #[test]
        fn branch_is_the_longest_common_prefix(steps in prop::collection::vec(step(), 1..60),
                                               pairs in prop::collection::vec((any::<usize>(), any::<usize>()), 1..20)) {
            let mut s = MetaState::default();
            // logs[i] is term i's log; term 0 is the root, the log before failover.
            let mut logs: Vec<Vec<u64>> = vec![Vec::new()];
            let mut next = 0u64;
            let mut fresh = |n: usize| (0..n).map(|_| { next += 1; next }).collect::<Vec<_>>();
            for st in steps {
                match st {
                    Step::Append { term, n } => {
                        let t = term % logs.len();
                        let add = fresh(n);
                        logs[t].extend(add);
                    }
                    Step::Appoint { parent, keep } => {
                        let p = parent % logs.len();
                        let k = keep % (logs[p].len() + 1);
                        let term = logs.len() as Term;
                        let applied = apply(&mut s, term, &appoint(term, term, p as Term, k as u32));
                        prop_assert_eq!(applied, Applied::Appointed);
                        logs.push(logs[p][..k].to_vec());
                    }
                }
            }
            for (x, y) in pairs {
                let (f, t) = (x % logs.len(), y % logs.len());
                let (lf, lt) = (&logs[f], &logs[t]);
                let lcp = lf.iter().zip(lt).take_while(|(a, b)| a == b).count();
                let bound = lf.len().min(lt.len());
                match s.branch(f as Term, t as Term) {
                    Branch::Same => prop_assert_eq!(lcp, bound),
                    Branch::At(c) => prop_assert_eq!(lcp, (c.at.position as usize).min(bound)),
                    Branch::Unknown => prop_assert!(false, "{} -> {} unknown", f, t),
                }
            }
        }
    }
}
