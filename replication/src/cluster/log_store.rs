//! The metadata group's Raft log and vote, in one append-only file.
//!
//! The metadata log is small and written rarely (appointments, in-sync
//! changes, membership), so the simplest durable form serves: every change is
//! a record (`u32 length, u32 crc32, JSON`) appended to `<dir>/log`, replayed
//! in order at open; a torn or corrupt tail (a crash mid-append) is cut
//! there. A vote, an append and a truncation are fsynced before they return
//! (Raft's safety rests on them); the commit index is a hint and is not.
//! Purging rewrites the file with what is left (tmp, fsync, rename, directory
//! fsync), which also drops the dead records.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};

use super::types::{Entry, LogId, MetaRaft, Vote};

/// One change of the log's state, as written to the file.
#[derive(Serialize, Deserialize)]
enum Rec {
    Vote(Vote),
    Committed(Option<LogId>),
    Purged(LogId),
    Entry(Entry),
    TruncateAfter(Option<LogId>),
}

/// The Raft log storage of one node. Clones share the same file.
#[derive(Clone)]
pub struct FileLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

const LOG: &str = "log";
const HEADER: usize = 8;
/// A record longer than this is corruption, not a metadata change.
const MAX_RECORD: usize = 64 << 20;

impl FileLog {
    /// Opens (or creates) the log in `dir`, replaying it and cutting a torn
    /// tail.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FileLog> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let path = dir.join(LOG);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut inner = Inner {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            dir,
            vote: None,
            committed: None,
            purged: None,
            entries: BTreeMap::new(),
        };
        let good = replay(&bytes, &mut inner);
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - good,
                "raft log: torn or corrupt tail cut"
            );
            inner.file.set_len(good as u64)?;
            inner.file.sync_data()?;
        } else if bytes.is_empty() {
            sync_dir(&inner.dir)?;
        }
        Ok(FileLog {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as of the last
        // complete record write; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies the records of `bytes` to `inner`; returns the length of the
/// valid prefix.
fn replay(bytes: &[u8], inner: &mut Inner) -> usize {
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let body = at + HEADER;
        if len > MAX_RECORD || bytes.len() - body < len {
            break;
        }
        let data = &bytes[body..body + len];
        if crc32fast::hash(data) != crc {
            break;
        }
        let Ok(rec) = serde_json::from_slice::<Rec>(data) else {
            break;
        };
        inner.apply(rec);
        at = body + len;
    }
    at
}

fn encode(rec: &Rec, out: &mut Vec<u8>) -> io::Result<()> {
    let data = serde_json::to_vec(rec).map_err(io::Error::other)?;
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
    out.extend_from_slice(&data);
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
    fn apply(&mut self, rec: Rec) {
        match rec {
            Rec::Vote(v) => self.vote = Some(v),
            Rec::Committed(c) => self.committed = c,
            Rec::Purged(p) => {
                self.entries = self.entries.split_off(&(p.index + 1));
                self.purged = Some(p);
            }
            Rec::Entry(e) => {
                self.entries.insert(e.log_id.index, e);
            }
            Rec::TruncateAfter(last) => {
                let from = last.map_or(0, |l| l.index + 1);
                self.entries.split_off(&from);
            }
        }
    }

    /// Appends the records (one write), fsyncing if `sync`, then applies them.
    fn write(&mut self, recs: Vec<Rec>, sync: bool) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in &recs {
            encode(r, &mut buf)?;
        }
        self.file.write_all(&buf)?;
        if sync {
            self.file.sync_data()?;
        }
        for r in recs {
            self.apply(r);
        }
        Ok(())
    }

    /// Writes the whole state to a new file and swaps it in.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(v) = &self.vote {
            encode(&Rec::Vote(*v), &mut buf)?;
        }
        encode(&Rec::Committed(self.committed), &mut buf)?;
        if let Some(p) = self.purged {
            encode(&Rec::Purged(p), &mut buf)?;
        }
        for e in self.entries.values() {
            encode(&Rec::Entry(e.clone()), &mut buf)?;
        }
        let tmp = self.dir.join("log.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(LOG))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new().append(true).open(self.dir.join(LOG))?;
        Ok(())
    }
}

impl RaftLogReader<MetaRaft> for FileLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<MetaRaft> for FileLog {
    type LogReader = FileLog;

    async fn get_log_state(&mut self) -> Result<LogState<MetaRaft>, io::Error> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last.or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> FileLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.lock().write(vec![Rec::Vote(*vote)], true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint for a faster restart: losing it costs re-learning the
        // commit index from the leader, nothing more.
        self.lock().write(vec![Rec::Committed(committed)], false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<MetaRaft>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let recs: Vec<Rec> = entries.into_iter().map(Rec::Entry).collect();
        let r = self.lock().write(recs, true);
        let report = match &r {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        callback.io_completed(report);
        r
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.lock()
            .write(vec![Rec::TruncateAfter(last_log_id)], true)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.lock();
        inner.apply(Rec::Purged(log_id));
        inner.rewrite()
    }
}

impl FileLog {
    /// The vote saved last, if any.
    pub fn saved_vote(&self) -> Option<Vote> {
        self.lock().vote
    }
}
