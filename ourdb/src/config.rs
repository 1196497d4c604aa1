//! Database configuration, V's keysize rule, and the durability policy.

use crate::error::{Error, Result};

/// V's `OurDBConfig` defaults.
pub const DEFAULT_RECORD_NR_MAX: u32 = 16_777_215;
/// V's default largest value, in bytes.
pub const DEFAULT_RECORD_SIZE_MAX: u32 = 4096;
/// V's default data file size (500 MiB) before the next file starts.
pub const DEFAULT_FILE_SIZE: u32 = 524_288_000;

/// The shape of a database: V's `new()` arguments, plus an optional keysize override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Ids run from 0 to `record_nr_max - 1`.
    pub record_nr_max: u32,
    /// V never enforces it; ourkv enforces it for directories it created.
    pub record_size_max: u32,
    /// A data file is switched once it has reached this many bytes.
    pub file_size: u32,
    /// Ids are handed out by the database (true) or given by the caller.
    pub incremental: bool,
    /// Force a keysize (2, 3, 4 or 6) instead of deriving it.
    pub keysize: Option<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            record_nr_max: DEFAULT_RECORD_NR_MAX,
            record_size_max: DEFAULT_RECORD_SIZE_MAX,
            file_size: DEFAULT_FILE_SIZE,
            incremental: true,
            keysize: None,
        }
    }
}

impl Config {
    /// The keysize V derives from this configuration, or the forced one.
    pub fn keysize(&self) -> Result<u8> {
        match self.keysize {
            Some(k @ (2 | 3 | 4 | 6)) => Ok(k),
            Some(k) => Err(Error::Config(format!(
                "keysize must be 2, 3, 4 or 6, not {k}"
            ))),
            None => Ok(derive_keysize(self.record_nr_max, self.record_size_max)),
        }
    }

    /// Rejects configurations no database can use.
    pub fn validate(&self) -> Result<()> {
        if self.record_nr_max == 0 {
            return Err(Error::Config("record_nr_max must be at least 1".into()));
        }
        if self.file_size == 0 {
            return Err(Error::Config("file_size must be at least 1".into()));
        }
        self.keysize().map(|_| ())
    }
}

/// V's rule, u32 wrap-around included: 2 below 65536 ids, 3 below 2^24, else 4;
/// then 6 whenever `(record_size_max * record_nr_max) mod 2^32` halved exceeds ten million.
pub fn derive_keysize(record_nr_max: u32, record_size_max: u32) -> u8 {
    let mut keysize = if record_nr_max < 65_536 {
        2
    } else if record_nr_max < 16_777_216 {
        3
    } else {
        4
    };
    let product = record_size_max.wrapping_mul(record_nr_max);
    if product as f64 / 2.0 > 10_000_000.0 {
        keysize = 6;
    }
    keysize
}

/// When an acknowledged write is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Writes are buffered in the process and reach the OS when the buffer fills,
    /// on `flush`/`sync`, and on close. A crash can lose recent writes.
    Never,
    /// Every write is handed to the OS before it returns: survives a process
    /// crash (kill -9), not a power loss.
    #[default]
    Flush,
    /// Every write is fdatasync'ed before it returns.
    Always,
    /// Like `Always`, but concurrent writers share one fdatasync (group commit).
    Group,
}

impl std::str::FromStr for SyncPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "never" | "none" => Ok(SyncPolicy::Never),
            "flush" => Ok(SyncPolicy::Flush),
            "always" | "sync" => Ok(SyncPolicy::Always),
            "group" => Ok(SyncPolicy::Group),
            _ => Err(Error::Config(format!(
                "unknown sync policy {s:?} (never, flush, always, group)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysize_rule_matches_the_v_table() {
        // Every row of the table in the fixtures README.
        let rows = [
            (1000, 4096, 2),
            (65535, 305, 2),
            (65535, 306, 6),
            (65536, 1, 3),
            (100_000, 200, 3),
            (100_000, 201, 6),
            (1_048_576, 4096, 3),
            (1_048_576, 4095, 6),
            (16_777_215, 1, 3),
            (16_777_216, 1, 4),
            (16_777_216, 256, 4),
            (16_777_215, 4096, 6),
            (16_777_215, 1024, 6),
        ];
        for (nr, size, ks) in rows {
            assert_eq!(derive_keysize(nr, size), ks, "nr={nr} size={size}");
        }
    }

    #[test]
    fn forced_keysize_is_checked() {
        let mut c = Config {
            keysize: Some(5),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.keysize = Some(3);
        assert_eq!(c.keysize().unwrap(), 3);
    }
}
