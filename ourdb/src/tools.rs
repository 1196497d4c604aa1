//! Offline tools: `verify`, `recover` (a V directory without its lookup dump)
//! and `compact`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::datafile::{self, DataFile};
use crate::db::OpenOptions;
use crate::error::{Error, IoContext, Result};
use crate::location::Location;
use crate::lookup::{self, LookupTable};
use crate::meta::{Meta, Origin};
use crate::scan::{self, RebuildReport, Rebuilder};

/// Told how far a long tool run has got (the CLI draws a progress bar on a
/// terminal and writes log lines otherwise).
pub trait Progress {
    /// A new phase of `total` units (ids or bytes); 0 when unknown.
    fn start(&self, phase: &str, total: u64);
    /// `n` more units done.
    fn advance(&self, n: u64);
    /// The run is over.
    fn finish(&self) {}
}

/// No progress reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What `verify` checked and found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Live ids checked.
    pub live_ids: u64,
    /// Record versions read and CRC-checked through the history chains.
    pub versions_checked: u64,
    /// Data file bytes scanned front to back.
    pub bytes_scanned: u64,
    /// Each problem found, in words; empty for a sound directory.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a directory without changing it: every live id's whole history
/// (CRCs, chains), shared locations, and the framing of the data files.
pub fn verify(dir: &Path, config: Option<Config>) -> Result<VerifyReport> {
    verify_with(dir, config, &Quiet)
}

/// [`verify`], reporting progress: ids, then data file bytes.
pub fn verify_with(
    dir: &Path,
    config: Option<Config>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let mut opts = OpenOptions::new()
        .read_only(true)
        .create(false)
        .record_ids(std::sync::Arc::new(crate::keyed::EnvelopeIds));
    opts.config = config;
    let db = opts.open(dir)?;
    let mut report = VerifyReport::default();
    let mut seen = std::collections::HashMap::new();
    let ids: Vec<u32> = db.ids().collect();
    progress.start("ids", ids.len() as u64);
    for id in ids {
        progress.advance(1);
        report.live_ids += 1;
        match db.get_history(id, usize::MAX) {
            Ok(h) => report.versions_checked += h.len() as u64,
            Err(e) => report.problems.push(format!("id {id}: {e}")),
        }
        if let Some(loc) = db.raw_location(id) {
            if let Some(other) = seen.insert(loc, id) {
                report
                    .problems
                    .push(format!("ids {other} and {id} share the location {loc}"));
            }
        }
    }
    // Framing: ourkv writes records back to back; V also leaves zero runs.
    let lens = file_lens(dir)?;
    progress.start("bytes", lens.values().sum());
    for nr in datafile::list(dir)? {
        let f = DataFile::open(&crate::storage::RealStorage, dir, nr, false)?;
        let bytes = f.read_all()?;
        progress.advance(bytes.len() as u64);
        report.bytes_scanned += bytes.len() as u64;
        if bytes.first().is_some_and(|&b| b != 0) {
            report
                .problems
                .push(format!("{nr}.db does not start with the 0x00 byte"));
        }
        if db.meta().origin == Origin::Ourkv {
            let end = scan::valid_end(&bytes, 1);
            if end < bytes.len() {
                report.problems.push(format!(
                    "{nr}.db: {} bytes at {end} are no valid record",
                    bytes.len() - end
                ));
            }
        } else {
            let place = scan::Place {
                file_nr: nr,
                base: 0,
                lens: &lens,
                keysize: db.keysize(),
            };
            scan::walk(place, &bytes, 1, |pos, piece| {
                if let scan::Piece::Bad(what) = piece {
                    report.problems.push(format!("{nr}.db:{pos}: {what}"));
                }
            });
        }
    }
    Ok(report)
}

/// Rebuilds the lookup dump (and `.inc`) of a V directory that has data files
/// but no dump (V never closed it). Writes nothing else.
pub fn recover(dir: &Path, config: &Config) -> Result<RebuildReport> {
    recover_with(dir, config, &Quiet)
}

/// [`recover`], reporting progress in data file bytes scanned.
pub fn recover_with(dir: &Path, config: &Config, progress: &dyn Progress) -> Result<RebuildReport> {
    if Meta::load(dir)?.is_some() {
        return Err(Error::Config(format!(
            "{} was written by ourkv: its journal recovers it on open",
            dir.display()
        )));
    }
    config.validate()?;
    let keysize = config.keysize()?;
    let _lock = crate::db::lock_dir(dir, true)?;
    let table = LookupTable::new(config.record_nr_max);
    let mut rb = Rebuilder::new(&table, config.incremental, 1);
    let lens = file_lens(dir)?;
    progress.start("bytes", lens.values().sum());
    for nr in datafile::list(dir)? {
        let f = DataFile::open(&crate::storage::RealStorage, dir, nr, false)?;
        let bytes = f.read_all()?;
        rb.scan_file(nr, keysize, &lens, &bytes, 1);
        progress.advance(bytes.len() as u64);
    }
    let next_id = rb.next_id;
    let mut report = rb.report;
    for (id, loc) in table.iter().collect::<Vec<_>>() {
        if !loc.fits(keysize) {
            report.undecided.push(format!(
                "id {id} lives at {loc}, which keysize {keysize} cannot store: left out"
            ));
            table.set(id, Location::NONE);
        }
    }
    lookup::write_dump(
        &crate::storage::RealStorage,
        dir,
        &table,
        keysize,
        config.incremental.then_some(next_id),
    )?;
    Ok(report)
}

/// What `compact` did.
#[derive(Debug, Clone)]
pub struct CompactReport {
    /// Live ids copied.
    pub live_ids: u64,
    /// Record versions copied (history included).
    pub versions_kept: u64,
    /// Data file bytes before.
    pub bytes_before: u64,
    /// Data file bytes after.
    pub bytes_after: u64,
    /// The new epoch (one more than before).
    pub epoch: u64,
}

fn file_lens(dir: &Path) -> Result<std::collections::BTreeMap<u16, u64>> {
    datafile::list(dir)?
        .into_iter()
        .map(|nr| {
            let len = std::fs::metadata(datafile::data_path(dir, nr))
                .ctx(|| format!("stat {nr}.db"))?
                .len();
            Ok((nr, len))
        })
        .collect()
}

fn dir_data_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for nr in datafile::list(dir)? {
        n += std::fs::metadata(datafile::data_path(dir, nr))
            .ctx(|| format!("stat {nr}.db"))?
            .len();
    }
    Ok(n)
}

/// Rewrites `dir` with only live ids (and up to `history` versions of each,
/// all of them when `None`), then swaps the new directory in atomically.
/// Ids, values and the next id are kept; the epoch goes up by one.
pub fn compact(
    dir: &Path,
    config: Option<Config>,
    history: Option<usize>,
) -> Result<CompactReport> {
    compact_with(dir, config, history, &Quiet)
}

/// [`compact`], reporting progress in ids copied.
pub fn compact_with(
    dir: &Path,
    config: Option<Config>,
    history: Option<usize>,
    progress: &dyn Progress,
) -> Result<CompactReport> {
    let mut opts = OpenOptions::new()
        .create(false)
        .record_ids(std::sync::Arc::new(crate::keyed::EnvelopeIds));
    opts.config = config;
    let src = opts.open(dir)?;
    // A transaction a crash cut short must not come back whole-looking.
    crate::keyed::cut_torn_group(&src)?;
    src.flush()?;
    let tmp = sibling(dir, "compact-tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ctx(|| format!("remove stale {}", tmp.display()))?;
    }
    let bytes_before = dir_data_bytes(dir)?;
    let depth = history.unwrap_or(usize::MAX).max(1);
    let mut cfg = src.config().clone();
    cfg.keysize = Some(src.keysize());
    let dst = OpenOptions::new()
        .config(cfg)
        .sync(crate::config::SyncPolicy::Never)
        .origin(src.meta().origin)
        .open(&tmp)?;
    let mut report = CompactReport {
        live_ids: 0,
        versions_kept: 0,
        bytes_before,
        bytes_after: 0,
        epoch: src.meta().epoch + 1,
    };
    let result = (|| {
        let ids: Vec<u32> = src.ids().collect();
        progress.start("ids", ids.len() as u64);
        for id in ids {
            progress.advance(1);
            // A chunked value counts once and keeps its chunks.
            let versions = crate::keyed::compaction_versions(&src, id, depth)?;
            report.live_ids += 1;
            report.versions_kept += versions.len() as u64;
            for v in versions.iter().rev() {
                match crate::keyed::ungrouped(v) {
                    Some(plain) => dst.import(id, &plain)?,
                    None => dst.import(id, v)?,
                }
            }
        }
        if src.config().incremental {
            dst.reserve_ids_below(src.next_id()?)?;
        }
        dst.close()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut meta = Meta::load(&tmp)?.ok_or_else(|| Error::Corrupt {
        path: tmp.clone(),
        detail: "compacted directory has no metadata".into(),
    })?;
    meta.epoch = report.epoch;
    meta.store(&tmp)?;
    report.bytes_after = dir_data_bytes(&tmp)?;
    exchange(&tmp, dir)?;
    crate::fsutil::sync_dir(
        &crate::storage::RealStorage,
        dir.parent().unwrap_or(Path::new(".")),
    )?;
    drop(src);
    std::fs::remove_dir_all(&tmp).ctx(|| format!("remove {}", tmp.display()))?;
    Ok(report)
}

fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    dir.with_file_name(format!(".{name}.{tag}"))
}

/// Swaps two directories in one step (renameat2 RENAME_EXCHANGE): a crash
/// leaves either the old or the new directory in place, never neither.
/// A path holding a NUL byte fails with `EINVAL`.
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
        .map_err(std::io::Error::from)
        .ctx(|| format!("exchange {} and {}", a.display(), b.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records every phase with its total and what was reported done.
    #[derive(Default)]
    struct Counting(RefCell<Vec<(String, u64, u64)>>);

    impl Progress for Counting {
        fn start(&self, phase: &str, total: u64) {
            self.0.borrow_mut().push((phase.to_string(), total, 0));
        }
        fn advance(&self, n: u64) {
            self.0.borrow_mut().last_mut().expect("a phase").2 += n;
        }
    }

    #[test]
    fn tools_report_each_phase_to_its_total() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db");
        let db = OpenOptions::new()
            .config(Config {
                file_size: 4096,
                keysize: Some(6),
                ..Config::default()
            })
            .open(&d)
            .unwrap();
        for i in 0..300u32 {
            db.insert(&i.to_le_bytes().repeat(10)).unwrap();
        }
        db.close().unwrap();

        let p = Counting::default();
        let r = verify_with(&d, None, &p).unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
        let phases = p.0.into_inner();
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0], ("ids".to_string(), 300, 300));
        assert_eq!(phases[1].0, "bytes");
        assert_eq!(phases[1].1, r.bytes_scanned);
        assert_eq!(phases[1].2, r.bytes_scanned);

        let p = Counting::default();
        let c = compact_with(&d, None, None, &p).unwrap();
        assert_eq!(c.live_ids, 300);
        assert_eq!(p.0.into_inner(), vec![("ids".to_string(), 300, 300)]);
    }

    #[test]
    fn exchange_swaps_directories_or_reports_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), b"").unwrap();
        std::fs::write(b.join("y"), b"").unwrap();
        exchange(&a, &b).unwrap();
        assert!(a.join("y").exists() && b.join("x").exists());
        assert!(!a.join("x").exists() && !b.join("y").exists());

        let gone = dir.path().join("gone");
        match exchange(&a, &gone).unwrap_err() {
            Error::Io { context, source } => {
                assert!(context.starts_with("exchange "), "{context}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            e => panic!("{e}"),
        }
        let nul = dir.path().join("a\0b");
        match exchange(&a, &nul).unwrap_err() {
            Error::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput)
            }
            e => panic!("{e}"),
        }
    }
}
