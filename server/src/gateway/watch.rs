//! `GET /v1/watch`: changes as server-sent events.

use super::*;

/// Server-sent events for changes under `prefix` from `cursor` (or the
/// `Last-Event-ID` a reconnecting client sends): each event's id is the
/// cursor to resume after it, so a reconnect loses and repeats nothing.
pub(super) async fn watch(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let r = async {
        let q = query(&q)?;
        let prefix = q.get("prefix")?.unwrap_or_default().to_string();
        let from = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(q.get("cursor")?.map(str::to_string));
        let cursor = match from {
            Some(c) => parse_cursor(&c)
                .ok_or_else(|| ApiError::bad_request("cursor must be epoch:file:offset"))?,
            None => Cursor::ZERO,
        };
        let mut last = None;
        let mut stream = None;
        let n = gw.workers.len();
        let start = gw.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match gw
                .client
                .watch(gw.workers[(start + i) % n], &prefix, cursor)
                .await
            {
                Ok(w) => {
                    stream = Some(w);
                    break;
                }
                // The worker's word on the cursor itself holds for every worker.
                Err(replication::Error::Remote { code, message }) if code == "gone" => {
                    return Err(ApiError::new(StatusCode::GONE, "gone", message));
                }
                Err(replication::Error::Remote { code, message }) if code == "cursor" => {
                    return Err(ApiError::bad_request(message));
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(w) = stream else {
            return Err(match last {
                Some(e @ replication::Error::Remote { .. }) => ApiError::from_replication(e),
                Some(e) => {
                    tracing::warn!(error = %e, "watch: no worker answered");
                    ApiError::unavailable("no worker to watch from; retry shortly")
                }
                None => ApiError::unavailable("no worker to watch from"),
            });
        };
        let events = futures_util::stream::unfold(w, |mut w| async move {
            let b64 = base64::engine::general_purpose::STANDARD;
            match w.next().await {
                Ok(Some(c)) => {
                    let (kind, data) = match &c.value {
                        Some(v) => ("put", json!({"key": c.key, "value": b64.encode(v)})),
                        None => ("delete", json!({"key": c.key})),
                    };
                    let ev = Event::default()
                        .id(cursor_text(c.cursor))
                        .event(kind)
                        .data(data.to_string());
                    Some((Ok::<_, std::convert::Infallible>(ev), w))
                }
                _ => None,
            }
        });
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    }
    .await;
    counted(&gw, r)
}
