//! Group commit: one leader fdatasyncs for every write flushed before its
//! sync began; the others wait on it.

use super::*;

impl OurDb {
    /// Group commit: one writer (the leader) fdatasyncs for everyone whose
    /// write was flushed before the sync began; the others wait for it.
    pub(super) fn group_sync(&self, seq: u64) -> Result<()> {
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.synced_seq >= seq {
                return Ok(());
            }
            if g.failed {
                return Err(Error::Poisoned);
            }
            if !g.leader {
                break;
            }
            g = self.group_cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.leader = true;
        drop(g);
        self.lead_group(|_| ()).map(|_| ())
    }

    /// One group commit: flushes every write so far, calls `flushed` with
    /// the end flushed (the group is now readable by `read_records`, so it
    /// can be shipped while it syncs), then fdatasyncs it (after any group commit already
    /// running). Returns the sequence number now durable. A syncer thread
    /// can call this in a loop, so that writers never block on the fsync.
    pub fn commit(&self, flushed: impl FnOnce(Location)) -> Result<u64> {
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
        self.lead_group(flushed)
    }

    /// The sequence number of the last write accepted (durable or not).
    pub fn written_seq(&self) -> u64 {
        match &self.writer {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).seq,
            None => 0,
        }
    }

    /// The leader's part of a group commit (`group.leader` is set).
    pub(super) fn lead_group(&self, flushed: impl FnOnce(Location)) -> Result<u64> {
        // Everything flushed up to `target` is covered by this sync. The fsyncs
        // run outside the writer lock, so the next group gathers meanwhile.
        let plan = self.writer().and_then(|mut w| {
            if w.bytes_since_checkpoint >= self.checkpoint_bytes {
                self.busy_with(|| self.checkpoint_locked(&mut w))?;
            }
            self.flush_locked(&mut w)?;
            let files = self.files.read().unwrap_or_else(|e| e.into_inner());
            let dirty: Vec<Arc<DataFile>> = std::mem::take(&mut w.dirty)
                .into_iter()
                .filter_map(|nr| files.get(nr as usize).cloned().flatten())
                .collect();
            Ok((
                w.seq,
                Location::new(w.active.nr, w.end as u32),
                dirty,
                w.wal.clone(),
            ))
        });
        if let Ok((_, end, _, _)) = &plan {
            flushed(*end);
        }
        let result = plan.and_then(|(target, end, dirty, wal)| {
            for f in dirty {
                f.sync_data()?;
            }
            // With envelopes the journal may lag: open redoes from the data.
            if !self.envelope_journal {
                wal.sync_data()
                    .ctx(|| format!("fsync {}", self.dir.join(wal::WAL_FILE).display()))?;
            }
            Ok((target, end))
        });
        if result.is_err() {
            if let Some(m) = &self.writer {
                m.lock().unwrap_or_else(|e| e.into_inner()).poisoned = true;
            }
        }
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        g.leader = false;
        let out = match result {
            Ok((target, end)) => {
                if target >= g.synced_seq {
                    g.synced_seq = target;
                    g.synced_end = g.synced_end.max(end);
                }
                Ok(g.synced_seq)
            }
            Err(e) => {
                g.failed = true;
                Err(e)
            }
        };
        self.group_cv.notify_all();
        out
    }
}
