//! Master-to-worker replication for ourkv, over QUIC with mutual TLS.
//!
//! The master's data files are the log. A worker subscribes with its cursor
//! (its own end: epoch, file number, offset); the master streams whole raw
//! records from there and then tails new appends; the worker writes the same
//! bytes at the same positions (so caught-up replicas are byte-identical),
//! applies their envelopes to its lookup and key index, and acknowledges its
//! applied cursor. Requests (set, delete, read-index, get at a cursor, digest)
//! travel on the same endpoints, one per stream. See docs/PROTOCOL.md.

#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod cursor;
pub mod error;
pub mod fatal;
pub mod frame;
pub mod identity;
pub mod msg;
pub mod mycelium;
pub mod node;
mod pipeline;
pub mod proto;
pub mod rounds;
pub mod stats;
mod syncer;

/// A task that ends with its handle: one that runs beside a future (a
/// stream's periodic check) must not outlive it, even if the future is
/// dropped before it returns.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub use client::{Client, Lifetime, Snapshot, Watch};
pub use cursor::Cursor;
pub use error::{Code, Error, Result};
pub use frame::{
    Ack, Change, Expect, LeaseInfo, LeaseOp, TxnCondition, TxnOp, TxnResult, Version, WorkerStatus,
};
pub use identity::{init_cluster, Identity};
pub use node::{digest, Master, MasterOptions, Worker};
pub use rounds::ReadIndexRounds;

/// A QUIC endpoint listening on `addr` with this cluster's identity, able to
/// connect out with it too.
pub fn endpoint(identity: &Identity, addr: std::net::SocketAddr) -> Result<quinn::Endpoint> {
    identity.check_peer(addr)?;
    let mut e = quinn::Endpoint::server(identity.server_config_on(addr.ip())?, addr)
        .map_err(|e| Error::Quic(format!("listen on {addr}: {e}")))?;
    e.set_default_client_config(identity.client_config_to(addr.ip())?);
    Ok(e)
}
