//! `ourkv master` and `ourkv worker`: a node until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ourdb::{Config, OpenOptions};

use crate::cli::{HttpOpts, NodeArgs};
use crate::{gateway, http, resolve, shutdown};

pub(crate) fn open_store(
    node: &NodeArgs,
    default_sync: ourdb::SyncPolicy,
) -> Result<ourdb::keyed::KeyedStore> {
    let opts = OpenOptions::new()
        .config(service_config(node.file_size))
        .sync(node.sync.unwrap_or(default_sync));
    ourdb::keyed::KeyedStore::open(&node.data, opts)
        .with_context(|| format!("open {}", node.data.display()))
}

/// The configuration of a node's store. Values go up to what one record
/// holds (less the envelope), as the API documents; V's default record limit
/// of 4096 bytes would cut them short.
pub(crate) fn service_config(file_size: Option<u32>) -> Config {
    let mut config = Config {
        record_size_max: ourdb::MAX_VALUE_LEN as u32,
        ..Config::default()
    };
    if let Some(f) = file_size {
        config.file_size = f;
    }
    config
}

/// What a node is.
pub(crate) enum Role {
    Master(replication::MasterOptions),
    /// A worker of the master at `master` (in a failover cluster: any
    /// member, and `seeds` more to join through), with an apply delay, and
    /// how it treats workers should it become master (failover).
    Worker {
        master: String,
        seeds: Vec<String>,
        /// Whether the cluster's data may replace the node's where they differ.
        replace_data: bool,
        delay_ms: u64,
        options: replication::MasterOptions,
    },
}

/// The cluster identity in `cluster`, or the loopback-only one.
pub(crate) fn identity(cluster: Option<&Path>) -> Result<replication::Identity> {
    Ok(match cluster {
        Some(dir) => replication::Identity::load(dir)
            .with_context(|| format!("cluster directory {}", dir.display()))?,
        None => replication::Identity::loopback()?,
    })
}

/// Runs a node until SIGINT or SIGTERM, then checkpoints its store.
pub(crate) fn run_node(node: &NodeArgs, role: Role) -> Result<ExitCode> {
    if !node.standalone {
        return run_member(node, role);
    }
    if node.raft_dir.is_some()
        || node.advertise.is_some()
        || node.heartbeat_ms.is_some()
        || node.http.is_some()
        || matches!(&role, Role::Worker { seeds, .. } if !seeds.is_empty())
    {
        bail!(
            "--raft-dir, --advertise, --heartbeat-ms, --seed and --http are options of failover members, not of --standalone"
        );
    }
    let identity = identity(node.cluster.as_deref())?;
    // Check the master's address before anything is opened or sent.
    let master_addr = match &role {
        Role::Worker { master, .. } => {
            let a = resolve(master)?;
            identity.check_peer(a)?;
            Some(a)
        }
        Role::Master(_) => None,
    };
    let rt = node.run.runtime()?;
    rt.block_on(async {
        let (listen, _) = listen_addr(node).await?;
        let endpoint = replication::endpoint(&identity, listen)?;
        let default_sync = match role {
            Role::Master(_) => ourdb::SyncPolicy::Group,
            // A worker can always fetch again what a power cut took.
            Role::Worker { .. } => ourdb::SyncPolicy::Flush,
        };
        let store = open_store(node, default_sync)?;
        let store = match role {
            Role::Master(options) => {
                let m = replication::Master::new(store, options);
                tracing::info!(%listen, "master listening");
                println!("master listening on {}", endpoint.local_addr()?);
                tokio::select! {
                    _ = m.clone().serve(endpoint.clone()) => {}
                    _ = shutdown() => {}
                }
                m.store().clone()
            }
            Role::Worker {
                delay_ms: delay, ..
            } => {
                let master = master_addr.expect("resolved above");
                let w = replication::Worker::new(store, master);
                w.set_apply_delay(std::time::Duration::from_millis(delay));
                println!("worker listening on {}", endpoint.local_addr()?);
                tokio::select! {
                    _ = w.clone().run(endpoint.clone()) => {}
                    _ = shutdown() => {}
                }
                w.store().clone()
            }
        };
        endpoint.close(0u32.into(), b"shutting down");
        // Background tasks may still hold the store; checkpoint what we can.
        store.db().checkpoint()?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where a node listens: `--listen`, or with `--mycelium-api` this host's
/// overlay address on the port of `--listen` (and the node's public key).
async fn listen_addr(node: &NodeArgs) -> Result<(std::net::SocketAddr, Option<String>)> {
    let Some(api) = &node.mycelium_api else {
        return Ok((resolve(&node.listen)?, None));
    };
    let info = mycelium_node(api).await?;
    let port: u16 = node
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("--listen {:?} names no port", node.listen))?;
    Ok((
        std::net::SocketAddr::new(info.ip.into(), port),
        Some(info.pubkey),
    ))
}

/// How long a member waits for a role before it says it listens anyway.
const ROLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `<data>.raft`, beside the data directory (a snapshot install replaces
/// the data directory whole; the metadata must survive that).
fn default_raft_dir(data: &Path) -> PathBuf {
    let mut name = data
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "data".into());
    name.push(".raft");
    data.with_file_name(name)
}

/// Runs a member of a failover cluster until SIGINT or SIGTERM. It takes
/// whichever role the metadata gives it; `role` only says how it starts: a
/// master founds the cluster (nothing happens if it exists already), a
/// worker joins through the address given as its master.
fn run_member(node: &NodeArgs, role: Role) -> Result<ExitCode> {
    // The HTTP flags are checked before anything is opened.
    let http_addr = node.http.as_deref().map(resolve).transpose()?;
    if let Some(h) = http_addr {
        node.http_opts.check(h)?;
    }
    let identity = identity(node.cluster.as_deref())?;
    let (name, options, seeds, delay, replace_data) = match role {
        Role::Master(options) => ("master", options, Vec::new(), 0, false),
        Role::Worker {
            master,
            seeds,
            replace_data,
            delay_ms,
            options,
        } => {
            let mut all = Vec::new();
            for s in std::iter::once(&master).chain(&seeds) {
                let a = resolve(s)?;
                identity.check_peer(a)?;
                all.push(a);
            }
            ("worker", options, all, delay_ms, replace_data)
        }
    };
    let advertise = node.advertise.as_deref().map(resolve).transpose()?;
    let raft_dir = node
        .raft_dir
        .clone()
        .unwrap_or_else(|| default_raft_dir(&node.data));
    let id = replication::cluster::node_id(&raft_dir)
        .with_context(|| format!("raft directory {}", raft_dir.display()))?;
    let rt = node.run.runtime()?;
    rt.block_on(async {
        let http_listener = http_addr.map(http::bind).transpose()?;
        let (listen, pubkey) = listen_addr(node).await?;
        let endpoint = replication::endpoint(&identity, listen)?;
        let addr = match advertise {
            Some(a) => a,
            None => endpoint.local_addr()?,
        };
        if addr.ip().is_unspecified() || addr.port() == 0 {
            bail!(
                "the other members cannot reach {addr}: listen on a host address or give --advertise ADDR"
            );
        }
        // A worker may become master: every member acknowledges only what
        // it has fsynced.
        let store = open_store(node, ourdb::SyncPolicy::Group)?;
        let member = replication::cluster::Node::start(
            store,
            endpoint.clone(),
            &identity,
            replication::cluster::MemberOptions {
                id,
                addr,
                pubkey,
                raft_dir: raft_dir.clone(),
                master: options,
                apply_delay: std::time::Duration::from_millis(delay),
                heartbeat: node.heartbeat_ms.map_or(
                    replication::cluster::DEFAULT_HEARTBEAT,
                    std::time::Duration::from_millis,
                ),
            },
        )
        .await?;
        let first_seed = seeds.first().copied();
        if seeds.is_empty() {
            member.bootstrap().await?;
        } else {
            member.join_through(seeds, replace_data);
        }
        tracing::info!(%addr, id, raft_dir = %raft_dir.display(), "failover member started");
        // "listening" tells scripts the node is of use: wait (boundedly)
        // until it is master or follows one. A worker whose cluster is not
        // up yet keeps trying after the line; but one asking to join with
        // data no master has checked yet says nothing until one has (it
        // may still be refused). A refusal ends the node at any time.
        let refused = {
            let m = member.clone();
            async move { m.join_refused().await }
        };
        tokio::pin!(refused);
        let t = std::time::Instant::now();
        let has_role = async {
            while !member.has_role() && (t.elapsed() < ROLE_WAIT || member.data_unchecked()) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = has_role => {}
            why = &mut refused => return Err(refusal(member, why).await),
        }
        if !member.has_role() {
            tracing::warn!(
                "no role after {ROLE_WAIT:?}: the cluster has no master yet, or it has not admitted this node; still trying"
            );
        }
        let ready = format!(
            "{name} listening on {} (failover member {id}, reached at {addr})",
            endpoint.local_addr()?
        );
        // One line: scripts read the first and may close the pipe after it.
        let serve = async {
            match http_listener {
                Some(listener) => {
                    let gw = node_gateway(&identity, &member, addr, first_seed, &node.http_opts)?;
                    let ready = format!("{ready}; HTTP API on http://{}", listener.local_addr()?);
                    http::serve_on(gw, listener, node.http_opts.limits(), ready).await?;
                }
                None => {
                    println!("{ready}");
                    shutdown().await;
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = serve => r?,
            why = &mut refused => return Err(refusal(member, why).await),
        }
        let store = member.shutdown().await;
        store.db().checkpoint()?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Stops a member the cluster refused (its data left as it was).
async fn refusal(member: std::sync::Arc<replication::cluster::Node>, why: String) -> anyhow::Error {
    member.shutdown().await;
    anyhow::anyhow!("the cluster refused this node: {why}")
}

/// The HTTP API of a member (`--http`): the gateway's code, with this
/// member reached in process and preferred for reads. The master is
/// learnt from the metadata, as a gateway learns it; until then the
/// member itself (a master) or its first seed (a worker) stands in.
fn node_gateway(
    identity: &replication::Identity,
    member: &std::sync::Arc<replication::cluster::Node>,
    addr: std::net::SocketAddr,
    seed: Option<std::net::SocketAddr>,
    opts: &HttpOpts,
) -> Result<std::sync::Arc<gateway::Gateway>> {
    let client = replication::Client::new(identity)?.with_local_member(addr, member.clone());
    let (master, workers) = match seed {
        Some(s) => (s, vec![addr]),
        None => (addr, Vec::new()),
    };
    let gw = opts.configure(
        gateway::Gateway::new(client, master, workers, opts.api_token.clone()).with_local(addr),
    );
    gw.discover();
    Ok(gw)
}

/// Waits for the Mycelium API at `api` (Mycelium may still be starting,
/// as a worker waits for a missing master) and returns this node's info.
pub(crate) async fn mycelium_node(api: &str) -> Result<replication::mycelium::NodeInfo> {
    if !api.starts_with("http://") {
        bail!("--mycelium-api {api:?}: only http:// API addresses are supported");
    }
    loop {
        match replication::mycelium::node_info(api).await {
            Ok(info) => {
                tracing::info!(ip = %info.ip, pubkey = %info.pubkey, "Mycelium overlay address");
                return Ok(info);
            }
            Err(e) => {
                tracing::warn!(api = %api, error = %e, "the Mycelium API does not answer yet; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
