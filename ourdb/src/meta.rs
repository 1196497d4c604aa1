//! `ourkv.meta`: the small file in which a directory written by ourkv records
//! its configuration. V never looks at it.

use std::fs;
use std::path::Path;

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;

/// The metadata file of a directory ourkv wrote.
pub const META_FILE: &str = "ourkv.meta";
const MAGIC: &str = "ourkv-ourdb-meta";
/// The version of `ourkv.meta` this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// Where the directory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Created by ourkv.
    Ourkv,
    /// Written by the V implementation first, adopted by ourkv.
    V,
}

/// The contents of `ourkv.meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The keysize of the lookup entries.
    pub keysize: u8,
    /// The configuration the directory was created with.
    pub config: Config,
    /// Who wrote the data: ourkv, or V (adopted).
    pub origin: Origin,
    /// Bumped by compaction: replicas use it to tell rewritten logs apart.
    pub epoch: u64,
}

impl Meta {
    fn render(&self) -> String {
        let c = &self.config;
        let body = format!(
            "{MAGIC}\nformat={FORMAT_VERSION}\nkeysize={}\nrecord_nr_max={}\nrecord_size_max={}\nfile_size={}\nincremental={}\norigin={}\nepoch={}\n",
            self.keysize,
            c.record_nr_max,
            c.record_size_max,
            c.file_size,
            c.incremental,
            match self.origin {
                Origin::Ourkv => "ourkv",
                Origin::V => "v",
            },
            self.epoch,
        );
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}crc={crc:08x}\n")
    }

    /// Writes the file atomically (temp file, fsync, rename, fsync directory).
    pub fn store(&self, dir: &Path) -> Result<()> {
        self.store_with(&crate::storage::RealStorage, dir)
    }

    /// [`Meta::store`] through `io`.
    pub(crate) fn store_with(&self, io: &dyn crate::storage::Storage, dir: &Path) -> Result<()> {
        write_atomic(io, &dir.join(META_FILE), self.render().as_bytes())
    }

    /// Reads the file, `None` if the directory has none.
    pub fn load(dir: &Path) -> Result<Option<Meta>> {
        let path = dir.join(META_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|detail| Error::Corrupt { path, detail })
    }

    fn parse(text: &str) -> std::result::Result<Meta, String> {
        let crc_at = text.rfind("crc=").ok_or("no crc line")?;
        let (body, crc_line) = text.split_at(crc_at);
        let want = u32::from_str_radix(crc_line.trim().trim_start_matches("crc="), 16)
            .map_err(|_| "bad crc line")?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err("not an ourkv metadata file (bad magic)".into());
        }
        let mut get = std::collections::HashMap::new();
        for line in lines {
            let (k, v) = line.split_once('=').ok_or("line without '='")?;
            get.insert(k, v);
        }
        let field = |k: &str| get.get(k).copied().ok_or(format!("missing field {k}"));
        let num = |k: &str| -> std::result::Result<u64, String> {
            field(k)?
                .parse::<u64>()
                .map_err(|_| format!("bad number in {k}"))
        };
        let format = num("format")?;
        if format != FORMAT_VERSION as u64 {
            return Err(format!(
                "format version {format} is not supported (this build reads {FORMAT_VERSION})"
            ));
        }
        let u32_of = |k: &str| -> std::result::Result<u32, String> {
            u32::try_from(num(k)?).map_err(|_| format!("{k} out of range"))
        };
        let keysize = num("keysize")? as u8;
        let config = Config {
            record_nr_max: u32_of("record_nr_max")?,
            record_size_max: u32_of("record_size_max")?,
            file_size: u32_of("file_size")?,
            incremental: field("incremental")? == "true",
            keysize: Some(keysize),
        };
        config.validate().map_err(|e| e.to_string())?;
        let origin = match field("origin")? {
            "ourkv" => Origin::Ourkv,
            "v" => Origin::V,
            o => return Err(format!("unknown origin {o}")),
        };
        Ok(Meta {
            keysize,
            config,
            origin,
            epoch: num("epoch")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta {
            keysize: 6,
            config: Config {
                keysize: Some(6),
                ..Config::default()
            },
            origin: Origin::Ourkv,
            epoch: 3,
        };
        m.store(dir.path()).unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), Some(m));
        let p = dir.path().join(META_FILE);
        let t = fs::read_to_string(&p)
            .unwrap()
            .replace("epoch=3", "epoch=4");
        fs::write(&p, t).unwrap();
        assert!(matches!(Meta::load(dir.path()), Err(Error::Corrupt { .. })));
    }
}
