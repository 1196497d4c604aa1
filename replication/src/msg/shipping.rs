//! Log shipping, worker → master: `Subscribe` opens a stream; the master
//! answers `Segment`s of whole records (or `Failed{epoch|cursor}`), and the
//! worker sends an `Ack` after applying each.

use ourdb::Location;

use crate::msg::{message, Streamed};

message! {
    /// Stream records from `cursor` on (the worker's end); `tail` is the
    /// worker's last bytes before it, which must match the master's.
    Subscribe = Subscribe {
        /// The worker's epoch.
        epoch: u64,
        /// The worker's end.
        cursor: Location,
        /// Up to 64 bytes before `cursor`.
        tail: Vec<u8>,
        /// The worker's node id (0: outside a failover cluster).
        node: u64,
        /// The term whose master's log the worker last followed (0: none).
        last_term: u64,
    }
}

message! {
    /// Whole records starting at `start`; the next start.
    Segment = Segment {
        /// The master's term (0: outside a failover cluster).
        term: u64,
        /// The high-water mark: reads answer only from records below it.
        hw: Location,
        /// Where the records start.
        start: Location,
        /// Where the next segment starts.
        next: Location,
        /// Where the master's log ended for shipping when it read these
        /// (a worker far behind it is catching up).
        end: Location,
        /// The records, as they are on disk.
        records: Vec<u8>,
    }
}

message! {
    /// Everything before `cursor` is applied.
    Ack = Ack {
        /// The worker's applied end.
        cursor: Location,
    }
}

impl Streamed for Subscribe {
    type Item = Segment;
}
