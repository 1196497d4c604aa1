//! Where the gateway sends requests. The flags name a master and workers;
//! in a failover cluster the members' metadata names the master of the
//! newest term and the other members, and the gateway follows it: a
//! discovery task asks every known node (`Meta`) once a second, and at once
//! when a request met a node that is no longer master. Standalone nodes
//! refuse `Meta`, and the flags stay the truth.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use replication::cluster::ClusterInfo;
use replication::{Client, Code, Error};
use tokio::sync::{watch, Notify};

use super::{Gateway, Load};

/// How often the gateway asks the cluster who is master.
const DISCOVERY_EVERY: Duration = Duration::from_secs(1);
/// How long one member may take to answer `Meta`.
const META_WAIT: Duration = Duration::from_millis(500);
/// How long a request waits for a new master before it gives up (an
/// election takes about a second), at least: members with a longer
/// heartbeat take longer (`Routes::failover_wait`).
const FAILOVER_WAIT: Duration = Duration::from_secs(3);
/// How long a request waits for another master when the current one just
/// failed in transport, before it tries that one again.
const SUSPECT_WAIT: Duration = Duration::from_millis(1500);
/// How long a request out on a master waits once the cluster names
/// another, before it counts as unanswered (a write: `indeterminate`).
const MOVED_GRACE: Duration = Duration::from_millis(250);

/// The master and workers requests go to now.
pub(crate) struct Topology {
    pub(crate) master: SocketAddr,
    pub(crate) workers: Vec<SocketAddr>,
    /// Per worker, in the order of `workers`.
    pub(super) load: Vec<Arc<Load>>,
    /// The failover metadata this came from (`None`: from the flags).
    pub(crate) cluster: Option<ClusterInfo>,
}

impl Topology {
    pub(super) fn fixed(master: SocketAddr, workers: Vec<SocketAddr>) -> Topology {
        Topology {
            master,
            load: workers.iter().map(|_| Arc::default()).collect(),
            workers,
            cluster: None,
        }
    }

    /// The topology `info` describes, keeping the load figures of workers
    /// that stay. `None` when it names no reachable master.
    fn following(&self, info: ClusterInfo) -> Option<Topology> {
        let master = info.master_addr()?;
        let workers = info.others();
        let load = workers
            .iter()
            .map(|w| match self.workers.iter().position(|old| old == w) {
                Some(i) => self.load[i].clone(),
                None => Arc::default(),
            })
            .collect();
        Some(Topology {
            master,
            workers,
            load,
            cluster: Some(info),
        })
    }

    /// Every node worth asking about the cluster.
    fn known(&self, seeds: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = seeds.to_vec();
        all.push(self.master);
        all.extend(&self.workers);
        if let Some(c) = &self.cluster {
            all.extend(
                c.members
                    .iter()
                    .filter_map(|m| m.addr.parse::<SocketAddr>().ok()),
            );
        }
        all.sort();
        all.dedup();
        all
    }
}

/// The shared, replaceable topology and the means to wait for a change.
pub(super) struct Routes {
    current: watch::Sender<Arc<Topology>>,
    /// The addresses from the flags: always asked too, so a gateway finds
    /// the cluster again even when every member it learnt of moved.
    seeds: Vec<SocketAddr>,
    poke: Arc<Notify>,
    /// A master that just failed in transport, and when: requests wait a
    /// moment for the cluster to name another before they try it again.
    suspect: std::sync::Mutex<Option<(SocketAddr, Instant)>>,
    /// Opens connections to a master before a request goes out.
    client: Arc<Client>,
}

impl Routes {
    pub(super) fn new(master: SocketAddr, workers: Vec<SocketAddr>, client: Arc<Client>) -> Routes {
        let mut seeds = workers.clone();
        seeds.push(master);
        Routes {
            current: watch::Sender::new(Arc::new(Topology::fixed(master, workers))),
            seeds,
            poke: Arc::new(Notify::new()),
            suspect: std::sync::Mutex::new(None),
            client,
        }
    }

    /// Testing aid: as if discovery had found `t`.
    #[cfg(test)]
    pub(super) fn set(&self, t: Topology) {
        self.current.send_replace(Arc::new(t));
    }

    pub(super) fn now(&self) -> Arc<Topology> {
        self.current.borrow().clone()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.current.subscribe()
    }

    /// How long a request waits for a new master: 3 s, or twice the
    /// members' longest election timeout where that is more (6 s with
    /// `--heartbeat-ms 500`), so a failover that takes its time is waited
    /// out rather than answered 503.
    pub(super) fn failover_wait(&self) -> Duration {
        self.now().cluster.as_ref().map_or(FAILOVER_WAIT, |c| {
            FAILOVER_WAIT.max(2 * c.election_timeout_max())
        })
    }

    /// Every node the gateway knows of: the flags' and the members'.
    pub(super) fn known(&self) -> Vec<SocketAddr> {
        self.now().known(&self.seeds)
    }

    /// Asks the discovery task to look now.
    pub(super) fn poke(&self) {
        self.poke.notify_one();
    }

    /// Runs `op` on the master. A node that answers that it is no master
    /// wrote nothing, so the request goes again, to the next master, for up
    /// to `FAILOVER_WAIT`; with `idempotent`, so does one that failed in
    /// transport (a read-index, never a write: a write may have landed).
    pub(super) async fn on_master<T, F, Fut>(&self, idempotent: bool, op: F) -> Result<T, Error>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let wait = self.failover_wait();
        let deadline = Instant::now() + wait;
        let mut changes = self.subscribe();
        loop {
            let (master, failover) = {
                let t = changes.borrow_and_update();
                (t.master, t.cluster.is_some())
            };
            if failover && self.is_suspect(master) {
                // It failed a moment ago and a failover is likely under
                // way: another connection attempt would cost seconds,
                // while a new master is usually named within one.
                let _ = tokio::time::timeout(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(SUSPECT_WAIT),
                    changes.wait_for(|t| t.master != master),
                )
                .await;
                let now = changes.borrow_and_update().master;
                if now != master {
                    continue;
                }
            }
            if !self.client.is_ready(master) {
                // Connect before the request goes out, racing a change of
                // master: an attempt on a dead master lasts until its idle
                // timeout, and it can be dropped at any point, having sent
                // nothing, once discovery names another master.
                let left = deadline.saturating_duration_since(Instant::now());
                let opened = tokio::time::timeout(left, async {
                    tokio::select! {
                        r = self.client.ready(master) => Some(r),
                        _ = changes.wait_for(|t| t.master != master) => None,
                    }
                })
                .await;
                match opened {
                    Ok(None) => continue,
                    Ok(Some(Ok(()))) => {}
                    Ok(Some(Err(e))) => {
                        self.mark_suspect(master);
                        self.poke();
                        // Nothing was sent: in a failover cluster a write
                        // may wait for the next master too. (Whether this
                        // is one may have become known while connecting.)
                        let failover = self.now().cluster.is_some();
                        if !failover || Instant::now() >= deadline {
                            return Err(e);
                        }
                        continue;
                    }
                    // Not `Timeout`, which says a request may have landed.
                    Err(_) => {
                        return Err(Error::Quic(format!(
                            "no connection to the master {master} within {wait:?}"
                        )))
                    }
                }
            }
            let call = op(master);
            tokio::pin!(call);
            let outcome = tokio::select! {
                r = &mut call => r,
                // (The watch's guard dropped at once: not held over an await.)
                _ = async { changes.wait_for(|t| t.master != master).await.map(|_| ()) } => {
                    // The cluster named another master while this request
                    // was out. A planned handover still answers what it
                    // admitted, within the grace; a dead master's
                    // connection would only say so at its idle timeout
                    // (3 s on the overlay), long after the new master
                    // takes writes.
                    match tokio::time::timeout(MOVED_GRACE, &mut call).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Unanswered(format!(
                            "the cluster named another master than {master} while the request was out"
                        ))),
                    }
                }
            };
            let e = match outcome {
                Ok(v) => {
                    self.clear_suspect(master);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let not_master = matches!(
                e,
                Error::Remote {
                    code: Code::NotMaster,
                    ..
                }
            );
            let transport = !matches!(e, Error::Remote { .. });
            if transport {
                self.mark_suspect(master);
            }
            if not_master || transport {
                self.poke();
            }
            let retry = not_master || (transport && idempotent);
            let left = deadline.saturating_duration_since(Instant::now());
            if !retry || left.is_zero() {
                return Err(e);
            }
            // Wait for another master, or a little (the node that refused
            // may be about to take the role), then go again.
            let _ = tokio::time::timeout(
                left.min(Duration::from_millis(250)),
                changes.wait_for(|t| t.master != master),
            )
            .await;
        }
    }

    fn mark_suspect(&self, addr: SocketAddr) {
        *self.suspect.lock().unwrap_or_else(|e| e.into_inner()) = Some((addr, Instant::now()));
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let wait = self.failover_wait();
        matches!(
            *self.suspect.lock().unwrap_or_else(|e| e.into_inner()),
            Some((a, at)) if a == addr && at.elapsed() < wait
        )
    }

    fn clear_suspect(&self, addr: SocketAddr) {
        let mut s = self.suspect.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, Some((a, _)) if a == addr) {
            *s = None;
        }
    }

    /// Starts the discovery task; it ends when the gateway goes.
    pub(super) fn discover(gw: &Arc<Gateway>) {
        let weak = Arc::downgrade(gw);
        let poke = gw.routes.poke.clone();
        tokio::spawn(async move {
            loop {
                if !refresh(&weak).await {
                    return;
                }
                tokio::select! {
                    _ = poke.notified() => {
                        // A burst of refused requests is one look, not many.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ = tokio::time::sleep(DISCOVERY_EVERY) => {}
                }
            }
        });
    }
}

/// One look at the cluster; false once the gateway is gone.
async fn refresh(weak: &Weak<Gateway>) -> bool {
    let Some(gw) = weak.upgrade() else {
        return false;
    };
    let routes = &gw.routes;
    let now = routes.now();
    let asks = now.known(&routes.seeds).into_iter().map(|addr| {
        let client = gw.client.clone();
        async move {
            tokio::time::timeout(META_WAIT, client.meta(addr))
                .await
                .ok()
                .and_then(Result::ok)
        }
    });
    let mut answers: futures_util::stream::FuturesUnordered<_> = asks.collect();
    // Answers are taken as they come (a dead member costs its whole wait):
    // the first that names a newer master is followed at once. The newest
    // term wins: a member cut off from the others may still name the master
    // it knew.
    let mut best: Option<ClusterInfo> = None;
    while let Some(answer) = futures_util::StreamExt::next(&mut answers).await {
        let Some(info) = answer.filter(|i| i.master_addr().is_some()) else {
            continue;
        };
        if best.as_ref().is_some_and(|b| !info.newer_than(b)) {
            continue;
        }
        let newer = routes
            .now()
            .cluster
            .as_ref()
            .is_none_or(|c| info.term > c.term);
        best = Some(info.clone());
        if newer {
            follow(&gw, info);
        }
    }
    // At the same term, the members and the in-sync set may have changed:
    // the view with the most metadata applied tells.
    if let Some(info) = best {
        if routes
            .now()
            .cluster
            .as_ref()
            .is_none_or(|c| !c.newer_than(&info))
        {
            follow(&gw, info);
        }
    }
    true
}

/// Routes requests as `info` says.
fn follow(gw: &Gateway, info: ClusterInfo) {
    let now = gw.routes.now();
    let Some(next) = now.following(info) else {
        return;
    };
    if next.master != now.master || next.workers != now.workers {
        tracing::info!(
            master = %next.master,
            term = next.cluster.as_ref().map_or(0, |c| c.term),
            workers = ?next.workers,
            "the cluster's master or members changed"
        );
        gw.metrics.topology_changes.inc();
    }
    gw.routes.current.send_replace(Arc::new(next));
}
