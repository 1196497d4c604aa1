//! Error answers: a status, a short code and a message, as JSON.

use super::*;
use replication::Code;

/// An error answer: status and `{"error":{"code","message"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(super) message: String,
    /// More of the answer, beside `error` (what is known without a master).
    extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// A failure another node may not have: no node answered, or none had
    /// reached the cursor in time.
    pub(super) fn may_pass(&self) -> bool {
        matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        )
    }

    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }
    /// The answer also carries `key`: `value`.
    pub(super) fn with(mut self, key: &str, value: serde_json::Value) -> ApiError {
        self.extra.insert(key.into(), value);
        self
    }
    pub(super) fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    pub(super) fn not_found(key: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("key {key:?} not found"),
        )
    }
    pub(super) fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }
    pub(super) fn from_replication(e: replication::Error) -> ApiError {
        match e {
            replication::Error::Remote {
                code: Code::Lagging | Code::NotReached,
                message,
            } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            replication::Error::Remote {
                code: Code::BadRequest,
                message,
            } => ApiError::bad_request(message),
            // A member without a role yet, or a master just replaced.
            replication::Error::Remote {
                code: Code::NotMaster,
                message,
            } => {
                tracing::info!(%message, "read: no node could answer now");
                ApiError::unavailable(
                    "no node can answer right now (a failover may be under way); retry shortly",
                )
            }
            replication::Error::Remote { message, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            e => {
                // Transport details (TLS, QUIC) go to the log, not to clients.
                tracing::warn!(error = %e, "read: no node answered");
                ApiError::unavailable("no node answered the read; retry shortly")
            }
        }
    }
    pub(super) fn from_write(e: replication::Error) -> ApiError {
        match e {
            replication::Error::Remote {
                code: Code::Precondition,
                message,
            } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                message,
            ),
            replication::Error::Remote {
                code: Code::NotMaster,
                message,
            } => {
                tracing::warn!(%message, "write: no master took it");
                ApiError::unavailable(
                    "no node takes writes right now (a failover may be under way); retry shortly",
                )
            }
            replication::Error::Remote {
                code: Code::Indeterminate,
                message,
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "indeterminate", message),
            replication::Error::Remote {
                code: Code::BadRequest,
                message,
            } => ApiError::bad_request(message),
            replication::Error::Remote {
                code: Code::NoLease,
                message,
            } => ApiError::new(StatusCode::NOT_FOUND, "no_lease", message),
            replication::Error::Remote { message, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", message)
            }
            // Sent, and then the connection ended or the answer never came.
            e @ (replication::Error::Unanswered(_) | replication::Error::Timeout(_)) => {
                tracing::warn!(error = %e, "write: the master did not answer");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "indeterminate",
                    "the master did not answer; the write may or may not have taken effect \
                     (read the key to know)",
                )
            }
            e => {
                tracing::warn!(error = %e, "write: the master is unreachable");
                ApiError::unavailable("the master is unreachable; retry shortly")
            }
        }
    }
}

/// The master did not answer a status or read-index request.
pub(super) fn master_unreachable(e: replication::Error) -> ApiError {
    tracing::warn!(error = %e, "the master is unreachable");
    ApiError::unavailable("the master is unreachable; retry shortly")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert(
            "error".into(),
            json!({"code": self.code, "message": self.message}),
        );
        let body = Json(body);
        let mut r = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
