//! Record locations and their encodings in lookup entries.

use std::fmt;

/// Where a record starts: data file number and byte offset in it.
///
/// Position 0 never holds a record (every data file starts with one zero
/// byte), so `Location::NONE` (0, 0) means "no record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The data file number.
    pub file_nr: u16,
    /// The byte offset in it.
    pub position: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.db:{}", self.file_nr, self.position)
    }
}

impl Location {
    /// The empty location.
    pub const NONE: Location = Location {
        file_nr: 0,
        position: 0,
    };

    /// The location `position` in file `file_nr`.
    pub const fn new(file_nr: u16, position: u32) -> Self {
        Location { file_nr, position }
    }

    /// Whether this is [`Location::NONE`] (no record).
    pub fn is_none(self) -> bool {
        self == Self::NONE
    }

    /// Packs into a u64 (0 = none) for the atomic lookup table.
    pub fn pack(self) -> u64 {
        ((self.file_nr as u64) << 32) | self.position as u64
    }

    /// The location [`Location::pack`] made `v` from.
    pub fn unpack(v: u64) -> Self {
        Location {
            file_nr: (v >> 32) as u16,
            position: v as u32,
        }
    }

    /// True when a lookup entry of `keysize` bytes can store this location exactly.
    pub fn fits(self, keysize: u8) -> bool {
        match keysize {
            2 => self.file_nr == 0 && self.position <= 0xFFFF,
            3 => self.file_nr == 0 && self.position <= 0xFF_FFFF,
            4 => self.file_nr == 0,
            _ => true,
        }
    }

    /// Big-endian lookup entry of `keysize` bytes. Callers check `fits` first;
    /// this keeps only the low bytes as V does.
    pub fn encode(self, keysize: u8, out: &mut [u8]) {
        match keysize {
            2 => out[..2].copy_from_slice(&(self.position as u16).to_be_bytes()),
            3 => out[..3].copy_from_slice(&self.position.to_be_bytes()[1..]),
            4 => out[..4].copy_from_slice(&self.position.to_be_bytes()),
            _ => {
                out[..2].copy_from_slice(&self.file_nr.to_be_bytes());
                out[2..6].copy_from_slice(&self.position.to_be_bytes());
            }
        }
    }

    /// Decodes a big-endian lookup entry of `keysize` bytes.
    pub fn decode(keysize: u8, b: &[u8]) -> Self {
        match keysize {
            2 => Location::new(0, u16::from_be_bytes([b[0], b[1]]) as u32),
            3 => Location::new(0, u32::from_be_bytes([0, b[0], b[1], b[2]])),
            4 => Location::new(0, u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            _ => Location::new(
                u16::from_be_bytes([b[0], b[1]]),
                u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
            ),
        }
    }

    /// The 6-byte previous-version pointer of a record header (always full width).
    pub fn to_prev_bytes(self) -> [u8; 6] {
        let mut b = [0u8; 6];
        self.encode(6, &mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_each_keysize() {
        let loc = Location::new(0, 0x0102);
        for ks in [2u8, 3, 4, 6] {
            let mut b = [0u8; 6];
            loc.encode(ks, &mut b);
            assert_eq!(Location::decode(ks, &b), loc, "keysize {ks}");
        }
        let wide = Location::new(7, 0xA0B0C0D0);
        let mut b = [0u8; 6];
        wide.encode(6, &mut b);
        assert_eq!(b, [0, 7, 0xA0, 0xB0, 0xC0, 0xD0]);
        assert!(!wide.fits(4));
        assert!(Location::new(0, 0x1_0000).fits(3));
        assert!(!Location::new(0, 0x1_0000).fits(2));
        assert_eq!(Location::unpack(wide.pack()), wide);
    }
}
