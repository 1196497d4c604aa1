//! `ourkv dev`: the whole service in one process, on loopback.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ourdb::OpenOptions;

use crate::cli::HttpOpts;
use crate::cmd::node::service_config;
use crate::{gateway, http, resolve, runtime};

/// A master and `n` workers in this process, serving QUIC on loopback to
/// each other, and a client that reaches them in process: what `ourkv dev`
/// puts behind its gateway. Call inside a tokio runtime.
pub(crate) struct InProcess {
    pub(crate) master: std::sync::Arc<replication::Master>,
    pub(crate) workers: Vec<std::sync::Arc<replication::Worker>>,
    pub(crate) maddr: std::net::SocketAddr,
    pub(crate) addrs: Vec<std::net::SocketAddr>,
    pub(crate) client: replication::Client,
}

impl InProcess {
    pub(crate) fn start(data: &Path, n: usize, apply_delay_ms: u64) -> Result<InProcess> {
        // A cluster identity of this run alone: the nodes listen on loopback
        // but accept only this process's gateway, never a local `ourkv client`
        // (which would bypass --api-token).
        let identity = replication::Identity::ephemeral()?;
        let open = |name: &str, sync| -> Result<ourdb::keyed::KeyedStore> {
            let dir = data.join(name);
            let opts = OpenOptions::new().config(service_config(None)).sync(sync);
            ourdb::keyed::KeyedStore::open(&dir, opts)
                .with_context(|| format!("open {}", dir.display()))
        };
        let local: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
        let master = replication::Master::new(
            open("master", ourdb::SyncPolicy::Group)?,
            replication::MasterOptions::default(),
        );
        let mep = replication::endpoint(&identity, local)?;
        let maddr = mep.local_addr()?;
        tokio::spawn(master.clone().serve(mep));
        // The gateway reaches these nodes in process (no network, no
        // encoding) through the same client calls, and so the same gateway
        // logic, as a cluster's; shipping and watches use QUIC on loopback.
        let mut client =
            replication::Client::new(&identity)?.with_local_master(maddr, master.clone());
        let mut workers = Vec::new();
        let mut addrs = Vec::new();
        for i in 1..=n {
            let w = replication::Worker::new(
                open(&format!("worker-{i}"), ourdb::SyncPolicy::Flush)?,
                maddr,
            );
            w.set_apply_delay(std::time::Duration::from_millis(apply_delay_ms));
            let wep = replication::endpoint(&identity, local)?;
            let addr = wep.local_addr()?;
            tokio::spawn(w.clone().run(wep));
            client = client.with_local_worker(addr, w.clone());
            addrs.push(addr);
            workers.push(w);
        }
        Ok(InProcess {
            master,
            workers,
            maddr,
            addrs,
            client,
        })
    }
}

/// `ourkv dev`: a master, `n` workers and the gateway in this process, talking
/// QUIC over loopback (no cluster certificates needed there).
pub(crate) fn run_dev(
    data: &Path,
    http: &str,
    n: usize,
    apply_delay_ms: u64,
    opts: HttpOpts,
) -> Result<ExitCode> {
    let http = resolve(http)?;
    if !http.ip().is_loopback() {
        bail!("ourkv dev serves loopback only; {http} is not a loopback address");
    }
    opts.check(http)?;
    runtime()?.block_on(async {
        let nodes = InProcess::start(data, n, apply_delay_ms)?;
        let (master, workers) = (nodes.master.clone(), nodes.workers.clone());
        let gw = gateway::Gateway::new(
            nodes.client,
            nodes.maddr,
            nodes.addrs,
            opts.api_token.clone(),
        );
        let ready = format!(
            "ourkv dev: listening on http://{http} (master and {n} workers, data in {})",
            data.display()
        );
        let gw = gw
            .with_client_timeout(opts.client_timeout())
            .with_max_watches(opts.max_watches);
        // The same as a gateway of a cluster (its standalone nodes refuse
        // the question, and the routes stay as started).
        gw.discover();
        http::serve(gw, http, opts.limits(), ready).await?;
        master.store().db().checkpoint()?;
        for w in &workers {
            w.store().db().checkpoint()?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
