//! A position in the replicated log, with the epoch it belongs to.

use std::fmt;

use ourdb::Location;

/// A log position: the epoch of the log (bumped by every compaction, which
/// rewrites the files) and a location in it. Ordered by epoch first, so a
/// compacted log's positions all come after the old log's: a node on an
/// older epoch never counts as having reached a cursor of a newer one, and a
/// token from before a compaction is reached by every node after it (the
/// compacted log holds everything the old one did).
///
/// Text form (`X-OurKV-Cursor`, SSE ids, `/v1/cluster`): `epoch:file:offset`,
/// three decimal numbers, e.g. `1:0:4096`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The log's epoch (`ourkv.meta`; compaction adds one).
    pub epoch: u64,
    /// Where the next record goes in that log.
    pub at: Location,
}

/// Where a strong read's cursor points ([`Cursor::strong`]).
const STRONG_AT: Location = Location::new(u16::MAX, u32::MAX);

impl Cursor {
    /// Before everything: any node has reached it.
    pub const ZERO: Cursor = Cursor {
        epoch: 0,
        at: Location::NONE,
    };

    /// Asks for a strong read of the master `master` (0: of whichever
    /// master the node has): the node reads at that master's commit cursor
    /// taken after the request arrived, a worker asking its master for it,
    /// a master taking its own; a node whose master is another refuses. On
    /// the wire a read's `min_cursor` with location 65535:4294967295 (which
    /// no log reaches: 256 TiB in), its epoch field naming the master.
    pub const fn strong(master: u64) -> Cursor {
        Cursor {
            epoch: master,
            at: STRONG_AT,
        }
    }

    /// Whether this asks for a strong read ([`Cursor::strong`]).
    pub fn is_strong(self) -> bool {
        self.at == STRONG_AT
    }

    /// For a strong read, the master it must be of (0: any).
    pub fn strong_master(self) -> Option<u64> {
        self.is_strong().then_some(self.epoch)
    }

    /// What a read that asked for `self` and saw up to `seen` answers as
    /// its cursor: what it saw, never below a cursor it was asked to reach
    /// (a strong read's node reached the read index, which `seen` covers).
    pub fn covered_by(self, seen: Cursor) -> Cursor {
        if self.is_strong() {
            seen
        } else {
            seen.max(self)
        }
    }

    /// The cursor `at` in the log of `epoch`.
    pub const fn new(epoch: u64, at: Location) -> Cursor {
        Cursor { epoch, at }
    }

    /// Parses the text form `epoch:file:offset`.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut it = s.trim().split(':');
        let epoch = it.next()?.parse().ok()?;
        let file_nr = it.next()?.parse().ok()?;
        let position = it.next()?.parse().ok()?;
        it.next()
            .is_none()
            .then_some(Cursor::new(epoch, Location::new(file_nr, position)))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.epoch, self.at.file_nr, self.at.position)
    }
}

/// In metadata (the Raft log, its snapshots) a cursor is its text form, so
/// the files stay readable.
impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Cursor, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Cursor::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("bad cursor {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_strictness() {
        let c = Cursor::new(3, Location::new(1, 4096));
        assert_eq!(c.to_string(), "3:1:4096");
        assert_eq!(Cursor::parse("3:1:4096"), Some(c));
        for bad in [
            "",
            "1:2",
            "1:2:3:4",
            "a:1:2",
            "1:70000:2",
            "-1:0:1",
            "1:0:4294967296",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serde_is_the_text_form() {
        let c = Cursor::new(3, Location::new(1, 4096));
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"3:1:4096\"");
        assert_eq!(serde_json::from_str::<Cursor>("\"3:1:4096\"").unwrap(), c);
        assert!(serde_json::from_str::<Cursor>("\"3:1\"").is_err());
    }

    #[test]
    fn a_strong_read_names_its_master_and_answers_what_it_saw() {
        let seen = Cursor::new(3, Location::new(1, 4096));
        for master in [0, 7, u64::MAX] {
            let strong = Cursor::strong(master);
            assert_eq!(strong.strong_master(), Some(master));
            assert_eq!(strong.covered_by(seen), seen);
        }
        assert_eq!(seen.strong_master(), None);
        let asked = Cursor::new(3, Location::new(2, 0));
        assert_eq!(asked.covered_by(seen), asked, "never below what was asked");
        assert_eq!(Cursor::ZERO.covered_by(seen), seen);
    }

    #[test]
    fn epoch_orders_first() {
        // A compacted log is shorter: its positions are smaller, its epoch larger.
        let old = Cursor::new(1, Location::new(3, 900_000));
        let new = Cursor::new(2, Location::new(0, 10));
        assert!(old < new);
        assert!(Cursor::ZERO < old);
    }
}
