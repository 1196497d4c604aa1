//! Helpers shared by the process-level tests: start `ourkv` processes on
//! free loopback ports, and talk to them with curl.
#![allow(dead_code)]

pub(crate) mod net;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub(crate) struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ourkv ARGS` and waits for its "listening" line.
pub(crate) fn start(args: &[&str]) -> Proc {
    until_listening(
        Command::new(env!("CARGO_BIN_EXE_ourkv")).args(args),
        Stdio::null(),
        None,
    )
}

/// Starts `ourkv ARGS` with its log (`RUST_LOG=info`) in `log`, and waits
/// for its "listening" line.
pub(crate) fn start_logged<S: AsRef<std::ffi::OsStr>>(args: &[S], log: &Path) -> Proc {
    until_listening(
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(args)
            .env("RUST_LOG", "info"),
        std::fs::File::create(log).unwrap().into(),
        Some(log),
    )
}

/// Spawns `cmd` and waits for its first line on stdout to say it listens.
pub(crate) fn until_listening(cmd: &mut Command, stderr: Stdio, log: Option<&Path>) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("listening"),
        "did not start: {line:?}; log: {}",
        log.and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    );
    Proc(child)
}

/// Whether a `/v1/cluster` answer shows a failover cluster of three voters
/// whose two workers are in sync.
pub(crate) fn formed(cluster: &serde_json::Value) -> bool {
    cluster["members"]
        .as_array()
        .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["voter"] == true))
        && cluster["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["in_sync"] == true))
}

/// Waits (20 s at most) until every node at `nodes` has the same data
/// (digest); the digests seen last otherwise.
pub(crate) fn wait_identical(nodes: &[std::net::SocketAddr]) -> Result<(), Vec<Option<String>>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        replication::Client::new(&replication::Identity::loopback().unwrap()).unwrap()
    });
    let t = std::time::Instant::now();
    loop {
        let digests: Vec<_> = nodes
            .iter()
            .map(|n| rt.block_on(client.digest(*n)).ok())
            .collect();
        if digests[0].is_some() && digests.iter().all(|d| *d == digests[0]) {
            return Ok(());
        }
        if t.elapsed() > std::time::Duration::from_secs(20) {
            return Err(digests);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs a prepared `ourkv` command to its end, feeding it `stdin` if given;
/// its output.
pub(crate) fn output_of(cmd: &mut Command, stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        // A command that refuses its arguments exits without reading stdin.
        if let Err(e) = child.stdin.take().unwrap().write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    child.wait_with_output().unwrap()
}

/// A loopback port free for TCP (HTTP) and UDP (QUIC) alike.
pub(crate) fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `ourkv dev` with its data in `data`, on a free loopback port, with more
/// arguments; the process and its HTTP address.
pub(crate) fn start_dev(data: &Path, args: &[&str]) -> (Proc, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["dev", "--data", data.to_str().unwrap(), "--http", &http];
    all.extend_from_slice(args);
    (start(&all), http)
}

/// `curl` with the status code appended on a last line.
pub(crate) fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is needed for these tests");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// `PUT /v1/kv/{key}{query}` with `value` as the body (`query` with its `?`).
pub(crate) fn put_query(http: &str, key: &str, query: &str, value: &str) -> (u16, String) {
    curl(&[
        "-X",
        "PUT",
        &format!("http://{http}/v1/kv/{key}{query}"),
        "-d",
        value,
    ])
}

/// A master, a worker and a gateway as three processes on loopback; the
/// gateway's HTTP address last.
pub(crate) fn master_worker_gateway(dir: &Path) -> (Proc, Proc, Proc, String) {
    let (master, mut workers, gw, http) = master_workers_gateway(dir, free_port(), 1);
    (master, workers.remove(0), gw, http)
}

/// The master of `master_workers_gateway`: data in `dir/m`, on `port`.
pub(crate) fn start_master(dir: &Path, port: u16) -> Proc {
    let data = dir.join("m");
    start(&[
        "master",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
}

/// A master on `mport`, `n` workers (data in `dir/w1`, `dir/w2`, …) and a
/// gateway naming them all, as processes on loopback; the gateway's HTTP
/// address last.
pub(crate) fn master_workers_gateway(
    dir: &Path,
    mport: u16,
    n: usize,
) -> (Proc, Vec<Proc>, Proc, String) {
    let q = |p: u16| format!("127.0.0.1:{p}");
    let master = start_master(dir, mport);
    let mut workers = Vec::new();
    let mut gw_args = vec![
        "gateway".to_string(),
        "--http".into(),
        String::new(),
        "--master".into(),
        q(mport),
    ];
    for i in 1..=n {
        let port = free_port();
        let data = dir.join(format!("w{i}"));
        workers.push(start(&[
            "worker",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &q(port),
            "--master",
            &q(mport),
        ]));
        gw_args.extend(["--worker".to_string(), q(port)]);
    }
    let http = q(free_port());
    gw_args[2] = http.clone();
    let args: Vec<&str> = gw_args.iter().map(String::as_str).collect();
    (master, workers, start(&args), http)
}

/// `ourkv db compact DIR --history 1` on a stopped node's directory; checks
/// that it succeeded and moved the log to epoch 2.
pub(crate) fn compact_to_epoch_2(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["db", "compact", dir.to_str().unwrap(), "--history", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("epoch: 2"));
}

/// Sends signal `sig` (`-STOP`, `-CONT`, `-TERM`, …) to a process.
pub(crate) fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits until `ok()` holds, for up to `secs` seconds.
pub(crate) fn eventually(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !ok() {
        assert!(t.elapsed() < std::time::Duration::from_secs(secs), "{what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
