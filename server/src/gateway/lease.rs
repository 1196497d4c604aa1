//! Leases: `POST /v1/lease?ttl=`, `POST /v1/lease/{id}/keepalive`,
//! `GET` and `DELETE /v1/lease/{id}`; keys attach with `PUT ?lease=ID`
//! (docs/API.md, "Leases"). The master decides every deadline.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;

use super::*;
use replication::msg::writes;
use replication::{LeaseInfo, LeaseOp};

/// `?lease=`: a lease id (0 when absent).
pub(super) fn lease_of(params: &Params) -> Result<u32, ApiError> {
    match params.get("lease")? {
        None => Ok(0),
        Some(text) => lease_id(text),
    }
}

/// A lease id as a client writes it: digits only (no sign), 1 to
/// `u32::MAX`.
fn lease_id(text: &str) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(id @ 1..) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "a lease id is a number from 1 to {}, not {text:?}",
            u32::MAX
        ))),
    }
}

/// The lease id of a path. A segment that is no UTF-8 gets the same JSON
/// 400, not axum's plain-text rejection.
fn lease_path(path: Result<Path<String>, PathRejection>) -> Result<u32, ApiError> {
    match path {
        Ok(Path(text)) => lease_id(&text),
        Err(_) => lease_id("(not UTF-8)"),
    }
}

/// `?ack=` for a lease request: `all` unless asked otherwise. A client
/// holds a lease's id and deadline, so a failover must keep both: with
/// `ack=master` a grant the new master never got would let it hand the
/// same id to another client.
fn lease_ack(params: &Params) -> Result<Ack, ApiError> {
    match params.get("ack")? {
        None => Ok(Ack::All),
        Some(_) => ack_of(params),
    }
}

/// Runs a lease request on the master.
async fn on_master(gw: &Gateway, op: LeaseOp, ack: Ack) -> Result<writes::LeaseIs, ApiError> {
    // Only a description may go again after a transport failure: the
    // others write.
    let idempotent = matches!(op, LeaseOp::Info { .. });
    let req = writes::Lease { op, ack };
    gw.routes
        .on_master(idempotent, |m| gw.client.call(m, req.clone()))
        .await
        .map_err(ApiError::from_write)
}

fn lease_json(l: &LeaseInfo, keys: bool) -> serde_json::Value {
    let mut o = json!({
        "id": l.id,
        "ttl_ms": l.ttl_ms,
        "remaining_ms": l.remaining_ms,
        "key_count": l.key_count,
    });
    if keys {
        o["keys"] = json!(l.keys);
    }
    o
}

/// The answer to a lease request: its JSON, its cursor.
fn answer(status: StatusCode, done: writes::LeaseIs, keys: bool) -> Response {
    let mut body = lease_json(&done.lease, keys);
    body["cursor"] = json!(cursor_text(done.cursor));
    with_cursor((status, Json(body)).into_response(), done.cursor)
}

/// Grant a lease
///
/// Keys attached to it (`PUT /v1/kv/{key}?lease=ID`) go when it ends.
#[utoipa::path(post, path = "/v1/lease", tag = "lease",
    params(api::GrantQuery, api::LeaseAckQuery),
    responses(
        api::Common,
        (status = 201, description = "Granted", body = api::Lease, headers(("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 408, response = api::RequestTimeout),
        (status = 413, response = api::TooLarge),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn grant(State(gw): Gw, q: RawQuery) -> Response {
    let r = async {
        let q = query(&q)?;
        let ttl_ms = ttl_of(&q)?;
        if ttl_ms == 0 {
            return Err(ApiError::bad_request(
                "a lease needs ?ttl=, a duration from 1ms to 365d such as 10s",
            ));
        }
        let done = on_master(&gw, LeaseOp::Grant { ttl_ms }, lease_ack(&q)?).await?;
        Ok(answer(StatusCode::CREATED, done, false))
    }
    .await;
    counted(&gw, r)
}

/// Keep a lease alive: its deadline becomes its time to live from now
#[utoipa::path(post, path = "/v1/lease/{id}/keepalive", tag = "lease",
    params(api::LeasePath, api::LeaseAckQuery),
    responses(
        api::Common,
        (status = 200, description = "Kept alive", body = api::Lease, headers(("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, description = "no_lease: never granted, revoked, expired, or past its deadline", body = api::ErrorBody),
        (status = 408, response = api::RequestTimeout),
        (status = 413, response = api::TooLarge),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn keep_alive(
    State(gw): Gw,
    id: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Response {
    let r = async {
        let q = query(&q)?;
        let id = lease_path(id)?;
        let done = on_master(&gw, LeaseOp::KeepAlive { id }, lease_ack(&q)?).await?;
        Ok(answer(StatusCode::OK, done, false))
    }
    .await;
    counted(&gw, r)
}

/// A lease: its time to live, what remains of it, its keys
#[utoipa::path(get, path = "/v1/lease/{id}", tag = "lease",
    params(api::LeasePath),
    responses(
        api::Common,
        (status = 200, description = "The lease, with its keys", body = api::Lease),
        (status = 400, response = api::BadRequest),
        (status = 404, description = "no_lease: never granted, revoked, or expired", body = api::ErrorBody),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn info(State(gw): Gw, id: Result<Path<String>, PathRejection>) -> Response {
    let r = async {
        let id = lease_path(id)?;
        let done = on_master(&gw, LeaseOp::Info { id }, Ack::Master).await?;
        Ok(answer(StatusCode::OK, done, true))
    }
    .await;
    counted(&gw, r)
}

/// Revoke a lease now, deleting its keys
#[utoipa::path(delete, path = "/v1/lease/{id}", tag = "lease",
    params(api::LeasePath, api::LeaseAckQuery),
    responses(
        api::Common,
        (status = 200, description = "Revoked: `keys` lists the keys deleted, `remaining_ms` is 0",
            body = api::Lease, headers(("X-OurKV-Cursor" = String))),
        (status = 400, response = api::BadRequest),
        (status = 404, description = "no_lease: never granted, revoked, or expired", body = api::ErrorBody),
        (status = 408, response = api::RequestTimeout),
        (status = 413, response = api::TooLarge),
        (status = 500, response = api::ServerError),
    ))]
pub(super) async fn revoke(
    State(gw): Gw,
    id: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Response {
    let r = async {
        let q = query(&q)?;
        let id = lease_path(id)?;
        let done = on_master(&gw, LeaseOp::Revoke { id }, lease_ack(&q)?).await?;
        // The keys listed are those the revocation deleted.
        Ok(answer(StatusCode::OK, done, true))
    }
    .await;
    counted(&gw, r)
}
