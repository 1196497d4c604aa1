//! Log shipping at the engine level: records read from a master's data files
//! and appended to a replica leave the replica byte-identical, with the same
//! keys, through replica restarts and crashes.

use std::path::Path;

use ourdb::keyed::KeyedStore;
use ourdb::{Config, Error, Location, OpenOptions, SyncPolicy};

fn store(dir: &Path) -> KeyedStore {
    let db = OpenOptions::new()
        .config(Config {
            record_nr_max: 100_000,
            record_size_max: 2048,
            file_size: 16 << 10, // many file switches
            ..Config::default()
        })
        .sync(SyncPolicy::Flush)
        .open(dir)
        .unwrap();
    KeyedStore::new(db).unwrap()
}

fn files_of(dir: &Path) -> Vec<(u16, Vec<u8>)> {
    ourdb::files::list_data_files(dir)
        .unwrap()
        .into_iter()
        .map(|nr| (nr, std::fs::read(ourdb::files::data_path(dir, nr)).unwrap()))
        .collect()
}

/// Ships everything from `cursor` until the replica has caught up.
fn catch_up(
    master: &KeyedStore,
    replica: &KeyedStore,
    mut cursor: Location,
    max: usize,
) -> Location {
    loop {
        let seg = master.db().read_records(cursor, max).unwrap();
        if seg.bytes.is_empty() {
            return seg.next;
        }
        cursor = replica.apply_shipped(seg.start, &seg.bytes).unwrap();
        assert_eq!(cursor, seg.next);
    }
}

fn write_some(master: &KeyedStore, round: u32) {
    for i in 0..300u32 {
        let key = format!("k{}", (i * 7 + round * 13) % 97);
        if i % 11 == 5 {
            master.delete(&key).unwrap();
        } else {
            let v = format!("{round}-{i}-").repeat(1 + (i as usize % 40));
            master.put(&key, v.as_bytes()).unwrap();
        }
    }
}

#[test]
fn replica_becomes_byte_identical_across_restarts_and_crashes() {
    let mdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let master = store(mdir.path());
    let mut replica = store(rdir.path());
    for round in 0..6u32 {
        write_some(&master, round);
        // The replica resumes from its own end, as a reconnecting worker does.
        let cursor = replica.db().end();
        let end = catch_up(&master, &replica, cursor, 1500 + round as usize * 3000);
        assert_eq!(end, master.db().end());
        assert_eq!(
            files_of(rdir.path()),
            files_of(mdir.path()),
            "round {round}"
        );
        assert_eq!(
            replica.list("", None, usize::MAX),
            master.list("", None, usize::MAX)
        );
        for key in master.list("", None, usize::MAX) {
            assert_eq!(replica.get(&key).unwrap(), master.get(&key).unwrap());
            assert_eq!(
                replica.history(&key, 4).unwrap(),
                master.history(&key, 4).unwrap()
            );
        }
        replica = match round % 3 {
            0 => {
                replica.close().unwrap();
                store(rdir.path())
            }
            1 => {
                replica.into_db().abandon();
                store(rdir.path())
            }
            _ => replica,
        };
    }
    assert!(files_of(mdir.path()).len() > 3);
}

#[test]
fn a_replica_that_diverged_is_told_so() {
    let mdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let master = store(mdir.path());
    let replica = store(rdir.path());
    write_some(&master, 0);
    catch_up(&master, &replica, Location::new(0, 1), 4096);
    // A write of its own puts the replica off the master's log.
    replica.put("local", b"x").unwrap();
    write_some(&master, 1);
    let seg = master.db().read_records(replica.db().end(), 4096);
    match seg {
        // Its end is no record boundary of the master, or the records do not fit.
        Err(Error::BadCursor { .. }) => {}
        Ok(seg) => assert!(matches!(
            replica.apply_shipped(seg.start, &seg.bytes),
            Err(Error::Diverged { .. })
        )),
        Err(e) => panic!("{e}"),
    }
    // A cursor inside a record is refused.
    let bad = Location::new(0, 5);
    assert!(matches!(
        master.db().read_records(bad, 4096),
        Err(Error::BadCursor { .. })
    ));
    // Shipped bytes that are not whole records are refused, and change nothing.
    let end = replica.db().end();
    assert!(replica.apply_shipped(end, &[1, 2, 3]).is_err());
    assert_eq!(replica.db().end(), end);
}

/// Shipping while the master keeps writing into its in-process buffer
/// (policy never): segments only hold records already handed to the OS, and
/// never fail on records still being buffered.
#[test]
fn shipping_while_writes_are_buffered() {
    let mdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let open = |dir: &Path, sync| {
        let db = OpenOptions::new()
            .config(Config {
                record_nr_max: 1_000_000,
                record_size_max: 2048,
                ..Config::default()
            })
            .sync(sync)
            .open(dir)
            .unwrap();
        KeyedStore::new(db).unwrap()
    };
    let master = std::sync::Arc::new(open(mdir.path(), SyncPolicy::Never));
    let replica = open(rdir.path(), SyncPolicy::Never);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (master, done) = (master.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..40_000u32 {
                master
                    .put(
                        &format!("k{}", i % 5000),
                        &vec![i as u8; 1 + (i as usize % 300)],
                    )
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut cursor = Location::new(0, 1);
    let mut segments = 0;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        let seg = master.db().read_records(cursor, 4096).unwrap();
        if !seg.bytes.is_empty() {
            segments += 1;
            cursor = replica.apply_shipped(seg.start, &seg.bytes).unwrap();
        } else if finished && cursor == master.db().end() {
            break;
        }
    }
    writer.join().unwrap();
    assert!(segments > 10);
    replica.db().flush().unwrap();
    master.db().flush().unwrap();
    assert_eq!(files_of(rdir.path()), files_of(mdir.path()));
    assert_eq!(replica.len(), master.len());
}

/// Group commit led by a syncer (`OurDb::commit`): pending writes are not
/// written out until a commit; the commit's callback sees the whole group
/// readable for shipping before its fsync, and the sequence number it
/// returns covers every write made before it. Committed writes survive a
/// handle dropped without close.
#[test]
fn commit_ships_each_group_before_its_fsync() {
    let m = tempfile::tempdir().unwrap();
    let open = || {
        let db = OpenOptions::new()
            .sync(SyncPolicy::Group)
            .open(m.path())
            .unwrap();
        KeyedStore::new(db).unwrap()
    };
    let master = open();
    let mut cursor = Location::new(0, 1);
    let mut last = None;
    for round in 0..5u32 {
        let mut pendings = Vec::new();
        for i in 0..20u32 {
            let key = format!("k{}", (round * 20 + i) % 30);
            let value = format!("{round}-{i}");
            let (_, p) = master
                .put_if_pending(&key, value.as_bytes(), ourdb::keyed::Expect::Any)
                .unwrap()
                .unwrap();
            pendings.push(p);
        }
        // Nothing of this group reached the file yet: the writer buffers it.
        let on_disk = std::fs::metadata(ourdb::files::data_path(m.path(), 0))
            .map(|md| md.len())
            .unwrap_or(0);
        assert!(on_disk <= cursor.position as u64, "round {round}");
        let mut shipped = None;
        let seq = master
            .db()
            .commit(|_| shipped = Some(master.db().read_records(cursor, 1 << 20).unwrap()))
            .unwrap();
        let seg = shipped.expect("the callback ran");
        assert_eq!(seg.next, master.db().end(), "the whole group is shippable");
        assert!(pendings.iter().all(|p| p.seq() <= seq));
        assert!(last.is_none_or(|l| l < seq));
        last = Some(seq);
        cursor = seg.next;
    }
    // The handle goes away without a checkpoint: what a crash leaves.
    master.into_db().abandon();
    let again = open();
    assert_eq!(again.db().end(), cursor);
    for i in 0..20u32 {
        let key = format!("k{}", (80 + i) % 30);
        assert_eq!(
            again.get(&key).unwrap().unwrap(),
            format!("4-{i}").as_bytes(),
            "{key}"
        );
    }
}
