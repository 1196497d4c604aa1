//! The metadata group's messages over the nodes' QUIC endpoints.
//!
//! Raft is one more sub-protocol: a `Raft` frame carries openraft's request
//! as JSON and a `RaftIs` frame the answer, on the pipelined stream the
//! [`Client`] keeps per peer (heartbeats of ~100 bytes share packets with
//! other calls). The metadata group is small, so JSON costs nothing that
//! matters and keeps openraft's types out of the wire codec.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};

use super::types::{Member, MetaRaft, Snapshot, SnapshotMeta, Vote};
use super::MetaMachine;
use crate::client::Client;
use crate::msg::raft::{Raft, RaftIs};
use crate::msg::{Answer, Failed};

/// A node's handle on its metadata group.
pub type MetaRaftHandle = openraft::Raft<MetaRaft, MetaMachine>;

/// What a node asks another.
#[derive(Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<MetaRaft>),
    Vote(VoteRequest<MetaRaft>),
    PreVote(VoteRequest<MetaRaft>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<MetaRaft>),
}

/// What it answers: openraft's response, or why its Raft could not answer
/// (shut down, or a fatal storage error).
#[derive(Serialize, Deserialize)]
enum Reply {
    Append(AppendEntriesResponse<MetaRaft>),
    Vote(VoteResponse<MetaRaft>),
    Snapshot(SnapshotResponse<MetaRaft>),
    TransferLeader(TransferLeaderResponse<MetaRaft>),
    Refused(String),
}

/// The key, in a request's JSON, of the node id the sender meant.
///
/// It sits inside the request's own object (`{"Vote": {..., "to": 7}}`),
/// where openraft's types ignore it: nodes of the version before it still
/// read these requests, and theirs (without it) are still read here.
const TO: &str = "to";

/// `req` as JSON, naming `to` as the node it is meant for.
fn addressed(req: &Request, to: u64) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(req)?;
    if let Some(inner) = v
        .as_object_mut()
        .and_then(|m| m.values_mut().next())
        .and_then(|i| i.as_object_mut())
    {
        inner.insert(TO.into(), to.into());
    }
    serde_json::to_vec(&v)
}

/// The node a request's JSON names, if it names one.
fn addressee(v: &serde_json::Value) -> Option<u64> {
    v.as_object()?.values().next()?.get(TO)?.as_u64()
}

/// How many requests meant for another node were refused (a warning goes
/// out for the first and then every 1000th: heartbeats come 20 a second).
static MISADDRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Answers a `Raft` frame with this node's metadata group.
///
/// A request meant for another node id is refused: the address now belongs
/// to another node (its Raft directory was lost or replaced, or another
/// node took the address). Answering as that member would vote without the
/// member's votes and take its log without its history, which Raft's safety
/// rests on; to its group the member stays unreachable instead.
pub async fn answer(raft: &MetaRaftHandle, req: Raft) -> Answer<Raft> {
    let bad = |e: serde_json::Error| Failed::new(crate::Code::BadRequest, e);
    let v: serde_json::Value = serde_json::from_slice(&req.body).map_err(bad)?;
    let me = raft.metrics().borrow_watched().id;
    if let Some(to) = addressee(&v).filter(|&to| to != me) {
        let n = MISADDRESSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::error!(
                node = me,
                meant_for = to,
                refused = n + 1,
                "a metadata group reaches this address as its member {to}, but this is node {me} \
                 (a new Raft directory): refused. `ourkv cluster remove {to} --node ADDR` on that \
                 group ends this. If this node was meant to take that member's place but founded a \
                 cluster of its own, stop it, remove its data and Raft directories, and start it as \
                 a worker naming a live member as --master"
            );
        }
        let reply = Reply::Refused(format!(
            "this address is node {me} now, not node {to} (a new Raft directory)"
        ));
        let body = serde_json::to_vec(&reply)
            .map_err(|e| Failed::new(crate::Code::Other("raft_failed".into()), e))?;
        return Ok(RaftIs { body });
    }
    let reply = match serde_json::from_value(v).map_err(bad)? {
        Request::Append(r) => raft
            .append_entries(r)
            .await
            .map(Reply::Append)
            .map_err(|e| e.to_string()),
        Request::Vote(r) => raft
            .vote(r)
            .await
            .map(Reply::Vote)
            .map_err(|e| e.to_string()),
        Request::PreVote(r) => raft
            .pre_vote(r)
            .await
            .map(Reply::Vote)
            .map_err(|e| e.to_string()),
        Request::Snapshot { vote, meta, data } => raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: io::Cursor::new(data),
                },
            )
            .await
            .map(Reply::Snapshot)
            .map_err(|e| e.to_string()),
        Request::TransferLeader(r) => raft
            .handle_transfer_leader(r)
            .await
            .map(Reply::TransferLeader)
            .map_err(|e| e.to_string()),
    };
    let reply = reply.unwrap_or_else(Reply::Refused);
    let body = serde_json::to_vec(&reply)
        .map_err(|e| Failed::new(crate::Code::Other("raft_failed".into()), e))?;
    Ok(RaftIs { body })
}

/// Answers the metadata group's messages, and refuses anything else.
struct RaftOnly {
    raft: MetaRaftHandle,
}

impl crate::pipeline::Answer for RaftOnly {
    async fn answer(self: Arc<Self>, req: crate::frame::Frame) -> crate::frame::Frame {
        match Raft::from_frame(req) {
            Ok(r) => crate::msg::answer_frame(answer(&self.raft, r).await),
            Err(other) => Failed::new(
                crate::Code::BadRequest,
                format!("this endpoint serves the metadata group only, not {other:?}"),
            )
            .into(),
        }
    }
}

/// Serves the metadata group alone on `endpoint` until it closes: for a
/// member that holds no data (and for tests of the group by itself).
pub async fn serve(endpoint: quinn::Endpoint, raft: MetaRaftHandle) {
    let node = Arc::new(RaftOnly { raft });
    crate::node::accept_loop(endpoint, move |send, recv, _peer| {
        let node = node.clone();
        async move {
            let mut frames = crate::frame::FrameReader::new(recv);
            match frames.next().await? {
                None => Ok(()),
                Some(crate::frame::Frame::Pipeline) => {
                    crate::pipeline::serve(node, send, frames).await
                }
                Some(one) => crate::pipeline::serve_one(node, send, one).await,
            }
        }
    })
    .await
}

/// The metadata group's heartbeat interval unless `--heartbeat-ms` says
/// otherwise: for a LAN or loopback.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(50);

/// The group's timing for heartbeats every `heartbeat`: a follower
/// campaigns 3 to 6 heartbeats after losing them (150-300 ms at the
/// default). openraft also bounds every heartbeat and replication call by
/// one heartbeat interval, so it must be longer than the round trip between
/// members; and it takes the longest election timeout as the leader's lease
/// (a follower votes for no other candidate within it of its last
/// acknowledgement), which holds only while every member has the same
/// timing: a cluster admits no member with another heartbeat.
/// Pre-Vote keeps a node that was cut off from deposing a healthy leader
/// when it returns. Leadership is never restored at startup (openraft's
/// default): a master that crashed may come back with a shorter log than
/// the workers it had shipped its unsynced tail to, and must not go on
/// writing in the same term over positions they hold; an election gives a
/// new term instead.
pub fn raft_config(heartbeat: std::time::Duration) -> openraft::Config {
    let beat = heartbeat.as_millis().max(1) as u64;
    openraft::Config {
        cluster_name: "ourkv-meta".into(),
        heartbeat_interval: beat,
        election_timeout_min: 3 * beat,
        // `ClusterInfo::election_timeout_max` counts on this factor.
        election_timeout_max: 6 * beat,
        enable_pre_vote: Some(true),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        enable_leader_restore: Some(false),
        ..Default::default()
    }
}

/// Makes a [`PeerNet`] per peer, all on one [`Client`].
#[derive(Clone)]
pub struct QuicNet {
    client: Arc<Client>,
}

impl QuicNet {
    /// Raft messages go out on `client`'s connections.
    pub fn new(client: Arc<Client>) -> QuicNet {
        QuicNet { client }
    }
}

impl RaftNetworkFactory<MetaRaft> for QuicNet {
    type Network = PeerNet;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerNet {
        PeerNet {
            client: self.client.clone(),
            to: target,
            addr: node
                .addr
                .parse()
                .map_err(|e| format!("member address {:?}: {e}", node.addr)),
        }
    }
}

/// The way to one peer.
pub struct PeerNet {
    client: Arc<Client>,
    /// The peer's node id, named in every request.
    to: u64,
    /// The peer's address, or why its member entry has none usable.
    addr: Result<SocketAddr, String>,
}

impl PeerNet {
    async fn send(&self, req: &Request, option: &RPCOption) -> Result<Reply, RPCError<MetaRaft>> {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let body = addressed(req, self.to).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let call = self.client.call(addr, Raft { body });
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "{addr}: no answer within {:?}",
                    option.hard_ttl()
                ))))
            }
            // No connection, or it ended: the peer is down or cut off, and
            // openraft backs off.
            Ok(Err(e @ (crate::Error::Quic(_) | crate::Error::Unanswered(_)))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(r)) => r,
        };
        match serde_json::from_slice(&reply.body) {
            Ok(Reply::Refused(why)) => Err(RPCError::Unreachable(Unreachable::from_string(why))),
            Ok(r) => Ok(r),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn mismatch() -> RPCError<MetaRaft> {
    RPCError::Network(NetworkError::from_string(
        "a Raft answer of the wrong kind".to_string(),
    ))
}

impl RaftNetworkV2<MetaRaft> for PeerNet {
    type SnapshotData = io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<MetaRaft>, RPCError<MetaRaft>> {
        match self.send(&Request::Append(rpc), &option).await? {
            Reply::Append(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<MetaRaft>, RPCError<MetaRaft>> {
        match self.send(&Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    // openraft's default grants every pre-vote, which would let a node cut
    // off from the leader depose it on its return: ask the peer.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<MetaRaft>, RPCError<MetaRaft>> {
        match self.send(&Request::PreVote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<MetaRaft>, StreamingError<MetaRaft>> {
        let req = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.send(&req, &option) => match r? {
                Reply::Snapshot(r) => Ok(r),
                _ => Err(mismatch().into()),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<MetaRaft>, RPCError<MetaRaft>> {
        match self.send(&Request::TransferLeader(req), &option).await? {
            Reply::TransferLeader(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_addressee_and_still_reads_without_it() {
        let vote = Vote::new(3, 7);
        let req = Request::Vote(VoteRequest::new(vote, None));
        let body = addressed(&req, 42).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(addressee(&v), Some(42));
        // The key is inside openraft's object, which ignores it.
        match serde_json::from_value(v).unwrap() {
            Request::Vote(r) => assert_eq!(r.vote, vote),
            _ => panic!("not a vote"),
        }
        // A request from a node that does not name one (an older version).
        let plain: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(addressee(&plain), None);
        let snap = Request::Snapshot {
            vote,
            meta: SnapshotMeta::default(),
            data: vec![1, 2],
        };
        let v: serde_json::Value = serde_json::from_slice(&addressed(&snap, 9).unwrap()).unwrap();
        assert_eq!(addressee(&v), Some(9));
        assert!(matches!(
            serde_json::from_value(v).unwrap(),
            Request::Snapshot { data, .. } if data == [1, 2]
        ));
    }

    /// Elections follow the heartbeat; the default is the LAN timing.
    #[test]
    fn the_timing_scales_with_the_heartbeat() {
        let lan = raft_config(DEFAULT_HEARTBEAT);
        assert_eq!(
            (
                lan.heartbeat_interval,
                lan.election_timeout_min,
                lan.election_timeout_max
            ),
            (50, 150, 300)
        );
        let wan = raft_config(std::time::Duration::from_millis(500));
        assert_eq!(
            (
                wan.heartbeat_interval,
                wan.election_timeout_min,
                wan.election_timeout_max
            ),
            (500, 1500, 3000)
        );
        assert!(wan.validate().is_ok());
    }
}
