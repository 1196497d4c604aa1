//! The key-value routes: the seed API, `/v1/kv`, listing, records by id.

use super::*;

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
    let min = gw.min_cursor(q, headers).await?;
    if let Some(depth) = q.get("history")? {
        let depth = bounded(depth, "history")?;
        let values = gw
            .read(min, |n, c| gw.client.history(n, key, depth, c))
            .await?;
        if values.is_empty() {
            return Err(ApiError::not_found(key));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let history: Vec<String> = values.iter().map(|v| b64.encode(v)).collect();
        return Ok(Json(json!({"key": key, "history": history})).into_response());
    }
    let (if_match, if_none_match) = conditions(headers)?;
    let found = gw
        .read(min, |n, c| gw.client.get_versioned(n, key, c))
        .await?;
    let current = found.as_ref().map(|(_, v)| *v);
    // RFC 9110 13.2.2: If-Match first (412), then If-None-Match (304).
    if if_match.as_ref().is_some_and(|c| !meets(c, current)) {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the key's current version is not one If-Match names",
        ));
    }
    match found {
        Some((_, version)) if if_none_match.as_ref().is_some_and(|c| meets(c, current)) => {
            Ok(with_etag(
                with_cursor(StatusCode::NOT_MODIFIED.into_response(), min),
                version,
            ))
        }
        Some((v, version)) => Ok(with_etag(
            with_cursor(
                ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
                min,
            ),
            version,
        )),
        None => Err(ApiError::not_found(key)),
    }
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

pub(super) async fn kv_get(
    State(gw): Gw,
    uri: axum::http::Uri,
    headers: HeaderMap,
    q: RawQuery,
) -> Response {
    let r = async {
        let key = path_key(&uri)?;
        let q = query(&q)?;
        get_value(&gw, &key, &q, &headers).await
    }
    .await;
    counted(&gw, r)
}

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
        if ttl_ms != 0 && lease != 0 {
            return Err(ApiError::bad_request(
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

pub(super) async fn list(State(gw): Gw, headers: HeaderMap, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let prefix = q.get("prefix")?.unwrap_or_default().to_string();
        let limit = match q.get("limit")? {
            Some(l) => bounded(l, "limit")?,
            None => 100,
        };
        let after = q.get("after")?.map(str::to_string);
        let min = gw.min_cursor(&q, &headers).await?;
        let keys = gw
            .read(min, |n, c| {
                gw.client.list(n, &prefix, after.as_deref(), limit, c)
            })
            .await?;
        let next = (keys.len() == limit as usize)
            .then(|| keys.last().cloned())
            .flatten();
        Ok(Json(json!({"keys": keys, "next": next})).into_response())
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
        let min = gw.min_cursor(&q, &headers).await?;
        match gw.read(min, |n, c| gw.client.by_id(n, id, c)).await? {
            Some((key, value)) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                Ok(Json(
                    json!({"id": id, "key": key, "value": b64.encode(value)}),
                ))
            }
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("record {id} not found"),
            )),
        }
    }
    .await;
    counted(&gw, r)
}
