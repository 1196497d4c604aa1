//! `ourkv db`: tools on one OurDB directory (V's or ourkv's).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::Engine;
use ourdb::{Config, OpenOptions, OurDb};

use crate::cli::{DbCmd, Shape};

impl Shape {
    fn given(&self) -> bool {
        self.keysize.is_some() || self.record_nr_max.is_some() || self.record_size_max.is_some()
    }

    /// The configuration the flags describe, V's defaults filling the gaps.
    fn config(&self) -> Config {
        let d = Config::default();
        Config {
            // With only a keysize, every id a lookup entry can name is allowed.
            record_nr_max: self.record_nr_max.unwrap_or(if self.keysize.is_some() {
                u32::MAX
            } else {
                d.record_nr_max
            }),
            record_size_max: self.record_size_max.unwrap_or(d.record_size_max),
            file_size: self.file_size.unwrap_or(d.file_size),
            incremental: !self.kv,
            keysize: self.keysize,
        }
    }

    /// The configuration to open an existing directory with.
    fn for_existing(&self, dir: &Path) -> Result<Option<Config>> {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        if ourdb::Meta::load(dir)?.is_some() {
            return Ok(self.given().then(|| self.config()));
        }
        if !self.given() {
            bail!(
                "{} is a V directory (no {}): give its shape with --keysize K or --record-nr-max N --record-size-max S",
                dir.display(),
                ourdb::META_FILE
            );
        }
        Ok(Some(self.config()))
    }
}

pub(crate) fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

pub(crate) fn open_read_only(dir: &Path, shape: &Shape) -> Result<OurDb> {
    let mut opts = OpenOptions::new()
        .read_only(true)
        .create(false)
        .record_ids(std::sync::Arc::new(ourdb::keyed::EnvelopeIds));
    opts.config = shape.for_existing(dir)?;
    opts.open(dir)
        .with_context(|| format!("open {}", dir.display()))
}

pub(crate) fn dump(dir: &Path, shape: &Shape, history: Option<usize>) -> Result<ExitCode> {
    let db = open_read_only(dir, shape)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0u64;
    for id in db.ids().collect::<Vec<_>>() {
        let line = match history {
            None => db.get(id).map(|v| DumpLine {
                id,
                value: b64(&v),
                history: None,
            }),
            Some(d) => db.get_history(id, d.max(1)).map(|h| DumpLine {
                id,
                value: b64(&h[0]),
                history: Some(h.iter().take(d).map(|v| b64(v)).collect()),
            }),
        };
        match line {
            Ok(l) => writeln!(out, "{}", serde_json::to_string(&l)?)?,
            Err(e) => {
                failed += 1;
                eprintln!("id {id}: {e}");
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} ids could not be read; the dump is incomplete");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `db dump` / `db restore`; field order is the contract.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct DumpLine {
    id: u32,
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history: Option<Vec<String>>,
}

pub(crate) fn restore(dir: &Path, shape: &Shape, allow_gaps: bool) -> Result<ExitCode> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: restore writes a new directory",
            dir.display()
        );
    }
    let existed = dir.exists();
    let r = restore_into(dir, shape, allow_gaps);
    if r.is_err() {
        // The directory was new (or empty): a refused restore leaves nothing
        // half-written behind.
        let _ = std::fs::remove_dir_all(dir);
        if existed {
            let _ = std::fs::create_dir(dir);
        }
    }
    r
}

fn restore_into(dir: &Path, shape: &Shape, allow_gaps: bool) -> Result<ExitCode> {
    let config = shape.config();
    let incremental = config.incremental;
    let db = OpenOptions::new()
        .config(config)
        .sync(ourdb::SyncPolicy::Never)
        .open(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let dec = base64::engine::general_purpose::STANDARD;
    let mut n = 0u64;
    let mut last_id = 0u32;
    let progress = crate::progress::for_task("restore");
    progress.start("ids", 0);
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let l: DumpLine = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a dump line", i + 1))?;
        if incremental && !allow_gaps && Some(l.id) != last_id.checked_add(1) {
            bail!(
                "line {}: id {} after id {last_id}: in incremental mode V needs ids 1, 2, 3, … \
                 in order, without gaps. Restore with --kv (key-value mode: V opens it with \
                 incremental off), or pass --allow-gaps (ourkv reads the result; V cannot open it)",
                i + 1,
                l.id
            );
        }
        last_id = l.id;
        let current = dec
            .decode(&l.value)
            .with_context(|| format!("line {}: value is not base64", i + 1))?;
        // Oldest version first, so the chain on disk matches the history.
        let mut versions = match l.history {
            Some(h) if !h.is_empty() => h
                .iter()
                .map(|v| dec.decode(v))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("line {}: history is not base64", i + 1))?,
            _ => vec![current.clone()],
        };
        if versions[0] != current {
            bail!("line {}: history[0] differs from value", i + 1);
        }
        versions.reverse();
        for v in &versions {
            db.import(l.id, v)
                .with_context(|| format!("line {}: id {}", i + 1, l.id))?;
        }
        n += 1;
        progress.advance(1);
    }
    progress.finish();
    db.close()?;
    eprintln!("restored {n} ids into {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn info(dir: &Path, shape: &Shape) -> Result<ExitCode> {
    let db = open_read_only(dir, shape)?;
    let c = db.config();
    let m = db.meta();
    // Written at once, so a reader that stops early (`| head`) ends it
    // cleanly rather than a print's panic.
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "directory: {}", dir.display())?;
    writeln!(
        out,
        "origin: {}",
        match m.origin {
            ourdb::Origin::Ourkv => "ourkv",
            ourdb::Origin::V => "v",
        }
    )?;
    writeln!(out, "epoch: {}", m.epoch)?;
    writeln!(out, "keysize: {}", db.keysize())?;
    writeln!(out, "record_nr_max: {}", c.record_nr_max)?;
    writeln!(out, "record_size_max: {}", c.record_size_max)?;
    writeln!(out, "file_size: {}", c.file_size)?;
    writeln!(
        out,
        "mode: {}",
        if c.incremental {
            "incremental"
        } else {
            "key-value"
        }
    )?;
    writeln!(out, "live_ids: {}", db.len())?;
    match db.next_id() {
        Ok(n) => writeln!(out, "next_id: {n}")?,
        Err(_) => writeln!(out, "next_id: -")?,
    }
    for nr in ourdb::files::list_data_files(dir)? {
        let p = ourdb::files::data_path(dir, nr);
        writeln!(
            out,
            "data_file: {nr}.db {} bytes",
            std::fs::metadata(&p)?.len()
        )?;
    }
    let r = db.open_report();
    writeln!(out, "journal_entries_redone: {}", r.redone)?;
    if let Some(rf) = &r.rolled_forward {
        writeln!(out, "rolled_forward_records: {}", rf.records)?;
    }
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one `ourkv db` command.
pub(crate) fn run(cmd: DbCmd) -> Result<ExitCode> {
    match cmd {
        DbCmd::Dump {
            dir,
            shape,
            history,
        } => dump(&dir, &shape, history),
        DbCmd::Restore {
            dir,
            shape,
            allow_gaps,
        } => restore(&dir, &shape, allow_gaps),
        DbCmd::Info { dir, shape } => info(&dir, &shape),
        DbCmd::Verify { dir, shape } => {
            let progress = crate::progress::for_task("verify");
            let r = ourdb::tools::verify_with(&dir, shape.for_existing(&dir)?, &*progress)?;
            progress.finish();
            println!(
                "live_ids: {}\nversions_checked: {}\nbytes_scanned: {}\nproblems: {}",
                r.live_ids,
                r.versions_checked,
                r.bytes_scanned,
                r.problems.len()
            );
            for p in &r.problems {
                println!("problem: {p}");
            }
            Ok(if r.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        DbCmd::Recover { dir, shape, strict } => {
            if shape.for_existing(&dir)?.is_none() {
                bail!(
                    "{} was written by ourkv: its journal recovers it on open",
                    dir.display()
                );
            }
            let progress = crate::progress::for_task("recover");
            let r = ourdb::tools::recover_with(&dir, &shape.config(), &*progress)?;
            progress.finish();
            println!(
                "records: {}\ninserts: {}\nupdates: {}\ndeleted: {}",
                r.records, r.inserts, r.updates, r.deleted
            );
            for a in &r.assumptions {
                println!("assumed: {a}");
            }
            for u in &r.undecided {
                println!("undecided: {u}");
            }
            Ok(if strict && !r.is_certain() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        DbCmd::Compact {
            dir,
            shape,
            history,
        } => {
            let progress = crate::progress::for_task("compact");
            let r =
                ourdb::tools::compact_with(&dir, shape.for_existing(&dir)?, history, &*progress)?;
            progress.finish();
            println!(
                "live_ids: {}\nversions_kept: {}\nbytes_before: {}\nbytes_after: {}\nepoch: {}",
                r.live_ids, r.versions_kept, r.bytes_before, r.bytes_after, r.epoch
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
