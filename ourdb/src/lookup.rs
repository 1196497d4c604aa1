//! The id -> location table, and V's lookup dump (`lookup_dump.db/data`, `.inc`).
//!
//! The table is a two-level array of atomics so that readers never take a lock:
//! chunks of 65,536 slots are allocated on first use, which keeps sparse or
//! small databases small (V allocates `record_nr_max * keysize` bytes up front).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{sync_dir, write_atomic};
use crate::location::Location;

const CHUNK_BITS: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;

/// Directory (not file) that V keeps the dump in.
pub const DUMP_DIR: &str = "lookup_dump.db";
/// The lookup dump's table file inside `lookup_dump.db/`.
pub const DUMP_DATA: &str = "data";
/// The lookup dump's next-id file inside `lookup_dump.db/` (incremental mode).
pub const DUMP_INC: &str = ".inc";

/// The in-memory lookup table: one slot per id below `record_nr_max`.
pub struct LookupTable {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
    max: u32,
}

impl LookupTable {
    /// An empty table for ids below `record_nr_max`.
    pub fn new(record_nr_max: u32) -> Self {
        let n = (record_nr_max as usize).div_ceil(CHUNK_LEN);
        LookupTable {
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
            max: record_nr_max,
        }
    }

    /// The table's id limit.
    pub fn record_nr_max(&self) -> u32 {
        self.max
    }

    /// The location of `id`, `NONE` if empty or out of range.
    #[inline]
    pub fn get(&self, id: u32) -> Location {
        if id >= self.max {
            return Location::NONE;
        }
        match self.chunks[(id >> CHUNK_BITS) as usize].get() {
            Some(c) => Location::unpack(c[id as usize & (CHUNK_LEN - 1)].load(Ordering::Acquire)),
            None => Location::NONE,
        }
    }

    /// Stores a location; callers check the range first.
    pub fn set(&self, id: u32, loc: Location) {
        debug_assert!(id < self.max);
        let chunk = &self.chunks[(id >> CHUNK_BITS) as usize];
        if loc.is_none() && chunk.get().is_none() {
            return;
        }
        let c = chunk.get_or_init(|| (0..CHUNK_LEN).map(|_| AtomicU64::new(0)).collect());
        c[id as usize & (CHUNK_LEN - 1)].store(loc.pack(), Ordering::Release);
    }

    /// Live `(id, location)` pairs in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Location)> + '_ {
        self.chunks.iter().enumerate().flat_map(move |(ci, c)| {
            let base = (ci << CHUNK_BITS) as u64;
            c.get().into_iter().flat_map(move |slots| {
                slots.iter().enumerate().filter_map(move |(i, s)| {
                    let v = s.load(Ordering::Acquire);
                    let id = base + i as u64;
                    (v != 0 && id < self.max as u64).then(|| (id as u32, Location::unpack(v)))
                })
            })
        })
    }

    /// Bytes held by allocated chunks (for memory reports).
    pub fn memory_bytes(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count() * CHUNK_LEN * 8
            + self.chunks.len() * std::mem::size_of::<OnceLock<Box<[AtomicU64]>>>()
    }
}

/// The V dump of a table: `u32 LE id` + `keysize` bytes big-endian location, ascending.
pub(crate) fn encode_dump(table: &LookupTable, keysize: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = [0u8; 6];
    for (id, loc) in table.iter() {
        out.extend_from_slice(&id.to_le_bytes());
        loc.encode(keysize, &mut entry);
        out.extend_from_slice(&entry[..keysize as usize]);
    }
    out
}

/// Parses a V dump into `(id, location)` pairs.
pub(crate) fn decode_dump(bytes: &[u8], keysize: u8, path: &Path) -> Result<Vec<(u32, Location)>> {
    let w = 4 + keysize as usize;
    if !bytes.len().is_multiple_of(w) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "length {} is not a multiple of {w} (is the keysize {keysize} right?)",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(w)
        .map(|c| {
            let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (id, Location::decode(keysize, &c[4..]))
        })
        .collect())
}

/// What a dump directory holds.
pub(crate) struct Dump {
    pub entries: Vec<(u32, Location)>,
    /// `.inc`, when present.
    pub next_id: Option<u32>,
}

fn dump_dir(dir: &Path) -> PathBuf {
    dir.join(DUMP_DIR)
}

/// Reads `lookup_dump.db/`; `Ok(None)` when `data` is absent.
pub(crate) fn read_dump(dir: &Path, keysize: u8) -> Result<Option<Dump>> {
    let data_path = dump_dir(dir).join(DUMP_DATA);
    let bytes = match fs::read(&data_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("reading {}", data_path.display())),
    };
    let entries = decode_dump(&bytes, keysize, &data_path)?;
    let inc_path = dump_dir(dir).join(DUMP_INC);
    let next_id = match fs::read_to_string(&inc_path) {
        Ok(s) => Some(s.trim().parse::<u32>().map_err(|_| Error::Corrupt {
            path: inc_path.clone(),
            detail: format!("not a decimal id: {s:?}"),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).ctx(|| format!("reading {}", inc_path.display())),
    };
    Ok(Some(Dump { entries, next_id }))
}

/// Writes the dump atomically (V writes it in place; a crash then loses it).
/// `.inc` is written only in incremental mode, as V does.
pub(crate) fn write_dump(
    io: &dyn crate::storage::Storage,
    dir: &Path,
    table: &LookupTable,
    keysize: u8,
    next_id: Option<u32>,
) -> Result<()> {
    let d = dump_dir(dir);
    if !d.is_dir() {
        fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
        sync_dir(io, dir)?;
    }
    write_atomic(io, &d.join(DUMP_DATA), &encode_dump(table, keysize))?;
    if let Some(n) = next_id {
        write_atomic(io, &d.join(DUMP_INC), n.to_string().as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_table_iterates_in_order() {
        let t = LookupTable::new(200_000);
        t.set(199_999, Location::new(1, 5));
        t.set(3, Location::new(0, 1));
        t.set(70_000, Location::new(0, 9));
        t.set(70_000, Location::NONE);
        let v: Vec<_> = t.iter().collect();
        assert_eq!(
            v,
            vec![(3, Location::new(0, 1)), (199_999, Location::new(1, 5))]
        );
        assert_eq!(t.get(200_000), Location::NONE);
    }

    #[test]
    fn dump_roundtrip_keysize_2() {
        let t = LookupTable::new(1000);
        t.set(1, Location::new(0, 1));
        t.set(9, Location::new(0, 0x1234));
        let bytes = encode_dump(&t, 2);
        assert_eq!(bytes, vec![1, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0x12, 0x34]);
        let back = decode_dump(&bytes, 2, Path::new("x")).unwrap();
        assert_eq!(
            back,
            vec![(1, Location::new(0, 1)), (9, Location::new(0, 0x1234))]
        );
        assert!(decode_dump(&bytes, 6, Path::new("x")).is_err());
    }
}
