//! The master and worker roles: log shipping and the RPCs on one QUIC endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ourdb::keyed::{KeyedStore, SnapshotInstall};
use ourdb::Location;
use tokio::sync::watch;

use crate::cursor::Cursor;
use crate::error::{Code, Error, Result};
use crate::frame::{
    self, Ack, Change, Expect, Frame, FrameReader, LeaseInfo, LeaseOp, TxnCondition, TxnOp,
    TxnResult, Version, WorkerStatus,
};
use crate::identity::SERVER_NAME;
use crate::msg::{
    self, answer_frame, reads, shipping, snapshot, status, writes, Answer, Call, Failed, Opening,
};
use crate::pipeline::Pipe;
use crate::proto::follower::{Recovery, Segment};
use crate::proto::meta::Branch;
use crate::proto::shipping::{ReadAt, Subscription};
use crate::proto::{self, Follower, Followers, Transition};

/// Records per shipped segment, at most (whole records; at least one).
const SEGMENT_BYTES: usize = 1 << 20;
/// Bytes before its cursor a worker sends for the master to compare.
pub(crate) const TAIL_CHECK: usize = 64;
/// How long a read at a cursor waits for the node to reach it. A cursor the
/// master has committed reaches a live worker in milliseconds; a node that
/// has not reached it by then is lagging (the gateway asks another).
const READ_WAIT: Duration = Duration::from_secs(2);

fn quic(e: impl std::fmt::Display) -> Error {
    Error::Quic(e.to_string())
}

/// A key for a worker that sent no node id: its address.
fn peer_key(peer: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    peer.hash(&mut h);
    h.finish() | 1
}

/// A random non-zero id (a worker outside a failover cluster needs one
/// unique among its master's workers).
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is keyed afresh; the time and the process add more.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Protocol(format!("storage task failed: {e}")))?
}

fn failed(code: Code, e: impl std::fmt::Display) -> Failed {
    Failed::new(code, e)
}

/// A read's answer carries the cursor of the end the read may have seen,
/// known only once the read is done (`after_read`): the helpers below leave
/// it at zero and the handlers set it here.
trait Seen {
    fn seen(self, at: Cursor) -> Self;
}

macro_rules! seen {
    ($($t:ident),*) => {$(
        impl Seen for reads::$t {
            fn seen(self, cursor: Cursor) -> Self {
                reads::$t { cursor, ..self }
            }
        }
    )*};
}
seen!(Value, Keys, Values, Record);

/// Answers a Get from `store`: the value with its version.
async fn versioned_value(store: Arc<KeyedStore>, key: String) -> Answer<reads::Get> {
    let cursor = Cursor::default();
    let epoch = store.db().meta().epoch;
    // A get is a map lookup and a copy: cheaper in place than a hop to the
    // blocking pool (a record outside the maps falls back to one pread).
    match store.get_versioned(&key) {
        Ok(Some((value, at))) => Ok(reads::Value {
            value: Some(value),
            cursor,
            version: Version { epoch, at },
        }),
        Ok(None) => Ok(reads::Value {
            value: None,
            cursor,
            version: Version::default(),
        }),
        Err(e) => Err(failed(Code::ReadFailed, e)),
    }
}

/// Answers a List from `store`.
fn list(store: &KeyedStore, req: reads::List) -> Answer<reads::List> {
    let reads::List {
        prefix,
        after,
        limit,
        ..
    } = req;
    let after = (!after.is_empty()).then_some(after);
    let keys = store.list(&prefix, after.as_deref(), limit as usize);
    Ok(reads::Keys {
        keys,
        cursor: Cursor::default(),
    })
}

/// Answers a ById from `store`.
async fn by_id(store: Arc<KeyedStore>, req: reads::ById) -> Answer<reads::ById> {
    match blocking(move || Ok(store.get_by_id(req.id)?)).await {
        Ok(entry) => Ok(reads::Record {
            entry,
            cursor: Cursor::default(),
        }),
        Err(e) => Err(failed(Code::ReadFailed, e)),
    }
}

/// Answers a History from `store`.
async fn history(store: Arc<KeyedStore>, req: reads::History) -> Answer<reads::History> {
    let reads::History { key, depth, .. } = req;
    match blocking(move || Ok(store.history(&key, depth as usize)?)).await {
        Ok(values) => Ok(reads::Values {
            values,
            cursor: Cursor::default(),
        }),
        Err(e) => Err(failed(Code::ReadFailed, e)),
    }
}

/// Answers a Digest from `store`.
pub(crate) async fn digest_of(store: Arc<KeyedStore>) -> Answer<status::Digest> {
    match blocking(move || digest(&store)).await {
        Ok(text) => Ok(status::DigestIs { text }),
        Err(e) => Err(failed(Code::DigestFailed, e)),
    }
}

/// A digest of a node's data files, to compare replicas.
pub fn digest(store: &KeyedStore) -> Result<String> {
    Ok(store.db().digest()?.to_string())
}

/// Whether a handshake ended because the peer gave up (closed it, reset
/// it, or fell silent), not because either side refused the other: a
/// client stopped or killed while connecting, which is no one's fault.
fn gave_up(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ApplicationClosed(_)
            | quinn::ConnectionError::Reset
            | quinn::ConnectionError::TimedOut
    )
}

/// Accepts connections and hands each stream to `handle`.
pub(crate) async fn accept_loop<H, F>(endpoint: quinn::Endpoint, handle: H)
where
    H: Fn(quinn::SendStream, quinn::RecvStream, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    while let Some(incoming) = endpoint.accept().await {
        let handle = handle.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                // A peer that went away mid-handshake: nothing to tell.
                Err(e) if gave_up(&e) => {
                    tracing::debug!(error = %e, "a peer left during the handshake");
                    return;
                }
                Err(e) => {
                    // A peer without a certificate of this cluster ends here.
                    tracing::warn!(error = %e, "refused a connection");
                    return;
                }
            };
            let peer = conn.remote_address();
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let handle = handle.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(send, recv, peer).await {
                                tracing::debug!(%peer, error = %e, "stream ended");
                            }
                        });
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

/// How a master treats its workers.
#[derive(Clone, Debug)]
pub struct MasterOptions {
    /// How long an `ack=all` write waits for an in-sync worker before that
    /// worker is dropped from the in-sync set; also how long any worker may
    /// lack a commit before it is.
    pub ack_timeout: Duration,
    /// A worker further behind than this many bytes of log leaves the
    /// in-sync set at once; 0 (the default): no limit in bytes.
    pub max_lag_bytes: u64,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            ack_timeout: Duration::from_secs(2),
            max_lag_bytes: 0,
        }
    }
}

/// What a master of a failover cluster asks of its metadata group
/// (implemented over Raft by `cluster::member`; nodes do not name Raft).
pub trait MetaLink: Send + Sync + 'static {
    /// Proposes an in-sync change of the master of `term`; once committed,
    /// the group calls [`Master::committed`].
    fn propose(&self, term: u64, change: Transition<u64>);
    /// Where the log of a node that last followed `last_term` leaves the
    /// current master's.
    fn branch(&self, last_term: u64) -> Branch;
    /// Whether this node still leads its term (a majority of the group
    /// confirms it): asked before answering a read index.
    fn still_leads(&self) -> Pin<Box<dyn Future<Output = bool> + Send>>;
    /// Whether node `id` is a member (a removed one is shipped nothing).
    fn is_member(&self, id: u64) -> bool;
}

/// A master's appointment in a failover cluster.
pub struct Appointment {
    /// Its node id: strong reads that name another master are refused.
    pub node: u64,
    /// Its term.
    pub term: u64,
    /// Its end when appointed: workers join S only past it.
    pub start: Location,
    /// The committed in-sync set it takes over (waited for from the start).
    pub in_sync: Vec<u64>,
    /// Its metadata group.
    pub link: Arc<dyn MetaLink>,
}

/// The master: the only node that takes writes; ships its records to workers.
pub struct Master {
    /// Wakes the expiry task when a key gets an earlier deadline.
    expiry_wake: Arc<tokio::sync::Notify>,
    /// When the commit cursor moved, for the workers' lag in time.
    lag: Mutex<crate::proto::lag::LagClock>,
    /// The origin of `lag`'s clock.
    born: std::time::Instant,
    store: Arc<KeyedStore>,
    options: MasterOptions,
    /// The commit cursor's location (this master's epoch is fixed): the end
    /// of what is durable under the sync policy. No read, read index or
    /// `ack=all` counts a record past it, one a master crash could take back.
    commit: watch::Sender<Location>,
    /// Where shipping may read up to. Outside a failover cluster the commit
    /// cursor, so no worker holds a record a master crash takes back. In
    /// one, the end of each group once it is flushed, before its fsync: the
    /// workers write and fsync it while the master does, and the high-water
    /// mark (never past the commit cursor) keeps them from showing it
    /// before it is durable here too (PROTOCOL.md).
    shippable: watch::Sender<Location>,
    /// The lowest cursor applied by an in-sync worker (`ALL` if none is in
    /// sync): `ack=all` writes wait for it to pass their cursor.
    in_sync_applied: watch::Sender<Location>,
    /// Each worker's progress and the in-sync set, by node id (the
    /// decisions are in `proto::followers`; here they are applied and logged).
    workers: Mutex<Followers<u64>>,
    /// Each worker's address, by node id (for status).
    peers: Mutex<HashMap<u64, SocketAddr>>,
    /// Its node id (0: a master outside a failover cluster).
    node: u64,
    /// Its term (0: a master outside a failover cluster).
    term: u64,
    /// Its metadata group, in a failover cluster.
    link: Option<Arc<dyn MetaLink>>,
    /// Set once a newer master exists: no more writes or reads.
    deposed: AtomicBool,
    /// Set while it hands its role to another node: no new writes.
    paused: AtomicBool,
    /// Writes between their master check and their append: a handover
    /// waits for none to be left, so no write lands after it looked.
    appending: AtomicU64,
    /// Group commit's syncer thread; other sync policies make a write
    /// durable (or not) as it is appended, and need none.
    syncer: Option<crate::syncer::Syncer>,
}

/// A write admitted by [`Master::begin_write`], until its append is done.
struct Appending<'a>(&'a AtomicU64);

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Master {
    /// A master over `store`; its syncer thread starts under group commit.
    pub fn new(store: KeyedStore, options: MasterOptions) -> Arc<Master> {
        Master::build(Arc::new(store), options, None)
    }

    /// The master of a failover cluster, appointed with `store` at its end.
    pub fn appointed(
        store: Arc<KeyedStore>,
        options: MasterOptions,
        appointment: Appointment,
    ) -> Arc<Master> {
        Master::build(store, options, Some(appointment))
    }

    fn build(
        store: Arc<KeyedStore>,
        options: MasterOptions,
        appointment: Option<Appointment>,
    ) -> Arc<Master> {
        let commit = watch::channel(store.db().durable_end()).0;
        let wake = commit.clone();
        let shippable = watch::channel(store.db().durable_end()).0;
        let (ship_flushed, ship_committed) = (shippable.clone(), shippable.clone());
        let early = appointment.is_some();
        let mut workers =
            Followers::new(options.max_lag_bytes, store.db().config().file_size as u64);
        let (node, term, link) = match appointment {
            Some(a) => {
                workers = workers.starting_at(a.start);
                for w in a.in_sync {
                    workers.inherit(w);
                }
                (a.node, a.term, Some(a.link))
            }
            None => (0, 0, None),
        };
        let low = workers.wait_set_applied();
        let master = Arc::new(Master {
            syncer: (store.db().sync_policy() == ourdb::SyncPolicy::Group).then(|| {
                crate::syncer::Syncer::start(
                    &store,
                    move |end| {
                        if early {
                            advance(&ship_flushed, end)
                        }
                    },
                    move |end| {
                        advance(&wake, end);
                        advance(&ship_committed, end);
                    },
                )
            }),
            store,
            options,
            commit,
            shippable,
            in_sync_applied: watch::channel(low).0,
            workers: Mutex::new(workers),
            peers: Mutex::new(HashMap::new()),
            node,
            term,
            link,
            deposed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            appending: AtomicU64::new(0),
            expiry_wake: Arc::new(tokio::sync::Notify::new()),
            lag: Mutex::new(crate::proto::lag::LagClock::default()),
            born: std::time::Instant::now(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(expire_loop(
                Arc::downgrade(&master),
                master.expiry_wake.clone(),
            ));
            rt.spawn(lag_clock(
                Arc::downgrade(&master),
                master.commit.subscribe(),
            ));
        }
        master
    }

    /// Writes the expiry of every key whose deadline is at or before `now`
    /// (the master's clock decides; replicas apply the records), and waits
    /// until those writes are durable.
    async fn expire_due(&self, now: u64) -> Result<()> {
        let mut last = None;
        loop {
            let leases = self.store.due_leases(now, 256);
            if leases.is_empty() {
                break;
            }
            let mut ended = false;
            for id in leases {
                let appending = self.begin_write()?;
                let p = self
                    .append(move |s| s.end_lease_pending(id, Some(now)))
                    .await?;
                drop(appending);
                ended |= p.is_some();
                last = p.or(last);
            }
            // A round that ended none would come back the same: stop.
            if !ended {
                break;
            }
        }
        loop {
            let keys = self.store.due(now, 256);
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let appending = self.begin_write()?;
                let p = self.append(move |s| s.expire_pending(&key, now)).await?;
                drop(appending);
                last = p.or(last);
            }
        }
        if let Some(p) = last {
            self.durable(p).await?;
        }
        Ok(())
    }

    /// Its term (0 outside a failover cluster).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// A newer master exists: refuse writes and reads from now on; writes
    /// waiting for `ack=all` fail (their outcome is unknown).
    pub fn depose(&self) {
        self.deposed.store(true, Ordering::SeqCst);
        // Wakes the waiting writes, which then see the flag.
        self.in_sync_applied.send_modify(|_| {});
    }

    /// Admits a write: counted until its append is done (the guard's
    /// drop), refused once deposed or while handing over.
    fn begin_write(&self) -> Result<Appending<'_>> {
        // Counted before the check: a handover that sets `paused` and then
        // sees no write counted knows none can append any more.
        self.appending.fetch_add(1, Ordering::SeqCst);
        let guard = Appending(&self.appending);
        if self.deposed.load(Ordering::SeqCst) {
            return Err(Error::Remote {
                code: Code::NotMaster,
                message: format!("the master of term {} was replaced", self.term),
            });
        }
        if self.paused.load(Ordering::SeqCst) {
            return Err(Error::Remote {
                code: Code::NotMaster,
                message: format!(
                    "the master of term {} is handing over to another node: retry",
                    self.term
                ),
            });
        }
        Ok(guard)
    }

    /// In a failover cluster, refuses a write unless this master still
    /// leads: within its lease, or a quorum of members says so. Nothing is
    /// written then (`not_master`, which a client may send again): a master
    /// cut off from its quorum, or paused past a failover, takes no write
    /// that the new master would cut.
    async fn leads(&self) -> Result<()> {
        if !self.still_master().await {
            return Err(Error::Remote {
                code: Code::NotMaster,
                message: format!(
                    "the master of term {} does not reach a quorum of members: it takes no writes",
                    self.term
                ),
            });
        }
        Ok(())
    }

    /// Whether this master still leads: always outside a failover cluster;
    /// in one, not deposed and within its lease or confirmed by a quorum.
    async fn still_master(&self) -> bool {
        match &self.link {
            None => true,
            Some(link) => !self.deposed.load(Ordering::SeqCst) && link.still_leads().await,
        }
    }

    /// Acknowledges a durable write up to `cursor` per `ack`: for `all`
    /// once the in-sync workers applied it; for `master` once this master
    /// is seen to lead still (a master paused or cut off while it wrote
    /// may have been replaced: the write's fate is then unknown).
    async fn acknowledged(&self, cursor: Location, ack: Ack) -> Result<()> {
        if ack == Ack::All {
            return self.wait_all(cursor).await;
        }
        if !self.still_master().await {
            return Err(Error::Remote {
                code: Code::Indeterminate,
                message: format!(
                    "the master of term {} lost its quorum before the write was acknowledged: \
                     it may or may not have taken effect",
                    self.term
                ),
            });
        }
        Ok(())
    }

    /// A planned handover starts: new writes are refused (`not_master`,
    /// which a client may retry: nothing was written).
    pub fn pause_writes(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// The handover did not happen: writes are taken again.
    pub fn resume_writes(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// After [`Master::pause_writes`]: waits, up to `wait`, until every
    /// write taken is durable, acknowledged by the workers `ack=all` waits
    /// for (so none of them ends as `indeterminate`), and applied by
    /// worker `target`, which then holds all this master wrote; whether
    /// that happened.
    pub async fn drained_to(&self, target: u64, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.appending.load(Ordering::SeqCst) == 0 {
                let end = self.store.db().end();
                let durable = *self.commit.borrow() >= end;
                let waited = *self.in_sync_applied.borrow() >= end;
                let caught_up = self
                    .workers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|(n, w)| n == target && w.acked >= end);
                if durable && waited && caught_up {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The metadata group committed an in-sync change this master proposed.
    pub fn committed(&self, worker: u64, joined: bool) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.on_committed(worker, joined);
        self.publish_in_sync(&mut workers, &[]);
    }

    /// The high-water mark: below it nothing can be taken back by a
    /// failover (outside a failover cluster, the commit cursor).
    fn high_water(&self) -> Location {
        let commit = *self.commit.borrow();
        if self.link.is_none() {
            return commit;
        }
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .high_water(commit)
    }

    /// Logs the in-sync set's changes and has them committed (by the
    /// metadata group in a failover cluster, else at once), then publishes
    /// what every waited-for worker has applied (waking `ack=all` writes).
    fn publish_in_sync(&self, workers: &mut Followers<u64>, changes: &[Transition<u64>]) {
        for t in changes {
            match &self.link {
                Some(link) => link.propose(self.term, *t),
                None => workers.on_committed(t.worker(), t.joins()),
            }
            match t {
                Transition::Joined { worker, acked } => {
                    tracing::info!(node = worker, cursor = %acked, "worker caught up: in sync")
                }
                Transition::Lagged { worker, acked } => {
                    tracing::warn!(node = worker, cursor = %acked, "worker lags too far behind: out of sync")
                }
                Transition::TimedOut { worker, acked } => {
                    tracing::warn!(node = worker, cursor = %acked, "no acknowledgement in time: out of sync")
                }
                Transition::Departed { worker } => {
                    tracing::info!(node = worker, "worker left: out of sync")
                }
            }
        }
        let low = workers.wait_set_applied();
        self.in_sync_applied.send_if_modified(|v| {
            let changed = *v != low;
            *v = low;
            changed
        });
    }

    /// The master's store.
    pub fn store(&self) -> &Arc<KeyedStore> {
        &self.store
    }

    /// The commit cursor: everything before it is durable under the sync
    /// policy (the read index, and what `ack=all` and workers count).
    pub fn commit_cursor(&self) -> Cursor {
        Cursor::new(self.epoch(), *self.commit.borrow())
    }

    fn epoch(&self) -> u64 {
        self.store.db().meta().epoch
    }

    /// Waits (up to the read wait) until the commit cursor reaches `min`: a
    /// read at a cursor of a write still in flight. False if it did not.
    pub async fn wait_committed(&self, min: Cursor) -> bool {
        let now = |c: Cursor| proto::shipping::read_at(c, min) == ReadAt::Now;
        if now(self.commit_cursor()) {
            return true;
        }
        let epoch = self.epoch();
        let mut rx = self.commit.subscribe();
        matches!(
            tokio::time::timeout(READ_WAIT, rx.wait_for(|c| now(Cursor::new(epoch, *c))))
                .await
                .map(|r| r.map(|_| ())),
            Ok(Ok(()))
        )
    }

    /// Each subscribed worker: address, acknowledged cursor, in sync or not.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        let epoch = self.epoch();
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, w)| WorkerStatus {
                addr: peers.get(&n).map_or(format!("node {n}"), |a| a.to_string()),
                acked: Cursor::new(epoch, w.acked),
                in_sync: w.in_sync(),
                lag_ms: self.lag_of(w.acked).as_millis() as u64,
            })
            .collect()
    }

    /// How long the oldest commit past `acked` has waited.
    fn lag_of(&self, acked: Location) -> Duration {
        self.lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lag(acked, self.born.elapsed())
    }

    /// Drops `node` from the in-sync set if the oldest commit it lacks has
    /// waited longer than the ack timeout.
    fn check_lag(&self, node: u64) {
        let acked = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acked(node);
        let Some(acked) = acked else {
            return;
        };
        // Measured outside the followers' lock (the lag clock has its own);
        // a worker that acknowledged meanwhile is left for the next look.
        let lagging_for = self.lag_of(acked);
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let change = workers.on_lag(node, acked, lagging_for, self.options.ack_timeout);
        self.publish_in_sync(&mut workers, change.as_slice());
    }

    fn on_ack(&self, node: u64, cursor: Location) {
        let commit = *self.commit.borrow();
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let change = workers.on_ack(node, cursor, commit);
        self.publish_in_sync(&mut workers, change.as_slice());
    }

    /// Waits until every waited-for worker applied `target`; a worker that
    /// does not within the timeout is proposed for removal, and the write is
    /// acknowledged once that removal is committed (at once outside a
    /// failover cluster). A master deposed meanwhile fails the write.
    async fn wait_all(&self, target: Location) -> Result<()> {
        let mut applied = self.in_sync_applied.subscribe();
        loop {
            let deposed = &self.deposed;
            let reached = tokio::time::timeout(
                self.options.ack_timeout,
                applied.wait_for(|low| *low >= target || deposed.load(Ordering::SeqCst)),
            )
            .await;
            if self.deposed.load(Ordering::SeqCst) {
                // Written here, but maybe not past the branch point the new
                // master keeps: the client must not take it as refused.
                return Err(Error::Remote {
                    code: Code::Indeterminate,
                    message: format!(
                        "the master of term {} was replaced before the write was acknowledged: \
                         it may or may not have taken effect",
                        self.term
                    ),
                });
            }
            if matches!(reached, Ok(Ok(_))) {
                return Ok(());
            }
            let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = workers.on_ack_timeout(target);
            self.publish_in_sync(&mut workers, &dropped);
            if self.link.is_none() {
                return Ok(());
            }
        }
    }

    /// The store's view of a wire expectation; `None` when it cannot hold
    /// (a version of another epoch).
    fn expectation(&self, e: Expect) -> Option<ourdb::keyed::Expect> {
        use ourdb::keyed::Expect as E;
        let epoch = self.store.db().meta().epoch;
        // Versions of another epoch name no record of this log.
        let ours = |vs: Vec<Version>| -> Vec<Location> {
            vs.into_iter()
                .filter(|v| v.epoch == epoch)
                .map(|v| v.at)
                .collect()
        };
        match e {
            Expect::Any => Some(E::Any),
            Expect::Absent => Some(E::Absent),
            Expect::Present => Some(E::Present),
            Expect::Version(v) if v.epoch == epoch => Some(E::Version(v.at)),
            Expect::Version(_) => None,
            Expect::OneOf(vs) => Some(ours(vs)).filter(|l| !l.is_empty()).map(E::OneOf),
            Expect::NoneOf(vs) => Some(E::NoneOf(ours(vs))),
        }
    }

    /// Stores `value` under `key` if `expect` holds, wakes the shipping
    /// streams, and returns the end cursor and the new version once the write
    /// is acknowledged per `ack`; `None` if the expectation failed.
    pub async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        ack: Ack,
        expect: Expect,
        ttl_ms: u64,
        lease: u32,
    ) -> Result<Option<(Cursor, Version)>> {
        self.leads().await?;
        let appending = self.begin_write()?;
        let Some(expect) = self.expectation(expect) else {
            return Ok(None);
        };
        let appended = if lease != 0 {
            let tie = ourdb::keyed::Tie::Lease(lease);
            // The clock read under the write lock: a lease whose deadline
            // has passed takes no key, even before the expiry task ends it.
            self.append(move |s| s.put_tied_pending(&key, &value, expect, tie, now_ms()))
                .await?
        } else if ttl_ms == 0 {
            self.append(move |s| s.put_if_pending(&key, &value, expect))
                .await?
        } else {
            // The deadline is the master's: its clock alone decides expiry.
            let deadline = now_ms().saturating_add(ttl_ms);
            let put = self
                .append(move |s| s.put_expiring_pending(&key, &value, expect, deadline))
                .await?;
            self.expiry_wake.notify_one();
            put
        };
        drop(appending);
        let Some((at, pending)) = appended else {
            return Ok(None);
        };
        let cursor = self.store.db().end();
        self.durable(pending).await?;
        self.acknowledged(cursor, ack).await?;
        let epoch = self.epoch();
        Ok(Some((Cursor::new(epoch, cursor), Version { epoch, at })))
    }

    /// Grants, keeps alive, revokes or describes a lease (the master's clock
    /// sets deadlines): the end cursor and the lease, acknowledged per
    /// `ack` when it wrote. `None` if the lease named does not live.
    pub async fn lease(&self, op: LeaseOp, ack: Ack) -> Result<Option<(Cursor, LeaseInfo)>> {
        if !matches!(op, LeaseOp::Info { .. }) {
            self.leads().await?;
        }
        // Deadlines and what remains of them by the clock read under the
        // write lock (a write may wait for the lock behind a large one).
        let info = |l: ourdb::keyed::LeaseInfo| LeaseInfo {
            id: l.id,
            ttl_ms: l.ttl_ms,
            remaining_ms: l.deadline.saturating_sub(now_ms()),
            key_count: l.key_count as u32,
            keys: l.keys,
        };
        let all = ourdb::keyed::MAX_LEASE_KEYS;
        let (lease, pending) = match op {
            LeaseOp::Info { id } => {
                // One past its deadline is ended first, as for a read index.
                let now = now_ms();
                if self.store.next_deadline().is_some_and(|d| d <= now) {
                    self.expire_due(now).await?;
                }
                match self.store.lease(id, all) {
                    Some(l) => (info(l), None),
                    None => return Ok(None),
                }
            }
            LeaseOp::Grant { ttl_ms } => {
                let appending = self.begin_write()?;
                let (l, p) = self
                    .append(move |s| s.lease_grant_pending(ttl_ms, now_ms()))
                    .await?;
                drop(appending);
                self.expiry_wake.notify_one();
                (info(l), Some(p))
            }
            LeaseOp::KeepAlive { id } => {
                let appending = self.begin_write()?;
                let kept = self
                    .append(move |s| s.lease_keep_alive_pending(id, now_ms()))
                    .await?;
                drop(appending);
                match kept {
                    Some((l, p)) => (info(l), Some(p)),
                    None => return Ok(None),
                }
            }
            LeaseOp::Revoke { id } => {
                let Some(before) = self.store.lease(id, all) else {
                    return Ok(None);
                };
                let appending = self.begin_write()?;
                let ended = self.append(move |s| s.end_lease_pending(id, None)).await?;
                drop(appending);
                // Ended by its deadline meanwhile: gone with its keys all
                // the same, which is what was asked.
                let ended_info = LeaseInfo {
                    remaining_ms: 0,
                    ..info(before)
                };
                (ended_info, ended)
            }
        };
        let cursor = self.store.db().end();
        self.acknowledge(pending, cursor, ack).await?;
        Ok(Some((Cursor::new(self.epoch(), cursor), lease)))
    }

    /// Answers a request that may have written: once its write (if any)
    /// is durable and, for `ack=all`, applied by the in-sync workers up to
    /// `cursor`; one that only read once what it read is durable.
    async fn acknowledge(
        &self,
        pending: Option<ourdb::Pending>,
        cursor: Location,
        ack: Ack,
    ) -> Result<()> {
        match pending {
            Some(p) => {
                self.durable(p).await?;
                self.acknowledged(cursor, ack).await
            }
            None => Ok(self.after_read(Ok(())).await.map(|_| ())?),
        }
    }

    /// Applies a transaction (see [`KeyedStore::txn_pending`]): the end
    /// cursor, and the results or the index of the condition that did not
    /// hold. A transaction that writes is acknowledged per `ack`; one that
    /// only read (or failed a condition) is answered once what it read is
    /// durable, as a read on the master is.
    pub async fn transact(
        &self,
        conditions: Vec<TxnCondition>,
        ops: Vec<TxnOp>,
        ack: Ack,
    ) -> Result<(Cursor, std::result::Result<Vec<TxnResult>, u32>)> {
        use ourdb::keyed::{Condition, Op, OpResult, TxnOutcome};
        self.leads().await?;
        let appending = self.begin_write()?;
        let conds: Vec<Condition> = conditions
            .into_iter()
            .map(|c| match c {
                // A version of another epoch names no record here: it
                // cannot hold (an empty list matches nothing).
                TxnCondition::Version { key, expect } => Condition::Version(
                    key,
                    self.expectation(expect)
                        .unwrap_or(ourdb::keyed::Expect::OneOf(Vec::new())),
                ),
                TxnCondition::ValueIs { key, value } => Condition::ValueIs(key, value),
            })
            .collect();
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => Op::Put(key, value),
                TxnOp::Delete { key } => Op::Delete(key),
                TxnOp::Get { key } => Op::Get(key),
            })
            .collect();
        // Its reads (gets, value conditions) may be of large values: on the
        // blocking pool, not the runtime.
        let store = self.store.clone();
        let outcome = blocking(move || Ok(store.txn_pending(&conds, &ops)?)).await?;
        drop(appending);
        let epoch = self.epoch();
        let (results, pending) = match outcome {
            TxnOutcome::Failed(i) => (Err(i as u32), None),
            TxnOutcome::Applied(results, pending) => (Ok(results), pending),
        };
        let cursor = self.store.db().end();
        self.acknowledge(pending, cursor, ack).await?;
        let version = |at| Version { epoch, at };
        let results = results.map(|rs| {
            rs.into_iter()
                .map(|r| match r {
                    OpResult::Put(at) => TxnResult::Put {
                        version: version(at),
                    },
                    OpResult::Delete(existed) => TxnResult::Delete { existed },
                    OpResult::Get(v) => TxnResult::Get {
                        value: v.map(|(v, at)| (v, version(at))),
                    },
                })
                .collect()
        });
        Ok((Cursor::new(epoch, cursor), results))
    }

    /// Runs an append: in place, as under group commit it is memory work
    /// (the fsync is the syncer's, see syncer.rs) and under flush one
    /// write(2); under `always` (an fsync each), or while a checkpoint or a
    /// file switch holds the writer lock, on the blocking pool.
    async fn append<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyedStore) -> ourdb::Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.store.db();
        if db.sync_policy() == ourdb::SyncPolicy::Always || db.is_busy() {
            let store = self.store.clone();
            return blocking(move || Ok(f(&store)?)).await;
        }
        Ok(f(&self.store)?)
    }

    /// Waits until an appended write is durable under the sync policy, and
    /// moves the commit cursor (which wakes the shipping streams): under
    /// group commit the syncer does both; under the other policies the
    /// append itself did what the policy asks.
    async fn durable(&self, pending: ourdb::Pending) -> Result<()> {
        match &self.syncer {
            Some(s) => s.wait(pending).await,
            None => {
                let end = self.store.db().durable_end();
                advance(&self.commit, end);
                advance(&self.shippable, end);
                Ok(())
            }
        }
    }

    /// Deletes `key` if `expect` holds: whether it existed and the end
    /// cursor, acknowledged per `ack`; `None` if the expectation failed.
    pub async fn delete(
        &self,
        key: String,
        ack: Ack,
        expect: Expect,
    ) -> Result<Option<(bool, Cursor)>> {
        self.leads().await?;
        let appending = self.begin_write()?;
        let Some(expect) = self.expectation(expect) else {
            return Ok(None);
        };
        let deleted = self
            .append(move |s| s.delete_if_pending(&key, expect))
            .await?;
        drop(appending);
        let Some(pending) = deleted else {
            return Ok(None);
        };
        let cursor = self.store.db().end();
        let existed = pending.is_some();
        if let Some(p) = pending {
            self.durable(p).await?;
            self.acknowledged(cursor, ack).await?;
        } else if ack == Ack::All {
            self.wait_all(cursor).await?;
        }
        Ok(Some((existed, Cursor::new(self.epoch(), cursor))))
    }

    /// Serves until the endpoint closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        accept_loop(endpoint, move |send, recv, peer| {
            let me = self.clone();
            async move { me.stream(send, recv, peer).await }
        })
        .await
    }

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
        self.opened(first, send, frames, peer).await
    }

    /// Serves a stream that began with `first`.
    pub(crate) async fn opened(
        self: Arc<Self>,
        first: Frame,
        send: quinn::SendStream,
        frames: FrameReader,
        peer: SocketAddr,
    ) -> Result<()> {
        match Opening::from(first) {
            Opening::Subscribe(sub) => self.ship(send, frames, peer, sub).await,
            Opening::Snapshot(_) => self.send_snapshot(send, peer).await,
            Opening::Pipeline => crate::pipeline::serve(self, send, frames).await,
            other => crate::pipeline::serve_one(self, send, other.into()).await,
        }
    }

    /// The reply to a one-reply request: by sub-protocol, each request
    /// answered by its handler below.
    pub(crate) async fn reply(self: Arc<Self>, req: Frame) -> Frame {
        match Call::from_frame(req) {
            Ok(Call::Write(w)) => w.answer(&*self).await,
            Ok(Call::Read(r)) => r.answer(&*self).await,
            Ok(Call::Status(s)) => s.answer(&*self).await,
            Ok(other @ Call::Changes(_)) => refuse_on_master(other.into()),
            Ok(Call::Raft(_)) => no_metadata_group(),
            Err(other) => refuse_on_master(other),
        }
    }

    /// Holds a read's answer until everything the read could have seen is
    /// durable (`proto::shipping::master_may_answer`): a master's store
    /// holds appended records before the syncer has made them durable, and
    /// a value a crash can take back must not be answered.
    /// With the answer, the cursor of the end the read may have seen.
    async fn after_read<T>(&self, answer: Result<T, Failed>) -> Result<(T, Cursor), Failed> {
        if self.deposed.load(Ordering::SeqCst) {
            return Err(failed(
                Code::NotMaster,
                format!("the master of term {} was replaced", self.term),
            ));
        }
        let seen = Cursor::new(self.epoch(), self.store.db().end());
        if self.link.is_some() {
            // In a failover cluster the bound is the high-water mark, which
            // moves with the in-sync workers' acknowledgements.
            let mut marks = self.in_sync_applied.subscribe();
            let wait = async {
                loop {
                    if proto::shipping::master_may_answer(self.high_water(), seen.at) {
                        return;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), marks.changed()).await;
                }
            };
            if tokio::time::timeout(READ_WAIT, wait).await.is_ok() {
                return answer.map(|a| (a, seen));
            }
            return Err(failed(
                Code::NotReached,
                format!(
                    "the records this read saw (up to {seen}) are above the high-water mark {} \
                     (an in-sync worker lags)",
                    self.high_water()
                ),
            ));
        } else if proto::shipping::master_may_answer(self.commit_cursor().at, seen.at)
            || self.wait_committed(seen).await
        {
            return answer.map(|a| (a, seen));
        }
        Err(failed(
            Code::NotReached,
            format!(
                "the records this read saw are not durable yet: commit cursor {}, end {seen}",
                self.commit_cursor()
            ),
        ))
    }

    /// The read index: the commit cursor, taken once keys past their
    /// deadline are expired, and checked against a newer master.
    async fn read_index_now(&self) -> std::result::Result<Cursor, Failed> {
        // Keys past their deadline are expired first, so that no strong
        // read after the deadline sees them.
        let now = now_ms();
        if self.store.next_deadline().is_some_and(|d| d <= now) {
            self.expire_due(now).await.map_err(write_error)?;
        }
        // Read before the leadership check: everything committed by then
        // is in it, and the check then shows no newer master existed.
        let cursor = self.commit_cursor();
        if !self.still_master().await {
            return Err(failed(
                Code::NotMaster,
                format!("the master of term {} no longer leads", self.term),
            ));
        }
        Ok(cursor)
    }

    /// Waits until the commit cursor reaches what a read asks for: `min`,
    /// or for a strong read ([`Cursor::strong`]) the read index now.
    async fn reach(&self, min: Cursor) -> std::result::Result<(), Failed> {
        if let Some(expected) = min.strong_master() {
            of_master(expected, self.node)?;
            self.read_index_now().await.map(|_| ())
        } else if self.wait_committed(min).await {
            Ok(())
        } else {
            Err(self.not_reached(min))
        }
    }

    /// The answer to a read at a cursor this master has not committed: in
    /// another epoch, or past its end (no write made it).
    fn not_reached(&self, min: Cursor) -> Failed {
        failed(
            Code::NotReached,
            format!(
                "no write made cursor {min}: the master's commit cursor is {}",
                self.commit_cursor()
            ),
        )
    }

    /// Sends a copy of every data file up to the high-water mark (outside a
    /// failover cluster the commit cursor): what a read may show, so a
    /// worker that installs it may answer from all of it, and an online
    /// backup never holds a record a failover takes back. Files are
    /// append-only, so the bytes before the end never change while they go.
    async fn send_snapshot(&self, mut send: quinn::SendStream, peer: SocketAddr) -> Result<()> {
        let store = self.store.clone();
        // A mark of nothing (a new master whose in-sync workers have not
        // acknowledged yet) sends the empty log: data files begin at offset 1.
        let upto = self.high_water().max(Location::new(0, 1));
        let (end, epoch) = blocking(move || {
            store.db().flush()?;
            Ok((upto, store.db().meta().epoch))
        })
        .await?;
        tracing::info!(%peer, %end, epoch, "sending a snapshot");
        let mut pos = ourdb::SnapshotPos::default();
        let mut progress = SnapshotProgress::new("sent");
        loop {
            let store = self.store.clone();
            let chunk =
                blocking(move || Ok(store.db().snapshot_chunk(end, pos, SEGMENT_BYTES)?)).await?;
            let Some(chunk) = chunk else { break };
            pos = chunk.next_pos();
            progress.add(chunk.bytes.len());
            let f = snapshot::Chunk {
                file_nr: chunk.file_nr,
                offset: chunk.offset,
                bytes: chunk.bytes,
            };
            frame::write(&mut send, &f.into()).await?;
        }
        frame::write(&mut send, &snapshot::Done { epoch, end }.into()).await?;
        let _ = send.finish();
        progress.done();
        Ok(())
    }

    /// Where shipping to a log that ends at `theirs`, with `tail` just
    /// before it, goes on from; or why that log is no prefix of this one
    /// (`Code::Epoch`, `Code::Cursor`: it needs a snapshot). In a failover
    /// cluster, a log that followed term `last_term`'s master may also hold
    /// records past where that master's log left this one's (a cut in place
    /// comes with truncation); with `None` (a log of no known term: a node
    /// joining with data) only its bytes are compared.
    pub(crate) async fn fits(
        &self,
        theirs: Cursor,
        tail: Vec<u8>,
        last_term: Option<u64>,
    ) -> std::result::Result<Location, (Code, String)> {
        let ours = self.store.db().meta().epoch;
        let store = self.store.clone();
        let n = tail.len();
        let before = blocking(move || Ok(store.db().bytes_before(theirs.at, n)?)).await;
        let tail_same = matches!(&before, Ok(b) if *b == tail);
        let from = match proto::shipping::subscribe(ours, theirs, tail_same) {
            Subscription::Ship(from) => from,
            Subscription::Refuse(code, why) => return Err((code, why)),
        };
        let (Some(link), Some(last_term)) = (&self.link, last_term) else {
            return Ok(from);
        };
        match link.branch(last_term) {
            Branch::Same => Ok(from),
            Branch::At(c) if theirs <= c => Ok(from),
            Branch::At(c) => Err((
                Code::Cursor,
                format!(
                    "a log of term {last_term} up to {theirs} leaves term {}'s at {c}",
                    self.term
                ),
            )),
            Branch::Unknown => Err((
                Code::Cursor,
                format!("term {last_term} is no longer in the history"),
            )),
        }
    }

    /// Streams records from `cursor`, then tails new ones, until the worker goes.
    async fn ship(
        self: Arc<Self>,
        mut send: quinn::SendStream,
        mut frames: FrameReader,
        peer: SocketAddr,
        sub: shipping::Subscribe,
    ) -> Result<()> {
        let shipping::Subscribe {
            epoch,
            mut cursor,
            tail,
            node,
            last_term,
        } = sub;
        // A removed member that comes back still thinks it is one: shipping
        // to it would count its acknowledgements for a node the cluster no
        // longer has.
        if self
            .link
            .as_ref()
            .is_some_and(|l| node != 0 && !l.is_member(node))
        {
            let why = format!("node {node} is not a member of this cluster (removed?)");
            tracing::warn!(%peer, node, "{why}: refused its subscription");
            frame::write(&mut send, &failed(Code::BadRequest, why).into()).await?;
            return Ok(());
        }
        match self
            .fits(Cursor::new(epoch, cursor), tail, Some(last_term))
            .await
        {
            Ok(from) => cursor = from,
            Err((code, why)) => {
                tracing::info!(%peer, node, last_term, "{why}: the worker needs a snapshot");
                frame::write(&mut send, &failed(code, why).into()).await?;
                return Ok(());
            }
        }
        // A worker is known by its node id (the address it connects from
        // changes with every connection).
        let key = if node != 0 { node } else { peer_key(peer) };
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, peer);
        tracing::info!(%peer, %cursor, node, last_term, "worker subscribed");
        self.on_ack(key, cursor);
        let me = self.clone();
        let acks = tokio::spawn(async move {
            // Anything but an acknowledgement ends the stream.
            while let Ok(Some(f)) = frames.next().await {
                let Ok(shipping::Ack { cursor }) = shipping::Ack::from_frame(f) else {
                    break;
                };
                me.on_ack(key, cursor);
            }
        });
        // A worker that falls behind in time leaves the in-sync set even
        // when no write waits for it (it holds the high-water mark back),
        // and even while the stream to it is blocked.
        let lag_checks = {
            let me = self.clone();
            let every = (self.options.ack_timeout / 4).max(Duration::from_millis(20));
            crate::AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    me.check_lag(key);
                }
            }))
        };
        let mut changed = self.shippable.subscribe();
        // In a failover cluster the mark also moves with acknowledgements
        // and with the master's own fsync: a move is sent on its own (a
        // segment without records).
        let mut marks = self.in_sync_applied.subscribe();
        let mut committed = self.commit.subscribe();
        // None until the first segment, which goes out at once (a mark if
        // there are no records): with it the worker knows this master took
        // its subscription, and asks it for strong reads' read index.
        let mut sent_hw: Option<Location> = None;
        let result = loop {
            let upto = *changed.borrow_and_update();
            marks.borrow_and_update();
            committed.borrow_and_update();
            if self.deposed.load(Ordering::SeqCst) {
                break Ok(());
            }
            // Records just written sit in the page cache (or the writer's
            // buffer): a copy, cheaper in place than a hop to the blocking pool.
            let seg = match self
                .store
                .db()
                .read_records_upto(cursor, upto, SEGMENT_BYTES)
                .map_err(Error::from)
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = frame::write(&mut send, &failed(Code::Cursor, &e).into()).await;
                    break Err(e);
                }
            };
            let hw = self.high_water();
            if seg.bytes.is_empty() {
                cursor = seg.next;
                if acks.is_finished() {
                    break Ok(());
                }
                if sent_hw.is_none() || self.link.is_some() && Some(hw) > sent_hw {
                    let f = shipping::Segment {
                        term: self.term,
                        hw,
                        start: cursor,
                        next: cursor,
                        end: upto,
                        records: Vec::new(),
                    };
                    if let Err(e) = frame::write(&mut send, &f.into()).await {
                        break Err(e);
                    }
                    sent_hw = Some(hw);
                    continue;
                }
                // Woken by a write (or a new mark); the timeout also notices
                // a worker gone quiet.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    tokio::select! {
                        _ = changed.changed() => {}
                        _ = marks.changed(), if self.link.is_some() => {}
                        _ = committed.changed(), if self.link.is_some() => {}
                    }
                })
                .await;
                continue;
            }
            let f = shipping::Segment {
                term: self.term,
                hw,
                start: seg.start,
                next: seg.next,
                end: upto,
                records: seg.bytes,
            };
            if let Err(e) = frame::write(&mut send, &f.into()).await {
                break Err(e);
            }
            sent_hw = Some(hw);
            cursor = seg.next;
        };
        acks.abort();
        drop(lag_checks);
        {
            let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            let gone = workers.remove(key);
            self.publish_in_sync(&mut workers, gone.as_slice());
        }
        tracing::info!(%peer, "worker left");
        result
    }
}

/// Sends a subscription's acknowledgements, each once what it covers is
/// durable; under group commit, those that queued up meanwhile go out as
/// the last of them (they are cumulative).
async fn acknowledge(
    mut send: quinn::SendStream,
    syncer: Option<Arc<crate::syncer::Syncer>>,
    mut acks: tokio::sync::mpsc::UnboundedReceiver<(Option<ourdb::Pending>, Location)>,
) -> Result<()> {
    while let Some(mut next) = acks.recv().await {
        if let Some(s) = &syncer {
            while let Ok(later) = acks.try_recv() {
                next = (later.0.or(next.0), later.1);
            }
            if let Some(p) = next.0 {
                s.wait(p).await?;
            }
        }
        let cursor = next.1;
        frame::write(&mut send, &shipping::Ack { cursor }.into()).await?;
    }
    // The reader ended first: its result is the subscription's.
    std::future::pending().await
}

/// A worker: follows the master's log and serves reads at a cursor.
pub struct Worker {
    /// Replaced whole when a snapshot arrives.
    store: std::sync::RwLock<Arc<KeyedStore>>,
    master: SocketAddr,
    /// What this worker has applied, in the epoch of its store.
    applied: watch::Sender<Cursor>,
    /// The high-water mark its master last sent (in the epoch of its
    /// store): reads answer only once it covers what they read.
    hw: watch::Sender<Location>,
    /// The master's end in the first segment since this worker (or its
    /// last snapshot) began: reads at older epochs' cursors wait for it
    /// (`proto::shipping::worker_read_at`).
    floor: std::sync::Mutex<Option<Cursor>>,
    /// Testing aid: a pause before each segment is applied (lagging replica).
    apply_delay_ms: std::sync::atomic::AtomicU64,
    /// Its node id, sent with each subscription.
    node_id: u64,
    /// The term whose master's log it last followed (0: none).
    last_term: AtomicU64,
    /// In a failover cluster: the newest term this node knows of (segments
    /// of an older one are refused), and where the last term is kept.
    failover: Option<FailoverWorker>,
    /// Set once the node left this role (`retire`): a role change builds a
    /// new worker, and this one's watches must end, not wait for changes
    /// it will never apply.
    retired: watch::Sender<bool>,
    /// Requests to the master it follows, on the connection it follows
    /// over (none while it is not connected): strong reads' read index.
    to_master: Arc<Mutex<Option<Arc<Pipe>>>>,
    /// Strong reads waiting for a read index from the master.
    rounds: crate::rounds::ReadIndexRounds,
}

/// Empties a worker's slot for requests to its master when its
/// subscription ends: strong reads then fail at once instead of waiting on
/// a connection that is gone.
struct ForgetMaster<'a>(&'a Mutex<Option<Arc<Pipe>>>);

impl Drop for ForgetMaster<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A worker's part in a failover cluster.
pub struct FailoverWorker {
    /// The node's id in the cluster.
    pub node_id: u64,
    /// The term whose master's log the node last followed.
    pub last_term: u64,
    /// The newest term the node knows of; shared with its metadata group.
    pub fence: Arc<AtomicU64>,
    /// Keeps a newly followed term durable before its records are applied.
    pub remember: Arc<dyn Fn(u64) -> std::io::Result<()> + Send + Sync>,
    /// The term of the master it follows: a snapshot from that master
    /// makes its log that term's.
    pub following: u64,
    /// The node id of that master: strong reads that name another one
    /// are refused.
    pub master: u64,
}

impl Worker {
    /// A worker over `store` that follows the master at `master`.
    pub fn new(store: KeyedStore, master: SocketAddr) -> Arc<Worker> {
        Worker::build(Arc::new(store), master, None)
    }

    /// A worker of a failover cluster, following the master at `master`.
    /// It answers reads only below the mark its master sends (none yet).
    pub fn following(
        store: Arc<KeyedStore>,
        master: SocketAddr,
        failover: FailoverWorker,
    ) -> Arc<Worker> {
        Worker::build(store, master, Some(failover))
    }

    fn build(
        store: Arc<KeyedStore>,
        master: SocketAddr,
        failover: Option<FailoverWorker>,
    ) -> Arc<Worker> {
        let end = Cursor::new(store.db().meta().epoch, store.db().end());
        let (node_id, last_term) = match &failover {
            Some(f) => (f.node_id, f.last_term),
            None => (random_id(), 0),
        };
        // Outside a failover cluster nothing the master made durable is
        // taken back, and a worker applies only that: what it holds at
        // start may be answered. In one, only what the master's mark covers.
        let hw = if failover.is_some() {
            Location::NONE
        } else {
            end.at
        };
        Arc::new(Worker {
            store: std::sync::RwLock::new(store),
            master,
            node_id,
            last_term: AtomicU64::new(last_term),
            failover,
            applied: watch::channel(end).0,
            hw: watch::channel(hw).0,
            floor: std::sync::Mutex::new(None),
            apply_delay_ms: std::sync::atomic::AtomicU64::new(0),
            retired: watch::channel(false).0,
            to_master: Arc::default(),
            rounds: Default::default(),
        })
    }

    /// This node no longer follows as this worker (it became master, or
    /// follows another master as a new one): its watch streams end with
    /// `NotMaster`, so their clients watch again, where the node is now.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// The store as it is now (a snapshot replaces it).
    pub fn store(&self) -> Arc<KeyedStore> {
        self.store.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes this worker lag: it waits this long before applying each
    /// segment (for tests of read consistency).
    pub fn set_apply_delay(&self, d: Duration) {
        self.apply_delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The cursor up to which records are applied.
    pub fn applied(&self) -> Cursor {
        *self.applied.borrow()
    }

    /// Follows the applied cursor as it moves.
    pub fn watch_applied(&self) -> watch::Receiver<Cursor> {
        self.applied.subscribe()
    }

    /// Follows the master and serves reads until the endpoint closes.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint) {
        let follower = {
            let me = self.clone();
            let endpoint = endpoint.clone();
            tokio::spawn(async move { me.follow(endpoint).await })
        };
        let me = self.clone();
        accept_loop(endpoint, move |send, recv, peer| {
            let me = me.clone();
            async move { me.stream(send, recv, peer).await }
        })
        .await;
        follower.abort();
    }

    /// Follows the master until dropped (a failover cluster's member runs
    /// this itself, and serves on its own endpoint).
    pub async fn follow(self: Arc<Self>, endpoint: quinn::Endpoint) {
        loop {
            match self.follow_once(&endpoint).await {
                Ok(()) => tracing::info!(master = %self.master, "master closed the log stream"),
                Err(e) => {
                    tracing::warn!(master = %self.master, error = %e, "following the master failed; retrying")
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn follow_once(&self, endpoint: &quinn::Endpoint) -> Result<()> {
        let conn = endpoint
            .connect(self.master, SERVER_NAME)
            .map_err(quic)?
            .await
            .map_err(quic)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(quic)?;
        // The store is the truth at each subscription (a crash or a
        // snapshot may have moved it).
        let store = self.store();
        let epoch = store.db().meta().epoch;
        let mut follower = Follower::new(epoch, store.db().end());
        let cursor = follower.subscribe();
        let tail = blocking(move || Ok(store.db().bytes_before(cursor.at, TAIL_CHECK)?)).await?;
        let sub = shipping::Subscribe {
            epoch,
            cursor: cursor.at,
            tail,
            node: self.node_id,
            last_term: self.last_term.load(Ordering::SeqCst),
        };
        frame::write(&mut send, &sub.into()).await?;
        tracing::info!(master = %self.master, %cursor, "subscribed");
        let _forget = ForgetMaster(&self.to_master);
        // Acknowledgements go out once what they cover is durable: under
        // group commit a syncer thread of this subscription fsyncs while
        // the next segments are applied, so neither the apply loop nor a
        // runtime thread waits for the disk.
        let syncer = (self.store().db().sync_policy() == ourdb::SyncPolicy::Group)
            .then(|| Arc::new(crate::syncer::Syncer::start(&self.store(), |_| (), |_| ())));
        let (acks, pending_acks) = tokio::sync::mpsc::unbounded_channel();
        let acking = acknowledge(send, syncer.clone(), pending_acks);
        let reading = self.read_segments(&conn, &mut recv, epoch, follower, acks, syncer);
        tokio::select! {
            r = reading => r,
            r = acking => r,
        }
    }

    /// The segments of one subscription, applied in order; each
    /// acknowledgement is passed to `acks` with what it waits for.
    async fn read_segments(
        &self,
        conn: &quinn::Connection,
        recv: &mut quinn::RecvStream,
        epoch: u64,
        mut follower: Follower,
        acks: tokio::sync::mpsc::UnboundedSender<(Option<ourdb::Pending>, Location)>,
        syncer: Option<Arc<crate::syncer::Syncer>>,
    ) -> Result<()> {
        let ack = |pending, at| {
            acks.send((pending, at))
                .map_err(|_| Error::Protocol("the acknowledgement stream ended".into()))
        };
        let mut stream_term = None;
        // Progress of a long catch-up, for the log.
        let mut catch_up = proto::lag::CatchUp::default();
        let (mut applied_bytes, started) = (0u64, std::time::Instant::now());
        let file_size = self.store().db().config().file_size as u64;
        loop {
            let segment = frame::read(recv)
                .await?
                .map(<shipping::Subscribe as msg::Streamed>::Item::try_from);
            if let Some(Ok(s)) = &segment {
                self.note_floor(Cursor::new(epoch, s.end));
                if stream_term.is_none()
                    && self.failover.as_ref().is_none_or(|f| f.following == s.term)
                {
                    // The master took the subscription and streams the term
                    // this worker follows: from now on strong reads ask it
                    // for its read index, on this connection (not on one to
                    // whatever answers at its address later).
                    let pipe = Arc::new(Pipe::open(conn, self.master).await?);
                    *self.to_master.lock().unwrap_or_else(|e| e.into_inner()) = Some(pipe);
                }
            }
            let recovery = match segment {
                Some(Ok(shipping::Segment {
                    term,
                    hw,
                    start,
                    next,
                    end: master_end,
                    records,
                })) => match follower.on_segment(epoch, start, next) {
                    // One stream, one master, one term.
                    _ if *stream_term.get_or_insert(term) != term => {
                        return Err(Error::Protocol(format!(
                            "a segment of term {term} on a stream of term {stream_term:?}"
                        )))
                    }
                    // A newer master exists: this one's records may be cut.
                    _ if self.failover.as_ref().is_some_and(|f| {
                        !proto::election::Fence::at(f.fence.load(Ordering::SeqCst))
                            .accepts_segment(term, term)
                    }) =>
                    {
                        return Err(Error::Protocol(format!(
                            "a segment of term {term}, older than a term this node knows"
                        )))
                    }
                    // A mark alone (nothing new to apply).
                    _ if records.is_empty() && start == next => {
                        self.hw.send_if_modified(|h| {
                            let moved = hw > *h;
                            *h = (*h).max(hw);
                            moved
                        });
                        continue;
                    }
                    Segment::Apply => {
                        // The first records of a new term: the term is
                        // remembered first, so a restart subscribes with it.
                        if let Some(f) = &self.failover {
                            if self.last_term.load(Ordering::SeqCst) != term {
                                (f.remember)(term).map_err(|source| Error::Io {
                                    context: format!("remember term {term}"),
                                    source,
                                })?;
                                self.last_term.store(term, Ordering::SeqCst);
                            }
                        }
                        // The mark first: it speaks of the master's log,
                        // which the records about to land are a prefix of.
                        self.hw.send_if_modified(|h| {
                            let moved = hw > *h;
                            *h = (*h).max(hw);
                            moved
                        });
                        let delay = self
                            .apply_delay_ms
                            .load(std::sync::atomic::Ordering::Relaxed);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        // Applying is a write(2) (the fsync, under group
                        // commit, is the syncer's), done in place rather
                        // than on the blocking pool.
                        match self.store().apply_shipped_pending(start, &records) {
                            Err(ourdb::Error::Diverged { ours, theirs }) => {
                                tracing::warn!(%ours, %theirs, "diverged from the master");
                                follower.on_diverged()
                            }
                            Err(e) => return Err(e.into()),
                            Ok((end, pending)) => match follower.on_applied(end, next) {
                                Ok(acked) => {
                                    self.applied.send_replace(acked);
                                    applied_bytes += records.len() as u64;
                                    let behind = proto::followers::lag_bytes(
                                        acked.at, master_end, file_size,
                                    );
                                    match catch_up.on_applied(
                                        behind,
                                        applied_bytes,
                                        started.elapsed(),
                                    ) {
                                        Some(proto::lag::CatchUpReport::Behind {
                                            behind,
                                            bytes_per_second,
                                        }) => {
                                            tracing::info!(
                                                master = %self.master,
                                                applied = %acked,
                                                behind_mib = behind >> 20,
                                                mib_per_second = bytes_per_second >> 20,
                                                "catching up"
                                            );
                                        }
                                        Some(proto::lag::CatchUpReport::CaughtUp {
                                            bytes,
                                            took,
                                        }) => {
                                            tracing::info!(
                                                master = %self.master,
                                                applied = %acked,
                                                mib = bytes >> 20,
                                                seconds = took.as_secs_f64(),
                                                "caught up"
                                            );
                                        }
                                        None => {}
                                    }
                                    // The fsync starts before this task
                                    // yields to the one that waits for it.
                                    if let Some(s) = &syncer {
                                        s.nudge();
                                    }
                                    ack(Some(pending), acked.at)?;
                                    continue;
                                }
                                Err(r) => {
                                    tracing::warn!(%end, %next, "applied up to another end than the master's");
                                    r
                                }
                            },
                        }
                    }
                    Segment::Duplicate(acked) => {
                        ack(None, acked.at)?;
                        continue;
                    }
                    Segment::Resubscribe(from) => Recovery::Resubscribe(from),
                    Segment::Ignore => continue,
                },
                Some(Err(Error::Remote { code, message })) => match follower.on_refused(&code) {
                    Recovery::FetchSnapshot => {
                        tracing::warn!(%code, %message, "the master cannot serve our cursor");
                        Recovery::FetchSnapshot
                    }
                    Recovery::Resubscribe(_) => return Err(Error::Remote { code, message }),
                },
                Some(Err(e)) => return Err(e),
                None => {
                    follower.on_disconnected();
                    return Ok(());
                }
            };
            return match recovery {
                Recovery::FetchSnapshot => {
                    tracing::warn!("fetching a snapshot");
                    self.snapshot(conn).await
                }
                // The follow loop subscribes again from the store's end.
                Recovery::Resubscribe(from) => Err(Error::Protocol(format!(
                    "a segment out of order: subscribing again from {from}"
                ))),
            };
        }
    }

    /// Streams the changes to keys with `prefix` from `cursor` on: first
    /// what is already applied, then each change as it is applied.
    async fn watch(&self, mut send: quinn::SendStream, prefix: String, from: Cursor) -> Result<()> {
        let store = self.store();
        let epoch = store.db().meta().epoch;
        let mut cursor = match self.watch_start(&store, from).await {
            Ok(c) => c,
            Err(f) => {
                frame::write(&mut send, &f.into()).await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        // The watch is accepted: the client answers its caller only now, so
        // a bad cursor is an error status, not an empty event stream.
        let start = reads::CursorIs {
            cursor: Cursor::new(epoch, cursor),
        };
        frame::write(&mut send, &start.into()).await?;
        let mut applied = self.applied.subscribe();
        let mut hw = self.hw.subscribe();
        let mut retired = self.retired.subscribe();
        loop {
            if *retired.borrow_and_update() {
                let no = Failed::new(
                    Code::NotMaster,
                    "this node's role changed; watch from a worker again",
                );
                let _ = frame::write(&mut send, &no.into()).await;
                let _ = send.finish();
                return Ok(());
            }
            let now = *applied.borrow_and_update();
            let mark = *hw.borrow_and_update();
            let store = self.store();
            if now.epoch != epoch {
                // A snapshot of a newer log replaced ours: positions changed.
                let gone = gone(Cursor::new(epoch, cursor), now.epoch);
                let _ = frame::write(&mut send, &gone.into()).await;
                return Ok(());
            }
            // Changes above the high-water mark are not shown yet; the
            // mark may move after the apply, on its own (a segment without
            // records), so both wake this loop.
            let upto = now.at.min(mark).max(cursor);
            let want = prefix.clone();
            // Reading a large value's chunks back is disk work too.
            let read = blocking(move || {
                let (changes, next, empty) =
                    read_changes(store.db(), cursor, upto, SEGMENT_BYTES, epoch, &want)?;
                Ok((empty, changes, next))
            });
            let (empty, changes, next) = match read.await {
                Ok(r) => r,
                Err(e) => {
                    let _ = frame::write(&mut send, &failed(Code::Cursor, &e).into()).await;
                    return Err(e);
                }
            };
            for change in changes {
                frame::write(&mut send, &change.into()).await?;
            }
            // Nothing new, or inside a group not whole here yet: wait for
            // more. A client that went away is noticed at the next write
            // at the latest.
            let wait = empty || next == cursor;
            cursor = next;
            if wait {
                let woke = tokio::time::timeout(Duration::from_secs(15), async {
                    tokio::select! {
                        r = applied.changed() => r,
                        r = hw.changed() => r,
                        r = retired.changed() => r,
                    }
                })
                .await;
                if woke.is_ok_and(|r| r.is_err()) {
                    return Ok(());
                }
            }
        }
    }

    /// A bounded slice of the watch stream (`Frame::Changes`): the same
    /// checks of `from`, then what is applied up to `until`. When nothing
    /// past `from` is applied yet but more is asked for, it waits (up to the
    /// read wait) for the next record, so a caller looping to catch up does
    /// not spin.
    async fn changes_upto(&self, req: msg::watch::Changes) -> Answer<msg::watch::Changes> {
        let msg::watch::Changes {
            prefix,
            from,
            until,
            max_bytes,
        } = req;
        let store = self.store();
        let start = match self.watch_start(&store, from).await {
            Ok(l) => l,
            Err(f) => return Err(f),
        };
        let epoch = store.db().meta().epoch;
        let start_cursor = Cursor::new(epoch, start);
        let mut applied = self.applied();
        if until > start_cursor && applied <= start_cursor {
            let mut rx = self.applied.subscribe();
            let _ = tokio::time::timeout(READ_WAIT, rx.wait_for(|a| *a > start_cursor)).await;
            applied = self.applied();
        }
        if applied.epoch != epoch {
            return Err(gone(start_cursor, applied.epoch));
        }
        let upto = if until.epoch == epoch {
            until.at.min(applied.at)
        } else {
            applied.at
        };
        // Changes above the high-water mark are not shown yet.
        let upto = upto.min(*self.hw.borrow()).max(start);
        let max = (max_bytes as usize).clamp(ourdb::HEADER_LEN, SEGMENT_BYTES);
        let read = blocking(move || {
            let (changes, next, _) = read_changes(store.db(), start, upto, max, epoch, &prefix)?;
            Ok((changes, next))
        });
        match read.await {
            Ok((changes, next)) => Ok(msg::watch::ChangesAre {
                changes,
                next: Cursor::new(epoch, next),
                applied,
            }),
            Err(e) => Err(failed(Code::Cursor, e)),
        }
    }

    /// Where a watch from `from` starts in this worker's log, or the
    /// answer that refuses it: a cursor of an older log (compacted since:
    /// `gone`), of a newer one or past what is applied (`lagging`), or not
    /// at a record boundary (`cursor`). A location of zero means the start.
    async fn watch_start(
        &self,
        store: &Arc<KeyedStore>,
        from: Cursor,
    ) -> std::result::Result<Location, Failed> {
        let epoch = store.db().meta().epoch;
        if from.at.is_none() {
            return Ok(Location::new(0, 1));
        }
        if from.epoch < epoch {
            return Err(gone(from, epoch));
        }
        if !self.wait_applied(from).await || self.applied().epoch != epoch {
            return Err(failed(
                Code::Lagging,
                format!("applied {} has not reached {from}", self.applied()),
            ));
        }
        let s = store.clone();
        match blocking(move || Ok(s.db().read_records(from.at, ourdb::HEADER_LEN)?)).await {
            Ok(_) => Ok(from.at),
            Err(e) => Err(failed(
                Code::Cursor,
                format!("cursor {from} is no record boundary: {e}"),
            )),
        }
    }

    /// Keeps `end` as the floor for older epochs' cursors, unless one is
    /// kept; wakes reads waiting on it.
    fn note_floor(&self, end: Cursor) {
        let mut floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
        if floor.is_none() {
            *floor = Some(end);
            drop(floor);
            self.applied.send_modify(|_| {});
        }
    }

    /// Waits (up to the read wait) until `min_cursor` is applied; false if
    /// it was not. A cursor of a newer epoch than this worker's store is
    /// reached only once a snapshot of that epoch is installed; one of an older epoch,
    /// once the floor is (`proto::shipping::worker_read_at`).
    pub async fn wait_applied(&self, min_cursor: Cursor) -> bool {
        let now = |c: Cursor| {
            // The floor matters only to older epochs' cursors: no lock for
            // the others (every read comes here).
            let floor = if min_cursor.epoch < c.epoch {
                *self.floor.lock().unwrap_or_else(|e| e.into_inner())
            } else {
                None
            };
            proto::shipping::worker_read_at(c, floor, min_cursor) == ReadAt::Now
        };
        if now(*self.applied.borrow()) {
            return true;
        }
        let mut rx = self.applied.subscribe();
        // The guard `wait_for` returns must not live across an await.
        let reached = self.unless_retired(async {
            matches!(
                tokio::time::timeout(READ_WAIT, rx.wait_for(|applied| now(*applied)))
                    .await
                    .map(|r| r.map(|_| ())),
                Ok(Ok(()))
            )
        });
        reached.await.unwrap_or(false)
    }

    /// Waits until this worker has applied what a read asks for: `min`, or
    /// for a strong read ([`Cursor::strong`]) the read index its master
    /// gives after the read arrived.
    async fn reach(&self, min: Cursor) -> std::result::Result<(), Failed> {
        let min = match min.strong_master() {
            None => min,
            Some(expected) => {
                of_master(expected, self.failover.as_ref().map_or(0, |f| f.master))?;
                self.master_index().await?
            }
        };
        if self.wait_applied(min).await {
            Ok(())
        } else {
            Err(self.lagging(min))
        }
    }

    /// The read index of the master this worker follows, from a round that
    /// concurrent strong reads share (a worker not connected to its master
    /// answers `NotMaster`: the client reads elsewhere).
    async fn master_index(&self) -> std::result::Result<Cursor, Failed> {
        let master = self.master;
        self.rounds
            .index(|| {
                let slot = self.to_master.clone();
                move || {
                    let pipe = slot
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                        .filter(|p| p.is_open());
                    async move {
                        let pipe = pipe.ok_or("not connected to it")?;
                        match tokio::time::timeout(READ_WAIT, pipe.call(reads::ReadIndex.into()))
                            .await
                        {
                            Err(_) => Err(format!("no answer within {READ_WAIT:?}")),
                            Ok(r) => r
                                .and_then(reads::CursorIs::try_from)
                                .map(|c| c.cursor)
                                .map_err(|e| e.to_string()),
                        }
                    }
                }
            })
            .await
            .map_err(|e| {
                failed(
                    Code::NotMaster,
                    format!("strong read: no read index from the master {master}: {e}"),
                )
            })
    }

    /// Runs `wait` unless this worker is retired first (`None`): a read
    /// that waits on a retired worker's cursor or mark waits for nothing
    /// (its master is gone; the node serves in another role now), so it
    /// fails at once and the client reads elsewhere.
    async fn unless_retired<T>(&self, wait: impl std::future::Future<Output = T>) -> Option<T> {
        let mut retired = self.retired.subscribe();
        tokio::select! {
            v = wait => Some(v),
            _ = retired.wait_for(|r| *r) => None,
        }
    }

    /// Holds a read's answer until the high-water mark covers everything the
    /// read could have seen (the store's end as taken after it): a record
    /// above the mark may still be taken back by a failover.
    /// With the answer, the cursor of that end: what the read saw is at or
    /// before it.
    async fn after_read<T>(
        &self,
        store: &KeyedStore,
        answer: std::result::Result<T, Failed>,
    ) -> std::result::Result<(T, Cursor), Failed> {
        let seen = store.db().end();
        let at = Cursor::new(store.db().meta().epoch, seen);
        if *self.hw.borrow() >= seen {
            return answer.map(|a| (a, at));
        }
        let mut rx = self.hw.subscribe();
        // The guard `wait_for` returns must not live across an await.
        let covered = self.unless_retired(async {
            matches!(
                tokio::time::timeout(READ_WAIT, rx.wait_for(|h| *h >= seen))
                    .await
                    .map(|r| r.map(|_| ())),
                Ok(Ok(()))
            )
        });
        match covered.await {
            Some(true) => answer.map(|a| (a, at)),
            Some(false) => Err(failed(
                Code::Lagging,
                format!(
                    "the records this read saw (up to {seen}) are above the high-water mark {}",
                    *self.hw.borrow()
                ),
            )),
            None => Err(failed(
                Code::Lagging,
                "this node changed roles while the read waited; read again",
            )),
        }
    }

    /// Receives a full copy of the master's data files into a sibling
    /// directory, rebuilds its id map from the envelopes, and swaps it in with
    /// one atomic exchange. A crash before the exchange leaves the old data.
    async fn snapshot(&self, conn: &quinn::Connection) -> Result<()> {
        let old = self.store();
        let o = old.clone();
        let mut install = blocking(move || Ok(SnapshotInstall::begin(&o)?)).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(quic)?;
        frame::write(&mut send, &snapshot::Snapshot.into()).await?;
        let _ = send.finish();
        let mut progress = SnapshotProgress::new("received");
        let (epoch, end) = loop {
            let part = frame::read(&mut recv)
                .await?
                .map(<snapshot::Snapshot as msg::Streamed>::Item::try_from);
            match part {
                Some(Ok(snapshot::Part::Chunk(snapshot::Chunk {
                    file_nr,
                    offset,
                    bytes,
                }))) => {
                    progress.add(bytes.len());
                    let chunk = ourdb::SnapshotChunk {
                        file_nr,
                        offset,
                        bytes,
                    };
                    install = blocking(move || {
                        install.write(&chunk)?;
                        Ok(install)
                    })
                    .await?;
                }
                Some(Ok(snapshot::Part::Done(snapshot::Done { epoch, end }))) => {
                    break (epoch, end)
                }
                Some(Err(Error::Protocol(m))) => {
                    return Err(Error::Protocol(format!("{m} in a snapshot")))
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Protocol("the snapshot was cut short".into())),
            }
        };
        progress.done();
        let done = blocking(move || Ok(install.finish(epoch, end)?)).await?;
        // The log is now the master's: remembered as its term's, or the
        // next subscription would still name the old term, be refused as
        // past that term's branch point, and fetch a snapshot again.
        if let Some(f) = &self.failover {
            (f.remember)(f.following).map_err(|source| Error::Io {
                context: format!("remember term {}", f.following),
                source,
            })?;
            self.last_term.store(f.following, Ordering::SeqCst);
        }
        let new_end = done.store.db().end();
        // A snapshot ends at the master's high-water mark: all of it may
        // be answered.
        self.hw.send_replace(new_end);
        // Set again by the first segment of the stream that follows.
        *self.floor.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(done.store);
        self.applied.send_replace(Cursor::new(epoch, new_end));
        drop(old);
        tracing::info!(%end, epoch, records = done.records, "snapshot installed");
        Ok(())
    }

    async fn stream(
        self: Arc<Self>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        _peer: SocketAddr,
    ) -> Result<()> {
        let mut frames = FrameReader::new(recv);
        let Some(first) = frames.next().await? else {
            return Ok(());
        };
        self.opened(first, send, frames).await
    }

    /// Serves a stream that began with `first`.
    pub(crate) async fn opened(
        self: Arc<Self>,
        first: Frame,
        send: quinn::SendStream,
        frames: FrameReader,
    ) -> Result<()> {
        match Opening::from(first) {
            Opening::Watch(w) => self.watch(send, w.prefix, w.cursor).await,
            Opening::Pipeline => crate::pipeline::serve(self, send, frames).await,
            other => crate::pipeline::serve_one(self, send, other.into()).await,
        }
    }

    /// The reply to a one-reply request: by sub-protocol, each request
    /// answered by its handler below.
    pub(crate) async fn reply(self: Arc<Self>, req: Frame) -> Frame {
        match Call::from_frame(req) {
            Ok(Call::Read(r)) => r.answer(&*self).await,
            Ok(Call::Status(s)) => s.answer(&*self).await,
            Ok(Call::Changes(c)) => answer_frame(msg::watch::Handler::changes(&*self, c).await),
            Ok(other @ Call::Write(_)) => refuse_on_worker(other.into()),
            Ok(Call::Raft(_)) => no_metadata_group(),
            Err(other) => refuse_on_worker(other),
        }
    }

    /// The refusal of a read at a cursor this worker has not reached.
    fn lagging(&self, min_cursor: Cursor) -> Failed {
        failed(
            Code::Lagging,
            format!("applied {} has not reached {min_cursor}", self.applied()),
        )
    }
}

/// Refuses a strong read that names master `expected` (0: any) on a node
/// whose master (itself, or the one it follows; 0 outside a failover
/// cluster) is `mine`.
fn of_master(expected: u64, mine: u64) -> std::result::Result<(), Failed> {
    if expected == 0 || expected == mine {
        return Ok(());
    }
    Err(failed(
        Code::NotMaster,
        format!("a strong read of master {expected}; this node's master is {mine}"),
    ))
}

/// A master's answer to a frame that is none of its requests.
fn refuse_on_master(other: Frame) -> Frame {
    failed(
        Code::BadRequest,
        format!("a master does not take {}", other.name()),
    )
    .into()
}

/// The answer to a Raft message on a node that runs no metadata group.
fn no_metadata_group() -> Frame {
    failed(Code::BadRequest, "no metadata group runs on this node").into()
}

/// A worker's answer to a frame that is none of its requests (a write, for one).
fn refuse_on_worker(other: Frame) -> Frame {
    failed(
        Code::NotMaster,
        format!("a worker does not take {}", other.name()),
    )
    .into()
}

/// A write's error as the client gets it: a refusal keeps its code (a
/// deposed or handing-over master's `not_master`, which a client may retry
/// elsewhere, and `indeterminate`, which it must not take as refused);
/// anything else is `write_failed`.
fn write_error(e: Error) -> Failed {
    match e {
        Error::Remote { code, message } => failed(code, message),
        e => failed(Code::WriteFailed, e),
    }
}

impl writes::Handler for Master {
    async fn set(&self, req: writes::Set) -> Answer<writes::Set> {
        let writes::Set {
            key,
            value,
            ack,
            expect,
            ttl_ms,
            lease,
        } = req;
        // A value decoded from a frame is its own buffer: no copy here.
        match self
            .put(key, Vec::from(value), ack, expect, ttl_ms, lease)
            .await
        {
            Ok(Some((cursor, version))) => Ok(writes::Written {
                cursor,
                existed: true,
                version,
            }),
            Ok(None) => Err(failed(
                Code::Precondition,
                "the key's current version is not the one expected",
            )),
            Err(Error::Db(e @ ourdb::Error::NoLease(_))) => Err(failed(Code::NoLease, e)),
            Err(Error::Db(e @ ourdb::Error::LeaseFull { .. })) => Err(failed(Code::BadRequest, e)),
            Err(e) => Err(write_error(e)),
        }
    }

    async fn delete(&self, req: writes::Delete) -> Answer<writes::Delete> {
        let writes::Delete { key, ack, expect } = req;
        match Master::delete(self, key, ack, expect).await {
            Ok(Some((existed, cursor))) => Ok(writes::Written {
                cursor,
                existed,
                version: Version::default(),
            }),
            Ok(None) => Err(failed(
                Code::Precondition,
                "the key's current version is not the one expected",
            )),
            Err(e) => Err(write_error(e)),
        }
    }

    async fn txn(&self, req: writes::Txn) -> Answer<writes::Txn> {
        self.txn_answer(req).await
    }

    async fn lease(&self, req: writes::Lease) -> Answer<writes::Lease> {
        let writes::Lease { op, ack } = req;
        let id = match op {
            LeaseOp::Grant { ttl_ms } => {
                // The gateway checks it too; a direct client may not.
                if !(1..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
                    return Err(failed(
                        Code::BadRequest,
                        format!(
                            "a lease's time to live is 1 to {MAX_LEASE_TTL_MS} ms, not {ttl_ms}"
                        ),
                    ));
                }
                0
            }
            LeaseOp::KeepAlive { id } | LeaseOp::Revoke { id } | LeaseOp::Info { id } => id,
        };
        match Master::lease(self, op, ack).await {
            Ok(Some((cursor, lease))) => Ok(writes::LeaseIs { cursor, lease }),
            Ok(None) => Err(failed(Code::NoLease, ourdb::Error::NoLease(id))),
            Err(e) => Err(write_error(e)),
        }
    }
}

/// The longest time to live of a lease (a year, as for keys).
pub const MAX_LEASE_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

impl Master {
    async fn txn_answer(&self, req: writes::Txn) -> Answer<writes::Txn> {
        let writes::Txn {
            conditions,
            ops,
            ack,
        } = req;
        // The counts before anything is built or locked (the gateway
        // checks every limit too; a direct client may not).
        if ops.len() > ourdb::keyed::MAX_TXN_OPS
            || conditions.len() > ourdb::keyed::MAX_TXN_CONDITIONS
        {
            return Err(failed(
                Code::BadRequest,
                format!(
                    "{} operations and {} conditions; at most {} and {}",
                    ops.len(),
                    conditions.len(),
                    ourdb::keyed::MAX_TXN_OPS,
                    ourdb::keyed::MAX_TXN_CONDITIONS
                ),
            ));
        }
        match self.transact(conditions, ops, ack).await {
            Ok((cursor, Ok(results))) => Ok(writes::TxnDone {
                cursor,
                failed: None,
                results,
            }),
            Ok((cursor, Err(i))) => Ok(writes::TxnDone {
                cursor,
                failed: Some(i),
                results: Vec::new(),
            }),
            Err(Error::Db(
                e @ (ourdb::Error::InvalidKey(_)
                | ourdb::Error::InvalidTxn(_)
                | ourdb::Error::TxnTooLarge(_)
                | ourdb::Error::ValueTooLarge { .. }),
            )) => Err(failed(Code::BadRequest, e)),
            Err(e) => Err(write_error(e)),
        }
    }
}

/// A master reads once its commit cursor reaches the request's cursor, and
/// answers once what it read is durable (`after_read`).
impl reads::Handler for Master {
    async fn read_index(&self, _: reads::ReadIndex) -> Answer<reads::ReadIndex> {
        Ok(reads::CursorIs {
            cursor: self.read_index_now().await?,
        })
    }

    async fn get(&self, req: reads::Get) -> Answer<reads::Get> {
        self.reach(req.min_cursor).await?;
        let answer = versioned_value(self.store.clone(), req.key).await;
        self.after_read(answer).await.map(|(a, at)| a.seen(at))
    }

    async fn list(&self, req: reads::List) -> Answer<reads::List> {
        self.reach(req.min_cursor).await?;
        let answer = list(&self.store, req);
        self.after_read(answer).await.map(|(a, at)| a.seen(at))
    }

    async fn history(&self, req: reads::History) -> Answer<reads::History> {
        self.reach(req.min_cursor).await?;
        let answer = history(self.store.clone(), req).await;
        self.after_read(answer).await.map(|(a, at)| a.seen(at))
    }

    async fn by_id(&self, req: reads::ById) -> Answer<reads::ById> {
        self.reach(req.min_cursor).await?;
        let answer = by_id(self.store.clone(), req).await;
        self.after_read(answer).await.map(|(a, at)| a.seen(at))
    }
}

impl status::Handler for Master {
    async fn status(&self, _: status::Status) -> Answer<status::Status> {
        // A master cut off from its quorum is no master to report: the
        // gateway's readiness and the cluster's status say so (503, exit
        // 5), instead of its last view of workers it no longer hears.
        self.leads().await.map_err(write_error)?;
        Ok(status::StatusIs {
            cursor: self.commit_cursor(),
            workers: self.workers(),
            commits: self.syncer.as_ref().map(|s| s.stats()).unwrap_or_default(),
        })
    }

    async fn digest(&self, _: status::Digest) -> Answer<status::Digest> {
        digest_of(self.store.clone()).await
    }
}

/// Log lines for a snapshot in transit, which may take minutes: one every
/// 64 MiB with the rate so far, and one at the end.
struct SnapshotProgress {
    what: &'static str,
    started: std::time::Instant,
    bytes: u64,
    logged: u64,
}

impl SnapshotProgress {
    const EVERY: u64 = 64 << 20;

    fn new(what: &'static str) -> SnapshotProgress {
        SnapshotProgress {
            what,
            started: std::time::Instant::now(),
            bytes: 0,
            logged: 0,
        }
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.bytes / Self::EVERY > self.logged {
            self.logged = self.bytes / Self::EVERY;
            tracing::info!(
                mib = self.bytes >> 20,
                mib_per_s = format!("{:.0}", self.mib_per_s()),
                "snapshot: {} so far",
                self.what
            );
        }
    }

    fn done(&self) {
        tracing::info!(
            bytes = self.bytes,
            seconds = format!("{:.2}", self.started.elapsed().as_secs_f64()),
            mib_per_s = format!("{:.0}", self.mib_per_s()),
            "snapshot: all {}",
            self.what
        );
    }
}

/// A worker reads once it has applied the request's cursor, from its store
/// as it is after the wait (a snapshot installed meanwhile replaced it, and
/// the old one must not answer).
impl reads::Handler for Worker {
    /// A worker has no read index. Its applied cursor must never pass for
    /// one: a master just demoted to worker would answer with what it has
    /// applied, which misses what the new master acknowledged since.
    async fn read_index(&self, _: reads::ReadIndex) -> Answer<reads::ReadIndex> {
        Err(failed(
            Code::NotMaster,
            format!(
                "a worker takes no read index (ask the master, {}); it has applied {}",
                self.master,
                self.applied()
            ),
        ))
    }

    async fn get(&self, req: reads::Get) -> Answer<reads::Get> {
        self.reach(req.min_cursor).await?;
        let store = self.store();
        let answer = versioned_value(store.clone(), req.key).await;
        // The cursor a client may carry to a later read (session
        // consistency): at or after everything this one saw.
        self.after_read(&store, answer)
            .await
            .map(|(a, at)| a.seen(at))
    }

    async fn list(&self, req: reads::List) -> Answer<reads::List> {
        self.reach(req.min_cursor).await?;
        let store = self.store();
        let answer = list(&store, req);
        self.after_read(&store, answer)
            .await
            .map(|(a, at)| a.seen(at))
    }

    async fn history(&self, req: reads::History) -> Answer<reads::History> {
        self.reach(req.min_cursor).await?;
        let store = self.store();
        let answer = history(store.clone(), req).await;
        self.after_read(&store, answer)
            .await
            .map(|(a, at)| a.seen(at))
    }

    async fn by_id(&self, req: reads::ById) -> Answer<reads::ById> {
        self.reach(req.min_cursor).await?;
        let store = self.store();
        let answer = by_id(store.clone(), req).await;
        self.after_read(&store, answer)
            .await
            .map(|(a, at)| a.seen(at))
    }
}

impl status::Handler for Worker {
    async fn status(&self, req: status::Status) -> Answer<status::Status> {
        Err(failed(
            Code::NotMaster,
            format!("a worker does not take {}", Frame::from(req).name()),
        ))
    }

    async fn digest(&self, _: status::Digest) -> Answer<status::Digest> {
        digest_of(self.store()).await
    }
}

impl msg::watch::Handler for Worker {
    async fn changes(&self, req: msg::watch::Changes) -> Answer<msg::watch::Changes> {
        self.changes_upto(req).await
    }
}

impl crate::pipeline::Answer for Master {
    fn answer(
        self: Arc<Self>,
        req: Frame,
    ) -> impl std::future::Future<Output = Frame> + Send + 'static {
        self.reply(req)
    }
}

impl crate::pipeline::Answer for Worker {
    fn answer(
        self: Arc<Self>,
        req: Frame,
    ) -> impl std::future::Future<Output = Frame> + Send + 'static {
        self.reply(req)
    }
}

/// The changes to keys with `prefix` from `start` up to `upto` (at most
/// about `max` bytes of records, but always whole groups), where to read
/// on, and whether nothing was there to read. A group of records (a
/// transaction) shows whole or not at all: a read that ends inside one with
/// changes reads on to its end (a group may be longer than `max`, or go on
/// in the next data file), and stops before it if the rest is not there yet.
fn read_changes(
    db: &ourdb::OurDb,
    start: Location,
    upto: Location,
    max: usize,
    epoch: u64,
    prefix: &str,
) -> ourdb::Result<(Vec<Change>, Location, bool)> {
    let mut segs = vec![db.read_records_upto(start, upto, max)?];
    let empty = segs[0].bytes.is_empty();
    loop {
        let (changes, next) = changes_in(db, &segs, epoch, prefix);
        let last = segs.last().expect("one segment");
        // A transaction is at most about 600 KiB: a few reads reach its end.
        if next != start || last.bytes.is_empty() || segs.len() >= 8 {
            return Ok((changes, next, empty));
        }
        let more = db.read_records_upto(last.next, upto, SEGMENT_BYTES)?;
        if more.bytes.is_empty() {
            return Ok((changes, next, empty));
        }
        segs.push(more);
    }
}

/// The changes in `segs` (consecutive reads of the log of `epoch`) and
/// where to read on: before a group not whole in them that has changes. A
/// large value's chunks change nothing themselves: its chunked put does,
/// with the value read back from `db`.
fn changes_in(
    db: &ourdb::OurDb,
    segs: &[ourdb::Segment],
    epoch: u64,
    prefix: &str,
) -> (Vec<Change>, Location) {
    use ourdb::keyed::{Envelope, Kind};
    let mut out = Vec::new();
    let mut group: Vec<Change> = Vec::new();
    let mut open = None;
    for r in segs.iter().flat_map(|s| s.records()) {
        let Ok(env) = Envelope::decode(r.value) else {
            continue;
        };
        let change = match env.kind {
            // A lease's own records change no key.
            _ if env.is_lease() || !env.key.starts_with(prefix) => None,
            Kind::Chunk | Kind::Lease => None,
            Kind::Put | Kind::Expiring | Kind::Leased => env.inline_value().map(|v| Some(v.to_vec())),
            Kind::Tombstone | Kind::Expired => Some(None),
            Kind::Chunked => match ourdb::keyed::chunked_value(db, r.at, &env) {
                Ok((v, _)) => Some(Some(v)),
                Err(e) => {
                    tracing::warn!(at = %r.at, error = %e, "watch: a chunked value does not read back");
                    None
                }
            },
        }
        .map(|value| Change {
            cursor: Cursor::new(epoch, r.after),
            key: env.key.to_string(),
            value,
            expired: env.kind == Kind::Expired,
        });
        match env.group {
            Some(g) => {
                open.get_or_insert(r.at);
                group.extend(change);
                if g.last {
                    out.append(&mut group);
                    open = None;
                }
            }
            None => out.extend(change),
        }
    }
    let end = segs.last().map_or(Location::NONE, |s| s.next);
    let next = match open {
        // Changes of a group not whole here yet wait for the rest.
        Some(at) if !group.is_empty() => at,
        _ => end,
    };
    (out, next)
}

/// Milliseconds since the Unix epoch, by this node's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Expires keys as their deadlines pass, while the master lives and leads.
/// Notes each move of the master's commit cursor with its time, for the
/// workers' lag in time; ends with the master.
async fn lag_clock(master: std::sync::Weak<Master>, mut commit: watch::Receiver<Location>) {
    while commit.changed().await.is_ok() {
        let at = *commit.borrow_and_update();
        let Some(m) = master.upgrade() else { return };
        let t = m.born.elapsed();
        m.lag.lock().unwrap_or_else(|e| e.into_inner()).note(at, t);
    }
}

async fn expire_loop(master: std::sync::Weak<Master>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let wait = {
            let Some(m) = master.upgrade() else { return };
            if m.deposed.load(Ordering::SeqCst) {
                return;
            }
            let now = now_ms();
            match m.store.next_deadline() {
                Some(d) if d <= now => {
                    if let Err(e) = m.expire_due(now).await {
                        tracing::warn!(error = %e, "expiry: a write failed");
                        Duration::from_secs(1)
                    } else {
                        continue;
                    }
                }
                Some(d) => Duration::from_millis((d - now).min(1000)),
                None => Duration::from_secs(1),
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
        }
    }
}

/// The refusal of a watch cursor whose log was replaced by a compaction.
fn gone(from: Cursor, epoch: u64) -> Failed {
    failed(
        Code::Gone,
        format!(
            "cursor {from} is from log epoch {}, which a compaction replaced (epoch {epoch}): \
             read the keys again and watch from the cursor of that read",
            from.epoch
        ),
    )
}

/// Moves a commit cursor forward (never back), waking its watchers.
fn advance(commit: &watch::Sender<Location>, end: Location) {
    commit.send_if_modified(|c| {
        let moved = end > *c;
        if moved {
            *c = end;
        }
        moved
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake the peer walked away from is not worth a warning; one
    /// that either side refused (a certificate of another cluster) is.
    #[test]
    fn only_refused_handshakes_are_warned_about() {
        use quinn::{ApplicationClose, ConnectionClose, ConnectionError, TransportErrorCode};
        let closed = ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: 0u32.into(),
            reason: Default::default(),
        });
        for e in [closed, ConnectionError::Reset, ConnectionError::TimedOut] {
            assert!(gave_up(&e), "{e}");
        }
        let refused = ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::crypto(42),
            frame_type: None,
            reason: Default::default(),
        });
        for e in [
            refused,
            ConnectionError::VersionMismatch,
            ConnectionError::LocallyClosed,
        ] {
            assert!(!gave_up(&e), "{e}");
        }
    }
    use ourdb::keyed::{Op, TxnOutcome};

    /// Transactions whose groups cross data files (tiny files here, as any
    /// file's end is for one group in many): a watch reads every change,
    /// whole groups only, and never stops before the end, however small
    /// the reads it asks for.
    #[test]
    fn watches_read_groups_across_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = ourdb::Config {
            record_size_max: ourdb::MAX_VALUE_LEN as u32,
            file_size: 700,
            keysize: Some(6),
            ..ourdb::Config::default()
        };
        let store = KeyedStore::new(ourdb::OurDb::open(dir.path(), config).unwrap()).unwrap();
        for n in 0..40u32 {
            let ops: Vec<Op> = (0..3)
                .map(|k| Op::Put(format!("k{k}"), vec![n as u8; 150]))
                .collect();
            match store.txn_pending(&[], &ops).unwrap() {
                TxnOutcome::Applied(_, Some(p)) => store.db().wait(p).unwrap(),
                other => panic!("{other:?}"),
            }
        }
        assert!(store.db().end().file_nr >= 10, "{}", store.db().end());
        let end = store.db().end();
        for max in [ourdb::HEADER_LEN, 500, SEGMENT_BYTES] {
            let (mut at, mut seen) = (Location::new(0, 1), Vec::new());
            while at < end {
                let (changes, next, _) = read_changes(store.db(), at, end, max, 1, "").unwrap();
                assert!(next > at, "stuck at {at} reading {max} bytes");
                // Whole groups: three changes at a time.
                assert_eq!(changes.len() % 3, 0, "at {at}");
                seen.extend(changes);
                at = next;
            }
            assert_eq!(seen.len(), 120, "max {max}");
            assert!(seen
                .iter()
                .all(|c| c.value.as_ref().is_some_and(|v| v.len() == 150)));
        }
    }
}
