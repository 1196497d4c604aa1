//! Group commit on a thread of its own, awaited by async writers.
//!
//! Writers append in place (under group commit an append is memory work
//! only), wake the syncer and await its next durable sequence number. The
//! syncer flushes and fdatasyncs everything written so far, over and over
//! while writes keep coming, so each fsync covers every write that arrived
//! during the one before. No writer waits for an fsync on a runtime thread,
//! and one fsync wakes its writers through one watch channel. Each group is
//! shipped as one segment, a few packets per group, not per write: in a
//! failover cluster once it is flushed, so the workers write and fsync it
//! while the master fsyncs (the high-water mark keeps what they hold past
//! the master's fsync from being read); outside one once the fsync is done,
//! as there a worker must never hold what a master crash takes back.
//! Checkpoints (every 256 MiB of records) run here too, holding the writer
//! lock for milliseconds; meanwhile the master sends its writes to the
//! blocking pool (`OurDb::is_busy`). A file switch (every 500 MiB) still runs
//! in the write that crosses the file's end.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ourdb::keyed::KeyedStore;
use ourdb::Pending;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How long the syncer sleeps without writes before it checks whether its
/// store is still there.
const IDLE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Durable {
    /// Writes up to this sequence number are durable.
    Upto(u64),
    /// A sync failed: the store is poisoned, nothing after it is durable.
    Failed(String),
}

/// The handle writers use; the thread ends once the handle or its store
/// is dropped (a node that changes roles keeps its store).
pub(crate) struct Syncer {
    thread: std::thread::Thread,
    durable: watch::Receiver<Durable>,
    /// Each group commit's duration and size.
    stats: Arc<crate::stats::CommitRecorder>,
    /// The thread holds a weak reference: gone, the thread ends.
    _alive: Arc<()>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Wakes the thread, which then sees the handle gone.
        self.thread.unpark();
    }
}

impl Syncer {
    /// Starts the thread; `flushed` runs with the end of each group once it
    /// is handed to the OS (before its fsync), `committed` after each group
    /// commit with the end of what is now durable.
    pub(crate) fn start(
        store: &Arc<KeyedStore>,
        flushed: impl Fn(ourdb::Location) + Send + 'static,
        committed: impl Fn(ourdb::Location) + Send + 'static,
    ) -> Syncer {
        let (tx, rx) = watch::channel(Durable::Upto(0));
        let weak = Arc::downgrade(store);
        let alive = Arc::new(());
        let handle_alive = Arc::downgrade(&alive);
        let stats = Arc::new(crate::stats::CommitRecorder::default());
        let recorder = stats.clone();
        let handle = std::thread::Builder::new()
            .name("ourkv-syncer".into())
            .spawn(move || run(weak, handle_alive, tx, &recorder, flushed, committed))
            .expect("spawn the syncer thread");
        Syncer {
            thread: handle.thread().clone(),
            durable: rx,
            stats,
            _alive: alive,
        }
    }

    /// Its group commits so far.
    pub(crate) fn stats(&self) -> crate::stats::CommitStats {
        self.stats.snapshot()
    }

    /// Starts a commit now if the thread is idle (a writer that will wait
    /// soon, but not at once, saves the wake-up then).
    pub(crate) fn nudge(&self) {
        self.thread.unpark();
    }

    /// Waits until `p` is durable.
    pub(crate) async fn wait(&self, p: Pending) -> Result<()> {
        let seq = p.seq();
        let mut rx = self.durable.clone();
        if matches!(&*rx.borrow(), Durable::Upto(s) if *s >= seq) {
            return Ok(());
        }
        // unpark is an atomic store when the thread is awake: cheap per write.
        self.thread.unpark();
        let r = rx
            .wait_for(|d| match d {
                Durable::Upto(s) => *s >= seq,
                Durable::Failed(_) => true,
            })
            .await
            .map(|d| d.clone());
        match r {
            Ok(Durable::Upto(_)) => Ok(()),
            Ok(Durable::Failed(m)) => Err(Error::Poisoned(m)),
            Err(_) => Err(Error::Protocol("the syncer thread is gone".into())),
        }
    }
}

fn run(
    store: Weak<KeyedStore>,
    alive: Weak<()>,
    tx: watch::Sender<Durable>,
    stats: &crate::stats::CommitRecorder,
    flushed: impl Fn(ourdb::Location),
    committed: impl Fn(ourdb::Location),
) {
    let mut synced = 0u64;
    loop {
        if alive.strong_count() == 0 {
            return;
        }
        let Some(store) = store.upgrade() else { return };
        let db = store.db();
        if db.written_seq() <= synced {
            drop(store);
            // An unpark that came before this park makes it return at once.
            std::thread::park_timeout(IDLE);
            continue;
        }
        let started = std::time::Instant::now();
        match db.commit(&flushed) {
            Ok(s) => {
                stats.record(started.elapsed(), s.saturating_sub(synced));
                synced = s;
                committed(db.durable_end());
                tx.send_replace(Durable::Upto(s));
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed: this store takes no more writes");
                tx.send_replace(Durable::Failed(e.to_string()));
                crate::fatal::store_failed(&e.to_string());
                return;
            }
        }
    }
}
