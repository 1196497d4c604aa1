//! The metadata Raft group, node → node: `Raft` → `RaftIs`, and the
//! controller's question to candidates, `Position` → `PositionIs`; a new
//! node's `Join` → `JoinIs`, and anyone's `Meta` → `MetaIs` (the cluster as
//! a member's applied metadata says). The Raft bodies are
//! openraft's own messages as JSON (`cluster::net` encodes them): the
//! metadata group is small and rare, and this keeps openraft's types out of
//! the wire codec.

use crate::cursor::Cursor;
use crate::msg::{message, Request};

message! {
    /// A Raft request (append entries, vote, pre-vote, snapshot, transfer).
    Raft = Raft {
        /// The request, JSON.
        body: Vec<u8>,
    }
}

message! {
    /// The answer to a Raft request.
    RaftIs = RaftIs {
        /// The answer, JSON.
        body: Vec<u8>,
    }
}

impl Request for Raft {
    type Reply = RaftIs;
}

message! {
    /// Where does your log end? (The asker's term becomes the newest known.)
    Position = Position {
        /// The asking controller's term.
        term: u64,
    }
}

message! {
    /// The last term followed and the end.
    PositionIs = PositionIs {
        /// The term whose master's log it last followed.
        last_term: u64,
        /// Its end.
        cursor: Cursor,
    }
}

impl Request for Position {
    type Reply = PositionIs;
}

message! {
    /// Add me to the cluster (JSON `cluster::JoinRequest`).
    Join = Join {
        /// The request, JSON.
        body: Vec<u8>,
    }
}

message! {
    /// Joined: the cluster (JSON `cluster::ClusterInfo`).
    JoinIs = JoinIs {
        /// The cluster, JSON.
        body: Vec<u8>,
    }
}

impl Request for Join {
    type Reply = JoinIs;
}

message! {
    /// The cluster as your metadata says.
    Meta = Meta;
}

message! {
    /// The cluster (JSON `cluster::ClusterInfo`).
    MetaIs = MetaIs {
        /// The cluster, JSON.
        body: Vec<u8>,
    }
}

impl Request for Meta {
    type Reply = MetaIs;
}

message! {
    /// Remove a member for good (JSON `cluster::LeaveRequest`).
    Leave = Leave {
        /// The request, JSON.
        body: Vec<u8>,
    }
}

impl Request for Leave {
    type Reply = MetaIs;
}

message! {
    /// Make a member of the in-sync set the master, losing nothing (JSON
    /// `cluster::PromoteRequest`).
    Promote = Promote {
        /// The request, JSON.
        body: Vec<u8>,
    }
}

impl Request for Promote {
    type Reply = MetaIs;
}
