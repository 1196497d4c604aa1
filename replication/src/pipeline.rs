//! Pipelined requests: many calls on one QUIC stream.
//!
//! A stream per request costs a stream open, its flow-control credit and
//! usually a packet each way per call. On a pipelined stream the client
//! sends `Tagged` requests back to back and the node answers each with a
//! `Tagged` reply of the same id, in whatever order they finish. Both sides
//! gather what is queued into one write, so under load many calls share a
//! packet. See docs/PROTOCOL.md.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::frame::{Frame, FrameReader};

/// Frames gathered into one write, at most this many bytes (then the rest
/// goes in the next write).
const BATCH_BYTES: usize = 256 << 10;

/// A node that answers one request with one reply.
pub(crate) trait Answer: Send + Sync + 'static {
    fn answer(self: Arc<Self>, req: Frame) -> impl Future<Output = Frame> + Send + 'static;
}

/// Answers a request that came alone on its stream, and ends the stream.
pub(crate) async fn serve_one<N: Answer>(
    node: Arc<N>,
    mut send: quinn::SendStream,
    req: Frame,
) -> Result<()> {
    let reply = node.answer(req).await;
    crate::frame::write(&mut send, &reply).await?;
    let _ = send.finish();
    Ok(())
}

/// Serves a pipelined stream until the client ends it.
pub(crate) async fn serve<N: Answer>(
    node: Arc<N>,
    mut send: quinn::SendStream,
    mut frames: FrameReader,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Frame)>();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = rx.recv().await {
            // One turn of the scheduler lets the answers being computed
            // right now join this write (fewer, fuller packets under load).
            tokio::task::yield_now().await;
            buf.clear();
            tagged(first, &mut buf);
            while buf.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(next) => tagged(next, &mut buf),
                    Err(_) => break,
                }
            }
            if let Err(e) = send.write_all(&buf).await {
                return Err(Error::Quic(format!("send: {e}")));
            }
            release_large(&mut buf);
        }
        let _ = send.finish();
        Ok(())
    });
    let result = async {
        while let Some(f) = frames.next().await? {
            let Frame::Tagged { id, frame } = f else {
                return Err(Error::Protocol(format!(
                    "a pipelined stream carries tagged frames, not {f:?}"
                )));
            };
            // Most requests (a get of what is applied, a read-index) finish
            // at the first poll: answered in place, no task spawned.
            let mut fut = Box::pin(node.clone().answer(*frame));
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(reply) => {
                    let _ = tx.send((id, reply));
                }
                Poll::Pending => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send((id, fut.await));
                    });
                }
            }
        }
        Ok(())
    }
    .await;
    // The writer ends once every spawned answer has been sent.
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::Protocol(format!("pipeline writer failed: {e}")))?;
    result.and(written)
}

/// Frees a write buffer that a large frame (a value of megabytes) grew: an
/// idle stream keeps no more than a batch.
fn release_large(buf: &mut Vec<u8>) {
    if buf.capacity() > 2 * BATCH_BYTES {
        *buf = Vec::new();
    }
}

fn tagged((id, frame): (u32, Frame), out: &mut Vec<u8>) {
    let start = out.len();
    Frame::Tagged {
        id,
        frame: Box::new(frame),
    }
    .encode_into(out);
    // A reply the other side would refuse (past the frame limit) ends only
    // that call, with a reason, not the whole stream.
    if out.len() - start - 4 > crate::frame::MAX_FRAME {
        out.truncate(start);
        Frame::Tagged {
            id,
            frame: Box::new(Frame::Failed {
                code: crate::error::Code::BadRequest,
                message: "the answer is past the 17 MiB frame limit".into(),
            }),
        }
        .encode_into(out);
    }
}

type Reply = oneshot::Sender<Result<Frame>>;

/// Calls waiting for their replies, by id; `closed` once the stream failed,
/// so that no call waits on it any more.
#[derive(Default)]
struct InFlight {
    calls: HashMap<u32, Reply>,
    closed: Option<String>,
}

impl InFlight {
    fn close(&mut self, why: String) {
        // Booked calls were written, or about to be: the node may have
        // acted on them, which a write's caller must be told.
        for (_, r) in self.calls.drain() {
            let _ = r.send(Err(Error::Unanswered(why.clone())));
        }
        self.closed = Some(why);
    }
}

/// Books a call under a fresh id and encodes it into `buf`, or fails it at
/// once if the stream is closed.
fn enqueue(
    book: &Mutex<InFlight>,
    next_id: &mut u32,
    buf: &mut Vec<u8>,
    (frame, reply): (Frame, Reply),
) {
    let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = &book.closed {
        let _ = reply.send(Err(Error::Quic(why.clone())));
        return;
    }
    *next_id = next_id.wrapping_add(1);
    book.calls.insert(*next_id, reply);
    drop(book);
    tagged((*next_id, frame), buf);
}

/// The client end of a pipelined stream to one node.
pub(crate) struct Pipe {
    queue: mpsc::UnboundedSender<(Frame, Reply)>,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Pipe {
    /// Opens a pipelined stream on `conn`.
    pub(crate) async fn open(conn: &quinn::Connection, addr: SocketAddr) -> Result<Pipe> {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Quic(e.to_string()))?;
        crate::frame::write(&mut send, &Frame::Pipeline).await?;
        let (queue, mut rx) = mpsc::unbounded_channel::<(Frame, Reply)>();
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let book = in_flight.clone();
        tokio::spawn(async move {
            let mut next_id = 0u32;
            let mut buf = Vec::new();
            while let Some(first) = rx.recv().await {
                // One turn of the scheduler lets the calls being made right
                // now join this write (fewer, fuller packets under load).
                tokio::task::yield_now().await;
                buf.clear();
                enqueue(&book, &mut next_id, &mut buf, first);
                while buf.len() < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(next) => enqueue(&book, &mut next_id, &mut buf, next),
                        Err(_) => break,
                    }
                }
                if buf.is_empty() {
                    continue;
                }
                if let Err(e) = send.write_all(&buf).await {
                    let why = format!("pipeline to {addr}: send: {e}");
                    book.lock().unwrap_or_else(|e| e.into_inner()).close(why);
                    return;
                }
                release_large(&mut buf);
            }
            // Every handle is gone: no more calls on this stream.
            let _ = send.finish();
        });
        let book = in_flight.clone();
        tokio::spawn(async move {
            let mut frames = FrameReader::new(recv);
            let why = loop {
                match frames.next().await {
                    Ok(Some(Frame::Tagged { id, frame })) => {
                        let reply = book
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .calls
                            .remove(&id);
                        if let Some(r) = reply {
                            let _ = r.send(Ok(*frame));
                        }
                    }
                    Ok(Some(other)) => break format!("pipeline to {addr}: unexpected {other:?}"),
                    Ok(None) => break format!("pipeline to {addr} ended"),
                    Err(e) => break format!("pipeline to {addr}: {e}"),
                }
            };
            book.lock().unwrap_or_else(|e| e.into_inner()).close(why);
        });
        Ok(Pipe { queue, in_flight })
    }

    /// False once the stream failed: open another.
    pub(crate) fn is_open(&self) -> bool {
        !self.queue.is_closed()
            && self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .closed
                .is_none()
    }

    /// Sends `request` and waits for its reply.
    pub(crate) async fn call(&self, request: Frame) -> Result<Frame> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((request, tx))
            .map_err(|_| Error::Quic("the pipeline is closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(Error::Quic("the pipeline is closed".into())))
    }
}
