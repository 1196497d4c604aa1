//! `ourkv`: the service binary: `ourkv dev`, the node roles (master,
//! worker), the HTTP gateway, the cluster tools, a client, and the `db`
//! tools. The command line is in `cli`, each command in `cmd`.

use std::process::ExitCode;

mod cli;
mod cmd;
mod config;
mod gateway;
mod http;
mod progress;

use anyhow::{Context, Result};

/// mimalloc instead of glibc's allocator: a request allocates and frees
/// many small buffers across threads (see BENCHMARKS.md for the A/B).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::{Cli, ClusterCmd, Cmd, ConfigCmd};
use cmd::client::client;
use cmd::dev::run_dev;
use cmd::gateway::{run_gateway, Nodes};
use cmd::node::{run_node, Role};

/// An address, a host name, or a Mycelium public key (64 hex digits), with a port.
pub(crate) fn resolve(addr: &str) -> Result<std::net::SocketAddr> {
    Ok(replication::mycelium::resolve_peer(addr)?)
}

pub(crate) fn parse_cursor(s: &str) -> Result<replication::Cursor> {
    replication::Cursor::parse(s).with_context(|| format!("cursor {s:?} is not epoch:file:offset"))
}

/// The runtime of a short command (a client, a tool).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    cli::RunOpts { threads: None }.runtime()
}

impl cli::RunOpts {
    /// The runtime of a long-running role. Without --threads, tokio's own
    /// default: one thread per core, or TOKIO_WORKER_THREADS.
    pub(crate) fn runtime(self) -> Result<tokio::runtime::Runtime> {
        let mut b = match self.threads {
            // One thread: the single-threaded scheduler, which wakes tasks
            // without the work-stealing bookkeeping of the other.
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
            None => tokio::runtime::Builder::new_multi_thread(),
        };
        Ok(b.enable_all().build()?)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Db(cmd) => cmd::db::run(cmd),
        Cmd::Dev {
            data,
            http,
            workers,
            apply_delay_ms,
            http_opts,
            run,
        } => run_dev(&data, &http, workers, apply_delay_ms, http_opts, run),
        Cmd::Gateway {
            http,
            master,
            workers,
            cluster,
            mycelium_api,
            http_opts,
            run,
        } => {
            let nodes = Nodes {
                master,
                workers,
                cluster,
                mycelium_api,
            };
            run_gateway(&http, nodes, http_opts, run)
        }
        Cmd::Cluster(ClusterCmd::Status {
            endpoint,
            token,
            output,
        }) => cmd::kv::cluster_status(&endpoint, token, output),
        Cmd::Cluster(ClusterCmd::Remove(m)) => {
            let info = on_member(&m, |c, addr, id| async move { c.leave(addr, id).await })?;
            println!("removed node {}; {} members left", m.id, info.members.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster(ClusterCmd::Promote(m)) => {
            let info = on_member(&m, |c, addr, id| async move { c.promote(addr, id).await })?;
            let addr = info
                .members
                .iter()
                .find(|r| Some(r.id) == info.master)
                .map_or("?", |r| r.addr.as_str());
            println!(
                "node {} is the master of term {} at {addr}",
                m.id, info.term
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster(ClusterCmd::Init { out }) => {
            replication::init_cluster(&out)?;
            println!(
                "cluster CA and node certificate written to {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Master { node, as_master } => run_node(&node, Role::Master(as_master.options())),
        Cmd::Worker {
            node,
            master,
            seed,
            replace_data,
            apply_delay_ms,
            as_master,
        } => run_node(
            &node,
            Role::Worker {
                master,
                seeds: seed,
                replace_data,
                delay_ms: apply_delay_ms,
                options: as_master.options(),
            },
        ),
        Cmd::Client { cluster, cmd } => client(cluster.as_deref(), cmd),
        Cmd::Config(ConfigCmd::Example { role }) => {
            print!("{}", config::example(role.name()));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kv(args) => cmd::kv::run(args),
        Cmd::Backup(args) => cmd::backup::run(args),
        Cmd::Completions { shell } => {
            cmd::docs::completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { out } => {
            let pages = cmd::docs::man_pages(&out)?;
            println!("{pages} man pages written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The log filter without RUST_LOG: warnings, except openraft's warning per
/// failed heartbeat or replication call, about 18 a second for as long as a
/// member is down (`/v1/cluster` and the metrics show a member down).
const DEFAULT_LOG: &str = "warn,openraft::core::heartbeat=error,openraft::replication=error,\
                           openraft::engine::handler::replication_handler=error";

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG.into()),
        )
        .init();
    let cli = match config::parse(std::env::args_os().collect()) {
        Ok(config::Parsed::Run(cli)) => *cli,
        Ok(config::Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    // Every role holds sockets and files: the soft descriptor limit (often
    // 1,024) is raised to the hard one, as servers commonly do.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(error = %e, "could not raise the descriptor limit");
    }
    // A node whose store failed a commit (a full or failing disk) stops:
    // in a failover cluster another member takes over at once, and a
    // restart (the unit's, or the operator's once the disk is fixed)
    // reopens the store, the only way past a failed fsync. Staying up, it
    // would refuse every write and, as master, hold the role forever.
    replication::fatal::on_store_failure(|why| {
        tracing::error!(
            error = why,
            "the store failed a commit: exiting (restart once the disk has room)"
        );
        eprintln!("error: the store failed a commit ({why}); exiting");
        std::process::exit(1);
    });
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

/// Runs a request about member `m.id` against the member `m.node` names.
fn on_member<F, Fut>(m: &cli::MemberArgs, call: F) -> Result<replication::cluster::ClusterInfo>
where
    F: FnOnce(replication::Client, std::net::SocketAddr, u64) -> Fut,
    Fut: std::future::Future<Output = replication::Result<replication::cluster::ClusterInfo>>,
{
    let identity = cmd::node::identity(m.cluster.as_deref())?;
    let addr = resolve(&m.node)?;
    identity.check_peer(addr)?;
    runtime()?.block_on(async {
        let client = replication::Client::new(&identity)?;
        call(client, addr, m.id).await.map_err(anyhow::Error::from)
    })
}
