//! Every sync policy of the master ships its writes at once: `ack=all`
//! writes with a short acknowledgement timeout keep the worker in sync
//! (a write shipped late would drop it), and the worker holds every value.

use std::time::Duration;

use ourdb::keyed::KeyedStore;
use ourdb::{OpenOptions, SyncPolicy};
use replication::{Ack, Client, Identity, Master, MasterOptions, Worker};

async fn ships_promptly(sync: SyncPolicy) {
    let tmp = tempfile::tempdir().unwrap();
    let id = Identity::loopback().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let open = |name: &str, sync| {
        KeyedStore::open(tmp.path().join(name), OpenOptions::new().sync(sync)).unwrap()
    };
    let master = Master::new(
        open("m", sync),
        MasterOptions {
            ack_timeout: Duration::from_millis(300),
            ..MasterOptions::default()
        },
    );
    let mep = replication::endpoint(&id, any).unwrap();
    let maddr = mep.local_addr().unwrap();
    tokio::spawn(master.clone().serve(mep));
    let worker = Worker::new(open("w", SyncPolicy::Flush), maddr);
    let wep = replication::endpoint(&id, any).unwrap();
    let waddr = wep.local_addr().unwrap();
    tokio::spawn(worker.clone().run(wep));
    let client = Client::new(&id).unwrap();
    // Wait for the worker to join the in-sync set.
    for _ in 0..100 {
        let (_, ws) = client.status(maddr).await.unwrap();
        if ws.iter().any(|w| w.in_sync) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
