//! The command line: clap types only (what each command and flag is).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::gateway;

#[derive(Parser)]
#[command(name = "ourkv", version, about = "Replicated key-value store on OurDB")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Master, workers and gateway in one process, on loopback.
    Dev {
        /// Where the master's and the workers' directories go.
        #[arg(long, value_name = "DIR", default_value = "./ourkv-data")]
        data: PathBuf,
        /// HTTP address of the gateway.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = addr)]
        http: String,
        /// How many workers (1 to 32: each holds a full copy in this one
        /// process).
        #[arg(long, default_value_t = 2,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=32))]
        workers: usize,
        /// Testing aid: workers wait this long before applying each batch.
        #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
        apply_delay_ms: u64,
        #[command(flatten)]
        http_opts: HttpOpts,
        #[command(flatten)]
        run: RunOpts,
    },
    /// The HTTP gateway in front of a running master and workers.
    Gateway {
        /// Address the HTTP API listens on (host:port).
        #[arg(long, value_name = "ADDR", value_parser = addr)]
        http: String,
        /// The master node: host:port, or <64-hex Mycelium public key>:port.
        #[arg(long, value_name = "ADDR", value_parser = peer_addr)]
        master: String,
        /// A worker node to read from (repeat for each); same forms as --master.
        #[arg(long = "worker", value_name = "ADDR", value_parser = peer_addr)]
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
        #[command(flatten)]
        run: RunOpts,
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
        #[command(flatten)]
        as_master: MasterArgs,
    },
    /// Run a worker: follows the master, serves reads.
    Worker {
        #[command(flatten)]
        node: NodeArgs,
        /// The master's QUIC address (in a failover cluster: any member's,
        /// through which this node joins).
        #[arg(long, value_parser = peer_addr)]
        master: String,
        /// More members to join through when --master does not answer
        /// (repeat for each; failover members only). A node that is a member
        /// already needs none: it knows the members from its metadata.
        #[arg(long, value_name = "ADDR", value_parser = peer_addr)]
        seed: Vec<String>,
        /// Failover: let the cluster's data replace what the data directory
        /// holds where it differs. Without it, a new member whose data is
        /// not a prefix of the cluster's log is refused (exit 1), its data
        /// untouched.
        #[arg(long, conflicts_with = "standalone")]
        replace_data: bool,
        /// Testing aid: wait this long before applying each batch of records.
        #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
        apply_delay_ms: u64,
        #[command(flatten)]
        as_master: MasterArgs,
    },
    /// Keys and values over the HTTP API (get, put, del, ls, history, watch).
    /// Exit codes: 0 ok, 1 not found, 2 usage, 3 precondition failed,
    /// 4 refused (other 4xx), 5 unavailable (5xx or no connection).
    Kv(KvArgs),
    /// Copy a running cluster's data into a new directory without stopping
    /// it (an online backup through the gateway); a node started on the
    /// directory (`ourkv master --data DIR`) serves it. Exit codes as for
    /// `kv`: 2 OUT not a new or empty directory, 4 refused, 5 unavailable or
    /// cut short.
    Backup(BackupArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// to standard output, e.g. `ourkv completions bash > /etc/bash_completion.d/ourkv`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (`ourkv.1` and one per subcommand) into a directory.
    Man {
        /// Where the pages go (created if missing).
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
    /// Config files of the roles.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Talk to a running node.
    Client {
        /// Cluster directory; without it only loopback nodes can be reached.
        #[arg(long, value_name = "DIR")]
        cluster: Option<PathBuf>,
        #[command(subcommand)]
        cmd: ClientCmd,
    },
}

/// A member of a failover cluster, and the way to it.
#[derive(Args)]
pub(crate) struct MemberArgs {
    /// The member's node id (`ourkv cluster status -o json`, `members`).
    pub(crate) id: u64,
    /// Any member's QUIC address.
    #[arg(long)]
    pub(crate) node: String,
    /// Cluster directory; without it only loopback nodes can be reached.
    #[arg(long, value_name = "DIR")]
    pub(crate) cluster: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Make a cluster CA and a node certificate signed by it.
    Init {
        /// Where the CA and the node certificate go.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Remove a member of a failover cluster for good. Refused for the
    /// master and for a member of the in-sync set: stop the node first, and
    /// the master drops it from the set after its ack timeout.
    Remove(MemberArgs),
    /// Make a member of the in-sync set the master of a failover cluster
    /// (a planned handover): the master stops taking writes, waits until
    /// the member holds everything it wrote and hands over. Nothing is lost;
    /// writes pause for the handover (refused as `not_master`, which the
    /// gateway retries on the new master).
    Promote(MemberArgs),
    /// Every node as a gateway sees it: role, address, cursor, lag, in sync.
    Status {
        /// The gateway's HTTP address.
        #[arg(long, env = "OURKV_ENDPOINT", default_value = "http://127.0.0.1:8080")]
        endpoint: String,
        /// Bearer token, when the gateway runs with --api-token.
        #[arg(long, env = "OURKV_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Output: table (default) or json.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
}

/// How a master treats its workers (a failover worker too, once it is master).
#[derive(Args)]
pub(crate) struct MasterArgs {
    /// How long an ack=all write waits for a worker before dropping it from the in-sync set; also how long any in-sync worker may lack a commit before it is dropped.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ack_timeout_ms: u64,
    /// A worker further behind than this many bytes leaves the in-sync set at once; 0: no limit in bytes (a burst of large writes then holds ack=all writes back instead of dropping every worker).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub(crate) max_lag_bytes: u64,
}

impl MasterArgs {
    pub(crate) fn options(&self) -> replication::MasterOptions {
        replication::MasterOptions {
            ack_timeout: std::time::Duration::from_millis(self.ack_timeout_ms),
            max_lag_bytes: self.max_lag_bytes,
        }
    }
}

#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Data directory (an OurDB directory with the keyed layer).
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
    /// QUIC address to listen on. With --mycelium-api only its port counts.
    #[arg(long, value_parser = listen_addr)]
    pub(crate) listen: String,
    /// Local Mycelium API (`http://127.0.0.1:8989`): listen on this node's
    /// overlay address.
    #[arg(long, value_name = "URL")]
    pub(crate) mycelium_api: Option<String>,
    /// Cluster directory from `ourkv cluster init`. Without it a node runs
    /// only on loopback, with encryption but no authentication.
    #[arg(long, value_name = "DIR")]
    pub(crate) cluster: Option<PathBuf>,
    /// Data file size; every node of a cluster must use the same.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) file_size: Option<u32>,
    /// never, flush, always or group (default: group; workers with
    /// --standalone: flush).
    #[arg(long)]
    pub(crate) sync: Option<ourdb::SyncPolicy>,
    /// Run as a member of a failover cluster (the default): the members
    /// elect a new master when the master fails. The master starts the
    /// cluster (or rejoins it when restarted); a worker joins it through
    /// --master, which may be any member.
    #[arg(long, conflicts_with = "standalone")]
    pub(crate) failover: bool,
    /// Run without failover: one fixed master, whose workers only follow it.
    #[arg(long)]
    pub(crate) standalone: bool,
    /// Failover: where the node id and the metadata log live
    /// (default: the data directory's name with `.raft` added, beside it).
    #[arg(long, value_name = "DIR")]
    pub(crate) raft_dir: Option<PathBuf>,
    /// Failover: the QUIC address the other members and the gateway
    /// reach this node at (default: the listen address, which then must name
    /// a host, not 0.0.0.0 or [::]).
    #[arg(long, value_name = "ADDR", value_parser = peer_addr)]
    pub(crate) advertise: Option<String>,
    /// Failover: how often the metadata group's leader sends heartbeats, in
    /// milliseconds (default 50, for a LAN). Each heartbeat must be
    /// answered within this time, so set it above the largest round trip
    /// between members (e.g. 500 across the internet over Mycelium); a
    /// member campaigns after 3 to 6 missed ones. Fixed when the cluster
    /// is made: every member must be started with the same value.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub(crate) heartbeat_ms: Option<u64>,
    /// Failover: also serve the HTTP API here (host:port), as a gateway
    /// does, reading from this node's own store: a read costs no hop to
    /// another process. Writes and strong reads' index go to the master.
    #[arg(long, value_name = "ADDR", value_parser = addr)]
    pub(crate) http: Option<String>,
    #[command(flatten)]
    pub(crate) http_opts: HttpOpts,
    #[command(flatten)]
    pub(crate) run: RunOpts,
}

#[derive(Subcommand)]
pub(crate) enum ClientCmd {
    /// Store VALUE under KEY on the master; prints the cursor after the write.
    Set {
        /// The node's QUIC address (or Mycelium public key with a port).
        node: String,
        /// The key.
        key: String,
        /// The value (UTF-8 text).
        value: String,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, default_value = "master")]
        ack: replication::Ack,
    },
    /// Delete KEY on the master.
    Delete {
        /// The node's QUIC address (or Mycelium public key with a port).
        node: String,
        /// The key.
        key: String,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, default_value = "master")]
        ack: replication::Ack,
    },
    /// The master's cursor and its workers (cursor, in sync or not).
    Status {
        /// The master's QUIC address (or Mycelium public key with a port).
        node: String,
    },
    /// Read KEY from a node once it applied CURSOR (`epoch:file:offset`).
    Get {
        /// The node's QUIC address (or Mycelium public key with a port).
        node: String,
        /// The key.
        key: String,
        /// Answer only once the node has applied this cursor.
        #[arg(long, value_name = "CURSOR")]
        at: Option<String>,
    },
    /// The master's commit cursor.
    ReadIndex {
        /// The master's QUIC address (or Mycelium public key with a port).
        node: String,
    },
    /// A digest of a node's data files.
    Digest {
        /// The node's QUIC address (or Mycelium public key with a port).
        node: String,
    },
    /// Write COUNT keys PREFIX0, PREFIX1, … with SIZE-byte values from
    /// CONCURRENCY tasks; prints writes/s and latency percentiles.
    Load {
        /// The node's QUIC address (or Mycelium public key with a port).
        node: String,
        /// How many keys.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// The keys' prefix.
        #[arg(long, default_value = "load/")]
        prefix: String,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Writes in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, default_value = "master")]
        ack: replication::Ack,
    },
}

#[derive(Subcommand)]
pub(crate) enum DbCmd {
    /// Print one JSON line per live id, ascending.
    Dump {
        /// The database directory.
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Add up to D versions per id, newest first.
        #[arg(long, value_name = "D")]
        history: Option<usize>,
    },
    /// Read dump lines from stdin into a new directory.
    Restore {
        /// The database directory.
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// In incremental mode, accept ids with gaps (ourkv reads the
        /// result; V cannot open it: it needs ids 1, 2, 3, … there).
        #[arg(long)]
        allow_gaps: bool,
    },
    /// Check CRCs, history chains and framing; exit 1 on damage.
    Verify {
        /// The database directory.
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
    /// Rebuild the lookup dump of a V directory that has none.
    Recover {
        /// The database directory.
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Exit 2 if the rebuild had to assume or skip anything.
        #[arg(long)]
        strict: bool,
    },
    /// Rewrite without dead records, atomically.
    Compact {
        /// The database directory.
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Keep at most D versions per id (all when absent).
        #[arg(long, value_name = "D")]
        history: Option<usize>,
    },
    /// Print the configuration and state of a directory.
    Info {
        /// The database directory.
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
}

/// The shape of a V directory, which stores no configuration of its own.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct Shape {
    /// Lookup entry width: 2, 3, 4 or 6.
    #[arg(long, value_name = "K")]
    pub(crate) keysize: Option<u8>,
    /// V's record_nr_max: ids stay below it (sets the keysize with the next).
    #[arg(long, value_name = "N")]
    pub(crate) record_nr_max: Option<u32>,
    /// V's record_size_max: the largest value, in bytes.
    #[arg(long, value_name = "S")]
    pub(crate) record_size_max: Option<u32>,
    /// V's file_size: bytes per data file before the next one starts.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) file_size: Option<u32>,
    /// Key-value mode (ids given by the caller) instead of incremental.
    #[arg(long)]
    pub(crate) kv: bool,
}

/// Options of the HTTP API (`dev`, `gateway`, and nodes with `--http`).
#[derive(Args, Debug, Clone)]
pub(crate) struct HttpOpts {
    /// Require `Authorization: Bearer TOKEN` on the HTTP API.
    #[arg(long, env = "OURKV_API_TOKEN", value_name = "TOKEN")]
    pub(crate) api_token: Option<String>,
    /// How long a client may take to send a request's headers (then the
    /// connection is closed) and then its body (then 408).
    #[arg(long, value_name = "MS", default_value_t = gateway::DEFAULT_CLIENT_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) client_timeout_ms: u64,
    /// The most HTTP connections open at once; past it, a connection that
    /// has sent nothing for a second is closed to make room, else the new
    /// one gets 503. Default: what the descriptor limit allows, at most 16,384.
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) max_connections: Option<usize>,
    /// The most watches (`/v1/watch` streams) open at once; past it, 503.
    #[arg(long, value_name = "N", default_value_t = gateway::DEFAULT_MAX_WATCHES)]
    pub(crate) max_watches: usize,
    /// The largest value a PUT may store (1 to 16 MiB); past it, 413.
    #[arg(long, value_name = "BYTES", default_value_t = ourdb::keyed::MAX_VALUE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=ourdb::keyed::MAX_VALUE_BYTES as u64))]
    pub(crate) max_value_bytes: usize,
}

/// How a long-running role (`dev`, `gateway`, `master`, `worker`) runs.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct RunOpts {
    /// Threads that run requests (default: one per core). Several ourkv
    /// processes on one small machine serve more with 1 each, as they
    /// then stop waking and stealing from one another (OPERATIONS.md).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub(crate) threads: Option<usize>,
}

/// `ourkv kv`: where the gateway is, and how to print.
#[derive(Args)]
pub(crate) struct KvArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Output: raw (values as they are), table (text for people), json.
    #[arg(short = 'o', long, value_enum)]
    pub(crate) output: Option<Output>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) cmd: KvCmd,
}

/// Where a client of the HTTP API finds the gateway, and its token.
#[derive(Args)]
pub(crate) struct ApiArgs {
    /// The gateway's HTTP address.
    #[arg(long, env = "OURKV_ENDPOINT", default_value = "http://127.0.0.1:8080")]
    pub(crate) endpoint: String,
    /// Bearer token, when the gateway runs with --api-token.
    #[arg(long, env = "OURKV_API_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

/// `ourkv backup`.
#[derive(Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The nodes' data file size, if they run with --file-size.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) file_size: Option<u32>,
    /// The new directory (absent or empty); it appears only when whole.
    pub(crate) out: PathBuf,
}

/// Output formats of `ourkv kv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Values byte for byte, keys one per line.
    Raw,
    /// Aligned text.
    Table,
    /// One JSON document (one per line for watch).
    Json,
}

/// A key as the API takes it: one byte at least (an empty key names no
/// route, and a 404 would read as "not found").
fn key_arg(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a key is one byte or more".into());
    }
    Ok(s.to_string())
}

/// `ourkv kv` subcommands.
#[derive(Subcommand)]
pub(crate) enum KvCmd {
    /// Print KEY's value (raw by default).
    Get {
        /// The key.
        #[arg(value_parser = key_arg)]
        key: String,
        /// strong (default), session or stale.
        #[arg(long, value_name = "LEVEL")]
        consistency: Option<String>,
    },
    /// Store a value under KEY: VALUE, or --file, or standard input.
    Put {
        /// The key.
        #[arg(value_parser = key_arg)]
        key: String,
        /// The value; without it, --file or standard input.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        file: Option<PathBuf>,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, value_name = "ACK")]
        ack: Option<String>,
        /// Only if the current version is this ETag (or `*`: the key exists).
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        /// Only if the current version is not this ETag (`*`: the key does not exist).
        #[arg(long, value_name = "ETAG", conflicts_with = "if_match")]
        if_none_match: Option<String>,
        /// Expire the key this long after the master writes it (30s, 500ms, 2m, 1h, 7d).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Attach the key to this lease (from `ourkv kv lease grant`): it
        /// goes when the lease ends.
        #[arg(long, value_name = "ID", conflicts_with = "ttl")]
        lease: Option<u32>,
    },
    /// Delete KEY.
    Del {
        /// The key.
        #[arg(value_parser = key_arg)]
        key: String,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, value_name = "ACK")]
        ack: Option<String>,
        /// Only if the current version is this ETag.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
    },
    /// List keys starting with PREFIX, ascending.
    Ls {
        /// The prefix (all keys when absent).
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys (all when absent).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// KEY's last versions, newest first.
    History {
        /// The key.
        #[arg(value_parser = key_arg)]
        key: String,
        /// How many versions (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 10)]
        depth: u32,
    },
    /// Write every key under PREFIX with its value, one JSON line each
    /// (`{"key":…,"value_b64":…}`), in key order; each value is read
    /// strongly as its page comes (not a copy at one instant: `ourkv backup`).
    Export {
        /// The prefix (all keys when absent).
        #[arg(default_value = "")]
        prefix: String,
        /// Write to FILE (it appears only whole) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Store every line of FILE (`-`: standard input), as `export` writes
    /// them (`value` as text also works); a malformed line stops it (exit 2):
    /// every line before it is stored, none after.
    Import {
        /// The JSON lines.
        file: PathBuf,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, value_name = "ACK")]
        ack: Option<String>,
    },
    /// Apply a transaction (the JSON of `POST /v1/txn`: `{"if":[…],"do":[…]}`)
    /// from FILE or standard input; exit 3 when a condition does not hold.
    Txn {
        /// The transaction's JSON; standard input when absent or `-`.
        file: Option<PathBuf>,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, value_name = "ACK")]
        ack: Option<String>,
    },
    /// Grant, keep alive, describe or revoke a lease; keys attached to it
    /// (`put --lease ID`) go when it ends.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Print changes under PREFIX as they happen; reconnects by itself and
    /// resumes after the last change it printed.
    Watch {
        /// The prefix (all keys when absent).
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this cursor (from a write or an earlier watch).
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        /// Stop after this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// `ourkv kv lease …`.
#[derive(Subcommand)]
pub(crate) enum LeaseCmd {
    /// Grant a lease that ends TTL after its last keep-alive; prints its id.
    Grant {
        /// Its time to live (10s, 500ms, 2m, 1h).
        ttl: String,
    },
    /// Keep lease ID alive: a keep-alive every third of its time to live
    /// until interrupted (exit 1 once the lease is gone), or one with --once.
    Keepalive {
        /// The lease.
        id: u32,
        /// Send one keep-alive and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show lease ID: its time to live, what remains of it, its keys.
    Info {
        /// The lease.
        id: u32,
    },
    /// End lease ID now, deleting its keys.
    Revoke {
        /// The lease.
        id: u32,
        /// master (durable on the master) or all (applied by every in-sync worker).
        #[arg(long, value_name = "ACK")]
        ack: Option<String>,
    },
}

#[cfg(test)]
mod tests {

    /// Every command and every flag says what it is (in `--help`, the man
    /// pages and the completions).
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&crate::config::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }
}

/// `ourkv config` subcommands.
#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Print a commented config file for ROLE (every option, its help, its
    /// default), to edit and pass with `--config FILE`.
    Example {
        /// The role.
        #[arg(value_enum)]
        role: ConfigRole,
    },
}

/// The roles that read config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ConfigRole {
    /// `ourkv dev`.
    Dev,
    /// `ourkv gateway`.
    Gateway,
    /// `ourkv master`.
    Master,
    /// `ourkv worker`.
    Worker,
}

impl ConfigRole {
    /// The subcommand's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ConfigRole::Dev => "dev",
            ConfigRole::Gateway => "gateway",
            ConfigRole::Master => "master",
            ConfigRole::Worker => "worker",
        }
    }
}

/// An address flag's value, its form checked where it was written (flag,
/// variable or config file line); host names are looked up at start.
fn addr(s: &str) -> Result<String, String> {
    replication::mycelium::check_peer(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// An address other nodes connect to: not port 0, not 0.0.0.0 or [::]
/// (which listen everywhere but name no host to reach).
fn peer_addr(s: &str) -> Result<String, String> {
    let s = addr(s)?;
    let (host, port) = s.rsplit_once(':').expect("checked HOST:PORT");
    if port.parse::<u16>() == Ok(0) {
        return Err(format!("{s:?}: port 0 cannot be reached"));
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let ip = ip.split('%').next().unwrap_or(ip);
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "{s:?} names no host to reach: give the node's address"
        ));
    }
    Ok(s)
}

/// `--listen`: an address, or `:PORT` (with `--mycelium-api` only the port
/// counts).
fn listen_addr(s: &str) -> Result<String, String> {
    match s.strip_prefix(':') {
        Some(port) if replication::mycelium::is_port(port) => Ok(s.to_string()),
        _ => addr(s),
    }
}
