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
