//! What ourdb writes is what V reads. The reader here is written from
//! docs/FORMAT.md alone; it shares no code with the engine.

use std::collections::BTreeMap;
use std::path::Path;

use ourdb::{Config, OurDb};

/// A V reader: `lookup_dump.db/data`, `.inc` and the `N.db` files.
struct VReader {
    keysize: usize,
    lookup: BTreeMap<u32, (u16, u32)>,
    inc: Option<u32>,
    files: BTreeMap<u16, Vec<u8>>,
}

impl VReader {
    fn open(dir: &Path, keysize: usize) -> VReader {
        let data = std::fs::read(dir.join("lookup_dump.db/data")).expect("dump data");
        assert_eq!(data.len() % (4 + keysize), 0, "dump is whole entries");
        let mut lookup = BTreeMap::new();
        let mut last = None;
        for e in data.chunks(4 + keysize) {
            let id = u32::from_le_bytes(e[..4].try_into().unwrap());
            assert!(last.is_none_or(|l| l < id), "dump ids ascend");
            last = Some(id);
            let loc = &e[4..];
            let (file, pos) = match keysize {
                2 => (0, u16::from_be_bytes([loc[0], loc[1]]) as u32),
                3 => (0, u32::from_be_bytes([0, loc[0], loc[1], loc[2]])),
                4 => (0, u32::from_be_bytes(loc.try_into().unwrap())),
                6 => (
                    u16::from_be_bytes([loc[0], loc[1]]),
                    u32::from_be_bytes(loc[2..6].try_into().unwrap()),
                ),
                k => panic!("keysize {k}"),
            };
            assert!(pos != 0, "dump holds live ids only");
            lookup.insert(id, (file, pos));
        }
        let inc = std::fs::read_to_string(dir.join("lookup_dump.db/.inc"))
            .ok()
            .map(|s| s.trim().parse().expect(".inc is decimal"));
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if let Some(stem) = name.strip_suffix(".db") {
                if let Ok(nr) = stem.parse::<u16>() {
                    let bytes = std::fs::read(dir.join(&name)).unwrap();
                    assert_eq!(bytes.first(), Some(&0), "{name} starts with one zero byte");
                    files.insert(nr, bytes);
                }
            }
        }
        VReader {
            keysize,
            lookup,
            inc,
            files,
        }
    }

    /// (value, previous location) of the record at a location.
    fn record(&self, file: u16, pos: u32) -> (Vec<u8>, (u16, u32)) {
        let f = &self.files[&file];
        let p = pos as usize;
        let len = u16::from_le_bytes([f[p], f[p + 1]]) as usize;
        let crc = u32::from_le_bytes(f[p + 2..p + 6].try_into().unwrap());
        let prev_file = u16::from_be_bytes([f[p + 6], f[p + 7]]);
        let prev_pos = u32::from_be_bytes(f[p + 8..p + 12].try_into().unwrap());
        let value = f[p + 12..p + 12 + len].to_vec();
        assert_eq!(crc32fast::hash(&value), crc, "CRC at {file}:{pos}");
        (value, (prev_file, prev_pos))
    }

    fn history(&self, id: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut loc = self.lookup[&id];
        loop {
            let (v, prev) = self.record(loc.0, loc.1);
            out.push(v);
            if prev == (0, 0) {
                return out;
            }
            loc = prev;
        }
    }
}

/// Writes a random-ish workload, keeps a model, checks the V reader sees it.
fn roundtrip(config: Config, files_expected_min: usize) {
    let dir = tempfile::tempdir().unwrap();
    let keysize = config.keysize().unwrap() as usize;
    let incremental = config.incremental;
    let db = OurDb::open(dir.path(), config.clone()).unwrap();
    let mut model: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut x: u64 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..400u32 {
        let r = next();
        let len = (r % 60) as usize;
        let value: Vec<u8> = (0..len).map(|j| (r >> (j % 8)) as u8 ^ j as u8).collect();
        let live: Vec<u32> = model.keys().copied().collect();
        match r % 10 {
            0..=4 => {
                let id = if incremental {
                    db.insert(&value).unwrap()
                } else {
                    let id = (next() % 500) as u32;
                    db.set(Some(id), &value).unwrap()
                };
                model.entry(id).or_default().insert(0, value);
            }
            5..=7 if !live.is_empty() => {
                let id = live[(next() % live.len() as u64) as usize];
                db.set(Some(id), &value).unwrap();
                model.get_mut(&id).unwrap().insert(0, value);
            }
            8 if !live.is_empty() => {
                let id = live[(next() % live.len() as u64) as usize];
                db.delete(id).unwrap();
                model.remove(&id);
            }
            _ => {
                let _ = i;
            }
        }
    }
    let next_id = db.next_id().ok();
    db.close().unwrap();

    let v = VReader::open(dir.path(), keysize);
    assert!(
        v.files.len() >= files_expected_min,
        "{} data files",
        v.files.len()
    );
    assert_eq!(
        v.lookup.keys().copied().collect::<Vec<_>>(),
        model.keys().copied().collect::<Vec<_>>()
    );
    for (id, versions) in &model {
        assert_eq!(&v.history(*id), versions, "id {id}, keysize {}", v.keysize);
    }
    if incremental {
        assert_eq!(v.inc, next_id);
    } else {
        assert_eq!(v.inc, None, ".inc only in incremental mode");
    }
}

#[test]
fn keysize_2_incremental() {
    roundtrip(
        Config {
            record_nr_max: 1000,
            record_size_max: 1024,
            ..Config::default()
        },
        1,
    );
}

#[test]
fn keysize_3_incremental() {
    roundtrip(
        Config {
            record_nr_max: 100_000,
            record_size_max: 200,
            ..Config::default()
        },
        1,
    );
}

#[test]
fn keysize_4_key_value() {
    // 2^24 * 256 wraps to 0 in V's u32 product: keysize 4 with room for values.
    roundtrip(
        Config {
            record_nr_max: 16_777_216,
            record_size_max: 256,
            incremental: false,
            ..Config::default()
        },
        1,
    );
}

#[test]
fn keysize_4_rejects_values_over_record_size_max() {
    let dir = tempfile::tempdir().unwrap();
    let db = OurDb::open(
        dir.path(),
        Config {
            record_nr_max: 16_777_216,
            record_size_max: 1,
            ..Config::default()
        },
    )
    .unwrap();
    assert!(matches!(
        db.insert(b"ab"),
        Err(ourdb::Error::ValueTooLarge { .. })
    ));
}

#[test]
fn keysize_6_many_files() {
    roundtrip(
        Config {
            record_nr_max: 10_000,
            record_size_max: 4096,
            file_size: 500,
            ..Config::default()
        },
        5,
    );
}

#[test]
fn keysize_6_key_value() {
    roundtrip(
        Config {
            record_nr_max: 100_000,
            record_size_max: 4096,
            incremental: false,
            ..Config::default()
        },
        1,
    );
}
