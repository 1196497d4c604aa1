//! The keyed layer: string keys on top of ids.
//!
//! Every record the service writes carries an envelope, so data files are
//! self-describing and the key index can be rebuilt from them:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic `0xE7` |
//! | 1 | 1 | kind: 1 put, 2 tombstone |
//! | 2 | 1 | envelope version, 1 |
//! | 3 | 4 | id, u32 little-endian |
//! | 7 | 2 | key length, u16 little-endian |
//! | 9 | key length | key, UTF-8 |
//! | … | rest | value (empty for a tombstone) |
//!
//! A delete appends a tombstone and then clears the id; ids are never reused.
//! A crash between the two leaves a tombstone as the id's current version,
//! which open treats as deleted.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, RwLock};

use crate::db::{OurDb, Pending};
use crate::error::{Error, Result};
use crate::location::Location;
use crate::record::MAX_VALUE_LEN;

mod snapshot;
pub use snapshot::{Installed, SnapshotInstall};

/// The first byte of every envelope.
pub const MAGIC: u8 = 0xE7;
/// The envelope format version.
pub const VERSION: u8 = 1;
/// Bytes of an envelope before the key: magic, version, kind, id, key length.
pub const ENVELOPE_HEADER: usize = 9;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 1024;

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sets the key to the value.
    Put,
    /// Deletes the key (the value is empty).
    Tombstone,
}

/// A decoded envelope borrowing from the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Put or tombstone.
    pub kind: Kind,
    /// The record's id in the db below.
    pub id: u32,
    /// The key (UTF-8, 1 to 1,024 bytes).
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// The envelope's bytes (a record's value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_HEADER + self.key.len() + self.value.len());
        out.push(MAGIC);
        out.push(match self.kind {
            Kind::Put => 1,
            Kind::Tombstone => 2,
        });
        out.push(VERSION);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.value);
        out
    }

    /// Parses an envelope; an `Envelope` error for anything else.
    pub fn decode(b: &'a [u8]) -> Result<Envelope<'a>> {
        if b.len() < ENVELOPE_HEADER {
            return Err(Error::Envelope(format!(
                "{} bytes is shorter than the header",
                b.len()
            )));
        }
        if b[0] != MAGIC {
            return Err(Error::Envelope(format!(
                "magic {:#04x}, want {MAGIC:#04x}",
                b[0]
            )));
        }
        let kind = match b[1] {
            1 => Kind::Put,
            2 => Kind::Tombstone,
            k => return Err(Error::Envelope(format!("unknown kind {k}"))),
        };
        if b[2] != VERSION {
            return Err(Error::Envelope(format!(
                "unknown envelope version {}",
                b[2]
            )));
        }
        let id = u32::from_le_bytes([b[3], b[4], b[5], b[6]]);
        let klen = u16::from_le_bytes([b[7], b[8]]) as usize;
        let key = b
            .get(ENVELOPE_HEADER..ENVELOPE_HEADER + klen)
            .ok_or_else(|| Error::Envelope(format!("key of {klen} bytes runs past the record")))?;
        let key =
            std::str::from_utf8(key).map_err(|_| Error::Envelope("key is not UTF-8".into()))?;
        let value = &b[ENVELOPE_HEADER + klen..];
        if kind == Kind::Tombstone && !value.is_empty() {
            return Err(Error::Envelope("tombstone with a value".into()));
        }
        Ok(Envelope {
            kind,
            id,
            key,
            value,
        })
    }
}

/// Checks a key for the keyed layer.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey("empty key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey(format!(
            "key of {} bytes; at most {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Largest value that fits beside `key` in one record.
pub fn max_value_len(key: &str) -> usize {
    MAX_VALUE_LEN.saturating_sub(ENVELOPE_HEADER + key.len())
}

/// What a conditional write expects of a key's current version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No condition.
    Any,
    /// The key must not exist (`If-None-Match: *`).
    Absent,
    /// The key must exist (`If-Match: *`).
    Present,
    /// The key's current record must be this one (`If-Match`).
    Version(Location),
    /// The key's current record must be one of these (`If-Match` with a list).
    OneOf(Vec<Location>),
    /// The key must not exist or its current record be none of these
    /// (`If-None-Match` with entity tags).
    NoneOf(Vec<Location>),
}

/// What open found while rebuilding the index.
#[derive(Debug, Default, Clone)]
pub struct IndexReport {
    /// Live keys indexed.
    pub keys: u64,
    /// Ids whose current version was a tombstone (a delete cut short by a crash).
    pub finished_deletes: u64,
}

/// String keys over an incremental-mode `OurDb`.
pub struct KeyedStore {
    db: OurDb,
    index: RwLock<BTreeMap<String, u32>>,
    /// Serialises writers: the id goes into the envelope before the insert.
    write: Mutex<()>,
    report: IndexReport,
}

impl KeyedStore {
    /// Opens `dir` as a keyed store: every record is an envelope, so the
    /// journal need not be synced by group commit (`envelope_journal`).
    pub fn open(dir: impl AsRef<std::path::Path>, opts: crate::OpenOptions) -> Result<KeyedStore> {
        KeyedStore::new(
            opts.envelope_journal(true)
                .record_ids(std::sync::Arc::new(EnvelopeIds))
                .open(dir)?,
        )
    }

    /// Wraps `db` and rebuilds the key index from the live records.
    pub fn new(db: OurDb) -> Result<KeyedStore> {
        if !db.config().incremental {
            return Err(Error::Config(
                "the keyed layer needs an incremental-mode database".into(),
            ));
        }
        let mut index = BTreeMap::new();
        let mut report = IndexReport::default();
        for id in db.ids().collect::<Vec<_>>() {
            let rec = db.get(id)?;
            let env = Envelope::decode(&rec)?;
            if env.id != id {
                return Err(Error::Envelope(format!(
                    "record of id {id} names id {}",
                    env.id
                )));
            }
            match env.kind {
                Kind::Put => {
                    if let Some(other) = index.insert(env.key.to_string(), id) {
                        return Err(Error::Envelope(format!(
                            "key {:?} is live under ids {other} and {id}",
                            env.key
                        )));
                    }
                    report.keys += 1;
                }
                Kind::Tombstone => {
                    if !db.is_read_only() {
                        db.delete(id)?;
                    }
                    report.finished_deletes += 1;
                }
            }
        }
        Ok(KeyedStore {
            db,
            index: RwLock::new(index),
            write: Mutex::new(()),
            report,
        })
    }

    /// The db below.
    pub fn db(&self) -> &OurDb {
        &self.db
    }

    /// Gives up the keyed layer and returns the db.
    pub fn into_db(self) -> OurDb {
        self.db
    }

    /// What rebuilding the key index found.
    pub fn index_report(&self) -> &IndexReport {
        &self.report
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id that holds `key`.
    pub fn id_of(&self, key: &str) -> Option<u32> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Stores `value` under `key`; returns the key's id.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<u32> {
        let (id, _, pending) = self
            .put_inner(key, value, Expect::Any)?
            .expect("no precondition");
        self.db.wait(pending)?;
        Ok(id)
    }

    /// Stores `value` under `key` if the key's current version is what
    /// `expect` says (compare-and-swap); the new version, or `None` if not.
    pub fn put_if(&self, key: &str, value: &[u8], expect: Expect) -> Result<Option<Location>> {
        let Some((_, version, pending)) = self.put_inner(key, value, expect)? else {
            return Ok(None);
        };
        // Wait for durability outside the lock, so concurrent writers share
        // one group commit.
        self.db.wait(pending)?;
        Ok(Some(version))
    }

    /// `put_if` without waiting for durability: the write is visible, and
    /// durable once the database's `commit` (or `wait`) covers `Pending`.
    /// Never blocks on I/O under group commit, so async callers can run it
    /// in place and await a syncer instead.
    pub fn put_if_pending(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Option<(Location, Pending)>> {
        Ok(self
            .put_inner(key, value, expect)?
            .map(|(_, version, pending)| (version, pending)))
    }

    fn put_inner(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Option<(u32, Location, Pending)>> {
        check_key(key)?;
        if value.len() > max_value_len(key) {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: max_value_len(key),
            });
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.db.check_writable()?;
        if !self.expected(key, &expect) {
            return Ok(None);
        }
        let existing = self.id_of(key);
        let id = match existing {
            Some(id) => id,
            None => self.db.next_id()?,
        };
        let rec = Envelope {
            kind: Kind::Put,
            id,
            key,
            value,
        }
        .encode();
        let pending = match existing {
            Some(id) => self.db.set_pending(Some(id), &rec)?.1,
            None => {
                let (got, pending) = self.db.set_pending(None, &rec)?;
                debug_assert_eq!(got, id);
                self.index
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.to_string(), id);
                pending
            }
        };
        let version = self.db.raw_location(id).unwrap_or(Location::NONE);
        Ok(Some((id, version, pending)))
    }

    /// The location of `key`'s current record: it names the version (records
    /// are never rewritten), so it serves as an ETag.
    pub fn version(&self, key: &str) -> Option<Location> {
        self.id_of(key).and_then(|id| self.db.raw_location(id))
    }

    fn expected(&self, key: &str, expect: &Expect) -> bool {
        match expect {
            Expect::Any => true,
            Expect::Absent => self.id_of(key).is_none(),
            Expect::Present => self.id_of(key).is_some(),
            Expect::Version(v) => self.version(key) == Some(*v),
            Expect::OneOf(vs) => self.version(key).is_some_and(|v| vs.contains(&v)),
            Expect::NoneOf(vs) => self.version(key).is_none_or(|v| !vs.contains(&v)),
        }
    }

    /// The current value of `key` with its version.
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Location)>> {
        let Some(id) = self.id_of(key) else {
            return Ok(None);
        };
        // One lookup: the record read is the version named (records are
        // never rewritten), whatever writers do meanwhile.
        let (at, rec) = match self.db.get_located(id) {
            Ok(r) => r,
            // Deleted between the index lookup and the read.
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let env = Envelope::decode(&rec)?;
        if env.kind != Kind::Put || env.key != key {
            return Ok(None);
        }
        // The value is the record's tail: cut the envelope header off in
        // place rather than copy the value into a new buffer.
        let header = rec.len() - env.value.len();
        let mut value = rec;
        value.drain(..header);
        Ok(Some((value, at)))
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(id) = self.id_of(key) else {
            return Ok(None);
        };
        let rec = match self.db.get(id) {
            Ok(r) => r,
            // Deleted between the index lookup and the read.
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let env = Envelope::decode(&rec)?;
        Ok((env.kind == Kind::Put && env.key == key).then(|| env.value.to_vec()))
    }

    /// The key and current value stored under record id `id`.
    pub fn get_by_id(&self, id: u32) -> Result<Option<(String, Vec<u8>)>> {
        let rec = match self.db.get(id) {
            Ok(r) => r,
            Err(Error::NotFound(_) | Error::IdOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let env = Envelope::decode(&rec)?;
        Ok((env.kind == Kind::Put).then(|| (env.key.to_string(), env.value.to_vec())))
    }

    /// Up to `depth` values of `key`, newest first.
    pub fn history(&self, key: &str, depth: usize) -> Result<Vec<Vec<u8>>> {
        let Some(id) = self.id_of(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for rec in self.db.get_history(id, depth)? {
            let env = Envelope::decode(&rec)?;
            if env.kind != Kind::Put || env.key != key {
                break;
            }
            out.push(env.value.to_vec());
        }
        Ok(out)
    }

    /// Deletes `key`; false when it did not exist.
    pub fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.delete_if(key, Expect::Any)?.expect("no precondition"))
    }

    /// Deletes `key` if its current version is what `expect` says: whether
    /// it existed, or `None` if the precondition failed.
    pub fn delete_if(&self, key: &str, expect: Expect) -> Result<Option<bool>> {
        Ok(match self.delete_if_pending(key, expect)? {
            None => None,
            Some(None) => Some(false),
            Some(Some(pending)) => {
                // Outside the lock, as for puts.
                self.db.wait(pending)?;
                Some(true)
            }
        })
    }

    /// `delete_if` without waiting for durability (see `put_if_pending`):
    /// `None` if the precondition failed, `Some(None)` if the key did not
    /// exist, else the delete to wait for.
    pub fn delete_if_pending(&self, key: &str, expect: Expect) -> Result<Option<Option<Pending>>> {
        check_key(key)?;
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        // A failed handle has no say on whether the key exists on disk.
        self.db.check_writable()?;
        if !self.expected(key, &expect) {
            return Ok(None);
        }
        let Some(id) = self.id_of(key) else {
            return Ok(Some(None));
        };
        let tomb = Envelope {
            kind: Kind::Tombstone,
            id,
            key,
            value: &[],
        }
        .encode();
        let _ = self.db.set_pending(Some(id), &tomb)?;
        // The delete's sequence number covers the tombstone before it.
        let pending = self.db.delete_pending(id)?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(Some(Some(pending)))
    }

    /// Keys starting with `prefix`, ascending, after `start_after`, at most `limit`.
    pub fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let lower = match start_after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        index
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Applies records shipped by a master (see `OurDb::read_records`): the
    /// same bytes land at the same positions, and the key index follows the
    /// envelopes. Returns the new end, the replica's cursor.
    pub fn apply_shipped(&self, at: Location, bytes: &[u8]) -> Result<Location> {
        let (end, pending) = self.apply_shipped_pending(at, bytes)?;
        self.db.wait(pending)?;
        Ok(end)
    }

    /// [`KeyedStore::apply_shipped`] without waiting for durability (see
    /// [`OurDb::append_shipped_pending`]): the new end and what to wait for.
    pub fn apply_shipped_pending(&self, at: Location, bytes: &[u8]) -> Result<(Location, Pending)> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes: Vec<(String, Option<u32>)> = Vec::new();
        let (end, pending) = self.db.append_shipped_pending(at, bytes, |value| {
            let env = Envelope::decode(value)?;
            let deletes = env.kind == Kind::Tombstone;
            changes.push((env.key.to_string(), (!deletes).then_some(env.id)));
            Ok((env.id, deletes))
        })?;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for (key, id) in changes {
            match id {
                Some(id) => index.insert(key, id),
                None => index.remove(&key),
            };
        }
        Ok((end, pending))
    }

    /// Cuts the log back to `to` (see [`OurDb::truncate_to`]): every record
    /// at or after it is undone, newest first, tombstones included, and the
    /// key index follows: a key goes back to its version before `to`, comes
    /// back if it was deleted after `to`, and goes if it was created after.
    /// A deposed master does this with its branch point, then resyncs by
    /// shipping from there.
    pub fn truncate_to(&self, to: Location) -> Result<crate::Truncated> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        // Every key the tail touched, with the ids it was under there.
        let mut touched: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let t = self
            .db
            .truncate_with(to, Some(&EnvelopeIds), &mut |_, value| {
                let env = Envelope::decode(value)?;
                let ids = touched.entry(env.key.to_string()).or_default();
                if !ids.contains(&env.id) {
                    ids.push(env.id);
                }
                Ok(())
            })?;
        // A key's version before `to` (if any) is the current record of
        // one of those ids now: a key changes ids only by being deleted and
        // created again, and both are records.
        let holders: Result<Vec<(String, Option<u32>)>> = touched
            .into_iter()
            .map(|(key, ids)| {
                for id in ids {
                    match self.db.get(id) {
                        Ok(rec) => {
                            let env = Envelope::decode(&rec)?;
                            if env.kind == Kind::Put && env.key == key {
                                return Ok((key, Some(id)));
                            }
                        }
                        Err(Error::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((key, None))
            })
            .collect();
        let holders = holders.inspect_err(|_| {
            // The db is cut but the index cannot follow: refuse writes
            // until a reopen rebuilds the index from the records.
            self.db.poison();
        })?;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for (key, id) in holders {
            match id {
                Some(id) => index.insert(key, id),
                None => index.remove(&key),
            };
        }
        Ok(t)
    }

    /// Checkpoints and releases the directory (see [`OurDb::close`]).
    pub fn close(self) -> Result<()> {
        self.db.close()
    }
}

/// Reads ids from envelopes, for an open that redoes records past the
/// journal (`OpenOptions::record_ids`): pass it when opening a keyed store's
/// directory as a plain `OurDb`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeIds;

impl crate::RecordIds for EnvelopeIds {
    fn record_ids(&self, value: &[u8]) -> std::result::Result<(u32, bool), String> {
        let env = Envelope::decode(value).map_err(|e| e.to_string())?;
        Ok((env.id, env.kind == Kind::Tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a failed fsync the store refuses every write, including those
    /// it could answer from its index (a missing key, a precondition): the
    /// index may show a change the disk never got.
    #[test]
    fn a_failed_store_refuses_writes_it_could_answer_from_memory() {
        use crate::storage::faults::FaultyStorage;
        let dir = tempfile::tempdir().unwrap();
        let storage = FaultyStorage::new(3);
        let opts = crate::OpenOptions::new()
            .sync(crate::SyncPolicy::Always)
            .storage(std::sync::Arc::new(storage.clone()));
        let store = KeyedStore::open(dir.path(), opts).unwrap();
        store.put("a", b"1").unwrap();
        store.put("b", b"2").unwrap();
        storage.fail_op(1);
        assert!(store.delete("a").is_err());
        assert_eq!(storage.injected(), 1);
        assert!(matches!(store.delete("a"), Err(Error::Poisoned)));
        assert!(matches!(store.delete("nope"), Err(Error::Poisoned)));
        assert!(matches!(
            store.put_if("b", b"3", Expect::Absent),
            Err(Error::Poisoned)
        ));
        assert!(matches!(store.put("c", b"4"), Err(Error::Poisoned)));
    }

    #[test]
    fn compare_and_swap_by_version() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            KeyedStore::new(OurDb::open(dir.path(), crate::Config::default()).unwrap()).unwrap();
        let v1 = store
            .put_if("k", b"one", Expect::Absent)
            .unwrap()
            .expect("absent");
        assert_eq!(store.put_if("k", b"again", Expect::Absent).unwrap(), None);
        assert_eq!(
            store.get_versioned("k").unwrap(),
            Some((b"one".to_vec(), v1))
        );
        let v2 = store
            .put_if("k", b"two", Expect::Version(v1))
            .unwrap()
            .expect("current");
        assert_ne!(v1, v2);
        // The old version no longer matches: nothing changes.
        assert_eq!(
            store.put_if("k", b"lost", Expect::Version(v1)).unwrap(),
            None
        );
        assert_eq!(store.delete_if("k", Expect::Version(v1)).unwrap(), None);
        assert_eq!(store.get("k").unwrap(), Some(b"two".to_vec()));
        assert_eq!(
            store.delete_if("k", Expect::Version(v2)).unwrap(),
            Some(true)
        );
        assert_eq!(store.get_versioned("k").unwrap(), None);
        assert_eq!(store.delete_if("k", Expect::Any).unwrap(), Some(false));
    }

    #[test]
    fn envelope_roundtrip_and_rejects() {
        let e = Envelope {
            kind: Kind::Put,
            id: 42,
            key: "a/b",
            value: b"xyz",
        };
        let b = e.encode();
        assert_eq!(b.len(), ENVELOPE_HEADER + 3 + 3);
        assert_eq!(Envelope::decode(&b).unwrap(), e);
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(Envelope::decode(&bad).is_err());
        let mut bad = b.clone();
        bad[7] = 200; // key length past the end
        assert!(Envelope::decode(&bad).is_err());
        let t = Envelope {
            kind: Kind::Tombstone,
            id: 1,
            key: "k",
            value: b"",
        };
        let mut tb = t.encode();
        assert_eq!(Envelope::decode(&tb).unwrap(), t);
        tb.push(1);
        assert!(Envelope::decode(&tb).is_err());
    }
}
