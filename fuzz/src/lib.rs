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

/// Reads input bytes one at a time; zero once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a directory may hold after a crash: the state at the last durable
/// point, then the writes since, in order; any prefix of them may survive.
#[derive(Default)]
struct Model {
    /// What the open handle answers (exact while it is not poisoned).
    current: std::collections::BTreeMap<u32, Vec<u8>>,
    durable: std::collections::BTreeMap<u32, Vec<u8>>,
    since: Vec<(u32, Option<Vec<u8>>)>,
}

impl Model {
    fn write(&mut self, id: u32, v: Option<Vec<u8>>) {
        match &v {
            Some(v) => self.current.insert(id, v.clone()),
            None => self.current.remove(&id),
        };
        self.since.push((id, v));
    }

    fn made_durable(&mut self) {
        self.durable = self.current.clone();
        self.since.clear();
    }

    /// Checks that `found` is the durable state plus a prefix of the writes
    /// since; then takes it as the new state.
    fn recovered(&mut self, found: std::collections::BTreeMap<u32, Vec<u8>>, what: &str) {
        let mut state = self.durable.clone();
        let mut ok = state == found;
        for (id, v) in &self.since {
            if ok {
                break;
            }
            match v {
                Some(v) => state.insert(*id, v.clone()),
                None => state.remove(id),
            };
            ok = state == found;
        }
        assert!(
            ok,
            "{what}: the directory holds no prefix of the writes since the last durable point\n\
             durable: {:?}\nsince: {:?}\nfound: {:?}",
            self.durable.keys().collect::<Vec<_>>(),
            self.since
                .iter()
                .map(|(id, v)| (id, v.as_ref().map(Vec::len)))
                .collect::<Vec<_>>(),
            found
                .iter()
                .map(|(id, v)| (id, v.len()))
                .collect::<Vec<_>>(),
        );
        self.current = found.clone();
        self.durable = found;
        self.since.clear();
    }
}

fn read_all(db: &ourdb::OurDb) -> std::collections::BTreeMap<u32, Vec<u8>> {
    let ids: Vec<u32> = db.ids().collect();
    ids.into_iter()
        .map(|id| {
            let v = db
                .get(id)
                .unwrap_or_else(|e| panic!("id {id} is listed but does not read: {e}"));
            (id, v)
        })
        .collect()
}

/// Whole engine operations under injected I/O faults and power loss, against
/// a model (in the manner of redb's `fuzz_redb`).
///
/// Input: `[config][8 bytes: fault seed][op]...`. The config byte picks the
/// sync policy, incremental or key-value ids, and how often checkpoints and
/// file switches come. Ops: insert, set, delete, get, sync, checkpoint, arm a
/// fault at the n-th mutating I/O call, crash (power off, undo what is not
/// durable, reopen; sometimes with a fault during recovery, then again), and
/// close/reopen.
///
/// Checked: an operation fails only when a fault fired in it or the handle
/// is already poisoned, and every write after a failure is refused; reads of
/// a healthy handle match the model; after a crash the directory holds the
/// durable state plus a prefix of the writes since (never a later write
/// without an earlier one, never a torn value), every listed id reads, and
/// after a clean close nothing is lost.
pub fn db_ops(data: &[u8]) {
    use ourdb::storage::faults::FaultyStorage;
    use ourdb::{Error, SyncPolicy};
    use std::sync::Arc;

    let mut input = Bytes(data);
    let sel = input.byte();
    let mut seed = [0u8; 8];
    for b in &mut seed {
        *b = input.byte();
    }
    let sync = match sel % 4 {
        0 => SyncPolicy::Always,
        1 => SyncPolicy::Group,
        2 => SyncPolicy::Flush,
        _ => SyncPolicy::Never,
    };
    let incremental = sel & 4 == 0;
    let config = Config {
        record_nr_max: 64,
        record_size_max: 300,
        file_size: if sel & 8 != 0 { 700 } else { 1 << 20 },
        incremental,
        // Only keysize 6 addresses more than one data file.
        keysize: (sel & 8 != 0).then_some(6),
    };
    let checkpoint_bytes = if sel & 16 != 0 { 900 } else { 1 << 30 };
    let storage = FaultyStorage::new(u64::from_le_bytes(seed));
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        OpenOptions::new()
            .config(config.clone())
            .sync(sync)
            .checkpoint_bytes(checkpoint_bytes)
            .storage(Arc::new(storage.clone()))
            .open(dir.path())
    };
    let mut db = Some(open().expect("a new directory opens"));
    let mut model = Model::default();
    let mut poisoned = false;
    let mut counter = 0u32;

    // Runs one engine call, checking when it may fail.
    macro_rules! call {
        ($e:expr) => {{
            let before = storage.injected();
            let r = $e;
            let fired = storage.injected() > before;
            match &r {
                Ok(_) => assert!(!poisoned, "a write succeeded on a failed handle"),
                // A refusal, not a failure: the handle goes on.
                Err(Error::TableFull(_)) => assert!(!fired, "a fault fired and was not reported"),
                Err(e) => assert!(
                    fired || poisoned,
                    "an operation failed with no fault injected: {e}"
                ),
            }
            if fired && r.is_ok() {
                panic!("a fault fired and the operation still succeeded");
            }
            if r.is_err() && !matches!(r, Err(Error::TableFull(_))) {
                poisoned = true;
            }
            r
        }};
    }

    while !input.done() {
        let Some(h) = db.as_ref() else { break };
        let op = input.byte();
        let arg = input.byte();
        counter += 1;
        let len = match arg % 4 {
            0 => 0,
            1 => 12,
            2 => arg as usize,
            _ => 300 - (arg as usize % 8),
        };
        let value = |c: u32| -> Vec<u8> {
            let tag = c.to_le_bytes();
            (0..len).map(|i| tag[i % 4] ^ (i as u8)).collect()
        };
        let durable_each = matches!(sync, SyncPolicy::Always | SyncPolicy::Group);
        let live: Vec<u32> = model.current.keys().copied().collect();
        match op % 9 {
            0 | 1 => {
                // A new id (incremental) or any id (key-value).
                let v = value(counter);
                let next = if incremental && !poisoned {
                    h.next_id().expect("next_id")
                } else {
                    0
                };
                let r = if incremental {
                    call!(h.insert(&v))
                } else {
                    let id = arg as u32 % config.record_nr_max;
                    call!(h.set(Some(id), &v))
                };
                match r {
                    Ok(id) => {
                        if incremental {
                            assert!(
                                !model.current.contains_key(&id),
                                "insert reused live id {id}"
                            );
                        }
                        model.write(id, Some(v));
                        if durable_each {
                            model.made_durable();
                        }
                    }
                    Err(Error::TableFull(_)) => {}
                    // It may have landed, under the id it was to get.
                    Err(_) if incremental && next == 0 => {}
                    Err(_) => {
                        let id = if incremental {
                            next
                        } else {
                            arg as u32 % config.record_nr_max
                        };
                        model.since.push((id, Some(v)));
                    }
                }
            }
            2 => {
                let Some(&id) = live.get(arg as usize % live.len().max(1)) else {
                    continue;
                };
                let v = value(counter);
                match call!(h.set(Some(id), &v)) {
                    Ok(_) => {
                        model.write(id, Some(v));
                        if durable_each {
                            model.made_durable();
                        }
                    }
                    Err(_) => model.since.push((id, Some(v))),
                }
            }
            3 => {
                let Some(&id) = live.get(arg as usize % live.len().max(1)) else {
                    continue;
                };
                match call!(h.delete(id)) {
                    Ok(()) => {
                        model.write(id, None);
                        if durable_each {
                            model.made_durable();
                        }
                    }
                    Err(_) => model.since.push((id, None)),
                }
            }
            4 => {
                if !poisoned {
                    let id = arg as u32 % config.record_nr_max;
                    match (h.get(id), model.current.get(&id)) {
                        (Ok(got), Some(want)) => assert_eq!(&got, want, "get({id})"),
                        (Err(Error::NotFound(_)), None) => {}
                        (Err(Error::IdOutOfRange { .. }), None) if id == 0 => {}
                        (got, want) => panic!("get({id}): {got:?}, model {want:?}"),
                    }
                }
            }
            5 => {
                let r = if arg & 1 == 0 {
                    call!(h.sync())
                } else {
                    call!(h.checkpoint())
                };
                if r.is_ok() {
                    model.made_durable();
                }
            }
            6 => storage.fail_op(1 + u64::from(arg % 24)),
            7 => {
                // Power loss, then recovery (maybe failing once itself).
                storage.power_off();
                db.take().expect("open").abandon();
                storage.crash().expect("crash");
                if arg & 1 == 1 {
                    storage.fail_op(1 + u64::from(arg / 2 % 16));
                    if let Ok(h) = open() {
                        storage.power_off();
                        h.abandon();
                    }
                    storage.crash().expect("crash");
                }
                let h = open().unwrap_or_else(|e| panic!("reopen after a crash: {e}"));
                model.recovered(read_all(&h), "after a crash");
                db = Some(h);
                poisoned = false;
            }
            _ => {
                // A clean close; if it fails, a crash.
                let h = db.take().expect("open");
                let before = storage.injected();
                let closed = h.close();
                if let Err(e) = &closed {
                    assert!(
                        poisoned || storage.injected() > before,
                        "close failed with no fault injected: {e}"
                    );
                }
                if closed.is_ok() {
                    model.made_durable();
                } else {
                    storage.crash().expect("crash");
                }
                let h = open().unwrap_or_else(|e| panic!("reopen after close: {e}"));
                model.recovered(read_all(&h), "after close");
                db = Some(h);
                poisoned = false;
            }
        }
    }
    if let Some(h) = db {
        if !poisoned {
            let found = read_all(&h);
            assert_eq!(found, model.current, "the open handle reads the model");
        }
        h.abandon();
    }
}
