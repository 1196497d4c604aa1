//! A worker answers reads only from records below the high-water mark its
//! master sends: a record above it might still be taken back by a failover.
//! A scripted master sends real records with a mark that lags behind them.

mod common;

use std::time::Duration;

use ourdb::{Location, SyncPolicy};
use replication::frame::{self, Frame};
use replication::{Client, Cursor, Identity, Worker};

/// A worker fed by a scripted master: k1 below the mark, k2 applied but
/// above it. Returns what a test needs to go on.
struct Fed {
    _dir: tempfile::TempDir,
    worker: std::sync::Arc<Worker>,
    waddr: std::net::SocketAddr,
    client: Client,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    last: Frame,
    ends: Vec<Location>,
    _endpoints: (quinn::Endpoint, quinn::Connection),
}

async fn fed() -> Fed {
    let dir = tempfile::tempdir().unwrap();
    // The records, as a master writes them.
    let source = common::store(&dir.path().join("source"), SyncPolicy::Flush);
    let mut ends = vec![source.db().end()];
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        source.put(k, v.as_bytes()).unwrap();
        ends.push(source.db().end());
    }
    let segment = |i: usize, hw: Location| {
        let s = source
            .db()
            .read_records_upto(ends[i], ends[i + 1], 1 << 20)
            .unwrap();
        assert_eq!((s.start, s.next), (ends[i], ends[i + 1]));
        Frame::Segment {
            term: 0,
            hw,
            start: s.start,
            next: s.next,
            end: s.next,
            records: s.bytes,
        }
    };
    let epoch = source.db().meta().epoch;

    let id = Identity::loopback().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let master = replication::endpoint(&id, any).unwrap();
    let maddr = master.local_addr().unwrap();
    let worker = Worker::new(
        common::store(&dir.path().join("w"), SyncPolicy::Flush),
        maddr,
    );
    let wep = replication::endpoint(&id, any).unwrap();
    let waddr = wep.local_addr().unwrap();
    tokio::spawn(worker.clone().run(wep));

    let conn = master.accept().await.unwrap().await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    assert!(matches!(
        frame::read(&mut recv).await.unwrap(),
        Some(Frame::Subscribe { .. })
    ));
    // k1 under the mark; k2 applied but above it.
    frame::write(&mut send, &segment(0, ends[1])).await.unwrap();
    frame::write(&mut send, &segment(1, ends[1])).await.unwrap();
    let mut applied = worker.watch_applied();
    let at2 = Cursor::new(epoch, ends[2]);
    tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|a| *a >= at2))
        .await
        .expect("k2 applied")
        .unwrap();
    let last = segment(2, ends[3]);
    Fed {
        worker,
        waddr,
        client: Client::new(&id).unwrap(),
        send,
        recv,
        last,
        ends,
        _endpoints: (master, conn),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reads_wait_for_the_high_water_mark() {
    let Fed {
        waddr,
        client,
        mut send,
        mut recv,
        last,
        ends,
        ..
    } = fed().await;
    let read = client.get(waddr, "k1", Cursor::ZERO);
    let early = tokio::time::timeout(Duration::from_millis(300), read).await;
    assert!(
        early.is_err(),
        "answered from a store holding records above the mark: {early:?}"
    );

    // The next segment brings a mark past everything: reads are answered.
    frame::write(&mut send, &last).await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(waddr, "k2", Cursor::ZERO),
    )
    .await
    .expect("answered once the mark covers the store")
    .unwrap();
    assert_eq!(got.as_deref(), Some(&b"v2"[..]));
    // The worker acknowledged each segment it applied.
    for end in &ends[1..] {
        match frame::read(&mut recv).await.unwrap() {
            Some(Frame::Ack { cursor }) => assert_eq!(cursor, *end),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

/// A worker that stops following as such (its node became master, or
/// follows a new one) ends the reads waiting on its mark at once: nothing
/// would move that mark any more, and the client should read elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_worker_ends_the_reads_waiting_on_its_mark() {
    let f = fed().await;
    let read = {
        let (client, waddr) = (f.client, f.waddr);
        tokio::spawn(async move { client.get(waddr, "k1", Cursor::ZERO).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!read.is_finished(), "answered above the mark");
    f.worker.retire();
    let e = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the read ended")
        .unwrap()
        .unwrap_err();
    // Not the read wait running out (that names the mark).
    assert!(e.to_string().contains("changed roles"), "{e}");
}
