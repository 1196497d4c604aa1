//! A seeded, deterministic simulation of a master, workers and a gateway
//! with its clients, over an in-memory network that delays, drops,
//! duplicates and reorders messages, with crashes that lose what was not
//! synced, pauses, partitions and compactions.
//!
//! The decisions are the ones the real nodes take, from
//! `replication::proto`: the master's worker progress and in-sync set
//! (`Followers`), the answer to a subscription and the read rules
//! (`shipping`), the worker's segment handling (`Follower`) and the
//! workers' read-index batching for strong reads (`ReadIndexBatch`: the
//! gateway sends a strong read as one request, and the worker asks the
//! master for the read index). What is simulated is
//! what they drive: the stores (`log.rs`, in memory), the network, the
//! clock and the clients.
//!
//! Checked: every acknowledged write survives (final strong reads of every
//! key join the history); strong reads and writes are linearizable per key;
//! a session read never goes back before the client's own write; stale
//! reads return only written values; a worker never holds a record the
//! master has not made durable; after the faults stop, every replica is
//! byte-identical to the master.
//!
//! `cargo test -p replication --test sim` runs a bounded number of seeds.
//! `OURKV_SIM_SEEDS=10000` runs more; `OURKV_SIM_SEED=N` replays one, and a
//! failing seed prints that line.

mod check;
mod log;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;

use ourdb::Location;
use replication::proto::follower::{Recovery, Segment};
use replication::proto::shipping::{self, ReadAt, Subscription};
use replication::proto::{Follower, Followers, ReadIndexBatch, Transition};
use replication::{Code, Cursor};

use check::{Kind, Op};
use log::{Log, Rec, Seg};

/// Microseconds of simulated time.
type Time = u64;

const MS: Time = 1000;
const FILE_SIZE: usize = 256;
const SEGMENT_MAX: usize = 96;
const TAIL_CHECK: usize = 16;
const ACK_TIMEOUT: Time = 400 * MS;
const READ_WAIT: Time = 600 * MS;
const IDLE_TIMEOUT: Time = 1000 * MS;
const TICK: Time = 100 * MS;
const CLIENT_TIMEOUT: Time = 3000 * MS;
const HEDGE: Time = 150 * MS;
const MAX_LAG: u64 = 2048;

/// Mistakes the simulation can be told to make, to show it catches them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bugs {
    /// Ship records past the commit cursor (not yet durable).
    pub(crate) ship_past_commit: bool,
    /// A master answers reads from records it has not made durable.
    pub(crate) master_reads_unsynced: bool,
    /// Compare cursors by position only, leaving out the epoch.
    pub(crate) epochless_cursors: bool,
    /// A worker answers a strong read at the last read index it got
    /// instead of asking the master after the read arrived.
    reuse_the_last_index: bool,
}

/// splitmix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Master,
    Worker(usize),
    Gateway,
}

#[derive(Clone, Debug)]
enum Msg {
    // Log shipping; `stream` names one subscription.
    Subscribe {
        stream: u64,
        worker: usize,
        cursor: Cursor,
        tail: Option<Vec<u8>>,
    },
    Segment {
        stream: u64,
        epoch: u64,
        seg: Seg,
    },
    Ack {
        stream: u64,
        worker: usize,
        cursor: Cursor,
    },
    Heartbeat {
        stream: u64,
    },
    Refused {
        stream: u64,
        code: Code,
    },
    SnapshotReq {
        stream: u64,
        worker: usize,
    },
    Snapshot {
        stream: u64,
        log: Box<Log>,
    },
    // Gateway to master and back.
    Write {
        req: u64,
        rec: Rec,
        all: bool,
    },
    Written {
        req: u64,
        cursor: Cursor,
    },
    // Worker to master and back: a strong read's read index.
    ReadIndex {
        round: u64,
    },
    Index {
        round: u64,
        cursor: Cursor,
    },
    // Gateway to any node and back.
    Get {
        req: u64,
        attempt: usize,
        key: u8,
        min: Cursor,
    },
    Value {
        req: u64,
        value: Option<u32>,
    },
    Refuse {
        req: u64,
        attempt: usize,
    },
}

#[derive(Clone, Debug)]
enum Timer {
    Sync,
    Tick,
    AckDeadline { end: Location },
    ReadDeadline { req: u64 },
    Restart,
    Resume,
    Crash,
    ClientNext { client: usize },
    WriteTimeout { req: u64 },
    RoundTimeout { round: u64 },
    Hedge { req: u64, attempt: usize },
    Fault,
}

#[derive(Debug)]
enum Event {
    Deliver { from: Node, to: Node, msg: Msg },
    Timer { node: Node, inc: u64, timer: Timer },
}

struct Stream {
    id: u64,
    next: Location,
    heard: Time,
}

struct PendingWrite {
    req: u64,
    end: Location,
    all: bool,
    durable: bool,
    timed_out: bool,
}

struct ParkedRead {
    req: u64,
    attempt: usize,
    key: u8,
    min: Cursor,
    /// A master's read already made, waiting for its records to be durable.
    seen: Option<(Option<u32>, Location)>,
}

struct Master {
    up: bool,
    inc: u64,
    log: Log,
    followers: Followers,
    commit: Location,
    streams: BTreeMap<usize, Stream>,
    writes: Vec<PendingWrite>,
    reads: Vec<ParkedRead>,
    sync_due: bool,
}

struct Worker {
    up: bool,
    paused: bool,
    inc: u64,
    log: Log,
    follower: Follower,
    stream: u64,
    heard: Time,
    reads: Vec<ParkedRead>,
    /// Strong reads waiting for the next read-index round.
    batch: ReadIndexBatch<ParkedRead>,
    /// The round out, and the strong reads it answers.
    round: u64,
    round_waiting: Vec<ParkedRead>,
    /// The last read index it got (only a deliberate mistake uses it).
    last_index: Option<Cursor>,
    /// Timers and messages that reached it while paused.
    held: Vec<Event>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Strong,
    Session,
    Stale,
}

struct ReadOp {
    op: usize,
    key: u8,
    min: Cursor,
    attempt: usize,
    order: Vec<Node>,
}

struct Client {
    /// The cursor of this client's last answered write, and per key the op
    /// index of its last answered write to that key.
    token: Cursor,
    own: BTreeMap<u8, usize>,
    busy: bool,
}

struct Gateway {
    /// req -> (client, op index) for writes in flight.
    writes: BTreeMap<u64, (usize, usize)>,
    reads: BTreeMap<u64, (usize, ReadOp)>,
}

pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) clients: usize,
    pub(crate) keys: u8,
    /// Simulated time with faults, then the same again without.
    pub(crate) run: Time,
    pub(crate) faults: bool,
    pub(crate) bugs: Bugs,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 2,
            clients: 4,
            keys: 4,
            run: 4000 * MS,
            faults: true,
            bugs: Bugs::default(),
        }
    }
}

struct Sim {
    cfg: Config,
    rng: Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, Event>,
    master: Master,
    workers: Vec<Worker>,
    gateway: Gateway,
    clients: Vec<Client>,
    ops: Vec<Op>,
    next_req: u64,
    next_value: u32,
    next_stream: u64,
    /// Links cut until the given time: (a, b) both ways.
    cut: Vec<(Node, Node, Time)>,
    /// Per stream and direction (true: to the master), when its last
    /// message arrives; and the streams that lost one.
    lanes: BTreeMap<(u64, bool), Time>,
    broken: std::collections::BTreeSet<(u64, bool)>,
    faults_on: bool,
    violations: Vec<String>,
    /// Counts for the report: answered ops, faults, snapshots.
    stats: BTreeMap<&'static str, u64>,
}

fn addr(w: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7001 + w as u16))
}

impl Sim {
    fn new(seed: u64, cfg: Config) -> Sim {
        let workers = (0..cfg.workers)
            .map(|_| Worker {
                up: true,
                paused: false,
                inc: 0,
                log: Log::new(1, FILE_SIZE),
                follower: Follower::new(1, Location::new(0, 1)),
                stream: 0,
                heard: 0,
                reads: Vec::new(),
                batch: ReadIndexBatch::default(),
                round: 0,
                round_waiting: Vec::new(),
                last_index: None,
                held: Vec::new(),
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                token: Cursor::ZERO,
                own: BTreeMap::new(),
                busy: false,
            })
            .collect();
        let mut sim = Sim {
            rng: Rng(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            master: Master {
                up: true,
                inc: 0,
                log: Log::new(1, FILE_SIZE),
                followers: Followers::new(MAX_LAG, FILE_SIZE as u64),
                commit: Location::new(0, 1),
                streams: BTreeMap::new(),
                writes: Vec::new(),
                reads: Vec::new(),
                sync_due: false,
            },
            workers,
            gateway: Gateway {
                writes: BTreeMap::new(),
                reads: BTreeMap::new(),
            },
            clients,
            ops: Vec::new(),
            next_req: 1,
            next_value: 1,
            next_stream: 1,
            cut: Vec::new(),
            lanes: BTreeMap::new(),
            broken: Default::default(),
            faults_on: cfg.faults,
            violations: Vec::new(),
            stats: BTreeMap::new(),
            cfg,
        };
        sim.timer(Node::Master, Timer::Tick, TICK);
        for w in 0..sim.cfg.workers {
            let at = sim.rng.range(1, TICK);
            sim.timer(Node::Worker(w), Timer::Tick, at);
        }
        for c in 0..sim.cfg.clients {
            let at = sim.rng.range(1, 20 * MS);
            sim.timer(Node::Gateway, Timer::ClientNext { client: c }, at);
        }
        if sim.faults_on {
            sim.timer(Node::Gateway, Timer::Fault, 300 * MS);
        }
        sim
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn push(&mut self, at: Time, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn inc(&self, node: Node) -> u64 {
        match node {
            Node::Master => self.master.inc,
            Node::Worker(w) => self.workers[w].inc,
            Node::Gateway => 0,
        }
    }

    fn timer(&mut self, node: Node, timer: Timer, after: Time) {
        let inc = self.inc(node);
        self.push(self.now + after, Event::Timer { node, inc, timer });
    }

    fn is_cut(&self, a: Node, b: Node) -> bool {
        self.cut
            .iter()
            .any(|&(x, y, until)| until > self.now && ((x, y) == (a, b) || (x, y) == (b, a)))
    }

    /// Sends `msg`, delayed 50 µs to 2 ms so that messages pass each other.
    /// A message of a log-shipping stream keeps its stream's order (QUIC
    /// delivers a stream in order); when one is lost, the stream is broken
    /// and carries nothing more (the connection is gone, both ends notice
    /// by their idle timeout). Requests and answers travel on streams of
    /// their own: they are lost or delivered twice (a subscription or a
    /// read sent again) independently, and pass each other. A write is
    /// never delivered twice (no one sends a write again).
    fn send(&mut self, from: Node, to: Node, msg: Msg) {
        let cut = self.is_cut(from, to);
        let faulty = self.faults_on;
        let lane = match &msg {
            Msg::Segment { stream, .. }
            | Msg::Heartbeat { stream }
            | Msg::Refused { stream, .. }
            | Msg::Snapshot { stream, .. } => Some((*stream, false)),
            Msg::Ack { stream, .. } | Msg::SnapshotReq { stream, .. } => Some((*stream, true)),
            _ => None,
        };
        if let Some(lane) = lane {
            if self.broken.contains(&lane) {
                return;
            }
            if cut || (faulty && self.rng.chance(1)) {
                self.count("broken streams");
                self.broken.insert(lane);
                return;
            }
            let at = (self.now + self.rng.range(50, 2000))
                .max(self.lanes.get(&lane).map_or(0, |t| t + 1));
            self.lanes.insert(lane, at);
            self.push(at, Event::Deliver { from, to, msg });
            return;
        }
        if cut || (faulty && self.rng.chance(1)) {
            self.count("dropped");
            return;
        }
        let twice = faulty && !matches!(msg, Msg::Write { .. }) && self.rng.chance(1);
        for _ in 0..1 + twice as usize {
            let delay = self.rng.range(50, 2000);
            self.push(
                self.now + delay,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
    }

    /// Whether `reached` covers `min`, by the real rule (or the buggy one).
    fn reached(&self, reached: Cursor, min: Cursor) -> bool {
        if self.cfg.bugs.epochless_cursors {
            return reached.at >= min.at;
        }
        shipping::read_at(reached, min) == ReadAt::Now
    }

    fn run(&mut self) {
        let stop_faults = self.cfg.run;
        let end = self.cfg.run * 2 + 2000 * MS;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            if at >= stop_faults && self.faults_on {
                self.heal();
            }
            let e = self.events.remove(&seq).expect("queued event");
            self.handle(e);
            if self.violations.len() > 3 {
                return;
            }
        }
    }

    /// Faults stop: every node up, nothing paused or cut.
    fn heal(&mut self) {
        self.faults_on = false;
        self.cut.clear();
        if !self.master.up {
            self.restart_master();
        }
        for w in 0..self.workers.len() {
            if !self.workers[w].up {
                self.restart_worker(w);
            }
            if self.workers[w].paused {
                self.resume(w);
            }
        }
    }

    fn handle(&mut self, e: Event) {
        self.deliver(e);
        // After every step: no worker holds what the master has not made durable.
        for w in 0..self.workers.len() {
            self.check_prefix(w);
        }
    }

    fn deliver(&mut self, e: Event) {
        match e {
            Event::Timer { node, inc, timer } => {
                if inc != self.inc(node) {
                    return;
                }
                match node {
                    Node::Master if self.master.up => self.master_timer(timer),
                    Node::Master => {
                        if matches!(timer, Timer::Restart) {
                            self.restart_master();
                        }
                    }
                    Node::Worker(w) => {
                        if matches!(timer, Timer::Restart) && !self.workers[w].up {
                            self.restart_worker(w);
                        } else if matches!(timer, Timer::Resume) {
                            self.resume(w);
                        } else if self.workers[w].paused {
                            self.workers[w].held.push(Event::Timer { node, inc, timer });
                        } else if self.workers[w].up {
                            self.worker_timer(w, timer);
                        }
                    }
                    Node::Gateway => self.gateway_timer(timer),
                }
            }
            Event::Deliver { from, to, msg } => match to {
                Node::Master if self.master.up => self.master_msg(from, msg),
                Node::Master => {}
                Node::Worker(w) if self.workers[w].paused => {
                    self.workers[w].held.push(Event::Deliver { from, to, msg })
                }
                Node::Worker(w) if self.workers[w].up => self.worker_msg(w, from, msg),
                Node::Worker(_) => {}
                Node::Gateway => self.gateway_msg(from, msg),
            },
        }
    }

    // ---------------------------------------------------------------- master

    fn master_cursor(&self) -> Cursor {
        Cursor::new(self.master.log.epoch, self.master.commit)
    }

    fn master_timer(&mut self, t: Timer) {
        match t {
            Timer::Sync => {
                // Group commit: one sync for everything appended so far.
                self.master.sync_due = false;
                self.master.log.sync();
                self.master.commit = self.master.log.durable;
                self.after_commit();
            }
            Timer::Tick => {
                let now = self.now;
                let gone: Vec<usize> = self
                    .master
                    .streams
                    .iter()
                    .filter(|(_, s)| now - s.heard > IDLE_TIMEOUT)
                    .map(|(&w, _)| w)
                    .collect();
                for w in gone {
                    self.master.streams.remove(&w);
                    let t = self.master.followers.remove(addr(w));
                    committed(&mut self.master.followers, t);
                }
                let beats: Vec<(usize, u64)> = self
                    .master
                    .streams
                    .iter()
                    .map(|(&w, s)| (w, s.id))
                    .collect();
                for (w, id) in beats {
                    self.send(Node::Master, Node::Worker(w), Msg::Heartbeat { stream: id });
                }
                self.finish_writes();
                self.timer(Node::Master, Timer::Tick, TICK);
            }
            Timer::AckDeadline { end } => {
                // An `ack=all` write waited its time: the workers that did
                // not reach it leave the in-sync set, then it is answered.
                let waiting = self
                    .master
                    .writes
                    .iter_mut()
                    .filter(|w| w.all && w.durable && w.end == end)
                    .fold(false, |any, w| {
                        w.timed_out = true;
                        any | true
                    });
                if waiting {
                    let t = self.master.followers.on_ack_timeout(end);
                    committed(&mut self.master.followers, t);
                }
                self.finish_writes();
            }
            Timer::Crash => self.crash_master(),
            Timer::ReadDeadline { req } => {
                if let Some(i) = self.master.reads.iter().position(|r| r.req == req) {
                    let r = self.master.reads.remove(i);
                    self.send(
                        Node::Master,
                        Node::Gateway,
                        Msg::Refuse {
                            req: r.req,
                            attempt: r.attempt,
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// The commit cursor moved: answer what waited for it, ship to workers.
    fn after_commit(&mut self) {
        for w in self.master.writes.iter_mut() {
            if !w.durable && w.end <= self.master.commit {
                w.durable = true;
                if w.all {
                    let (end, inc) = (w.end, self.master.inc);
                    self.seq += 1;
                    let seq = self.seq;
                    self.queue.push(Reverse((self.now + ACK_TIMEOUT, seq)));
                    self.events.insert(
                        seq,
                        Event::Timer {
                            node: Node::Master,
                            inc,
                            timer: Timer::AckDeadline { end },
                        },
                    );
                }
            }
        }
        self.finish_writes();
        self.serve_master_reads();
        let ids: Vec<usize> = self.master.streams.keys().copied().collect();
        for w in ids {
            self.ship(w);
        }
    }

    /// Answers the writes whose acknowledgement condition holds.
    fn finish_writes(&mut self) {
        let low = self.master.followers.wait_set_applied();
        let cursor = self.master_cursor();
        let mut done = Vec::new();
        self.master.writes.retain(|w| {
            let ok = w.durable && (!w.all || low >= w.end || w.timed_out);
            if ok {
                done.push(w.req);
            }
            !ok
        });
        for req in done {
            // The cursor after the write: at least its end (committed).
            self.send(Node::Master, Node::Gateway, Msg::Written { req, cursor });
        }
    }

    fn ship(&mut self, w: usize) {
        let upto = if self.cfg.bugs.ship_past_commit {
            self.master.log.end()
        } else {
            self.master.commit
        };
        loop {
            let Some(s) = self.master.streams.get(&w) else {
                return;
            };
            let (id, next) = (s.id, s.next);
            let Some(seg) = self.master.log.read_upto(next, upto, SEGMENT_MAX) else {
                // No position of our log (a crash took it back): the
                // worker must start over.
                self.master.streams.remove(&w);
                let t = self.master.followers.remove(addr(w));
                committed(&mut self.master.followers, t);
                self.send(
                    Node::Master,
                    Node::Worker(w),
                    Msg::Refused {
                        stream: id,
                        code: Code::Cursor,
                    },
                );
                return;
            };
            let empty = seg.bytes.is_empty();
            if let Some(s) = self.master.streams.get_mut(&w) {
                s.next = seg.next;
            }
            if empty {
                return;
            }
            let epoch = self.master.log.epoch;
            self.send(
                Node::Master,
                Node::Worker(w),
                Msg::Segment {
                    stream: id,
                    epoch,
                    seg,
                },
            );
        }
    }

    fn master_msg(&mut self, from: Node, msg: Msg) {
        match msg {
            Msg::Write { req, rec, all } => {
                self.master.log.append(&rec);
                self.crash_point(1);
                let end = self.master.log.end();
                self.master.writes.push(PendingWrite {
                    req,
                    end,
                    all,
                    durable: false,
                    timed_out: false,
                });
                if !self.master.sync_due {
                    self.master.sync_due = true;
                    // Now and then a slow disk.
                    let d = if self.rng.chance(10) {
                        self.rng.range(10 * MS, 60 * MS)
                    } else {
                        self.rng.range(100, 3000)
                    };
                    self.timer(Node::Master, Timer::Sync, d);
                }
            }
            Msg::ReadIndex { round } => {
                let cursor = self.master_cursor();
                self.send(Node::Master, from, Msg::Index { round, cursor });
            }
            Msg::Get {
                req,
                attempt,
                key,
                min,
            } => {
                self.count("master reads");
                // A strong read: the read index now.
                let min = if min.is_strong() {
                    self.master_cursor()
                } else {
                    min
                };
                self.master.reads.push(ParkedRead {
                    req,
                    attempt,
                    key,
                    min,
                    seen: None,
                });
                self.timer(Node::Master, Timer::ReadDeadline { req }, READ_WAIT);
                self.serve_master_reads();
            }
            Msg::Subscribe {
                stream,
                worker,
                cursor,
                tail,
            } => {
                let ours = self.master.log.epoch;
                let tail_same = match (&tail, self.master.log.bytes_before(cursor.at, TAIL_CHECK)) {
                    (Some(t), Some(b)) => *t == b && cursor.at <= self.master.commit,
                    _ => false,
                };
                match shipping::subscribe(ours, cursor, tail_same) {
                    Subscription::Ship(from) => {
                        self.master.streams.insert(
                            worker,
                            Stream {
                                id: stream,
                                next: from,
                                heard: self.now,
                            },
                        );
                        let commit = self.master.commit;
                        let t = self.master.followers.on_ack(addr(worker), from, commit);
                        committed(&mut self.master.followers, t);
                        self.finish_writes();
                        self.ship(worker);
                    }
                    Subscription::Refuse(code, _) => self.send(
                        Node::Master,
                        Node::Worker(worker),
                        Msg::Refused { stream, code },
                    ),
                }
            }
            Msg::Ack {
                stream,
                worker,
                cursor,
            } => {
                let Some(s) = self.master.streams.get_mut(&worker) else {
                    return;
                };
                if s.id != stream || cursor.epoch != self.master.log.epoch {
                    return;
                }
                s.heard = self.now;
                let commit = self.master.commit;
                let t = self
                    .master
                    .followers
                    .on_ack(addr(worker), cursor.at, commit);
                committed(&mut self.master.followers, t);
                self.finish_writes();
            }
            Msg::SnapshotReq { stream, worker } => {
                self.count("snapshots");
                let upto = if self.cfg.bugs.ship_past_commit {
                    self.master.log.end()
                } else {
                    self.master.commit
                };
                let log = Box::new(self.master.log.snapshot(upto));
                self.send(
                    Node::Master,
                    Node::Worker(worker),
                    Msg::Snapshot { stream, log },
                );
            }
            _ => {}
        }
    }

    /// Reads parked at the master: answered once the commit cursor covers
    /// their cursor and, after the read, everything the read saw.
    fn serve_master_reads(&mut self) {
        let commit = self.master_cursor();
        let end = self.master.log.end();
        let unsynced_ok = self.cfg.bugs.master_reads_unsynced;
        let mut answers = Vec::new();
        let reached: Vec<bool> = self
            .master
            .reads
            .iter()
            .map(|r| self.reached(commit, r.min))
            .collect();
        let mut i = 0;
        let mut k = 0;
        while i < self.master.reads.len() {
            let r = &mut self.master.reads[i];
            let ok = reached[k];
            k += 1;
            if !ok {
                i += 1;
                continue;
            }
            if r.seen.is_none() {
                let v = self.master.log.index.get(&r.key).map(|&(v, _)| v);
                r.seen = Some((v, end));
            }
            let (v, seen_end) = r.seen.expect("read made");
            if unsynced_ok || shipping::master_may_answer(commit.at, seen_end) {
                answers.push((r.req, v));
                self.master.reads.remove(i);
            } else {
                i += 1;
            }
        }
        for (req, value) in answers {
            self.send(Node::Master, Node::Gateway, Msg::Value { req, value });
            self.crash_point(20);
        }
    }

    /// Sometimes the master dies within a few milliseconds of a moment
    /// that matters (an answer sent, a write appended but not synced).
    fn crash_point(&mut self, percent: u64) {
        if self.faults_on && self.rng.chance(percent) {
            let inc = self.master.inc;
            let at = self.now + self.rng.range(100, 5 * MS);
            self.push(
                at,
                Event::Timer {
                    node: Node::Master,
                    inc,
                    timer: Timer::Crash,
                },
            );
        }
    }

    fn crash_master(&mut self) {
        self.count("master crashes");
        self.master.up = false;
        self.master.inc += 1;
        let keep = self.rng.below(60) as usize;
        self.master.log.crash(keep);
        if self.rng.chance(30) {
            // Compacted while it is down (`ourkv db compact`).
            self.count("compactions");
            self.master.log = self.master.log.compacted();
        }
        self.master.streams.clear();
        self.master.writes.clear();
        self.master.reads.clear();
        self.master.sync_due = false;
        self.master.followers = Followers::new(MAX_LAG, FILE_SIZE as u64);
        let down = self.rng.range(20 * MS, 600 * MS);
        self.timer(Node::Master, Timer::Restart, down);
    }

    fn restart_master(&mut self) {
        self.master.up = true;
        self.master.inc += 1;
        self.master.log.recover();
        self.master.commit = self.master.log.durable;
        self.timer(Node::Master, Timer::Tick, TICK);
    }

    // ---------------------------------------------------------------- worker

    fn worker_timer(&mut self, w: usize, t: Timer) {
        match t {
            Timer::Tick => {
                let me = &mut self.workers[w];
                // The flush policy: the OS writes back in its own time.
                me.log.sync();
                if me.stream != 0 && self.now - me.heard > IDLE_TIMEOUT {
                    me.follower.on_disconnected();
                    me.stream = 0;
                }
                if me.follower.phase() == replication::proto::follower::Phase::Idle {
                    self.subscribe(w);
                } else if me.stream != 0 {
                    let (stream, cursor) = (me.stream, me.follower.applied());
                    self.send(
                        Node::Worker(w),
                        Node::Master,
                        Msg::Ack {
                            stream,
                            worker: w,
                            cursor,
                        },
                    );
                }
                self.timer(Node::Worker(w), Timer::Tick, TICK);
            }
            Timer::RoundTimeout { round } if round == self.workers[w].round => {
                // No index: the strong reads it was for are refused.
                let waiting = std::mem::take(&mut self.workers[w].round_waiting);
                for r in waiting {
                    let (req, attempt) = (r.req, r.attempt);
                    self.send(Node::Worker(w), Node::Gateway, Msg::Refuse { req, attempt });
                }
                self.worker_next_round(w);
            }
            Timer::ReadDeadline { req } => {
                let me = &mut self.workers[w];
                if let Some(i) = me.reads.iter().position(|r| r.req == req) {
                    let r = me.reads.remove(i);
                    self.send(
                        Node::Worker(w),
                        Node::Gateway,
                        Msg::Refuse {
                            req,
                            attempt: r.attempt,
                        },
                    );
                }
            }
            _ => {}
        }
    }

    fn subscribe(&mut self, w: usize) {
        let id = self.next_stream;
        self.next_stream += 1;
        let me = &mut self.workers[w];
        me.stream = id;
        me.heard = self.now;
        let cursor = me.follower.subscribe();
        let tail = me.log.bytes_before(cursor.at, TAIL_CHECK);
        self.send(
            Node::Worker(w),
            Node::Master,
            Msg::Subscribe {
                stream: id,
                worker: w,
                cursor,
                tail,
            },
        );
    }

    fn worker_msg(&mut self, w: usize, _from: Node, msg: Msg) {
        match msg {
            Msg::Segment { stream, epoch, seg } => {
                if stream != self.workers[w].stream {
                    return;
                }
                self.workers[w].heard = self.now;
                let step = self.workers[w]
                    .follower
                    .on_segment(epoch, seg.start, seg.next);
                match step {
                    Segment::Apply => {
                        let me = &mut self.workers[w];
                        let recovery = match me.log.apply(seg.start, &seg.bytes) {
                            Ok(end) => match me.follower.on_applied(end, seg.next) {
                                Ok(cursor) => {
                                    self.send(
                                        Node::Worker(w),
                                        Node::Master,
                                        Msg::Ack {
                                            stream,
                                            worker: w,
                                            cursor,
                                        },
                                    );
                                    self.serve_worker_reads(w);
                                    return;
                                }
                                Err(r) => r,
                            },
                            Err(_) => me.follower.on_diverged(),
                        };
                        self.recover_worker(w, recovery);
                    }
                    Segment::Duplicate(cursor) => self.send(
                        Node::Worker(w),
                        Node::Master,
                        Msg::Ack {
                            stream,
                            worker: w,
                            cursor,
                        },
                    ),
                    Segment::Resubscribe(_) => self.subscribe(w),
                    Segment::Ignore => {}
                }
            }
            Msg::Heartbeat { stream } if stream == self.workers[w].stream => {
                self.workers[w].heard = self.now;
            }
            Msg::Refused { stream, code } => {
                if stream != self.workers[w].stream {
                    return;
                }
                let r = self.workers[w].follower.on_refused(&code);
                self.recover_worker(w, r);
            }
            Msg::Snapshot { stream, log } => {
                let me = &mut self.workers[w];
                if stream != me.stream
                    || me.follower.phase() != replication::proto::follower::Phase::Snapshot
                {
                    return;
                }
                me.follower.on_snapshot(log.epoch, log.end());
                me.log = *log;
                me.log.sync();
                me.stream = 0;
                self.serve_worker_reads(w);
                self.subscribe(w);
            }
            Msg::Get {
                req,
                attempt,
                key,
                min,
            } => {
                let read = ParkedRead {
                    req,
                    attempt,
                    key,
                    min,
                    seen: None,
                };
                if min.is_strong() {
                    self.count("strong reads on workers");
                    let me = &mut self.workers[w];
                    if let Some(last) = me.last_index.filter(|_| self.cfg.bugs.reuse_the_last_index)
                    {
                        self.park_worker_read(w, ParkedRead { min: last, ..read });
                    } else if me.batch.join(read) {
                        self.worker_next_round(w);
                    }
                    return;
                }
                self.park_worker_read(w, read);
            }
            Msg::Index { round, cursor } => {
                if round != self.workers[w].round {
                    return;
                }
                self.count("worker read-index rounds");
                self.workers[w].last_index = Some(cursor);
                let waiting = std::mem::take(&mut self.workers[w].round_waiting);
                for mut read in waiting {
                    read.min = cursor;
                    self.park_worker_read(w, read);
                }
                self.worker_next_round(w);
            }
            _ => {}
        }
    }

    fn park_worker_read(&mut self, w: usize, read: ParkedRead) {
        let req = read.req;
        self.workers[w].reads.push(read);
        self.timer(Node::Worker(w), Timer::ReadDeadline { req }, READ_WAIT);
        self.serve_worker_reads(w);
    }

    /// A worker's read-index driver: one round out at a time, for the
    /// strong reads that arrived before it was sent.
    fn worker_next_round(&mut self, w: usize) {
        let me = &mut self.workers[w];
        match me.batch.next_round() {
            Some(waiting) => {
                me.round += 1;
                let round = me.round;
                me.round_waiting = waiting;
                self.send(Node::Worker(w), Node::Master, Msg::ReadIndex { round });
                self.timer(Node::Worker(w), Timer::RoundTimeout { round }, READ_WAIT);
            }
            None => me.round_waiting.clear(),
        }
    }

    fn recover_worker(&mut self, w: usize, r: Recovery) {
        match r {
            Recovery::FetchSnapshot => {
                let stream = self.workers[w].stream;
                self.send(
                    Node::Worker(w),
                    Node::Master,
                    Msg::SnapshotReq { stream, worker: w },
                );
            }
            // Subscribed again at the next tick.
            Recovery::Resubscribe(_) => self.workers[w].stream = 0,
        }
    }

    fn serve_worker_reads(&mut self, w: usize) {
        let applied = self.workers[w].follower.applied();
        let ready: Vec<bool> = self.workers[w]
            .reads
            .iter()
            .map(|r| self.reached(applied, r.min))
            .collect();
        let mut answers = Vec::new();
        let mut k = 0;
        self.workers[w].reads.retain(|r| {
            let ok = ready[k];
            k += 1;
            if ok {
                answers.push((r.req, r.key));
            }
            !ok
        });
        for (req, key) in answers {
            let value = self.workers[w].log.index.get(&key).map(|&(v, _)| v);
            self.send(Node::Worker(w), Node::Gateway, Msg::Value { req, value });
        }
    }

    /// A worker's log is a prefix of what the master has made durable.
    fn check_prefix(&mut self, w: usize) {
        if !self.master.up || self.workers[w].log.epoch != self.master.log.epoch {
            return;
        }
        let (m, me) = (&self.master.log, &self.workers[w].log);
        let d = m.durable;
        let end = me.end();
        let ok = end <= d
            && me.files.iter().enumerate().all(|(nr, f)| {
                m.files
                    .get(nr)
                    .is_some_and(|mf| mf.len() >= f.len() && mf[..f.len()] == f[..])
            });
        if !ok {
            self.violations.push(format!(
                "t={} worker {w} holds records up to {end}, past the master's durable end {d} \
                 or not the master's",
                self.now
            ));
        }
    }

    fn crash_worker(&mut self, w: usize) {
        self.count("worker crashes");
        let keep = self.rng.below(60) as usize;
        let me = &mut self.workers[w];
        me.up = false;
        me.paused = false;
        me.held.clear();
        me.inc += 1;
        me.log.crash(keep);
        me.reads.clear();
        // Strong reads waiting for an index are lost with it (the round's
        // answer, if it comes, matches no round of the restarted worker).
        me.batch = ReadIndexBatch::default();
        me.round_waiting.clear();
        me.round += 1;
        me.stream = 0;
        let down = self.rng.range(20 * MS, 600 * MS);
        self.timer(Node::Worker(w), Timer::Restart, down);
    }

    fn restart_worker(&mut self, w: usize) {
        let me = &mut self.workers[w];
        me.up = true;
        me.inc += 1;
        me.log.recover();
        me.follower.on_reopened(me.log.epoch, me.log.end());
        me.stream = 0;
        self.timer(Node::Worker(w), Timer::Tick, TICK);
    }

    fn resume(&mut self, w: usize) {
        if !self.workers[w].paused {
            return;
        }
        self.workers[w].paused = false;
        let held = std::mem::take(&mut self.workers[w].held);
        for e in held {
            self.push(self.now, e);
        }
    }

    // --------------------------------------------------------------- gateway

    fn gateway_timer(&mut self, t: Timer) {
        match t {
            Timer::ClientNext { client } => self.client_op(client),
            Timer::WriteTimeout { req } => {
                if let Some((client, _)) = self.gateway.writes.remove(&req) {
                    self.client_done(client);
                }
            }
            Timer::Hedge { req, attempt } => {
                let again = self
                    .gateway
                    .reads
                    .get(&req)
                    .is_some_and(|(_, r)| r.attempt == attempt);
                if again {
                    self.attempt(req);
                }
            }
            Timer::Fault => {
                self.fault();
                let next = self.rng.range(100 * MS, 400 * MS);
                if self.faults_on {
                    self.timer(Node::Gateway, Timer::Fault, next);
                }
            }
            _ => {}
        }
    }

    fn fault(&mut self) {
        let w = self.rng.below(self.workers.len() as u64) as usize;
        match self.rng.below(10) {
            0 if self.master.up => self.crash_master(),
            1 | 2 if self.workers[w].up => self.crash_worker(w),
            3 | 4 if self.workers[w].up && !self.workers[w].paused => {
                self.count("pauses");
                self.workers[w].paused = true;
                let d = self.rng.range(100 * MS, 1500 * MS);
                let inc = self.workers[w].inc;
                self.push(
                    self.now + d,
                    Event::Timer {
                        node: Node::Worker(w),
                        inc,
                        timer: Timer::Resume,
                    },
                );
            }
            5 | 6 => {
                self.count("partitions");
                let until = self.now + self.rng.range(100 * MS, 1500 * MS);
                let other = if self.rng.chance(80) {
                    Node::Master
                } else {
                    Node::Gateway
                };
                self.cut.push((Node::Worker(w), other, until));
            }
            7 => {
                self.count("partitions");
                let until = self.now + self.rng.range(50 * MS, 800 * MS);
                self.cut.push((Node::Master, Node::Gateway, until));
            }
            8 => {
                // The gateway reaches no worker: reads go to the master.
                self.count("partitions");
                let until = self.now + self.rng.range(50 * MS, 800 * MS);
                for w in 0..self.workers.len() {
                    self.cut.push((Node::Worker(w), Node::Gateway, until));
                }
            }
            _ => {}
        }
    }

    fn client_done(&mut self, client: usize) {
        self.clients[client].busy = false;
        let think = self.rng.range(MS, 30 * MS);
        if self.now + think < self.cfg.run * 2 {
            self.timer(Node::Gateway, Timer::ClientNext { client }, think);
        }
    }

    fn client_op(&mut self, client: usize) {
        if self.clients[client].busy {
            return;
        }
        self.clients[client].busy = true;
        let key = self.rng.below(self.cfg.keys as u64) as u8;
        let req = self.next_req;
        self.next_req += 1;
        let roll = self.rng.below(100);
        if roll < 45 {
            let value = if self.rng.chance(10) {
                None
            } else {
                self.next_value += 1;
                Some(self.next_value)
            };
            let all = self.rng.chance(60);
            self.ops.push(Op {
                client,
                key,
                kind: Kind::Write(value),
                call: self.now,
                ret: None,
            });
            self.gateway
                .writes
                .insert(req, (client, self.ops.len() - 1));
            self.send(
                Node::Gateway,
                Node::Master,
                Msg::Write {
                    req,
                    rec: Rec { key, value },
                    all,
                },
            );
            self.timer(Node::Gateway, Timer::WriteTimeout { req }, CLIENT_TIMEOUT);
            return;
        }
        let level = match roll {
            45..=79 => Level::Strong,
            80..=91 => Level::Session,
            _ => Level::Stale,
        };
        self.read(client, req, key, level);
    }

    fn read(&mut self, client: usize, req: u64, key: u8, level: Level) {
        let kind = match level {
            Level::Strong => Kind::Strong(None),
            Level::Stale => Kind::Stale(None),
            Level::Session => match self.clients[client].own.get(&key) {
                Some(&after) => Kind::Session { after, got: None },
                None => Kind::Stale(None),
            },
        };
        self.ops.push(Op {
            client,
            key,
            kind,
            call: self.now,
            ret: None,
        });
        let op = self.ops.len() - 1;
        match level {
            // One request; the node that reads takes the read index.
            Level::Strong => self.start_get(client, op, req, key, Cursor::strong(0)),
            Level::Session => {
                let token = self.clients[client].token;
                self.start_get(client, op, req, key, token);
            }
            Level::Stale => self.start_get(client, op, req, key, Cursor::ZERO),
        }
    }

    fn start_get(&mut self, client: usize, op: usize, req: u64, key: u8, min: Cursor) {
        let mut order: Vec<Node> = (0..self.workers.len()).map(Node::Worker).collect();
        // The gateway's load order, here random.
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order.push(Node::Master);
        self.gateway.reads.insert(
            req,
            (
                client,
                ReadOp {
                    op,
                    key,
                    min,
                    attempt: 0,
                    order,
                },
            ),
        );
        self.attempt(req);
    }

    /// Sends the read to the next node in its order (a hedge or a retry);
    /// past the master, the read fails.
    fn attempt(&mut self, req: u64) {
        let Some((client, r)) = self.gateway.reads.get_mut(&req) else {
            return;
        };
        let client = *client;
        if r.attempt >= r.order.len() {
            self.gateway.reads.remove(&req);
            self.client_done(client);
            return;
        }
        let (to, attempt, key, min) = (r.order[r.attempt], r.attempt, r.key, r.min);
        r.attempt += 1;
        self.send(
            Node::Gateway,
            to,
            Msg::Get {
                req,
                attempt: attempt + 1,
                key,
                min,
            },
        );
        let wait = if to == Node::Master {
            READ_WAIT + 200 * MS
        } else {
            HEDGE
        };
        self.timer(
            Node::Gateway,
            Timer::Hedge {
                req,
                attempt: attempt + 1,
            },
            wait,
        );
    }

    fn gateway_msg(&mut self, _from: Node, msg: Msg) {
        match msg {
            Msg::Written { req, cursor } => {
                let Some((client, op)) = self.gateway.writes.remove(&req) else {
                    return;
                };
                self.ops[op].ret = Some(self.now);
                self.count("answered writes");
                let c = &mut self.clients[client];
                if cursor > c.token {
                    c.token = cursor;
                }
                let key = self.ops[op].key;
                c.own.insert(key, op);
                self.client_done(client);
            }
            Msg::Value { req, value } => {
                let Some((client, r)) = self.gateway.reads.remove(&req) else {
                    return;
                };
                let op = &mut self.ops[r.op];
                op.ret = Some(self.now);
                match &mut op.kind {
                    Kind::Strong(v) | Kind::Stale(v) => *v = value,
                    Kind::Session { got, .. } => *got = value,
                    Kind::Write(_) => unreachable!("a read"),
                }
                self.count("answered reads");
                self.client_done(client);
            }
            Msg::Refuse { req, attempt } => {
                let current = self
                    .gateway
                    .reads
                    .get(&req)
                    .is_some_and(|(_, r)| r.attempt == attempt);
                if current {
                    self.attempt(req);
                }
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- checks

    /// After the run: final strong reads of every key (every answered
    /// write must show), then the history checks and convergence.
    fn finish(&mut self) -> Result<(), String> {
        if let Some(v) = self.violations.first() {
            return Err(v.clone());
        }
        // Final reads, one key at a time, with the faults off.
        for key in 0..self.cfg.keys {
            let req = self.next_req;
            self.next_req += 1;
            let client = self.clients.len();
            self.clients.push(Client {
                token: Cursor::ZERO,
                own: BTreeMap::new(),
                busy: true,
            });
            self.read(client, req, key, Level::Strong);
            let stop = self.now + 5000 * MS;
            while let Some(Reverse((at, seq))) = self.queue.pop() {
                self.now = at;
                let e = self.events.remove(&seq).expect("queued event");
                self.handle(e);
                if self.ops.last().is_some_and(|o| o.ret.is_some()) || at > stop {
                    break;
                }
            }
            let last = self.ops.last().expect("the final read");
            if last.ret.is_none() {
                return Err(format!("final strong read of key {key} got no answer"));
            }
        }
        check::check(&self.ops)?;
        for (w, me) in self.workers.iter().enumerate() {
            if me.log.epoch != self.master.log.epoch || me.log.files != self.master.log.files {
                let differs = me
                    .log
                    .files
                    .iter()
                    .zip(&self.master.log.files)
                    .enumerate()
                    .find_map(|(nr, (a, b))| {
                        let at = a.iter().zip(b).position(|(x, y)| x != y);
                        at.or((a.len() != b.len()).then_some(a.len().min(b.len())))
                            .map(|p| Location::new(nr as u16, p as u32))
                    });
                return Err(format!(
                    "worker {w} did not converge: epoch {} end {} (master: epoch {} end {}), \
                     first difference at {differs:?}",
                    me.log.epoch,
                    me.log.end(),
                    self.master.log.epoch,
                    self.master.log.end()
                ));
            }
        }
        if let Some(v) = self.violations.first() {
            return Err(v.clone());
        }
        Ok(())
    }
}

/// Runs one seed; the stats on success, the violation on failure.
fn run_seed(seed: u64, cfg: Config) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut sim = Sim::new(seed, cfg);
    sim.run();
    sim.finish()?;
    Ok(sim.stats)
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("OURKV_SIM_SEED") {
        return vec![s.parse().expect("OURKV_SIM_SEED is a number")];
    }
    let n = std::env::var("OURKV_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

#[test]
fn replication_under_faults_keeps_its_promises() {
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let list = seeds(400);
    for &seed in &list {
        match run_seed(seed, Config::default()) {
            Ok(stats) => {
                for (k, v) in stats {
                    *totals.entry(k).or_default() += v;
                }
            }
            Err(e) => panic!(
                "seed {seed} failed: {e}\nreplay: OURKV_SIM_SEED={seed} cargo test -p replication --test sim"
            ),
        }
    }
    eprintln!("{} seeds: {totals:?}", list.len());
    // The faults and the work actually happened.
    for what in [
        "answered writes",
        "answered reads",
        "master crashes",
        "snapshots",
    ] {
        assert!(
            totals.get(what).copied().unwrap_or(0) > 0 || list.len() < 20,
            "no {what} in {} seeds",
            list.len()
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7, Config::default());
    let b = run_seed(7, Config::default());
    assert_eq!(a, b);
}

/// Each deliberate mistake is caught within a bounded number of seeds: the
/// simulation has teeth.
#[test]
fn the_simulation_catches_deliberate_mistakes() {
    let cases = [
        (
            "ship past the commit cursor",
            Bugs {
                ship_past_commit: true,
                ..Bugs::default()
            },
        ),
        (
            "master reads what is not durable",
            Bugs {
                master_reads_unsynced: true,
                ..Bugs::default()
            },
        ),
        (
            "cursors without their epoch",
            Bugs {
                epochless_cursors: true,
                ..Bugs::default()
            },
        ),
        (
            "a worker reuses its last read index",
            Bugs {
                reuse_the_last_index: true,
                ..Bugs::default()
            },
        ),
    ];
    for (name, bugs) in cases {
        let caught = (0..2000).find_map(|seed| {
            let cfg = Config {
                bugs,
                ..Config::default()
            };
            run_seed(seed, cfg).err().map(|e| (seed, e))
        });
        let Some((seed, e)) = caught else {
            panic!("{name}: no seed of 2000 failed");
        };
        eprintln!(
            "{name}: caught by seed {seed}: {}",
            e.lines().next().unwrap_or("")
        );
    }
}

/// The master of this simulation runs no metadata group: every in-sync
/// change takes effect as it is decided.
fn committed(f: &mut Followers, changes: impl IntoIterator<Item = Transition>) {
    for t in changes {
        f.on_committed(t.worker(), t.joins());
    }
}
