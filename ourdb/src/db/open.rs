//! Opening a directory: the lock, `ourkv.meta`, the data files, recovery
//! (journal redo, records past the journal, V adoption) and the writer's
//! starting state.

use super::recovery::*;
use super::*;

impl OurDb {
    /// Opens (or creates) `dir` with default options and `config`.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<OurDb> {
        OpenOptions::new().config(config).open(dir)
    }

    pub(super) fn open_with(dir: &Path, opts: OpenOptions) -> Result<OurDb> {
        if !dir.is_dir() {
            if opts.create && !opts.read_only {
                fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
            } else {
                return Err(Error::Io {
                    context: format!("open {}", dir.display()),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                });
            }
        }
        let lock = lock_dir(dir, !opts.read_only)?;
        let io: &dyn Storage = &*opts.storage;
        let file_nrs = datafile::list(dir)?;
        let meta = load_meta(dir, &opts, &file_nrs)?;
        let keysize = meta.keysize;
        let writable = !opts.read_only;
        let mut files = open_files(io, dir, &file_nrs, writable)?;
        let lookup = LookupTable::new(meta.config.record_nr_max);
        let mut report = OpenReport::default();
        let journal = wal::read(dir)?;
        if opts.read_only && journal.as_ref().is_some_and(|j| j.header.cut) {
            // Only a writable open can cut the data the journal disowns.
            return Err(Error::TruncateUnfinished(dir.to_path_buf()));
        }
        // Establish the lookup, the next id and the end of valid data.
        let mut ctx = Recovery {
            dir,
            meta: &meta,
            files: &files,
            lookup: &lookup,
            report: &mut report,
        };
        let recovered = match &journal {
            Some(j) => ctx.redo_journal(j, opts.record_ids.as_deref())?,
            None => ctx.adopt_v(&file_nrs)?,
        };
        let db_writer = if writable {
            Some(Mutex::new(start_writer(
                dir,
                &opts,
                &meta,
                &mut files,
                &file_nrs,
                &lookup,
                &mut report,
                journal.is_some(),
                &recovered,
            )?))
        } else {
            None
        };
        // After the writer's start: it may have removed files.
        let loose_addressing = loose_addressing(keysize, &files)?;
        let next_id = recovered.next_id;
        for f in files.iter().flatten() {
            f.map_exact(f.len()?)?;
        }
        let ro_end = match files.iter().flatten().last() {
            Some(f) => Location::new(f.nr, f.len()? as u32),
            None => Location::NONE,
        };
        if report.redone > 0 || report.torn_data_bytes > 0 {
            tracing::info!(dir = %dir.display(), redone = report.redone, torn = report.torn_data_bytes, "recovered");
        }
        // What open found (recovered, or written before) counts as durable.
        let open_end = match &db_writer {
            Some(m) => {
                let w = m.lock().unwrap_or_else(|e| e.into_inner());
                Location::new(w.active.nr, w.end as u32)
            }
            None => ro_end,
        };
        let db = OurDb {
            dir: dir.to_path_buf(),
            io: opts.storage.clone(),
            meta,
            keysize,
            sync: opts.sync,
            read_only: opts.read_only,
            checkpoint_bytes: opts.checkpoint_bytes,
            envelope_journal: opts.envelope_journal,
            record_ids: opts.record_ids.clone(),
            loose_addressing,
            record_starts: Mutex::default(),
            lookup,
            files: RwLock::new(files),
            writer: db_writer,
            group: Mutex::new(GroupState {
                synced_end: open_end,
                ..GroupState::default()
            }),
            group_cv: Condvar::new(),
            report,
            _lock: lock,
            closed: std::sync::atomic::AtomicBool::new(false),
            busy: std::sync::atomic::AtomicBool::new(false),
            ro_next_id: next_id,
            ro_end,
        };
        Ok(db)
    }
}

/// What recovery established besides the lookup (filled in place).
struct Recovered {
    /// The end of valid data: torn bytes after it are cut.
    data_end: Location,
    next_id: u32,
    /// Journal entries to keep, when a torn tail follows them.
    cut_journal_to: Option<usize>,
    /// Journal entries for records redone from the data, appended (and
    /// synced) at open so that a later recovery starts after them.
    redo_entries: Vec<WalEntry>,
    /// A truncation was under way (`WalHeader::cut`): the data ends at
    /// `data_end`, and everything after it is cut before the first write.
    cut: bool,
}

/// What the recovery steps share.
struct Recovery<'a> {
    dir: &'a Path,
    meta: &'a Meta,
    files: &'a [Option<Arc<DataFile>>],
    lookup: &'a LookupTable,
    report: &'a mut OpenReport,
}

/// The directory's metadata: stored (checked against the given
/// configuration, the record limit raised if asked), or new.
fn load_meta(dir: &Path, opts: &OpenOptions, file_nrs: &[u16]) -> Result<Meta> {
    let io: &dyn Storage = &*opts.storage;
    let stored = Meta::load(dir)?;
    let has_dump = dir.join(lookup::DUMP_DIR).join(lookup::DUMP_DATA).is_file();
    Ok(match stored {
        Some(mut m) => {
            if let Some(c) = &opts.config {
                let ks = c.keysize()?;
                if ks != m.keysize || c.incremental != m.config.incremental {
                    return Err(Error::Config(format!(
                        "{} was created with keysize {} and incremental={}; the given configuration has keysize {ks} and incremental={}",
                        dir.display(), m.keysize, m.config.incremental, c.incremental
                    )));
                }
                // An ourkv directory's record limit may be raised (never
                // lowered): every record already stored is smaller.
                let raise = c.record_size_max.min(MAX_VALUE_LEN as u32);
                if m.origin == Origin::Ourkv && raise > m.config.record_size_max && !opts.read_only
                {
                    m.config.record_size_max = raise;
                    m.store_with(io, dir)?;
                }
            }
            m
        }
        None => {
            let config = opts.config.clone().unwrap_or_default();
            config.validate()?;
            let keysize = config.keysize()?;
            let origin = if file_nrs.is_empty() && !has_dump {
                opts.origin.unwrap_or(Origin::Ourkv)
            } else {
                Origin::V
            };
            Meta {
                keysize,
                config: Config {
                    keysize: Some(keysize),
                    ..config
                },
                origin,
                epoch: 1,
            }
        }
    })
}

/// Opens every data file; a writable open restores the leading zero byte of
/// a file whose creation was cut short.
fn open_files(
    io: &dyn Storage,
    dir: &Path,
    file_nrs: &[u16],
    writable: bool,
) -> Result<Vec<Option<Arc<DataFile>>>> {
    let mut files: Vec<Option<Arc<DataFile>>> = Vec::new();
    for &nr in file_nrs {
        if files.len() <= nr as usize {
            files.resize(nr as usize + 1, None);
        }
        let f = DataFile::open(io, dir, nr, writable)?;
        if writable && f.len()? == 0 {
            // A file switch cut short before the leading zero byte.
            f.write_at(0, &[0])?;
            f.sync_data()?;
        }
        files[nr as usize] = Some(Arc::new(f));
    }
    Ok(files)
}

impl Recovery<'_> {
    /// A directory ourkv wrote: the checkpoint's dump, then the journal's
    /// entries whose records reached the disk, then (for keyed stores)
    /// records past the journal, read back through `record_ids`.
    fn redo_journal(
        &mut self,
        j: &wal::WalContents,
        record_ids: Option<&dyn RecordIds>,
    ) -> Result<Recovered> {
        let Recovery {
            dir,
            meta,
            files,
            lookup,
            ..
        } = *self;
        let report = &mut *self.report;
        let keysize = meta.keysize;
        let incremental = meta.config.incremental;
        let mut next_id: u32 = 1;
        let mut cut_journal_to: Option<usize> = None;
        let mut redo_entries: Vec<WalEntry> = Vec::new();
        if j.header.has_dump {
            let dump = lookup::read_dump(dir, keysize)?.ok_or_else(|| Error::Corrupt {
                path: dir.join(lookup::DUMP_DIR),
                detail: "the journal names a checkpoint dump that is missing".into(),
            })?;
            load_entries(lookup, &dump.entries, dir)?;
            // A truncation's journal names the next id itself: the dump's
            // `.inc` may be from before the cut or after.
            if !j.header.cut {
                next_id = next_id.max(dump.next_id.unwrap_or(1));
            }
        }
        next_id = next_id.max(j.header.next_id);
        let data_end = if j.header.cut {
            cut_end(files, j.header.checkpoint, dir)?
        } else {
            scan_tail(files, j.header.checkpoint, dir)?
        };
        let mut applied = 0usize;
        let mut last_set = None;
        for e in &j.entries {
            match *e {
                WalEntry::Set { id, loc } => {
                    // An entry whose record did not reach the disk was never
                    // acknowledged under a sync policy: it and all after it go.
                    if loc >= j.header.checkpoint && loc >= data_end {
                        break;
                    }
                    if id >= meta.config.record_nr_max {
                        return Err(Error::Corrupt {
                            path: dir.join(wal::WAL_FILE),
                            detail: format!("entry for id {id} beyond record_nr_max"),
                        });
                    }
                    lookup.set(id, loc);
                    if incremental {
                        next_id = next_id.max(id.saturating_add(1));
                    }
                    if loc >= j.header.checkpoint {
                        last_set = Some(loc);
                    }
                }
                WalEntry::Delete { id } => {
                    if id < meta.config.record_nr_max {
                        lookup.set(id, Location::NONE);
                    }
                }
            }
            applied += 1;
        }
        report.redone = applied as u64;
        if applied < j.entries.len() || j.torn_bytes > 0 {
            report.torn_journal_bytes =
                j.torn_bytes + ((j.entries.len() - applied) * wal::ENTRY_LEN) as u64;
            cut_journal_to = Some(applied);
        }
        if j.header.envelopes {
            // Durable records the journal did not get to: redo them
            // from their envelopes, from the last entry's record on.
            let from = last_set.unwrap_or(j.header.checkpoint);
            for (id, loc, deletes) in records_between(files, from, data_end, dir, record_ids)? {
                if last_set == Some(loc) {
                    continue;
                }
                if id >= meta.config.record_nr_max {
                    return Err(Error::Corrupt {
                        path: datafile::data_path(dir, loc.file_nr),
                        detail: format!("the record at {loc} names id {id}, beyond record_nr_max"),
                    });
                }
                lookup.set(id, loc);
                redo_entries.push(WalEntry::Set { id, loc });
                if deletes {
                    lookup.set(id, Location::NONE);
                    redo_entries.push(WalEntry::Delete { id });
                }
                if incremental {
                    next_id = next_id.max(id.saturating_add(1));
                }
                report.redone_from_envelopes += 1;
            }
        }
        Ok(Recovered {
            data_end,
            next_id,
            cut_journal_to,
            redo_entries,
            cut: j.header.cut,
        })
    }

    /// A directory without a journal: V's (or one ourkv never wrote to). V's
    /// dump is loaded and checked; records written after it are rolled forward.
    fn adopt_v(&mut self, file_nrs: &[u16]) -> Result<Recovered> {
        let Recovery {
            dir,
            meta,
            files,
            lookup,
            ..
        } = *self;
        let report = &mut *self.report;
        let keysize = meta.keysize;
        let incremental = meta.config.incremental;
        let mut next_id: u32 = 1;
        // No journal: a V directory (or one ourkv never wrote to).
        report.adopted_v_directory = meta.origin == Origin::V;
        let data_end = match file_nrs.last() {
            Some(&nr) => Location::new(nr, files[nr as usize].as_ref().unwrap().len()? as u32),
            None => Location::NONE,
        };
        match lookup::read_dump(dir, keysize)? {
            Some(dump) => {
                check_v_dump(files, &dump.entries, keysize, dir)?;
                load_entries(lookup, &dump.entries, dir)?;
                next_id = match dump.next_id {
                    Some(n) => n.max(1),
                    None => dump
                        .entries
                        .iter()
                        .map(|e| e.0.saturating_add(1))
                        .max()
                        .unwrap_or(1),
                };
                // V's dump is only as new as its last close(): records written
                // after it are rolled forward where the data decides their ids.
                if let Some(boundary) = dump_boundary(files, &dump.entries, keysize)? {
                    if boundary < data_end {
                        // Zero runs past the boundary are records deleted
                        // before the dump was written (V writes it at close,
                        // and a delete's zeros reach the disk only then or at
                        // a file switch): everything up to the last of them
                        // predates the dump, old versions of deleted ids
                        // included, and only what follows is rolled forward.
                        // So no deleted id comes back and no id is invented.
                        let mut from = boundary;
                        let lens = file_lens(files.iter().flatten())?;
                        for (f, start) in files_from(files, boundary) {
                            let place = scan::Place {
                                file_nr: f.nr,
                                base: 0,
                                lens: &lens,
                                keysize,
                            };
                            scan::walk(place, &f.read_all()?, start, |pos, piece| {
                                if let scan::Piece::ZeroRun(run) = piece {
                                    from = Location::new(f.nr, (pos + run) as u32);
                                }
                            });
                        }
                        let mut rb = Rebuilder::new(lookup, incremental, next_id);
                        for (f, start) in files_from(files, from) {
                            rb.scan_file(f.nr, keysize, &lens, &f.read_all()?, start);
                        }
                        if incremental {
                            next_id = rb.next_id;
                        }
                        if rb.report.records > 0 || !rb.report.is_certain() {
                            tracing::warn!(dir = %dir.display(), report = ?rb.report, "rolled a stale V lookup dump forward");
                            report.rolled_forward = Some(rb.report);
                        }
                    }
                }
            }
            None => {
                let has_records = files
                    .iter()
                    .flatten()
                    .map(|f| f.len())
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .any(|len| len > 1);
                if has_records {
                    return Err(Error::LookupMissing(dir.to_path_buf()));
                }
            }
        }
        Ok(Recovered {
            data_end,
            next_id,
            cut_journal_to: None,
            redo_entries: Vec::new(),
            cut: false,
        })
    }
}

/// Whether lookup entries may have lost their file number or high bits
/// (keysize < 6 with several files, or a file past what it addresses).
fn loose_addressing(keysize: u8, files: &[Option<Arc<DataFile>>]) -> Result<bool> {
    Ok(keysize < 6 && {
        let limit = 1u64 << (8 * keysize as u32);
        let mut loose = files.iter().flatten().count() > 1;
        for f in files.iter().flatten() {
            loose |= f.len()? > limit;
        }
        loose
    })
}

/// A writable open's last steps: cut torn tails, cut or extend the journal
/// (a new one for a new or adopted directory), and the writer's state.
#[allow(clippy::too_many_arguments)]
fn start_writer(
    dir: &Path,
    opts: &OpenOptions,
    meta: &Meta,
    files: &mut Vec<Option<Arc<DataFile>>>,
    file_nrs: &[u16],
    lookup: &LookupTable,
    report: &mut OpenReport,
    has_journal: bool,
    recovered: &Recovered,
) -> Result<Writer> {
    let io: &dyn Storage = &*opts.storage;
    let keysize = meta.keysize;
    let incremental = meta.config.incremental;
    let Recovered {
        data_end,
        next_id,
        cut_journal_to,
        ref redo_entries,
        cut,
    } = *recovered;
    let kept;
    let file_nrs = if cut {
        // Finish a truncation: the data after `data_end` goes, durably,
        // before the checkpoint below clears the journal's mark.
        for &nr in file_nrs.iter().rev().filter(|&&nr| nr > data_end.file_nr) {
            let f = files[nr as usize].take().expect("listed file is open");
            io.remove_file(f.path())
                .ctx(|| format!("remove {}", f.path().display()))?;
        }
        files.truncate(data_end.file_nr as usize + 1);
        let f = files[data_end.file_nr as usize]
            .as_ref()
            .expect("checked by cut_end");
        if f.len()? > data_end.position as u64 {
            f.truncate(data_end.position as u64)?;
        }
        crate::fsutil::sync_dir(io, dir)?;
        report.finished_truncation = Some(data_end);
        tracing::warn!(dir = %dir.display(), to = %data_end, "finished a truncation a crash cut short");
        kept = file_nrs
            .iter()
            .copied()
            .filter(|&nr| nr <= data_end.file_nr)
            .collect::<Vec<_>>();
        &kept[..]
    } else {
        file_nrs
    };
    // Cut torn tails (never anything before them: reopening never truncates).
    if let Some(nr) = file_nrs.last() {
        let f = files[*nr as usize].as_ref().unwrap();
        let len = f.len()?;
        if data_end.file_nr == *nr && (data_end.position as u64) < len {
            report.torn_data_bytes = len - data_end.position as u64;
            tracing::warn!(file = %f.path().display(), bytes = report.torn_data_bytes, "cutting torn tail");
            f.truncate(data_end.position as u64)?;
            if data_end.position == 1 {
                // A file torn at creation: restore V's leading zero byte.
                f.write_at(0, &[0])?;
                f.sync_data()?;
            }
        }
    }
    if let Some(n) = cut_journal_to {
        wal::truncate_to(io, dir, n)?;
    }
    let active = match file_nrs.last() {
        Some(&nr) => files[nr as usize].clone().unwrap(),
        None => {
            let f = Arc::new(DataFile::create(io, dir, 0)?);
            crate::fsutil::sync_dir(io, dir)?;
            files.push(Some(f.clone()));
            f
        }
    };
    let end = active.len()?;
    let wal_file = if cut {
        // The truncated state as a normal checkpoint, mark cleared.
        lookup::write_dump(io, dir, lookup, keysize, incremental.then_some(next_id))?;
        wal::create(
            io,
            dir,
            WalHeader {
                checkpoint: Location::new(active.nr, end as u32),
                next_id,
                has_dump: true,
                envelopes: opts.envelope_journal,
                cut: false,
            },
        )?
    } else if has_journal {
        let f = wal::open_append(io, dir)?;
        if !redo_entries.is_empty() {
            let bytes: Vec<u8> = redo_entries.iter().flat_map(|e| e.encode()).collect();
            let path = dir.join(wal::WAL_FILE);
            f.append(&bytes)
                .ctx(|| format!("append to {}", path.display()))?;
            f.sync_data().ctx(|| format!("fsync {}", path.display()))?;
        }
        f
    } else {
        meta.store_with(io, dir)?;
        // Adopting a V directory: checkpoint at once so that the state just
        // derived (dump, rolled-forward records) is durable before any write.
        if meta.origin == Origin::V {
            lookup::write_dump(io, dir, lookup, keysize, incremental.then_some(next_id))?;
        }
        wal::create(
            io,
            dir,
            WalHeader {
                checkpoint: Location::new(active.nr, end as u32),
                next_id,
                has_dump: meta.origin == Origin::V,
                envelopes: opts.envelope_journal,
                cut: false,
            },
        )?
    };
    Ok(Writer {
        active,
        end,
        buf: Vec::with_capacity(WRITE_BUFFER + MAX_VALUE_LEN + HEADER_LEN),
        buf_start: end,
        wal: Arc::new(wal_file),
        wal_buf: Vec::with_capacity(64 << 10),
        next_id,
        seq: 0,
        dirty: BTreeSet::new(),
        bytes_since_checkpoint: 0,
        poisoned: false,
    })
}
