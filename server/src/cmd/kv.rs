//! `ourkv kv`: keys and values over the HTTP API, for people and scripts.
//! Everything goes through the gateway's public routes (docs/API.md); exit
//! codes say what happened so that scripts need not parse messages.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::cli::{KvArgs, KvCmd, LeaseCmd, Output};

/// Exit codes (0 is success, 2 is clap's usage error).
pub(crate) const NOT_FOUND: u8 = 1;
pub(crate) const USAGE: u8 = 2;
const PRECONDITION_FAILED: u8 = 3;
pub(crate) const REFUSED: u8 = 4;
pub(crate) const UNAVAILABLE: u8 = 5;

/// Bytes left as they are in a key's path segments: RFC 3986's unreserved
/// characters and the `/` that keys may hold.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// Query values: unreserved characters only.
const QUERY: &AsciiSet = &PATH.add(b'/');

/// Runs `ourkv kv`.
pub(crate) fn run(args: KvArgs) -> Result<ExitCode> {
    runtime()?.block_on(run_async(args))
}

/// One thread is plenty for one client's calls.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")
}

/// How a call ended when it did not succeed: the exit code and what to say.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn exit(self) -> ExitCode {
        eprintln!("error: {}", self.message);
        ExitCode::from(self.code)
    }
}

/// A successful answer.
pub(crate) struct Answer {
    headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub(crate) struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Api {
    pub(crate) fn new(endpoint: &str, token: Option<String>) -> Result<Api> {
        let base = endpoint.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("--endpoint must be an http:// URL (the gateway speaks plain HTTP), not {endpoint:?}");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Api {
            client,
            base,
            token,
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, Failure> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req.body(Full::new(Bytes::from(body))).map_err(|e| Failure {
            code: USAGE,
            message: format!("cannot make the request: {e}"),
        })
    }

    /// One request; a non-2xx status becomes a `Failure` with its exit code
    /// and the API's error message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        let resp = self.send(method, path, headers, body).await?;
        let headers = resp.headers().clone();
        let body = self.collect(resp.into_body()).await?;
        Ok(Answer { headers, body })
    }

    /// One request whose successful answer's body is read by the caller,
    /// as it arrives; an error answer becomes a `Failure` as for `call`.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let req = self.request(method, path, headers, body)?;
        let resp = self.client.request(req).await.map_err(|e| Failure {
            code: UNAVAILABLE,
            message: format!("cannot reach {}: {e}", self.base),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = self.collect(resp.into_body()).await?;
        Err(failure(status, &body))
    }

    /// One request and its answer, whatever its status (a failure only when
    /// no answer came).
    async fn call_any(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), Failure> {
        let req = self.request(method, path, &[], Vec::new())?;
        let resp = self.client.request(req).await.map_err(|e| Failure {
            code: UNAVAILABLE,
            message: format!("cannot reach {}: {e}", self.base),
        })?;
        let status = resp.status();
        Ok((status, self.collect(resp.into_body()).await?))
    }

    async fn collect(&self, body: hyper::body::Incoming) -> Result<Bytes, Failure> {
        Ok(body
            .collect()
            .await
            .map_err(|e| self.broke_off(e))?
            .to_bytes())
    }

    /// The failure of an answer that broke off mid-body.
    pub(crate) fn broke_off(&self, e: impl std::fmt::Display) -> Failure {
        Failure {
            code: UNAVAILABLE,
            message: format!("{}: the answer broke off: {e}", self.base),
        }
    }
}

/// The exit code and message for an error answer.
fn failure(status: StatusCode, body: &[u8]) -> Failure {
    let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let e = v.get("error")?;
        Some((
            e.get("code")?.as_str()?.to_string(),
            e.get("message")?.as_str()?.to_string(),
        ))
    });
    let said = |c: &str| error.as_ref().is_some_and(|(code, _)| code == c);
    let code = match status.as_u16() {
        // Only what the API says it did not find: a 404 for a route (or
        // from something else at the endpoint) is a misconfiguration, and
        // a script testing for exit 1 must not take it for an absent key.
        404 if said("not_found") || said("no_lease") => NOT_FOUND,
        412 => PRECONDITION_FAILED,
        400..=499 => REFUSED,
        _ => UNAVAILABLE,
    };
    let detail = match &error {
        Some((c, m)) => format!("{c}: {m}"),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    let hint = if code == REFUSED && status == StatusCode::NOT_FOUND {
        "; is --endpoint the gateway's address, without a path?"
    } else {
        ""
    };
    Failure {
        code,
        message: format!("{} ({detail}){hint}", status.as_u16()),
    }
}

pub(crate) fn key_path(key: &str) -> String {
    format!("/v1/kv/{}", utf8_percent_encode(key, PATH))
}

/// `?a=b&c=d` from the pairs that are set.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k}={}", utf8_percent_encode(v, QUERY)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A value as JSON: text when it is UTF-8, else `{"base64": …}`.
fn json_value(v: &[u8]) -> Value {
    match std::str::from_utf8(v) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(v) }),
    }
}

fn out(bytes: &[u8]) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes)?;
    o.flush()?;
    Ok(())
}

fn print_json(v: &Value) -> Result<()> {
    out(format!("{v}\n").as_bytes())
}

/// Prints a transaction's answer: JSON as it came, or one line per result.
fn txn_answer(body: &[u8], output: Output) -> Result<()> {
    let v: Value = serde_json::from_slice(body).context("the answer is no JSON")?;
    if let Output::Json = output {
        return print_json(&v);
    }
    let mut text = String::new();
    for r in v["results"].as_array().into_iter().flatten() {
        let key = |op: &str| r[op].as_str().map(str::to_string);
        let line = if let Some(k) = key("put") {
            format!("put {k} etag={}", r["etag"].as_str().unwrap_or_default())
        } else if let Some(k) = key("delete") {
            format!("delete {k} existed={}", r["existed"])
        } else if let Some(k) = key("get") {
            match r["value"].as_str() {
                _ if r["found"] != true => format!("get {k} (not found)"),
                Some(text) => format!("get {k} = {text}"),
                None => format!(
                    "get {k} = base64:{}",
                    r["value_b64"].as_str().unwrap_or_default()
                ),
            }
        } else {
            continue;
        };
        text.push_str(&line);
        text.push('\n');
    }
    if let Output::Table = output {
        text.push_str(&format!(
            "OK cursor={}\n",
            v["cursor"].as_str().unwrap_or_default()
        ));
    }
    out(text.as_bytes())
}

async fn run_async(args: KvArgs) -> Result<ExitCode> {
    let api = Api::new(&args.api.endpoint, args.api.token)?;
    let r = match args.cmd {
        KvCmd::Get { key, consistency } => {
            get(&api, &key, consistency, args.output.unwrap_or(Output::Raw)).await
        }
        KvCmd::Put {
            key,
            value,
            file,
            ack,
            if_match,
            if_none_match,
            ttl,
            lease,
        } => {
            let value = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("read {}", f.display()))?
                }
                (None, None) => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                        .context("read the value from standard input")?;
                    v
                }
            };
            let mut headers = Vec::new();
            if let Some(t) = if_match {
                headers.push(("if-match", t));
            }
            if let Some(t) = if_none_match {
                headers.push(("if-none-match", t));
            }
            let path = format!(
                "{}{}",
                key_path(&key),
                query(&[
                    ("ack", ack),
                    ("ttl", ttl),
                    ("lease", lease.map(|l| l.to_string())),
                ])
            );
            match api.call(Method::PUT, &path, &headers, value).await {
                Ok(a) => {
                    let etag = a.header("etag").unwrap_or_default();
                    let cursor = a.header("x-ourkv-cursor").unwrap_or_default();
                    match args.output.unwrap_or(Output::Table) {
                        Output::Raw => out(format!("{etag}\n").as_bytes())?,
                        Output::Table => {
                            out(format!("OK {key} etag={etag} cursor={cursor}\n").as_bytes())?
                        }
                        Output::Json => {
                            print_json(&json!({"key": key, "etag": etag, "cursor": cursor}))?
                        }
                    }
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
        KvCmd::Del { key, ack, if_match } => {
            let headers: Vec<(&str, String)> =
                if_match.map(|t| ("if-match", t)).into_iter().collect();
            let path = format!("{}{}", key_path(&key), query(&[("ack", ack)]));
            match api.call(Method::DELETE, &path, &headers, Vec::new()).await {
                Ok(a) => {
                    let cursor = a.header("x-ourkv-cursor").unwrap_or_default();
                    match args.output.unwrap_or(Output::Table) {
                        Output::Raw => {}
                        Output::Table => {
                            out(format!("deleted {key} cursor={cursor}\n").as_bytes())?
                        }
                        Output::Json => {
                            print_json(&json!({"key": key, "deleted": true, "cursor": cursor}))?
                        }
                    }
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
        KvCmd::Txn { file, ack } => {
            let body = match file.filter(|f| f.as_os_str() != "-") {
                Some(f) => std::fs::read(&f).with_context(|| format!("read {}", f.display()))?,
                None => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                        .context("read the transaction from standard input")?;
                    v
                }
            };
            let headers = [("content-type", "application/json".to_string())];
            let path = format!("/v1/txn{}", query(&[("ack", ack)]));
            match api.call(Method::POST, &path, &headers, body).await {
                Ok(a) => {
                    txn_answer(&a.body, args.output.unwrap_or(Output::Table))?;
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
        KvCmd::Lease(cmd) => lease(&api, cmd, args.output.unwrap_or(Output::Table)).await,
        KvCmd::Export { prefix, out } => {
            super::kv_bulk::export(&api, &prefix, out.as_deref()).await
        }
        KvCmd::Import { file, ack } => super::kv_bulk::import(&api, &file, ack).await,
        KvCmd::Ls { prefix, limit } => {
            ls(&api, &prefix, limit, args.output.unwrap_or(Output::Table)).await
        }
        KvCmd::History { key, depth } => {
            history(&api, &key, depth, args.output.unwrap_or(Output::Table)).await
        }
        KvCmd::Watch {
            prefix,
            cursor,
            count,
        } => {
            watch(
                &api,
                &prefix,
                cursor,
                count,
                args.output.unwrap_or(Output::Table),
            )
            .await
        }
    };
    match r {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(f) => Ok(f.exit()),
    }
}

/// `ourkv kv lease …`.
async fn lease(api: &Api, cmd: LeaseCmd, output: Output) -> Result<(), Failure> {
    let show = |v: &Value, what: &str| -> Result<(), Failure> {
        let id = v["id"].as_u64().unwrap_or_default();
        let text = match output {
            Output::Json => format!("{v}\n"),
            Output::Raw => format!("{id}\n"),
            Output::Table => {
                let mut t = format!(
                    "lease {id} {what} ttl={}ms remaining={}ms",
                    v["ttl_ms"], v["remaining_ms"]
                );
                if let Some(keys) = v["keys"].as_array() {
                    t.push_str(&format!(" keys={}", keys.len()));
                    for k in keys {
                        t.push_str(&format!("\n  {}", k.as_str().unwrap_or_default()));
                    }
                }
                t + "\n"
            }
        };
        out(text.as_bytes()).map_err(|e| Failure {
            code: UNAVAILABLE,
            message: e.to_string(),
        })
    };
    let json_of = |a: &Answer| -> Value { serde_json::from_slice(&a.body).unwrap_or(Value::Null) };
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let path = format!("/v1/lease{}", query(&[("ttl", Some(ttl))]));
            let a = api.call(Method::POST, &path, &[], Vec::new()).await?;
            show(&json_of(&a), "granted")
        }
        LeaseCmd::Info { id } => {
            let a = api
                .call(Method::GET, &format!("/v1/lease/{id}"), &[], Vec::new())
                .await?;
            show(&json_of(&a), "lives")
        }
        LeaseCmd::Revoke { id, ack } => {
            let path = format!("/v1/lease/{id}{}", query(&[("ack", ack)]));
            let a = api.call(Method::DELETE, &path, &[], Vec::new()).await?;
            show(&json_of(&a), "revoked")
        }
        LeaseCmd::Keepalive { id, once } => loop {
            let path = format!("/v1/lease/{id}/keepalive");
            let v = match api.call(Method::POST, &path, &[], Vec::new()).await {
                Ok(a) => json_of(&a),
                // A moment without a master is retried; a lease gone is not.
                Err(f) if f.code == UNAVAILABLE && !once => {
                    eprintln!("warning: {}", f.message);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(f) => return Err(f),
            };
            show(&v, "kept alive")?;
            if once {
                return Ok(());
            }
            let ttl = v["ttl_ms"].as_u64().unwrap_or(3000);
            tokio::time::sleep(Duration::from_millis((ttl / 3).max(5))).await;
        },
    }
}

async fn get(
    api: &Api,
    key: &str,
    consistency: Option<String>,
    output: Output,
) -> Result<(), Failure> {
    let path = format!(
        "{}{}",
        key_path(key),
        query(&[("consistency", consistency)])
    );
    let a = api.call(Method::GET, &path, &[], Vec::new()).await?;
    let etag = a.header("etag").unwrap_or_default();
    let cursor = a.header("x-ourkv-cursor").unwrap_or_default();
    let r = match output {
        Output::Raw => out(&a.body),
        Output::Table => {
            out(format!("{key}\t{}\tetag={etag}\n", String::from_utf8_lossy(&a.body)).as_bytes())
        }
        Output::Json => print_json(&json!({
            "key": key,
            "value": json_value(&a.body),
            "etag": etag,
            "cursor": cursor,
        })),
    };
    r.map_err(io_failure)
}

fn io_failure(e: anyhow::Error) -> Failure {
    Failure {
        code: REFUSED,
        message: format!("cannot write the output: {e:#}"),
    }
}

async fn ls(api: &Api, prefix: &str, limit: Option<u64>, output: Output) -> Result<(), Failure> {
    let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let mut keys: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let want = limit.map_or(1000, |l| (l - keys.len()).min(1000));
        if want == 0 {
            break;
        }
        let path = format!(
            "/v1/kv{}",
            query(&[
                ("prefix", Some(prefix.to_string())),
                ("after", after.clone()),
                ("limit", Some(want.to_string())),
            ])
        );
        let a = api.call(Method::GET, &path, &[], Vec::new()).await?;
        let page: Value = serde_json::from_slice(&a.body).map_err(|e| Failure {
            code: UNAVAILABLE,
            message: format!("the listing is not JSON: {e}"),
        })?;
        let page_keys = page["keys"].as_array().cloned().unwrap_or_default();
        keys.extend(
            page_keys
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string)),
        );
        match page["next"].as_str() {
            Some(next) if !page_keys.is_empty() => after = Some(next.to_string()),
            _ => break,
        }
    }
    let r = match output {
        Output::Raw | Output::Table => {
            let mut text = String::new();
            for k in &keys {
                text.push_str(k);
                text.push('\n');
            }
            out(text.as_bytes())
        }
        Output::Json => print_json(&json!({ "keys": keys })),
    };
    r.map_err(io_failure)
}

async fn history(api: &Api, key: &str, depth: u32, output: Output) -> Result<(), Failure> {
    let path = format!(
        "{}{}",
        key_path(key),
        query(&[("history", Some(depth.to_string()))])
    );
    let a = api.call(Method::GET, &path, &[], Vec::new()).await?;
    let doc: Value = serde_json::from_slice(&a.body).map_err(|e| Failure {
        code: UNAVAILABLE,
        message: format!("the history is not JSON: {e}"),
    })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let versions: Vec<Vec<u8>> = doc["history"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| b64.decode(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    let r = match output {
        Output::Raw => {
            let mut bytes = Vec::new();
            for v in &versions {
                bytes.extend_from_slice(v);
                bytes.push(b'\n');
            }
            out(&bytes)
        }
        Output::Table => {
            let mut text = String::new();
            for (i, v) in versions.iter().enumerate() {
                text.push_str(&format!("{i}\t{}\n", String::from_utf8_lossy(v)));
            }
            out(text.as_bytes())
        }
        Output::Json => print_json(&json!({
            "key": key,
            "history": versions.iter().map(|v| json_value(v)).collect::<Vec<_>>(),
        })),
    };
    r.map_err(io_failure)
}

/// One server-sent event.
#[derive(Default)]
struct Event {
    id: Option<String>,
    kind: Option<String>,
    data: String,
}

/// Follows `/v1/watch`, printing each change; after a broken connection it
/// reconnects (backing off up to 5 s) with `Last-Event-ID`, so no change is
/// printed twice or skipped. Refusals (bad or compacted cursor) end it.
async fn watch(
    api: &Api,
    prefix: &str,
    mut cursor: Option<String>,
    count: Option<u64>,
    output: Output,
) -> Result<(), Failure> {
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let path = format!(
            "/v1/watch{}",
            query(&[("prefix", Some(prefix.to_string()))])
        );
        let headers: Vec<(&str, String)> = cursor
            .clone()
            .map(|c| ("last-event-id", c))
            .into_iter()
            .collect();
        let req = api.request(Method::GET, &path, &headers, Vec::new())?;
        let resp = match api.client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("watch: cannot reach {}: {e}; retrying", api.base);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let f = failure(status, &body);
            if f.code == UNAVAILABLE {
                eprintln!("watch: {}; retrying", f.message);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            return Err(f);
        }
        backoff = Duration::from_millis(100);
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        let mut event = Event::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    let ev = std::mem::take(&mut event);
                    if ev.kind.is_none() && ev.data.is_empty() {
                        continue;
                    }
                    print_change(&ev, output).map_err(io_failure)?;
                    if ev.id.is_some() {
                        cursor = ev.id;
                    }
                    printed += 1;
                    if count.is_some_and(|c| printed >= c) {
                        return Ok(());
                    }
                } else if let Some(v) = line.strip_prefix("id:") {
                    event.id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event.kind = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    event.data.push_str(v.trim_start());
                }
            }
        }
        eprintln!("watch: connection closed; resuming after {cursor:?}");
        tokio::time::sleep(backoff).await;
    }
}

fn print_change(ev: &Event, output: Output) -> Result<()> {
    let kind = ev.kind.as_deref().unwrap_or("message");
    let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
    let key = data["key"].as_str().unwrap_or_default();
    let value = data["value"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
    let cursor = ev.id.as_deref().unwrap_or_default();
    match output {
        Output::Json => print_json(&json!({
            "event": kind,
            "key": key,
            "value": value.as_deref().map(json_value),
            "cursor": cursor,
        })),
        Output::Raw | Output::Table => {
            let mut line = format!("{kind} {key}");
            if let Some(v) = &value {
                line.push(' ');
                line.push_str(&String::from_utf8_lossy(v));
            }
            line.push('\n');
            out(line.as_bytes())
        }
    }
}

/// `ourkv cluster status`: `/v1/cluster` as a table (or its JSON).
pub(crate) fn cluster_status(
    endpoint: &str,
    token: Option<String>,
    output: Option<Output>,
) -> Result<ExitCode> {
    let api = Api::new(endpoint, token)?;
    let (status, body) = match runtime()?.block_on(api.call_any(Method::GET, "/v1/cluster")) {
        Ok(a) => a,
        Err(f) => return Ok(f.exit()),
    };
    let doc = serde_json::from_slice::<Value>(&body).ok();
    // With no master, a failover cluster still shows its term and members:
    // printed, then the error, and the error's exit code.
    let (doc, failed) = match doc {
        Some(doc) if status.is_success() => (doc, None),
        Some(doc) if doc.get("members").is_some() || doc.get("asked").is_some() => {
            (doc, Some(failure(status, &body)))
        }
        _ if status.is_success() => bail!("/v1/cluster is not JSON"),
        _ => return Ok(failure(status, &body).exit()),
    };
    if output == Some(Output::Json) {
        print_json(&doc)?;
    } else {
        out(cluster_table(&doc).as_bytes())?;
    }
    Ok(failed.map_or(ExitCode::SUCCESS, Failure::exit))
}

/// The rows of `ourkv cluster status`. Lag is in bytes when the worker is in
/// the master's epoch and data file, else `?`.
fn cluster_table(doc: &Value) -> String {
    let parse = |c: &str| -> Option<(u64, u64, u64)> {
        let mut it = c.split(':').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    // No master object: none answered (the members come from metadata).
    let (master_addr, master_cursor) = match doc.get("master") {
        Some(m) => (
            m["addr"].as_str().unwrap_or("?"),
            m["cursor"].as_str().unwrap_or("?"),
        ),
        None => ("none", "-"),
    };
    let mut rows = vec![[
        "ROLE".to_string(),
        "ADDRESS".to_string(),
        "CURSOR".to_string(),
        "LAG".to_string(),
        "IN SYNC".to_string(),
    ]];
    rows.push([
        "master".into(),
        master_addr.into(),
        master_cursor.into(),
        "-".into(),
        "-".into(),
    ]);
    for w in doc["workers"].as_array().into_iter().flatten() {
        let acked = w["acked"].as_str().unwrap_or("?");
        let bytes = match (parse(master_cursor), parse(acked)) {
            (Some((me, mf, mo)), Some((we, wf, wo))) if me == we && mf == wf => {
                format!("{} B", mo.saturating_sub(wo))
            }
            _ => "?".into(),
        };
        // In time too: how long the oldest commit it lacks has waited.
        let lag = match w["lag_ms"].as_u64() {
            Some(ms) => format!("{bytes}, {ms} ms"),
            None => bytes,
        };
        rows.push([
            "worker".into(),
            w["addr"].as_str().unwrap_or("?").into(),
            acked.into(),
            lag,
            if w["in_sync"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
        ]);
    }
    // Members of a failover cluster the master has no stream from (down,
    // or still joining).
    for m in doc["members"].as_array().into_iter().flatten() {
        let addr = m["addr"].as_str().unwrap_or("?");
        if (doc.get("master").is_some() && m["master"] == true) || rows.iter().any(|r| r[1] == addr)
        {
            continue;
        }
        rows.push([
            "member".into(),
            addr.into(),
            "?".into(),
            "?".into(),
            "no".into(),
        ]);
    }
    // No master: the nodes asked that no row shows yet (all of them when
    // the gateway never saw the metadata).
    for a in doc["asked"].as_array().into_iter().flatten() {
        let addr = a.as_str().unwrap_or("?");
        if !rows.iter().any(|r| r[1] == addr) {
            rows.push([
                "node".into(),
                addr.into(),
                "?".into(),
                "?".into(),
                "no".into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    if let Some(term) = doc["term"].as_u64() {
        let members = doc["members"].as_array().map_or(0, Vec::len);
        let voters = doc["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["voter"] == true).count());
        text.push_str(&format!(
            "failover: term {term}, {members} members ({voters} voting)\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_table_lists_members_without_a_stream_and_the_term() {
        let doc = json!({
            "master": {"addr": "127.0.0.1:7000", "cursor": "2:0:5000"},
            "workers": [{"addr": "127.0.0.1:7001", "acked": "2:0:5000", "in_sync": true}],
            "term": 3,
            "members": [
                {"id": "1", "addr": "127.0.0.1:7000", "voter": true, "in_sync": false, "master": true},
                {"id": "2", "addr": "127.0.0.1:7001", "voter": true, "in_sync": true, "master": false},
                {"id": "3", "addr": "127.0.0.1:7002", "voter": false, "in_sync": false, "master": false},
            ],
        });
        let t = cluster_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(
            lines[3].starts_with("member") && lines[3].contains("127.0.0.1:7002"),
            "{t}"
        );
        assert_eq!(lines[4], "failover: term 3, 3 members (2 voting)");
    }

    #[test]
    fn cluster_table_without_a_master_lists_every_member() {
        // /v1/cluster's 503 body: the error, the term and the members.
        let doc = json!({
            "error": {"code": "unavailable", "message": "the master is unreachable; retry shortly"},
            "term": 4,
            "members": [
                {"id": "1", "addr": "127.0.0.1:7000", "voter": true, "in_sync": false, "master": true},
                {"id": "2", "addr": "127.0.0.1:7001", "voter": true, "in_sync": true, "master": false},
                {"id": "3", "addr": "127.0.0.1:7002", "voter": true, "in_sync": true, "master": false},
            ],
        });
        let t = cluster_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(lines[1].starts_with("master  none"), "{t}");
        for (line, addr) in lines[2..5].iter().zip(["7000", "7001", "7002"]) {
            assert!(line.starts_with("member") && line.contains(addr), "{t}");
        }
        assert_eq!(lines[5], "failover: term 4, 3 members (3 voting)");
    }

    #[test]
    fn cluster_table_with_no_node_answering_lists_those_asked() {
        let doc = json!({
            "error": {"code": "unavailable", "message": "the master is unreachable; retry shortly"},
            "asked": ["127.0.0.1:7000", "127.0.0.1:7001"],
        });
        let t = cluster_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].starts_with("master  none"), "{t}");
        for (line, addr) in lines[2..].iter().zip(["7000", "7001"]) {
            assert!(line.starts_with("node") && line.contains(addr), "{t}");
        }
        // With metadata, a member asked is its member row; an address
        // asked that is no member gets a node row of its own.
        let doc = json!({"asked": ["127.0.0.1:7000", "127.0.0.1:9"], "term": 1,
            "members": [{"id": "1", "addr": "127.0.0.1:7000", "voter": true}]});
        let t = cluster_table(&doc);
        assert_eq!(t.matches("127.0.0.1:7000").count(), 1, "{t}");
        assert!(t.contains("member  127.0.0.1:7000"), "{t}");
        assert!(t.contains("node    127.0.0.1:9"), "{t}");
    }

    #[test]
    fn cluster_table_shows_lag_within_one_file() {
        let doc = json!({
            "master": {"addr": "127.0.0.1:7000", "cursor": "2:0:5000"},
            "workers": [
                {"addr": "127.0.0.1:7001", "acked": "2:0:4000", "in_sync": true, "lag_ms": 12},
                {"addr": "127.0.0.1:7002", "acked": "1:3:9", "in_sync": false},
            ],
        });
        let t = cluster_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("ROLE"));
        assert!(lines[1].starts_with("master  127.0.0.1:7000  2:0:5000"));
        assert!(lines[2].contains("1000 B, 12 ms") && lines[2].ends_with("yes"));
        assert!(lines[3].contains(" ? ") && lines[3].ends_with("no"));
    }

    #[test]
    fn keys_and_queries_are_escaped() {
        assert_eq!(key_path("app/conf ig%"), "/v1/kv/app/conf%20ig%25");
        assert_eq!(key_path("é"), "/v1/kv/%C3%A9");
        assert_eq!(
            query(&[("prefix", Some("a/b&c".into())), ("after", None)]),
            "?prefix=a%2Fb%26c"
        );
        assert_eq!(query(&[("x", None)]), "");
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let body = br#"{"error":{"code":"not_found","message":"no such key"}}"#;
        let f = failure(StatusCode::NOT_FOUND, body);
        assert_eq!(f.code, NOT_FOUND);
        assert!(f.message.contains("not_found: no such key"));
        assert_eq!(
            failure(StatusCode::PRECONDITION_FAILED, b"").code,
            PRECONDITION_FAILED
        );
        assert_eq!(failure(StatusCode::UNAUTHORIZED, b"").code, REFUSED);
        // A 404 the API did not explain is no absent key.
        let no_route = br#"{"error":{"code":"no_route","message":"no such endpoint"}}"#;
        let f = failure(StatusCode::NOT_FOUND, no_route);
        assert_eq!(f.code, REFUSED);
        assert!(f.message.contains("--endpoint"), "{}", f.message);
        assert_eq!(failure(StatusCode::NOT_FOUND, b"<html>").code, REFUSED);
        let no_lease = br#"{"error":{"code":"no_lease","message":"lease 7"}}"#;
        assert_eq!(failure(StatusCode::NOT_FOUND, no_lease).code, NOT_FOUND);
        assert_eq!(
            failure(StatusCode::SERVICE_UNAVAILABLE, b"x").code,
            UNAVAILABLE
        );
        assert_eq!(failure(StatusCode::GATEWAY_TIMEOUT, b"x").code, UNAVAILABLE);
    }
}
