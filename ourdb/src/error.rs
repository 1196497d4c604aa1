//! The one error type of the engine.

use std::path::PathBuf;

use crate::location::Location;

/// Everything the engine can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `context` says which file or step.
    #[error("{context}: {source}")]
    Io {
        /// The file or step.
        context: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The id has no live record.
    #[error("record {0} not found")]
    NotFound(u32),
    /// The id lies outside `0..record_nr_max` (or is 0 in incremental mode).
    #[error("id {id} is out of range (record_nr_max is {max})")]
    IdOutOfRange {
        /// The id asked for.
        id: u32,
        /// The directory's `record_nr_max`.
        max: u32,
    },
    /// Incremental mode only hands out ids itself; an explicit id must already be live.
    #[error(
        "id {0} was never issued or is deleted: in incremental mode only live ids can be updated"
    )]
    IdNotIssued(u32),
    /// Key-value mode needs an explicit id.
    #[error("an id must be given when incremental mode is off")]
    IdRequired,
    /// `next_id` only exists in incremental mode.
    #[error("incremental mode is not enabled")]
    NotIncremental,
    /// All ids below `record_nr_max` have been handed out.
    #[error("lookup table is full: all {0} ids are used")]
    TableFull(u32),
    /// A value longer than a record can hold.
    #[error("value of {len} bytes is too large: a record holds at most {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The largest value a record holds here.
        max: usize,
    },
    /// The keysize of this directory cannot address the next write position.
    #[error("keysize {keysize} cannot address {location}: the database is full (compact or restore into keysize 6)")]
    AddressSpaceFull {
        /// The directory's keysize.
        keysize: u8,
        /// The position that does not fit.
        location: Location,
    },
    /// Stored bytes fail their check.
    #[error("corrupt data in {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, where.
        detail: String,
    },
    /// A lookup entry fits records in more than one data file (keysize < 6 with several files).
    #[error("record {id}: position {position} matches valid records in data files {files:?}; keysize {keysize} stores no file number")]
    Ambiguous {
        /// The id read.
        id: u32,
        /// The position its lookup entry holds.
        position: u32,
        /// The directory's keysize.
        keysize: u8,
        /// The data files with a valid record there.
        files: Vec<u16>,
    },
    /// The configuration is unusable or disagrees with the directory.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The directory is held by another process.
    #[error("database {0} is locked by another process")]
    Locked(PathBuf),
    /// A V directory with data files but no lookup dump: its id map must be rebuilt first.
    #[error(
        "{0} holds data files but no lookup dump: run `ourkv db recover` to rebuild the id map"
    )]
    LookupMissing(PathBuf),
    /// The handle was opened read-only.
    #[error("database is open read-only")]
    ReadOnly,
    /// An earlier write failed half-way; the handle refuses work until reopened.
    #[error("database handle is poisoned by an earlier failed write; reopen it")]
    Poisoned,
    /// A replication cursor that names no record boundary of this database.
    #[error("cursor {cursor} is not a record boundary here ({detail})")]
    BadCursor {
        /// The cursor given.
        cursor: Location,
        /// Why it is no boundary.
        detail: String,
    },
    /// Shipped records do not continue this database where it ends: the
    /// replica diverged (or the master was compacted) and needs a snapshot.
    #[error("shipped records start at {theirs} but this database ends at {ours}")]
    Diverged {
        /// Where this database ends.
        ours: Location,
        /// Where the shipped records start.
        theirs: Location,
    },
    /// `truncate_to` was asked to cut at a place after the end of the data.
    #[error("cannot truncate to {to}: the database ends at {end}")]
    TruncatePastEnd {
        /// The place asked for.
        to: Location,
        /// Where the database ends.
        end: Location,
    },
    /// A truncation was cut short (a crash): its journal says the data ends
    /// earlier than the files do. A writable open finishes it.
    #[error("{0}: a truncation was cut short; open it writable once to finish it")]
    TruncateUnfinished(PathBuf),
    /// A keyed-layer envelope could not be decoded.
    #[error("bad envelope: {0}")]
    Envelope(String),

    /// A snapshot being installed breaks its own rules (chunks out of order,
    /// an end that is not where the data ends).
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A key that the keyed layer cannot store.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A transaction that cannot be applied as given (a key written twice).
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    /// A transaction past a limit (operations, conditions, bytes).
    #[error("transaction too large: {0}")]
    TxnTooLarge(String),
    /// A replica's log ends inside a group of records shipped in part; it
    /// takes no writes of its own until that tail is cut.
    #[error("the log ends inside a group shipped in part (from {0}); cut it before writing")]
    UnfinishedGroup(Location),
    /// A put names a lease that does not exist (never granted, revoked or
    /// expired).
    #[error("lease {0} not found: it was never granted, or it was revoked or expired")]
    NoLease(u32),
    /// A lease holds as many keys as it may.
    #[error("lease {id} holds {max} keys, the most one lease holds")]
    LeaseFull {
        /// The lease.
        id: u32,
        /// The most keys one lease holds.
        max: usize,
    },
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a description to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
