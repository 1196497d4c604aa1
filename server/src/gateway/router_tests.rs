//! The router driven request by request (`tower::ServiceExt::oneshot`),
//! over the in-process nodes of `ourkv dev`: the gateway's logic without
//! an HTTP listener, beside the process-level tests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::Gateway;
use crate::cmd::dev::InProcess;

async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
    v["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reads_and_errors_through_the_router() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = InProcess::start(tmp.path(), 2, 0).await.unwrap();
    let app = Gateway::new(nodes.client, nodes.maddr, nodes.addrs, None).router();
    // ack=all waits for the in-sync workers: first let both join the set
    // (before that, it is ack=master, and a stale read may miss the write).
    let start = std::time::Instant::now();
    while call(&app, get("/ready?sync")).await.0 != StatusCode::OK {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "workers never in sync"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let put = Request::put("/v1/kv/app/x?ack=all")
        .body(Body::from("v1"))
        .unwrap();
    let (status, headers, body) = call(&app, put).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let etag = headers["etag"].to_str().unwrap().to_string();
    let cursor = headers["x-ourkv-cursor"].to_str().unwrap().to_string();

    // Every consistency level sees an acknowledged ack=all write.
    for level in ["strong", "stale"] {
        let (status, headers, body) =
            call(&app, get(&format!("/v1/kv/app/x?consistency={level}"))).await;
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::OK, &b"v1"[..]),
            "{level}"
        );
        assert_eq!(headers["etag"], etag.as_str());
    }
    let session = Request::get("/v1/kv/app/x?consistency=session")
        .header("x-ourkv-cursor", &cursor)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, session).await.2, b"v1");

    // Preconditions: 304 for the current tag, 412 for a stale one.
    let cond = Request::get("/v1/kv/app/x")
        .header("if-none-match", &etag)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&app, cond).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let put2 = Request::put("/v1/kv/app/x").body(Body::from("v2")).unwrap();
    assert_eq!(call(&app, put2).await.0, StatusCode::OK);
    let stale_cas = Request::put("/v1/kv/app/x")
        .header("if-match", &etag)
        .body(Body::from("lost"))
        .unwrap();
    let (status, _, body) = call(&app, stale_cas).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(&body), "precondition_failed");

    // Listing, history, and the errors a careless client gets.
    let (status, _, body) = call(&app, get("/v1/kv?prefix=app/")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["keys"], serde_json::json!(["app/x"]));
    let (_, _, body) = call(&app, get("/v1/kv/app/x?history=5")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["history"].as_array().unwrap().len(), 2);
    for (uri, status, code) in [
        ("/v1/kv/missing", StatusCode::NOT_FOUND, "not_found"),
        (
            "/v1/kv/app/x?consistency=sometimes",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/kv/app/x?consistency=strong&consistency=stale",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("/v1/kv?limit=0", StatusCode::BAD_REQUEST, "bad_request"),
        ("/nowhere", StatusCode::NOT_FOUND, "no_route"),
        ("/v1/kv/", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/lease/%FF", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/lease/+5", StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        let (got, _, body) = call(&app, get(uri)).await;
        assert_eq!(got, status, "{uri}");
        assert_eq!(error_code(&body), code, "{uri}");
    }
    // A session cursor that no write made: 409 after the read wait (a
    // read index shows it past the master's log), not a stale answer.
    let ahead = Request::get("/v1/kv/app/x?consistency=session")
        .header("x-ourkv-cursor", "1:0:999999")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&app, ahead).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(error_code(&body), "cursor_ahead");
    // Deletes, then the key is gone at every level.
    let del = Request::delete("/v1/kv/app/x?ack=all")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, del).await.0, StatusCode::OK);
    for level in ["strong", "stale"] {
        let (status, _, _) = call(&app, get(&format!("/v1/kv/app/x?consistency={level}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{level}");
    }
}

/// `/livez` and `/readyz` answer Kubernetes-style plain text, without the
/// token; `/readyz` fails (503, naming the check) when the master is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_and_readyz_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = InProcess::start(tmp.path(), 2, 0).await.unwrap();
    let app = Gateway::new(
        nodes.client,
        nodes.maddr,
        nodes.addrs.clone(),
        Some("t0ken".into()),
    )
    .router();
    // The token guards the API but not the probes.
    assert_eq!(call(&app, get("/ready")).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(&app, get("/livez")).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    let (_, _, body) = call(&app, get("/livez?verbose")).await;
    assert_eq!(body, b"[+]ping ok\nlivez check passed\n");
    let (status, _, body) = call(&app, get("/readyz")).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    let (status, _, body) = call(&app, get("/readyz?verbose")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"[+]master ok\nreadyz check passed\n");
    // With ?sync every worker is a check of its own.
    let start = std::time::Instant::now();
    loop {
        let (status, _, body) = call(&app, get("/readyz?sync&verbose")).await;
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(
            text.matches("[+]worker ").count() + text.matches("[-]worker ").count(),
            2
        );
        if status == StatusCode::OK {
            break;
        }
        assert!(text.contains("[-]worker") && text.ends_with("readyz check failed\n"));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A gateway whose master does not answer is not ready.
    let gone = Gateway::new(
        replication::Client::new(&replication::Identity::ephemeral().unwrap()).unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        nodes.addrs,
        None,
    )
    .router();
    let (status, _, body) = call(&gone, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        b"[-]master failed: unreachable\nreadyz check failed\n"
    );
    assert_eq!(call(&gone, get("/livez")).await.0, StatusCode::OK);
}

/// `/metrics` parses with a Prometheus exposition parser, and counts
/// requests by route, method and status class, with latency histograms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_by_route() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = InProcess::start(tmp.path(), 2, 0).await.unwrap();
    let app = Gateway::new(nodes.client, nodes.maddr, nodes.addrs, None).router();
    for i in 0..3 {
        let put = Request::put(format!("/v1/kv/m{i}"))
            .body(Body::from("v"))
            .unwrap();
        assert_eq!(call(&app, put).await.0, StatusCode::OK);
    }
    assert_eq!(call(&app, get("/v1/kv/m0")).await.0, StatusCode::OK);
    assert_eq!(
        call(&app, get("/v1/kv/none")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, get("/no/such/route")).await.0,
        StatusCode::NOT_FOUND
    );
    // Made-up methods share one label: no series without bound.
    for m in ["FROB", "FROB2"] {
        let req = Request::builder()
            .method(m)
            .uri("/v1/kv/m0")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::METHOD_NOT_ALLOWED);
    }

    let (status, headers, body) = call(&app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics"));
    let text = String::from_utf8(body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("exposition parses");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape.samples.iter().find_map(|s| {
            let all = labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
            match (s.metric == name && all, &s.value) {
                (true, prometheus_parse::Value::Counter(v)) => Some(*v),
                (true, prometheus_parse::Value::Gauge(v)) => Some(*v),
                (true, prometheus_parse::Value::Untyped(v)) => Some(*v),
                _ => None,
            }
        })
    };
    let req = "ourkv_http_requests_total";
    let kv = [("route", "/v1/kv/*key")];
    assert_eq!(
        value(req, &[kv[0], ("method", "PUT"), ("status", "2xx")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(req, &[kv[0], ("method", "GET"), ("status", "2xx")]),
        Some(1.0)
    );
    assert_eq!(
        value(req, &[kv[0], ("method", "GET"), ("status", "4xx")]),
        Some(1.0)
    );
    assert_eq!(
        value(req, &[("route", "unmatched"), ("status", "4xx")]),
        Some(1.0)
    );
    assert_eq!(
        value(req, &[kv[0], ("method", "OTHER"), ("status", "4xx")]),
        Some(2.0)
    );
    assert!(!text.contains("FROB"));
    assert_eq!(
        value("ourkv_http_errors_total", &[]),
        Some(1.0),
        "the missing key"
    );
    // A histogram per route and method, with its count.
    let hist = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "ourkv_http_request_duration_seconds"
                && s.labels.get("route") == Some("/v1/kv/*key")
                && s.labels.get("method") == Some("PUT")
        })
        .expect("a latency histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(buckets.len() >= 10);
            assert_eq!(buckets.last().unwrap().count, 3.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // The workers, as the master sees them.
    let in_sync = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ourkv_worker_in_sync")
        .count();
    assert_eq!(in_sync, 2, "{text}");
    let lag_seconds = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ourkv_worker_lag_seconds")
        .count();
    assert_eq!(lag_seconds, 2, "{text}");
    // The master's group commits: the writes above took one at least, each
    // write counted in one.
    for (name, bounds) in [
        ("ourkv_master_commit_duration_seconds", 14),
        ("ourkv_master_commit_writes", 12),
    ] {
        let h = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("{name}: {text}"));
        match &h.value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert_eq!(buckets.len(), bounds + 1, "{name}: {text}");
                assert!(buckets.last().unwrap().count >= 1.0, "{name}: {text}");
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
    let writes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ourkv_master_commit_writes_sum "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("a sum of writes: {text}"));
    assert!(writes >= 3.0, "the three PUTs: {text}");
    // Gauges of what is open (no socket here: the router is called
    // directly), and the process, under the standard unprefixed names.
    assert_eq!(value("ourkv_watches_open", &[]), Some(0.0), "{text}");
    assert_eq!(value("ourkv_http_connections_open", &[]), Some(0.0));
    assert_eq!(value("ourkv_backups_total", &[]), Some(0.0));
    let rss = value("process_resident_memory_bytes", &[]).expect("RSS");
    assert!(rss > 1e6, "{rss}");
    let fds = value("process_open_fds", &[]).expect("open fds");
    let max_fds = value("process_max_fds", &[]).expect("fd limit");
    assert!(fds >= 3.0 && max_fds >= fds, "{fds} of {max_fds}");
    let cpu = value("process_cpu_seconds_total", &[]).expect("CPU time");
    assert!(cpu >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds", &[]).expect("start time");
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
    assert!(
        !text.contains("ourkv_process"),
        "process metrics unprefixed"
    );
}

/// A read that fails while the cluster changes master goes once more, to
/// the nodes as they are now; one that fails with the cluster unchanged
/// does not (the same nodes would answer the same).
#[tokio::test]
async fn a_read_failed_during_a_change_of_master_goes_once_more() {
    use replication::{Code, Cursor, Error};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (old_master, old_worker, new_master, new_worker) = (addr(1), addr(2), addr(3), addr(4));
    let client = replication::Client::new(&replication::Identity::loopback().unwrap()).unwrap();
    let gw = Gateway::new(client, old_master, vec![old_worker], None);
    let asked = Mutex::new(Vec::new());
    let lagging = || Error::Remote {
        code: Code::Lagging,
        message: "followed a master that is gone".into(),
    };
    let remote = |n: SocketAddr, _: Cursor| {
        asked.lock().unwrap().push(n);
        let gw = gw.clone();
        async move {
            if n == new_worker {
                return Ok(7);
            }
            // Discovery finds the new master while the first pass fails.
            gw.routes.set(super::topology::Topology::fixed(
                new_master,
                vec![new_worker],
            ));
            Err(lagging())
        }
    };
    assert_eq!(gw.read(Cursor::default(), remote).await.unwrap(), 7);
    assert_eq!(*asked.lock().unwrap(), [old_worker, old_master, new_worker]);
    assert_eq!(gw.metrics.reads_retried.get(), 1);

    // Nothing changes now: one pass, and its 504.
    asked.lock().unwrap().clear();
    let failing = |n: SocketAddr, _: Cursor| {
        asked.lock().unwrap().push(n);
        async move { Err::<u32, _>(lagging()) }
    };
    let e = gw.read(Cursor::default(), failing).await.unwrap_err();
    assert_eq!(e.into_response().status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(*asked.lock().unwrap(), [new_worker, new_master]);
    assert_eq!(gw.metrics.reads_retried.get(), 1);
}

/// The attempt loop of a read, with nodes faked by the closure: a worker
/// that fails at once hands the read to the next one at once, a worker that
/// never answers is hedged after the budget, and the master is asked only
/// when every worker failed.
#[tokio::test(start_paused = true)]
async fn a_read_moves_on_from_failed_and_silent_workers() {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let identity = replication::Identity::ephemeral().unwrap();
    let client = replication::Client::new(&identity).unwrap();
    let master: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:2".parse().unwrap(),
        "127.0.0.1:3".parse().unwrap(),
    );
    let gw = Gateway::new(client, master, vec![a, b], None);
    #[derive(Clone, Copy)]
    enum Acts {
        Fail,
        Silent,
        Answer,
    }
    // How each node acts, and how often the master was asked.
    let run = |gw: &std::sync::Arc<Gateway>, on_a: Acts, on_b: Acts| {
        let gw = gw.clone();
        async move {
            let asked_master = AtomicUsize::new(0);
            let hedges = gw.metrics.hedges.get();
            let started = tokio::time::Instant::now();
            let r = gw
                .read(replication::Cursor::ZERO, |n, _| {
                    let acts = match n {
                        n if n == a => on_a,
                        n if n == b => on_b,
                        _ => {
                            asked_master.fetch_add(1, Ordering::Relaxed);
                            Acts::Answer
                        }
                    };
                    async move {
                        match acts {
                            Acts::Fail => Err(replication::Error::Quic("refused".into())),
                            Acts::Silent => std::future::pending().await,
                            Acts::Answer => Ok(n),
                        }
                    }
                })
                .await
                .map_err(|e| e.message);
            (
                r,
                asked_master.load(Ordering::Relaxed),
                gw.metrics.hedges.get() - hedges,
                started.elapsed(),
            )
        }
    };
    // Several reads each way: the first worker asked rotates.
    for _ in 0..4 {
        let (r, master_asked, hedges, took) = run(&gw, Acts::Fail, Acts::Answer).await;
        assert_eq!((r, master_asked, hedges), (Ok(b), 0, 0));
        assert_eq!(took, Duration::ZERO, "a failure waits for no timer");

        let (r, master_asked, _, took) = run(&gw, Acts::Silent, Acts::Answer).await;
        assert_eq!((r, master_asked), (Ok(b), 0));
        assert!(took <= Duration::from_millis(500), "{took:?}");

        let (r, master_asked, hedges, _) = run(&gw, Acts::Fail, Acts::Fail).await;
        assert_eq!((r, master_asked, hedges), (Ok(master), 1, 0));
    }
    // The reads above taught this gateway to avoid the first worker. A new
    // one knows nothing yet and starts its first read on the first worker
    // (round robin): silent, so the second is asked after the hedge budget
    // (its floor, 100 ms, with no latency known).
    let fresh = Gateway::new(
        replication::Client::new(&identity).unwrap(),
        master,
        vec![a, b],
        None,
    );
    let (r, master_asked, hedges, took) = run(&fresh, Acts::Silent, Acts::Answer).await;
    assert_eq!((r, master_asked, hedges), (Ok(b), 0, 1));
    assert_eq!(took, Duration::from_millis(100));
}
