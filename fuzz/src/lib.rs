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
    // Every keysize: below 6, previous pointers are truncated as V writes them.
    let keysize = [2, 3, 4, 6][data.first().map_or(3, |&b| b as usize % 4)];
    rb.scan_file(0, keysize, &lens, data, 1);
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
/// never nests, what decodes re-encodes to a frame that decodes the same,
/// and its typed view (`replication::msg`) gives the same frame back.
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
        // Its typed view (a request by sub-protocol, or a stream's opening,
        // or neither) converts back to the same frame.
        let typed = match replication::msg::Call::from_frame(f.clone()) {
            Ok(call) => Frame::from(call),
            Err(other) => Frame::from(replication::msg::Opening::from(other)),
        };
        assert_eq!(typed, f);
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

/// The truncate ops of `db_ops` (two: plain, and with a fault armed).
const TRUNCATE: u8 = 9;

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

type State = std::collections::BTreeMap<u32, Vec<u8>>;

/// What a directory may hold after a crash: the state at the last durable
/// point, then the writes since, in order; any prefix of them may survive.
/// A truncation is one step: all of it or none.
#[derive(Default)]
struct Model {
    /// What the open handle answers (exact while it is not poisoned).
    current: State,
    durable: State,
    since: Vec<Vec<(u32, Option<Vec<u8>>)>>,
    /// Record boundaries of this handle's log: where the data ended after
    /// each write that appended records, the state then, and the next id
    /// then (incremental mode). Truncation targets.
    bounds: Vec<(ourdb::Location, State, u32)>,
    /// Plain-db deletes (no record, so a truncation does not undo them):
    /// the number of boundaries when each was made, and its id.
    plain_deletes: Vec<(usize, u32)>,
    /// A truncation that failed part-way: its step in `since`, and where it
    /// cuts (the data must end there if the step survived).
    cut_step: Option<(usize, ourdb::Location)>,
}

impl Model {
    fn write(&mut self, id: u32, v: Option<Vec<u8>>) {
        match &v {
            Some(v) => self.current.insert(id, v.clone()),
            None => self.current.remove(&id),
        };
        self.since.push(vec![(id, v)]);
    }

    /// A write that may or may not have landed (its call failed).
    fn maybe(&mut self, id: u32, v: Option<Vec<u8>>) {
        self.since.push(vec![(id, v)]);
    }

    fn made_durable(&mut self) {
        self.durable = self.current.clone();
        self.since.clear();
        self.cut_step = None;
    }

    /// The log is unknown (after a crash): only its new end is a boundary.
    fn restart_log(&mut self, end: ourdb::Location, next_id: u32) {
        self.bounds = vec![(end, self.current.clone(), next_id)];
        self.plain_deletes.clear();
    }

    /// A write appended records: the data now ends at `end`.
    fn bound(&mut self, end: ourdb::Location, next_id: u32) {
        self.bounds.push((end, self.current.clone(), next_id));
    }

    /// The state a cut to boundary `i` leaves: the state then, less the
    /// plain deletes made since (they are no records).
    fn cut_state(&self, i: usize) -> State {
        let mut state = self.bounds[i].1.clone();
        for &(n, id) in &self.plain_deletes {
            if n > i {
                state.remove(&id);
            }
        }
        state
    }

    /// A truncation to boundary `i` succeeded: it is the state, durable.
    fn truncated(&mut self, i: usize) {
        let state = self.cut_state(i);
        self.bounds.truncate(i + 1);
        // Deletes made after boundary `i` stay made after it, and after
        // every earlier one.
        for d in &mut self.plain_deletes {
            d.0 = d.0.min(i + 1);
        }
        self.current = state;
        self.made_durable();
    }

    /// A truncation to boundary `i` failed part-way: it may have happened.
    fn maybe_truncated(&mut self, i: usize) {
        let state = self.cut_state(i);
        let mut step: Vec<(u32, Option<Vec<u8>>)> = Vec::new();
        for (id, v) in &self.current {
            if state.get(id) != Some(v) {
                step.push((*id, state.get(id).cloned()));
            }
        }
        for (id, v) in &state {
            if !self.current.contains_key(id) {
                step.push((*id, Some(v.clone())));
            }
        }
        self.cut_step = Some((self.since.len(), self.bounds[i].0));
        self.since.push(step);
    }

    /// Checks that `found` is the durable state plus a prefix of the writes
    /// since; then takes it as the new state. Returns how many steps of
    /// `since` it holds (the fewest that fit).
    fn recovered(&mut self, found: State, what: &str) -> usize {
        let mut state = self.durable.clone();
        let mut ok = state == found;
        let mut steps = 0;
        for step in &self.since {
            if ok {
                break;
            }
            for (id, v) in step {
                match v {
                    Some(v) => state.insert(*id, v.clone()),
                    None => state.remove(id),
                };
            }
            steps += 1;
            ok = state == found;
        }
        assert!(
            ok,
            "{what}: the directory holds no prefix of the writes since the last durable point\n\
             durable: {:?}\nsince: {:?}\nfound: {:?}",
            self.durable.keys().collect::<Vec<_>>(),
            self.since
                .iter()
                .map(|step| step
                    .iter()
                    .map(|(id, v)| (id, v.as_ref().map(Vec::len)))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            found
                .iter()
                .map(|(id, v)| (id, v.len()))
                .collect::<Vec<_>>(),
        );
        self.current = found.clone();
        self.durable = found;
        self.since.clear();
        steps
    }

    /// After a crash: the state is checked as `recovered` does; if a
    /// truncation that failed part-way is what it holds last, the data
    /// ends where it cut.
    fn recovered_at(&mut self, found: State, end: ourdb::Location, next_id: u32, what: &str) {
        let cut = self.cut_step.take();
        let steps = self.recovered(found, what);
        if let Some((step, to)) = cut {
            if std::env::var_os("DB_OPS_TRACE").is_some() {
                let kept = if steps > step { "kept" } else { "undone" };
                eprintln!("a failed truncate_to({to}) was {kept} by the crash");
            }
            if steps == step + 1 {
                assert_eq!(end, to, "{what}: the cut's state without its cut data");
            }
        }
        self.restart_log(end, next_id);
    }
}

/// The engine under test: the plain db (ids) or the keyed store over it
/// (keys `k0`, `k1`, ...; the service's path, whose journal group commit
/// does not sync). Both are addressed by a number: the id, or the key's.
// One per run: the sizes of its variants do not matter.
#[allow(clippy::large_enum_variant)]
enum Handle {
    Plain(ourdb::OurDb),
    Keyed(ourdb::keyed::KeyedStore),
}

impl Handle {
    fn db(&self) -> &ourdb::OurDb {
        match self {
            Handle::Plain(db) => db,
            Handle::Keyed(s) => s.db(),
        }
    }

    /// The next id (0 in key-value mode).
    fn next_id(&self) -> u32 {
        self.db().next_id().unwrap_or(0)
    }

    /// Writes `v` under `n` (`None`: a new id, incremental plain db only).
    fn put(&self, n: Option<u32>, v: &[u8]) -> ourdb::Result<u32> {
        match (self, n) {
            (Handle::Plain(db), n) => db.set(n, v),
            (Handle::Keyed(s), Some(n)) => s.put(&format!("k{n}"), v).map(|_| n),
            (Handle::Keyed(_), None) => unreachable!("keyed writes name their key"),
        }
    }

    fn delete(&self, n: u32) -> ourdb::Result<()> {
        match self {
            Handle::Plain(db) => db.delete(n),
            Handle::Keyed(s) => s.delete(&format!("k{n}")).map(|found| {
                assert!(
                    found,
                    "k{n} is live in the model but delete did not find it"
                );
            }),
        }
    }

    fn get(&self, n: u32) -> ourdb::Result<Option<Vec<u8>>> {
        match self {
            Handle::Plain(db) => match db.get(n) {
                Ok(v) => Ok(Some(v)),
                Err(ourdb::Error::NotFound(_)) => Ok(None),
                Err(ourdb::Error::IdOutOfRange { .. }) if n == 0 => Ok(None),
                Err(e) => Err(e),
            },
            Handle::Keyed(s) => s.get(&format!("k{n}")),
        }
    }

    fn truncate_to(&self, to: ourdb::Location) -> ourdb::Result<ourdb::Truncated> {
        match self {
            Handle::Plain(db) => db.truncate_to(to),
            Handle::Keyed(s) => s.truncate_to(to),
        }
    }

    fn close(self) -> ourdb::Result<()> {
        match self {
            Handle::Plain(db) => db.close(),
            Handle::Keyed(s) => s.close(),
        }
    }

    fn abandon(self) {
        match self {
            Handle::Plain(db) => db.abandon(),
            Handle::Keyed(s) => s.into_db().abandon(),
        }
    }

    /// Everything the handle holds; every listed entry must read.
    fn read_all(&self) -> std::collections::BTreeMap<u32, Vec<u8>> {
        let numbers: Vec<u32> = match self {
            Handle::Plain(db) => db.ids().collect(),
            Handle::Keyed(s) => s
                .list("", None, usize::MAX)
                .into_iter()
                .map(|k| k[1..].parse().expect("a key this target wrote"))
                .collect(),
        };
        numbers
            .into_iter()
            .map(|n| match self.get(n) {
                Ok(Some(v)) => (n, v),
                other => panic!("{n} is listed but does not read: {other:?}"),
            })
            .collect()
    }
}

/// Whole engine operations under injected I/O faults and power loss, against
/// a model (in the manner of redb's `fuzz_redb`).
///
/// Input: `[config][8 bytes: fault seed][op, arg]...`. The config byte picks
/// the sync policy, the plain db (incremental or key-value ids) or the keyed
/// store, and how often checkpoints and file switches come. Ops: insert/put,
/// update, delete, get, sync or checkpoint, arm a fault at the n-th mutating
/// I/O call, crash (power off, undo what is not durable, reopen; sometimes
/// with a fault during recovery, then again), close/reopen, and (op bytes
/// 230 and up) truncate to a random earlier record boundary of the log;
/// an odd op byte there first arms a fault inside the cut, at the call
/// named by one more input byte.
///
/// Checked: an operation fails only when a fault fired in it or the handle
/// is already poisoned, and every write after a failure is refused; reads of
/// a healthy handle match the model; after a crash the directory holds the
/// durable state plus a prefix of the writes since (never a later write
/// without an earlier one, never a torn value), every listed entry reads,
/// and after a clean close nothing is lost. A truncation leaves the state
/// of its boundary (for the plain db less the deletes made since: they are
/// no records) and counts as one write: after a crash it is there whole,
/// with the data ending where it cut, or not at all.
pub fn db_ops(data: &[u8]) {
    use ourdb::keyed::KeyedStore;
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
    let keyed = sel & 32 != 0;
    // The keyed store needs incremental ids.
    let incremental = keyed || sel & 4 == 0;
    let config = Config {
        record_nr_max: 64,
        record_size_max: 320,
        file_size: if sel & 8 != 0 { 700 } else { 1 << 20 },
        incremental,
        // Only keysize 6 addresses more than one data file.
        keysize: (sel & 8 != 0).then_some(6),
    };
    let checkpoint_bytes = if sel & 16 != 0 { 900 } else { 1 << 30 };
    let storage = FaultyStorage::new(u64::from_le_bytes(seed));
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || -> ourdb::Result<Handle> {
        let opts = OpenOptions::new()
            .config(config.clone())
            .sync(sync)
            .checkpoint_bytes(checkpoint_bytes)
            .storage(Arc::new(storage.clone()));
        Ok(if keyed {
            Handle::Keyed(KeyedStore::open(dir.path(), opts)?)
        } else {
            Handle::Plain(opts.open(dir.path())?)
        })
    };
    let mut db = Some(open().expect("a new directory opens"));
    let mut model = Model::default();
    let h = db.as_ref().expect("open");
    model.restart_log(h.db().end(), h.next_id());
    let mut poisoned = false;
    let mut counter = 0u32;
    // `DB_OPS_TRACE=1` prints each operation (for replaying a failure).
    let trace = std::env::var_os("DB_OPS_TRACE").is_some();

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
        // Ops below 230 keep the meaning they had before truncation came,
        // so the seed corpus still runs its old sequences.
        let op = match input.byte() {
            b @ 230.. => TRUNCATE + b % 2,
            b => b % 9,
        };
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
        if trace {
            eprintln!(
                "op {op} arg {arg} (len {len}); poisoned {poisoned}; live {live:?}; since {}",
                model.since.len()
            );
        }
        match op {
            0 | 1 => {
                // A new id (incremental db), any id (key-value db), any key.
                let v = value(counter);
                let (target, next) = if keyed {
                    (Some(u32::from(arg % 24)), 0)
                } else if incremental {
                    let next = if poisoned {
                        0
                    } else {
                        h.db().next_id().expect("next_id")
                    };
                    (None, next)
                } else {
                    (Some(u32::from(arg) % config.record_nr_max), 0)
                };
                match call!(h.put(target, &v)) {
                    Ok(n) => {
                        if target.is_none() {
                            assert!(!model.current.contains_key(&n), "insert reused live id {n}");
                        }
                        model.write(n, Some(v));
                        model.bound(h.db().end(), h.next_id());
                        if durable_each {
                            model.made_durable();
                        }
                    }
                    Err(Error::TableFull(_)) => {}
                    // Refused on a poisoned handle: nothing landed.
                    Err(_) if target.is_none() && next == 0 => {}
                    // It may have landed, under the id it was to get.
                    Err(_) => model.maybe(target.unwrap_or(next), Some(v)),
                }
            }
            2 => {
                let Some(&n) = live.get(arg as usize % live.len().max(1)) else {
                    continue;
                };
                let v = value(counter);
                match call!(h.put(Some(n), &v)) {
                    Ok(_) => {
                        model.write(n, Some(v));
                        model.bound(h.db().end(), h.next_id());
                        if durable_each {
                            model.made_durable();
                        }
                    }
                    Err(_) => model.maybe(n, Some(v)),
                }
            }
            3 => {
                let Some(&n) = live.get(arg as usize % live.len().max(1)) else {
                    continue;
                };
                match call!(h.delete(n)) {
                    Ok(()) => {
                        model.write(n, None);
                        if keyed {
                            // A tombstone: a record like any other.
                            model.bound(h.db().end(), h.next_id());
                        } else {
                            model.plain_deletes.push((model.bounds.len(), n));
                        }
                        if durable_each {
                            model.made_durable();
                        }
                    }
                    Err(_) => model.maybe(n, None),
                }
            }
            4 => {
                if !poisoned {
                    let n = u32::from(arg) % config.record_nr_max;
                    let got = h.get(n).unwrap_or_else(|e| panic!("get({n}): {e}"));
                    assert_eq!(got.as_ref(), model.current.get(&n), "get({n})");
                }
            }
            5 => {
                let r = if arg & 1 == 0 {
                    call!(h.db().sync())
                } else {
                    call!(h.db().checkpoint())
                };
                if r.is_ok() {
                    model.made_durable();
                }
            }
            6 => storage.fail_op(1 + u64::from(arg % 24)),
            TRUNCATE.. => {
                // Cut back to an earlier record boundary of this handle's
                // log (the end itself only when it is the only one); the
                // second kind first arms a fault inside the cut, at the
                // call its next input byte says.
                if op > TRUNCATE {
                    storage.fail_op(1 + u64::from(input.byte() % 32));
                }
                let earlier = model.bounds.len() - 1;
                let i = if earlier > 0 {
                    arg as usize % earlier
                } else {
                    0
                };
                let to = model.bounds[i].0;
                let was_poisoned = poisoned;
                let r = call!(h.truncate_to(to));
                if trace {
                    eprintln!("truncate_to({to}) of bound {i}: {r:?}");
                }
                match r {
                    Ok(t) => {
                        assert_eq!((t.end, h.db().end()), (to, to), "truncate_to({to})");
                        // The next id goes back with the records: exactly
                        // for the keyed store, whose every id is created by
                        // a record; for a plain db, whose deletes are no
                        // records, it may stay higher.
                        let (next, then) = (h.next_id(), model.bounds[i].2);
                        if keyed {
                            assert_eq!(next, then, "next id after truncate_to({to})");
                        } else {
                            assert!(
                                next >= then,
                                "next id {next} after truncate_to({to}) < {then}"
                            );
                        }
                        model.truncated(i);
                        assert_eq!(h.read_all(), model.current, "after truncate_to({to})");
                    }
                    Err(_) if was_poisoned => {}
                    Err(_) => model.maybe_truncated(i),
                }
            }
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
                let (end, next) = (h.db().end(), h.next_id());
                model.recovered_at(h.read_all(), end, next, "after a crash");
                db = Some(h);
                poisoned = false;
            }
            8 => {
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
                if closed.is_ok() {
                    model.recovered(h.read_all(), "after close");
                    // The log is as it was: its boundaries stay targets.
                    let last = model.bounds.last().expect("a boundary").0;
                    assert_eq!(h.db().end(), last, "the end after a clean close");
                } else {
                    let (end, next) = (h.db().end(), h.next_id());
                    model.recovered_at(h.read_all(), end, next, "after close");
                }
                db = Some(h);
                poisoned = false;
            }
        }
    }
    if let Some(h) = db {
        if !poisoned {
            assert_eq!(
                h.read_all(),
                model.current,
                "the open handle reads the model"
            );
        }
        h.abandon();
    }
}
