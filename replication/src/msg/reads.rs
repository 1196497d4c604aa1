//! Reads at a cursor, client → node: `ReadIndex` → `CursorIs`, `Get` →
//! `Value`, `List` → `Keys`, `History` → `Values`, `ById` → `Record` (or
//! `Failed`: `lagging` or `not_reached` for a cursor not reached within the
//! read wait, `read_failed`).

use crate::cursor::Cursor;
use crate::frame::Version;
use crate::msg::{dispatch, message, Request};

message! {
    /// The master's commit cursor (the read index); a worker refuses it
    /// (`NotMaster`).
    ReadIndex = ReadIndex;
}

message! {
    /// A cursor (frame `Cursor`): the answer to `ReadIndex`, and a worker's
    /// first answer to a `Watch` (where it starts).
    CursorIs = Cursor {
        /// The cursor.
        cursor: Cursor,
    }
}

message! {
    /// `key`'s value once the node has reached `min_cursor`.
    Get = Get {
        /// The key.
        key: String,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    }
}

message! {
    /// The value, if the key exists, with its version.
    Value = Value {
        /// The value; `None` if the key does not exist.
        value: Option<Vec<u8>>,
        /// The node's end after the read: at or after everything the read
        /// saw, and covered by the high-water mark (what a session read
        /// after it carries).
        cursor: Cursor,
        /// The key's version (all zero if it does not exist).
        version: Version,
    }
}

message! {
    /// Keys starting with `prefix`, after `after` (empty: from the start),
    /// at most `limit`, once the node has reached `min_cursor`.
    List = List {
        /// What the keys start with.
        prefix: String,
        /// The key to list after; empty: from the first.
        after: String,
        /// At most this many keys.
        limit: u32,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    }
}

message! {
    /// Keys, ascending.
    Keys = Keys {
        /// The keys.
        keys: Vec<String>,
        /// The node's end after the read: at or after everything the read
        /// saw, and covered by the high-water mark (what a session read
        /// after it carries).
        cursor: Cursor,
    }
}

message! {
    /// Up to `depth` values of `key`, newest first.
    History = History {
        /// The key.
        key: String,
        /// At most this many values.
        depth: u32,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    }
}

message! {
    /// Values, newest first.
    Values = Values {
        /// The values.
        values: Vec<Vec<u8>>,
        /// The node's end after the read: at or after everything the read
        /// saw, and covered by the high-water mark (what a session read
        /// after it carries).
        cursor: Cursor,
    }
}

message! {
    /// The record with this id, once the node has reached `min_cursor`.
    ById = ById {
        /// The record id.
        id: u32,
        /// The cursor the node must have reached first.
        min_cursor: Cursor,
    }
}

message! {
    /// A record's key and value, if its id is live.
    Record = Record {
        /// Key and value; `None` if the id is not live.
        entry: Option<(String, Vec<u8>)>,
        /// The node's end after the read: at or after everything the read
        /// saw, and covered by the high-water mark (what a session read
        /// after it carries).
        cursor: Cursor,
    }
}

impl Request for ReadIndex {
    type Reply = CursorIs;
}

impl Request for Get {
    type Reply = Value;
}

impl Request for List {
    type Reply = Keys;
}

impl Request for History {
    type Reply = Values;
}

impl Request for ById {
    type Reply = Record;
}

dispatch! {
    /// A read request.
    Read answered by Handler {
        /// The node's cursor.
        ReadIndex => read_index,
        /// A key's value.
        Get => get,
        /// Keys by prefix.
        List => list,
        /// A key's past values.
        History => history,
        /// A record by id.
        ById => by_id,
    }
}
