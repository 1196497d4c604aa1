//! `ourkv client`: talk QUIC to one node, for operators and tests.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ClientCmd;
use crate::cmd::node::identity;
use crate::{parse_cursor, resolve, runtime};

pub(crate) fn client(cluster: Option<&Path>, cmd: ClientCmd) -> Result<ExitCode> {
    let identity = identity(cluster)?;
    runtime()?.block_on(async {
        let c = replication::Client::new(&identity)?;
        match cmd {
            ClientCmd::Set {
                node,
                key,
                value,
                ack,
            } => {
                let cursor = c
                    .set_with(resolve(&node)?, &key, value.as_bytes(), ack)
                    .await?;
                println!("{cursor}");
            }
            ClientCmd::Status { node } => {
                let (cursor, workers) = c.status(resolve(&node)?).await?;
                println!("master cursor {cursor}");
                for w in workers {
                    println!(
                        "worker {} acked {} {}",
                        w.addr,
                        w.acked,
                        if w.in_sync { "in-sync" } else { "out-of-sync" }
                    );
                }
            }
            ClientCmd::Delete { node, key, ack } => {
                let (existed, cursor) = c.delete_with(resolve(&node)?, &key, ack).await?;
                println!("{cursor} {}", if existed { "deleted" } else { "absent" });
            }
            ClientCmd::Get { node, key, at } => {
                let at = at
                    .as_deref()
                    .map(parse_cursor)
                    .transpose()?
                    .unwrap_or(replication::Cursor::ZERO);
                match c.get(resolve(&node)?, &key, at).await? {
                    Some(v) => {
                        std::io::stdout().write_all(&v)?;
                        println!();
                    }
                    None => {
                        eprintln!("key {key:?} not found");
                        return Ok(ExitCode::from(4));
                    }
                }
            }
            ClientCmd::ReadIndex { node } => {
                let cursor = c.read_index(resolve(&node)?).await?;
                println!("{cursor}");
            }
            ClientCmd::Digest { node } => println!("{}", c.digest(resolve(&node)?).await?),
            ClientCmd::Load {
                node,
                count,
                prefix,
                size,
                concurrency,
                ack,
            } => {
                let addr = resolve(&node)?;
                let c = std::sync::Arc::new(c);
                let start = std::time::Instant::now();
                let tasks: Vec<_> = (0..concurrency.max(1))
                    .map(|t| {
                        let (c, prefix) = (c.clone(), prefix.clone());
                        tokio::spawn(async move {
                            let mut lat = Vec::new();
                            let mut i = t;
                            while i < count {
                                let value = vec![b'a' + (i % 26) as u8; size];
                                let t0 = std::time::Instant::now();
                                c.set_with(addr, &format!("{prefix}{i}"), &value, ack)
                                    .await?;
                                lat.push(t0.elapsed());
                                i += concurrency.max(1);
                            }
                            anyhow::Ok(lat)
                        })
                    })
                    .collect();
                let mut lat = Vec::new();
                for t in tasks {
                    lat.extend(t.await??);
                }
                let took = start.elapsed();
                lat.sort_unstable();
                let pct = |p: f64| {
                    lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or_default()
                };
                println!(
                    "{count} writes in {:.2} s: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms",
                    took.as_secs_f64(),
                    count as f64 / took.as_secs_f64(),
                    pct(0.5).as_secs_f64() * 1e3,
                    pct(0.99).as_secs_f64() * 1e3
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
