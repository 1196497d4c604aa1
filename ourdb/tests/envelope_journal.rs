//! A keyed store's journal is not synced by group commit (only its data
//! files are): a power cut can take any unsynced tail of the journal while
//! the data stays. Open must redo those records from their envelopes, and
//! nothing a commit acknowledged may be lost, over many such cuts in a row,
//! across file switches and checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use ourdb::keyed::{Expect, KeyedStore};
use ourdb::{Config, OpenOptions, SyncPolicy};
use proptest::prelude::*;

fn open(dir: &Path) -> KeyedStore {
    let opts = OpenOptions::new()
        .config(Config {
            record_nr_max: 1000,
            record_size_max: 600,
            // Small files and checkpoints: switches and checkpoints happen.
            file_size: 4096,
            ..Config::default()
        })
        .sync(SyncPolicy::Group)
        .checkpoint_bytes(16 << 10);
    KeyedStore::open(dir, opts).unwrap()
}

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(ourdb::files::WAL_FILE))
        .unwrap()
        .len()
}

/// What a power cut leaves of a journal whose tail was never synced.
fn cut_wal(dir: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(ourdb::files::WAL_FILE))
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..40, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..40).prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn committed_writes_survive_losing_the_journal_tail(
        rounds in prop::collection::vec(
            (prop::collection::vec(op(), 1..40), 0.0f64..=1.0),
            1..8,
        )
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut ids: BTreeMap<String, u32> = BTreeMap::new();
        let mut store = open(dir);
        for (ops, cut) in rounds {
            // What open left is durable (it syncs what it truncated or redid).
            let durable = wal_len(dir);
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        let key = format!("key-{k}");
                        let (_, p) = store.put_if_pending(&key, &v, Expect::Any).unwrap().unwrap();
                        prop_assert!(store.db().commit(|_| ()).unwrap() >= p.seq());
                        let id = store.id_of(&key).unwrap();
                        if let Some(old) = ids.insert(key.clone(), id) {
                            prop_assert_eq!(old, id, "a key keeps its id");
                        }
                        model.insert(key, v);
                    }
                    Op::Delete(k) => {
                        let key = format!("key-{k}");
                        let existed = store.delete_if(&key, Expect::Any).unwrap().unwrap();
                        prop_assert_eq!(existed, model.remove(&key).is_some());
                        ids.remove(&key);
                    }
                }
            }
            // Power cut: the handle goes, and the journal keeps only part of
            // what was written to it since it was last synced.
            store.into_db().abandon();
            let now = wal_len(dir);
            // A checkpoint in the round started a new journal: all of it counts.
            let floor = if now < durable { 32 } else { durable };
            let keep = floor + ((now - floor) as f64 * cut) as u64;
            cut_wal(dir, keep);
            store = open(dir);
            prop_assert_eq!(store.len(), model.len());
            for (k, v) in &model {
                let got = store.get(k).unwrap();
                prop_assert_eq!(got.as_ref(), Some(v), "{}", k);
                prop_assert_eq!(store.id_of(k), ids.get(k).copied());
            }
            // New keys get ids never used before.
            let fresh = store.put("fresh-probe", b"x").unwrap();
            prop_assert!(ids.values().all(|&i| i < fresh));
            prop_assert!(store.delete("fresh-probe").unwrap());
        }
        store.close().unwrap();
        let report = ourdb::tools::verify(dir, None).unwrap();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
        prop_assert_eq!(report.live_ids as usize, model.len());
    }
}

/// Open reports how many records it redid from envelopes, and journals
/// them, so that a later cut never makes it redo (or lose) them again.
#[test]
fn redo_from_envelopes_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = open(dir);
    let durable = wal_len(dir);
    for i in 0..50u32 {
        store.put(&format!("k{i}"), &i.to_le_bytes()).unwrap();
    }
    store.into_db().abandon();
    cut_wal(dir, durable);
    // The db alone does not know the envelope format: a plain open refuses
    // rather than dropping the records, and leaves the directory as it was.
    let plain = OpenOptions::new().read_only(true).create(false).open(dir);
    assert!(
        matches!(&plain, Err(ourdb::Error::Config(m)) if m.contains("keyed store")),
        "{:?}",
        plain.err()
    );
    assert_eq!(wal_len(dir), durable);
    let store = open(dir);
    assert_eq!(store.db().open_report().redone_from_envelopes, 50);
    for i in 0..50u32 {
        assert_eq!(
            store.get(&format!("k{i}")).unwrap().unwrap(),
            i.to_le_bytes()
        );
    }
    // The redone entries were journaled at open: a second cut of what came
    // after them loses nothing either, and nothing is redone twice.
    let durable = wal_len(dir);
    store.put("k50", b"x").unwrap();
    store.into_db().abandon();
    cut_wal(dir, durable);
    let store = open(dir);
    assert_eq!(store.db().open_report().redone_from_envelopes, 1);
    assert_eq!(store.len(), 51);
}

/// Under group commit the leader takes the checkpoints (not the write that
/// crossed the mark, which may run on an async thread), and `is_busy` is
/// clear once it is done.
#[test]
fn group_commit_leader_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = open(dir);
    let dump = dir
        .join(ourdb::files::DUMP_DIR)
        .join(ourdb::files::DUMP_DATA);
    assert!(!dump.exists());
    let value = vec![7u8; 500];
    for i in 0..100u32 {
        // 100 × ~520 bytes: past the 16 KiB checkpoint mark.
        let _ = store
            .put_if_pending(&format!("k{i}"), &value, Expect::Any)
            .unwrap();
    }
    assert!(!dump.exists(), "no write checkpoints under group commit");
    store.db().commit(|_| ()).unwrap();
    assert!(dump.exists(), "the leader checkpointed");
    assert!(!store.db().is_busy());
    store.into_db().abandon();
    let store = open(dir);
    assert_eq!(store.len(), 100);
}
