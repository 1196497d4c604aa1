//! `ourkv.wal`: the lookup journal. V keeps the lookup only in memory and loses it
//! on a crash; ourkv journals every lookup change here so that open can redo the
//! changes made since the last checkpoint (the last lookup dump).
//!
//! Layout: a 32-byte header, then 16-byte entries, each with its own CRC.
//! A checkpoint writes a new file (temp + rename), so entries of an older
//! generation never follow a newer header.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::sync_dir;
use crate::location::Location;
use crate::storage::{Open, Storage, StorageFile};

/// The journal file.
pub const WAL_FILE: &str = "ourkv.wal";
const MAGIC: &[u8; 8] = b"OURKVWAL";
const VERSION: u32 = 1;
/// The version of a journal that finishes a truncation (`WalHeader::cut`):
/// an older ourkv refuses it rather than keep the data past its checkpoint.
const VERSION_CUT: u32 = 2;
pub(crate) const HEADER_LEN: usize = 32;
pub(crate) const ENTRY_LEN: usize = 16;

/// The checkpoint a journal starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalHeader {
    /// End of the data log when the checkpoint was taken: recovery scans from here.
    pub checkpoint: Location,
    /// Next incremental id at the checkpoint.
    pub next_id: u32,
    /// Whether `lookup_dump.db/data` is part of the checkpoint.
    pub has_dump: bool,
    /// Every record of this generation is a keyed envelope and group commit
    /// syncs only the data files, so the entries may end before the durable
    /// records do: open redoes the records after the last entry from their
    /// envelopes (see `OpenOptions::envelope_journal`).
    pub envelopes: bool,
    /// The data ends at `checkpoint`: a truncation (`OurDb::truncate_to`)
    /// was under way, and open cuts every byte after the checkpoint before
    /// anything else. Only ever set in the journal a truncation writes
    /// before it cuts; the checkpoint that follows the cut clears it.
    pub cut: bool,
}

impl WalHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        let version = if self.cut { VERSION_CUT } else { VERSION };
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..14].copy_from_slice(&self.checkpoint.file_nr.to_le_bytes());
        b[14..18].copy_from_slice(&self.checkpoint.position.to_le_bytes());
        b[18..22].copy_from_slice(&self.next_id.to_le_bytes());
        b[22] = self.has_dump as u8;
        b[23] = self.envelopes as u8;
        b[24] = self.cut as u8;
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < HEADER_LEN {
            return Err("journal header is short".into());
        }
        if &b[0..8] != MAGIC {
            return Err("bad journal magic".into());
        }
        let crc = u32::from_le_bytes(b[28..32].try_into().unwrap());
        if crc32fast::hash(&b[..28]) != crc {
            return Err("journal header checksum mismatch".into());
        }
        let v = u32::from_le_bytes(b[8..12].try_into().unwrap());
        if v != VERSION && v != VERSION_CUT {
            return Err(format!("journal version {v} is not supported"));
        }
        Ok(WalHeader {
            checkpoint: Location::new(
                u16::from_le_bytes([b[12], b[13]]),
                u32::from_le_bytes(b[14..18].try_into().unwrap()),
            ),
            next_id: u32::from_le_bytes(b[18..22].try_into().unwrap()),
            has_dump: b[22] != 0,
            envelopes: b[23] != 0,
            cut: v == VERSION_CUT && b[24] != 0,
        })
    }
}

/// One lookup change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalEntry {
    Set { id: u32, loc: Location },
    Delete { id: u32 },
}

impl WalEntry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        let (kind, id, loc) = match *self {
            WalEntry::Set { id, loc } => (1u8, id, loc),
            WalEntry::Delete { id } => (2u8, id, Location::NONE),
        };
        b[0] = kind;
        b[1..5].copy_from_slice(&id.to_le_bytes());
        b[5..7].copy_from_slice(&loc.file_nr.to_le_bytes());
        b[7..11].copy_from_slice(&loc.position.to_le_bytes());
        let crc = crc32fast::hash(&b[..12]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for a torn or garbage entry.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < ENTRY_LEN {
            return None;
        }
        let crc = u32::from_le_bytes(b[12..16].try_into().unwrap());
        if crc32fast::hash(&b[..12]) != crc || b[11] != 0 {
            return None;
        }
        let id = u32::from_le_bytes(b[1..5].try_into().unwrap());
        let loc = Location::new(
            u16::from_le_bytes([b[5], b[6]]),
            u32::from_le_bytes(b[7..11].try_into().unwrap()),
        );
        match b[0] {
            1 if !loc.is_none() => Some(WalEntry::Set { id, loc }),
            2 => Some(WalEntry::Delete { id }),
            _ => None,
        }
    }
}

/// A journal read from disk: its header and the entries up to the first bad one.
pub(crate) struct WalContents {
    pub header: WalHeader,
    pub entries: Vec<WalEntry>,
    /// Bytes after the last good entry (a torn tail), cut on a writable open.
    pub torn_bytes: u64,
}

/// Reads `ourkv.wal`; `Ok(None)` if there is none.
pub(crate) fn read(dir: &Path) -> Result<Option<WalContents>> {
    let path = dir.join(WAL_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("open {}", path.display())),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .ctx(|| format!("read {}", path.display()))?;
    let header = WalHeader::decode(&bytes).map_err(|detail| Error::Corrupt {
        path: path.clone(),
        detail,
    })?;
    let mut entries = Vec::with_capacity((bytes.len() - HEADER_LEN) / ENTRY_LEN);
    let mut good = HEADER_LEN;
    for chunk in bytes[HEADER_LEN..].chunks(ENTRY_LEN) {
        match WalEntry::decode(chunk) {
            Some(e) => {
                entries.push(e);
                good += ENTRY_LEN;
            }
            None => break,
        }
    }
    Ok(Some(WalContents {
        header,
        entries,
        torn_bytes: (bytes.len() - good) as u64,
    }))
}

/// The journal open for appending. Only the writer appends (under its lock).
pub(crate) struct Journal {
    file: Box<dyn StorageFile>,
    end: AtomicU64,
}

impl Journal {
    /// Appends `bytes` at the end.
    pub(crate) fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let end = self.end.load(Ordering::Acquire);
        self.file.write_at(bytes, end)?;
        self.end.store(end + bytes.len() as u64, Ordering::Release);
        Ok(())
    }

    pub(crate) fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Creates a fresh journal holding only `header` (temp + rename, durable).
pub(crate) fn create(io: &dyn Storage, dir: &Path, header: WalHeader) -> Result<Journal> {
    create_with(io, dir, header, &[])
}

/// Creates a fresh journal holding `header` and the encoded `entries`
/// (temp + rename, durable): it replaces the old one whole or not at all.
pub(crate) fn create_with(
    io: &dyn Storage,
    dir: &Path,
    header: WalHeader,
    entries: &[u8],
) -> Result<Journal> {
    debug_assert!(entries.len().is_multiple_of(ENTRY_LEN));
    let path = dir.join(WAL_FILE);
    let tmp = dir.join(format!("{WAL_FILE}.tmp"));
    {
        let f = io
            .open(&tmp, Open::CreateTruncate)
            .ctx(|| format!("create {}", tmp.display()))?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + entries.len());
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(entries);
        f.write_at(&bytes, 0)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_data().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    io.rename(&tmp, &path)
        .ctx(|| format!("rename {}", tmp.display()))?;
    sync_dir(io, dir)?;
    open_append(io, dir)
}

/// Opens the journal for appending.
pub(crate) fn open_append(io: &dyn Storage, dir: &Path) -> Result<Journal> {
    let path = dir.join(WAL_FILE);
    let file = io
        .open(&path, Open::Write)
        .ctx(|| format!("open {}", path.display()))?;
    let end = file.len().ctx(|| format!("stat {}", path.display()))?;
    Ok(Journal {
        file,
        end: AtomicU64::new(end),
    })
}

/// Cuts a torn tail so that new entries follow the last good one.
pub(crate) fn truncate_to(io: &dyn Storage, dir: &Path, entries: usize) -> Result<()> {
    let path = dir.join(WAL_FILE);
    let f = io
        .open(&path, Open::Write)
        .ctx(|| format!("open {}", path.display()))?;
    f.set_len((HEADER_LEN + entries * ENTRY_LEN) as u64)
        .ctx(|| format!("truncate {}", path.display()))?;
    f.sync_data().ctx(|| format!("fsync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip_and_reject_garbage() {
        let e = WalEntry::Set {
            id: 7,
            loc: Location::new(3, 99),
        };
        assert_eq!(WalEntry::decode(&e.encode()), Some(e));
        let d = WalEntry::Delete { id: 1 };
        assert_eq!(WalEntry::decode(&d.encode()), Some(d));
        let mut bad = e.encode();
        bad[3] ^= 1;
        assert_eq!(WalEntry::decode(&bad), None);
        assert_eq!(WalEntry::decode(&[0u8; 16]), None);
    }

    #[test]
    fn torn_tail_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let h = WalHeader {
            checkpoint: Location::new(0, 1),
            next_id: 1,
            has_dump: false,
            envelopes: true,
            cut: false,
        };
        let f = create(&crate::storage::RealStorage, dir.path(), h).unwrap();
        f.append(&WalEntry::Delete { id: 4 }.encode()).unwrap();
        f.append(&[1, 2, 3]).unwrap();
        let c = read(dir.path()).unwrap().unwrap();
        assert_eq!(c.header, h);
        assert_eq!(c.entries, vec![WalEntry::Delete { id: 4 }]);
        assert_eq!(c.torn_bytes, 3);
    }

    /// A truncation's journal is version 2 (older versions refuse it); any
    /// other journal keeps version 1, byte for byte as before.
    #[test]
    fn only_a_cut_journal_is_version_2() {
        let plain = WalHeader {
            checkpoint: Location::new(1, 40),
            next_id: 9,
            has_dump: true,
            envelopes: false,
            cut: false,
        };
        let b = plain.encode();
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 1);
        assert_eq!(b[24..28], [0; 4]);
        assert_eq!(WalHeader::decode(&b).unwrap(), plain);
        let cut = WalHeader { cut: true, ..plain };
        let c = cut.encode();
        assert_eq!(u32::from_le_bytes(c[8..12].try_into().unwrap()), 2);
        assert_eq!(WalHeader::decode(&c).unwrap(), cut);
        let dir = tempfile::tempdir().unwrap();
        let e = WalEntry::Delete { id: 3 }.encode();
        drop(create_with(&crate::storage::RealStorage, dir.path(), cut, &e).unwrap());
        let read = read(dir.path()).unwrap().unwrap();
        assert_eq!(
            (read.header, read.entries),
            (cut, vec![WalEntry::Delete { id: 3 }])
        );
    }
}
