//! Failover with real nodes over loopback QUIC, in this process: three
//! members elect a master through the metadata group; the master is stopped
//! with `ack=all` writes acknowledged; another is appointed from the in-sync
//! set and takes writes; the old master returns on its own directory with
//! an unreplicated tail, cuts it at the branch point, follows as a worker
//! and ends byte-identical.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ourdb::keyed::KeyedStore;
use ourdb::{OpenOptions, SyncPolicy};
use replication::cluster::{MemberOptions, Node};
use replication::{Ack, Client, Cursor, Identity, MasterOptions};

async fn start(id: u64, dir: &Path, addr: SocketAddr) -> Arc<Node> {
    start_with(id, dir, addr, Duration::ZERO).await
}

/// A member that waits `apply_delay` before applying each segment while it
/// is a worker (a lagging replica).
async fn start_with(id: u64, dir: &Path, addr: SocketAddr, apply_delay: Duration) -> Arc<Node> {
    let how = How {
        apply_delay,
        ..How::default()
    };
    try_start(id, dir, addr, how).await.unwrap()
}

/// How a test member runs, beyond its id, directory and address.
struct How {
    apply_delay: Duration,
    heartbeat: Duration,
    /// Others reach it through a relay that delays every datagram by this
    /// much each way (`None`: directly).
    one_way: Option<Duration>,
}

impl Default for How {
    fn default() -> How {
        How {
            apply_delay: Duration::ZERO,
            heartbeat: replication::cluster::DEFAULT_HEARTBEAT,
            one_way: None,
        }
    }
}

async fn try_start(
    id: u64,
    dir: &Path,
    addr: SocketAddr,
    how: How,
) -> replication::Result<Arc<Node>> {
    let identity = Identity::loopback().unwrap();
    // A node just stopped at `addr` may hold its socket a moment longer.
    let deadline = Instant::now() + Duration::from_secs(2);
    let endpoint = loop {
        match replication::endpoint(&identity, addr) {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                eprintln!("binding {addr}: {e}; again");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    };
    let addr = endpoint.local_addr().unwrap();
    let addr = match how.one_way {
        Some(d) => slow_relay(addr, d).await,
        None => addr,
    };
    let store =
        KeyedStore::open(dir.join("data"), OpenOptions::new().sync(SyncPolicy::Group)).unwrap();
    let options = MemberOptions {
        id,
        addr,
        pubkey: None,
        raft_dir: dir.join("raft"),
        master: MasterOptions {
            ack_timeout: Duration::from_secs(1),
            ..MasterOptions::default()
        },
        apply_delay: how.apply_delay,
        heartbeat: how.heartbeat,
    };
    Node::start(store, endpoint, &identity, options).await
}

/// A UDP relay to `target` that holds every datagram `one_way` in each
/// direction (a slow path, as between members on two continents); its
/// address. It runs until the test's runtime ends.
async fn slow_relay(target: SocketAddr, one_way: Duration) -> SocketAddr {
    use std::collections::HashMap;
    use tokio::net::UdpSocket;
    use tokio::sync::mpsc;
    type Queue = mpsc::UnboundedSender<(Instant, Vec<u8>, SocketAddr)>;
    /// Sends what it is given from `sock`, each datagram `one_way` after
    /// the time it came with, in order.
    fn delayed(sock: Arc<UdpSocket>, one_way: Duration) -> Queue {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, SocketAddr)>();
        tokio::spawn(async move {
            while let Some((at, data, to)) = rx.recv().await {
                tokio::time::sleep_until((at + one_way).into()).await;
                let _ = sock.send_to(&data, to).await;
            }
        });
        tx
    }
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let back_to_clients = delayed(front.clone(), one_way);
    tokio::spawn(async move {
        // One socket towards the target per client, so that its answers
        // find their way back.
        let mut uplinks: HashMap<SocketAddr, Queue> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let up = match uplinks.get(&client) {
                Some(up) => up.clone(),
                None => {
                    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    let up = delayed(sock.clone(), one_way);
                    let back = back_to_clients.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                            let _ = back.send((Instant::now(), buf[..n].to_vec(), client));
                        }
                    });
                    uplinks.insert(client, up.clone());
                    up
                }
            };
            let _ = up.send((Instant::now(), buf[..n].to_vec(), target));
        }
    });
    addr
}

/// Polls `f` every 20 ms for up to 10 s.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = f() {
            return t;
        }
        if Instant::now() > deadline {
            panic!("not within 10 s: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addr_of(n: &Node) -> SocketAddr {
    n.view().members[&n.id()].addr.parse().unwrap()
}

/// Writes `keys` with `ack=all` to whichever node is master, retrying while
/// there is none; each write's acknowledgement is checked.
async fn write_all(client: &Client, nodes: &[&Arc<Node>], keys: std::ops::Range<u32>) {
    for i in keys {
        let key = format!("k{i}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let master = nodes.iter().find(|n| n.master_term().is_some());
            if let Some(m) = master {
                match client
                    .set_with(addr_of(m), &key, format!("v{i}").as_bytes(), Ack::All)
                    .await
                {
                    Ok(_) => break,
                    Err(e) => assert!(Instant::now() < deadline, "{key}: {e}"),
                }
            }
            assert!(Instant::now() < deadline, "{key}: no master");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn holds(store: &KeyedStore, keys: std::ops::Range<u32>) -> bool {
    keys.clone()
        .all(|i| store.get(&format!("k{i}")).unwrap() == Some(format!("v{i}").into_bytes()))
}

/// Nodes 1, 2 and 3 on `dirs`: node 1 founds the cluster, the others join
/// as a worker started with `--master` does (node 2 through node 1, node 3
/// through node `seed_of_3`); once all three vote and 2 and 3 are in sync.
async fn three_members(dirs: &[std::path::PathBuf], seed_of_3: usize) -> [Arc<Node>; 3] {
    three_members_with(dirs, seed_of_3, Duration::ZERO).await
}

/// As `three_members`, with nodes 2 and 3 applying each segment
/// `apply_delay` late.
async fn three_members_with(
    dirs: &[std::path::PathBuf],
    seed_of_3: usize,
    apply_delay: Duration,
) -> [Arc<Node>; 3] {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let n1 = start(1, &dirs[0], any).await;
    n1.bootstrap().await.unwrap();
    until("node 1 master", || n1.master_term()).await;
    let n2 = start_with(2, &dirs[1], any, apply_delay).await;
    let n3 = start_with(3, &dirs[2], any, apply_delay).await;
    n2.join_through(vec![addr_of_new(&n1)], false);
    until("node 2 a member", || {
        n1.view().members.contains_key(&2).then_some(())
    })
    .await;
    let seed = if seed_of_3 == 2 { &n2 } else { &n1 };
    n3.join_through(vec![addr_of_new(seed)], false);
    until("three voters and both workers in sync", || {
        let v = n1.view();
        (v.voters.len() == 3 && v.state.in_sync.len() == 2).then_some(())
    })
    .await;
    [n1, n2, n3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_fails_over_and_returns_as_a_worker() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    // Node 3 asks node 2, which passes the request on to the leader.
    let [n1, n2, n3] = three_members(&dirs, 2).await;
    assert_eq!(n1.view().state.in_sync, [2, 3].into());

    let client = Client::new(&Identity::loopback().unwrap()).unwrap();
    // Joins that could not name a usable member are refused, on the leader
    // and on a member that would pass them on.
    for body in [
        r#"{"id":0,"member":{"addr":"127.0.0.1:9"}}"#,
        r#"{"id":77,"member":{"addr":"not an address"}}"#,
        r#"{"id":77,"member":{"addr":"127.0.0.1:9","pubkey":"xyz"}}"#,
        r#"{"id":"#,
    ] {
        for node in [&n1, &n2] {
            let r = client
                .call(
                    addr_of(node),
                    replication::msg::raft::Join {
                        body: body.as_bytes().to_vec(),
                    },
                )
                .await;
            assert!(
                matches!(
                    r,
                    Err(replication::Error::Remote {
                        code: replication::Code::BadRequest,
                        ..
                    })
                ),
                "{body}: {r:?}"
            );
        }
    }
    assert_eq!(n1.view().members.len(), 3, "a refused join changed nothing");
    write_all(&client, &[&n1, &n2, &n3], 0..20).await;

    // The master stops (its store stays on disk).
    let addr1 = addr_of(&n1);
    let t1 = n1.master_term().unwrap();
    let killed = Instant::now();
    let store1 = n1.shutdown().await;
    until("the old store released", || {
        (Arc::strong_count(&store1) == 1).then_some(())
    })
    .await;
    drop(store1);
    let (new, other) = until("a new master", || {
        [(&n2, &n3), (&n3, &n2)]
            .into_iter()
            .find(|(n, _)| n.master_term().is_some_and(|t| t > t1))
    })
    .await;
    let (new, other) = (new.clone(), other.clone());
    eprintln!("new master {} after {:?}", new.id(), killed.elapsed());
    // Every acknowledged write is on the new master, and it takes writes.
    assert!(holds(&new.store(), 0..20));
    write_all(&client, &[&new, &other], 20..40).await;
    eprintln!("first writes done {:?} after the stop", killed.elapsed());
    until("the other worker has everything", || {
        holds(&other.store(), 0..40).then_some(())
    })
    .await;

    // Records the old master wrote but never shipped (as ack=master writes
    // in its last moments would be): its log now goes on past the branch.
    {
        let s = KeyedStore::open(
            dirs[0].join("data"),
            OpenOptions::new().sync(SyncPolicy::Group),
        )
        .unwrap();
        for i in 0..5 {
            s.put(&format!("tail{i}"), b"never replicated").unwrap();
        }
        s.close().unwrap();
    }

    // The old master returns on its directory and address: a worker now,
    // its tail cut back to where the new master's log begins.
    let n1 = start(1, &dirs[0], addr1).await;
    until("node 1 caught up", || {
        holds(&n1.store(), 0..40).then_some(())
    })
    .await;
    assert_eq!(n1.master_term(), None);
    assert_eq!(
        n1.store().get("tail0").unwrap(),
        None,
        "the unreplicated tail is gone"
    );
    let digest = |s: Arc<KeyedStore>| replication::digest(&s).unwrap();
    until("node 1 byte-identical to the master", || {
        (digest(n1.store()) == digest(new.store())).then_some(())
    })
    .await;
    for n in [n1, new, other] {
        n.shutdown().await;
    }
}

/// A node's own address before it has joined (its view has no members yet).
fn addr_of_new(n: &Node) -> SocketAddr {
    n.local_addr()
}

/// A node at the stopped master's address that is not that member (its
/// machine back on a fresh disk, as a new node) answers the election's
/// question with a longer log and a newer term than the members have. The
/// controller must not choose it: it would hand leadership to a node that
/// refuses the member's Raft messages, in every term, and the cluster would
/// have no master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_ignores_a_stranger_at_a_members_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let [n1, n2, n3] = three_members(&dirs, 1).await;
    let client = Client::new(&Identity::loopback().unwrap()).unwrap();
    write_all(&client, &[&n1, &n2, &n3], 0..20).await;

    // The stranger: more records than the cluster, and a newer last term.
    let stranger = tmp.path().join("stranger");
    {
        let s = KeyedStore::open(
            stranger.join("data"),
            OpenOptions::new().sync(SyncPolicy::Group),
        )
        .unwrap();
        for i in 0..200 {
            s.put(&format!("other{i}"), b"another cluster's").unwrap();
        }
        s.close().unwrap();
        std::fs::create_dir_all(stranger.join("raft")).unwrap();
        std::fs::write(stranger.join("raft/follow"), "1000").unwrap();
    }
    let addr1 = addr_of(&n1);
    let t1 = n1.master_term().unwrap();
    drop(n1.shutdown().await);
    let imp = start(99, &stranger, addr1).await;
    // The stranger must be up before the election, or it tests nothing.
    assert!(
        [&n2, &n3].iter().all(|n| n.master_term().is_none()),
        "a new master before the stranger was up"
    );
    let (new, other) = until("a new master among the members", || {
        [(&n2, &n3), (&n3, &n2)]
            .into_iter()
            .find(|(n, _)| n.master_term().is_some_and(|t| t > t1))
    })
    .await;
    let (new, other) = (new.clone(), other.clone());
    assert!(holds(&new.store(), 0..20));
    write_all(&client, &[&new, &other], 20..30).await;
    for n in [imp, new, other] {
        n.shutdown().await;
    }
}

/// A strong read names the master it is of: the master and the workers that
/// follow it answer it, at a read index taken after it arrived (a write
/// acknowledged by the master alone is seen on workers that apply each
/// segment 30 ms late); a node whose
/// master is another refuses it, so a gateway whose view is old, or a node
/// that is no member at a member's address, never answers one. Nor does a
/// worker answer a `ReadIndex` call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_name_their_master() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let nodes = three_members_with(&dirs, 1, Duration::from_millis(30)).await;
    let client = Client::new(&Identity::loopback().unwrap()).unwrap();
    let master = nodes[0].id();
    let other = nodes[1].id();
    for i in 0..10 {
        let key = format!("k{i}");
        client
            .set_with(addr_of(&nodes[0]), &key, b"v", Ack::Master)
            .await
            .unwrap();
        for n in nodes.iter().rev() {
            for named in [master, 0] {
                let got = client
                    .get(addr_of(n), &key, Cursor::strong(named))
                    .await
                    .unwrap_or_else(|e| panic!("{key} on node {}: {e}", n.id()));
                assert_eq!(got.as_deref(), Some(&b"v"[..]), "{key} on node {}", n.id());
            }
        }
    }
    for n in &nodes {
        let e = client
            .get(addr_of(n), "k0", Cursor::strong(other))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                replication::Error::Remote {
                    code: replication::Code::NotMaster,
                    ..
                }
            ),
            "node {} answered a strong read of master {other}: {e}",
            n.id()
        );
    }
    // A worker's applied cursor never passes for a read index (a master
    // just demoted would answer one that misses the new master's writes).
    for n in &nodes[1..] {
        match client.read_index(addr_of(n)).await {
            Err(replication::Error::Remote {
                code: replication::Code::NotMaster,
                ..
            }) => {}
            r => panic!("worker {} answered a read index: {r:?}", n.id()),
        }
    }
    assert!(client.read_index(addr_of(&nodes[0])).await.is_ok());
}

/// Members whose round trip (60 ms here: relays hold every datagram 30 ms
/// each way) is longer than the default heartbeat interval, which also
/// bounds each heartbeat's answer: with heartbeats every 250 ms they form a
/// cluster of three voters, acknowledge `ack=all` writes and give the
/// master's read index (its leadership confirmed over the slow path). A
/// node with another heartbeat is refused, when it joins and when a member
/// restarts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_a_slow_path_apart_keep_a_master_with_a_longer_heartbeat() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let slow = || How {
        heartbeat: Duration::from_millis(250),
        one_way: Some(Duration::from_millis(30)),
        ..How::default()
    };
    let n1 = try_start(1, &dirs[0], any, slow()).await.unwrap();
    n1.bootstrap().await.unwrap();
    until("node 1 master", || n1.master_term()).await;
    let n2 = try_start(2, &dirs[1], any, slow()).await.unwrap();
    let n3 = try_start(3, &dirs[2], any, slow()).await.unwrap();
    n2.join_through(vec![n1.local_addr()], false);
    until("node 2 a member", || {
        n1.view().members.contains_key(&2).then_some(())
    })
    .await;
    n3.join_through(vec![n1.local_addr()], false);
    until("three voters and both workers in sync", || {
        let v = n1.view();
        (v.voters.len() == 3 && v.state.in_sync.len() == 2).then_some(())
    })
    .await;

    let client = Client::new(&Identity::loopback().unwrap()).unwrap();
    write_all(&client, &[&n1, &n2, &n3], 0..5).await;
    let mut nodes = vec![n1, n2, n3];
    let master = addr_of(
        nodes
            .iter()
            .find(|n| n.master_term().is_some())
            .expect("a master"),
    );
    for _ in 0..4 {
        client.read_index(master).await.unwrap();
        // Past the lease, too: then the master asks a quorum.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    let join = br#"{"id":9,"member":{"addr":"127.0.0.1:9"}}"#.to_vec();
    match client
        .call(master, replication::msg::raft::Join { body: join })
        .await
    {
        Err(replication::Error::Remote { code, message }) => {
            assert_eq!(code, replication::Code::Other("timing_differs".into()));
            assert!(message.contains("--heartbeat-ms 250"), "{message}");
        }
        r => panic!("a node with another heartbeat joined: {r:?}"),
    }
    assert_eq!(nodes[0].view().members.len(), 3);

    let worker = nodes
        .iter()
        .position(|n| n.master_term().is_none())
        .expect("a worker");
    let worker = nodes.remove(worker);
    let id = worker.id();
    let store = worker.shutdown().await;
    until("the store released", || {
        (Arc::strong_count(&store) == 1).then_some(())
    })
    .await;
    drop(store);
    match try_start(id, &dirs[id as usize - 1], any, How::default()).await {
        Err(e) => assert!(e.to_string().contains("--heartbeat-ms 250"), "{e}"),
        Ok(_) => panic!("member {id} restarted with another heartbeat"),
    }
}

/// A master cut off from its quorum (both other members stopped) takes no
/// more writes, at any `ack`: once its lease has lapsed it refuses them
/// (`not_master`: nothing written), instead of acknowledging writes that
/// the next master would never have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_its_quorum_takes_no_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let [n1, n2, n3] = three_members(&dirs, 1).await;
    let client = Client::new(&Identity::loopback().unwrap()).unwrap();
    write_all(&client, &[&n1, &n2, &n3], 0..5).await;
    n2.shutdown().await;
    n3.shutdown().await;
    // Past the lease (six heartbeats of 50 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    for (key, ack) in [("alone-m", Ack::Master), ("alone-a", Ack::All)] {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.set_with(addr_of(&n1), key, b"x", ack),
        )
        .await
        .expect("no answer within 10 s");
        assert!(
            matches!(
                r,
                Err(replication::Error::Remote {
                    code: replication::Code::NotMaster,
                    ..
                })
            ),
            "{key}: {r:?}"
        );
        assert_eq!(n1.store().get(key).unwrap(), None, "{key} was written");
    }
    eprintln!("both refused {:?} after asking", asked.elapsed());
    let r = client.delete(addr_of(&n1), "k0").await;
    assert!(r.is_err(), "{r:?}");
    assert!(holds(&n1.store(), 0..5), "a refused delete deleted");
    n1.shutdown().await;
}
