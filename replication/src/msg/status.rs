//! The cluster's state, client → node: `Status` → `StatusIs` (master only;
//! a worker refuses with `not_master`), `Digest` → `DigestIs` (any node; or
//! `Failed{digest_failed}`).

use crate::cursor::Cursor;
use crate::frame::WorkerStatus;
use crate::msg::{dispatch, message, Request};

message! {
    /// The cluster as the master sees it.
    Status = Status;
}

message! {
    /// The master's commit cursor and each worker's state.
    StatusIs = StatusIs {
        /// The commit cursor.
        cursor: Cursor,
        /// Each subscribed worker.
        workers: Vec<WorkerStatus>,
        /// The master's group commits so far (empty without group commit).
        commits: crate::stats::CommitStats,
    }
}

message! {
    /// A digest of the node's data files.
    Digest = Digest;
}

message! {
    /// The digest, as text.
    DigestIs = DigestIs {
        /// The digest.
        text: String,
    }
}

impl Request for Status {
    type Reply = StatusIs;
}

impl Request for Digest {
    type Reply = DigestIs;
}

dispatch! {
    /// A status request.
    Admin answered by Handler {
        /// The cluster's state.
        Status => status,
        /// A node's digest.
        Digest => digest,
    }
}
