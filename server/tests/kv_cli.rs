//! `ourkv kv` against a real `ourkv dev`: values byte for byte, exit codes
//! scripts rely on, listing past one page, the token, JSON output, and a
//! watch that resumes by itself when the server restarts.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::*;

fn kv(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    output_of(
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .arg("kv")
            .args(["--endpoint", &format!("http://{endpoint}")])
            .args(args)
            .env_remove("OURKV_API_TOKEN")
            .env_remove("OURKV_ENDPOINT"),
        stdin,
    )
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// PUTs `n` keys over one keep-alive connection (faster than n processes).
fn put_many(http: &str, n: usize) {
    let mut s = std::net::TcpStream::connect(http).unwrap();
    let mut reqs = Vec::new();
    for i in 0..n {
        reqs.extend_from_slice(
            format!("PUT /v1/kv/page/{i:05} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv")
                .as_bytes(),
        );
    }
    s.write_all(&reqs).unwrap();
    let mut seen = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut text = Vec::new();
    while seen < n {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "connection closed after {seen} answers");
        text.extend_from_slice(&buf[..k]);
        seen = text.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    }
}

#[test]
fn put_get_ls_history_del_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&dir.path().join("d"), &[]);

    // Values byte for byte: an argument, a file (not UTF-8), stdin.
    assert!(ok(&kv(&http, &["put", "app/a", "hello"], None)).starts_with("OK app/a etag=\""));
    assert_eq!(ok(&kv(&http, &["get", "app/a"], None)), "hello");
    let bin = dir.path().join("bin");
    std::fs::write(&bin, [0u8, 0xff, 0xfe, b'\n', 7]).unwrap();
    ok(&kv(
        &http,
        &["put", "app/bin", "--file", bin.to_str().unwrap()],
        None,
    ));
    let got = kv(&http, &["get", "app/bin"], None);
    assert_eq!(got.stdout, [0u8, 0xff, 0xfe, b'\n', 7]);
    ok(&kv(&http, &["put", "app/stdin"], Some(b"from stdin\n")));
    assert_eq!(ok(&kv(&http, &["get", "app/stdin"], None)), "from stdin\n");

    // JSON: text values as strings, others as base64.
    let j: serde_json::Value =
        serde_json::from_str(&ok(&kv(&http, &["-o", "json", "get", "app/bin"], None))).unwrap();
    assert_eq!(j["value"]["base64"], "AP/+Cgc=");
    assert!(j["etag"].as_str().unwrap().starts_with('"'));

    // Exit codes: 1 not found, 3 precondition failed, 2 usage.
    let missing = kv(&http, &["get", "nope"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not_found"));
    let etag = ok(&kv(&http, &["-o", "raw", "put", "app/a", "v2"], None));
    let etag = etag.trim();
    let stale = kv(
        &http,
        &["put", "app/a", "v3", "--if-match", "\"1-0-1\""],
        None,
    );
    assert_eq!(stale.status.code(), Some(3));
    assert_eq!(
        kv(&http, &["put", "app/a", "v3", "--if-none-match", "*"], None)
            .status
            .code(),
        Some(3)
    );
    ok(&kv(
        &http,
        &["put", "app/a", "v3", "--if-match", etag],
        None,
    ));
    assert_eq!(ok(&kv(&http, &["get", "app/a"], None)), "v3");
    assert_eq!(kv(&http, &["frobnicate"], None).status.code(), Some(2));

    // History, newest first.
    let h: serde_json::Value =
        serde_json::from_str(&ok(&kv(&http, &["-o", "json", "history", "app/a"], None))).unwrap();
    assert_eq!(h["history"], serde_json::json!(["v3", "v2", "hello"]));

    // Listing past one page (the API gives at most 1000 keys a call).
    put_many(&http, 1203);
    let keys = ok(&kv(&http, &["ls", "page/"], None));
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1203);
    assert_eq!(keys[0], "page/00000");
    assert_eq!(keys[1202], "page/01202");
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        ok(&kv(&http, &["ls", "page/", "--limit", "3"], None))
            .lines()
            .count(),
        3
    );
    assert_eq!(
        ok(&kv(&http, &["ls", "app/"], None)),
        "app/a\napp/bin\napp/stdin\n"
    );

    // A transaction from stdin, then from a file; exit 3 when its
    // condition fails, 4 when it is refused.
    let t = br#"{"if":[{"key":"app/a","value":"v3"}],"do":[{"put":"app/t","value":"x"},{"get":"app/bin"},{"delete":"app/none"}]}"#;
    let done = ok(&kv(&http, &["txn"], Some(t)));
    assert!(
        done.starts_with("put app/t etag=\"")
            && done.contains(
                "\nget app/bin = base64:AP/+Cgc=\ndelete app/none existed=false\nOK cursor="
            ),
        "{done}"
    );
    let file = dir.path().join("t.json");
    std::fs::write(
        &file,
        br#"{"if":[{"key":"app/a","value":"other"}],"do":[{"put":"app/t","value":"y"}]}"#,
    )
    .unwrap();
    let failed = kv(
        &http,
        &["txn", file.to_str().unwrap(), "--ack", "all"],
        None,
    );
    assert_eq!(failed.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("condition 0"));
    assert_eq!(ok(&kv(&http, &["get", "app/t"], None)), "x");
    let j: serde_json::Value = serde_json::from_str(&ok(&kv(
        &http,
        &["-o", "json", "txn", "-"],
        Some(br#"{"do":[{"get":"app/t"}]}"#),
    )))
    .unwrap();
    assert_eq!(j["results"][0]["value"], "x");
    assert_eq!(kv(&http, &["txn"], Some(b"{")).status.code(), Some(4));

    // Delete, then again: not found.
    ok(&kv(&http, &["del", "app/a"], None));
    assert_eq!(kv(&http, &["del", "app/a"], None).status.code(), Some(1));
    assert_eq!(kv(&http, &["get", "app/a"], None).status.code(), Some(1));
}

/// `kv lease`: grant, attach with `put --lease`, keep alive in the
/// background, describe, revoke; exit 1 for a lease that is gone.
#[test]
fn lease_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&dir.path().join("d"), &[]);
    let id = ok(&kv(&http, &["-o", "raw", "lease", "grant", "1s"], None));
    let id = id.trim().to_string();
    assert!(id.parse::<u32>().is_ok(), "{id}");
    ok(&kv(&http, &["put", "svc/a", "up", "--lease", &id], None));
    assert_eq!(
        kv(
            &http,
            &["put", "svc/b", "x", "--lease", &id, "--ttl", "1s"],
            None
        )
        .status
        .code(),
        Some(2),
        "--lease and --ttl conflict"
    );
    // A keep-alive loop holds the lease well past its time to live.
    let mut keeper = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["kv", "--endpoint", &format!("http://{http}")])
        .args(["lease", "keepalive", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut keeper);
    std::thread::sleep(Duration::from_millis(2500));
    let info = ok(&kv(&http, &["lease", "info", &id], None));
    assert!(
        info.contains(&format!("lease {id} lives ttl=1000ms")),
        "{info}"
    );
    assert!(info.contains("\n  svc/a"), "{info}");
    assert_eq!(ok(&kv(&http, &["get", "svc/a"], None)), "up");
    let kept = lines
        .try_iter()
        .filter(|l| l.contains("kept alive"))
        .count();
    assert!(kept >= 4, "{kept} keep-alives in 2.5 s of a 1 s lease");
    // The loop dies (as a client would): the lease ends with its key.
    keeper.kill().unwrap();
    keeper.wait().unwrap();
    eventually(5, "the key goes with its lease", || {
        kv(&http, &["get", "svc/a"], None).status.code() == Some(1)
    });
    let gone = kv(&http, &["lease", "keepalive", "--once", &id], None);
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no_lease"));
    // Revoke ends a lease at once.
    let id = ok(&kv(&http, &["-o", "raw", "lease", "grant", "1h"], None));
    let id = id.trim();
    ok(&kv(&http, &["put", "svc/c", "up", "--lease", id], None));
    let revoked: serde_json::Value = serde_json::from_str(&ok(&kv(
        &http,
        &["-o", "json", "lease", "revoke", id],
        None,
    )))
    .unwrap();
    assert_eq!(revoked["keys"], serde_json::json!(["svc/c"]));
    assert_eq!(kv(&http, &["get", "svc/c"], None).status.code(), Some(1));
    assert_eq!(
        kv(&http, &["lease", "info", id], None).status.code(),
        Some(1)
    );
    assert_eq!(
        kv(&http, &["lease", "grant", "0s"], None).status.code(),
        Some(4)
    );
}

#[test]
fn token_endpoint_and_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&dir.path().join("d"), &["--api-token", "s3cret"]);
    let refused = kv(&http, &["put", "k", "v"], None);
    assert_eq!(refused.status.code(), Some(4), "401 is a refusal");
    // The token and the endpoint from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["kv", "put", "k", "v"])
        .env("OURKV_API_TOKEN", "s3cret")
        .env("OURKV_ENDPOINT", format!("http://{http}"))
        .output()
        .unwrap();
    ok(&out);
    // `ourkv cluster status` through the same gateway: master and two workers.
    let status = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["cluster", "status"])
        .env("OURKV_API_TOKEN", "s3cret")
        .env("OURKV_ENDPOINT", format!("http://{http}"))
        .output()
        .unwrap();
    let table = ok(&status);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 5, "{table}");
    assert!(rows[0].starts_with("ROLE") && rows[0].contains("IN SYNC"));
    assert!(rows[1].starts_with("master"));
    assert!(rows[2].starts_with("worker") && rows[3].starts_with("worker"));
    // `ourkv dev` runs a failover cluster of three members.
    assert!(rows[4].contains("3 members (3 voting)"), "{table}");
    // Nothing listening: unavailable (5). An https URL is refused up front.
    let port = free_port();
    let gone = kv(&format!("127.0.0.1:{port}"), &["get", "k"], None);
    assert_eq!(gone.status.code(), Some(5));
    let https = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["kv", "--endpoint", "https://127.0.0.1:1", "get", "k"])
        .output()
        .unwrap();
    assert!(!https.status.success());
    assert!(String::from_utf8_lossy(&https.stderr).contains("http://"));
}

/// Reads the watch's lines on a thread, so the test can wait with a timeout.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn start_dev_at(data: &Path, http: &str) -> Proc {
    start(&["dev", "--data", data.to_str().unwrap(), "--http", http])
}

#[test]
fn watch_prints_changes_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (dev, http) = start_dev(&data, &[]);
    ok(&kv(&http, &["put", "w/one", "1"], None));
    ok(&kv(&http, &["put", "other", "x"], None));
    let mut watch = Proc(
        Command::new(env!("CARGO_BIN_EXE_ourkv"))
            .args(["kv", "--endpoint", &format!("http://{http}"), "watch", "w/"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx = lines_of(&mut watch.0);
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no line for {what}"))
    };
    // From the start of the log, only the prefix.
    assert_eq!(next("w/one"), "put w/one 1");
    ok(&kv(&http, &["put", "w/two", "2"], None));
    assert_eq!(next("w/two"), "put w/two 2");

    // The server goes away and comes back on the same address and data: the
    // watch reconnects and goes on after the last change it printed.
    drop(dev);
    let _dev = start_dev_at(&data, &http);
    ok(&kv(&http, &["put", "w/three", "3"], None));
    ok(&kv(&http, &["del", "w/one"], None));
    assert_eq!(next("w/three"), "put w/three 3");
    assert_eq!(next("the delete"), "delete w/one");
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a change printed twice"
    );

    // --count stops by itself; JSON lines carry the cursor.
    let out = kv(&http, &["-o", "json", "watch", "w/", "--count", "2"], None);
    let lines: Vec<serde_json::Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"], "put");
    assert_eq!(lines[0]["key"], "w/one");
    assert_eq!(lines[0]["value"], "1");
    assert!(lines[0]["cursor"].as_str().unwrap().starts_with("1:0:"));
}

/// `kv export` then `kv import` into another cluster: every key under the
/// prefix, byte for byte (binary, empty, and a value of several records),
/// nothing else; a file appears only whole; a malformed line stops the
/// import with exit 2 after storing every line before it.
#[test]
fn export_and_import_move_keys_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, a) = start_dev(&dir.path().join("a"), &[]);
    let (_b, b) = start_dev(&dir.path().join("b"), &[]);
    let mut want: Vec<(String, Vec<u8>)> = vec![
        ("app/bin".into(), vec![0, 255, 10, 13, b'"']),
        ("app/empty".into(), Vec::new()),
        (
            "app/large".into(),
            (0..300_000u32).map(|i| (i % 251) as u8).collect(),
        ),
        ("app/nested/k y".into(), "ünïcode\n".as_bytes().to_vec()),
    ];
    for i in 0..1_100 {
        want.push((format!("app/many/{i:05}"), format!("v{i}").into_bytes()));
    }
    for (k, v) in &want {
        ok(&kv(&a, &["put", k], Some(v)));
    }
    ok(&kv(&a, &["put", "other/x", "not exported"], None));
    want.sort();

    // To a file, then into the second cluster from the file.
    let file = dir.path().join("app.jsonl");
    let o = kv(
        &a,
        &["export", "app/", "--out", file.to_str().unwrap()],
        None,
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("exported 1104 keys"));
    assert!(!dir.path().join("app.jsonl.partial").exists());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), want.len());
    let o = kv(
        &b,
        &["import", file.to_str().unwrap(), "--ack", "all"],
        None,
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("imported 1104 keys"));
    ok(&o);
    for (k, v) in &want {
        let got = kv(&b, &["get", k], None);
        ok(&got);
        assert_eq!(got.stdout, *v, "{k}");
    }
    let o = kv(&b, &["get", "other/x"], None);
    assert_eq!(o.status.code(), Some(1), "only the prefix moved");

    // Standard output and standard input give the same lines.
    let stdout = ok(&kv(&a, &["export", "app/"], None));
    assert_eq!(stdout, text);

    // A malformed line: exit 2 naming it; the lines before it are stored.
    let bad = "{\"key\":\"s/1\",\"value\":\"one\"}\n\n{\"key\":\"s/2\",\"value_b64\":\"AA==\"}\n{\"key\":\"s/3\"}\n{\"key\":\"s/4\",\"value\":\"four\"}\n";
    let o = kv(&b, &["import", "-"], Some(bad.as_bytes()));
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 4"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(ok(&kv(&b, &["get", "s/1"], None)), "one");
    assert_eq!(kv(&b, &["get", "s/2"], None).stdout, [0]);
    assert_eq!(kv(&b, &["get", "s/4"], None).status.code(), Some(1));
    // An empty key is a malformed line too.
    let o = kv(
        &b,
        &["import", "-"],
        Some(b"{\"key\":\"\",\"value\":\"x\"}\n"),
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 1"));
    // A write the API refuses (past the value limit): exit 4, naming the line.
    let (_c, c) = start_dev(&dir.path().join("c"), &["--max-value-bytes", "4"]);
    let o = kv(
        &c,
        &["import", "-"],
        Some(b"{\"key\":\"k\",\"value\":\"12345\"}\n"),
    );
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 1 (key \"k\")"));
    // Nothing to reach: exit 5, and no file left behind.
    let dead = format!("127.0.0.1:{}", free_port());
    let lost = dir.path().join("lost.jsonl");
    let o = kv(&dead, &["export", "--out", lost.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(5));
    assert!(!lost.exists() && !dir.path().join("lost.jsonl.partial").exists());
}
