//! The key-value routes: the seed API, `/v1/kv`, listing, records by id.

use super::*;

/// Store a value (the seed API)
///
/// Form fields `key` and `value`; the value is kept as the bytes the form
/// encodes.
#[utoipa::path(post, path = "/set", tag = "seed",
    request_body(content = api::SeedSet, content_type = "application/x-www-form-urlencoded"),
    responses(
        api::Common,
        (status = 200, description = "Stored", body = api::Written,
            headers(("X-OurKV-Cursor" = String, description = "the write's cursor"))),
        (status = 400, response = api::BadRequest),
        (status = 408, response = api::RequestTimeout),
        (status = 413, response = api::TooLarge),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn seed_set(State(gw): Gw, body: Bytes) -> Response {
    let r = async {
        let form = parse_pairs(&body)?;
        let key = field(&form, "key")?;
        // The value is bytes, kept exactly as the form encodes them.
        let value = form
            .bytes("value")?
            .ok_or_else(|| ApiError::bad_request("missing form field \"value\""))?;
        let (c, _) = gw
            .write(
                &key,
                Bytes::copy_from_slice(value),
                Ack::Master,
                Expect::Any,
                0,
                0,
            )
            .await?;
        Ok(with_cursor(
            Json(json!({"ok": true, "key": key, "cursor": cursor_text(c)})).into_response(),
            c,
        ))
    }
    .await;
    counted(&gw, r)
}

/// The value of a key (the seed API)
#[utoipa::path(get, path = "/get", tag = "seed",
    params(api::SeedKey, api::ReadQuery, api::SessionHeader, api::Preconditions),
    responses(
        api::Common,
        (status = 200, description = "The value", content_type = "application/octet-stream", body = api::Binary,
            headers(("ETag" = String), ("X-OurKV-Cursor" = String))),
        (status = 304, description = "If-None-Match names the current version (or is *)",
            headers(("ETag" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, response = api::NotFound),
        (status = 412, response = api::PreconditionFailed),
        (status = 500, response = api::ServerError),
        (status = 409, response = api::CursorAhead),
        (status = 504, response = api::GatewayTimeout),
    ))]
pub(super) async fn seed_get(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let key = q
            .get("key")?
            .ok_or_else(|| ApiError::bad_request("missing query parameter \"key\""))?;
        get_value(&gw, key, &q, &headers).await
    }
    .await;
    counted(&gw, r)
}

/// Delete a key (the seed API)
#[utoipa::path(post, path = "/delete", tag = "seed",
    request_body(content = api::SeedDelete, content_type = "application/x-www-form-urlencoded"),
    responses(
        api::Common,
        (status = 200, description = "Deleted", body = api::Written,
            headers(("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, response = api::NotFound),
        (status = 408, response = api::RequestTimeout),
        (status = 413, response = api::TooLarge),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn seed_delete(State(gw): Gw, body: Bytes) -> Response {
    let r = async {
        let key = field(&parse_pairs(&body)?, "key")?;
        delete_key(&gw, &key, Ack::Master, Expect::Any).await
    }
    .await;
    counted(&gw, r)
}

pub(super) async fn get_value(
    gw: &Gateway,
    key: &str,
    q: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_key(key)?;
    let min = gw.min_cursor(q, headers)?;
    // Checked even where they do not apply (a history), so a malformed one
    // is never silently ignored.
    let (if_match, if_none_match) = conditions(headers)?;
    if let Some(depth) = q.get("history")? {
        let depth = bounded(depth, "history")?;
        let (values, seen) = gw
            .read(min, |n, c| gw.client.history(n, key, depth, c))
            .await?;
        let at = min.covered_by(seen);
        if values.is_empty() {
            return Ok(error_at(gw, ApiError::not_found(key), at));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let history: Vec<String> = values.iter().map(|v| b64.encode(v)).collect();
        return Ok(with_cursor(
            Json(json!({"key": key, "history": history})).into_response(),
            at,
        ));
    }
    let (found, seen) = gw
        .read(min, |n, c| gw.client.get_versioned(n, key, c))
        .await?;
    // What the read saw, for a session read after it; never below what the
    // request asked for.
    let at = min.covered_by(seen);
    let current = found.as_ref().map(|(_, v)| *v);
    // RFC 9110 13.2.2: If-Match first (412), then If-None-Match (304).
    if if_match.as_ref().is_some_and(|c| !meets(c, current)) {
        let e = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the key's current version is not one If-Match names",
        );
        return Ok(error_at(gw, e, at));
    }
    match found {
        Some((_, version)) if if_none_match.as_ref().is_some_and(|c| meets(c, current)) => {
            Ok(with_etag(
                with_cursor(StatusCode::NOT_MODIFIED.into_response(), at),
                version,
            ))
        }
        Some((v, version)) => Ok(with_etag(
            with_cursor(
                ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
                at,
            ),
            version,
        )),
        // A 404 is a read too: a session read with its cursor never finds
        // a value deleted before it.
        None => Ok(error_at(gw, ApiError::not_found(key), at)),
    }
}

/// An error answer to a read, with the cursor of what the read saw (a 404 or
/// 412 is a read too), counted as the error it is.
fn error_at(gw: &Gateway, e: ApiError, at: Cursor) -> Response {
    gw.metrics.errors.inc();
    with_cursor(e.into_response(), at)
}

pub(super) async fn delete_key(
    gw: &Gateway,
    key: &str,
    ack: Ack,
    expect: Expect,
) -> Result<Response, ApiError> {
    check_key(key)?;
    let (existed, c) = gw.delete(key, ack, expect).await?;
    if !existed {
        return Err(ApiError::not_found(key));
    }
    Ok(with_cursor(
        Json(json!({"ok": true, "key": key, "cursor": cursor_text(c)})).into_response(),
        c,
    ))
}

/// The value of a key
///
/// Raw bytes with its `ETag`; or, with `?history=N`, up to N versions
/// (JSON, base64, newest first).
#[utoipa::path(get, path = "/v1/kv/{*key}", tag = "kv",
    params(api::KeyPath, api::ReadQuery, api::HistoryQuery, api::SessionHeader, api::Preconditions),
    responses(
        api::Common,
        (status = 200, description = "The value, or its history",
            content(
                (api::Binary = "application/octet-stream"),
                (api::History = "application/json"),
            ),
            headers(("ETag" = String), ("X-OurKV-Cursor" = String))),
        (status = 304, description = "If-None-Match names the current version (or is *)",
            headers(("ETag" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, response = api::NotFound),
        (status = 412, response = api::PreconditionFailed),
        (status = 500, response = api::ServerError),
        (status = 409, response = api::CursorAhead),
        (status = 504, response = api::GatewayTimeout),
    ))]
pub(super) async fn kv_get(State(gw): Gw, req: axum::extract::Request) -> Response {
    // The request itself, not its parts as extractors (each a copy): this
    // is the hottest route. (Its empty body is not `Sync`: dropped here.)
    let (req, _) = req.into_parts();
    let r = async {
        let key = path_key(&req.uri)?;
        let q = parse_pairs(req.uri.query().unwrap_or_default().as_bytes())?;
        get_value(&gw, &key, &q, &req.headers).await
    }
    .await;
    counted(&gw, r)
}

/// Store the body under a key
///
/// Up to `--max-value-bytes` (16 MiB by default). `?ttl=` expires it,
/// `?lease=` ties it to a lease; `If-Match` / `If-None-Match` make it a
/// compare-and-swap.
#[utoipa::path(put, path = "/v1/kv/{*key}", tag = "kv",
    params(api::KeyPath, api::AckQuery, api::LifetimeQuery, api::Preconditions),
    request_body(content = api::Binary, content_type = "application/octet-stream"),
    responses(
        api::Common,
        (status = 200, description = "Stored", body = api::Written,
            headers(("ETag" = String), ("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, description = "no_lease: the lease named does not exist", body = api::ErrorBody),
        (status = 408, response = api::RequestTimeout),
        (status = 412, response = api::PreconditionFailed),
        (status = 413, response = api::TooLarge),
        (status = 422, description = "`ttl` and `lease` together, or `If-Match` and `If-None-Match`", body = api::ErrorBody),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn kv_put(
    State(gw): Gw,
    uri: axum::http::Uri,
    headers: HeaderMap,
    q: RawQuery,
    body: Bytes,
) -> Response {
    let r = async {
        let key = path_key(&uri)?;
        let q = query(&q)?;
        let ttl_ms = ttl_of(&q)?;
        let lease = super::lease::lease_of(&q)?;
        // Each valid alone, not together: 422.
        if ttl_ms != 0 && lease != 0 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "a key takes ?ttl= or ?lease=, not both: a lease has its own time to live",
            ));
        }
        let (c, version) = gw
            .write(&key, body, ack_of(&q)?, expectation(&headers)?, ttl_ms, lease)
            .await?;
        Ok(with_etag(
            with_cursor(
                Json(json!({"ok": true, "key": key, "cursor": cursor_text(c), "etag": version.etag()})).into_response(),
                c,
            ),
            version,
        ))
    }
    .await;
    counted(&gw, r)
}

/// Delete a key
///
/// `If-Match` makes it a compare-and-delete.
#[utoipa::path(delete, path = "/v1/kv/{*key}", tag = "kv",
    params(api::KeyPath, api::AckQuery, api::Preconditions),
    responses(
        api::Common,
        (status = 200, description = "Deleted", body = api::Written,
            headers(("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, response = api::NotFound),
        (status = 408, response = api::RequestTimeout),
        (status = 412, response = api::PreconditionFailed),
        (status = 413, response = api::TooLarge),
        (status = 422, description = "`If-Match` and `If-None-Match` together", body = api::ErrorBody),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn kv_delete(
    State(gw): Gw,
    uri: axum::http::Uri,
    headers: HeaderMap,
    q: RawQuery,
) -> Response {
    let r = async {
        let key = path_key(&uri)?;
        let q = query(&q)?;
        delete_key(&gw, &key, ack_of(&q)?, expectation(&headers)?).await
    }
    .await;
    counted(&gw, r)
}

/// Keys with a prefix
///
/// Ascending, a page at a time: pass `next` as `after` for the next page.
#[utoipa::path(get, path = "/v1/kv", tag = "kv",
    params(api::ListQuery, api::ReadQuery, api::SessionHeader),
    responses(
        api::Common,
        (status = 200, description = "A page of keys", body = api::KeyList,
            headers(("X-OurKV-Cursor" = String, description = "covers what the read saw"))),
        (status = 400, response = api::BadRequest),
        (status = 500, response = api::ServerError),
        (status = 409, response = api::CursorAhead),
        (status = 504, response = api::GatewayTimeout),
    ))]
pub(super) async fn list(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let prefix = prefix_of(&q)?;
        let limit = match q.get("limit")? {
            Some(l) => bounded(l, "limit")?,
            None => 100,
        };
        let after = q.get("after")?.map(str::to_string);
        let min = gw.min_cursor(&q, &headers)?;
        let (keys, seen) = gw
            .read(min, |n, c| {
                gw.client.list(n, &prefix, after.as_deref(), limit, c)
            })
            .await?;
        let next = (keys.len() == limit as usize)
            .then(|| keys.last().cloned())
            .flatten();
        Ok(with_cursor(
            Json(json!({"keys": keys, "next": next})).into_response(),
            min.covered_by(seen),
        ))
    }
    .await;
    counted(&gw, r)
}

/// A count parameter (`limit`, `history`): 1 to 1000; anything else is
/// refused rather than silently changed.
fn bounded(v: &str, name: &str) -> Result<u32, ApiError> {
    match v.parse::<u32>() {
        Ok(n @ 1..=1000) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be a number from 1 to 1000, not {v:?}"
        ))),
    }
}

/// A record by its OurDB id: key and base64 value
#[utoipa::path(get, path = "/v1/records/{id}", tag = "kv",
    params(api::RecordPath, api::ReadQuery, api::SessionHeader),
    responses(
        api::Common,
        (status = 200, description = "The record", body = api::Record,
            headers(("X-OurKV-Cursor" = String, description = "covers what the read saw"))),
        (status = 400, response = api::BadRequest),
        (status = 404, response = api::NotFound),
        (status = 500, response = api::ServerError),
        (status = 409, response = api::CursorAhead),
        (status = 504, response = api::GatewayTimeout),
    ))]
pub(super) async fn by_id(
    State(gw): Gw,
    uri: axum::http::Uri,
    headers: HeaderMap,
    q: RawQuery,
) -> Response {
    let r = async {
        let q = query(&q)?;
        let id = uri.path().strip_prefix("/v1/records/").unwrap_or_default();
        let id: u32 = id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("record id {id:?} is not a number")))?;
        let min = gw.min_cursor(&q, &headers)?;
        let (entry, seen) = gw.read(min, |n, c| gw.client.by_id(n, id, c)).await?;
        let at = min.covered_by(seen);
        Ok(match entry {
            Some((key, value)) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = json!({"id": id, "key": key, "value": b64.encode(value)});
                with_cursor(Json(body).into_response(), at)
            }
            None => {
                let e = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("record {id} not found"),
                );
                error_at(&gw, e, at)
            }
        })
    }
    .await;
    counted(&gw, r)
}
