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
