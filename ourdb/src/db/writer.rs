//! Writes: appending records and journal entries, file switches, flushes,
//! the sync policies, and closing.

use super::*;

impl OurDb {
    /// Writes `value`: a new id when `id` is `None` (incremental mode), else a
    /// new version of `id`. Returns the id.
    pub fn set(&self, id: Option<u32>, value: &[u8]) -> Result<u32> {
        let (id, pending) = self.set_pending(id, value)?;
        self.wait(pending)?;
        Ok(id)
    }

    /// `set` without waiting for group commit: the write is appended (and
    /// visible), and `wait` makes it durable. Lets callers that serialise
    /// writes under their own lock wait outside it, so writers share fsyncs.
    pub fn set_pending(&self, id: Option<u32>, value: &[u8]) -> Result<(u32, Pending)> {
        self.check_value(value)?;
        let mut w = self.writer()?;
        let id = match (id, self.meta.config.incremental) {
            (None, true) => {
                if w.next_id >= self.meta.config.record_nr_max {
                    return Err(Error::TableFull(self.meta.config.record_nr_max));
                }
                w.next_id
            }
            (None, false) => return Err(Error::IdRequired),
            (Some(id), true) => {
                self.check_range(id)?;
                if id == 0 || self.lookup.get(id).is_none() {
                    return Err(Error::IdNotIssued(id));
                }
                id
            }
            (Some(id), false) => {
                self.check_range(id)?;
                id
            }
        };
        let seq = self.append_locked(&mut w, id, value)?;
        self.finish_write(w)?;
        Ok((id, Pending(seq)))
    }

    /// Waits until a pending write is durable under the sync policy (only
    /// group commit defers anything).
    pub fn wait(&self, p: Pending) -> Result<()> {
        if self.sync == SyncPolicy::Group {
            self.group_sync(p.0)?;
        }
        Ok(())
    }

    /// Appends a new record for id (incremental mode).
    pub fn insert(&self, value: &[u8]) -> Result<u32> {
        self.set(None, value)
    }

    /// Writes a version of `id` whatever the mode, raising the next id past it:
    /// `restore` and `compact` use it to keep ids.
    pub fn import(&self, id: u32, value: &[u8]) -> Result<()> {
        self.check_value(value)?;
        self.check_range(id)?;
        let mut w = self.writer()?;
        let seq = self.append_locked(&mut w, id, value)?;
        self.finish_write(w)?;
        self.wait(Pending(seq))
    }

    /// Never hand out ids below `next_id` again (restore and compact keep the
    /// counter of the source even when its highest ids were deleted).
    pub fn reserve_ids_below(&self, next_id: u32) -> Result<()> {
        let mut w = self.writer()?;
        if next_id > w.next_id {
            w.next_id = next_id.min(self.meta.config.record_nr_max);
            // Persisted by the next checkpoint; force one so a crash cannot lose it.
            self.checkpoint_locked(&mut w)?;
        }
        Ok(())
    }

    pub(super) fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_LEN,
            });
        }
        // V never enforced record_size_max, and its directories hold larger
        // values; ourkv enforces it for directories it created.
        let max = self.meta.config.record_size_max as usize;
        if self.meta.origin == Origin::Ourkv && value.len() > max {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// Deletes `id`. Records are never rewritten: the lookup entry is cleared (and
    /// journaled); the bytes go at the next compaction.
    pub fn delete(&self, id: u32) -> Result<()> {
        let p = self.delete_pending(id)?;
        self.wait(p)
    }

    /// `delete` without waiting for group commit (see `set_pending`).
    pub fn delete_pending(&self, id: u32) -> Result<Pending> {
        self.check_range(id)?;
        let mut w = self.writer()?;
        if self.lookup.get(id).is_none() {
            return Err(Error::NotFound(id));
        }
        w.wal_buf
            .extend_from_slice(&WalEntry::Delete { id }.encode());
        self.lookup.set(id, Location::NONE);
        w.seq += 1;
        let seq = w.seq;
        self.finish_write(w)?;
        Ok(Pending(seq))
    }

    /// Appends one record under the writer lock; returns its sequence number.
    pub(super) fn append_locked(&self, w: &mut Writer, id: u32, value: &[u8]) -> Result<u64> {
        let rec_len = (HEADER_LEN + value.len()) as u64;
        // Switch files as V does (before the write, once the file reached
        // file_size); only keysize 6 can address more than one file.
        if self.keysize == 6
            && (w.end >= self.meta.config.file_size as u64 || w.end + rec_len > u32::MAX as u64)
        {
            self.roll_locked(w)?;
        }
        let loc = Location::new(w.active.nr, w.end.min(u32::MAX as u64) as u32);
        if w.end + rec_len > u32::MAX as u64 || !loc.fits(self.keysize) {
            return Err(Error::AddressSpaceFull {
                keysize: self.keysize,
                location: loc,
            });
        }
        let prev = self.lookup.get(id);
        let prev = if self.loose_addressing && !prev.is_none() {
            // Resolve what the short entry really points at, so history follows.
            self.resolve(id, prev).unwrap_or(Location::NONE)
        } else {
            prev
        };
        crate::record::encode_record(value, prev, &mut w.buf);
        w.end += rec_len;
        w.wal_buf
            .extend_from_slice(&WalEntry::Set { id, loc }.encode());
        self.lookup.set(id, loc);
        if self.meta.config.incremental && id >= w.next_id {
            w.next_id = id + 1;
        }
        w.seq += 1;
        w.bytes_since_checkpoint += rec_len;
        Ok(w.seq)
    }

    /// Closes the active file and starts the next one.
    pub(super) fn roll_locked(&self, w: &mut Writer) -> Result<()> {
        self.busy_with(|| self.roll_inner(w))
    }

    pub(super) fn roll_inner(&self, w: &mut Writer) -> Result<()> {
        self.flush_locked(w)?;
        let nr = w.active.nr.checked_add(1).ok_or(Error::AddressSpaceFull {
            keysize: self.keysize,
            location: Location::new(w.active.nr, w.end as u32),
        })?;
        // The old file must be complete on disk before records go elsewhere:
        // recovery only ever cuts the tail of the last file.
        w.active.sync_data().inspect_err(|_| w.poisoned = true)?;
        w.dirty.remove(&w.active.nr);
        let f = Arc::new(
            DataFile::create(&*self.io, &self.dir, nr).inspect_err(|_| w.poisoned = true)?,
        );
        crate::fsutil::sync_dir(&*self.io, &self.dir).inspect_err(|_| w.poisoned = true)?;
        {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            if files.len() <= nr as usize {
                files.resize(nr as usize + 1, None);
            }
            files[nr as usize] = Some(f.clone());
        }
        w.active = f;
        w.end = 1;
        w.buf_start = 1;
        Ok(())
    }

    /// Hands buffered records and journal entries to the OS (data first: a
    /// journal entry must never name bytes that are not written).
    pub(super) fn flush_locked(&self, w: &mut Writer) -> Result<()> {
        if !w.buf.is_empty() {
            if let Err(e) = w.active.write_at(w.buf_start, &w.buf) {
                w.poisoned = true;
                return Err(e);
            }
            w.buf_start += w.buf.len() as u64;
            w.buf.clear();
            let nr = w.active.nr;
            w.dirty.insert(nr);
        }
        if !w.wal_buf.is_empty() {
            let Writer { wal, wal_buf, .. } = &mut *w;
            if let Err(e) = wal.append(wal_buf) {
                w.poisoned = true;
                return Err(Error::Io {
                    context: format!("append to {}", self.dir.join(wal::WAL_FILE).display()),
                    source: e,
                });
            }
            w.wal_buf.clear();
        }
        w.active.ensure_mapped(w.buf_start)?;
        Ok(())
    }

    /// fdatasyncs dirty data files, then the journal.
    pub(super) fn sync_locked(&self, w: &mut Writer) -> Result<()> {
        self.flush_locked(w)?;
        let files = self.files.read().unwrap_or_else(|e| e.into_inner()).clone();
        for nr in std::mem::take(&mut w.dirty) {
            if let Some(Some(f)) = files.get(nr as usize) {
                f.sync_data().inspect_err(|_| w.poisoned = true)?;
            }
        }
        w.wal
            .sync_data()
            .ctx(|| format!("fsync {}", self.dir.join(wal::WAL_FILE).display()))
            .inspect_err(|_| w.poisoned = true)
    }

    /// Applies the sync policy after a write, then checkpoints if due.
    pub(super) fn finish_write(&self, mut w: MutexGuard<'_, Writer>) -> Result<()> {
        match self.sync {
            SyncPolicy::Never => {
                if w.buf.len() >= WRITE_BUFFER || w.wal_buf.len() >= WRITE_BUFFER / 8 {
                    self.flush_locked(&mut w)?;
                }
            }
            SyncPolicy::Flush => self.flush_locked(&mut w)?,
            SyncPolicy::Always => self.sync_locked(&mut w)?,
            // The group-commit leader flushes the whole group at once: one
            // write(2) per group instead of one per record.
            SyncPolicy::Group => {
                if w.buf.len() >= WRITE_BUFFER || w.wal_buf.len() >= WRITE_BUFFER / 8 {
                    self.flush_locked(&mut w)?;
                }
            }
        }
        // Under group commit the leader checkpoints (`lead_group`): the
        // write that crosses the mark may run on an async thread.
        if self.sync != SyncPolicy::Group && w.bytes_since_checkpoint >= self.checkpoint_bytes {
            self.checkpoint_locked(&mut w)?;
        }
        Ok(())
    }

    /// Whether a checkpoint or a file switch holds the writer lock now (for
    /// milliseconds): a caller on an async thread can send its write to a
    /// blocking thread instead of waiting there.
    pub fn is_busy(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` (a checkpoint, a file switch) with `busy` set.
    pub(super) fn busy_with<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.busy.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = f();
        self.busy.store(false, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Hands buffered writes to the OS.
    pub fn flush(&self) -> Result<()> {
        let mut w = self.writer()?;
        self.flush_locked(&mut w)
    }

    /// Makes every write so far durable (fdatasync).
    pub fn sync(&self) -> Result<()> {
        let mut w = self.writer()?;
        self.sync_locked(&mut w)
    }

    /// Checkpoints and releases the directory. After close the directory is a
    /// valid V directory.
    pub fn close(self) -> Result<()> {
        let r = match &self.writer {
            Some(_) => self.checkpoint(),
            None => Ok(()),
        };
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Drops the handle without flushing anything: what a crash leaves behind.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    // ---- log shipping ----
}
