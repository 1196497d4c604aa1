//! Cutting the log back: `truncate_to` undoes every record at or after a
//! place, newest first, so that the database is what it was when it ended
//! there. A deposed master cuts the tail its successor never had, then
//! resyncs by shipping from that place (docs/FAILOVER-DESIGN.md, §3).
//!
//! Crash story (docs/FORMAT.md, "Truncation"): the old state is made
//! durable; then a journal that holds the truncated lookup and says "the
//! data ends at the checkpoint" replaces the old one (the commit point);
//! then the data is cut and made durable; then a normal checkpoint clears
//! the mark. An open that finds the mark finishes the cut first.

use super::*;

/// What [`OurDb::truncate_to`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Where the data ended before.
    pub old_end: Location,
    /// Where it ends now: the place asked for.
    pub end: Location,
    /// Records undone.
    pub records: u64,
    /// Ids whose lookup entry changed.
    pub ids: u64,
    /// Bytes cut, over all data files (their leading zero bytes included).
    pub bytes: u64,
    /// Data files removed whole.
    pub files_removed: u16,
}

/// One record to undo: where it is, its id, and the id's version before it.
struct Undo {
    at: Location,
    id: u32,
    prev: Location,
}

/// Reads at least a whole record of the largest size per chunk.
const WALK_CHUNK: u64 = 4 << 20;

/// Walks the whole, CRC-valid records of `f` from offset `from` up to
/// `until`, calling `each(offset, header, value)`. Returns where the walk
/// stopped: `until`, or the first offset that starts no whole record there.
fn walk_records(
    f: &DataFile,
    from: u64,
    until: u64,
    mut each: impl FnMut(u64, &Header, &[u8]) -> Result<()>,
) -> Result<u64> {
    let mut pos = from;
    while pos < until {
        let n = (until - pos).min(WALK_CHUNK);
        let buf = f.read_range(pos, n)?;
        let mut off = 0usize;
        while let Some(h) = scan::record_at(&buf, off) {
            let next = off + h.record_len() as usize;
            each(pos + off as u64, &h, &buf[off + HEADER_LEN..next])?;
            off = next;
        }
        // A chunk holds any whole record that starts at its first byte.
        if off == 0 {
            break;
        }
        pos += off as u64;
    }
    Ok(pos)
}

impl OurDb {
    /// Cuts the log back to `to`: every record at or after it is undone,
    /// newest first (each id's lookup entry goes back to the record's
    /// previous version, or is cleared if the record created the id; the
    /// next id of incremental mode goes back below the ids created), the
    /// data file `to` lies in is cut there and later data files are removed.
    /// Afterwards the database is what it was when it ended at `to`, and
    /// appending the same records again (`append_shipped`) gives the same
    /// files byte for byte.
    ///
    /// * `to` equal to the end (or the start of the file after the last
    ///   one, the same place in the log) changes nothing.
    /// * `to` past the end: [`Error::TruncatePastEnd`]; `to` not where a
    ///   record starts or its file's records end: [`Error::BadCursor`]. In
    ///   both cases nothing changes.
    /// * Records name no id in V's format. With `OpenOptions::record_ids`
    ///   (a keyed store's directory) the ids come from the records. Without
    ///   it they come from the live ids' version chains, so a record whose
    ///   id was deleted later is left as it is: a plain `delete` writes no
    ///   record, so it is no part of the log and is not undone. An id
    ///   deleted after `to` stays deleted, and an id created and deleted
    ///   after `to` is not seen, so the next id may stay above what it was
    ///   at `to`.
    /// * V directories whose lookup entries lose their file number or high
    ///   bits (keysize below 6 with several data files, or a file longer
    ///   than the keysize addresses) are refused.
    /// * A crash at any point leaves the old state or the truncated one;
    ///   an open finishes a cut that was under way.
    /// * Reads racing with the cut may fail for records being cut.
    ///
    /// A failure after the cut began poisons the handle (reopen it: the
    /// open finishes the cut).
    pub fn truncate_to(&self, to: Location) -> Result<Truncated> {
        let ids = self.record_ids.clone();
        self.truncate_with(to, ids.as_deref(), &mut |_, _| Ok(()))
    }

    /// `truncate_to`, reading ids from the records through `ids` if given,
    /// and showing `visit` each record at or after `to`, in log order,
    /// before anything changes (an error from it stops the truncation
    /// with nothing changed). Only called with `ids`, `visit` sees every
    /// record; the keyed layer learns the keys to restore that way.
    pub(crate) fn truncate_with(
        &self,
        to: Location,
        ids: Option<&dyn RecordIds>,
        visit: &mut dyn FnMut(Location, &[u8]) -> Result<()>,
    ) -> Result<Truncated> {
        // Take the group-commit leader's place, so that no sync running
        // outside the writer lock reports an end from before the cut.
        {
            let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
            while g.leader {
                g = self.group_cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.failed {
                return Err(Error::Poisoned);
            }
            g.leader = true;
        }
        let mut done = None;
        let r = self.writer().and_then(|mut w| {
            let r = self.truncate_locked(&mut w, to, ids, visit);
            done = Some((w.seq, Location::new(w.active.nr, w.end as u32), w.poisoned));
            r
        });
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        g.leader = false;
        if let Some((seq, end, poisoned)) = done {
            if poisoned {
                g.failed = true;
            } else if r.is_ok() {
                // Everything up to the new end is durable: the truncation
                // synced it before it began.
                g.synced_seq = g.synced_seq.max(seq);
                g.synced_end = end;
            }
        }
        self.group_cv.notify_all();
        r
    }

    fn truncate_locked(
        &self,
        w: &mut Writer,
        to: Location,
        ids: Option<&dyn RecordIds>,
        visit: &mut dyn FnMut(Location, &[u8]) -> Result<()>,
    ) -> Result<Truncated> {
        // The old state durable first: a crash from here on leaves it or
        // the truncated one.
        self.sync_locked(w)?;
        let end = Location::new(w.active.nr, w.end as u32);
        let mut t = Truncated {
            old_end: end,
            end,
            ..Truncated::default()
        };
        let next_file = end.file_nr.checked_add(1).map(|nr| Location::new(nr, 1));
        if to == end || Some(to) == next_file {
            return Ok(t);
        }
        if to > end {
            return Err(Error::TruncatePastEnd { to, end });
        }
        if self.loose_addressing {
            return Err(Error::Config(format!(
                "{}: keysize {} lookup entries do not name their data file here, so versions cannot be undone",
                self.dir.display(),
                self.keysize
            )));
        }
        let bad = |detail: String| Error::BadCursor { cursor: to, detail };
        let first = self
            .file(to.file_nr)
            .ok_or_else(|| bad(format!("no data file {}", to.file_nr)))?;
        if to.position == 0 {
            return Err(bad("byte 0 of a data file holds no record".into()));
        }
        let first_len = first.len()?;
        if to.position as u64 > first_len {
            return Err(bad(format!("{}.db holds {first_len} bytes", to.file_nr)));
        }
        // Records are found only by walking a file from its start.
        let reached = walk_records(&first, 1, to.position as u64, |_, _, _| Ok(()))?;
        if reached != to.position as u64
            && to.position as u64 != first_len
            && !self.starts_after_zeros(&first, to)?
        {
            return Err(bad(format!(
                "the records of {}.db run from byte 1 to {reached}, then no record starts there",
                to.file_nr
            )));
        }
        let mut undo = match ids {
            Some(ids) => self.tail_records(to, end, ids, visit)?,
            None => self.tail_chains(to)?,
        };
        // Newest first: each id ends at the version before its oldest
        // undone record.
        undo.sort_by_key(|u| std::cmp::Reverse(u.at));
        t.records = undo.len() as u64;
        let mut back: std::collections::HashMap<u32, Location> = Default::default();
        for u in &undo {
            back.insert(u.id, u.prev);
        }
        let mut changes: Vec<(u32, Location)> = back.into_iter().collect();
        changes.sort_unstable();
        if let Some(&(id, loc)) = changes.iter().find(|c| c.1 >= to) {
            return Err(Error::Corrupt {
                path: datafile::data_path(&self.dir, loc.file_nr),
                detail: format!("id {id}'s version before the cut would be {loc}, at or after it"),
            });
        }
        t.ids = changes.len() as u64;
        let table = merged(self.lookup.iter(), &changes);
        let next_id = if self.meta.config.incremental {
            // Ids are handed out in ascending order: the lowest id a record
            // after `to` created was the next id then. Never below a live id.
            let created = changes.iter().filter(|c| c.1.is_none()).map(|c| c.0).min();
            let live = table.last().map_or(1, |&(id, _)| id.saturating_add(1));
            created
                .map_or(w.next_id, |c| c.min(w.next_id))
                .max(live)
                .max(1)
        } else {
            w.next_id
        };
        // The commit point: a journal holding the truncated lookup (as
        // changes to the dump on disk), marked "the data ends at `to`".
        let dump = lookup::read_dump(&self.dir, self.keysize)?;
        let entries = dump_diff(dump.as_ref().map(|d| &d.entries[..]), &table);
        let header = WalHeader {
            checkpoint: to,
            next_id,
            has_dump: dump.is_some(),
            envelopes: self.envelope_journal,
            cut: true,
        };
        let journal = wal::create_with(&*self.io, &self.dir, header, &entries)
            .inspect_err(|_| w.poisoned = true)?;
        w.wal = Arc::new(journal);
        // From here on the journal decides; a failure leaves the handle
        // poisoned and the next open finishes the cut.
        match self.cut_locked(w, to, &changes, next_id) {
            Ok((bytes, files_removed)) => {
                t.bytes = bytes;
                t.files_removed = files_removed;
                t.end = to;
                Ok(t)
            }
            Err(e) => {
                w.poisoned = true;
                Err(e)
            }
        }
    }

    /// Whether a piece starts at `to` in `f` by the framed walk recovery
    /// uses, for a file V wrote: V's delete zeroes a record in place, and
    /// zeros say nothing of how long they run (twelve of them even read as
    /// an empty value), so the plain walk may lose the framing there.
    fn starts_after_zeros(&self, f: &DataFile, to: Location) -> Result<bool> {
        if self.meta.origin != Origin::V {
            return Ok(false);
        }
        let lens = recovery::file_lens(self.data_files().iter())?;
        let place = scan::Place {
            file_nr: f.nr,
            base: 0,
            lens: &lens,
            keysize: self.keysize,
        };
        let mut found = false;
        scan::walk(place, &f.read_all()?, 1, |pos, piece| {
            found |= pos == to.position as usize && !matches!(piece, scan::Piece::Bad(_));
        });
        Ok(found)
    }

    /// The records from `to` to `end` with the ids `ids` reads from them,
    /// in log order; `visit` sees each first.
    fn tail_records(
        &self,
        to: Location,
        end: Location,
        ids: &dyn RecordIds,
        visit: &mut dyn FnMut(Location, &[u8]) -> Result<()>,
    ) -> Result<Vec<Undo>> {
        let mut out = Vec::new();
        for nr in to.file_nr..=end.file_nr {
            let Some(f) = self.file(nr) else { continue };
            let start = if nr == to.file_nr { to.position } else { 1 };
            let len = f.len()?;
            let reached = walk_records(&f, start as u64, len, |pos, h, value| {
                let at = Location::new(nr, pos as u32);
                visit(at, value)?;
                let (id, _) = ids.record_ids(value).map_err(|e| Error::Corrupt {
                    path: f.path().to_path_buf(),
                    detail: format!("the record at {at} names no id: {e}"),
                })?;
                self.check_range(id)?;
                out.push(Undo {
                    at,
                    id,
                    prev: h.prev,
                });
                Ok(())
            })?;
            if reached != len {
                return Err(Error::Corrupt {
                    path: f.path().to_path_buf(),
                    detail: format!("no whole record at byte {reached}: the tail cannot be undone"),
                });
            }
        }
        Ok(out)
    }

    /// The records at or after `to` in the version chains of the live ids
    /// (for records that name no id).
    fn tail_chains(&self, to: Location) -> Result<Vec<Undo>> {
        let mut out = Vec::new();
        for (id, mut at) in self.lookup.iter() {
            while at >= to {
                let f = self.file(at.file_nr).ok_or_else(|| Error::Corrupt {
                    path: datafile::data_path(&self.dir, at.file_nr),
                    detail: format!(
                        "id {id} has a version at {at}, in a data file that does not exist"
                    ),
                })?;
                let mut hb = [0u8; HEADER_LEN];
                f.read_at(at.position as u64, &mut hb)?;
                let prev = Header::decode(&hb).prev;
                if !prev.is_none() && prev >= at {
                    return Err(Error::Corrupt {
                        path: f.path().to_path_buf(),
                        detail: format!("the record at {at} names a later previous version {prev}"),
                    });
                }
                out.push(Undo { at, id, prev });
                at = prev;
            }
        }
        Ok(out)
    }

    /// The truncation after its commit point: the in-memory lookup, the
    /// data files, the writer, and a checkpoint that clears the mark.
    /// Returns the bytes cut and the files removed.
    fn cut_locked(
        &self,
        w: &mut Writer,
        to: Location,
        changes: &[(u32, Location)],
        next_id: u32,
    ) -> Result<(u64, u16)> {
        for &(id, loc) in changes {
            self.lookup.set(id, loc);
        }
        w.next_id = next_id;
        self.record_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let first = self.file(to.file_nr).ok_or_else(|| Error::BadCursor {
            cursor: to,
            detail: format!("no data file {}", to.file_nr),
        })?;
        let mut bytes = first.len()? - to.position as u64;
        first.cut(to.position as u64)?;
        // Later files leave the table before they are unlinked: handles
        // already taken keep reading the unlinked files.
        let later: Vec<Arc<DataFile>> = {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            let keep = to.file_nr as usize + 1;
            let later = files.iter().skip(keep).flatten().cloned().collect();
            files.truncate(keep);
            later
        };
        let mut removed = 0u16;
        for f in later.iter().rev() {
            bytes += f.len()?;
            self.io
                .remove_file(f.path())
                .ctx(|| format!("remove {}", f.path().display()))?;
            removed += 1;
        }
        // The cut must be durable before a checkpoint clears the mark: a
        // removal or a length change that a crash undid would bring the
        // tail back under a journal that no longer says where data ends.
        crate::fsutil::sync_dir(&*self.io, &self.dir)?;
        w.active = first;
        w.end = to.position as u64;
        w.buf_start = w.end;
        w.buf.clear();
        w.wal_buf.clear();
        w.dirty.clear();
        self.checkpoint_locked(w)?;
        Ok((bytes, removed))
    }

    /// Marks the handle failed: it refuses writes until reopened (the keyed
    /// layer, when its index cannot follow the db).
    pub(crate) fn poison(&self) {
        if let Some(m) = &self.writer {
            m.lock().unwrap_or_else(|e| e.into_inner()).poisoned = true;
        }
    }
}

/// The live `(id, location)` pairs after `changes` (ascending by id, `NONE`
/// to clear) are applied to `live` (ascending by id).
fn merged(
    live: impl Iterator<Item = (u32, Location)>,
    changes: &[(u32, Location)],
) -> Vec<(u32, Location)> {
    let mut out = Vec::new();
    let mut ch = changes.iter().copied().peekable();
    for (id, loc) in live {
        while let Some(c) = ch.next_if(|c| c.0 < id) {
            out.push(c);
        }
        match ch.next_if(|c| c.0 == id) {
            Some(c) => out.push(c),
            None => out.push((id, loc)),
        }
    }
    out.extend(ch);
    out.retain(|c| !c.1.is_none());
    out
}

/// Journal entries that turn the dump `base` (none: an empty table) into
/// `table` (ascending by id).
fn dump_diff(base: Option<&[(u32, Location)]>, table: &[(u32, Location)]) -> Vec<u8> {
    // As open loads a dump: in order, a later entry for an id wins, and an
    // empty location sets nothing.
    let mut old: BTreeMap<u32, Location> = BTreeMap::new();
    for &(id, loc) in base.unwrap_or(&[]) {
        if loc.is_none() {
            old.remove(&id);
        } else {
            old.insert(id, loc);
        }
    }
    let mut out = Vec::new();
    for &(id, loc) in table {
        if old.remove(&id) != Some(loc) {
            out.extend_from_slice(&WalEntry::Set { id, loc }.encode());
        }
    }
    for id in old.into_keys() {
        out.extend_from_slice(&WalEntry::Delete { id }.encode());
    }
    out
}
