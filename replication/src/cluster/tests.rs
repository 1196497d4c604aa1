use std::io::Write;

use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use super::types::{Entry, LogId};
use super::*;
use crate::proto::meta::MetaCmd;
use crate::Cursor;

/// Every store of the suite gets a fresh directory, kept alive with it.
struct Dirs;

impl StoreBuilder<MetaRaft, FileLog, MetaMachine, tempfile::TempDir> for Dirs {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, FileLog, MetaMachine), StorageError<MetaRaft>> {
        let d = tempfile::tempdir().unwrap();
        let log = FileLog::open(d.path()).unwrap();
        let sm = MetaMachine::open(d.path()).unwrap();
        Ok((d, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite() {
    Suite::test_all(Dirs).await.unwrap();
}

fn entry(term: u64, index: u64, cmd: Option<MetaCmd>) -> Entry {
    Entry {
        log_id: LogId::new_term_index(term, index),
        payload: cmd.map_or(
            openraft::EntryPayload::Blank,
            openraft::EntryPayload::Normal,
        ),
    }
}

fn appoint(master: u64, term: u64) -> MetaCmd {
    MetaCmd::Appoint {
        master,
        term,
        parent: 0,
        start: Cursor::ZERO,
    }
}

#[tokio::test]
async fn log_survives_reopen_and_a_torn_tail_is_cut() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut log = FileLog::open(d.path()).unwrap();
        let vote = Vote::new(3, 7);
        log.save_vote(&vote).await.unwrap();
        let es = (1..=5).map(|i| entry(3, i, Some(appoint(7, 3))));
        log.append(es, IOFlushed::noop()).await.unwrap();
        log.truncate_after(Some(LogId::new_term_index(3, 3)))
            .await
            .unwrap();
        log.append([entry(4, 4, None)], IOFlushed::noop())
            .await
            .unwrap();
        log.purge(LogId::new_term_index(3, 1)).await.unwrap();
        log.save_committed(Some(LogId::new_term_index(3, 3)))
            .await
            .unwrap();
    }
    let check = |log: &mut FileLog| {
        let mut log = log.clone();
        async move {
            let st = log.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id, Some(LogId::new_term_index(3, 1)));
            assert_eq!(st.last_log_id, Some(LogId::new_term_index(4, 4)));
            let ids: Vec<_> = log
                .try_get_log_entries(0..)
                .await
                .unwrap()
                .iter()
                .map(|e| e.log_id)
                .collect();
            assert_eq!(
                ids,
                [
                    LogId::new_term_index(3, 2),
                    LogId::new_term_index(3, 3),
                    LogId::new_term_index(4, 4)
                ]
            );
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
        }
    };
    let mut log = FileLog::open(d.path()).unwrap();
    check(&mut log).await;
    assert_eq!(
        log.read_committed().await.unwrap(),
        Some(LogId::new_term_index(3, 3))
    );
    drop(log);
    // A crash mid-append: half a record at the end.
    let len = std::fs::metadata(d.path().join("log")).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("log"))
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(f);
    let mut log = FileLog::open(d.path()).unwrap();
    check(&mut log).await;
    assert_eq!(std::fs::metadata(d.path().join("log")).unwrap().len(), len);
    // A flipped byte in the last record: that record and nothing else is lost.
    let mut bytes = std::fs::read(d.path().join("log")).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x20;
    std::fs::write(d.path().join("log"), &bytes).unwrap();
    let mut log = FileLog::open(d.path()).unwrap();
    check(&mut log).await;
    // The last record was the commit hint; the purge's rewrite had none.
    assert_eq!(log.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn state_machine_applies_publishes_and_restores_from_its_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let mut sm = MetaMachine::open(d.path()).unwrap();
    let mut view = sm.subscribe();
    let es = [
        entry(1, 1, Some(appoint(7, 1))),
        // Proposed in term 1 for term 2: stale, changes nothing.
        entry(1, 2, Some(appoint(8, 2))),
        entry(2, 3, Some(appoint(8, 2))),
    ];
    let stream = futures_util::stream::iter(es.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.unwrap();
    assert!(view.has_changed().unwrap());
    let v = view.borrow_and_update().clone();
    assert_eq!((v.state.term, v.state.master), (2, Some(8)));
    assert_eq!(v.state.history.len(), 2);
    assert_eq!(v.last_applied, Some(LogId::new_term_index(2, 3)));

    let mut b = sm.get_snapshot_builder().await;
    openraft::RaftSnapshotBuilder::build_snapshot(&mut b)
        .await
        .unwrap();
    drop(sm);
    let mut sm = MetaMachine::open(d.path()).unwrap();
    assert_eq!(sm.subscribe().borrow().state, v.state);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(LogId::new_term_index(2, 3)));
}
