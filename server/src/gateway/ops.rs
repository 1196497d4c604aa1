//! Operations: readiness, metrics, the cluster view and the status page.

use super::*;

/// The master's status, from whichever node is master now.
pub(super) async fn master_status(
    gw: &Gateway,
) -> Result<(SocketAddr, Cursor, Vec<replication::frame::WorkerStatus>), replication::Error> {
    let (m, s) = master_status_full(gw).await?;
    Ok((m, s.cursor, s.workers))
}

/// How long an operations request (`/v1/cluster`, `/ready`, `/metrics`)
/// waits for the master's status: while there is no master it answers
/// without it (503, or no master figures) rather than late.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The master's whole status, its group commits too.
pub(super) async fn master_status_full(
    gw: &Gateway,
) -> Result<(SocketAddr, replication::msg::status::StatusIs), replication::Error> {
    let ask = gw.routes.on_master(
        true,
        |m| async move { Ok((m, gw.client.status_full(m).await?)) },
    );
    tokio::time::timeout(STATUS_WAIT, ask)
        .await
        .unwrap_or_else(|_| {
            Err(replication::Error::Timeout(format!(
                "no master answered within {STATUS_WAIT:?}"
            )))
        })
}

pub(super) async fn cluster_json(gw: &Gateway) -> Result<serde_json::Value, ApiError> {
    let status = master_status(gw).await;
    // A failover cluster also shows its term and members, from the
    // members' metadata: with no master too, when they matter most.
    let failover = gw.topology().cluster.as_ref().map(|c| {
        let members: Vec<_> = c
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id.to_string(),
                    "addr": m.addr,
                    "voter": m.voter,
                    "in_sync": m.in_sync,
                    "master": Some(m.id) == c.master,
                })
            })
            .collect();
        (json!(c.term), members)
    });
    let (master, cursor, workers) = match status {
        Ok(s) => s,
        Err(e) => {
            // Where it looked: with no metadata yet (every node named
            // is down) that is all there is to show.
            let asked: Vec<_> = gw.routes.known().iter().map(|a| a.to_string()).collect();
            let mut err = master_unreachable(e).with("asked", json!(asked));
            if let Some((term, mut members)) = failover {
                // The metadata still names its master: say that it did not
                // answer, so a dead node does not read as a working master.
                for m in members.iter_mut().filter(|m| m["master"] == true) {
                    m["answered"] = json!(false);
                }
                err = err.with("term", term).with("members", json!(members));
            }
            return Err(err);
        }
    };
    let workers: Vec<_> = workers
        .iter()
        .map(|w| {
            json!({
                "addr": w.addr,
                "acked": cursor_text(w.acked),
                "in_sync": w.in_sync,
                "lag_ms": w.lag_ms,
            })
        })
        .collect();
    let mut out = json!({
        "master": {"addr": master.to_string(), "cursor": cursor_text(cursor)},
        "workers": workers,
    });
    if let Some((term, members)) = failover {
        out["term"] = term;
        out["members"] = json!(members);
    }
    Ok(out)
}

/// The master, the workers, their cursors, lag and in-sync state
///
/// Failover clusters also show the term and every member.
#[utoipa::path(get, path = "/v1/cluster", tag = "ops",
    responses(
        api::Common,
        (status = 200, description = "The cluster", body = api::Cluster),
    ))]
pub(super) async fn cluster(State(gw): Gw) -> Response {
    let r = cluster_json(&gw).await.map(Json);
    counted(&gw, r)
}

/// The master answers; with `?sync`, every worker has caught up
#[utoipa::path(get, path = "/ready", tag = "ops",
    params(api::ReadyQuery),
    responses(
        api::Common,
        (status = 200, description = "Ready", body = api::Ready),
        (status = 400, response = api::BadRequest),
    ))]
pub(super) async fn ready(State(gw): Gw, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let (_, cursor, workers) = master_status(&gw).await.map_err(master_unreachable)?;
        // ?sync: every worker this gateway uses has caught up with the master.
        if q.bytes("sync")?.is_some() {
            for w in &gw.topology().workers {
                let caught_up = workers
                    .iter()
                    .any(|s| s.addr == w.to_string() && s.in_sync && s.acked >= cursor);
                if !caught_up {
                    return Err(ApiError::unavailable(format!(
                        "worker {w} is not caught up"
                    )));
                }
            }
        }
        Ok(Json(json!({"ready": true})))
    }
    .await;
    counted(&gw, r)
}

/// Kubernetes-style liveness: the gateway answers
///
/// Plain text, no token needed; `?verbose` lists the check.
#[utoipa::path(get, path = "/livez", tag = "ops", security(()),
    params(api::VerboseQuery),
    responses(
        (status = 200, description = "Live", content_type = "text/plain", body = String),
        (status = 431, response = api::HeadersTooLarge),
        (status = 503, response = api::Unavailable),
    ))]
pub(super) async fn livez(q: RawQuery) -> Response {
    let verbose = query(&q).is_ok_and(|q| q.bytes("verbose").ok().flatten().is_some());
    let body = if verbose {
        "[+]ping ok\nlivez check passed\n"
    } else {
        "ok"
    };
    (StatusCode::OK, body).into_response()
}

/// Kubernetes-style readiness
///
/// Plain text, no token needed: the master answers (and with `?sync`, every
/// worker has caught up). `?verbose` lists each check, `[+]` passed or `[-]`
/// failed with why; 503 when one failed.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    params(api::ReadyQuery, api::VerboseQuery),
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String),
        (status = 400, description = "A malformed query", content_type = "text/plain", body = String),
        (status = 431, response = api::HeadersTooLarge),
        (status = 503, description = "Not ready: the failed checks, one per line", content_type = "text/plain", body = String),
    ))]
pub(super) async fn readyz(State(gw): Gw, q: RawQuery) -> Response {
    let Ok(q) = query(&q) else {
        return (StatusCode::BAD_REQUEST, "bad query\n").into_response();
    };
    let verbose = q.bytes("verbose").ok().flatten().is_some();
    let sync = q.bytes("sync").ok().flatten().is_some();
    let mut checks: Vec<(String, Result<(), String>)> = Vec::new();
    match master_status(&gw).await {
        Ok((_, cursor, workers)) => {
            checks.push(("master".into(), Ok(())));
            if sync {
                for w in &gw.topology().workers {
                    let caught_up = workers
                        .iter()
                        .any(|s| s.addr == w.to_string() && s.in_sync && s.acked >= cursor);
                    let r = if caught_up {
                        Ok(())
                    } else {
                        Err("not caught up".to_string())
                    };
                    checks.push((format!("worker {w}"), r));
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "readyz: master unreachable");
            checks.push(("master".into(), Err("unreachable".into())));
        }
    }
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let mut body = String::new();
    if verbose || !ok {
        for (name, r) in &checks {
            match r {
                Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                Err(why) => body.push_str(&format!("[-]{name} failed: {why}\n")),
            }
        }
        body.push_str(if ok {
            "readyz check passed\n"
        } else {
            "readyz check failed\n"
        });
    } else {
        body.push_str("ok");
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        api::Common,
        (status = 200, description = "The OpenMetrics text format",
            content_type = "application/openmetrics-text", body = String),
    ))]
pub(super) async fn metrics(State(gw): Gw) -> Response {
    let m = &gw.metrics;
    // The workers as the master sees them now; none when it does not answer.
    m.watches_open
        .set(i64::try_from(gw.hub.open()).unwrap_or(i64::MAX));
    m.worker_in_sync.clear();
    m.worker_lag_bytes.clear();
    m.worker_lag_seconds.clear();
    m.members.clear();
    let topology = gw.topology();
    m.master_term.set(
        topology
            .cluster
            .as_ref()
            .map_or(0, |c| i64::try_from(c.term).unwrap_or(i64::MAX)),
    );
    if let Some(c) = &topology.cluster {
        for r in &c.members {
            let role = if Some(r.id) == c.master {
                "master"
            } else if r.in_sync {
                "in_sync"
            } else {
                "out_of_sync"
            };
            let labels = super::metrics::MemberLabels {
                id: r.id.to_string(),
                addr: r.addr.clone(),
                role: role.into(),
                voter: r.voter.to_string(),
            };
            m.members.get_or_create(&labels).set(1);
        }
    }
    if let Ok((_, status)) = master_status_full(&gw).await {
        let (cursor, workers) = (status.cursor, status.workers);
        let c = &status.commits;
        m.commit_seconds.set(
            &replication::stats::COMMIT_SECONDS,
            &c.duration_counts,
            c.duration_sum_us as f64 / 1e6,
        );
        m.commit_writes.set(
            &replication::stats::GROUP_WRITES,
            &c.size_counts,
            c.size_sum as f64,
        );
        for w in &workers {
            let labels = super::metrics::WorkerLabels {
                worker: w.addr.clone(),
            };
            m.worker_in_sync
                .get_or_create(&labels)
                .set(i64::from(w.in_sync));
            m.worker_lag_seconds
                .get_or_create(&labels)
                .set(w.lag_ms as f64 / 1000.0);
            // A worker in another file or epoch has no sample (rather than
            // a bogus one).
            if let Some(lag) = super::live::lag_bytes(cursor, w.acked) {
                m.worker_lag_bytes
                    .get_or_create(&labels)
                    .set(i64::from(lag));
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// `GET /`: the live status page, plain HTML, CSS and JS (no build step, no
/// outside requests). It holds no data: its script reads `/v1/cluster`,
/// `/v1/stats` and `/v1/kv` with the token, so it is served without one.
/// The status page (HTML; its script sends the token it is given)
#[utoipa::path(get, path = "/", tag = "ops", security(()),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 431, response = api::HeadersTooLarge),
        (status = 503, response = api::Unavailable),
    ))]
pub(super) async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

/// `GET /v1/backup`: an online backup, a consistent copy of the master's
/// data files as the snapshot frames of the replication protocol
/// (PROTOCOL.md, API.md): `SnapshotChunk`s, then `SnapshotDone`. The copy is
/// cut at the master's high-water mark once that covers the read index taken
/// first, so it holds every write acknowledged before the request; writes
/// go on meanwhile. Only a
/// final `SnapshotDone` (or a `Failed` frame) says how it ended: the status
/// is sent before the copy.
/// Online backup
///
/// The master's data files up to its high-water mark, as snapshot frames
/// (docs/PROTOCOL.md). A Failed frame or an early end: not whole.
#[utoipa::path(get, path = "/v1/backup", tag = "ops",
    responses(
        api::Common,
        (status = 200, description = "SnapshotChunk frames, then SnapshotDone",
            content_type = "application/vnd.ourkv.snapshot", body = api::Binary),
    ))]
pub(super) async fn backup(State(gw): Gw) -> Response {
    let r = async {
        // Everything committed before the request: the copy must reach it.
        let committed = gw.read_index().await.map_err(|e| {
            tracing::warn!(error = %e, "backup: no read index");
            ApiError::unavailable("no master answered; retry shortly")
        })?;
        let (snapshot, first) = gw
            .routes
            .on_master(true, |m| {
                let client = gw.client.clone();
                async move {
                    // A read on the master at that cursor returns once its
                    // high-water mark, where the copy is cut, covers it
                    // (right after a failover the new master's mark starts
                    // from nothing). The key need not exist.
                    client.get(m, BACKUP_PROBE, committed).await?;
                    let mut s = client.snapshot(m).await?;
                    // A node that is no master refuses at once: the
                    // request then goes to the new one.
                    let first = s.next().await?;
                    Ok((s, first))
                }
            })
            .await
            .map_err(master_unreachable)?;
        gw.metrics.backups.inc();
        tracing::info!("backup started");
        // A task relays the parts; a few chunks in flight bound its memory,
        // and a client that goes away ends it (and the master's stream).
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(relay_backup(snapshot, first, committed, tx));
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
        });
        Ok((
            [(header::CONTENT_TYPE, BACKUP_TYPE)],
            axum::body::Body::from_stream(frames),
        ))
    }
    .await;
    counted(&gw, r)
}

async fn relay_backup(
    mut snapshot: replication::Snapshot,
    mut part: Option<replication::msg::snapshot::Part>,
    committed: Cursor,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    use replication::msg::snapshot::Part;
    // Ended without `Done` (the master went away): the body ends short of
    // it, and the reader knows the copy is not whole.
    while let Some(p) = part {
        if let Part::Done(d) = &p {
            let end = Cursor::new(d.epoch, d.end);
            if end < committed {
                // Only if the master changed between the read and the copy.
                tracing::warn!(%end, %committed, "backup short of the read index");
                let failed = replication::msg::Failed::new(
                    replication::Code::NotReached,
                    format!(
                        "the copy ends at {end}, before {committed}, committed when the backup began \
                         (the master changed meanwhile?); retry"
                    ),
                );
                let _ = tx.send(Bytes::from(Frame::from(failed).encode())).await;
                return;
            }
        }
        let done = matches!(p, Part::Done(_));
        if tx.send(Bytes::from(Frame::from(p).encode())).await.is_err() {
            tracing::info!("backup client went away");
            return;
        }
        if done {
            tracing::info!("backup sent");
            return;
        }
        part = match snapshot.next().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "backup cut short");
                let failed = replication::msg::Failed::new(
                    replication::Code::ReadFailed,
                    format!("the backup was cut short: {e}"),
                );
                let _ = tx.send(Bytes::from(Frame::from(failed).encode())).await;
                return;
            }
        };
    }
}

/// The key a backup reads on the master to wait for its high-water mark.
const BACKUP_PROBE: &str = "\u{0}ourkv-backup";

/// The media type of a backup stream.
pub(crate) const BACKUP_TYPE: &str = "application/vnd.ourkv.snapshot";
