//! Watches, client → worker. `Watch` opens a stream: the worker answers
//! `CursorIs` (accepted, from there) or `Failed` (`gone`, `lagging`,
//! `cursor`), then a `Change` per change. `Changes` is its bounded
//! one-reply form, answered by `ChangesAre` (or `Failed` with those codes).

use crate::cursor::Cursor;
pub use crate::frame::Change;
use crate::msg::{message, Request, Streamed};

message! {
    /// Stream the changes to keys with `prefix` from `cursor` on, then as
    /// they are applied.
    Watch = Watch {
        /// What the keys start with.
        prefix: String,
        /// Where to start; location zero: from the start of the log.
        cursor: Cursor,
    }
}

message!(@convert Change = Change { cursor, key, value, expired });

message! {
    /// The changes to keys with `prefix` from `from` (the start of the log
    /// if zero) up to `until` or what is applied, whichever is first, at
    /// most about `max_bytes` of records.
    Changes = Changes {
        /// What the keys start with.
        prefix: String,
        /// Where to start; location zero: from the start of the log.
        from: Cursor,
        /// Where to stop at the latest.
        until: Cursor,
        /// About this many bytes of records at most.
        max_bytes: u32,
    }
}

message! {
    /// Those changes in log order, where to continue, and what the worker
    /// has applied.
    ChangesAre = ChangesAre {
        /// The changes.
        changes: Vec<Change>,
        /// Where to continue.
        next: Cursor,
        /// The worker's applied cursor.
        applied: Cursor,
    }
}

impl Request for Changes {
    type Reply = ChangesAre;
}

/// The first reply is a [`crate::msg::reads::CursorIs`] (where the watch
/// starts); changes follow.
impl Streamed for Watch {
    type Item = Change;
}

/// What answers `Changes`.
pub trait Handler: Send + Sync {
    /// Answers a [`Changes`].
    fn changes(
        &self,
        req: Changes,
    ) -> impl std::future::Future<Output = crate::msg::Answer<Changes>> + Send;
}
