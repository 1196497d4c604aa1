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
    /// Its metadata group's heartbeat interval in milliseconds (`None`:
    /// the default, as every member recorded before it was settable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

impl Member {
    /// Its heartbeat interval.
    pub fn heartbeat(&self) -> std::time::Duration {
        self.heartbeat_ms.map_or(
            crate::cluster::DEFAULT_HEARTBEAT,
            std::time::Duration::from_millis,
        )
    }
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

/// A node's request to join (the body of a `Join` frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its node id.
    pub id: u64,
    /// How others reach it.
    pub member: Member,
    /// Whether a member already passed it on (a request is forwarded once,
    /// to the leader, never around a loop).
    #[serde(default)]
    pub forwarded: bool,
    /// What its data directory holds, when it holds anything: the cluster
    /// admits it only if that is a prefix of its log, or if `replace_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JoinData>,
    /// Whether the cluster's data may replace what the node's data
    /// directory holds where the two differ.
    #[serde(default)]
    pub replace_data: bool,
}

/// The end of a joining node's log (members of older versions send none,
/// and ignore it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinData {
    /// Its end.
    pub end: crate::Cursor,
    /// Its last bytes before `end` (as a worker's subscription sends).
    pub tail: Vec<u8>,
    /// The term whose master's log it last followed (0: none).
    pub last_term: u64,
    /// Its live keys (for the operator's message).
    pub keys: u64,
}

/// An operator's request to remove a member (the body of a `Leave` frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveRequest {
    /// The member's node id.
    pub id: u64,
    /// Whether a member already passed it on to the leader.
    #[serde(default)]
    pub forwarded: bool,
}

/// An operator's request to make a member the master (the body of a
/// `Promote` frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// The member's node id.
    pub id: u64,
    /// Whether a member already passed it on to the master.
    #[serde(default)]
    pub forwarded: bool,
}

/// One member, as [`ClusterInfo`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    /// Its node id.
    pub id: u64,
    /// Where its QUIC endpoint listens.
    pub addr: String,
    /// Its Mycelium public key, when it runs on the overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    /// Whether it votes in the metadata group (else a learner).
    pub voter: bool,
    /// Whether it is in the committed in-sync set.
    pub in_sync: bool,
    /// Its heartbeat interval in milliseconds (`None`: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// The cluster as one member's applied metadata says (the body of `MetaIs`
/// and `JoinIs`). It may lag: a reader that asks several members trusts the
/// highest term.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The member that answered.
    pub node: u64,
    /// The current master's term (0: none appointed yet).
    pub term: u64,
    /// The current master's id.
    pub master: Option<u64>,
    /// The Raft leader as the answering member knows it.
    pub leader: Option<u64>,
    /// Every member, by id.
    pub members: Vec<MemberRow>,
    /// The index of the last metadata entry the answering member applied:
    /// at one term, the higher is the newer view (a member removed while
    /// stopped still shows the members from before).
    #[serde(default)]
    pub applied: u64,
}

impl ClusterInfo {
    /// The longest a follower waits for its leader before it stands for
    /// election (six heartbeats, see `net::raft_config`), over the members:
    /// how long a failover's election may take.
    pub fn election_timeout_max(&self) -> std::time::Duration {
        let beat = self
            .members
            .iter()
            .map(|m| {
                m.heartbeat_ms.map_or(
                    crate::cluster::DEFAULT_HEARTBEAT,
                    std::time::Duration::from_millis,
                )
            })
            .max()
            .unwrap_or(crate::cluster::DEFAULT_HEARTBEAT);
        6 * beat
    }

    /// Whether this view is newer than `other`: a newer term, or at one term
    /// more of the metadata log applied.
    pub fn newer_than(&self, other: &ClusterInfo) -> bool {
        (self.term, self.applied) > (other.term, other.applied)
    }

    /// The address of member `id`, if it has a usable one.
    pub fn addr_of(&self, id: u64) -> Option<std::net::SocketAddr> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.addr.parse().ok())
    }

    /// The master's address.
    pub fn master_addr(&self) -> Option<std::net::SocketAddr> {
        self.master.and_then(|id| self.addr_of(id))
    }

    /// Every member but the master, by address.
    pub fn others(&self) -> Vec<std::net::SocketAddr> {
        self.members
            .iter()
            .filter(|m| Some(m.id) != self.master)
            .filter_map(|m| m.addr.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterInfo;

    #[test]
    fn a_newer_term_wins_then_more_metadata_applied() {
        let view = |term, applied| ClusterInfo {
            term,
            applied,
            ..ClusterInfo::default()
        };
        assert!(view(2, 1).newer_than(&view(1, 9)));
        assert!(view(1, 9).newer_than(&view(1, 8)));
        assert!(!view(1, 8).newer_than(&view(1, 8)));
        assert!(!view(1, 9).newer_than(&view(2, 1)));
        // A view from a member of the version before (no `applied`) reads
        // as 0: newer only by its term.
        let old: ClusterInfo =
            serde_json::from_str(r#"{"node":1,"term":3,"master":1,"leader":1,"members":[]}"#)
                .unwrap();
        assert_eq!(old.applied, 0);
        assert!(old.newer_than(&view(2, 50)));
    }

    /// A member recorded before the heartbeat was settable reads as one
    /// with the default heartbeat, and such a member's record is written
    /// the same as before (so a rejoin compares equal).
    #[test]
    fn a_record_without_a_heartbeat_has_the_default() {
        use crate::cluster::Member;
        let old: Member =
            serde_json::from_str(r#"{"addr":"127.0.0.1:7000","pubkey":null}"#).unwrap();
        assert_eq!(old.heartbeat(), crate::cluster::DEFAULT_HEARTBEAT);
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"addr":"127.0.0.1:7000","pubkey":null}"#
        );
        let slow: Member =
            serde_json::from_str(r#"{"addr":"127.0.0.1:7000","heartbeat_ms":500}"#).unwrap();
        assert_eq!(slow.heartbeat(), std::time::Duration::from_millis(500));
        assert_ne!(old, slow);
    }

    /// A view's election timeout is six of its members' longest heartbeat
    /// (what a gateway waits out in a failover); rows without one (the
    /// default, or a member of the version before) count as 50 ms.
    #[test]
    fn a_views_election_timeout_follows_its_members_heartbeat() {
        let view = |rows: &str| -> ClusterInfo {
            serde_json::from_str(&format!(
                r#"{{"node":1,"term":3,"master":1,"leader":1,"members":[{rows}]}}"#
            ))
            .unwrap()
        };
        let row = |hb: &str| format!(r#"{{"id":1,"addr":"a:1","voter":true,"in_sync":false{hb}}}"#);
        let ms = std::time::Duration::from_millis;
        assert_eq!(view("").election_timeout_max(), ms(300));
        assert_eq!(view(&row("")).election_timeout_max(), ms(300));
        let slow = format!("{},{}", row(""), row(r#","heartbeat_ms":500"#));
        assert_eq!(view(&slow).election_timeout_max(), ms(3000));
    }
}
