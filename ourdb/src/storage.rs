//! The storage I/O boundary: every byte the engine writes to an open
//! directory, every fsync, rename and removal goes through [`Storage`], so tests
//! can put [`faults::FaultyStorage`] in its place (failed and short writes,
//! fsync errors, power loss that keeps only what was made durable).
//!
//! Both implementations sit on real files: memory maps and `flock` need a real
//! descriptor ([`StorageFile::file`]), and what a crash leaves is an ordinary
//! directory that the next open reads like any other.

pub mod faults;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    Write,
    /// Read and write; the file must not exist yet.
    CreateNew,
    /// Read and write; created, or cut to zero bytes if it exists.
    CreateTruncate,
}

/// A file system: opening files and changing directory entries.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Opens `path` the way `how` says.
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn StorageFile>>;
    /// Renames `from` to `to`, replacing `to`. Durable only after
    /// [`Storage::sync_dir`] of the parent.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the file `path`. Durable only after [`Storage::sync_dir`] of
    /// the parent.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// One open file: positioned reads and writes, length, fsync.
pub trait StorageFile: Send + Sync {
    /// Fills `buf` from `pos`; an error if the file ends first.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Writes all of `buf` at `pos`. On error, any prefix may have been written.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Sets the length (cuts or zero-extends).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// The descriptor underneath, for memory maps; reads through a map see
    /// what `write_at` handed to the OS.
    fn file(&self) -> &File;
}

/// The plain file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealStorage;

/// The plain file system, shared.
pub fn real() -> Arc<dyn Storage> {
    Arc::new(RealStorage)
}

impl Storage for RealStorage {
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        o.read(true);
        match how {
            Open::Read => {}
            Open::Write => {
                o.write(true);
            }
            Open::CreateNew => {
                o.write(true).create_new(true);
            }
            Open::CreateTruncate => {
                o.write(true).create(true).truncate(true);
            }
        }
        Ok(Box::new(RealFile(o.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // The empty path (the parent of a bare relative name) is the current directory.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// A file of [`RealStorage`].
struct RealFile(File);

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn file(&self) -> &File {
        &self.0
    }
}
