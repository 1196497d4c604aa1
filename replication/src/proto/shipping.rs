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

/// `read_at` for a worker, which may hold only the start of its epoch's
/// log: a snapshot ends at its master's high-water mark, which for a master
/// just appointed is nothing, and the rest of the log follows as segments.
/// A cursor of an older epoch lies within the compacted log that opens the
/// worker's epoch, so it is reached only once the worker holds as much of
/// that log as its master had when the worker began following (`floor`:
/// the master's end in the first segment it sent; `None` before that).
pub fn worker_read_at(reached: Cursor, floor: Option<Cursor>, min: Cursor) -> ReadAt {
    if min.epoch < reached.epoch {
        match floor {
            Some(f) if f.epoch == reached.epoch && reached >= f => ReadAt::Now,
            _ => ReadAt::Wait,
        }
    } else {
        read_at(reached, min)
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
    fn a_worker_reaches_an_older_epoch_only_past_its_floor() {
        let c = |e, p| Cursor::new(e, Location::new(0, p));
        // Same epoch: as for any node.
        assert_eq!(worker_read_at(c(2, 10), None, c(2, 10)), ReadAt::Now);
        assert_eq!(worker_read_at(c(2, 10), None, c(2, 11)), ReadAt::Wait);
        // An older epoch's cursor: not before the floor is known, nor below it.
        assert_eq!(worker_read_at(c(2, 1), None, c(1, 9999)), ReadAt::Wait);
        assert_eq!(
            worker_read_at(c(2, 1), Some(c(2, 640)), c(1, 9999)),
            ReadAt::Wait
        );
        assert_eq!(
            worker_read_at(c(2, 640), Some(c(2, 640)), c(1, 9999)),
            ReadAt::Now
        );
        assert_eq!(
            worker_read_at(c(2, 700), Some(c(2, 640)), c(1, 5)),
            ReadAt::Now
        );
        // A floor of another epoch says nothing about this one.
        assert_eq!(
            worker_read_at(c(3, 700), Some(c(2, 640)), c(1, 5)),
            ReadAt::Wait
        );
        // A newer epoch's cursor: waits (the worker has to move there).
        assert_eq!(
            worker_read_at(c(2, 700), Some(c(2, 640)), c(3, 1)),
            ReadAt::Wait
        );
    }

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
