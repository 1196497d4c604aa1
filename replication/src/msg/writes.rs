//! Writes, client → master: `Set` and `Delete`, each answered by `Written`
//! (or `Failed`: `precondition`, `write_failed`, `not_master` from a worker),
//! and `Txn`, answered by `TxnDone` (a failed condition is an answer too),
//! and `Lease`, answered by `LeaseIs` (or `Failed`: `no_lease`).

use crate::cursor::Cursor;
use crate::frame::{Ack, Expect, LeaseInfo, LeaseOp, TxnCondition, TxnOp, TxnResult, Version};
use crate::msg::{dispatch, message, Request};

message! {
    /// Store `value` under `key`, acknowledged per `ack`, if `expect` holds.
    Set = Set {
        /// The key.
        key: String,
        /// The new value.
        value: bytes::Bytes,
        /// When the master answers.
        ack: Ack,
        /// What the key's current version must be.
        expect: Expect,
        /// Time to live in milliseconds (0: none).
        ttl_ms: u64,
        /// The lease the key lives as long as (0: none).
        lease: u32,
    }
}

message! {
    /// Delete `key`, acknowledged per `ack`, if `expect` holds.
    Delete = Delete {
        /// The key.
        key: String,
        /// When the master answers.
        ack: Ack,
        /// What the key's current version must be.
        expect: Expect,
    }
}

message! {
    /// A write is applied and durable on the master.
    Written = Written {
        /// The master's end after the write.
        cursor: Cursor,
        /// For a delete, whether the key existed (true for a set).
        existed: bool,
        /// The key's new version (all zero for a delete).
        version: Version,
    }
}

message! {
    /// A transaction: if every condition holds, the operations in order,
    /// whole or not at all, acknowledged per `ack`.
    Txn = Txn {
        /// What must hold.
        conditions: Vec<TxnCondition>,
        /// What to do.
        ops: Vec<TxnOp>,
        /// When the master answers.
        ack: Ack,
    }
}

message! {
    /// How a transaction ended.
    TxnDone = TxnDone {
        /// The master's end after it.
        cursor: Cursor,
        /// The condition that did not hold (nothing was written).
        failed: Option<u32>,
        /// One result per operation.
        results: Vec<TxnResult>,
    }
}

message! {
    /// Grant, keep alive, revoke or describe a lease.
    Lease = Lease {
        /// What to do.
        op: LeaseOp,
        /// When the master answers.
        ack: Ack,
    }
}

message! {
    /// The lease after a `Lease` request.
    LeaseIs = LeaseIs {
        /// The master's end after it.
        cursor: Cursor,
        /// The lease (as it was before, once revoked).
        lease: LeaseInfo,
    }
}

impl Request for Lease {
    type Reply = LeaseIs;
}

impl Request for Txn {
    type Reply = TxnDone;
}

impl Request for Set {
    type Reply = Written;
}

impl Request for Delete {
    type Reply = Written;
}

dispatch! {
    /// A write request.
    Write answered by Handler {
        /// Store a value.
        Set => set,
        /// Delete a key.
        Delete => delete,
        /// Apply a transaction.
        Txn => txn,
        /// Grant, keep alive, revoke or describe a lease.
        Lease => lease,
    }
}
