//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations when the router is built (`Gateway::router`).
//!
//! The handlers parse their raw query, headers and bodies themselves
//! (strict percent-decoding, a repeated parameter refused, bytes kept as
//! bytes), so the types here only describe requests and answers: they
//! are never built, hence `dead_code` is allowed. Every constraint here is
//! one the handler enforces, and the reverse: schemathesis (server/tests/
//! openapi.rs) sends what the document allows and what it forbids and
//! checks the answers.
#![allow(dead_code)]

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToResponse, ToSchema};

/// A cursor as text: `epoch:file:offset`.
const CURSOR_PATTERN: &str = "^[0-9]+:[0-9]+:[0-9]+$";
/// `*`, or a comma-separated list of entity tags (`W/` marks a weak one).
/// A duration: digits and a unit (`ms`, `s`, `m`, `h`, `d`; none: seconds).
/// From 1 ms to 365 days, checked digit by digit (leading zeros allowed).
const DURATION_PATTERN: &str = "^(0*([1-9][0-9]{0,9}|[1-2][0-9]{10}|30[0-9]{9}|31[0-4][0-9]{8}|315[0-2][0-9]{7}|3153[0-5][0-9]{6}|31536000000)ms|0*([1-9][0-9]{0,6}|[1-2][0-9]{7}|30[0-9]{6}|31[0-4][0-9]{5}|315[0-2][0-9]{4}|3153[0-5][0-9]{3}|31536000)s|0*([1-9][0-9]{0,4}|[1-4][0-9]{5}|5[0-1][0-9]{4}|52[0-4][0-9]{3}|525[0-5][0-9]{2}|525600)m|0*([1-9][0-9]{0,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-5][0-9]|8760)h|0*([1-9][0-9]{0,1}|[1-2][0-9]{2}|3[0-5][0-9]|36[0-5])d|0*([1-9][0-9]{0,6}|[1-2][0-9]{7}|30[0-9]{6}|31[0-4][0-9]{5}|315[0-2][0-9]{4}|3153[0-5][0-9]{3}|31536000))$";
const CONDITION_PATTERN: &str =
    r#"^[ \t]*(\*|(W/)?"[!#-~]*"([ \t]*,[ \t]*(W/)?"[!#-~]*")*)[ \t]*$"#;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ourkv",
        description = "Replicated key-value store. Writes go to the master, reads to workers. \
                       Errors are {\"error\":{\"code\":\"...\",\"message\":\"...\"}}."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(responses(
        BadRequest,
        Unauthorized,
        NotFound,
        RequestTimeout,
        CursorAhead,
        Gone,
        PreconditionFailed,
        TooLarge,
        HeadersTooLarge,
        ServerError,
        Unavailable,
        GatewayTimeout
    ))
)]
pub(super) struct ApiDoc;

/// `--api-token`: `Authorization: Bearer TOKEN` on every route but the
/// probes and the status page.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON: axum's wildcard `{*key}` written as OpenAPI's
/// `{key}`, and the patterns of the parameters that share one (attributes
/// take only literals, so they are set here, once).
pub(super) fn document(mut doc: utoipa::openapi::OpenApi) -> String {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, item) in paths {
        doc.paths.paths.insert(path.replace("{*", "{"), item);
    }
    let mut json = serde_json::to_value(&doc).expect("the document serializes");
    let patterns = [
        ("ttl", DURATION_PATTERN),
        ("If-Match", CONDITION_PATTERN),
        ("If-None-Match", CONDITION_PATTERN),
        ("X-OurKV-Cursor", CURSOR_PATTERN),
        ("Last-Event-ID", CURSOR_PATTERN),
        ("cursor", CURSOR_PATTERN),
    ];
    for item in json["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.values_mut())
    {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let params = op.get_mut("parameters").and_then(|p| p.as_array_mut());
            for param in params.into_iter().flatten() {
                let name = param["name"].as_str().unwrap_or_default();
                if let Some((_, pattern)) = patterns.iter().find(|(n, _)| *n == name) {
                    // A header is text or absent, never null.
                    param["schema"] = serde_json::json!({"type": "string", "pattern": pattern});
                }
            }
        }
    }
    json.to_string()
}

/// Raw bytes: a value, a backup stream.
pub(super) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .build()
            .into()
    }
}

impl ToSchema for Binary {}

// ---- Answers -------------------------------------------------------------

/// Every error answer.
#[derive(ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub(super) struct ErrorDetail {
    /// A short, stable code: `bad_request`, `not_found`, `precondition_failed`, …
    code: String,
    /// What went wrong, for people.
    message: String,
}

/// A write done.
#[derive(ToSchema)]
pub(super) struct Written {
    ok: bool,
    key: String,
    /// The log position of the write (`X-OurKV-Cursor` too).
    cursor: String,
    /// PUT only: the new version's entity tag (`ETag` too).
    etag: Option<String>,
}

/// Keys with a prefix, ascending.
#[derive(ToSchema)]
pub(super) struct KeyList {
    keys: Vec<String>,
    /// The last key when the page is full (pass it as `after`), else null.
    next: Option<String>,
}

/// `?history=N`: the newest versions first, base64.
#[derive(ToSchema)]
pub(super) struct History {
    key: String,
    history: Vec<String>,
}

/// A record by id.
#[derive(ToSchema)]
pub(super) struct Record {
    id: u32,
    key: String,
    /// base64
    value: String,
}

/// A lease.
#[derive(ToSchema)]
pub(super) struct Lease {
    id: u32,
    /// Its time to live: a keep-alive moves the deadline this far past its time.
    ttl_ms: u64,
    /// Until it ends unless kept alive (0 once revoked).
    remaining_ms: u64,
    key_count: u32,
    /// GET and DELETE only: its keys (DELETE: those the revocation deleted), ascending.
    keys: Option<Vec<String>>,
    cursor: String,
}

/// `POST /v1/txn`: if every condition holds, the operations in order.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Txn {
    /// What must hold, all of it.
    #[serde(rename = "if")]
    #[schema(max_items = 128)]
    conditions: Option<Vec<TxnCondition>>,
    /// What to do, in order; a key is written at most once.
    #[serde(rename = "do")]
    #[schema(max_items = 128)]
    ops: Option<Vec<TxnOp>>,
}

/// A key and exactly one of `exists`, `etag`, `value`, `value_b64`.
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum TxnCondition {
    #[serde(deny_unknown_fields)]
    Exists {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
        exists: bool,
    },
    #[serde(deny_unknown_fields)]
    Etag {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
        #[schema(pattern = r#"^"[0-9]+-[0-9]+-[0-9]+"$"#)]
        etag: String,
    },
    #[serde(deny_unknown_fields)]
    Value {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
        value: String,
    },
    #[serde(deny_unknown_fields)]
    ValueB64 {
        #[schema(min_length = 1, max_length = 1024)]
        key: String,
        #[schema(format = Byte)]
        value_b64: String,
    },
}

/// Exactly one of `put` (with `value` or `value_b64`), `delete`, `get`.
#[derive(ToSchema)]
#[serde(untagged)]
pub(super) enum TxnOp {
    #[serde(deny_unknown_fields)]
    Put {
        #[schema(min_length = 1, max_length = 1024)]
        put: String,
        value: String,
    },
    #[serde(deny_unknown_fields)]
    PutB64 {
        #[schema(min_length = 1, max_length = 1024)]
        put: String,
        #[schema(format = Byte)]
        value_b64: String,
    },
    #[serde(deny_unknown_fields)]
    Delete {
        #[schema(min_length = 1, max_length = 1024)]
        delete: String,
    },
    #[serde(deny_unknown_fields)]
    Get {
        #[schema(min_length = 1, max_length = 1024)]
        get: String,
    },
}

/// The transaction applied: one result per operation.
#[derive(ToSchema)]
pub(super) struct TxnDone {
    ok: bool,
    cursor: String,
    results: Vec<TxnResult>,
}

/// A put's new entity tag, whether a delete found its key, a get's value.
#[derive(ToSchema)]
pub(super) struct TxnResult {
    put: Option<String>,
    delete: Option<String>,
    get: Option<String>,
    etag: Option<String>,
    existed: Option<bool>,
    found: Option<bool>,
    /// A get's value when it is UTF-8.
    value: Option<String>,
    #[schema(format = Byte)]
    value_b64: Option<String>,
}

/// `GET /v1/cluster`.
#[derive(ToSchema)]
pub(super) struct Cluster {
    master: ClusterMaster,
    workers: Vec<ClusterWorker>,
    /// Failover clusters: the Raft term.
    term: Option<u64>,
    /// Failover clusters: every member.
    members: Option<Vec<ClusterMember>>,
}

#[derive(ToSchema)]
pub(super) struct ClusterMaster {
    addr: String,
    cursor: String,
}

#[derive(ToSchema)]
pub(super) struct ClusterWorker {
    addr: String,
    /// How far it has written and synced.
    acked: String,
    /// Counted in `ack=all`.
    in_sync: bool,
    /// How long ago the master was where this worker is now.
    lag_ms: u64,
}

#[derive(ToSchema)]
pub(super) struct ClusterMember {
    id: String,
    addr: String,
    voter: bool,
    in_sync: bool,
    master: bool,
    /// Only in a 503 answer: `false` on the member the metadata names
    /// master, which did not answer.
    answered: Option<bool>,
}

/// `GET /v1/stats`: one sample a second.
#[derive(ToSchema)]
pub(super) struct Stats {
    interval_ms: u64,
    samples: Vec<serde_json::Value>,
}

/// `{"status":"ok"}`
#[derive(ToSchema)]
pub(super) struct Health {
    status: String,
}

/// `{"ready":true}`
#[derive(ToSchema)]
pub(super) struct Ready {
    ready: bool,
}

// ---- Error answers, shared by the routes ------------------------------------

/// Bad input: a parameter, a key, a header, the body (the message says which).
#[derive(ToResponse)]
pub(super) struct BadRequest(ErrorBody);

/// The bearer token is missing or wrong (with `--api-token`).
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "Bearer")))]
pub(super) struct Unauthorized(ErrorBody);

/// No such key, record or lease.
#[derive(ToResponse)]
pub(super) struct NotFound(ErrorBody);

/// The body did not arrive within the client timeout.
#[derive(ToResponse)]
pub(super) struct RequestTimeout(ErrorBody);

/// `X-OurKV-Cursor` is past the end of the master's log: a write nobody
/// made, or one a failover lost (`ack=master`).
#[derive(ToResponse)]
pub(super) struct CursorAhead(ErrorBody);

/// The watch cursor is of a log a compaction replaced.
#[derive(ToResponse)]
pub(super) struct Gone(ErrorBody);

/// A precondition did not hold; nothing was written.
#[derive(ToResponse)]
pub(super) struct PreconditionFailed(ErrorBody);

/// Past a size limit (the message says which).
#[derive(ToResponse)]
pub(super) struct TooLarge(ErrorBody);

/// The request line and headers are over 16 KiB.
#[derive(ToResponse)]
pub(super) struct HeadersTooLarge(ErrorBody);

/// A node failed to read or write.
#[derive(ToResponse)]
pub(super) struct ServerError(ErrorBody);

/// No master, no node answered, or the connection cap is reached; retry.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = String, description = "seconds")))]
pub(super) struct Unavailable(ErrorBody);

/// No node reached the read's cursor in time.
#[derive(ToResponse)]
pub(super) struct GatewayTimeout(ErrorBody);

/// The errors every route with a token can answer: the token, the
/// headers' size, no master or the connection cap.
#[derive(IntoResponses)]
pub(super) enum Common {
    #[response(status = 401)]
    Unauthorized(#[ref_response] Unauthorized),
    #[response(status = 431)]
    HeadersTooLarge(#[ref_response] HeadersTooLarge),
    #[response(status = 503)]
    Unavailable(#[ref_response] Unavailable),
}

// ---- Parameters ------------------------------------------------------------

/// The key of `/v1/kv/{key}`: 1 to 1,024 bytes of UTF-8, percent-encoded
/// as needed (`/` may stay as it is).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct KeyPath {
    #[param(min_length = 1, max_length = 1024)]
    key: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Consistency {
    Strong,
    Session,
    Stale,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum AckLevel {
    Master,
    All,
}

/// How fresh a read is.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReadQuery {
    /// `strong` (default): every write acknowledged before the read;
    /// `session`: at least `X-OurKV-Cursor`; `stale`: whatever a worker has.
    #[param(inline)]
    consistency: Option<Consistency>,
}

/// The cursor a session read must see.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(super) struct SessionHeader {
    /// With `consistency=session`: a cursor a write answered.
    #[param(rename = "X-OurKV-Cursor")]
    cursor: Option<String>,
}

/// Who acknowledges a write before it is answered.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AckQuery {
    /// `master` (default for keys): once the master has it; `all`: once
    /// every in-sync worker has it too (survives a failover).
    #[param(inline)]
    ack: Option<AckLevel>,
}

/// Conditions on the key's current version (RFC 9110 13.1.1-2).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(super) struct Preconditions {
    /// `*` (the key exists) or entity tags, one of which must be current
    /// (strong comparison); else 412.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
    /// `*` (the key does not exist) or entity tags, none of which may be
    /// current (weak comparison); a read answers 304, a write 412.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// A lease id.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct LeasePath {
    #[param(minimum = 1, maximum = 4294967295_u64)]
    id: u32,
}

/// The seed API's form.
#[derive(ToSchema)]
pub(super) struct SeedSet {
    #[schema(min_length = 1, max_length = 1024)]
    key: String,
    value: String,
}

/// The seed API's delete form.
#[derive(ToSchema)]
pub(super) struct SeedDelete {
    #[schema(min_length = 1, max_length = 1024)]
    key: String,
}

/// `GET /get?key=`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SeedKey {
    #[param(min_length = 1, max_length = 1024)]
    key: String,
}

/// `GET /v1/kv/{key}?history=N`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    /// Instead of the value: up to this many versions, newest first (JSON).
    #[param(minimum = 1, maximum = 1000)]
    history: Option<u32>,
}

/// `PUT /v1/kv/{key}`: how long the key lives.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LifetimeQuery {
    /// Expire the key this long after the master writes it (1ms to 365d; a
    /// bare number is seconds); not with `lease`.
    ttl: Option<String>,
    /// Attach the key to this lease (from `POST /v1/lease`): it goes when the
    /// lease ends; not with `ttl`.
    #[param(minimum = 1, maximum = 4294967295_u64)]
    lease: Option<u32>,
}

/// `POST /v1/lease?ttl=`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct GrantQuery {
    /// Its time to live (1ms to 365d; a bare number is seconds): it ends that
    /// long after its last keep-alive.
    ttl: String,
}

/// Who acknowledges a lease request (default `all`: a lease's id and
/// deadline must survive a failover).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LeaseAckQuery {
    #[param(inline)]
    ack: Option<AckLevel>,
}

/// `GET /v1/kv`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only keys that start with this.
    #[param(max_length = 1024)]
    prefix: Option<String>,
    /// Only keys after this one (the `next` of the page before).
    after: Option<String>,
    /// At most this many keys (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /v1/records/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RecordPath {
    #[param(minimum = 0, maximum = 4294967295_u64)]
    id: u32,
}

/// `GET /v1/watch`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WatchQuery {
    /// Only keys that start with this.
    #[param(max_length = 1024)]
    prefix: Option<String>,
    /// Start after this cursor (an event's id); `Last-Event-ID` wins.
    cursor: Option<String>,
}

/// A reconnecting event source's last event id.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(super) struct LastEventId {
    #[param(rename = "Last-Event-ID")]
    last_event_id: Option<String>,
}

/// `GET /v1/stats`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsQuery {
    /// Only samples after this time (milliseconds since the Unix epoch).
    #[param(minimum = 0)]
    since: Option<i64>,
}

/// `/ready`, `/readyz`: `?sync` (any value) also needs every worker caught up.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReadyQuery {
    sync: Option<String>,
}

/// `/livez`, `/readyz`: `?verbose` (any value) lists each check.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct VerboseQuery {
    verbose: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn full(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern).unwrap()
    }

    /// The document's duration pattern and `ttl_of` agree, at every unit's
    /// bounds and around them, with and without leading zeros.
    #[test]
    fn the_duration_pattern_is_what_ttl_of_takes() {
        let re = full(DURATION_PATTERN);
        let mut numbers: Vec<u64> = (0..2_000).collect();
        for edge in [365u64, 8_760, 525_600, 31_536_000, 31_536_000_000] {
            numbers.extend(edge.saturating_sub(3)..edge + 3);
            numbers.extend([edge * 10, edge / 10]);
        }
        numbers.extend([u64::MAX, 99_999_999_999_999_999]);
        for n in numbers {
            for unit in ["", "ms", "s", "m", "h", "d", "x", "S"] {
                for text in [format!("{n}{unit}"), format!("00{n}{unit}")] {
                    let q = parse_pairs(format!("ttl={text}").as_bytes()).unwrap();
                    assert_eq!(re.is_match(&text), ttl_of(&q).is_ok(), "{text}");
                }
            }
        }
        for text in ["", "ms", " 1s", "1 s", "-1s", "+1s", "1.5s"] {
            let q = parse_pairs(format!("ttl={}", text.replace(' ', "%20")).as_bytes()).unwrap();
            assert_eq!(re.is_match(text), ttl_of(&q).is_ok(), "{text:?}");
        }
    }

    /// The precondition pattern and the header parser agree.
    #[test]
    fn the_condition_pattern_is_what_the_parser_takes() {
        let re = full(CONDITION_PATTERN);
        let cases = [
            "*",
            " * ",
            "\t*",
            "\"1-0-4\"",
            "W/\"1-0-4\"",
            "\"a\", \"b\"",
            "\"a\",\"b\"",
            " \"a\" ,\tW/\"b\" ",
            "\"\"",
            "",
            " ",
            "* *",
            "*, \"a\"",
            "\"a\"\"b\"",
            "\"a\",",
            ",\"a\"",
            "\"a\",,\"b\"",
            "a",
            "0",
            "null",
            "\"a b\"",
            "\"a",
            "w/\"a\"",
            "W/ \"a\"",
            "\"a\\\"",
            "\"a~!\"",
        ];
        for text in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_str(text).unwrap());
            let parsed = conditions(&headers).is_ok();
            assert_eq!(re.is_match(text), parsed, "{text:?}");
        }
    }

    /// The cursor pattern and the parser agree; a part past its range
    /// counts as the largest.
    #[test]
    fn the_cursor_pattern_is_what_the_parser_takes() {
        let re = full(CURSOR_PATTERN);
        for text in [
            "1:0:4096", "0:0:0", "007:1:2", "1:0", "1:0:1:2", "1::2", "a:0:0", "+1:0:0", " 1:0:0",
            "1:0:0 ", "", "::", "1:0:-1",
        ] {
            assert_eq!(re.is_match(text), parse_cursor(text).is_some(), "{text:?}");
        }
        let big = parse_cursor("99999999999999999999999:70000:99999999999999999999").unwrap();
        assert_eq!(
            big,
            Cursor::new(u64::MAX, ourdb::Location::new(u16::MAX, u32::MAX))
        );
    }

    /// Every route is in the document, with the bearer scheme, and each
    /// parameter given a shared pattern has it.
    #[tokio::test]
    async fn the_document_covers_the_routes() {
        let client =
            replication::Client::new(&replication::Identity::ephemeral().unwrap()).unwrap();
        let gw = Gateway::new(
            client,
            "127.0.0.1:9".parse().unwrap(),
            vec![],
            Some("t".into()),
        );
        let _router = gw.router();
        let doc: serde_json::Value = serde_json::from_str(OPENAPI.get().unwrap()).unwrap();
        for (path, methods) in [
            ("/v1/kv/{key}", &["get", "put", "delete"][..]),
            ("/v1/kv", &["get"]),
            ("/v1/txn", &["post"]),
            ("/v1/lease", &["post"]),
            ("/v1/lease/{id}", &["get", "delete"]),
            ("/v1/lease/{id}/keepalive", &["post"]),
            ("/set", &["post"]),
            ("/get", &["get"]),
            ("/delete", &["post"]),
            ("/v1/watch", &["get"]),
        ] {
            for m in methods {
                assert!(doc["paths"][path][m].is_object(), "{m} {path}");
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let put = &doc["paths"]["/v1/kv/{key}"]["put"]["parameters"];
        let ttl = put
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "ttl")
            .unwrap();
        assert_eq!(ttl["schema"]["pattern"], DURATION_PATTERN);
        assert_eq!(ttl["schema"]["type"], "string");
    }
}
