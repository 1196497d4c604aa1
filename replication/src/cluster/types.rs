//! The type configuration of the metadata Raft group.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::proto::meta::{Applied, MetaCmd};

openraft::declare_raft_types!(
    /// The metadata group: commands are `MetaCmd`s, nodes are `Member`s.
    pub MetaRaft:
        D = MetaCmd,
        // `None` for entries that carry no command (blank, membership).
        R = Option<Applied>,
        NodeId = u64,
        Node = Member,
        Term = u64,
        // One leader per term: the master's term is the Raft term, so a term
        // must name one node for fencing by term to mean anything (the default
        // `leader_id_adv` lets several candidates lead the same term).
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A member of the cluster, as the Raft membership stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where its QUIC endpoint listens (`host:port`, or `[ipv6]:port`).
    pub addr: String,
    /// Its Mycelium public key, when it runs on the overlay.
    pub pubkey: Option<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

impl fmt::Display for MetaCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCmd::Appoint {
                master,
                term,
                parent,
                start,
            } => write!(
                f,
                "appoint {master} term {term} (parent {parent}, start {start})"
            ),
            MetaCmd::InSync { term, join, leave } => {
                write!(f, "in-sync term {term} join {join:?} leave {leave:?}")
            }
        }
    }
}

/// A Raft log entry of the group.
pub type Entry = <MetaRaft as openraft::RaftTypeConfig>::Entry;
/// A Raft log id (term and index).
pub type LogId = openraft::type_config::alias::LogIdOf<MetaRaft>;
/// A Raft vote.
pub type Vote = openraft::type_config::alias::VoteOf<MetaRaft>;
/// The membership and the log id that set it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<MetaRaft>;
/// A snapshot's header.
pub(crate) type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<MetaRaft>;
/// A snapshot: header and bytes.
pub(crate) type Snapshot =
    openraft::type_config::alias::SnapshotOf<MetaRaft, std::io::Cursor<Vec<u8>>>;
