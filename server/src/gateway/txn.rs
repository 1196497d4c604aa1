//! `POST /v1/txn`: conditions, then operations, applied whole or not at all
//! on the master (docs/API.md, "Transactions").

use serde::Deserialize;

use super::*;
use replication::msg::writes;
use replication::{TxnCondition, TxnOp, TxnResult};

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    /// What must hold (all of it), in order.
    #[serde(default, rename = "if")]
    conditions: Option<Vec<CondBody>>,
    /// What to do, in order.
    #[serde(default, rename = "do")]
    ops: Option<Vec<OpBody>>,
}

/// One condition: a key and exactly one of `exists`, `etag`, `value`,
/// `value_b64`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CondBody {
    key: String,
    exists: Option<bool>,
    etag: Option<String>,
    value: Option<String>,
    value_b64: Option<String>,
}

/// One operation: exactly one of `put` (with `value` or `value_b64`),
/// `delete`, `get`, each naming the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    put: Option<String>,
    delete: Option<String>,
    get: Option<String>,
    value: Option<String>,
    value_b64: Option<String>,
}

/// The bytes of `value` or `value_b64`, at most one of them given.
fn value_of(
    value: Option<String>,
    b64: Option<String>,
    what: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (value, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "{what}: give value or value_b64, not both"
        ))),
        (Some(v), None) => Ok(Some(v.into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{what}: value_b64 is no base64: {e}"))),
        (None, None) => Ok(None),
    }
}

fn condition(i: usize, c: CondBody) -> Result<TxnCondition, ApiError> {
    let what = format!("condition {i}");
    let value = value_of(c.value, c.value_b64, &what)?;
    let key = c.key;
    match (c.exists, c.etag, value) {
        (Some(true), None, None) => Ok(TxnCondition::Version {
            key,
            expect: Expect::Present,
        }),
        (Some(false), None, None) => Ok(TxnCondition::Version {
            key,
            expect: Expect::Absent,
        }),
        (None, Some(tag), None) => match Version::from_etag(&tag) {
            Some(v) => Ok(TxnCondition::Version {
                key,
                expect: Expect::Version(v),
            }),
            // Shaped like this service's tags but past their ranges: no
            // version has it, so the condition cannot hold.
            None if is_tag_shape(&tag) => Ok(TxnCondition::Version {
                key,
                expect: Expect::OneOf(Vec::new()),
            }),
            None => Err(ApiError::bad_request(format!(
                "{what}: {tag:?} is no entity tag of this service"
            ))),
        },
        (None, None, Some(value)) => Ok(TxnCondition::ValueIs { key, value }),
        _ => Err(ApiError::bad_request(format!(
            "{what}: give exactly one of exists, etag, value, value_b64"
        ))),
    }
}

/// `"digits-digits-digits"`: the shape of this service's entity tags.
fn is_tag_shape(tag: &str) -> bool {
    let Some(inner) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return false;
    };
    let parts: Vec<&str> = inner.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn operation(i: usize, o: OpBody) -> Result<TxnOp, ApiError> {
    let what = format!("operation {i}");
    let value = value_of(o.value, o.value_b64, &what)?;
    match (o.put, o.delete, o.get, value) {
        (Some(key), None, None, Some(value)) => Ok(TxnOp::Put { key, value }),
        (Some(_), None, None, None) => Err(ApiError::bad_request(format!(
            "{what}: a put needs value or value_b64"
        ))),
        (None, Some(key), None, None) => Ok(TxnOp::Delete { key }),
        (None, None, Some(key), None) => Ok(TxnOp::Get { key }),
        (None, Some(_), None, Some(_)) | (None, None, Some(_), Some(_)) => Err(
            ApiError::bad_request(format!("{what}: only a put takes a value")),
        ),
        _ => Err(ApiError::bad_request(format!(
            "{what}: give exactly one of put, delete, get"
        ))),
    }
}

/// The limits, checked here so that a refusal costs no round trip: 400 for
/// a bad key or a key written twice, 413 past a size or count limit.
fn check(conditions: &[TxnCondition], ops: &[TxnOp], max_value: usize) -> Result<(), ApiError> {
    for op in ops {
        if let TxnOp::Put { value, .. } = op {
            if value.len() > max_value {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "value of {} bytes; at most {max_value} (--max-value-bytes)",
                        value.len()
                    ),
                ));
            }
        }
    }
    use ourdb::keyed::{Condition, Op};
    let conds: Vec<Condition> = conditions
        .iter()
        .map(|c| match c {
            TxnCondition::Version { key, .. } => {
                Condition::Version(key.clone(), ourdb::keyed::Expect::Any)
            }
            TxnCondition::ValueIs { key, .. } => Condition::ValueIs(key.clone(), Vec::new()),
        })
        .collect();
    let ops: Vec<Op> = ops
        .iter()
        .map(|o| match o {
            TxnOp::Put { key, value } => Op::Put(key.clone(), value.clone()),
            TxnOp::Delete { key } => Op::Delete(key.clone()),
            TxnOp::Get { key } => Op::Get(key.clone()),
        })
        .collect();
    match ourdb::keyed::check_txn(&conds, &ops) {
        Ok(()) => Ok(()),
        Err(e @ (ourdb::Error::TxnTooLarge(_) | ourdb::Error::ValueTooLarge { .. })) => Err(
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        ),
        // Well-formed, each part valid, but together not: 422.
        Err(e @ ourdb::Error::InvalidTxn(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

fn result_json(op: &TxnOp, r: TxnResult) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    match r {
        TxnResult::Put { version } => json!({"put": op_key(op), "etag": version.etag()}),
        TxnResult::Delete { existed } => json!({"delete": op_key(op), "existed": existed}),
        TxnResult::Get { value: None } => json!({"get": op_key(op), "found": false}),
        TxnResult::Get {
            value: Some((v, version)),
        } => {
            let mut o = json!({
                "get": op_key(op),
                "found": true,
                "value_b64": b64.encode(&v),
                "etag": version.etag(),
            });
            if let Ok(text) = std::str::from_utf8(&v) {
                o["value"] = json!(text);
            }
            o
        }
    }
}

fn op_key(op: &TxnOp) -> &str {
    match op {
        TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
    }
}

/// A transaction
///
/// If every condition holds, the operations in order, whole or not at all.
#[utoipa::path(post, path = "/v1/txn", tag = "kv",
    params(api::AckQuery),
    request_body(content = api::Txn, content_type = "application/json"),
    responses(
        api::Common,
        (status = 200, description = "Applied; one result per operation", body = api::TxnDone,
            headers(("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 408, response = api::RequestTimeout),
        (status = 412, description = "A condition did not hold (the message names it); nothing was written", body = api::ErrorBody),
        (status = 422, description = "A key written twice", body = api::ErrorBody),
        (status = 413, description = "Past a limit: 128 operations or conditions, 512 KiB written, a value, a 1 MiB body", body = api::ErrorBody),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn txn(State(gw): Gw, q: RawQuery, body: Bytes) -> Response {
    let r = async {
        // serde would also take a JSON array for the struct.
        if !body.trim_ascii_start().starts_with(b"{") {
            return Err(ApiError::bad_request(
                "the body is no transaction: not a JSON object",
            ));
        }
        let q = query(&q)?;
        let ack = ack_of(&q)?;
        let body: TxnBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is no transaction: {e}")))?;
        let conditions = body
            .conditions
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| condition(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let ops = body
            .ops
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, o)| operation(i, o))
            .collect::<Result<Vec<_>, _>>()?;
        check(&conditions, &ops, gw.max_value_bytes)?;
        let keys: Vec<TxnOp> = ops
            .iter()
            .map(|o| match o {
                // Only the keys are needed for the answer.
                TxnOp::Put { key, .. } => TxnOp::Put {
                    key: key.clone(),
                    value: Vec::new(),
                },
                other => other.clone(),
            })
            .collect();
        let failed_key = |i: u32| match conditions.get(i as usize) {
            Some(TxnCondition::Version { key, .. } | TxnCondition::ValueIs { key, .. }) => {
                key.clone()
            }
            None => String::new(),
        };
        let req = writes::Txn {
            conditions: conditions.clone(),
            ops,
            ack,
        };
        let done = gw
            .routes
            .on_master(false, |m| gw.client.call(m, req.clone()))
            .await
            .map_err(ApiError::from_write)?;
        if let Some(i) = done.failed {
            let e = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "condition {i} (key {:?}) does not hold: nothing was written",
                    failed_key(i)
                ),
            );
            return Ok(with_cursor(e.into_response(), done.cursor));
        }
        let results: Vec<serde_json::Value> = keys
            .iter()
            .zip(done.results)
            .map(|(op, r)| result_json(op, r))
            .collect();
        Ok::<_, ApiError>(with_cursor(
            Json(json!({
                "ok": true,
                "cursor": cursor_text(done.cursor),
                "results": results,
            }))
            .into_response(),
            done.cursor,
        ))
    }
    .await;
    counted(&gw, r)
}
