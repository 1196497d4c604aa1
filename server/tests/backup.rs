//! `ourkv backup` against running clusters: a copy taken under writes holds
//! every acknowledged write before it and a prefix of the ones racing it,
//! checks clean, and a master started on it serves it; one taken at once
//! after a failover holds every acknowledged write too; a copy is never
//! left half-written, and the token, a full directory and a dead endpoint
//! give clear errors.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn backup(http: &str, out: &Path, token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ourkv"));
    cmd.arg("backup")
        .args(["--endpoint", &format!("http://{http}")])
        .arg(out)
        .env_remove("OURKV_API_TOKEN")
        .env_remove("OURKV_ENDPOINT");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    output_of(&mut cmd, None)
}

/// Sequential `ack=all` PUTs of `{prefix}{i:06}` = `i` over one keep-alive
/// connection; `acked` counts the answered ones, until `stop` or `n`.
fn writer(http: &str, prefix: &str, n: usize, acked: &AtomicUsize, stop: &AtomicBool) {
    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let value = i.to_string();
        let req = format!(
            "PUT /v1/kv/{prefix}{i:06}?ack=all HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{value}",
            value.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        // One answer per request; a 200's body is short JSON.
        let mut got = Vec::new();
        loop {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "the gateway closed the connection at {prefix}{i}");
            got.extend_from_slice(&buf[..k]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{prefix}{i}: {text}");
                    break;
                }
            }
        }
        acked.store(i + 1, Ordering::SeqCst);
    }
}

fn open(dir: &Path) -> ourdb::keyed::KeyedStore {
    ourdb::keyed::KeyedStore::open(dir, ourdb::OpenOptions::new()).unwrap()
}

#[test]
fn a_backup_under_writes_holds_every_acknowledged_write_and_a_master_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _w, _gw, http) = master_workers_gateway(dir.path(), free_port(), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = curl(&[&format!("http://{http}/v1/cluster")]);
        if code == 200 && formed(&serde_json::from_str(&body).unwrap()) {
            break;
        }
        assert!(Instant::now() < deadline, "no cluster formed: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let never = AtomicBool::new(false);
    writer(&http, "before/", 300, &AtomicUsize::new(0), &never);

    // Writes race the backup: it starts once 50 of them are acknowledged.
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let racing = {
        let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || writer(&http, "during/", 1_000_000, &acked, &stop))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the writer is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before_backup = acked.load(Ordering::SeqCst);
    let out = dir.path().join("copies/one");
    let o = backup(&http, &out, None);
    let after_backup = acked.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    racing.join().unwrap();
    let all_acked = acked.load(Ordering::SeqCst);
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("backed up"));

    let copy = open(&out);
    for i in 0..300 {
        assert_eq!(
            copy.get(&format!("before/{i:06}")).unwrap(),
            Some(i.to_string().into_bytes()),
            "before/{i:06}"
        );
    }
    // The racing writes in the copy: a prefix of them (one writer, each
    // acknowledged before the next), with every one acknowledged before
    // the backup began, and none sent after it ended.
    let during = copy.list("during/", None, usize::MAX);
    let k = during.len();
    eprintln!("racing: {before_backup} before, {k} in the copy, {after_backup} after");
    assert!(
        (before_backup..=after_backup + 1).contains(&k),
        "{k} racing writes in the copy; {before_backup} acknowledged before it, {after_backup} after"
    );
    for (i, key) in during.iter().enumerate() {
        assert_eq!(key, &format!("during/{i:06}"));
        assert_eq!(copy.get(key).unwrap(), Some(i.to_string().into_bytes()));
    }
    assert_eq!(copy.len(), 300 + k);
    drop(copy);

    let verify = output_of(
        Command::new(env!("CARGO_BIN_EXE_ourkv")).args(["db", "verify", out.to_str().unwrap()]),
        None,
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Right after a failover the new master's high-water mark starts from
    // nothing; a backup taken at once still holds every acknowledged write.
    drop(m); // kill -9
    let out2 = dir.path().join("copies/two");
    let o = backup(&http, &out2, None);
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let copy2 = open(&out2);
    assert!(copy2.list("during/", None, usize::MAX).len() >= all_acked);
    for i in 0..all_acked {
        assert_eq!(
            copy2.get(&format!("during/{i:06}")).unwrap(),
            Some(i.to_string().into_bytes()),
            "during/{i:06} after the failover"
        );
    }
    assert_eq!(copy2.get("before/000299").unwrap(), Some(b"299".to_vec()));
    drop(copy2);

    // Brought back: a master started on the copy serves it and takes writes.
    let port = free_port();
    let _restored = start(&[
        "master",
        "--data",
        out.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let http2 = format!("127.0.0.1:{}", free_port());
    let _gw2 = start(&[
        "gateway",
        "--http",
        &http2,
        "--master",
        &format!("127.0.0.1:{port}"),
    ]);
    let get = |key: &str| curl(&[&format!("http://{http2}/v1/kv/{key}?consistency=strong")]);
    assert_eq!(get("before/000007"), (200, "7".into()));
    assert_eq!(
        get(&format!("during/{:06}", k - 1)),
        (200, (k - 1).to_string())
    );
    assert_eq!(get(&format!("during/{k:06}")).0, 404);
    let (code, _) = curl(&[
        "-X",
        "PUT",
        &format!("http://{http2}/v1/kv/after"),
        "--data-binary",
        "x",
    ]);
    assert_eq!(code, 200);
    assert_eq!(get("after"), (200, "x".into()));
}

#[test]
fn a_refused_or_failed_backup_leaves_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&dir.path().join("data"), &["--api-token", "s3cret"]);
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Authorization: Bearer s3cret",
        &format!("http://{http}/v1/kv/k?ack=all"),
        "--data-binary",
        "v",
    ]);
    assert_eq!(code, 200);

    // Without the token: refused (exit 4), nothing written.
    let out = dir.path().join("copy");
    let o = backup(&http, &out, None);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{o:?}");
    assert!(!out.exists());

    // Into a directory that holds something: refused before any request.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("notes"), "mine").unwrap();
    let o = backup(&http, &full, Some("s3cret"));
    assert_eq!(o.status.code(), Some(2), "a usage error: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{o:?}"
    );
    assert_eq!(std::fs::read_to_string(full.join("notes")).unwrap(), "mine");

    // Nobody listening: unavailable (exit 5), nothing written.
    let dead = format!("127.0.0.1:{}", free_port());
    let o = backup(&dead, &out, Some("s3cret"));
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("snapshot-tmp"))
            .count(),
        0
    );

    // With the token (and through `ourkv dev`, the same path): whole.
    let o = backup(&http, &out, Some("s3cret"));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(open(&out).get("k").unwrap(), Some(b"v".to_vec()));

    // The metrics count the backups and see this connection open.
    let (code, metrics) = curl(&[
        "-H",
        "Authorization: Bearer s3cret",
        &format!("http://{http}/metrics"),
    ]);
    assert_eq!(code, 200);
    assert!(metrics.contains("ourkv_backups_total 1\n"), "{metrics}");
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ourkv_http_connections_open "))
        .and_then(|v| v.parse().ok())
        .expect("connections open");
    assert!(open >= 1.0, "{open}");

    // A client that reads the first bytes and goes away costs the gateway
    // nothing: it still answers.
    let mut s = std::net::TcpStream::connect(&http).unwrap();
    s.write_all(b"GET /v1/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 64];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let (code, body) = curl(&[
        "-H",
        "Authorization: Bearer s3cret",
        &format!("http://{http}/v1/kv/k"),
    ]);
    assert_eq!((code, body.as_str()), (200, "v"));
}
