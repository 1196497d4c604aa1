//! What requests carry besides the key: parameters, cursors, versions.

use super::*;

pub(super) type Gw = State<Arc<Gateway>>;

pub(super) fn counted<T: IntoResponse>(gw: &Gateway, r: Result<T, ApiError>) -> Response {
    gw.requests.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(v) => v.into_response(),
        Err(e) => {
            gw.errors.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

pub(super) fn with_etag(mut r: Response, v: Version) -> Response {
    if let Ok(h) = HeaderValue::from_str(&v.etag()) {
        r.headers_mut().insert(header::ETAG, h);
    }
    r
}

/// `If-Match: "etag"` or `If-None-Match: *` as a write condition. An entity
/// tag this gateway did not make can match nothing.
pub(super) fn expectation(headers: &HeaderMap) -> Result<Expect, ApiError> {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Expect::Absent),
            _ => Err(ApiError::bad_request("If-None-Match supports only *")),
        };
    }
    match headers.get(header::IF_MATCH) {
        None => Ok(Expect::Any),
        Some(v) => {
            let tag = v.to_str().unwrap_or_default();
            Ok(Expect::Version(Version::from_etag(tag).unwrap_or(
                Version {
                    epoch: u64::MAX,
                    at: ourdb::Location::NONE,
                },
            )))
        }
    }
}

pub(super) fn with_cursor(mut r: Response, c: Cursor) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cursor_text(c)) {
        r.headers_mut().insert(CURSOR_HEADER, v);
    }
    r
}

/// Percent-decodes `raw` to bytes, without loss (no U+FFFD for bytes that
/// are not UTF-8), refusing malformed escapes (which lenient parsers keep as
/// literal text). In forms and queries `+` is a space; in paths it is itself.
pub(super) fn percent_decode(raw: &[u8], plus_is_space: bool) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    raw.get(i + 1).and_then(|&b| hex(b)),
                    raw.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "invalid percent-encoding at byte {i}"
                        )))
                    }
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` pairs (a form body or a query):
/// names must be UTF-8, values are kept as the bytes they encode.
pub(super) fn parse_pairs(raw: &[u8]) -> Result<Params, ApiError> {
    let mut pairs = Vec::new();
    for part in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match part.iter().position(|&b| b == b'=') {
            Some(at) => (&part[..at], &part[at + 1..]),
            None => (part, &b""[..]),
        };
        let name = String::from_utf8(percent_decode(name, true)?)
            .map_err(|_| ApiError::bad_request("a parameter name is not valid UTF-8"))?;
        pairs.push((name, percent_decode(value, true)?));
    }
    Ok(Params(pairs))
}

/// Query or form parameters in order. A request has a handful: a list beats
/// a hash map here.
pub(super) struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    /// The bytes of parameter `name`. A name given twice is refused: which
    /// one was meant cannot be told (`key=a&key=b` on a delete).
    pub(super) fn bytes(&self, name: &str) -> Result<Option<&[u8]>, ApiError> {
        let mut it = self.0.iter().filter(|(k, _)| k == name);
        let first = it.next();
        if it.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "parameter {name:?} is given more than once"
            )));
        }
        Ok(first.map(|(_, v)| v.as_slice()))
    }

    /// Parameter `name` as text; bytes that are not UTF-8 are refused.
    pub(super) fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.bytes(name)?
            .map(|b| {
                std::str::from_utf8(b).map_err(|_| {
                    ApiError::bad_request(format!("parameter {name:?} is not valid UTF-8"))
                })
            })
            .transpose()
    }
}

pub(super) fn query(q: &RawQuery) -> Result<Params, ApiError> {
    parse_pairs(q.0.as_deref().unwrap_or_default().as_bytes())
}

pub(super) fn field(pairs: &Params, name: &str) -> Result<String, ApiError> {
    pairs
        .get(name)?
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request(format!("missing form field {name:?}")))
}

/// The key of a `/v1/kv/{key}` request, from the raw path by the same rule
/// as forms (strict escapes, UTF-8), so `a%ZZ` is refused on both.
pub(super) fn path_key(uri: &axum::http::Uri) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    String::from_utf8(percent_decode(raw.as_bytes(), false)?)
        .map_err(|_| ApiError::bad_request("the key is not valid UTF-8"))
}

pub(super) fn parse_cursor(s: &str) -> Option<Cursor> {
    Cursor::parse(s)
}

pub(super) fn cursor_text(c: Cursor) -> String {
    c.to_string()
}

pub(super) fn check_key(key: &str) -> Result<(), ApiError> {
    ourdb::keyed::check_key(key).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(super) fn ack_of(params: &Params) -> Result<Ack, ApiError> {
    match params.get("ack")? {
        None | Some("master") => Ok(Ack::Master),
        Some("all") => Ok(Ack::All),
        Some(other) => Err(ApiError::bad_request(format!(
            "ack must be master or all, not {other:?}"
        ))),
    }
}
