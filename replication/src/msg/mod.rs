//! Typed messages, one module per sub-protocol, over the wire codec in
//! `frame.rs` (the wire format is that of docs/PROTOCOL.md, unchanged).
//!
//! Each message is a struct that converts into a [`Frame`] and back. A
//! one-reply request implements [`Request`], which fixes its reply type at
//! compile time: [`crate::Client::call`] returns that type, and a node's
//! handler for it (the `Handler` trait of its sub-protocol) must produce
//! it. Decoding a reply is done in one place ([`expect`], behind every
//! `TryFrom<Frame>`): a `Failed` frame becomes [`Error::Remote`] with its
//! code, any other unexpected frame [`Error::Protocol`].
//!
//! | module | requests → replies |
//! |---|---|
//! | [`writes`] | `Set`, `Delete` → `Written`, `Txn` → `TxnDone`, `Lease` → `LeaseIs` |
//! | [`reads`] | `ReadIndex` → `CursorIs`, `Get` → `Value`, `List` → `Keys`, `History` → `Values`, `ById` → `Record` |
//! | [`status`] | `Status` → `StatusIs`, `Digest` → `DigestIs` |
//! | [`watch`] | `Changes` → `ChangesAre`; `Watch` → `CursorIs`, then `Change`* |
//! | [`snapshot`] | `Snapshot` → `Chunk`*, `Done` |
//! | [`shipping`] | `Subscribe` → `Segment`*, answered by `Ack`s |
//! | [`raft`] | `Raft` → `RaftIs` (the metadata group) |

use crate::error::{Code, Error, Result};
use crate::frame::Frame;

pub mod raft;
pub mod reads;
pub mod shipping;
pub mod snapshot;
pub mod status;
pub mod watch;
pub mod writes;

/// A request answered by exactly one reply, of type `Reply` (or by a
/// `Failed` frame, which a caller receives as [`Error::Remote`]).
pub trait Request: Into<Frame> + Send + 'static {
    /// The reply a node answers this request with.
    type Reply: TryFrom<Frame, Error = Error> + Into<Frame> + Send + 'static;
}

/// A request that opens a stream of replies, each of type `Item` (or a
/// `Failed` frame that ends it).
pub trait Streamed: Into<Frame> + Send + 'static {
    /// What the stream carries back to the requester.
    type Item: TryFrom<Frame, Error = Error> + Into<Frame> + Send + 'static;
}

/// A node's refusal of a request: the body of a `Failed` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    /// Why, as a code the caller can act on.
    pub code: Code,
    /// Why, for people.
    pub message: String,
}

impl Failed {
    /// A refusal with `code` and the text of `message`.
    pub fn new(code: Code, message: impl std::fmt::Display) -> Failed {
        Failed {
            code,
            message: message.to_string(),
        }
    }
}

impl From<Failed> for Frame {
    fn from(f: Failed) -> Frame {
        Frame::Failed {
            code: f.code,
            message: f.message,
        }
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        Error::Remote {
            code: f.code,
            message: f.message,
        }
    }
}

/// A handler's answer to a request of type `R`: its reply, or a refusal.
pub type Answer<R> = std::result::Result<<R as Request>::Reply, Failed>;

/// The frame that carries an answer.
pub fn answer_frame<T: Into<Frame>>(answer: std::result::Result<T, Failed>) -> Frame {
    match answer {
        Ok(reply) => reply.into(),
        Err(failed) => failed.into(),
    }
}

/// Takes the message `pick` finds in `frame`: the one place where a frame
/// that is not the one expected becomes an error. `Failed` is the remote
/// error with its code; any other frame is a protocol error.
pub fn expect<T>(
    frame: Frame,
    pick: impl FnOnce(Frame) -> std::result::Result<T, Frame>,
) -> Result<T> {
    match pick(frame) {
        Ok(t) => Ok(t),
        Err(Frame::Failed { code, message }) => Err(Error::Remote { code, message }),
        Err(other) => Err(Error::Protocol(format!("unexpected {other:?}"))),
    }
}

/// Defines a message struct for one frame variant (`Name = Variant`;
/// most share the variant's name): its conversion into the frame, an inherent
/// `from_frame` that gives the frame back if it is another, and its
/// `TryFrom<Frame>` (through [`expect`]).
macro_rules! message {
    (
        $(#[$m:meta])*
        $name:ident = $variant:ident;
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            /// The message in `frame`, or the frame back if it is another.
            pub fn from_frame(
                frame: $crate::frame::Frame,
            ) -> std::result::Result<$name, $crate::frame::Frame> {
                match frame {
                    $crate::frame::Frame::$variant => Ok($name),
                    other => Err(other),
                }
            }
        }

        impl From<$name> for $crate::frame::Frame {
            fn from(_: $name) -> $crate::frame::Frame {
                $crate::frame::Frame::$variant
            }
        }

        $crate::msg::message!(@try_from $name);
    };
    (
        $(#[$m:meta])*
        $name:ident = $variant:ident {
            $($(#[$fm:meta])* $field:ident: $ty:ty),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)+
        }

        $crate::msg::message!(@convert $name = $variant { $($field),+ });
    };
    // The conversions only, for a struct defined elsewhere.
    (@convert $name:ident = $variant:ident { $($field:ident),+ }) => {
        impl $name {
            /// The message in `frame`, or the frame back if it is another.
            pub fn from_frame(
                frame: $crate::frame::Frame,
            ) -> std::result::Result<$name, $crate::frame::Frame> {
                match frame {
                    $crate::frame::Frame::$variant { $($field),+ } => Ok($name { $($field),+ }),
                    other => Err(other),
                }
            }
        }

        impl From<$name> for $crate::frame::Frame {
            fn from(m: $name) -> $crate::frame::Frame {
                $crate::frame::Frame::$variant { $($field: m.$field),+ }
            }
        }

        $crate::msg::message!(@try_from $name);
    };
    (@try_from $name:ident) => {
        impl TryFrom<$crate::frame::Frame> for $name {
            type Error = $crate::error::Error;
            fn try_from(f: $crate::frame::Frame) -> $crate::error::Result<$name> {
                $crate::msg::expect(f, $name::from_frame)
            }
        }
    };
}
pub(crate) use message;

/// Defines a sub-protocol's request enum (each variant a request struct of
/// the same name) and its handler trait, whose method for each request
/// returns that request's [`Request::Reply`]: the compiler pairs them.
macro_rules! dispatch {
    (
        $(#[$m:meta])*
        $enum:ident answered by $handler:ident {
            $($(#[$vm:meta])* $variant:ident => $method:ident),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $enum {
            $($(#[$vm])* $variant($variant),)+
        }

        /// What answers this sub-protocol: one method per request, each
        /// returning that request's reply (or a refusal).
        pub trait $handler: Send + Sync {
            $(
                #[doc = concat!("Answers a [`", stringify!($variant), "`].")]
                fn $method(
                    &self,
                    req: $variant,
                ) -> impl std::future::Future<Output = $crate::msg::Answer<$variant>> + Send;
            )+
        }

        impl $enum {
            /// The request in `frame`, or the frame back if it is none of
            /// this sub-protocol's.
            pub fn from_frame(
                frame: $crate::frame::Frame,
            ) -> std::result::Result<$enum, $crate::frame::Frame> {
                $(
                    let frame = match $variant::from_frame(frame) {
                        Ok(req) => return Ok($enum::$variant(req)),
                        Err(f) => f,
                    };
                )+
                Err(frame)
            }

            /// Answers the request with `handler`: the reply frame.
            pub async fn answer<H: $handler>(self, handler: &H) -> $crate::frame::Frame {
                match self {
                    $($enum::$variant(req) => $crate::msg::answer_frame(handler.$method(req).await),)+
                }
            }
        }

        impl From<$enum> for $crate::frame::Frame {
            fn from(r: $enum) -> $crate::frame::Frame {
                match r {
                    $($enum::$variant(req) => req.into(),)+
                }
            }
        }

        $crate::msg::message!(@try_from $enum);
    };
}
pub(crate) use dispatch;

/// A one-reply request (alone on a stream or tagged on a pipelined one),
/// by sub-protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A write: to the master.
    Write(writes::Write),
    /// A read at a cursor.
    Read(reads::Read),
    /// The cluster's state, a node's digest.
    Status(status::Admin),
    /// A bounded slice of a watch.
    Changes(watch::Changes),
    /// A message of the metadata Raft group.
    Raft(raft::Raft),
}

impl Call {
    /// The request in `frame`, or the frame back if it is no one-reply
    /// request (a reply, a stream opening, `Pipeline`, `Tagged`).
    pub fn from_frame(frame: Frame) -> std::result::Result<Call, Frame> {
        let frame = match writes::Write::from_frame(frame) {
            Ok(w) => return Ok(Call::Write(w)),
            Err(f) => f,
        };
        let frame = match reads::Read::from_frame(frame) {
            Ok(r) => return Ok(Call::Read(r)),
            Err(f) => f,
        };
        let frame = match status::Admin::from_frame(frame) {
            Ok(s) => return Ok(Call::Status(s)),
            Err(f) => f,
        };
        let frame = match watch::Changes::from_frame(frame) {
            Ok(c) => return Ok(Call::Changes(c)),
            Err(f) => f,
        };
        raft::Raft::from_frame(frame).map(Call::Raft)
    }
}

impl From<Call> for Frame {
    fn from(c: Call) -> Frame {
        match c {
            Call::Write(w) => w.into(),
            Call::Read(r) => r.into(),
            Call::Status(s) => s.into(),
            Call::Changes(c) => c.into(),
            Call::Raft(r) => r.into(),
        }
    }
}

/// The first frame of a stream, by what the stream is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Log shipping to a worker.
    Subscribe(shipping::Subscribe),
    /// A full copy of the master's data files.
    Snapshot(snapshot::Snapshot),
    /// A long-lived watch.
    Watch(watch::Watch),
    /// Many tagged one-reply requests.
    Pipeline,
    /// One one-reply request, or a frame that is none (refused by the
    /// node's answer to it).
    One(Frame),
}

impl From<Frame> for Opening {
    fn from(f: Frame) -> Opening {
        let f = match shipping::Subscribe::from_frame(f) {
            Ok(s) => return Opening::Subscribe(s),
            Err(f) => f,
        };
        let f = match snapshot::Snapshot::from_frame(f) {
            Ok(s) => return Opening::Snapshot(s),
            Err(f) => f,
        };
        let f = match watch::Watch::from_frame(f) {
            Ok(w) => return Opening::Watch(w),
            Err(f) => f,
        };
        match f {
            Frame::Pipeline => Opening::Pipeline,
            other => Opening::One(other),
        }
    }
}

impl From<Opening> for Frame {
    fn from(o: Opening) -> Frame {
        match o {
            Opening::Subscribe(s) => s.into(),
            Opening::Snapshot(s) => s.into(),
            Opening::Watch(w) => w.into(),
            Opening::Pipeline => Frame::Pipeline,
            Opening::One(f) => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use ourdb::Location;

    use super::*;
    use crate::cursor::Cursor;
    use crate::frame::{Ack, Change, Expect, Version, WorkerStatus};

    /// Through the wire encoding and back.
    fn wire(f: Frame) -> Frame {
        let b = f.encode();
        Frame::decode(&b[4..]).expect("decodes")
    }

    fn c() -> Cursor {
        Cursor::new(2, Location::new(3, 77))
    }

    fn v() -> Version {
        Version {
            epoch: 2,
            at: Location::new(3, 40),
        }
    }

    /// One of each reply and stream item, as frames.
    fn replies() -> Vec<Frame> {
        vec![
            writes::Written {
                cursor: c(),
                existed: true,
                version: v(),
            }
            .into(),
            reads::CursorIs { cursor: c() }.into(),
            reads::Value {
                value: Some(vec![1]),
                cursor: c(),
                version: v(),
            }
            .into(),
            reads::Keys {
                keys: vec!["a".into()],
                cursor: c(),
            }
            .into(),
            reads::Values {
                values: vec![vec![1], vec![]],
                cursor: c(),
            }
            .into(),
            reads::Record {
                entry: Some(("k".into(), vec![2])),
                cursor: c(),
            }
            .into(),
            status::StatusIs {
                cursor: c(),
                workers: vec![WorkerStatus {
                    addr: "[::1]:7000".into(),
                    acked: c(),
                    in_sync: true,
                    lag_ms: 5,
                }],
                commits: Default::default(),
            }
            .into(),
            status::DigestIs { text: "d".into() }.into(),
            watch::ChangesAre {
                changes: vec![change()],
                next: c(),
                applied: c(),
            }
            .into(),
            change().into(),
            snapshot::Chunk {
                file_nr: 1,
                offset: 9,
                bytes: vec![4; 3],
            }
            .into(),
            snapshot::Done {
                epoch: 2,
                end: Location::new(1, 12),
            }
            .into(),
            shipping::Segment {
                term: 0,
                hw: Location::new(0, 30),
                start: Location::new(0, 1),
                next: Location::new(0, 30),
                end: Location::new(0, 30),
                records: vec![7; 29],
            }
            .into(),
            shipping::Ack {
                cursor: Location::new(0, 30),
            }
            .into(),
        ]
    }

    fn change() -> Change {
        Change {
            cursor: c(),
            key: "w/1".into(),
            value: None,
            expired: false,
        }
    }

    /// `T` from `f` is `want`, and from every other reply frame a protocol
    /// error; a `Failed` frame is the remote error with its code.
    fn only<T>(want: T)
    where
        T: TryFrom<Frame, Error = Error> + Into<Frame> + Clone + PartialEq + Debug,
    {
        let f: Frame = want.clone().into();
        assert_eq!(T::try_from(wire(f.clone())).unwrap(), want);
        for other in replies().into_iter().filter(|o| *o != f) {
            match T::try_from(wire(other.clone())) {
                Err(Error::Protocol(m)) => assert!(m.starts_with("unexpected"), "{m}"),
                r => panic!("{other:?} as {want:?}: {r:?}"),
            }
        }
        for code in [Code::Lagging, Code::Other("from_a_newer_peer".into())] {
            match T::try_from(wire(Failed::new(code.clone(), "why").into())) {
                Err(Error::Remote { code: got, message }) => {
                    assert_eq!(got, code);
                    assert_eq!(message, "why");
                }
                r => panic!("Failed as {want:?}: {r:?}"),
            }
        }
    }

    /// A request and its reply round-trip through the wire; the request is
    /// a `Call`; its reply type takes its reply and nothing else.
    fn pair<R>(req: R, reply: R::Reply)
    where
        R: Request + TryFrom<Frame, Error = Error> + Clone + PartialEq + Debug,
        R::Reply: Clone + PartialEq + Debug,
    {
        let f: Frame = req.clone().into();
        assert_eq!(R::try_from(wire(f.clone())).unwrap(), req);
        let call = Call::from_frame(wire(f.clone())).expect("a call");
        assert_eq!(Frame::from(call), f);
        assert_eq!(Opening::from(f.clone()), Opening::One(f.clone()));
        // A request is no reply.
        assert!(matches!(
            R::Reply::try_from(f.clone()),
            Err(Error::Protocol(_))
        ));
        only(reply);
    }

    #[test]
    fn every_request_reply_pair_round_trips() {
        pair(
            writes::Set {
                key: "k/é".into(),
                value: vec![0, 255].into(),
                ack: Ack::All,
                expect: Expect::Version(v()),
                ttl_ms: 30_000,
                lease: 0,
            },
            writes::Written {
                cursor: c(),
                existed: true,
                version: v(),
            },
        );
        pair(
            writes::Delete {
                key: "k".into(),
                ack: Ack::Master,
                expect: Expect::NoneOf(vec![v()]),
            },
            writes::Written {
                cursor: c(),
                existed: true,
                version: v(),
            },
        );
        pair(
            writes::Txn {
                conditions: vec![crate::frame::TxnCondition::Version {
                    key: "k".into(),
                    expect: Expect::Present,
                }],
                ops: vec![crate::frame::TxnOp::Delete { key: "k".into() }],
                ack: Ack::All,
            },
            writes::TxnDone {
                cursor: c(),
                failed: None,
                results: vec![crate::frame::TxnResult::Delete { existed: true }],
            },
        );
        pair(
            writes::Lease {
                op: crate::frame::LeaseOp::KeepAlive { id: 5 },
                ack: Ack::All,
            },
            writes::LeaseIs {
                cursor: c(),
                lease: crate::frame::LeaseInfo {
                    id: 5,
                    ttl_ms: 1_000,
                    remaining_ms: 999,
                    key_count: 1,
                    keys: vec!["k".into()],
                },
            },
        );
        pair(reads::ReadIndex, reads::CursorIs { cursor: c() });
        pair(
            reads::Get {
                key: "k".into(),
                min_cursor: c(),
            },
            reads::Value {
                value: Some(vec![1]),
                cursor: c(),
                version: v(),
            },
        );
        pair(
            reads::List {
                prefix: "a/".into(),
                after: "a/b".into(),
                limit: 10,
                min_cursor: c(),
            },
            reads::Keys {
                keys: vec!["a".into()],
                cursor: c(),
            },
        );
        pair(
            reads::History {
                key: "k".into(),
                depth: 3,
                min_cursor: c(),
            },
            reads::Values {
                values: vec![vec![1], vec![]],
                cursor: c(),
            },
        );
        pair(
            reads::ById {
                id: 7,
                min_cursor: c(),
            },
            reads::Record {
                entry: Some(("k".into(), vec![2])),
                cursor: c(),
            },
        );
        pair(
            status::Status,
            status::StatusIs {
                cursor: c(),
                workers: vec![WorkerStatus {
                    addr: "[::1]:7000".into(),
                    acked: c(),
                    in_sync: true,
                    lag_ms: 5,
                }],
                commits: Default::default(),
            },
        );
        pair(status::Digest, status::DigestIs { text: "d".into() });
        pair(
            watch::Changes {
                prefix: "w/".into(),
                from: c(),
                until: Cursor::new(2, Location::new(4, 1)),
                max_bytes: 65536,
            },
            watch::ChangesAre {
                changes: vec![change()],
                next: c(),
                applied: c(),
            },
        );
    }

    /// A stream's opening round-trips and is no call; its items take their
    /// frames and nothing else.
    fn stream<S>(open: S, opening: Opening, items: Vec<S::Item>)
    where
        S: Streamed + TryFrom<Frame, Error = Error> + Clone + PartialEq + Debug,
        S::Item: Clone + PartialEq + Debug,
    {
        let f: Frame = open.clone().into();
        assert_eq!(S::try_from(wire(f.clone())).unwrap(), open);
        assert_eq!(Opening::from(wire(f.clone())), opening);
        assert_eq!(Frame::from(opening), f);
        assert_eq!(Call::from_frame(f.clone()), Err(f));
        for item in items {
            let f: Frame = item.clone().into();
            assert_eq!(S::Item::try_from(wire(f)).unwrap(), item);
        }
    }

    #[test]
    fn every_stream_round_trips() {
        let sub = shipping::Subscribe {
            epoch: 2,
            cursor: Location::new(3, 77),
            tail: vec![9; 3],
            node: 4,
            last_term: 3,
        };
        let segment = shipping::Segment {
            term: 0,
            hw: Location::new(0, 30),
            start: Location::new(0, 1),
            next: Location::new(0, 30),
            end: Location::new(0, 30),
            records: vec![7; 29],
        };
        stream(sub.clone(), Opening::Subscribe(sub), vec![segment.clone()]);
        only(segment);
        only(shipping::Ack {
            cursor: Location::new(0, 30),
        });
        let chunk = snapshot::Chunk {
            file_nr: 1,
            offset: 9,
            bytes: vec![4; 3],
        };
        let done = snapshot::Done {
            epoch: 2,
            end: Location::new(1, 12),
        };
        stream(
            snapshot::Snapshot,
            Opening::Snapshot(snapshot::Snapshot),
            vec![
                snapshot::Part::Chunk(chunk.clone()),
                snapshot::Part::Done(done.clone()),
            ],
        );
        only(chunk);
        only(done);
        let w = watch::Watch {
            prefix: "w/".into(),
            cursor: c(),
        };
        stream(w.clone(), Opening::Watch(w), vec![change()]);
        only(change());
        // A snapshot part is either frame of the snapshot, nothing else.
        for f in replies() {
            let is_part = matches!(f, Frame::SnapshotChunk { .. } | Frame::SnapshotDone { .. });
            assert_eq!(snapshot::Part::try_from(f).is_ok(), is_part);
        }
        assert_eq!(Opening::from(Frame::Pipeline), Opening::Pipeline);
        assert_eq!(Frame::from(Opening::Pipeline), Frame::Pipeline);
    }

    #[test]
    fn replies_and_framing_are_no_calls() {
        let tagged = Frame::Tagged {
            id: 1,
            frame: Box::new(Frame::ReadIndex),
        };
        for f in replies()
            .into_iter()
            .chain([tagged, Failed::new(Code::Gone, "m").into()])
        {
            assert_eq!(Call::from_frame(f.clone()), Err(f.clone()));
            assert_eq!(Opening::from(f.clone()), Opening::One(f));
        }
        assert_eq!(Call::from_frame(Frame::Pipeline), Err(Frame::Pipeline));
    }

    /// The sub-protocol enums answer through their handler, which returns
    /// each request's own reply type.
    #[test]
    fn a_handler_answers_each_request_with_its_reply() {
        struct Node;
        impl reads::Handler for Node {
            async fn read_index(&self, _: reads::ReadIndex) -> Answer<reads::ReadIndex> {
                Ok(reads::CursorIs { cursor: c() })
            }
            async fn get(&self, req: reads::Get) -> Answer<reads::Get> {
                Err(Failed::new(Code::Lagging, req.key))
            }
            async fn list(&self, req: reads::List) -> Answer<reads::List> {
                Ok(reads::Keys {
                    keys: vec![req.prefix],
                    cursor: req.min_cursor,
                })
            }
            async fn history(&self, _: reads::History) -> Answer<reads::History> {
                Ok(reads::Values {
                    values: vec![],
                    cursor: c(),
                })
            }
            async fn by_id(&self, _: reads::ById) -> Answer<reads::ById> {
                Ok(reads::Record {
                    entry: None,
                    cursor: c(),
                })
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answer = |f: Frame| {
            let Ok(Call::Read(r)) = Call::from_frame(f) else {
                panic!("a read")
            };
            rt.block_on(r.answer(&Node))
        };
        assert_eq!(
            answer(reads::ReadIndex.into()),
            reads::CursorIs { cursor: c() }.into()
        );
        assert_eq!(
            answer(
                reads::Get {
                    key: "k".into(),
                    min_cursor: c()
                }
                .into()
            ),
            Failed::new(Code::Lagging, "k").into()
        );
        assert_eq!(
            answer(
                reads::List {
                    prefix: "p".into(),
                    after: String::new(),
                    limit: 1,
                    min_cursor: c()
                }
                .into()
            ),
            reads::Keys {
                keys: vec!["p".into()],
                cursor: c()
            }
            .into()
        );
    }
}
