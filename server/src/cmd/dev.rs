//! `ourkv dev`: the whole service in one process, on loopback.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ourdb::OpenOptions;

use crate::cli::{HttpOpts, RunOpts};
use crate::cmd::node::service_config;
use crate::{gateway, http, resolve};

/// A failover cluster of `n + 1` members in this process, serving QUIC on
/// loopback to each other, and a client that reaches them in process: what
/// `ourkv dev` puts behind its gateway. The members are the ones a cluster
/// runs (Raft metadata, in-sync set, high-water mark, group commit on every
/// member); only the gateway's requests skip the network. Call inside a
/// tokio runtime.
pub(crate) struct InProcess {
    pub(crate) members: Vec<std::sync::Arc<replication::cluster::Node>>,
    /// The master's address once the cluster has one.
    pub(crate) maddr: std::net::SocketAddr,
    /// The other members' addresses.
    pub(crate) addrs: Vec<std::net::SocketAddr>,
    pub(crate) client: replication::Client,
}

/// How long `ourkv dev` waits for its members to take their roles.
const FORM_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl InProcess {
    pub(crate) async fn start(data: &Path, n: usize, apply_delay_ms: u64) -> Result<InProcess> {
        // A cluster identity of this run alone: the nodes listen on loopback
        // but accept only this process's gateway, never a local `ourkv client`
        // (which would bypass --api-token).
        let identity = replication::Identity::ephemeral()?;
        let mut client = replication::Client::new(&identity)?;
        let mut members = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..=n {
            let name = if i == 0 {
                "master".to_string()
            } else {
                format!("worker-{i}")
            };
            let dir = data.join(&name);
            let opts = OpenOptions::new()
                .config(service_config(None))
                .sync(ourdb::SyncPolicy::Group);
            let store = ourdb::keyed::KeyedStore::open(&dir, opts)
                .with_context(|| format!("open {}", dir.display()))?;
            let raft_dir = data.join(format!("{name}.raft"));
            let id = replication::cluster::node_id(&raft_dir)
                .with_context(|| format!("raft directory {}", raft_dir.display()))?;
            // The members know each other by address: a restart listens
            // where the last run did.
            let port_file = raft_dir.join("dev-port");
            let port: u16 = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            let endpoint = replication::endpoint(&identity, ([127, 0, 0, 1], port).into())
                .with_context(|| {
                    format!("{name} listens on 127.0.0.1:{port}, where the last run did")
                })?;
            let addr = endpoint.local_addr()?;
            std::fs::write(&port_file, addr.port().to_string())
                .with_context(|| format!("write {}", port_file.display()))?;
            let member = replication::cluster::Node::start(
                store,
                endpoint,
                &identity,
                replication::cluster::MemberOptions {
                    id,
                    addr,
                    pubkey: None,
                    raft_dir,
                    master: replication::MasterOptions::default(),
                    apply_delay: std::time::Duration::from_millis(apply_delay_ms),
                    heartbeat: replication::cluster::DEFAULT_HEARTBEAT,
                },
            )
            .await?;
            match addrs.first() {
                None => member.bootstrap().await?,
                Some(first) => member.join_through(vec![*first], false),
            }
            client = client.with_local_member(addr, member.clone());
            addrs.push(addr);
            members.push(member);
        }
        // Ready once there is a master and every member follows it.
        let t = std::time::Instant::now();
        let master = loop {
            let master = members
                .iter()
                .find(|m| m.info().master == Some(m.id()) && m.has_role())
                .map(|m| m.local_addr());
            if let Some(m) = master.filter(|_| members.iter().all(|m| m.has_role())) {
                break m;
            }
            if t.elapsed() > FORM_WAIT {
                bail!("the in-process members took no roles within {FORM_WAIT:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        addrs.retain(|a| *a != master);
        Ok(InProcess {
            members,
            maddr: master,
            addrs,
            client,
        })
    }

    /// Stops `members` and checkpoints their stores.
    pub(crate) async fn stop(
        members: Vec<std::sync::Arc<replication::cluster::Node>>,
    ) -> Result<()> {
        for m in members {
            m.shutdown().await.db().checkpoint()?;
        }
        Ok(())
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
    run: RunOpts,
) -> Result<ExitCode> {
    let http = resolve(http)?;
    if !http.ip().is_loopback() {
        bail!("ourkv dev serves loopback only; {http} is not a loopback address");
    }
    opts.check(http)?;
    run.runtime()?.block_on(async {
        let nodes = InProcess::start(data, n, apply_delay_ms).await?;
        let members = nodes.members.clone();
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
        let gw = opts.configure(gw);
        // Follows the master as a cluster's gateway does.
        gw.discover();
        http::serve(gw, http, opts.limits(), ready).await?;
        InProcess::stop(members).await
    })?;
    Ok(ExitCode::SUCCESS)
}
