//! A seeded model of failover: nodes with logs, a metadata group that elects
//! and commits, masters that are killed, cut off and come back, and clients
//! that write with `ack=all` and read with `strong`. Each step is one atomic
//! action picked at random (write, ship a segment, commit a metadata entry,
//! time out an `ack=all` wait, kill, restart, partition, heal, elect,
//! appoint, subscribe, read), so the interleavings are coarse but many.
//!
//! The decisions are the real ones from `replication::proto`: the metadata
//! and its apply rules (`meta`), the choice of the next master and the term
//! fence (`election`), the wait set, in-sync set and high-water mark
//! (`followers`), and the branch point a returning node is cut at
//! (`MetaState::branch`). What is modelled is around them: logs of unique
//! entries (a write is its id), an oracle Raft (a leader per term, elected
//! among the nodes that reach a majority; an entry commits only while its
//! leader reaches a majority), and an all-or-nothing network per pair.
//!
//! Checked: no `ack=all`-acknowledged write is ever lost; every strong read
//! holds every `ack=all` write acknowledged before it began; nothing a read
//! answered is ever taken back (it stays a prefix of the final log); every
//! appointee is eligible (in S, the old master, or the first master); one
//! master per term; after the faults stop, every node holds the master's log.
//!
//! `cargo test -p replication --test failover_model` runs a bounded number of
//! seeds; `OURKV_FAILOVER_SEEDS=N` more, `OURKV_FAILOVER_SEED=N` one.

use std::collections::{BTreeMap, BTreeSet};

use ourdb::Location;
use replication::proto::election::{self, Choice, Fence, Position};
use replication::proto::followers::Transition;
use replication::proto::meta::{self, Applied, Branch, MetaCmd, MetaState, Term};
use replication::proto::Followers;
use replication::Cursor;

const NODES: usize = 3;
const STEPS: usize = 1500;
/// Entries a worker may lag before it leaves the in-sync set.
const MAX_LAG: u64 = 40;
/// Steps an `ack=all` write waits before the laggards are proposed for removal.
const ACK_TIMEOUT: usize = 30;

/// Mistakes the model can be told to make, to show the checks catch them.
#[derive(Clone, Copy, Debug, Default)]
struct Bugs {
    /// Take an in-sync removal as done when proposed, not when committed.
    remove_before_commit: bool,
    /// Appoint the eligible node with the shortest log.
    pick_lowest: bool,
    /// Appoint the best of all nodes, in S or not.
    any_node: bool,
    /// Rank candidates by log length alone.
    ignore_last_term: bool,
    /// A worker applies segments of any term.
    no_fence: bool,
    /// A master answers the read index without checking it still leads.
    no_leader_check: bool,
    /// A returning node keeps its tail past the branch point.
    skip_truncate: bool,
    /// A worker answers reads past the high-water mark.
    read_past_hw: bool,
    /// The master counts what it wrote but did not fsync yet as committed.
    commit_unsynced: bool,
    /// A new master starts with an empty wait set (S not inherited).
    fresh_wait_set: bool,
    /// A worker may join S below the start of the master's term.
    no_join_floor: bool,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn loc(len: usize) -> Location {
    Location::new(0, len as u32)
}

fn cursor(len: usize) -> Cursor {
    Cursor::new(1, loc(len))
}

enum Role {
    Master {
        term: Term,
        followers: Followers<usize>,
        /// `ack=all` writes waiting: id, end, step it began.
        waiting: Vec<(u64, usize, usize)>,
    },
    /// Following the master of a term (validated by subscribing), or nobody.
    Worker { following: Option<(usize, Term)> },
}

struct Node {
    log: Vec<u64>,
    /// The prefix of `log` on disk: a kill keeps only it. A master ships
    /// records before its own fsync, so workers may hold more than that; a
    /// worker acknowledges only what it fsynced, so its whole log is here.
    durable: usize,
    alive: bool,
    /// The term whose master's log this node last validated against.
    last_term: Term,
    fence: Fence,
    /// The high-water mark learned from its master.
    hw: usize,
    role: Role,
}

struct World {
    rng: Rng,
    bugs: Bugs,
    step: usize,
    nodes: Vec<Node>,
    /// The committed metadata (every node applies the same entries).
    meta: MetaState,
    raft_term: Term,
    raft_leader: Option<usize>,
    /// Raft's leader of each term (one per term: `leader_id_std`).
    leaders: BTreeMap<Term, usize>,
    /// Proposed, not yet committed: (raft term, command, proposer).
    pending: Vec<(Term, MetaCmd, usize)>,
    /// Pairs that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    next_id: u64,
    /// `ack=all` writes acknowledged: id and the step.
    acked: Vec<u64>,
    /// Prefixes strong reads answered.
    answered: Vec<Vec<u64>>,
    stats: BTreeMap<&'static str, u64>,
    /// The first broken promise seen.
    violation: Option<String>,
}

impl World {
    fn new(seed: u64, bugs: Bugs) -> World {
        let nodes = (0..NODES)
            .map(|_| Node {
                log: Vec::new(),
                durable: 0,
                alive: true,
                last_term: 0,
                fence: Fence::default(),
                hw: 0,
                role: Role::Worker { following: None },
            })
            .collect();
        World {
            rng: Rng(seed),
            bugs,
            step: 0,
            nodes,
            meta: MetaState::default(),
            raft_term: 0,
            raft_leader: None,
            leaders: BTreeMap::new(),
            pending: Vec::new(),
            cut: BTreeSet::new(),
            next_id: 1,
            acked: Vec::new(),
            answered: Vec::new(),
            stats: BTreeMap::new(),
            violation: None,
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if std::env::var("OURKV_FAILOVER_TRACE").is_ok() {
            eprintln!("step {}: {}", self.step, what());
        }
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("step {}: {what}", self.step));
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Node `n`'s commit cursor: its fsynced end.
    fn commit(&self, n: usize) -> usize {
        let node = &self.nodes[n];
        if self.bugs.commit_unsynced {
            node.log.len()
        } else {
            node.durable
        }
    }

    /// The master's syncer: everything written so far is on disk.
    fn sync(&mut self, n: usize) {
        if self.nodes[n].alive {
            self.nodes[n].durable = self.nodes[n].log.len();
        }
    }

    fn reach(&self, a: usize, b: usize) -> bool {
        a == b
            || (self.nodes[a].alive
                && self.nodes[b].alive
                && !self.cut.contains(&(a.min(b), a.max(b))))
    }

    /// Whether `n` reaches a majority of the voters (itself included).
    fn majority(&self, n: usize) -> bool {
        self.nodes[n].alive && (0..NODES).filter(|&m| self.reach(n, m)).count() > NODES / 2
    }

    /// The node is master of its term by the committed metadata and still
    /// leads Raft in that term.
    fn master_term(&self, n: usize) -> Option<Term> {
        match self.nodes[n].role {
            Role::Master { term, .. } => Some(term),
            Role::Worker { .. } => None,
        }
    }

    /// Nodes that hear of a newer Raft term raise their fence; a master of
    /// an older term steps down.
    fn learn_term(&mut self, n: usize, term: Term) {
        let node = &mut self.nodes[n];
        node.fence.raise(term);
        if let Role::Master { term: t, .. } = node.role {
            if t < term {
                node.role = Role::Worker { following: None };
                self.stats
                    .entry("masters stepped down")
                    .and_modify(|c| *c += 1)
                    .or_insert(1);
            }
        }
    }

    fn tell_term(&mut self, from: usize, term: Term) {
        for m in 0..NODES {
            if self.reach(from, m) {
                self.learn_term(m, term);
            }
        }
    }

    // ---- actions ----

    fn elect(&mut self) {
        if self.raft_leader.is_some_and(|l| self.majority(l)) {
            return;
        }
        let candidates: Vec<usize> = (0..NODES).filter(|&n| self.majority(n)).collect();
        if candidates.is_empty() {
            return;
        }
        let l = candidates[self.rng.below(candidates.len())];
        self.elect_as(l);
        // Entries of older terms reach the new leader's log or not.
        let keep = self.rng.chance(50);
        if !keep {
            self.pending.clear();
        }
    }

    fn elect_as(&mut self, l: usize) {
        self.raft_term += 1;
        self.raft_leader = Some(l);
        self.leaders.insert(self.raft_term, l);
        self.count("raft elections");
        self.trace(|| format!("raft leader {l} term {}", self.raft_term));
        self.tell_term(l, self.raft_term);
    }

    /// The Raft leader's heartbeats carry its term to whoever they reach.
    fn heartbeat(&mut self) {
        if let Some(l) = self.raft_leader {
            if self.nodes[l].alive {
                self.tell_term(l, self.raft_term);
            }
        }
    }

    fn commit_meta(&mut self) {
        let Some(l) = self.raft_leader else { return };
        if !self.majority(l) || self.pending.is_empty() {
            return;
        }
        let (raft_term, cmd, proposer) = self.pending.remove(0);
        let applied = meta::apply(&mut self.meta, raft_term, &cmd);
        self.trace(|| {
            format!(
                "commit {cmd} (raft term {raft_term}) -> {applied:?}; S {:?}",
                self.meta.in_sync
            )
        });
        if let (MetaCmd::InSync { term, join, leave }, Applied::InSyncChanged) = (&cmd, applied) {
            // The proposer learns of the commit if it is still that master.
            if let Role::Master {
                term: t, followers, ..
            } = &mut self.nodes[proposer].role
            {
                if t == term && !self.bugs.remove_before_commit {
                    for &w in join {
                        followers.on_committed(w as usize, true);
                    }
                    for &w in leave {
                        followers.on_committed(w as usize, false);
                    }
                }
            }
        }
    }

    /// The Raft leader without an appointment in its term asks the
    /// candidates where their logs end, then appoints the best or hands
    /// leadership to it.
    fn control(&mut self) {
        let Some(l) = self.raft_leader else { return };
        if !self.majority(l) || self.meta.term >= self.raft_term {
            return;
        }
        let t = self.raft_term;
        let mut asked: BTreeSet<usize> = self.meta.in_sync.iter().map(|&i| i as usize).collect();
        asked.extend(self.meta.master.map(|m| m as usize));
        asked.insert(l);
        let mut answers = Vec::new();
        for &c in &asked {
            if self.reach(l, c) {
                self.learn_term(c, t);
                let n = &self.nodes[c];
                answers.push((
                    c as u64,
                    Position {
                        last_term: n.last_term,
                        end: cursor(n.log.len()),
                    },
                ));
            }
        }
        if self.bugs.any_node {
            for c in 0..NODES {
                if !asked.contains(&c) && self.reach(l, c) {
                    self.learn_term(c, t);
                    let n = &self.nodes[c];
                    answers.push((
                        c as u64,
                        Position {
                            last_term: n.last_term,
                            end: cursor(n.log.len()),
                        },
                    ));
                }
            }
        }
        let eligible = |id: u64| {
            self.meta.in_sync.contains(&id)
                || self.meta.master == Some(id)
                || (self.meta.master.is_none() && id == l as u64)
                || self.bugs.any_node
        };
        let best = answers
            .iter()
            .filter(|(id, _)| eligible(*id))
            .map(|(_, p)| (p.last_term, p.end))
            .max();
        let mut choice = if self.bugs.ignore_last_term {
            let blind: Vec<_> = answers
                .iter()
                .map(|&(id, p)| (id, Position { last_term: 0, ..p }))
                .collect();
            match election::choose(l as u64, &self.meta, &blind) {
                // The appointment still records the true parent.
                Choice::Appoint { master, start, .. } => Choice::Appoint {
                    master,
                    parent: self.nodes[l].last_term,
                    start,
                },
                other => other,
            }
        } else {
            election::choose(l as u64, &self.meta, &answers)
        };
        if self.bugs.any_node || self.bugs.pick_lowest {
            let pick = answers.iter().filter(|(id, _)| eligible(*id));
            let pick = if self.bugs.pick_lowest {
                pick.min_by_key(|(_, p)| p.end)
            } else {
                pick.max_by_key(|(id, p)| {
                    (p.last_term, p.end, *id == l as u64, std::cmp::Reverse(*id))
                })
            };
            if let Some(&(id, p)) = pick {
                choice = if id == l as u64 {
                    Choice::Appoint {
                        master: id,
                        parent: p.last_term,
                        start: p.end,
                    }
                } else {
                    Choice::Transfer(id)
                };
            }
        }
        // The rule itself: the appointee has the newest lineage and then the
        // longest log among the eligible that answered.
        let chosen = match choice {
            Choice::Appoint { master, .. } | Choice::Transfer(master) => Some(master),
            Choice::Wait => None,
        };
        if let Some(c) = chosen {
            let p = answers
                .iter()
                .find(|(id, _)| *id == c)
                .expect("an answer")
                .1;
            if !eligible(c) {
                self.fail(format!("chose {c}, not eligible: {:?}", self.meta));
            } else if Some((p.last_term, p.end)) != best {
                self.fail(format!("chose {c} at {p:?}, not the best of {answers:?}"));
            }
        }
        match choice {
            Choice::Wait => self.count("no eligible node"),
            Choice::Appoint {
                master,
                parent,
                start,
            } => {
                let cmd = MetaCmd::Appoint {
                    master,
                    term: t,
                    parent,
                    start,
                };
                if meta::apply(&mut self.meta, t, &cmd) != Applied::Appointed {
                    self.fail(format!("{cmd} not applied"));
                }
                self.trace(|| format!("{cmd}; S {:?}; answers {answers:?}", self.meta.in_sync));
                let mut followers = Followers::new(MAX_LAG, u32::MAX as u64);
                if !self.bugs.no_join_floor {
                    followers = followers.starting_at(loc(self.nodes[l].log.len()));
                }
                if !self.bugs.fresh_wait_set {
                    for &w in &self.meta.in_sync {
                        followers.inherit(w as usize);
                    }
                }
                let n = &mut self.nodes[l];
                n.last_term = t;
                n.hw = n.hw.min(n.log.len());
                n.role = Role::Master {
                    term: t,
                    followers,
                    waiting: Vec::new(),
                };
                self.count("appointments");
            }
            Choice::Transfer(x) => {
                let x = x as usize;
                if self.majority(x) {
                    self.raft_term += 1;
                    self.raft_leader = Some(x);
                    self.leaders.insert(self.raft_term, x);
                    self.tell_term(x, self.raft_term);
                    self.count("transfers");
                }
            }
        }
    }

    fn write(&mut self, n: usize, all: bool) {
        let step = self.step;
        let node = &mut self.nodes[n];
        let Role::Master { term, waiting, .. } = &mut node.role else {
            return;
        };
        if !node.alive || !node.fence.accepts_write(*term, 0) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        node.log.push(id);
        if all {
            waiting.push((id, node.log.len(), step));
        }
    }

    /// A worker subscribes to the master of the committed metadata: cut at
    /// the branch point (or a full copy), then it follows that term.
    fn subscribe(&mut self, w: usize) {
        let (Some(m), t) = (self.meta.master.map(|m| m as usize), self.meta.term) else {
            return;
        };
        if m == w || !self.nodes[w].alive || !self.reach(w, m) || self.master_term(m) != Some(t) {
            return;
        }
        if let Role::Worker { following: Some(f) } = self.nodes[w].role {
            if f == (m, t) {
                return;
            }
        }
        if self.master_term(w).is_some() {
            return;
        }
        let master_len = self.nodes[m].log.len();
        match self.meta.branch(self.nodes[w].last_term, t) {
            Branch::Same => {}
            Branch::At(c) => {
                let c = c.at.position as usize;
                if self.nodes[w].log.len() > c && !self.bugs.skip_truncate {
                    self.nodes[w].log.truncate(c);
                    self.count("truncations");
                }
            }
            Branch::Unknown => {
                let copy = self.nodes[m].log.clone();
                self.nodes[w].log = copy;
                self.count("snapshots");
            }
        }
        if self.nodes[w].log.len() > master_len {
            // Longer than the master's log of its own lineage: only the tail
            // check would catch this in the real node; keep it to be found.
            self.count("longer than the master");
        }
        let node = &mut self.nodes[w];
        // A cut or a copy is synced before the worker follows on.
        node.durable = node.log.len();
        node.hw = node.hw.min(node.log.len());
        node.last_term = t;
        node.role = Role::Worker {
            following: Some((m, t)),
        };
        self.count("subscriptions");
        self.trace(|| {
            format!(
                "{w} subscribes to {m} term {t}, len {}",
                self.nodes[w].log.len()
            )
        });
    }

    /// The master ships a segment to worker `w`; `w` acknowledges.
    fn ship(&mut self, w: usize) {
        let Role::Worker {
            following: Some((m, sub_term)),
        } = self.nodes[w].role
        else {
            return;
        };
        if !self.reach(w, m) {
            return;
        }
        let Some(seg_term) = self.master_term(m) else {
            return;
        };
        if !self.bugs.no_fence && !self.nodes[w].fence.accepts_segment(sub_term, seg_term) {
            self.count("segments refused");
            return;
        }
        let from = self.nodes[w].log.len();
        // Shipped as soon as written: the master's fsync runs meanwhile.
        let mlen = self.nodes[m].log.len();
        let commit = self.commit(m);
        let upto = mlen.min(from + 1 + self.rng.below(8));
        let records: Vec<u64> = self.nodes[m]
            .log
            .get(from..upto)
            .map(<[u64]>::to_vec)
            .unwrap_or_default();
        let hw = match &mut self.nodes[m].role {
            Role::Master { followers, .. } => followers.high_water(loc(commit)).position as usize,
            Role::Worker { .. } => unreachable!(),
        };
        let node = &mut self.nodes[w];
        node.log.extend(records);
        node.durable = node.log.len();
        node.hw = node.hw.max(hw.min(node.log.len()));
        let acked = node.log.len();
        let raft_term = self.raft_term;
        let leads = self.raft_leader == Some(m);
        let bugs = self.bugs;
        if let Role::Master {
            term, followers, ..
        } = &mut self.nodes[m].role
        {
            let t = followers.on_ack(w, loc(acked), loc(commit));
            propose(
                &mut self.pending,
                followers,
                bugs,
                *term,
                raft_term,
                leads,
                m,
                t,
            );
        }
    }

    fn finish_writes(&mut self, m: usize) {
        let step = self.step;
        let raft_term = self.raft_term;
        let leads = self.raft_leader == Some(m);
        let bugs = self.bugs;
        let len = self.commit(m);
        let Role::Master {
            term,
            followers,
            waiting,
        } = &mut self.nodes[m].role
        else {
            return;
        };
        let hw = followers.high_water(loc(len)).position as usize;
        let mut timed_out = None;
        waiting.retain(|&(id, end, began)| {
            if hw >= end {
                if std::env::var("OURKV_FAILOVER_TRACE").is_ok() {
                    eprintln!("step {step}: master {m} acks write {id} at end {end}, hw {hw}");
                }
                self.acked.push(id);
                false
            } else {
                if step - began > ACK_TIMEOUT {
                    timed_out = Some(timed_out.unwrap_or(end).min(end));
                }
                true
            }
        });
        if let Some(end) = timed_out {
            let t = followers.on_ack_timeout(loc(end));
            propose(
                &mut self.pending,
                followers,
                bugs,
                *term,
                raft_term,
                leads,
                m,
                t,
            );
        }
    }

    fn kill(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.alive = false;
        // What the page cache held and no fsync covered is gone.
        if node.log.len() > node.durable {
            node.log.truncate(node.durable);
            self.stats
                .entry("unsynced tails lost")
                .and_modify(|c| *c += 1)
                .or_insert(1);
        }
        let node = &mut self.nodes[n];
        node.role = Role::Worker { following: None };
        // In memory: the fence and the learned mark (a restart asks again).
        node.fence = Fence::default();
        node.hw = 0;
        if self.raft_leader == Some(n) {
            self.raft_leader = None;
        }
        self.count("kills");
        self.trace(|| format!("kill {n}"));
    }

    /// A strong read: the read index from the master (after its leadership
    /// check), answered by node `x` once it has applied that far and the
    /// high-water mark covers what it read.
    fn read(&mut self, x: usize) {
        // The gateway's view of the master may be old: it may ask a node
        // that still believes it is master (and read there too).
        let m = if self.rng.chance(30) {
            let n = self.rng.below(NODES);
            if self.master_term(n).is_none() {
                return;
            }
            let x = if self.rng.chance(50) { n } else { x };
            return self.read_via(n, x);
        } else {
            let Some(m) = self.meta.master.map(|m| m as usize) else {
                return;
            };
            m
        };
        self.read_via(m, x)
    }

    /// A strong read with the read index from `m`, answered on `x`.
    fn read_via(&mut self, m: usize, x: usize) {
        let Some(term) = self.master_term(m) else {
            return;
        };
        if !self.nodes[m].alive {
            return;
        }
        // `ensure_linearizable`: still the Raft leader of its own term, heard
        // by a majority.
        let leads = self.raft_leader == Some(m) && self.raft_term == term && self.majority(m);
        if !leads && !self.bugs.no_leader_check {
            return;
        }
        let index = self.commit(m);
        let acked_before: Vec<u64> = self.acked.clone();
        let n = &self.nodes[x];
        if !n.alive || n.log.len() < index {
            return;
        }
        if std::env::var("OURKV_FAILOVER_TRACE").is_ok() {
            eprintln!("step {} read on {x} (role following {:?}) index {index} from master {m} term {term}, log {:?}, hw {}, master log {:?}", self.step,
                match n.role { Role::Worker { following } => following, Role::Master{term,..} => Some((x, term)) }, n.log, n.hw, self.nodes[m].log);
        }
        let hw = if x == m {
            match &mut self.nodes[m].role {
                Role::Master { followers, .. } => {
                    followers.high_water(loc(index)).position as usize
                }
                Role::Worker { .. } => unreachable!(),
            }
        } else {
            n.hw
        };
        let n = &self.nodes[x];
        if hw < n.log.len() && !self.bugs.read_past_hw {
            return;
        }
        let prefix = n.log.clone();
        if !leads {
            self.count("reads of a master that does not lead");
        }
        if let Some(id) = acked_before.iter().find(|id| !prefix.contains(id)) {
            self.fail(format!("strong read on {x} misses acknowledged write {id}"));
        }
        self.answered.push(prefix);
        self.count("reads");
    }

    fn act(&mut self) {
        self.step += 1;
        let n = self.rng.below(NODES);
        match self.rng.below(100) {
            0..=19 => {
                let m = self.meta.master.map(|m| m as usize).unwrap_or(n);
                // Clients also reach a deposed master that still thinks it leads.
                let to = if self.rng.chance(5) { n } else { m };
                let all = self.rng.chance(70);
                self.write(to, all);
            }
            20..=44 => self.ship(n),
            45..=49 => self.finish_writes(n),
            50..=54 => self.sync(n),
            55..=62 => self.commit_meta(),
            63..=67 => self.subscribe(n),
            68..=71 => self.control(),
            72..=74 => self.elect(),
            75 => self.heartbeat(),
            76..=83 => self.read(n),
            84..=85 => {
                if self.nodes.iter().filter(|x| x.alive).count() > 1 {
                    self.kill(n)
                }
            }
            86..=89 => {
                if !self.nodes[n].alive {
                    self.nodes[n].alive = true;
                    self.count("restarts");
                }
            }
            90..=91 => {
                // Cut one link, or isolate the node from all the others.
                let isolate = self.rng.chance(50);
                let b = self.rng.below(NODES);
                for o in 0..NODES {
                    if o != n && (isolate || o == b) {
                        self.cut.insert((n.min(o), n.max(o)));
                    }
                }
                self.count("partitions");
            }
            _ => {
                if !self.cut.is_empty() && self.rng.chance(15) {
                    self.cut.clear();
                }
            }
        }
    }

    /// No more faults: everyone up, connected, and the cluster settles.
    fn settle(&mut self) {
        self.cut.clear();
        for n in 0..NODES {
            self.nodes[n].alive = true;
        }
        for _ in 0..400 {
            self.step += 1;
            self.elect();
            self.heartbeat();
            self.control();
            self.commit_meta();
            for n in 0..NODES {
                self.subscribe(n);
                self.sync(n);
                self.ship(n);
                self.finish_writes(n);
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        let m = self.meta.master.ok_or("no master after settling")? as usize;
        let log = &self.nodes[m].log;
        for id in &self.acked {
            if !log.contains(id) {
                return Err(format!("acknowledged ack=all write {id} lost"));
            }
        }
        for p in &self.answered {
            if log.len() < p.len() || log[..p.len()] != p[..] {
                return Err(format!(
                    "a read answered {} entries that are not the final log's prefix",
                    p.len()
                ));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.log != *log {
                return Err(format!(
                    "node {i} holds {} entries, the master {m} {}",
                    n.log.len(),
                    log.len()
                ));
            }
        }
        for t in &self.meta.history {
            if self.leaders.get(&t.term) != Some(&(t.master as usize)) {
                return Err(format!(
                    "term {} appointed {} but Raft's leader was {:?}",
                    t.term,
                    t.master,
                    self.leaders.get(&t.term)
                ));
            }
        }
        Ok(())
    }
}

/// The master proposes in-sync changes as the Raft leader of its term; with
/// the bug, it takes a removal as done at once.
#[allow(clippy::too_many_arguments)]
fn propose(
    pending: &mut Vec<(Term, MetaCmd, usize)>,
    followers: &mut Followers<usize>,
    bugs: Bugs,
    term: Term,
    raft_term: Term,
    leads: bool,
    proposer: usize,
    changes: impl IntoIterator<Item = Transition<usize>>,
) {
    for t in changes {
        if bugs.remove_before_commit {
            followers.on_committed(t.worker(), t.joins());
        }
        if !leads || raft_term != term {
            continue;
        }
        let (join, leave) = if t.joins() {
            (vec![t.worker() as u64], vec![])
        } else {
            (vec![], vec![t.worker() as u64])
        };
        pending.push((raft_term, MetaCmd::InSync { term, join, leave }, proposer));
    }
}

fn run(seed: u64, bugs: Bugs) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut w = World::new(seed, bugs);
    for _ in 0..STEPS {
        w.act();
        if let Some(v) = w.violation.take() {
            return Err(v);
        }
    }
    w.settle();
    if let Some(v) = w.violation.take() {
        return Err(v);
    }
    w.check().map(|()| w.stats)
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("OURKV_FAILOVER_SEED") {
        return vec![s.parse().expect("OURKV_FAILOVER_SEED is a number")];
    }
    let n = std::env::var("OURKV_FAILOVER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

#[test]
fn failover_keeps_its_promises() {
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in seeds(300) {
        match run(seed, Bugs::default()) {
            Ok(stats) => {
                for (k, v) in stats {
                    *totals.entry(k).or_default() += v;
                }
            }
            Err(e) => panic!("seed {seed}: {e}\nreplay: OURKV_FAILOVER_SEED={seed} cargo test -p replication --test failover_model"),
        }
    }
    eprintln!("{totals:?}");
    // The faults the checks rely on did happen.
    for what in [
        "appointments",
        "kills",
        "truncations",
        "reads",
        "transfers",
        "partitions",
        "unsynced tails lost",
    ] {
        assert!(
            totals.get(what).copied().unwrap_or(0) > 0,
            "no {what} in any seed: {totals:?}"
        );
    }
}

#[test]
fn the_model_catches_deliberate_mistakes() {
    let cases = [
        (
            "removal before commit",
            Bugs {
                remove_before_commit: true,
                ..Bugs::default()
            },
        ),
        (
            "the lowest log appointed",
            Bugs {
                pick_lowest: true,
                ..Bugs::default()
            },
        ),
        (
            "a node outside S appointed",
            Bugs {
                any_node: true,
                ..Bugs::default()
            },
        ),
        (
            "last term ignored",
            Bugs {
                ignore_last_term: true,
                ..Bugs::default()
            },
        ),
        (
            "no fence",
            Bugs {
                no_fence: true,
                ..Bugs::default()
            },
        ),
        (
            "no truncation",
            Bugs {
                skip_truncate: true,
                ..Bugs::default()
            },
        ),
        (
            "reads past the high-water mark",
            Bugs {
                read_past_hw: true,
                ..Bugs::default()
            },
        ),
        (
            "unsynced writes counted as committed",
            Bugs {
                commit_unsynced: true,
                ..Bugs::default()
            },
        ),
        (
            "a new master's wait set left empty",
            Bugs {
                fresh_wait_set: true,
                ..Bugs::default()
            },
        ),
        (
            "joins below the term's start",
            Bugs {
                no_join_floor: true,
                ..Bugs::default()
            },
        ),
    ];
    for (name, bugs) in cases {
        let caught = (0..2000).find_map(|seed| run(seed, bugs).err().map(|e| (seed, e)));
        if caught.is_none() {
            let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
            for seed in 0..200 {
                for (k, v) in run(seed, bugs).unwrap() {
                    *totals.entry(k).or_default() += v;
                }
            }
            eprintln!("{name}: {totals:?}");
        }
        let Some((seed, e)) = caught else {
            panic!("{name}: not caught in 2000 seeds")
        };
        eprintln!("{name}: caught at seed {seed}: {e}");
    }
}

/// A master cut off from the others keeps its role until it hears of the
/// newer term, and with nothing unreplicated its high-water mark covers its
/// whole log: only the leadership check keeps it from answering a strong
/// read that misses what the new master acknowledged since. (The random
/// runs rarely line this up, so it is played out here.)
#[test]
fn a_cut_off_master_answers_no_strong_read_once_another_leads() {
    for bugs in [
        Bugs::default(),
        Bugs {
            no_leader_check: true,
            ..Bugs::default()
        },
    ] {
        let mut w = World::new(1, bugs);
        w.elect_as(0);
        w.control();
        assert_eq!(w.master_term(0), Some(1));
        for n in [1, 2] {
            w.subscribe(n);
        }
        for _ in 0..5 {
            w.write(0, true);
        }
        for _ in 0..20 {
            w.sync(0);
            w.ship(1);
            w.ship(2);
            w.commit_meta();
            w.finish_writes(0);
        }
        assert_eq!(w.acked.len(), 5);
        assert_eq!(w.meta.in_sync, BTreeSet::from([1, 2]));
        w.cut.insert((0, 1));
        w.cut.insert((0, 2));
        w.elect_as(1);
        w.control();
        assert_eq!((w.meta.master, w.meta.term), (Some(1), 2));
        assert_eq!(
            w.master_term(0),
            Some(1),
            "the cut-off master does not know yet"
        );
        w.subscribe(2);
        w.write(1, true);
        for _ in 0..10 {
            w.sync(1);
            w.ship(2);
            w.finish_writes(1);
        }
        assert_eq!(w.acked.len(), 6, "the new master acknowledged its write");
        w.read_via(0, 0);
        if bugs.no_leader_check {
            let v = w.violation.take().expect("the stale read is caught");
            assert!(v.contains("misses acknowledged write 6"), "{v}");
        } else {
            assert_eq!(w.violation, None);
            assert!(
                w.answered.is_empty(),
                "a master that does not lead answered"
            );
        }
    }
}
