//! Master and workers as real processes on loopback: replication converges to
//! byte-identical data files, a killed worker catches up from its cursor, and
//! peers of another cluster are refused.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use replication::{Client, Identity};

fn ourkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ourkv"))
}

/// A free UDP port on `ip` (bound, read, released).
fn free_addr(ip: &str) -> SocketAddr {
    let s = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.local_addr().unwrap()
}

/// A node process, killed when dropped.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(args: &[&str], log: PathBuf) -> Node {
        let mut child = ourkv()
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Wait for "... listening on ADDR".
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("listening on"),
            "node did not start: {line:?}, log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Node { child, log }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn init_cluster(dir: &Path) -> PathBuf {
    let out = ourkv()
        .args(["cluster", "init", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

fn master(tmp: &Path, cluster: &Path, addr: SocketAddr) -> Node {
    master_with(tmp, cluster, addr, &[])
}

fn master_with(tmp: &Path, cluster: &Path, addr: SocketAddr, extra: &[&str]) -> Node {
    let data = tmp.join("m");
    let (listen, cluster) = (addr.to_string(), cluster.to_str().unwrap().to_string());
    let mut args = vec![
        "master",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--cluster",
        &cluster,
        "--file-size",
        "65536",
    ];
    args.extend_from_slice(extra);
    Node::start(&args, tmp.join("master.log"))
}

fn worker(tmp: &Path, name: &str, cluster: &Path, addr: SocketAddr, master: SocketAddr) -> Node {
    Node::start(
        &[
            "worker",
            "--data",
            tmp.join(name).to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--master",
            &master.to_string(),
            "--cluster",
            cluster.to_str().unwrap(),
            "--file-size",
            "65536",
        ],
        tmp.join(format!("{name}.log")),
    )
}

fn data_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().into_string().unwrap();
            n.ends_with(".db") && n[..n.len() - 3].bytes().all(|b| b.is_ascii_digit())
        })
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn wait_converged(c: &Client, master: SocketAddr, worker: SocketAddr) -> String {
    let t = Instant::now();
    loop {
        let m = c.digest(master).await.unwrap();
        let w = c.digest(worker).await;
        if let Ok(w) = &w {
            if *w == m {
                return m;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no convergence: master {m}, worker {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_batch(
    c: &Client,
    master: SocketAddr,
    round: u32,
    n: u32,
    model: &mut std::collections::BTreeMap<String, Vec<u8>>,
) {
    for i in 0..n {
        let key = format!("key/{}", (i * 31 + round * 7) % 400);
        if i % 9 == 4 {
            let (existed, _) = c.delete(master, &key).await.unwrap();
            assert_eq!(existed, model.remove(&key).is_some());
        } else {
            let value = format!("r{round}-i{i}-")
                .repeat(1 + (i as usize % 30))
                .into_bytes();
            c.set(master, &key, &value).await.unwrap();
            model.insert(key, value);
        }
    }
}

fn cluster_round_trip(ip: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = init_cluster(&tmp.path().join("cluster"));
    let maddr = free_addr(ip);
    let waddr = free_addr(ip);
    let _m = master(tmp.path(), &cluster, maddr);
    let w = worker(tmp.path(), "w1", &cluster, waddr, maddr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = Client::new(&Identity::load(&cluster).unwrap()).unwrap();
        let mut model = std::collections::BTreeMap::new();
        write_batch(&c, maddr, 0, 1500, &mut model).await;
        // Reads at the master's read-index see every acknowledged write.
        let cursor = c.read_index(maddr).await.unwrap();
        for (key, value) in model.iter().take(50) {
            assert_eq!(
                c.get(waddr, key, cursor).await.unwrap().as_ref(),
                Some(value)
            );
        }
        assert_eq!(c.get(waddr, "key/none", cursor).await.unwrap(), None);
        let digest = wait_converged(&c, maddr, waddr).await;
        assert!(digest.contains("files="), "{digest}");
        assert_eq!(
            data_files(&tmp.path().join("m")),
            data_files(&tmp.path().join("w1"))
        );
        assert!(
            data_files(&tmp.path().join("m")).len() > 1,
            "expected several data files"
        );

        // A worker killed mid-stream resumes from its cursor.
        w.kill9();
        write_batch(&c, maddr, 1, 1500, &mut model).await;
        let _w = worker(tmp.path(), "w1", &cluster, waddr, maddr);
        wait_converged(&c, maddr, waddr).await;
        assert_eq!(
            data_files(&tmp.path().join("m")),
            data_files(&tmp.path().join("w1"))
        );
        let cursor = c.read_index(maddr).await.unwrap();
        for (key, value) in &model {
            assert_eq!(
                c.get(waddr, key, cursor).await.unwrap().as_ref(),
                Some(value),
                "{key}"
            );
        }
        // A worker refuses writes.
        assert!(c.set(waddr, "k", b"v").await.is_err());
    });
}

#[test]
fn replication_converges_and_catches_up_ipv4() {
    cluster_round_trip("127.0.0.1");
}

#[test]
fn replication_converges_and_catches_up_ipv6() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback on this machine");
        return;
    }
    cluster_round_trip("[::1]");
}

#[test]
fn peers_of_another_cluster_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = init_cluster(&tmp.path().join("cluster"));
    let other = init_cluster(&tmp.path().join("other"));
    let maddr = free_addr("127.0.0.1");
    let m = master(tmp.path(), &cluster, maddr);
    let waddr = free_addr("127.0.0.1");
    // A worker with the other cluster's certificate cannot subscribe.
    let stranger = worker(tmp.path(), "stranger", &other, waddr, maddr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ours = Client::new(&Identity::load(&cluster).unwrap()).unwrap();
        let theirs = Client::new(&Identity::load(&other).unwrap()).unwrap();
        ours.set(maddr, "secret", b"value").await.unwrap();
        match theirs.set(maddr, "evil", b"x").await {
            Err(replication::Error::Quic(msg)) => assert!(
                msg.contains("certificate") || msg.contains("handshake"),
                "{msg}"
            ),
            other => panic!("a client of another cluster got {other:?}"),
        }
        match theirs.get(maddr, "secret", replication::Cursor::ZERO).await {
            Err(replication::Error::Quic(_)) => {}
            other => panic!("a client of another cluster read {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Nothing reached the stranger: it still holds only the leading zero byte.
        let d = theirs.digest(waddr).await.unwrap();
        assert!(d.contains("bytes=1 "), "{d}");
        assert_eq!(
            ours.get(maddr, "evil", replication::Cursor::ZERO)
                .await
                .unwrap(),
            None
        );
    });
    assert!(m.log().contains("refused a connection"), "{}", m.log());
    drop(stranger);
}

fn signal(node: &Node, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

async fn wait_status(
    c: &Client,
    master: SocketAddr,
    want_in_sync: usize,
) -> Vec<replication::WorkerStatus> {
    let t = Instant::now();
    loop {
        let (_, workers) = c.status(master).await.unwrap();
        if workers.iter().filter(|w| w.in_sync).count() == want_in_sync {
            return workers;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "in-sync set never reached {want_in_sync}: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ack=all`: once a write returns, every in-sync worker has it. A worker that
/// stops answering leaves the in-sync set (writes go on) and rejoins when it
/// has caught up.
#[test]
fn ack_all_and_the_in_sync_set() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = init_cluster(&tmp.path().join("cluster"));
    let maddr = free_addr("127.0.0.1");
    let _m = master_with(tmp.path(), &cluster, maddr, &["--ack-timeout-ms", "400"]);
    let w1addr = free_addr("127.0.0.1");
    let w2addr = free_addr("127.0.0.1");
    let _w1 = worker(tmp.path(), "w1", &cluster, w1addr, maddr);
    let w2 = worker(tmp.path(), "w2", &cluster, w2addr, maddr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = Client::new(&Identity::load(&cluster).unwrap()).unwrap();
        c.set(maddr, "warm", b"up").await.unwrap();
        wait_status(&c, maddr, 2).await;
        for i in 0..200 {
            let key = format!("k{i}");
            let value = format!("v{i}").into_bytes();
            c.set_with(maddr, &key, &value, replication::Ack::All)
                .await
                .unwrap();
            // No waiting: both workers must already have it.
            for w in [w1addr, w2addr] {
                assert_eq!(
                    c.get(w, &key, replication::Cursor::ZERO).await.unwrap(),
                    Some(value.clone()),
                    "{key} on {w}"
                );
            }
            if i % 10 == 0 {
                let (existed, _) = c
                    .delete_with(maddr, &key, replication::Ack::All)
                    .await
                    .unwrap();
                assert!(existed);
                for w in [w1addr, w2addr] {
                    assert_eq!(
                        c.get(w, &key, replication::Cursor::ZERO).await.unwrap(),
                        None
                    );
                }
            }
        }
        // Freeze worker 2: the next ack=all write waits out the timeout, then
        // goes on without it.
        signal(&w2, "-STOP");
        let t = Instant::now();
        c.set_with(maddr, "during-stop", b"x", replication::Ack::All)
            .await
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "the write did not wait for the frozen worker"
        );
        let returned = Instant::now();
        let workers = wait_status(&c, maddr, 1).await;
        let frozen = workers
            .iter()
            .find(|w| w.addr == w2addr.to_string())
            .unwrap();
        assert!(!frozen.in_sync);
        for i in 0..50 {
            let key = format!("later{i}");
            c.set_with(maddr, &key, b"y", replication::Ack::All)
                .await
                .unwrap();
            assert_eq!(
                c.get(w1addr, &key, replication::Cursor::ZERO)
                    .await
                    .unwrap(),
                Some(b"y".to_vec())
            );
        }
        // Its lag in time: at least as old as the first write it lacks;
        // the worker in sync is not behind by anything near that.
        let since = returned.elapsed();
        let (_, workers) = c.status(maddr).await.unwrap();
        let lag = |addr: SocketAddr| {
            workers
                .iter()
                .find(|w| w.addr == addr.to_string())
                .unwrap()
                .lag_ms
        };
        assert!(
            lag(w2addr) >= since.as_millis() as u64,
            "{workers:?}, {since:?}"
        );
        assert!(lag(w1addr) < lag(w2addr) / 2, "{workers:?}");
        // Thawed, it catches up and rejoins.
        signal(&w2, "-CONT");
        c.set(maddr, "after", b"z").await.unwrap();
        wait_status(&c, maddr, 2).await;
        wait_converged(&c, maddr, w2addr).await;
        let t = Instant::now();
        loop {
            let (_, workers) = c.status(maddr).await.unwrap();
            if workers.iter().all(|w| w.lag_ms == 0) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{workers:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A cursor the master cannot serve brings a full snapshot: after `compact`
/// bumped the master's epoch, and for a worker that wrote on its own.
#[test]
fn snapshots_after_compaction_and_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = init_cluster(&tmp.path().join("cluster"));
    let maddr = free_addr("127.0.0.1");
    let waddr = free_addr("127.0.0.1");
    let m = master(tmp.path(), &cluster, maddr);
    let w = worker(tmp.path(), "w1", &cluster, waddr, maddr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut model = std::collections::BTreeMap::new();
    rt.block_on(async {
        let c = Client::new(&Identity::load(&cluster).unwrap()).unwrap();
        write_batch(&c, maddr, 0, 800, &mut model).await;
        wait_converged(&c, maddr, waddr).await;
    });
    // Compact the master offline: its epoch goes to 2.
    drop(m);
    common::compact_to_epoch_2(&tmp.path().join("m"));
    let _m = master(tmp.path(), &cluster, maddr);
    rt.block_on(async {
        let c = Client::new(&Identity::load(&cluster).unwrap()).unwrap();
        write_batch(&c, maddr, 1, 300, &mut model).await;
        wait_converged(&c, maddr, waddr).await;
        assert_eq!(
            data_files(&tmp.path().join("m")),
            data_files(&tmp.path().join("w1"))
        );
        let cursor = c.read_index(maddr).await.unwrap();
        for (key, value) in &model {
            assert_eq!(
                c.get(waddr, key, cursor).await.unwrap().as_ref(),
                Some(value),
                "{key}"
            );
        }
    });
    let wlog = std::fs::read_to_string(tmp.path().join("w1.log")).unwrap();
    assert!(wlog.contains("snapshot installed"));
    // Its progress is logged, with the bytes received.
    assert!(wlog.contains("snapshot: all received"), "{wlog}");
    assert!(std::fs::read_to_string(tmp.path().join("master.log"))
        .unwrap()
        .contains("snapshot: all sent"));

    // A worker that took a write of its own has left the master's log.
    w.kill9();
    {
        let db = ourdb::OpenOptions::new()
            .open(tmp.path().join("w1"))
            .unwrap();
        let store = ourdb::keyed::KeyedStore::new(db).unwrap();
        // As long as the master's next record ("key/14" = "r2-i0-"): the
        // worker then ends at one of the master's record boundaries, and only
        // the bytes before it tell the logs apart.
        store.put("loc/14", b"XXXXXX").unwrap();
        store.close().unwrap();
    }
    // What a transfer cut short by a crash leaves: a partial temporary copy.
    // The worker's own data stays usable, and the next snapshot replaces it.
    let stale = tmp.path().join(".w1.snapshot-tmp");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("0.db"), b"\0partial").unwrap();
    let _w = worker(tmp.path(), "w1", &cluster, waddr, maddr);
    rt.block_on(async {
        let c = Client::new(&Identity::load(&cluster).unwrap()).unwrap();
        write_batch(&c, maddr, 2, 300, &mut model).await;
        wait_converged(&c, maddr, waddr).await;
        let cursor = c.read_index(maddr).await.unwrap();
        assert_eq!(c.get(waddr, "loc/14", cursor).await.unwrap(), None);
        for (key, value) in &model {
            assert_eq!(
                c.get(waddr, key, cursor).await.unwrap().as_ref(),
                Some(value),
                "{key}"
            );
        }
    });
    assert_eq!(
        data_files(&tmp.path().join("m")),
        data_files(&tmp.path().join("w1"))
    );
    assert!(
        !tmp.path().join(".w1.snapshot-tmp").exists(),
        "the replaced data was left behind"
    );
    let log = std::fs::read_to_string(tmp.path().join("w1.log")).unwrap();
    assert!(
        log.contains("differs") && log.contains("snapshot installed"),
        "{log}"
    );
}

/// Without `--cluster`, nodes run on loopback only (encrypted, not
/// authenticated) and refuse any other address before touching the network.
#[test]
fn loopback_mode_without_a_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let maddr = free_addr("127.0.0.1");
    let waddr = free_addr("127.0.0.1");
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let _m = Node::start(
        &["master", "--data", &d("m"), "--listen", &maddr.to_string()],
        tmp.path().join("master.log"),
    );
    let _w = Node::start(
        &[
            "worker",
            "--data",
            &d("w"),
            "--listen",
            &waddr.to_string(),
            "--master",
            &maddr.to_string(),
        ],
        tmp.path().join("worker.log"),
    );
    let run = |args: &[&str]| ourkv().args(args).output().unwrap();
    let out = run(&["client", "set", &maddr.to_string(), "k", "loopback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cursor = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = run(&["client", "get", &waddr.to_string(), "k", "--at", &cursor]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "loopback");

    // Not loopback: refused with a message, nothing sent.
    let out = run(&["master", "--data", &d("x"), "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    assert!(
        !tmp.path().join("x").exists(),
        "a refused node created its data directory"
    );
    let out = run(&[
        "worker",
        "--data",
        &d("y"),
        "--listen",
        "127.0.0.1:0",
        "--master",
        "192.0.2.1:7000",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    assert!(
        !tmp.path().join("y").exists(),
        "a refused worker created its data directory"
    );
    let out = run(&["client", "get", "192.0.2.1:7000", "k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}
