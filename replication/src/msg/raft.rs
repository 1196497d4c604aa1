//! The metadata Raft group, node → node: `Raft` → `RaftIs`. The bodies are
//! openraft's own messages as JSON (`cluster::net` encodes them): the
//! metadata group is small and rare, and this keeps openraft's types out of
//! the wire codec.

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
