//! Mycelium 0.7.10 can deliver two UDP datagrams sent back to back as one
//! (their boundary lost), and QUIC then discards both. Here a UDP relay
//! between a worker and its master can do the same to every second pair of
//! datagrams that follow each other within 150 µs and fit one overlay packet
//! together. A worker must acknowledge a segment with one datagram (its QUIC
//! ACK riding with its application `Ack`), not two back to back; and with
//! merging turned on once the connection is up, replication goes on.
//!
//! Not covered (and not solved): merging from the first packet on. The
//! ACK_FREQUENCY frame goes out once, right after the handshake; when that
//! datagram is merged and lost, quinn-proto 0.11.19 does not send it again
//! (`poll_transmit` overwrites the retransmission flag), so the worker keeps
//! acknowledging every second packet at once, and QUIC's probes after a loss
//! go out in pairs too. Measured: 2.5–2.7 s for these 60 writes (5.8–7.3 s without
//! the ACK frequency request, 0.8 s without merging).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The TUN MTU of a Mycelium node: merged datagrams up to this size pass.
const MERGE_MAX: usize = 1400;
const WINDOW: Duration = Duration::from_micros(150);

struct Relay {
    port: u16,
    merge: Arc<AtomicBool>,
    /// Merged datagrams, worker to master and master to worker.
    merged: [Arc<AtomicU64>; 2],
    forwarded: [Arc<AtomicU64>; 2],
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forwards datagrams from `from` to wherever `to()` says, joining one to
/// the next when it follows within `WINDOW` and both fit `MERGE_MAX`.
#[allow(clippy::too_many_arguments)]
fn pump(
    merge: Arc<AtomicBool>,
    from: UdpSocket,
    out: UdpSocket,
    to: impl Fn(SocketAddr) -> Option<SocketAddr> + Send + 'static,
    merged: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        // Non-blocking reads and short sleeps: a socket read timeout is
        // rounded to the kernel's tick (4 ms and more), far above `WINDOW`.
        from.set_nonblocking(true).unwrap();
        let mut held: Option<(Vec<u8>, SocketAddr, Instant)> = None;
        // Mycelium merges some pairs, not all (74-90 of 200 in a burst):
        // here every second pair that qualifies. Merging them all would
        // also take both of every pair of probes QUIC sends to recover.
        let mut eligible = 0u64;
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            match from.recv_from(&mut buf) {
                Ok((n, src)) => match held.take() {
                    Some((mut first, dst, _))
                        if merge.load(Ordering::Relaxed) && first.len() + n <= MERGE_MAX && {
                            eligible += 1;
                            eligible % 2 == 1
                        } =>
                    {
                        first.extend_from_slice(&buf[..n]);
                        let _ = out.send_to(&first, dst);
                        merged.fetch_add(1, Ordering::Relaxed);
                        forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    prev => {
                        if let Some((first, dst, _)) = prev {
                            let _ = out.send_to(&first, dst);
                            forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(dst) = to(src) {
                            held = Some((buf[..n].to_vec(), dst, Instant::now()));
                        }
                    }
                },
                Err(_) => {
                    if held.as_ref().is_some_and(|h| h.2.elapsed() >= WINDOW) {
                        let (first, dst, _) = held.take().unwrap();
                        let _ = out.send_to(&first, dst);
                        forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
    });
}

/// A relay on a free loopback port that forwards to `master`.
fn relay(master: SocketAddr) -> Relay {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let worker: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let merged: [Arc<AtomicU64>; 2] = Default::default();
    let forwarded: [Arc<AtomicU64>; 2] = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let merge = Arc::new(AtomicBool::new(false));
    let w = worker.clone();
    pump(
        merge.clone(),
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        move |src| {
            *w.lock().unwrap() = Some(src);
            Some(master)
        },
        merged[0].clone(),
        forwarded[0].clone(),
        stop.clone(),
    );
    pump(
        merge.clone(),
        back,
        front,
        move |_| *worker.lock().unwrap(),
        merged[1].clone(),
        forwarded[1].clone(),
        stop.clone(),
    );
    Relay {
        port,
        merge,
        merged,
        forwarded,
        stop,
    }
}

#[test]
fn replication_does_not_send_back_to_back_datagram_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let master_addr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let _master = start_master(dir.path(), mport);
    let relay = relay(master_addr);
    let wport = free_port();
    let wdata = dir.path().join("w1");
    let _worker = start(&[
        "worker",
        "--data",
        wdata.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{wport}"),
        "--master",
        &format!("127.0.0.1:{}", relay.port),
    ]);
    let http = format!("127.0.0.1:{}", free_port());
    let _gw = start(&[
        "gateway",
        "--http",
        &http,
        "--master",
        &master_addr.to_string(),
        "--worker",
        &format!("127.0.0.1:{wport}"),
    ]);
    let url = |p: &str| format!("http://{http}{p}");
    // The master sees the worker at the relay's address, so /ready?sync
    // (which names workers by the gateway's addresses) cannot tell: ask
    // /v1/cluster for an in-sync worker instead.
    let in_sync = || {
        let (code, body) = curl(&[&url("/v1/cluster")]);
        code == 200 && body.contains("\"in_sync\":true")
    };
    let t = Instant::now();
    while !in_sync() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "worker never in sync"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let put = |i: usize| {
        let (code, body) = curl(&[
            "-X",
            "PUT",
            "--data-binary",
            &"x".repeat(1500),
            &url(&format!("/v1/kv/big/{i}?ack=all")),
        ]);
        assert_eq!(code, 200, "{body}");
    };
    let up = |r: &Relay| r.forwarded[0].load(Ordering::Relaxed);
    // Values above one packet: the master's segment takes two packets, and
    // the worker acknowledges them as soon as it has applied them.
    let n = 60;
    let before = up(&relay);
    let t = Instant::now();
    for i in 0..n {
        put(i);
    }
    let clean = t.elapsed();
    let sent = up(&relay) - before;
    // One datagram per write (keep-alives add a few): an ACK sent on its
    // own just before the Ack would make it two.
    assert!(
        sent <= n as u64 * 5 / 4,
        "the worker sent {sent} datagrams for {n} acknowledgements"
    );
    relay.merge.store(true, Ordering::Relaxed);
    let before = [
        relay.merged[0].load(Ordering::Relaxed),
        relay.merged[1].load(Ordering::Relaxed),
    ];
    let t = Instant::now();
    for i in n..2 * n {
        put(i);
    }
    let merging = t.elapsed();
    eprintln!(
        "{n} ack=all writes of 1.5 KB: {clean:?} through the relay ({sent} datagrams from the worker), \
         {merging:?} with every second back-to-back pair merged ({} merged worker->master, {} master->worker)",
        relay.merged[0].load(Ordering::Relaxed) - before[0],
        relay.merged[1].load(Ordering::Relaxed) - before[1],
    );
    relay.merge.store(false, Ordering::Relaxed);
    assert!(in_sync(), "the worker left the in-sync set");
    let (code, body) = curl(&[&url(&format!("/v1/kv/big/{}?consistency=stale", 2 * n - 1))]);
    assert_eq!((code, body.len()), (200, 1500));
}
