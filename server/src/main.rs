//! `ourkv`: the service binary: the node roles (master, worker), the cluster
//! tools, a client, and the `db` tools. The gateway and `ourkv dev` come with
//! the HTTP work.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod gateway;
mod http;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use ourdb::{Config, OpenOptions, OurDb};

#[derive(Parser)]
#[command(name = "ourkv", version, about = "Replicated key-value store on OurDB")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Master, workers and gateway in one process, on loopback.
    Dev {
        #[arg(long, value_name = "DIR", default_value = "./ourkv-data")]
        data: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http: String,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Testing aid: workers wait this long before applying each batch.
        #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
        apply_delay_ms: u64,
        #[command(flatten)]
        http_opts: HttpOpts,
    },
    /// The HTTP gateway in front of a running master and workers.
    Gateway {
        /// Address the HTTP API listens on (host:port).
        #[arg(long, value_name = "ADDR")]
        http: String,
        /// The master node: host:port, or <64-hex Mycelium public key>:port.
        #[arg(long, value_name = "ADDR")]
        master: String,
        /// A worker node to read from (repeat for each); same forms as --master.
        #[arg(long = "worker", value_name = "ADDR")]
        workers: Vec<String>,
        /// Cluster directory (`ourkv cluster init`); without it only
        /// loopback nodes can be reached.
        #[arg(long, value_name = "DIR")]
        cluster: Option<PathBuf>,
        /// Local Mycelium API (`http://127.0.0.1:8989`): wait for it at
        /// start, and reach the nodes from this host's overlay address.
        #[arg(long, value_name = "URL")]
        mycelium_api: Option<String>,
        #[command(flatten)]
        http_opts: HttpOpts,
    },
    /// Work on one OurDB directory (V's or ourkv's).
    #[command(subcommand)]
    Db(DbCmd),
    /// Cluster identity.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Run the master: takes writes, ships its log to workers.
    Master {
        #[command(flatten)]
        node: NodeArgs,
        /// How long an ack=all write waits for a worker before dropping it from the in-sync set.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        ack_timeout_ms: u64,
        /// A worker further behind than this leaves the in-sync set.
        #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
        max_lag_bytes: u64,
    },
    /// Run a worker: follows the master, serves reads.
    Worker {
        #[command(flatten)]
        node: NodeArgs,
        /// The master's QUIC address.
        #[arg(long)]
        master: String,
        /// Testing aid: wait this long before applying each batch of records.
        #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
        apply_delay_ms: u64,
    },
    /// Talk to a running node.
    Client {
        /// Cluster directory; without it only loopback nodes can be reached.
        #[arg(long, value_name = "DIR")]
        cluster: Option<PathBuf>,
        #[command(subcommand)]
        cmd: ClientCmd,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Make a cluster CA and a node certificate signed by it.
    Init {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// Data directory (an OurDB directory with the keyed layer).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// QUIC address to listen on. With --mycelium-api only its port counts.
    #[arg(long)]
    listen: String,
    /// Local Mycelium API (`http://127.0.0.1:8989`): listen on this node's
    /// overlay address.
    #[arg(long, value_name = "URL")]
    mycelium_api: Option<String>,
    /// Cluster directory from `ourkv cluster init`. Without it a node runs
    /// only on loopback, with encryption but no authentication.
    #[arg(long, value_name = "DIR")]
    cluster: Option<PathBuf>,
    /// Data file size; every node of a cluster must use the same.
    #[arg(long, value_name = "BYTES")]
    file_size: Option<u32>,
    /// never, flush, always or group (the master's default: group; workers: flush).
    #[arg(long)]
    sync: Option<ourdb::SyncPolicy>,
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Store VALUE under KEY on the master; prints the cursor after the write.
    Set {
        node: String,
        key: String,
        value: String,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, default_value = "master")]
        ack: replication::Ack,
    },
    /// Delete KEY on the master.
    Delete {
        node: String,
        key: String,
        #[arg(long, default_value = "master")]
        ack: replication::Ack,
    },
    /// The master's cursor and its workers (cursor, in sync or not).
    Status { node: String },
    /// Read KEY from a node once it applied CURSOR (`epoch:file:offset`).
    Get {
        node: String,
        key: String,
        #[arg(long, value_name = "CURSOR")]
        at: Option<String>,
    },
    /// The master's commit cursor.
    ReadIndex { node: String },
    /// A digest of a node's data files.
    Digest { node: String },
    /// Write COUNT keys PREFIX0, PREFIX1, … with SIZE-byte values from
    /// CONCURRENCY tasks; prints writes/s and latency percentiles.
    Load {
        node: String,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value = "load/")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
        #[arg(long, default_value = "master")]
        ack: replication::Ack,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Print one JSON line per live id, ascending.
    Dump {
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Add up to D versions per id, newest first.
        #[arg(long, value_name = "D")]
        history: Option<usize>,
    },
    /// Read dump lines from stdin into a new directory.
    Restore {
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
    /// Check CRCs, history chains and framing; exit 1 on damage.
    Verify {
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
    /// Rebuild the lookup dump of a V directory that has none.
    Recover {
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Exit 2 if the rebuild had to assume or skip anything.
        #[arg(long)]
        strict: bool,
    },
    /// Rewrite without dead records, atomically.
    Compact {
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Keep at most D versions per id (all when absent).
        #[arg(long, value_name = "D")]
        history: Option<usize>,
    },
    /// Print the configuration and state of a directory.
    Info {
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
}

/// The shape of a V directory, which stores no configuration of its own.
#[derive(Args, Clone, Debug, Default)]
struct Shape {
    /// Lookup entry width: 2, 3, 4 or 6.
    #[arg(long, value_name = "K")]
    keysize: Option<u8>,
    #[arg(long, value_name = "N")]
    record_nr_max: Option<u32>,
    #[arg(long, value_name = "S")]
    record_size_max: Option<u32>,
    #[arg(long, value_name = "BYTES")]
    file_size: Option<u32>,
    /// Key-value mode (ids given by the caller) instead of incremental.
    #[arg(long)]
    kv: bool,
}

impl Shape {
    fn given(&self) -> bool {
        self.keysize.is_some() || self.record_nr_max.is_some() || self.record_size_max.is_some()
    }

    /// The configuration the flags describe, V's defaults filling the gaps.
    fn config(&self) -> Config {
        let d = Config::default();
        Config {
            // With only a keysize, every id a lookup entry can name is allowed.
            record_nr_max: self.record_nr_max.unwrap_or(if self.keysize.is_some() {
                u32::MAX
            } else {
                d.record_nr_max
            }),
            record_size_max: self.record_size_max.unwrap_or(d.record_size_max),
            file_size: self.file_size.unwrap_or(d.file_size),
            incremental: !self.kv,
            keysize: self.keysize,
        }
    }

    /// The configuration to open an existing directory with.
    fn for_existing(&self, dir: &Path) -> Result<Option<Config>> {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        if ourdb::Meta::load(dir)?.is_some() {
            return Ok(self.given().then(|| self.config()));
        }
        if !self.given() {
            bail!(
                "{} is a V directory (no {}): give its shape with --keysize K or --record-nr-max N --record-size-max S",
                dir.display(),
                ourdb::META_FILE
            );
        }
        Ok(Some(self.config()))
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn open_read_only(dir: &Path, shape: &Shape) -> Result<OurDb> {
    let mut opts = OpenOptions::new().read_only(true).create(false);
    opts.config = shape.for_existing(dir)?;
    opts.open(dir)
        .with_context(|| format!("open {}", dir.display()))
}

fn dump(dir: &Path, shape: &Shape, history: Option<usize>) -> Result<ExitCode> {
    let db = open_read_only(dir, shape)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0u64;
    for id in db.ids().collect::<Vec<_>>() {
        let line = match history {
            None => db.get(id).map(|v| DumpLine {
                id,
                value: b64(&v),
                history: None,
            }),
            Some(d) => db.get_history(id, d.max(1)).map(|h| DumpLine {
                id,
                value: b64(&h[0]),
                history: Some(h.iter().take(d).map(|v| b64(v)).collect()),
            }),
        };
        match line {
            Ok(l) => writeln!(out, "{}", serde_json::to_string(&l)?)?,
            Err(e) => {
                failed += 1;
                eprintln!("id {id}: {e}");
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} ids could not be read; the dump is incomplete");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `db dump` / `db restore`; field order is the contract.
#[derive(serde::Serialize, serde::Deserialize)]
struct DumpLine {
    id: u32,
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history: Option<Vec<String>>,
}

fn restore(dir: &Path, shape: &Shape) -> Result<ExitCode> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: restore writes a new directory",
            dir.display()
        );
    }
    let db = OpenOptions::new()
        .config(shape.config())
        .sync(ourdb::SyncPolicy::Never)
        .open(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let dec = base64::engine::general_purpose::STANDARD;
    let mut n = 0u64;
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let l: DumpLine = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a dump line", i + 1))?;
        let current = dec
            .decode(&l.value)
            .with_context(|| format!("line {}: value is not base64", i + 1))?;
        // Oldest version first, so the chain on disk matches the history.
        let mut versions = match l.history {
            Some(h) if !h.is_empty() => h
                .iter()
                .map(|v| dec.decode(v))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("line {}: history is not base64", i + 1))?,
            _ => vec![current.clone()],
        };
        if versions[0] != current {
            bail!("line {}: history[0] differs from value", i + 1);
        }
        versions.reverse();
        for v in &versions {
            db.import(l.id, v)
                .with_context(|| format!("line {}: id {}", i + 1, l.id))?;
        }
        n += 1;
    }
    db.close()?;
    eprintln!("restored {n} ids into {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn info(dir: &Path, shape: &Shape) -> Result<ExitCode> {
    let db = open_read_only(dir, shape)?;
    let c = db.config();
    let m = db.meta();
    println!("directory: {}", dir.display());
    println!(
        "origin: {}",
        match m.origin {
            ourdb::Origin::Ourkv => "ourkv",
            ourdb::Origin::V => "v",
        }
    );
    println!("epoch: {}", m.epoch);
    println!("keysize: {}", db.keysize());
    println!("record_nr_max: {}", c.record_nr_max);
    println!("record_size_max: {}", c.record_size_max);
    println!("file_size: {}", c.file_size);
    println!(
        "mode: {}",
        if c.incremental {
            "incremental"
        } else {
            "key-value"
        }
    );
    println!("live_ids: {}", db.len());
    match db.next_id() {
        Ok(n) => println!("next_id: {n}"),
        Err(_) => println!("next_id: -"),
    }
    for nr in ourdb::files::list_data_files(dir)? {
        let p = ourdb::files::data_path(dir, nr);
        println!("data_file: {nr}.db {} bytes", std::fs::metadata(&p)?.len());
    }
    let r = db.open_report();
    println!("journal_entries_redone: {}", r.redone);
    if let Some(rf) = &r.rolled_forward {
        println!("rolled_forward_records: {}", rf.records);
    }
    Ok(ExitCode::SUCCESS)
}

/// An address, a host name, or a Mycelium public key (64 hex digits), with a port.
fn resolve(addr: &str) -> Result<std::net::SocketAddr> {
    Ok(replication::mycelium::resolve_peer(addr)?)
}

fn parse_cursor(s: &str) -> Result<replication::Cursor> {
    replication::Cursor::parse(s).with_context(|| format!("cursor {s:?} is not epoch:file:offset"))
}

fn open_store(
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
fn service_config(file_size: Option<u32>) -> Config {
    let mut config = Config {
        record_size_max: ourdb::MAX_VALUE_LEN as u32,
        ..Config::default()
    };
    if let Some(f) = file_size {
        config.file_size = f;
    }
    config
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Options of the HTTP API (`dev` and `gateway`).
#[derive(Args, Debug, Clone)]
struct HttpOpts {
    /// Require `Authorization: Bearer TOKEN` on the HTTP API.
    #[arg(long, env = "OURKV_API_TOKEN", value_name = "TOKEN")]
    api_token: Option<String>,
    /// How long a client may take to send a request's headers (then the
    /// connection is closed) and then its body (then 408).
    #[arg(long, value_name = "MS", default_value_t = gateway::DEFAULT_CLIENT_TIMEOUT.as_millis() as u64)]
    client_timeout_ms: u64,
    /// The most HTTP connections open at once; past it, a connection that
    /// has sent nothing for a second is closed to make room, else the new
    /// one gets 503. Default: what the descriptor limit allows, at most 16,384.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// The most watches (`/v1/watch` streams) open at once; past it, 503.
    #[arg(long, value_name = "N", default_value_t = gateway::DEFAULT_MAX_WATCHES)]
    max_watches: usize,
}

impl HttpOpts {
    /// Refuses a token nobody could send (empty, or only blanks: a blank
    /// `OURKV_API_TOKEN=` would start a node that answers every request 401),
    /// and warns loudly when a non-loopback API has no token at all.
    fn check(&self, http: std::net::SocketAddr) -> Result<()> {
        if let Some(t) = &self.api_token {
            if t.trim().is_empty() || t.chars().any(|c| c.is_ascii_control() || c == ' ') {
                bail!("--api-token (or OURKV_API_TOKEN) is empty or holds spaces or control characters: give a usable token, or none");
            }
        }
        if self.api_token.is_none() && !http.ip().is_loopback() {
            tracing::warn!(%http, "the HTTP API listens beyond loopback without --api-token: anyone who reaches it can read and write, in plain text");
            eprintln!("WARNING: the HTTP API on {http} has no --api-token: anyone who reaches it can read and write, in plain text");
        }
        Ok(())
    }

    fn client_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.client_timeout_ms.max(1))
    }

    fn limits(&self) -> http::Limits {
        http::Limits::new(self.client_timeout(), self.max_connections)
    }
}

enum Role {
    Master(replication::MasterOptions),
    /// A worker of the master at this address, with an apply delay in ms.
    Worker(String, u64),
}

/// Runs a node until SIGINT or SIGTERM, then checkpoints its store.
fn identity(cluster: Option<&Path>) -> Result<replication::Identity> {
    Ok(match cluster {
        Some(dir) => replication::Identity::load(dir)
            .with_context(|| format!("cluster directory {}", dir.display()))?,
        None => replication::Identity::loopback()?,
    })
}

fn run_node(node: &NodeArgs, role: Role) -> Result<ExitCode> {
    let identity = identity(node.cluster.as_deref())?;
    // Check the master's address before anything is opened or sent.
    let master_addr = match &role {
        Role::Worker(addr, _) => {
            let a = resolve(addr)?;
            identity.check_peer(a)?;
            Some(a)
        }
        Role::Master(_) => None,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let listen = match &node.mycelium_api {
            None => resolve(&node.listen)?,
            Some(api) => {
                let info = mycelium_node(api).await?;
                let port: u16 = node
                    .listen
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .with_context(|| format!("--listen {:?} names no port", node.listen))?;
                std::net::SocketAddr::new(info.ip.into(), port)
            }
        };
        let endpoint = replication::endpoint(&identity, listen)?;
        let default_sync = match role {
            Role::Master(_) => ourdb::SyncPolicy::Group,
            // A worker can always fetch again what a power cut took.
            Role::Worker(..) => ourdb::SyncPolicy::Flush,
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
            Role::Worker(_, delay) => {
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

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn client(cluster: Option<&Path>, cmd: ClientCmd) -> Result<ExitCode> {
    let identity = identity(cluster)?;
    runtime()?.block_on(async {
        let c = replication::Client::new(&identity)?;
        match cmd {
            ClientCmd::Set {
                node,
                key,
                value,
                ack,
            } => {
                let cursor = c
                    .set_with(resolve(&node)?, &key, value.as_bytes(), ack)
                    .await?;
                println!("{cursor}");
            }
            ClientCmd::Status { node } => {
                let (cursor, workers) = c.status(resolve(&node)?).await?;
                println!("master cursor {cursor}");
                for w in workers {
                    println!(
                        "worker {} acked {} {}",
                        w.addr,
                        w.acked,
                        if w.in_sync { "in-sync" } else { "out-of-sync" }
                    );
                }
            }
            ClientCmd::Delete { node, key, ack } => {
                let (existed, cursor) = c.delete_with(resolve(&node)?, &key, ack).await?;
                println!("{cursor} {}", if existed { "deleted" } else { "absent" });
            }
            ClientCmd::Get { node, key, at } => {
                let at = at
                    .as_deref()
                    .map(parse_cursor)
                    .transpose()?
                    .unwrap_or(replication::Cursor::ZERO);
                match c.get(resolve(&node)?, &key, at).await? {
                    Some(v) => {
                        std::io::stdout().write_all(&v)?;
                        println!();
                    }
                    None => {
                        eprintln!("key {key:?} not found");
                        return Ok(ExitCode::from(4));
                    }
                }
            }
            ClientCmd::ReadIndex { node } => {
                let cursor = c.read_index(resolve(&node)?).await?;
                println!("{cursor}");
            }
            ClientCmd::Digest { node } => println!("{}", c.digest(resolve(&node)?).await?),
            ClientCmd::Load {
                node,
                count,
                prefix,
                size,
                concurrency,
                ack,
            } => {
                let addr = resolve(&node)?;
                let c = std::sync::Arc::new(c);
                let start = std::time::Instant::now();
                let tasks: Vec<_> = (0..concurrency.max(1))
                    .map(|t| {
                        let (c, prefix) = (c.clone(), prefix.clone());
                        tokio::spawn(async move {
                            let mut lat = Vec::new();
                            let mut i = t;
                            while i < count {
                                let value = vec![b'a' + (i % 26) as u8; size];
                                let t0 = std::time::Instant::now();
                                c.set_with(addr, &format!("{prefix}{i}"), &value, ack)
                                    .await?;
                                lat.push(t0.elapsed());
                                i += concurrency.max(1);
                            }
                            anyhow::Ok(lat)
                        })
                    })
                    .collect();
                let mut lat = Vec::new();
                for t in tasks {
                    lat.extend(t.await??);
                }
                let took = start.elapsed();
                lat.sort_unstable();
                let pct = |p: f64| {
                    lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or_default()
                };
                println!(
                    "{count} writes in {:.2} s: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms",
                    took.as_secs_f64(),
                    count as f64 / took.as_secs_f64(),
                    pct(0.5).as_secs_f64() * 1e3,
                    pct(0.99).as_secs_f64() * 1e3
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The nodes a gateway talks to, and how.
struct Nodes {
    master: String,
    workers: Vec<String>,
    cluster: Option<PathBuf>,
    mycelium_api: Option<String>,
}

/// Waits for the Mycelium API at `api` (Mycelium may still be starting,
/// as a worker waits for a missing master) and returns this node's info.
async fn mycelium_node(api: &str) -> Result<replication::mycelium::NodeInfo> {
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

fn run_gateway(http: &str, nodes: Nodes, opts: HttpOpts) -> Result<ExitCode> {
    let identity = identity(nodes.cluster.as_deref())?;
    let master = resolve(&nodes.master)?;
    identity.check_peer(master)?;
    let workers = nodes
        .workers
        .iter()
        .map(|w| resolve(w))
        .collect::<Result<Vec<_>>>()?;
    for w in &workers {
        identity.check_peer(*w)?;
    }
    let http = resolve(http)?;
    opts.check(http)?;
    runtime()?.block_on(async {
        let mut client = replication::Client::new(&identity)?;
        if let Some(api) = &nodes.mycelium_api {
            let info = mycelium_node(api).await?;
            for n in std::iter::once(&master).chain(&workers) {
                if !replication::identity::is_overlay(n.ip()) {
                    tracing::warn!(node = %n, "with --mycelium-api, this node is not on the overlay (400::/7)");
                }
            }
            client = client.with_v6_source(info.ip)?;
        }
        let gw = gateway::Gateway::new(
            client,
            master,
            workers,
            opts.api_token.clone(),
        )
        .with_client_timeout(opts.client_timeout())
        .with_max_watches(opts.max_watches);
        http::serve(
            gw,
            http,
            opts.limits(),
            format!("gateway listening on http://{http}"),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ourkv dev`: a master, `n` workers and the gateway in this process, talking
/// QUIC over loopback (no cluster certificates needed there).
fn run_dev(
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
    runtime()?.block_on(async {
        let master = replication::Master::new(
            open("master", ourdb::SyncPolicy::Group)?,
            replication::MasterOptions::default(),
        );
        let mep = replication::endpoint(&identity, local)?;
        let maddr = mep.local_addr()?;
        tokio::spawn(master.clone().serve(mep));
        let mut workers = Vec::new();
        let mut addrs = Vec::new();
        for i in 1..=n {
            let w = replication::Worker::new(
                open(&format!("worker-{i}"), ourdb::SyncPolicy::Flush)?,
                maddr,
            );
            w.set_apply_delay(std::time::Duration::from_millis(apply_delay_ms));
            let wep = replication::endpoint(&identity, local)?;
            addrs.push(wep.local_addr()?);
            tokio::spawn(w.clone().run(wep));
            workers.push(w);
        }
        let gw = gateway::Gateway::new(
            replication::Client::new(&identity)?,
            maddr,
            addrs,
            opts.api_token.clone(),
        )
        .with_local(gateway::Local {
            master: master.clone(),
            workers: workers.clone(),
        });
        let ready = format!(
            "ourkv dev: listening on http://{http} (master and {n} workers, data in {})",
            data.display()
        );
        let gw = gw
            .with_client_timeout(opts.client_timeout())
            .with_max_watches(opts.max_watches);
        http::serve(gw, http, opts.limits(), ready).await?;
        master.store().db().checkpoint()?;
        for w in &workers {
            w.store().db().checkpoint()?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cmd = match cli.cmd {
        Cmd::Db(cmd) => cmd,
        Cmd::Dev {
            data,
            http,
            workers,
            apply_delay_ms,
            http_opts,
        } => return run_dev(&data, &http, workers, apply_delay_ms, http_opts),
        Cmd::Gateway {
            http,
            master,
            workers,
            cluster,
            mycelium_api,
            http_opts,
        } => {
            let nodes = Nodes {
                master,
                workers,
                cluster,
                mycelium_api,
            };
            return run_gateway(&http, nodes, http_opts);
        }
        Cmd::Cluster(ClusterCmd::Init { out }) => {
            replication::init_cluster(&out)?;
            println!(
                "cluster CA and node certificate written to {}",
                out.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Master {
            node,
            ack_timeout_ms,
            max_lag_bytes,
        } => {
            let options = replication::MasterOptions {
                ack_timeout: std::time::Duration::from_millis(ack_timeout_ms),
                max_lag_bytes,
            };
            return run_node(&node, Role::Master(options));
        }
        Cmd::Worker {
            node,
            master,
            apply_delay_ms,
        } => return run_node(&node, Role::Worker(master, apply_delay_ms)),
        Cmd::Client { cluster, cmd } => return client(cluster.as_deref(), cmd),
    };
    match cmd {
        DbCmd::Dump {
            dir,
            shape,
            history,
        } => dump(&dir, &shape, history),
        DbCmd::Restore { dir, shape } => restore(&dir, &shape),
        DbCmd::Info { dir, shape } => info(&dir, &shape),
        DbCmd::Verify { dir, shape } => {
            let r = ourdb::tools::verify(&dir, shape.for_existing(&dir)?)?;
            println!(
                "live_ids: {}\nversions_checked: {}\nbytes_scanned: {}\nproblems: {}",
                r.live_ids,
                r.versions_checked,
                r.bytes_scanned,
                r.problems.len()
            );
            for p in &r.problems {
                println!("problem: {p}");
            }
            Ok(if r.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        DbCmd::Recover { dir, shape, strict } => {
            if shape.for_existing(&dir)?.is_none() {
                bail!(
                    "{} was written by ourkv: its journal recovers it on open",
                    dir.display()
                );
            }
            let r = ourdb::tools::recover(&dir, &shape.config())?;
            println!(
                "records: {}\ninserts: {}\nupdates: {}\ndeleted: {}",
                r.records, r.inserts, r.updates, r.deleted
            );
            for a in &r.assumptions {
                println!("assumed: {a}");
            }
            for u in &r.undecided {
                println!("undecided: {u}");
            }
            Ok(if strict && !r.is_certain() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        DbCmd::Compact {
            dir,
            shape,
            history,
        } => {
            let r = ourdb::tools::compact(&dir, shape.for_existing(&dir)?, history)?;
            println!(
                "live_ids: {}\nversions_kept: {}\nbytes_before: {}\nbytes_after: {}\nepoch: {}",
                r.live_ids, r.versions_kept, r.bytes_before, r.bytes_after, r.epoch
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    // Every role holds sockets and files: the soft descriptor limit (often
    // 1,024) is raised to the hard one, as servers commonly do.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(error = %e, "could not raise the descriptor limit");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A reader that stops early (`| head`) is not an error.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
