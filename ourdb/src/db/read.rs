//! Reads: ids, values and histories, through the memory maps or `pread`.

use super::*;

impl OurDb {
    /// The next id an insert will get (incremental mode).
    pub fn next_id(&self) -> Result<u32> {
        if !self.meta.config.incremental {
            return Err(Error::NotIncremental);
        }
        Ok(match &self.writer {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).next_id,
            None => self.ro_next_id,
        })
    }

    /// The lookup entry of `id` as stored (unresolved for short keysizes).
    pub fn raw_location(&self, id: u32) -> Option<Location> {
        if id >= self.meta.config.record_nr_max {
            return None;
        }
        let l = self.lookup.get(id);
        (!l.is_none()).then_some(l)
    }

    /// Whether `id` has a live record.
    pub fn contains(&self, id: u32) -> bool {
        id < self.meta.config.record_nr_max && !self.lookup.get(id).is_none()
    }

    /// Live ids, ascending, with their raw lookup location.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.lookup.iter().map(|(id, _)| id)
    }

    /// Live records, ascending by id: `(id, current value)`. A record that
    /// cannot be read yields its error and the iteration goes on.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Result<Vec<u8>>)> + '_ {
        self.ids().map(move |id| (id, self.get(id)))
    }

    /// Number of live ids.
    pub fn len(&self) -> usize {
        self.lookup.iter().count()
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.lookup.iter().next().is_none()
    }

    /// The current value of `id`.
    pub fn get(&self, id: u32) -> Result<Vec<u8>> {
        Ok(self.get_located(id)?.1)
    }

    /// The current value of `id` and the lookup entry it was read through
    /// (`raw_location`). Records are never rewritten, so the two always
    /// belong together, whatever writers do meanwhile.
    pub fn get_located(&self, id: u32) -> Result<(Location, Vec<u8>)> {
        self.check_range(id)?;
        let raw = self.lookup.get(id);
        if raw.is_none() {
            return Err(Error::NotFound(id));
        }
        let loc = if self.loose_addressing {
            self.resolve(id, raw)?
        } else {
            raw
        };
        let (_, value) = self.read_record(loc)?;
        Ok((raw, value))
    }

    /// The record at `loc`: its previous version's location (none for an
    /// id's first) and its value. For stores that address records exactly.
    pub fn read_at(&self, loc: Location) -> Result<(Location, Vec<u8>)> {
        if self.loose_addressing {
            return Err(Error::Config(
                "records by location need exact addressing".into(),
            ));
        }
        let (h, value) = self.read_record(loc)?;
        Ok((h.prev, value))
    }

    /// Up to `depth` versions of `id` that lie before `before` in the log,
    /// newest first, with their locations: the version chain walked back
    /// from the current one, skipping what lies at or after `before`.
    /// `NotFound` if the id has no current version. For stores that address
    /// records exactly (not V's loose keysizes).
    pub fn get_versions(
        &self,
        id: u32,
        before: Location,
        depth: usize,
    ) -> Result<Vec<(Location, Vec<u8>)>> {
        self.check_range(id)?;
        if self.loose_addressing {
            return Err(Error::Config(
                "versions by location need exact addressing".into(),
            ));
        }
        let mut loc = self.lookup.get(id);
        if loc.is_none() {
            return Err(Error::NotFound(id));
        }
        let mut out = Vec::new();
        while out.len() < depth && !loc.is_none() {
            let (h, value) = self.read_record(loc)?;
            if loc < before {
                out.push((loc, value));
            }
            loc = h.prev;
        }
        Ok(out)
    }

    /// Up to `depth` values of `id`, newest first (the current value first).
    pub fn get_history(&self, id: u32, depth: usize) -> Result<Vec<Vec<u8>>> {
        self.check_range(id)?;
        if depth == 0 {
            return Ok(Vec::new());
        }
        let loc = self.lookup.get(id);
        if loc.is_none() {
            return Err(Error::NotFound(id));
        }
        let mut loc = if self.loose_addressing {
            self.resolve(id, loc)?
        } else {
            loc
        };
        let mut out = Vec::new();
        loop {
            let (h, value) = self.read_record(loc)?;
            out.push(value);
            if h.prev.is_none() || out.len() >= depth {
                break;
            }
            // A short previous pointer is truncated like the lookup entry
            // V held when it wrote the record.
            loc = if self.loose_addressing {
                self.resolve_prev(id, h.prev, loc)?
            } else {
                h.prev
            };
        }
        Ok(out)
    }

    /// The open data files, in file number order.
    pub(super) fn data_files(&self) -> Vec<Arc<DataFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub(super) fn file(&self, nr: u16) -> Option<Arc<DataFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(nr as usize)
            .cloned()
            .flatten()
    }

    /// Reads bytes at `loc`: the map, else the writer's buffer, else `pread`.
    pub(super) fn read_bytes(&self, f: &DataFile, pos: u64, out: &mut [u8]) -> Result<()> {
        if f.read_mapped(pos, out) {
            return Ok(());
        }
        if let Some(m) = &self.writer {
            let w = m.lock().unwrap_or_else(|e| e.into_inner());
            let end = pos + out.len() as u64;
            if w.active.nr == f.nr && end > w.buf_start {
                // Part (or all) of the range is still in the writer's buffer.
                let split = w.buf_start.saturating_sub(pos) as usize;
                if split > 0 {
                    f.read_at(pos, &mut out[..split])?;
                }
                let off = (pos + split as u64 - w.buf_start) as usize;
                let src =
                    w.buf
                        .get(off..off + out.len() - split)
                        .ok_or_else(|| Error::Corrupt {
                            path: f.path().to_path_buf(),
                            detail: format!("record at {pos} runs past the end of the data"),
                        })?;
                out[split..].copy_from_slice(src);
                return Ok(());
            }
        }
        f.read_at(pos, out).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Error::Corrupt {
                    path: f.path().to_path_buf(),
                    detail: format!("record at {pos} runs past the end of the file"),
                }
            }
            e => e,
        })
    }

    /// Header and CRC-checked value of the record at `loc`.
    pub(super) fn read_record(&self, loc: Location) -> Result<(Header, Vec<u8>)> {
        // Fast path: the whole record lies in a map; one lock, no refcounts.
        let mapped = {
            let files = self.files.read().unwrap_or_else(|e| e.into_inner());
            files
                .get(loc.file_nr as usize)
                .and_then(Option::as_ref)
                .and_then(|f| f.with_map(|m| mapped_record(m, loc.position as usize)))
                .flatten()
        };
        if let Some((h, value)) = mapped {
            // Zero headers take the careful path (V's zeroed records).
            if h.check(&value) && !(h.len == 0 && h.prev.is_none() && h.crc == 0) {
                return Ok((h, value));
            }
        }
        let f = self.file(loc.file_nr).ok_or_else(|| Error::Corrupt {
            path: datafile::data_path(&self.dir, loc.file_nr),
            detail: format!("a lookup entry points at {loc}, in a data file that does not exist"),
        })?;
        if loc.position == 0 {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: "a location points at byte 0".into(),
            });
        }
        let mut hb = [0u8; HEADER_LEN];
        self.read_bytes(&f, loc.position as u64, &mut hb)?;
        let h = Header::decode(&hb);
        let mut value = vec![0u8; h.len as usize];
        self.read_bytes(&f, loc.position as u64 + HEADER_LEN as u64, &mut value)?;
        if !h.check(&value) {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: format!("CRC mismatch in the record at {loc}"),
            });
        }
        if hb == [0u8; HEADER_LEN] && self.zeroed_by_v_delete(&f, loc)? {
            return Err(Error::Corrupt {
                path: f.path().to_path_buf(),
                detail: format!("the record at {loc} was zeroed (V's delete hit the wrong record); its value is lost"),
            });
        }
        Ok((h, value))
    }
}

/// The record at `pos` when `map` holds all of it.
pub(super) fn mapped_record(map: &[u8], pos: usize) -> Option<(Header, Vec<u8>)> {
    let hb: &[u8; HEADER_LEN] = map.get(pos..pos + HEADER_LEN)?.try_into().ok()?;
    let h = Header::decode(hb);
    let start = pos + HEADER_LEN;
    let value = map.get(start..start + h.len as usize)?.to_vec();
    Some((h, value))
}
