//! `ourkv kv export` and `ourkv kv import`: many keys at once, as JSON
//! lines (`{"key":…,"value_b64":…}`), with progress on a terminal (a bar)
//! or in the log (`RUST_LOG=info`) otherwise.

use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::kv::{key_path, query, Api, Failure, NOT_FOUND, UNAVAILABLE, USAGE};

/// Requests in flight at once: enough to hide the round trips, few enough
/// to leave the gateway to others.
const IN_FLIGHT: usize = 16;

fn output_failure(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        code: super::kv::REFUSED,
        message: format!("cannot write {what}: {e}"),
    }
}

/// Writes every key under `prefix` with its value, one JSON line each, in
/// key order, to `out` (standard output without it). Each value is read
/// strongly as its page comes; a key deleted meanwhile is left out. It is
/// not a copy at one instant: `ourkv backup` makes that.
pub(crate) async fn export(api: &Api, prefix: &str, out: Option<&Path>) -> Result<(), Failure> {
    // A file appears only whole: written beside, then renamed over.
    let tmp = out.map(|p| {
        let mut name = p.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        p.with_file_name(name)
    });
    let mut sink: Box<dyn Write> = match &tmp {
        Some(t) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(t).map_err(|e| output_failure(&t.display().to_string(), e))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let r = export_into(api, prefix, &mut sink).await;
    let r = r.and_then(|counts| {
        sink.flush().map_err(|e| output_failure("the export", e))?;
        drop(sink);
        if let (Some(t), Some(out)) = (&tmp, out) {
            std::fs::File::open(t)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(t, out))
                .map_err(|e| output_failure(&out.display().to_string(), e))?;
        }
        Ok(counts)
    });
    match r {
        Ok((keys, gone)) => {
            eprintln!("exported {keys} keys ({gone} deleted while exporting)");
            Ok(())
        }
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            Err(e)
        }
    }
}

async fn export_into(api: &Api, prefix: &str, sink: &mut dyn Write) -> Result<(u64, u64), Failure> {
    let progress = crate::progress::for_task("export");
    progress.start("keys", 0);
    let b64 = base64::engine::general_purpose::STANDARD;
    let (mut keys, mut gone) = (0u64, 0u64);
    let mut after: Option<String> = None;
    loop {
        let path = format!(
            "/v1/kv{}",
            query(&[
                ("prefix", Some(prefix.to_string())),
                ("after", after.clone()),
                ("limit", Some("1000".into())),
            ])
        );
        let page: Value =
            serde_json::from_slice(&api.call(Method::GET, &path, &[], Vec::new()).await?.body)
                .map_err(|e| Failure {
                    code: UNAVAILABLE,
                    message: format!("the listing is not JSON: {e}"),
                })?;
        let names: Vec<String> = page["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        // In key order, IN_FLIGHT reads at a time.
        let mut values =
            futures_util::stream::iter(names.iter().map(|k| async move {
                api.call(Method::GET, &key_path(k), &[], Vec::new()).await
            }))
            .buffered(IN_FLIGHT);
        for k in &names {
            match values.next().await.expect("one answer per key") {
                Ok(a) => {
                    let line = json!({"key": k, "value_b64": b64.encode(&a.body)});
                    writeln!(sink, "{line}").map_err(|e| output_failure("the export", e))?;
                    keys += 1;
                }
                Err(f) if f.code == NOT_FOUND => gone += 1,
                Err(f) => return Err(f),
            }
            progress.advance(1);
        }
        match page["next"].as_str() {
            Some(next) if !names.is_empty() => after = Some(next.to_string()),
            _ => break,
        }
    }
    progress.finish();
    Ok((keys, gone))
}

/// One line of an export.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    key: String,
    value: Option<String>,
    value_b64: Option<String>,
}

/// The key and value bytes of line `n`.
fn parse_line(n: u64, text: &[u8]) -> Result<(String, Vec<u8>), Failure> {
    let bad = |why: String| Failure {
        code: USAGE,
        message: format!("line {n}: {why}"),
    };
    let line: Line = serde_json::from_slice(text)
        .map_err(|e| bad(format!("not {{\"key\", \"value\" or \"value_b64\"}}: {e}")))?;
    let value = match (line.value, line.value_b64) {
        (Some(v), None) => v.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| bad(format!("value_b64 is no base64: {e}")))?,
        _ => return Err(bad("give value or value_b64, one of them".into())),
    };
    // Checked here: an empty key would name another route.
    if line.key.is_empty() || line.key.len() > ourdb::keyed::MAX_KEY_LEN {
        return Err(bad(format!(
            "a key is 1 to {} bytes, not {}",
            ourdb::keyed::MAX_KEY_LEN,
            line.key.len()
        )));
    }
    Ok((line.key, value))
}

/// Stores every line of `file` (`-`: standard input) with a PUT, up to
/// IN_FLIGHT at a time. A malformed line stops the import once the PUTs
/// before it are answered: every line before it is stored, none after.
pub(crate) async fn import(api: &Api, file: &Path, ack: Option<String>) -> Result<(), Failure> {
    let (reader, total): (Box<dyn BufRead>, u64) = if file == Path::new("-") {
        (Box::new(std::io::BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(file).map_err(|e| Failure {
            code: USAGE,
            message: format!("cannot read {}: {e}", file.display()),
        })?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(std::io::BufReader::new(f)), len)
    };
    let progress = crate::progress::for_task("import");
    progress.start("bytes", total);
    let mut running = FuturesUnordered::new();
    let mut stored = 0u64;
    let mut stop = None;
    let suffix = query(&[("ack", ack)]);
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i as u64 + 1;
        let text = match line {
            Ok(t) => t,
            Err(e) => {
                stop = Some(Failure {
                    code: USAGE,
                    message: format!("cannot read {}: {e}", file.display()),
                });
                break;
            }
        };
        progress.advance(text.len() as u64 + 1);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (key, value) = match parse_line(n, &text) {
            Ok(kv) => kv,
            Err(f) => {
                stop = Some(f);
                break;
            }
        };
        let path = format!("{}{suffix}", key_path(&key));
        running.push(async move {
            api.call(Method::PUT, &path, &[], value)
                .await
                .map_err(|f| Failure {
                    code: f.code,
                    message: format!("line {n} (key {key:?}): {}", f.message),
                })
        });
        if running.len() >= IN_FLIGHT {
            match running.next().await.expect("one in flight") {
                Ok(_) => stored += 1,
                Err(f) => {
                    stop = Some(f);
                    break;
                }
            }
        }
    }
    while let Some(r) = running.next().await {
        match r {
            Ok(_) => stored += 1,
            Err(f) => {
                stop.get_or_insert(f);
            }
        }
    }
    progress.finish();
    eprintln!("imported {stored} keys");
    match stop {
        Some(f) => Err(f),
        None => Ok(()),
    }
}
