//! `ourkv backup`: an online backup through the gateway's `/v1/backup`.
//! The master streams a consistent copy of its data files (cut at its
//! high-water mark, past every write committed before the request, while
//! writes go on); the copy lands in
//! a new directory that appears only when it is whole and checked, and that
//! a node serves when started on it (`ourkv master --data DIR`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use hyper::Method;
use ourdb::keyed::SnapshotInstall;
use replication::frame;
use replication::msg::snapshot::Part;

use crate::cli::BackupArgs;
use crate::cmd::kv::{runtime, Api, Failure, UNAVAILABLE, USAGE};

/// Runs `ourkv backup`.
pub(crate) fn run(args: BackupArgs) -> Result<ExitCode> {
    let api = Api::new(&args.api.endpoint, args.api.token)?;
    let config = crate::cmd::node::service_config(args.file_size);
    // Refused before anything is asked of the cluster, as a usage error
    // (exit 2): OUT is wrong, and 1 would read as "not found".
    let install = match SnapshotInstall::create(&args.out, config) {
        Ok(i) => i,
        Err(e) => {
            return Ok(Failure {
                code: USAGE,
                message: format!("back up into {}: {e}", args.out.display()),
            }
            .exit())
        }
    };
    match runtime()?.block_on(receive(&api, install, &args.out)) {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(f)) => Ok(f.exit()),
        Err(e) => Err(e),
    }
}

/// Receives the stream into `install`: a `Failure` for what the cluster or
/// the connection did, an error for what went wrong here.
async fn receive(
    api: &Api,
    mut install: SnapshotInstall,
    out: &Path,
) -> Result<std::result::Result<(), Failure>> {
    let resp = match api.send(Method::GET, "/v1/backup", &[], Vec::new()).await {
        Ok(r) => r,
        Err(f) => return Ok(Err(f)),
    };
    let progress = crate::progress::for_task("backup");
    progress.start("bytes", 0);
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0usize;
    let mut bytes = 0u64;
    loop {
        // Every whole frame in the buffer first.
        loop {
            let frame = match frame::split(&buf[at..]) {
                Ok(Some((f, used))) => {
                    at += used;
                    f
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(garbled(e.to_string()))),
            };
            match Part::try_from(frame) {
                Ok(Part::Chunk(c)) => {
                    let n = c.bytes.len() as u64;
                    let chunk = ourdb::SnapshotChunk {
                        file_nr: c.file_nr,
                        offset: c.offset,
                        bytes: c.bytes,
                    };
                    match install.write(&chunk) {
                        Ok(()) => {}
                        Err(ourdb::Error::Snapshot(m)) => return Ok(Err(garbled(m))),
                        Err(e) => {
                            return Err(
                                anyhow::Error::new(e).context(format!("write {}", out.display()))
                            )
                        }
                    }
                    bytes += n;
                    progress.advance(n);
                }
                Ok(Part::Done(d)) => {
                    progress.finish();
                    let done = install
                        .finish(d.epoch, d.end)
                        .with_context(|| format!("finish {}", out.display()))?;
                    println!(
                        "backed up {} records ({bytes} bytes, {} keys), epoch {}, up to {}:{}, into {}",
                        done.records,
                        done.store.len(),
                        d.epoch,
                        d.end.file_nr,
                        d.end.position,
                        out.display()
                    );
                    return Ok(Ok(()));
                }
                Err(replication::Error::Remote { code, message }) => {
                    return Ok(Err(Failure {
                        code: UNAVAILABLE,
                        message: format!("the master stopped the backup ({code:?}): {message}"),
                    }))
                }
                Err(e) => return Ok(Err(garbled(e.to_string()))),
            }
        }
        buf.drain(..at);
        at = 0;
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Ok(Err(api.broke_off(e))),
            None => {
                return Ok(Err(api.broke_off(format!(
                    "the stream ended after {bytes} bytes, before the end of the copy"
                ))))
            }
        }
    }
}

fn garbled(what: String) -> Failure {
    Failure {
        code: UNAVAILABLE,
        message: format!("the backup stream is not a snapshot: {what}"),
    }
}
