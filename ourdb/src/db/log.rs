//! The database seen as a log: what replication reads and writes, so that it
//! never opens a data file itself. Segments of whole records go from a master
//! to a replica (`read_records_upto`, `append_shipped` in the parent module);
//! snapshot chunks copy every data file byte for byte; a digest compares
//! replicas.

use super::{OurDb, Segment};
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
