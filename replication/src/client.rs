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
use crate::pipeline::Pipe;

fn quic(e: impl std::fmt::Display) -> Error {
    Error::Quic(e.to_string())
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long one request may take, reads waiting for a cursor included.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

pub struct Client {
    identity: Identity,
    config: quinn::ClientConfig,
    v4: quinn::Endpoint,
    v6: Mutex<Option<quinn::Endpoint>>,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    pipes: std::sync::Mutex<HashMap<SocketAddr, Arc<Pipe>>>,
    /// Held while a pipe is opened, so concurrent first calls share one.
    opening: Mutex<()>,
    /// Nodes in this process (`ourkv dev`), by their address: a request to
    /// one skips the network and the encoding, never the node's own
    /// handling of it (the same `reply` a QUIC stream gets).
    local: HashMap<SocketAddr, LocalNode>,
}

type LocalNode = Arc<
    dyn Fn(Frame) -> std::pin::Pin<Box<dyn std::future::Future<Output = Frame> + Send>>
        + Send
        + Sync,
>;

fn local_node<N: crate::pipeline::Answer>(node: Arc<N>) -> LocalNode {
    Arc::new(move |req| Box::pin(node.clone().answer(req)))
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
            conns: Mutex::new(HashMap::new()),
            pipes: std::sync::Mutex::new(HashMap::new()),
            opening: Mutex::new(()),
            local: HashMap::new(),
        })
    }

    /// Calls to `addr` go to this master in the same process.
    pub fn with_local_master(mut self, addr: SocketAddr, node: Arc<crate::Master>) -> Client {
        self.local.insert(addr, local_node(node));
        self
    }

    /// Calls to `addr` go to this worker in the same process.
    pub fn with_local_worker(mut self, addr: SocketAddr, node: Arc<crate::Worker>) -> Client {
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

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection> {
        self.identity.check_peer(addr)?;
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
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
        // A node that is down does not answer at all: give up quickly.
        let config = self.identity.client_config_to(addr.ip())?;
        let connecting = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(quic)?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| Error::Quic(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")))?
            .map_err(quic)?;
        conns.insert(addr, c.clone());
        Ok(c)
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&self, addr: SocketAddr, request: Frame) -> Result<Frame> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_once(addr, request)).await {
            Ok(r) => r,
            Err(_) => {
                // The peer may be gone without a word: reuse neither the
                // connection nor its pipeline.
                self.conns.lock().await.remove(&addr);
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
        let reply = match self.local.get(&addr) {
            Some(node) => node(request).await,
            None => self.pipe(addr).await?.call(request).await?,
        };
        match reply {
            Frame::Failed { code, message } => Err(Error::Remote { code, message }),
            f => Ok(f),
        }
    }

    /// The open pipeline to `addr`, opened if there is none.
    async fn pipe(&self, addr: SocketAddr) -> Result<Arc<Pipe>> {
        let open = |pipes: &HashMap<SocketAddr, Arc<Pipe>>| {
            pipes.get(&addr).filter(|p| p.is_open()).cloned()
        };
        if let Some(p) = open(&self.pipes.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(p);
        }
        let _one = self.opening.lock().await;
        if let Some(p) = open(&self.pipes.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(p);
        }
        let conn = self.connection(addr).await?;
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
        Ok(self.set_if(master, key, value, ack, Expect::Any).await?.0)
    }

    /// Stores a value if the key's version is as expected (a failed
    /// expectation is `Error::Remote` with code `precondition`); the cursor
    /// after the write and the new version.
    pub async fn set_if(
        &self,
        master: SocketAddr,
        key: &str,
        value: &[u8],
        ack: Ack,
        expect: Expect,
    ) -> Result<(Cursor, Version)> {
        let req = Frame::Set {
            key: key.into(),
            value: value.to_vec(),
            ack,
            expect,
        };
        match self.call(master, req).await? {
            Frame::Written {
                cursor, version, ..
            } => Ok((cursor, version)),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
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
        let req = Frame::Delete {
            key: key.into(),
            ack,
            expect,
        };
        match self.call(master, req).await? {
            Frame::Written {
                cursor, existed, ..
            } => Ok((existed, cursor)),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// The master's cursor and its workers.
    pub async fn status(&self, master: SocketAddr) -> Result<(Cursor, Vec<WorkerStatus>)> {
        match self.call(master, Frame::Status).await? {
            Frame::StatusIs { cursor, workers } => Ok((cursor, workers)),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// The master's commit cursor.
    pub async fn read_index(&self, master: SocketAddr) -> Result<Cursor> {
        match self.call(master, Frame::ReadIndex).await? {
            Frame::Cursor { cursor } => Ok(cursor),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
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
            .map(|(v, _)| v))
    }

    /// A key's value and version from a node that has applied `min_cursor`.
    pub async fn get_versioned(
        &self,
        node: SocketAddr,
        key: &str,
        min_cursor: Cursor,
    ) -> Result<Option<(Vec<u8>, Version)>> {
        let req = Frame::Get {
            key: key.into(),
            min_cursor,
        };
        match self.call(node, req).await? {
            Frame::Value { value, version, .. } => Ok(value.map(|v| (v, version))),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Keys with `prefix` after `after`, at most `limit`, from a node that has
    /// applied `min_cursor`.
    pub async fn list(
        &self,
        node: SocketAddr,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        min_cursor: Cursor,
    ) -> Result<Vec<String>> {
        let req = Frame::List {
            prefix: prefix.into(),
            after: after.unwrap_or_default().into(),
            limit,
            min_cursor,
        };
        match self.call(node, req).await? {
            Frame::Keys { keys, .. } => Ok(keys),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// The key and value of record `id`.
    pub async fn by_id(
        &self,
        node: SocketAddr,
        id: u32,
        min_cursor: Cursor,
    ) -> Result<Option<(String, Vec<u8>)>> {
        match self.call(node, Frame::ById { id, min_cursor }).await? {
            Frame::Record { entry, .. } => Ok(entry),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Up to `depth` values of `key`, newest first.
    pub async fn history(
        &self,
        node: SocketAddr,
        key: &str,
        depth: u32,
        min_cursor: Cursor,
    ) -> Result<Vec<Vec<u8>>> {
        let req = Frame::History {
            key: key.into(),
            depth,
            min_cursor,
        };
        match self.call(node, req).await? {
            Frame::Values { values, .. } => Ok(values),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
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
        let req = Frame::Changes {
            prefix: prefix.into(),
            from,
            until,
            max_bytes,
        };
        match self.call(node, req).await? {
            Frame::ChangesAre {
                changes,
                next,
                applied,
            } => Ok((changes, next, applied)),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Changes to keys with `prefix` from `cursor` on, from a worker.
    pub async fn watch(&self, node: SocketAddr, prefix: &str, cursor: Cursor) -> Result<Watch> {
        let conn = self.connection(node).await?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Quic(e.to_string()))?;
        let req = Frame::Watch {
            prefix: prefix.into(),
            cursor,
        };
        frame::write(&mut send, &req).await?;
        let _ = send.finish();
        let mut recv = recv;
        // The worker accepts (its start cursor) or refuses the watch first.
        let first = tokio::time::timeout(CALL_TIMEOUT, frame::read(&mut recv))
            .await
            .map_err(|_| Error::Timeout(format!("no answer to a watch from {node}")))??;
        match first {
            Some(Frame::Cursor { cursor }) => Ok(Watch {
                recv,
                _send: send,
                start: cursor,
            }),
            Some(Frame::Failed { code, message }) => Err(Error::Remote { code, message }),
            Some(other) => Err(Error::Protocol(format!("unexpected {other:?}"))),
            None => Err(Error::Protocol("the watch stream ended at once".into())),
        }
    }

    /// A node's data file digest.
    pub async fn digest(&self, node: SocketAddr) -> Result<String> {
        match self.call(node, Frame::Digest).await? {
            Frame::DigestIs { text } => Ok(text),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
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
        match frame::read(&mut self.recv).await? {
            Some(Frame::Change { cursor, key, value }) => Ok(Some(Change { cursor, key, value })),
            Some(Frame::Failed { code, message }) => Err(Error::Remote { code, message }),
            Some(other) => Err(Error::Protocol(format!("unexpected {other:?}"))),
            None => Ok(None),
        }
    }
}
