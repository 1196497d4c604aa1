//! The master side of a subscription, and the rules of reads at a cursor.
//! Pure decisions: the caller reads the bytes and moves the frames.

use ourdb::Location;

use crate::cursor::Cursor;
use crate::error::Code;

/// The master's answer to a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Ship the log from this location on, then tail it.
    Ship(Location),
    /// Refuse: the worker needs a snapshot (`Code::Epoch`, `Code::Cursor`).
    Refuse(Code, String),
}

/// A worker subscribes from `theirs`; `ours` is the master's epoch and
/// `tail_same` whether the bytes the worker holds before its cursor are the
/// master's (a worker that wrote on its own can end at one of the master's
/// record boundaries and still differ; `false` also when the cursor is past
/// the master's end or no boundary of its log).
pub fn subscribe(ours: u64, theirs: Cursor, tail_same: bool) -> Subscription {
    if theirs.epoch != ours {
        return Subscription::Refuse(
            Code::Epoch,
            format!(
                "worker epoch {}, master epoch {ours}: a snapshot is needed",
                theirs.epoch
            ),
        );
    }
    if !tail_same {
        return Subscription::Refuse(
            Code::Cursor,
            format!("worker log differs from ours before {theirs}"),
        );
    }
    Subscription::Ship(theirs.at)
}

/// What a node does with a read at cursor `min`, given `reached`: a
/// worker's applied cursor, or a master's commit cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAt {
    /// The node holds everything up to `min`: read now.
    Now,
    /// Wait for the cursor to move (up to the read wait); then refuse.
    Wait,
}

/// Whether a node that has `reached` can answer a read that must see `min`.
pub fn read_at(reached: Cursor, min: Cursor) -> ReadAt {
    if reached >= min {
        ReadAt::Now
    } else {
        ReadAt::Wait
    }
}

/// A master reads from a store that may already hold records its syncer
/// has not made durable (group commit appends first, syncs after). A value
/// read there could be lost to a crash, so the answer waits until the
/// commit cursor has passed `end_after_read`, the store's end taken after
/// the read (everything the read could see lies before it).
pub fn master_may_answer(commit: Location, end_after_read: Location) -> bool {
    commit >= end_after_read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions() {
        let c = Cursor::new(2, Location::new(0, 50));
        assert_eq!(subscribe(2, c, true), Subscription::Ship(c.at));
        assert!(matches!(
            subscribe(3, c, true),
            Subscription::Refuse(Code::Epoch, _)
        ));
        // Another epoch wins over the tail: the snapshot is the same.
        assert!(matches!(
            subscribe(3, c, false),
            Subscription::Refuse(Code::Epoch, _)
        ));
        assert!(matches!(
            subscribe(2, c, false),
            Subscription::Refuse(Code::Cursor, _)
        ));
    }

    #[test]
    fn reads_wait_for_their_cursor_across_epochs() {
        let old = Cursor::new(1, Location::new(2, 9000));
        let new = Cursor::new(2, Location::new(0, 10));
        assert_eq!(read_at(new, old), ReadAt::Now);
        assert_eq!(read_at(old, new), ReadAt::Wait);
        assert_eq!(read_at(new, new), ReadAt::Now);
        assert!(master_may_answer(
            Location::new(0, 10),
            Location::new(0, 10)
        ));
        assert!(!master_may_answer(
            Location::new(0, 9),
            Location::new(0, 10)
        ));
    }
}
