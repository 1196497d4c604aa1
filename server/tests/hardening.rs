//! Promises kept at the edges, tried as a user and a hostile client would:
//! consistency across a compaction, values up to the documented limit, the
//! nodes of `ourkv dev` closed to other local processes, cursors no node
//! reaches. Real processes, real sockets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// `curl -i`-style: status, headers (lower-cased names) and body.
fn curl_headers(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Values of every size class up to the limit (16 MiB): just above V's
/// 4096-byte default record, the largest single record (65,535 − 9 − key
/// length), the first one stored as chunks, a MiB, and 16 MiB, each read
/// back byte for byte at every level; one byte more is 413 with the limit.
/// `--max-value-bytes` lowers the limit.
#[test]
fn values_up_to_the_documented_limit_are_stored_and_replicated() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &[]);
    let url = |p: &str| format!("http://{http}{p}");
    let key = "big";
    let one_record = 65_535 - 9 - key.len();
    let limit = 16 << 20;
    let file = tmp.path().join("v.bin");
    let put = |url: &str, file: &Path| {
        curl(&[
            "-X",
            "PUT",
            url,
            "--data-binary",
            &format!("@{}", file.display()),
        ])
    };
    for len in [
        4_087,
        4_096,
        40_000,
        one_record,
        one_record + 1,
        (1 << 20) + 3,
        limit,
    ] {
        let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&file, &value).unwrap();
        let (code, body) = put(&url(&format!("/v1/kv/{key}?ack=all")), &file);
        assert_eq!(code, 200, "PUT of {len} bytes: {body}");
        // Read back from a worker at each level, byte for byte.
        for level in ["strong", "stale"] {
            let out = Command::new("curl")
                .args(["-s", &url(&format!("/v1/kv/{key}?consistency={level}"))])
                .output()
                .unwrap();
            assert_eq!(out.stdout.len(), len, "{level} read of {len} bytes");
            assert!(out.stdout == value, "{level} read of {len} bytes differs");
        }
    }
    // The seed API takes values up to its 1 MiB body (form-encoded).
    let v = "s".repeat(100_000);
    let (code, body) = curl(&[
        "-X",
        "POST",
        &url("/set"),
        "--data-urlencode",
        "key=seed",
        "--data-urlencode",
        &format!("value={v}"),
    ]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[&url("/get?key=seed")]);
    assert_eq!((code, body.len()), (200, 100_000));

    let too_large = |code: u16, body: &str, limit: usize| {
        assert_eq!(code, 413, "{body}");
        let e: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(e["error"]["code"], "too_large");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&limit.to_string()), "{msg}");
    };
    std::fs::write(&file, vec![b'x'; limit + 1]).unwrap();
    let (code, body) = put(&url(&format!("/v1/kv/{key}")), &file);
    too_large(code, &body, limit);
    // Nothing changed.
    let out = Command::new("curl")
        .args(["-s", &url(&format!("/v1/kv/{key}"))])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), limit);

    let (_dev2, http2) = start_dev(&tmp.path().join("d2"), &["--max-value-bytes", "100000"]);
    std::fs::write(&file, vec![b'x'; 100_000]).unwrap();
    let (code, body) = put(&format!("http://{http2}/v1/kv/k"), &file);
    assert_eq!(code, 200, "{body}");
    std::fs::write(&file, vec![b'x'; 100_001]).unwrap();
    let (code, body) = put(&format!("http://{http2}/v1/kv/k"), &file);
    too_large(code, &body, 100_000);
}

/// The master and workers of `ourkv dev` listen on loopback, but only the
/// gateway of the same process gets in: a local `ourkv client` (which would
/// bypass `--api-token`) is refused by the TLS handshake.
#[test]
fn ourkv_dev_nodes_refuse_other_local_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--api-token", "s3cret"]);
    let url = |p: &str| format!("http://{http}{p}");
    let auth = "Authorization: Bearer s3cret";
    let (code, _) = curl(&["-H", auth, "-X", "PUT", &url("/v1/kv/secret"), "-d", "x"]);
    assert_eq!(code, 200);
    let (code, body) = curl(&["-H", auth, &url("/v1/cluster")]);
    assert_eq!(code, 200, "{body}");
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut nodes = vec![c["master"]["addr"].as_str().unwrap().to_string()];
    for w in c["workers"].as_array().unwrap() {
        nodes.push(w["addr"].as_str().unwrap().to_string());
    }
    assert_eq!(nodes.len(), 3, "{body}");
    for node in &nodes {
        for args in [
            vec!["client", "get", node.as_str(), "secret"],
            vec!["client", "set", node.as_str(), "evil", "1"],
            vec!["client", "delete", node.as_str(), "secret"],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
                .args(&args)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{args:?} got in: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(!String::from_utf8_lossy(&out.stdout).contains('x'));
        }
    }
    // Nothing changed through the side door.
    let (code, body) = curl(&["-H", auth, &url("/v1/kv/secret")]);
    assert_eq!((code, body.as_str()), (200, "x"));
    let (code, _) = curl(&["-H", auth, &url("/v1/kv/evil")]);
    assert_eq!(code, 404);
}

/// Stop the master, compact its directory, start it again while one worker
/// is paused; write; resume the worker. Strong reads and session reads with
/// the new write's cursor must never see the value from before: the
/// compacted log is shorter, so a position of the old log "passes" a new
/// cursor unless cursors carry their epoch. A session token from before the
/// compaction gets a fast answer (the compacted log holds its write).
#[test]
fn reads_after_a_compaction_are_never_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let mport = free_port();
    let (master, workers, _gw, http) = master_workers_gateway(tmp.path(), mport, 2);
    let w1 = &workers[0];
    let url = |p: &str| format!("http://{http}{p}");
    // Dead records first, so that the compacted log is much shorter.
    for i in 0..200 {
        let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/pad"), "-d", &format!("{i:0>500}")]);
        assert_eq!(code, 200);
    }
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/k?ack=all"), "-d", "v1"]);
    assert_eq!(code, 200, "{body}");
    let old: serde_json::Value = serde_json::from_str(&body).unwrap();
    let old_cursor = old["cursor"].as_str().unwrap().to_string();
    assert_eq!(old_cursor.split(':').count(), 3, "epoch:file:offset");
    eventually(10, "workers caught up", || {
        curl(&[&url("/ready?sync")]).0 == 200
    });

    signal(&master, "-TERM");
    drop(master);
    compact_to_epoch_2(&tmp.path().join("m"));
    signal(w1, "-STOP");
    let _master = start_master(tmp.path(), mport);
    let (code, body) = eventually_ok(|| curl(&["-X", "PUT", &url("/v1/kv/k?ack=all"), "-d", "v2"]));
    assert_eq!(code, 200, "{body}");
    let new: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new_cursor = new["cursor"].as_str().unwrap().to_string();
    assert!(new_cursor.starts_with("2:"), "{new_cursor}");
    signal(w1, "-CONT");

    let session = format!("X-OurKV-Cursor: {new_cursor}");
    for i in 0..60 {
        let (code, body) = curl(&[&url("/v1/kv/k")]);
        assert_eq!((code, body.as_str()), (200, "v2"), "strong read {i}");
        let (code, body) = curl(&["-H", &session, &url("/v1/kv/k?consistency=session")]);
        assert_eq!((code, body.as_str()), (200, "v2"), "session read {i}");
    }
    // A token from before the compaction: every node of the new log has
    // its write, so the answer is immediate.
    let t = Instant::now();
    let (code, body) = curl(&[
        "-H",
        &format!("X-OurKV-Cursor: {old_cursor}"),
        &url("/v1/kv/k?consistency=session"),
    ]);
    assert_eq!((code, body.as_str()), (200, "v2"));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The old log's cursors are gone for a watch: 410 with a JSON error.
    let (code, head, body) = curl_headers(&[
        "--max-time",
        "5",
        &url(&format!("/v1/watch?cursor={old_cursor}")),
    ]);
    assert_eq!(code, 410, "{head}{body}");
    assert!(header(&head, "content-type").unwrap().contains("json"));
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "gone");
    // An ETag from before the compaction names a version of the old log:
    // a conditional write with it fails as a precondition.
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        "If-Match: \"1-0-1\"",
        &url("/v1/kv/k"),
        "-d",
        "v3",
    ]);
    assert_eq!(code, 412);
}

/// Retries a request while the service comes up (503), for up to 10 s.
fn eventually_ok(mut f: impl FnMut() -> (u16, String)) -> (u16, String) {
    let t = Instant::now();
    loop {
        let r = f();
        if r.0 != 503 || t.elapsed() > Duration::from_secs(10) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A session read at a cursor that no write made answers 409 `cursor_ahead`
/// within the read wait (not a late 200 from the master), in dev and as processes; a
/// watch at such a cursor or at no record boundary answers with an error
/// status, not an empty event stream.
#[test]
fn cursors_no_node_reaches_get_clear_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, dev_http) = start_dev(&tmp.path().join("d"), &[]);
    let (_m, _w, _g, http) = master_worker_gateway(tmp.path());
    for http in [dev_http, http] {
        let url = |p: &str| format!("http://{http}{p}");
        let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/a"), "-d", "1"]);
        assert_eq!(code, 200, "{body}");
        let w: serde_json::Value = serde_json::from_str(&body).unwrap();
        let cursor = w["cursor"].as_str().unwrap().to_string();
        let parts: Vec<u64> = cursor.split(':').map(|p| p.parse().unwrap()).collect();
        let far = format!("{}:{}:{}", parts[0], parts[1], parts[2] + 1_000_000);
        let future_epoch = format!("{}:0:1", parts[0] + 1);
        for c in [&far, &future_epoch] {
            let t = Instant::now();
            let (code, body) = curl(&[
                "-H",
                &format!("X-OurKV-Cursor: {c}"),
                &url("/v1/kv/a?consistency=session"),
            ]);
            // Past the master's log: the client's to fix, not a timeout.
            assert_eq!(code, 409, "{c}: {body}");
            let e: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(e["error"]["code"], "cursor_ahead");
            assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        }
        // Old text forms and garbage are refused as bad input.
        for c in ["0:34", "x", "1:2:3:4"] {
            let (code, _) = curl(&[
                "-H",
                &format!("X-OurKV-Cursor: {c}"),
                &url("/v1/kv/a?consistency=session"),
            ]);
            assert_eq!(code, 400, "{c}");
        }
        // Inside a record: no boundary.
        let inside = format!("{}:{}:{}", parts[0], parts[1], parts[2] - 1);
        let (code, _, body) = curl_headers(&[
            "--max-time",
            "5",
            &url(&format!("/v1/watch?cursor={inside}")),
        ]);
        assert_eq!(code, 400, "{body}");
        let (code, _, body) =
            curl_headers(&["--max-time", "8", &url(&format!("/v1/watch?cursor={far}"))]);
        assert!(code == 504 || code == 503, "{code} {body}");
        assert!(body.contains("\"error\""), "{body}");
        // A later epoch: no change would ever come (an empty stream before).
        let (code, _, body) = curl_headers(&[
            "--max-time",
            "8",
            &url(&format!("/v1/watch?cursor={future_epoch}")),
        ]);
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("cursor_ahead"), "{body}");
        // Last-Event-ID that is no cursor (non-ASCII too), and a malformed
        // cursor beside a good Last-Event-ID: 400, not a replay from the start.
        for (last_id, query) in [
            ("Last-Event-ID: \u{e9}t\u{e9}", String::new()),
            ("Last-Event-ID: x", String::new()),
            (
                &*format!("Last-Event-ID: {cursor}"),
                "?cursor=garbage".to_string(),
            ),
        ] {
            let (code, _, body) = curl_headers(&[
                "--max-time",
                "8",
                "-H",
                last_id,
                &url(&format!("/v1/watch{query}")),
            ]);
            assert_eq!(code, 400, "{last_id} {query}: {body}");
        }
    }
}

/// After a master kill -9, requests to it fail within about a second (its
/// connection idles out; no 5 s hang), and reads go on from the worker.
#[test]
fn a_dead_master_is_noticed_within_about_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let (master, _w, _g, http) = master_worker_gateway(tmp.path());
    let url = |p: &str| format!("http://{http}{p}");
    let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/a"), "-d", "1"]);
    assert_eq!(code, 200);
    // A worker shows a write once every in-sync member holds it (the
    // high-water mark, which the master sends after the acks): wait for it.
    let t = Instant::now();
    while curl(&[&url("/v1/kv/a?consistency=stale")]) != (200, "1".to_string()) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the worker never showed a"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&master, "-KILL");
    let t = Instant::now();
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/b"), "-d", "2"]);
    assert_eq!(code, 503, "{body}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    // No transport internals in the answer.
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        !msg.contains("TLS") && !msg.contains("quic") && !msg.contains("protocol:"),
        "{msg}"
    );
    let (code, body) = curl(&[&url("/v1/kv/a?consistency=stale")]);
    assert_eq!((code, body.as_str()), (200, "1"));
}

/// A read sent to a worker that stopped answering (SIGSTOP: its sockets
/// stay open, so nothing fails) is retried on the other worker within the
/// hedge budget, instead of waiting for the paused one to resume.
#[test]
fn reads_avoid_a_paused_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let (_m, workers, _g, http) = master_workers_gateway(tmp.path(), free_port(), 2);
    let url = |p: &str| format!("http://{http}{p}");
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/h?ack=all"), "-d", "v"]);
    assert_eq!(code, 200, "{body}");
    // Teach the gateway both workers' usual latency.
    for _ in 0..20 {
        assert_eq!(curl(&[&url("/v1/kv/h?consistency=stale")]).0, 200);
    }
    let hedges = || -> u64 {
        let (_, m) = curl(&[&url("/metrics")]);
        m.lines()
            .find_map(|l| l.strip_prefix("ourkv_read_hedges_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = hedges();
    // Each worker paused in turn, reads four at a time: the one the gateway
    // prefers is paused in at least one round, so some read certainly goes
    // to a paused worker (the hedge counter shows it).
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    for paused in &workers {
        signal(paused, "-STOP");
        for level in ["stale", "strong"] {
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (url, slowest) = (&url, &slowest);
                    s.spawn(move || {
                        for i in 0..5 {
                            let start = Instant::now();
                            let (code, body) = curl(&[
                                "--max-time",
                                "5",
                                &url(&format!("/v1/kv/h?consistency={level}")),
                            ]);
                            assert_eq!((code, body.as_str()), (200, "v"), "{level} read {t}/{i}");
                            let mut s = slowest.lock().unwrap();
                            *s = (*s).max(start.elapsed());
                        }
                    });
                }
            });
        }
        signal(paused, "-CONT");
    }
    let hedged = hedges() - before;
    let slowest = *slowest.lock().unwrap();
    assert!(hedged >= 1, "no read was sent to a paused worker");
    // The hedge budget is at most 500 ms; the paused worker would have held
    // its reads until resumed (here: until the round ends).
    assert!(
        slowest < Duration::from_millis(1500),
        "slowest read {slowest:?}"
    );
}

/// With its only worker dead (kill -9), reads go to the master: the first
/// after the hedge budget, the next ones at once, instead of one connect
/// timeout (2 s) each; once the worker is back, reads go to it again.
#[test]
fn reads_go_on_past_a_dead_only_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let q = |p: u16| format!("127.0.0.1:{p}");
    let (mport, wport, hport) = (free_port(), free_port(), free_port());
    let master = start_master(tmp.path(), mport);
    let wdata = tmp.path().join("w1");
    let worker_args = [
        "worker",
        "--data",
        wdata.to_str().unwrap(),
        "--listen",
        &q(wport),
        "--master",
        &q(mport),
    ];
    let worker = start(&worker_args);
    let _g = start(&[
        "gateway",
        "--http",
        &q(hport),
        "--master",
        &q(mport),
        "--worker",
        &q(wport),
    ]);
    let url = |p: &str| format!("http://127.0.0.1:{hport}{p}");
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/d?ack=all"), "-d", "v"]);
    assert_eq!(code, 200, "{body}");
    for _ in 0..10 {
        assert_eq!(curl(&[&url("/v1/kv/d?consistency=stale")]).0, 200);
    }
    drop(worker); // kill -9
    let t = Instant::now();
    for i in 0..10 {
        for level in ["stale", "strong"] {
            let (code, body) = curl(&[
                "--max-time",
                "10",
                &url(&format!("/v1/kv/d?consistency={level}")),
            ]);
            assert_eq!((code, body.as_str()), (200, "v"), "{level} read {i}");
        }
    }
    // Twenty reads: one connect timeout each would be 40 s.
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "20 reads took {took:?}");

    // Back: stale reads with the master paused can only come from it.
    let _worker = start(&worker_args);
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/d?ack=all"), "-d", "w"]);
    assert_eq!(code, 200, "{body}");
    signal(&master, "-STOP");
    eventually(10, "reads never went to the restarted worker", || {
        curl(&["--max-time", "2", &url("/v1/kv/d?consistency=stale")]) == (200, "w".to_string())
    });
    signal(&master, "-CONT");
}

/// An empty token is refused at start; `Bearer` is case-insensitive.
#[test]
fn api_token_edges() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ourkv"))
        .args(["dev", "--data", tmp.path().join("e").to_str().unwrap()])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .env("OURKV_API_TOKEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("api-token"));
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--api-token", "t0k"]);
    let url = format!("http://{http}/v1/kv/x");
    for auth in ["Bearer t0k", "bearer t0k", "BEARER t0k"] {
        let (code, _) = curl(&[
            "-H",
            &format!("Authorization: {auth}"),
            "-X",
            "PUT",
            &url,
            "-d",
            "1",
        ]);
        assert_eq!(code, 200, "{auth}");
    }
    for auth in ["Bearer t0", "Basic t0k", "Bearer"] {
        let (code, _) = curl(&["-H", &format!("Authorization: {auth}"), &url]);
        assert_eq!(code, 401, "{auth}");
    }
}

/// Keys and values are bytes: forms decode without loss (a value's bytes
/// stay exact; a key that is not UTF-8 is refused, not folded into U+FFFD),
/// one escape rule for forms and paths, and a parameter given twice is 400.
#[test]
fn forms_and_paths_keep_bytes_and_refuse_ambiguity() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = |p: &str| format!("http://{http}{p}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        &url("/set"),
        "-d",
        "key=bin&value=%FF%FE%00a+b",
    ]);
    assert_eq!(code, 200, "{body}");
    let out = Command::new("curl")
        .args(["-s", &url("/get?key=bin")])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"\xff\xfe\x00a b");
    for (form, what) in [
        ("key=ff%FFkey&value=1", "a key that is not UTF-8"),
        ("key=ff%FEkey&value=1", "a key that is not UTF-8"),
        ("key=a%ZZ&value=1", "a malformed escape"),
        ("key=a&key=b&value=1", "a repeated key"),
        ("key=a&value=1&value=2", "a repeated value"),
    ] {
        let (code, body) = curl(&["-X", "POST", &url("/set"), "-d", form]);
        assert_eq!(code, 400, "{what}: {body}");
        assert!(body.contains("\"bad_request\""), "{body}");
    }
    let (code, _) = curl(&["-X", "POST", &url("/delete"), "-d", "key=bin&key=other"]);
    assert_eq!(code, 400);
    let (code, _) = curl(&[&url("/get?key=bin")]);
    assert_eq!(code, 200, "a refused delete deleted nothing");
    // The path takes the same rule: a malformed escape or a key that is
    // not UTF-8 is 400 (JSON), a good escape is decoded.
    for path in ["/v1/kv/a%ZZ", "/v1/kv/ff%FFkey"] {
        let (code, head, body) = curl_headers(&["-X", "PUT", &url(path), "-d", "1"]);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            header(&head, "content-type").unwrap().contains("json"),
            "{head}"
        );
    }
    let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/a%2Fb"), "-d", "slash"]);
    assert_eq!(code, 200);
    let (code, body) = curl(&[&url("/v1/kv/a/b")]);
    assert_eq!((code, body.as_str()), (200, "slash"));
    for q in [
        "/v1/kv/a/b?consistency=strong&consistency=stale",
        "/v1/kv?prefix=a&prefix=b",
    ] {
        let (code, _) = curl(&[&url(q)]);
        assert_eq!(code, 400, "{q}");
    }
    let (code, _) = curl(&[
        "-X",
        "PUT",
        &url("/v1/kv/a/b?ack=all&ack=master"),
        "-d",
        "2",
    ]);
    assert_eq!(code, 400);
    let (code, body) = curl(&[&url("/v1/kv/a/b")]);
    assert_eq!(
        (code, body.as_str()),
        (200, "slash"),
        "a refused write wrote nothing"
    );
}

/// Counts out of range are refused, not silently changed; a path that is
/// not UTF-8 gets the JSON error shape.
#[test]
fn counts_and_paths_get_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = |p: &str| format!("http://{http}{p}");
    let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/a"), "-d", "1"]);
    assert_eq!(code, 200);
    for q in [
        "/v1/kv?limit=0",
        "/v1/kv?limit=1001",
        "/v1/kv/a?history=0",
        "/v1/kv/a?history=1001",
        "/v1/records/%FF",
    ] {
        let (code, head, body) = curl_headers(&[&url(q)]);
        assert_eq!(code, 400, "{q}: {body}");
        assert!(
            header(&head, "content-type").unwrap().contains("json"),
            "{q}"
        );
    }
    let (code, body) = curl(&[&url("/v1/kv?limit=1000")]);
    assert_eq!(code, 200, "{body}");
    // A prefix longer than any key is a mistake, not an empty list; one of
    // the longest key's length is still a prefix.
    let long = "p".repeat(1025);
    for q in [
        format!("/v1/kv?prefix={long}"),
        format!("/v1/watch?prefix={long}"),
    ] {
        let (code, head, body) = curl_headers(&["-m", "5", &url(&q)]);
        assert_eq!(code, 400, "{body}");
        assert!(header(&head, "content-type").unwrap().contains("json"));
        assert!(body.contains("prefix of 1025 bytes"), "{body}");
    }
    let (code, body) = curl(&[&url(&format!("/v1/kv?prefix={}", &long[1..]))]);
    assert_eq!((code, body.as_str()), (200, r#"{"keys":[],"next":null}"#));
}

/// Every read answers with a cursor at or after what it saw (a history, a
/// list, a record by id, a 412), so a session read that carries it never
/// goes back.
#[test]
fn every_read_answers_a_cursor_past_what_it_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = |p: &str| format!("http://{http}{p}");
    let parse = |c: &str| -> Vec<u64> { c.split(':').map(|p| p.parse().unwrap()).collect() };
    let mut last = Vec::new();
    for v in ["1", "2", "3"] {
        let (code, head, _) = curl_headers(&["-X", "PUT", &url("/v1/kv/c?ack=all"), "-d", v]);
        assert_eq!(code, 200);
        last = parse(header(&head, "x-ourkv-cursor").unwrap());
    }
    let (_, body) = curl(&[&url("/v1/kv?prefix=c")]);
    assert_eq!(body, r#"{"keys":["c"],"next":null}"#);
    for (q, extra, want) in [
        ("/v1/kv/c?history=3&consistency=stale", None, 200),
        ("/v1/kv?prefix=c&consistency=stale", None, 200),
        ("/v1/records/1?consistency=stale", None, 200),
        ("/v1/records/99?consistency=stale", None, 404),
        ("/v1/kv/nope?history=2&consistency=stale", None, 404),
        (
            "/v1/kv/c?consistency=stale",
            Some("If-Match: \"9-9-9\""),
            412,
        ),
    ] {
        let mut args = vec![];
        if let Some(h) = extra {
            args.extend(["-H", h]);
        }
        let u = url(q);
        args.push(&u);
        let (code, head, body) = curl_headers(&args);
        assert_eq!(code, want, "{q}: {body}");
        let c = header(&head, "x-ourkv-cursor").unwrap_or_else(|| panic!("{q}: no cursor"));
        // A stale read on the one worker that acknowledged every write saw
        // them all: its cursor is at or after the last write's.
        assert!(parse(c) >= last, "{q}: {c} before {last:?}");
    }
}

/// Preconditions as RFC 9110 defines them: `*`, entity-tag lists, weak tags
/// (never in If-Match, like their strong twin in If-None-Match), and
/// If-None-Match on GET answered 304.
#[test]
fn conditional_requests_follow_rfc_9110() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, http) = start_dev(dir.path(), &[]);
    let url = format!("http://{http}/v1/kv/c");
    let with = |method: &str, h: &str, body: Option<&str>| {
        let mut args = vec!["-X", method, "-H", h, url.as_str()];
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        curl_headers(&args)
    };
    let etag = |head: &str| header(head, "etag").unwrap().to_string();
    // If-Match: * needs the key to exist.
    let (code, _, body) = with("PUT", "If-Match: *", Some("v0"));
    assert_eq!(code, 412, "{body}");
    let (code, head, _) = with("PUT", "If-None-Match: *", Some("v1"));
    assert_eq!(code, 200);
    let e1 = etag(&head);
    // GET: 304 for a matching tag, a weak twin, a list holding it, or *.
    for h in [
        format!("If-None-Match: {e1}"),
        format!("If-None-Match: W/{e1}"),
        format!("If-None-Match: \"x\", {e1}"),
        "If-None-Match: *".to_string(),
    ] {
        let (code, head, body) = curl_headers(&["-H", &h, &url]);
        assert_eq!(code, 304, "{h}");
        assert_eq!(body, "", "{h}");
        assert_eq!(header(&head, "etag"), Some(e1.as_str()), "{h}");
    }
    let (code, _, body) = curl_headers(&["-H", "If-None-Match: \"9-9-9\"", &url]);
    assert_eq!((code, body.as_str()), (200, "v1"));
    // GET with If-Match: 412 unless it matches.
    let (code, _, _) = curl_headers(&["-H", "If-Match: \"9-9-9\"", &url]);
    assert_eq!(code, 412);
    let (code, _, body) = curl_headers(&["-H", &format!("If-Match: {e1}"), &url]);
    assert_eq!((code, body.as_str()), (200, "v1"));
    // PUT: If-Match * on an existing key, then a list holding the tag.
    let (code, head, _) = with("PUT", "If-Match: *", Some("v2"));
    assert_eq!(code, 200);
    let e2 = etag(&head);
    let (code, head, _) = with("PUT", &format!("If-Match: \"nope\", {e2}"), Some("v3"));
    assert_eq!(code, 200);
    let e3 = etag(&head);
    // A weak tag never matches If-Match.
    let (code, _, _) = with("PUT", &format!("If-Match: W/{e3}"), Some("x"));
    assert_eq!(code, 412);
    // Strong comparison is by characters: the same numbers written
    // otherwise (a leading zero, a sign) are another tag.
    let zero = e3.replacen('"', "\"0", 1);
    let sign = e3.replacen('"', "\"+", 1);
    for other in [&zero, &sign] {
        let (code, _, _) = with("PUT", &format!("If-Match: {other}"), Some("x"));
        assert_eq!(code, 412, "{other}");
        let (code, _, _) = curl_headers(&["-H", &format!("If-None-Match: {other}"), &url]);
        assert_eq!(code, 200, "{other}");
    }
    // If-None-Match with tags on a write: 412 if the current one is listed.
    let (code, _, _) = with("PUT", &format!("If-None-Match: {e3}"), Some("x"));
    assert_eq!(code, 412);
    let (code, _, _) = with("PUT", &format!("If-None-Match: {e1}, {e2}"), Some("v4"));
    assert_eq!(code, 200);
    let (_, _, body) = curl_headers(&[&url]);
    assert_eq!(body, "v4");
    // Bad syntax (RFC 9110's grammar, empty included): 400 with JSON.
    for hs in [
        vec!["If-Match: abc"],
        vec!["If-Match: *, \"9-9-9\""],
        vec!["If-Match: *", "If-Match: \"9-9-9\""],
        vec!["If-Match: \"open"],
        vec!["If-Match;"],
        vec!["If-Match: \"a\"\"b\""],
        vec!["If-Match: \"a\",,\"b\""],
    ] {
        let mut args = vec!["-X", "PUT", "--data-binary", "bad"];
        for h in &hs {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let (code, _, body) = curl_headers(&args);
        assert_eq!(code, 400, "{hs:?}: {body}");
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"]["code"], "bad_request");
    }
    // Both on a write: each valid alone, not together.
    let (code, _, body) = curl_headers(&[
        "-X",
        "PUT",
        "--data-binary",
        "bad",
        "-H",
        "If-Match: *",
        "-H",
        "If-None-Match: *",
        &url,
    ]);
    assert_eq!(code, 422, "{body}");
    let (_, _, body) = curl_headers(&[&url]);
    assert_eq!(body, "v4", "nothing written by the refused requests");
    // DELETE with If-Match: * on a missing key is 412, not 404.
    let missing = format!("http://{http}/v1/kv/missing");
    let (code, _, _) = curl_headers(&["-X", "DELETE", "-H", "If-Match: *", &missing]);
    assert_eq!(code, 412);
    let (_, _, body) = curl_headers(&[&url]);
    assert_eq!(body, "v4", "nothing refused changed the value");
}
