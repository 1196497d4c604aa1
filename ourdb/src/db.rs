//! `OurDb`: one database directory, opened for reading by many threads and
//! writing by one at a time.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use crate::config::{Config, SyncPolicy};
use crate::datafile::{self, DataFile};
use crate::error::{Error, IoContext, Result};
use crate::location::Location;
use crate::lookup::{self, LookupTable};
use crate::meta::{Meta, Origin};
use crate::record::{Header, HEADER_LEN, MAX_VALUE_LEN};
use crate::scan::{self, RebuildReport, Rebuilder};
use crate::storage::Storage;
use crate::wal::{self, WalEntry, WalHeader};

mod checkpoint;
mod group;
mod log;
mod open;
mod read;
mod recovery;
mod truncate;
mod vcompat;
mod writer;
pub use log::{Digest, LogRecord, SnapshotChunk, SnapshotPos};
pub use truncate::Truncated;

/// The lock file in every directory an ourkv process opens (`flock`).
pub const LOCK_FILE: &str = "ourkv.lock";
/// Writes are buffered up to this size before they are handed to the OS.
const WRITE_BUFFER: usize = 1 << 20;

/// How to open a directory.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The configuration for a new or V directory. A directory created by ourkv
    /// uses the configuration in its metadata; a given one must agree with it.
    pub config: Option<Config>,
    /// When writes are made durable.
    pub sync: SyncPolicy,
    /// Open without a writer (a shared lock; nothing is changed).
    pub read_only: bool,
    /// Create the directory if it does not exist.
    pub create: bool,
    /// Take a checkpoint (write the lookup dump, start a new journal) after this
    /// many bytes of records: bounds the work recovery redoes on open.
    pub checkpoint_bytes: u64,
    /// Marks a new directory as holding V data (compaction and restore of a V
    /// directory): `record_size_max` is then not enforced, as V never did.
    pub origin: Option<Origin>,
    /// Every record written names its own id (`keyed::KeyedStore`'s
    /// envelopes): group commit then fdatasyncs only the data files, not the
    /// journal, as open can redo any record after the journal's last entry
    /// (through `record_ids`).
    /// One fsync per group instead of two.
    pub envelope_journal: bool,
    /// Where the directory's bytes go: the plain file system, or in tests a
    /// [`crate::storage::faults::FaultyStorage`].
    pub storage: Arc<dyn Storage>,
    /// Reads a record's id from its value, for a journal whose records carry
    /// their ids (`envelope_journal`): the layer above knows the value format,
    /// the db does not. Needed only when such records follow the journal.
    pub record_ids: Option<Arc<dyn RecordIds>>,
}

/// What a value says about itself, for redoing records the journal missed.
pub trait RecordIds: Send + Sync + std::fmt::Debug {
    /// The id the record sets and whether it deletes it; an error text when
    /// the value is not of the expected format.
    fn record_ids(&self, value: &[u8]) -> std::result::Result<(u32, bool), String>;
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            config: None,
            sync: SyncPolicy::default(),
            read_only: false,
            create: true,
            checkpoint_bytes: 256 << 20,
            origin: None,
            envelope_journal: false,
            storage: crate::storage::real(),
            record_ids: None,
        }
    }
}

impl OpenOptions {
    /// The defaults: create if missing, group commit, 256 MiB between checkpoints.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`OpenOptions::config`].
    pub fn config(mut self, c: Config) -> Self {
        self.config = Some(c);
        self
    }
    /// Sets [`OpenOptions::sync`].
    pub fn sync(mut self, s: SyncPolicy) -> Self {
        self.sync = s;
        self
    }
    /// Sets [`OpenOptions::read_only`].
    pub fn read_only(mut self, r: bool) -> Self {
        self.read_only = r;
        self
    }
    /// Sets [`OpenOptions::create`].
    pub fn create(mut self, c: bool) -> Self {
        self.create = c;
        self
    }
    /// Sets [`OpenOptions::checkpoint_bytes`].
    pub fn checkpoint_bytes(mut self, b: u64) -> Self {
        self.checkpoint_bytes = b;
        self
    }
    /// Sets [`OpenOptions::origin`].
    pub fn origin(mut self, o: Origin) -> Self {
        self.origin = Some(o);
        self
    }
    /// Sets [`OpenOptions::envelope_journal`].
    pub fn envelope_journal(mut self, e: bool) -> Self {
        self.envelope_journal = e;
        self
    }
    /// Sets [`OpenOptions::record_ids`].
    pub fn record_ids(mut self, r: Arc<dyn RecordIds>) -> Self {
        self.record_ids = Some(r);
        self
    }
    /// Sets [`OpenOptions::storage`].
    pub fn storage(mut self, s: Arc<dyn Storage>) -> Self {
        self.storage = s;
        self
    }
    /// Opens (or creates) `dir`, recovering from a crash if needed.
    pub fn open(self, dir: impl AsRef<Path>) -> Result<OurDb> {
        OurDb::open_with(dir.as_ref(), self)
    }
}

/// What open found and did, for logs and `db info`.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Journal entries redone on top of the last checkpoint.
    pub redone: u64,
    /// Bytes of torn data cut from the end of the last data file.
    pub torn_data_bytes: u64,
    /// Bytes of torn journal cut.
    pub torn_journal_bytes: u64,
    /// Records found past a stale V dump and rolled forward.
    pub rolled_forward: Option<RebuildReport>,
    /// Records past the journal's end redone from their envelopes (a
    /// journal that group commit does not sync, see `envelope_journal`).
    pub redone_from_envelopes: u64,
    /// True for a V directory seen for the first time.
    pub adopted_v_directory: bool,
    /// A truncation (`OurDb::truncate_to`) that a crash cut short, finished
    /// here: where the data now ends.
    pub finished_truncation: Option<Location>,
}

struct Writer {
    active: Arc<DataFile>,
    /// Logical end of the active file, buffered bytes included.
    end: u64,
    /// Bytes not yet handed to the OS; they belong at `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// Shared so that a group-commit leader can fsync it outside the lock.
    wal: Arc<wal::Journal>,
    wal_buf: Vec<u8>,
    next_id: u32,
    /// Count of writes accepted; group commit waits on it.
    seq: u64,
    dirty: BTreeSet<u16>,
    bytes_since_checkpoint: u64,
    poisoned: bool,
}

#[derive(Default)]
struct GroupState {
    synced_seq: u64,
    /// The end of the data as of `synced_seq`: everything before is durable.
    synced_end: Location,
    leader: bool,
    failed: bool,
}

/// One open OurDB directory. `Send + Sync`: share it behind an `Arc`.
pub struct OurDb {
    dir: PathBuf,
    io: Arc<dyn Storage>,
    meta: Meta,
    keysize: u8,
    sync: SyncPolicy,
    read_only: bool,
    checkpoint_bytes: u64,
    envelope_journal: bool,
    /// Reads ids from records (`OpenOptions::record_ids`): `truncate_to`
    /// undoes records by the ids they name.
    record_ids: Option<Arc<dyn RecordIds>>,
    /// Lookup entries of keysize < 6 lose the file number or high position bits
    /// in directories V wrote past what they address; reads then try each candidate.
    loose_addressing: bool,
    /// With loose addressing: where records start in each data file, from
    /// one walk per file, so a candidate inside another record's value,
    /// which can parse as a record too, is no candidate.
    record_starts: Mutex<std::collections::HashMap<u16, Arc<scan::Framing>>>,
    lookup: LookupTable,
    files: RwLock<Vec<Option<Arc<DataFile>>>>,
    writer: Option<Mutex<Writer>>,
    group: Mutex<GroupState>,
    group_cv: Condvar,
    report: OpenReport,
    _lock: Option<File>,
    closed: std::sync::atomic::AtomicBool,
    /// Set while a checkpoint or a file switch holds the writer lock.
    busy: std::sync::atomic::AtomicBool,
    /// The next id and the end of the data as found at open (a read-only
    /// handle has no writer).
    ro_next_id: u32,
    ro_end: Location,
}

/// A write appended but, under group commit, not yet known durable.
#[must_use = "wait on it to make the write durable"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pending(u64);

impl Pending {
    /// The write's sequence number: it is durable once `commit` (or `wait`)
    /// returned a number at least this high.
    pub fn seq(self) -> u64 {
        self.0
    }
}

/// Whole records read for shipping: they start at `start`; the next read
/// continues at `next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where the first record starts.
    pub start: Location,
    /// Whole raw records, as on disk.
    pub bytes: Vec<u8>,
    /// Where the record after the last one starts (the next read's start).
    pub next: Location,
}

const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn lock_dir(dir: &Path, exclusive: bool) -> Result<Option<File>> {
    let path = dir.join(LOCK_FILE);
    let file = if exclusive {
        FsOpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("create {}", path.display()))?
    } else {
        // A read-only open of a read-only directory (a fixture, a mounted
        // backup) cannot create the lock file; nothing can write there anyway.
        match File::open(&path) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        }
    };
    // A lock can be held for a moment after its holder is gone (a process
    // exiting, a forked child that has not yet exec'd): wait briefly.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let r = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match r {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).ctx(|| format!("lock {}", path.display()))
            }
        }
    }
}

impl OurDb {
    /// The directory this handle serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory's configuration (keysize resolved).
    pub fn config(&self) -> &Config {
        &self.meta.config
    }

    /// The keysize of the lookup entries (2, 3, 4 or 6).
    pub fn keysize(&self) -> u8 {
        self.keysize
    }

    /// The directory's `ourkv.meta`.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// What open found and repaired.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Whether this handle takes no writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The sync policy the handle was opened with.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.sync
    }

    /// Bytes held by the in-memory lookup table.
    pub fn lookup_memory_bytes(&self) -> usize {
        self.lookup.memory_bytes()
    }

    fn check_range(&self, id: u32) -> Result<()> {
        let max = self.meta.config.record_nr_max;
        if id >= max {
            return Err(Error::IdOutOfRange { id, max });
        }
        Ok(())
    }

    /// Whether writes would be taken: `ReadOnly` for a read-only handle,
    /// `Poisoned` once a write or fsync failed. Layers that answer some writes
    /// from their own state (a key that is not there, a precondition) check
    /// this first, so that a failed handle never answers as if it were healthy.
    pub fn check_writable(&self) -> Result<()> {
        self.writer().map(|_| ())
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let m = self.writer.as_ref().ok_or(Error::ReadOnly)?;
        let w = m.lock().unwrap_or_else(|e| e.into_inner());
        if w.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(w)
    }

    // ---- writes ----
}

impl Drop for OurDb {
    fn drop(&mut self) {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Some(m) = &self.writer {
            let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
            if !w.poisoned {
                // A drop without close keeps everything written (the journal
                // replays it); the checkpoint is close's job.
                if let Err(e) = self.flush_locked(&mut w) {
                    tracing::error!(dir = %self.dir.display(), error = %e, "flush on drop failed");
                }
            }
        }
    }
}
