//! V's OurDB workloads W1–W4 (fixtures README) on ourdb, the same insert and
//! get loops on redb and fjall, read scaling, group commit under 64 writers,
//! and reopen of a million records. Prints markdown tables.
//!
//! `cargo run --release -p ourdb-bench -- [all|v|engines|scaling|group|reopen|repl|selfcheck]`,
//! or `-- w2 [L]` to run W2 alone (for a profiler).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ourdb::{Config, OpenOptions, OurDb, SyncPolicy};

const N: u64 = 100_000;

/// The README's splitmix64 step.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `value(k, L)`: splitmix64 words from `k * golden + 0x5EED`, little-endian, cut to L.
fn value(k: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut s = SplitMix(k.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x5EED));
    while out.len() < len {
        out.extend_from_slice(&s.next().to_le_bytes());
    }
    out.truncate(len);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The README's check values; the run stops if the generator is wrong.
fn selfcheck() {
    let mut v = Vec::new();
    value(0, 16, &mut v);
    assert_eq!(hex(&v), "b4a9f0039dfdf1097584bf1b16743255");
    value(1_000_000, 16, &mut v);
    assert_eq!(hex(&v), "c373135d52d3ef6dc9ecb9569acff808");
    let mut s = SplitMix(0xBEEF);
    let ids: Vec<u64> = (0..3).map(|_| 1 + s.next() % N).collect();
    assert_eq!(ids, [24039, 15329, 92397]);
    let mut s = SplitMix(0xF00D);
    let ids: Vec<u64> = (0..3).map(|_| 1 + s.next() % N).collect();
    assert_eq!(ids, [80010, 54760, 96646]);
}

fn rate(ops: u64, d: Duration) -> String {
    let r = ops as f64 / d.as_secs_f64();
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else {
        format!("{:.1}k/s", r / 1e3)
    }
}

fn open(dir: &Path, sync: SyncPolicy) -> OurDb {
    OpenOptions::new()
        .config(Config::default())
        .sync(sync)
        .open(dir)
        .expect("open")
}

struct VRow {
    insert: Duration,
    close1: Duration,
    get: Duration,
    update: Duration,
    close3: Duration,
}

/// W1, W2, W3 at value size `len`, `n` operations, under `sync`; each
/// workload on a freshly opened handle, as V ran each in a new process.
fn v_workloads(len: usize, n: u64, sync: SyncPolicy) -> VRow {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut v = Vec::with_capacity(len);
    let db = open(dir.path(), sync);
    let t = Instant::now();
    for k in 0..n {
        value(k, len, &mut v);
        let id = db.insert(&v).expect("insert");
        debug_assert_eq!(id as u64, k + 1);
    }
    let insert = t.elapsed();
    let t = Instant::now();
    db.close().expect("close");
    let close1 = t.elapsed();

    let db = open(dir.path(), sync);
    let mut s = SplitMix(0xBEEF);
    let mut total = 0usize;
    let t = Instant::now();
    for _ in 0..n {
        total += db.get((1 + s.next() % n) as u32).expect("get").len();
    }
    let get = t.elapsed();
    assert_eq!(total, n as usize * len);
    drop(db);

    let db = open(dir.path(), sync);
    let mut s = SplitMix(0xF00D);
    let t = Instant::now();
    for q in 0..n {
        value(1_000_000 + q, len, &mut v);
        db.set(Some((1 + s.next() % n) as u32), &v).expect("update");
    }
    let update = t.elapsed();
    let t = Instant::now();
    db.close().expect("close");
    VRow {
        insert,
        close1,
        get,
        update,
        close3: t.elapsed(),
    }
}

fn bench_v() {
    println!("## V workloads W1–W4 (median of 3 runs; 100,000 ops; group commit: 10,000 ops, one thread)\n");
    println!(
        "| L | policy | W1 insert | W1 close | W2 get | W3 update | W3 close | vs V (W1/W2/W3) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (len, v) in [
        (100usize, [95_300.0, 139_300.0, 90_900.0]),
        (1000, [64_500.0, 89_600.0, 63_400.0]),
    ] {
        for (name, sync, n) in [
            ("none", SyncPolicy::Never, N),
            ("group", SyncPolicy::Group, 10_000),
        ] {
            // Median of three runs per column, as V's figures are.
            let runs: Vec<VRow> = (0..3).map(|_| v_workloads(len, n, sync)).collect();
            let med = |f: fn(&VRow) -> Duration| {
                let mut d: Vec<Duration> = runs.iter().map(f).collect();
                d.sort_unstable();
                d[1]
            };
            let r = VRow {
                insert: med(|r| r.insert),
                close1: med(|r| r.close1),
                get: med(|r| r.get),
                update: med(|r| r.update),
                close3: med(|r| r.close3),
            };
            let x = |d: Duration, base: f64| n as f64 / d.as_secs_f64() / base;
            let ratios = if sync == SyncPolicy::Never {
                format!(
                    "{:.1}× / {:.1}× / {:.1}×",
                    x(r.insert, v[0]),
                    x(r.get, v[1]),
                    x(r.update, v[2])
                )
            } else {
                // V never syncs, and these gets run over only the 10,000
                // records the shorter W1 wrote, so nothing compares.
                "—".to_string()
            };
            println!(
                "| {len} B | {name} | {} | {:.0} ms | {} | {} | {:.0} ms | {ratios} |",
                rate(n, r.insert),
                r.close1.as_secs_f64() * 1e3,
                rate(n, r.get),
                rate(n, r.update),
                r.close3.as_secs_f64() * 1e3,
            );
        }
    }
    println!();
}

/// The insert and get loops of W1/W2 on redb: one write transaction per
/// insert with durability off (its fastest per-operation setting), and all
/// gets in one read transaction.
fn redb_w1_w2(len: usize) -> (Duration, Duration) {
    use redb::ReadableDatabase;
    const T: redb::TableDefinition<u32, &[u8]> = redb::TableDefinition::new("t");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = redb::Database::create(dir.path().join("db.redb")).expect("redb");
    let mut v = Vec::new();
    let t = Instant::now();
    for k in 0..N {
        value(k, len, &mut v);
        let mut tx = db.begin_write().expect("tx");
        tx.set_durability(redb::Durability::None)
            .expect("durability");
        {
            let mut table = tx.open_table(T).expect("table");
            table.insert((k + 1) as u32, v.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    let insert = t.elapsed();
    let rtx = db.begin_read().expect("read tx");
    let table = rtx.open_table(T).expect("table");
    let mut s = SplitMix(0xBEEF);
    let mut total = 0;
    let t = Instant::now();
    for _ in 0..N {
        total += table
            .get((1 + s.next() % N) as u32)
            .expect("get")
            .expect("present")
            .value()
            .len();
    }
    let get = t.elapsed();
    assert_eq!(total, N as usize * len);
    (insert, get)
}

/// The same loops on fjall with manual journal persistence: writes stay in
/// its journal buffer, as ourdb's `Never` keeps them in its own.
fn fjall_w1_w2(len: usize) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = fjall::Database::builder(dir.path())
        .manual_journal_persist(true)
        .open()
        .expect("fjall");
    let ks = db
        .keyspace("t", fjall::KeyspaceCreateOptions::default)
        .expect("keyspace");
    let mut v = Vec::new();
    let t = Instant::now();
    for k in 0..N {
        value(k, len, &mut v);
        ks.insert(((k + 1) as u32).to_be_bytes(), v.as_slice())
            .expect("insert");
    }
    let insert = t.elapsed();
    let mut s = SplitMix(0xBEEF);
    let mut total = 0;
    let t = Instant::now();
    for _ in 0..N {
        let k = (1 + s.next() % N) as u32;
        total += ks
            .get(k.to_be_bytes())
            .expect("get")
            .expect("present")
            .len();
    }
    let get = t.elapsed();
    assert_eq!(total, N as usize * len);
    (insert, get)
}

fn bench_engines() {
    println!("## Insert (W1) and get (W2) loops beside other engines (100,000 ops, no sync)\n");
    println!("| L | engine | insert | get |");
    println!("|---|---|---|---|");
    for len in [100usize, 1000] {
        let r = v_workloads(len, N, SyncPolicy::Never);
        println!(
            "| {len} B | ourdb | {} | {} |",
            rate(N, r.insert),
            rate(N, r.get)
        );
        let (i, g) = redb_w1_w2(len);
        println!(
            "| {len} B | redb 4 (tx per insert, Durability::None) | {} | {} |",
            rate(N, i),
            rate(N, g)
        );
        let (i, g) = fjall_w1_w2(len);
        println!(
            "| {len} B | fjall 3 (manual journal persist) | {} | {} |",
            rate(N, i),
            rate(N, g)
        );
    }
    println!();
}

/// 100,000 records of 100 B in a fresh database, flushed so gets read the map.
fn filled_100b() -> (tempfile::TempDir, OurDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), SyncPolicy::Never);
    let mut v = Vec::new();
    for k in 0..N {
        value(k, 100, &mut v);
        db.insert(&v).expect("insert");
    }
    db.flush().expect("flush");
    (dir, db)
}

/// Best of three runs: each thread does `per` W2-style gets on its database.
fn gets_per_sec(dbs: &[Arc<OurDb>], per: u64) -> f64 {
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (th, db) in dbs.iter().enumerate() {
                s.spawn(move || {
                    let mut r = SplitMix(0xBEEF + th as u64);
                    let mut total = 0;
                    for _ in 0..per {
                        total += db.get((1 + r.next() % N) as u32).expect("get").len();
                    }
                    assert_eq!(total, per as usize * 100);
                });
            }
        });
        best = best.max((dbs.len() as u64 * per) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn bench_scaling() {
    const PER: u64 = 2_000_000;
    println!(
        "## Get scaling (W2 gets on 100,000 records of 100 B, {PER} gets per thread, best of 3)\n"
    );
    println!("| threads | databases | total gets/s | vs 1 thread |");
    println!("|---|---|---|---|");
    let (_d1, db1) = filled_100b();
    let db1 = Arc::new(db1);
    let one = gets_per_sec(std::slice::from_ref(&db1), PER);
    let shared = gets_per_sec(&[db1.clone(), db1.clone()], PER);
    // The control: without shared state, what two threads get on this machine.
    let (_d2, db2) = filled_100b();
    let apart = gets_per_sec(&[db1.clone(), Arc::new(db2)], PER);
    let f = |r: f64| format!("{:.2}M/s", r / 1e6);
    println!("| 1 | 1 | {} | 1.00× |", f(one));
    println!("| 2 | 1 (shared) | {} | {:.2}× |", f(shared), shared / one);
    println!(
        "| 2 | 2 (one each, control) | {} | {:.2}× |",
        f(apart),
        apart / one
    );
    println!();
}

fn bench_group() {
    println!("## Durable writes (100 B values)\n");
    println!("| policy | writers | ops | ops/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for (name, sync, writers, per) in [
        (
            "always (fdatasync per write)",
            SyncPolicy::Always,
            1usize,
            2000usize,
        ),
        ("group", SyncPolicy::Group, 1, 2000),
        ("group", SyncPolicy::Group, 64, 300),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(open(dir.path(), sync));
        let t = Instant::now();
        let mut lat: Vec<Duration> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..writers)
                .map(|w| {
                    let db = db.clone();
                    s.spawn(move || {
                        let mut v = Vec::new();
                        let mut lat = Vec::with_capacity(per);
                        for i in 0..per {
                            value((w * per + i) as u64, 100, &mut v);
                            let t = Instant::now();
                            db.insert(&v).expect("insert");
                            lat.push(t.elapsed());
                        }
                        lat
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("writer"))
                .collect()
        });
        let total = t.elapsed();
        lat.sort_unstable();
        let ops = (writers * per) as u64;
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "| {name} | {writers} | {ops} | {} | {:.2} ms | {:.2} ms |",
            rate(ops, total),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
    }
    println!();
}

fn bench_reopen() {
    println!("## Reopen of 1,000,000 records (100 B)\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 1_000_000u64;
    let db = open(dir.path(), SyncPolicy::Never);
    let mut v = Vec::new();
    let t = Instant::now();
    for k in 0..n {
        value(k, 100, &mut v);
        db.insert(&v).expect("insert");
    }
    let fill = t.elapsed();
    let t = Instant::now();
    db.close().expect("close");
    let close = t.elapsed();
    let t = Instant::now();
    let db = open(dir.path(), SyncPolicy::Never);
    let reopen = t.elapsed();
    assert_eq!(db.len() as u64, n);
    let lookup = db.lookup_memory_bytes();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| insert 1M | {} |", rate(n, fill));
    println!(
        "| close (checkpoint: dump + fsync) | {:.0} ms |",
        close.as_secs_f64() * 1e3
    );
    println!("| reopen | {:.0} ms |", reopen.as_secs_f64() * 1e3);
    println!(
        "| lookup memory | {:.1} MiB, {:.1} B/record |",
        lookup as f64 / 1048576.0,
        lookup as f64 / n as f64
    );
    println!();
}

/// Replication on loopback, master and worker in this process over real QUIC
/// with mutual TLS: catch-up of a worker 1 GiB behind, then the lag of
/// records written at a steady 10,000 writes/s.
fn bench_repl() {
    use ourdb::keyed::KeyedStore;
    println!(
        "## Replication (loopback QUIC, mutual TLS, one master and one worker in one process)\n"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cluster = tmp.path().join("cluster");
        replication::init_cluster(&cluster).expect("cluster");
        let id = replication::Identity::load(&cluster).expect("identity");
        let store = |name: &str, sync| {
            let db = OpenOptions::new()
                .config(Config::default())
                .sync(sync)
                .open(tmp.path().join(name))
                .expect("open");
            KeyedStore::new(db).expect("store")
        };
        // 1 GiB of 1000-byte values behind.
        let master_store = store("m", SyncPolicy::Never);
        let mut v = Vec::new();
        let n = 1u64 << 20;
        for k in 0..n {
            value(k, 1000, &mut v);
            master_store.put(&format!("key/{k}"), &v).expect("put");
        }
        master_store.db().flush().expect("flush");
        let bytes: u64 = ourdb::files::list_data_files(&tmp.path().join("m"))
            .expect("list")
            .iter()
            .map(|nr| std::fs::metadata(ourdb::files::data_path(&tmp.path().join("m"), *nr)).map_or(0, |m| m.len()))
            .sum();
        let master = replication::Master::new(master_store, replication::MasterOptions::default());
        let mep = replication::endpoint(&id, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let maddr = mep.local_addr().expect("addr");
        tokio::spawn(master.clone().serve(mep));
        let worker = replication::Worker::new(store("w", SyncPolicy::Flush), maddr);
        let wep = replication::endpoint(&id, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let target = master.commit_cursor();
        let mut applied = worker.watch_applied();
        let t = Instant::now();
        tokio::spawn(worker.clone().run(wep));
        applied.wait_for(|a| *a >= target).await.expect("caught up");
        let took = t.elapsed();
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| catch-up of {:.2} GiB ({n} records of 1000 B) | {:.2} s: {:.0} MB/s, {:.1}k records/s |",
            bytes as f64 / (1u64 << 30) as f64,
            took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64(),
            n as f64 / took.as_secs_f64() / 1e3
        );

        // Steady writes: 10 records every millisecond for 3 s (100 B values,
        // master policy flush); lag = from the master's acknowledgement to the
        // worker having applied the record.
        let pending = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<(replication::Cursor, Instant)>::new()));
        let lags = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
        let watcher = {
            let (pending, lags) = (pending.clone(), lags.clone());
            let mut applied = worker.watch_applied();
            tokio::spawn(async move {
                while applied.changed().await.is_ok() {
                    let a = *applied.borrow_and_update();
                    let now = Instant::now();
                    let mut p = pending.lock().expect("lock");
                    while p.front().is_some_and(|(c, _)| *c <= a) {
                        let (_, at) = p.pop_front().expect("front");
                        lags.lock().expect("lock").push(now - at);
                    }
                }
            })
        };
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let start = Instant::now();
        let mut written = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            tick.tick().await;
            for _ in 0..10 {
                value(written, 100, &mut v);
                let c = master
                    .put(format!("steady/{written}"), v.clone(), replication::Ack::Master, replication::Expect::Any, 0, 0)
                    .await
                    .expect("put")
                    .expect("no condition")
                    .0;
                pending.lock().expect("lock").push_back((c, Instant::now()));
                written += 1;
            }
        }
        let rate_done = written as f64 / start.elapsed().as_secs_f64();
        let end = master.commit_cursor();
        applied.wait_for(|a| *a >= end).await.expect("caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
        watcher.abort();
        let mut l = lags.lock().expect("lock").clone();
        l.sort_unstable();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e3;
        println!(
            "| lag at {:.0} writes/s ({} writes, 100 B) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
            rate_done,
            l.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    });
    println!();
}

fn main() {
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    selfcheck();
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "selfcheck" || what == "--selfcheck" {
        println!("selfcheck: value generator and W2/W3 id streams match the README");
        return;
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores, {cpu}\n");
    if what == "noop-http" {
        // The ceiling for the service bench: an HTTP server that does nothing.
        let addr = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "127.0.0.1:8099".into());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let app = axum::Router::new().fallback(|| async { "ok" });
            let l = tokio::net::TcpListener::bind(&addr).await.expect("bind");
            println!("noop listening on {addr}");
            // As the gateway does: no Nagle delay.
            let l = axum::serve::ListenerExt::tap_io(l, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(l, app).await.expect("serve");
        });
        return;
    }
    let all = what == "all";
    if all || what == "v" {
        bench_v();
    }
    if all || what == "engines" {
        bench_engines();
    }
    if all || what == "scaling" {
        bench_scaling();
    }
    if all || what == "group" {
        bench_group();
    }
    if all || what == "reopen" {
        bench_reopen();
    }
    if all || what == "repl" {
        bench_repl();
    }
    if what == "w2" {
        let len = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1000);
        bench_w2_only(len);
    }
}

/// W2 alone, ten times on fresh handles over one W1 database: a loop to run
/// under a profiler without W1 and W3 in the samples.
fn bench_w2_only(len: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), SyncPolicy::Never);
    let mut v = Vec::new();
    for k in 0..N {
        value(k, len, &mut v);
        db.insert(&v).expect("insert");
    }
    db.close().expect("close");
    println!("| run | W2 get ({len} B) |");
    println!("|---|---|");
    for run in 1..=10 {
        let db = open(dir.path(), SyncPolicy::Never);
        let mut s = SplitMix(0xBEEF);
        let mut total = 0;
        let t = Instant::now();
        for _ in 0..N {
            total += db.get((1 + s.next() % N) as u32).expect("get").len();
        }
        let d = t.elapsed();
        assert_eq!(total, N as usize * len);
        println!("| {run} | {} |", rate(N, d));
    }
    println!();
}

#[cfg(test)]
mod tests {
    #[test]
    fn generator_matches_the_readme() {
        super::selfcheck();
    }
}
