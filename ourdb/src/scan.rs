//! Reading data files front to back: torn-tail detection on open, and the
//! rebuild of an id map from V data files (`recover`, and rolling a stale V
//! dump forward).

use std::collections::{BTreeMap, HashMap};

use crate::location::Location;
use crate::lookup::LookupTable;
use crate::record::{Header, HEADER_LEN};

/// Where the bytes a walk reads lie: their data file, the file offset of
/// their first byte, and the length of every data file. Any 12 bytes that
/// begin with six zeros read as a CRC-valid empty value, so after a zero
/// run a start is only believed if its previous-version pointer could be
/// one: none, earlier in its own file, or inside another data file.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    /// The data file being scanned.
    pub file_nr: u16,
    /// The file offset of the first byte of the buffer.
    pub base: usize,
    /// Every data file's length.
    pub lens: &'a BTreeMap<u16, u64>,
    /// The directory's keysize: with 2, 3 or 4, V stored previous pointers
    /// as it stored lookup entries, keeping only the low bytes of the
    /// position and no file number.
    pub keysize: u8,
}

impl Place<'_> {
    /// Whether the previous pointer of a record at `pos` names a place
    /// where, as far as the walk has framed the file, a record may start.
    /// A truncated pointer (keysize 2, 3, 4) may name any position with
    /// the same low bytes before the record; with several files it may
    /// name any of them, and is not checked.
    fn prev_known(&self, known: &Framing, pos: usize, h: &Header) -> bool {
        let prev = h.prev;
        if prev.is_none() {
            return true;
        }
        let here = (self.base + pos) as u64;
        if self.keysize < 6 {
            if self.lens.len() > 1 {
                return true;
            }
            let step = 1u64 << (8 * self.keysize as u32);
            let mut q = prev.position as u64;
            while q < here {
                if known.may_start(q as usize) {
                    return true;
                }
                q += step;
            }
            false
        } else if prev.file_nr != self.file_nr {
            true
        } else {
            known.may_start(prev.position as usize)
        }
    }

    fn plausible(&self, pos: usize, h: &Header) -> bool {
        let prev = h.prev;
        if prev.is_none() {
            return true;
        }
        if prev.position == 0 {
            return false;
        }
        if prev.file_nr == self.file_nr {
            (prev.position as usize) < self.base + pos
        } else {
            self.lens
                .get(&prev.file_nr)
                .is_some_and(|&len| (prev.position as u64) < len)
        }
    }

    /// A believable record at `pos`.
    fn record_at(&self, bytes: &[u8], pos: usize) -> Option<Header> {
        record_at(bytes, pos).filter(|h| self.plausible(pos, h))
    }
}

/// The header of a whole, CRC-valid record at `pos` in `bytes`.
pub fn record_at(bytes: &[u8], pos: usize) -> Option<Header> {
    let hb: &[u8; HEADER_LEN] = bytes.get(pos..pos + HEADER_LEN)?.try_into().ok()?;
    let h = Header::decode(hb);
    let start = pos + HEADER_LEN;
    let value = bytes.get(start..start + h.len as usize)?;
    h.check(value).then_some(h)
}

/// Pieces a candidate framing is followed for before it counts as good.
const LOOKAHEAD: usize = 32;

/// Where the record that ends a zero run starts. Its header may begin with
/// zero bytes of its own, so it starts up to 11 bytes before `first_nonzero`,
/// but not before `min`. Any 12 bytes that begin with six zeros read as a
/// CRC-valid empty value (an update to an empty value begins with ten
/// zeros), so a zero run is followed by phantom starts beside the real one.
/// The start whose framing goes on (to the end, or `LOOKAHEAD` pieces
/// without bytes that frame nothing) wins, then the one that frames more
/// pieces, then one with a value, then the earliest.
pub fn record_after_zeros(
    place: Place<'_>,
    bytes: &[u8],
    min: usize,
    first_nonzero: usize,
) -> Option<usize> {
    after_zeros(place, bytes, min, first_nonzero, 1, &Framing::unknown()).map(|(p, _)| p)
}

/// The start `record_after_zeros` takes, and every start in the window
/// whose framing goes on and whose previous pointer names a possible start
/// (the zero run may end at any of them). Between starts that frame on
/// equally well, one whose
/// previous pointer names a possible start wins: a phantom start reads its
/// pointer from the real header's last bytes.
fn after_zeros(
    place: Place<'_>,
    bytes: &[u8],
    min: usize,
    first_nonzero: usize,
    depth: u8,
    known: &Framing,
) -> Option<(usize, Vec<usize>)> {
    let range = first_nonzero.saturating_sub(HEADER_LEN - 1).max(min)..=first_nonzero;
    let mut alts = Vec::new();
    let best = range
        .filter_map(|p| {
            let h = place.record_at(bytes, p)?;
            let (good, n) = frames_on(place, bytes, p, depth, known);
            let prev_known = place.prev_known(known, p, &h);
            if good && prev_known {
                alts.push(p);
            }
            Some(((good, prev_known, n, h.len > 0), std::cmp::Reverse(p)))
        })
        .max()
        .map(|(_, std::cmp::Reverse(p))| p)?;
    if !alts.contains(&best) {
        alts.push(best);
        alts.sort_unstable();
    }
    Some((best, alts))
}

/// Where records may start in one data file, as a framed walk saw it.
/// Inside a run of zero bytes (deleted records and empty values, which
/// look the same) only the starts of whole pieces are possible: every
/// piece is at least a header long, so a 12-byte empty value starts at
/// the run's start or a header or more after it, and ends at the run's
/// end or a header or more before it (the "12-byte rule"). Where the run
/// ends is known only up to the starts `after_zeros` could not rule out.
#[derive(Clone, Debug)]
pub struct Framing {
    /// Nothing is known before this offset: every position may start one.
    from: usize,
    starts: std::collections::HashSet<usize>,
    /// Zero runs in ascending order.
    runs: Vec<ZeroSpan>,
    /// Offsets from here on were not framed (damage, or not walked yet).
    frontier: usize,
    /// Where the walk met bytes it could not frame, if it did.
    damaged_from: Option<usize>,
}

#[derive(Clone, Debug)]
struct ZeroSpan {
    start: usize,
    /// Where the run may end, ascending: the next record may start at any.
    ends: Vec<usize>,
}

impl Framing {
    /// Knows nothing: every position may start a record.
    pub fn unknown() -> Framing {
        Framing::from(usize::MAX)
    }

    fn from(from: usize) -> Framing {
        Framing {
            from,
            starts: Default::default(),
            runs: Vec::new(),
            frontier: from,
            damaged_from: None,
        }
    }

    /// Whether a record may start at file offset `pos`.
    pub fn may_start(&self, pos: usize) -> bool {
        if pos < self.from || pos >= self.frontier || self.starts.contains(&pos) {
            return true;
        }
        let i = self.runs.partition_point(|r| r.start <= pos);
        let Some(run) = i.checked_sub(1).map(|i| &self.runs[i]) else {
            return false;
        };
        if run.ends.contains(&pos) {
            return true;
        }
        (pos == run.start || pos >= run.start + HEADER_LEN)
            && run
                .ends
                .iter()
                .any(|&e| pos + HEADER_LEN == e || pos + 2 * HEADER_LEN <= e)
    }

    /// Where the walk met bytes it could not frame (or the end it saw):
    /// every position from there on may start a record.
    pub fn unframed_from(&self) -> usize {
        self.frontier
    }

    /// Where the walk met bytes it could not frame (damage), if it did:
    /// past it, 12 zero bytes may be an empty value, a deleted record, or
    /// zeros inside a value.
    pub fn damaged_from(&self) -> Option<usize> {
        self.damaged_from
    }
}

/// A walk either builds the framing of the file or reads what is known.
enum Frame<'a> {
    Read(&'a Framing),
    Build(&'a mut Framing),
}

impl Frame<'_> {
    fn known(&self) -> &Framing {
        match self {
            Frame::Read(k) => k,
            Frame::Build(k) => k,
        }
    }
    fn note(&mut self, f: impl FnOnce(&mut Framing)) {
        if let Frame::Build(k) = self {
            f(k)
        }
    }
}

/// How a framed walk from `p` goes: (it ends well, pieces framed). At depth
/// 0 it follows records only, and a zero header also ends well.
fn frames_on(
    place: Place<'_>,
    bytes: &[u8],
    p: usize,
    depth: u8,
    known: &Framing,
) -> (bool, usize) {
    if depth == 0 {
        let mut at = p;
        let mut n = 0;
        while n < LOOKAHEAD {
            match place.record_at(bytes, at) {
                Some(h) => at += h.record_len() as usize,
                None => break,
            }
            n += 1;
        }
        let zeros = bytes[at.min(bytes.len())..bytes.len().min(at + HEADER_LEN)]
            .iter()
            .all(|&b| b == 0);
        return (n == LOOKAHEAD || zeros, n);
    }
    let mut n = 0;
    let mut good = true;
    walk_at_depth(
        place,
        bytes,
        p,
        depth - 1,
        true,
        Frame::Read(known),
        |_, piece| {
            if let Piece::Bad(_) = piece {
                good = false;
                return false;
            }
            n += 1;
            n < LOOKAHEAD
        },
    );
    (good, n)
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
    /// Whether the rebuild found nothing it had to guess.
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
    /// The next id, past every id seen.
    pub next_id: u32,
    by_location: HashMap<Location, u32>,
    /// What the rebuild found.
    pub report: RebuildReport,
}

impl<'a> Rebuilder<'a> {
    /// A rebuild into `table`, with ids from `next_id` on.
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

    /// Scans `bytes` (all of data file `file_nr`) from `start`; `lens`
    /// holds the length of every data file.
    pub fn scan_file(
        &mut self,
        file_nr: u16,
        keysize: u8,
        lens: &BTreeMap<u16, u64>,
        bytes: &[u8],
        start: usize,
    ) {
        let place = Place {
            file_nr,
            base: 0,
            lens,
            keysize,
        };
        walk(place, bytes, start, |pos, piece| {
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
pub fn walk(place: Place<'_>, bytes: &[u8], start: usize, f: impl FnMut(usize, Piece)) {
    walk_framed(place, bytes, start, f);
}

/// `walk`, returning where records may start in the bytes walked (file
/// offsets).
pub fn walk_framed(
    place: Place<'_>,
    bytes: &[u8],
    start: usize,
    mut f: impl FnMut(usize, Piece),
) -> Framing {
    let start = start.max(1);
    let mut framing = Framing::from(place.base + start);
    let mut bad = None;
    walk_at_depth(
        place,
        bytes,
        start,
        1,
        false,
        Frame::Build(&mut framing),
        |pos, piece| {
            if let Piece::Bad(_) = piece {
                bad = Some(place.base + pos);
            }
            f(pos, piece);
            true
        },
    );
    framing.damaged_from = bad;
    framing
}

/// The walk, with the lookahead depth for zero runs; `f` returns whether
/// to go on. A lookahead (`strict`) believes only plausible records.
fn walk_at_depth(
    place: Place<'_>,
    bytes: &[u8],
    start: usize,
    depth: u8,
    strict: bool,
    mut frame: Frame<'_>,
    mut f: impl FnMut(usize, Piece) -> bool,
) {
    let base = place.base;
    let mut pos = start.max(1);
    frame.note(|k| k.frontier = base + pos);
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
                Some((z, vec![z]))
            } else {
                after_zeros(place, bytes, pos + HEADER_LEN, z, depth, frame.known())
            };
            match end {
                Some((end, ends)) if end - pos >= HEADER_LEN => {
                    frame.note(|k| {
                        k.runs.push(ZeroSpan {
                            start: base + pos,
                            ends: ends.iter().map(|e| base + e).collect(),
                        });
                        k.frontier = base + end;
                    });
                    if !f(pos, Piece::ZeroRun(end - pos)) {
                        return;
                    }
                    pos = end;
                }
                Some((end, _)) => {
                    f(pos, Piece::Bad(format!("{} stray zero bytes", end - pos)));
                    return;
                }
                None => {
                    f(
                        pos,
                        Piece::Bad(format!(
                            "{} zero bytes followed by bytes that are no valid record",
                            z - pos
                        )),
                    );
                    return;
                }
            }
            continue;
        }
        let record = if strict {
            place.record_at(bytes, pos)
        } else {
            record_at(bytes, pos)
        };
        match record {
            Some(h) => {
                let at = pos;
                pos += h.record_len() as usize;
                frame.note(|k| {
                    k.starts.insert(base + at);
                    k.frontier = base + pos;
                });
                if !f(at, Piece::Record(h)) {
                    return;
                }
            }
            None => {
                f(
                    pos,
                    Piece::Bad(format!(
                        "{} bytes that form no valid record",
                        bytes.len() - pos
                    )),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_record;

    fn one_file(f: &[u8]) -> BTreeMap<u16, u64> {
        [(0, f.len() as u64)].into()
    }

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
        r.scan_file(0, 6, &one_file(&f), &f, 1);
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
        r.scan_file(0, 6, &one_file(&f), &f, 1);
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
