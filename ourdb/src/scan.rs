//! Reading data files front to back: torn-tail detection on open, and the
//! rebuild of an id map from V data files (`recover`, and rolling a stale V
//! dump forward).

use std::collections::HashMap;

use crate::location::Location;
use crate::lookup::LookupTable;
use crate::record::{Header, HEADER_LEN};

/// The header of a whole, CRC-valid record at `pos` in `bytes`.
pub fn record_at(bytes: &[u8], pos: usize) -> Option<Header> {
    let hb: &[u8; HEADER_LEN] = bytes.get(pos..pos + HEADER_LEN)?.try_into().ok()?;
    let h = Header::decode(hb);
    let start = pos + HEADER_LEN;
    let value = bytes.get(start..start + h.len as usize)?;
    h.check(value).then_some(h)
}

/// Where the record that ends a zero run starts. Its header may begin with
/// zero bytes of its own, so it starts up to 11 bytes before `first_nonzero`,
/// but not before `min`. A run of zeros followed by a few header bytes can
/// itself parse as an empty value with a previous pointer (an update to an
/// empty value begins with eight zero bytes). So a start after which the
/// file goes on (the end, another record, or more zeros) is preferred, then
/// a record with a value over such a phantom.
pub fn record_after_zeros(bytes: &[u8], min: usize, first_nonzero: usize) -> Option<usize> {
    let range = first_nonzero.saturating_sub(HEADER_LEN - 1).max(min)..=first_nonzero;
    let goes_on = |p: usize| {
        record_at(bytes, p).is_some_and(|h| {
            let next = p + h.record_len() as usize;
            next >= bytes.len()
                || record_at(bytes, next).is_some()
                || bytes[next..bytes.len().min(next + HEADER_LEN)]
                    .iter()
                    .all(|&b| b == 0)
        })
    };
    let with_value = |p: usize| record_at(bytes, p).is_some_and(|h| h.len > 0);
    range
        .clone()
        .find(|&p| goes_on(p) && with_value(p))
        .or_else(|| range.clone().find(|&p| goes_on(p)))
        .or_else(|| range.clone().find(|&p| with_value(p)))
        .or_else(|| range.clone().find(|&p| record_at(bytes, p).is_some()))
}

/// End of the run of valid records that starts at `pos` (the first byte that
/// does not begin a whole, valid record).
pub fn valid_end(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(h) = record_at(bytes, pos) {
        pos += h.record_len() as usize;
    }
    pos
}

/// What a rebuild found and what it had to assume or leave open.
#[derive(Debug, Default, Clone)]
pub struct RebuildReport {
    /// Valid records read.
    pub records: u64,
    /// Records taken as first versions of new ids.
    pub inserts: u64,
    /// Records taken as new versions of known ids.
    pub updates: u64,
    /// Zero runs taken as deleted records.
    pub deleted: u64,
    /// Decisions the data did not fully determine.
    pub assumptions: Vec<String>,
    /// Things it could not decide (records left unreachable).
    pub undecided: Vec<String>,
}

impl RebuildReport {
    pub fn is_certain(&self) -> bool {
        self.assumptions.is_empty() && self.undecided.is_empty()
    }
}

/// Rebuilds ids from V records, continuing the state already in `table`.
///
/// In V's incremental mode ids are handed out in write order, and an update
/// records the previous location of its id. So a record without a previous
/// version is the next id, and any other record moves the id whose current
/// location it names. V's delete zeroes the record in place, which leaves runs
/// of zero bytes; whether such a record was a first version (and used an id)
/// cannot be read from the data, so it is assumed and reported.
pub struct Rebuilder<'a> {
    table: &'a LookupTable,
    incremental: bool,
    pub next_id: u32,
    by_location: HashMap<Location, u32>,
    pub report: RebuildReport,
}

impl<'a> Rebuilder<'a> {
    pub fn new(table: &'a LookupTable, incremental: bool, next_id: u32) -> Self {
        let by_location = table.iter().map(|(id, loc)| (loc, id)).collect();
        Rebuilder {
            table,
            incremental,
            next_id: next_id.max(1),
            by_location,
            report: RebuildReport::default(),
        }
    }

    fn new_id(&mut self, loc: Location) -> Option<u32> {
        if !self.incremental {
            self.report.undecided.push(format!(
                "record at {loc} has no previous version: in key-value mode its id cannot be known"
            ));
            return None;
        }
        if self.next_id >= self.table.record_nr_max() {
            self.report
                .undecided
                .push(format!("record at {loc}: no id left below record_nr_max"));
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    fn apply(&mut self, loc: Location, h: &Header) {
        self.report.records += 1;
        if h.prev.is_none() {
            if let Some(id) = self.new_id(loc) {
                self.table.set(id, loc);
                self.by_location.insert(loc, id);
                self.report.inserts += 1;
            }
        } else if let Some(id) = self.by_location.remove(&h.prev) {
            self.table.set(id, loc);
            self.by_location.insert(loc, id);
            self.report.updates += 1;
        } else {
            self.report.undecided.push(format!(
                "record at {loc} updates {} which is no live record: left unreachable",
                h.prev
            ));
        }
    }

    /// Scans `bytes` (all of data file `file_nr`) from `start`.
    pub fn scan_file(&mut self, file_nr: u16, bytes: &[u8], start: usize) {
        walk(bytes, start, |pos, piece| {
            let loc = Location::new(file_nr, pos as u32);
            match piece {
                Piece::Record(h) => self.apply(loc, &h),
                Piece::ZeroRun(run) if run % HEADER_LEN == 0 => {
                    // Whole headers of zeros: empty values with no previous
                    // version, back to back (V writes an empty value as 12
                    // zero bytes). A deleted record whose value is a
                    // multiple of 12 bytes long looks the same.
                    let n = run / HEADER_LEN;
                    for i in 0..n {
                        let at = Location::new(file_nr, (pos + i * HEADER_LEN) as u32);
                        self.apply(at, &Header::decode(&[0; HEADER_LEN]));
                    }
                    self.report.assumptions.push(format!(
                        "{run} zero bytes at {loc}: taken as {n} live empty value(s) (deleted records can look the same)"
                    ));
                }
                Piece::ZeroRun(run) => {
                    self.report.deleted += 1;
                    if self.incremental && self.next_id >= self.table.record_nr_max() {
                        self.report.undecided.push(format!(
                            "{run} zero bytes at {loc}: no id left below record_nr_max"
                        ));
                    } else if self.incremental {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.report.assumptions.push(format!(
                            "{run} zero bytes at {loc}: taken as one deleted first version (id {id}); if it was a deleted update, later new ids are one too high"
                        ));
                    } else {
                        self.report.assumptions.push(format!(
                            "{run} zero bytes at {loc}: taken as deleted record(s)"
                        ));
                    }
                }
                Piece::Bad(what) => self
                    .report
                    .undecided
                    .push(format!("{what} at {loc}: rest of {file_nr}.db skipped")),
            }
        });
    }
}

/// One piece of a V data file.
#[derive(Debug)]
pub enum Piece {
    /// A whole, CRC-valid record.
    Record(Header),
    /// A run of zero bytes at least a header long: V's deleted records (or
    /// empty values) followed by a valid record or the end of the file.
    ZeroRun(usize),
    /// Bytes that are neither; the walk stops here.
    Bad(String),
}

/// Walks `bytes` from `start` (at least 1, past the leading zero byte), calling
/// `f` with each piece's offset.
pub fn walk(bytes: &[u8], start: usize, mut f: impl FnMut(usize, Piece)) {
    let mut pos = start.max(1);
    while pos < bytes.len() {
        let zero_header = bytes[pos..bytes.len().min(pos + HEADER_LEN)]
            .iter()
            .all(|&b| b == 0);
        if zero_header {
            let z = bytes[pos..]
                .iter()
                .position(|&b| b != 0)
                .map_or(bytes.len(), |i| pos + i);
            let end = if z == bytes.len() {
                Some(z)
            } else {
                record_after_zeros(bytes, pos + HEADER_LEN, z)
            };
            match end {
                Some(end) if end - pos >= HEADER_LEN => {
                    f(pos, Piece::ZeroRun(end - pos));
                    pos = end;
                }
                Some(end) => {
                    return f(pos, Piece::Bad(format!("{} stray zero bytes", end - pos)));
                }
                None => {
                    return f(
                        pos,
                        Piece::Bad(format!(
                            "{} zero bytes followed by bytes that are no valid record",
                            z - pos
                        )),
                    );
                }
            }
            continue;
        }
        match record_at(bytes, pos) {
            Some(h) => {
                pos += h.record_len() as usize;
                f(pos - h.record_len() as usize, Piece::Record(h));
            }
            None => {
                return f(
                    pos,
                    Piece::Bad(format!(
                        "{} bytes that form no valid record",
                        bytes.len() - pos
                    )),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_record;

    #[test]
    fn rebuild_follows_updates_and_zero_runs() {
        let mut f = vec![0u8];
        encode_record(b"one", Location::NONE, &mut f); // id 1 at 1
        let second = f.len();
        encode_record(b"two", Location::NONE, &mut f); // id 2
        f.extend_from_slice(&[0u8; 12 + 5]); // a deleted first version: id 3
        encode_record(b"one-b", Location::new(0, 1), &mut f); // update of id 1
        let t = LookupTable::new(100);
        let mut r = Rebuilder::new(&t, true, 1);
        r.scan_file(0, &f, 1);
        assert_eq!(r.next_id, 4);
        assert_eq!(t.get(2), Location::new(0, second as u32));
        assert_ne!(t.get(1), Location::new(0, 1));
        assert_eq!(t.get(3), Location::NONE);
        assert_eq!(r.report.assumptions.len(), 1);
        assert!(r.report.undecided.is_empty());
    }

    /// V writes an empty value as 12 zero bytes: two in a row are 24 zero
    /// bytes, two ids, not one deleted record.
    #[test]
    fn consecutive_empty_values_keep_their_ids() {
        let mut f = vec![0u8];
        encode_record(b"", Location::NONE, &mut f); // id 1
        encode_record(b"", Location::NONE, &mut f); // id 2
        let abc = f.len();
        encode_record(b"abc", Location::NONE, &mut f); // id 3
        f.extend_from_slice(&[0u8; 12 + 7]); // a deleted first version: id 4
        encode_record(b"def", Location::NONE, &mut f); // id 5
        let t = LookupTable::new(100);
        let mut r = Rebuilder::new(&t, true, 1);
        r.scan_file(0, &f, 1);
        assert_eq!(t.get(1), Location::new(0, 1));
        assert_eq!(t.get(2), Location::new(0, 13));
        assert_eq!(t.get(3), Location::new(0, abc as u32));
        assert_eq!(t.get(4), Location::NONE);
        assert_ne!(t.get(5), Location::NONE);
        assert_eq!(r.next_id, 6);
        assert!(r.report.undecided.is_empty(), "{:?}", r.report);
    }

    #[test]
    fn valid_end_stops_at_torn_tail() {
        let mut f = vec![0u8];
        encode_record(b"abc", Location::NONE, &mut f);
        let good = f.len();
        encode_record(b"defgh", Location::NONE, &mut f);
        f.truncate(f.len() - 2);
        assert_eq!(valid_end(&f, 1), good);
    }
}
