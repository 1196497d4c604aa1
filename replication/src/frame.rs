//! Length-prefixed frames on QUIC streams (see docs/PROTOCOL.md).
//!
//! A frame is `u32 BE length` (of what follows), `u8 type`, then the body.
//! Locations are `u16 BE file_nr, u32 BE position`; cursors are `u64 BE
//! epoch` then a location; byte strings are
//! `u32 BE length` then the bytes. Shipped records travel as they are on disk.
//!
//! [`Frame`] is the codec; the typed messages of each sub-protocol, and the
//! pairing of requests with replies, are in [`crate::msg`].

use ourdb::Location;

pub use crate::cursor::Cursor;
use crate::error::{Code, Error, Result};

/// Largest frame accepted: a 16 MiB value (or history reply) with its key
/// and header, with room to spare.
pub const MAX_FRAME: usize = 17 << 20;

/// One frame: every message of every sub-protocol, as it is on the wire
/// (the type byte of each is in docs/PROTOCOL.md). Code that sends or
/// answers requests uses the typed messages in [`crate::msg`], which convert
/// into and out of frames; `Frame` is the codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Worker -> master: stream records from `cursor` on (the worker's end);
    /// `tail` is the worker's last bytes before it, which must match.
    Subscribe {
        /// The worker's epoch.
        epoch: u64,
        /// The worker's end.
        cursor: Location,
        /// Up to 64 bytes before `cursor`.
        tail: Vec<u8>,
        /// The worker's node id (0: a worker outside a failover cluster).
        node: u64,
        /// The term whose master's log the worker last followed (0: none).
        last_term: u64,
    },
    /// Master -> worker: whole records starting at `start`; the next start.
    Segment {
        /// The master's term (0: a master outside a failover cluster).
        term: u64,
        /// The high-water mark: what no failover can take back; a worker
        /// answers reads only from records below it.
        hw: Location,
        /// Where the records start.
        start: Location,
        /// Where the next segment starts.
        next: Location,
        /// Where the master's log ended for shipping when it read these
        /// (a worker far behind it is catching up).
        end: Location,
        /// The records, as they are on disk.
        records: Vec<u8>,
    },
    /// Worker -> master: everything before `cursor` is applied.
    Ack {
        /// The worker's applied end.
        cursor: Location,
    },
    /// Client -> master: store `value` under `key`, acknowledged per `ack`.
    Set {
        /// The key.
        key: String,
        /// The new value (shared, not copied, from a request body to the
        /// frame's bytes).
        value: bytes::Bytes,
        /// When the master answers.
        ack: Ack,
        /// What the key's current version must be.
        expect: Expect,
        /// Time to live in milliseconds (0: none): the master expires the
        /// key that long after it writes it.
        ttl_ms: u64,
        /// The lease the key lives as long as (0: none).
        lease: u32,
    },
    /// Client -> master: delete `key`, acknowledged per `ack`.
    Delete {
        /// The key.
        key: String,
        /// When the master answers.
        ack: Ack,
        /// What the key's current version must be.
        expect: Expect,
    },
    /// Master -> client: a write is applied and durable on the master; its
    /// end cursor, for a delete whether the key existed, and the new version.
    Written {
        /// The master's end after the write.
        cursor: Cursor,
        /// For a delete, whether the key existed (true for a set).
        existed: bool,
        /// The key's new version (all zero for a delete).
        version: Version,
    },
    /// Client -> master: the master's commit cursor (read-index).
    ReadIndex,
    /// Master -> client: a cursor.
    Cursor {
        /// The cursor.
        cursor: Cursor,
    },
    /// Client -> worker: `key`'s value once the worker applied `min_cursor`.
    Get {
        /// The key.
        key: String,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    },
    /// Worker -> client: the value, if the key exists.
    Value {
        /// The value; `None` if the key does not exist.
        value: Option<Vec<u8>>,
        /// The node's cursor when it read.
        cursor: Cursor,
        /// The key's version (all zero if it does not exist).
        version: Version,
    },
    /// Client -> any node: a digest of its data files.
    Digest,
    /// Node -> client: the digest, as text.
    DigestIs {
        /// The digest.
        text: String,
    },
    /// Any error, with a short code.
    Failed {
        /// Why, as a code the receiver can act on.
        code: Code,
        /// Why, for people.
        message: String,
    },
    /// Worker -> master: send a full copy of your data files.
    Snapshot,
    /// Master -> worker: bytes of data file `file_nr` at `offset`.
    SnapshotChunk {
        /// The data file.
        file_nr: u16,
        /// Where in it.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Master -> worker: the copy is complete; it ends at `end`, at `epoch`.
    SnapshotDone {
        /// The log's epoch.
        epoch: u64,
        /// Where the copy ends.
        end: Location,
    },
    /// Client -> node: keys starting with `prefix`, after `after` (empty:
    /// from the start), at most `limit`, once `min_cursor` is applied.
    List {
        /// What the keys start with.
        prefix: String,
        /// The key to list after; empty: from the first.
        after: String,
        /// At most this many keys.
        limit: u32,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    },
    /// Node -> client: keys, ascending.
    Keys {
        /// The keys.
        keys: Vec<String>,
        /// The node's cursor when it read.
        cursor: Cursor,
    },
    /// Client -> node: up to `depth` values of `key`, newest first.
    History {
        /// The key.
        key: String,
        /// At most this many values.
        depth: u32,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    },
    /// Node -> client: values, newest first.
    Values {
        /// The values.
        values: Vec<Vec<u8>>,
        /// The node's cursor when it read.
        cursor: Cursor,
    },
    /// Client -> node: the record with this id, once `min_cursor` is applied.
    ById {
        /// The record id.
        id: u32,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    },
    /// Node -> client: its key and value, if the id is live.
    Record {
        /// Key and value; `None` if the id is not live.
        entry: Option<(String, Vec<u8>)>,
        /// The node's cursor when it read.
        cursor: Cursor,
    },
    /// Client -> worker: stream the changes to keys with `prefix` from
    /// `cursor` on, then as they are applied.
    Watch {
        /// What the keys start with.
        prefix: String,
        /// Where to start; location zero: from the start of the log.
        cursor: Cursor,
    },
    /// Worker -> client: `key` was set to `value` (or deleted, `None`); the
    /// stream resumes after this change from `cursor`.
    Change {
        /// Where a watch resumes after this change.
        cursor: Cursor,
        /// The key.
        key: String,
        /// The new value; `None`: deleted.
        value: Option<Vec<u8>>,
        /// Deleted because its time to live ran out.
        expired: bool,
    },
    /// Client -> worker: the changes to keys with `prefix` from `from` (the
    /// start of the log if zero) up to `until` or what is applied, whichever
    /// is first, at most about `max_bytes` of records. A one-reply request:
    /// watches catch up with it, then follow a stream shared by many.
    Changes {
        /// What the keys start with.
        prefix: String,
        /// Where to start; location zero: from the start of the log.
        from: Cursor,
        /// Where to stop at the latest.
        until: Cursor,
        /// About this many bytes of records at most.
        max_bytes: u32,
    },
    /// Worker -> client: those changes in log order, where to continue
    /// (`next`), and what the worker has applied.
    ChangesAre {
        /// The changes.
        changes: Vec<Change>,
        /// Where to continue.
        next: Cursor,
        /// The worker's applied cursor.
        applied: Cursor,
    },
    /// Client -> master: a transaction. If every condition holds, the
    /// operations are applied in order, as one group of records that shows
    /// whole or not at all; acknowledged per `ack`.
    Txn {
        /// What must hold, in order; the first that does not stops it.
        conditions: Vec<TxnCondition>,
        /// What to do, in order.
        ops: Vec<TxnOp>,
        /// When the master answers.
        ack: Ack,
    },
    /// Master -> client: how a transaction ended.
    TxnDone {
        /// The master's end after it.
        cursor: Cursor,
        /// The index of the condition that did not hold (nothing written).
        failed: Option<u32>,
        /// One result per operation (none if a condition failed).
        results: Vec<TxnResult>,
    },
    /// Client -> master: grant a lease, keep one alive, revoke one, or
    /// describe one; acknowledged per `ack` when it writes.
    Lease {
        /// What to do.
        op: LeaseOp,
        /// When the master answers.
        ack: Ack,
    },
    /// Master -> client: the lease after a `Lease` request (none once
    /// revoked: then the lease as it was before).
    LeaseIs {
        /// The master's end after it.
        cursor: Cursor,
        /// The lease.
        lease: LeaseInfo,
    },
    /// Client -> node, first on a stream: the stream carries many requests,
    /// each a `Tagged` frame, answered by `Tagged` frames with the same id
    /// in any order (pipelining: one stream and few packets for many calls).
    Pipeline,
    /// A request or its reply on a pipelined stream.
    Tagged {
        /// The sender's id of the request, repeated in its reply.
        id: u32,
        /// The request or the reply (never `Tagged` itself).
        frame: Box<Frame>,
    },
    /// Client -> master: the cluster as the master sees it.
    Status,
    /// Master -> client: the commit cursor and each worker's state.
    StatusIs {
        /// The commit cursor.
        cursor: Cursor,
        /// Each subscribed worker.
        workers: Vec<WorkerStatus>,
        /// The master's group commits so far (empty without group commit).
        commits: crate::stats::CommitStats,
    },
    /// Node -> node: a message of the metadata Raft group (openraft's
    /// request, JSON; see `cluster::net`).
    Raft {
        /// The request.
        body: Vec<u8>,
    },
    /// Node -> node: the answer to a `Raft` frame (JSON).
    RaftIs {
        /// The answer.
        body: Vec<u8>,
    },
    /// Controller -> candidate: where does your log end? The candidate
    /// takes `term` as the newest it knows (and a master of an older term
    /// stops taking writes), so its answer holds.
    Position {
        /// The asking controller's term.
        term: u64,
    },
    /// Candidate -> controller: the term whose log it last followed, and its end.
    PositionIs {
        /// The term whose master's log it last followed.
        last_term: u64,
        /// Its end.
        cursor: Cursor,
    },
    /// Node -> any member: add me to the cluster (JSON `JoinRequest`;
    /// forwarded to the Raft leader by a member that is not it).
    Join {
        /// The request.
        body: Vec<u8>,
    },
    /// Member -> node: joined; the cluster as the answering member sees it
    /// (JSON `ClusterInfo`).
    JoinIs {
        /// The cluster.
        body: Vec<u8>,
    },
    /// Anyone -> member: the cluster as your metadata says.
    Meta,
    /// Member -> asker: the cluster (JSON `ClusterInfo`).
    MetaIs {
        /// The cluster.
        body: Vec<u8>,
    },
    /// Operator -> member: remove a member for good (JSON `LeaveRequest`;
    /// forwarded to the Raft leader like `Join`); answered with `MetaIs`.
    Leave {
        /// The request.
        body: Vec<u8>,
    },
    /// Operator -> member: hand the master's role to a member of the
    /// in-sync set (JSON `PromoteRequest`; carried out by the master, which
    /// leads the metadata group); answered with `MetaIs` once it has.
    Promote {
        /// The request.
        body: Vec<u8>,
    },
}

/// A key's version: the epoch and the location of its current record
/// (records are never rewritten, so a location names one version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Version {
    /// The epoch of the log the record is in.
    pub epoch: u64,
    /// Where the record is.
    pub at: Location,
}

impl Version {
    /// As an HTTP entity tag, quotes included.
    pub fn etag(&self) -> String {
        self.as_etag().to_string()
    }

    /// The entity tag, to be written where it goes (no string made first).
    pub fn as_etag(&self) -> impl std::fmt::Display + '_ {
        struct Etag<'a>(&'a Version);
        impl std::fmt::Display for Etag<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = self.0;
                write!(f, "\"{}-{}-{}\"", v.epoch, v.at.file_nr, v.at.position)
            }
        }
        Etag(self)
    }

    /// Parses an entity tag made by `etag`, exactly as it made it: strong
    /// comparison is by characters (RFC 9110 8.8.3.2), so `"01-0-5"`,
    /// `"1-0-+5"` or a tag with spaces names no version.
    pub fn from_etag(s: &str) -> Option<Version> {
        let inner = s.strip_prefix('"')?.strip_suffix('"')?;
        let mut it = inner.split('-');
        let v = Version {
            epoch: it.next()?.parse().ok()?,
            at: Location::new(it.next()?.parse().ok()?, it.next()?.parse().ok()?),
        };
        (it.next().is_none() && v.etag() == s).then_some(v)
    }
}

/// What a conditional write expects of the key's current version.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Expect {
    /// Nothing: an unconditional write.
    #[default]
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist.
    Present,
    /// The key's current version must be this one.
    Version(Version),
    /// The key's current version must be one of these.
    OneOf(Vec<Version>),
    /// The key must not exist, or its current version be none of these.
    NoneOf(Vec<Version>),
}

/// When the master acknowledges a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ack {
    /// Once it is durable on the master.
    #[default]
    Master,
    /// Once every in-sync worker has applied it.
    All,
}

impl std::str::FromStr for Ack {
    type Err = Error;
    fn from_str(s: &str) -> Result<Ack> {
        match s {
            "master" => Ok(Ack::Master),
            "all" => Ok(Ack::All),
            _ => Err(Error::Protocol(format!(
                "ack must be master or all, not {s:?}"
            ))),
        }
    }
}

/// One change in a watch: `key` was set to `value` (or deleted, `None`);
/// a watch resumes after it from `cursor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Where a watch resumes after this change.
    pub cursor: Cursor,
    /// The key.
    pub key: String,
    /// The new value; `None`: deleted.
    pub value: Option<Vec<u8>>,
    /// Deleted because its time to live ran out.
    pub expired: bool,
}

/// A condition of a transaction, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnCondition {
    /// The key's current version is what `expect` says.
    Version {
        /// The key.
        key: String,
        /// What its version must be (`Any` always holds).
        expect: Expect,
    },
    /// The key exists with exactly this value.
    ValueIs {
        /// The key.
        key: String,
        /// The value it must have.
        value: Vec<u8>,
    },
}

/// An operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Store a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Read a key as the transaction sees it at that point.
    Get {
        /// The key.
        key: String,
    },
}

/// What one operation of a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResult {
    /// The key's new version.
    Put {
        /// The version.
        version: Version,
    },
    /// Whether the key existed.
    Delete {
        /// Whether it existed.
        existed: bool,
    },
    /// The key's value and version, if it exists.
    Get {
        /// The value and its version.
        value: Option<(Vec<u8>, Version)>,
    },
}

/// What a `Lease` request does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// Grant a new lease that ends `ttl_ms` from now unless kept alive.
    Grant {
        /// Its time to live, in milliseconds.
        ttl_ms: u64,
    },
    /// Move a lease's deadline to its time to live from now.
    KeepAlive {
        /// The lease.
        id: u32,
    },
    /// End a lease now, with its keys.
    Revoke {
        /// The lease.
        id: u32,
    },
    /// Describe a lease.
    Info {
        /// The lease.
        id: u32,
    },
}

/// A lease as the master knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its id.
    pub id: u32,
    /// Its time to live, in milliseconds.
    pub ttl_ms: u64,
    /// Milliseconds until it ends unless kept alive (0 once ended).
    pub remaining_ms: u64,
    /// How many keys it holds.
    pub key_count: u32,
    /// Its keys, ascending (all of them: at most `MAX_LEASE_KEYS`).
    pub keys: Vec<String>,
}

/// One worker as the master sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The worker's address, as the master sees it.
    pub addr: String,
    /// What the worker last acknowledged.
    pub acked: Cursor,
    /// Whether `ack=all` writes wait for it.
    pub in_sync: bool,
    /// How long the oldest commit it has not acknowledged has waited, in
    /// milliseconds (0: it has everything committed).
    pub lag_ms: u64,
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn loc(&mut self, l: Location) {
        self.0.extend_from_slice(&l.file_nr.to_be_bytes());
        self.0.extend_from_slice(&l.position.to_be_bytes());
    }
    fn cursor(&mut self, c: Cursor) {
        self.u64(c.epoch);
        self.loc(c.at);
    }
    fn version(&mut self, v: Version) {
        self.u64(v.epoch);
        self.loc(v.at);
    }
    fn expect(&mut self, e: &Expect) {
        let mut list = |tag: u8, vs: &[Version]| {
            self.u8(tag);
            self.0.extend_from_slice(&(vs.len() as u32).to_be_bytes());
            for v in vs {
                self.version(*v);
            }
        };
        match e {
            Expect::Any => self.u8(0),
            Expect::Absent => self.u8(1),
            Expect::Version(v) => {
                self.u8(2);
                self.version(*v);
            }
            Expect::Present => self.u8(3),
            Expect::OneOf(vs) => list(4, vs),
            Expect::NoneOf(vs) => list(5, vs),
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A change's value: `u8` 1 and the bytes, or 0 (deleted) or 2 (expired).
    fn change_value(&mut self, value: Option<&[u8]>, expired: bool) {
        match value {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(if expired { 2 } else { 0 }),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Protocol("frame body too short".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn loc(&mut self) -> Result<Location> {
        let b = self.take(6)?;
        Ok(Location::new(
            u16::from_be_bytes([b[0], b[1]]),
            u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| Error::Protocol("string is not UTF-8".into()))
    }
    fn cursor(&mut self) -> Result<Cursor> {
        Ok(Cursor {
            epoch: self.u64()?,
            at: self.loc()?,
        })
    }
    fn version(&mut self) -> Result<Version> {
        Ok(Version {
            epoch: self.u64()?,
            at: self.loc()?,
        })
    }
    fn expect(&mut self) -> Result<Expect> {
        match self.u8()? {
            0 => Ok(Expect::Any),
            1 => Ok(Expect::Absent),
            2 => Ok(Expect::Version(self.version()?)),
            3 => Ok(Expect::Present),
            t @ (4 | 5) => {
                let n = self.u32()? as usize;
                let mut vs = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    vs.push(self.version()?);
                }
                Ok(if t == 4 {
                    Expect::OneOf(vs)
                } else {
                    Expect::NoneOf(vs)
                })
            }
            t => Err(Error::Protocol(format!("unknown expectation {t}"))),
        }
    }
    /// A cursor, a key, and an optional value (absent: a delete).
    fn change(&mut self) -> Result<Change> {
        let cursor = self.cursor()?;
        let key = self.string()?;
        let (value, expired) = match self.u8()? {
            0 => (None, false),
            1 => (Some(self.bytes()?.to_vec()), false),
            2 => (None, true),
            b => return Err(Error::Protocol(format!("bad option tag {b}"))),
        };
        Ok(Change {
            cursor,
            key,
            value,
            expired,
        })
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn ack(&mut self) -> Result<Ack> {
        match self.u8()? {
            0 => Ok(Ack::Master),
            1 => Ok(Ack::All),
            a => Err(Error::Protocol(format!("unknown ack level {a}"))),
        }
    }
    fn end(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "{} bytes after the frame body",
                self.0.len()
            )))
        }
    }
}

impl Frame {
    /// The frame's kind (`Set`, `Status`, ...), for error messages: never
    /// its contents, which may be a megabyte of value.
    pub fn name(&self) -> String {
        use std::fmt::Write;
        /// Takes the leading name of a Debug rendering and stops there.
        struct Name(String);
        impl Write for Name {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                for c in s.chars() {
                    if !c.is_ascii_alphanumeric() {
                        return Err(std::fmt::Error);
                    }
                    self.0.push(c);
                }
                Ok(())
            }
        }
        let mut n = Name(String::new());
        let _ = write!(n, "{self:?}");
        n.0
    }

    /// The frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the frame with its length prefix to `out` (many frames can
    /// share one buffer and go out in one write).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        self.body(&mut Writer(out));
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The type byte and the body.
    fn body(&self, w: &mut Writer<'_>) {
        match self {
            Frame::Subscribe {
                epoch,
                cursor,
                tail,
                node,
                last_term,
            } => {
                w.u8(1);
                w.u64(*epoch);
                w.loc(*cursor);
                w.bytes(tail);
                w.u64(*node);
                w.u64(*last_term);
            }
            Frame::Segment {
                term,
                hw,
                start,
                next,
                end,
                records,
            } => {
                w.u8(2);
                w.u64(*term);
                w.loc(*hw);
                w.loc(*start);
                w.loc(*next);
                w.loc(*end);
                w.bytes(records);
            }
            Frame::Ack { cursor } => {
                w.u8(3);
                w.loc(*cursor);
            }
            Frame::Set {
                key,
                value,
                ack,
                expect,
                ttl_ms,
                lease,
            } => {
                w.u8(4);
                w.bytes(key.as_bytes());
                w.bytes(value);
                w.u8(*ack as u8);
                w.expect(expect);
                w.u64(*ttl_ms);
                w.u32(*lease);
            }
            Frame::Delete { key, ack, expect } => {
                w.u8(5);
                w.bytes(key.as_bytes());
                w.u8(*ack as u8);
                w.expect(expect);
            }
            Frame::Written {
                cursor,
                existed,
                version,
            } => {
                w.u8(6);
                w.cursor(*cursor);
                w.u8(*existed as u8);
                w.version(*version);
            }
            Frame::ReadIndex => w.u8(7),
            Frame::Cursor { cursor } => {
                w.u8(8);
                w.cursor(*cursor);
            }
            Frame::Get { key, min_cursor } => {
                w.u8(9);
                w.bytes(key.as_bytes());
                w.cursor(*min_cursor);
            }
            Frame::Value {
                value,
                cursor,
                version,
            } => {
                w.u8(10);
                w.cursor(*cursor);
                w.version(*version);
                match value {
                    Some(v) => {
                        w.u8(1);
                        w.bytes(v);
                    }
                    None => w.u8(0),
                }
            }
            Frame::Digest => w.u8(11),
            Frame::DigestIs { text } => {
                w.u8(12);
                w.bytes(text.as_bytes());
            }
            Frame::Failed { code, message } => {
                w.u8(13);
                w.bytes(code.as_str().as_bytes());
                w.bytes(message.as_bytes());
            }
            Frame::Status => w.u8(14),
            Frame::Watch { prefix, cursor } => {
                w.u8(25);
                w.bytes(prefix.as_bytes());
                w.cursor(*cursor);
            }
            Frame::Change {
                cursor,
                key,
                value,
                expired,
            } => {
                w.u8(26);
                w.cursor(*cursor);
                w.bytes(key.as_bytes());
                w.change_value(value.as_deref(), *expired);
            }
            Frame::Changes {
                prefix,
                from,
                until,
                max_bytes,
            } => {
                w.u8(27);
                w.bytes(prefix.as_bytes());
                w.cursor(*from);
                w.cursor(*until);
                w.0.extend_from_slice(&max_bytes.to_be_bytes());
            }
            Frame::ChangesAre {
                changes,
                next,
                applied,
            } => {
                w.u8(28);
                w.cursor(*next);
                w.cursor(*applied);
                w.0.extend_from_slice(&(changes.len() as u32).to_be_bytes());
                for c in changes {
                    w.cursor(c.cursor);
                    w.bytes(c.key.as_bytes());
                    w.change_value(c.value.as_deref(), c.expired);
                }
            }
            Frame::ById { id, min_cursor } => {
                w.u8(23);
                w.0.extend_from_slice(&id.to_be_bytes());
                w.cursor(*min_cursor);
            }
            Frame::Record { entry, cursor } => {
                w.u8(24);
                w.cursor(*cursor);
                match entry {
                    Some((k, v)) => {
                        w.u8(1);
                        w.bytes(k.as_bytes());
                        w.bytes(v);
                    }
                    None => w.u8(0),
                }
            }
            Frame::List {
                prefix,
                after,
                limit,
                min_cursor,
            } => {
                w.u8(19);
                w.bytes(prefix.as_bytes());
                w.bytes(after.as_bytes());
                w.0.extend_from_slice(&limit.to_be_bytes());
                w.cursor(*min_cursor);
            }
            Frame::Keys { keys, cursor } => {
                w.u8(20);
                w.cursor(*cursor);
                w.0.extend_from_slice(&(keys.len() as u32).to_be_bytes());
                for k in keys {
                    w.bytes(k.as_bytes());
                }
            }
            Frame::History {
                key,
                depth,
                min_cursor,
            } => {
                w.u8(21);
                w.bytes(key.as_bytes());
                w.0.extend_from_slice(&depth.to_be_bytes());
                w.cursor(*min_cursor);
            }
            Frame::Values { values, cursor } => {
                w.u8(22);
                w.cursor(*cursor);
                w.0.extend_from_slice(&(values.len() as u32).to_be_bytes());
                for v in values {
                    w.bytes(v);
                }
            }
            Frame::Snapshot => w.u8(16),
            Frame::SnapshotChunk {
                file_nr,
                offset,
                bytes,
            } => {
                w.u8(17);
                w.0.extend_from_slice(&file_nr.to_be_bytes());
                w.u64(*offset);
                w.bytes(bytes);
            }
            Frame::SnapshotDone { epoch, end } => {
                w.u8(18);
                w.u64(*epoch);
                w.loc(*end);
            }
            Frame::StatusIs {
                cursor,
                workers,
                commits,
            } => {
                w.u8(15);
                w.cursor(*cursor);
                w.0.extend_from_slice(&(workers.len() as u32).to_be_bytes());
                for ws in workers {
                    w.bytes(ws.addr.as_bytes());
                    w.cursor(ws.acked);
                    w.u8(ws.in_sync as u8);
                    w.u64(ws.lag_ms);
                }
                for (counts, sum) in [
                    (&commits.duration_counts, commits.duration_sum_us),
                    (&commits.size_counts, commits.size_sum),
                ] {
                    w.u32(counts.len() as u32);
                    for c in counts {
                        w.u64(*c);
                    }
                    w.u64(sum);
                }
            }
            Frame::Raft { body } => {
                w.u8(32);
                w.bytes(body);
            }
            Frame::RaftIs { body } => {
                w.u8(33);
                w.bytes(body);
            }
            Frame::Position { term } => {
                w.u8(37);
                w.u64(*term);
            }
            Frame::PositionIs { last_term, cursor } => {
                w.u8(38);
                w.u64(*last_term);
                w.cursor(*cursor);
            }
            Frame::Join { body } => {
                w.u8(39);
                w.bytes(body);
            }
            Frame::JoinIs { body } => {
                w.u8(40);
                w.bytes(body);
            }
            Frame::Meta => w.u8(41),
            Frame::Leave { body } => {
                w.u8(43);
                w.bytes(body);
            }
            Frame::Promote { body } => {
                w.u8(44);
                w.bytes(body);
            }
            Frame::MetaIs { body } => {
                w.u8(42);
                w.bytes(body);
            }
            Frame::Txn {
                conditions,
                ops,
                ack,
            } => {
                w.u8(45);
                w.u8(*ack as u8);
                w.u32(conditions.len() as u32);
                for c in conditions {
                    match c {
                        TxnCondition::Version { key, expect } => {
                            w.u8(0);
                            w.bytes(key.as_bytes());
                            w.expect(expect);
                        }
                        TxnCondition::ValueIs { key, value } => {
                            w.u8(1);
                            w.bytes(key.as_bytes());
                            w.bytes(value);
                        }
                    }
                }
                w.u32(ops.len() as u32);
                for op in ops {
                    match op {
                        TxnOp::Put { key, value } => {
                            w.u8(0);
                            w.bytes(key.as_bytes());
                            w.bytes(value);
                        }
                        TxnOp::Delete { key } => {
                            w.u8(1);
                            w.bytes(key.as_bytes());
                        }
                        TxnOp::Get { key } => {
                            w.u8(2);
                            w.bytes(key.as_bytes());
                        }
                    }
                }
            }
            Frame::TxnDone {
                cursor,
                failed,
                results,
            } => {
                w.u8(46);
                w.cursor(*cursor);
                match failed {
                    Some(i) => {
                        w.u8(1);
                        w.u32(*i);
                    }
                    None => w.u8(0),
                }
                w.u32(results.len() as u32);
                for r in results {
                    match r {
                        TxnResult::Put { version } => {
                            w.u8(0);
                            w.version(*version);
                        }
                        TxnResult::Delete { existed } => {
                            w.u8(1);
                            w.u8(*existed as u8);
                        }
                        TxnResult::Get { value } => {
                            w.u8(2);
                            match value {
                                Some((v, version)) => {
                                    w.u8(1);
                                    w.bytes(v);
                                    w.version(*version);
                                }
                                None => w.u8(0),
                            }
                        }
                    }
                }
            }
            Frame::Lease { op, ack } => {
                w.u8(47);
                w.u8(*ack as u8);
                match op {
                    LeaseOp::Grant { ttl_ms } => {
                        w.u8(0);
                        w.u64(*ttl_ms);
                    }
                    LeaseOp::KeepAlive { id } => {
                        w.u8(1);
                        w.u32(*id);
                    }
                    LeaseOp::Revoke { id } => {
                        w.u8(2);
                        w.u32(*id);
                    }
                    LeaseOp::Info { id } => {
                        w.u8(3);
                        w.u32(*id);
                    }
                }
            }
            Frame::LeaseIs { cursor, lease } => {
                w.u8(48);
                w.cursor(*cursor);
                w.u32(lease.id);
                w.u64(lease.ttl_ms);
                w.u64(lease.remaining_ms);
                w.u32(lease.key_count);
                w.u32(lease.keys.len() as u32);
                for k in &lease.keys {
                    w.bytes(k.as_bytes());
                }
            }
            Frame::Pipeline => w.u8(30),
            Frame::Tagged { id, frame } => {
                w.u8(31);
                w.0.extend_from_slice(&id.to_be_bytes());
                frame.body(w);
            }
        }
    }

    /// Decodes a frame body (type byte and what follows, no length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame> {
        let mut r = Reader(body);
        let f = match r.u8()? {
            1 => Frame::Subscribe {
                epoch: r.u64()?,
                cursor: r.loc()?,
                tail: r.bytes()?.to_vec(),
                node: r.u64()?,
                last_term: r.u64()?,
            },
            2 => Frame::Segment {
                term: r.u64()?,
                hw: r.loc()?,
                start: r.loc()?,
                next: r.loc()?,
                end: r.loc()?,
                records: r.bytes()?.to_vec(),
            },
            3 => Frame::Ack { cursor: r.loc()? },
            4 => Frame::Set {
                key: r.string()?,
                value: bytes::Bytes::copy_from_slice(r.bytes()?),
                ack: r.ack()?,
                expect: r.expect()?,
                ttl_ms: r.u64()?,
                lease: r.u32()?,
            },
            5 => Frame::Delete {
                key: r.string()?,
                ack: r.ack()?,
                expect: r.expect()?,
            },
            6 => Frame::Written {
                cursor: r.cursor()?,
                existed: r.u8()? != 0,
                version: r.version()?,
            },
            7 => Frame::ReadIndex,
            8 => Frame::Cursor {
                cursor: r.cursor()?,
            },
            9 => Frame::Get {
                key: r.string()?,
                min_cursor: r.cursor()?,
            },
            10 => {
                let cursor = r.cursor()?;
                let version = r.version()?;
                let value = match r.u8()? {
                    0 => None,
                    1 => Some(r.bytes()?.to_vec()),
                    b => return Err(Error::Protocol(format!("bad option tag {b}"))),
                };
                Frame::Value {
                    value,
                    cursor,
                    version,
                }
            }
            11 => Frame::Digest,
            12 => Frame::DigestIs { text: r.string()? },
            32 => Frame::Raft {
                body: r.bytes()?.to_vec(),
            },
            33 => Frame::RaftIs {
                body: r.bytes()?.to_vec(),
            },
            37 => Frame::Position { term: r.u64()? },
            38 => Frame::PositionIs {
                last_term: r.u64()?,
                cursor: r.cursor()?,
            },
            39 => Frame::Join {
                body: r.bytes()?.to_vec(),
            },
            40 => Frame::JoinIs {
                body: r.bytes()?.to_vec(),
            },
            41 => Frame::Meta,
            43 => Frame::Leave {
                body: r.bytes()?.to_vec(),
            },
            44 => Frame::Promote {
                body: r.bytes()?.to_vec(),
            },
            42 => Frame::MetaIs {
                body: r.bytes()?.to_vec(),
            },
            13 => Frame::Failed {
                code: Code::from(r.string()?.as_str()),
                message: r.string()?,
            },
            14 => Frame::Status,
            25 => Frame::Watch {
                prefix: r.string()?,
                cursor: r.cursor()?,
            },
            26 => {
                let Change {
                    cursor,
                    key,
                    value,
                    expired,
                } = r.change()?;
                Frame::Change {
                    cursor,
                    key,
                    value,
                    expired,
                }
            }
            27 => Frame::Changes {
                prefix: r.string()?,
                from: r.cursor()?,
                until: r.cursor()?,
                max_bytes: r.u32()?,
            },
            28 => {
                let next = r.cursor()?;
                let applied = r.cursor()?;
                let n = r.u32()? as usize;
                let mut changes = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    changes.push(r.change()?);
                }
                Frame::ChangesAre {
                    changes,
                    next,
                    applied,
                }
            }
            23 => Frame::ById {
                id: r.u32()?,
                min_cursor: r.cursor()?,
            },
            24 => {
                let cursor = r.cursor()?;
                let entry = match r.u8()? {
                    0 => None,
                    1 => Some((r.string()?, r.bytes()?.to_vec())),
                    b => return Err(Error::Protocol(format!("bad option tag {b}"))),
                };
                Frame::Record { entry, cursor }
            }
            19 => Frame::List {
                prefix: r.string()?,
                after: r.string()?,
                limit: r.u32()?,
                min_cursor: r.cursor()?,
            },
            20 => {
                let cursor = r.cursor()?;
                let n = r.u32()? as usize;
                let mut keys = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    keys.push(r.string()?);
                }
                Frame::Keys { keys, cursor }
            }
            21 => Frame::History {
                key: r.string()?,
                depth: r.u32()?,
                min_cursor: r.cursor()?,
            },
            22 => {
                let cursor = r.cursor()?;
                let n = r.u32()? as usize;
                let mut values = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    values.push(r.bytes()?.to_vec());
                }
                Frame::Values { values, cursor }
            }
            16 => Frame::Snapshot,
            17 => Frame::SnapshotChunk {
                file_nr: u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")),
                offset: r.u64()?,
                bytes: r.bytes()?.to_vec(),
            },
            18 => Frame::SnapshotDone {
                epoch: r.u64()?,
                end: r.loc()?,
            },
            15 => {
                let cursor = r.cursor()?;
                let n = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
                let mut workers = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    workers.push(WorkerStatus {
                        addr: r.string()?,
                        acked: r.cursor()?,
                        in_sync: r.u8()? != 0,
                        lag_ms: r.u64()?,
                    });
                }
                let counts = |r: &mut Reader<'_>| -> Result<(Vec<u64>, u64)> {
                    let n = r.u32()? as usize;
                    if n > 64 {
                        return Err(Error::Protocol(format!("{n} histogram buckets")));
                    }
                    let mut c = Vec::with_capacity(n);
                    for _ in 0..n {
                        c.push(r.u64()?);
                    }
                    Ok((c, r.u64()?))
                };
                let (duration_counts, duration_sum_us) = counts(&mut r)?;
                let (size_counts, size_sum) = counts(&mut r)?;
                Frame::StatusIs {
                    cursor,
                    workers,
                    commits: crate::stats::CommitStats {
                        duration_counts,
                        duration_sum_us,
                        size_counts,
                        size_sum,
                    },
                }
            }
            45 => {
                let ack = r.ack()?;
                let n = r.u32()? as usize;
                if n > ourdb::keyed::MAX_TXN_CONDITIONS {
                    return Err(Error::Protocol(format!("{n} conditions")));
                }
                let mut conditions = Vec::with_capacity(n);
                for _ in 0..n {
                    conditions.push(match r.u8()? {
                        0 => TxnCondition::Version {
                            key: r.string()?,
                            expect: r.expect()?,
                        },
                        1 => TxnCondition::ValueIs {
                            key: r.string()?,
                            value: r.bytes()?.to_vec(),
                        },
                        t => return Err(Error::Protocol(format!("unknown condition {t}"))),
                    });
                }
                let n = r.u32()? as usize;
                if n > ourdb::keyed::MAX_TXN_OPS {
                    return Err(Error::Protocol(format!("{n} operations")));
                }
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(match r.u8()? {
                        0 => TxnOp::Put {
                            key: r.string()?,
                            value: r.bytes()?.to_vec(),
                        },
                        1 => TxnOp::Delete { key: r.string()? },
                        2 => TxnOp::Get { key: r.string()? },
                        t => return Err(Error::Protocol(format!("unknown operation {t}"))),
                    });
                }
                Frame::Txn {
                    conditions,
                    ops,
                    ack,
                }
            }
            46 => {
                let cursor = r.cursor()?;
                let failed = match r.u8()? {
                    0 => None,
                    1 => Some(r.u32()?),
                    b => return Err(Error::Protocol(format!("bad option tag {b}"))),
                };
                let n = r.u32()? as usize;
                if n > ourdb::keyed::MAX_TXN_OPS {
                    return Err(Error::Protocol(format!("{n} results")));
                }
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    results.push(match r.u8()? {
                        0 => TxnResult::Put {
                            version: r.version()?,
                        },
                        1 => TxnResult::Delete {
                            existed: r.u8()? != 0,
                        },
                        2 => TxnResult::Get {
                            value: match r.u8()? {
                                0 => None,
                                1 => Some((r.bytes()?.to_vec(), r.version()?)),
                                b => return Err(Error::Protocol(format!("bad option tag {b}"))),
                            },
                        },
                        t => return Err(Error::Protocol(format!("unknown result {t}"))),
                    });
                }
                Frame::TxnDone {
                    cursor,
                    failed,
                    results,
                }
            }
            47 => {
                let ack = r.ack()?;
                let op = match r.u8()? {
                    0 => LeaseOp::Grant { ttl_ms: r.u64()? },
                    1 => LeaseOp::KeepAlive { id: r.u32()? },
                    2 => LeaseOp::Revoke { id: r.u32()? },
                    3 => LeaseOp::Info { id: r.u32()? },
                    t => return Err(Error::Protocol(format!("unknown lease operation {t}"))),
                };
                Frame::Lease { op, ack }
            }
            48 => {
                let cursor = r.cursor()?;
                let (id, ttl_ms, remaining_ms, key_count) =
                    (r.u32()?, r.u64()?, r.u64()?, r.u32()?);
                let n = r.u32()? as usize;
                if n > ourdb::keyed::MAX_LEASE_KEYS {
                    return Err(Error::Protocol(format!("a lease of {n} keys")));
                }
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.string()?);
                }
                Frame::LeaseIs {
                    cursor,
                    lease: LeaseInfo {
                        id,
                        ttl_ms,
                        remaining_ms,
                        key_count,
                        keys,
                    },
                }
            }
            30 => Frame::Pipeline,
            31 => {
                let id = r.u32()?;
                let inner = r.take(r.0.len())?;
                // One level only: a tag inside a tag is no request.
                if inner.first() == Some(&31) {
                    return Err(Error::Protocol(
                        "a tagged frame inside a tagged frame".into(),
                    ));
                }
                Frame::Tagged {
                    id,
                    frame: Box::new(Frame::decode(inner)?),
                }
            }
            t => return Err(Error::Protocol(format!("unknown frame type {t}"))),
        };
        r.end()?;
        Ok(f)
    }
}

/// Writes one frame.
pub async fn write(send: &mut quinn::SendStream, frame: &Frame) -> Result<()> {
    let bytes = frame.encode();
    if bytes.len() - 4 > MAX_FRAME {
        return Err(Error::Protocol(format!(
            "a {} frame of {} bytes is past the limit",
            frame.name(),
            bytes.len() - 4
        )));
    }
    send.write_all(&bytes)
        .await
        .map_err(|e| Error::Quic(format!("send: {e}")))
}

/// Reads frames from a stream through a buffer: many frames per read call
/// when they arrive together.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    /// Where the unread bytes in `buf` start.
    at: usize,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The next frame; `None` at a clean end of the stream.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some((f, used)) = split(&self.buf[self.at..])? {
                self.at += used;
                return Ok(Some(f));
            }
            // Keep only the unread part, then read more after it.
            self.buf.drain(..self.at);
            self.at = 0;
            let have = self.buf.len();
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if have == 0 => return Ok(None),
                Ok(None) => {
                    return Err(Error::Protocol(format!(
                        "the stream ended inside a frame ({have} bytes)"
                    )))
                }
                Err(e) => return Err(Error::Quic(format!("receive: {e}"))),
            }
        }
    }
}

/// The first whole frame at the start of `pending` (length prefix and
/// body) and the bytes it takes; `None` while it is incomplete.
pub fn split(pending: &[u8]) -> Result<Option<(Frame, usize)>> {
    if pending.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(pending[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(Error::Protocol(format!("frame of {len} bytes")));
    }
    if pending.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((Frame::decode(&pending[4..4 + len])?, 4 + len)))
}

/// How much a `FrameReader` asks for at once.
const READ_CHUNK: usize = 64 << 10;

/// Reads one frame; `None` at a clean end of the stream.
pub async fn read(recv: &mut quinn::RecvStream) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(Error::Quic(format!("receive: {e}"))),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(Error::Protocol(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| Error::Quic(format!("receive: {e}")))?;
    Frame::decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_roundtrips() {
        let l = Location::new(3, 77);
        let c = Cursor::new(2, l);
        let frames = vec![
            Frame::Subscribe {
                epoch: 2,
                cursor: l,
                tail: vec![9; 3],
                node: u64::MAX,
                last_term: 7,
            },
            Frame::Segment {
                term: 7,
                hw: Location::new(3, 80),
                start: l,
                next: Location::new(3, 90),
                end: Location::new(4, 10),
                records: vec![1, 2, 3],
            },
            Frame::Ack { cursor: l },
            Frame::Set {
                key: "k/é".into(),
                value: vec![0, 255].into(),
                ack: Ack::All,
                expect: Expect::Version(Version { epoch: 2, at: l }),
                ttl_ms: 0,
                lease: 0,
            },
            Frame::Set {
                key: "k".into(),
                value: vec![].into(),
                ack: Ack::Master,
                expect: Expect::Absent,
                ttl_ms: 0,
                lease: 0,
            },
            Frame::Delete {
                key: "k".into(),
                ack: Ack::Master,
                expect: Expect::Any,
            },
            Frame::Delete {
                key: "k".into(),
                ack: Ack::Master,
                expect: Expect::Present,
            },
            Frame::Delete {
                key: "k".into(),
                ack: Ack::All,
                expect: Expect::OneOf(vec![
                    Version { epoch: 2, at: l },
                    Version { epoch: 3, at: l },
                ]),
            },
            Frame::Set {
                key: "k".into(),
                value: vec![1].into(),
                ack: Ack::All,
                expect: Expect::NoneOf(vec![Version { epoch: 2, at: l }]),
                ttl_ms: 60_000,
                lease: 7,
            },
            Frame::Lease {
                op: LeaseOp::Grant { ttl_ms: 10_000 },
                ack: Ack::Master,
            },
            Frame::Lease {
                op: LeaseOp::KeepAlive { id: 3 },
                ack: Ack::All,
            },
            Frame::Lease {
                op: LeaseOp::Revoke { id: 4 },
                ack: Ack::All,
            },
            Frame::Lease {
                op: LeaseOp::Info { id: u32::MAX },
                ack: Ack::Master,
            },
            Frame::LeaseIs {
                cursor: c,
                lease: LeaseInfo {
                    id: 9,
                    ttl_ms: 5_000,
                    remaining_ms: 4_321,
                    key_count: 2,
                    keys: vec!["a".into(), "b/c".into()],
                },
            },
            Frame::Txn {
                conditions: vec![
                    TxnCondition::Version {
                        key: "a".into(),
                        expect: Expect::Version(Version { epoch: 2, at: l }),
                    },
                    TxnCondition::ValueIs {
                        key: "b".into(),
                        value: vec![7, 0],
                    },
                ],
                ops: vec![
                    TxnOp::Put {
                        key: "a".into(),
                        value: vec![1],
                    },
                    TxnOp::Delete { key: "b".into() },
                    TxnOp::Get { key: "c".into() },
                ],
                ack: Ack::All,
            },
            Frame::Txn {
                conditions: vec![],
                ops: vec![],
                ack: Ack::Master,
            },
            Frame::TxnDone {
                cursor: c,
                failed: None,
                results: vec![
                    TxnResult::Put {
                        version: Version { epoch: 2, at: l },
                    },
                    TxnResult::Delete { existed: true },
                    TxnResult::Get {
                        value: Some((vec![5], Version { epoch: 2, at: l })),
                    },
                    TxnResult::Get { value: None },
                ],
            },
            Frame::TxnDone {
                cursor: c,
                failed: Some(3),
                results: vec![],
            },
            Frame::Status,
            Frame::Watch {
                prefix: "w/".into(),
                cursor: c,
            },
            Frame::Change {
                cursor: c,
                key: "w/1".into(),
                value: Some(vec![3]),
                expired: false,
            },
            Frame::Change {
                cursor: c,
                key: "w/1".into(),
                value: None,
                expired: false,
            },
            Frame::Changes {
                prefix: "w/".into(),
                from: c,
                until: Cursor::new(2, Location::new(4, 1)),
                max_bytes: 65536,
            },
            Frame::ChangesAre {
                changes: vec![
                    Change {
                        cursor: c,
                        key: "w/1".into(),
                        value: Some(vec![1, 2]),
                        expired: false,
                    },
                    Change {
                        cursor: Cursor::new(2, Location::new(3, 99)),
                        key: "w/2".into(),
                        value: None,
                        expired: false,
                    },
                ],
                next: Cursor::new(2, Location::new(3, 99)),
                applied: Cursor::new(2, Location::new(4, 1)),
            },
            Frame::ById {
                id: 7,
                min_cursor: c,
            },
            Frame::Record {
                entry: Some(("k".into(), vec![1, 2])),
                cursor: c,
            },
            Frame::Record {
                entry: None,
                cursor: c,
            },
            Frame::List {
                prefix: "a/".into(),
                after: "a/b".into(),
                limit: 10,
                min_cursor: c,
            },
            Frame::Keys {
                keys: vec!["a/c".into(), "a/d".into()],
                cursor: c,
            },
            Frame::History {
                key: "k".into(),
                depth: 3,
                min_cursor: c,
            },
            Frame::Values {
                values: vec![vec![1], vec![]],
                cursor: c,
            },
            Frame::Snapshot,
            Frame::SnapshotChunk {
                file_nr: 2,
                offset: 9,
                bytes: vec![4; 5],
            },
            Frame::SnapshotDone { epoch: 3, end: l },
            Frame::StatusIs {
                cursor: c,
                workers: vec![WorkerStatus {
                    addr: "[::1]:7000".into(),
                    acked: c,
                    in_sync: true,
                    lag_ms: 1_234,
                }],
                commits: crate::stats::CommitStats {
                    duration_counts: vec![0, 5, 1],
                    duration_sum_us: 900,
                    size_counts: vec![3, 3],
                    size_sum: 40,
                },
            },
            Frame::Written {
                cursor: c,
                existed: true,
                version: Version { epoch: 1, at: l },
            },
            Frame::ReadIndex,
            Frame::Cursor { cursor: c },
            Frame::Get {
                key: "k".into(),
                min_cursor: c,
            },
            Frame::Value {
                value: Some(vec![]),
                cursor: c,
                version: Version { epoch: 1, at: l },
            },
            Frame::Value {
                value: None,
                cursor: c,
                version: Version::default(),
            },
            Frame::Digest,
            Frame::DigestIs { text: "x".into() },
            Frame::Raft {
                body: b"{}".to_vec(),
            },
            Frame::RaftIs { body: vec![] },
            Frame::Position { term: 9 },
            Frame::PositionIs {
                last_term: 8,
                cursor: c,
            },
            Frame::Join {
                body: b"{}".to_vec(),
            },
            Frame::JoinIs { body: vec![1] },
            Frame::Meta,
            Frame::MetaIs { body: vec![] },
            Frame::Leave {
                body: b"{}".to_vec(),
            },
            Frame::Promote {
                body: b"{}".to_vec(),
            },
            Frame::Failed {
                code: Code::Gone,
                message: "m".into(),
            },
            Frame::Failed {
                code: Code::Other("from_a_newer_peer".into()),
                message: "m".into(),
            },
            Frame::Pipeline,
            Frame::Tagged {
                id: 7,
                frame: Box::new(Frame::Get {
                    key: "k".into(),
                    min_cursor: c,
                }),
            },
            Frame::Tagged {
                id: u32::MAX,
                frame: Box::new(Frame::ReadIndex),
            },
        ];
        for f in frames {
            let b = f.encode();
            assert_eq!(
                u32::from_be_bytes(b[..4].try_into().unwrap()) as usize,
                b.len() - 4
            );
            assert_eq!(Frame::decode(&b[4..]).unwrap(), f);
            // Truncated or padded bodies are refused.
            assert!(Frame::decode(&b[4..b.len() - 1]).is_err() || b.len() == 5);
            let mut long = b[4..].to_vec();
            long.push(0);
            assert!(Frame::decode(&long).is_err());
        }
        assert!(Frame::decode(&[99]).is_err());
        // A tag inside a tag is refused (no recursion on untrusted input).
        let inner = Frame::Tagged {
            id: 1,
            frame: Box::new(Frame::ReadIndex),
        }
        .encode();
        let mut nested = vec![31, 0, 0, 0, 2];
        nested.extend_from_slice(&inner[4..]);
        assert!(Frame::decode(&nested).is_err());
        let v = Version {
            epoch: 3,
            at: Location::new(1, 99),
        };
        assert_eq!(v.etag(), "\"3-1-99\"");
        assert_eq!(Version::from_etag(&v.etag()), Some(v));
        assert_eq!(Version::from_etag("\"3-1\""), None);
        assert_eq!(Version::from_etag("3-1-99"), None);
        for other in [
            "\"01-0-5\"",
            "\"1-00-5\"",
            "\"1-0-+5\"",
            " \"1-0-5\"",
            "\"1-0-5\" ",
        ] {
            assert_eq!(Version::from_etag(other), None, "{other}");
        }
        assert!(Version::from_etag("\"1-0-5\"").is_some());
    }

    #[test]
    fn a_frame_is_named_without_its_contents() {
        let set = Frame::Set {
            key: "k".into(),
            value: vec![7; 1 << 20].into(),
            ack: Ack::Master,
            expect: Expect::Any,
            ttl_ms: 0,
            lease: 0,
        };
        assert_eq!(set.name(), "Set");
        assert_eq!(Frame::Digest.name(), "Digest");
        assert_eq!(Frame::Meta.name(), "Meta");
    }

    #[test]
    fn frames_share_a_buffer() {
        let a = Frame::Ack {
            cursor: Location::new(0, 5),
        };
        let b = Frame::Digest;
        let mut buf = Vec::new();
        a.encode_into(&mut buf);
        b.encode_into(&mut buf);
        let mut one = a.encode();
        one.extend_from_slice(&b.encode());
        assert_eq!(buf, one);
    }
}
