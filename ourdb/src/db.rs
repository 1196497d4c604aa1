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

mod log;
pub use log::{Digest, LogRecord, SnapshotChunk, SnapshotPos};

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
    /// Opens (or creates) `dir` with default options and `config`.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<OurDb> {
        OpenOptions::new().config(config).open(dir)
    }

    fn open_with(dir: &Path, opts: OpenOptions) -> Result<OurDb> {
        if !dir.is_dir() {
            if opts.create && !opts.read_only {
                fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
            } else {
                return Err(Error::Io {
                    context: format!("open {}", dir.display()),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                });
            }
        }
        let lock = lock_dir(dir, !opts.read_only)?;
        let io = opts.storage.clone();
        let io: &dyn Storage = &*io;
        let stored = Meta::load(dir)?;
        let file_nrs = datafile::list(dir)?;
        let has_dump = dir.join(lookup::DUMP_DIR).join(lookup::DUMP_DATA).is_file();
        let meta = match stored {
            Some(mut m) => {
                if let Some(c) = &opts.config {
                    let ks = c.keysize()?;
                    if ks != m.keysize || c.incremental != m.config.incremental {
                        return Err(Error::Config(format!(
                            "{} was created with keysize {} and incremental={}; the given configuration has keysize {ks} and incremental={}",
                            dir.display(), m.keysize, m.config.incremental, c.incremental
                        )));
                    }
                    // An ourkv directory's record limit may be raised (never
                    // lowered): every record already stored is smaller.
                    let raise = c.record_size_max.min(MAX_VALUE_LEN as u32);
                    if m.origin == Origin::Ourkv
                        && raise > m.config.record_size_max
                        && !opts.read_only
                    {
                        m.config.record_size_max = raise;
                        m.store_with(io, dir)?;
                    }
                }
                m
            }
            None => {
                let config = opts.config.clone().unwrap_or_default();
                config.validate()?;
                let keysize = config.keysize()?;
                let origin = if file_nrs.is_empty() && !has_dump {
                    opts.origin.unwrap_or(Origin::Ourkv)
                } else {
                    Origin::V
                };
                Meta {
                    keysize,
                    config: Config {
                        keysize: Some(keysize),
                        ..config
                    },
                    origin,
                    epoch: 1,
                }
            }
        };
        let keysize = meta.keysize;
        let writable = !opts.read_only;

        let mut files: Vec<Option<Arc<DataFile>>> = Vec::new();
        for &nr in &file_nrs {
            if files.len() <= nr as usize {
                files.resize(nr as usize + 1, None);
            }
            let f = DataFile::open(io, dir, nr, writable)?;
            if writable && f.len()? == 0 {
                // A file switch cut short before the leading zero byte.
                f.write_at(0, &[0])?;
                f.sync_data()?;
            }
            files[nr as usize] = Some(Arc::new(f));
        }
        let lookup = LookupTable::new(meta.config.record_nr_max);
        let mut report = OpenReport::default();
        let journal = wal::read(dir)?;
        let incremental = meta.config.incremental;

        // Establish the lookup, the next id and the end of valid data.
        let mut next_id: u32 = 1;
        let mut cut_journal_to: Option<usize> = None;
        // Journal entries for records redone from envelopes, appended (and
        // synced) at open so that a later recovery starts after them.
        let mut redo_entries: Vec<WalEntry> = Vec::new();
        let data_end: Location;
        if let Some(j) = &journal {
            if j.header.has_dump {
                let dump = lookup::read_dump(dir, keysize)?.ok_or_else(|| Error::Corrupt {
                    path: dir.join(lookup::DUMP_DIR),
                    detail: "the journal names a checkpoint dump that is missing".into(),
                })?;
                load_entries(&lookup, &dump.entries, dir)?;
                next_id = next_id.max(dump.next_id.unwrap_or(1));
            }
            next_id = next_id.max(j.header.next_id);
            data_end = scan_tail(&files, j.header.checkpoint, dir)?;
            let mut applied = 0usize;
            let mut last_set = None;
            for e in &j.entries {
                match *e {
                    WalEntry::Set { id, loc } => {
                        // An entry whose record did not reach the disk was never
                        // acknowledged under a sync policy: it and all after it go.
                        if loc >= j.header.checkpoint && loc >= data_end {
                            break;
                        }
                        if id >= meta.config.record_nr_max {
                            return Err(Error::Corrupt {
                                path: dir.join(wal::WAL_FILE),
                                detail: format!("entry for id {id} beyond record_nr_max"),
                            });
                        }
                        lookup.set(id, loc);
                        if incremental {
                            next_id = next_id.max(id.saturating_add(1));
                        }
                        if loc >= j.header.checkpoint {
                            last_set = Some(loc);
                        }
                    }
                    WalEntry::Delete { id } => {
                        if id < meta.config.record_nr_max {
                            lookup.set(id, Location::NONE);
                        }
                    }
                }
                applied += 1;
            }
            report.redone = applied as u64;
            if applied < j.entries.len() || j.torn_bytes > 0 {
                report.torn_journal_bytes =
                    j.torn_bytes + ((j.entries.len() - applied) * wal::ENTRY_LEN) as u64;
                cut_journal_to = Some(applied);
            }
            if j.header.envelopes {
                // Durable records the journal did not get to: redo them
                // from their envelopes, from the last entry's record on.
                let from = last_set.unwrap_or(j.header.checkpoint);
                for (id, loc, deletes) in
                    records_between(&files, from, data_end, dir, opts.record_ids.as_deref())?
                {
                    if last_set == Some(loc) {
                        continue;
                    }
                    if id >= meta.config.record_nr_max {
                        return Err(Error::Corrupt {
                            path: datafile::data_path(dir, loc.file_nr),
                            detail: format!(
                                "the record at {loc} names id {id}, beyond record_nr_max"
                            ),
                        });
                    }
                    lookup.set(id, loc);
                    redo_entries.push(WalEntry::Set { id, loc });
                    if deletes {
                        lookup.set(id, Location::NONE);
                        redo_entries.push(WalEntry::Delete { id });
                    }
                    if incremental {
                        next_id = next_id.max(id.saturating_add(1));
                    }
                    report.redone_from_envelopes += 1;
                }
            }
        } else {
            // No journal: a V directory (or one ourkv never wrote to).
            report.adopted_v_directory = meta.origin == Origin::V;
            data_end = match file_nrs.last() {
                Some(&nr) => Location::new(nr, files[nr as usize].as_ref().unwrap().len()? as u32),
                None => Location::NONE,
            };
            match lookup::read_dump(dir, keysize)? {
                Some(dump) => {
                    check_v_dump(&files, &dump.entries, keysize, dir)?;
                    load_entries(&lookup, &dump.entries, dir)?;
                    next_id = match dump.next_id {
                        Some(n) => n.max(1),
                        None => dump
                            .entries
                            .iter()
                            .map(|e| e.0.saturating_add(1))
                            .max()
                            .unwrap_or(1),
                    };
                    // V's dump is only as new as its last close(): records written
                    // after it are rolled forward where the data decides their ids.
                    if let Some(boundary) = dump_boundary(&files, &dump.entries, keysize)? {
                        if boundary < data_end {
                            // Zero runs past the boundary are records deleted
                            // before the dump was written (V writes it at close,
                            // and a delete's zeros reach the disk only then or at
                            // a file switch): everything up to the last of them
                            // predates the dump, old versions of deleted ids
                            // included, and only what follows is rolled forward.
                            // So no deleted id comes back and no id is invented.
                            let mut from = boundary;
                            let lens = file_lens(files.iter().flatten())?;
                            for (f, start) in files_from(&files, boundary) {
                                let place = scan::Place {
                                    file_nr: f.nr,
                                    base: 0,
                                    lens: &lens,
                                    keysize,
                                };
                                scan::walk(place, &f.read_all()?, start, |pos, piece| {
                                    if let scan::Piece::ZeroRun(run) = piece {
                                        from = Location::new(f.nr, (pos + run) as u32);
                                    }
                                });
                            }
                            let mut rb = Rebuilder::new(&lookup, incremental, next_id);
                            for (f, start) in files_from(&files, from) {
                                rb.scan_file(f.nr, keysize, &lens, &f.read_all()?, start);
                            }
                            if incremental {
                                next_id = rb.next_id;
                            }
                            if rb.report.records > 0 || !rb.report.is_certain() {
                                tracing::warn!(dir = %dir.display(), report = ?rb.report, "rolled a stale V lookup dump forward");
                                report.rolled_forward = Some(rb.report);
                            }
                        }
                    }
                }
                None => {
                    let has_records = files
                        .iter()
                        .flatten()
                        .map(|f| f.len())
                        .collect::<Result<Vec<_>>>()?
                        .into_iter()
                        .any(|len| len > 1);
                    if has_records {
                        return Err(Error::LookupMissing(dir.to_path_buf()));
                    }
                }
            }
        }

        let loose_addressing = keysize < 6 && {
            let limit = 1u64 << (8 * keysize as u32);
            let mut loose = files.iter().flatten().count() > 1;
            for f in files.iter().flatten() {
                loose |= f.len()? > limit;
            }
            loose
        };

        let mut db_writer = None;
        if writable {
            // Cut torn tails (never anything before them: reopening never truncates).
            if let Some(nr) = file_nrs.last() {
                let f = files[*nr as usize].as_ref().unwrap();
                let len = f.len()?;
                if data_end.file_nr == *nr && (data_end.position as u64) < len {
                    report.torn_data_bytes = len - data_end.position as u64;
                    tracing::warn!(file = %f.path().display(), bytes = report.torn_data_bytes, "cutting torn tail");
                    f.truncate(data_end.position as u64)?;
                    if data_end.position == 1 {
                        // A file torn at creation: restore V's leading zero byte.
                        f.write_at(0, &[0])?;
                        f.sync_data()?;
                    }
                }
            }
            if let Some(n) = cut_journal_to {
                wal::truncate_to(io, dir, n)?;
            }
            let active = match file_nrs.last() {
                Some(&nr) => files[nr as usize].clone().unwrap(),
                None => {
                    let f = Arc::new(DataFile::create(io, dir, 0)?);
                    crate::fsutil::sync_dir(io, dir)?;
                    files.push(Some(f.clone()));
                    f
                }
            };
            let end = active.len()?;
            let wal_file = if journal.is_some() {
                let f = wal::open_append(io, dir)?;
                if !redo_entries.is_empty() {
                    let bytes: Vec<u8> = redo_entries.iter().flat_map(|e| e.encode()).collect();
                    let path = dir.join(wal::WAL_FILE);
                    f.append(&bytes)
                        .ctx(|| format!("append to {}", path.display()))?;
                    f.sync_data().ctx(|| format!("fsync {}", path.display()))?;
                }
                f
            } else {
                meta.store_with(io, dir)?;
                // Adopting a V directory: checkpoint at once so that the state just
                // derived (dump, rolled-forward records) is durable before any write.
                if meta.origin == Origin::V {
                    lookup::write_dump(io, dir, &lookup, keysize, incremental.then_some(next_id))?;
                }
                wal::create(
                    io,
                    dir,
                    WalHeader {
                        checkpoint: Location::new(active.nr, end as u32),
                        next_id,
                        has_dump: meta.origin == Origin::V,
                        envelopes: opts.envelope_journal,
                    },
                )?
            };
            db_writer = Some(Mutex::new(Writer {
                active,
                end,
                buf: Vec::with_capacity(WRITE_BUFFER + MAX_VALUE_LEN + HEADER_LEN),
                buf_start: end,
                wal: Arc::new(wal_file),
                wal_buf: Vec::with_capacity(64 << 10),
                next_id,
                seq: 0,
                dirty: BTreeSet::new(),
                bytes_since_checkpoint: 0,
                poisoned: false,
            }));
        }
        for f in files.iter().flatten() {
            f.map_exact(f.len()?)?;
        }
        let ro_end = match files.iter().flatten().last() {
            Some(f) => Location::new(f.nr, f.len()? as u32),
            None => Location::NONE,
        };
        if report.redone > 0 || report.torn_data_bytes > 0 {
            tracing::info!(dir = %dir.display(), redone = report.redone, torn = report.torn_data_bytes, "recovered");
        }
        // What open found (recovered, or written before) counts as durable.
        let open_end = match &db_writer {
            Some(m) => {
                let w = m.lock().unwrap_or_else(|e| e.into_inner());
                Location::new(w.active.nr, w.end as u32)
            }
            None => ro_end,
        };
        let db = OurDb {
            dir: dir.to_path_buf(),
            io: opts.storage.clone(),
            meta,
            keysize,
            sync: opts.sync,
            read_only: opts.read_only,
            checkpoint_bytes: opts.checkpoint_bytes,
            envelope_journal: opts.envelope_journal,
            loose_addressing,
            record_starts: Mutex::default(),
            lookup,
            files: RwLock::new(files),
            writer: db_writer,
            group: Mutex::new(GroupState {
                synced_end: open_end,
                ..GroupState::default()
            }),
            group_cv: Condvar::new(),
            report,
            _lock: lock,
            closed: std::sync::atomic::AtomicBool::new(false),
            busy: std::sync::atomic::AtomicBool::new(false),
            ro_next_id: next_id,
            ro_end,
        };
        Ok(db)
    }

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

    /// Writes `value`: a new id when `id` is `None` (incremental mode), else a
    /// new version of `id`. Returns the id.
    pub fn set(&self, id: Option<u32>, value: &[u8]) -> Result<u32> {
        let (id, pending) = self.set_pending(id, value)?;
        self.wait(pending)?;
        Ok(id)
    }

    /// `set` without waiting for group commit: the write is appended (and
    /// visible), and `wait` makes it durable. Lets callers that serialise
    /// writes under their own lock wait outside it, so writers share fsyncs.
    pub fn set_pending(&self, id: Option<u32>, value: &[u8]) -> Result<(u32, Pending)> {
        self.check_value(value)?;
        let mut w = self.writer()?;
        let id = match (id, self.meta.config.incremental) {
            (None, true) => {
                if w.next_id >= self.meta.config.record_nr_max {
                    return Err(Error::TableFull(self.meta.config.record_nr_max));
                }
                w.next_id
            }
            (None, false) => return Err(Error::IdRequired),
            (Some(id), true) => {
                self.check_range(id)?;
                if id == 0 || self.lookup.get(id).is_none() {
                    return Err(Error::IdNotIssued(id));
                }
                id
            }
            (Some(id), false) => {
                self.check_range(id)?;
                id
            }
        };
        let seq = self.append_locked(&mut w, id, value)?;
        self.finish_write(w)?;
        Ok((id, Pending(seq)))
    }

    /// Waits until a pending write is durable under the sync policy (only
    /// group commit defers anything).
    pub fn wait(&self, p: Pending) -> Result<()> {
        if self.sync == SyncPolicy::Group {
            self.group_sync(p.0)?;
        }
        Ok(())
    }

    /// Appends a new record for id (incremental mode).
    pub fn insert(&self, value: &[u8]) -> Result<u32> {
        self.set(None, value)
    }

    /// Writes a version of `id` whatever the mode, raising the next id past it:
    /// `restore` and `compact` use it to keep ids.
    pub fn import(&self, id: u32, value: &[u8]) -> Result<()> {
        self.check_value(value)?;
        self.check_range(id)?;
        let mut w = self.writer()?;
        let seq = self.append_locked(&mut w, id, value)?;
        self.finish_write(w)?;
        self.wait(Pending(seq))
    }

    /// Never hand out ids below `next_id` again (restore and compact keep the
    /// counter of the source even when its highest ids were deleted).
    pub fn reserve_ids_below(&self, next_id: u32) -> Result<()> {
        let mut w = self.writer()?;
        if next_id > w.next_id {
            w.next_id = next_id.min(self.meta.config.record_nr_max);
            // Persisted by the next checkpoint; force one so a crash cannot lose it.
            self.checkpoint_locked(&mut w)?;
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_LEN,
            });
        }
        // V never enforced record_size_max, and its directories hold larger
        // values; ourkv enforces it for directories it created.
        let max = self.meta.config.record_size_max as usize;
        if self.meta.origin == Origin::Ourkv && value.len() > max {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// Deletes `id`. Records are never rewritten: the lookup entry is cleared (and
    /// journaled); the bytes go at the next compaction.
    pub fn delete(&self, id: u32) -> Result<()> {
        let p = self.delete_pending(id)?;
        self.wait(p)
    }

    /// `delete` without waiting for group commit (see `set_pending`).
    pub fn delete_pending(&self, id: u32) -> Result<Pending> {
        self.check_range(id)?;
        let mut w = self.writer()?;
        if self.lookup.get(id).is_none() {
            return Err(Error::NotFound(id));
        }
        w.wal_buf
            .extend_from_slice(&WalEntry::Delete { id }.encode());
        self.lookup.set(id, Location::NONE);
        w.seq += 1;
        let seq = w.seq;
        self.finish_write(w)?;
        Ok(Pending(seq))
    }

    /// Appends one record under the writer lock; returns its sequence number.
    fn append_locked(&self, w: &mut Writer, id: u32, value: &[u8]) -> Result<u64> {
        let rec_len = (HEADER_LEN + value.len()) as u64;
        // Switch files as V does (before the write, once the file reached
        // file_size); only keysize 6 can address more than one file.
        if self.keysize == 6
            && (w.end >= self.meta.config.file_size as u64 || w.end + rec_len > u32::MAX as u64)
        {
            self.roll_locked(w)?;
        }
        let loc = Location::new(w.active.nr, w.end.min(u32::MAX as u64) as u32);
        if w.end + rec_len > u32::MAX as u64 || !loc.fits(self.keysize) {
            return Err(Error::AddressSpaceFull {
                keysize: self.keysize,
                location: loc,
            });
        }
        let prev = self.lookup.get(id);
        let prev = if self.loose_addressing && !prev.is_none() {
            // Resolve what the short entry really points at, so history follows.
            self.resolve(id, prev).unwrap_or(Location::NONE)
        } else {
            prev
        };
        crate::record::encode_record(value, prev, &mut w.buf);
        w.end += rec_len;
        w.wal_buf
            .extend_from_slice(&WalEntry::Set { id, loc }.encode());
        self.lookup.set(id, loc);
        if self.meta.config.incremental && id >= w.next_id {
            w.next_id = id + 1;
        }
        w.seq += 1;
        w.bytes_since_checkpoint += rec_len;
        Ok(w.seq)
    }

    /// Closes the active file and starts the next one.
    fn roll_locked(&self, w: &mut Writer) -> Result<()> {
        self.busy_with(|| self.roll_inner(w))
    }

    fn roll_inner(&self, w: &mut Writer) -> Result<()> {
        self.flush_locked(w)?;
        let nr = w.active.nr.checked_add(1).ok_or(Error::AddressSpaceFull {
            keysize: self.keysize,
            location: Location::new(w.active.nr, w.end as u32),
        })?;
        // The old file must be complete on disk before records go elsewhere:
        // recovery only ever cuts the tail of the last file.
        w.active.sync_data().inspect_err(|_| w.poisoned = true)?;
        w.dirty.remove(&w.active.nr);
        let f = Arc::new(
            DataFile::create(&*self.io, &self.dir, nr).inspect_err(|_| w.poisoned = true)?,
        );
        crate::fsutil::sync_dir(&*self.io, &self.dir).inspect_err(|_| w.poisoned = true)?;
        {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            if files.len() <= nr as usize {
                files.resize(nr as usize + 1, None);
            }
            files[nr as usize] = Some(f.clone());
        }
        w.active = f;
        w.end = 1;
        w.buf_start = 1;
        Ok(())
    }

    /// Hands buffered records and journal entries to the OS (data first: a
    /// journal entry must never name bytes that are not written).
    fn flush_locked(&self, w: &mut Writer) -> Result<()> {
        if !w.buf.is_empty() {
            if let Err(e) = w.active.write_at(w.buf_start, &w.buf) {
                w.poisoned = true;
                return Err(e);
            }
            w.buf_start += w.buf.len() as u64;
            w.buf.clear();
            let nr = w.active.nr;
            w.dirty.insert(nr);
        }
        if !w.wal_buf.is_empty() {
            let Writer { wal, wal_buf, .. } = &mut *w;
            if let Err(e) = wal.append(wal_buf) {
                w.poisoned = true;
                return Err(Error::Io {
                    context: format!("append to {}", self.dir.join(wal::WAL_FILE).display()),
                    source: e,
                });
            }
            w.wal_buf.clear();
        }
        w.active.ensure_mapped(w.buf_start)?;
        Ok(())
    }

    /// fdatasyncs dirty data files, then the journal.
    fn sync_locked(&self, w: &mut Writer) -> Result<()> {
        self.flush_locked(w)?;
        let files = self.files.read().unwrap_or_else(|e| e.into_inner()).clone();
        for nr in std::mem::take(&mut w.dirty) {
            if let Some(Some(f)) = files.get(nr as usize) {
                f.sync_data().inspect_err(|_| w.poisoned = true)?;
            }
        }
        w.wal
            .sync_data()
            .ctx(|| format!("fsync {}", self.dir.join(wal::WAL_FILE).display()))
            .inspect_err(|_| w.poisoned = true)
    }

    /// Applies the sync policy after a write, then checkpoints if due.
    fn finish_write(&self, mut w: MutexGuard<'_, Writer>) -> Result<()> {
        match self.sync {
            SyncPolicy::Never => {
                if w.buf.len() >= WRITE_BUFFER || w.wal_buf.len() >= WRITE_BUFFER / 8 {
                    self.flush_locked(&mut w)?;
                }
            }
            SyncPolicy::Flush => self.flush_locked(&mut w)?,
            SyncPolicy::Always => self.sync_locked(&mut w)?,
            // The group-commit leader flushes the whole group at once: one
            // write(2) per group instead of one per record.
            SyncPolicy::Group => {
                if w.buf.len() >= WRITE_BUFFER || w.wal_buf.len() >= WRITE_BUFFER / 8 {
                    self.flush_locked(&mut w)?;
                }
            }
        }
        // Under group commit the leader checkpoints (`lead_group`): the
        // write that crosses the mark may run on an async thread.
        if self.sync != SyncPolicy::Group && w.bytes_since_checkpoint >= self.checkpoint_bytes {
            self.checkpoint_locked(&mut w)?;
        }
        Ok(())
    }

    /// Whether a checkpoint or a file switch holds the writer lock now (for
    /// milliseconds): a caller on an async thread can send its write to a
    /// blocking thread instead of waiting there.
    pub fn is_busy(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` (a checkpoint, a file switch) with `busy` set.
    fn busy_with<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.busy.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = f();
        self.busy.store(false, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Group commit: one writer (the leader) fdatasyncs for everyone whose
    /// write was flushed before the sync began; the others wait for it.
    fn group_sync(&self, seq: u64) -> Result<()> {
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.synced_seq >= seq {
                return Ok(());
            }
            if g.failed {
                return Err(Error::Poisoned);
            }
            if !g.leader {
                break;
            }
            g = self.group_cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.leader = true;
        drop(g);
        self.lead_group(|| ()).map(|_| ())
    }

    /// One group commit: flushes every write so far, calls `flushed` (the
    /// group is now readable by `read_records`, so it can be shipped while
    /// it syncs), then fdatasyncs it (after any group commit already
    /// running). Returns the sequence number now durable. A syncer thread
    /// can call this in a loop, so that writers never block on the fsync.
    pub fn commit(&self, flushed: impl FnOnce()) -> Result<u64> {
        {
            let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
            while g.leader {
                g = self.group_cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.failed {
                return Err(Error::Poisoned);
            }
            g.leader = true;
        }
        self.lead_group(flushed)
    }

    /// The sequence number of the last write accepted (durable or not).
    pub fn written_seq(&self) -> u64 {
        match &self.writer {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).seq,
            None => 0,
        }
    }

    /// The leader's part of a group commit (`group.leader` is set).
    fn lead_group(&self, flushed: impl FnOnce()) -> Result<u64> {
        // Everything flushed up to `target` is covered by this sync. The fsyncs
        // run outside the writer lock, so the next group gathers meanwhile.
        let plan = self.writer().and_then(|mut w| {
            if w.bytes_since_checkpoint >= self.checkpoint_bytes {
                self.busy_with(|| self.checkpoint_locked(&mut w))?;
            }
            self.flush_locked(&mut w)?;
            let files = self.files.read().unwrap_or_else(|e| e.into_inner());
            let dirty: Vec<Arc<DataFile>> = std::mem::take(&mut w.dirty)
                .into_iter()
                .filter_map(|nr| files.get(nr as usize).cloned().flatten())
                .collect();
            Ok((
                w.seq,
                Location::new(w.active.nr, w.end as u32),
                dirty,
                w.wal.clone(),
            ))
        });
        if plan.is_ok() {
            flushed();
        }
        let result = plan.and_then(|(target, end, dirty, wal)| {
            for f in dirty {
                f.sync_data()?;
            }
            // With envelopes the journal may lag: open redoes from the data.
            if !self.envelope_journal {
                wal.sync_data()
                    .ctx(|| format!("fsync {}", self.dir.join(wal::WAL_FILE).display()))?;
            }
            Ok((target, end))
        });
        if result.is_err() {
            if let Some(m) = &self.writer {
                m.lock().unwrap_or_else(|e| e.into_inner()).poisoned = true;
            }
        }
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        g.leader = false;
        let out = match result {
            Ok((target, end)) => {
                if target >= g.synced_seq {
                    g.synced_seq = target;
                    g.synced_end = g.synced_end.max(end);
                }
                Ok(g.synced_seq)
            }
            Err(e) => {
                g.failed = true;
                Err(e)
            }
        };
        self.group_cv.notify_all();
        out
    }

    /// Makes the current state the recovery starting point: data and journal
    /// synced, lookup dump (V's format) written, fresh journal.
    fn checkpoint_locked(&self, w: &mut Writer) -> Result<()> {
        self.sync_locked(w)?;
        let incremental = self.meta.config.incremental;
        let r = lookup::write_dump(
            &*self.io,
            &self.dir,
            &self.lookup,
            self.keysize,
            incremental.then_some(w.next_id),
        )
        .and_then(|_| {
            wal::create(
                &*self.io,
                &self.dir,
                WalHeader {
                    checkpoint: Location::new(w.active.nr, w.end as u32),
                    next_id: w.next_id,
                    has_dump: true,
                    envelopes: self.envelope_journal,
                },
            )
        });
        match r {
            Ok(f) => {
                w.wal = Arc::new(f);
                w.bytes_since_checkpoint = 0;
                Ok(())
            }
            Err(e) => {
                w.poisoned = true;
                Err(e)
            }
        }
    }

    /// Hands buffered writes to the OS.
    pub fn flush(&self) -> Result<()> {
        let mut w = self.writer()?;
        self.flush_locked(&mut w)
    }

    /// Makes every write so far durable (fdatasync).
    pub fn sync(&self) -> Result<()> {
        let mut w = self.writer()?;
        self.sync_locked(&mut w)
    }

    /// Writes the checkpoint now (V-readable dump and `.inc`).
    pub fn checkpoint(&self) -> Result<()> {
        let mut w = self.writer()?;
        self.checkpoint_locked(&mut w)
    }

    /// Checkpoints and releases the directory. After close the directory is a
    /// valid V directory.
    pub fn close(self) -> Result<()> {
        let r = match &self.writer {
            Some(_) => self.checkpoint(),
            None => Ok(()),
        };
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Drops the handle without flushing anything: what a crash leaves behind.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    // ---- log shipping ----

    /// The end of what is durable under the sync policy: under group commit
    /// the end as of the last group commit's fsync; under the other policies
    /// the end (an `always` write syncs before its lock is released; `flush`
    /// and `never` promise no more than what `end` holds).
    pub fn durable_end(&self) -> Location {
        match self.sync {
            SyncPolicy::Group => {
                self.group
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .synced_end
            }
            _ => self.end(),
        }
    }

    /// Where the next record will go (buffered records included).
    pub fn end(&self) -> Location {
        match &self.writer {
            Some(m) => {
                let w = m.lock().unwrap_or_else(|e| e.into_inner());
                Location::new(w.active.nr, w.end as u32)
            }
            None => self.ro_end,
        }
    }

    /// Whole records from `from` (a record boundary, or the end of a file),
    /// at most `max_bytes` of them but at least one if any follow: what a
    /// master ships to a replica. Only records handed to the OS are read.
    pub fn read_records(&self, from: Location, max_bytes: usize) -> Result<Segment> {
        self.read_records_upto(from, Location::new(u16::MAX, u32::MAX), max_bytes)
    }

    /// As `read_records`, but nothing at or after `until` (a record boundary,
    /// such as the end of what is durable): an empty segment if `from` is there.
    pub fn read_records_upto(
        &self,
        from: Location,
        until: Location,
        max_bytes: usize,
    ) -> Result<Segment> {
        let mut from = from;
        let empty = |at: Location| Segment {
            start: at,
            bytes: Vec::new(),
            next: at,
        };
        let (f, len) = loop {
            if from >= until {
                return Ok(empty(from));
            }
            let f = self.file(from.file_nr).ok_or_else(|| Error::BadCursor {
                cursor: from,
                detail: format!("no data file {}", from.file_nr),
            })?;
            // Only bytes handed to the OS: writers keep appending meanwhile.
            let flushed = self.flushed_end(&f)?;
            if from.position as u64 > flushed {
                return Err(Error::BadCursor {
                    cursor: from,
                    detail: format!("{}.db holds {flushed} bytes", from.file_nr),
                });
            }
            let len = if from.file_nr == until.file_nr {
                flushed.min(until.position as u64)
            } else {
                flushed
            };
            if (from.position as u64) < len || from.position == 0 {
                break (f, len);
            }
            // At the end of a file: records go on in the next one, if any.
            match self.file(from.file_nr + 1) {
                Some(_) => from = Location::new(from.file_nr + 1, 1),
                None => return Ok(empty(from)),
            }
        };
        if from.position == 0 {
            from.position = 1;
        }
        let want =
            (len - from.position as u64).min(max_bytes.max(HEADER_LEN + MAX_VALUE_LEN) as u64);
        let mut bytes = vec![0u8; want as usize];
        self.read_bytes(&f, from.position as u64, &mut bytes)?;
        // Cut at the last whole record within `max_bytes` (at least one).
        let mut end = 0usize;
        while let Some(h) = crate::scan::record_at(&bytes, end) {
            let next = end + h.record_len() as usize;
            if end > 0 && next > max_bytes {
                break;
            }
            end = next;
        }
        if end == 0 && !bytes.is_empty() {
            return Err(Error::BadCursor {
                cursor: from,
                detail: "no valid record starts there".into(),
            });
        }
        bytes.truncate(end);
        Ok(Segment {
            start: from,
            next: Location::new(from.file_nr, from.position + end as u32),
            bytes,
        })
    }

    /// Up to `max` bytes just before `at` in its file (after the leading
    /// zero byte): replicas compare them to tell a shared log from a diverged
    /// one that merely ends at a record boundary of the other.
    pub fn bytes_before(&self, at: Location, max: usize) -> Result<Vec<u8>> {
        let Some(f) = self.file(at.file_nr) else {
            return Err(Error::BadCursor {
                cursor: at,
                detail: format!("no data file {}", at.file_nr),
            });
        };
        if at.position as u64 > self.data_end(&f)? {
            return Err(Error::BadCursor {
                cursor: at,
                detail: "past the end of the data".into(),
            });
        }
        let start = (at.position as u64).saturating_sub(max as u64).max(1);
        let mut out = vec![0u8; (at.position as u64).saturating_sub(start) as usize];
        self.read_bytes(&f, start, &mut out)?;
        Ok(out)
    }

    /// Flushes the writer's buffer if `f` is the active file; the length of
    /// `f` that is in the file.
    fn flushed_end(&self, f: &DataFile) -> Result<u64> {
        if let Some(m) = &self.writer {
            let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
            if w.active.nr == f.nr {
                if w.poisoned {
                    return Err(Error::Poisoned);
                }
                self.flush_locked(&mut w)?;
                return Ok(w.buf_start);
            }
        }
        f.len()
    }

    /// Appends records shipped by a master, byte for byte, at `at`, which must
    /// be where this database ends (or the start of its next file). `id_of`
    /// names each record's id and whether the record deletes it (a tombstone).
    /// Returns the new end. The sync policy applies to the whole batch.
    pub fn append_shipped(
        &self,
        at: Location,
        bytes: &[u8],
        mut id_of: impl FnMut(&[u8]) -> Result<(u32, bool)>,
    ) -> Result<Location> {
        let mut w = self.writer()?;
        if at.file_nr == w.active.nr + 1 && at.position == 1 {
            self.roll_locked(&mut w)?;
        }
        let ours = Location::new(w.active.nr, w.end as u32);
        if at != ours {
            return Err(Error::Diverged { ours, theirs: at });
        }
        // Check everything before anything is applied.
        let mut pos = 0usize;
        let mut plan = Vec::new();
        while pos < bytes.len() {
            let h = crate::scan::record_at(bytes, pos).ok_or_else(|| Error::Corrupt {
                path: self.dir.clone(),
                detail: format!("shipped bytes at {at}+{pos} are no valid record"),
            })?;
            let value = &bytes[pos + HEADER_LEN..pos + h.record_len() as usize];
            let (id, deletes) = id_of(value)?;
            self.check_range(id)?;
            plan.push((pos, id, deletes));
            pos += h.record_len() as usize;
        }
        let base = w.end;
        let last = plan.last().map_or(0, |p| p.0);
        let last_loc = Location::new(w.active.nr, (base + last as u64) as u32);
        if base + bytes.len() as u64 > u32::MAX as u64 || !last_loc.fits(self.keysize) {
            return Err(Error::AddressSpaceFull {
                keysize: self.keysize,
                location: last_loc,
            });
        }
        for (off, id, deletes) in plan {
            let loc = Location::new(w.active.nr, (base + off as u64) as u32);
            w.wal_buf
                .extend_from_slice(&WalEntry::Set { id, loc }.encode());
            self.lookup.set(id, loc);
            if deletes {
                w.wal_buf
                    .extend_from_slice(&WalEntry::Delete { id }.encode());
                self.lookup.set(id, Location::NONE);
            }
            if self.meta.config.incremental && id >= w.next_id {
                w.next_id = id + 1;
            }
            w.seq += 1;
        }
        w.buf.extend_from_slice(bytes);
        w.end += bytes.len() as u64;
        w.bytes_since_checkpoint += bytes.len() as u64;
        let seq = w.seq;
        let end = Location::new(w.active.nr, w.end as u32);
        self.finish_write(w)?;
        self.wait(Pending(seq))?;
        Ok(end)
    }

    // ---- reads ----

    /// The next id an insert will get (incremental mode).
    pub fn next_id(&self) -> Result<u32> {
        if !self.meta.config.incremental {
            return Err(Error::NotIncremental);
        }
        Ok(match &self.writer {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).next_id,
            None => self.ro_next_id,
        })
    }

    /// The lookup entry of `id` as stored (unresolved for short keysizes).
    pub fn raw_location(&self, id: u32) -> Option<Location> {
        if id >= self.meta.config.record_nr_max {
            return None;
        }
        let l = self.lookup.get(id);
        (!l.is_none()).then_some(l)
    }

    /// Whether `id` has a live record.
    pub fn contains(&self, id: u32) -> bool {
        id < self.meta.config.record_nr_max && !self.lookup.get(id).is_none()
    }

    /// Live ids, ascending, with their raw lookup location.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.lookup.iter().map(|(id, _)| id)
    }

    /// Live records, ascending by id: `(id, current value)`. A record that
    /// cannot be read yields its error and the iteration goes on.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Result<Vec<u8>>)> + '_ {
        self.ids().map(move |id| (id, self.get(id)))
    }

    /// Number of live ids.
    pub fn len(&self) -> usize {
        self.lookup.iter().count()
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.lookup.iter().next().is_none()
    }

    /// The current value of `id`.
    pub fn get(&self, id: u32) -> Result<Vec<u8>> {
        Ok(self.get_located(id)?.1)
    }

    /// The current value of `id` and the lookup entry it was read through
    /// (`raw_location`). Records are never rewritten, so the two always
    /// belong together, whatever writers do meanwhile.
    pub fn get_located(&self, id: u32) -> Result<(Location, Vec<u8>)> {
        self.check_range(id)?;
        let raw = self.lookup.get(id);
        if raw.is_none() {
            return Err(Error::NotFound(id));
        }
        let loc = if self.loose_addressing {
            self.resolve(id, raw)?
        } else {
            raw
        };
        let (_, value) = self.read_record(loc)?;
        Ok((raw, value))
    }

    /// Up to `depth` values of `id`, newest first (the current value first).
    pub fn get_history(&self, id: u32, depth: usize) -> Result<Vec<Vec<u8>>> {
        self.check_range(id)?;
        if depth == 0 {
            return Ok(Vec::new());
        }
        let loc = self.lookup.get(id);
        if loc.is_none() {
            return Err(Error::NotFound(id));
        }
        let mut loc = if self.loose_addressing {
            self.resolve(id, loc)?
        } else {
            loc
        };
        let mut out = Vec::new();
        loop {
            let (h, value) = self.read_record(loc)?;
            out.push(value);
            if h.prev.is_none() || out.len() >= depth {
                break;
            }
            // A short previous pointer is truncated like the lookup entry
            // V held when it wrote the record.
            loc = if self.loose_addressing {
                self.resolve_prev(id, h.prev, loc)?
            } else {
                h.prev
            };
        }
        Ok(out)
    }

    /// The open data files, in file number order.
    fn data_files(&self) -> Vec<Arc<DataFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn file(&self, nr: u16) -> Option<Arc<DataFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(nr as usize)
            .cloned()
            .flatten()
    }

    /// Reads bytes at `loc`: the map, else the writer's buffer, else `pread`.
    fn read_bytes(&self, f: &DataFile, pos: u64, out: &mut [u8]) -> Result<()> {
        if f.read_mapped(pos, out) {
            return Ok(());
        }
        if let Some(m) = &self.writer {
            let w = m.lock().unwrap_or_else(|e| e.into_inner());
            let end = pos + out.len() as u64;
            if w.active.nr == f.nr && end > w.buf_start {
                // Part (or all) of the range is still in the writer's buffer.
                let split = w.buf_start.saturating_sub(pos) as usize;
                if split > 0 {
                    f.read_at(pos, &mut out[..split])?;
                }
                let off = (pos + split as u64 - w.buf_start) as usize;
                let src =
                    w.buf
                        .get(off..off + out.len() - split)
                        .ok_or_else(|| Error::Corrupt {
                            path: f.path().to_path_buf(),
                            detail: format!("record at {pos} runs past the end of the data"),
                        })?;
                out[split..].copy_from_slice(src);
                return Ok(());
            }
        }
        f.read_at(pos, out).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Error::Corrupt {
                    path: f.path().to_path_buf(),
                    detail: format!("record at {pos} runs past the end of the file"),
                }
            }
            e => e,
        })
    }

    /// Header and CRC-checked value of the record at `loc`.
    fn read_record(&self, loc: Location) -> Result<(Header, Vec<u8>)> {
        // Fast path: the whole record lies in a map; one lock, no refcounts.
        let mapped = {
            let files = self.files.read().unwrap_or_else(|e| e.into_inner());
            files
                .get(loc.file_nr as usize)
                .and_then(Option::as_ref)
                .and_then(|f| f.with_map(|m| mapped_record(m, loc.position as usize)))
                .flatten()
        };
        if let Some((h, value)) = mapped {
            // Zero headers take the careful path (V's zeroed records).
            if h.check(&value) && !(h.len == 0 && h.prev.is_none() && h.crc == 0) {
                return Ok((h, value));
            }
        }
        let f = self.file(loc.file_nr).ok_or_else(|| Error::Corrupt {
            path: datafile::data_path(&self.dir, loc.file_nr),
            detail: format!("a lookup entry points at {loc}, in a data file that does not exist"),
        })?;
        if loc.position == 0 {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: "a location points at byte 0".into(),
            });
        }
        let mut hb = [0u8; HEADER_LEN];
        self.read_bytes(&f, loc.position as u64, &mut hb)?;
        let h = Header::decode(&hb);
        let mut value = vec![0u8; h.len as usize];
        self.read_bytes(&f, loc.position as u64 + HEADER_LEN as u64, &mut value)?;
        if !h.check(&value) {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: format!("CRC mismatch in the record at {loc}"),
            });
        }
        if hb == [0u8; HEADER_LEN] && self.zeroed_by_v_delete(&f, loc)? {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: format!("the record at {loc} was zeroed (V's delete hit the wrong record); its value is lost"),
            });
        }
        Ok((h, value))
    }

    /// An empty value is 12 zero bytes; so is the start of a record V's delete
    /// zeroed (12 + len zeros). A zero run of whole 12-byte steps is empty
    /// values; any other run is an empty value beside deleted records, or a
    /// live record V's misdirected delete zeroed (told apart below).
    fn zeroed_by_v_delete(&self, f: &DataFile, loc: Location) -> Result<bool> {
        let start = loc.position as u64;
        let end = self.data_end(f)?;
        let window = (end - start).min((2 * HEADER_LEN + MAX_VALUE_LEN) as u64) as usize;
        let mut bytes = vec![0u8; window];
        self.read_bytes(f, start, &mut bytes)?;
        let z = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let run = if z == bytes.len() {
            z
        } else {
            // The next record may start with zero bytes of its own.
            let lens = self.file_lens()?;
            let place = scan::Place {
                file_nr: f.nr,
                base: start as usize,
                lens: &lens,
                keysize: self.keysize,
            };
            match scan::record_after_zeros(place, &bytes, HEADER_LEN, z) {
                Some(p) => p,
                None => return Ok(true),
            }
        };
        if run % HEADER_LEN == 0 {
            return Ok(false);
        }
        // V's misdirected delete zeroes a record in the wrong file at the
        // deleted record's position, and leaves that record intact: without
        // a CRC-valid record at this position in another file, the zeros
        // after this empty value are a record deleted where it was.
        for other in self.data_files().into_iter().filter(|o| o.nr != f.nr) {
            let mut hb = [0u8; HEADER_LEN];
            if other.read_at(start, &mut hb).is_err() || hb == [0u8; HEADER_LEN] {
                continue;
            }
            let h = Header::decode(&hb);
            let mut value = vec![0u8; h.len as usize];
            // The record the delete meant is left intact as the last version
            // of an id that is gone: no live id's record, and no record's
            // previous version. Anything else at the same position in
            // another file (a live value, an old version) is no evidence.
            let there = Location::new(other.nr, loc.position);
            if other.read_at(start + HEADER_LEN as u64, &mut value).is_ok()
                && h.check(&value)
                && self.record_starts(&other)?.may_start(loc.position as usize)
                && !self.lookup.iter().any(|(_, l)| l == there)
                && !self.is_previous_version(there)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether any record names `loc` as its previous version. One walk
    /// over every file: only the rare V-damage check above asks.
    fn is_previous_version(&self, loc: Location) -> Result<bool> {
        let lens = self.file_lens()?;
        for f in self.data_files() {
            let mut bytes = vec![0u8; self.data_end(&f)? as usize];
            self.read_bytes(&f, 0, &mut bytes)?;
            let mut found = false;
            let place = scan::Place {
                file_nr: f.nr,
                base: 0,
                lens: &lens,
                keysize: self.keysize,
            };
            scan::walk(place, &bytes, 1, |_, piece| {
                if let scan::Piece::Record(h) = piece {
                    found |= h.prev == loc;
                }
            });
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The length of every data file, buffered writes included.
    fn file_lens(&self) -> Result<BTreeMap<u16, u64>> {
        self.data_files()
            .iter()
            .map(|f| Ok((f.nr, self.data_end(f)?)))
            .collect()
    }

    /// Bytes of data in `f`, buffered writes included.
    fn data_end(&self, f: &DataFile) -> Result<u64> {
        if let Some(m) = &self.writer {
            let w = m.lock().unwrap_or_else(|e| e.into_inner());
            if w.active.nr == f.nr {
                return Ok(w.end);
            }
        }
        f.len()
    }

    /// Where records (and empty values in zero runs) may start in `f`, from
    /// one framed walk of the file (`scan::Framing`). Records are never
    /// moved, so the walk stays true for the bytes it saw; what was appended
    /// since counts as unframed.
    fn record_starts(&self, f: &DataFile) -> Result<Arc<scan::Framing>> {
        if let Some(starts) = self
            .record_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&f.nr)
        {
            return Ok(starts.clone());
        }
        let bytes = f.read_all()?;
        let lens = self.file_lens()?;
        let place = scan::Place {
            file_nr: f.nr,
            base: 0,
            lens: &lens,
            keysize: self.keysize,
        };
        let starts = Arc::new(scan::walk_framed(place, &bytes, 1, |_, _| {}));
        self.record_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(f.nr, starts.clone());
        Ok(starts)
    }

    /// Where a short (keysize < 6) lookup entry really points, in a
    /// directory whose files outgrew what the keysize addresses.
    fn resolve(&self, id: u32, loc: Location) -> Result<Location> {
        self.resolve_among(id, loc, None)
    }

    /// Where a record's short previous-version pointer really points: V
    /// wrote it as it held the lookup entry, low bytes only, and it names
    /// an earlier record, so in the record's own file only positions
    /// before the record are candidates.
    fn resolve_prev(&self, id: u32, prev: Location, of: Location) -> Result<Location> {
        self.resolve_among(id, prev, Some(of))
    }

    /// The candidates for a short location are every file and every
    /// position with the same low bytes (before `of` in its file, for a
    /// previous pointer); a candidate must be a place where the framed
    /// walk of its file allows a record to start (not inside another
    /// record's value, not inside a zero run where no whole empty value
    /// fits), and hold a CRC-valid record. Exactly one must remain;
    /// several give `Ambiguous`.
    fn resolve_among(&self, id: u32, loc: Location, of: Option<Location>) -> Result<Location> {
        let step = 1u64 << (8 * self.keysize as u32);
        let files = self.data_files();
        let mut found = Vec::new();
        // 12 zero bytes past bytes the walk could not frame: an empty value
        // or zeros V's delete left, which nothing tells apart.
        let mut doubtful = Vec::new();
        for f in &files {
            let mut len = f.len().unwrap_or(0);
            if let Some(of) = of.filter(|of| of.file_nr == f.nr) {
                len = len.min(of.position as u64);
            }
            let starts = self.record_starts(f)?;
            let mut pos = loc.position as u64;
            while pos < len && pos <= u32::MAX as u64 {
                let cand = Location::new(f.nr, pos as u32);
                if pos > 0 && starts.may_start(pos as usize) {
                    if let Ok((h, _)) = self.read_record(cand) {
                        let zeros = h.len == 0 && h.crc == 0 && h.prev.is_none();
                        if zeros && starts.damaged_from().is_some_and(|d| pos as usize >= d) {
                            doubtful.push(cand);
                        } else {
                            found.push(cand);
                        }
                    }
                }
                pos += step;
            }
        }
        if found.is_empty() && !doubtful.is_empty() {
            return Err(Error::Corrupt {
                path: self.dir.clone(),
                detail: format!(
                    "id {id}: 12 zero bytes at {} lie past bytes no framing explains: an empty value cannot be told from zeros V's delete left",
                    doubtful[0]
                ),
            });
        }
        found.extend(doubtful);
        match found.len() {
            1 => Ok(found[0]),
            0 => Err(Error::Corrupt {
                path: self.dir.clone(),
                detail: match of {
                    None => format!(
                        "no valid record for id {id} at position {} in any data file",
                        loc.position
                    ),
                    Some(of) => format!(
                        "no valid record for id {id} at position {} before {of}: the previous version of {of} is lost",
                        loc.position
                    ),
                },
            }),
            _ => {
                let mut nrs: Vec<u16> = found.iter().map(|l| l.file_nr).collect();
                nrs.dedup();
                Err(Error::Ambiguous {
                    id,
                    position: loc.position,
                    keysize: self.keysize,
                    files: nrs,
                })
            }
        }
    }
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

/// The record at `pos` when `map` holds all of it.
fn mapped_record(map: &[u8], pos: usize) -> Option<(Header, Vec<u8>)> {
    let hb: &[u8; HEADER_LEN] = map.get(pos..pos + HEADER_LEN)?.try_into().ok()?;
    let h = Header::decode(hb);
    let start = pos + HEADER_LEN;
    let value = map.get(start..start + h.len as usize)?.to_vec();
    Some((h, value))
}

/// A V directory stores no configuration, so a wrong one given by the user
/// decodes the dump with the wrong entry width. Check that the entries make
/// sense before anything is written: ids ascend, locations lie inside the data
/// files, and a sample of them names CRC-valid records.
fn check_v_dump(
    files: &[Option<Arc<DataFile>>],
    entries: &[(u32, Location)],
    keysize: u8,
    dir: &Path,
) -> Result<()> {
    let wrong = |detail: String| {
        Err(Error::Config(format!(
            "{}: the lookup dump does not fit keysize {keysize} ({detail}); check --keysize or --record-nr-max/--record-size-max",
            dir.display()
        )))
    };
    if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
        return wrong("ids do not ascend".into());
    }
    let nfiles = files.iter().flatten().count();
    let loose = keysize < 6 && nfiles > 1;
    let mut lens = Vec::with_capacity(files.len());
    for f in files {
        lens.push(match f {
            Some(f) => Some(f.len()?),
            None => None,
        });
    }
    // V's own damage leaves a few entries pointing nowhere (a truncated file);
    // a wrong entry width leaves most of them so.
    let step = (entries.len() / 1000).max(1);
    let (mut checked, mut bad) = (0u32, 0u32);
    let mut example = None;
    for &(id, loc) in entries.iter().step_by(step) {
        checked += 1;
        let len = if loose {
            lens.iter().flatten().copied().max()
        } else {
            lens.get(loc.file_nr as usize).copied().flatten()
        };
        let ok = match len {
            None => false,
            Some(len) if loose => loc.position > 0 && (loc.position as u64) < len,
            Some(len) => {
                loc.position > 0
                    && loc.position as u64 + HEADER_LEN as u64 <= len
                    && files[loc.file_nr as usize].as_ref().is_some_and(|f| {
                        let mut hb = [0u8; HEADER_LEN];
                        f.read_at(loc.position as u64, &mut hb).is_ok()
                            && loc.position as u64 + Header::decode(&hb).record_len() <= len
                    })
            }
        };
        if !ok {
            bad += 1;
            example.get_or_insert((id, loc));
        }
    }
    if bad * 2 > checked {
        let (id, loc) = example.expect("a bad entry");
        return wrong(format!(
            "{bad} of {checked} entries checked point outside the data, e.g. id {id} at {loc}"
        ));
    }
    Ok(())
}

fn load_entries(lookup: &LookupTable, entries: &[(u32, Location)], dir: &Path) -> Result<()> {
    for &(id, loc) in entries {
        if id >= lookup.record_nr_max() {
            return Err(Error::Corrupt {
                path: dir.join(lookup::DUMP_DIR),
                detail: format!(
                    "entry for id {id} beyond record_nr_max {}",
                    lookup.record_nr_max()
                ),
            });
        }
        lookup.set(id, loc);
    }
    Ok(())
}

/// End of the valid records that follow the checkpoint.
fn scan_tail(
    files: &[Option<Arc<DataFile>>],
    checkpoint: Location,
    dir: &Path,
) -> Result<Location> {
    let mut end = checkpoint;
    for f in files.iter().flatten() {
        if f.nr < checkpoint.file_nr {
            continue;
        }
        let len = f.len()?;
        let start = if f.nr == checkpoint.file_nr {
            checkpoint.position.max(1) as u64
        } else {
            1
        };
        if f.nr > checkpoint.file_nr && len == 0 {
            // Created, killed before its leading zero byte was written.
            end = Location::new(f.nr, 1);
            continue;
        }
        if start > len {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: format!(
                    "the journal's checkpoint {checkpoint} lies past the end of the file ({len} bytes): data was lost"
                ),
            });
        }
        // Only the bytes after the checkpoint: they bound the work of recovery.
        let tail = f.read_range(start, len - start)?;
        let valid = start + scan::valid_end(&tail, 0) as u64;
        end = Location::new(f.nr, valid as u32);
        if valid < len {
            if f.nr != files.iter().flatten().last().map_or(f.nr, |l| l.nr) {
                tracing::warn!(dir = %dir.display(), file = f.nr, "invalid bytes before the last data file");
            }
            break;
        }
    }
    Ok(end)
}

/// The records from `from` (a record boundary) to `end`: the id each sets,
/// its location, and whether it deletes, as `ids` reads them from the values.
fn records_between(
    files: &[Option<Arc<DataFile>>],
    from: Location,
    end: Location,
    dir: &Path,
    ids: Option<&dyn RecordIds>,
) -> Result<Vec<(u32, Location, bool)>> {
    let mut out = Vec::new();
    for f in files.iter().flatten() {
        if f.nr < from.file_nr || f.nr > end.file_nr {
            continue;
        }
        let start = if f.nr == from.file_nr {
            from.position.max(1) as u64
        } else {
            1
        };
        let stop = if f.nr == end.file_nr {
            end.position as u64
        } else {
            f.len()?
        };
        if stop <= start {
            continue;
        }
        let bytes = f.read_range(start, stop - start)?;
        let mut pos = 0usize;
        while let Some(h) = scan::record_at(&bytes, pos) {
            let next = pos + h.record_len() as usize;
            let loc = Location::new(f.nr, (start + pos as u64) as u32);
            let Some(ids) = ids else {
                return Err(Error::Config(format!(
                    "{}: records past the journal carry their ids in a format the keyed layer knows; open it as a keyed store",
                    dir.display()
                )));
            };
            let (id, deletes) =
                ids.record_ids(&bytes[pos + HEADER_LEN..next]).map_err(|e| Error::Corrupt {
                    path: datafile::data_path(dir, f.nr),
                    detail: format!(
                        "the journal says records carry their ids, but the one at {loc} does not: {e}"
                    ),
                })?;
            out.push((id, loc, deletes));
            pos = next;
        }
    }
    Ok(out)
}

/// Where the records covered by a V dump end: past the furthest record it names.
/// `None` when the keysize cannot tell files apart.
/// The data files from `at` on, each with the offset to start reading at.
/// The length of each data file.
fn file_lens<'a>(files: impl IntoIterator<Item = &'a Arc<DataFile>>) -> Result<BTreeMap<u16, u64>> {
    files.into_iter().map(|f| Ok((f.nr, f.len()?))).collect()
}

fn files_from(
    files: &[Option<Arc<DataFile>>],
    at: Location,
) -> impl Iterator<Item = (&Arc<DataFile>, usize)> {
    files
        .iter()
        .flatten()
        .filter(move |f| f.nr >= at.file_nr)
        .map(move |f| {
            let start = if f.nr == at.file_nr {
                at.position as usize
            } else {
                1
            };
            (f, start)
        })
}

fn dump_boundary(
    files: &[Option<Arc<DataFile>>],
    entries: &[(u32, Location)],
    keysize: u8,
) -> Result<Option<Location>> {
    let nfiles = files.iter().flatten().count();
    if keysize < 6 {
        // Short entries that lost high bits cannot say where the dump ends.
        let limit = 1u64 << (8 * keysize as u32);
        for f in files.iter().flatten() {
            if nfiles > 1 || f.len()? > limit {
                return Ok(None);
            }
        }
    }
    let Some(&(_, far)) = entries.iter().max_by_key(|(_, l)| *l) else {
        // An empty dump covers nothing: everything after byte 0 is new.
        let first = files.iter().flatten().next().map_or(0, |f| f.nr);
        return Ok(Some(Location::new(first, 1)));
    };
    let Some(Some(f)) = files.get(far.file_nr as usize) else {
        return Ok(None);
    };
    let mut hb = [0u8; HEADER_LEN];
    if f.read_at(far.position as u64, &mut hb).is_err() {
        return Ok(None);
    }
    let h = Header::decode(&hb);
    Ok(Some(Location::new(
        far.file_nr,
        (far.position as u64 + h.record_len()) as u32,
    )))
}
