//! Leases against real processes: keys attached to a lease live while it is
//! kept alive and go with it (at every read level, with an `expire` event
//! on a watch) when its keep-alives stop or it is revoked; a lease survives
//! a master's kill -9; bad lease requests are refused and write nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn grant(http: &str, ttl: &str) -> u64 {
    let (code, body) = curl(&["-X", "POST", &format!("http://{http}/v1/lease?ttl={ttl}")]);
    assert_eq!(code, 201, "{body}");
    json(&body)["id"].as_u64().expect("an id")
}

fn keep_alive(http: &str, id: u64) -> (u16, String) {
    curl(&[
        "-X",
        "POST",
        &format!("http://{http}/v1/lease/{id}/keepalive"),
    ])
}

fn get(http: &str, key: &str, query: &str) -> u16 {
    curl(&[&format!("http://{http}/v1/kv/{key}?{query}")]).0
}

/// The event names a watch from `cursor` shows within `secs`.
fn watch_events(http: &str, prefix: &str, cursor: &str, secs: u32) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args(["-s", "-N", "--max-time", &secs.to_string()])
        .arg(format!(
            "http://{http}/v1/watch?prefix={prefix}&cursor={cursor}"
        ))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let mut events = Vec::new();
    let mut name = String::new();
    for line in out.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            let key = json(d.trim())["key"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            events.push((name.clone(), key));
        }
    }
    events
}

#[test]
fn keys_live_while_kept_alive_and_go_with_their_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &[]);
    let lease = grant(&http, "1500ms");
    let (code, body) = put_query(&http, "l/a", &format!("?lease={lease}&ack=all"), "1");
    assert_eq!(code, 200, "{body}");
    let from = json(&body)["cursor"].as_str().unwrap().to_string();
    let (code, _) = put_query(&http, "l/b", &format!("?lease={lease}"), "2");
    assert_eq!(code, 200);
    let (code, body) = put_query(&http, "l/free", "?ack=all", "3");
    assert_eq!(code, 200);
    let session = json(&body)["cursor"].as_str().unwrap().to_string();
    let (code, body) = curl(&[&format!("http://{http}/v1/lease/{lease}")]);
    assert_eq!(code, 200, "{body}");
    let info = json(&body);
    assert_eq!(info["keys"], serde_json::json!(["l/a", "l/b"]), "{body}");
    assert_eq!(info["ttl_ms"], 1500);
    // Kept alive every 400 ms for twice its time to live: the keys stay.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(3000) {
        let (code, body) = keep_alive(&http, lease);
        assert_eq!(code, 200, "{body}");
        assert!(
            json(&body)["remaining_ms"].as_u64().unwrap() > 1000,
            "{body}"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    for level in ["strong", "session", "stale"] {
        assert_eq!(
            get(&http, "l/a", &format!("consistency={level}")),
            200,
            "{level}"
        );
    }
    // Keep-alives stop: within its time to live the lease ends with its keys.
    let stopped = Instant::now();
    eventually(5, "a strong read sees the lease's keys gone", || {
        get(&http, "l/a", "consistency=strong") == 404
    });
    assert!(
        stopped.elapsed() >= Duration::from_millis(700),
        "the last keep-alive gave it 1.5 s: {:?}",
        stopped.elapsed()
    );
    assert_eq!(get(&http, "l/b", "consistency=strong"), 404);
    eventually(5, "stale and session reads see it", || {
        get(&http, "l/b", "consistency=stale") == 404
            && curl(&[
                "-H",
                &format!("X-OurKV-Cursor: {session}"),
                &format!("http://{http}/v1/kv/l/a?consistency=session"),
            ])
            .0 == 404
    });
    assert_eq!(
        get(&http, "l/free", "consistency=strong"),
        200,
        "not on the lease"
    );
    let events = watch_events(&http, "l/", &from, 2);
    let expired: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "expire")
        .map(|(_, k)| k.as_str())
        .collect();
    assert_eq!(expired, ["l/a", "l/b"], "{events:?}");
    // The lease is gone: no keep-alive, no description, no new key on it.
    let (code, body) = keep_alive(&http, lease);
    assert_eq!(code, 404, "{body}");
    assert_eq!(json(&body)["error"]["code"], "no_lease");
    assert_eq!(curl(&[&format!("http://{http}/v1/lease/{lease}")]).0, 404);
    let (code, body) = put_query(&http, "l/late", &format!("?lease={lease}"), "x");
    assert_eq!(
        (code, json(&body)["error"]["code"].clone()),
        (404, "no_lease".into())
    );
    assert_eq!(get(&http, "l/late", "consistency=strong"), 404);
}

#[test]
fn a_revoked_lease_takes_its_keys_and_bad_requests_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &[]);
    let lease = grant(&http, "1h");
    let big = "v".repeat(100_000);
    for (k, v) in [("r/a", "1"), ("r/big", big.as_str())] {
        let (code, body) = put_query(&http, k, &format!("?lease={lease}"), v);
        assert_eq!(code, 200, "{body}");
    }
    // A key moved to another lease, and one written again without any,
    // leave this one.
    let other = grant(&http, "1h");
    assert_eq!(
        put_query(&http, "r/moved", &format!("?lease={lease}"), "m").0,
        200
    );
    assert_eq!(
        put_query(&http, "r/moved", &format!("?lease={other}"), "m").0,
        200
    );
    assert_eq!(
        put_query(&http, "r/freed", &format!("?lease={lease}"), "f").0,
        200
    );
    assert_eq!(put_query(&http, "r/freed", "", "f").0, 200);
    let (code, body) = curl(&["-X", "DELETE", &format!("http://{http}/v1/lease/{lease}")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["keys"],
        serde_json::json!(["r/a", "r/big"]),
        "{body}"
    );
    for k in ["r/a", "r/big"] {
        assert_eq!(get(&http, k, "consistency=strong"), 404, "{k}");
    }
    for k in ["r/moved", "r/freed"] {
        assert_eq!(get(&http, k, "consistency=strong"), 200, "{k}");
    }
    let (code, _) = curl(&["-X", "DELETE", &format!("http://{http}/v1/lease/{lease}")]);
    assert_eq!(code, 404, "revoked once");
    // Bad requests: 400 with a JSON error, nothing written.
    let bad_puts = [
        "?lease=0".to_string(),
        "?lease=abc".into(),
        "?lease=-1".into(),
        "?lease=4294967296".into(),
        format!("?lease={other}&lease={other}"),
    ];
    for q in &bad_puts {
        let (code, body) = put_query(&http, "r/bad", q, "x");
        assert_eq!(code, 400, "{q}: {body}");
        assert_eq!(json(&body)["error"]["code"], "bad_request", "{q}");
    }
    // Each valid alone, not together.
    let (code, body) = put_query(&http, "r/bad", &format!("?lease={other}&ttl=10s"), "x");
    assert_eq!(code, 422, "{body}");
    assert_eq!(json(&body)["error"]["code"], "unprocessable");
    assert_eq!(
        put_query(&http, "r/bad", "?lease=999999", "x").0,
        404,
        "no such lease"
    );
    assert_eq!(get(&http, "r/bad", "consistency=strong"), 404);
    for q in ["", "?ttl=0s", "?ttl=abc", "?ttl=400d", "?ttl=1s&ttl=2s"] {
        let (code, body) = curl(&["-X", "POST", &format!("http://{http}/v1/lease{q}")]);
        assert_eq!(code, 400, "{q}: {body}");
    }
    for path in ["/v1/lease/0", "/v1/lease/x", "/v1/lease/99999999999"] {
        let (code, body) = curl(&[&format!("http://{http}{path}")]);
        assert_eq!(code, 400, "{path}: {body}");
    }
    assert_eq!(curl(&[&format!("http://{http}/v1/lease/{other}")]).0, 200);
}

/// A lease lives in the master's records: killed and restarted, the master
/// still knows it and its keys, keep-alives go on, and when they stop it
/// ends there and the worker's stale reads follow.
#[test]
fn a_lease_survives_a_master_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mport = free_port();
    let (master, _workers, _gw, http) = master_workers_gateway(tmp.path(), mport, 1);
    // Long enough for the gateway to find the restarted master (a few
    // seconds of 503s).
    let lease = grant(&http, "8s");
    let (code, body) = put_query(&http, "k/a", &format!("?lease={lease}&ack=all"), "1");
    assert_eq!(code, 200, "{body}");
    drop(master);
    let _master = start_master(tmp.path(), mport);
    let t = Instant::now();
    eventually(15, "the restarted master keeps the lease alive", || {
        let (code, body) = keep_alive(&http, lease);
        assert!(matches!(code, 200 | 503), "{code} {body}");
        code == 200
    });
    assert!(t.elapsed() < Duration::from_secs(7), "kept alive in time");
    let (code, body) = curl(&[&format!("http://{http}/v1/lease/{lease}")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["keys"], serde_json::json!(["k/a"]));
    assert_eq!(get(&http, "k/a", "consistency=strong"), 200);
    eventually(12, "the lease ends on the restarted master", || {
        get(&http, "k/a", "consistency=strong") == 404
    });
    eventually(5, "the worker has the expiry", || {
        get(&http, "k/a", "consistency=stale") == 404
    });
    assert_eq!(keep_alive(&http, lease).0, 404);
}
