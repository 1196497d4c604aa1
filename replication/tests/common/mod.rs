//! A master and workers in this process over loopback QUIC, for tests.

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ourdb::keyed::KeyedStore;
use ourdb::{OpenOptions, SyncPolicy};
use replication::{Client, Identity, Master, MasterOptions, Worker};

pub(crate) struct RunningWorker {
    pub node: Arc<Worker>,
    pub addr: SocketAddr,
    pub endpoint: quinn::Endpoint,
    pub task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Nodes {
    pub master: Arc<Master>,
    pub maddr: SocketAddr,
    pub workers: Vec<RunningWorker>,
    pub client: Arc<Client>,
}

pub(crate) fn store(dir: &Path, sync: SyncPolicy) -> KeyedStore {
    KeyedStore::open(dir, OpenOptions::new().sync(sync)).unwrap()
}

/// A master with policy `sync` in `dir/m` and `workers` workers (policy
/// flush) in `dir/w1`..., serving; and a client. Call inside a runtime.
pub(crate) fn start(dir: &Path, sync: SyncPolicy, options: MasterOptions, workers: usize) -> Nodes {
    let id = Identity::loopback().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let master = Master::new(store(&dir.join("m"), sync), options);
    let mep = replication::endpoint(&id, any).unwrap();
    let maddr = mep.local_addr().unwrap();
    tokio::spawn(master.clone().serve(mep));
    let master_node = master.clone();
    let workers = (1..=workers)
        .map(|i| {
            let node = Worker::new(store(&dir.join(format!("w{i}")), SyncPolicy::Flush), maddr);
            let endpoint = replication::endpoint(&id, any).unwrap();
            let addr = endpoint.local_addr().unwrap();
            let task = tokio::spawn(node.clone().run(endpoint.clone()));
            RunningWorker {
                node,
                addr,
                endpoint,
                task,
            }
        })
        .collect();
    Nodes {
        master: master_node,
        maddr,
        workers,
        client: Arc::new(Client::new(&id).unwrap()),
    }
}

/// Waits (up to 4 s) until every worker is in the master's in-sync set.
pub(crate) async fn in_sync(nodes: &Nodes) {
    for _ in 0..200 {
        let (_, ws) = nodes.client.status(nodes.maddr).await.unwrap();
        if ws.len() == nodes.workers.len() && ws.iter().all(|w| w.in_sync) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the workers never joined the in-sync set");
}
