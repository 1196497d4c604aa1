//! `GET /v1/watch`: changes as server-sent events, fanned out.
//!
//! The gateway follows one change stream from a worker (every key, from the
//! moment the first watch came) and hands each change to every watch whose
//! prefix it matches: a thousand watches cost one QUIC stream, not a
//! thousand. A watch that starts from an earlier cursor, or falls behind the
//! shared stream, first catches up with bounded `Changes` calls (a few at a
//! time), then joins the shared stream exactly where its catch-up ended, so
//! nothing is lost or repeated.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use super::*;
use replication::Code;

/// Changes the shared stream buffers for watches that read slowly; one
/// that falls further behind catches up on its own.
const FANOUT: usize = 4096;
/// Records read per catch-up call.
const CATCH_UP_BYTES: u32 = 256 * 1024;
/// A change whose event is larger travels in the shared stream without its
/// data, and a watch it concerns reads it on its own: the shared buffer
/// keeps each change until every watch has read it, so with one watch that
/// never reads it would otherwise hold FANOUT values of up to 16 MiB (86 GB
/// of events) instead of at most 64 MiB.
const SHARED_DATA_MAX: usize = 16 * 1024;
/// Catch-up calls in flight at once (more wait their turn).
const CATCH_UPS: usize = 16;
/// Watches open at once on one gateway, by default (503 past it).
pub(crate) const DEFAULT_MAX_WATCHES: usize = 10_000;
/// How long a watch waits for the shared stream to start (503 after).
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the shared stream hands out.
enum Shared {
    Change {
        cursor: Cursor,
        key: String,
        kind: &'static str,
        data: String,
    },
    /// A change too large to buffer for every watch (`SHARED_DATA_MAX`):
    /// a watch whose prefix it matches reads it from a worker.
    Large { cursor: Cursor, key: String },
    /// The log was replaced (a compaction): every watch ends, and its
    /// cursor is answered 410 on reconnect.
    Gone,
}

struct State {
    tx: broadcast::Sender<Arc<Shared>>,
    /// The cursor after the last change sent on `tx`; `None` until the
    /// shared stream has started (or after the log was replaced).
    last: Option<Cursor>,
}

pub(super) struct Hub {
    max_watches: usize,
    state: Mutex<State>,
    started: std::sync::atomic::AtomicBool,
    watches: Arc<Semaphore>,
    catch_ups: Semaphore,
}

impl Hub {
    /// Watches open now.
    pub(super) fn open(&self) -> usize {
        self.max_watches
            .saturating_sub(self.watches.available_permits())
    }

    pub(super) fn new(max_watches: usize) -> Hub {
        Hub {
            max_watches,
            state: Mutex::new(State {
                tx: broadcast::channel(FANOUT).0,
                last: None,
            }),
            started: Default::default(),
            watches: Arc::new(Semaphore::new(max_watches)),
            catch_ups: Semaphore::new(CATCH_UPS),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of the shared stream and the cursor it continues from
    /// (every change it will carry is after it); `None` before it started.
    fn subscribe(&self) -> Option<(broadcast::Receiver<Arc<Shared>>, Cursor)> {
        let s = self.state();
        s.last.map(|l| (s.tx.subscribe(), l))
    }

    fn publish(&self, change: replication::Change) {
        // Base64 makes four bytes of three; the event is not made at all
        // for a large one.
        let size = change.key.len() + change.value.as_ref().map_or(0, Vec::len) * 4 / 3;
        let ev = Arc::new(if size > SHARED_DATA_MAX {
            Shared::Large {
                cursor: change.cursor,
                key: change.key,
            }
        } else {
            let (kind, data) = event_of(&change);
            Shared::Change {
                cursor: change.cursor,
                key: change.key,
                kind,
                data: data.to_string(),
            }
        });
        let mut s = self.state();
        let _ = s.tx.send(ev);
        s.last = Some(change.cursor);
    }

    fn gone(&self) {
        let mut s = self.state();
        let _ = s.tx.send(Arc::new(Shared::Gone));
        s.last = None;
    }

    /// Starts following the workers, once.
    fn start(self: &Arc<Self>, client: Arc<Client>, topology: TopologyWatch) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.follow(client, topology).await });
    }

    /// The shared stream: from one worker, then the next when it fails (the
    /// workers as the gateway knows them at that moment).
    async fn follow(self: Arc<Self>, client: Arc<Client>, topology: TopologyWatch) {
        let pause = std::time::Duration::from_millis(200);
        for i in 0.. {
            let workers = topology.borrow().workers.clone();
            if workers.is_empty() {
                tokio::time::sleep(pause).await;
                continue;
            }
            let node = workers[i % workers.len()];
            let last = self.state().last;
            let from = match last {
                Some(c) => c,
                // Start where the worker is now: the shared stream is for
                // what happens from here; earlier changes are catch-ups.
                None => match client
                    .changes(node, "", Cursor::ZERO, Cursor::ZERO, 0)
                    .await
                {
                    Ok((_, _, applied)) => applied,
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "watch stream: no start");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                },
            };
            let mut w = match client.watch(node, "", from).await {
                Ok(w) => w,
                Err(replication::Error::Remote {
                    code: Code::Gone, ..
                }) => {
                    self.gone();
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%node, error = %e, "watch stream: not accepted");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            {
                let mut s = self.state();
                if s.last.is_none() {
                    s.last = Some(from);
                }
            }
            tracing::debug!(%node, %from, "watch stream: following");
            loop {
                match w.next().await {
                    Ok(Some(c)) => self.publish(c),
                    Ok(None) => break,
                    Err(replication::Error::Remote {
                        code: Code::Gone, ..
                    }) => {
                        self.gone();
                        break;
                    }
                    Err(e) => {
                        tracing::info!(%node, error = %e, "watch stream broke; following another worker");
                        tokio::time::sleep(pause).await;
                        break;
                    }
                }
            }
        }
    }
}

/// One call catching a watch up: from the first worker that answers.
/// A worker's word on the cursor (gone, not a boundary, not reached) holds
/// for every worker and is returned at once.
async fn catch_up(
    gw: &Gateway,
    prefix: &str,
    from: Cursor,
    until: Cursor,
) -> Result<(Vec<replication::Change>, Cursor), replication::Error> {
    let _turn = gw.hub.catch_ups.acquire().await.expect("never closed");
    let workers = gw.topology().workers.clone();
    let n = workers.len();
    let start = gw.next.fetch_add(1, Ordering::Relaxed);
    let mut last = replication::Error::Protocol("no worker to watch from".into());
    for i in 0..n {
        let node = workers[(start + i) % n];
        match gw
            .client
            .changes(node, prefix, from, until, CATCH_UP_BYTES)
            .await
        {
            Ok((changes, next, _)) => return Ok((changes, next)),
            Err(e @ replication::Error::Remote { .. }) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One HTTP watch: catching up (`at < until`), then on the shared stream.
struct Follower {
    gw: Arc<Gateway>,
    prefix: String,
    rx: broadcast::Receiver<Arc<Shared>>,
    /// Everything up to here was handed out (or did not match).
    at: Cursor,
    /// Where the shared stream continues from.
    until: Cursor,
    pending: VecDeque<replication::Change>,
    failures: u32,
    _permit: OwnedSemaphorePermit,
}

type Event = axum::response::sse::Event;
/// The gateway's current master and workers, as they change.
type TopologyWatch = tokio::sync::watch::Receiver<Arc<topology::Topology>>;

fn event(cursor: Cursor, kind: &str, data: &str) -> Event {
    Event::default()
        .id(cursor_text(cursor))
        .event(kind)
        .data(data)
}

impl Follower {
    fn take(&mut self, changes: Vec<replication::Change>, next: Cursor) {
        self.pending
            .extend(changes.into_iter().filter(|c| c.cursor > self.at));
        self.at = self.at.max(next);
    }

    /// The next event; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                let (kind, data) = event_of(&c);
                return Some(event(c.cursor, kind, &data.to_string()));
            }
            if self.at < self.until {
                match catch_up(&self.gw, &self.prefix, self.at, self.until).await {
                    Ok((changes, next)) => {
                        self.failures = 0;
                        self.take(changes, next);
                    }
                    Err(replication::Error::Remote {
                        code: Code::Gone, ..
                    }) => return None,
                    Err(e) => {
                        // Workers down for long: end, and let the client
                        // reconnect with Last-Event-ID.
                        self.failures += 1;
                        if self.failures > 20 {
                            tracing::info!(error = %e, "watch: cannot catch up; ended");
                            return None;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) => match &*ev {
                    Shared::Change {
                        cursor,
                        key,
                        kind,
                        data,
                    } if *cursor > self.at => {
                        self.at = *cursor;
                        if key.starts_with(&self.prefix) {
                            return Some(event(*cursor, kind, data));
                        }
                    }
                    Shared::Change { .. } => {}
                    Shared::Large { cursor, key } if *cursor > self.at => {
                        if key.starts_with(&self.prefix) {
                            // Read from the log, up to and with it.
                            self.until = self.until.max(*cursor);
                        } else {
                            self.at = *cursor;
                        }
                    }
                    Shared::Large { .. } => {}
                    Shared::Gone => return None,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the shared buffer: catch up from here.
                    tracing::debug!(at = %self.at, "watch fell behind the shared stream; catching up");
                    match self.gw.hub.subscribe() {
                        Some((rx, until)) => {
                            self.rx = rx;
                            self.until = until;
                        }
                        None => return None,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Server-sent events for changes under `prefix` from `cursor` (or the
/// `Last-Event-ID` a reconnecting client sends): each event's id is the
/// cursor to resume after it, so a reconnect loses and repeats nothing.
/// Watch keys with a prefix
///
/// Server-sent events (`put`, `delete`), from `cursor` or `Last-Event-ID`;
/// each event's id is the cursor to resume after it.
#[utoipa::path(get, path = "/v1/watch", tag = "kv",
    params(api::WatchQuery, api::LastEventId),
    responses(
        api::Common,
        (status = 200, description = "The events", content_type = "text/event-stream", body = String),
        (status = 400, response = api::BadRequest),
        (status = 409, response = api::CursorAhead),
        (status = 410, response = api::Gone),
        (status = 504, response = api::GatewayTimeout),
    ))]
pub(super) async fn watch(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    use axum::response::sse::{KeepAlive, Sse};
    let r = async {
        let q = query(&q)?;
        let prefix = prefix_of(&q)?;
        // Both are checked when both come: a malformed one is an error
        // whichever would have been used. A reconnect's Last-Event-ID wins.
        let bad = |what: &str| ApiError::bad_request(format!("{what} must be epoch:file:offset"));
        let given = q
            .get("cursor")?
            .map(|c| parse_cursor(c).ok_or_else(|| bad("cursor")))
            .transpose()?;
        let mut last_ids = headers.get_all("last-event-id").iter();
        let last_id = last_ids
            .next()
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(parse_cursor)
                    .ok_or_else(|| bad("Last-Event-ID"))
            })
            .transpose()?;
        if last_ids.next().is_some() {
            return Err(ApiError::bad_request(
                "Last-Event-ID is given more than once",
            ));
        }
        let cursor = last_id.or(given).unwrap_or(Cursor::ZERO);
        let permit = gw.hub.watches.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable("too many watches open on this gateway; retry shortly")
        })?;
        if gw.topology().workers.is_empty() {
            return Err(ApiError::unavailable("no worker to watch from"));
        }
        gw.hub.start(gw.client.clone(), gw.routes.subscribe());
        let mut shared = gw.hub.subscribe();
        let waited = std::time::Instant::now();
        while shared.is_none() && waited.elapsed() < START_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            shared = gw.hub.subscribe();
        }
        let Some((rx, until)) = shared else {
            return Err(ApiError::unavailable(
                "no worker to watch from; retry shortly",
            ));
        };
        // A later epoch than the log's is no cursor of this log (yet): no
        // change would ever come after it, so it is refused, not followed.
        if cursor.epoch > until.epoch {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "cursor_ahead",
                format!(
                    "cursor {cursor} is past the end of the log (its epoch is {})",
                    until.epoch
                ),
            ));
        }
        // The first call also checks the cursor, so a bad one is an error
        // status before any event, not an empty stream.
        let (changes, next) = catch_up(&gw, &prefix, cursor, until.max(cursor))
            .await
            .map_err(|e| match e {
                replication::Error::Remote {
                    code: Code::Gone,
                    message,
                } => ApiError::new(StatusCode::GONE, "gone", message),
                replication::Error::Remote {
                    code: Code::Cursor,
                    message,
                } => ApiError::bad_request(message),
                e @ replication::Error::Remote { .. } => ApiError::from_replication(e),
                e => {
                    tracing::warn!(error = %e, "watch: no worker answered");
                    ApiError::unavailable("no worker to watch from; retry shortly")
                }
            })?;
        let mut follower = Follower {
            gw: gw.clone(),
            prefix,
            rx,
            at: cursor,
            until,
            pending: VecDeque::new(),
            failures: 0,
            _permit: permit,
        };
        follower.take(changes, next);
        let events = futures_util::stream::unfold(follower, |mut f| async move {
            f.next()
                .await
                .map(|ev| (Ok::<_, std::convert::Infallible>(ev), f))
        });
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    }
    .await;
    counted(&gw, r)
}

/// A change as a server-sent event's name and data: `put` with the value,
/// `delete`, or `expire` (its time to live ran out).
fn event_of(c: &replication::Change) -> (&'static str, serde_json::Value) {
    let b64 = base64::engine::general_purpose::STANDARD;
    match &c.value {
        Some(v) => ("put", json!({"key": c.key, "value": b64.encode(v)})),
        None if c.expired => ("expire", json!({"key": c.key})),
        None => ("delete", json!({"key": c.key})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u64, key: &str, len: usize) -> replication::Change {
        replication::Change {
            cursor: Cursor::new(1, ourdb::Location::new(0, n as u32)),
            key: key.into(),
            value: Some(vec![b'x'; len]),
            expired: false,
        }
    }

    /// The shared buffer keeps what no watch has read yet: a large value
    /// goes into it without its data (a watch reads it itself).
    #[test]
    fn the_shared_stream_carries_large_values_without_their_data() {
        let hub = Hub::new(1);
        let mut rx = hub.state().tx.subscribe();
        hub.publish(change(10, "k/small", 100));
        hub.publish(change(20, "k/big", 1 << 20));
        hub.publish(change(30, "k/edge", SHARED_DATA_MAX * 3 / 4 - 6));
        match &*rx.try_recv().unwrap() {
            Shared::Change { key, data, .. } => {
                assert_eq!(key, "k/small");
                assert!(data.len() > 100, "the event's data is there");
            }
            _ => panic!("a small change travels whole"),
        }
        match &*rx.try_recv().unwrap() {
            Shared::Large { key, cursor } => {
                assert_eq!((key.as_str(), cursor.at.position), ("k/big", 20));
            }
            _ => panic!("a large change travels without its data"),
        }
        match &*rx.try_recv().unwrap() {
            Shared::Change { data, .. } => assert!(data.len() <= SHARED_DATA_MAX + 64),
            _ => panic!("a change just under the limit travels whole"),
        }
        assert_eq!(hub.state().last.map(|c| c.at.position), Some(30));
    }
}
