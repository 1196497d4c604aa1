//! The HTTP gateway as users reach it: `ourkv dev` and the README's curl
//! examples verbatim, bad input, and a master that goes away.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn sh(line: &str) -> String {
    let out = Command::new("sh").args(["-c", line]).output().expect("sh");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn readme_curl_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = &readme[readme
        .find("## With curl")
        .expect("README has a curl section")..];
    let block = &section[section.find("```sh").unwrap() + 5..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_curl_examples_run_against_ourkv_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ourkv-data");
    // The README's port, as a user runs it.
    let _dev = start(&["dev", "--data", data.to_str().unwrap()]);
    let lines = readme_curl_lines();
    assert!(lines.len() >= 8, "{lines:?}");
    // The lease lines name lease 7, as a reader would after granting it:
    // the id this run's grant answers stands in for it.
    let mut lease = None::<String>;
    let out: Vec<String> = lines
        .iter()
        .map(|l| {
            let line = match &lease {
                Some(id) => l
                    .replace("/v1/lease/7", &format!("/v1/lease/{id}"))
                    .replace("lease=7", &format!("lease={id}")),
                None => l.clone(),
            };
            let o = sh(&line);
            if l.contains("/v1/lease?ttl=") {
                let v: serde_json::Value = serde_json::from_str(&o).unwrap();
                lease = Some(v["id"].to_string());
            }
            o
        })
        .collect();
    let find = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    assert!(
        out[find("/keepalive")].contains("\"remaining_ms\""),
        "{out:?}"
    );
    let revoked: serde_json::Value =
        serde_json::from_str(&out[find("-X DELETE http://localhost:8080/v1/lease/")]).unwrap();
    assert_eq!(revoked["keys"], serde_json::json!(["svc/a"]), "{revoked}");
    assert_eq!(out[find("/get?key=mykey")], "myvalue");
    assert!(out[find("/set")].contains("\"ok\":true"), "{}", out[0]);
    let get = lines
        .iter()
        .position(|l| l == "curl http://localhost:8080/v1/kv/greeting")
        .unwrap();
    assert_eq!(out[get], "hello again");
    let h: serde_json::Value = serde_json::from_str(&out[find("history=5")]).unwrap();
    assert_eq!(h["history"].as_array().unwrap().len(), 2);
    let l: serde_json::Value = serde_json::from_str(&out[find("prefix=gr")]).unwrap();
    assert_eq!(l["keys"], serde_json::json!(["greeting"]));
    let t: serde_json::Value = serde_json::from_str(&out[find("/v1/txn")]).unwrap();
    assert_eq!(t["results"][1]["put"], "owner", "{t}");
    // Run again, the condition no longer holds: 412, nothing written.
    let again = sh(&format!("{} -w ' %{{http_code}}'", lines[find("/v1/txn")]));
    assert!(again.ends_with(" 412"), "{again}");
    assert!(out[find("/delete")].contains("\"ok\":true"));
    assert!(out[find("-X DELETE http://localhost:8080/v1/kv/")].contains("\"ok\":true"));
    let c: serde_json::Value = serde_json::from_str(&out[find("/v1/cluster")]).unwrap();
    assert_eq!(c["workers"].as_array().unwrap().len(), 2);
    // Everything deleted is gone.
    let (code, body) = curl(&["http://localhost:8080/get?key=mykey"]);
    assert_eq!(code, 404, "{body}");
    assert!(data.join("master").join("0.db").is_file());
    assert!(data.join("worker-2").join("0.db").is_file());
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = |p: &str| format!("http://{http}{p}");
    let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/keep"), "-d", "kept"]);
    assert_eq!(code, 200);
    let big_key = "k".repeat(2000);
    // More than the 1 MiB any request body may have.
    let huge = tmp.path().join("huge.bin");
    std::fs::write(&huge, vec![b'h'; 3 << 20]).unwrap();
    // One byte past the largest value (16 MiB).
    let over = tmp.path().join("over.bin");
    std::fs::write(&over, vec![b'v'; (16 << 20) + 1]).unwrap();
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (
            vec![
                "-X".into(),
                "POST".into(),
                url("/set"),
                "-d".into(),
                "value=x".into(),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-X".into(),
                "POST".into(),
                url("/set"),
                "-d".into(),
                "key=&value=x".into(),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-X".into(),
                "POST".into(),
                url("/set"),
                "-d".into(),
                format!("key={big_key}&value=x"),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-X".into(),
                "POST".into(),
                url("/set"),
                "-d".into(),
                "key=%zz&value=x".into(),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                url("/v1/kv/big"),
                "--data-binary".into(),
                format!("@{}", over.display()),
            ],
            413,
            "too_large",
        ),
        (vec![url("/get")], 400, "bad_request"),
        (vec![url("/get?key=missing")], 404, "not_found"),
        (
            vec![url("/v1/kv/keep?consistency=sometimes")],
            400,
            "bad_request",
        ),
        (vec![url("/v1/kv/keep?history=x")], 400, "bad_request"),
        (vec![url("/v1/kv?limit=many")], 400, "bad_request"),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                url("/v1/kv/keep?ack=maybe"),
                "-d".into(),
                "x".into(),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-H".into(),
                "X-OurKV-Cursor: nonsense".into(),
                url("/v1/kv/keep?consistency=session"),
            ],
            400,
            "bad_request",
        ),
        // Two session cursors: which one was meant is a guess.
        (
            vec![
                "-H".into(),
                "X-OurKV-Cursor: 1:0:1".into(),
                "-H".into(),
                "X-OurKV-Cursor: 9:0:1".into(),
                url("/v1/kv/keep?consistency=session"),
            ],
            400,
            "bad_request",
        ),
        (
            vec!["-X".into(), "DELETE".into(), url("/v1/kv/never-there")],
            404,
            "not_found",
        ),
        (vec![url("/no/such/endpoint")], 404, "no_route"),
        (
            vec!["-X".into(), "DELETE".into(), url("/set")],
            405,
            "method_not_allowed",
        ),
        (
            vec![
                "-X".into(),
                "POST".into(),
                url("/set"),
                "--data-binary".into(),
                format!("@{}", huge.display()),
            ],
            413,
            "too_large",
        ),
    ];
    for (args, want, code_name) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&args);
        assert_eq!(code, *want, "{args:?}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert_eq!(v["error"]["code"], *code_name, "{args:?}: {body}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Nothing but the one good key was stored, and the node is still up.
    let (code, body) = curl(&[&url("/v1/kv?prefix=")]);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["keys"], serde_json::json!(["keep"]));
    let (_, body) = curl(&[&url("/v1/kv/keep")]);
    assert_eq!(body, "kept");
    // The API describes itself, route by route.
    let (code, body) = curl(&[&url("/openapi.json")]);
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    for path in [
        "/set",
        "/get",
        "/delete",
        "/v1/kv/{key}",
        "/v1/kv",
        "/v1/records/{id}",
        "/v1/watch",
        "/v1/cluster",
    ] {
        assert!(
            api["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }
    // Ready, and with ?sync the worker has caught up.
    let t = Instant::now();
    loop {
        let (code, _) = curl(&[&url("/ready?sync")]);
        if code == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready?sync");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn master_down_writes_503_reads_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (master, _worker, _gw, http) = master_worker_gateway(tmp.path());
    let url = |p: &str| format!("http://{http}{p}");
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/a"), "-d", "1"]);
    assert_eq!(code, 200, "{body}");
    // Session reads with the write's cursor see it.
    let cursor: serde_json::Value = serde_json::from_str(&body).unwrap();
    let header = format!("X-OurKV-Cursor: {}", cursor["cursor"].as_str().unwrap());
    let (code, body) = curl(&["-H", &header, &url("/v1/kv/a?consistency=session")]);
    assert_eq!((code, body.as_str()), (200, "1"));
    drop(master);
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", "PUT", &url("/v1/kv/b"), "-d", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let (code, body) = curl(&[&url("/v1/kv/a?consistency=stale")]);
    assert_eq!((code, body.as_str()), (200, "1"));
    let (code, _) = curl(&[&url("/v1/kv/a")]);
    assert_eq!(code, 503, "a strong read needs the master's read-index");
    let (code, _) = curl(&[&url("/ready")]);
    assert_eq!(code, 503);
    let (code, _) = curl(&[&url("/health")]);
    assert_eq!(code, 200);
}

/// Strong reads (the default) never answer with an older value, even from
/// workers that lag on purpose; stale reads from them can. Concurrent strong
/// reads all see the last write.
fn strong_reads_never_stale(url: &dyn Fn(&str) -> String) {
    let mut stale_seen = 0;
    for i in 0..40 {
        let v = format!("v{i}");
        let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/hot"), "-d", &v]);
        assert_eq!(code, 200);
        let (code, body) = curl(&[&url("/v1/kv/hot")]);
        assert_eq!(
            (code, body.as_str()),
            (200, v.as_str()),
            "strong read {i} was stale"
        );
        let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/cold"), "-d", &v]);
        assert_eq!(code, 200);
        let (_, stale) = curl(&[&url("/v1/kv/cold?consistency=stale")]);
        if stale != v {
            stale_seen += 1;
        }
    }
    // The lag is real: stale reads right after a write mostly miss it.
    assert!(
        stale_seen > 0,
        "the workers did not lag; the test shows nothing"
    );
    let script = format!(
        "for i in $(seq 60); do curl -s {} & done; wait",
        url("/v1/kv/hot")
    );
    assert_eq!(
        sh(&script),
        "v39".repeat(60),
        "a concurrent strong read was stale"
    );
}

/// A read's `X-OurKV-Cursor` covers what it saw: a session read that
/// carries it never sees less, whichever worker answers (before, a stale
/// read answered the 0:0:0 it asked for, and a lagging worker could then
/// answer an older value).
fn reads_hand_out_cursors_that_keep_reads_monotonic(url: &dyn Fn(&str) -> String) {
    // The body and the cursor header of a GET.
    let get = |q: &str, cursor: Option<&str>| -> (String, String) {
        let mut args = vec!["-s".to_string(), "-i".to_string()];
        if let Some(c) = cursor {
            args.push("-H".into());
            args.push(format!("X-OurKV-Cursor: {c}"));
        }
        args.push(url(&format!("/v1/kv/mono?{q}")));
        let out = Command::new("curl").args(&args).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let cursor = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-ourkv-cursor: ")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no cursor header: {head}"));
        (body.to_string(), cursor)
    };
    let mut lagged = 0;
    for i in 0..15 {
        let v = format!("m{i}");
        let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/mono"), "-d", &v]);
        assert_eq!(code, 200);
        // Stale reads until one sees the write; then every session read
        // with that read's cursor sees it too.
        let t = Instant::now();
        let cursor = loop {
            let (body, cursor) = get("consistency=stale", None);
            assert_ne!(cursor, "0:0:0", "a stale read's cursor is where it read");
            if body == v {
                break cursor;
            }
            lagged += 1;
            assert!(t.elapsed() < Duration::from_secs(10), "never saw {v}");
        };
        for _ in 0..4 {
            let (body, after) = get("consistency=session", Some(&cursor));
            assert_eq!(body, v, "a session read at {cursor} went back");
            assert!(!after.is_empty());
        }
    }
    assert!(
        lagged > 0,
        "the workers did not lag; the test shows nothing"
    );
}

#[test]
fn strong_reads_are_never_stale_with_lagging_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let q = |p: u16| format!("127.0.0.1:{p}");
    let (mport, w1, w2, hport) = (free_port(), free_port(), free_port(), free_port());
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let _m = start(&[
        "master",
        "--data",
        &d("m"),
        "--listen",
        &q(mport),
        "--sync",
        "flush",
    ]);
    let _w1 = start(&[
        "worker",
        "--data",
        &d("w1"),
        "--listen",
        &q(w1),
        "--master",
        &q(mport),
        "--apply-delay-ms",
        "30",
    ]);
    let _w2 = start(&[
        "worker",
        "--data",
        &d("w2"),
        "--listen",
        &q(w2),
        "--master",
        &q(mport),
        "--apply-delay-ms",
        "60",
    ]);
    let _gw = start(&[
        "gateway",
        "--http",
        &q(hport),
        "--master",
        &q(mport),
        "--worker",
        &q(w1),
        "--worker",
        &q(w2),
    ]);
    let url = |p: &str| format!("http://{}{p}", q(hport));
    let rounds = |body: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix("ourkv_read_index_rounds_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = rounds(&curl(&[&url("/metrics")]).1);
    strong_reads_never_stale(&url);
    // The workers take the read index from the master (their rounds are
    // shared as replication::rounds tests); the gateway sends one request
    // per strong read.
    let used = rounds(&curl(&[&url("/metrics")]).1) - before;
    assert_eq!(
        used, 0,
        "the gateway took {used} read-index rounds of its own"
    );
    reads_hand_out_cursors_that_keep_reads_monotonic(&url);
}

#[test]
fn strong_reads_are_never_stale_in_ourkv_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--apply-delay-ms", "40"]);
    let url = |p: &str| format!("http://{http}{p}");
    strong_reads_never_stale(&url);
}

/// Compare-and-swap: every version has an ETag; If-Match and
/// If-None-Match: * on PUT and DELETE give 412 when they do not hold.
#[test]
fn etags_and_conditional_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = format!("http://{http}/v1/kv/cfg");
    let etag_of = |args: &[&str]| -> (u16, String, Option<String>) {
        let out = Command::new("curl")
            .args(["-s", "-i"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let etag = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
            .map(|l| l[5..].trim().to_string());
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (code, body, etag)
    };
    // Create only if absent.
    let (code, _, e1) = etag_of(&["-X", "PUT", "-H", "If-None-Match: *", &url, "-d", "v1"]);
    assert_eq!(code, 200);
    let e1 = e1.expect("PUT returns an ETag");
    let (code, body, _) = etag_of(&["-X", "PUT", "-H", "If-None-Match: *", &url, "-d", "again"]);
    assert_eq!(code, 412, "{body}");
    assert!(body.contains("precondition_failed"));
    // GET shows the same ETag.
    let (code, body, e) = etag_of(&[&url]);
    assert_eq!(
        (code, body.as_str(), e.as_deref()),
        (200, "v1", Some(e1.as_str()))
    );
    // Update only from the version read.
    let (code, _, e2) = etag_of(&[
        "-X",
        "PUT",
        "-H",
        &format!("If-Match: {e1}"),
        &url,
        "-d",
        "v2",
    ]);
    assert_eq!(code, 200);
    let e2 = e2.unwrap();
    assert_ne!(e1, e2);
    // A second writer holding the old ETag loses, and changes nothing.
    let (code, _, _) = etag_of(&[
        "-X",
        "PUT",
        "-H",
        &format!("If-Match: {e1}"),
        &url,
        "-d",
        "lost",
    ]);
    assert_eq!(code, 412);
    let (code, _, _) = etag_of(&["-X", "DELETE", "-H", &format!("If-Match: {e1}"), &url]);
    assert_eq!(code, 412);
    let (code, _, _) = etag_of(&["-X", "PUT", "-H", "If-Match: \"garbage\"", &url, "-d", "x"]);
    assert_eq!(code, 412);
    let (_, body, _) = etag_of(&[&url]);
    assert_eq!(body, "v2");
    let (code, _, _) = etag_of(&["-X", "DELETE", "-H", &format!("If-Match: {e2}"), &url]);
    assert_eq!(code, 200);
    let (code, _, _) = etag_of(&[&url]);
    assert_eq!(code, 404);
}

/// Records by id, and the optional bearer token.
#[test]
fn records_by_id_and_api_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let (_dev, http) = start_dev(&dir, &["--workers", "1", "--api-token", "s3cret"]);
    let url = |p: &str| format!("http://{http}{p}");
    let auth = "Authorization: Bearer s3cret";
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/a"), "-d", "x"]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("unauthorized"));
    let (code, _) = curl(&["-H", "Authorization: Bearer wrong", &url("/v1/kv/a")]);
    assert_eq!(code, 401);
    let (code, _) = curl(&[&url("/health")]);
    assert_eq!(code, 200, "health stays open for probes");
    let (code, _) = curl(&["-H", auth, "-X", "PUT", &url("/v1/kv/a"), "-d", "first"]);
    assert_eq!(code, 200);
    // The first key of a fresh store is record 1.
    let (code, body) = curl(&["-H", auth, &url("/v1/records/1")]);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["key"], "a");
    assert_eq!(v["value"], "Zmlyc3Q="); // base64 of "first"
    let (code, _) = curl(&["-H", auth, &url("/v1/records/999")]);
    assert_eq!(code, 404);
    let (code, _) = curl(&["-H", auth, &url("/v1/records/x")]);
    assert_eq!(code, 400);
}

/// Watch: server-sent events for a prefix, resumable from the last event id
/// without gaps or repeats.
#[test]
fn watch_streams_changes_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(&tmp.path().join("d"), &["--workers", "1"]);
    let url = |p: &str| format!("http://{http}{p}");
    let watcher = Command::new("curl")
        .args(["-s", "-N", "--max-time", "4", &url("/v1/watch?prefix=w/")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    for (method, path, body) in [
        ("PUT", "/v1/kv/w/1", "one"),
        ("PUT", "/v1/kv/x/2", "not watched"),
        ("PUT", "/v1/kv/w/3", "three"),
        ("DELETE", "/v1/kv/w/1", ""),
    ] {
        let mut args = vec!["-X", method];
        let u = url(path);
        args.push(&u);
        if !body.is_empty() {
            args.extend(["-d", body]);
        }
        let (code, _) = curl(&args);
        assert_eq!(code, 200, "{method} {path}");
    }
    let out = String::from_utf8(watcher.wait_with_output().unwrap().stdout).unwrap();
    let events: Vec<(String, String, String)> = out
        .split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            let field = |name: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (field("id:"), field("event:"), field("data:"))
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(kinds, ["put", "put", "delete"], "{out}");
    assert!(
        events[0].2.contains("\"w/1\"") && events[0].2.contains("b25l"),
        "{out}"
    );
    assert!(events[1].2.contains("\"w/3\""));
    assert!(!out.contains("x/2"));
    // Resuming after the first event gives exactly the rest.
    let out = Command::new("curl")
        .args([
            "-s",
            "-N",
            "--max-time",
            "1",
            "-H",
            &format!("Last-Event-ID: {}", events[0].0),
        ])
        .arg(url("/v1/watch?prefix=w/"))
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&out.stdout);
    assert_eq!(again.matches("data:").count(), 2, "{again}");
    assert!(
        again.contains(&format!("id: {}", events[1].0))
            && again.contains(&format!("id: {}", events[2].0))
    );
}

/// Headless Chromium on `url`: the DOM after `ms` of virtual time (timers
/// and fetches run meanwhile), or a screenshot into `png` instead.
fn chromium(
    url: &str,
    profile: &std::path::Path,
    ms: u32,
    png: Option<&std::path::Path>,
) -> String {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1250",
    ])
    .arg(format!("--virtual-time-budget={ms}"))
    .arg(format!("--user-data-dir={}", profile.display()));
    match png {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium) is needed for this test");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The live status page in headless Chromium, behind a token: without it
/// the page asks for one and shows no data; with it (from the link's
/// fragment) it fills the nodes and members tables, updates itself every
/// second, draws the charts from the gateway's last seconds, and lists keys
/// and shows a value and its history as text (markup in a value stays
/// text). A screenshot is saved for people to look at.
#[test]
fn status_page_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(
        &tmp.path().join("d"),
        &["--workers", "2", "--api-token", "s3cret"],
    );
    let auth = "Authorization: Bearer s3cret";
    // "app/./a": a browser resolves dot segments in a path, so the page
    // must send the key as one escaped segment to show this key's value.
    for (key, value) in [
        ("app/./a", "<b>bold</b> & more"),
        ("app/b", "plain"),
        ("page", "x"),
    ] {
        let (code, _) = curl(&[
            "-H",
            auth,
            "-X",
            "PUT",
            &format!("http://{http}/v1/kv/{}?ack=all", key.replace('/', "%2F")),
            "--data-binary",
            value,
        ]);
        assert_eq!(code, 200);
    }
    let (code, _) = curl(&[
        "-H",
        auth,
        "-X",
        "PUT",
        &format!("http://{http}/v1/kv/app%2F.%2Fa?ack=all"),
        "--data-binary",
        "<i>newest</i>",
    ]);
    assert_eq!(code, 200);
    // Wait until both workers report in sync, then look with a browser.
    let t = Instant::now();
    loop {
        let (_, body) = curl(&["-H", auth, &format!("http://{http}/v1/cluster")]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let in_sync = v["workers"]
            .as_array()
            .map_or(0, |w| w.iter().filter(|w| w["in_sync"] == true).count());
        if in_sync == 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "workers never in sync"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Some seconds of samples exist before the page opens.
    std::thread::sleep(Duration::from_millis(2500));
    let profile = tmp.path().join("chromium-profile");

    let locked = chromium(&format!("http://{http}/"), &profile, 3000, None);
    assert!(locked.contains("<h1>ourkv</h1>"), "{locked}");
    assert!(
        locked.contains(r#"<section id="auth">"#),
        "the token form shows: {locked}"
    );
    assert!(locked.contains("needs its API token"), "{locked}");
    assert!(
        !locked.contains("app/./a"),
        "no data without the token: {locked}"
    );

    let dom = chromium(
        &format!("http://{http}/#token=s3cret"),
        &profile,
        4000,
        None,
    );
    assert!(dom.contains(r#"<section id="auth" hidden="">"#), "{dom}");
    let updates: u32 = dom
        .split(r#"data-updates=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("an update counter");
    assert!(
        updates >= 2,
        "the page updated itself {updates} times: {dom}"
    );
    let nodes = dom
        .split(r#"<table id="nodes">"#)
        .nth(1)
        .and_then(|r| r.split("</table>").next())
        .unwrap();
    let rows: Vec<&str> = nodes.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 3, "master and two workers: {nodes}");
    assert!(rows[0].contains("<td>master</td>"));
    assert_eq!(nodes.matches("<td>worker</td>").count(), 2);
    assert_eq!(nodes.matches("in sync").count(), 2, "{nodes}");
    for r in &rows {
        assert!(r.contains("0:"), "a file:offset cursor: {r}");
    }
    for r in &rows[1..] {
        assert!(r.contains(" ms</td>"), "a worker's lag in time: {r}");
    }
    // `ourkv dev` runs a failover cluster: three members, one the master.
    let members = dom
        .split(r#"<table id="members">"#)
        .nth(1)
        .and_then(|r| r.split("</table>").next())
        .unwrap();
    assert_eq!(members.split("<tr>").skip(2).count(), 3, "{members}");
    assert_eq!(members.matches(">master</td>").count(), 1, "{members}");
    assert!(dom.contains("Failover members, term "), "{dom}");
    // The charts have lines from the gateway's samples.
    for chart in ["chart-rps", "chart-p99", "chart-lag"] {
        let svg = dom
            .split(&format!(r#"id="{chart}""#))
            .nth(1)
            .and_then(|r| r.split("</svg>").next())
            .unwrap();
        assert!(svg.contains("<polyline"), "{chart}: {svg}");
    }
    // The key browser: every key listed, the first one shown with its
    // history, markup as text.
    for key in ["app/./a", "app/b", "page"] {
        assert!(dom.contains(&format!(">{key}</button>")), "{key}: {dom}");
    }
    assert!(dom.contains("&lt;i&gt;newest&lt;/i&gt;"), "{dom}");
    assert!(dom.contains("&lt;b&gt;bold&lt;/b&gt; &amp; more"), "{dom}");
    assert!(!dom.contains("<i>newest</i>") && !dom.contains("<b>bold</b>"));

    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &format!("http://{http}/#token=s3cret"),
        &profile,
        4000,
        Some(&png),
    );
    let shot = std::fs::read(&png).expect("a screenshot");
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "{} bytes",
        shot.len()
    );
    eprintln!("status page screenshot: {}", png.display());
}

/// Slow clients: headers that never finish lose their connection, a body
/// that never finishes gets 408, both after the client timeout; meanwhile
/// other clients are served and nothing half-sent is stored.
#[test]
fn slow_clients_are_cut_off_while_others_are_served() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, http) = start_dev(
        &tmp.path().join("d"),
        &["--workers", "1", "--client-timeout-ms", "600"],
    );
    let url = |p: &str| format!("http://{http}{p}");
    let connect = || {
        let s = std::net::TcpStream::connect(&http).unwrap();
        // Far beyond the client timeout: the server must act first.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    let mut headers = connect();
    headers
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut body = connect();
    body.write_all(b"PUT /v1/kv/half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    // Served while both hang.
    let (code, _) = curl(&["-X", "PUT", &url("/v1/kv/whole"), "-d", "fine"]);
    assert_eq!(code, 200);
    let (code, b) = curl(&[&url("/v1/kv/whole")]);
    assert_eq!((code, b.as_str()), (200, "fine"));

    let mut got = Vec::new();
    let n = headers
        .read_to_end(&mut got)
        .expect("closed, not timed out");
    assert_eq!(n, 0, "no answer to half a request: {got:?}");
    let mut got = String::new();
    body.read_to_string(&mut got)
        .expect("answered, not timed out");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let json = got.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).expect(json);
    assert_eq!(v["error"]["code"], "timeout");
    let (code, _) = curl(&[&url("/v1/kv/half")]);
    assert_eq!(code, 404, "nothing half-sent is stored");
    let (code, _) = curl(&[&url("/health")]);
    assert_eq!(code, 200);
}

/// A strong read whose client gives up while the read-index round is out
/// (the master frozen) does not stop the rounds: once the master answers
/// again, strong reads succeed.
#[test]
fn strong_reads_recover_after_a_client_gives_up_mid_round() {
    let tmp = tempfile::tempdir().unwrap();
    let (master, _worker, _gw, http) = master_worker_gateway(tmp.path());
    let url = |p: &str| format!("http://{http}{p}");
    let (code, body) = curl(&["-X", "PUT", &url("/v1/kv/a"), "-d", "1"]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[&url("/v1/kv/a")]);
    assert_eq!((code, body.as_str()), (200, "1"));
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .args([sig, &master.0.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    signal("-STOP");
    // The client gives up after 0.5 s; the gateway drops its request.
    let (code, _) = curl(&["-m", "0.5", &url("/v1/kv/a")]);
    assert_eq!(code, 0, "no answer while the master is frozen");
    signal("-CONT");
    let (code, body) = curl(&["-m", "20", &url("/v1/kv/a")]);
    assert_eq!((code, body.as_str()), (200, "1"), "strong reads work again");
}

/// `ourkv dev` killed with SIGKILL and started again on its data: the same
/// three members find each other (same ports), elect a master, and every
/// acknowledged write is there.
#[test]
fn ourkv_dev_comes_back_after_kill_9_with_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let (dev, http) = start_dev(&data, &[]);
    for i in 0..30 {
        let url = format!("http://{http}/v1/kv/k{i}?ack=all");
        let (code, body) = curl(&["-X", "PUT", &url, "-d", &format!("v{i}")]);
        assert_eq!(code, 200, "{body}");
    }
    let members = |http: &str| -> Vec<String> {
        let (_, body) = curl(&[&format!("http://{http}/v1/cluster")]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut ids: Vec<String> = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{}@{}", m["id"], m["addr"]))
            .collect();
        ids.sort();
        ids
    };
    let before = members(&http);
    assert_eq!(before.len(), 3, "{before:?}");
    drop(dev);

    let (_dev, http) = start_dev(&data, &[]);
    for i in 0..30 {
        let url = format!("http://{http}/v1/kv/k{i}?consistency=strong");
        assert_eq!(curl(&[&url]), (200, format!("v{i}")), "k{i}");
    }
    let (code, body) = curl(&[
        "-X",
        "PUT",
        &format!("http://{http}/v1/kv/after?ack=all"),
        "-d",
        "x",
    ]);
    assert_eq!(code, 200, "{body}");
    // The same members at the same addresses: none joined anew.
    let t = Instant::now();
    while members(&http) != before {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?} != {before:?}",
            members(&http)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
