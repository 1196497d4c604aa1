//! The keyed layer: string keys on top of ids.
//!
//! Every record the service writes carries an envelope, so data files are
//! self-describing and the key index can be rebuilt from them:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic `0xE7` |
//! | 1 | 1 | kind: 1 put, 2 tombstone, 3 chunk, 4 chunked put, 5 expiring put, 6 expiry, 7 lease, 8 leased put |
//! | 2 | 1 | envelope version, 1 |
//! | 3 | 4 | id, u32 little-endian |
//! | 7 | 2 | key length, u16 little-endian |
//! | 9 | key length | key, UTF-8 |
//! | … | rest | value (empty for a tombstone) |
//!
//! A delete appends a tombstone and then clears the id; ids are never reused.
//! A crash between the two leaves a tombstone as the id's current version,
//! which open treats as deleted.
//!
//! Records that must become visible together (a transaction) form a group:
//! each carries envelope version 2, which adds 7 bytes after the key length:
//! the group's start (file number u16 LE, position u32 LE: where its first
//! record lies) and a flags byte (bit 0: the group's last record). Readers
//! never see a record at or past the start of a group that is not whole
//! (`hide_from`): they read the id's version before it. A group cut short by
//! a crash is cut off the log at open.
//!
//! A value too large for one record is stored as a group on its key's id:
//! chunk records (kind 3, a piece of the value each), then a chunked put
//! (kind 4) whose value says how many chunks precede it and the total
//! length. The pieces are found by following the id's version chain back.
//!
//! A key with a time to live is written as an expiring put (kind 5) whose
//! value starts with its deadline (u64 LE, milliseconds since the Unix
//! epoch, the master's clock), or as a chunked put with the deadline after
//! its length. The master writes an expiry (kind 6, a tombstone) when the
//! deadline passes; replicas apply it like any record.
//!
//! A lease is an id of its own whose records have an empty key: a lease
//! record (kind 7: its time to live and its deadline, u64 LE each) grants
//! it and every keep-alive writes a new one. A key attached to it is a
//! leased put (kind 8) whose value starts with the lease's id (u32 LE), or
//! a chunked put with the lease's id after its length. When the lease ends
//! (revoked, or its deadline passed on the master's clock) the master
//! writes one group: an expiry of each of its keys, then an expiry of the
//! lease's id.

use std::collections::BTreeMap;

/// A key as the index holds it.
type IndexKey = compact_str::CompactString;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::db::{OurDb, Pending};
use crate::error::{Error, Result};
use crate::location::Location;
use crate::record::MAX_VALUE_LEN;

mod snapshot;
pub use snapshot::{Installed, SnapshotInstall};

/// The first byte of every envelope.
pub const MAGIC: u8 = 0xE7;
/// The envelope format version of a record on its own.
pub const VERSION: u8 = 1;
/// The envelope format version of a record in a group.
pub const VERSION_GROUP: u8 = 2;
/// Bytes of an envelope before the key: magic, version, kind, id, key length.
pub const ENVELOPE_HEADER: usize = 9;
/// Bytes a group member's envelope adds before the key: start and flags.
pub const GROUP_HEADER: usize = 7;
/// Largest value the keyed layer stores (as chunks past one record).
pub const MAX_VALUE_BYTES: usize = 16 << 20;
/// Most bytes of values `history` returns (one value at least): they travel
/// in one reply.
pub const HISTORY_BYTES: usize = 16 << 20;
/// A chunked put's value: the chunk count (u32 LE) and the total length (u64 LE).
pub const CHUNKED_LEN: usize = 12;
/// Most value bytes a transaction reads (its gets and value conditions):
/// its answer travels in one frame.
pub const MAX_TXN_READ_BYTES: usize = 16 << 20;
/// Most operations (puts, deletes, gets) in one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Most conditions in one transaction.
pub const MAX_TXN_CONDITIONS: usize = 128;
/// Most key and value bytes a transaction writes: a group stays well inside
/// one shipped segment (1 MiB), so a watch always moves past it in one read.
pub const MAX_TXN_BYTES: usize = 512 * 1024;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 1024;

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sets the key to the value.
    Put,
    /// Deletes the key (the value is empty).
    Tombstone,
    /// A piece of a value too large for one record; the chunked put that
    /// follows it in the group sets the key.
    Chunk,
    /// Sets the key to the pieces of the chunk records before it, in order.
    Chunked,
    /// Sets the key to a value until a deadline (the first 8 bytes).
    Expiring,
    /// Deletes the key because its deadline passed (written by the master).
    Expired,
    /// Grants a lease or keeps it alive (the key is empty; the value is
    /// the time to live and the deadline).
    Lease,
    /// Sets the key to a value for as long as a lease lives (the first 4
    /// bytes are the lease's id).
    Leased,
}

impl Kind {
    /// Whether a record of this kind sets its key to a value.
    pub fn sets_value(self) -> bool {
        matches!(
            self,
            Kind::Put | Kind::Chunked | Kind::Expiring | Kind::Leased
        )
    }

    /// Whether a record of this kind deletes its key.
    pub fn deletes(self) -> bool {
        matches!(self, Kind::Tombstone | Kind::Expired)
    }
}

/// Bytes an expiring put's deadline takes before its value.
pub const DEADLINE_LEN: usize = 8;
/// A chunked put's value with a deadline after the count and length.
pub const CHUNKED_DEADLINE_LEN: usize = CHUNKED_LEN + DEADLINE_LEN;
/// Bytes a leased put's lease id takes before its value.
pub const LEASE_ID_LEN: usize = 4;
/// A chunked put's value with a lease id after the count and length.
pub const CHUNKED_LEASE_LEN: usize = CHUNKED_LEN + LEASE_ID_LEN;
/// A lease record's value: time to live and deadline (u64 LE each).
pub const LEASE_LEN: usize = 16;
/// Most keys attached to one lease: its end is one group of records, which
/// a watch reads whole (at most about 4.3 MiB of expiries).
pub const MAX_LEASE_KEYS: usize = 4096;

/// What ends a key's life besides a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tie {
    /// Nothing: it lives until deleted.
    None,
    /// A deadline (milliseconds since the Unix epoch, the master's clock).
    Deadline(u64),
    /// A lease: it lives as long as the lease.
    Lease(u32),
}

/// What ends the life of the key a record sets.
pub fn tie_of(env: &Envelope<'_>) -> Tie {
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    match env.kind {
        Kind::Expiring => Tie::Deadline(le64(&env.value[..DEADLINE_LEN])),
        Kind::Leased => Tie::Lease(le32(&env.value[..LEASE_ID_LEN])),
        Kind::Chunked if env.value.len() == CHUNKED_DEADLINE_LEN => {
            Tie::Deadline(le64(&env.value[CHUNKED_LEN..]))
        }
        Kind::Chunked if env.value.len() == CHUNKED_LEASE_LEN => {
            Tie::Lease(le32(&env.value[CHUNKED_LEN..]))
        }
        _ => Tie::None,
    }
}

/// The deadline a record's key expires at (milliseconds since the Unix
/// epoch), if it has one.
pub fn deadline_of(env: &Envelope<'_>) -> Option<u64> {
    match tie_of(env) {
        Tie::Deadline(d) => Some(d),
        _ => None,
    }
}

/// A lease record's time to live and deadline (milliseconds).
fn lease_terms(env: &Envelope<'_>) -> (u64, u64) {
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    (le64(&env.value[..8]), le64(&env.value[8..LEASE_LEN]))
}

/// A record's place in a group of records that become visible together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Where the group's first record lies.
    pub start: Location,
    /// Whether this record ends the group.
    pub last: bool,
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
    /// The group the record belongs to (envelope version 2), if any.
    pub group: Option<Group>,
}

impl<'a> Envelope<'a> {
    /// The value a put held in one record sets (after its deadline or
    /// lease); `None` for other kinds.
    pub fn inline_value(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Put => Some(self.value),
            Kind::Expiring => Some(&self.value[DEADLINE_LEN..]),
            Kind::Leased => Some(&self.value[LEASE_ID_LEN..]),
            _ => None,
        }
    }

    /// Whether the record belongs to a lease (a grant, a keep-alive, or
    /// the expiry that ends it) rather than to a key.
    pub fn is_lease(&self) -> bool {
        self.key.is_empty()
    }

    /// The envelope's bytes (a record's value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(ENVELOPE_HEADER + GROUP_HEADER + self.key.len() + self.value.len());
        out.push(MAGIC);
        out.push(match self.kind {
            Kind::Put => 1,
            Kind::Tombstone => 2,
            Kind::Chunk => 3,
            Kind::Chunked => 4,
            Kind::Expiring => 5,
            Kind::Expired => 6,
            Kind::Lease => 7,
            Kind::Leased => 8,
        });
        out.push(if self.group.is_some() {
            VERSION_GROUP
        } else {
            VERSION
        });
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        if let Some(g) = self.group {
            out.extend_from_slice(&g.start.file_nr.to_le_bytes());
            out.extend_from_slice(&g.start.position.to_le_bytes());
            out.push(g.last as u8);
        }
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
            3 => Kind::Chunk,
            4 => Kind::Chunked,
            5 => Kind::Expiring,
            6 => Kind::Expired,
            7 => Kind::Lease,
            8 => Kind::Leased,
            k => return Err(Error::Envelope(format!("unknown kind {k}"))),
        };
        let (group, key_at) = match b[2] {
            VERSION => (None, ENVELOPE_HEADER),
            VERSION_GROUP => {
                let g = b
                    .get(ENVELOPE_HEADER..ENVELOPE_HEADER + GROUP_HEADER)
                    .ok_or_else(|| Error::Envelope("group header runs past the record".into()))?;
                if g[6] & !1 != 0 {
                    return Err(Error::Envelope(format!(
                        "unknown group flags {:#04x}",
                        g[6]
                    )));
                }
                let start = Location::new(
                    u16::from_le_bytes([g[0], g[1]]),
                    u32::from_le_bytes([g[2], g[3], g[4], g[5]]),
                );
                let last = g[6] & 1 == 1;
                (Some(Group { start, last }), ENVELOPE_HEADER + GROUP_HEADER)
            }
            v => return Err(Error::Envelope(format!("unknown envelope version {v}"))),
        };
        let id = u32::from_le_bytes([b[3], b[4], b[5], b[6]]);
        let klen = u16::from_le_bytes([b[7], b[8]]) as usize;
        let key = b
            .get(key_at..key_at + klen)
            .ok_or_else(|| Error::Envelope(format!("key of {klen} bytes runs past the record")))?;
        let key =
            std::str::from_utf8(key).map_err(|_| Error::Envelope("key is not UTF-8".into()))?;
        let value = &b[key_at + klen..];
        if kind.deletes() && !value.is_empty() {
            return Err(Error::Envelope("tombstone with a value".into()));
        }
        if kind == Kind::Expiring && value.len() < DEADLINE_LEN {
            return Err(Error::Envelope("expiring put without its deadline".into()));
        }
        // An empty key is a lease's: lease records, and the expiry that ends one.
        if key.is_empty() != (kind == Kind::Lease || (kind.deletes() && key.is_empty())) {
            return Err(Error::Envelope(format!(
                "a record of kind {kind:?} with key {key:?}"
            )));
        }
        if kind == Kind::Lease && value.len() != LEASE_LEN {
            return Err(Error::Envelope(format!(
                "lease record of {} bytes, want {LEASE_LEN}",
                value.len()
            )));
        }
        if kind == Kind::Leased && value.len() < LEASE_ID_LEN {
            return Err(Error::Envelope("leased put without its lease".into()));
        }
        const CHUNKED_LENS: [usize; 3] = [CHUNKED_LEN, CHUNKED_DEADLINE_LEN, CHUNKED_LEASE_LEN];
        if kind == Kind::Chunked && CHUNKED_LENS.contains(&value.len()) {
            // Counts a reader would trust: chunks of a byte at least, a
            // value within the limit.
            let (n, len) = chunked_header(value);
            if n == 0 || n as u64 > len || len > MAX_VALUE_BYTES as u64 {
                return Err(Error::Envelope(format!(
                    "chunked put of {n} chunks and {len} bytes"
                )));
            }
        }
        if kind == Kind::Chunked && !CHUNKED_LENS.contains(&value.len()) {
            return Err(Error::Envelope(format!(
                "chunked put of {} bytes, want one of {CHUNKED_LENS:?}",
                value.len()
            )));
        }
        Ok(Envelope {
            kind,
            id,
            key,
            value,
            group,
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

/// Most value bytes one group record of `key` holds (a chunk, or a put of
/// a transaction), in a store of the largest records.
pub fn chunk_len(key: &str) -> usize {
    max_value_len(key).saturating_sub(GROUP_HEADER)
}

/// A chunked put's chunk count and total length.
fn chunked_header(value: &[u8]) -> (usize, u64) {
    let n = u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) as usize;
    let len = u64::from_le_bytes(value[4..12].try_into().expect("8 bytes"));
    (n, len)
}

/// The value a chunked put at `at` (envelope `env`) sets: its chunk
/// records' pieces, found back along the id's version chain, in order.
/// Also where the chain goes on before the first chunk.
pub fn chunked_value(db: &OurDb, at: Location, env: &Envelope<'_>) -> Result<(Vec<u8>, Location)> {
    let (n, len) = chunked_header(env.value);
    if len > MAX_VALUE_BYTES as u64 {
        return Err(Error::Envelope(format!(
            "chunked put at {at} of {len} bytes, past {MAX_VALUE_BYTES}"
        )));
    }
    let (mut loc, _) = db.read_at(at)?;
    let mut pieces = Vec::with_capacity(n);
    for i in 0..n {
        if loc.is_none() {
            return Err(Error::Envelope(format!(
                "chunked put at {at}: chunk {} of {n} missing",
                n - i
            )));
        }
        let (prev, rec) = db.read_at(loc)?;
        let c = Envelope::decode(&rec)?;
        if c.kind != Kind::Chunk || c.id != env.id || c.key != env.key {
            return Err(Error::Envelope(format!(
                "chunked put at {at}: record at {loc} is no chunk of it"
            )));
        }
        let header = rec.len() - c.value.len();
        pieces.push((rec, header));
        loc = prev;
    }
    let mut value = Vec::with_capacity(len as usize);
    for (rec, header) in pieces.iter().rev() {
        value.extend_from_slice(&rec[*header..]);
    }
    if value.len() as u64 != len {
        return Err(Error::Envelope(format!(
            "chunked put at {at}: {} bytes in its chunks, it says {len}",
            value.len()
        )));
    }
    Ok((value, loc))
}

/// The versions of `id` that compaction keeps for a depth of `depth`
/// values, newest first: a chunked put counts once and takes its chunks.
pub fn compaction_versions(db: &OurDb, id: u32, depth: usize) -> Result<Vec<Vec<u8>>> {
    // A lease's past keep-alives say nothing: only its newest record stays.
    let depth = match db.get(id).ok().as_deref().map(Envelope::decode) {
        Some(Ok(e)) if e.kind == Kind::Lease => 1,
        _ => depth,
    };
    let mut want = depth;
    loop {
        let recs = db.get_history(id, want)?;
        let (mut kept, mut values) = (0usize, 0usize);
        while kept < recs.len() && values < depth {
            let chunks = match Envelope::decode(&recs[kept]) {
                Ok(e) if e.kind == Kind::Chunked => chunked_header(e.value).0,
                _ => 0,
            };
            kept += 1 + chunks;
            values += 1;
        }
        let ended = recs.len() < want;
        if (kept <= recs.len() && values >= depth) || ended {
            let mut recs = recs;
            recs.truncate(kept);
            return Ok(recs);
        }
        want = want.saturating_mul(2);
    }
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
    /// Records of a group the log ended inside of (a transaction cut short
    /// by a crash), cut off at open.
    pub torn_group_records: u64,
}

/// A condition of a transaction, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The key's current version is what the expectation says (exists,
    /// absent, a version).
    Version(String, Expect),
    /// The key exists with exactly this value.
    ValueIs(String, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store a value.
    Put(String, Vec<u8>),
    /// Delete a key (nothing if it does not exist).
    Delete(String),
    /// Read a key as the transaction sees it at that point.
    Get(String),
}

impl Op {
    /// The key the operation is on.
    pub fn key(&self) -> &str {
        match self {
            Op::Put(k, _) | Op::Delete(k) | Op::Get(k) => k,
        }
    }
}

/// What one operation of an applied transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The key's new version.
    Put(Location),
    /// Whether the key existed.
    Delete(bool),
    /// The key's value and version at that point of the transaction.
    Get(Option<(Vec<u8>, Location)>),
}

/// How a transaction ended.
#[derive(Debug)]
pub enum TxnOutcome {
    /// The condition of this index did not hold: nothing was written.
    Failed(usize),
    /// Applied: one result per operation, and what to wait for before the
    /// writes are durable (`None`: nothing was written).
    Applied(Vec<OpResult>, Option<Pending>),
}

/// Checks a transaction against the limits, before anything is locked.
pub fn check_txn(conditions: &[Condition], ops: &[Op]) -> Result<()> {
    if ops.len() > MAX_TXN_OPS {
        return Err(Error::TxnTooLarge(format!(
            "{} operations; at most {MAX_TXN_OPS}",
            ops.len()
        )));
    }
    if conditions.len() > MAX_TXN_CONDITIONS {
        return Err(Error::TxnTooLarge(format!(
            "{} conditions; at most {MAX_TXN_CONDITIONS}",
            conditions.len()
        )));
    }
    for c in conditions {
        match c {
            Condition::Version(k, _) | Condition::ValueIs(k, _) => check_key(k)?,
        }
    }
    let mut bytes = 0usize;
    let mut written = std::collections::HashSet::new();
    for op in ops {
        check_key(op.key())?;
        if let Op::Put(k, v) = op {
            let max = chunk_len(k);
            if v.len() > max {
                return Err(Error::ValueTooLarge { len: v.len(), max });
            }
            bytes += v.len();
        }
        if matches!(op, Op::Put(..) | Op::Delete(_)) {
            bytes += op.key().len();
            if !written.insert(op.key()) {
                return Err(Error::InvalidTxn(format!(
                    "key {:?} is written twice",
                    op.key()
                )));
            }
        }
    }
    if bytes > MAX_TXN_BYTES {
        return Err(Error::TxnTooLarge(format!(
            "{bytes} bytes of keys and values written; at most {MAX_TXN_BYTES}"
        )));
    }
    Ok(())
}

/// `read` plus the bytes of `value`, or the error past the read limit.
fn count_read(read: usize, value: Option<&Vec<u8>>) -> Result<usize> {
    count_bytes(read, value.map_or(0, Vec::len))
}

/// `read` plus `n` bytes, or the error past the read limit.
fn count_bytes(read: usize, n: usize) -> Result<usize> {
    let read = read + n;
    if read > MAX_TXN_READ_BYTES {
        return Err(Error::TxnTooLarge(format!(
            "it reads more than {MAX_TXN_READ_BYTES} bytes of values: read large values one by one"
        )));
    }
    Ok(read)
}

/// `hide_from` when nothing is hidden.
const SHOWN: u64 = u64::MAX;

/// A location as a number that orders as the location does.
fn order(at: Location) -> u64 {
    ((at.file_nr as u64) << 32) | at.position as u64
}

fn unorder(v: u64) -> Location {
    Location::new((v >> 32) as u16, v as u32)
}

/// A key-index change of a record not visible yet, applied once it is.
#[derive(Debug)]
struct Deferred {
    at: Location,
    key: String,
    id: u32,
    tombstone: bool,
    tie: Tie,
    /// A lease record's time to live and deadline.
    lease: Option<(u64, u64)>,
}

/// What writers share, under the write lock.
#[derive(Debug, Default)]
struct Writes {
    /// A replica's group shipped in part so far: where it starts.
    open_group: Option<Location>,
    /// Index changes of shipped records that are hidden, in log order.
    deferred: Vec<Deferred>,
}

/// String keys over an incremental-mode `OurDb`.
pub struct KeyedStore {
    db: OurDb,
    /// Keys up to 24 bytes are held in the tree's nodes themselves (no
    /// pointer to follow per comparison, no allocation of their own).
    index: RwLock<BTreeMap<IndexKey, u32>>,
    /// Serialises writers: the id goes into the envelope before the insert.
    write: Mutex<Writes>,
    /// Readers see no record at or after this location (`order`), or all
    /// of them (`SHOWN`): the start of a group not yet whole. Set before an
    /// id points at a hidden record (a lookup entry is stored with release
    /// ordering after it), cleared once the group is whole.
    hide_from: AtomicU64,
    /// Live keys with a deadline.
    expiry: Mutex<Expiry>,
    report: IndexReport,
}

/// Live keys with a deadline, by deadline and by key; live leases and the
/// keys attached to them.
#[derive(Debug, Default)]
struct Expiry {
    by_time: std::collections::BTreeSet<(u64, String)>,
    by_key: std::collections::HashMap<String, u64>,
    leases: std::collections::HashMap<u32, LeaseState>,
    lease_time: std::collections::BTreeSet<(u64, u32)>,
    key_lease: std::collections::HashMap<String, u32>,
}

/// A live lease.
#[derive(Debug, Default)]
struct LeaseState {
    ttl_ms: u64,
    deadline: u64,
    /// Whether its record was seen: keys that name a lease with none (only
    /// a damaged log has them) end at once, with no record of the lease.
    granted: bool,
    keys: std::collections::BTreeSet<String>,
}

/// A lease as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its id (the id of its records).
    pub id: u32,
    /// Its time to live (milliseconds): a keep-alive moves the deadline
    /// that far past its time.
    pub ttl_ms: u64,
    /// When it ends unless kept alive (milliseconds since the Unix epoch,
    /// the master's clock).
    pub deadline: u64,
    /// Its keys, ascending (at most the number asked for).
    pub keys: Vec<String>,
    /// How many keys it holds.
    pub key_count: usize,
}

/// Up to `max` entries of `by_time` due at `now`, earliest first.
fn due_in<T: Clone>(
    by_time: &std::collections::BTreeSet<(u64, T)>,
    now: u64,
    max: usize,
) -> Vec<T> {
    by_time
        .iter()
        .take_while(|(d, _)| *d <= now)
        .take(max)
        .map(|(_, t)| t.clone())
        .collect()
}

impl Expiry {
    /// What ends `key`'s life is now `tie` (`Tie::None` also when it is gone).
    fn set(&mut self, key: &str, tie: Tie) {
        if tie == Tie::None && self.by_key.is_empty() && self.key_lease.is_empty() {
            return;
        }
        if let Some(old) = self.by_key.remove(key) {
            self.by_time.remove(&(old, key.to_string()));
        }
        if let Some(old) = self.key_lease.remove(key) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        match tie {
            Tie::None => {}
            Tie::Deadline(d) => {
                self.by_key.insert(key.to_string(), d);
                self.by_time.insert((d, key.to_string()));
            }
            Tie::Lease(id) => {
                self.key_lease.insert(key.to_string(), id);
                self.leases
                    .entry(id)
                    .or_default()
                    .keys
                    .insert(key.to_string());
            }
        }
    }

    /// Lease `id` was granted or kept alive.
    fn grant(&mut self, id: u32, ttl_ms: u64, deadline: u64) {
        let l = self.leases.entry(id).or_default();
        // Also the entry `settle` made for a lease without its record.
        self.lease_time.remove(&(l.deadline, id));
        (l.ttl_ms, l.deadline, l.granted) = (ttl_ms, deadline, true);
        self.lease_time.insert((deadline, id));
    }

    /// Lease `id` ended; its keys are gone with it.
    fn end(&mut self, id: u32) {
        if let Some(l) = self.leases.remove(&id) {
            self.lease_time.remove(&(l.deadline, id));
            for k in &l.keys {
                self.key_lease.remove(k);
            }
        }
    }

    /// Keys that name a lease whose record was not seen end at once (a
    /// deadline of 0).
    fn settle(&mut self) {
        for (id, l) in &self.leases {
            if !l.granted {
                self.lease_time.insert((0, *id));
            }
        }
    }

    /// The earliest deadline of a key or a lease.
    fn next(&self) -> Option<u64> {
        let key = self.by_time.first().map(|(d, _)| *d);
        let lease = self.lease_time.first().map(|(d, _)| *d);
        match (key, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Lease `id` if it lives at `now` (`None`: any time).
    fn live(&self, id: u32, now: Option<u64>) -> Option<&LeaseState> {
        self.leases
            .get(&id)
            .filter(|l| l.granted && now.is_none_or(|now| l.deadline > now))
    }
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

    /// Wraps `db` and rebuilds the key index from the live records. A group
    /// the log ends inside of is cut off (read-only: hidden).
    pub fn new(db: OurDb) -> Result<KeyedStore> {
        if !db.config().incremental {
            return Err(Error::Config(
                "the keyed layer needs an incremental-mode database".into(),
            ));
        }
        let mut store = KeyedStore {
            db,
            index: RwLock::new(BTreeMap::new()),
            write: Mutex::new(Writes::default()),
            hide_from: AtomicU64::new(SHOWN),
            expiry: Mutex::new(Expiry::default()),
            report: IndexReport::default(),
        };
        let (mut tombstones, last_group) = store.build_index()?;
        if let Some(start) = last_group {
            if torn_at(&store.db, start)? {
                if store.db.is_read_only() {
                    store.hide_from.store(order(start), Ordering::SeqCst);
                } else {
                    let t =
                        store
                            .db
                            .truncate_with(start, Some(&EnvelopeIds), &mut |_, _| Ok(()))?;
                    tracing::warn!(
                        dir = %store.db.dir().display(),
                        %start,
                        records = t.records,
                        "cut off a group of records that a crash left unfinished"
                    );
                    store.report.torn_group_records = t.records;
                }
                store.index = RwLock::new(BTreeMap::new());
                (tombstones, _) = store.build_index()?;
            }
        }
        if !store.db.is_read_only() {
            for &id in &tombstones {
                store.db.delete(id)?;
            }
        }
        store.report.finished_deletes = tombstones.len() as u64;
        Ok(store)
    }

    /// Fills the index from the visible current records; returns the ids
    /// whose visible version is a tombstone (deletes to finish) and the
    /// latest group start seen on a current record.
    fn build_index(&mut self) -> Result<(Vec<u32>, Option<Location>)> {
        let index = self.index.get_mut().unwrap_or_else(|e| e.into_inner());
        let expiry = self.expiry.get_mut().unwrap_or_else(|e| e.into_inner());
        *expiry = Expiry::default();
        let mut tombstones = Vec::new();
        let mut last_group: Option<Location> = None;
        let mut keys = 0;
        for id in self.db.ids().collect::<Vec<_>>() {
            let hide = unorder(self.hide_from.load(Ordering::SeqCst));
            let Some((_, rec)) = self.db.get_versions(id, hide, 1)?.pop() else {
                continue;
            };
            let env = Envelope::decode(&rec)?;
            if env.id != id {
                return Err(Error::Envelope(format!(
                    "record of id {id} names id {}",
                    env.id
                )));
            }
            if let Some(g) = env.group {
                last_group = last_group.max(Some(g.start));
            }
            match env.kind {
                Kind::Lease => {
                    let (ttl, deadline) = lease_terms(&env);
                    expiry.grant(id, ttl, deadline);
                }
                Kind::Put | Kind::Chunked | Kind::Expiring | Kind::Leased => {
                    expiry.set(env.key, tie_of(&env));
                    if let Some(other) = index.insert(env.key.into(), id) {
                        return Err(Error::Envelope(format!(
                            "key {:?} is live under ids {other} and {id}",
                            env.key
                        )));
                    }
                    keys += 1;
                }
                Kind::Tombstone | Kind::Expired => tombstones.push(id),
                // Only a group cut short leaves a chunk on top: open cuts it.
                Kind::Chunk => {}
            }
        }
        expiry.settle();
        self.report.keys = keys;
        Ok((tombstones, last_group))
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

    /// Where a replica's group shipped in part starts: its log ends inside
    /// that group, which readers do not see yet.
    pub fn unfinished_group(&self) -> Option<Location> {
        self.write
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open_group
    }

    /// The end of what readers can see: the log's end, or the start of a
    /// group shipped in part.
    pub fn visible_end(&self) -> Location {
        self.unfinished_group().unwrap_or_else(|| self.db.end())
    }

    /// Cuts off a group shipped in part (a replica about to write on its
    /// own: the rest of that group will never come).
    pub fn cut_unfinished_group(&self) -> Result<Option<crate::Truncated>> {
        match self.unfinished_group() {
            Some(start) => self.truncate_to(start).map(Some),
            None => Ok(None),
        }
    }

    /// The current record of `id` as readers see it: the newest version
    /// before a group not yet whole. `None` if the id has none.
    fn visible(&self, id: u32) -> Result<Option<(Location, Vec<u8>)>> {
        let (at, rec) = match self.db.get_located(id) {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // After the lookup's acquire: a hidden record's mark is seen.
        let hide = self.hide_from.load(Ordering::SeqCst);
        if order(at) < hide {
            return Ok(Some((at, rec)));
        }
        match self.db.get_versions(id, unorder(hide), 1) {
            Ok(mut v) => Ok(v.pop()),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
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

    /// The write lock, for a write of this node's own: refused while the
    /// log ends inside a group shipped in part.
    fn lock_own_write(&self) -> Result<std::sync::MutexGuard<'_, Writes>> {
        let w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        // A failed handle has no say on whether a key exists on disk.
        self.db.check_writable()?;
        if let Some(start) = w.open_group {
            return Err(Error::UnfinishedGroup(start));
        }
        Ok(w)
    }

    /// `put_if_pending` for a key that expires at `deadline` (milliseconds
    /// since the Unix epoch): the master writes its expiry then
    /// (`expire_pending`).
    pub fn put_expiring_pending(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
        deadline: u64,
    ) -> Result<Option<(Location, Pending)>> {
        self.put_tied_pending(key, value, expect, Tie::Deadline(deadline), 0)
    }

    /// `put_if_pending` for a key whose life `tie` ends: a deadline, or a
    /// lease (`Error::NoLease` if it does not live at `now`, the master's
    /// clock; `Error::LeaseFull` if it holds `MAX_LEASE_KEYS` others).
    pub fn put_tied_pending(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
        tie: Tie,
        now: u64,
    ) -> Result<Option<(Location, Pending)>> {
        Ok(self
            .put_with(key, value, expect, tie, now)?
            .map(|(_, version, pending)| (version, pending)))
    }

    fn put_inner(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Option<(u32, Location, Pending)>> {
        self.put_with(key, value, expect, Tie::None, 0)
    }

    fn put_with(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
        tie: Tie,
        now: u64,
    ) -> Result<Option<(u32, Location, Pending)>> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        let _w = self.lock_own_write()?;
        if let Tie::Lease(lease) = tie {
            let e = self.expiry();
            let l = e.live(lease, Some(now)).ok_or(Error::NoLease(lease))?;
            if l.keys.len() >= MAX_LEASE_KEYS && !l.keys.contains(key) {
                return Err(Error::LeaseFull {
                    id: lease,
                    max: MAX_LEASE_KEYS,
                });
            }
        }
        if !self.expected(key, &expect) {
            return Ok(None);
        }
        let prefix = match tie {
            Tie::None => Vec::new(),
            Tie::Deadline(d) => d.to_le_bytes().to_vec(),
            Tie::Lease(l) => l.to_le_bytes().to_vec(),
        };
        if value.len() + prefix.len() > self.room(key) {
            let put = self.put_chunked(key, value, &prefix)?;
            self.track(key, tie);
            return Ok(Some(put));
        }
        let existing = self.id_of(key);
        let id = match existing {
            Some(id) => id,
            None => self.db.next_id()?,
        };
        let with_prefix;
        let (kind, value) = match tie {
            Tie::None => (Kind::Put, value),
            Tie::Deadline(_) | Tie::Lease(_) => {
                let mut v = Vec::with_capacity(prefix.len() + value.len());
                v.extend_from_slice(&prefix);
                v.extend_from_slice(value);
                with_prefix = v;
                let kind = match tie {
                    Tie::Deadline(_) => Kind::Expiring,
                    _ => Kind::Leased,
                };
                (kind, &with_prefix[..])
            }
        };
        let rec = Envelope {
            kind,
            id,
            key,
            value,
            group: None,
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
                    .insert(key.into(), id);
                pending
            }
        };
        self.track(key, tie);
        let version = self.db.raw_location(id).unwrap_or(Location::NONE);
        Ok(Some((id, version, pending)))
    }

    /// Notes what ends `key`'s life (`Tie::None`: nothing, or it is gone).
    fn track(&self, key: &str, tie: Tie) {
        self.expiry().set(key, tie);
    }

    /// The deadlines and leases, locked.
    fn expiry(&self) -> std::sync::MutexGuard<'_, Expiry> {
        self.expiry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest deadline of a live key or lease, if any has one.
    pub fn next_deadline(&self) -> Option<u64> {
        self.expiry().next()
    }

    /// `key`'s deadline, if it has one.
    pub fn deadline(&self, key: &str) -> Option<u64> {
        let e = self.expiry();
        e.by_key.get(key).copied()
    }

    /// Up to `max` keys whose deadline is at or before `now`, earliest first.
    pub fn due(&self, now: u64, max: usize) -> Vec<String> {
        let e = self.expiry();
        due_in(&e.by_time, now, max)
    }

    /// Writes `key`'s expiry if its deadline is at or before `now` (else,
    /// or if it is gone or was written again without one, nothing): the
    /// write to wait for. For the master alone: replicas apply its records.
    pub fn expire_pending(&self, key: &str, now: u64) -> Result<Option<Pending>> {
        let _w = self.lock_own_write()?;
        if self.deadline(key).is_none_or(|d| d > now) {
            return Ok(None);
        }
        let Some(id) = self.id_of(key) else {
            self.track(key, Tie::None);
            return Ok(None);
        };
        self.remove(key, id, Kind::Expired).map(Some)
    }

    /// Grants a lease of `ttl_ms` at `now` (the master's clock): a new id
    /// and its lease record. For the master alone.
    pub fn lease_grant_pending(&self, ttl_ms: u64, now: u64) -> Result<(LeaseInfo, Pending)> {
        let _w = self.lock_own_write()?;
        let id = self.db.next_id()?;
        let deadline = now.saturating_add(ttl_ms);
        let pending = self.write_lease(None, id, ttl_ms, deadline)?;
        let info = LeaseInfo {
            id,
            ttl_ms,
            deadline,
            keys: Vec::new(),
            key_count: 0,
        };
        Ok((info, pending))
    }

    /// Keeps lease `id` alive at `now`: a new lease record whose deadline
    /// is `now` plus its time to live. `None` if it does not live at `now`.
    pub fn lease_keep_alive_pending(
        &self,
        id: u32,
        now: u64,
    ) -> Result<Option<(LeaseInfo, Pending)>> {
        let _w = self.lock_own_write()?;
        let ttl = {
            let e = self.expiry();
            match e.live(id, Some(now)) {
                Some(l) => l.ttl_ms,
                None => return Ok(None),
            }
        };
        let pending = self.write_lease(Some(id), id, ttl, now.saturating_add(ttl))?;
        Ok(self.lease(id, 0).map(|info| (info, pending)))
    }

    /// Writes lease `id`'s record (under the write lock).
    fn write_lease(
        &self,
        existing: Option<u32>,
        id: u32,
        ttl_ms: u64,
        deadline: u64,
    ) -> Result<Pending> {
        let mut terms = [0u8; LEASE_LEN];
        terms[..8].copy_from_slice(&ttl_ms.to_le_bytes());
        terms[8..].copy_from_slice(&deadline.to_le_bytes());
        let rec = Envelope {
            kind: Kind::Lease,
            id,
            key: "",
            value: &terms,
            group: None,
        }
        .encode();
        let (got, pending) = self.db.set_pending(existing, &rec)?;
        debug_assert_eq!(got, id);
        self.expiry().grant(id, ttl_ms, deadline);
        Ok(pending)
    }

    /// Lease `id` with up to `max_keys` of its keys, if it lives (its
    /// deadline may have passed: the master ends it soon).
    pub fn lease(&self, id: u32, max_keys: usize) -> Option<LeaseInfo> {
        let e = self.expiry();
        e.live(id, None).map(|l| LeaseInfo {
            id,
            ttl_ms: l.ttl_ms,
            deadline: l.deadline,
            keys: l.keys.iter().take(max_keys).cloned().collect(),
            key_count: l.keys.len(),
        })
    }

    /// Live leases, ascending by id.
    pub fn lease_ids(&self) -> Vec<u32> {
        let e = self.expiry();
        let mut ids: Vec<u32> = e.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &str) -> Option<u32> {
        let e = self.expiry();
        e.key_lease.get(key).copied()
    }

    /// Up to `max` leases whose deadline is at or before `now`, earliest first.
    pub fn due_leases(&self, now: u64, max: usize) -> Vec<u32> {
        let e = self.expiry();
        due_in(&e.lease_time, now, max)
    }

    /// Ends lease `id`: revoked (`due_by` none), or expired if its deadline
    /// is at or before `due_by`. One group of records: an expiry of each of
    /// its keys, then of the lease. The write to wait for; `None` if the
    /// lease does not live (or is not due). For the master alone.
    pub fn end_lease_pending(&self, id: u32, due_by: Option<u64>) -> Result<Option<Pending>> {
        let _w = self.lock_own_write()?;
        let (keys, granted) = {
            let e = self.expiry();
            let Some(l) = e.leases.get(&id) else {
                return Ok(None);
            };
            if l.granted && due_by.is_some_and(|now| l.deadline > now) {
                return Ok(None);
            }
            (l.keys.iter().cloned().collect::<Vec<_>>(), l.granted)
        };
        let keys: Vec<(String, u32)> = keys
            .into_iter()
            .filter_map(|k| self.id_of(&k).map(|i| (k, i)))
            .collect();
        // Each key's id, then the lease's (unless no record of it exists).
        let ids: Vec<(&str, u32)> = keys
            .iter()
            .map(|(k, i)| (k.as_str(), *i))
            .chain(granted.then_some(("", id)))
            .collect();
        if ids.is_empty() {
            self.expiry().end(id);
            return Ok(None);
        }
        let start = self.db.end();
        self.hide_from.store(order(start), Ordering::SeqCst);
        let written = (|| {
            let mut pending = None;
            for (i, &(key, rid)) in ids.iter().enumerate() {
                let rec = Envelope {
                    kind: Kind::Expired,
                    id: rid,
                    key,
                    value: &[],
                    group: Some(Group {
                        start,
                        last: i + 1 == ids.len(),
                    }),
                }
                .encode();
                pending = Some(self.db.set_pending(Some(rid), &rec)?.1);
            }
            Ok(pending.expect("one record at least"))
        })();
        let mut pending = match written {
            Ok(p) => p,
            Err(e) => {
                self.cut_failed_group(start);
                return Err(e);
            }
        };
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            for (key, _) in &keys {
                index.remove(key.as_str());
            }
            self.hide_from.store(SHOWN, Ordering::SeqCst);
        }
        {
            let mut e = self.expiry();
            for (key, _) in &keys {
                e.set(key, Tie::None);
            }
            e.end(id);
        }
        for &(_, rid) in &ids {
            pending = self.db.delete_pending(rid)?;
        }
        Ok(Some(pending))
    }

    /// Deletes `key`, held by `id` (under the write lock): a record of
    /// `kind` (a tombstone or an expiry), then the id's lookup entry and
    /// the key's index entry and deadline.
    fn remove(&self, key: &str, id: u32, kind: Kind) -> Result<Pending> {
        let rec = Envelope {
            kind,
            id,
            key,
            value: &[],
            group: None,
        }
        .encode();
        let _ = self.db.set_pending(Some(id), &rec)?;
        // The delete's sequence number covers the record before it.
        let pending = self.db.delete_pending(id)?;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        self.track(key, Tie::None);
        Ok(pending)
    }

    /// Stores a value too large for one record (under the write lock): its
    /// chunks, then the chunked put (with `tie`: a deadline or lease id in
    /// bytes, or nothing), as one group.
    fn put_chunked(&self, key: &str, value: &[u8], tie: &[u8]) -> Result<(u32, Location, Pending)> {
        let existing = self.id_of(key);
        let id = match existing {
            Some(id) => id,
            None => self.db.next_id()?,
        };
        let start = self.db.end();
        self.hide_from.store(order(start), Ordering::SeqCst);
        let written = (|| {
            let pieces: Vec<&[u8]> = value
                .chunks(self.room(key).saturating_sub(GROUP_HEADER).max(1))
                .collect();
            let group = |last| Some(Group { start, last });
            let mut created = existing.is_some();
            for piece in &pieces {
                let rec = Envelope {
                    kind: Kind::Chunk,
                    id,
                    key,
                    value: piece,
                    group: group(false),
                }
                .encode();
                let (got, _) = self.db.set_pending(created.then_some(id), &rec)?;
                debug_assert_eq!(got, id);
                created = true;
            }
            // The deadline or lease id, if any, after the count and length.
            let mut header = Vec::with_capacity(CHUNKED_LEN + tie.len());
            header.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
            header.extend_from_slice(&(value.len() as u64).to_le_bytes());
            header.extend_from_slice(tie);
            let rec = Envelope {
                kind: Kind::Chunked,
                id,
                key,
                value: &header,
                group: group(true),
            }
            .encode();
            let (_, pending) = self.db.set_pending(Some(id), &rec)?;
            Ok(pending)
        })();
        match written {
            Ok(pending) => {
                let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                if existing.is_none() {
                    index.insert(key.into(), id);
                }
                self.hide_from.store(SHOWN, Ordering::SeqCst);
                drop(index);
                let version = self.db.raw_location(id).unwrap_or(Location::NONE);
                Ok((id, version, pending))
            }
            Err(e) => {
                self.cut_failed_group(start);
                Err(e)
            }
        }
    }

    /// The most value bytes one record of `key` holds in this store (its
    /// record size limit, less the envelope).
    fn room(&self, key: &str) -> usize {
        (self.db.config().record_size_max as usize)
            .min(MAX_VALUE_LEN)
            .saturating_sub(ENVELOPE_HEADER + key.len())
    }

    /// After a failed group write: nothing of it may stay in the log (a
    /// record after it would make it look whole at the next open).
    fn cut_failed_group(&self, start: Location) {
        let cut = self
            .db
            .truncate_with(start, Some(&EnvelopeIds), &mut |_, _| Ok(()));
        if cut.is_err() {
            // The part written stays hidden; a reopen cuts it.
            self.db.poison();
            return;
        }
        self.hide_from.store(SHOWN, Ordering::SeqCst);
    }

    /// The value a record read at `at` sets for `key`: `None` if it sets
    /// none (a tombstone, another key).
    fn value_in(&self, key: &str, at: Location, rec: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let env = Envelope::decode(&rec)?;
        if env.key != key {
            return Ok(None);
        }
        if env.kind == Kind::Chunked {
            return Ok(Some(chunked_value(&self.db, at, &env)?.0));
        }
        let Some(inline) = env.inline_value() else {
            return Ok(None);
        };
        // The value is the record's tail: cut the envelope header (and a
        // deadline or lease id) off in place rather than copy the value.
        let header = rec.len() - inline.len();
        let mut value = rec;
        value.drain(..header);
        Ok(Some(value))
    }

    /// The location of `key`'s current record: it names the version (records
    /// are never rewritten), so it serves as an ETag. For writers (under the
    /// write lock nothing is hidden on a node that writes).
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
        let Some((at, rec)) = self.visible(id)? else {
            return Ok(None);
        };
        Ok(self.value_in(key, at, rec)?.map(|v| (v, at)))
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key)?.map(|(v, _)| v))
    }

    /// The key and current value stored under record id `id`.
    pub fn get_by_id(&self, id: u32) -> Result<Option<(String, Vec<u8>)>> {
        let (at, rec) = match self.visible(id) {
            Ok(Some(r)) => r,
            Ok(None) | Err(Error::IdOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let key = Envelope::decode(&rec)?.key.to_string();
        Ok(self.value_in(&key, at, rec)?.map(|v| (key, v)))
    }

    /// Up to `depth` values of `key`, newest first.
    pub fn history(&self, key: &str, depth: usize) -> Result<Vec<Vec<u8>>> {
        let Some(id) = self.id_of(key) else {
            return Ok(Vec::new());
        };
        let hide = self.hide_from.load(Ordering::SeqCst);
        let mut loc = match self.db.raw_location(id) {
            Some(l) => l,
            None => return Ok(Vec::new()),
        };
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        while out.len() < depth && !loc.is_none() {
            let (prev, rec) = self.db.read_at(loc)?;
            if order(loc) >= hide {
                loc = prev;
                continue;
            }
            let env = Envelope::decode(&rec)?;
            if env.key != key {
                break;
            }
            let (value, next) = match (env.kind, env.inline_value()) {
                (Kind::Chunked, _) => chunked_value(&self.db, loc, &env)?,
                (_, Some(v)) => (v.to_vec(), prev),
                (_, None) => break,
            };
            // One answer carries them all: past HISTORY_BYTES, stop (one
            // value at least).
            bytes += value.len();
            if !out.is_empty() && bytes > HISTORY_BYTES {
                break;
            }
            out.push(value);
            loc = next;
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
        let _w = self.lock_own_write()?;
        if !self.expected(key, &expect) {
            return Ok(None);
        }
        let Some(id) = self.id_of(key) else {
            return Ok(Some(None));
        };
        Ok(Some(Some(self.remove(key, id, Kind::Tombstone)?)))
    }

    /// Applies a transaction: if every condition holds, every operation in
    /// order, as one group of records that readers, replicas and a crash
    /// see whole or not at all. Does not wait for durability (see
    /// `put_if_pending`).
    pub fn txn_pending(&self, conditions: &[Condition], ops: &[Op]) -> Result<TxnOutcome> {
        check_txn(conditions, ops)?;
        for op in ops {
            // This store's records may be smaller than the largest.
            if let Op::Put(k, v) = op {
                let max = self.room(k).saturating_sub(GROUP_HEADER);
                if v.len() > max {
                    return Err(Error::ValueTooLarge { len: v.len(), max });
                }
            }
        }
        let _w = self.lock_own_write()?;
        let mut read = 0usize;
        for (i, c) in conditions.iter().enumerate() {
            let holds = match c {
                Condition::Version(key, e) => self.expected(key, e),
                Condition::ValueIs(key, v) => {
                    let current = self.get(key)?;
                    read = count_read(read, current.as_ref())?;
                    current.as_deref() == Some(v.as_slice())
                }
            };
            if !holds {
                return Ok(TxnOutcome::Failed(i));
            }
        }
        // Keys are written at most once, so what each operation writes is
        // known before any is: the last record ends the group.
        let writes = |op: &Op| match op {
            Op::Put(..) => true,
            Op::Delete(k) => self.id_of(k).is_some(),
            Op::Get(_) => false,
        };
        let Some(last) = ops.iter().rposition(writes) else {
            let results = ops
                .iter()
                .map(|op| {
                    Ok(match op {
                        Op::Get(k) => {
                            let got = self.get_versioned(k)?;
                            read = count_read(read, got.as_ref().map(|(v, _)| v))?;
                            OpResult::Get(got)
                        }
                        _ => OpResult::Delete(false),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(TxnOutcome::Applied(results, None));
        };
        // What its gets see of the state before it, read first: a
        // transaction that would read too much fails before it writes.
        let mut before: std::collections::HashMap<&str, Option<(Vec<u8>, Location)>> =
            std::collections::HashMap::new();
        // What the transaction wrote so far, by key (a put's value length).
        let mut wrote: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    wrote.insert(k, v.len());
                }
                Op::Delete(k) => {
                    wrote.insert(k, 0);
                }
                // Each get answers with a value: each counts, its own
                // writes' values too.
                Op::Get(k) => match wrote.get(k.as_str()) {
                    Some(&n) => read = count_bytes(read, n)?,
                    None => {
                        if !before.contains_key(k.as_str()) {
                            let got = self.get_versioned(k)?;
                            before.insert(k.as_str(), got);
                        }
                        let got = &before[k.as_str()];
                        read = count_read(read, got.as_ref().map(|(v, _)| v))?;
                    }
                },
            }
        }
        let start = self.db.end();
        self.hide_from.store(order(start), Ordering::SeqCst);
        let applied = self.write_group(start, last, ops, &before);
        if applied.is_err() {
            self.cut_failed_group(start);
        }
        applied
    }

    /// The records of a transaction from `start`, the one of operation
    /// `last` ending the group, then the index and the mark switched at once.
    fn write_group(
        &self,
        start: Location,
        last: usize,
        ops: &[Op],
        before: &std::collections::HashMap<&str, Option<(Vec<u8>, Location)>>,
    ) -> Result<TxnOutcome> {
        let mut results = Vec::with_capacity(ops.len());
        // What the transaction wrote so far, for its own gets.
        let mut written: std::collections::HashMap<&str, Option<(usize, Location)>> =
            std::collections::HashMap::new();
        let mut created = Vec::new();
        let mut deleted = Vec::new();
        let mut pending = None;
        for (i, op) in ops.iter().enumerate() {
            let group = Some(Group {
                start,
                last: i == last,
            });
            match op {
                Op::Put(key, value) => {
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
                        group,
                    }
                    .encode();
                    let (got, p) = self.db.set_pending(existing, &rec)?;
                    debug_assert_eq!(got, id);
                    if existing.is_none() {
                        created.push((key.clone(), id));
                    }
                    let at = self.db.raw_location(id).unwrap_or(Location::NONE);
                    written.insert(key, Some((i, at)));
                    results.push(OpResult::Put(at));
                    pending = Some(p);
                }
                Op::Delete(key) => match self.id_of(key) {
                    Some(id) => {
                        let rec = Envelope {
                            kind: Kind::Tombstone,
                            id,
                            key,
                            value: &[],
                            group,
                        }
                        .encode();
                        pending = Some(self.db.set_pending(Some(id), &rec)?.1);
                        deleted.push((key.as_str(), id));
                        written.insert(key, None);
                        results.push(OpResult::Delete(true));
                    }
                    None => results.push(OpResult::Delete(false)),
                },
                Op::Get(key) => results.push(OpResult::Get(match written.get(key.as_str()) {
                    Some(Some((j, at))) => match &ops[*j] {
                        Op::Put(_, v) => Some((v.clone(), *at)),
                        _ => None,
                    },
                    Some(None) => None,
                    None => before.get(key.as_str()).cloned().flatten(),
                })),
            }
        }
        {
            // New keys first (their records are hidden until the mark goes),
            // then the mark: one step for readers.
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            for (key, id) in created {
                index.insert(key.into(), id);
            }
            for (key, _) in &deleted {
                index.remove(*key);
            }
            self.hide_from.store(SHOWN, Ordering::SeqCst);
        }
        // A transaction's puts carry no deadline: they end one.
        for op in ops {
            if let Op::Put(key, _) | Op::Delete(key) = op {
                self.track(key, Tie::None);
            }
        }
        for (_, id) in deleted {
            pending = Some(self.db.delete_pending(id)?);
        }
        Ok(TxnOutcome::Applied(results, pending))
    }

    /// Keys starting with `prefix`, ascending, after `start_after`, at most `limit`.
    pub fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let lower = match start_after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        index
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, _)| k.to_string())
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
    ///
    /// A group may arrive over several calls. From its start on, every
    /// record (of the group or after it) stays hidden, with its index change
    /// and its tombstone's lookup clear held back, until the group is whole;
    /// then all of them show at once.
    pub fn apply_shipped_pending(&self, at: Location, bytes: &[u8]) -> Result<(Location, Pending)> {
        let mut w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut open = w.open_group;
        let mut hide = open;
        let mut changes: Vec<(Deferred, bool)> = Vec::new();
        let mut here = at;
        let appended = self.db.append_shipped_pending(at, bytes, |value| {
            let env = Envelope::decode(value)?;
            let rec_at = here;
            here = Location::new(
                here.file_nr,
                here.position + (crate::HEADER_LEN + value.len()) as u32,
            );
            if let Some(g) = env.group {
                open.get_or_insert(g.start);
                if hide.is_none() {
                    // Before the engine points any id at a record of it.
                    hide = Some(g.start);
                    self.hide_from.store(order(g.start), Ordering::SeqCst);
                }
                if g.last {
                    open = None;
                }
            }
            let hidden = hide.is_some_and(|h| rec_at >= h);
            let tombstone = env.kind.deletes();
            if env.kind == Kind::Chunk {
                // No key change: the chunked put after it makes it.
                return Ok((env.id, false));
            }
            changes.push((
                Deferred {
                    at: rec_at,
                    key: env.key.to_string(),
                    id: env.id,
                    tombstone,
                    tie: tie_of(&env),
                    lease: (env.kind == Kind::Lease).then(|| lease_terms(&env)),
                },
                hidden,
            ));
            // A hidden tombstone's id keeps pointing at it until it shows.
            Ok((env.id, tombstone && !hidden))
        });
        let (end, mut pending) = match appended {
            Ok(r) => r,
            Err(e) => {
                if self.db.check_writable().is_ok() || hide.is_none() {
                    // Nothing was applied: as before.
                    self.hide_from
                        .store(w.open_group.map_or(SHOWN, order), Ordering::SeqCst);
                } else {
                    // A failed handle may have applied part of it: keep it
                    // hidden (a reopen cuts what is not whole).
                    w.open_group = hide;
                }
                return Err(e);
            }
        };
        let earlier = std::mem::take(&mut w.deferred);
        let mut to_clear = Vec::new();
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            let all = earlier.into_iter().map(|d| (d, true)).chain(changes);
            for (d, was_hidden) in all {
                if open.is_some_and(|o| d.at >= o) {
                    w.deferred.push(d);
                    continue;
                }
                if d.key.is_empty() {
                    // A lease's record: granted, kept alive, or ended.
                    let mut e = self.expiry();
                    match d.lease {
                        Some((ttl, deadline)) => e.grant(d.id, ttl, deadline),
                        None => e.end(d.id),
                    }
                    if d.tombstone && was_hidden {
                        to_clear.push(d.id);
                    }
                    continue;
                }
                if d.tombstone {
                    if index.get(d.key.as_str()) == Some(&d.id) {
                        index.remove(d.key.as_str());
                        self.track(&d.key, Tie::None);
                    }
                    if was_hidden {
                        to_clear.push(d.id);
                    }
                } else {
                    self.track(&d.key, d.tie);
                    index.insert(d.key.into(), d.id);
                }
            }
            self.hide_from
                .store(open.map_or(SHOWN, order), Ordering::SeqCst);
        }
        w.open_group = open;
        for id in to_clear {
            pending = self.db.delete_pending(id)?;
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
        let mut w = self.write.lock().unwrap_or_else(|e| e.into_inner());
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
        // Held-back changes of records that are gone go with them; a group
        // cut off whole is no longer open.
        w.deferred.retain(|d| d.at < to);
        if w.open_group.is_some_and(|g| g >= to) {
            w.open_group = None;
            self.hide_from.store(SHOWN, Ordering::SeqCst);
        }
        // A key's version before `to` (if any) is the current record of
        // one of those ids now: a key changes ids only by being deleted and
        // created again, and both are records.
        // Leases the tail touched (records with an empty key): each is as
        // its record before `to` says, if any.
        // Each lease's time to live and deadline now, or none (ended).
        type Terms = Option<(u64, u64)>;
        let leases: Result<Vec<(u32, Terms)>> = touched
            .remove("")
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                let terms = match self.visible(id)? {
                    Some((_, rec)) => {
                        let env = Envelope::decode(&rec)?;
                        (env.kind == Kind::Lease).then(|| lease_terms(&env))
                    }
                    None => None,
                };
                Ok((id, terms))
            })
            .collect();
        // Each key's holder now: its id and what ends its life, or none.
        type Holder = Option<(u32, Tie)>;
        let holders: Result<Vec<(String, Holder)>> = touched
            .into_iter()
            .map(|(key, ids)| {
                for id in ids {
                    if let Some((_, rec)) = self.visible(id)? {
                        let env = Envelope::decode(&rec)?;
                        if env.kind.sets_value() && env.key == key {
                            return Ok((key, Some((id, tie_of(&env)))));
                        }
                    }
                }
                Ok((key, None))
            })
            .collect();
        let (leases, holders) = match (leases, holders) {
            (Ok(l), Ok(h)) => (l, h),
            (Err(e), _) | (_, Err(e)) => {
                // The db is cut but the index cannot follow: refuse writes
                // until a reopen rebuilds the index from the records.
                self.db.poison();
                return Err(e);
            }
        };
        {
            // Before the keys: a key's lease comes back before it does.
            let mut e = self.expiry();
            for (id, terms) in leases {
                match terms {
                    Some((ttl, deadline)) => e.grant(id, ttl, deadline),
                    None => e.end(id),
                }
            }
        }
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for (key, holder) in holders {
            self.track(&key, holder.map_or(Tie::None, |(_, t)| t));
            match holder {
                Some((id, _)) => index.insert(key.into(), id),
                None => index.remove(key.as_str()),
            };
        }
        Ok(t)
    }

    /// Checkpoints and releases the directory (see [`OurDb::close`]).
    pub fn close(self) -> Result<()> {
        self.db.close()
    }
}

/// Cuts off a group of records the log ends inside of (a transaction that
/// a crash cut short), for tools that read a keyed store's directory as a
/// plain database (records that are no envelope are passed over). Returns
/// the records cut.
pub fn cut_torn_group(db: &OurDb) -> Result<u64> {
    let mut last = None;
    for id in db.ids().collect::<Vec<_>>() {
        if let Ok(rec) = db.get(id) {
            if let Ok(Envelope { group: Some(g), .. }) = Envelope::decode(&rec) {
                last = last.max(Some(g.start));
            }
        }
    }
    match last {
        Some(start) if torn_at(db, start)? => Ok(db
            .truncate_with(start, Some(&EnvelopeIds), &mut |_, _| Ok(()))?
            .records),
        _ => Ok(0),
    }
}

/// A group member's envelope as a record on its own (`None` for anything
/// else): a compacted log keeps no group marks, as its records are copied
/// id by id and a group's records no longer lie together.
pub fn ungrouped(value: &[u8]) -> Option<Vec<u8>> {
    let env = Envelope::decode(value).ok()?;
    env.group?;
    Some(Envelope { group: None, ..env }.encode())
}

/// Whether the log ends inside the group that starts at `start`: its
/// records run to the end with none marked last. (Groups are written
/// whole, one after another, so only the last one can be cut short.)
fn torn_at(db: &OurDb, start: Location) -> Result<bool> {
    let mut at = start;
    loop {
        let seg = db.read_records(at, 1 << 20)?;
        if seg.bytes.is_empty() {
            return Ok(true);
        }
        for r in seg.records() {
            match Envelope::decode(r.value) {
                Ok(Envelope { group: Some(g), .. }) if g.start == start => {
                    if g.last {
                        return Ok(false);
                    }
                }
                // Something else follows: not a group cut short.
                _ => return Ok(false),
            }
        }
        at = seg.next;
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
        // A group's tombstone is cleared once the group shows (open finishes it).
        Ok((env.id, env.kind.deletes() && env.group.is_none()))
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

    fn store(dir: &std::path::Path) -> KeyedStore {
        let config = crate::Config {
            record_size_max: crate::record::MAX_VALUE_LEN as u32,
            ..crate::Config::default()
        };
        KeyedStore::new(OurDb::open(dir, config).unwrap()).unwrap()
    }

    /// Ships everything `from` has after `at` to `to`, in pieces cut after
    /// the given record counts.
    fn ship(from: &KeyedStore, to: &KeyedStore, at: Location, cuts: &[usize]) {
        let seg = from.db().read_records(at, 1 << 20).unwrap();
        let ends: Vec<Location> = seg.records().map(|r| r.after).collect();
        let mut pos = at;
        for &n in cuts.iter().chain(std::iter::once(&ends.len())) {
            let end = ends[n - 1];
            let bytes = &seg.bytes
                [(pos.position - at.position) as usize..(end.position - at.position) as usize];
            to.apply_shipped(pos, bytes).unwrap();
            pos = end;
        }
    }

    fn txn(store: &KeyedStore, ops: Vec<Op>) -> Vec<OpResult> {
        match store.txn_pending(&[], &ops).unwrap() {
            TxnOutcome::Applied(r, p) => {
                if let Some(p) = p {
                    store.db().wait(p).unwrap();
                }
                r
            }
            TxnOutcome::Failed(i) => panic!("condition {i} failed"),
        }
    }

    /// A group shipped in two pieces shows on the replica only once whole:
    /// before, every key reads as before it, a deleted key included, and a
    /// record after the group stays hidden with it.
    #[test]
    fn a_replica_shows_a_group_only_when_whole() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, replica) = (store(d1.path()), store(d2.path()));
        for k in ["a", "b", "c"] {
            primary.put(k, b"1").unwrap();
        }
        ship(&primary, &replica, Location::new(0, 1), &[]);
        let start = primary.db().end();
        txn(
            &primary,
            vec![
                Op::Put("a".into(), b"2".to_vec()),
                Op::Delete("b".into()),
                Op::Put("d".into(), b"new".to_vec()),
            ],
        );
        primary.put("c", b"after").unwrap();
        let old = |r: &KeyedStore| {
            assert_eq!(r.get("a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(r.get("b").unwrap(), Some(b"1".to_vec()));
            assert_eq!(r.get("c").unwrap(), Some(b"1".to_vec()));
            assert_eq!(r.get("d").unwrap(), None);
            assert_eq!(r.history("a", 5).unwrap(), vec![b"1".to_vec()]);
            assert_eq!(r.list("", None, 10), vec!["a", "b", "c"]);
        };
        // One record of three: hidden.
        let seg = primary.db().read_records(start, 1 << 20).unwrap();
        let first = seg.records().next().unwrap().after;
        replica
            .apply_shipped(
                start,
                &seg.bytes[..(first.position - start.position) as usize],
            )
            .unwrap();
        old(&replica);
        assert_eq!(replica.unfinished_group(), Some(start));
        assert_eq!(replica.visible_end(), start);
        assert!(matches!(
            replica.put("x", b"1"),
            Err(Error::UnfinishedGroup(s)) if s == start
        ));
        // The rest of the group and the record after it: all show.
        replica
            .apply_shipped(
                first,
                &seg.bytes[(first.position - start.position) as usize..],
            )
            .unwrap();
        assert_eq!(replica.unfinished_group(), None);
        assert_eq!(replica.get("a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(replica.get("b").unwrap(), None);
        assert_eq!(replica.get("c").unwrap(), Some(b"after".to_vec()));
        assert_eq!(replica.get("d").unwrap(), Some(b"new".to_vec()));
        assert_eq!(replica.list("", None, 10), vec!["a", "c", "d"]);
        assert_eq!(
            replica.history("a", 5).unwrap(),
            vec![b"2".to_vec(), b"1".to_vec()]
        );
        assert_eq!(
            replica.db().digest().unwrap(),
            primary.db().digest().unwrap()
        );
        // The deleted id's lookup entry was cleared once it showed.
        let b_ids: Vec<u32> = replica.db().ids().collect();
        assert_eq!(b_ids.len(), 3);
    }

    /// Readers racing a replica's apply never see half a group: each group
    /// sets x and then y to the same counter, so y read after x is never
    /// below it.
    #[test]
    fn readers_racing_an_apply_never_see_half_a_group() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, replica) = (store(d1.path()), store(d2.path()));
        const GROUPS: u64 = 1500;
        for n in 1..=GROUPS {
            let v = n.to_be_bytes().to_vec();
            txn(
                &primary,
                vec![Op::Put("x".into(), v.clone()), Op::Put("y".into(), v)],
            );
        }
        let seg = primary
            .db()
            .read_records(Location::new(0, 1), 1 << 30)
            .unwrap();
        let ends: Vec<Location> = seg.records().map(|r| r.after).collect();
        let replica = std::sync::Arc::new(replica);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (r, done, started) = (replica.clone(), done.clone(), started.clone());
            std::thread::spawn(move || {
                let read = |k: &str| {
                    r.get(k)
                        .unwrap()
                        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
                };
                let mut reads = 0u64;
                loop {
                    let x = read("x");
                    let y = read("y");
                    assert!(y >= x, "x = {x} but then y = {y}: half a group");
                    reads += 1;
                    started.store(true, Ordering::SeqCst);
                    if done.load(Ordering::SeqCst) {
                        return reads;
                    }
                }
            })
        };
        // The apply starts once the reader reads (a thread may start late).
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // Batches of three records: groups are split every other batch.
        let mut pos = Location::new(0, 1);
        for chunk in ends.chunks(3) {
            let end = *chunk.last().unwrap();
            let bytes = &seg.bytes[(pos.position - 1) as usize..(end.position - 1) as usize];
            // Durability is not the point here: readers race the apply.
            let _ = replica.apply_shipped_pending(pos, bytes).unwrap();
            pos = end;
        }
        done.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(
            replica.get("y").unwrap(),
            Some(GROUPS.to_be_bytes().to_vec())
        );
    }

    /// The same on the store that writes the transactions.
    #[test]
    fn readers_racing_transactions_never_see_half_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(store(dir.path()));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let read = |k: &str| {
                    s.get(k)
                        .unwrap()
                        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
                };
                while !done.load(Ordering::SeqCst) {
                    let x = read("x");
                    let y = read("y");
                    assert!(y >= x, "x = {x} but then y = {y}: half a transaction");
                }
            })
        };
        for n in 1..=3000u64 {
            let v = n.to_be_bytes().to_vec();
            txn(
                &s,
                vec![Op::Put("x".into(), v.clone()), Op::Put("y".into(), v)],
            );
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap();
    }

    /// Compaction copies id by id, so a group's records no longer lie
    /// together: it drops the marks, and a log that ended inside a group
    /// loses that group first.
    #[test]
    fn compaction_drops_group_marks_and_torn_groups() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put("a", b"0").unwrap();
        txn(
            &s,
            vec![
                Op::Put("a".into(), b"1".to_vec()),
                Op::Put("b".into(), b"1".to_vec()),
                Op::Delete("zz".into()),
            ],
        );
        // A torn group at the end, written by hand.
        let start = s.db().end();
        let rec = Envelope {
            kind: Kind::Put,
            id: s.id_of("a").unwrap(),
            key: "a",
            value: b"torn",
            group: Some(Group { start, last: false }),
        }
        .encode();
        s.db().set(s.id_of("a"), &rec).unwrap();
        s.into_db().abandon();
        let report = crate::tools::compact(dir.path(), None, None).unwrap();
        assert_eq!(report.live_ids, 2);
        let s = store(dir.path());
        assert_eq!(s.index_report().torn_group_records, 0);
        assert_eq!(s.get("a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            s.history("a", 5).unwrap(),
            vec![b"1".to_vec(), b"0".to_vec()]
        );
        assert_eq!(s.get("b").unwrap(), Some(b"1".to_vec()));
        for id in s.db().ids().collect::<Vec<_>>() {
            for rec in s.db().get_history(id, 10).unwrap() {
                assert_eq!(Envelope::decode(&rec).unwrap().group, None);
            }
        }
    }

    fn big(n: usize, b: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ b).collect()
    }

    /// Values past one record: stored as chunks, read back whole by key, by
    /// id and in history, replaced, compared and swapped, deleted; kept whole
    /// by compaction at any history depth.
    #[test]
    fn large_values_round_trip_and_survive_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let one = max_value_len("k");
        let v1 = big(3 * one + 17, 1);
        let v2 = big(one + 1, 2);
        let v3 = b"small".to_vec();
        let e1 = s.put_if("k", &v1, Expect::Absent).unwrap().unwrap();
        assert!(s.get_versioned("k").unwrap() == Some((v1.clone(), e1)));
        let id = s.id_of("k").unwrap();
        assert!(s.get_by_id(id).unwrap() == Some(("k".into(), v1.clone())));
        assert_eq!(
            s.put_if("k", &v2, Expect::Version(Location::new(0, 1)))
                .unwrap(),
            None
        );
        s.put_if("k", &v2, Expect::Version(e1)).unwrap().unwrap();
        s.put("k", &v3).unwrap();
        s.put("other", &big(MAX_VALUE_BYTES / 4, 3)).unwrap();
        assert!(s.history("k", 10).unwrap() == [v3.clone(), v2.clone(), v1.clone()]);
        assert!(s.history("k", 2).unwrap() == [v3.clone(), v2.clone()]);
        assert!(matches!(
            s.put("k", &vec![0; MAX_VALUE_BYTES + 1]),
            Err(Error::ValueTooLarge {
                max: MAX_VALUE_BYTES,
                ..
            })
        ));
        s.put("k", &v1).unwrap();
        s.close().unwrap();
        // Depth 1: the current value with all its chunks; depth 2: one more.
        // Depth 2 keeps the current value with all its chunks and one more;
        // then depth 1 the current one alone.
        for depth in [2, 1] {
            crate::tools::compact(dir.path(), None, Some(depth)).unwrap();
            let s = store(dir.path());
            assert!(s.get("k").unwrap() == Some(v1.clone()), "depth {depth}");
            assert_eq!(
                s.get("other").unwrap().map(|v| v.len()),
                Some(MAX_VALUE_BYTES / 4)
            );
            let want = [v1.clone(), v3.clone()];
            assert!(s.history("k", 5).unwrap() == want[..depth], "depth {depth}");
            s.close().unwrap();
        }
        let s = store(dir.path());
        assert!(s.delete("k").unwrap());
        assert_eq!(s.get("k").unwrap(), None);
    }

    /// A large value shipped record by record shows on a replica only once
    /// whole.
    #[test]
    fn a_replica_shows_a_large_value_only_when_whole() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, replica) = (store(d1.path()), store(d2.path()));
        primary.put("k", b"old").unwrap();
        ship(&primary, &replica, Location::new(0, 1), &[]);
        let start = primary.db().end();
        let v = big(5 * max_value_len("k"), 9);
        primary.put("k", &v).unwrap();
        let seg = primary.db().read_records(start, 1 << 30).unwrap();
        let ends: Vec<Location> = seg.records().map(|r| r.after).collect();
        assert_eq!(ends.len(), 7, "6 chunks and the chunked put");
        let mut pos = start;
        for (i, end) in ends.iter().enumerate() {
            let bytes = &seg.bytes[(pos.position - start.position) as usize
                ..(end.position - start.position) as usize];
            replica.apply_shipped(pos, bytes).unwrap();
            pos = *end;
            let want = if i + 1 < ends.len() {
                b"old".to_vec()
            } else {
                v.clone()
            };
            assert!(replica.get("k").unwrap() == Some(want), "after record {i}");
        }
        assert!(replica.history("k", 5).unwrap() == [v, b"old".to_vec()]);
        assert_eq!(
            replica.db().digest().unwrap(),
            primary.db().digest().unwrap()
        );
    }

    /// A deadline travels with the record: a replica knows it, a reopen
    /// finds it again, and the master's expiry removes the key everywhere.
    #[test]
    fn deadlines_replicate_survive_reopen_and_expire() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, replica) = (store(d1.path()), store(d2.path()));
        let put = |s: &KeyedStore, k: &str, v: &[u8], d: u64| {
            let (_, p) = s
                .put_expiring_pending(k, v, Expect::Any, d)
                .unwrap()
                .unwrap();
            s.db().wait(p).unwrap();
        };
        put(&primary, "a", b"1", 5_000);
        put(&primary, "big", &big(2 * max_value_len("big"), 4), 6_000);
        put(&primary, "b", b"2", 7_000);
        primary.put("b", b"kept").unwrap();
        ship(&primary, &replica, Location::new(0, 1), &[]);
        for s in [&primary, &replica] {
            assert_eq!(s.deadline("a"), Some(5_000));
            assert_eq!(s.deadline("big"), Some(6_000));
            assert_eq!(s.deadline("b"), None, "a put without one ends it");
            assert_eq!(s.get("a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(s.history("a", 3).unwrap(), vec![b"1".to_vec()]);
            assert_eq!(s.next_deadline(), Some(5_000));
        }
        assert!(primary.due(4_999, 10).is_empty());
        assert_eq!(primary.due(6_000, 10), vec!["a", "big"]);
        assert_eq!(
            primary.expire_pending("a", 4_999).unwrap().map(|_| ()),
            None
        );
        let at = primary.db().end();
        for k in ["a", "big"] {
            let p = primary.expire_pending(k, 6_000).unwrap().expect("due");
            primary.db().wait(p).unwrap();
        }
        ship(&primary, &replica, at, &[]);
        for s in [&primary, &replica] {
            assert_eq!(s.get("a").unwrap(), None);
            assert_eq!(s.get("big").unwrap(), None);
            assert_eq!(s.get("b").unwrap(), Some(b"kept".to_vec()));
            assert_eq!(s.next_deadline(), None);
        }
        put(&primary, "c", b"3", 9_000);
        primary.close().unwrap();
        let primary = store(d1.path());
        assert_eq!(primary.deadline("c"), Some(9_000));
        assert_eq!(primary.get("a").unwrap(), None, "an expiry is not undone");
    }

    /// A lease and its keys travel as records: a replica and a reopen know
    /// them, a keep-alive moves the deadline, and the lease's end removes
    /// its keys (a large one too) in one group that a replica shows whole;
    /// a truncation brings back a lease whose end it cuts.
    #[test]
    fn leases_replicate_survive_reopen_and_end_with_their_keys() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, replica) = (store(d1.path()), store(d2.path()));
        let wait = |s: &KeyedStore, p| s.db().wait(p).unwrap();
        let (lease, p) = primary.lease_grant_pending(10_000, 1_000).unwrap();
        wait(&primary, p);
        assert_eq!(lease.deadline, 11_000);
        let (other, p) = primary.lease_grant_pending(50_000, 1_000).unwrap();
        wait(&primary, p);
        assert_ne!(lease.id, other.id);
        let put = |k: &str, v: &[u8], tie| {
            let (_, p) = primary
                .put_tied_pending(k, v, Expect::Any, tie, 1_000)
                .unwrap()
                .unwrap();
            wait(&primary, p);
        };
        put("a", b"1", Tie::Lease(lease.id));
        put(
            "big",
            &big(2 * max_value_len("big"), 7),
            Tie::Lease(lease.id),
        );
        put("b", b"2", Tie::Lease(lease.id));
        put("b", b"moved", Tie::Lease(other.id));
        put("c", b"3", Tie::Lease(lease.id));
        primary.put("c", b"freed").unwrap();
        assert!(matches!(
            primary.put_tied_pending("x", b"", Expect::Any, Tie::Lease(999), 1_000),
            Err(Error::NoLease(999))
        ));
        ship(&primary, &replica, Location::new(0, 1), &[]);
        for s in [&primary, &replica] {
            let l = s.lease(lease.id, 10).expect("lives");
            assert_eq!((l.ttl_ms, l.deadline), (10_000, 11_000));
            assert_eq!(
                l.keys,
                vec!["a", "big"],
                "b moved, c was written without it"
            );
            assert_eq!(s.lease_of("b"), Some(other.id));
            assert_eq!(s.get("a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(
                s.get("big").unwrap(),
                Some(big(2 * max_value_len("big"), 7))
            );
            assert_eq!(s.history("a", 3).unwrap(), vec![b"1".to_vec()]);
            assert_eq!(s.next_deadline(), Some(11_000));
            assert!(
                !s.list("", None, 100).contains(&String::new()),
                "no key of a lease"
            );
            assert_eq!(s.get_by_id(lease.id).unwrap(), None);
        }
        // A keep-alive at 5,000 moves the deadline to 15,000; one after the
        // deadline finds no lease.
        let at = primary.db().end();
        let (kept, p) = primary
            .lease_keep_alive_pending(lease.id, 5_000)
            .unwrap()
            .unwrap();
        wait(&primary, p);
        assert_eq!(kept.deadline, 15_000);
        // Compaction keeps the newest lease record alone, at any depth.
        let versions = compaction_versions(primary.db(), lease.id, 10).unwrap();
        assert_eq!(versions.len(), 1);
        let newest = Envelope::decode(&versions[0]).unwrap();
        assert_eq!(lease_terms(&newest), (10_000, 15_000));
        assert!(primary
            .lease_keep_alive_pending(lease.id, 15_000)
            .unwrap()
            .is_none());
        assert!(
            matches!(
                primary.put_tied_pending("late", b"", Expect::Any, Tie::Lease(lease.id), 15_000),
                Err(Error::NoLease(_))
            ),
            "past its deadline, before its end is written"
        );
        assert!(primary.due_leases(14_999, 10).is_empty());
        assert_eq!(primary.due_leases(15_000, 10), vec![lease.id]);
        assert!(primary
            .end_lease_pending(lease.id, Some(14_999))
            .unwrap()
            .is_none());
        ship(&primary, &replica, at, &[]);
        assert_eq!(replica.lease(lease.id, 0).unwrap().deadline, 15_000);
        // The end, shipped in two pieces: the replica shows none of it until whole.
        let at = primary.db().end();
        let p = primary
            .end_lease_pending(lease.id, Some(15_000))
            .unwrap()
            .expect("due");
        wait(&primary, p);
        ship(&primary, &replica, at, &[1]);
        assert_eq!(replica.get("a").unwrap(), None, "the last record arrived");
        for s in [&primary, &replica] {
            assert_eq!(s.lease(lease.id, 0), None);
            assert_eq!(s.get("a").unwrap(), None);
            assert_eq!(s.get("big").unwrap(), None);
            assert_eq!(s.get("b").unwrap(), Some(b"moved".to_vec()));
            assert_eq!(s.get("c").unwrap(), Some(b"freed".to_vec()));
            assert_eq!(s.next_deadline(), Some(51_000));
        }
        // A replica that took the lease's end and then cuts it (a deposed
        // master's tail) has the lease and its keys back.
        let cut = replica.truncate_to(at).unwrap();
        assert!(cut.records >= 3, "{cut:?}");
        assert_eq!(replica.lease(lease.id, 10).unwrap().keys, vec!["a", "big"]);
        assert_eq!(replica.get("a").unwrap(), Some(b"1".to_vec()));
        // Revoking ends a lease whatever its deadline; a reopen knows what lives.
        let p = primary.end_lease_pending(other.id, None).unwrap().unwrap();
        wait(&primary, p);
        assert!(primary.end_lease_pending(other.id, None).unwrap().is_none());
        let (third, p) = primary.lease_grant_pending(1_000, 2_000).unwrap();
        wait(&primary, p);
        put("d", b"4", Tie::Lease(third.id));
        primary.close().unwrap();
        let primary = store(d1.path());
        assert_eq!(primary.get("b").unwrap(), None, "revoked with its lease");
        assert_eq!(primary.lease(other.id, 0), None);
        let l = primary.lease(third.id, 10).expect("lives after a reopen");
        assert_eq!((l.deadline, l.keys), (3_000, vec!["d".to_string()]));
        assert_eq!(primary.lease_ids(), vec![third.id]);
    }

    /// A transaction that would read more than its answer can carry fails
    /// before it writes anything.
    #[test]
    fn a_transaction_reading_too_much_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put("big", &big(9 << 20, 1)).unwrap();
        let end = s.db().end();
        let ops = vec![
            Op::Put("x".into(), b"1".to_vec()),
            Op::Get("big".into()),
            Op::Get("big".into()),
        ];
        assert!(matches!(
            s.txn_pending(&[], &ops),
            Err(Error::TxnTooLarge(_))
        ));
        assert_eq!(s.db().end(), end);
        assert_eq!(s.get("x").unwrap(), None);
        let conds = vec![
            Condition::ValueIs("big".into(), b"no".to_vec()),
            Condition::ValueIs("big".into(), b"no".to_vec()),
        ];
        // The first condition already fails: it stops there.
        assert!(matches!(
            s.txn_pending(&conds, &ops[..1]),
            Ok(TxnOutcome::Failed(0))
        ));
        let one = vec![Op::Put("x".into(), b"1".to_vec()), Op::Get("big".into())];
        assert!(matches!(
            s.txn_pending(&[], &one),
            Ok(TxnOutcome::Applied(..))
        ));
    }

    /// A replica about to write cuts a group shipped in part; a store
    /// opened on a log that ends inside a group cuts it too (read-only: hides it).
    #[test]
    fn a_group_shipped_in_part_is_cut() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, replica) = (store(d1.path()), store(d2.path()));
        primary.put("a", b"1").unwrap();
        ship(&primary, &replica, Location::new(0, 1), &[]);
        let start = primary.db().end();
        txn(
            &primary,
            vec![
                Op::Put("a".into(), b"2".to_vec()),
                Op::Put("n".into(), b"2".to_vec()),
            ],
        );
        let seg = primary.db().read_records(start, 1 << 20).unwrap();
        let first = seg.records().next().unwrap().after;
        replica
            .apply_shipped(
                start,
                &seg.bytes[..(first.position - start.position) as usize],
            )
            .unwrap();
        replica.close().unwrap();
        // Read-only: the group is hidden, nothing is cut.
        let ro = KeyedStore::new(
            crate::OpenOptions::new()
                .read_only(true)
                .open(d2.path())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(ro.get("a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(ro.db().end(), first);
        drop(ro);
        let reopened = store(d2.path());
        assert_eq!(reopened.index_report().torn_group_records, 1);
        assert_eq!(reopened.db().end(), start);
        assert_eq!(reopened.get("a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(reopened.get("n").unwrap(), None);
        reopened.put("b", b"own").unwrap();

        // The same without a reopen: the replica cuts before writing.
        let d3 = tempfile::tempdir().unwrap();
        let r3 = store(d3.path());
        let all = primary
            .db()
            .read_records(Location::new(0, 1), 1 << 20)
            .unwrap();
        r3.apply_shipped(
            Location::new(0, 1),
            &all.bytes[..(first.position - 1) as usize],
        )
        .unwrap();
        assert_eq!(r3.unfinished_group(), Some(start));
        let cut = r3.cut_unfinished_group().unwrap().expect("a group to cut");
        assert_eq!(cut.records, 1);
        assert_eq!(r3.unfinished_group(), None);
        assert_eq!(r3.get("a").unwrap(), Some(b"1".to_vec()));
        r3.put("b", b"own").unwrap();
    }

    /// Conditions are checked first, in order; a failed one writes nothing;
    /// gets see the transaction's own earlier writes; limits are refused.
    #[test]
    fn transactions_check_then_apply() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let v1 = s.put_if("a", b"1", Expect::Absent).unwrap().unwrap();
        let end = s.db().end();
        let out = s
            .txn_pending(
                &[
                    Condition::Version("a".into(), Expect::Version(v1)),
                    Condition::ValueIs("a".into(), b"other".to_vec()),
                ],
                &[Op::Put("b".into(), b"x".to_vec())],
            )
            .unwrap();
        assert!(matches!(out, TxnOutcome::Failed(1)));
        assert_eq!(s.db().end(), end, "a failed condition writes nothing");
        let r = txn(
            &s,
            vec![
                Op::Get("a".into()),
                Op::Put("a".into(), b"2".to_vec()),
                Op::Get("a".into()),
                Op::Delete("zz".into()),
                Op::Get("zz".into()),
            ],
        );
        assert_eq!(r[0], OpResult::Get(Some((b"1".to_vec(), v1))));
        let OpResult::Put(v2) = r[1] else {
            panic!("{r:?}")
        };
        assert_eq!(r[2], OpResult::Get(Some((b"2".to_vec(), v2))));
        assert_eq!(r[3], OpResult::Delete(false));
        assert_eq!(r[4], OpResult::Get(None));
        assert!(matches!(
            s.txn_pending(&[], &[Op::Put("k".into(), vec![]), Op::Delete("k".into())]),
            Err(Error::InvalidTxn(_))
        ));
        let many: Vec<Op> = (0..=MAX_TXN_OPS)
            .map(|i| Op::Get(format!("k{i}")))
            .collect();
        assert!(matches!(
            s.txn_pending(&[], &many),
            Err(Error::TxnTooLarge(_))
        ));
        let big: Vec<Op> = (0..10)
            .map(|i| Op::Put(format!("k{i}"), vec![0; 60_000]))
            .collect();
        assert!(matches!(
            s.txn_pending(&[], &big),
            Err(Error::TxnTooLarge(_))
        ));
        let max = max_value_len("k") - GROUP_HEADER;
        assert!(matches!(
            s.txn_pending(&[], &[Op::Put("k".into(), vec![0; max + 1])]),
            Err(Error::ValueTooLarge { .. })
        ));
        txn(&s, vec![Op::Put("k".into(), vec![7; max])]);
        assert_eq!(s.get("k").unwrap().map(|v| v.len()), Some(max));
    }

    #[test]
    fn envelope_roundtrip_and_rejects() {
        let e = Envelope {
            kind: Kind::Put,
            id: 42,
            key: "a/b",
            value: b"xyz",
            group: None,
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
            group: None,
        };
        let mut tb = t.encode();
        assert_eq!(Envelope::decode(&tb).unwrap(), t);
        tb.push(1);
        assert!(Envelope::decode(&tb).is_err());
    }
}
