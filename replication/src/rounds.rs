//! Read-index rounds for strong reads, shared by concurrent reads: a
//! gateway, or a worker that takes the read index itself for a read whose
//! cursor is [`Cursor::strong`]. Which reads share a round is
//! `proto::read_index`; this drives the rounds.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::cursor::Cursor;
use crate::proto::ReadIndexBatch;

type Waiter = oneshot::Sender<Result<Cursor, String>>;

/// Strong reads waiting for the next read-index round.
#[derive(Default)]
pub struct ReadIndexRounds {
    batch: Arc<Mutex<ReadIndexBatch<Waiter>>>,
}

impl ReadIndexRounds {
    /// The master's commit cursor for a strong read: from a round sent after
    /// this call began (a read never takes an index older than itself).
    /// `asker` makes what sends one round; it is called only when no rounds
    /// run. The rounds run in a task of their own, so a read that goes away
    /// mid-round (its future dropped) never stops them for the reads still
    /// waiting.
    pub async fn index<A, F>(&self, asker: impl FnOnce() -> A) -> Result<Cursor, String>
    where
        A: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<Cursor, String>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let lead = self
            .batch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join(tx);
        if lead {
            let batch = self.batch.clone();
            let mut ask = asker();
            tokio::spawn(async move {
                loop {
                    let Some(waiting) =
                        batch.lock().unwrap_or_else(|e| e.into_inner()).next_round()
                    else {
                        return;
                    };
                    let r = ask().await;
                    for w in waiting {
                        let _ = w.send(r.clone());
                    }
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err("read-index round went away".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Reads that arrive while a round is out share the next one, and every
    /// read gets the answer of a round that started after it.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_reads_share_rounds_sent_after_them() {
        let rounds = Arc::new(ReadIndexRounds::default());
        let sent = Arc::new(AtomicU64::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(0u64);
        let asker = {
            let sent = sent.clone();
            move || {
                let sent = sent.clone();
                let release = release_rx.clone();
                move || {
                    let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut release = release.clone();
                    async move {
                        // Round n answers once the test lets it go.
                        let _ = release.wait_for(|r| *r >= n).await;
                        Ok(Cursor::new(n, ourdb::Location::new(0, n as u32)))
                    }
                }
            }
        };
        let read = || {
            let (rounds, asker) = (rounds.clone(), asker.clone());
            tokio::spawn(async move { rounds.index(asker).await })
        };
        // Lets every spawned task run until it waits.
        let settle = || async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        };
        let first = read();
        settle().await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "the first read sent round 1"
        );
        // Three reads arrive while round 1 is out: they wait for round 2.
        let later: Vec<_> = (0..3).map(|_| read()).collect();
        settle().await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "round 2 waits for round 1");
        release_tx.send_replace(1);
        assert_eq!(first.await.unwrap().unwrap().epoch, 1);
        settle().await;
        release_tx.send_replace(2);
        for r in later {
            assert_eq!(r.await.unwrap().unwrap().epoch, 2, "a round sent after it");
        }
        assert_eq!(sent.load(Ordering::SeqCst), 2, "the three shared one round");
    }
}
