//! What open uses to recover: V dumps checked and loaded, torn tails found,
//! records past the journal read back, where a stale dump's records end.

use super::*;

/// A V directory stores no configuration, so a wrong one given by the user
/// decodes the dump with the wrong entry width. Check that the entries make
/// sense before anything is written: ids ascend, locations lie inside the data
/// files, and a sample of them names CRC-valid records.
pub(super) fn check_v_dump(
    files: &[Option<Arc<DataFile>>],
    entries: &[(u32, Location)],
    keysize: u8,
    dir: &Path,
) -> Result<()> {
    let wrong = |detail: String| {
        Err(Error::Config(format!(
            "{}: the lookup dump does not fit keysize {keysize} ({detail}); check --keysize or --record-nr-max/--record-size-max",
            dir.display()
        )))
    };
    if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
        return wrong("ids do not ascend".into());
    }
    let nfiles = files.iter().flatten().count();
    let loose = keysize < 6 && nfiles > 1;
    let mut lens = Vec::with_capacity(files.len());
    for f in files {
        lens.push(match f {
            Some(f) => Some(f.len()?),
            None => None,
        });
    }
    // V's own damage leaves a few entries pointing nowhere (a truncated file);
    // a wrong entry width leaves most of them so.
    let step = (entries.len() / 1000).max(1);
    let (mut checked, mut bad) = (0u32, 0u32);
    let mut example = None;
    for &(id, loc) in entries.iter().step_by(step) {
        checked += 1;
        let len = if loose {
            lens.iter().flatten().copied().max()
        } else {
            lens.get(loc.file_nr as usize).copied().flatten()
        };
        let ok = match len {
            None => false,
            Some(len) if loose => loc.position > 0 && (loc.position as u64) < len,
            Some(len) => {
                loc.position > 0
                    && loc.position as u64 + HEADER_LEN as u64 <= len
                    && files[loc.file_nr as usize].as_ref().is_some_and(|f| {
                        let mut hb = [0u8; HEADER_LEN];
                        f.read_at(loc.position as u64, &mut hb).is_ok()
                            && loc.position as u64 + Header::decode(&hb).record_len() <= len
                    })
            }
        };
        if !ok {
            bad += 1;
            example.get_or_insert((id, loc));
        }
    }
    if bad * 2 > checked {
        let (id, loc) = example.expect("a bad entry");
        return wrong(format!(
            "{bad} of {checked} entries checked point outside the data, e.g. id {id} at {loc}"
        ));
    }
    Ok(())
}

pub(super) fn load_entries(
    lookup: &LookupTable,
    entries: &[(u32, Location)],
    dir: &Path,
) -> Result<()> {
    for &(id, loc) in entries {
        if id >= lookup.record_nr_max() {
            return Err(Error::Corrupt {
                path: dir.join(lookup::DUMP_DIR),
                detail: format!(
                    "entry for id {id} beyond record_nr_max {}",
                    lookup.record_nr_max()
                ),
            });
        }
        lookup.set(id, loc);
    }
    Ok(())
}

/// End of the valid records that follow the checkpoint.
pub(super) fn scan_tail(
    files: &[Option<Arc<DataFile>>],
    checkpoint: Location,
    dir: &Path,
) -> Result<Location> {
    let mut end = checkpoint;
    for f in files.iter().flatten() {
        if f.nr < checkpoint.file_nr {
            continue;
        }
        let len = f.len()?;
        let start = if f.nr == checkpoint.file_nr {
            checkpoint.position.max(1) as u64
        } else {
            1
        };
        if f.nr > checkpoint.file_nr && len == 0 {
            // Created, killed before its leading zero byte was written.
            end = Location::new(f.nr, 1);
            continue;
        }
        if start > len {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: format!(
                    "the journal's checkpoint {checkpoint} lies past the end of the file ({len} bytes): data was lost"
                ),
            });
        }
        // Only the bytes after the checkpoint: they bound the work of recovery.
        let tail = f.read_range(start, len - start)?;
        let valid = start + scan::valid_end(&tail, 0) as u64;
        end = Location::new(f.nr, valid as u32);
        if valid < len {
            if f.nr != files.iter().flatten().last().map_or(f.nr, |l| l.nr) {
                tracing::warn!(dir = %dir.display(), file = f.nr, "invalid bytes before the last data file");
            }
            break;
        }
    }
    Ok(end)
}

/// Where the data ends by a truncation's journal: at its checkpoint, which
/// must lie inside an existing data file.
pub(super) fn cut_end(
    files: &[Option<Arc<DataFile>>],
    checkpoint: Location,
    dir: &Path,
) -> Result<Location> {
    let Some(Some(f)) = files.get(checkpoint.file_nr as usize) else {
        return Err(Error::Corrupt {
            path: dir.join(wal::WAL_FILE),
            detail: format!(
                "a truncation to {checkpoint} was under way, but data file {} is missing",
                checkpoint.file_nr
            ),
        });
    };
    let len = f.len()?;
    if checkpoint.position == 0 || checkpoint.position as u64 > len {
        return Err(Error::Corrupt {
            path: f.path().to_path_buf(),
            detail: format!(
                "a truncation to {checkpoint} was under way, but the file holds {len} bytes: data was lost"
            ),
        });
    }
    Ok(checkpoint)
}

/// The records from `from` (a record boundary) to `end`: the id each sets,
/// its location, and whether it deletes, as `ids` reads them from the values.
pub(super) fn records_between(
    files: &[Option<Arc<DataFile>>],
    from: Location,
    end: Location,
    dir: &Path,
    ids: Option<&dyn RecordIds>,
) -> Result<Vec<(u32, Location, bool)>> {
    let mut out = Vec::new();
    for f in files.iter().flatten() {
        if f.nr < from.file_nr || f.nr > end.file_nr {
            continue;
        }
        let start = if f.nr == from.file_nr {
            from.position.max(1) as u64
        } else {
            1
        };
        let stop = if f.nr == end.file_nr {
            end.position as u64
        } else {
            f.len()?
        };
        if stop <= start {
            continue;
        }
        let bytes = f.read_range(start, stop - start)?;
        let mut pos = 0usize;
        while let Some(h) = scan::record_at(&bytes, pos) {
            let next = pos + h.record_len() as usize;
            let loc = Location::new(f.nr, (start + pos as u64) as u32);
            let Some(ids) = ids else {
                return Err(Error::Config(format!(
                    "{}: records past the journal carry their ids in a format the keyed layer knows; open it as a keyed store",
                    dir.display()
                )));
            };
            let (id, deletes) =
                ids.record_ids(&bytes[pos + HEADER_LEN..next]).map_err(|e| Error::Corrupt {
                    path: datafile::data_path(dir, f.nr),
                    detail: format!(
                        "the journal says records carry their ids, but the one at {loc} does not: {e}"
                    ),
                })?;
            out.push((id, loc, deletes));
            pos = next;
        }
    }
    Ok(out)
}

/// Where the records covered by a V dump end: past the furthest record it names.
/// `None` when the keysize cannot tell files apart.
/// The data files from `at` on, each with the offset to start reading at.
/// The length of each data file.
pub(super) fn file_lens<'a>(
    files: impl IntoIterator<Item = &'a Arc<DataFile>>,
) -> Result<BTreeMap<u16, u64>> {
    files.into_iter().map(|f| Ok((f.nr, f.len()?))).collect()
}

pub(super) fn files_from(
    files: &[Option<Arc<DataFile>>],
    at: Location,
) -> impl Iterator<Item = (&Arc<DataFile>, usize)> {
    files
        .iter()
        .flatten()
        .filter(move |f| f.nr >= at.file_nr)
        .map(move |f| {
            let start = if f.nr == at.file_nr {
                at.position as usize
            } else {
                1
            };
            (f, start)
        })
}

pub(super) fn dump_boundary(
    files: &[Option<Arc<DataFile>>],
    entries: &[(u32, Location)],
    keysize: u8,
) -> Result<Option<Location>> {
    let nfiles = files.iter().flatten().count();
    if keysize < 6 {
        // Short entries that lost high bits cannot say where the dump ends.
        let limit = 1u64 << (8 * keysize as u32);
        for f in files.iter().flatten() {
            if nfiles > 1 || f.len()? > limit {
                return Ok(None);
            }
        }
    }
    let Some(&(_, far)) = entries.iter().max_by_key(|(_, l)| *l) else {
        // An empty dump covers nothing: everything after byte 0 is new.
        let first = files.iter().flatten().next().map_or(0, |f| f.nr);
        return Ok(Some(Location::new(first, 1)));
    };
    let Some(Some(f)) = files.get(far.file_nr as usize) else {
        return Ok(None);
    };
    let mut hb = [0u8; HEADER_LEN];
    if f.read_at(far.position as u64, &mut hb).is_err() {
        return Ok(None);
    }
    let h = Header::decode(&hb);
    Ok(Some(Location::new(
        far.file_nr,
        (far.position as u64 + h.record_len()) as u32,
    )))
}
