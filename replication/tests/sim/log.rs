//! A node's store in memory, shaped like ourdb's data files: numbered files
//! that start with one zero byte, whole records appended, a durable end
//! (what an fsync covered), recovery that cuts a torn tail, and a key index
//! rebuilt from the records. Records are `len u16 | sum u16 | kind | key | value`.

use std::collections::BTreeMap;

use ourdb::Location;

/// A record's payload: a put (`Some`) or a delete (`None`) of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub(crate) key: u8,
    pub(crate) value: Option<u32>,
}

const HEADER: usize = 4;

fn sum(payload: &[u8]) -> u16 {
    payload
        .iter()
        .fold(0x5a5au16, |s, b| s.rotate_left(3) ^ (*b as u16))
}

pub(crate) fn encode(r: &Rec) -> Vec<u8> {
    let mut p = vec![r.value.is_some() as u8, r.key];
    if let Some(v) = r.value {
        p.extend_from_slice(&v.to_le_bytes());
    }
    let mut out = Vec::with_capacity(HEADER + p.len());
    out.extend_from_slice(&(p.len() as u16).to_le_bytes());
    out.extend_from_slice(&sum(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// The record starting at `pos` of `bytes`, with its length, if whole and valid.
pub(crate) fn decode_at(bytes: &[u8], pos: usize) -> Option<(Rec, usize)> {
    let h = bytes.get(pos..pos + HEADER)?;
    let len = u16::from_le_bytes([h[0], h[1]]) as usize;
    let want = u16::from_le_bytes([h[2], h[3]]);
    let p = bytes.get(pos + HEADER..pos + HEADER + len)?;
    if len < 2 || sum(p) != want {
        return None;
    }
    let value = match (p[0], len) {
        (1, 6) => Some(u32::from_le_bytes([p[2], p[3], p[4], p[5]])),
        (0, 2) => None,
        _ => return None,
    };
    Some((Rec { key: p[1], value }, HEADER + len))
}

/// A shipped segment: whole records `[start, next)` of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) start: Location,
    pub(crate) next: Location,
    pub(crate) bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Log {
    pub(crate) epoch: u64,
    pub(crate) files: Vec<Vec<u8>>,
    /// The end as of the last sync.
    pub(crate) durable: Location,
    pub(crate) file_size: usize,
    /// key -> (value, where its record starts).
    pub(crate) index: BTreeMap<u8, (u32, Location)>,
}

impl Log {
    pub(crate) fn new(epoch: u64, file_size: usize) -> Log {
        Log {
            epoch,
            files: vec![vec![0]],
            durable: Location::new(0, 1),
            file_size,
            index: BTreeMap::new(),
        }
    }

    pub(crate) fn end(&self) -> Location {
        let nr = self.files.len() - 1;
        Location::new(nr as u16, self.files[nr].len() as u32)
    }

    fn apply_index(&mut self, r: &Rec, at: Location) {
        match r.value {
            Some(v) => {
                self.index.insert(r.key, (v, at));
            }
            None => {
                self.index.remove(&r.key);
            }
        }
    }

    /// Appends a record; where it starts.
    pub(crate) fn append(&mut self, r: &Rec) -> Location {
        let bytes = encode(r);
        let last = self.files.len() - 1;
        if self.files[last].len() > 1 && self.files[last].len() + bytes.len() > self.file_size {
            self.files.push(vec![0]);
        }
        let nr = self.files.len() - 1;
        let at = Location::new(nr as u16, self.files[nr].len() as u32);
        self.files[nr].extend_from_slice(&bytes);
        self.apply_index(r, at);
        at
    }

    pub(crate) fn sync(&mut self) {
        self.durable = self.end();
    }

    /// Whole records from `from` up to `upto` (at most `max` bytes, at
    /// least one record), in one file. `None` when `from` is no position
    /// of this log.
    pub(crate) fn read_upto(&self, from: Location, upto: Location, max: usize) -> Option<Seg> {
        let mut from = from;
        let f = self.files.get(from.file_nr as usize)?;
        if from.position as usize > f.len() || from.position == 0 {
            return None;
        }
        // At the end of a full file: go on in the next one.
        if from.position as usize == f.len() && (from.file_nr as usize) + 1 < self.files.len() {
            let nxt = Location::new(from.file_nr + 1, 1);
            if nxt <= upto {
                from = nxt;
            }
        }
        let f = &self.files[from.file_nr as usize];
        let stop = if upto.file_nr == from.file_nr {
            (upto.position as usize).min(f.len())
        } else if upto.file_nr > from.file_nr {
            f.len()
        } else {
            from.position as usize
        };
        let mut pos = from.position as usize;
        let mut out = Vec::new();
        while pos < stop {
            let (_, n) = decode_at(f, pos)?;
            if pos + n > stop || (!out.is_empty() && out.len() + n > max) {
                break;
            }
            out.extend_from_slice(&f[pos..pos + n]);
            pos += n;
        }
        Some(Seg {
            start: from,
            next: Location::new(from.file_nr, pos as u32),
            bytes: out,
        })
    }

    /// The bytes just before `at` in its file (at most `n`).
    pub(crate) fn bytes_before(&self, at: Location, n: usize) -> Option<Vec<u8>> {
        let f = self.files.get(at.file_nr as usize)?;
        let p = at.position as usize;
        if p > f.len() || p == 0 {
            return None;
        }
        Some(f[p.saturating_sub(n).max(1)..p].to_vec())
    }

    /// Writes shipped records at `start`, which must be the end (or the
    /// start of the next file). The new end, or `Err(our end)`.
    pub(crate) fn apply(&mut self, start: Location, bytes: &[u8]) -> Result<Location, Location> {
        let end = self.end();
        if start == Location::new(end.file_nr + 1, 1) {
            self.files.push(vec![0]);
        } else if start != end {
            return Err(end);
        }
        let mut recs = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let Some((r, n)) = decode_at(bytes, pos) else {
                return Err(self.end());
            };
            recs.push((r, pos));
            pos += n;
        }
        let nr = self.files.len() - 1;
        let base = self.files[nr].len();
        self.files[nr].extend_from_slice(bytes);
        for (r, off) in recs {
            self.apply_index(&r, Location::new(nr as u16, (base + off) as u32));
        }
        Ok(self.end())
    }

    /// A crash: the bytes past the durable end survive only up to `keep`
    /// more bytes (a torn tail), then recovery cuts what no longer forms
    /// whole records and rebuilds the index from the records.
    pub(crate) fn crash(&mut self, keep: usize) {
        let d = self.durable;
        self.files.truncate(d.file_nr as usize + 1);
        let mut extra = keep;
        // The page cache may have written some of the tail: up to `keep`
        // bytes of the unsynced part of the durable end's file.
        let f = &mut self.files[d.file_nr as usize];
        let stop = (d.position as usize + extra).min(f.len());
        extra = stop;
        f.truncate(extra);
        self.recover();
    }

    /// Cuts a torn tail, rebuilds the index, and counts all as durable.
    pub(crate) fn recover(&mut self) {
        self.index.clear();
        for nr in 0..self.files.len() {
            let mut pos = 1;
            while let Some((r, n)) = decode_at(&self.files[nr], pos) {
                self.apply_index(&r, Location::new(nr as u16, pos as u32));
                pos += n;
            }
            self.files[nr].truncate(pos);
        }
        self.durable = self.end();
    }

    /// The offline compaction of `ourkv db compact`: a new log of the next
    /// epoch holding each live key's value once.
    pub(crate) fn compacted(&self) -> Log {
        let mut out = Log::new(self.epoch + 1, self.file_size);
        for (&key, &(v, _)) in &self.index {
            out.append(&Rec {
                key,
                value: Some(v),
            });
        }
        out.sync();
        out
    }

    /// A copy of the log up to `upto` (a snapshot).
    pub(crate) fn snapshot(&self, upto: Location) -> Log {
        let mut out = self.clone();
        out.files.truncate(upto.file_nr as usize + 1);
        out.files[upto.file_nr as usize].truncate(upto.position as usize);
        out.recover();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_and_apply_round_trip_across_files() {
        let mut m = Log::new(1, 40);
        for i in 0..20 {
            m.append(&Rec {
                key: (i % 3) as u8,
                value: (i % 5 != 0).then_some(i),
            });
        }
        m.sync();
        let mut w = Log::new(1, 40);
        let mut at = w.end();
        while at != m.end() {
            let s = m.read_upto(at, m.end(), 25).unwrap();
            at = w.apply(s.start, &s.bytes).unwrap();
            assert_eq!(at, s.next);
        }
        assert_eq!(w.files, m.files);
        assert_eq!(w.index, m.index);
    }
}
