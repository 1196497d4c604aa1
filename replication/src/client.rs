//! A client of master and workers: requests pipelined on one QUIC stream
//! per node (see pipeline.rs); a watch gets a stream of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::cursor::Cursor;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::frame::{self, Ack, Change, Expect, Frame, Version, WorkerStatus};
use crate::identity::{Identity, SERVER_NAME};
use crate::msg::{reads, snapshot, status, watch, writes, Request, Streamed};
use crate::pipeline::Pipe;

fn quic(e: impl std::fmt::Display) -> Error {
    Error::Quic(e.to_string())
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long one request may take, reads waiting for a cursor included.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// A node's client: one QUIC connection and one pipelined stream per node,
/// and the calls the gateway and `ourkv client` make.
pub struct Client {
    identity: Identity,
    config: quinn::ClientConfig,
    v4: quinn::Endpoint,
    v6: Mutex<Option<quinn::Endpoint>>,
    conns: Arc<std::sync::Mutex<HashMap<SocketAddr, quinn::Connection>>>,
    /// Handshakes under way, by node. A handshake runs in a task of its
    /// own that stores the connection when it is up: a caller that gives up
    /// (a Raft heartbeat's 50 ms, a hedged read answered elsewhere) leaves
    /// it running, so the node sees no aborted handshake and the next call
    /// finds the connection, even on a path slower than any one call waits.
    handshakes: Arc<std::sync::Mutex<HashMap<SocketAddr, Handshake>>>,
    /// When a node last failed in transport (a handshake, or a call whose
    /// connection was lost or timed out), until a handshake succeeds: the
    /// gateway sends no read to a node that failed lately and has no
    /// connection, instead of waiting out another connect timeout.
    failed: Arc<std::sync::Mutex<HashMap<SocketAddr, std::time::Instant>>>,
    pipes: std::sync::Mutex<HashMap<SocketAddr, Arc<Pipe>>>,
    /// Per node, held while its connection or pipe is opened: concurrent
    /// first calls share one, and a node that does not answer (a connect
    /// waits up to 2 s) holds up no call to another.
    opening: std::sync::Mutex<HashMap<SocketAddr, Arc<Mutex<()>>>>,
    /// Nodes in this process (`ourkv dev`), by their address: a request to
    /// one skips the network and the encoding, never the node's own
    /// handling of it (the same `reply` a QUIC stream gets).
    local: HashMap<SocketAddr, LocalNode>,
}

/// Takes a node's handshake out of the table when dropped.
struct Leave(
    Arc<std::sync::Mutex<HashMap<SocketAddr, Handshake>>>,
    SocketAddr,
);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// A handshake's outcome, awaited by every caller that needs it.
type Handshake = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, std::result::Result<quinn::Connection, String>>,
>;

type LocalNode = Arc<
    dyn Fn(Frame) -> std::pin::Pin<Box<dyn std::future::Future<Output = Frame> + Send>>
        + Send
        + Sync,
>;

fn local_node<N: crate::pipeline::Answer>(node: Arc<N>) -> LocalNode {
    Arc::new(move |req| Box::pin(node.clone().answer(req)))
}

/// A member's JSON answer about the cluster (`MetaIs`).
fn cluster_info(node: SocketAddr, body: &[u8]) -> Result<crate::cluster::ClusterInfo> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("cluster info from {node}: {e}")))
}

/// How long a key set lives: until deleted (the default), a time to live,
/// or as long as a lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    /// Milliseconds after the master writes it (0: no time to live).
    pub ttl_ms: u64,
    /// The lease it goes with (0: none).
    pub lease: u32,
}

impl Client {
    /// A client with this cluster's identity. Call inside a tokio runtime.
    pub fn new(identity: &Identity) -> Result<Client> {
        let config = identity.client_config()?;
        let mut v4 = quinn::Endpoint::client("0.0.0.0:0".parse().expect("address"))
            .map_err(|e| Error::Quic(format!("bind: {e}")))?;
        v4.set_default_client_config(config.clone());
        Ok(Client {
            identity: identity.clone(),
            config,
            v4,
            v6: Mutex::new(None),
            conns: Default::default(),
            handshakes: Default::default(),
            failed: Default::default(),
            pipes: std::sync::Mutex::new(HashMap::new()),
            opening: Default::default(),
            local: HashMap::new(),
        })
    }

    /// Calls to `addr` go to this failover member in the same process.
    pub fn with_local_member(
        mut self,
        addr: SocketAddr,
        node: Arc<crate::cluster::Node>,
    ) -> Client {
        self.local.insert(addr, local_node(node));
        self
    }

    /// Sends to IPv6 peers from `ip` (a Mycelium node's overlay address),
    /// instead of whatever source the kernel picks.
    pub fn with_v6_source(self, ip: std::net::Ipv6Addr) -> Result<Client> {
        let bind = SocketAddr::new(ip.into(), 0);
        let mut e =
            quinn::Endpoint::client(bind).map_err(|e| Error::Quic(format!("bind {bind}: {e}")))?;
        e.set_default_client_config(self.config.clone());
        *self.v6.try_lock().expect("not yet shared") = Some(e);
        Ok(self)
    }

    /// The open connection to `addr`, if there is one.
    fn live(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The lock held while a connection or pipe to `addr` is opened.
    fn opening(&self, addr: SocketAddr) -> Arc<Mutex<()>> {
        let mut all = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(addr).or_default().clone()
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection> {
        if let Some(c) = self.live(addr) {
            return Ok(c);
        }
        let lock = self.opening(addr);
        let _one = lock.lock().await;
        self.connect_locked(addr).await
    }

    /// Opens a connection to `addr` unless one is open; the caller holds
    /// `addr`'s opening lock.
    async fn connect_locked(&self, addr: SocketAddr) -> Result<quinn::Connection> {
        self.identity.check_peer(addr)?;
        if let Some(c) = self.live(addr) {
            return Ok(c);
        }
        let endpoint = if addr.is_ipv6() {
            let mut v6 = self.v6.lock().await;
            if v6.is_none() {
                let mut e = quinn::Endpoint::client("[::]:0".parse().expect("address"))
                    .map_err(|e| Error::Quic(format!("bind: {e}")))?;
                e.set_default_client_config(self.config.clone());
                *v6 = Some(e);
            }
            v6.clone().expect("just set")
        } else {
            self.v4.clone()
        };
        let under_way = self
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned();
        let handshake = match under_way {
            Some(h) => h,
            None => self.start_handshake(&endpoint, addr)?,
        };
        handshake.await.map_err(Error::Quic)
    }

    /// Starts a handshake with `addr` in a task of its own: it ends by
    /// storing the connection (or with the reason it failed), whether or
    /// not anybody still waits for it.
    fn start_handshake(&self, endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<Handshake> {
        use futures_util::FutureExt;
        let config = self.identity.client_config_to(addr.ip())?;
        let connecting = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(quic)?;
        let (conns, handshakes, failed) = (
            self.conns.clone(),
            self.handshakes.clone(),
            self.failed.clone(),
        );
        let (done, outcome) = tokio::sync::oneshot::channel();
        let handshake = async move {
            outcome
                .await
                .unwrap_or_else(|_| Err(format!("the handshake with {addr} was stopped")))
        }
        .boxed()
        .shared();
        // In the table before the task starts, which takes it out when done.
        self.handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, handshake.clone());
        tokio::spawn(async move {
            // Out of the table when the task ends, however it ends (a
            // runtime shutting down drops it): never a handshake left there
            // for later calls to wait on.
            let leave = Leave(handshakes, addr);
            // A node that is down does not answer at all: give up quickly.
            let r = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Err(_) => Err(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")),
                Ok(r) => r.map_err(|e| e.to_string()),
            };
            // Stored before the handshake leaves the table, and out of it
            // before anyone hears: a caller finds the connection or the
            // handshake, and after a failure a new call tries afresh.
            let mut failed = failed.lock().unwrap_or_else(|e| e.into_inner());
            match &r {
                Ok(c) => {
                    conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(addr, c.clone());
                    failed.remove(&addr);
                }
                Err(_) => {
                    failed.insert(addr, std::time::Instant::now());
                }
            }
            drop(failed);
            drop(leave);
            let _ = done.send(r);
        });
        Ok(handshake)
    }

    /// Sends one request and waits for its reply: a `Failed` reply is
    /// `Error::Remote` with its code, a reply of another type than the
    /// request's `Error::Protocol`.
    pub async fn call<R: Request>(&self, addr: SocketAddr, request: R) -> Result<R::Reply> {
        R::Reply::try_from(self.call_frame(addr, request.into()).await?)
    }

    /// Sends one request frame and waits for the reply frame, whatever it is.
    async fn call_frame(&self, addr: SocketAddr, request: Frame) -> Result<Frame> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_once(addr, request)).await {
            Ok(r) => {
                if matches!(r, Err(Error::Unanswered(_) | Error::Timeout(_))) {
                    self.note_failure(addr);
                }
                r
            }
            Err(_) => {
                self.note_failure(addr);
                // The peer may be gone without a word: reuse neither the
                // connection nor its pipeline.
                self.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                self.pipes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&addr);
                Err(Error::Timeout(format!(
                    "no reply from {addr} within {CALL_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn call_once(&self, addr: SocketAddr, request: Frame) -> Result<Frame> {
        match self.local.get(&addr) {
            Some(node) => Ok(node(request).await),
            None => self.pipe(addr).await?.call(request).await,
        }
    }

    /// Opens the connection and pipeline to `addr` if none is open. It
    /// sends no request: a caller may drop it at any point, having asked the
    /// node nothing (a write may go elsewhere then without ever landing twice).
    pub async fn ready(&self, addr: SocketAddr) -> Result<()> {
        if self.local.contains_key(&addr) {
            return Ok(());
        }
        self.pipe(addr).await.map(|_| ())
    }

    fn note_failure(&self, addr: SocketAddr) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, std::time::Instant::now());
    }

    /// Whether `addr` failed in transport within `within` and has no open
    /// connection now (a node in this process never fails so).
    pub fn failed_lately(&self, addr: SocketAddr, within: std::time::Duration) -> bool {
        // The table first: empty while every node answers (each read asks).
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .is_some_and(|at| at.elapsed() < within)
            && !self.is_ready(addr)
    }

    /// Whether a call to `addr` would go out at once, without opening a
    /// connection or a pipeline first.
    pub fn is_ready(&self, addr: SocketAddr) -> bool {
        self.local.contains_key(&addr)
            || self
                .pipes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&addr)
                .is_some_and(|p| p.is_open())
    }

    /// The open pipeline to `addr`, opened if there is none.
    async fn pipe(&self, addr: SocketAddr) -> Result<Arc<Pipe>> {
        let open = |pipes: &HashMap<SocketAddr, Arc<Pipe>>| {
            pipes.get(&addr).filter(|p| p.is_open()).cloned()
        };
        if let Some(p) = open(&self.pipes.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(p);
        }
        let lock = self.opening(addr);
        let _one = lock.lock().await;
        if let Some(p) = open(&self.pipes.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(p);
        }
        let conn = self.connect_locked(addr).await?;
        let p = Arc::new(Pipe::open(&conn, addr).await?);
        self.pipes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, p.clone());
        Ok(p)
    }

    /// Stores a value on the master; returns the master's cursor after it.
    pub async fn set(&self, master: SocketAddr, key: &str, value: &[u8]) -> Result<Cursor> {
        self.set_with(master, key, value, Ack::Master).await
    }

    /// Stores a value, acknowledged per `ack`.
    pub async fn set_with(
        &self,
        master: SocketAddr,
        key: &str,
        value: &[u8],
        ack: Ack,
    ) -> Result<Cursor> {
        Ok(self
            .set_if(
                master,
                key,
                bytes::Bytes::copy_from_slice(value),
                ack,
                Expect::Any,
                Lifetime::default(),
            )
            .await?
            .0)
    }

    /// Stores a value if the key's version is as expected (a failed
    /// expectation is `Error::Remote` with code `precondition`), for as long
    /// as `life` says; the cursor after the write and the new version.
    pub async fn set_if(
        &self,
        master: SocketAddr,
        key: &str,
        value: bytes::Bytes,
        ack: Ack,
        expect: Expect,
        life: Lifetime,
    ) -> Result<(Cursor, Version)> {
        let req = writes::Set {
            key: key.into(),
            value,
            ack,
            expect,
            ttl_ms: life.ttl_ms,
            lease: life.lease,
        };
        let written = self.call(master, req).await?;
        Ok((written.cursor, written.version))
    }

    /// Deletes a key on the master: whether it existed, and the cursor after.
    pub async fn delete(&self, master: SocketAddr, key: &str) -> Result<(bool, Cursor)> {
        self.delete_with(master, key, Ack::Master).await
    }

    /// Deletes a key, acknowledged per `ack`.
    pub async fn delete_with(
        &self,
        master: SocketAddr,
        key: &str,
        ack: Ack,
    ) -> Result<(bool, Cursor)> {
        self.delete_if(master, key, ack, Expect::Any).await
    }

    /// Deletes a key if its version is as expected.
    pub async fn delete_if(
        &self,
        master: SocketAddr,
        key: &str,
        ack: Ack,
        expect: Expect,
    ) -> Result<(bool, Cursor)> {
        let req = writes::Delete {
            key: key.into(),
            ack,
            expect,
        };
        let written = self.call(master, req).await?;
        Ok((written.existed, written.cursor))
    }

    /// The master's cursor and its workers.
    pub async fn status(&self, master: SocketAddr) -> Result<(Cursor, Vec<WorkerStatus>)> {
        let s = self.call(master, status::Status).await?;
        Ok((s.cursor, s.workers))
    }

    /// The master's whole status: also its group commits so far.
    pub async fn status_full(&self, master: SocketAddr) -> Result<status::StatusIs> {
        self.call(master, status::Status).await
    }

    /// The cluster as a failover member's metadata says (a standalone node
    /// refuses with `BadRequest`).
    pub async fn meta(&self, node: SocketAddr) -> Result<crate::cluster::ClusterInfo> {
        let r = self.call(node, crate::msg::raft::Meta).await?;
        cluster_info(node, &r.body)
    }

    /// Removes member `id` of a failover cluster for good, through any
    /// member `node`; the cluster afterwards.
    pub async fn leave(&self, node: SocketAddr, id: u64) -> Result<crate::cluster::ClusterInfo> {
        let body = serde_json::to_vec(&crate::cluster::LeaveRequest {
            id,
            forwarded: false,
        })
        .expect("serializable");
        let r = self.call(node, crate::msg::raft::Leave { body }).await?;
        cluster_info(node, &r.body)
    }

    /// Makes member `id` of a failover cluster the master, through any
    /// member `node`, once it holds everything the master wrote; the
    /// cluster afterwards.
    pub async fn promote(&self, node: SocketAddr, id: u64) -> Result<crate::cluster::ClusterInfo> {
        let body = serde_json::to_vec(&crate::cluster::PromoteRequest {
            id,
            forwarded: false,
        })
        .expect("serializable");
        let r = self.call(node, crate::msg::raft::Promote { body }).await?;
        cluster_info(node, &r.body)
    }

    /// The master's commit cursor.
    pub async fn read_index(&self, master: SocketAddr) -> Result<Cursor> {
        Ok(self.call(master, reads::ReadIndex).await?.cursor)
    }

    /// A key's value from a node that has applied `min_cursor`.
    pub async fn get(
        &self,
        node: SocketAddr,
        key: &str,
        min_cursor: Cursor,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_versioned(node, key, min_cursor)
            .await?
            .0
            .map(|(v, _)| v))
    }

    /// A key's value and version from a node that has applied `min_cursor`,
    /// and a cursor at or after everything the read saw (for a later read
    /// that must see at least as much).
    pub async fn get_versioned(
        &self,
        node: SocketAddr,
        key: &str,
        min_cursor: Cursor,
    ) -> Result<(Option<(Vec<u8>, Version)>, Cursor)> {
        let req = reads::Get {
            key: key.into(),
            min_cursor,
        };
        let reads::Value {
            value,
            version,
            cursor,
        } = self.call(node, req).await?;
        Ok((value.map(|v| (v, version)), cursor))
    }

    /// Keys with `prefix` after `after`, at most `limit`, from a node that has
    /// applied `min_cursor`; with the cursor of what the read saw.
    pub async fn list(
        &self,
        node: SocketAddr,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        min_cursor: Cursor,
    ) -> Result<(Vec<String>, Cursor)> {
        let req = reads::List {
            prefix: prefix.into(),
            after: after.unwrap_or_default().into(),
            limit,
            min_cursor,
        };
        let reads::Keys { keys, cursor } = self.call(node, req).await?;
        Ok((keys, cursor))
    }

    /// The key and value of record `id`; with the cursor of what the read
    /// saw.
    pub async fn by_id(
        &self,
        node: SocketAddr,
        id: u32,
        min_cursor: Cursor,
    ) -> Result<(Option<(String, Vec<u8>)>, Cursor)> {
        let req = reads::ById { id, min_cursor };
        let reads::Record { entry, cursor } = self.call(node, req).await?;
        Ok((entry, cursor))
    }

    /// Up to `depth` values of `key`, newest first; with the cursor of what
    /// the read saw.
    pub async fn history(
        &self,
        node: SocketAddr,
        key: &str,
        depth: u32,
        min_cursor: Cursor,
    ) -> Result<(Vec<Vec<u8>>, Cursor)> {
        let req = reads::History {
            key: key.into(),
            depth,
            min_cursor,
        };
        let reads::Values { values, cursor } = self.call(node, req).await?;
        Ok((values, cursor))
    }

    /// The changes to keys with `prefix` from `from` up to `until` (or what
    /// the worker has applied), at most about `max_bytes` of records: the
    /// changes, where to continue, and the worker's applied cursor.
    pub async fn changes(
        &self,
        node: SocketAddr,
        prefix: &str,
        from: Cursor,
        until: Cursor,
        max_bytes: u32,
    ) -> Result<(Vec<Change>, Cursor, Cursor)> {
        let req = watch::Changes {
            prefix: prefix.into(),
            from,
            until,
            max_bytes,
        };
        let r = self.call(node, req).await?;
        Ok((r.changes, r.next, r.applied))
    }

    /// Changes to keys with `prefix` from `cursor` on, from a worker.
    pub async fn watch(&self, node: SocketAddr, prefix: &str, cursor: Cursor) -> Result<Watch> {
        let conn = self.connection(node).await?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Quic(e.to_string()))?;
        let req = watch::Watch {
            prefix: prefix.into(),
            cursor,
        };
        frame::write(&mut send, &req.into()).await?;
        let _ = send.finish();
        let mut recv = recv;
        // The worker accepts (its start cursor) or refuses the watch first.
        let first = tokio::time::timeout(CALL_TIMEOUT, frame::read(&mut recv))
            .await
            .map_err(|_| Error::Timeout(format!("no answer to a watch from {node}")))??;
        let Some(first) = first else {
            return Err(Error::Protocol("the watch stream ended at once".into()));
        };
        let start = reads::CursorIs::try_from(first)?.cursor;
        Ok(Watch {
            recv,
            _send: send,
            start,
        })
    }

    /// A full copy of the master's data files up to its commit cursor when
    /// it answers (an online backup): chunks, then where the copy ends.
    pub async fn snapshot(&self, master: SocketAddr) -> Result<Snapshot> {
        let conn = self.connection(master).await?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Quic(e.to_string()))?;
        frame::write(&mut send, &snapshot::Snapshot.into()).await?;
        let _ = send.finish();
        Ok(Snapshot {
            frames: frame::FrameReader::new(recv),
            _send: send,
        })
    }

    /// A node's data file digest.
    pub async fn digest(&self, node: SocketAddr) -> Result<String> {
        Ok(self.call(node, status::Digest).await?.text)
    }
}

/// A running watch.
pub struct Watch {
    recv: quinn::RecvStream,
    _send: quinn::SendStream,
    start: Cursor,
}

impl Watch {
    /// Where the watch started in the worker's log.
    pub fn start(&self) -> Cursor {
        self.start
    }

    /// The next change; `None` when the node ends the stream.
    pub async fn next(&mut self) -> Result<Option<Change>> {
        frame::read(&mut self.recv)
            .await?
            .map(<watch::Watch as Streamed>::Item::try_from)
            .transpose()
    }
}

/// A snapshot being received.
pub struct Snapshot {
    frames: frame::FrameReader,
    _send: quinn::SendStream,
}

impl Snapshot {
    /// The next part; `None` when the stream ends (after `Done`, or cut
    /// short: only a `Done` says the copy is whole). A `Failed` frame from
    /// the master is an error.
    pub async fn next(&mut self) -> Result<Option<snapshot::Part>> {
        self.frames
            .next()
            .await?
            .map(<snapshot::Snapshot as Streamed>::Item::try_from)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::msg::Failed;

    /// A client whose calls to the returned address go to `node`.
    fn client_of(node: impl Fn(Frame) -> Frame + Send + Sync + 'static) -> (Client, SocketAddr) {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut client = Client::new(&Identity::loopback().unwrap()).unwrap();
        let node = Arc::new(node);
        client.local.insert(
            addr,
            Arc::new(move |req| {
                let reply = node(req);
                Box::pin(async move { reply })
            }),
        );
        (client, addr)
    }

    /// A caller that gives up while the handshake is under way (a Raft
    /// heartbeat waits 50 ms) does not abort it: the handshake completes,
    /// the node sees one connection and no refusal, and the next call uses
    /// that connection.
    #[tokio::test]
    async fn a_handshake_outlives_the_caller_that_gave_up() {
        let identity = Identity::loopback().unwrap();
        let server = quinn::Endpoint::server(
            identity
                .server_config_on("127.0.0.1".parse().unwrap())
                .unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = server.accept().await {
                // The handshake waits for this: longer than the caller.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let conn = incoming.await;
                let ok = conn.is_ok();
                held.push(conn);
                let _ = accepted_tx.send(ok);
            }
        });
        let client = Client::new(&identity).unwrap();
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(50), client.ready(addr)).await;
        assert!(
            gave_up.is_err(),
            "the handshake cannot be done within 50 ms"
        );
        assert_eq!(
            accepted.recv().await,
            Some(true),
            "the node completed the handshake the caller gave up on"
        );
        // Stored by the handshake itself, with nobody waiting.
        for _ in 0..100 {
            if client.live(addr).is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(client.live(addr).is_some(), "the connection is kept");
        client.ready(addr).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            accepted.try_recv().is_err(),
            "the next call opened no second connection"
        );
    }

    #[tokio::test]
    async fn a_call_gets_its_reply_type_or_an_error() {
        let cursor = Cursor::new(1, ourdb::Location::new(0, 40));
        let (client, addr) = client_of(move |req| match req {
            Frame::ReadIndex => reads::CursorIs { cursor }.into(),
            // A reply of another request's type.
            Frame::Get { .. } => reads::Keys {
                keys: vec![],
                cursor,
            }
            .into(),
            Frame::Digest => Failed::new(Code::DigestFailed, "disk").into(),
            other => Failed::new(Code::BadRequest, format!("{other:?}")).into(),
        });
        assert_eq!(client.read_index(addr).await.unwrap(), cursor);
        assert_eq!(
            client.call(addr, reads::ReadIndex).await.unwrap(),
            reads::CursorIs { cursor }
        );
        match client.get(addr, "k", Cursor::ZERO).await {
            Err(Error::Protocol(m)) => assert!(m.contains("Keys"), "{m}"),
            r => panic!("{r:?}"),
        }
        match client.digest(addr).await {
            Err(Error::Remote { code, message }) => {
                assert_eq!(code, Code::DigestFailed);
                assert_eq!(message, "disk");
            }
            r => panic!("{r:?}"),
        }
        match client.status(addr).await {
            Err(Error::Remote { code, message }) => {
                assert_eq!(code, Code::BadRequest);
                assert_eq!(message, "Status");
            }
            r => panic!("{r:?}"),
        }
    }
}
