//! Checkpoints: the lookup dump in V's format and a fresh journal, so that
//! recovery redoes little.

use super::*;

impl OurDb {
    /// Makes the current state the recovery starting point: data and journal
    /// synced, lookup dump (V's format) written, fresh journal.
    pub(super) fn checkpoint_locked(&self, w: &mut Writer) -> Result<()> {
        self.sync_locked(w)?;
        let incremental = self.meta.config.incremental;
        let r = lookup::write_dump(
            &*self.io,
            &self.dir,
            &self.lookup,
            self.keysize,
            incremental.then_some(w.next_id),
        )
        .and_then(|_| {
            wal::create(
                &*self.io,
                &self.dir,
                WalHeader {
                    checkpoint: Location::new(w.active.nr, w.end as u32),
                    next_id: w.next_id,
                    has_dump: true,
                    envelopes: self.envelope_journal,
                    cut: false,
                },
            )
        });
        match r {
            Ok(f) => {
                w.wal = Arc::new(f);
                w.bytes_since_checkpoint = 0;
                Ok(())
            }
            Err(e) => {
                w.poisoned = true;
                Err(e)
            }
        }
    }

    /// Writes the checkpoint now (V-readable dump and `.inc`).
    pub fn checkpoint(&self) -> Result<()> {
        let mut w = self.writer()?;
        self.checkpoint_locked(&mut w)
    }
}
