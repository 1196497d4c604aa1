//! The checks over a simulated run's history: linearizability of strong
//! reads and writes per key (a Wing–Gong search with memoised states),
//! sessions that never go back before their token, and stale reads that
//! return only values someone wrote.

use std::collections::{BTreeMap, HashSet};

/// One client operation as the client saw it.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    pub(crate) client: usize,
    pub(crate) key: u8,
    pub(crate) kind: Kind,
    /// When the client sent it.
    pub(crate) call: u64,
    /// When the answer arrived; `None` if none did (a write may or may not
    /// have taken effect; a read without an answer says nothing).
    pub(crate) ret: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A put (`Some`, values unique over the run) or a delete (`None`).
    Write(Option<u32>),
    /// A strong read and what it returned.
    Strong(Option<u32>),
    /// A session read of this client's own last write to the key (the op
    /// index of that write), and what it returned.
    Session { after: usize, got: Option<u32> },
    /// A stale read and what it returned.
    Stale(Option<u32>),
}

/// Checks every rule over `ops`; the first violation found, described.
pub(crate) fn check(ops: &[Op]) -> Result<(), String> {
    let mut keys: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        keys.entry(op.key).or_default().push(i);
    }
    for (key, idx) in &keys {
        linearizable(ops, idx).map_err(|e| format!("key {key}: {e}"))?;
    }
    sessions(ops)?;
    stale(ops)
}

/// [`check`] on a thread with a stack for long histories (the search
/// recurses once per operation of a key), as process tests record them.
#[allow(dead_code)] // the simulation's histories are short
pub(crate) fn check_deep(ops: Vec<Op>) -> Result<(), String> {
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || check(&ops))
        .expect("spawn the checker")
        .join()
        .expect("the checker panicked")
}

/// The search for an order of the strong reads and writes of one key that
/// respects real time and the register's semantics.
fn linearizable(ops: &[Op], idx: &[usize]) -> Result<(), String> {
    // Values some read returned: a write without an answer that no read
    // saw can be left out (no read lies between it and the next write).
    let seen: HashSet<Option<u32>> = idx
        .iter()
        .filter_map(|&i| match (&ops[i].kind, ops[i].ret) {
            (Kind::Strong(v), Some(_)) => Some(*v),
            _ => None,
        })
        .collect();
    let hist: Vec<&Op> = idx
        .iter()
        .map(|&i| &ops[i])
        .filter(|op| match &op.kind {
            Kind::Write(v) => op.ret.is_some() || seen.contains(v),
            Kind::Strong(_) => op.ret.is_some(),
            _ => false,
        })
        .collect();
    let n = hist.len();
    let mut search = Search {
        hist: &hist,
        done: vec![0u64; n.div_ceil(64).max(1)],
        memo: HashSet::new(),
        must: hist.iter().filter(|o| o.ret.is_some()).count(),
        steps: 0,
    };
    if search.from(None, 0) {
        return Ok(());
    }
    if search.steps > SEARCH_LIMIT {
        return Err("linearizability search too large".into());
    }
    let reads: Vec<String> = hist
        .iter()
        .map(|o| match (&o.kind, o.ret) {
            (Kind::Write(v), r) => format!("c{} write {v:?} [{}, {r:?}]", o.client, o.call),
            (Kind::Strong(v), r) => format!("c{} read {v:?} [{}, {r:?}]", o.client, o.call),
            _ => String::new(),
        })
        .collect();
    Err(format!(
        "not linearizable; history:\n  {}",
        reads.join("\n  ")
    ))
}

const SEARCH_LIMIT: u64 = 5_000_000;

struct Search<'a> {
    hist: &'a [&'a Op],
    /// The ops placed so far, one bit each.
    done: Vec<u64>,
    /// (placed set, state) pairs already explored.
    memo: HashSet<(Vec<u64>, Option<u32>)>,
    /// Answered ops: all of them must be placed.
    must: usize,
    steps: u64,
}

impl Search<'_> {
    fn placed(&self, i: usize) -> bool {
        self.done[i / 64] >> (i % 64) & 1 == 1
    }

    fn flip(&mut self, i: usize) {
        self.done[i / 64] ^= 1 << (i % 64);
    }

    /// Places the remaining ops after `placed` answered ones, with the
    /// register holding `state`.
    fn from(&mut self, state: Option<u32>, placed: usize) -> bool {
        if placed == self.must {
            return true;
        }
        self.steps += 1;
        if self.steps > SEARCH_LIMIT {
            return false;
        }
        let n = self.hist.len();
        // The earliest answer among ops not placed: an op sent after it
        // cannot come first.
        let horizon = (0..n)
            .filter(|&i| !self.placed(i))
            .filter_map(|i| self.hist[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..n {
            if self.placed(i) || self.hist[i].call > horizon {
                continue;
            }
            let next = match &self.hist[i].kind {
                Kind::Write(v) => *v,
                Kind::Strong(v) if *v == state => state,
                _ => continue,
            };
            self.flip(i);
            let fresh = self.memo.insert((self.done.clone(), next));
            let answered = placed + self.hist[i].ret.is_some() as usize;
            if fresh && self.from(next, answered) {
                return true;
            }
            self.flip(i);
        }
        false
    }
}

/// A session read after the client's own write W to the key returns W's
/// value or one of a write not known to be older than W (answered before W
/// was sent); a `None` needs a delete that is not known to be older.
fn sessions(ops: &[Op]) -> Result<(), String> {
    for op in ops {
        let (Kind::Session { after, got }, Some(_)) = (&op.kind, op.ret) else {
            continue;
        };
        let w = &ops[*after];
        let older = |x: &Op| x.ret.is_some_and(|r| r < w.call);
        let ok = ops.iter().any(|x| {
            x.key == op.key
                && x.call <= op.ret.unwrap_or(u64::MAX)
                && matches!(&x.kind, Kind::Write(v) if v == got)
                && (std::ptr::eq(x, w) || !older(x))
        });
        if !ok {
            return Err(format!(
                "session read by c{} of key {} at [{}, {:?}] returned {got:?}, older than its own write {:?} [{}, {:?}]",
                op.client, op.key, op.call, op.ret, w.kind, w.call, w.ret
            ));
        }
    }
    Ok(())
}

/// A stale read returns nothing or a value some write of the key sent
/// before the read was answered.
fn stale(ops: &[Op]) -> Result<(), String> {
    for op in ops {
        let (Kind::Stale(Some(v)), Some(ret)) = (&op.kind, op.ret) else {
            continue;
        };
        let written = ops
            .iter()
            .any(|x| x.key == op.key && x.call <= ret && x.kind == Kind::Write(Some(*v)));
        if !written {
            return Err(format!(
                "stale read by c{} of key {} returned {v}, which no write sent",
                op.client, op.key
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, kind: Kind, call: u64, ret: Option<u64>) -> Op {
        Op {
            client,
            key: 0,
            kind,
            call,
            ret,
        }
    }

    #[test]
    fn the_checker_tells_linearizable_from_not() {
        // Sequential: write 1, read 1, write 2, read 2.
        let good = vec![
            op(0, Kind::Write(Some(1)), 0, Some(10)),
            op(1, Kind::Strong(Some(1)), 11, Some(20)),
            op(0, Kind::Write(Some(2)), 21, Some(30)),
            op(1, Kind::Strong(Some(2)), 31, Some(40)),
        ];
        assert!(check(&good).is_ok());
        // A read after write 2 was answered that returns 1: stale.
        let mut bad = good.clone();
        bad[3].kind = Kind::Strong(Some(1));
        assert!(check(&bad).is_err());
        // Concurrent with write 2, either value is fine.
        let mut conc = good.clone();
        conc[3] = op(1, Kind::Strong(Some(1)), 25, Some(40));
        assert!(check(&conc).is_ok());
        // A write that was never answered but was read takes effect once:
        // reading it, then the older value, is not linearizable.
        let flip = vec![
            op(0, Kind::Write(Some(1)), 0, Some(10)),
            op(2, Kind::Write(Some(2)), 11, None),
            op(1, Kind::Strong(Some(2)), 20, Some(30)),
            op(1, Kind::Strong(Some(1)), 31, Some(40)),
        ];
        assert!(check(&flip).is_err());
        // An unanswered write nobody read: fine either way.
        let lost = vec![
            op(0, Kind::Write(Some(1)), 0, Some(10)),
            op(2, Kind::Write(Some(2)), 11, None),
            op(1, Kind::Strong(Some(1)), 20, Some(30)),
        ];
        assert!(check(&lost).is_ok());
        // An answered write that a later read does not see: lost.
        let lost_acked = vec![
            op(0, Kind::Write(Some(1)), 0, Some(10)),
            op(1, Kind::Strong(None), 20, Some(30)),
        ];
        assert!(check(&lost_acked).is_err());
    }

    #[test]
    fn sessions_and_stale_reads() {
        let ops = vec![
            op(0, Kind::Write(Some(1)), 0, Some(10)),
            op(1, Kind::Write(Some(2)), 11, Some(20)),
            op(
                1,
                Kind::Session {
                    after: 1,
                    got: Some(1),
                },
                21,
                Some(30),
            ),
        ];
        assert!(sessions(&ops).is_err(), "write 1 is older than write 2");
        let mut ok = ops.clone();
        ok[2].kind = Kind::Session {
            after: 1,
            got: Some(2),
        };
        assert!(sessions(&ok).is_ok());
        let s = vec![op(0, Kind::Stale(Some(7)), 0, Some(5))];
        assert!(stale(&s).is_err());
    }
}
