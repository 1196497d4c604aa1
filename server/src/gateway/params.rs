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

/// `application/x-www-form-urlencoded` pairs, refusing malformed percent
/// escapes (which lenient parsers keep as literal text).
pub(super) fn parse_pairs(raw: &[u8]) -> Result<Params, ApiError> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let ok = raw.len() > i + 2
                && raw[i + 1].is_ascii_hexdigit()
                && raw[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "invalid percent-encoding at byte {i}"
                )));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(Params(
        form_urlencoded::parse(raw)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

/// Query or form parameters in order; a name given twice means its last
/// value. A request has a handful: a list beats a hash map here.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

pub(super) fn query(q: &RawQuery) -> Result<Params, ApiError> {
    parse_pairs(q.0.as_deref().unwrap_or_default().as_bytes())
}

pub(super) fn field(pairs: &Params, name: &str) -> Result<String, ApiError> {
    pairs
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("missing form field {name:?}")))
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
    params
        .get("ack")
        .map(|a| a.parse::<Ack>())
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .map(Option::unwrap_or_default)
}
