//! Failover with real processes on loopback: a master and two workers run
//! with `--failover` behind a gateway; the master is killed with SIGKILL
//! mid-load, a worker becomes master within seconds, the gateway follows
//! it, no acknowledged `ack=all` write is lost, and the old master, started
//! again with its old command line, rejoins as a worker and ends with the
//! same data as the others.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{curl, formed, free_port, start_logged as start, wait_identical};

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The node command lines: the founding master, then two workers.
fn node_args(dir: &Path, ports: [u16; 3]) -> Vec<Vec<String>> {
    let s = |x: &str| x.to_string();
    let common = |name: &str, port: u16| {
        vec![
            s("--failover"),
            s("--data"),
            dir.join(name).to_str().unwrap().to_string(),
            s("--listen"),
            addr(port),
            s("--file-size"),
            s("65536"),
        ]
    };
    let mut master = vec![s("master")];
    master.extend(common("a", ports[0]));
    master.extend([s("--ack-timeout-ms"), s("1000")]);
    let worker = |name: &str, port: u16| {
        let mut w = vec![s("worker")];
        w.extend(common(name, port));
        // Used once this worker becomes master.
        w.extend([
            s("--master"),
            addr(ports[0]),
            s("--ack-timeout-ms"),
            s("1000"),
        ]);
        w
    };
    vec![master, worker("b", ports[1]), worker("c", ports[2])]
}

/// A gateway on `http` that names the first of `ports` as master and the
/// others as workers.
fn gateway(http: &str, ports: &[u16], log: &Path) -> common::Proc {
    let mut args = vec!["gateway".to_string(), "--http".into(), http.into()];
    args.extend(["--master".into(), addr(ports[0])]);
    for p in &ports[1..] {
        args.extend(["--worker".into(), addr(*p)]);
    }
    start(&args, log)
}

fn cluster(http: &str) -> serde_json::Value {
    let (code, body) = curl(&[&format!("http://{http}/v1/cluster")]);
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap()
}

/// Waits until the gateway shows a failover cluster where `ok` holds.
fn wait_cluster(http: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        let c = cluster(http);
        if ok(&c) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never {what}: last cluster view {c}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The members of `args` started (logs `a`, `b` and `c` in `dir`) and a
/// gateway naming them on a fresh port, once the cluster has formed.
fn formed_cluster(
    dir: &Path,
    ports: [u16; 3],
    args: &[Vec<String>],
) -> (Vec<common::Proc>, common::Proc, String) {
    let log = |n: &str| dir.join(format!("{n}.log"));
    let nodes = args
        .iter()
        .zip(["a", "b", "c"])
        .map(|(a, n)| start(a, &log(n)))
        .collect();
    let http = addr(free_port());
    let gw = gateway(&http, &ports, &log("gateway"));
    wait_cluster(&http, "three voters, two workers in sync", formed);
    (nodes, gw, http)
}

fn put(http: &str, key: &str, value: &str) -> (u16, String) {
    curl(&[
        "-X",
        "PUT",
        "--max-time",
        "15",
        &format!("http://{http}/v1/kv/{key}?ack=all"),
        "--data-binary",
        value,
    ])
}

#[test]
fn the_gateway_follows_a_new_master_after_kill_9_and_the_old_one_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let read_log = |n: &str| std::fs::read_to_string(log(n)).unwrap_or_default();
    let mut a = Some(start(&args[0], &log("a")));
    let b = start(&args[1], &log("b"));
    let c = start(&args[2], &log("c"));
    let http = addr(free_port());
    // The gateway knows only the first master and one worker: it learns
    // the rest from the cluster.
    let _gw = gateway(&http, &ports[..2], &log("gateway"));
    wait_cluster(&http, "three voters, two workers in sync", formed);
    assert_eq!(cluster(&http)["master"]["addr"], addr(ports[0]));

    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..40 {
        let (k, v) = (format!("before/{i}"), format!("value-{i}"));
        let (code, body) = put(&http, &k, &v);
        assert_eq!(code, 200, "{body}");
        acked.push((k, v));
    }

    // A lease with a key, and a key with a long time to live: the new
    // master must know both.
    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("http://{http}/v1/lease?ttl=8s&ack=all"),
    ]);
    assert_eq!(code, 201, "{body}");
    let lease = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].clone();
    for query in [format!("leased/a?lease={lease}"), "ttl/long?ttl=1h".into()] {
        let url = format!("http://{http}/v1/kv/{query}&ack=all");
        let (code, body) = curl(&["-X", "PUT", &url, "-d", "x"]);
        assert_eq!(code, 200, "{body}");
    }

    // SIGKILL: no goodbye to anyone.
    let killed = Instant::now();
    drop(a.take());
    let mut first_ok = None;
    let mut refused = 0;
    let mut i = 0;
    while acked.len() < 80 {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "writes did not resume: {refused} refused; logs:\nb: {}\nc: {}",
            read_log("b"),
            read_log("c")
        );
        let (k, v) = (format!("after/{i}"), format!("value-{i}"));
        i += 1;
        let (code, body) = put(&http, &k, &v);
        match code {
            200 => {
                first_ok.get_or_insert(killed.elapsed());
                acked.push((k, v));
            }
            // While no master answers: unavailable, never an internal error
            // (an `indeterminate` write may or may not be there).
            503 => {
                assert!(first_ok.is_none(), "a 503 after writes resumed: {body}");
                refused += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => panic!("write during failover: {code} {body}"),
        }
    }
    let gap = first_ok.unwrap();
    eprintln!("writes resumed {gap:?} after the kill; {refused} refused meanwhile");
    let view = cluster(&http);
    let new_master = view["master"]["addr"].as_str().unwrap().to_string();
    assert_ne!(new_master, addr(ports[0]), "{view}");
    assert!(view["term"].as_u64().unwrap() >= 2, "{view}");

    // The new master keeps the lease alive, then ends it (with its key)
    // once keep-alives stop; the long TTL key stays.
    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("http://{http}/v1/lease/{lease}/keepalive"),
    ]);
    assert_eq!(code, 200, "the new master knows the lease: {body}");
    let strong = |k: &str| curl(&[&format!("http://{http}/v1/kv/{k}?consistency=strong")]).0;
    assert_eq!(strong("leased/a"), 200);
    let kept = Instant::now();
    let t = Instant::now();
    while strong("leased/a") == 200 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the lease never ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        kept.elapsed() >= Duration::from_secs(6),
        "ended early: {:?}",
        kept.elapsed()
    );
    assert_eq!(strong("ttl/long"), 200);

    // Every acknowledged write reads back, strongly, from the new master's
    // cluster.
    for (k, v) in &acked {
        let (code, body) = curl(&[&format!("http://{http}/v1/kv/{k}?consistency=strong")]);
        assert_eq!((code, body.as_str()), (200, v.as_str()), "{k}");
    }

    // The old master comes back with the very same command line: it finds
    // a newer term, follows the new master and takes no writes itself.
    let a = start(&args[0], &log("a2"));
    wait_cluster(&http, "the old master back in sync", |c| {
        c["workers"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["addr"] == addr(ports[0]) && w["in_sync"] == true)
        })
    });
    assert_eq!(cluster(&http)["master"]["addr"], new_master);
    // The status page's figures (`/v1/stats`, sampled each second) follow
    // the new master: its latest sample lists the old master as a worker.
    let t = Instant::now();
    loop {
        let (code, body) = curl(&[&format!("http://{http}/v1/stats")]);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let last = v["samples"].as_array().and_then(|s| s.last()).cloned();
        let listed = last.is_some_and(|l| {
            l["workers"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["addr"] == addr(ports[0])))
        });
        if listed {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // /metrics: the term, and every member with its role (the gateway
    // learns the members' state once a second).
    let term = cluster(&http)["term"].as_u64().unwrap();
    let t = Instant::now();
    loop {
        let (code, text) = curl(&[&format!("http://{http}/metrics")]);
        assert_eq!(code, 200);
        let member = |a: &str, role: &str| {
            text.lines().any(|l| {
                l.starts_with("ourkv_cluster_member{")
                    && l.contains(&format!("addr=\"{a}\""))
                    && l.contains(&format!("role=\"{role}\""))
            })
        };
        if text.contains(&format!("ourkv_master_term {term}"))
            && member(&new_master, "master")
            && member(&addr(ports[0]), "in_sync")
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["cluster", "status", "--endpoint", &format!("http://{http}")])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && table.contains("failover: term")
            && table.contains("3 members (3 voting)"),
        "{table}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["client", "set", &addr(ports[0]), "x", "y"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the old master took a write");
    // The refusal names the master to go to.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not_master") && stderr.contains(&format!("master {new_master} (node")),
        "{stderr}"
    );
    // One more write reaches all three; then all hold the same log.
    let (code, body) = put(&http, "last", "one");
    assert_eq!(code, 200, "{body}");
    let nodes: Vec<SocketAddr> = ports.iter().map(|p| addr(*p).parse().unwrap()).collect();
    if let Err(digests) = wait_identical(&nodes) {
        panic!(
            "the nodes never converged: {digests:?}; log of the old master:\n{}",
            read_log("a2")
        );
    }

    // Removing members for good: the master and a member of the in-sync
    // set are refused; the old master, once stopped and dropped from the
    // set, goes.
    let view = cluster(&http);
    let id_at = |a: &str| {
        view["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["addr"] == a)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let remove = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["cluster", "remove", id, "--node", &addr(ports[1])])
            .output()
            .unwrap()
    };
    let out = remove(&id_at(&new_master));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the master"),
        "{out:?}"
    );
    let old = id_at(&addr(ports[0]));
    let out = remove(&old);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in-sync set"),
        "{out:?}"
    );
    drop(a);
    // An ack=all write waits for it, times out (1 s) and drops it.
    let (code, body) = put(&http, "without/a", "1");
    assert_eq!(code, 200, "{body}");
    wait_cluster(&http, "the stopped node out of the in-sync set", |c| {
        c["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["addr"] == addr(ports[0]) && m["in_sync"] == false)
        })
    });
    let out = remove(&old);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 members left"),
        "{out:?}"
    );
    wait_cluster(&http, "two members", |c| {
        c["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    let (code, body) = put(&http, "after/removal", "1");
    assert_eq!(code, 200, "{body}");
    drop((b, c));
}

/// The member id at QUIC address `a` in a `/v1/cluster` answer.
fn id_at(view: &serde_json::Value, a: &str) -> String {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["addr"] == a)
        .unwrap_or_else(|| panic!("no member at {a}: {view}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_planned_handover_loses_no_write_and_the_old_master_follows() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let _a = start(&args[0], &log("a"));
    let _b = start(&args[1], &log("b"));
    let _c = start(&args[2], &log("c"));
    let http = addr(free_port());
    let _gw = gateway(&http, &ports[..1], &log("gateway"));
    wait_cluster(&http, "three voters, two workers in sync", formed);
    let before = cluster(&http);
    let term = before["term"].as_u64().unwrap();
    let promote = |id: &str| {
        // Asked of a worker: it passes the request on to the master.
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["cluster", "promote", id, "--node", &addr(ports[1])])
            .output()
            .unwrap()
    };
    let out = promote("12345");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member"),
        "{out:?}"
    );

    // A writer goes on through the handover; every answer is kept.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, stop) = (http.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (k, v) = (format!("w/{i}"), format!("value-{i}"));
                let (code, body) = put(&http, &k, &v);
                answers.push((k, v, code, body, Instant::now()));
                i += 1;
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let target = id_at(&before, &addr(ports[2]));
    let asked = Instant::now();
    let out = promote(&target);
    let took = asked.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains(&addr(ports[2])),
        "{out:?}; log of the old master:\n{}",
        std::fs::read_to_string(log("a")).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = writer.join().unwrap();

    // Nothing refused: the gateway retried the writes the paused master
    // turned away on the new one.
    for (k, _, code, body, _) in &answers {
        assert_eq!(*code, 200, "{k}: {body}");
    }
    let gap = answers.windows(2).map(|w| w[1].4 - w[0].4).max().unwrap();
    eprintln!(
        "handover: {} writes, the longest gap between two answers {gap:?}; \
         the promote command took {took:?}",
        answers.len()
    );
    let view = cluster(&http);
    assert_eq!(view["master"]["addr"], addr(ports[2]), "{view}");
    assert!(view["term"].as_u64().unwrap() > term, "{view}");
    for (k, v, ..) in &answers {
        let (code, body) = curl(&[&format!("http://{http}/v1/kv/{k}?consistency=strong")]);
        assert_eq!((code, body.as_str()), (200, v.as_str()), "{k}");
    }
    // The old master follows and takes no writes of its own.
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["client", "set", &addr(ports[0]), "x", "y"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not_master"),
        "{out:?}"
    );
    // Promoting the master is a no-op; the three end with the same log.
    let out = promote(&target);
    assert!(out.status.success(), "{out:?}");
    let (code, body) = put(&http, "last", "one");
    assert_eq!(code, 200, "{body}");
    let mut nodes: Vec<SocketAddr> = ports.iter().map(|p| addr(*p).parse().unwrap()).collect();
    if let Err(digests) = wait_identical(&nodes) {
        panic!("the nodes never converged: {digests:?}");
    }

    // A new worker whose --master names no live node joins through a seed.
    let d_port = free_port();
    let d_dir = dir.path().join("new");
    std::fs::create_dir_all(&d_dir).unwrap();
    let mut d_args = node_args(&d_dir, [free_port(), d_port, free_port()])[1].clone();
    d_args.extend(["--seed".into(), addr(ports[1])]);
    let _d = start(&d_args, &log("d"));
    wait_cluster(&http, "four members, the new one in sync", |c| {
        c["members"].as_array().is_some_and(|m| {
            m.len() == 4
                && m.iter()
                    .any(|m| m["addr"] == addr(d_port) && m["in_sync"] == true)
        })
    });
    nodes.push(addr(d_port).parse().unwrap());
    if let Err(digests) = wait_identical(&nodes) {
        panic!("the new worker never converged: {digests:?}");
    }
}

/// A write the master took and then died with, before it could answer: the
/// client must hear that it may have landed (`indeterminate`), never
/// `unavailable`, which says to retry as if nothing happened.
#[test]
fn a_write_in_flight_when_the_master_dies_is_indeterminate() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut args = node_args(dir.path(), ports);
    // The master waits long for a worker's ack, so the write is still in
    // flight when it dies.
    let at = args[0]
        .iter()
        .position(|a| a == "--ack-timeout-ms")
        .unwrap();
    args[0][at + 1] = "10000".into();
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    assert_eq!(put(&http, "first", "1").0, 200);

    // Worker c stops acknowledging: an ack=all write waits at the master.
    common::signal(&nodes[2], "-STOP");
    let writer = {
        let http = http.clone();
        std::thread::spawn(move || put(&http, "in-flight", "2"))
    };
    std::thread::sleep(Duration::from_millis(700));
    nodes[0].0.kill().unwrap();
    nodes[0].0.wait().unwrap();
    common::signal(&nodes[2], "-CONT");
    let (code, body) = writer.join().unwrap();
    assert_eq!(code, 503, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["error"]["code"], "indeterminate", "{body}");

    // It may or may not be there; whichever, every read agrees once the
    // new master answers, and writes go on.
    wait_cluster(&http, "a new master", |c| {
        c["master"]["addr"] != addr(ports[0]) && c["master"]["addr"].is_string()
    });
    common::eventually(20, "writes resume", || put(&http, "after", "3").0 == 200);
    let strong = curl(&[&format!("http://{http}/v1/kv/in-flight?consistency=strong")]);
    assert!(
        strong == (200, "2".into()) || strong.0 == 404,
        "the write in flight reads {strong:?}"
    );
}

/// A gateway that has no connection to the master yet, while the master is
/// stopped (a dead master does not refuse: its connection attempts just go
/// unanswered): a write waits for the new master the cluster elects and
/// lands there, instead of failing once the attempt on the old one times out.
#[test]
fn a_write_to_a_stopped_master_goes_to_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    assert_eq!(put(&http, "first", "1").0, 200);

    common::signal(&nodes[0], "-STOP");
    // A second gateway, started now: its first connection to the master
    // is the one that goes unanswered.
    let fresh = addr(free_port());
    let _gw2 = gateway(&fresh, &ports, &dir.path().join("gateway2.log"));
    let t = Instant::now();
    let (code, body) = put(&fresh, "during", "2");
    let took = t.elapsed();
    assert_eq!(code, 200, "after {took:?}: {body}");
    let c = cluster(&fresh);
    assert_ne!(c["master"]["addr"], addr(ports[0]), "{c}");
    let strong = curl(&[&format!("http://{fresh}/v1/kv/during")]);
    assert_eq!(strong, (200, "2".into()));
    common::signal(&nodes[0], "-CONT");
}

/// A worker that stays connected but falls behind in time leaves the
/// in-sync set after the ack timeout, even when every write is
/// `ack=master` (no write times out on it): until then it holds the
/// high-water mark back, and every read waits on it.
#[test]
fn a_worker_behind_in_time_leaves_the_in_sync_set_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut args = node_args(dir.path(), ports);
    args[2].extend(["--apply-delay-ms".to_string(), "400".to_string()]);
    let (_nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);

    // Sequential writes, each its own segment: c applies one per 400 ms.
    let t = Instant::now();
    let mut i = 0;
    while t.elapsed() < Duration::from_millis(2500) {
        let url = format!("http://{http}/v1/kv/w{i}?ack=master");
        assert_eq!(curl(&["-X", "PUT", &url, "-d", "v"]).0, 200);
        i += 1;
    }
    let view = cluster(&http);
    let c = view["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["addr"] == addr(ports[2]))
        .cloned()
        .unwrap_or_else(|| panic!("no worker c in {view}"));
    assert_eq!(c["in_sync"], false, "{view}");
    // A strong read of the last write: answered by b, whose reads no
    // longer wait for c.
    let last = format!("http://{http}/v1/kv/w{}", i - 1);
    assert_eq!(curl(&["--max-time", "10", &last]), (200, "v".to_string()));
}

/// After an offline compaction of the master, the whole cluster restarts:
/// the workers fetch a snapshot of the new epoch, which ends at the new
/// master's high-water mark (nothing yet), and get the compacted log as
/// segments. A session read that carries a cursor of the old epoch must
/// not be answered from that still empty log (it was: 404 for a key that
/// exists, at `2:0:1`).
#[test]
fn an_old_epochs_cursor_is_not_answered_from_a_log_still_filling() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    for i in 0..50 {
        assert_eq!(put(&http, "pad", &format!("{i:0>300}")).0, 200);
    }
    let (code, body) = put(&http, "zz", "final");
    assert_eq!(code, 200, "{body}");
    let written: serde_json::Value = serde_json::from_str(&body).unwrap();
    let old = written["cursor"].as_str().unwrap().to_string();
    assert!(old.starts_with("1:"), "{old}");
    common::eventually(10, "workers caught up", || {
        curl(&[&format!("http://{http}/ready?sync")]).0 == 200
    });

    for n in &nodes {
        common::signal(n, "-TERM");
    }
    for mut n in nodes.drain(..) {
        n.0.wait().unwrap();
    }
    common::compact_to_epoch_2(&dir.path().join("a"));
    nodes.extend(
        args.iter()
            .zip(["a2", "b2", "c2"])
            .map(|(a, n)| start(a, &dir.path().join(format!("{n}.log")))),
    );

    let session = format!("X-OurKV-Cursor: {old}");
    let url = format!("http://{http}/v1/kv/zz?consistency=session");
    let t = Instant::now();
    let mut answers = Vec::new();
    while t.elapsed() < Duration::from_secs(3) {
        let got = curl(&["--max-time", "10", "-H", &session, &url]);
        assert_ne!(got.0, 404, "after {:?}: {answers:?}", t.elapsed());
        answers.push(got);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        answers.last().unwrap(),
        &(200, "final".to_string()),
        "{answers:?}"
    );
}

/// A master whose machine lost its disk, started again with its old command
/// line, founds a cluster of its own (it cannot know better): the old
/// cluster's members go on reaching its address as their old member, and
/// it must not answer as that member (voting without that member's votes,
/// taking its log without its history). It refuses them, says so in its
/// log, and the old cluster goes on without it, nothing lost.
#[test]
fn a_master_back_on_a_fresh_disk_does_not_answer_as_its_old_self() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    let old_id = id_at(&cluster(&http), &addr(ports[0]));
    for i in 0..20 {
        assert_eq!(put(&http, &format!("k{i}"), &format!("v{i}")).0, 200);
    }
    drop(nodes.remove(0)); // SIGKILL
    wait_cluster(&http, "a new master", |c| {
        c["term"].as_u64() >= Some(2) && c["master"]["addr"] != addr(ports[0])
    });
    // The disk is gone: data and Raft directory.
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    std::fs::remove_dir_all(dir.path().join("a.raft")).unwrap();
    let own_http = addr(free_port());
    let mut again = args[0].clone();
    again.extend(["--http".to_string(), own_http.clone()]);
    let log = dir.path().join("a2.log");
    let _a = start(&again, &log);
    let new_id = std::fs::read_to_string(dir.path().join("a.raft/id")).unwrap();
    assert_ne!(new_id.trim(), old_id);
    // Heartbeats reach it every 50 ms; give them time to do harm.
    std::thread::sleep(Duration::from_secs(2));
    let own = cluster(&own_http);
    let ids: Vec<&str> = own["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{own}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [new_id.trim()], "it took on the old cluster: {own}");
    // And it still works as the master of its own cluster.
    let (code, body) = put(&own_http, "own", "1");
    assert_eq!(code, 200, "{body}; its view: {}", cluster(&own_http));
    // A strong read asks its metadata group whether it still leads.
    let strong = curl(&["-m", "10", &format!("http://{own_http}/v1/kv/own")]);
    assert_eq!(
        strong,
        (200, "1".into()),
        "its view: {}",
        cluster(&own_http)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("reaches this address as its member {old_id}")),
        "{text}"
    );
    // The old cluster: its master is one of the workers, and every write is
    // there.
    let view = cluster(&http);
    assert_ne!(view["master"]["addr"], addr(ports[0]), "{view}");
    for i in 0..20 {
        let got = curl(&[&format!("http://{http}/v1/kv/k{i}")]);
        assert_eq!(got, (200, format!("v{i}")), "k{i}");
    }
}

/// A copy of a member's data and Raft directories started at another
/// address (a cloned machine, a copied directory) would answer under the
/// member's id beside it, and vote twice in its name: it is refused at
/// start, with what to do instead.
#[test]
fn a_copy_of_a_members_directories_is_refused_at_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    let c_id = id_at(&cluster(&http), &addr(ports[2]));
    drop(nodes.remove(2)); // quiet directories to copy
    for (from, to) in [("c", "d"), ("c.raft", "d.raft")] {
        let ok = Command::new("cp")
            .args(["-r"])
            .arg(dir.path().join(from))
            .arg(dir.path().join(to))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let copy: Vec<String> = args[2]
        .iter()
        .map(|a| {
            if a == dir.path().join("c").to_str().unwrap() {
                dir.path().join("d").to_str().unwrap().to_string()
            } else if *a == addr(ports[2]) {
                addr(free_port())
            } else {
                a.clone()
            }
        })
        .collect();
    let (code, err) = refused(&copy);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("is member {c_id}'s")), "{err}");
    // The cluster goes on with its two members left.
    assert_eq!(put(&http, "after", "1").0, 200);

    // Every member has the cluster's heartbeat (the leader's lease counts
    // on their election timeouts): a new node with another one is refused
    // when it joins, and a member restarted with another one will not start.
    let other_heartbeat = ["--heartbeat-ms".to_string(), "100".to_string()];
    let mut new_node: Vec<String> = copy
        .iter()
        .map(|a| {
            if a == dir.path().join("d").to_str().unwrap() {
                dir.path().join("e").to_str().unwrap().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    new_node.extend(other_heartbeat.clone());
    let (code, err) = refused(&new_node);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("start it with --heartbeat-ms 50"), "{err}");
    let mut restarted = args[2].clone();
    restarted.extend(other_heartbeat);
    let (code, err) = refused(&restarted);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("start it with --heartbeat-ms 50"), "{err}");
    assert_eq!(cluster(&http)["members"].as_array().unwrap().len(), 3);
}

/// Runs `ourkv ARGS`, which is to exit by itself within 20 s (the test
/// fails if it runs on): its exit code and stderr.
fn refused(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ourkv {args:?} is still running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// A member removed while stopped comes back and is shipped nothing; the
/// two members left are a voter and a learner (two voters could not lose
/// either); a node that asks to join at an address another member holds is
/// refused until that member is removed, then joins.
#[test]
fn removal_leaves_a_voter_and_a_learner_and_ends_the_removed_members_shipping() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    let c_id = id_at(&cluster(&http), &addr(ports[2]));
    common::signal(&nodes[2], "-STOP");
    // An ack=all write waits for c, times out (1 s) and drops it.
    assert_eq!(put(&http, "k1", "1").0, 200);
    wait_cluster(&http, "c out of the in-sync set", |c| {
        c["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["addr"] == addr(ports[2]) && m["in_sync"] == false)
        })
    });

    // A new node that would be reached at c's address is refused.
    let d_args = |data: &str, listen: u16, advertise: Option<u16>| {
        let mut a = vec![
            "worker".to_string(),
            "--data".into(),
            dir.path().join(data).to_str().unwrap().into(),
            "--listen".into(),
            addr(listen),
            "--master".into(),
            addr(ports[0]),
            "--file-size".into(),
            "65536".into(),
            "--ack-timeout-ms".into(),
            "1000".into(),
        ];
        if let Some(p) = advertise {
            a.extend(["--advertise".into(), addr(p)]);
        }
        a
    };
    let log_d = dir.path().join("d.log");
    let d = start(&d_args("d", free_port(), Some(ports[2])), &log_d);
    let said = std::fs::read_to_string(&log_d).unwrap();
    assert!(
        said.contains(&format!("is member {c_id}'s address")),
        "{said}"
    );
    assert_eq!(cluster(&http)["members"].as_array().unwrap().len(), 3);
    drop(d);

    let remove = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["cluster", "remove", &c_id, "--node", &addr(ports[0])])
        .output()
        .unwrap();
    assert!(remove.status.success(), "{remove:?}");
    wait_cluster(&http, "a voter and a learner", |c| {
        c["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2 && m.iter().filter(|m| m["voter"] == true).count() == 1)
    });
    // c comes back believing it is a member: the master ships it nothing.
    common::signal(&nodes[2], "-CONT");
    std::thread::sleep(Duration::from_secs(2));
    let view = cluster(&http);
    let shipped_to: Vec<&str> = view["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["addr"].as_str().unwrap())
        .collect();
    assert!(!shipped_to.contains(&addr(ports[2]).as_str()), "{view}");
    // Nor does the gateway take c's view (its members from before) for the
    // cluster's: at one term, the view with more metadata applied is newer.
    assert_eq!(view["members"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(put(&http, "k2", "2").0, 200);
    drop(nodes.remove(2));

    // Now a node at c's address joins, and the three are voters again.
    let e = start(&d_args("e", ports[2], None), &dir.path().join("e.log"));
    wait_cluster(&http, "three voters with the new node, in sync", |c| {
        formed(c)
            && c["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["id"] != c_id.as_str()))
    });
    assert_eq!(
        curl(&[&format!("http://{http}/v1/kv/k2")]),
        (200, "2".to_string())
    );
    drop(e);
}

/// Two processes on one Raft directory would answer under one id: the
/// second is refused.
#[test]
fn a_raft_directory_serves_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let _a = start(&args[0], &dir.path().join("a.log"));
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["master", "--data"])
        .arg(dir.path().join("b"))
        .args(["--listen", &addr(ports[1]), "--raft-dir"])
        .arg(dir.path().join("a.raft"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another process"), "{err}");
}

/// `dir/other`: the data of another cluster (one member), which wrote 20
/// keys and stopped. Its Raft directory is `dir/other.raft`.
fn another_clusters_data(dir: &Path) -> std::path::PathBuf {
    let other = dir.join("other");
    let other_http = addr(free_port());
    let p = start(
        &[
            "master".to_string(),
            "--data".into(),
            other.to_str().unwrap().into(),
            "--listen".into(),
            addr(free_port()),
            "--http".into(),
            other_http.clone(),
        ],
        &dir.join("other.log"),
    );
    for i in 0..20 {
        assert_eq!(put(&other_http, &format!("theirs{i}"), "x").0, 200);
    }
    drop(p);
    other
}

/// A new member whose data directory holds another cluster's data is
/// refused (exit 1) with its data untouched; with `--replace-data` it joins
/// and takes the cluster's data.
#[test]
fn a_worker_with_another_clusters_data_is_refused_unless_told_to_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    for i in 0..20 {
        assert_eq!(put(&http, &format!("ours{i}"), "1").0, 200);
    }

    // A copy of a member's data holds a prefix of the cluster's log: with
    // a Raft directory of its own, it joins as a new member, no flag needed.
    common::signal(&nodes[1], "-STOP");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(dir.path().join("b"))
        .arg(dir.path().join("prefix"))
        .status()
        .unwrap()
        .success();
    common::signal(&nodes[1], "-CONT");
    assert!(copied);
    assert_eq!(put(&http, "ours-after-the-copy", "1").0, 200);
    let prefix_at = addr(free_port());
    let _prefix = start(
        &[
            "worker".to_string(),
            "--data".into(),
            dir.path().join("prefix").to_str().unwrap().into(),
            "--listen".into(),
            prefix_at.clone(),
            "--master".into(),
            addr(ports[0]),
        ],
        &dir.path().join("prefix.log"),
    );
    wait_cluster(&http, "the copy joined and in sync", |c| {
        c["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["addr"] == prefix_at.as_str() && m["in_sync"] == true)
        })
    });

    let other = another_clusters_data(dir.path());
    let dump = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["db", "dump"])
            .arg(&other)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let before = dump();
    assert!(!before.is_empty());

    // Joined with a Raft directory of its own, it is a new member.
    let listen = addr(free_port());
    let join = |extra: &[&str]| {
        let mut a = vec![
            "worker".to_string(),
            "--data".into(),
            other.to_str().unwrap().into(),
            "--raft-dir".into(),
            dir.path().join("joiner.raft").to_str().unwrap().into(),
            "--listen".into(),
            listen.clone(),
            "--master".into(),
            addr(ports[1]), // a worker: the join goes on to the leader
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (code, err) = refused(&join(&[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is not a prefix of the cluster's log") && err.contains("--replace-data"),
        "{err}"
    );
    assert_eq!(dump(), before, "the refused node's data changed");
    let view = cluster(&http);
    assert_eq!(view["members"].as_array().unwrap().len(), 4, "{view}");

    // Told to, it joins and holds the cluster's data instead.
    let _joined = start(&join(&["--replace-data"]), &dir.path().join("joiner.log"));
    wait_cluster(&http, "the joined node in sync", |c| {
        c["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["addr"] == listen.as_str() && m["in_sync"] == true)
        })
    });
    assert_eq!(put(&http, "after", "2").0, 200);
    let nodes: Vec<SocketAddr> = [addr(ports[0]), listen.clone(), prefix_at]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    common::wait_identical(&nodes).unwrap();
}

/// With no master (two of three members down: no quorum), `/v1/cluster`
/// answers 503 within about a second, with the term and the members the
/// metadata lists, and so do `/ready` and `/metrics` (without master
/// figures).
#[test]
fn with_no_master_the_cluster_view_answers_at_once_with_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    let term = cluster(&http)["term"].as_u64().unwrap();
    nodes.truncate(1); // b and c killed
    drop(nodes.remove(0)); // and the master
    std::thread::sleep(Duration::from_secs(2));
    // curl gives up after 2.5 s: the view used to come after the gateway's
    // 3 s wait for a new master, or not at all.
    let get = |path: &str| curl(&["--max-time", "2.5", &format!("http://{http}{path}")]);
    for _ in 0..3 {
        let (code, body) = get("/v1/cluster");
        assert_eq!(code, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        assert!(v["term"].as_u64().unwrap() >= term, "{v}");
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{v}");
        for p in ports {
            assert!(members.iter().any(|m| m["addr"] == addr(p)), "{v}");
        }
        // The metadata's master is shown as the one that did not answer.
        for m in members {
            let named = m["master"] == true;
            assert_eq!(m.get("answered").is_some(), named, "{v}");
            assert!(!named || m["answered"] == false, "{v}");
        }
        assert_eq!(get("/ready").0, 503);
        assert_eq!(get("/metrics").0, 200);
    }
    // The command line shows the members too, then the error (exit 5).
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["cluster", "status", "--endpoint", &format!("http://{http}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text.contains("master  none"), "{text}");
    for p in ports {
        assert!(text.contains(&addr(p)), "{text}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{out:?}"
    );
    // A new gateway naming only the dead members never saw the metadata:
    // it shows the nodes it asked.
    let http2 = addr(free_port());
    let _gw2 = common::start(&[
        "gateway",
        "--http",
        &http2,
        "--master",
        &addr(ports[0]),
        "--worker",
        &addr(ports[1]),
    ]);
    let (code, body) = curl(&["--max-time", "2.5", &format!("http://{http2}/v1/cluster")]);
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("members").is_none(), "{v}");
    for p in &ports[..2] {
        assert!(
            v["asked"].as_array().unwrap().contains(&addr(*p).into()),
            "{v}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args([
            "cluster",
            "status",
            "--endpoint",
            &format!("http://{http2}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text.contains("master  none"), "{text}");
    for p in &ports[..2] {
        assert!(text.contains(&format!("node    {}", addr(*p))), "{text}");
    }
}

/// A member restarted with a `--master` that names none of its cluster's
/// members (say, another cluster's) says in its log that the address is not
/// used, and follows its own cluster; with its own master named it says
/// nothing of the kind.
#[test]
fn a_member_restarted_naming_a_stranger_says_the_address_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let _a = start(&args[0], &log("a"));
    drop(start(&args[1], &log("b")));
    let warned = |n: &str| {
        std::fs::read_to_string(log(n))
            .unwrap()
            .contains("name none of its cluster's members")
    };
    assert!(!warned("b"), "warned on its first start");
    let stranger = addr(free_port());
    let mut moved = args[1].clone();
    let at = moved.iter().position(|a| a == "--master").unwrap();
    moved[at + 1] = stranger.clone();
    let b = start(&moved, &log("b2"));
    common::eventually(5, "the warning", || warned("b2"));
    let text = std::fs::read_to_string(log("b2")).unwrap();
    assert!(
        text.contains(&stranger) && text.contains(&addr(ports[0])),
        "{text}"
    );
    drop(b);
    let _b = start(&args[1], &log("b3"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!warned("b3"), "warned with its own master named");
}

/// A node that asks to join with data while the cluster has no master
/// cannot be checked yet: it prints no "listening" line (scripts wait for
/// it) until a master has checked it; here it is then refused.
#[test]
fn a_joiner_with_data_says_nothing_until_a_master_has_checked_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let args = node_args(dir.path(), ports);
    let (mut nodes, _gw, _http) = formed_cluster(dir.path(), ports, &args);
    let other = another_clusters_data(dir.path());
    // Only c is left: no quorum, no master.
    drop(nodes.drain(..2));
    // Killed on drop: a failed assertion leaves no process behind.
    let mut joiner = common::Proc(
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["worker", "--data"])
            .arg(&other)
            .arg("--raft-dir")
            .arg(dir.path().join("joiner.raft"))
            .args(["--listen", &addr(free_port()), "--master", &addr(ports[2])])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel();
    let out = joiner.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Past the 5 s a joiner without data waits before its line.
    std::thread::sleep(Duration::from_secs(7));
    assert!(joiner.0.try_wait().unwrap().is_none(), "the joiner ended");
    assert_eq!(lines.try_recv().ok(), None, "it said it was listening");
    // a and b come back: a master checks the data and refuses it.
    let _a = start(&args[0], &dir.path().join("a2.log"));
    let _b = start(&args[1], &dir.path().join("b2.log"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = joiner.0.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            panic!("the joiner was not refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    // Everything it printed (the reader ends at the closed pipe).
    let said: Vec<String> = lines.iter().collect();
    assert!(said.is_empty(), "it printed {said:?}");
}

/// Unmounts a tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A master whose disk fills up stops (exit 1, saying why) instead of
/// holding the master's role while it refuses every write: another member
/// takes over, writes go on through the gateway, and no acknowledged write
/// is lost. (Before, it stayed master, answering 500 to every write, until
/// someone restarted it.) Needs root for a small tmpfs; says so and passes
/// where none can be mounted.
#[test]
fn a_master_whose_disk_fills_up_stops_and_another_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    std::fs::create_dir(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&data)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: cannot mount a tmpfs here ({mounted:?})");
        return;
    }
    let _mounted = Mounted(data.clone());
    let ports = [free_port(), free_port(), free_port()];
    // One data file: the disk fills in a group commit, not at a file switch.
    let args: Vec<Vec<String>> = node_args(dir.path(), ports)
        .into_iter()
        .map(|a| {
            let at = a.iter().position(|x| x == "--file-size").unwrap();
            let mut a = a;
            a.drain(at..at + 2);
            a
        })
        .collect();
    let (mut nodes, _gw, http) = formed_cluster(dir.path(), ports, &args);
    let value = "v".repeat(32 << 10);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    // 4 MiB of tmpfs holds fewer than 128 such values.
    for i in 0..400 {
        let key = format!("full{i}");
        let (code, _) = put(&http, &key, &format!("{i}{value}"));
        if code == 200 {
            acknowledged.push((key, i));
        } else {
            refused += 1;
        }
        if refused > 0 && nodes[0].0.try_wait().unwrap().is_some() {
            break;
        }
    }
    assert!(refused > 0, "the disk never filled");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = nodes[0].0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the master with a full disk is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(log.contains("the store failed a commit"), "{log}");
    // Another member is master, and takes writes.
    let t = Instant::now();
    loop {
        let (code, body) = put(&http, "after", "1");
        if code == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no write after the master stopped: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (key, i) in &acknowledged {
        let (code, body) = curl(&[&format!("http://{http}/v1/kv/{key}")]);
        assert_eq!(code, 200, "{key}");
        assert_eq!(body, format!("{i}{value}"), "{key}");
    }
    eprintln!(
        "{} writes acknowledged before the disk filled, {refused} refused",
        acknowledged.len()
    );
    drop(nodes.remove(0));
}
