use std::io::Write;

use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use super::net::{self, MetaRaftHandle};
use super::types::{Entry, LogId};
use super::*;
use crate::proto::meta::MetaCmd;
use crate::Cursor;

/// Every store of the suite gets a fresh directory, kept alive with it.
struct Dirs;

impl StoreBuilder<MetaRaft, FileLog, MetaMachine, tempfile::TempDir> for Dirs {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, FileLog, MetaMachine), StorageError<MetaRaft>> {
        let d = tempfile::tempdir().unwrap();
        let log = FileLog::open(d.path()).unwrap();
        let sm = MetaMachine::open(d.path()).unwrap();
        Ok((d, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite() {
    Suite::test_all(Dirs).await.unwrap();
}

fn entry(term: u64, index: u64, cmd: Option<MetaCmd>) -> Entry {
    Entry {
        log_id: LogId::new_term_index(term, index),
        payload: cmd.map_or(
            openraft::EntryPayload::Blank,
            openraft::EntryPayload::Normal,
        ),
    }
}

fn appoint(master: u64, term: u64) -> MetaCmd {
    MetaCmd::Appoint {
        master,
        term,
        parent: 0,
        start: Cursor::ZERO,
    }
}

#[tokio::test]
async fn log_survives_reopen_and_a_torn_tail_is_cut() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut log = FileLog::open(d.path()).unwrap();
        let vote = Vote::new(3, 7);
        log.save_vote(&vote).await.unwrap();
        let es = (1..=5).map(|i| entry(3, i, Some(appoint(7, 3))));
        log.append(es, IOFlushed::noop()).await.unwrap();
        log.truncate_after(Some(LogId::new_term_index(3, 3)))
            .await
            .unwrap();
        log.append([entry(4, 4, None)], IOFlushed::noop())
            .await
            .unwrap();
        log.purge(LogId::new_term_index(3, 1)).await.unwrap();
        log.save_committed(Some(LogId::new_term_index(3, 3)))
            .await
            .unwrap();
    }
    let check = |log: &mut FileLog| {
        let mut log = log.clone();
        async move {
            let st = log.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id, Some(LogId::new_term_index(3, 1)));
            assert_eq!(st.last_log_id, Some(LogId::new_term_index(4, 4)));
            let ids: Vec<_> = log
                .try_get_log_entries(0..)
                .await
                .unwrap()
                .iter()
                .map(|e| e.log_id)
                .collect();
            assert_eq!(
                ids,
                [
                    LogId::new_term_index(3, 2),
                    LogId::new_term_index(3, 3),
                    LogId::new_term_index(4, 4)
                ]
            );
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        }
    };
    let mut log = FileLog::open(d.path()).unwrap();
    check(&mut log).await;
    assert_eq!(
        log.read_committed().await.unwrap(),
        Some(LogId::new_term_index(3, 3))
    );
    drop(log);
    // A crash mid-append: half a record at the end.
    let len = std::fs::metadata(d.path().join("log")).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("log"))
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(f);
    let mut log = FileLog::open(d.path()).unwrap();
    check(&mut log).await;
    assert_eq!(std::fs::metadata(d.path().join("log")).unwrap().len(), len);
    // A flipped byte in the last record: that record and nothing else is lost.
    let mut bytes = std::fs::read(d.path().join("log")).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x20;
    std::fs::write(d.path().join("log"), &bytes).unwrap();
    let mut log = FileLog::open(d.path()).unwrap();
    check(&mut log).await;
    // The last record was the commit hint; the purge's rewrite had none.
    assert_eq!(log.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn state_machine_applies_publishes_and_restores_from_its_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let mut sm = MetaMachine::open(d.path()).unwrap();
    let mut view = sm.subscribe();
    let es = [
        entry(1, 1, Some(appoint(7, 1))),
        // Proposed in term 1 for term 2: stale, changes nothing.
        entry(1, 2, Some(appoint(8, 2))),
        entry(2, 3, Some(appoint(8, 2))),
    ];
    let stream = futures_util::stream::iter(es.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.unwrap();
    assert!(view.has_changed().unwrap());
    let v = view.borrow_and_update().clone();
    assert_eq!((v.state.term, v.state.master), (2, Some(8)));
    assert_eq!(v.state.history.len(), 2);
    assert_eq!(v.last_applied, Some(LogId::new_term_index(2, 3)));

    let mut b = sm.get_snapshot_builder().await;
    openraft::RaftSnapshotBuilder::build_snapshot(&mut b)
        .await
        .unwrap();
    drop(sm);
    let mut sm = MetaMachine::open(d.path()).unwrap();
    assert_eq!(sm.subscribe().borrow().state, v.state);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(LogId::new_term_index(2, 3)));
}

/// One member of a metadata group over loopback QUIC, in this process.
struct Node {
    addr: std::net::SocketAddr,
    raft: MetaRaftHandle,
    view: tokio::sync::watch::Receiver<MetaView>,
    endpoint: quinn::Endpoint,
    server: tokio::task::JoinHandle<()>,
}

async fn start_node(id: u64, dir: &std::path::Path, addr: std::net::SocketAddr) -> Node {
    let identity = crate::Identity::loopback().unwrap();
    let endpoint = crate::endpoint(&identity, addr).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let log = FileLog::open(dir).unwrap();
    let sm = MetaMachine::open(dir).unwrap();
    let view = sm.subscribe();
    let client = std::sync::Arc::new(crate::Client::new(&identity).unwrap());
    let config = std::sync::Arc::new(
        net::raft_config(super::DEFAULT_HEARTBEAT)
            .validate()
            .unwrap(),
    );
    let raft = openraft::Raft::new(id, config, QuicNet::new(client), log, sm)
        .await
        .unwrap();
    let server = tokio::spawn(net::serve(endpoint.clone(), raft.clone()));
    Node {
        addr,
        raft,
        view,
        endpoint,
        server,
    }
}

impl Node {
    fn member(&self) -> Member {
        Member {
            addr: self.addr.to_string(),
            ..Member::default()
        }
    }

    async fn stop(self) {
        self.raft.shutdown().await.unwrap();
        self.server.abort();
        self.endpoint.close(0u32.into(), b"stopped");
        self.endpoint.wait_idle().await;
    }

    /// Waits (at most 10 s) until this node's view satisfies `f`.
    async fn seen(&mut self, what: &str, f: impl Fn(&MetaView) -> bool) -> MetaView {
        let mut view = self.view.clone();
        let wait = view.wait_for(|v| f(v));
        let seen = match tokio::time::timeout(std::time::Duration::from_secs(10), wait).await {
            Ok(v) => v.unwrap().clone(),
            Err(_) => panic!(
                "not seen within 10 s: {what}; view {:?}",
                *self.view.borrow()
            ),
        };
        seen
    }
}

fn metrics(n: &Node) -> openraft::RaftMetrics<MetaRaft> {
    use openraft::type_config::async_runtime::WatchReceiver;
    n.raft.metrics().borrow_watched().clone()
}

async fn leader_among(nodes: &[&Node], newer_than: u64) -> (usize, u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            let m = metrics(n);
            if m.current_leader == Some(m.id) && m.current_term > newer_than {
                return (i, m.current_term);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Proposes the node's own appointment; a leader that has not heard from a
/// quorum lately refuses writes until it has (a loaded machine delays
/// heartbeats), so that refusal is retried for a while.
async fn appoint_self(n: &Node, term: u64) -> Option<crate::proto::meta::Applied> {
    let id = metrics(n).id;
    let cmd = MetaCmd::Appoint {
        master: id,
        term,
        parent: 0,
        start: Cursor::ZERO,
    };
    for _ in 0..250 {
        match n.raft.client_write(cmd.clone()).await {
            Ok(r) => return r.data,
            Err(e) if e.forward_to_leader().is_some_and(|f| f.leader_id.is_none()) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("appointing {id}: {e}"),
        }
    }
    panic!("{id} could not write for 5 s")
}

/// Three members over loopback QUIC: bootstrap from one, learners made
/// voters, the leader appoints itself; its loss elects another, which
/// appoints itself; leadership moves on request; the lost node returns on
/// its old directory and learns the newest metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_fail_over_transfer_and_rejoin() {
    use crate::proto::meta::Applied;
    use std::collections::{BTreeMap, BTreeSet};
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let any = "127.0.0.1:0".parse().unwrap();
    let n1 = start_node(1, dirs[0].path(), any).await;
    let mut n2 = start_node(2, dirs[1].path(), any).await;
    let mut n3 = start_node(3, dirs[2].path(), any).await;

    n1.raft
        .initialize(BTreeMap::from([(1, n1.member())]))
        .await
        .unwrap();
    let (_, t1) = leader_among(&[&n1], 0).await;
    n1.raft.add_learner(2, n2.member(), true).await.unwrap();
    n1.raft.add_learner(3, n3.member(), true).await.unwrap();
    n1.raft
        .change_membership(
            openraft::ChangeMembers::AddVoterIds(BTreeSet::from([2, 3])),
            false,
        )
        .await
        .unwrap();
    let t1 = t1.max(metrics(&n1).current_term);
    assert_eq!(appoint_self(&n1, t1).await, Some(Applied::Appointed));
    for n in [&mut n2, &mut n3] {
        let v = n
            .seen("master 1 and three voters", |v| v.state.master == Some(1))
            .await;
        assert_eq!(v.voters, BTreeSet::from([1, 2, 3]));
        assert_eq!(v.members[&1].addr, n1.addr.to_string());
    }

    // The leader goes: one of the others is elected in a newer term.
    let addr1 = n1.addr;
    n1.stop().await;
    let (i, t2) = leader_among(&[&n2, &n3], t1).await;
    let (mut l, mut o) = if i == 0 { (n2, n3) } else { (n3, n2) };
    // A late appointment for the old term is refused; its own takes.
    assert_eq!(
        appoint_self(&l, t1).await,
        Some(Applied::Stale { term: t1 })
    );
    assert_eq!(appoint_self(&l, t2).await, Some(Applied::Appointed));
    let l_id = metrics(&l).id;
    let v = o
        .seen("the new master", |v| v.state.master == Some(l_id))
        .await;
    assert_eq!(v.state.term, t2);
    assert_eq!(v.state.history.len(), 2);

    // Planned handover: leadership moves to the other, which appoints itself.
    let o_id = metrics(&o).id;
    l.raft.trigger().transfer_leader(o_id).await.unwrap();
    let (_, t3) = leader_among(&[&o], t2).await;
    assert_eq!(appoint_self(&o, t3).await, Some(Applied::Appointed));
    l.seen("the handed-over master", |v| v.state.master == Some(o_id))
        .await;

    // The first node returns on its directory and address, as a follower.
    let mut n1 = start_node(1, dirs[0].path(), addr1).await;
    let v = n1.seen("the newest master", |v| v.state.term == t3).await;
    assert_eq!(v.state.master, Some(o_id));
    assert_eq!(
        v.state.history.iter().map(|t| t.term).collect::<Vec<_>>(),
        [t1, t2, t3]
    );
    for n in [n1, l, o] {
        n.stop().await;
    }
}

/// A leader that restarts does not take its old term back (openraft would
/// by default): a master's log may have come back shorter than what it
/// shipped, so it must lead, if at all, in a new term after an election.
/// One voter, so nobody else's election could make the new term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_is_elected_again_in_a_new_term() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let n1 = start_node(1, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    n1.raft
        .initialize(BTreeMap::from([(1, n1.member())]))
        .await
        .unwrap();
    let (_, t1) = leader_among(&[&n1], 0).await;
    n1.stop().await;
    // A sole voter sends nothing to itself: any port will do (its old one
    // may be taken meanwhile by another test).
    let n1 = start_node(1, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let m = metrics(&n1);
    assert!(
        !(m.current_leader == Some(1) && m.current_term == t1),
        "leadership of term {t1} restored at startup"
    );
    let (_, t2) = leader_among(&[&n1], 0).await;
    assert!(t2 > t1, "led again in term {t2}, was {t1}");
    n1.stop().await;
}
