//! A data node of a failover cluster: its store, its place in the metadata
//! group, and its role, which follows the committed metadata.
//!
//! One QUIC endpoint serves everything: Raft messages and the controller's
//! `Position` question are answered here, the rest by the current role (a
//! master or a worker over the same store). A control loop watches the
//! Raft state and the metadata: the Raft leader without an appointment in
//! its term asks the candidates where their logs end and appoints the best
//! (or hands leadership to it); the appointed node becomes master; every
//! other node follows the master of the metadata. See
//! docs/FAILOVER-DESIGN.md §2.5 and docs/PROTOCOL.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::Instant as _;
use ourdb::keyed::KeyedStore;
use tokio::sync::{mpsc, watch};

use super::net::{self, MetaRaftHandle, QuicNet};
use super::{
    ClusterInfo, FileLog, JoinData, JoinRequest, LeaveRequest, Member as MemberInfo, MemberRow,
    MetaMachine, MetaView, PromoteRequest,
};
use crate::client::Client;
use crate::cursor::Cursor;
use crate::error::{Code, Error, Result};
use crate::frame::{Frame, FrameReader};
use crate::msg::raft::{Join, JoinIs, Leave, Meta, MetaIs, Position, PositionIs, Promote, Raft};
use crate::msg::Failed;
use crate::node::{Appointment, FailoverWorker, MetaLink, Worker, TAIL_CHECK};
use crate::proto::election::{self, Choice};
use crate::proto::followers::Transition;
use crate::proto::meta::{Applied, Branch, MetaCmd};
use crate::AbortOnDrop;
use crate::{Identity, Master, MasterOptions};

/// A leader's refusal as this member's answer; no answer at all means no
/// leader for now.
fn from_leader(e: Error) -> Failed {
    match e {
        Error::Remote { code, message } => Failed::new(code, message),
        e => Failed::new(Code::NotMaster, format!("the leader did not answer: {e}")),
    }
}

/// The refusal of a node whose data the cluster would have to replace.
fn data_differs() -> Code {
    Code::Other("data_differs".into())
}

/// The answer to a join of a node with another heartbeat than the
/// cluster's: refused for good, as for data that differs.
fn timing_differs() -> Code {
    Code::Other("timing_differs".into())
}

/// How long a leader waits for a joining node to catch up with the metadata.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// Refuses a join request that could not name a usable member.
fn check_join(req: &JoinRequest) -> std::result::Result<(), Failed> {
    let bad = |why: String| Err(Failed::new(Code::BadRequest, why));
    if req.id == 0 {
        return bad("node id 0 is not a node id".into());
    }
    if req.member.addr.parse::<SocketAddr>().is_err() {
        return bad(format!(
            "{:?} is not an address (host:port)",
            req.member.addr.chars().take(100).collect::<String>()
        ));
    }
    if let Some(k) = &req.member.pubkey {
        if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("a public key is 64 hex digits".into());
        }
    }
    Ok(())
}

/// How long a planned handover waits for the new master to catch up, and
/// then to be appointed.
const PROMOTE_WAIT: Duration = Duration::from_secs(3);

/// How long the controller waits for the candidates' answers.
const POSITION_WAIT: Duration = Duration::from_millis(300);

/// How a member starts.
pub struct MemberOptions {
    /// Its node id (kept in `<raft_dir>/id` by the caller).
    pub id: u64,
    /// The address others reach it at.
    pub addr: SocketAddr,
    /// Its Mycelium public key, when it runs on the overlay.
    pub pubkey: Option<String>,
    /// Where its Raft log, vote, snapshot and last followed term live
    /// (beside the data directory: a snapshot install swaps that one).
    pub raft_dir: PathBuf,
    /// How it treats its workers when master.
    pub master: MasterOptions,
    /// Testing aid: how long it waits before applying each batch when
    /// worker.
    pub apply_delay: Duration,
    /// Its metadata group's heartbeat interval ([`DEFAULT_HEARTBEAT`] for a
    /// LAN): longer than the round trip between members, and the same on
    /// every member of a cluster.
    ///
    /// [`DEFAULT_HEARTBEAT`]: crate::cluster::DEFAULT_HEARTBEAT
    pub heartbeat: Duration,
}

#[derive(Clone)]
enum Role {
    Idle,
    Master(Arc<Master>),
    Worker {
        node: Arc<Worker>,
        master: u64,
        term: u64,
    },
}

/// A data node of a failover cluster.
pub struct Node {
    id: u64,
    addr: SocketAddr,
    pubkey: Option<String>,
    raft: MetaRaftHandle,
    view: watch::Receiver<MetaView>,
    client: Arc<Client>,
    endpoint: quinn::Endpoint,
    /// The store when no role holds it (a worker may replace it whole).
    idle_store: Mutex<Option<Arc<KeyedStore>>>,
    role: Mutex<Role>,
    /// The newest term this node knows of.
    fence: Arc<AtomicU64>,
    /// The term whose master's log it last followed (also on disk).
    last_term: Arc<AtomicU64>,
    options: MasterOptions,
    apply_delay: Duration,
    raft_dir: PathBuf,
    tasks: Mutex<Vec<AbortOnDrop>>,
    /// The worker role's follow loop. Kept here, not in the role: a clone
    /// of the role (a watch stream holds one while it lasts) must not keep
    /// a replaced role's loop running.
    following: Mutex<Option<AbortOnDrop>>,
    /// Joins are admitted one at a time (one membership change at a time).
    joining: tokio::sync::Mutex<()>,
    /// The Raft directory's lock, held while the node lives.
    _lock: std::fs::File,
    /// Why the cluster refused this node for good (its data differs).
    refused: watch::Sender<Option<String>>,
    /// Whether it asks to join with data no master has checked yet.
    unchecked: std::sync::atomic::AtomicBool,
}

const FOLLOW: &str = "follow";

fn read_term(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(FOLLOW))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes the last followed term durably.
fn write_term(dir: &Path, term: u64) -> std::io::Result<()> {
    write_durably(dir, FOLLOW, &term.to_string())
}

/// Replaces `dir/name` with `text` so that a crash leaves the old or the new
/// whole (tmp, fsync, rename, directory fsync).
fn write_durably(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The node id kept in `<raft_dir>/id`, made (random, never 0) on first
/// use. An id is for life: the metadata knows a node by it.
pub fn node_id(raft_dir: &Path) -> Result<u64> {
    let path = raft_dir.join("id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&id| id != 0)
            .ok_or_else(|| Error::Protocol(format!("{}: not a node id: {text:?}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(raft_dir).map_err(|e| io("raft directory", e))?;
            let mut id = 0u64;
            while id == 0 {
                let mut b = [0u8; 8];
                getrandom::getrandom(&mut b)
                    .map_err(|e| io("node id", std::io::Error::other(e.to_string())))?;
                // Below 2^53, so JSON readers that use doubles keep it exact.
                id = u64::from_le_bytes(b) >> 11;
            }
            write_durably(raft_dir, "id", &id.to_string()).map_err(|e| io("node id", e))?;
            Ok(id)
        }
        Err(e) => Err(io("node id", e)),
    }
}

fn io(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.to_string(),
        source,
    }
}

impl Node {
    /// Starts a member over `store`, serving on `endpoint` (which listens
    /// at `options.addr`). It takes no role until the metadata gives it one.
    pub async fn start(
        store: KeyedStore,
        endpoint: quinn::Endpoint,
        identity: &Identity,
        options: MemberOptions,
    ) -> Result<Arc<Node>> {
        let dir = options.raft_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| io("raft directory", e))?;
        // One process per Raft directory, as per data directory: two would
        // answer under one id. Held until the process ends.
        let lock = std::fs::File::create(dir.join("lock")).map_err(|e| io("raft lock", e))?;
        if let Err(e) = lock.try_lock() {
            return Err(Error::Protocol(format!(
                "the Raft directory {} is in use by another process ({e})",
                dir.display()
            )));
        }
        let client = Arc::new(Client::new(identity)?);
        let log = FileLog::open(&dir).map_err(|e| io("raft log", e))?;
        // The term this node last voted in: its Raft has loaded its state
        // (and its membership) once its metrics show it.
        let voted = log.saved_vote().map_or(0, |v| v.leader_id().term);
        let sm = MetaMachine::open(&dir).map_err(|e| io("raft state", e))?;
        let view = sm.subscribe();
        let config = Arc::new(
            net::raft_config(options.heartbeat)
                .validate()
                .map_err(|e| Error::Protocol(format!("raft config: {e}")))?,
        );
        let raft = openraft::Raft::new(options.id, config, QuicNet::new(client.clone()), log, sm)
            .await
            .map_err(|e| Error::Protocol(format!("raft: {e}")))?;
        // Members know each other by id and address. A Raft directory whose
        // membership lists this id at another address is a copy of another
        // node's directories, or a node moved: answering under that id at
        // this address would vote twice in the member's name.
        let loaded = raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.current_term >= voted, "state loaded")
            .await
            .map_err(|e| Error::Protocol(format!("raft: {e}")))?;
        let record = loaded.membership_config.get_node(&options.id).cloned();
        // The cluster's leaders count on this member's election timeout
        // being the one it joined with.
        if let Some(joined) = record
            .as_ref()
            .map(|r| r.heartbeat())
            .filter(|h| *h != options.heartbeat)
        {
            let _ = raft.shutdown().await;
            let joined = joined.as_millis();
            return Err(Error::Protocol(format!(
                "member {} joined its cluster with heartbeats every {joined} ms, and every member \
                 has that timing: start it with --heartbeat-ms {joined} (not {})",
                options.id,
                options.heartbeat.as_millis()
            )));
        }
        let known = record.map(|m| m.addr);
        if let Some(known) = known.filter(|a| *a != options.addr.to_string()) {
            let _ = raft.shutdown().await;
            return Err(Error::Protocol(format!(
                "the Raft directory {} is member {}'s, which its cluster reaches at {known}, not at \
                 {}: a copy of another node's directories, or a node that moved. Start it at \
                 {known}; or remove member {} (`ourkv cluster remove`) and start this node with \
                 an empty data directory and a new Raft directory, as a worker naming a member",
                dir.display(),
                options.id,
                options.addr,
                options.id
            )));
        }
        let member = Arc::new(Node {
            id: options.id,
            addr: options.addr,
            pubkey: options.pubkey,
            raft,
            view,
            client,
            endpoint: endpoint.clone(),
            idle_store: Mutex::new(Some(Arc::new(store))),
            role: Mutex::new(Role::Idle),
            fence: Arc::new(AtomicU64::new(0)),
            last_term: Arc::new(AtomicU64::new(read_term(&dir))),
            options: options.master,
            apply_delay: options.apply_delay,
            raft_dir: dir,
            tasks: Mutex::new(Vec::new()),
            following: Mutex::new(None),
            joining: tokio::sync::Mutex::new(()),
            _lock: lock,
            refused: watch::Sender::new(None),
            unchecked: std::sync::atomic::AtomicBool::new(false),
        });
        let serve = {
            let m = member.clone();
            tokio::spawn(async move {
                crate::node::accept_loop(endpoint, move |send, recv, peer| {
                    let m = m.clone();
                    async move { m.stream(send, recv, peer).await }
                })
                .await
            })
        };
        let control = tokio::spawn(member.clone().control_loop());
        member
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([AbortOnDrop(serve), AbortOnDrop(control)]);
        Ok(member)
    }

    /// Its node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address others reach it at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metadata as this node has applied it.
    pub fn view(&self) -> MetaView {
        self.view.borrow().clone()
    }

    /// The metadata group, for membership changes and tests.
    pub fn raft(&self) -> &MetaRaftHandle {
        &self.raft
    }

    /// Makes this node the first member of a new cluster (it will appoint
    /// itself master). Does nothing if the group already exists.
    pub async fn bootstrap(&self) -> Result<()> {
        let me = self.me();
        match self
            .raft
            .initialize(std::collections::BTreeMap::from([(self.id, me)]))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.api_error().is_some() => Ok(()),
            Err(e) => Err(Error::Protocol(format!("raft initialize: {e}"))),
        }
    }

    /// On the leader: adds a node as a learner, and makes every learner a
    /// voter once there are three members or more (with two, losing either
    /// would stop the group; the second stays a learner).
    pub async fn add_member(&self, id: u64, addr: SocketAddr) -> Result<()> {
        let info = MemberInfo {
            addr: addr.to_string(),
            pubkey: None,
            heartbeat_ms: self.heartbeat_field(),
        };
        self.admit(id, info).await
    }

    async fn admit(&self, id: u64, info: MemberInfo) -> Result<()> {
        let raft_err = |e| Error::Protocol(format!("raft membership: {e}"));
        self.raft
            .add_learner(id, info, true)
            .await
            .map_err(raft_err)?;
        let v = self.view();
        if v.members.len() >= 3 {
            let learners: BTreeSet<u64> = v
                .members
                .keys()
                .filter(|id| !v.voters.contains(id))
                .copied()
                .collect();
            if !learners.is_empty() {
                self.raft
                    .change_membership(openraft::ChangeMembers::AddVoterIds(learners), false)
                    .await
                    .map_err(raft_err)?;
            }
        }
        Ok(())
    }

    /// The role's store.
    pub fn store(&self) -> Arc<KeyedStore> {
        match self.role() {
            Role::Master(m) => m.store().clone(),
            Role::Worker { node, .. } => node.store(),
            Role::Idle => self
                .idle_store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .expect("an idle member holds its store"),
        }
    }

    /// Whether this node has a role yet (master, or worker following one).
    pub fn has_role(&self) -> bool {
        !matches!(self.role(), Role::Idle)
    }

    /// Whether this node is master now, and of which term.
    pub fn master_term(&self) -> Option<u64> {
        match self.role() {
            Role::Master(m) => Some(m.term()),
            _ => None,
        }
    }

    /// Stops everything (as a crash would, minus the lost page cache) and
    /// returns the store once nothing else holds it.
    pub async fn shutdown(self: Arc<Self>) -> Arc<KeyedStore> {
        let store = self.store();
        if let Role::Master(m) = self.role() {
            m.depose();
        }
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = Role::Idle;
        self.idle_store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let _ = self.raft.shutdown().await;
        self.endpoint.close(0u32.into(), b"stopped");
        self.endpoint.wait_idle().await;
        store
    }

    fn me(&self) -> MemberInfo {
        MemberInfo {
            addr: self.addr.to_string(),
            pubkey: self.pubkey.clone(),
            heartbeat_ms: self.heartbeat_field(),
        }
    }

    /// This node's heartbeat interval.
    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.raft.config().heartbeat_interval)
    }

    /// Its heartbeat as its member record carries it: none for the default,
    /// so that the record of a member that joined before the heartbeat was
    /// settable equals the one it sends now.
    fn heartbeat_field(&self) -> Option<u64> {
        let h = self.heartbeat();
        (h != crate::cluster::DEFAULT_HEARTBEAT).then_some(h.as_millis() as u64)
    }

    /// The cluster as this node's applied metadata says.
    pub fn info(&self) -> ClusterInfo {
        let v = self.view();
        ClusterInfo {
            node: self.id,
            term: v.state.term,
            master: v.state.master,
            leader: self.raft.metrics().borrow_watched().current_leader,
            members: v
                .members
                .iter()
                .map(|(&id, m)| MemberRow {
                    id,
                    addr: m.addr.clone(),
                    pubkey: m.pubkey.clone(),
                    voter: v.voters.contains(&id),
                    in_sync: v.state.in_sync.contains(&id),
                    heartbeat_ms: m.heartbeat_ms,
                })
                .collect(),
            applied: v.last_applied.map_or(0, |l| l.index),
        }
    }

    /// Whether this node is a member, and a voter once there are three.
    fn joined(&self) -> bool {
        let v = self.view();
        v.members.get(&self.id) == Some(&self.me())
            && (v.voters.contains(&self.id) || v.members.len() < 3)
    }

    /// Asks a seed (any member) to add this node, again every second (the
    /// next seed each time) until the metadata lists it: a worker started
    /// with `--master ADDR` (and `--seed ADDR`s) joins the cluster that
    /// way. Nothing is asked of a node that already is a member (a restart).
    /// A node whose data directory holds records the cluster's log does not
    /// is refused for good (`join_refused`), unless `replace_data`.
    pub fn join_through(self: &Arc<Self>, seeds: Vec<SocketAddr>, replace_data: bool) {
        assert!(!seeds.is_empty(), "a node joins through at least one seed");
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            let mut first = true;
            for seed in seeds.iter().cycle() {
                let seed = *seed;
                let Some(node) = weak.upgrade() else { return };
                if node.joined() {
                    node.unchecked.store(false, Ordering::SeqCst);
                    // A restart: the metadata names the members, the seeds
                    // are not asked. Seeds that name none of them point at
                    // another cluster, or the Raft directory is another
                    // cluster's: say so rather than ignore them silently.
                    let v = node.view();
                    let others: Vec<&str> = v
                        .members
                        .iter()
                        .filter(|(&id, _)| id != node.id)
                        .map(|(_, m)| m.addr.as_str())
                        .collect();
                    // Its own address names no stranger either.
                    let named = seeds
                        .iter()
                        .any(|s| *s == node.addr || others.contains(&s.to_string().as_str()));
                    if first && !others.is_empty() && !named {
                        tracing::warn!(
                            node = node.id,
                            seeds = ?seeds,
                            members = ?others,
                            "this node is a member already (its Raft directory says so); the addresses it was given to join through name none of its cluster's members and are not used"
                        );
                    }
                    return;
                }
                first = false;
                let data = match node.data_end().await {
                    Ok(d) => d,
                    Err(e) => {
                        node.refused
                            .send_replace(Some(format!("reading its data: {e}")));
                        return;
                    }
                };
                node.unchecked
                    .store(data.is_some() && !replace_data, Ordering::SeqCst);
                let req = JoinRequest {
                    id: node.id,
                    member: node.me(),
                    forwarded: false,
                    data,
                    replace_data,
                };
                let body = serde_json::to_vec(&req).expect("serializable");
                match node.client.call(seed, Join { body }).await {
                    Ok(_) => {
                        tracing::info!(node = node.id, %seed, "joined the cluster");
                        failures = 0;
                    }
                    Err(Error::Remote { code, message })
                        if code == data_differs() || code == timing_differs() =>
                    {
                        node.refused.send_replace(Some(message));
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        // The first failures are expected (the seed still
                        // starting, an election): said once, then every 30 s.
                        if failures == 3 || failures.is_multiple_of(30) {
                            tracing::warn!(node = node.id, %seed, error = %e, "cannot join yet; retrying every second");
                        }
                    }
                }
                let mut view = node.view.clone();
                drop(node);
                let _ = tokio::time::timeout(Duration::from_secs(1), view.changed()).await;
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(AbortOnDrop(task));
    }

    /// Whether it asks to join with data that no master has checked yet
    /// (none answers): it may still be refused.
    pub fn data_unchecked(&self) -> bool {
        self.unchecked.load(Ordering::SeqCst) && self.refused.borrow().is_none()
    }

    /// Why the cluster refused this node for good, once it did: its data
    /// directory holds records the cluster's log does not.
    pub async fn join_refused(&self) -> String {
        let mut rx = self.refused.subscribe();
        let why = rx
            .wait_for(|r| r.is_some())
            .await
            .expect("the node holds the sender");
        why.clone().unwrap_or_default()
    }

    /// The end of this node's log, if it holds any record.
    async fn data_end(&self) -> Result<Option<JoinData>> {
        let store = self.store();
        let end = store.db().end();
        if end.file_nr == 0 && end.position <= 1 {
            return Ok(None);
        }
        let epoch = store.db().meta().epoch;
        let keys = store.len() as u64;
        let tail = tokio::task::spawn_blocking(move || store.db().bytes_before(end, TAIL_CHECK))
            .await
            .map_err(|e| Error::Protocol(format!("reading the log's end: {e}")))?
            .map_err(|e| Error::Protocol(format!("reading the log's end: {e}")))?;
        Ok(Some(JoinData {
            end: Cursor::new(epoch, end),
            tail,
            last_term: self.last_term.load(Ordering::SeqCst),
            keys,
        }))
    }

    /// A joining node's data must be a prefix of the master's log: the
    /// cluster would otherwise cut or replace it, and a node that once
    /// served another cluster (or stood alone) would lose its data silently.
    async fn check_join_data(&self, req: &JoinRequest) -> std::result::Result<(), Failed> {
        let Some(d) = req.data.as_ref().filter(|_| !req.replace_data) else {
            return Ok(());
        };
        let Role::Master(master) = self.role() else {
            return Err(Failed::new(
                Code::NotMaster,
                "no master to compare the joining node's data with yet: retry",
            ));
        };
        // A node with no Raft history of this cluster cannot say which
        // term's log it holds: its bytes are compared. It then follows as
        // one that followed no term: what it holds past the branch point of
        // the cluster's first term is fetched again (nothing is lost: it
        // was the cluster's).
        let term = (d.last_term != 0).then_some(d.last_term);
        match master.fits(d.end, d.tail.clone(), term).await {
            Ok(_) => Ok(()),
            Err((_, why)) => Err(Failed::new(
                data_differs(),
                format!(
                    "node {}'s data directory ({} keys, log up to {}) is not a prefix of the \
                     cluster's log ({why}): joining would replace it with the cluster's data. \
                     Start the node on an empty data directory, or pass --replace-data to let \
                     the cluster's data replace it",
                    req.id, d.keys, d.end
                ),
            )),
        }
    }

    /// A `Join`: admitted by the Raft leader, passed on to it by any other
    /// member (once).
    /// Where a request only the Raft leader can carry out goes (once: a
    /// forwarded request is not passed on again).
    fn leader_addr(
        &self,
        leader: Option<u64>,
        forwarded: bool,
    ) -> std::result::Result<SocketAddr, Failed> {
        let no_leader = || Failed::new(Code::NotMaster, "no metadata leader known yet: retry");
        if forwarded {
            return Err(no_leader());
        }
        leader
            .and_then(|l| {
                self.view()
                    .members
                    .get(&l)
                    .and_then(|m| m.addr.parse().ok())
            })
            .ok_or_else(no_leader)
    }

    /// Removes a member for good, on the leader. Refused for the master, a
    /// member of the in-sync set (it may hold writes no other member does:
    /// stop it, and the master drops it from the set after its ack timeout)
    /// and the leader itself.
    async fn leave(&self, req: LeaveRequest) -> std::result::Result<ClusterInfo, Failed> {
        let leader = self.raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.id) {
            let addr = self.leader_addr(leader, req.forwarded)?;
            let body = serde_json::to_vec(&LeaveRequest {
                forwarded: true,
                ..req
            })
            .expect("serializable");
            return self.forward(addr, Leave { body }, |r| r.body).await;
        }
        let _one = self.joining.lock().await;
        let v = self.view();
        let refuse = |why: String| Err(Failed::new(Code::BadRequest, why));
        if !v.members.contains_key(&req.id) {
            return refuse(format!("node {} is not a member", req.id));
        }
        if v.state.master == Some(req.id) {
            return refuse(format!("node {} is the master", req.id));
        }
        if v.state.in_sync.contains(&req.id) {
            return refuse(format!(
                "node {} is in the in-sync set: stop it first; the master drops it after its ack timeout",
                req.id
            ));
        }
        if req.id == self.id {
            return refuse(format!("node {} leads the metadata group", req.id));
        }
        let ids = BTreeSet::from([req.id]);
        let change = if v.voters.contains(&req.id) {
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        tracing::info!(node = self.id, removed = req.id, "removing a member");
        let failed = |e: openraft::error::RaftError<_, _>| {
            Failed::new(Code::Other("leave_failed".into()), e.to_string())
        };
        // Not retained as a learner: gone for good.
        self.raft
            .change_membership(change, false)
            .await
            .map_err(failed)?;
        // Two voters could not lose either (each commit needs both): as when
        // a cluster grows to two, the other member becomes a learner, and
        // this one commits alone.
        let v = self.view();
        if v.members.len() == 2 && v.voters.len() == 2 {
            tracing::info!(
                node = self.id,
                "two members left: the other becomes a learner"
            );
            self.raft
                .change_membership(
                    openraft::ChangeMembers::ReplaceAllVoters(BTreeSet::from([self.id])),
                    true,
                )
                .await
                .map_err(failed)?;
        }
        Ok(self.info())
    }

    /// A planned handover, on the master: it stops taking writes, waits
    /// until every write taken is acknowledged and `req.id` holds them all,
    /// then hands Raft leadership to it; as the new leader it appoints
    /// itself (the best position: as long a log, and the tie goes to the
    /// controller). Answered once the metadata names the new master. A
    /// member that is not the master passes the request on to it, once.
    async fn promote(&self, req: PromoteRequest) -> std::result::Result<ClusterInfo, Failed> {
        let v = self.view();
        let Role::Master(master) = self.role() else {
            let no_master = || Failed::new(Code::NotMaster, "no master known yet: retry");
            if req.forwarded {
                return Err(no_master());
            }
            let addr = v
                .state
                .master
                .and_then(|m| v.members.get(&m))
                .and_then(|m| m.addr.parse().ok())
                .ok_or_else(no_master)?;
            let body = serde_json::to_vec(&PromoteRequest {
                forwarded: true,
                ..req
            })
            .expect("serializable");
            return self.forward(addr, Promote { body }, |r| r.body).await;
        };
        let refuse = |why: String| Err(Failed::new(Code::BadRequest, why));
        if req.id == self.id {
            return Ok(self.info());
        }
        if !v.members.contains_key(&req.id) {
            return refuse(format!("node {} is not a member", req.id));
        }
        if !v.voters.contains(&req.id) {
            return refuse(format!("node {} is not a voting member yet", req.id));
        }
        if !v.state.in_sync.contains(&req.id) {
            return refuse(format!(
                "node {} is not in the in-sync set: it may lack acknowledged writes",
                req.id
            ));
        }
        let leads = self.raft.metrics().borrow_watched().current_leader == Some(self.id);
        if master.term() != v.state.term || !leads {
            return Err(Failed::new(
                Code::NotMaster,
                "the master is changing: retry",
            ));
        }
        // One membership or role change at a time.
        let _one = self.joining.lock().await;
        let term = master.term();
        tracing::info!(
            node = self.id,
            to = req.id,
            term,
            "handing over: writes paused"
        );
        master.pause_writes();
        let wait = PROMOTE_WAIT.max(self.options.ack_timeout + Duration::from_secs(1));
        if !master.drained_to(req.id, wait).await {
            master.resume_writes();
            return Err(Failed::new(
                Code::Other("promote_failed".into()),
                format!(
                    "node {} did not catch up within {wait:?}; writes resumed here",
                    req.id
                ),
            ));
        }
        let refused = |e: String| {
            master.resume_writes();
            Failed::new(Code::Other("promote_failed".into()), e)
        };
        self.raft
            .trigger()
            .transfer_leader(req.id)
            .await
            .map_err(|e| refused(format!("raft transfer: {e}")))?;
        let mut view = self.view.clone();
        let appointed =
            tokio::time::timeout(PROMOTE_WAIT, view.wait_for(|v| v.state.term > term)).await;
        match appointed {
            Ok(Ok(v)) if v.state.master == Some(req.id) => {
                drop(v);
                tracing::info!(node = self.id, to = req.id, "handed over");
                Ok(self.info())
            }
            Ok(Ok(v)) => {
                let (term, master) = (v.state.term, v.state.master);
                drop(v);
                Err(Failed::new(
                    Code::Other("promote_failed".into()),
                    match master {
                        Some(m) => format!("term {term} went to node {m} instead"),
                        None => format!("term {term} has no master yet"),
                    },
                ))
            }
            _ => {
                // Still the master of its term (no one took over): go on.
                if self.view().state.term == term {
                    master.resume_writes();
                }
                Err(Failed::new(
                    Code::Other("promote_failed".into()),
                    format!("node {} did not take over within {PROMOTE_WAIT:?}", req.id),
                ))
            }
        }
    }

    async fn join(&self, req: JoinRequest) -> std::result::Result<ClusterInfo, Failed> {
        check_join(&req)?;
        let leader = self.raft.metrics().borrow_watched().current_leader;
        if leader == Some(self.id) {
            // The leader's lease assumes every member's election timeout.
            let (mine, theirs) = (self.heartbeat(), req.member.heartbeat());
            if mine != theirs {
                let (mine, theirs) = (mine.as_millis(), theirs.as_millis());
                return Err(Failed::new(
                    timing_differs(),
                    format!(
                        "this cluster's members send heartbeats every {mine} ms and node {} every \
                         {theirs} ms: start it with --heartbeat-ms {mine}",
                        req.id
                    ),
                ));
            }
            let _one = self.joining.lock().await;
            let v = self.view();
            let known = v.members.get(&req.id);
            if let Some(k) = known.filter(|k| **k != req.member) {
                return Err(Failed::new(
                    Code::BadRequest,
                    format!(
                        "node {} is a member at {}, not {}: remove it first",
                        req.id, k.addr, req.member.addr
                    ),
                ));
            }
            // Members are reached by address: two at one address would be
            // one node voting twice, or one unreachable voter more.
            if let Some((other, _)) = v
                .members
                .iter()
                .find(|(id, m)| **id != req.id && m.addr == req.member.addr)
            {
                return Err(Failed::new(
                    Code::BadRequest,
                    format!(
                        "{} is member {other}'s address: remove it first (`ourkv cluster remove {other}`)",
                        req.member.addr
                    ),
                ));
            }
            let voter = v.voters.contains(&req.id) || v.members.len() < 3;
            if known.is_none() {
                self.check_join_data(&req).await?;
            }
            if known.is_none() || !voter {
                tracing::info!(node = self.id, joining = req.id, addr = %req.member.addr, "adding a member");
                // A node that never answers must not hold up later joins.
                match tokio::time::timeout(JOIN_WAIT, self.admit(req.id, req.member)).await {
                    Ok(r) => r.map_err(|e| {
                        Failed::new(Code::Other("join_failed".into()), e.to_string())
                    })?,
                    Err(_) => {
                        return Err(Failed::new(
                            Code::Other("join_failed".into()),
                            format!("node {} did not catch up within {JOIN_WAIT:?}", req.id),
                        ))
                    }
                }
            }
            return Ok(self.info());
        }
        let addr = self.leader_addr(leader, req.forwarded)?;
        let body = serde_json::to_vec(&JoinRequest {
            forwarded: true,
            ..req
        })
        .expect("serializable");
        self.forward(addr, Join { body }, |r: JoinIs| r.body).await
    }

    /// Sends a request on to the leader; the cluster its answer carries.
    async fn forward<R: crate::msg::Request>(
        &self,
        leader: SocketAddr,
        request: R,
        body: impl FnOnce(R::Reply) -> Vec<u8>,
    ) -> std::result::Result<ClusterInfo, Failed> {
        let reply = self
            .client
            .call(leader, request)
            .await
            .map_err(from_leader)?;
        serde_json::from_slice(&body(reply))
            .map_err(|e| Failed::new(Code::BadRequest, format!("leader's answer: {e}")))
    }

    fn role(&self) -> Role {
        self.role.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One stream: Raft and `Position` here, the rest by the role.
    async fn stream(
        self: Arc<Self>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        peer: SocketAddr,
    ) -> Result<()> {
        let mut frames = FrameReader::new(recv);
        let Some(first) = frames.next().await? else {
            return Ok(());
        };
        match (&first, self.role()) {
            (Frame::Pipeline, _) => crate::pipeline::serve(self, send, frames).await,
            (Frame::Subscribe { .. } | Frame::Snapshot, Role::Master(m)) => {
                m.opened(first, send, frames, peer).await
            }
            (Frame::Watch { .. }, Role::Worker { node, .. }) => {
                node.opened(first, send, frames).await
            }
            (Frame::Subscribe { .. } | Frame::Snapshot | Frame::Watch { .. }, _) => {
                let mut send = send;
                let no = Failed::new(Code::NotMaster, "this node cannot serve that now");
                crate::frame::write(&mut send, &self.hint(no.into())).await?;
                let _ = send.finish();
                Ok(())
            }
            _ => crate::pipeline::serve_one(self, send, first).await,
        }
    }

    /// The answer to `Position{term}`: this node now knows `term` (a master
    /// of an older one stops taking writes), then its last term and end.
    fn position(&self, term: u64) -> PositionIs {
        self.fence.fetch_max(term, Ordering::SeqCst);
        if let Role::Master(m) = self.role() {
            if m.term() < term {
                m.depose();
            }
        }
        let store = self.store();
        PositionIs {
            last_term: self.last_term.load(Ordering::SeqCst),
            // A group shipped in part is no part of this log yet: a node
            // appointed from here cuts it (`be_master`).
            cursor: Cursor::new(store.db().meta().epoch, store.visible_end()),
        }
    }

    async fn control_loop(self: Arc<Self>) {
        let mut view = self.view.clone();
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::warn!(node = self.id, error = %e, "failover control");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), view.changed()).await;
        }
    }

    /// Takes the role the metadata gives this node (and, as the Raft leader
    /// without an appointment, makes one).
    async fn reconcile(&self) -> Result<()> {
        let m = self.raft.metrics().borrow_watched().clone();
        let term = m.current_term;
        let leader = m.current_leader == Some(self.id);
        self.fence.fetch_max(term, Ordering::SeqCst);
        let v = self.view();
        if leader && v.state.term < term {
            return self.appoint(term).await;
        }
        match v.state.master {
            Some(id) if id == self.id && v.state.term == term && leader => self.be_master(&v),
            Some(id) if id != self.id => self.be_worker(id, v.state.term, &v),
            _ => {
                // A master whose term is over, with no successor yet.
                if let Role::Master(m) = self.role() {
                    if m.term() != term || !leader {
                        self.be_idle();
                    }
                }
                Ok(())
            }
        }
    }

    /// The controller's round (rules in `proto::election`).
    async fn appoint(&self, term: u64) -> Result<()> {
        // Everything committed before this term is applied here first.
        self.raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map_err(|e| Error::Protocol(format!("raft read index: {e}")))?;
        let v = self.view();
        if v.state.term >= term {
            return Ok(());
        }
        // This node's own end must hold: it follows nobody while it asks.
        self.be_idle();
        let mut asked: BTreeSet<u64> = v.state.in_sync.clone();
        asked.extend(v.state.master);
        // Only members this leader's Raft has heard from in its term: a
        // node at a member's address that is not that member (its machine
        // back on a fresh disk, as a new node) refuses the member's Raft
        // messages, so it never is one. Its answer could make it best, and
        // leadership handed to it would never arrive, in every term.
        let heard = self.raft.metrics().borrow_watched().heartbeat.clone();
        asked.retain(|id| {
            heard
                .as_ref()
                .and_then(|h| h.get(id))
                .is_some_and(|at| at.is_some())
        });
        asked.insert(self.id);
        let mut calls = Vec::new();
        for id in asked {
            if id == self.id {
                let p = self.position(term);
                calls.push(tokio::spawn(async move { Some((id, p)) }));
                continue;
            }
            let Some(addr) = v.members.get(&id).and_then(|m| m.addr.parse().ok()) else {
                continue;
            };
            let client = self.client.clone();
            calls.push(tokio::spawn(async move {
                let ask = client.call(addr, Position { term });
                match tokio::time::timeout(POSITION_WAIT, ask).await {
                    Ok(Ok(p)) => Some((id, p)),
                    _ => None,
                }
            }));
        }
        let mut answers = Vec::new();
        for c in calls {
            if let Ok(Some((id, p))) = c.await {
                answers.push((
                    id,
                    election::Position {
                        last_term: p.last_term,
                        end: p.cursor,
                    },
                ));
            }
        }
        match election::choose(self.id, &v.state, &answers) {
            Choice::Appoint {
                master,
                parent,
                start,
            } => {
                let cmd = MetaCmd::Appoint {
                    master,
                    term,
                    parent,
                    start,
                };
                let r = self
                    .raft
                    .client_write(cmd)
                    .await
                    .map_err(|e| Error::Protocol(format!("raft write: {e}")))?;
                tracing::info!(node = self.id, term, %start, applied = ?r.data, "appointed itself master");
            }
            Choice::Transfer(to) => {
                tracing::info!(
                    node = self.id,
                    term,
                    to,
                    "handing leadership to the best candidate"
                );
                self.raft
                    .trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|e| Error::Protocol(format!("raft transfer: {e}")))?;
            }
            Choice::Wait => {
                tracing::warn!(
                    node = self.id,
                    term,
                    ?answers,
                    "no eligible node answered: no master"
                );
            }
        }
        Ok(())
    }

    /// Leaves any role, keeping the store.
    fn be_idle(&self) {
        let mut role = self.role.lock().unwrap_or_else(|e| e.into_inner());
        let store = match &*role {
            Role::Idle => return,
            Role::Master(m) => {
                m.depose();
                m.store().clone()
            }
            Role::Worker { node, .. } => {
                node.retire();
                node.store()
            }
        };
        *self.idle_store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
        *role = Role::Idle;
        // The old role's follow loop ends here (aborted on drop).
        self.following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn be_master(&self, v: &MetaView) -> Result<()> {
        let term = v.state.term;
        if matches!(self.role(), Role::Master(ref m) if m.term() == term) {
            return Ok(());
        }
        self.be_idle();
        let store = self.store();
        // The rest of a group shipped in part will never come: a master
        // must not append after half a transaction.
        if let Some(cut) = store.cut_unfinished_group()? {
            tracing::warn!(
                node = self.id,
                term,
                records = cut.records,
                "cut a group shipped in part before taking writes"
            );
        }
        let start = v
            .state
            .appointment(term)
            .map_or(store.db().end(), |a| a.start.at);
        write_term(&self.raft_dir, term).map_err(|e| io("remember term", e))?;
        self.last_term.store(term, Ordering::SeqCst);
        let link = Arc::new(Link::new(self.raft.clone(), self.view.clone()));
        let master = Master::appointed(
            store,
            self.options.clone(),
            Appointment {
                node: self.id,
                term,
                start,
                in_sync: v.state.in_sync.iter().copied().collect(),
                link: link.clone(),
            },
        );
        link.attach(&master);
        tracing::info!(node = self.id, term, %start, "master");
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = Role::Master(master);
        self.idle_store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(())
    }

    fn be_worker(&self, master: u64, term: u64, v: &MetaView) -> Result<()> {
        if matches!(self.role(), Role::Worker { master: m, term: t, .. } if m == master && t == term)
        {
            return Ok(());
        }
        let Some(addr) = v.members.get(&master).and_then(|m| m.addr.parse().ok()) else {
            return Err(Error::Protocol(format!(
                "master {master} has no usable address"
            )));
        };
        self.be_idle();
        let store = self.store();
        self.cut_to_branch(&store, term, v)?;
        let dir = self.raft_dir.clone();
        let node = Worker::following(
            store,
            addr,
            FailoverWorker {
                node_id: self.id,
                last_term: self.last_term.load(Ordering::SeqCst),
                fence: self.fence.clone(),
                remember: {
                    let last = self.last_term.clone();
                    Arc::new(move |t| {
                        write_term(&dir, t)?;
                        last.store(t, Ordering::SeqCst);
                        Ok(())
                    })
                },
                following: term,
                master,
            },
        );
        node.set_apply_delay(self.apply_delay);
        let task = AbortOnDrop(tokio::spawn(node.clone().follow(self.endpoint.clone())));
        tracing::info!(node = self.id, master, term, %addr, "following");
        *self.following.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = Role::Worker { node, master, term };
        self.idle_store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(())
    }
}

impl Node {
    /// Before following the master of `term`: a log that went on past where
    /// the last followed term's log leaves that one (a deposed master's
    /// unreplicated tail) is cut back there, so shipping resumes from the
    /// shared prefix. Nothing above the high-water mark was answered or
    /// `ack=all`-acknowledged, and the branch point is at or past it.
    fn cut_to_branch(&self, store: &KeyedStore, term: u64, v: &MetaView) -> Result<()> {
        let last = self.last_term.load(Ordering::SeqCst);
        let Branch::At(c) = v.state.branch(last, term) else {
            // The same lineage, or one the history no longer reaches (the
            // master then refuses the subscription and a snapshot follows).
            return Ok(());
        };
        let end = Cursor::new(store.db().meta().epoch, store.db().end());
        if c.epoch != end.epoch || end <= c {
            return Ok(());
        }
        let cut = store.truncate_to(c.at)?;
        tracing::warn!(
            node = self.id,
            last_term = last,
            term,
            from = %end,
            to = %c,
            records = cut.records,
            "cut an unreplicated tail back to the branch point"
        );
        Ok(())
    }
}

impl crate::pipeline::Answer for Node {
    async fn answer(self: Arc<Self>, req: Frame) -> Frame {
        let me = self.clone();
        me.hint(self.answer_here(req).await)
    }
}

impl Node {
    /// A `not_master` refusal names the master this node's metadata knows
    /// (`…; master ADDR (node ID, term T)`), so a client can go there.
    fn hint(&self, answer: Frame) -> Frame {
        let Frame::Failed {
            code: Code::NotMaster,
            message,
        } = answer
        else {
            return answer;
        };
        let v = self.view();
        let master = v
            .state
            .master
            .filter(|m| *m != self.id)
            .and_then(|m| v.members.get(&m).map(|row| (m, row.addr.clone())));
        let message = match master {
            Some((id, addr)) => format!(
                "{message}; master {addr} (node {id}, term {})",
                v.state.term
            ),
            None => message,
        };
        Frame::Failed {
            code: Code::NotMaster,
            message,
        }
    }

    async fn answer_here(self: Arc<Self>, req: Frame) -> Frame {
        let req = match Raft::from_frame(req) {
            Ok(r) => return crate::msg::answer_frame(net::answer(&self.raft, r).await),
            Err(f) => f,
        };
        let req = match Position::from_frame(req) {
            Ok(Position { term }) => return self.position(term).into(),
            Err(f) => f,
        };
        let req = match Meta::from_frame(req) {
            Ok(Meta) => {
                let body = serde_json::to_vec(&self.info()).expect("serializable");
                return MetaIs { body }.into();
            }
            Err(f) => f,
        };
        let req = match Leave::from_frame(req) {
            Ok(Leave { body }) => {
                let answer = match serde_json::from_slice::<LeaveRequest>(&body) {
                    Ok(r) => self.leave(r).await.map(|info| MetaIs {
                        body: serde_json::to_vec(&info).expect("serializable"),
                    }),
                    Err(e) => Err(Failed::new(Code::BadRequest, format!("leave request: {e}"))),
                };
                return crate::msg::answer_frame(answer);
            }
            Err(f) => f,
        };
        let req = match Promote::from_frame(req) {
            Ok(Promote { body }) => {
                let answer = match serde_json::from_slice::<PromoteRequest>(&body) {
                    Ok(r) => self.promote(r).await.map(|info| MetaIs {
                        body: serde_json::to_vec(&info).expect("serializable"),
                    }),
                    Err(e) => Err(Failed::new(
                        Code::BadRequest,
                        format!("promote request: {e}"),
                    )),
                };
                return crate::msg::answer_frame(answer);
            }
            Err(f) => f,
        };
        let req = match Join::from_frame(req) {
            Ok(Join { body }) => {
                let answer = match serde_json::from_slice::<JoinRequest>(&body) {
                    Ok(r) => self.join(r).await.map(|info| JoinIs {
                        body: serde_json::to_vec(&info).expect("serializable"),
                    }),
                    Err(e) => Err(Failed::new(Code::BadRequest, format!("join request: {e}"))),
                };
                return crate::msg::answer_frame(answer);
            }
            Err(f) => f,
        };
        match self.role() {
            Role::Master(m) => m.reply(req).await,
            Role::Worker { node, .. } => node.reply(req).await,
            Role::Idle => match crate::msg::status::Digest::from_frame(req) {
                // What it holds is worth comparing even before it follows.
                Ok(_) => crate::msg::answer_frame(crate::node::digest_of(self.store()).await),
                Err(_) => {
                    Failed::new(Code::NotMaster, "no master yet: an election is under way").into()
                }
            },
        }
    }
}

/// A master's way to its metadata group.
struct Link {
    raft: MetaRaftHandle,
    view: watch::Receiver<MetaView>,
    master: Arc<OnceLock<Weak<Master>>>,
    queue: mpsc::UnboundedSender<(u64, Transition<u64>)>,
}

impl Link {
    fn new(raft: MetaRaftHandle, view: watch::Receiver<MetaView>) -> Link {
        let (queue, mut rx) = mpsc::unbounded_channel::<(u64, Transition<u64>)>();
        let master: Arc<OnceLock<Weak<Master>>> = Arc::new(OnceLock::new());
        let (r, m) = (raft.clone(), master.clone());
        // One proposal at a time, in order: commits arrive in the order the
        // changes were decided.
        tokio::spawn(async move {
            while let Some((term, t)) = rx.recv().await {
                let (join, leave) = if t.joins() {
                    (vec![t.worker()], vec![])
                } else {
                    (vec![], vec![t.worker()])
                };
                let cmd = MetaCmd::InSync { term, join, leave };
                loop {
                    match r.client_write(cmd.clone()).await {
                        Ok(w) if w.data == Some(Applied::InSyncChanged) => {
                            if let Some(master) = m.get().and_then(Weak::upgrade) {
                                master.committed(t.worker(), t.joins());
                            }
                        }
                        Ok(w) => {
                            tracing::info!(term, ?t, applied = ?w.data, "in-sync change not applied")
                        }
                        // No longer the leader of its term: the master's term is over.
                        Err(e)
                            if {
                                let m = r.metrics().borrow_watched().clone();
                                m.current_term != term || m.current_leader != Some(m.id)
                            } =>
                        {
                            tracing::info!(term, ?t, error = %e, "in-sync change not committed: the term is over");
                            return;
                        }
                        Err(e) => {
                            // A membership change in progress, a lease not yet
                            // confirmed by a quorum: proposed again.
                            tracing::warn!(term, ?t, error = %e, "in-sync change not committed; retrying");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                    break;
                }
            }
        });
        Link {
            raft,
            view,
            master,
            queue,
        }
    }

    fn attach(&self, master: &Arc<Master>) {
        let _ = self.master.set(Arc::downgrade(master));
    }
}

impl MetaLink for Link {
    fn propose(&self, term: u64, change: Transition<u64>) {
        let _ = self.queue.send((term, change));
    }

    fn branch(&self, last_term: u64) -> Branch {
        let v = self.view.borrow();
        v.state.branch(last_term, v.state.term)
    }

    fn is_member(&self, id: u64) -> bool {
        self.view.borrow().members.contains_key(&id)
    }

    fn still_leads(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        if self.leads_within_lease() {
            return Box::pin(std::future::ready(true));
        }
        let raft = self.raft.clone();
        Box::pin(async move {
            // Within its lease (acknowledged heartbeats less than an election
            // timeout ago, during which no follower votes for another) the
            // leader is sure without a round trip; past it, it asks a quorum.
            // The lease assumes clocks that run at about the same rate.
            raft.ensure_linearizable(openraft::ReadPolicy::LeaseRead)
                .await
                .is_ok()
                || raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                    .await
                    .is_ok()
        })
    }
}

impl Link {
    /// openraft's lease check, read from its published metrics instead of
    /// asked of its core task (a channel trip per read index): this node
    /// leads the appointed term and a quorum acknowledged a heartbeat it
    /// sent less than the lease ago. Metrics only lag, so the acknowledgement
    /// they show is a real one, at most older: no follower has voted for
    /// another since, so no newer master exists.
    fn leads_within_lease(&self) -> bool {
        let term = self.view.borrow().state.term;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.current_leader == Some(m.id)
            && m.current_term == term
            && m.last_quorum_acked.as_ref().is_some_and(|at| {
                at.elapsed() < Duration::from_millis(self.raft.config().election_timeout_max)
            })
    }
}
