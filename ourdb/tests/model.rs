//! Random operation sequences against BTreeMap models, with reopen and crash
//! points: the engine (ids) and the keyed layer (string keys).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ourdb::keyed::KeyedStore;
use ourdb::{Config, OpenOptions, OurDb, SyncPolicy};
use proptest::prelude::*;

fn open(dir: &Path, incremental: bool) -> OurDb {
    OpenOptions::new()
        .config(Config {
            record_nr_max: 64,
            record_size_max: 600,
            // Tiny files and checkpoints: switches and checkpoints happen often.
            file_size: 2048,
            incremental,
            keysize: Some(6),
        })
        .sync(SyncPolicy::Flush)
        .checkpoint_bytes(4096)
        .open(dir)
        .unwrap()
}

/// A crash: drop without flushing or checkpointing, and maybe leave torn
/// bytes after the last record.
fn crash(db: OurDb, dir: &Path, garbage: &[u8]) {
    db.abandon();
    if !garbage.is_empty() {
        let files = ourdb::files::list_data_files(dir).unwrap();
        let last = ourdb::files::data_path(dir, *files.last().unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(last)
            .unwrap()
            .write_all(garbage)
            .unwrap();
    }
}

#[derive(Debug, Clone)]
enum EngineOp {
    Insert(Vec<u8>),
    Set(u32, Vec<u8>),
    Delete(u32),
    Get(u32),
    History(u32, usize),
    Reopen,
    Crash(Vec<u8>),
}

fn engine_op() -> impl Strategy<Value = EngineOp> {
    let val = prop::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        4 => val.clone().prop_map(EngineOp::Insert),
        3 => (0u32..70, val).prop_map(|(i, v)| EngineOp::Set(i, v)),
        1 => (0u32..70).prop_map(EngineOp::Delete),
        2 => (0u32..70).prop_map(EngineOp::Get),
        2 => (0u32..70, 0usize..6).prop_map(|(i, d)| EngineOp::History(i, d)),
        1 => Just(EngineOp::Reopen),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(EngineOp::Crash),
    ]
}

fn run_engine(ops: Vec<EngineOp>, incremental: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(dir.path(), incremental);
    // Live ids: versions newest first. Deleted ids stay out of the map.
    let mut model: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut next_id = 1u32;
    for op in ops {
        match op {
            EngineOp::Insert(v) => {
                let r = db.insert(&v);
                if !incremental {
                    prop_assert!(matches!(r, Err(ourdb::Error::IdRequired)));
                } else if next_id >= 64 {
                    prop_assert!(matches!(r, Err(ourdb::Error::TableFull(_))), "{r:?}");
                } else {
                    prop_assert_eq!(r.unwrap(), next_id);
                    model.insert(next_id, vec![v]);
                    next_id += 1;
                }
            }
            EngineOp::Set(id, v) => {
                let r = db.set(Some(id), &v);
                if id >= 64 {
                    prop_assert!(matches!(r, Err(ourdb::Error::IdOutOfRange { .. })), "{r:?}");
                } else if incremental && !model.contains_key(&id) {
                    prop_assert!(matches!(r, Err(ourdb::Error::IdNotIssued(_))), "{r:?}");
                } else {
                    r.unwrap();
                    model.entry(id).or_default().insert(0, v);
                }
            }
            EngineOp::Delete(id) => {
                let r = db.delete(id);
                if model.remove(&id).is_some() {
                    r.unwrap();
                } else {
                    prop_assert!(r.is_err());
                }
            }
            EngineOp::Get(id) => match model.get(&id) {
                Some(h) => prop_assert_eq!(&db.get(id).unwrap(), &h[0]),
                None => prop_assert!(db.get(id).is_err()),
            },
            EngineOp::History(id, d) => match model.get(&id) {
                Some(h) => {
                    let want: Vec<Vec<u8>> = h.iter().take(d).cloned().collect();
                    prop_assert_eq!(db.get_history(id, d).unwrap(), want);
                }
                None if d == 0 && id < 64 => {
                    prop_assert_eq!(db.get_history(id, d).unwrap().len(), 0)
                }
                None => prop_assert!(db.get_history(id, d).is_err()),
            },
            EngineOp::Reopen => {
                db.close().unwrap();
                db = open(dir.path(), incremental);
            }
            EngineOp::Crash(garbage) => {
                crash(db, dir.path(), &garbage);
                db = open(dir.path(), incremental);
            }
        }
        if incremental {
            prop_assert_eq!(db.next_id().unwrap(), next_id);
        }
    }
    let records: Vec<(u32, Vec<u8>)> = db.iter().map(|(id, v)| (id, v.unwrap())).collect();
    let want: Vec<(u32, Vec<u8>)> = model.iter().map(|(id, h)| (*id, h[0].clone())).collect();
    prop_assert_eq!(records, want);
    db.close().unwrap();
    let v = ourdb::tools::verify(dir.path(), None).unwrap();
    prop_assert!(v.is_ok(), "{:?}", v.problems);
    Ok(())
}

#[derive(Debug, Clone)]
enum KeyedOp {
    Put(usize, Vec<u8>),
    Delete(usize),
    Get(usize),
    History(usize, usize),
    List(usize),
    Reopen,
    Crash(Vec<u8>),
    /// Conditions (key, what), then operations.
    Txn(Vec<(usize, TxnIf)>, Vec<TxnDo>),
    /// The first records of a transaction's group written, then a crash.
    TornTxn(Vec<TxnDo>, usize, Vec<u8>),
    /// A value larger than a record (chunks): key, length, a byte to vary it.
    PutLarge(usize, usize, u8),
    /// The first chunks of a large value written, then a crash.
    TornLarge(usize, usize, Vec<u8>),
    /// A put that expires this many ticks from now (a large value if the
    /// flag is set).
    PutTtl(usize, Vec<u8>, u64, bool),
    /// Time passes: keys whose deadline came are expired.
    Tick(u64),
    /// A lease of this many ticks.
    Grant(u64),
    /// A put attached to the n-th lease granted (alive or not; a large
    /// value if the flag is set).
    PutLeased(usize, Vec<u8>, usize, bool),
    /// A keep-alive of the n-th lease granted.
    KeepAlive(usize),
    /// A revocation of the n-th lease granted.
    Revoke(usize),
}

#[derive(Debug, Clone)]
enum TxnIf {
    Exists,
    Absent,
    /// The key's current value (as the model has it), or these bytes.
    ValueIs(Option<Vec<u8>>),
}

#[derive(Debug, Clone)]
enum TxnDo {
    Put(usize, Vec<u8>),
    Delete(usize),
    Get(usize),
}

fn txn_do() -> impl Strategy<Value = TxnDo> {
    let val = prop::collection::vec(any::<u8>(), 0..120);
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (key.clone(), val).prop_map(|(k, v)| TxnDo::Put(k, v)),
        2 => key.clone().prop_map(TxnDo::Delete),
        2 => key.prop_map(TxnDo::Get),
    ]
}

/// Operations with each key written at most once (the store refuses more).
fn txn_dos() -> impl Strategy<Value = Vec<TxnDo>> {
    prop::collection::vec(txn_do(), 0..6).prop_map(|ops| {
        let mut written = std::collections::HashSet::new();
        ops.into_iter()
            .filter(|op| match op {
                TxnDo::Put(k, _) | TxnDo::Delete(k) => written.insert(*k),
                TxnDo::Get(_) => true,
            })
            .collect()
    })
}

fn txn_if() -> impl Strategy<Value = (usize, TxnIf)> {
    (
        0..KEYS.len(),
        prop_oneof![
            Just(TxnIf::Exists),
            Just(TxnIf::Absent),
            Just(TxnIf::ValueIs(None)),
            prop::collection::vec(any::<u8>(), 0..3).prop_map(|v| TxnIf::ValueIs(Some(v))),
        ],
    )
}

const KEYS: &[&str] = &[
    "a", "a/b", "a/c", "ab", "b", "b/x", "config/1", "config/2", "z",
];
const PREFIXES: &[&str] = &["", "a", "a/", "b", "config/", "q"];

fn keyed_op() -> impl Strategy<Value = KeyedOp> {
    let val = prop::collection::vec(any::<u8>(), 0..200);
    let key = 0..KEYS.len();
    prop_oneof![
        5 => (key.clone(), val).prop_map(|(k, v)| KeyedOp::Put(k, v)),
        2 => key.clone().prop_map(KeyedOp::Delete),
        2 => key.clone().prop_map(KeyedOp::Get),
        2 => (key, 0usize..5).prop_map(|(k, d)| KeyedOp::History(k, d)),
        2 => (0..PREFIXES.len()).prop_map(KeyedOp::List),
        1 => Just(KeyedOp::Reopen),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(KeyedOp::Crash),
        3 => (prop::collection::vec(txn_if(), 0..3), txn_dos())
            .prop_map(|(c, o)| KeyedOp::Txn(c, o)),
        1 => (txn_dos(), 0usize..6, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(o, n, g)| KeyedOp::TornTxn(o, n, g)),
        2 => (0..KEYS.len(), 500usize..2600, any::<u8>())
            .prop_map(|(k, n, b)| KeyedOp::PutLarge(k, n, b)),
        1 => (0..KEYS.len(), 1usize..4, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(k, n, g)| KeyedOp::TornLarge(k, n, g)),
        3 => (0..KEYS.len(), prop::collection::vec(any::<u8>(), 0..100), 1u64..5, prop::bool::weighted(0.2))
            .prop_map(|(k, v, t, big)| KeyedOp::PutTtl(k, v, t, big)),
        2 => (1u64..4).prop_map(KeyedOp::Tick),
        1 => (1u64..6).prop_map(KeyedOp::Grant),
        3 => (0..KEYS.len(), prop::collection::vec(any::<u8>(), 0..100), 0usize..4, prop::bool::weighted(0.2))
            .prop_map(|(k, v, l, big)| KeyedOp::PutLeased(k, v, l, big)),
        1 => (0usize..4).prop_map(KeyedOp::KeepAlive),
        1 => (0usize..4).prop_map(KeyedOp::Revoke),
    ]
}

fn open_keyed(dir: &Path) -> KeyedStore {
    let db = OpenOptions::new()
        .config(Config {
            record_nr_max: 10_000,
            record_size_max: 600,
            file_size: 2048,
            ..Config::default()
        })
        .sync(SyncPolicy::Flush)
        .checkpoint_bytes(4096)
        .open(dir)
        .unwrap();
    KeyedStore::new(db).unwrap()
}

fn run_keyed(ops: Vec<KeyedOp>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_keyed(dir.path());
    let mut model: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    // Deadlines by key, on a clock of ticks.
    let mut deadlines: BTreeMap<String, u64> = BTreeMap::new();
    // Leases granted (by order of grant), the live ones (deadline, ttl),
    // and each key's lease.
    let mut granted: Vec<u32> = Vec::new();
    let mut leases: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut key_lease: BTreeMap<String, u32> = BTreeMap::new();
    let mut now = 1_000u64;
    for op in ops {
        // Any write of a key ends its deadline and leaves its lease (a TTL
        // or leased put sets a new one).
        match &op {
            KeyedOp::Put(k, _)
            | KeyedOp::Delete(k)
            | KeyedOp::PutLarge(k, _, _)
            | KeyedOp::PutTtl(k, ..) => {
                deadlines.remove(KEYS[*k]);
                key_lease.remove(KEYS[*k]);
            }
            KeyedOp::Txn(conds, ops) => {
                let holds = conds.iter().all(|(k, c)| match c {
                    TxnIf::Exists => model.contains_key(KEYS[*k]),
                    TxnIf::Absent => !model.contains_key(KEYS[*k]),
                    TxnIf::ValueIs(None) => model.contains_key(KEYS[*k]),
                    TxnIf::ValueIs(Some(v)) => model.get(KEYS[*k]).map(|h| &h[0]) == Some(v),
                });
                if holds {
                    for o in ops {
                        if let TxnDo::Put(k, _) | TxnDo::Delete(k) = o {
                            deadlines.remove(KEYS[*k]);
                            key_lease.remove(KEYS[*k]);
                        }
                    }
                }
            }
            _ => {}
        }
        match op {
            KeyedOp::Put(k, v) => {
                store.put(KEYS[k], &v).unwrap();
                model.entry(KEYS[k].to_string()).or_default().insert(0, v);
            }
            KeyedOp::Delete(k) => {
                prop_assert_eq!(
                    store.delete(KEYS[k]).unwrap(),
                    model.remove(KEYS[k]).is_some()
                );
            }
            KeyedOp::Get(k) => {
                prop_assert_eq!(
                    store.get(KEYS[k]).unwrap(),
                    model.get(KEYS[k]).map(|h| h[0].clone())
                );
            }
            KeyedOp::History(k, d) => {
                let want: Vec<Vec<u8>> = model
                    .get(KEYS[k])
                    .map(|h| h.iter().take(d).cloned().collect())
                    .unwrap_or_default();
                prop_assert_eq!(store.history(KEYS[k], d).unwrap(), want);
            }
            KeyedOp::List(p) => {
                let want: Vec<String> = model
                    .keys()
                    .filter(|k| k.starts_with(PREFIXES[p]))
                    .cloned()
                    .collect();
                prop_assert_eq!(store.list(PREFIXES[p], None, usize::MAX), want.clone());
                // Paging: after the first key, at most two.
                if let Some(first) = want.first() {
                    let page: Vec<String> = want.iter().skip(1).take(2).cloned().collect();
                    prop_assert_eq!(store.list(PREFIXES[p], Some(first), 2), page);
                }
            }
            KeyedOp::Reopen => {
                store.close().unwrap();
                store = open_keyed(dir.path());
            }
            KeyedOp::Crash(garbage) => {
                crash(store.into_db(), dir.path(), &garbage);
                store = open_keyed(dir.path());
            }
            KeyedOp::Txn(conds, ops) => run_txn(&store, &mut model, conds, ops)?,
            KeyedOp::PutTtl(k, v, t, big) => {
                let v = if big { v.repeat(20) } else { v };
                let (_, p) = store
                    .put_expiring_pending(KEYS[k], &v, ourdb::keyed::Expect::Any, now + t)
                    .unwrap()
                    .expect("no condition");
                store.db().wait(p).unwrap();
                model.entry(KEYS[k].to_string()).or_default().insert(0, v);
                deadlines.insert(KEYS[k].to_string(), now + t);
            }
            KeyedOp::Grant(t) => {
                let (l, p) = store.lease_grant_pending(t, now).unwrap();
                store.db().wait(p).unwrap();
                prop_assert!(!granted.contains(&l.id), "lease ids are never reused");
                granted.push(l.id);
                leases.insert(l.id, (now + t, t));
            }
            KeyedOp::PutLeased(k, v, l, big) => {
                let Some(&id) = granted.get(l) else { continue };
                let v = if big { v.repeat(20) } else { v };
                let tie = ourdb::keyed::Tie::Lease(id);
                let put = store.put_tied_pending(KEYS[k], &v, ourdb::keyed::Expect::Any, tie, now);
                // A lease past its deadline takes no key, even before a
                // tick ends it.
                if leases.get(&id).is_some_and(|(d, _)| *d > now) {
                    let (_, p) = put.unwrap().expect("no condition");
                    store.db().wait(p).unwrap();
                    model.entry(KEYS[k].to_string()).or_default().insert(0, v);
                    deadlines.remove(KEYS[k]);
                    key_lease.insert(KEYS[k].to_string(), id);
                } else {
                    prop_assert!(matches!(put, Err(ourdb::Error::NoLease(i)) if i == id));
                }
            }
            KeyedOp::KeepAlive(l) => {
                let Some(&id) = granted.get(l) else { continue };
                let kept = store.lease_keep_alive_pending(id, now).unwrap();
                match leases.get_mut(&id) {
                    Some((deadline, ttl)) if *deadline > now => {
                        let (info, p) = kept.expect("a live lease");
                        store.db().wait(p).unwrap();
                        *deadline = now + *ttl;
                        prop_assert_eq!(info.deadline, *deadline);
                    }
                    _ => prop_assert!(kept.is_none()),
                }
            }
            KeyedOp::Revoke(l) => {
                let Some(&id) = granted.get(l) else { continue };
                let ended = store.end_lease_pending(id, None).unwrap();
                prop_assert_eq!(ended.is_some(), leases.remove(&id).is_some());
                if let Some(p) = ended {
                    store.db().wait(p).unwrap();
                }
                key_lease.retain(|k, l| {
                    let gone = *l == id;
                    if gone {
                        model.remove(k);
                    }
                    !gone
                });
            }
            KeyedOp::Tick(t) => {
                now += t;
                for id in store.due_leases(now, usize::MAX) {
                    if let Some(p) = store.end_lease_pending(id, Some(now)).unwrap() {
                        store.db().wait(p).unwrap();
                    }
                }
                let ended: Vec<u32> = leases
                    .iter()
                    .filter(|(_, (d, _))| *d <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ended {
                    leases.remove(&id);
                    key_lease.retain(|k, l| {
                        let gone = *l == id;
                        if gone {
                            model.remove(k);
                        }
                        !gone
                    });
                }
                for key in store.due(now, usize::MAX) {
                    if let Some(p) = store.expire_pending(&key, now).unwrap() {
                        store.db().wait(p).unwrap();
                    }
                }
                let due: Vec<String> = deadlines
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    deadlines.remove(&k);
                    model.remove(&k);
                }
                let next = deadlines
                    .values()
                    .chain(leases.values().map(|(d, _)| d))
                    .min()
                    .copied();
                prop_assert_eq!(store.next_deadline(), next);
            }
            KeyedOp::PutLarge(k, n, b) => {
                let v: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ b).collect();
                store.put(KEYS[k], &v).unwrap();
                model.entry(KEYS[k].to_string()).or_default().insert(0, v);
            }
            KeyedOp::TornLarge(k, n, garbage) => {
                write_torn_chunks(&store, KEYS[k], n);
                crash(store.into_db(), dir.path(), &garbage);
                store = open_keyed(dir.path());
                for k in KEYS {
                    prop_assert_eq!(store.get(k).unwrap(), model.get(*k).map(|h| h[0].clone()));
                }
            }
            KeyedOp::TornTxn(ops, n, garbage) => {
                write_torn(&store, &ops, n);
                crash(store.into_db(), dir.path(), &garbage);
                store = open_keyed(dir.path());
                // Nothing of it: every key reads as before.
                for k in KEYS {
                    prop_assert_eq!(store.get(k).unwrap(), model.get(*k).map(|h| h[0].clone()));
                }
            }
        }
    }
    prop_assert_eq!(store.len(), model.len());
    for k in KEYS {
        prop_assert_eq!(store.deadline(k), deadlines.get(*k).copied(), "{}", k);
        prop_assert_eq!(store.lease_of(k), key_lease.get(*k).copied(), "{}", k);
    }
    prop_assert_eq!(
        store.lease_ids(),
        leases.keys().copied().collect::<Vec<_>>()
    );
    for (id, (deadline, ttl)) in &leases {
        let l = store.lease(*id, usize::MAX).expect("a live lease");
        prop_assert_eq!((l.deadline, l.ttl_ms), (*deadline, *ttl));
        let keys: Vec<String> = key_lease
            .iter()
            .filter(|(_, l)| *l == id)
            .map(|(k, _)| k.clone())
            .collect();
        prop_assert_eq!(l.keys, keys);
    }
    Ok(())
}

/// A transaction against the store and the model: the same outcome, the
/// same reads, the same state after.
fn run_txn(
    store: &KeyedStore,
    model: &mut BTreeMap<String, Vec<Vec<u8>>>,
    conds: Vec<(usize, TxnIf)>,
    ops: Vec<TxnDo>,
) -> Result<(), TestCaseError> {
    use ourdb::keyed::{Condition, Expect, Op, OpResult, TxnOutcome};
    let current =
        |m: &BTreeMap<String, Vec<Vec<u8>>>, k: usize| m.get(KEYS[k]).map(|h| h[0].clone());
    let conditions: Vec<Condition> = conds
        .iter()
        .map(|(k, c)| match c {
            TxnIf::Exists => Condition::Version(KEYS[*k].into(), Expect::Present),
            TxnIf::Absent => Condition::Version(KEYS[*k].into(), Expect::Absent),
            TxnIf::ValueIs(v) => Condition::ValueIs(
                KEYS[*k].into(),
                v.clone().or_else(|| current(model, *k)).unwrap_or_default(),
            ),
        })
        .collect();
    let want_failed = conditions.iter().position(|c| match c {
        Condition::Version(k, Expect::Present) => !model.contains_key(k),
        Condition::Version(k, _) => model.contains_key(k),
        Condition::ValueIs(k, v) => model.get(k).map(|h| &h[0]) != Some(v),
    });
    let store_ops: Vec<Op> = ops
        .iter()
        .map(|o| match o {
            TxnDo::Put(k, v) => Op::Put(KEYS[*k].into(), v.clone()),
            TxnDo::Delete(k) => Op::Delete(KEYS[*k].into()),
            TxnDo::Get(k) => Op::Get(KEYS[*k].into()),
        })
        .collect();
    match store.txn_pending(&conditions, &store_ops).unwrap() {
        TxnOutcome::Failed(i) => prop_assert_eq!(Some(i), want_failed),
        TxnOutcome::Applied(results, pending) => {
            prop_assert_eq!(want_failed, None);
            if let Some(p) = pending {
                store.db().wait(p).unwrap();
            }
            prop_assert_eq!(results.len(), ops.len());
            for (op, r) in ops.iter().zip(results) {
                match (op, r) {
                    (TxnDo::Put(k, v), OpResult::Put(_)) => {
                        model
                            .entry(KEYS[*k].to_string())
                            .or_default()
                            .insert(0, v.clone());
                    }
                    (TxnDo::Delete(k), OpResult::Delete(existed)) => {
                        prop_assert_eq!(existed, model.remove(KEYS[*k]).is_some());
                    }
                    (TxnDo::Get(k), OpResult::Get(got)) => {
                        prop_assert_eq!(got.map(|(v, _)| v), current(model, *k));
                    }
                    (op, r) => prop_assert!(false, "{op:?} answered by {r:?}"),
                }
            }
        }
    }
    Ok(())
}

/// The first `n` chunks of a large value of `key`, as the store writes them.
fn write_torn_chunks(store: &KeyedStore, key: &str, n: usize) {
    use ourdb::keyed::{Envelope, Group, Kind};
    let db = store.db();
    let start = db.end();
    let existing = store.id_of(key);
    let id = existing.unwrap_or_else(|| db.next_id().unwrap());
    for i in 0..n {
        let rec = Envelope {
            kind: Kind::Chunk,
            id,
            key,
            value: &[i as u8; 500],
            group: Some(Group { start, last: false }),
        }
        .encode();
        db.set((existing.is_some() || i > 0).then_some(id), &rec)
            .unwrap();
    }
}

/// The first `n` records of a transaction's group, written as the store
/// would (group marks, none marked last), without the index learning them.
fn write_torn(store: &KeyedStore, ops: &[TxnDo], n: usize) {
    use ourdb::keyed::{Envelope, Group, Kind};
    let db = store.db();
    let start = db.end();
    let mut written = 0;
    for op in ops {
        if written == n {
            break;
        }
        let (k, kind, value) = match op {
            TxnDo::Put(k, v) => (*k, Kind::Put, v.as_slice()),
            TxnDo::Delete(k) if store.id_of(KEYS[*k]).is_some() => (*k, Kind::Tombstone, &[][..]),
            _ => continue,
        };
        let existing = store.id_of(KEYS[k]);
        let id = existing.unwrap_or_else(|| db.next_id().unwrap());
        let rec = Envelope {
            kind,
            id,
            key: KEYS[k],
            value,
            group: Some(Group { start, last: false }),
        }
        .encode();
        db.set(existing, &rec).unwrap();
        written += 1;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn engine_incremental_matches_model(ops in prop::collection::vec(engine_op(), 1..80)) {
        run_engine(ops, true)?;
    }

    #[test]
    fn engine_key_value_matches_model(ops in prop::collection::vec(engine_op(), 1..80)) {
        run_engine(ops, false)?;
    }

    #[test]
    fn keyed_layer_matches_model(ops in prop::collection::vec(keyed_op(), 1..80)) {
        run_keyed(ops)?;
    }
}

/// A delete cut short between its tombstone and the lookup clear: open
/// finishes it.
#[test]
fn half_done_delete_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_keyed(dir.path());
    let id = store.put("k", b"v").unwrap();
    store.put("other", b"w").unwrap();
    // Write the tombstone by hand, as the first half of a delete.
    let tomb = ourdb::keyed::Envelope {
        kind: ourdb::keyed::Kind::Tombstone,
        id,
        key: "k",
        value: b"",
        group: None,
    }
    .encode();
    store.db().set(Some(id), &tomb).unwrap();
    crash(store.into_db(), dir.path(), &[]);
    let store = open_keyed(dir.path());
    assert_eq!(store.index_report().finished_deletes, 1);
    assert_eq!(store.get("k").unwrap(), None);
    assert!(!store.db().contains(id));
    assert_eq!(store.get("other").unwrap(), Some(b"w".to_vec()));
    assert_eq!(store.list("", None, 10), vec!["other".to_string()]);
}
