//! The HTTP listener against hostile and careless clients, with real
//! sockets: silent connections, unfinished huge headers, the connection cap,
//! and the errors hyper answers by itself. Counts and times are bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `ourkv dev` with at most `fds` file descriptors (soft and hard), as on a
/// machine where nobody raised the limit.
fn dev_with_fds(data: &std::path::Path, fds: u32, args: &[&str]) -> (Proc, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={fds}:{fds}"))
        .arg(env!("CARGO_BIN_EXE_ourkv"))
        .args(["dev", "--data", data.to_str().unwrap(), "--http", &http])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) is needed for this test");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening"), "did not start: {line:?}");
    (Proc(child), http)
}

/// This test process needs more descriptors than the server it attacks.
fn raise_own_fd_limit() {
    let got = rlimit::increase_nofile_limit(4096).unwrap();
    assert!(
        got >= 2048,
        "this test needs 2048 descriptors, the limit is {got}"
    );
}

fn open_fds(p: &Proc) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", p.0.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The resident memory of the `ourkv` process (prlimit execs it, same pid).
fn rss_kib(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.0.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads what the server sends until it closes or `within` passes.
fn read_answer(s: &mut TcpStream, within: Duration) -> String {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Whether the server has closed `s` (EOF or reset), waiting up to `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn assert_json_error(answer: &str, status: u16) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status}: {answer:.300}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer:.300}"
    );
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert!(v["error"]["code"].is_string(), "{body}");
    assert!(v["error"]["message"].is_string(), "{body}");
}

#[test]
fn silent_connections_never_lock_out_other_clients_and_are_closed() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    // 1,024 descriptors, 1,000 silent clients: as in the report.
    let (p, http) = dev_with_fds(dir.path(), 1024, &["--client-timeout-ms", "2000"]);
    let base_fds = open_fds(&p);
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&http).unwrap())
        .collect();
    // Every /health during the flood answers at once (200, or 503 with a
    // JSON body), and 200 again within about a second.
    let mut ok_after = None;
    for _ in 0..40 {
        let t = Instant::now();
        let (code, body) = curl(&["--max-time", "2", &format!("http://{http}/health")]);
        assert!(t.elapsed() < Duration::from_millis(1500), "/health hung");
        match code {
            200 => {
                ok_after = Some(opened.elapsed());
                break;
            }
            503 => assert!(body.contains("\"unavailable\""), "{body}"),
            other => panic!("/health during the flood: {other} {body}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok_after = ok_after.expect("/health never answered 200 during the flood");
    assert!(ok_after < Duration::from_secs(3), "{ok_after:?}");
    // The header timeout runs from accept: by then every silent socket is
    // closed by the server (answered 503 at the cap, evicted, or timed out).
    let deadline = opened + Duration::from_millis(2000 + 2000);
    let mut still_open = 0;
    for s in &mut silent {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_by_server(s, left.max(Duration::from_millis(10))) {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "silent connections the server kept open");
    drop(silent);
    // Its descriptors are given back, and it serves as before.
    eventually_true(5, || open_fds(&p) <= base_fds + 8);
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "v",
        &format!("http://{http}/v1/kv/k"),
    ]);
    assert_eq!(code, 200);
}

fn eventually_true(secs: u64, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < end, "condition not reached in {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unfinished_huge_headers_cost_little_memory_and_get_431() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let (p, http) = start_dev(dir.path(), &["--client-timeout-ms", "5000"]);
    // One client: 20 KiB of headers is past the bound, answered as JSON.
    let mut s = TcpStream::connect(&http).unwrap();
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
        "a".repeat(20 * 1024)
    );
    s.write_all(big.as_bytes()).unwrap();
    assert_json_error(&read_answer(&mut s, Duration::from_secs(3)), 431);
    // 400 clients each pushing 390 KB of one unfinished header (under
    // hyper's default 400 KB buffer, which would keep it all).
    let before = rss_kib(&p);
    let header = format!("GET /health HTTP/1.1\r\nX-Big: {}", "a".repeat(390 * 1000));
    let conns: Vec<TcpStream> = (0..400)
        .map(|_| {
            let mut s = TcpStream::connect(&http).unwrap();
            s.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            // The server stops reading (and answers) at the bound: the
            // rest of the write may fail, which is the point.
            let _ = s.write_all(header.as_bytes());
            s
        })
        .collect();
    let after = rss_kib(&p);
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "400 unfinished headers took {grown_mib} MiB ({before} -> {after} KiB)"
    );
    drop(conns);
    let (code, _) = curl(&[&format!("http://{http}/health")]);
    assert_eq!(code, 200);
}

#[test]
fn at_the_connection_cap_new_clients_get_a_fast_503() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, http) = start_dev(dir.path(), &["--max-connections", "8"]);
    // Eight busy connections (watches: a request each, open for ever).
    let watches: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&http).unwrap();
            s.write_all(b"GET /v1/watch HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            s
        })
        .collect();
    // None of them is idle, so the ninth is refused, at once and as JSON.
    let t = Instant::now();
    let mut s = TcpStream::connect(&http).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(3));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_json_error(&answer, 503);
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"));
    // A watch closed frees its place.
    drop(watches);
    eventually_true(5, || curl(&[&format!("http://{http}/health")]).0 == 200);
}

#[test]
fn what_hyper_refuses_by_itself_is_answered_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, http) = start_dev(dir.path(), &[]);
    for raw in [
        &b"BLAH\r\n\r\n"[..],
        &b"GET /v1/kv/\xff HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(&http).unwrap();
        s.write_all(raw).unwrap();
        assert_json_error(&read_answer(&mut s, Duration::from_secs(3)), 400);
    }
    // A long URL (over the head bound) is 431 with a body too.
    let mut s = TcpStream::connect(&http).unwrap();
    let url = format!(
        "GET /v1/kv/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "k".repeat(40_000)
    );
    s.write_all(url.as_bytes()).unwrap();
    assert_json_error(&read_answer(&mut s, Duration::from_secs(3)), 431);
}

/// Sends a watch request on a new connection and reads its response head.
fn open_watch(http: &str, query: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(http).unwrap();
    write!(s, "GET /v1/watch?{query} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).to_string())
}

/// Reads the event stream on `s` until `needle` appears; what was read.
fn read_until(s: &mut TcpStream, needle: &str, within: Duration) -> String {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{needle:?} not seen in {within:?}");
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => panic!("stream ended before {needle:?}"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{needle:?} not seen: {e}"),
        }
    }
    String::from_utf8_lossy(&seen).to_string()
}

#[test]
fn two_thousand_watches_on_one_worker_share_one_stream() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    // One worker, as in the report where the next GET took 8 s.
    let (_m, _w, _g, http) = master_worker_gateway(dir.path());
    let mut watches: Vec<TcpStream> = (0..2000)
        .map(|i| {
            let prefix = if i % 100 == 0 { "other/" } else { "w/" };
            let (s, head) = open_watch(&http, &format!("prefix={prefix}"));
            assert!(head.starts_with("HTTP/1.1 200"), "watch {i}: {head}");
            s
        })
        .collect();
    // Other requests are served as usual meanwhile.
    let t = Instant::now();
    let (code, _) = curl(&["--max-time", "5", &format!("http://{http}/v1/kv/none")]);
    assert_eq!(code, 404);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "GET took {:?}",
        t.elapsed()
    );
    let put = |k: &str, v: &str| {
        let (code, body) = curl(&[
            "-X",
            "PUT",
            "--data-binary",
            v,
            &format!("http://{http}/v1/kv/{k}"),
        ]);
        assert_eq!(code, 200, "{body}");
    };
    put("w/1", "hello");
    put("other/1", "there");
    for (i, s) in watches.iter_mut().enumerate() {
        if i % 100 == 0 {
            // The first event of an other/ watch is other/1: w/1 was not for it.
            let got = read_until(s, "\n\n", Duration::from_secs(10));
            let got = got.trim_start_matches(":\n\n");
            let first = got
                .split("\n\n")
                .find(|e| e.contains("data:"))
                .unwrap_or(got);
            assert!(first.contains("\"other/1\""), "watch {i}: {got}");
        } else {
            let got = read_until(s, "\"w/1\"", Duration::from_secs(10));
            assert!(got.contains("event: put"), "watch {i}: {got}");
            assert!(
                got.contains(&format!("\"value\":\"{}\"", "aGVsbG8=")),
                "{got}"
            );
        }
    }
}

#[test]
fn past_the_watch_limit_a_watch_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, http) = start_dev(dir.path(), &["--max-watches", "5"]);
    let open: Vec<TcpStream> = (0..5)
        .map(|_| {
            let (s, head) = open_watch(&http, "prefix=a/");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            s
        })
        .collect();
    let (code, body) = curl(&["--max-time", "3", &format!("http://{http}/v1/watch")]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many watches"), "{body}");
    drop(open);
    // Closed watches give their places back (noticed at their next write).
    let (code, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &format!("http://{http}/v1/kv/a/1"),
    ]);
    assert_eq!(code, 200);
    eventually_true(10, || {
        let (code, _) = curl(&["--max-time", "1", &format!("http://{http}/v1/watch")]);
        code != 503
    });
}

#[test]
fn a_watch_that_reads_slowly_still_gets_every_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, http) = start_dev(dir.path(), &[]);
    // A small receive buffer, so the socket holds few events and the
    // gateway's shared buffer (4,096 changes) overflows for this watch.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect(&http.parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    let mut slow: TcpStream = sock.into();
    write!(slow, "GET /v1/watch?prefix=s/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_until(&mut slow, "\r\n\r\n", Duration::from_secs(5));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Events read with the head are kept.
    let mut all = head.split_once("\r\n\r\n").unwrap().1.to_string();
    // Far more than the socket and the shared buffer hold, while the watch
    // reads nothing: 8,000 changes of 2 KB each (about 22 MB of events),
    // from 30 writers at once (so group commit batches their fsyncs).
    let n = 8000;
    let writers = 30;
    std::thread::scope(|t| {
        for w in 0..writers {
            let http = &http;
            t.spawn(move || {
                let value = "v".repeat(2000);
                let mut c = TcpStream::connect(http).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = vec![0u8; 4096];
                for i in (w..n).step_by(writers) {
                    write!(
                        c,
                        "PUT /v1/kv/s/{i:05} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{value}",
                        value.len()
                    )
                    .unwrap();
                    let got = c.read(&mut buf).unwrap();
                    let answer = String::from_utf8_lossy(&buf[..got]);
                    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                }
            });
        }
    });
    // Every change once, in log order (ids strictly increasing).
    let mut keys = std::collections::BTreeSet::new();
    let mut last_id: Option<(u64, u64, u64)> = None;
    let end = Instant::now() + Duration::from_secs(60);
    while keys.len() < n {
        assert!(Instant::now() < end, "saw {} of {n} changes", keys.len());
        all.push_str(&read_until(&mut slow, "\n\n", Duration::from_secs(10)));
        while let Some((event, rest)) = all.split_once("\n\n") {
            let id = event.lines().find_map(|l| l.strip_prefix("id: "));
            let data = event.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(id), Some(data)) = (id, data) {
                let p: Vec<u64> = id.split(':').map(|x| x.parse().unwrap()).collect();
                let id = (p[0], p[1], p[2]);
                assert!(
                    last_id.is_none_or(|l| l < id),
                    "ids out of order: {last_id:?} {id:?}"
                );
                last_id = Some(id);
                let key = data.split('"').nth(3).unwrap().to_string();
                assert!(keys.insert(key.clone()), "{key} seen twice");
            }
            all = rest.to_string();
        }
    }
}
