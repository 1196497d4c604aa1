//! Who becomes master, and what a node refuses once a newer term exists.
//!
//! Raft elects its leader by the freshness of the metadata log, which says
//! nothing about the data. So the Raft leader acts as controller: it asks
//! the candidates where their logs end ([`Position`]) and appoints the best
//! of them ([`choose`]); only a node of the in-sync set (or the old master)
//! may win, since only those hold everything that was acknowledged to
//! `ack=all` writes or answered by reads. See docs/FAILOVER-DESIGN.md §2.5, §3.

use std::cmp::Reverse;

use crate::cursor::Cursor;

use super::meta::{MetaState, NodeId, Term};

/// Where a candidate's log ends, as it answers the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The term whose master's log it last followed (or wrote as master).
    pub last_term: Term,
    /// Its end.
    pub end: Cursor,
}

/// The controller's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The controller itself is best: it appoints itself (the caller adds
    /// its Raft term to make the `MetaCmd::Appoint`).
    Appoint {
        /// The controller's id.
        master: NodeId,
        /// Its last term: the parent of the new term.
        parent: Term,
        /// Its end: the new term's start.
        start: Cursor,
    },
    /// Another node is best: hand Raft leadership to it; it will appoint
    /// itself in the next term.
    Transfer(NodeId),
    /// No eligible node answered: no master until one does.
    Wait,
}

/// Picks the next master from the answers. Eligible are the committed
/// in-sync set and the current master (and, before any appointment, the
/// controller itself: the cluster's first master). Best is the newest
/// lineage, then the longest log; ties go to the controller (no transfer
/// needed), then to the lowest id.
pub fn choose(me: NodeId, meta: &MetaState, answers: &[(NodeId, Position)]) -> Choice {
    let eligible = |id: NodeId| {
        meta.in_sync.contains(&id) || meta.master == Some(id) || (meta.master.is_none() && id == me)
    };
    let best = answers
        .iter()
        .filter(|(id, _)| eligible(*id))
        .max_by_key(|(id, p)| (p.last_term, p.end, *id == me, Reverse(*id)));
    match best {
        None => Choice::Wait,
        Some(&(id, p)) if id == me => Choice::Appoint {
            master: me,
            parent: p.last_term,
            start: p.end,
        },
        Some(&(id, _)) => Choice::Transfer(id),
    }
}

/// The highest term a node knows of (its Raft term, or a controller's
/// `Position` request): it refuses anything older.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    term: Term,
}

impl Fence {
    /// A fence at `term`.
    pub fn at(term: Term) -> Fence {
        Fence { term }
    }

    /// The fence term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Learned of `term`; never moves back. Returns whether it rose.
    pub fn raise(&mut self, term: Term) -> bool {
        let rose = term > self.term;
        self.term = self.term.max(term);
        rose
    }

    /// A worker subscribed in `subscribed` applies a segment of `segment`
    /// only if it is of that subscription and no newer term is known: once
    /// a controller has asked for its position in term T, a master of an
    /// older term can no longer extend its log.
    pub fn accepts_segment(&self, subscribed: Term, segment: Term) -> bool {
        segment == subscribed && segment >= self.term
    }

    /// A master of term `own` takes a write sent for term `sent` (0: any
    /// master, from a client that does not track terms) only while no newer
    /// term is known.
    pub fn accepts_write(&self, own: Term, sent: Term) -> bool {
        own >= self.term && (sent == 0 || sent == own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ourdb::Location;
    use std::collections::BTreeSet;

    fn pos(last_term: Term, end: u32) -> Position {
        Position {
            last_term,
            end: Cursor::new(1, Location::new(0, end)),
        }
    }

    fn meta(master: Option<NodeId>, in_sync: &[NodeId]) -> MetaState {
        MetaState {
            term: master.map_or(0, |_| 3),
            master,
            in_sync: BTreeSet::from_iter(in_sync.iter().copied()),
            history: vec![],
        }
    }

    #[test]
    fn newest_lineage_then_longest_log() {
        let m = meta(Some(1), &[2, 3]);
        // 3 has the longer log but of an older lineage: 2 wins.
        let answers = [(2, pos(3, 100)), (3, pos(2, 900))];
        assert_eq!(choose(9, &m, &answers), Choice::Transfer(2));
        let answers = [(2, pos(3, 100)), (3, pos(3, 120))];
        assert_eq!(choose(9, &m, &answers), Choice::Transfer(3));
    }

    #[test]
    fn never_outside_the_in_sync_set() {
        let m = meta(Some(1), &[2]);
        // 4 is ahead of everyone but not in S; the controller 9 is not either.
        let answers = [(4, pos(3, 500)), (9, pos(3, 400)), (2, pos(3, 100))];
        assert_eq!(choose(9, &m, &answers), Choice::Transfer(2));
        assert_eq!(
            choose(9, &m, &[(4, pos(3, 500)), (9, pos(3, 400))]),
            Choice::Wait
        );
        assert_eq!(choose(9, &m, &[]), Choice::Wait);
    }

    #[test]
    fn the_old_master_is_eligible_and_the_controller_wins_ties() {
        let m = meta(Some(1), &[2, 3]);
        // The old master is still there (a Raft leader change, not a crash):
        // it has the most and stays.
        assert_eq!(
            choose(2, &m, &[(1, pos(3, 200)), (2, pos(3, 150))]),
            Choice::Transfer(1)
        );
        // Equal positions: the controller keeps it (no transfer), else the lowest id.
        assert_eq!(
            choose(3, &m, &[(2, pos(3, 150)), (3, pos(3, 150))]),
            Choice::Appoint {
                master: 3,
                parent: 3,
                start: pos(3, 150).end
            }
        );
        assert_eq!(
            choose(9, &m, &[(3, pos(3, 150)), (2, pos(3, 150))]),
            Choice::Transfer(2)
        );
    }

    #[test]
    fn the_first_master_is_the_controller() {
        let m = meta(None, &[]);
        assert_eq!(
            choose(5, &m, &[(5, pos(0, 4096)), (6, pos(0, 9000))]),
            Choice::Appoint {
                master: 5,
                parent: 0,
                start: pos(0, 4096).end
            }
        );
    }

    #[test]
    fn fence_refuses_older_terms() {
        let mut f = Fence::default();
        assert!(f.accepts_segment(2, 2));
        assert!(f.raise(3));
        assert!(!f.raise(2));
        assert_eq!(f.term(), 3);
        // A term-2 master's segments and its writes stop once term 3 is known.
        assert!(!f.accepts_segment(2, 2));
        assert!(!f.accepts_write(2, 2));
        assert!(!f.accepts_write(2, 0));
        // The subscription must match the segment's term.
        assert!(f.accepts_segment(3, 3));
        assert!(!f.accepts_segment(4, 3));
        assert!(f.accepts_write(3, 0));
        assert!(f.accepts_write(3, 3));
        assert!(!f.accepts_write(3, 2));
    }
}
