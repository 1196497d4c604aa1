//! Installing a snapshot received from a master: the chunks land in a
//! sibling directory, the id map is rebuilt from the envelopes, and one
//! atomic exchange swaps the new data in. A crash before the exchange leaves
//! the old data; the sibling is removed on the next attempt.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Envelope, KeyedStore};
use crate::config::{Config, SyncPolicy};
use crate::db::SnapshotChunk;
use crate::error::{Error, IoContext, Result};
use crate::location::Location;

/// A snapshot being received for a store's directory.
pub struct SnapshotInstall {
    target: PathBuf,
    tmp: PathBuf,
    config: Config,
    sync: SyncPolicy,
    /// Each file received so far and its length: chunks come in file order,
    /// each where the previous one ended.
    files: BTreeMap<u16, (File, u64)>,
    /// Whether `target` holds data that the snapshot replaces (a worker's),
    /// or is a new directory (an online backup).
    replace: bool,
    done: bool,
}

/// A snapshot swapped in.
pub struct Installed {
    /// The store opened on the new data.
    pub store: KeyedStore,
    /// Records in the snapshot.
    pub records: u64,
}

impl SnapshotInstall {
    /// Starts receiving a snapshot that will replace `store`'s data, with its
    /// configuration and sync policy.
    pub fn begin(store: &KeyedStore) -> Result<SnapshotInstall> {
        let db = store.db();
        let target = db.dir().to_path_buf();
        let mut config = db.config().clone();
        config.keysize = Some(db.keysize());
        SnapshotInstall::at(target, config, db.sync_policy(), true)
    }

    /// Starts receiving a snapshot into `dir`, a new directory (absent or
    /// empty), with `config`: an online backup. `dir` appears, whole, only
    /// when `finish` succeeds.
    pub fn create(dir: &Path, config: Config) -> Result<SnapshotInstall> {
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).ctx(|| format!("read {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(Error::Snapshot(format!(
                    "{} is not empty: a snapshot goes into a new directory",
                    dir.display()
                )));
            }
        }
        let dir = std::path::absolute(dir).ctx(|| format!("resolve {}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
        }
        SnapshotInstall::at(dir, config, SyncPolicy::default(), false)
    }

    fn at(
        target: PathBuf,
        config: Config,
        sync: SyncPolicy,
        replace: bool,
    ) -> Result<SnapshotInstall> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = target.with_file_name(format!(".{name}.snapshot-tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).ctx(|| format!("remove {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        Ok(SnapshotInstall {
            target,
            tmp,
            config,
            sync,
            files: BTreeMap::new(),
            replace,
            done: false,
        })
    }

    /// Writes one chunk. Chunks must come in order: a file after the ones
    /// before it, each chunk where the last one ended. Anything else (a
    /// replayed, reordered or hostile stream) is refused before it is written,
    /// so a bad sender cannot make sparse or oversized files.
    pub fn write(&mut self, chunk: &SnapshotChunk) -> Result<()> {
        if let Some((&last, _)) = self.files.last_key_value() {
            if chunk.file_nr < last {
                return Err(Error::Snapshot(format!(
                    "a chunk of file {} after file {last}",
                    chunk.file_nr
                )));
            }
        }
        let have = self.files.get(&chunk.file_nr).map_or(0, |f| f.1);
        if chunk.offset != have {
            return Err(Error::Snapshot(format!(
                "a chunk of file {} at offset {}, where {have} bytes are received",
                chunk.file_nr, chunk.offset
            )));
        }
        let len = have + chunk.bytes.len() as u64;
        if len > u32::MAX as u64 {
            return Err(Error::Snapshot(format!(
                "file {} would grow past what a position addresses",
                chunk.file_nr
            )));
        }
        let path = crate::datafile::data_path(&self.tmp, chunk.file_nr);
        let entry = match self.files.entry(chunk.file_nr) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(&path)
                    .ctx(|| format!("create {}", path.display()))?;
                e.insert((f, 0))
            }
        };
        entry
            .0
            .write_all_at(&chunk.bytes, chunk.offset)
            .ctx(|| format!("write {}", path.display()))?;
        entry.1 = len;
        Ok(())
    }

    /// Checks that the data ends at `end`, rebuilds the id map at `epoch`,
    /// swaps the new data in and opens it. The replaced data is removed; a
    /// store still open on it keeps reading its open files meanwhile.
    pub fn finish(mut self, epoch: u64, end: Location) -> Result<Installed> {
        self.files.clear();
        let (records, ends) = rebuild_from_envelopes(&self.tmp, &self.config, epoch)?;
        if ends != end {
            return Err(Error::Snapshot(format!(
                "the data ends at {ends}, the sender said {end}"
            )));
        }
        if self.replace {
            crate::tools::exchange(&self.tmp, &self.target)?;
        } else {
            if self.target.exists() {
                // Empty (checked at `create`); a rename needs it gone.
                std::fs::remove_dir(&self.target)
                    .ctx(|| format!("replace the empty {}", self.target.display()))?;
            }
            std::fs::rename(&self.tmp, &self.target)
                .ctx(|| format!("move the snapshot to {}", self.target.display()))?;
            if let Some(parent) = self.target.parent() {
                crate::fsutil::sync_dir(&crate::storage::RealStorage, parent)?;
            }
        }
        self.done = true;
        let store = KeyedStore::open(&self.target, crate::OpenOptions::new().sync(self.sync))?;
        // The old directory now sits at the temporary path.
        if self.replace {
            if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
                tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove the replaced data");
            }
        }
        Ok(Installed { store, records })
    }
}

impl Drop for SnapshotInstall {
    /// A snapshot cut short leaves nothing behind.
    fn drop(&mut self) {
        if !self.done {
            self.files.clear();
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Builds the id map of a directory holding only data files written through
/// the keyed layer (a snapshot received from a master), from the envelopes:
/// then it opens like any ourkv directory, at `epoch`. Returns the records
/// read and where the data ends.
fn rebuild_from_envelopes(
    dir: &Path,
    config: &crate::Config,
    epoch: u64,
) -> Result<(u64, Location)> {
    use crate::datafile::{self, DataFile};
    use crate::scan::{walk, Piece};
    config.validate()?;
    let keysize = config.keysize()?;
    let table = crate::lookup::LookupTable::new(config.record_nr_max);
    let mut next_id = 1u32;
    let mut records = 0u64;
    let mut end = Location::new(0, 1);
    let mut lens = std::collections::BTreeMap::new();
    for nr in datafile::list(dir)? {
        lens.insert(
            nr,
            DataFile::open(&crate::storage::RealStorage, dir, nr, false)?.len()?,
        );
    }
    for nr in datafile::list(dir)? {
        let f = DataFile::open(&crate::storage::RealStorage, dir, nr, true)?;
        let bytes = f.read_all()?;
        let mut bad = None;
        let place = crate::scan::Place {
            file_nr: nr,
            base: 0,
            lens: &lens,
            keysize,
        };
        walk(place, &bytes, 1, |pos, piece| match piece {
            Piece::Record(h) => {
                let loc = Location::new(nr, pos as u32);
                let value = &bytes[pos + crate::HEADER_LEN..pos + h.record_len() as usize];
                match Envelope::decode(value) {
                    Ok(env) if env.id < config.record_nr_max => {
                        records += 1;
                        table.set(
                            env.id,
                            // A group's tombstone stays until open
                            // knows the group is whole.
                            if !env.kind.deletes() || env.group.is_some() {
                                loc
                            } else {
                                Location::NONE
                            },
                        );
                        next_id = next_id.max(env.id + 1);
                    }
                    Ok(env) => {
                        bad.get_or_insert(format!(
                            "record at {loc} names id {} beyond record_nr_max",
                            env.id
                        ));
                    }
                    Err(e) => {
                        bad.get_or_insert(format!("record at {loc}: {e}"));
                    }
                }
            }
            Piece::ZeroRun(n) => {
                bad.get_or_insert(format!("{n} zero bytes at {nr}.db:{pos}"));
            }
            Piece::Bad(what) => {
                bad.get_or_insert(format!("{what} at {nr}.db:{pos}"));
            }
        });
        if let Some(detail) = bad {
            return Err(Error::Corrupt {
                path: datafile::data_path(dir, nr),
                detail,
            });
        }
        f.sync_data()?;
        end = Location::new(nr, bytes.len() as u32);
    }
    crate::lookup::write_dump(
        &crate::storage::RealStorage,
        dir,
        &table,
        keysize,
        config.incremental.then_some(next_id),
    )?;
    crate::meta::Meta {
        keysize,
        config: crate::Config {
            keysize: Some(keysize),
            ..config.clone()
        },
        origin: crate::meta::Origin::Ourkv,
        epoch,
    }
    .store(dir)?;
    crate::wal::create(
        &crate::storage::RealStorage,
        dir,
        crate::wal::WalHeader {
            checkpoint: end,
            next_id,
            has_dump: true,
            envelopes: false,
            cut: false,
        },
    )?;
    crate::fsutil::sync_dir(&crate::storage::RealStorage, dir)?;
    Ok((records, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SnapshotPos;

    fn store(dir: &Path) -> KeyedStore {
        KeyedStore::open(dir, crate::OpenOptions::new()).unwrap()
    }

    fn chunks(from: &KeyedStore, max: usize) -> Vec<SnapshotChunk> {
        let end = from.db().end();
        let mut pos = SnapshotPos::default();
        let mut out = Vec::new();
        while let Some(c) = from.db().snapshot_chunk(end, pos, max).unwrap() {
            pos = c.next_pos();
            out.push(c);
        }
        out
    }

    #[test]
    fn a_snapshot_replaces_the_data_and_the_keys() {
        let (m, w) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = store(&m.path().join("db"));
        for i in 0..50 {
            master
                .put(&format!("k{i}"), format!("v{i}").as_bytes())
                .unwrap();
        }
        master.delete("k7").unwrap();
        let worker = store(&w.path().join("db"));
        worker.put("only-here", b"x").unwrap();
        let mut install = SnapshotInstall::begin(&worker).unwrap();
        for c in chunks(&master, 100) {
            install.write(&c).unwrap();
        }
        let done = install.finish(9, master.db().end()).unwrap();
        assert_eq!(done.records, 51);
        let fresh = done.store;
        assert_eq!(fresh.db().meta().epoch, 9);
        assert_eq!(fresh.get("k3").unwrap().as_deref(), Some(&b"v3"[..]));
        assert_eq!(fresh.get("k7").unwrap(), None);
        assert_eq!(fresh.get("only-here").unwrap(), None);
        assert_eq!(
            fresh.db().digest().unwrap().crc32,
            master.db().digest().unwrap().crc32
        );
        // The old store still reads what it had; its directory is gone.
        assert_eq!(worker.get("only-here").unwrap().as_deref(), Some(&b"x"[..]));
        assert!(!w.path().join(".db.snapshot-tmp").exists());
    }

    #[test]
    fn a_snapshot_into_a_new_directory_appears_only_whole() {
        let (m, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = store(&m.path().join("db"));
        for i in 0..30 {
            master.put(&format!("k{i}"), b"value").unwrap();
        }
        let config = master.db().config().clone();
        // A directory with something in it is refused before anything is written.
        let full = b.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"mine").unwrap();
        assert!(matches!(
            SnapshotInstall::create(&full, config.clone()),
            Err(Error::Snapshot(_))
        ));
        assert_eq!(std::fs::read(full.join("x")).unwrap(), b"mine");
        // Cut short: nothing is left.
        let out = b.path().join("nested/backup");
        let cs = chunks(&master, 64);
        let mut install = SnapshotInstall::create(&out, config.clone()).unwrap();
        install.write(&cs[0]).unwrap();
        drop(install);
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0);
        // Whole: the directory opens with every key; an empty one is fine too.
        std::fs::create_dir(&out).unwrap();
        let mut install = SnapshotInstall::create(&out, config).unwrap();
        for c in &cs {
            install.write(c).unwrap();
        }
        let done = install.finish(4, master.db().end()).unwrap();
        assert_eq!(done.records, 30);
        assert_eq!(
            done.store.get("k29").unwrap().as_deref(),
            Some(&b"value"[..])
        );
        assert_eq!(
            done.store.db().digest().unwrap().crc32,
            master.db().digest().unwrap().crc32
        );
        drop(done);
        let again = store(&out);
        assert_eq!(again.len(), 30);
        assert_eq!(again.db().meta().epoch, 4);
    }

    #[test]
    fn chunks_out_of_order_are_refused_and_nothing_is_left() {
        let (m, w) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = store(&m.path().join("db"));
        for i in 0..20 {
            master.put(&format!("k{i}"), b"value").unwrap();
        }
        let worker = store(&w.path().join("db"));
        worker.put("mine", b"kept").unwrap();
        let cs = chunks(&master, 64);
        assert!(cs.len() >= 3);
        let mut install = SnapshotInstall::begin(&worker).unwrap();
        install.write(&cs[0]).unwrap();
        // A gap, a replay, and a far offset (a sparse file) are refused.
        assert!(matches!(install.write(&cs[2]), Err(Error::Snapshot(_))));
        assert!(matches!(install.write(&cs[0]), Err(Error::Snapshot(_))));
        let far = SnapshotChunk {
            file_nr: 0,
            offset: 1 << 40,
            bytes: vec![1],
        };
        assert!(matches!(install.write(&far), Err(Error::Snapshot(_))));
        install.write(&cs[1]).unwrap();
        drop(install);
        assert!(!w.path().join(".db.snapshot-tmp").exists());
        assert_eq!(worker.get("mine").unwrap().as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn a_snapshot_that_ends_elsewhere_than_announced_keeps_the_old_data() {
        let (m, w) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = store(&m.path().join("db"));
        master.put("a", b"1").unwrap();
        let worker_dir = w.path().join("db");
        let worker = store(&worker_dir);
        worker.put("mine", b"kept").unwrap();
        let mut install = SnapshotInstall::begin(&worker).unwrap();
        for c in chunks(&master, 1 << 20) {
            install.write(&c).unwrap();
        }
        let wrong = Location::new(0, master.db().end().position + 1);
        assert!(matches!(install.finish(1, wrong), Err(Error::Snapshot(_))));
        worker.close().unwrap();
        let again = store(&worker_dir);
        assert_eq!(again.get("mine").unwrap().as_deref(), Some(&b"kept"[..]));
        assert!(!w.path().join(".db.snapshot-tmp").exists());
    }
}
