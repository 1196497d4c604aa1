//! `ourkv master|worker --http`: a failover member that serves the HTTP API
//! itself, reading from its own store, as real processes on loopback.

mod common;

use std::time::Duration;

use common::{curl, eventually, free_port, start, Proc};

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A counter of a node's `/metrics`, 0 when it is not there.
fn counter(http: &str, name: &str, token: Option<&str>) -> u64 {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let url = format!("http://{http}/metrics");
    args.push(&url);
    let (code, body) = curl(&args);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A watch (`curl -N`) on `url`, its output gathered on a thread.
fn watching(url: &str, header: &str) -> (Proc, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = std::process::Command::new("curl")
        .args(["-s", "-N", "--max-time", "120", "-H", header, url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = seen.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    (Proc(child), seen)
}

#[test]
fn a_worker_serves_reads_from_its_own_store_and_follows_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let (mhttp, whttp) = (addr(free_port()), addr(free_port()));
    let data = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let mut master = start(&[
        "master",
        "--data",
        &data("a"),
        "--listen",
        &addr(ports[0]),
        "--ack-timeout-ms",
        "1000",
        "--http",
        &mhttp,
    ]);
    let worker = |name: &str, port: u16, extra: &[&str]| -> Proc {
        let mut args = vec![
            "worker",
            "--data",
            &data(name),
            "--listen",
            &addr(port),
            "--master",
            &addr(ports[0]),
            "--ack-timeout-ms",
            "1000",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let _b = worker(
        "b",
        ports[1],
        &["--http", &whttp, "--api-token", "s3cret", "--threads", "1"],
    );
    let _c = worker("c", ports[2], &[]);
    let bearer = "Authorization: Bearer s3cret";
    let on_b = |path: &str| curl(&["-H", bearer, &format!("http://{whttp}{path}")]);

    // The worker's API learns the cluster from the metadata.
    eventually(20, "the worker's API shows the cluster formed", || {
        let (code, body) = on_b("/v1/cluster");
        code == 200 && common::formed(&serde_json::from_str(&body).unwrap())
    });
    // Its token is its own: none, or a wrong one, is refused.
    assert_eq!(curl(&[&format!("http://{whttp}/v1/kv/x")]).0, 401);
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Bearer no",
            &format!("http://{whttp}/v1/kv/x")
        ])
        .0,
        401
    );

    // A write through the worker goes to the master and is acknowledged
    // by every in-sync worker; every API reads it.
    let url = format!("http://{whttp}/v1/kv/conf?ack=all");
    let (code, body) = curl(&["-H", bearer, "-X", "PUT", &url, "--data-binary", "v1"]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(on_b("/v1/kv/conf"), (200, "v1".into()));
    assert_eq!(on_b("/v1/kv/conf?consistency=strong"), (200, "v1".into()));
    assert_eq!(
        curl(&[&format!("http://{mhttp}/v1/kv/conf?consistency=strong")]),
        (200, "v1".into())
    );

    // The worker answers its API's reads itself. Every 64th read goes
    // round-robin (so a worker that failed once is tried again), and a slow
    // answer may be hedged: nearly all, not all, stay local.
    let before = counter(&whttp, "ourkv_reads_local_total", Some("s3cret"));
    for _ in 0..100 {
        assert_eq!(on_b("/v1/kv/conf"), (200, "v1".into()));
    }
    let local = counter(&whttp, "ourkv_reads_local_total", Some("s3cret")) - before;
    assert!(local >= 95, "{local} of 100 reads answered locally");
    // The master's API reads from the workers: the master has no worker
    // role to read locally.
    for _ in 0..10 {
        assert_eq!(curl(&[&format!("http://{mhttp}/v1/kv/conf")]).0, 200);
    }
    assert_eq!(counter(&mhttp, "ourkv_reads_local_total", None), 0);
    // --threads sets the worker's runtime; the master keeps one per core.
    assert_eq!(counter(&whttp, "ourkv_runtime_threads", Some("s3cret")), 1);
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(counter(&mhttp, "ourkv_runtime_threads", None), cores);

    // A watch through the worker's API sees changes before the failover...
    let (_watch, seen) = watching(&format!("http://{whttp}/v1/watch?prefix=w/"), bearer);
    eventually(
        10,
        "the watch sees a change made before the failover",
        || {
            let url = format!("http://{whttp}/v1/kv/w/before");
            curl(&["-H", bearer, "-X", "PUT", &url, "--data-binary", "0"]);
            seen.lock().unwrap().contains("\"w/before\"")
        },
    );

    // kill -9 the master: the worker's API follows the new master, and
    // writes through it resume; nothing acknowledged is lost.
    master.0.kill().unwrap();
    master.0.wait().unwrap();
    let url = format!("http://{whttp}/v1/kv/after?ack=all");
    eventually(20, "writes through the worker's API resume", || {
        curl(&[
            "-H",
            bearer,
            "--max-time",
            "5",
            "-X",
            "PUT",
            &url,
            "--data-binary",
            "v2",
        ])
        .0 == 200
    });
    assert_eq!(on_b("/v1/kv/after?consistency=strong"), (200, "v2".into()));
    assert_eq!(on_b("/v1/kv/conf?consistency=strong"), (200, "v1".into()));
    let (_, body) = on_b("/v1/cluster");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(view["term"].as_u64().unwrap() >= 2, "{view}");
    assert_ne!(view["master"]["addr"], addr(ports[0]), "{view}");
    // ...and after it: every surviving node changed roles, and the stream
    // the watch was fed from moves with them, it does not go silent.
    let url = format!("http://{whttp}/v1/kv/w/after?ack=all");
    let (code, body) = curl(&["-H", bearer, "-X", "PUT", &url, "--data-binary", "1"]);
    assert_eq!(code, 200, "{body}");
    eventually(
        15,
        "the watch sees a change made after the failover",
        || seen.lock().unwrap().contains("\"w/after\""),
    );
    std::thread::sleep(Duration::from_millis(100));
}

/// Runs `ourkv ARGS` to its end; its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_http_flags_on_a_node_are_refused_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let data = data.to_str().unwrap();
    let listen = addr(free_port());
    // `ourkv master` on `data` with `extra` flags: it must exit non-zero
    // and say `says` on stderr.
    let refused = |extra: &[&str], says: &str| {
        let mut args = vec!["master", "--data", data, "--listen", &listen];
        args.extend_from_slice(extra);
        let (code, err) = run(&args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(err.contains(says), "{err}");
    };
    // --http is a failover member's.
    let http = addr(free_port());
    refused(&["--standalone", "--http", &http], "--http");
    // So is the metadata group's heartbeat, within its bounds.
    refused(&["--standalone", "--heartbeat-ms", "500"], "--heartbeat-ms");
    refused(&["--heartbeat-ms", "5"], "10..=10000");
    refused(&["--heartbeat-ms", "10001"], "10..=10000");
    // An unusable token or address: refused, nothing opened.
    refused(&["--http", &http, "--api-token", " "], "--api-token");
    refused(&["--http", "nowhere"], "nowhere");
    assert!(!dir.path().join("n").exists(), "no store was opened");
    // An HTTP port in use: the node says so and exits before it opens its
    // store or joins a cluster.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    refused(&["--http", &busy], &busy);
    assert!(!dir.path().join("n").exists(), "no store was opened");
}
