//! `ourdb`: a from-scratch Rust port of OurDB, the embedded store of the V
//! herolib library. It reads and writes the very directories V writes
//! (`N.db` data files, `lookup_dump.db/`), fixes V's bugs, and adds what a
//! service needs: crash safety (a small journal beside V's files), group
//! commit, lock-free concurrent reads, and a keyed layer on top of ids.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let db = ourdb::OurDb::open(dir.path(), ourdb::Config::default()).unwrap();
//! let id = db.insert(b"hello").unwrap();
//! db.set(Some(id), b"world").unwrap();
//! assert_eq!(db.get(id).unwrap(), b"world");
//! assert_eq!(db.get_history(id, 5).unwrap(), vec![b"world".to_vec(), b"hello".to_vec()]);
//! db.close().unwrap();
//! ```

#![warn(missing_docs)]

mod config;
mod datafile;
mod db;
mod error;
mod fsutil;
pub mod keyed;
mod location;
mod lookup;
mod meta;
mod record;
pub mod scan;
pub mod storage;
pub mod tools;
mod wal;

pub use config::{
    derive_keysize, Config, SyncPolicy, DEFAULT_FILE_SIZE, DEFAULT_RECORD_NR_MAX,
    DEFAULT_RECORD_SIZE_MAX,
};
pub use db::{
    Digest, LogRecord, OpenOptions, OpenReport, OurDb, Pending, RecordIds, Segment, SnapshotChunk,
    SnapshotPos, Truncated, LOCK_FILE,
};
pub use error::{Error, Result};
pub use location::Location;
pub use lookup::LookupTable;
pub use meta::{Meta, Origin, FORMAT_VERSION, META_FILE};
pub use record::{encode_record, Header, HEADER_LEN, MAX_VALUE_LEN};
pub use scan::RebuildReport;

/// File names inside a database directory.
pub mod files {
    pub use crate::datafile::{data_path, list as list_data_files};
    pub use crate::lookup::{DUMP_DATA, DUMP_DIR, DUMP_INC};
    pub use crate::wal::WAL_FILE;
}
