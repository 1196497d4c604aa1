//! Many readers while one writer appends: every read sees a whole, correct
//! version, and reads open no files.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use ourdb::{Config, OpenOptions, OurDb, SyncPolicy};

/// Value of version `ver` of `id`: both are readable back from the bytes.
fn value(id: u32, ver: u32) -> Vec<u8> {
    let len = 8 + ((id as usize * 31 + ver as usize * 17) % 700);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&ver.to_le_bytes());
    v.resize(len, (id ^ ver) as u8);
    v
}

fn parse(v: &[u8]) -> (u32, u32) {
    (
        u32::from_le_bytes(v[0..4].try_into().unwrap()),
        u32::from_le_bytes(v[4..8].try_into().unwrap()),
    )
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn run(sync: SyncPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<OurDb> = Arc::new(
        OpenOptions::new()
            .config(Config {
                record_nr_max: 100_000,
                record_size_max: 4096,
                file_size: 256 << 10, // several file switches during the run
                ..Config::default()
            })
            .sync(sync)
            .open(dir.path())
            .unwrap(),
    );
    // Ids below `published` exist; `versions[id]` is at least the latest version.
    let published = Arc::new(AtomicU32::new(1));
    let reads = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fds_before = open_fds();
    const IDS: u32 = 3000;
    const UPDATES: u32 = 6000;
    std::thread::scope(|s| {
        {
            let db = db.clone();
            let published = published.clone();
            let done = done.clone();
            s.spawn(move || {
                for i in 1..=IDS {
                    let id = db.insert(&value(i, 0)).unwrap();
                    assert_eq!(id, i);
                    published.store(i + 1, Ordering::Release);
                }
                for k in 0..UPDATES {
                    let id = 1 + (k * 7919) % IDS;
                    let ver = 1 + k / IDS;
                    db.set(Some(id), &value(id, ver)).unwrap();
                }
                done.store(true, Ordering::Release);
            });
        }
        for t in 0..4u32 {
            let db = db.clone();
            let published = published.clone();
            let reads = reads.clone();
            let done = done.clone();
            s.spawn(move || {
                let mut x = 0x9E37_79B9u32.wrapping_mul(t + 1);
                while !done.load(Ordering::Acquire) || reads.load(Ordering::Relaxed) < 20_000 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let max = published.load(Ordering::Acquire);
                    if max <= 1 {
                        continue;
                    }
                    let id = 1 + x % (max - 1);
                    let v = db.get(id).unwrap();
                    let (got_id, ver) = parse(&v);
                    assert_eq!(got_id, id);
                    assert_eq!(v, value(id, ver), "torn or mixed value for id {id}");
                    let h = db.get_history(id, 3).unwrap();
                    assert!(!h.is_empty());
                    // Newest first, versions strictly descending.
                    let vers: Vec<u32> = h.iter().map(|v| parse(v).1).collect();
                    assert!(vers.windows(2).all(|w| w[0] > w[1]), "{vers:?}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert!(reads.load(Ordering::Relaxed) >= 20_000);
    // Reads go through maps and one descriptor per data file; nothing per call.
    let files = ourdb::files::list_data_files(dir.path()).unwrap().len();
    assert!(files >= 4, "expected several data files, got {files}");
    assert!(
        open_fds() <= fds_before + files + 2,
        "descriptors grew from {fds_before} to {} with {files} data files",
        open_fds()
    );
    for id in 1..=IDS {
        assert_eq!(parse(&db.get(id).unwrap()).0, id);
    }
}

#[test]
fn readers_and_one_writer_flush_policy() {
    run(SyncPolicy::Flush);
}

#[test]
fn readers_and_one_writer_buffered() {
    // Never: readers must also see records still in the writer's buffer.
    run(SyncPolicy::Never);
}

#[test]
fn group_commit_with_many_writers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        OpenOptions::new()
            .config(Config::default())
            .sync(SyncPolicy::Group)
            .open(dir.path())
            .unwrap(),
    );
    let ids: Vec<Vec<u32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16u32)
            .map(|t| {
                let db = db.clone();
                s.spawn(move || {
                    (0..50u32)
                        .map(|i| db.insert(&value(t, i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u32> = ids.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 800, "ids are unique");
    for (t, list) in ids.iter().enumerate() {
        for (i, id) in list.iter().enumerate() {
            assert_eq!(db.get(*id).unwrap(), value(t as u32, i as u32));
        }
    }
    drop(db);
    // All of it reopens (written under group commit, no close).
    let db = OurDb::open(dir.path(), Config::default()).unwrap();
    assert_eq!(db.len(), 800);
}
