//! Values past one record (up to 16 MiB) against real processes: a worker
//! catching up and one installing a snapshot, ETags, history and watches,
//! and kill -9 in the middle of large writes.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

/// A value of `len` bytes that names `n` in its first 8 bytes and repeats
/// a byte of `n` after them: a value mixed from two writes is told apart.
fn value(n: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(n % 251) as u8; len];
    v[..8].copy_from_slice(&n.to_be_bytes());
    v
}

/// Which `value` `bytes` is, if it is one whole.
fn which(bytes: &[u8], len: usize) -> Option<u64> {
    if bytes.len() != len {
        return None;
    }
    let n = u64::from_be_bytes(bytes[..8].try_into().unwrap());
    (bytes[8..].iter().all(|b| *b == (n % 251) as u8)).then_some(n)
}

fn put_file(url: &str, bytes: &[u8], extra: &[&str]) -> (u16, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let at = format!("@{}", file.path().display());
    let mut args = vec!["-X", "PUT", url, "--data-binary", &at];
    args.extend_from_slice(extra);
    curl(&args)
}

fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    get_bytes_with(url, &[])
}

/// A session read: at least as new as `cursor` (from a write's answer).
fn get_session(url: &str, cursor: &str) -> (u16, Vec<u8>) {
    let header = format!("X-OurKV-Cursor: {cursor}");
    get_bytes_with(&format!("{url}?consistency=session"), &["-H", &header])
}

/// The `cursor` of a write's JSON answer.
fn cursor_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["cursor"].as_str().unwrap().to_string()
}

fn get_bytes_with(url: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .args(extra)
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|b| *b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[nl + 1..]).parse().unwrap();
    body.truncate(nl);
    (code, body)
}

/// A 16 MiB value reaches a worker that was stopped while it was written
/// (catch-up over many segments), and one that must install a snapshot
/// after the master's log was compacted.
#[test]
fn a_16_mib_value_reaches_a_worker_by_catch_up_and_by_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mport = free_port();
    let (master, workers, _gw, http) = master_workers_gateway(tmp.path(), mport, 1);
    let url = |p: &str| format!("http://{http}{p}");
    let big = value(7, 16 << 20);
    // Catch-up: the only worker sleeps through the write.
    signal(&workers[0], "-STOP");
    let (code, body) = put_file(&url("/v1/kv/big"), &big, &[]);
    assert_eq!(code, 200, "{body}");
    let written = cursor_of(&body);
    signal(&workers[0], "-CONT");
    // A session read after the write waits for (or skips) the worker
    // still catching up: never an older state.
    let (code, got) = get_session(&url("/v1/kv/big"), &written);
    assert_eq!(code, 200);
    assert!(got == big, "session: {} bytes", got.len());
    eventually(20, "the worker caught up", || {
        let (code, got) = get_bytes(&url("/v1/kv/big?consistency=stale"));
        code == 200 && got == big
    });
    assert_eq!(get_bytes(&url("/v1/kv/big")), (200, big.clone()));

    // Snapshot: the master's log is compacted (a new epoch), so the worker
    // cannot resume by shipping and installs a snapshot.
    let (code, body) = put_file(&url("/v1/kv/small?ack=all"), b"x", &[]);
    assert_eq!(code, 200, "{body}");
    signal(&master, "-TERM");
    drop(master);
    compact_to_epoch_2(&tmp.path().join("m"));
    let _master = start_master(tmp.path(), mport);
    let t = Instant::now();
    let after = loop {
        let (code, body) = put_file(&url("/v1/kv/after?ack=all"), b"y", &[]);
        if code == 200 && body.contains("\"cursor\":\"2:") {
            break cursor_of(&body);
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for level in ["strong", "stale"] {
        let (code, got) = get_bytes(&url(&format!("/v1/kv/big?consistency={level}")));
        assert_eq!(code, 200, "{level}");
        assert!(got == big, "{level}: {} bytes", got.len());
    }
    let (code, got) = get_session(&url("/v1/kv/big"), &after);
    assert_eq!(code, 200);
    assert!(
        got == big,
        "session after the snapshot: {} bytes",
        got.len()
    );
}

/// ETags and compare-and-swap, history and a watch, with large values.
#[test]
fn large_values_in_history_conditional_writes_and_watches() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = |p: &str| format!("http://{http}{p}");
    let (code, body) = put_file(&url("/v1/kv/seed?ack=all"), b"s", &[]);
    assert_eq!(code, 200);
    let from: serde_json::Value = serde_json::from_str(&body).unwrap();
    let from = from["cursor"].as_str().unwrap().to_string();
    let v1 = value(1, 2 << 20);
    let v2 = value(2, (1 << 20) + 5);
    let (code, body) = put_file(&url("/v1/kv/big?ack=all"), &v1, &[]);
    assert_eq!(code, 200, "{body}");
    let e1: serde_json::Value = serde_json::from_str(&body).unwrap();
    let e1 = e1["etag"].as_str().unwrap().to_string();
    let if_match = format!("If-Match: {e1}");
    let (code, body) = put_file(&url("/v1/kv/big?ack=all"), &v2, &["-H", &if_match]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = put_file(&url("/v1/kv/big"), &v1, &["-H", &if_match]);
    assert_eq!(code, 412, "{body}");
    let (code, body) = curl(&[&url("/v1/kv/big?history=5")]);
    assert_eq!(code, 200);
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let history: Vec<Vec<u8>> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| b64.decode(v.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(history.len(), 2);
    assert!(history[0] == v2 && history[1] == v1);
    // The watch shows each large value once, whole.
    let out = Command::new("curl")
        .args(["-s", "-N", "--max-time", "3"])
        .arg(url(&format!("/v1/watch?prefix=big&cursor={from}")))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let values: Vec<Vec<u8>> = out
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| {
            let d: serde_json::Value = serde_json::from_str(d.trim()).unwrap();
            b64.decode(d["value"].as_str().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(values.len(), 2, "two puts of big");
    assert!(values[0] == v1 && values[1] == v2);

    // A watch following the shared stream (opened at the log's end) gets
    // large values too, whole and in order among small ones: the shared
    // stream carries them without their data, and the watch reads them.
    let (code, body) = put_file(&url("/v1/kv/live/0?ack=all"), b"start", &[]);
    assert_eq!(code, 200);
    let at: serde_json::Value = serde_json::from_str(&body).unwrap();
    let at = at["cursor"].as_str().unwrap().to_string();
    let watch = Command::new("curl")
        .args(["-s", "-N", "--max-time", "5"])
        .arg(url(&format!("/v1/watch?prefix=live/&cursor={at}")))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let big = value(3, 300_000);
    for (key, v) in [
        ("live/a", &b"small"[..]),
        ("other/big", &big[..]),
        ("live/b", &big[..]),
        ("live/c", &b"after"[..]),
    ] {
        let (code, body) = put_file(&url(&format!("/v1/kv/{key}?ack=all")), v, &[]);
        assert_eq!(code, 200, "{key}: {body}");
    }
    let out = watch.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let seen: Vec<(String, Vec<u8>)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| {
            let d: serde_json::Value = serde_json::from_str(d.trim()).unwrap();
            let v = b64.decode(d["value"].as_str().unwrap()).unwrap();
            (d["key"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["live/a", "live/b", "live/c"], "{out:.300}");
    assert_eq!(seen[1].1, big);
}

/// kill -9 while 3 MiB values stream in: after the restart the key holds
/// one whole value, never part of one or a mix, at least the last one
/// acknowledged. The writes are `ack=all`: every member dies at once here,
/// and the members restarting together elect among those that answer
/// first, which may lack an `ack=master` write only the old master had (a
/// loss API.md allows: its master died before the workers had it).
#[test]
fn kill_9_never_leaves_part_of_a_large_value() {
    const LEN: usize = 3 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let (dev, http) = start_dev(&data, &[]);
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let url = format!("http://{http}/v1/kv/big?ack=all");
                let (code, _) = put_file(&url, &value(n, LEN), &[]);
                if code != 200 {
                    break;
                }
                acked.store(n, Ordering::SeqCst);
            }
        })
    };
    eventually(60, "five large writes", || {
        acked.load(Ordering::SeqCst) >= 5
    });
    std::thread::sleep(Duration::from_millis(53));
    drop(dev);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.load(Ordering::SeqCst);
    let (_dev, http) = start_dev(&data, &[]);
    for level in ["strong", "stale"] {
        let (code, got) = get_bytes(&format!("http://{http}/v1/kv/big?consistency={level}"));
        assert_eq!(code, 200, "{level}");
        let n = which(&got, LEN).unwrap_or_else(|| panic!("{level}: not one whole value"));
        assert!(n >= acked, "{level}: value {n}, acknowledged {acked}");
    }
}
