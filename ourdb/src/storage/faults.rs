//! A [`Storage`] for tests that fails on purpose and loses power.
//!
//! * [`FaultyStorage::fail_op`]: the n-th mutating call from now (write,
//!   set_len, fsync, create, rename, directory fsync) fails with `EIO`; a failing
//!   write first writes a random prefix of its bytes (a short write). Calls
//!   after it succeed again, as after a transient error: the engine, not the
//!   disk, must refuse to go on.
//! * [`FaultyStorage::crash`]: power loss. Every change not made durable is
//!   undone, except that each file keeps a random prefix of its unsynced
//!   writes, the first dropped write torn at a random byte; each unsynced
//!   creation, rename or removal survives or not at random (a file whose
//!   removal is undone comes back with its durable bytes and, as any
//!   other file, a random prefix of its unsynced writes). Until then,
//!   [`FaultyStorage::power_off`] makes every mutating call fail, so that a
//!   handle dropped after the "crash" cannot write more.
//!
//! What is durable follows POSIX: a file's bytes after its `fdatasync`, a
//! directory entry (creation, rename) after an fsync of its directory.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Open, RealStorage, Storage, StorageFile};

/// Fault-injecting storage over real files; clones share one state.
#[derive(Clone, Debug)]
pub struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

/// What [`FaultyStorage::crash`] undid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced writes and length changes undone (wholly or in part).
    pub writes_undone: usize,
    /// Unsynced writes kept.
    pub writes_kept: usize,
    /// Unsynced creations, renames and removals undone.
    pub entries_undone: usize,
}

#[derive(Debug)]
struct State {
    rng: u64,
    /// Mutating calls so far.
    ops: u64,
    /// The mutating call number that fails.
    fail_at: Option<u64>,
    injected: u64,
    off: bool,
    /// Unsynced changes per file, by the file's current path.
    files: HashMap<PathBuf, Vec<Undo>>,
    /// Unsynced directory changes, oldest first.
    entries: Vec<Entry>,
}

/// How to take back one unsynced change to a file's contents.
#[derive(Debug)]
struct Undo {
    len_before: u64,
    pos: u64,
    /// The bytes at `pos` before the change (as far as the file reached).
    before: Vec<u8>,
    /// The bytes written at `pos` (empty for a length change).
    written: Vec<u8>,
}

#[derive(Debug)]
enum Entry {
    Created(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        /// What `to` held before, if it existed.
        replaced: Option<Vec<u8>>,
    },
    Removed {
        path: PathBuf,
        /// The file's bytes when it was removed.
        bytes: Vec<u8>,
        /// Its unsynced changes then, to take back if the removal is.
        undos: Vec<Undo>,
    },
}

fn eio() -> io::Error {
    io::Error::from(rustix::io::Errno::IO)
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new(""))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.to_path_buf()
        }
    };
    norm(a) == norm(b)
}

impl State {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, no dependency.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Takes back a random suffix of a file's unsynced changes, the first
    /// of them torn (see the module doc).
    fn undo_file(
        &mut self,
        path: &Path,
        undos: &[Undo],
        report: &mut CrashReport,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let keep = self.below(undos.len() as u64 + 1) as usize;
        report.writes_kept += keep;
        report.writes_undone += undos.len() - keep;
        if keep == undos.len() || !path.exists() {
            return Ok(());
        }
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        // Newest first, so each undo meets the file as it left it.
        for u in undos[keep..].iter().rev() {
            f.set_len(u.len_before.max(u.pos + u.before.len() as u64))?;
            f.write_all_at(&u.before, u.pos)?;
            f.set_len(u.len_before)?;
        }
        // The first dropped write is torn: a prefix of it reached the disk.
        let torn = &undos[keep];
        if !torn.written.is_empty() {
            let n = self.below(torn.written.len() as u64) as usize;
            f.write_all_at(&torn.written[..n], torn.pos)?;
        }
        Ok(())
    }

    /// Counts a mutating call; true if it must fail.
    fn tick(&mut self) -> bool {
        if self.off {
            return true;
        }
        self.ops += 1;
        if self.fail_at == Some(self.ops) {
            self.injected += 1;
            return true;
        }
        false
    }
}

impl FaultyStorage {
    /// A storage with no fault armed; `seed` drives every random choice.
    pub fn new(seed: u64) -> Self {
        FaultyStorage {
            state: Arc::new(Mutex::new(State {
                rng: seed | 1,
                ops: 0,
                fail_at: None,
                injected: 0,
                off: false,
                files: HashMap::new(),
                entries: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the `n`-th mutating call from now (1 = the next) fail.
    pub fn fail_op(&self, n: u64) {
        let mut s = self.lock();
        s.fail_at = Some(s.ops + n.max(1));
    }

    /// Mutating calls so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// How many faults have fired.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// From now on every mutating call fails (reads still work).
    pub fn power_off(&self) {
        self.lock().off = true;
    }

    /// Power loss: undoes what was not durable (see the module doc), then
    /// powers on again with no fault armed and nothing pending.
    pub fn crash(&self) -> io::Result<CrashReport> {
        let mut s = self.lock();
        let mut report = CrashReport::default();
        let mut files: Vec<(PathBuf, Vec<Undo>)> = s.files.drain().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, undos) in files {
            s.undo_file(&path, &undos, &mut report)?;
        }
        let entries = std::mem::take(&mut s.entries);
        for e in entries.into_iter().rev() {
            if s.below(2) == 0 {
                continue;
            }
            report.entries_undone += 1;
            match e {
                Entry::Created(p) => match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
                Entry::Renamed { from, to, replaced } => {
                    if to.exists() {
                        std::fs::rename(&to, &from)?;
                    }
                    if let Some(bytes) = replaced {
                        std::fs::write(&to, bytes)?;
                    }
                }
                Entry::Removed { path, bytes, undos } => {
                    // A later creation of the same name that survived wins.
                    if !path.exists() {
                        std::fs::write(&path, bytes)?;
                        s.undo_file(&path, &undos, &mut report)?;
                    }
                }
            }
        }
        s.off = false;
        s.fail_at = None;
        Ok(report)
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, how: Open) -> io::Result<Box<dyn StorageFile>> {
        let creates = matches!(how, Open::CreateNew | Open::CreateTruncate);
        let existed = path.exists();
        if creates {
            let mut s = self.lock();
            if s.tick() {
                return Err(eio());
            }
            if how == Open::CreateTruncate && existed {
                // Cutting an existing file is a length change like any other.
                let before = std::fs::read(path)?;
                s.files.entry(path.to_path_buf()).or_default().push(Undo {
                    len_before: before.len() as u64,
                    pos: 0,
                    before,
                    written: Vec::new(),
                });
            }
        }
        let inner = RealStorage.open(path, how)?;
        if creates && !existed {
            self.lock().entries.push(Entry::Created(path.to_path_buf()));
        }
        Ok(Box::new(FaultyFile {
            storage: self.clone(),
            path: path.to_path_buf(),
            inner,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick() {
            return Err(eio());
        }
        let replaced = match std::fs::read(to) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        RealStorage.rename(from, to)?;
        if let Some(undos) = s.files.remove(from) {
            s.files.insert(to.to_path_buf(), undos);
        } else {
            s.files.remove(to);
        }
        s.entries.push(Entry::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            replaced,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick() {
            return Err(eio());
        }
        RealStorage.sync_dir(dir)?;
        s.entries.retain(|e| {
            let p = match e {
                Entry::Created(p) | Entry::Removed { path: p, .. } => p,
                Entry::Renamed { to, .. } => to,
            };
            !same_dir(parent(p), dir)
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick() {
            return Err(eio());
        }
        let bytes = std::fs::read(path)?;
        RealStorage.remove_file(path)?;
        let undos = s.files.remove(path).unwrap_or_default();
        s.entries.push(Entry::Removed {
            path: path.to_path_buf(),
            bytes,
            undos,
        });
        Ok(())
    }
}

/// A file of [`FaultyStorage`].
struct FaultyFile {
    storage: FaultyStorage,
    path: PathBuf,
    inner: Box<dyn StorageFile>,
}

impl FaultyFile {
    /// The bytes at `pos..pos+n` now, as far as the file reaches.
    fn current(&self, pos: u64, n: usize) -> io::Result<(u64, Vec<u8>)> {
        let len = self.inner.len()?;
        let end = (pos + n as u64).min(len);
        let mut buf = vec![0; end.saturating_sub(pos) as usize];
        self.inner.read_at(&mut buf, pos)?;
        Ok((len, buf))
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.inner.read_at(buf, pos)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut s = self.storage.lock();
        let fail = s.tick();
        if fail && s.off {
            return Err(eio());
        }
        let (len_before, before) = self.current(pos, buf.len())?;
        let n = if fail {
            s.below(buf.len() as u64) as usize
        } else {
            buf.len()
        };
        self.inner.write_at(&buf[..n], pos)?;
        s.files.entry(self.path.clone()).or_default().push(Undo {
            len_before,
            pos,
            before,
            written: buf[..n].to_vec(),
        });
        if fail {
            return Err(eio());
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.storage.lock();
        if s.tick() {
            return Err(eio());
        }
        let old = self.inner.len()?;
        let (len_before, before) = if len < old {
            self.current(len, (old - len) as usize)?
        } else {
            (old, Vec::new())
        };
        self.inner.set_len(len)?;
        s.files.entry(self.path.clone()).or_default().push(Undo {
            len_before,
            pos: len.min(old),
            before,
            written: Vec::new(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.storage.lock();
        if s.tick() {
            return Err(eio());
        }
        self.inner.sync_data()?;
        s.files.remove(&self.path);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn file(&self) -> &File {
        self.inner.file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn a_crash_keeps_synced_bytes_and_at_most_a_prefix_of_the_rest() {
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            let st = FaultyStorage::new(seed);
            let f = st.open(&p, Open::CreateNew).unwrap();
            st.sync_dir(dir.path()).unwrap();
            f.write_at(b"durable", 0).unwrap();
            f.sync_data().unwrap();
            f.write_at(b"-one", 7).unwrap();
            f.write_at(b"-two", 11).unwrap();
            st.power_off();
            assert!(f.write_at(b"-three", 15).is_err());
            drop(f);
            st.crash().unwrap();
            let got = read(&p);
            let full = b"durable-one-two";
            assert!(
                got.len() >= 7 && full.starts_with(&got),
                "seed {seed}: {got:?}"
            );
        }
    }

    #[test]
    fn an_unsynced_rename_may_be_undone_and_a_synced_one_stays() {
        let mut undone = 0;
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::write(&b, b"old").unwrap();
            let st = FaultyStorage::new(seed);
            let f = st.open(&a, Open::CreateNew).unwrap();
            f.write_at(b"new", 0).unwrap();
            f.sync_data().unwrap();
            st.rename(&a, &b).unwrap();
            if seed % 2 == 0 {
                st.sync_dir(dir.path()).unwrap();
            }
            st.crash().unwrap();
            let got = read(&b);
            if seed % 2 == 0 {
                assert_eq!(got, b"new");
            } else {
                assert!(got == b"new" || got == b"old");
                undone += usize::from(got == b"old");
            }
        }
        assert!(undone > 0, "some unsynced renames are undone");
    }

    #[test]
    fn an_unsynced_removal_may_be_undone_and_a_synced_one_stays() {
        let mut back = 0;
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            let st = FaultyStorage::new(seed);
            let f = st.open(&p, Open::CreateNew).unwrap();
            st.sync_dir(dir.path()).unwrap();
            f.write_at(b"durable", 0).unwrap();
            f.sync_data().unwrap();
            f.write_at(b"-not", 7).unwrap();
            drop(f);
            st.remove_file(&p).unwrap();
            assert!(!p.exists());
            if seed % 2 == 0 {
                st.sync_dir(dir.path()).unwrap();
            }
            st.crash().unwrap();
            if seed % 2 == 0 {
                assert!(!p.exists(), "seed {seed}");
            } else if p.exists() {
                // Back with its durable bytes and a prefix of the rest.
                let got = read(&p);
                assert!(
                    got.len() >= 7 && b"durable-not".starts_with(&got),
                    "seed {seed}: {got:?}"
                );
                back += 1;
            }
        }
        assert!(back > 0, "some unsynced removals are undone");
    }

    #[test]
    fn the_chosen_call_fails_with_a_short_write_and_later_ones_work() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let st = FaultyStorage::new(7);
        let f = st.open(&p, Open::CreateNew).unwrap();
        st.fail_op(2);
        f.write_at(b"0123", 0).unwrap();
        let e = f.write_at(b"456789", 4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()));
        assert_eq!(st.injected(), 1);
        assert!(read(&p).len() < 10);
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
    }
}
