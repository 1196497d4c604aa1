//! Every fuzz target over its seed corpus (and any crash reproducers kept
//! beside it), so CI exercises the targets on stable Rust.

use std::path::Path;

fn run_corpus(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n >= 3, "{target}: only {n} seeds");
}

#[test]
fn record_parse_corpus() {
    run_corpus("record_parse", ourdb_fuzz::record_parse);
}

#[test]
fn envelope_decode_corpus() {
    run_corpus("envelope_decode", ourdb_fuzz::envelope_decode);
}

#[test]
fn frame_decode_corpus() {
    run_corpus("frame_decode", ourdb_fuzz::frame_decode);
}

#[test]
fn open_dir_corpus() {
    run_corpus("open_dir", ourdb_fuzz::open_dir);
}

#[test]
fn db_ops_corpus() {
    run_corpus("db_ops", ourdb_fuzz::db_ops);
}

/// `db_ops` over random inputs from a fixed seed (more with `DB_OPS_RUNS=n`,
/// another stream with `DB_OPS_SEED=s`). A failing input is written to the
/// temp directory, to be replayed or added to the corpus.
#[test]
fn db_ops_random_inputs() {
    let runs: u64 = std::env::var("DB_OPS_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let mut x: u64 = std::env::var("DB_OPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0b5e)
        | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for run in 0..runs {
        let len = 9 + (next() % 300) as usize;
        let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let r = std::panic::catch_unwind(|| ourdb_fuzz::db_ops(&input));
        if r.is_err() {
            let path = std::env::temp_dir().join(format!("db_ops-failure-{run}"));
            std::fs::write(&path, &input).unwrap();
            panic!("db_ops run {run} failed; input saved to {}", path.display());
        }
    }
}

/// Replays one input: `DB_OPS_REPLAY=path cargo test -p ourdb-fuzz db_ops_replay`.
#[test]
fn db_ops_replay() {
    if let Ok(p) = std::env::var("DB_OPS_REPLAY") {
        ourdb_fuzz::db_ops(&std::fs::read(&p).unwrap());
    }
}
