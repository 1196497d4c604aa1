//! Per-request layers: the bearer token, and bodies read within bounds.

use super::*;

/// With `--api-token`, every request but `/health` needs
/// `Authorization: Bearer <token>`: a route's service behind the check. A
/// service of its own (not `from_fn`, which boxes the rest of the stack and
/// the future once more per request).
#[derive(Clone)]
pub(super) struct Authorized<S> {
    pub(super) gw: Arc<Gateway>,
    pub(super) inner: S,
}

impl<S> tower::Service<axum::extract::Request> for Authorized<S>
where
    S: tower::Service<axum::extract::Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<S::Future, std::future::Ready<Result<Response, S::Error>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        match refused(&self.gw, &req) {
            None => futures_util::future::Either::Left(self.inner.call(req)),
            Some(r) => futures_util::future::Either::Right(std::future::ready(Ok(r))),
        }
    }
}

/// The 401 answer to a request without the token, if it needs one.
fn refused(gw: &Gateway, req: &axum::extract::Request) -> Option<Response> {
    let token = gw.token.as_ref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 11.1).
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim_start())
        });
    // Compare without an early exit, so timing tells nothing.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    // Liveness and readiness probes carry no data and come without a
    // token; so does the status page's shell (its script sends one).
    let probe = matches!(req.uri().path(), "/health" | "/livez" | "/readyz" | "/");
    if ok || probe {
        return None;
    }
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

/// Reads the whole body, at most `BODY_LIMIT` bytes and within the client
/// timeout: a slow or endless upload gets 408 or 413 and costs no more.
pub(super) async fn read_body(
    State(gw): Gw,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    read_body_upto(gw, req, next, BODY_LIMIT).await
}

/// `read_body` for a value: at most `--max-value-bytes`.
pub(super) async fn read_value_body(
    State(gw): Gw,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = gw.max_value_bytes;
    read_body_upto(gw, req, next, limit).await
}

async fn read_body_upto(
    gw: Arc<Gateway>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
    limit: usize,
) -> Response {
    // A GET or an empty body has nothing to wait for (watches stay open).
    let empty = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    if empty || req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // One buffer that grows as bytes arrive, to the length the body states:
    // no chunk list copied into a second buffer at the end (a 16 MiB value
    // costs 16 MiB here, not twice that), and no memory for bytes a client
    // only announced.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let read = collect_body(body, declared, limit);
    let bytes = match tokio::time::timeout(gw.client_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return match e {
                BodyError::TooLarge => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    if limit == BODY_LIMIT {
                        format!("request bodies are limited to {BODY_LIMIT} bytes")
                    } else {
                        format!("values are limited to {limit} bytes (--max-value-bytes)")
                    },
                ),
                BodyError::Read(e) => {
                    ApiError::bad_request(format!("could not read the request body: {e}"))
                }
            }
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body did not arrive within {:?}",
                    gw.client_timeout
                ),
            )
            .into_response()
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Why a request body was not read.
enum BodyError {
    /// Past the limit (said so by its length, or found so while reading).
    TooLarge,
    /// The client's connection failed or sent a malformed body.
    Read(axum::Error),
}

/// Reads a body of at most `limit` bytes into one buffer. It starts small
/// and at least doubles as bytes arrive (large reallocations remap pages
/// rather than copy them), never past the declared length: memory follows
/// what was received, at most twice it.
async fn collect_body(
    body: axum::body::Body,
    declared: Option<usize>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    const FIRST: usize = 64 << 10;
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let cap = declared.unwrap_or(limit);
    let mut buf: Vec<u8> = Vec::with_capacity(cap.min(FIRST));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            let need = buf.len() + data.len();
            if need > limit {
                return Err(BodyError::TooLarge);
            }
            if need > buf.capacity() {
                let grow_to = need.max(buf.capacity() * 2).min(cap.max(need));
                buf.reserve_exact(grow_to - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}
