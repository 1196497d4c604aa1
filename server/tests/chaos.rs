//! Repeated `kill -9` of the master under a mixed load, with real processes
//! on loopback: three nodes (failover is the default) behind a gateway;
//! clients write with `ack=all`, compare-and-set and read strongly while
//! the master is killed and restarted with its old command line, again and
//! again; then a planned handover (`ourkv cluster promote`) under the same
//! load. Afterwards the history must be linearizable per key (the checker
//! of the simulation), no acknowledged write may be lost, and the nodes end
//! with identical data. The suite runs three kills; `OURKV_CHAOS_KILLS=12`
//! (about a minute) runs the long version by hand and prints the gaps,
//! `OURKV_CHAOS_EVERY_MS=10000` spaces the kills 10 s apart instead of
//! 2.5 s, and `OURKV_CHAOS_KEEP=1` keeps the logs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

#[allow(dead_code)]
#[path = "../../replication/tests/sim/check.rs"]
mod check;

use check::{Kind, Op};
use common::{formed, free_port, start_logged as start, wait_identical, Proc};

/// One HTTP/1.1 exchange on a fresh connection: status and body, or `None`
/// when there was no complete answer within the time.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let etag = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    // Bodies here are small and never chunked.
    Some((status, body.to_string(), etag))
}

const KEYS: u8 = 16;

/// Random numbers without a dependency: xorshift, seeded per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One client's loop until `stop`: its operations, timed from `t0`.
/// The acknowledged writes: (key, value, sent, answered).
type Acked = Arc<Mutex<Vec<(u8, u32, u64, u64)>>>;

fn client(
    id: usize,
    http_addr: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicU32>,
    acked: Acked,
) -> Vec<Op> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((id as u64 + 1) * 0x1234_5678_9abc));
    let mut ops = Vec::new();
    let now = || t0.elapsed().as_micros() as u64;
    while !stop.load(Ordering::SeqCst) {
        let key = (rng.next() % KEYS as u64) as u8;
        let path = format!("/v1/kv/k{key}");
        let roll = rng.next() % 10;
        // A write with `ack=all` (conditional with `If-Match`): the op, or
        // `None` when it was refused (412) and wrote nothing.
        let write = |headers: &[(&str, &str)]| -> Option<Op> {
            let v = next_value.fetch_add(1, Ordering::SeqCst);
            let call = now();
            let r = http(
                &http_addr,
                "PUT",
                &format!("{path}?ack=all"),
                headers,
                &v.to_string(),
            );
            let ret = match r {
                Some((200, _, _)) => {
                    let at = now();
                    acked.lock().unwrap().push((key, v, call, at));
                    Some(at)
                }
                Some((412, _, _)) if !headers.is_empty() => return None,
                // Without an answer it may or may not have landed.
                Some((503, _, _)) | None => None,
                Some((code, body, _)) => panic!("PUT {headers:?} answered {code}: {body}"),
            };
            Some(Op {
                client: id,
                key,
                kind: Kind::Write(Some(v)),
                call,
                ret,
            })
        };
        if roll < 4 {
            ops.extend(write(&[]));
        } else if roll < 8 {
            let call = now();
            let got = match http(
                &http_addr,
                "GET",
                &format!("{path}?consistency=strong"),
                &[],
                "",
            ) {
                Some((200, body, _)) => Some(Some(body.parse().unwrap())),
                Some((404, _, _)) => Some(None),
                // No answer says nothing about the register.
                Some((503 | 504, _, _)) | None => None,
                Some((code, body, _)) => panic!("GET answered {code}: {body}"),
            };
            if let Some(got) = got {
                ops.push(Op {
                    client: id,
                    key,
                    kind: Kind::Strong(got),
                    call,
                    ret: Some(now()),
                });
            }
        } else {
            // Compare-and-set on the version a stale read saw: a success is
            // a write; a refusal writes nothing.
            let Some((200, _, etag)) = http(
                &http_addr,
                "GET",
                &format!("{path}?consistency=stale"),
                &[],
                "",
            ) else {
                continue;
            };
            ops.extend(write(&[("If-Match", &etag)]));
        }
        // A steady load rather than the most the machine can do: the
        // check's search grows with the history of each key.
        std::thread::sleep(Duration::from_millis(3));
    }
    ops
}

fn master_addr(http: &str) -> Option<String> {
    let (code, body, _) = http_get(http, "/v1/cluster")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["master"]["addr"].as_str().map(str::to_string)
}

/// `ourkv cluster promote` of a worker of the in-sync set, asked of the
/// member at `port`; the promoted id and the new term.
fn promote_a_worker(http_addr: &str, port: u16) -> (String, u64) {
    let t = Instant::now();
    loop {
        let view: serde_json::Value = http_get(http_addr, "/v1/cluster")
            .and_then(|(_, b, _)| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        let worker = view["members"].as_array().and_then(|m| {
            m.iter()
                .find(|m| m["in_sync"] == true && m["master"] != true)
                .and_then(|m| m["id"].as_str())
        });
        if let Some(id) = worker {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_ourkv"))
                .args(["cluster", "promote", id])
                .args(["--node", &format!("127.0.0.1:{port}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "promote {id}: {out:?}");
            let term = view["term"].as_u64().unwrap_or(0);
            // The gateway learns the new term within its discovery period.
            let t = Instant::now();
            while master_term(http_addr) <= term {
                assert!(t.elapsed() < Duration::from_secs(5), "no newer term shown");
                std::thread::sleep(Duration::from_millis(50));
            }
            return (id.to_string(), master_term(http_addr));
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no in-sync worker to promote: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn master_term(http_addr: &str) -> u64 {
    http_get(http_addr, "/v1/cluster")
        .and_then(|(_, b, _)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["term"].as_u64())
        .unwrap_or(0)
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String, String)> {
    http(addr, "GET", path, &[], "")
}

fn node_args(dir: &Path, ports: [u16; 3], i: usize) -> Vec<String> {
    let a = |p: u16| format!("127.0.0.1:{p}");
    let mut v: Vec<String> = vec![
        if i == 0 { "master" } else { "worker" }.into(),
        "--data".into(),
        dir.join(format!("n{i}")).to_str().unwrap().into(),
        "--listen".into(),
        a(ports[i]),
        "--file-size".into(),
        "1048576".into(),
    ];
    if i > 0 {
        v.extend(["--master".into(), a(ports[0])]);
    }
    v
}

#[test]
fn kill_9_of_the_master_again_and_again_under_load() {
    let kills: usize = std::env::var("OURKV_CHAOS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    // OURKV_CHAOS_KEEP=1 keeps the nodes' and the gateway's logs.
    if std::env::var_os("OURKV_CHAOS_KEEP").is_some() {
        eprintln!("logs in {}", dir.path().display());
    }
    let ports = [free_port(), free_port(), free_port()];
    let log = |name: String| -> PathBuf { dir.path().join(name) };
    let mut nodes: Vec<Option<Proc>> = (0..3)
        .map(|i| {
            Some(start(
                &node_args(dir.path(), ports, i),
                &log(format!("n{i}.log")),
            ))
        })
        .collect();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut gw_args: Vec<String> = vec!["gateway".into(), "--http".into(), http_addr.clone()];
    gw_args.extend(["--master".into(), format!("127.0.0.1:{}", ports[0])]);
    for p in &ports[1..] {
        gw_args.extend(["--worker".into(), format!("127.0.0.1:{p}")]);
    }
    let _gw = start(&gw_args, &log("gateway.log".into()));
    // Three voters and both workers in sync before the first kill, or there
    // is nothing to fail over to.
    let t = Instant::now();
    loop {
        let ok = http_get(&http_addr, "/v1/cluster").is_some_and(|(c, b, _)| {
            c == 200 && serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| formed(&v))
        });
        if ok {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the cluster never formed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let values = Arc::new(AtomicU32::new(1));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|id| {
            let (h, s, v, a) = (
                http_addr.clone(),
                stop.clone(),
                values.clone(),
                acked.clone(),
            );
            std::thread::spawn(move || client(id, h, t0, s, v, a))
        })
        .collect();

    // OURKV_CHAOS_EVERY_MS: the load's time between kills (default 2.5 s).
    let every: u64 = std::env::var("OURKV_CHAOS_EVERY_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let mut gaps = Vec::new();
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(every));
        let Some(master) = master_addr(&http_addr) else {
            panic!("round {round}: no master shown");
        };
        let i = ports
            .iter()
            .position(|p| master.ends_with(&format!(":{p}")))
            .expect("a known node");
        let killed_at = t0.elapsed().as_micros() as u64;
        drop(nodes[i].take());
        // The first write sent after the kill and acknowledged tells the gap.
        let deadline = Instant::now() + Duration::from_secs(15);
        let gap = loop {
            let first = acked
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.2 > killed_at)
                .map(|a| a.3)
                .min();
            if let Some(at) = first {
                break Duration::from_micros(at - killed_at);
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: writes never resumed after killing {master}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!("round {round}: killed {master}, writes resumed after {gap:?}");
        gaps.push(gap);
        std::thread::sleep(Duration::from_millis(500));
        // Back with its old command line: it rejoins as a worker.
        nodes[i] = Some(start(
            &node_args(dir.path(), ports, i),
            &log(format!("n{i}-{round}.log")),
        ));
    }
    // A planned handover under the same load joins the history too.
    std::thread::sleep(Duration::from_millis(1500));
    let (promoted, term) = promote_a_worker(&http_addr, ports[0]);
    eprintln!("handed the master's role to node {promoted} (term {term})");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let mut ops: Vec<Op> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    ops.sort_by_key(|o| o.call);

    // A last strong read of every key joins the history: were an
    // acknowledged write lost, it would return an older value than one
    // written before it was sent, and the check below fails.
    for key in 0..KEYS {
        let t = Instant::now();
        loop {
            let call = t0.elapsed().as_micros() as u64;
            match http_get(&http_addr, &format!("/v1/kv/k{key}?consistency=strong")) {
                Some((200, body, _)) => {
                    let ret = Some(t0.elapsed().as_micros() as u64);
                    ops.push(Op {
                        client: 99,
                        key,
                        kind: Kind::Strong(Some(body.parse().unwrap())),
                        call,
                        ret,
                    });
                    break;
                }
                Some((404, _, _)) => {
                    let ret = Some(t0.elapsed().as_micros() as u64);
                    ops.push(Op {
                        client: 99,
                        key,
                        kind: Kind::Strong(None),
                        call,
                        ret,
                    });
                    break;
                }
                other => assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "final read of k{key}: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    gaps.sort();
    let writes = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)) && o.ret.is_some())
        .count();
    let reads = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Strong(_)))
        .count();
    let unknown = ops.iter().filter(|o| o.ret.is_none()).count();
    eprintln!(
        "{kills} kills; from the kill to the first acknowledged write sent after it: min {:?}, median {:?}, p90 {:?}, max {:?}; {writes} writes acknowledged, {unknown} without an answer, {reads} strong reads",
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() * 9 / 10],
        gaps[gaps.len() - 1]
    );
    eprintln!("gaps: {gaps:?}");
    assert!(
        writes > 50 && reads > 50,
        "too little load to show anything: {writes} writes, {reads} reads"
    );
    check::check_deep(ops).unwrap_or_else(|e| panic!("{e}"));

    // All three end with the same bytes.
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    if let Err(d) = wait_identical(&addrs) {
        panic!("no convergence: {d:?}");
    }
    drop(nodes);
    if std::env::var_os("OURKV_CHAOS_KEEP").is_some() {
        let _ = dir.keep();
    }
}
