//! Error answers: a status, a short code and a message, as JSON.

use super::*;

pub(super) fn precondition_failed() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "the key's current version is not the one expected",
    )
}

/// An error answer: status and `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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
            replication::Error::Remote { code, message } if code == "lagging" => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            replication::Error::Remote { message, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            e => ApiError::unavailable(format!("no node answered: {e}")),
        }
    }
    pub(super) fn from_write(e: replication::Error) -> ApiError {
        match e {
            replication::Error::Remote { code, message } if code == "precondition" => {
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    message,
                )
            }
            replication::Error::Remote { message, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", message)
            }
            e => ApiError::unavailable(format!("the master is unreachable: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut r = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
