//! Read-index batching (etcd raft's `read_only.go` in spirit): strong reads
//! that arrive while a read-index round is out share the next round, never
//! the one already out, so no read takes an index older than itself; and
//! at most one round is out at a time.

/// Strong reads waiting for a read index; `W` is how a waiter is answered.
#[derive(Debug)]
pub struct ReadIndexBatch<W> {
    /// A driver is sending rounds.
    running: bool,
    waiting: Vec<W>,
}

impl<W> Default for ReadIndexBatch<W> {
    fn default() -> Self {
        ReadIndexBatch {
            running: false,
            waiting: Vec::new(),
        }
    }
}

impl<W> ReadIndexBatch<W> {
    /// A strong read arrives. True if the caller must start driving rounds
    /// (none is running); else a running driver's next round answers it.
    pub fn join(&mut self, waiter: W) -> bool {
        self.waiting.push(waiter);
        !std::mem::replace(&mut self.running, true)
    }

    /// The driver is about to send a round: the waiters it answers, which
    /// are exactly those that arrived before it. `None` when nobody waits:
    /// the driver stops, and the next read starts a new one.
    pub fn next_round(&mut self) -> Option<Vec<W>> {
        if self.waiting.is_empty() {
            self.running = false;
            return None;
        }
        Some(std::mem::take(&mut self.waiting))
    }

    /// Reads waiting for the next round.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_read_starts_rounds_and_later_ones_share_them() {
        let mut b = ReadIndexBatch::default();
        assert!(b.join(1));
        assert!(!b.join(2), "a driver is already running");
        assert_eq!(b.next_round(), Some(vec![1, 2]));
        // Arrived while that round was out: the next round, not that one.
        assert!(!b.join(3));
        assert_eq!(b.next_round(), Some(vec![3]));
        assert_eq!(b.next_round(), None);
        // The driver stopped: the next read starts one again.
        assert!(b.join(4));
        assert_eq!(b.waiting(), 1);
    }

    /// Over random interleavings of arrivals and rounds: every read is
    /// answered exactly once, by a round sent after it arrived, and one
    /// driver runs whenever reads wait.
    #[test]
    fn every_read_gets_exactly_one_round_sent_after_it() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let mut b = ReadIndexBatch::default();
            let mut drivers = 0;
            let mut arrived_at = Vec::new();
            let mut answered = Vec::new();
            let mut clock = 0u64;
            for _ in 0..100 {
                clock += 1;
                if next() % 3 != 0 {
                    let id = arrived_at.len();
                    arrived_at.push(clock);
                    if b.join(id) {
                        drivers += 1;
                    }
                } else if drivers > 0 {
                    match b.next_round() {
                        Some(ids) => {
                            answered.extend(ids.into_iter().map(|id| (id, clock)));
                        }
                        None => drivers -= 1,
                    }
                }
                assert!(drivers <= 1, "two drivers");
                assert!(
                    b.waiting() == 0 || drivers == 1,
                    "reads wait with no driver"
                );
            }
            while drivers > 0 {
                clock += 1;
                match b.next_round() {
                    Some(ids) => answered.extend(ids.into_iter().map(|id| (id, clock))),
                    None => drivers -= 1,
                }
            }
            answered.sort();
            let ids: Vec<usize> = answered.iter().map(|a| a.0).collect();
            assert_eq!(
                ids,
                (0..arrived_at.len()).collect::<Vec<_>>(),
                "each exactly once"
            );
            for (id, round) in answered {
                assert!(arrived_at[id] < round, "answered by a round sent before it");
            }
        }
    }
}
