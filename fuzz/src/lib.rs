//! Fuzz target bodies. The libFuzzer binaries in `fuzz_targets/` call these,
//! and `tests/corpus.rs` runs them over the seed corpus on stable Rust.

use ourdb::keyed::Envelope;
use ourdb::{Config, OpenOptions};

/// Record and header parsing, and the V rebuild, over arbitrary file bytes.
pub fn record_parse(data: &[u8]) {
    let mut pos = 1;
    while pos < data.len() {
        if let Some(h) = ourdb::scan::record_at(data, pos) {
            assert!(pos + h.record_len() as usize <= data.len());
        }
        pos += 1 + (data[pos] as usize % 7);
    }
    let end = ourdb::scan::valid_end(data, 1.min(data.len()));
    assert!(end <= data.len().max(1));
    // The rebuild `recover` runs over each data file, in memory.
    let table = ourdb::LookupTable::new(1000);
    let mut rb = ourdb::scan::Rebuilder::new(&table, true, 1);
    let lens = [(0, data.len() as u64), (1, 4096)].into();
    rb.scan_file(0, &lens, data, 1);
    assert!(rb.next_id <= 1000);
    for (_, loc) in table.iter() {
        assert!((loc.position as usize) < data.len());
    }
}

/// Envelope decoding: never panics, and what decodes re-encodes to the input.
pub fn envelope_decode(data: &[u8]) {
    if let Ok(e) = Envelope::decode(data) {
        assert_eq!(e.encode(), data);
    }
}

/// Wire frame decoding (what a peer's bytes become): never panics, a tag
/// never nests, and what decodes re-encodes to a frame that decodes the same.
pub fn frame_decode(data: &[u8]) {
    use replication::frame::Frame;
    if let Ok(f) = Frame::decode(data) {
        if let Frame::Tagged { frame, .. } = &f {
            assert!(!matches!(**frame, Frame::Tagged { .. }));
        }
        let bytes = f.encode();
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().expect("prefix")) as usize,
            bytes.len() - 4
        );
        assert_eq!(Frame::decode(&bytes[4..]).expect("re-decodes"), f);
    }
}

fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 2 {
        let all = *data;
        *data = &[];
        return all;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let out = &data[2..2 + n];
    *data = &data[2 + n..];
    out
}

/// Opening a directory of corrupted files: a data file, a lookup dump, a
/// journal and metadata cut from the input. Open may refuse with an error;
/// whatever it accepts must answer reads without panicking.
///
/// Input: `[keysize selector][u16 len][0.db][u16 len][dump data][u16 len][.inc][u16 len][ourkv.meta][rest: ourkv.wal]`;
/// an empty part means the file is absent.
pub fn open_dir(data: &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let db_file = take(&mut rest);
    let dump = take(&mut rest);
    let inc = take(&mut rest);
    let meta = take(&mut rest);
    let wal = rest;
    let write = |name: &str, bytes: &[u8]| {
        if !bytes.is_empty() {
            std::fs::write(p.join(name), bytes).expect("write");
        }
    };
    write("0.db", db_file);
    if !dump.is_empty() || !inc.is_empty() {
        std::fs::create_dir_all(p.join("lookup_dump.db")).expect("mkdir");
    }
    write("lookup_dump.db/data", dump);
    write("lookup_dump.db/.inc", inc);
    write("ourkv.meta", meta);
    write("ourkv.wal", wal);
    let (nr_max, size_max) = match sel % 4 {
        0 => (1000, 1024),    // keysize 2
        1 => (100_000, 100),  // keysize 3
        2 => (20_000_000, 1), // keysize 4
        _ => (100_000, 4096), // keysize 6
    };
    let config = Config {
        record_nr_max: nr_max,
        record_size_max: size_max,
        file_size: if sel & 0x10 != 0 { 64 } else { 1 << 20 },
        incremental: sel & 0x20 == 0,
        keysize: None,
    };
    let read_only = sel & 0x40 != 0;
    let Ok(db) = OpenOptions::new()
        .config(config)
        .read_only(read_only)
        .open(p)
    else {
        return;
    };
    let ids: Vec<u32> = db.ids().take(256).collect();
    for &id in &ids {
        let _ = db.get(id);
        let _ = db.get_history(id, 4);
    }
    if !read_only {
        let _ = db.insert(b"after open");
        if let Some(&id) = ids.first() {
            let _ = db.set(Some(id), b"update");
            let _ = db.delete(id);
        }
        let _ = db.close();
    }
}
