//! `POST /v1/txn` against real `ourkv dev` processes: conditions, results,
//! limits, reads at every level, watches, races between transactions, and
//! kill -9 in the middle of a stream of them.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{curl, start_dev};
use serde_json::{json, Value};

/// POSTs a transaction; the status and the JSON answer.
fn txn(http: &str, query: &str, body: &Value) -> (u16, Value) {
    // From a file: a big body does not fit in an argument.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body.to_string()).unwrap();
    let (code, text) = curl(&[
        "-X",
        "POST",
        &format!("http://{http}/v1/txn{query}"),
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{}", file.path().display()),
    ]);
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (code, v)
}

fn get(http: &str, key: &str, level: &str) -> (u16, String) {
    curl(&[&format!("http://{http}/v1/kv/{key}?consistency={level}")])
}

#[test]
fn transactions_apply_whole_and_say_why_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &[]);

    let (code, v) = txn(
        &http,
        "?ack=all",
        &json!({"do": [
            {"put": "t/a", "value": "1"},
            {"put": "t/b", "value_b64": "AP8="},
            {"get": "t/a"},
            {"delete": "t/none"},
        ]}),
    );
    assert_eq!(code, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{v}");
    let etag_a = results[0]["etag"].as_str().unwrap().to_string();
    // A get after a put in the same transaction sees the put.
    assert_eq!(results[2]["value"], "1", "{v}");
    assert_eq!(results[2]["etag"], etag_a.as_str());
    assert_eq!(results[3]["existed"], false);
    // Applied at every read level (ack=all: every in-sync worker has it).
    for level in ["strong", "session", "stale"] {
        assert_eq!(get(&http, "t/a", level), (200, "1".into()), "{level}");
    }
    let (code, v) = txn(&http, "", &json!({"do": [{"get": "t/b"}]}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["value_b64"], "AP8=", "{v}");
    assert!(v["results"][0].get("value").is_none(), "no UTF-8: {v}");

    // A condition that fails writes nothing and names itself.
    let (code, v) = txn(
        &http,
        "",
        &json!({
            "if": [{"key": "t/a", "etag": etag_a}, {"key": "t/b", "exists": false}],
            "do": [{"put": "t/a", "value": "2"}, {"delete": "t/b"}],
        }),
    );
    assert_eq!(code, 412, "{v}");
    assert_eq!(v["error"]["code"], "precondition_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("condition 1"),
        "{v}"
    );
    assert_eq!(get(&http, "t/a", "strong"), (200, "1".into()));

    // All conditions hold: a put and a delete together.
    let (code, v) = txn(
        &http,
        "?ack=all",
        &json!({
            "if": [
                {"key": "t/a", "etag": etag_a},
                {"key": "t/a", "value": "1"},
                {"key": "t/b", "exists": true},
                {"key": "t/c", "exists": false},
            ],
            "do": [{"put": "t/a", "value": "2"}, {"delete": "t/b"}],
        }),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][1]["existed"], true);
    assert_eq!(get(&http, "t/a", "strong"), (200, "2".into()));
    assert_eq!(get(&http, "t/b", "strong").0, 404);
    // The old version no longer matches.
    let (code, _) = txn(
        &http,
        "",
        &json!({"if": [{"key": "t/a", "etag": etag_a}], "do": [{"put": "t/a", "value": "3"}]}),
    );
    assert_eq!(code, 412);

    // Empty, and gets only.
    let (code, v) = txn(&http, "", &json!({}));
    assert_eq!(
        (code, v["results"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (code, v) = txn(&http, "", &json!({"do": [{"get": "t/none"}]}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["found"], false);

    // Bad input: 400 or 413 with a JSON error, and nothing changes.
    let max = 65_535 - 9 - 7 - "t/big".len();
    let many: Vec<Value> = (0..129).map(|i| json!({"get": format!("k{i}")})).collect();
    let wide: Vec<Value> = (0..10)
        .map(|i| json!({"put": format!("w{i}"), "value": "x".repeat(60_000)}))
        .collect();
    for (body, want) in [
        (
            json!({"do": [{"put": "t/a", "value": "1"}, {"delete": "t/a"}]}),
            422,
        ),
        // Not an object: an array would also fill the struct's fields.
        (json!([null, null]), 400),
        (json!({"do": [{"put": "t/a"}]}), 400),
        (
            json!({"do": [{"put": "t/a", "value": "1", "delete": "t/b"}]}),
            400,
        ),
        (json!({"do": [{"get": "t/a", "value": "1"}]}), 400),
        (json!({"do": [{"put": "", "value": "1"}]}), 400),
        (json!({"do": [{"put": "t/a", "value_b64": "%%%"}]}), 400),
        (json!({"if": [{"key": "t/a"}], "do": []}), 400),
        (json!({"if": [{"key": "t/a", "etag": "nope"}]}), 400),
        // Shaped like an entity tag but past its ranges: no version has
        // it, so the condition does not hold.
        (
            json!({"if": [{"key": "t/a", "etag": "\"1-99999999-1\""}]}),
            412,
        ),
        (json!({"do": [], "else": []}), 400),
        (json!({"do": many}), 413),
        (json!({"do": wide}), 413),
        (
            json!({"do": [{"put": "t/big", "value": "x".repeat(max + 1)}]}),
            413,
        ),
    ] {
        let (code, v) = txn(&http, "", &body);
        assert_eq!(code, want, "{body:.200} -> {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    let (code, text) = curl(&[
        "-X",
        "POST",
        &format!("http://{http}/v1/txn"),
        "--data-binary",
        "not json",
    ]);
    assert_eq!(code, 400, "{text}");
    assert_eq!(get(&http, "t/a", "strong"), (200, "2".into()));
    // The largest value a transaction takes goes through.
    let (code, v) = txn(
        &http,
        "",
        &json!({"do": [{"put": "t/big", "value": "x".repeat(max)}]}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(get(&http, "t/big", "strong").1.len(), max);
}

/// A watch shows a transaction's changes, all of them, in order.
#[test]
fn a_watch_sees_every_change_of_a_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let (code, body) = curl(&[
        "-X",
        "PUT",
        &format!("http://{http}/v1/kv/w/gone?ack=all"),
        "-d",
        "x",
    ]);
    assert_eq!(code, 200, "{body}");
    let from: Value = serde_json::from_str(&body).unwrap();
    let from = from["cursor"].as_str().unwrap().to_string();
    let (code, v) = txn(
        &http,
        "?ack=all",
        &json!({"do": [
            {"put": "w/1", "value": "one"},
            {"put": "other", "value": "not watched"},
            {"delete": "w/gone"},
            {"put": "w/2", "value": "two"},
        ]}),
    );
    assert_eq!(code, 200, "{v}");
    let out = Command::new("curl")
        .args(["-s", "-N", "--max-time", "2"])
        .arg(format!("http://{http}/v1/watch?prefix=w/&cursor={from}"))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
        .collect();
    assert_eq!(events, ["put", "delete", "put"], "{out}");
    let w1 = out.find("\"w/1\"").unwrap();
    let gone = out.find("\"w/gone\"").unwrap();
    let w2 = out.find("\"w/2\"").unwrap();
    assert!(w1 < gone && gone < w2, "{out}");
    assert!(!out.contains("\"other\""), "{out}");
}

/// Transactions racing for the same keys: every one either wins whole or
/// fails whole. A counter moved by compare-and-swap ends at the number of
/// winners, and each winner left exactly its own log key.
#[test]
fn racing_transactions_win_whole_or_not_at_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &[]);
    // Exactly one of eight takes an absent lock.
    let winners: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let http = &http;
                s.spawn(move || {
                    let (code, v) = txn(
                        http,
                        "?ack=all",
                        &json!({
                            "if": [{"key": "lock", "exists": false}],
                            "do": [
                                {"put": "lock", "value": format!("{i}")},
                                {"put": format!("owner/{i}"), "value": "1"},
                            ],
                        }),
                    );
                    assert!(code == 200 || code == 412, "{code} {v}");
                    code == 200
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    let winner = winners.iter().position(|w| *w).unwrap();
    assert_eq!(get(&http, "lock", "strong"), (200, winner.to_string()));
    let (_, list) = curl(&[&format!("http://{http}/v1/kv?prefix=owner/")]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["keys"], json!([format!("owner/{winner}")]));

    // A counter: read it, then move it by one if it did not change.
    let (code, _) = txn(&http, "", &json!({"do": [{"put": "n", "value": "0"}]}));
    assert_eq!(code, 200);
    let won = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (http, won) = (&http, &won);
            s.spawn(move || {
                for i in 0..15 {
                    let (_, v) = txn(http, "", &json!({"do": [{"get": "n"}]}));
                    let n: u64 = v["results"][0]["value"].as_str().unwrap().parse().unwrap();
                    let etag = v["results"][0]["etag"].as_str().unwrap();
                    let (code, v) = txn(
                        http,
                        "?ack=all",
                        &json!({
                            "if": [{"key": "n", "etag": etag}],
                            "do": [
                                {"put": "n", "value": (n + 1).to_string()},
                                {"put": format!("log/{}", n + 1), "value": format!("{t}.{i}")},
                            ],
                        }),
                    );
                    match code {
                        200 => {
                            won.fetch_add(1, Ordering::SeqCst);
                        }
                        412 => {}
                        _ => panic!("{code} {v}"),
                    }
                }
            });
        }
    });
    let won = won.load(Ordering::SeqCst);
    assert!(won >= 15, "at least one thread wins each round: {won}");
    assert_eq!(get(&http, "n", "strong"), (200, won.to_string()));
    let (_, list) = curl(&[&format!("http://{http}/v1/kv?prefix=log/&limit=1000")]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len() as u64, won, "{list}");
}

/// kill -9 while transactions stream in: each writes the same number to 64
/// keys. After the restart every key holds the same number (never half a
/// transaction), at least the last one acknowledged.
#[test]
fn kill_9_never_leaves_half_a_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let (dev, http) = start_dev(&data, &[]);
    let keys: Vec<String> = (0..64).map(|k| format!("t/{k:02}")).collect();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, keys, acked, stop) = (http.clone(), keys.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let ops: Vec<Value> = keys
                    .iter()
                    .map(|k| json!({"put": k, "value": format!("{n:0>400}")}))
                    .collect();
                let (code, _) = txn(&http, "?ack=all", &json!({ "do": ops }));
                if code != 200 {
                    break;
                }
                acked.store(n, Ordering::SeqCst);
            }
        })
    };
    let t = Instant::now();
    while acked.load(Ordering::SeqCst) < 20 {
        assert!(t.elapsed() < Duration::from_secs(30), "too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(137));
    drop(dev);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.load(Ordering::SeqCst);

    let (_dev, http) = start_dev(&data, &[]);
    let (code, v) = txn(
        &http,
        "",
        &json!({"do": keys.iter().map(|k| json!({"get": k})).collect::<Vec<_>>()}),
    );
    assert_eq!(code, 200, "{v}");
    let values: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        values.iter().all(|x| *x == values[0]),
        "half a transaction: {values:?}"
    );
    assert!(values[0] >= acked, "{} < acknowledged {acked}", values[0]);
    for level in ["strong", "stale"] {
        let t = Instant::now();
        loop {
            let (code, body) = get(&http, &keys[63], level);
            if code == 200 && body.parse::<u64>().unwrap() == values[0] {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{level}: {code} {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
