//! Durability under SIGKILL: a writer child process is killed at random
//! points, many times; after each kill the directory reopens with every
//! acknowledged write present, nothing corrupt, and torn tails cut.
//!
//! The child is this test binary run again with `OURDB_CRASH_CHILD` set. Its
//! operations are a pure function of (seed, live ids), so the parent can
//! replay them: after `n` acknowledged operations the state must equal the
//! replay of `n` operations, or of `n + 1` (the one in flight may have landed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ourdb::{Config, OpenOptions, OurDb, SyncPolicy};

const CHILD_ENV: &str = "OURDB_CRASH_CHILD";

fn config() -> Config {
    Config {
        record_nr_max: 1_000_000,
        record_size_max: 4096,
        // Small files: kills land around file switches too.
        file_size: 64 << 10,
        incremental: true,
        keysize: None,
    }
}

fn open(dir: &Path, sync: SyncPolicy) -> ourdb::Result<OurDb> {
    OpenOptions::new()
        .config(config())
        .sync(sync)
        .checkpoint_bytes(256 << 10)
        .open(dir)
}

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
}

/// The value written by operation `tag`: its length and bytes follow from the tag.
fn value(tag: u64) -> Vec<u8> {
    let mut r = Rng(tag);
    let len = (r.next() % 3000) as usize;
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(&tag.to_le_bytes());
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len.max(8));
    v
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Insert(u64),
    Update(u32, u64),
    Delete(u32),
}

/// Operation `k` of a session with `seed`, given the live ids (ascending).
fn op_at(seed: u64, k: u64, live: &[u32]) -> Op {
    let mut r = Rng(seed ^ k.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let tag = (seed << 24) ^ k;
    let pick = r.next();
    match r.next() % 10 {
        0..=4 => Op::Insert(tag),
        5..=8 if !live.is_empty() => Op::Update(live[(pick % live.len() as u64) as usize], tag),
        9 if !live.is_empty() => Op::Delete(live[(pick % live.len() as u64) as usize]),
        _ => Op::Insert(tag),
    }
}

/// The model: per live id its versions' tags, newest first; and the next id.
#[derive(Clone, Debug, PartialEq, Default)]
struct Model {
    ids: BTreeMap<u32, Vec<u64>>,
    next_id: u32,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Insert(tag) => {
                self.ids.insert(self.next_id, vec![tag]);
                self.next_id += 1;
            }
            Op::Update(id, tag) => self.ids.get_mut(&id).unwrap().insert(0, tag),
            Op::Delete(id) => {
                self.ids.remove(&id);
            }
        }
    }
    fn live(&self) -> Vec<u32> {
        self.ids.keys().copied().collect()
    }
    /// True when `db` holds exactly this state.
    fn matches(&self, db: &OurDb) -> Result<(), String> {
        let ids: Vec<u32> = db.ids().collect();
        if ids != self.live() {
            return Err(format!(
                "live ids differ: {} vs {}",
                ids.len(),
                self.ids.len()
            ));
        }
        if db.next_id().unwrap() != self.next_id {
            return Err(format!(
                "next id {} vs {}",
                db.next_id().unwrap(),
                self.next_id
            ));
        }
        for (id, tags) in &self.ids {
            let h = db
                .get_history(*id, usize::MAX)
                .map_err(|e| format!("id {id}: {e}"))?;
            let want: Vec<Vec<u8>> = tags.iter().map(|t| value(*t)).collect();
            if h != want {
                return Err(format!(
                    "id {id}: history of {} versions, want {}",
                    h.len(),
                    want.len()
                ));
            }
        }
        Ok(())
    }
}

/// Child: apply operations until killed (or a bound), printing each acknowledged one.
fn child(dir: &Path, seed: u64, sync: SyncPolicy, max_ops: u64) {
    let db = open(dir, sync).unwrap();
    let mut live: Vec<u32> = db.ids().collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for k in 0..max_ops {
        match op_at(seed, k, &live) {
            Op::Insert(tag) => {
                let id = db.insert(&value(tag)).unwrap();
                live.push(id);
            }
            Op::Update(id, tag) => {
                db.set(Some(id), &value(tag)).unwrap();
            }
            Op::Delete(id) => {
                db.delete(id).unwrap();
                live.retain(|&x| x != id);
            }
        }
        writeln!(out, "{k}").unwrap();
        out.flush().unwrap();
    }
    // Reaching the bound is not a crash: leave without closing anyway.
    db.abandon();
}

fn crash_loop(sync: SyncPolicy, rounds: u32, base_seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model {
        next_id: 1,
        ..Model::default()
    };
    let mut rng = Rng(base_seed);
    let mut total_acked = 0u64;
    for round in 0..rounds {
        let seed = base_seed.wrapping_add(round as u64 + 1);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{seed}|{sync:?}", dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked: Option<u64> = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints its own "test … " prefix on the first line.
                if line.ends_with("ready") {
                    let _ = tx.send(());
                } else if let Ok(k) = line.trim().parse::<u64>() {
                    acked = Some(k);
                }
            }
            acked
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("child ready");
        let delay = Duration::from_micros(2_000 + rng.next() % 40_000);
        let t = Instant::now();
        while t.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap().map_or(0, |k| k + 1);
        total_acked += acked;

        // Every third round, also leave torn bytes at the ends, as a power
        // cut in the middle of a write would.
        if round % 3 == 2 {
            let files = ourdb::files::list_data_files(dir.path()).unwrap();
            let last = ourdb::files::data_path(dir.path(), *files.last().unwrap());
            let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
            f.write_all(&[0x20, 0x00, 0xde, 0xad, 0xbe]).unwrap();
            let mut w = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(ourdb::files::WAL_FILE))
                .unwrap();
            w.write_all(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
        }

        let mut a = model.clone();
        for k in 0..acked {
            let op = op_at(seed, k, &a.live());
            a.apply(&op);
        }
        let mut b = a.clone();
        b.apply(&op_at(seed, acked, &a.live()));

        let db = open(dir.path(), sync).unwrap();
        model = match (a.matches(&db), b.matches(&db)) {
            (Ok(()), _) => a,
            (_, Ok(())) => b,
            (Err(ea), Err(eb)) => panic!(
                "round {round} ({acked} acknowledged): state matches neither replay: {ea} / {eb}"
            ),
        };
        drop(db);
        let v = ourdb::tools::verify(dir.path(), None).unwrap();
        assert!(v.is_ok(), "round {round}: verify: {:?}", v.problems);
    }
    assert!(total_acked > 0, "no write was acknowledged in any round");
    assert!(!model.ids.is_empty());
}

/// Child of the many-writer test: 8 threads insert until killed, printing
/// `id tag` for each acknowledged insert.
fn child_many_writers(dir: &Path, seed: u64) {
    let db = std::sync::Arc::new(open(dir, SyncPolicy::Group).unwrap());
    println!("ready");
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let db = db.clone();
            s.spawn(move || {
                for i in 0..100_000u64 {
                    let tag = (seed << 40) | (t << 32) | i;
                    let id = db.insert(&value(tag)).unwrap();
                    // One write(2) per line: lines from threads never interleave.
                    let line = format!("{id} {tag}\n");
                    std::io::stdout().lock().write_all(line.as_bytes()).unwrap();
                }
            });
        }
    });
}

#[test]
fn sigkill_group_commit_many_writers() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    let mut rng = Rng(0x5EED);
    for round in 0..20u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{round}|GroupMany", dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("ready") {
                    let _ = tx.send(());
                    continue;
                }
                let mut it = line.split(' ');
                if let (Some(Ok(id)), Some(Ok(tag))) = (
                    it.next().map(str::parse::<u32>),
                    it.next().map(str::parse::<u64>),
                ) {
                    got.push((id, tag));
                }
            }
            got
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("child ready");
        std::thread::sleep(Duration::from_micros(3_000 + rng.next() % 30_000));
        child.kill().unwrap();
        child.wait().unwrap();
        for (id, tag) in reader.join().unwrap() {
            assert!(acked.insert(id, tag).is_none(), "id {id} handed out twice");
        }
        let db = open(dir.path(), SyncPolicy::Group).unwrap();
        for (id, tag) in &acked {
            match db.get(*id) {
                Ok(v) => assert_eq!(v, value(*tag), "round {round}: id {id} holds another value"),
                Err(e) => panic!("round {round}: acknowledged id {id} lost: {e}"),
            }
        }
        drop(db);
        let v = ourdb::tools::verify(dir.path(), None).unwrap();
        assert!(v.is_ok(), "round {round}: verify: {:?}", v.problems);
    }
    assert!(
        acked.len() > 100,
        "only {} inserts acknowledged",
        acked.len()
    );
}

/// The child's entry point; run without the environment variable it checks
/// the child loop in-process instead.
#[test]
fn crash_child_entry() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let mut parts = spec.split('|');
        let dir = parts.next().unwrap().to_string();
        let seed: u64 = parts.next().unwrap().parse().unwrap();
        let sync = match parts.next().unwrap() {
            "GroupMany" => return child_many_writers(Path::new(&dir), seed),
            "Always" => SyncPolicy::Always,
            "Group" => SyncPolicy::Group,
            _ => SyncPolicy::Flush,
        };
        child(Path::new(&dir), seed, sync, 200_000);
        return;
    }
    // In-process: a bounded run replays exactly.
    let dir = tempfile::tempdir().unwrap();
    child(dir.path(), 7, SyncPolicy::Flush, 300);
    let db = open(dir.path(), SyncPolicy::Flush).unwrap();
    let mut m = Model {
        next_id: 1,
        ..Model::default()
    };
    for k in 0..300 {
        let op = op_at(7, k, &m.live());
        m.apply(&op);
    }
    m.matches(&db).unwrap();
}

#[test]
fn sigkill_with_sync_always() {
    crash_loop(SyncPolicy::Always, 60, 0xA11);
}

#[test]
fn sigkill_with_group_commit() {
    crash_loop(SyncPolicy::Group, 60, 0x6E0);
}

#[test]
fn sigkill_with_flush_policy() {
    // Flush hands every write to the OS: a process kill loses nothing.
    crash_loop(SyncPolicy::Flush, 40, 0xF1);
}
