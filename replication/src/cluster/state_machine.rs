//! The metadata group's state machine: `proto::meta::apply` over committed
//! entries, published to the node on a watch channel.
//!
//! The state is a few KiB, so it lives in memory and a snapshot is its whole
//! JSON, kept in `<dir>/snapshot` (tmp, fsync, rename). At open the last
//! snapshot is the state; Raft re-applies the committed entries after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{LogId, Member, MetaRaft, Snapshot, SnapshotMeta, StoredMembership};
use crate::proto::meta::{self, MetaState};

/// What a node sees of the metadata: the state and the members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaView {
    /// Term, master, in-sync set, history.
    pub state: MetaState,
    /// Every member (voters and learners) by id.
    pub members: BTreeMap<u64, Member>,
    /// The voters' ids.
    pub voters: BTreeSet<u64>,
    /// The last entry applied.
    pub last_applied: Option<LogId>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Data {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: MetaState,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine of one node. Clones share the state.
#[derive(Clone)]
pub struct MetaMachine {
    inner: Arc<Mutex<Inner>>,
    view: watch::Sender<MetaView>,
}

struct Inner {
    dir: PathBuf,
    data: Data,
    current: Option<Stored>,
}

const SNAPSHOT: &str = "snapshot";

impl MetaMachine {
    /// Opens the state machine in `dir`: the last snapshot, if any.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<MetaMachine> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let (data, current) = match fs::read(dir.join(SNAPSHOT)) {
            Ok(bytes) => {
                let stored: Stored = serde_json::from_slice(&bytes).map_err(invalid)?;
                let data: Data = serde_json::from_slice(&stored.data).map_err(invalid)?;
                (data, Some(stored))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Data::default(), None),
            Err(e) => return Err(e),
        };
        let (view, _) = watch::channel(view_of(&data));
        Ok(MetaMachine {
            inner: Arc::new(Mutex::new(Inner { dir, data, current })),
            view,
        })
    }

    /// The metadata as applied so far, updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<MetaView> {
        self.view.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, data: &Data) {
        self.view.send_if_modified(|v| {
            let new = view_of(data);
            let changed = *v != new;
            *v = new;
            changed
        });
    }
}

fn invalid(e: serde_json::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn view_of(data: &Data) -> MetaView {
    let m = data.membership.membership();
    MetaView {
        state: data.state.clone(),
        members: m.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        voters: m.voter_ids().collect(),
        last_applied: data.last_applied,
    }
}

impl RaftSnapshotBuilder<MetaRaft> for MetaMachine {
    type SnapshotData = io::Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut inner = self.lock();
        let meta = SnapshotMeta {
            last_log_id: inner.data.last_applied,
            last_membership: inner.data.membership.clone(),
        };
        let stored = Stored {
            meta: meta.clone(),
            data: serde_json::to_vec(&inner.data).map_err(io::Error::other)?,
        };
        save(&inner.dir, &stored)?;
        let bytes = stored.data.clone();
        inner.current = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: io::Cursor::new(bytes),
        })
    }
}

/// Writes the snapshot file atomically.
fn save(dir: &Path, stored: &Stored) -> io::Result<()> {
    let tmp = dir.join("snapshot.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(stored).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(SNAPSHOT))?;
    File::open(dir)?.sync_all()
}

impl RaftStateMachine<MetaRaft> for MetaMachine {
    type SnapshotData = io::Cursor<Vec<u8>>;
    type SnapshotBuilder = MetaMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.lock();
        Ok((inner.data.last_applied, inner.data.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<MetaRaft>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let reply = {
                let mut inner = self.lock();
                let data = &mut inner.data;
                data.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => Some(meta::apply(
                        &mut data.state,
                        entry.log_id.leader_id.term,
                        &cmd,
                    )),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        None
                    }
                };
                self.publish(data);
                reply
            };
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> MetaMachine {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: io::Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let mut data: Data = serde_json::from_slice(&bytes).map_err(invalid)?;
        // The header is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let stored = Stored {
            meta: meta.clone(),
            data: bytes,
        };
        let mut inner = self.lock();
        save(&inner.dir, &stored)?;
        inner.data = data;
        inner.current = Some(stored);
        self.publish(&inner.data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let inner = self.lock();
        Ok(inner.current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: io::Cursor::new(s.data.clone()),
        }))
    }
}
