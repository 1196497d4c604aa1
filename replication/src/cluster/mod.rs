//! The metadata Raft group of failover, on openraft: which node is master in
//! which term, the in-sync set and the membership. This module is the only
//! one that names openraft types (its 0.10 line still changes between
//! releases); the rules themselves are the pure `proto::meta` and
//! `proto::election`. Data does not go through Raft: it keeps flowing as raw
//! record shipping, so replicas stay byte-identical. See
//! docs/FAILOVER-DESIGN.md.

mod log_store;
mod member;
pub mod net;
mod state_machine;
mod types;

pub use log_store::FileLog;
pub use member::{node_id, MemberOptions, Node};
pub use net::{MetaRaftHandle, QuicNet, DEFAULT_HEARTBEAT};
pub use state_machine::{MetaMachine, MetaView};
pub use types::{
    ClusterInfo, Entry, JoinData, JoinRequest, LeaveRequest, LogId, Member, MemberRow, MetaRaft,
    PromoteRequest, StoredMembership, Vote,
};

#[cfg(test)]
mod tests;
