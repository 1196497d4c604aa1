//! Every sync policy of the master ships its writes at once: `ack=all`
//! writes with a short acknowledgement timeout keep the worker in sync
//! (a write shipped late would drop it), and the worker holds every value.

use std::time::Duration;

use ourdb::SyncPolicy;
use replication::{Ack, MasterOptions};

mod common;

async fn ships_promptly(sync: SyncPolicy) {
    let tmp = tempfile::tempdir().unwrap();
    let options = MasterOptions {
        ack_timeout: Duration::from_millis(300),
        ..MasterOptions::default()
    };
    let nodes = common::start(tmp.path(), sync, options, 1);
    let (maddr, waddr, client) = (nodes.maddr, nodes.workers[0].addr, nodes.client.clone());
    common::in_sync(&nodes).await;
    let mut last = None;
    for i in 0..30u32 {
        let c = client
            .set_with(
                maddr,
                &format!("k{i}"),
                format!("v{i}").as_bytes(),
                Ack::All,
            )
            .await
            .unwrap();
        last = Some(c);
    }
    let (_, ws) = client.status(maddr).await.unwrap();
    assert!(
        ws.iter().all(|w| w.in_sync),
        "{sync:?}: a write was shipped late: {ws:?}"
    );
    for i in 0..30u32 {
        let got = client
            .get(waddr, &format!("k{i}"), last.unwrap())
            .await
            .unwrap();
        assert_eq!(got, Some(format!("v{i}").into_bytes()), "{sync:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_policy_ships_each_write_at_once() {
    for sync in [
        SyncPolicy::Group,
        SyncPolicy::Always,
        SyncPolicy::Flush,
        SyncPolicy::Never,
    ] {
        ships_promptly(sync).await;
    }
}

/// The commit cursor: a worker only ever holds records the master has
/// fsynced, so a master crash (losing what it had not synced) can take back
/// nothing a worker already serves. Sampled while 16 writers keep group
/// commit busy: the worker's applied cursor never passes the master's
/// durable end (read in that order: the durable end only grows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_never_hold_records_the_master_has_not_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = common::start(tmp.path(), SyncPolicy::Group, MasterOptions::default(), 1);
    common::in_sync(&nodes).await;
    let (master, worker) = (nodes.master.clone(), nodes.workers[0].node.clone());
    let start = worker.applied();
    let writers: Vec<_> = (0..16u32)
        .map(|w| {
            let (client, maddr) = (nodes.client.clone(), nodes.maddr);
            tokio::spawn(async move {
                for i in 0..150u32 {
                    client
                        .set(maddr, &format!("w{w}/{i}"), &[7u8; 300])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut samples = 0u64;
    while !writers.iter().all(|w| w.is_finished()) {
        let applied = worker.applied();
        let durable = master.store().db().durable_end();
        assert!(
            applied.at <= durable,
            "the worker applied {applied} while the master had synced up to {durable}"
        );
        samples += 1;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(samples > 100, "only {samples} samples");
    assert!(worker.applied() > start, "nothing was shipped");
}
