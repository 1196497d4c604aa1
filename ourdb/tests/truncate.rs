//! `truncate_to`: a store cut back to an earlier record boundary is the store
//! that only ever received the records before it (keys, values, histories,
//! ids, the next id and the files, byte for byte), shipping the cut records
//! again makes it the master's twin, and a crash at any point of a cut
//! reopens to the old state or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ourdb::keyed::KeyedStore;
use ourdb::storage::faults::FaultyStorage;
use ourdb::{Config, Error, Location, OpenOptions, OurDb, SyncPolicy};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn value(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag as u8) ^ (i as u8).wrapping_mul(31))
        .collect()
}

/// Every file of a directory but the lock, by name.
fn all_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != ourdb::LOCK_FILE {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn data_files(dir: &Path) -> Vec<(u16, Vec<u8>)> {
    ourdb::files::list_data_files(dir)
        .unwrap()
        .into_iter()
        .map(|nr| (nr, std::fs::read(ourdb::files::data_path(dir, nr)).unwrap()))
        .collect()
}

// ---- the keyed store ----

#[derive(Clone, Debug)]
enum Op {
    Put(String, Vec<u8>),
    Del(String),
}

/// Puts, overwrites, deletes and keys created again after a delete.
fn keyed_ops(seed: u64, n: usize) -> Vec<Op> {
    let mut r = Rng(seed);
    let mut live: Vec<String> = Vec::new();
    let mut ops = Vec::new();
    for i in 0..n {
        let pick = r.below(10);
        if pick < 3 && !live.is_empty() {
            let k = live.remove(r.below(live.len() as u64) as usize);
            ops.push(Op::Del(k));
        } else {
            let k = format!("k{}", r.below(12));
            let len = [0, 5, 40, 120][r.below(4) as usize];
            if !live.contains(&k) {
                live.push(k.clone());
            }
            ops.push(Op::Put(k, value(i as u64, len)));
        }
    }
    ops
}

fn keyed_config(file_size: u32) -> Config {
    Config {
        record_nr_max: 10_000,
        record_size_max: 2048,
        file_size,
        ..Config::default()
    }
}

fn open_keyed(dir: &Path, file_size: u32) -> KeyedStore {
    KeyedStore::open(
        dir,
        OpenOptions::new()
            .config(keyed_config(file_size))
            .sync(SyncPolicy::Flush),
    )
    .unwrap()
}

fn apply(s: &KeyedStore, op: &Op) {
    match op {
        Op::Put(k, v) => {
            s.put(k, v).unwrap();
        }
        Op::Del(k) => assert!(s.delete(k).unwrap(), "{k} is live"),
    }
}

/// Everything a keyed store answers: keys, values, versions, histories,
/// the lookup, the next id.
fn keyed_view(s: &KeyedStore) -> String {
    let mut out = String::new();
    for k in s.list("", None, usize::MAX) {
        let (v, at) = s.get_versioned(&k).unwrap().expect("listed");
        let h = s.history(&k, 1000).unwrap();
        out += &format!("{k} id={:?} at={at} v={v:?} history={h:?}\n", s.id_of(&k));
    }
    for id in s.db().ids() {
        out += &format!("id {id} at {:?}\n", s.db().raw_location(id));
    }
    out += &format!("next {}\nend {}\n", s.db().next_id().unwrap(), s.db().end());
    out
}

/// Ships the master's records from `from` on.
fn ship(master: &KeyedStore, replica: &KeyedStore, from: Location) {
    let mut cursor = from;
    loop {
        let seg = master.db().read_records(cursor, 700).unwrap();
        if seg.bytes.is_empty() {
            return;
        }
        cursor = replica.apply_shipped(seg.start, &seg.bytes).unwrap();
    }
}

/// For every record boundary of `ops`: a replica with all of them, cut
/// there, equals a store that only got the prefix; shipping the rest again
/// makes it the master's twin; both survive a reopen.
fn keyed_case(file_size: u32, ops: &[Op]) {
    let mdir = tempfile::tempdir().unwrap();
    let master = open_keyed(mdir.path(), file_size);
    let mut bounds = vec![master.db().end()];
    for op in ops {
        apply(&master, op);
        bounds.push(master.db().end());
    }
    assert!(
        master.db().end().file_nr >= 2 || file_size > 1 << 20,
        "small files should switch files"
    );
    let master_view = keyed_view(&master);
    for (cut, &to) in bounds.iter().enumerate() {
        let fdir = tempfile::tempdir().unwrap();
        let full = open_keyed(fdir.path(), file_size);
        ship(&master, &full, Location::new(0, 1));
        assert_eq!(data_files(fdir.path()), data_files(mdir.path()));
        let t = full.truncate_to(to).unwrap();
        assert_eq!((t.end, full.db().end()), (to, to), "cut {cut}");
        let pdir = tempfile::tempdir().unwrap();
        let prefix = open_keyed(pdir.path(), file_size);
        for op in &ops[..cut] {
            apply(&prefix, op);
        }
        assert_eq!(keyed_view(&full), keyed_view(&prefix), "cut {cut} at {to}");
        assert_eq!(
            data_files(fdir.path()),
            data_files(pdir.path()),
            "cut {cut}"
        );
        assert_eq!(
            t.records as usize,
            ops[cut..].iter().map(records_of).sum::<usize>()
        );
        // Reopened, both are the same directory, file for file.
        full.close().unwrap();
        prefix.close().unwrap();
        assert_eq!(all_files(fdir.path()), all_files(pdir.path()), "cut {cut}");
        let full = open_keyed(fdir.path(), file_size);
        let prefix = open_keyed(pdir.path(), file_size);
        assert_eq!(
            keyed_view(&full),
            keyed_view(&prefix),
            "reopened, cut {cut}"
        );
        // The same records shipped again: the master's twin.
        ship(&master, &full, to);
        assert_eq!(
            data_files(fdir.path()),
            data_files(mdir.path()),
            "cut {cut}"
        );
        assert_eq!(keyed_view(&full), master_view, "cut {cut}, shipped again");
    }
}

fn records_of(op: &Op) -> usize {
    match op {
        Op::Put(..) | Op::Del(_) => 1,
    }
}

#[test]
fn keyed_cut_at_every_boundary_one_file() {
    keyed_case(1 << 30, &keyed_ops(1, 60));
}

#[test]
fn keyed_cut_at_every_boundary_across_file_switches() {
    keyed_case(300, &keyed_ops(2, 70));
}

/// Hand-made: a delete after the cut brings the key back with its old
/// value and history; a key created after it goes; a key deleted and
/// created again (under a new id) returns to its old id.
#[test]
fn keyed_deletes_and_recreations_are_undone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_keyed(dir.path(), 1 << 20);
    s.put("a", b"a1").unwrap();
    s.put("a", b"a2").unwrap();
    s.put("b", b"b1").unwrap();
    let ida = s.id_of("a").unwrap();
    let to = s.db().end();
    let next = s.db().next_id().unwrap();
    assert!(s.delete("a").unwrap());
    s.put("a", b"a3").unwrap();
    assert_ne!(s.id_of("a"), Some(ida));
    s.put("c", b"c1").unwrap();
    s.put("b", b"b2").unwrap();
    assert!(s.delete("b").unwrap());
    let t = s.truncate_to(to).unwrap();
    assert_eq!(t.records, 5);
    assert_eq!(s.id_of("a"), Some(ida));
    assert_eq!(
        s.history("a", 9).unwrap(),
        vec![b"a2".to_vec(), b"a1".to_vec()]
    );
    assert_eq!(s.get("b").unwrap(), Some(b"b1".to_vec()));
    assert_eq!(s.get("c").unwrap(), None);
    assert_eq!(s.list("", None, 10), vec!["a", "b"]);
    assert_eq!(s.db().next_id().unwrap(), next);
    // New writes go on from the cut, with the ids the prefix would hand out.
    s.put("d", b"d1").unwrap();
    assert_eq!(s.id_of("d"), Some(next));
}

/// The start of the file after a cut file is the same place in the log:
/// the cut keeps that file's leading byte, and shipping continues there.
#[test]
fn keyed_cut_at_the_start_of_a_file() {
    let ops = keyed_ops(3, 40);
    let mdir = tempfile::tempdir().unwrap();
    let master = open_keyed(mdir.path(), 200);
    let mut switch = None;
    for op in &ops {
        let before = master.db().end();
        apply(&master, op);
        if switch.is_none() && master.db().end().file_nr > before.file_nr {
            switch = Some(Location::new(master.db().end().file_nr, 1));
        }
    }
    let to = switch.expect("a file switch");
    let rdir = tempfile::tempdir().unwrap();
    let replica = open_keyed(rdir.path(), 200);
    ship(&master, &replica, Location::new(0, 1));
    replica.truncate_to(to).unwrap();
    assert_eq!(replica.db().end(), to);
    assert_eq!(
        std::fs::read(ourdb::files::data_path(rdir.path(), to.file_nr)).unwrap(),
        vec![0]
    );
    assert!(!ourdb::files::data_path(rdir.path(), to.file_nr + 1).exists());
    ship(&master, &replica, to);
    assert_eq!(data_files(rdir.path()), data_files(mdir.path()));
    assert_eq!(keyed_view(&replica), keyed_view(&master));
}

/// Once `truncate_to` returns, the journal no longer says the data ends at
/// the cut (version 1 again): writes made after it survive a crash and are
/// not cut by the next open.
#[test]
fn writes_after_a_cut_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_keyed(dir.path(), 200);
    for op in keyed_ops(12, 30) {
        apply(&s, &op);
    }
    let to = Location::new(1, 1);
    s.truncate_to(to).unwrap();
    let wal = std::fs::read(dir.path().join(ourdb::files::WAL_FILE)).unwrap();
    assert_eq!(u32::from_le_bytes(wal[8..12].try_into().unwrap()), 1);
    s.put("after", b"the cut").unwrap();
    s.db().sync().unwrap();
    let end = s.db().end();
    let view = keyed_view(&s);
    s.into_db().abandon();
    let s = open_keyed(dir.path(), 200);
    assert_eq!(s.db().open_report().finished_truncation, None);
    assert_eq!(s.db().end(), end);
    assert_eq!(keyed_view(&s), view);
}

/// Under group commit the durable end follows the cut.
#[test]
fn keyed_cut_under_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = KeyedStore::open(
        dir.path(),
        OpenOptions::new()
            .config(keyed_config(1 << 20))
            .sync(SyncPolicy::Group),
    )
    .unwrap();
    s.put("a", b"1").unwrap();
    let to = s.db().end();
    s.put("b", b"2").unwrap();
    assert!(s.db().durable_end() > to);
    s.truncate_to(to).unwrap();
    assert_eq!(s.db().durable_end(), to);
    s.put("c", b"3").unwrap();
    assert_eq!(s.db().durable_end(), s.db().end());
}

// ---- the plain db ----

#[derive(Clone, Debug)]
enum PlainOp {
    Insert(Vec<u8>),
    Set(u32, Vec<u8>),
    Del(u32),
}

fn plain_config(incremental: bool, file_size: u32) -> Config {
    Config {
        record_nr_max: 1000,
        record_size_max: 2048,
        file_size,
        incremental,
        keysize: Some(6),
    }
}

fn open_plain(dir: &Path, config: &Config) -> OurDb {
    OpenOptions::new()
        .config(config.clone())
        .sync(SyncPolicy::Flush)
        .open(dir)
        .unwrap()
}

fn plain_ops(seed: u64, n: usize, incremental: bool, deletes: bool) -> Vec<PlainOp> {
    let mut r = Rng(seed);
    let mut live: Vec<u32> = Vec::new();
    let mut next = 1;
    let mut ops = Vec::new();
    for i in 0..n {
        let v = value(i as u64, [0, 7, 90][r.below(3) as usize]);
        let pick = r.below(10);
        if deletes && pick < 2 && !live.is_empty() {
            ops.push(PlainOp::Del(
                live.remove(r.below(live.len() as u64) as usize),
            ));
        } else if pick < 6 && !live.is_empty() {
            ops.push(PlainOp::Set(live[r.below(live.len() as u64) as usize], v));
        } else if incremental {
            live.push(next);
            next += 1;
            ops.push(PlainOp::Insert(v));
        } else {
            let id = r.below(40) as u32;
            if !live.contains(&id) {
                live.push(id);
            }
            ops.push(PlainOp::Set(id, v));
        }
    }
    ops
}

fn apply_plain(db: &OurDb, op: &PlainOp) {
    match op {
        PlainOp::Insert(v) => {
            db.insert(v).unwrap();
        }
        PlainOp::Set(id, v) => {
            db.set(Some(*id), v).unwrap();
        }
        PlainOp::Del(id) => db.delete(*id).unwrap(),
    }
}

fn plain_view(db: &OurDb) -> String {
    let mut out = String::new();
    for id in db.ids() {
        out += &format!(
            "{id} at {:?} history {:?}\n",
            db.raw_location(id),
            db.get_history(id, 1000).unwrap()
        );
    }
    out + &format!("end {}\n", db.end())
}

/// For every record boundary: the db cut there equals the prefix, plus the
/// deletes made after it (a plain delete writes no record, so it is not
/// undone); and the files are the prefix's, byte for byte.
fn plain_case(incremental: bool, file_size: u32, ops: &[PlainOp]) {
    let config = plain_config(incremental, file_size);
    let sdir = tempfile::tempdir().unwrap();
    let src = open_plain(sdir.path(), &config);
    let mut bounds = vec![src.end()];
    for op in ops {
        apply_plain(&src, op);
        bounds.push(src.end());
    }
    for (cut, &to) in bounds.iter().enumerate() {
        if cut > 0 && bounds[cut - 1] == to {
            continue; // a delete: no record, no boundary of its own
        }
        let fdir = tempfile::tempdir().unwrap();
        let full = open_plain(fdir.path(), &config);
        ops.iter().for_each(|op| apply_plain(&full, op));
        full.truncate_to(to).unwrap();
        let pdir = tempfile::tempdir().unwrap();
        let prefix = open_plain(pdir.path(), &config);
        ops[..cut].iter().for_each(|op| apply_plain(&prefix, op));
        let mut tail_created = Vec::new();
        let mut tail_deleted_created = false;
        let mut next = if incremental {
            prefix.next_id().unwrap()
        } else {
            0
        };
        for op in &ops[cut..] {
            match op {
                PlainOp::Del(id) => {
                    tail_deleted_created |= tail_created.contains(id);
                    if prefix.contains(*id) {
                        prefix.delete(*id).unwrap();
                    }
                }
                PlainOp::Insert(_) => {
                    tail_created.push(next);
                    next += 1;
                }
                PlainOp::Set(..) => {}
            }
        }
        assert_eq!(plain_view(&full), plain_view(&prefix), "cut {cut} at {to}");
        assert_eq!(
            data_files(fdir.path()),
            data_files(pdir.path()),
            "cut {cut}"
        );
        if incremental {
            let (f, p) = (full.next_id().unwrap(), prefix.next_id().unwrap());
            if tail_deleted_created {
                // The id deleted leaves no chain to find it by: the next
                // id stays past it, never lower than the prefix's.
                assert!(f >= p, "cut {cut}: next id {f} < {p}");
            } else {
                assert_eq!(f, p, "cut {cut}");
            }
        }
        full.close().unwrap();
        prefix.close().unwrap();
        if !incremental || !tail_deleted_created {
            assert_eq!(all_files(fdir.path()), all_files(pdir.path()), "cut {cut}");
        }
        let full = open_plain(fdir.path(), &config);
        let prefix = open_plain(pdir.path(), &config);
        assert_eq!(
            plain_view(&full),
            plain_view(&prefix),
            "reopened, cut {cut}"
        );
    }
}

#[test]
fn plain_incremental_cut_at_every_boundary() {
    plain_case(true, 1 << 20, &plain_ops(4, 50, true, false));
    plain_case(true, 250, &plain_ops(5, 60, true, false));
}

#[test]
fn plain_incremental_with_deletes() {
    plain_case(true, 250, &plain_ops(6, 60, true, true));
}

#[test]
fn plain_key_value_cut_at_every_boundary() {
    plain_case(false, 1 << 20, &plain_ops(7, 50, false, true));
    plain_case(false, 250, &plain_ops(8, 60, false, true));
}

// ---- refusals ----

#[test]
fn bad_places_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_keyed(dir.path(), 1 << 20);
    s.put("a", b"0123456789").unwrap();
    let mid = s.db().end();
    s.put("b", b"xyz").unwrap();
    s.db().sync().unwrap();
    let end = s.db().end();
    let before = (all_files(dir.path()), keyed_view(&s));
    let past = Location::new(end.file_nr, end.position + 1);
    assert!(matches!(
        s.truncate_to(past),
        Err(Error::TruncatePastEnd { to, end: e }) if to == past && e == end
    ));
    assert!(matches!(
        s.truncate_to(Location::new(3, 1)),
        Err(Error::TruncatePastEnd { .. })
    ));
    for inside in [
        Location::new(0, mid.position - 1),
        Location::new(0, 5),
        Location::NONE,
    ] {
        match s.truncate_to(inside) {
            Err(Error::BadCursor { cursor, .. }) => assert_eq!(cursor, inside),
            other => panic!("{inside}: {other:?}"),
        }
    }
    // The end (or the start of the next file) is no cut at all.
    for same in [end, Location::new(end.file_nr + 1, 1)] {
        let t = s.truncate_to(same).unwrap();
        assert_eq!((t.records, t.bytes, t.end), (0, 0, end));
    }
    assert_eq!((all_files(dir.path()), keyed_view(&s)), before);
    // The handle still works.
    s.truncate_to(mid).unwrap();
    assert_eq!(s.list("", None, 9), vec!["a"]);
}

#[test]
fn a_failed_or_read_only_handle_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new(9);
    let s = KeyedStore::open(
        dir.path(),
        OpenOptions::new()
            .config(keyed_config(1 << 20))
            .sync(SyncPolicy::Always)
            .storage(Arc::new(storage.clone())),
    )
    .unwrap();
    s.put("a", b"1").unwrap();
    let to = s.db().end();
    s.put("b", b"2").unwrap();
    storage.fail_op(1);
    assert!(s.put("c", b"3").is_err());
    assert!(matches!(s.truncate_to(to), Err(Error::Poisoned)));
    assert!(matches!(s.db().truncate_to(to), Err(Error::Poisoned)));
    drop(s);
    let ro = OpenOptions::new()
        .read_only(true)
        .record_ids(Arc::new(ourdb::keyed::EnvelopeIds))
        .open(dir.path())
        .unwrap();
    assert!(matches!(ro.truncate_to(to), Err(Error::ReadOnly)));
}

// ---- crashes ----

/// What a reopened store holds: its keys and values, and where it ends.
fn keyed_state(s: &KeyedStore) -> (BTreeMap<String, Vec<u8>>, Location) {
    let map = s
        .list("", None, usize::MAX)
        .into_iter()
        .map(|k| {
            let v = s.get(&k).unwrap().expect("listed");
            (k, v)
        })
        .collect();
    (map, s.db().end())
}

/// A fault at every mutating call of a cut, then a power loss: the reopened
/// store is the old one or the cut one, never a mix, and its files are the
/// old or the prefix's byte for byte. Several seeds vary what the power
/// loss keeps. An open of a directory whose cut was under way finishes it
/// (and a read-only open refuses it).
#[test]
fn a_crash_during_a_cut_leaves_the_old_or_the_new_store() {
    let ops = keyed_ops(11, 40);
    let file_size = 300;
    let build = |dir: &Path, ops: &[Op], storage: Option<&FaultyStorage>| -> KeyedStore {
        let mut opts = OpenOptions::new()
            .config(keyed_config(file_size))
            .sync(SyncPolicy::Always)
            .checkpoint_bytes(700);
        if let Some(st) = storage {
            opts = opts.storage(Arc::new(st.clone()));
        }
        let s = KeyedStore::open(dir, opts).unwrap();
        ops.iter().for_each(|op| apply(&s, op));
        s
    };
    let mut finished = 0;
    let mut read_only_refused = 0;
    let (mut old_seen, mut new_seen) = (0, 0);
    for cut in [3usize, 17, 29] {
        // The expected states, from stores without faults.
        let odir = tempfile::tempdir().unwrap();
        let old = build(odir.path(), &ops, None);
        let pdir = tempfile::tempdir().unwrap();
        let new = build(pdir.path(), &ops[..cut], None);
        let to = new.db().end();
        let (old_state, new_state) = (keyed_state(&old), keyed_state(&new));
        let (old_files, new_files) = (data_files(odir.path()), data_files(pdir.path()));
        assert_ne!(old_state, new_state);
        // Count the cut's mutating calls once.
        let calls = {
            let dir = tempfile::tempdir().unwrap();
            let st = FaultyStorage::new(1);
            let s = build(dir.path(), &ops, Some(&st));
            let before = st.ops();
            s.truncate_to(to).unwrap();
            st.ops() - before
        };
        assert!(calls > 5, "{calls} calls");
        eprintln!("cut {cut}: {calls} mutating calls");
        for n in 1..=calls + 1 {
            for seed in 0..4u64 {
                let dir = tempfile::tempdir().unwrap();
                let st = FaultyStorage::new(seed * 1000 + n);
                let s = build(dir.path(), &ops, Some(&st));
                st.fail_op(n);
                let r = s.truncate_to(to);
                assert_eq!(r.is_err(), n <= calls, "call {n} of {calls}");
                st.power_off();
                s.into_db().abandon();
                st.crash().unwrap();
                let ro = OpenOptions::new()
                    .read_only(true)
                    .record_ids(Arc::new(ourdb::keyed::EnvelopeIds));
                match ro.open(dir.path()) {
                    Err(Error::TruncateUnfinished(_)) => read_only_refused += 1,
                    Err(e) => panic!("read-only open: {e}"),
                    Ok(db) => drop(db),
                }
                let s = KeyedStore::open(
                    dir.path(),
                    OpenOptions::new().config(keyed_config(file_size)),
                )
                .unwrap_or_else(|e| panic!("cut {cut}, call {n}, seed {seed}: reopen: {e}"));
                finished += usize::from(s.db().open_report().finished_truncation.is_some());
                let got = keyed_state(&s);
                let files = data_files(dir.path());
                if got == new_state {
                    assert_eq!(files, new_files, "cut {cut}, call {n}, seed {seed}");
                    new_seen += 1;
                } else {
                    assert_eq!(got, old_state, "cut {cut}, call {n}, seed {seed}: a mix");
                    assert_eq!(files, old_files, "cut {cut}, call {n}, seed {seed}");
                    assert!(r.is_err(), "a cut that returned was undone");
                    old_seen += 1;
                }
            }
        }
    }
    eprintln!(
        "reopened {} times: old {old_seen}, new {new_seen}; {finished} opens finished a cut, \
         {read_only_refused} read-only opens refused one",
        old_seen + new_seen
    );
    assert!(
        old_seen > 0 && new_seen > 0,
        "old {old_seen}, new {new_seen}"
    );
    assert!(finished > 0, "no open finished a cut");
    assert!(
        read_only_refused > 0,
        "no read-only open met an unfinished cut"
    );
}

// ---- a V directory ----

/// V directories cut back in a copy: the data files are V's up to the cut,
/// the lookup dump (and `.inc`) hold what V holds at that point, read with
/// an independent decoder of the fixtures README's layout (every CRC and
/// previous pointer followed), and the copy reopens to the same.
/// `c_incr_ks6_multifile` (24 inserts over 9 files, then updates) is cut
/// inside a middle file (later files go) and among the updates (histories
/// go back); `b_incr_ks3` (keysize 3) among its updates; `d_kv_ks6_sparse`
/// (key-value mode; V's delete zeroes records in place, then ids are set
/// again) before the record its first delete zeroed, after it, and between
/// a delete and the set again. A plain delete is no record: ids deleted
/// after the cut stay deleted.
#[test]
fn a_v_directory_cut_back_stays_a_v_directory() {
    v_case("c_incr_ks6_multifile", &[14, 29]);
    v_case("b_incr_ks3", &[2, 21, 23]);
    v_case("d_kv_ks6_sparse", &[4, 12, 14]);
}

enum VOp {
    Set(u32, Vec<u8>),
    Delete(u32),
}

fn v_case(name: &str, keeps: &[usize]) {
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v-ourdb")
        .join(name);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("manifest.json")).unwrap()).unwrap();
    let c = &manifest["config"];
    let config = Config {
        record_nr_max: c["record_nr_max"].as_u64().unwrap() as u32,
        record_size_max: c["record_size_max"].as_u64().unwrap() as u32,
        file_size: c["file_size"].as_u64().unwrap() as u32,
        incremental: c["incremental_mode"].as_bool().unwrap(),
        keysize: None,
    };
    let keysize = config.keysize().unwrap() as usize;
    // The mutations V took, in order.
    let mut ops = Vec::new();
    for op in manifest["operations"].as_array().unwrap() {
        if op["result"]["ok"] != true {
            continue;
        }
        if op["op"] == "set" {
            use base64::Engine;
            let id = op["result"]["id"].as_u64().unwrap() as u32;
            let v = base64::engine::general_purpose::STANDARD
                .decode(op["data_b64"].as_str().unwrap())
                .unwrap();
            ops.push(VOp::Set(id, v));
        } else if op["op"] == "delete" {
            ops.push(VOp::Delete(op["id"].as_u64().unwrap() as u32));
        }
    }
    // Where each set's record starts, by V's rule: appended in order, the
    // next file once the current one holds `file_size` bytes.
    let mut starts = Vec::new();
    let (mut file, mut pos) = (0u16, 1u64);
    for op in &ops {
        if let VOp::Set(_, v) = op {
            if pos >= config.file_size as u64 {
                (file, pos) = (file + 1, 1);
            }
            starts.push(Location::new(file, pos as u32));
            pos += 12 + v.len() as u64;
        }
    }
    let original = data_files(&case.join("db"));
    assert_eq!(
        (
            original.last().unwrap().0,
            original.last().unwrap().1.len() as u64
        ),
        (file, pos),
        "{name}: where V's rule says the data ends"
    );
    for &keep in keeps {
        let what = format!("{name}, keep {keep}");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        copy_tree(&case.join("db"), &dir);
        let to = starts[keep];
        if name.starts_with('c') && keep == 14 {
            assert!(to.file_nr > 0 && to.file_nr + 2 < original.last().unwrap().0);
        }
        // What a cut before set number `keep` leaves: every id as it was
        // then, less the ids deleted after it.
        let mut expect: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        let mut sets = 0;
        let mut deletes = false;
        for op in &ops {
            match op {
                VOp::Set(id, v) if sets < keep => {
                    expect.entry(*id).or_default().insert(0, v.clone());
                    sets += 1;
                }
                VOp::Set(..) => sets += 1,
                VOp::Delete(id) => {
                    expect.remove(id);
                    deletes |= sets >= keep;
                }
            }
        }
        let next = ops
            .iter()
            .filter_map(|op| match op {
                VOp::Set(id, _) => Some(*id),
                VOp::Delete(_) => None,
            })
            .take(keep)
            .max()
            .unwrap()
            + 1;
        let db = OurDb::open(&dir, config.clone()).unwrap();
        let t = db.truncate_to(to).unwrap();
        assert_eq!(t.end, to, "{what}");
        if !deletes {
            assert_eq!(t.records as usize, starts.len() - keep, "{what}");
        }
        db.close().unwrap();
        let after = data_files(&dir);
        assert_eq!(after.last().unwrap().0, to.file_nr, "{what}");
        for (nr, bytes) in &after {
            let orig = &original[*nr as usize].1;
            let want = if *nr == to.file_nr {
                &orig[..to.position as usize]
            } else {
                &orig[..]
            };
            assert_eq!(bytes, want, "{what}: {nr}.db");
        }
        let inc = std::fs::read_to_string(dir.join("lookup_dump.db/.inc"));
        if config.incremental {
            assert_eq!(inc.unwrap().trim().parse::<u32>().unwrap(), next, "{what}");
        } else {
            assert!(
                inc.is_err(),
                "{what}: V writes .inc only in incremental mode"
            );
        }
        let dump = std::fs::read(dir.join("lookup_dump.db/data")).unwrap();
        let width = 4 + keysize;
        assert_eq!(dump.len() % width, 0, "{what}");
        let mut got: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for e in dump.chunks(width) {
            let id = u32::from_le_bytes(e[..4].try_into().unwrap());
            // A lookup entry: big-endian, with the file number only at keysize 6.
            let (mut file, mut pos) = if keysize == 6 {
                let file = u16::from_be_bytes([e[4], e[5]]);
                (
                    file,
                    u32::from_be_bytes(e[6..10].try_into().unwrap()) as usize,
                )
            } else {
                (0, e[4..].iter().fold(0usize, |a, &b| a << 8 | b as usize))
            };
            loop {
                let bytes = &after[file as usize].1;
                let len = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) as usize;
                let crc = u32::from_le_bytes(bytes[pos + 2..pos + 6].try_into().unwrap());
                let value = &bytes[pos + 12..pos + 12 + len];
                assert_eq!(crc32(value), crc, "{what}: id {id} at {file}.db:{pos}");
                got.entry(id).or_default().push(value.to_vec());
                // The previous pointer: always 6 bytes.
                file = u16::from_be_bytes([bytes[pos + 6], bytes[pos + 7]]);
                pos = u32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
                if file == 0 && pos == 0 {
                    break;
                }
            }
        }
        assert_eq!(got, expect, "{what}");
        let db = OurDb::open(&dir, config.clone()).unwrap();
        for (id, versions) in &expect {
            assert_eq!(&db.get_history(*id, 100).unwrap(), versions, "{what}");
        }
        assert_eq!(db.ids().count(), expect.len(), "{what}");
        if config.incremental {
            assert_eq!(db.next_id().unwrap(), next, "{what}");
        }
    }
}

fn crc32(b: &[u8]) -> u32 {
    // CRC-32 (IEEE), bit by bit: independent of the engine's crate.
    let mut crc = !0u32;
    for &x in b {
        crc ^= x as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
            let mut perm = std::fs::metadata(&dst).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&dst, perm).unwrap();
        }
    }
}
