//! The 12-byte record header of V's data files.

use crate::location::Location;

/// Header size in bytes.
pub const HEADER_LEN: usize = 12;
/// The largest value a record can hold: the length field is a u16.
pub const MAX_VALUE_LEN: usize = u16::MAX as usize;

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Value length in bytes.
    pub len: u16,
    /// CRC-32 (IEEE) of the value bytes.
    pub crc: u32,
    /// The previous version of the same id, or `Location::NONE`.
    pub prev: Location,
}

impl Header {
    /// The header of a record holding `value` whose previous version is at `prev`.
    pub fn for_value(value: &[u8], prev: Location) -> Self {
        debug_assert!(value.len() <= MAX_VALUE_LEN);
        Header {
            len: value.len() as u16,
            crc: crc32fast::hash(value),
            prev,
        }
    }

    /// u16 LE length, u32 LE CRC, u16 BE file_nr, u32 BE position.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.len.to_le_bytes());
        b[2..6].copy_from_slice(&self.crc.to_le_bytes());
        b[6..12].copy_from_slice(&self.prev.to_prev_bytes());
        b
    }

    /// Reads a header (the CRC is checked against the value separately).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        Header {
            len: u16::from_le_bytes([b[0], b[1]]),
            crc: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
            prev: Location::decode(6, &b[6..12]),
        }
    }

    /// Bytes the whole record takes on disk.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + self.len as u64
    }

    /// True when `value` matches the stored CRC.
    pub fn check(&self, value: &[u8]) -> bool {
        value.len() == self.len as usize && crc32fast::hash(value) == self.crc
    }
}

/// Encodes header and value into one buffer (what the writer appends).
pub fn encode_record(value: &[u8], prev: Location, out: &mut Vec<u8>) {
    out.extend_from_slice(&Header::for_value(value, prev).encode());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_v() {
        // First record of the a_incr_ks2 fixture: "value-1-v1", no previous version.
        let h = Header::for_value(b"value-1-v1", Location::NONE);
        assert_eq!(
            h.encode(),
            [0x0a, 0x00, 0x57, 0xa3, 0x00, 0x5b, 0, 0, 0, 0, 0, 0]
        );
        let h2 = Header::for_value(b"", Location::new(2, 0x0102_0304));
        let enc = h2.encode();
        assert_eq!(&enc[6..], &[0, 2, 1, 2, 3, 4]);
        assert_eq!(Header::decode(&enc), h2);
        assert!(h2.check(b""));
        assert!(!h.check(b"value-1-v2"));
    }
}
