//! Reading what V wrote: lookup entries of keysize < 6 that lost their file
//! number or high bits, records zeroed by V's misdirected deletes.

use super::*;

impl OurDb {
    /// An empty value is 12 zero bytes; so is the start of a record V's delete
    /// zeroed (12 + len zeros). A zero run of whole 12-byte steps is empty
    /// values; any other run is an empty value beside deleted records, or a
    /// live record V's misdirected delete zeroed (told apart below).
    pub(super) fn zeroed_by_v_delete(&self, f: &DataFile, loc: Location) -> Result<bool> {
        let start = loc.position as u64;
        let end = self.data_end(f)?;
        let window = (end - start).min((2 * HEADER_LEN + MAX_VALUE_LEN) as u64) as usize;
        let mut bytes = vec![0u8; window];
        self.read_bytes(f, start, &mut bytes)?;
        let z = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let run = if z == bytes.len() {
            z
        } else {
            // The next record may start with zero bytes of its own.
            let lens = self.file_lens()?;
            let place = scan::Place {
                file_nr: f.nr,
                base: start as usize,
                lens: &lens,
                keysize: self.keysize,
            };
            match scan::record_after_zeros(place, &bytes, HEADER_LEN, z) {
                Some(p) => p,
                None => return Ok(true),
            }
        };
        if run % HEADER_LEN == 0 {
            return Ok(false);
        }
        // V's misdirected delete zeroes a record in the wrong file at the
        // deleted record's position, and leaves that record intact: without
        // a CRC-valid record at this position in another file, the zeros
        // after this empty value are a record deleted where it was.
        for other in self.data_files().into_iter().filter(|o| o.nr != f.nr) {
            let mut hb = [0u8; HEADER_LEN];
            if other.read_at(start, &mut hb).is_err() || hb == [0u8; HEADER_LEN] {
                continue;
            }
            let h = Header::decode(&hb);
            let mut value = vec![0u8; h.len as usize];
            // The record the delete meant is left intact as the last version
            // of an id that is gone: no live id's record, and no record's
            // previous version. Anything else at the same position in
            // another file (a live value, an old version) is no evidence.
            let there = Location::new(other.nr, loc.position);
            if other.read_at(start + HEADER_LEN as u64, &mut value).is_ok()
                && h.check(&value)
                && self.record_starts(&other)?.may_start(loc.position as usize)
                && !self.lookup.iter().any(|(_, l)| l == there)
                && !self.is_previous_version(there)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether any record names `loc` as its previous version. One walk
    /// over every file: only the rare V-damage check above asks.
    pub(super) fn is_previous_version(&self, loc: Location) -> Result<bool> {
        let lens = self.file_lens()?;
        for f in self.data_files() {
            let mut bytes = vec![0u8; self.data_end(&f)? as usize];
            self.read_bytes(&f, 0, &mut bytes)?;
            let mut found = false;
            let place = scan::Place {
                file_nr: f.nr,
                base: 0,
                lens: &lens,
                keysize: self.keysize,
            };
            scan::walk(place, &bytes, 1, |_, piece| {
                if let scan::Piece::Record(h) = piece {
                    found |= h.prev == loc;
                }
            });
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The length of every data file, buffered writes included.
    pub(super) fn file_lens(&self) -> Result<BTreeMap<u16, u64>> {
        self.data_files()
            .iter()
            .map(|f| Ok((f.nr, self.data_end(f)?)))
            .collect()
    }

    /// Bytes of data in `f`, buffered writes included.
    pub(super) fn data_end(&self, f: &DataFile) -> Result<u64> {
        if let Some(m) = &self.writer {
            let w = m.lock().unwrap_or_else(|e| e.into_inner());
            if w.active.nr == f.nr {
                return Ok(w.end);
            }
        }
        f.len()
    }

    /// Where records (and empty values in zero runs) may start in `f`, from
    /// one framed walk of the file (`scan::Framing`). Records are never
    /// moved, so the walk stays true for the bytes it saw; what was appended
    /// since counts as unframed.
    pub(super) fn record_starts(&self, f: &DataFile) -> Result<Arc<scan::Framing>> {
        if let Some(starts) = self
            .record_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&f.nr)
        {
            return Ok(starts.clone());
        }
        let bytes = f.read_all()?;
        let lens = self.file_lens()?;
        let place = scan::Place {
            file_nr: f.nr,
            base: 0,
            lens: &lens,
            keysize: self.keysize,
        };
        let starts = Arc::new(scan::walk_framed(place, &bytes, 1, |_, _| {}));
        self.record_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(f.nr, starts.clone());
        Ok(starts)
    }

    /// Where a short (keysize < 6) lookup entry really points, in a
    /// directory whose files outgrew what the keysize addresses.
    pub(super) fn resolve(&self, id: u32, loc: Location) -> Result<Location> {
        self.resolve_among(id, loc, None)
    }

    /// Where a record's short previous-version pointer really points: V
    /// wrote it as it held the lookup entry, low bytes only, and it names
    /// an earlier record, so in the record's own file only positions
    /// before the record are candidates.
    pub(super) fn resolve_prev(&self, id: u32, prev: Location, of: Location) -> Result<Location> {
        self.resolve_among(id, prev, Some(of))
    }

    /// The candidates for a short location are every file and every
    /// position with the same low bytes (before `of` in its file, for a
    /// previous pointer); a candidate must be a place where the framed
    /// walk of its file allows a record to start (not inside another
    /// record's value, not inside a zero run where no whole empty value
    /// fits), and hold a CRC-valid record. Exactly one must remain;
    /// several give `Ambiguous`.
    pub(super) fn resolve_among(
        &self,
        id: u32,
        loc: Location,
        of: Option<Location>,
    ) -> Result<Location> {
        let step = 1u64 << (8 * self.keysize as u32);
        let files = self.data_files();
        let mut found = Vec::new();
        // 12 zero bytes past bytes the walk could not frame: an empty value
        // or zeros V's delete left, which nothing tells apart.
        let mut doubtful = Vec::new();
        for f in &files {
            let mut len = f.len().unwrap_or(0);
            if let Some(of) = of.filter(|of| of.file_nr == f.nr) {
                len = len.min(of.position as u64);
            }
            let starts = self.record_starts(f)?;
            let mut pos = loc.position as u64;
            while pos < len && pos <= u32::MAX as u64 {
                let cand = Location::new(f.nr, pos as u32);
                if pos > 0 && starts.may_start(pos as usize) {
                    if let Ok((h, _)) = self.read_record(cand) {
                        let zeros = h.len == 0 && h.crc == 0 && h.prev.is_none();
                        if zeros && starts.damaged_from().is_some_and(|d| pos as usize >= d) {
                            doubtful.push(cand);
                        } else {
                            found.push(cand);
                        }
                    }
                }
                pos += step;
            }
        }
        if found.is_empty() && !doubtful.is_empty() {
            return Err(Error::Corrupt {
                path: self.dir.clone(),
                detail: format!(
                    "id {id}: 12 zero bytes at {} lie past bytes no framing explains: an empty value cannot be told from zeros V's delete left",
                    doubtful[0]
                ),
            });
        }
        found.extend(doubtful);
        match found.len() {
            1 => Ok(found[0]),
            0 => Err(Error::Corrupt {
                path: self.dir.clone(),
                detail: match of {
                    None => format!(
                        "no valid record for id {id} at position {} in any data file",
                        loc.position
                    ),
                    Some(of) => format!(
                        "no valid record for id {id} at position {} before {of}: the previous version of {of} is lost",
                        loc.position
                    ),
                },
            }),
            _ => {
                let mut nrs: Vec<u16> = found.iter().map(|l| l.file_nr).collect();
                nrs.dedup();
                Err(Error::Ambiguous {
                    id,
                    position: loc.position,
                    keysize: self.keysize,
                    files: nrs,
                })
            }
        }
    }
}
