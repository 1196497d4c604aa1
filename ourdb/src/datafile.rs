//! Data files `N.db`: positioned reads through a memory map or `pread`.
//!
//! # Memory-map safety
//! This is the one place that maps files. A map is sound only while the mapped
//! bytes never change and the file never shrinks under it. The engine keeps that
//! true by construction:
//! * a directory is opened by one writer at a time (an exclusive `flock` on
//!   `ourkv.lock`; read-only handles take a shared lock);
//! * data files are append-only while open: records are never rewritten. A
//!   torn tail is cut in `open`, before any map exists; `truncate_to` cuts a
//!   mapped file only through [`DataFile::cut`], which lowers `flushed`
//!   first while it holds the map's write lock, so no read is under way and
//!   none afterwards reaches the bytes cut (or rewritten later, as bytes are
//!   written before `flushed` covers them again);
//! * a map may reach past the end of the file (it reserves room to grow into,
//!   so appends need no remap), but reads through it are bounded by `flushed`:
//!   bytes the writer has already handed to the OS. Pages past the end of the
//!   file are never touched.
//!
//! Compaction builds a new directory and swaps it in by rename, so old maps keep
//! pointing at the old (unlinked, still intact) inodes.
//! The plain `pread` path is the reference; maps are only an accelerator.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use memmap2::Mmap;

use crate::error::{IoContext, Result};
use crate::storage::{Open, Storage, StorageFile};

/// Path of data file `nr` in `dir`.
pub fn data_path(dir: &Path, nr: u16) -> PathBuf {
    dir.join(format!("{nr}.db"))
}

/// The data file numbers present in `dir`, ascending.
pub fn list(dir: &Path) -> Result<Vec<u16>> {
    let mut nrs = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".db") else {
            continue;
        };
        // `lookup_dump.db` is a directory; plain decimal names only, as V writes them.
        if stem.is_empty()
            || !stem.bytes().all(|b| b.is_ascii_digit())
            || (stem.len() > 1 && stem.starts_with('0'))
        {
            continue;
        }
        if let Ok(nr) = stem.parse::<u16>() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                nrs.push(nr);
            }
        }
    }
    nrs.sort_unstable();
    Ok(nrs)
}

/// One open data file.
pub(crate) struct DataFile {
    pub nr: u16,
    path: PathBuf,
    file: Box<dyn StorageFile>,
    map: RwLock<Option<Arc<Mmap>>>,
    /// Bytes written to the file (handed to the OS); reads stay below it.
    flushed: AtomicU64,
}

/// Maps reserve at least this much address space, so a growing file is
/// remapped rarely (address space, not memory).
const MAP_RESERVE: u64 = 1 << 30;

impl DataFile {
    /// Opens an existing data file.
    pub(crate) fn open(io: &dyn Storage, dir: &Path, nr: u16, writable: bool) -> Result<Self> {
        let path = data_path(dir, nr);
        let how = if writable { Open::Write } else { Open::Read };
        let file = io
            .open(&path, how)
            .ctx(|| format!("open {}", path.display()))?;
        let len = file.len().ctx(|| format!("stat {}", path.display()))?;
        Ok(DataFile {
            nr,
            path,
            file,
            map: RwLock::new(None),
            flushed: AtomicU64::new(len),
        })
    }

    /// Creates a new data file holding the single leading zero byte (V's layout).
    /// Refuses to touch an existing file: reopening never truncates.
    pub(crate) fn create(io: &dyn Storage, dir: &Path, nr: u16) -> Result<Self> {
        let path = data_path(dir, nr);
        let file = io
            .open(&path, Open::CreateNew)
            .ctx(|| format!("create {}", path.display()))?;
        file.write_at(&[0], 0)
            .ctx(|| format!("write {}", path.display()))?;
        Ok(DataFile {
            nr,
            path,
            file,
            map: RwLock::new(None),
            flushed: AtomicU64::new(1),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> Result<u64> {
        self.file
            .len()
            .ctx(|| format!("stat {}", self.path.display()))
    }

    /// Makes sure the map covers the first `len` bytes, reserving room to grow.
    pub(crate) fn ensure_mapped(&self, len: u64) -> Result<()> {
        if len == 0 || self.mapped_len() >= len {
            return Ok(());
        }
        self.map_len(len.saturating_mul(2).max(MAP_RESERVE))
    }

    /// Maps exactly the first `len` bytes: for files that no longer grow.
    pub(crate) fn map_exact(&self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.map_len(len)
    }

    fn map_len(&self, size: u64) -> Result<()> {
        // SAFETY: see the module doc: mapped bytes below `flushed` are never
        // rewritten while the directory is locked, the file never shrinks while
        // a map exists, and no read goes past `flushed`.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(size as usize)
                .map(self.file.file())
        }
        .ctx(|| format!("mmap {}", self.path.display()))?;
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(map));
        Ok(())
    }

    fn mapped_len(&self) -> u64 {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |m| m.len() as u64)
    }

    fn set_flushed(&self, len: u64) {
        self.flushed.store(len, Ordering::Release);
    }

    /// Runs `f` over the mapped, written bytes, if there is a map.
    #[inline]
    pub(crate) fn with_map<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let guard = self.map.read().unwrap_or_else(|e| e.into_inner());
        let flushed = self.flushed.load(Ordering::Acquire) as usize;
        guard.as_ref().map(|m| f(&m[..flushed.min(m.len())]))
    }

    /// Copies `out.len()` bytes at `pos` from the map; false if the map does not cover them.
    #[inline]
    pub(crate) fn read_mapped(&self, pos: u64, out: &mut [u8]) -> bool {
        self.with_map(|m| match m.get(pos as usize..pos as usize + out.len()) {
            Some(src) => {
                out.copy_from_slice(src);
                true
            }
            None => false,
        })
        .unwrap_or(false)
    }

    /// Reads through the map when it covers the range, else with `pread`.
    pub(crate) fn read_at(&self, pos: u64, out: &mut [u8]) -> Result<()> {
        if self.read_mapped(pos, out) {
            return Ok(());
        }
        self.file
            .read_at(out, pos)
            .ctx(|| format!("read {} bytes at {}:{pos}", out.len(), self.path.display()))
    }

    /// Writes at `pos` (the writer's flush).
    pub(crate) fn write_at(&self, pos: u64, bytes: &[u8]) -> Result<()> {
        self.file.write_at(bytes, pos).ctx(|| {
            format!(
                "write {} bytes at {}:{pos}",
                bytes.len(),
                self.path.display()
            )
        })?;
        // Publish only after the bytes are in the file: readers trust `flushed`.
        self.flushed
            .fetch_max(pos + bytes.len() as u64, Ordering::Release);
        Ok(())
    }

    pub(crate) fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .ctx(|| format!("fsync {}", self.path.display()))
    }

    /// Cuts the file to `len` bytes. Only called by `open` before any map exists.
    pub(crate) fn truncate(&self, len: u64) -> Result<()> {
        debug_assert!(self.mapped_len() == 0);
        self.file
            .set_len(len)
            .ctx(|| format!("truncate {}", self.path.display()))?;
        self.set_flushed(len);
        self.sync_data()
    }

    /// Cuts an open, maybe mapped file to `len` bytes (`truncate_to`), and
    /// fdatasyncs it. Reads are bounded by `flushed`, so it goes down first,
    /// under the map's write lock: no read through the map is running, and
    /// later ones stop at `len` (the map may reach past the end of the file,
    /// as it does while the file grows).
    pub(crate) fn cut(&self, len: u64) -> Result<()> {
        {
            let _map = self.map.write().unwrap_or_else(|e| e.into_inner());
            self.set_flushed(len);
            self.file
                .set_len(len)
                .ctx(|| format!("truncate {}", self.path.display()))?;
        }
        self.sync_data()
    }

    /// Reads the whole file (tools and recovery scans).
    pub(crate) fn read_all(&self) -> Result<Vec<u8>> {
        self.read_range(0, self.len()?)
    }

    /// Reads `len` bytes from `pos` with `pread`.
    pub(crate) fn read_range(&self, pos: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_at(&mut buf, pos)
            .ctx(|| format!("read {}", self.path.display()))?;
        Ok(buf)
    }
}
