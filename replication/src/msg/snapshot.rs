//! Snapshots, worker → master: `Snapshot` opens a stream; the master
//! answers `Chunk`s of its data files, then `Done` (or `Failed`).

use ourdb::Location;

use crate::frame::Frame;
use crate::msg::{message, Streamed};

message! {
    /// Send a full copy of your data files.
    Snapshot = Snapshot;
}

message! {
    /// Bytes of data file `file_nr` at `offset` (frame `SnapshotChunk`).
    Chunk = SnapshotChunk {
        /// The data file.
        file_nr: u16,
        /// Where in it.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    }
}

message! {
    /// The copy is complete (frame `SnapshotDone`).
    Done = SnapshotDone {
        /// The log's epoch.
        epoch: u64,
        /// Where the copy ends.
        end: Location,
    }
}

/// One frame of a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// More bytes.
    Chunk(Chunk),
    /// The end.
    Done(Done),
}

impl From<Part> for Frame {
    fn from(p: Part) -> Frame {
        match p {
            Part::Chunk(c) => c.into(),
            Part::Done(d) => d.into(),
        }
    }
}

impl Part {
    /// The part in `frame`, or the frame back if it is none.
    pub fn from_frame(frame: Frame) -> std::result::Result<Part, Frame> {
        match Chunk::from_frame(frame) {
            Ok(c) => Ok(Part::Chunk(c)),
            Err(f) => Done::from_frame(f).map(Part::Done),
        }
    }
}

message!(@try_from Part);

impl Streamed for Snapshot {
    type Item = Part;
}
