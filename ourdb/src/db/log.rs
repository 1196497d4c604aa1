//! The database seen as a log: what replication reads and writes, so that it
//! never opens a data file itself. Segments of whole records go from a master
//! to a replica (`read_records_upto`, `append_shipped` below);
//! snapshot chunks copy every data file byte for byte; a digest compares
//! replicas.

use super::*;
use crate::error::Result;
use crate::location::Location;
use crate::HEADER_LEN;

/// A piece of a data file, as a snapshot sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The data file.
    pub file_nr: u16,
    /// The byte offset in that file.
    pub offset: u64,
    /// The file's bytes from `offset` on.
    pub bytes: Vec<u8>,
}

/// Where a snapshot read goes on: the next chunk starts here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnapshotPos {
    /// The data file.
    pub file_nr: u16,
    /// The byte offset in that file.
    pub offset: u64,
}

impl SnapshotChunk {
    /// Where the chunk after this one starts.
    pub fn next_pos(&self) -> SnapshotPos {
        SnapshotPos {
            file_nr: self.file_nr,
            offset: self.offset + self.bytes.len() as u64,
        }
    }
}

/// A summary of every data byte, equal on byte-identical replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The end of the log the digest covers.
    pub end: Location,
    /// Data files covered.
    pub files: u64,
    /// Bytes covered.
    pub bytes: u64,
    /// CRC-32 of those bytes, file after file.
    pub crc32: u32,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "end={} files={} bytes={} crc32={:08x}",
            self.end, self.files, self.bytes, self.crc32
        )
    }
}

/// One record of a segment: where it starts, where the next one starts, and
/// its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// Where the record starts.
    pub at: Location,
    /// Where the next record starts.
    pub after: Location,
    /// The record's value.
    pub value: &'a [u8],
}

impl Segment {
    /// The records of the segment, in log order. A segment holds whole
    /// records only; iteration stops at the first bytes that are none.
    pub fn records(&self) -> impl Iterator<Item = LogRecord<'_>> + '_ {
        let mut pos = 0usize;
        std::iter::from_fn(move || {
            let h = crate::scan::record_at(&self.bytes, pos)?;
            let end = pos + h.record_len() as usize;
            let at = Location::new(self.start.file_nr, self.start.position + pos as u32);
            let after = Location::new(self.start.file_nr, self.start.position + end as u32);
            let value = &self.bytes[pos + HEADER_LEN..end];
            pos = end;
            Some(LogRecord { at, after, value })
        })
    }
}

impl OurDb {
    /// The digest of every data byte written (buffered writes included).
    pub fn digest(&self) -> Result<Digest> {
        let mut h = crc32fast::Hasher::new();
        let (mut files, mut bytes) = (0u64, 0u64);
        for f in self.data_files() {
            let len = self.data_end(&f)?;
            let mut data = vec![0u8; len as usize];
            self.read_bytes(&f, 0, &mut data)?;
            h.update(&f.nr.to_be_bytes());
            h.update(&data);
            files += 1;
            bytes += len;
        }
        Ok(Digest {
            end: self.end(),
            files,
            bytes,
            crc32: h.finalize(),
        })
    }

    /// The snapshot chunk at `pos` of the data up to `end` (a record
    /// boundary), at most `max` bytes; `None` once everything is read.
    /// Files are append-only, so the bytes before `end` never change while a
    /// snapshot is read chunk by chunk. The handles are this database's own:
    /// a compaction that swaps the directory meanwhile does not mix logs.
    pub fn snapshot_chunk(
        &self,
        end: Location,
        pos: SnapshotPos,
        max: usize,
    ) -> Result<Option<SnapshotChunk>> {
        for f in self.data_files() {
            if f.nr < pos.file_nr {
                continue;
            }
            if f.nr > end.file_nr {
                break;
            }
            let len = if f.nr == end.file_nr {
                (end.position as u64).min(self.data_end(&f)?)
            } else {
                self.data_end(&f)?
            };
            let offset = if f.nr == pos.file_nr { pos.offset } else { 0 };
            if offset >= len {
                continue;
            }
            let n = (len - offset).min(max.max(1) as u64) as usize;
            let mut bytes = vec![0u8; n];
            self.read_bytes(&f, offset, &mut bytes)?;
            return Ok(Some(SnapshotChunk {
                file_nr: f.nr,
                offset,
                bytes,
            }));
        }
        Ok(None)
    }
}

// Shipping: what a master reads for its workers and a worker appends.
impl OurDb {
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
    pub(super) fn flushed_end(&self, f: &DataFile) -> Result<u64> {
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
        id_of: impl FnMut(&[u8]) -> Result<(u32, bool)>,
    ) -> Result<Location> {
        let (end, pending) = self.append_shipped_pending(at, bytes, id_of)?;
        self.wait(pending)?;
        Ok(end)
    }

    /// [`OurDb::append_shipped`] without waiting for durability: the new
    /// end, and what to wait for (under group commit, a syncer thread's
    /// commit makes it durable, so the caller need not block on the fsync).
    pub fn append_shipped_pending(
        &self,
        at: Location,
        bytes: &[u8],
        mut id_of: impl FnMut(&[u8]) -> Result<(u32, bool)>,
    ) -> Result<(Location, Pending)> {
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
        Ok((end, Pending(seq)))
    }

    // ---- reads ----
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn small_files() -> Config {
        Config {
            file_size: 200,
            ..Config::default()
        }
    }

    #[test]
    fn snapshot_chunks_cover_every_file_up_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = OurDb::open(dir.path(), small_files()).unwrap();
        for i in 0..40u32 {
            db.insert(format!("value {i} with some bytes").as_bytes())
                .unwrap();
        }
        let end = db.end();
        assert!(end.file_nr >= 2, "the test wants several files: {end}");
        let mut pos = SnapshotPos::default();
        let mut got: std::collections::BTreeMap<u16, Vec<u8>> = Default::default();
        while let Some(c) = db.snapshot_chunk(end, pos, 37).unwrap() {
            assert!(c.bytes.len() <= 37);
            let file = got.entry(c.file_nr).or_default();
            assert_eq!(file.len() as u64, c.offset, "chunks are contiguous");
            file.extend_from_slice(&c.bytes);
            pos = c.next_pos();
        }
        db.flush().unwrap();
        for (nr, bytes) in &got {
            let on_disk = std::fs::read(crate::datafile::data_path(dir.path(), *nr)).unwrap();
            assert_eq!(bytes, &on_disk, "file {nr}");
        }
        assert_eq!(got.len() as u16, end.file_nr + 1);
        // Up to an earlier end: later records are left out.
        let first = db.snapshot_chunk(Location::new(0, 30), SnapshotPos::default(), 1000);
        let first = first.unwrap().unwrap();
        assert_eq!((first.file_nr, first.offset, first.bytes.len()), (0, 0, 30));
        let next = db.snapshot_chunk(Location::new(0, 30), first.next_pos(), 1000);
        assert_eq!(next.unwrap(), None);
    }

    #[test]
    fn the_digest_sees_buffered_writes_and_differs_on_one_byte() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let da = OurDb::open(a.path(), Config::default()).unwrap();
        let db = OurDb::open(b.path(), Config::default()).unwrap();
        da.insert(b"same").unwrap();
        db.insert(b"same").unwrap();
        assert_eq!(da.digest().unwrap(), db.digest().unwrap());
        da.insert(b"abc").unwrap();
        db.insert(b"abd").unwrap();
        let (x, y) = (da.digest().unwrap(), db.digest().unwrap());
        assert_ne!(x.crc32, y.crc32);
        assert_eq!((x.end, x.bytes, x.files), (y.end, y.bytes, y.files));
        assert!(x
            .to_string()
            .starts_with(&format!("end={} files=1 ", x.end)));
    }

    #[test]
    fn segment_records_name_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let db = OurDb::open(dir.path(), Config::default()).unwrap();
        db.insert(b"one").unwrap();
        db.insert(b"").unwrap();
        db.insert(b"three").unwrap();
        let seg = db.read_records(Location::new(0, 1), 1 << 20).unwrap();
        let recs: Vec<_> = seg.records().collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].at, seg.start);
        assert_eq!(recs[0].value, b"one");
        assert_eq!(recs[1].value, b"");
        assert_eq!(recs[1].at, recs[0].after);
        assert_eq!(recs[2].after, seg.next);
    }
}
