//! Keys with a time to live against real `ourkv dev` processes: expired at
//! every read level, shown to watches, kept across kill -9 until their
//! deadline and never brought back after it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn get(http: &str, key: &str, level: &str) -> u16 {
    curl(&[&format!("http://{http}/v1/kv/{key}?consistency={level}")]).0
}

#[test]
fn keys_expire_at_every_level_and_watches_see_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &[]);
    let (code, body) = put_query(&http, "t/a", "?ttl=1500ms&ack=all", "short");
    assert_eq!(code, 200, "{body}");
    let from: serde_json::Value = serde_json::from_str(&body).unwrap();
    let from = from["cursor"].as_str().unwrap().to_string();
    let (code, _) = put_query(&http, "t/b", "?ttl=1h", "long");
    assert_eq!(code, 200);
    // A later put without a ttl ends the first one's deadline.
    let (code, _) = put_query(&http, "t/c", "?ttl=1s", "x");
    assert_eq!(code, 200);
    let (code, _) = put_query(&http, "t/c", "?ack=all", "kept");
    assert_eq!(code, 200);
    let t = Instant::now();
    assert_eq!(get(&http, "t/a", "strong"), 200);
    // A strong read after the deadline never sees the key; stale reads
    // catch up as the master's expiry ships.
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(t.elapsed()));
    assert_eq!(get(&http, "t/a", "strong"), 404);
    eventually(5, "stale reads see the expiry", || {
        get(&http, "t/a", "stale") == 404
    });
    // A session read at the cursor of a write after the expiry does not
    // see the key either.
    let (code, body) = put_query(&http, "u/after", "?ack=all", "x");
    assert_eq!(code, 200);
    let after: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (code, _) = curl(&[
        "-H",
        &format!("X-OurKV-Cursor: {}", after["cursor"].as_str().unwrap()),
        &format!("http://{http}/v1/kv/t/a?consistency=session"),
    ]);
    assert_eq!(code, 404, "session");
    assert_eq!(get(&http, "t/b", "strong"), 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&http, "t/c", "strong"), 200, "its ttl was ended");
    let out = Command::new("curl")
        .args(["-s", "-N", "--max-time", "2"])
        .arg(format!("http://{http}/v1/watch?prefix=t/a&cursor={from}"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
        .collect();
    assert_eq!(events, ["expire"], "{out}");
    // Bad ttls are refused and write nothing.
    for ttl in ["0s", "abc", "5y", "-1", "400d", "1.5s"] {
        let (code, body) = put_query(&http, "t/bad", &format!("?ttl={ttl}"), "x");
        assert_eq!(code, 400, "{ttl}: {body}");
    }
    assert_eq!(get(&http, "t/bad", "strong"), 404);
}

#[test]
fn a_deadline_survives_kill_9_and_an_expiry_is_never_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let (dev, http) = start_dev(&data, &[]);
    let (code, _) = put_query(&http, "gone", "?ttl=300ms&ack=all", "x");
    assert_eq!(code, 200);
    let (code, _) = put_query(&http, "later", "?ttl=4s&ack=all", "y");
    assert_eq!(code, 200);
    let t = Instant::now();
    eventually(5, "the first expiry", || {
        get(&http, "gone", "strong") == 404
    });
    drop(dev);
    let (_dev, http) = start_dev(&data, &[]);
    assert_eq!(
        get(&http, "gone", "strong"),
        404,
        "an expiry is never undone"
    );
    if t.elapsed() < Duration::from_millis(3500) {
        assert_eq!(
            get(&http, "later", "strong"),
            200,
            "its deadline is still ahead"
        );
    }
    std::thread::sleep(Duration::from_millis(4100).saturating_sub(t.elapsed()));
    assert_eq!(
        get(&http, "later", "strong"),
        404,
        "expired on the restarted master's watch"
    );
}
