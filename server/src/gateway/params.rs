//! What requests carry besides the key: parameters, cursors, versions.

use super::*;

pub(super) type Gw = State<Arc<Gateway>>;

pub(super) fn counted<T: IntoResponse>(gw: &Gateway, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => v.into_response(),
        Err(e) => {
            gw.metrics.errors.inc();
            e.into_response()
        }
    }
}

pub(super) fn with_etag(mut r: Response, v: Version) -> Response {
    if let Some(h) = header_value(v.as_etag()) {
        r.headers_mut().insert(header::ETAG, h);
    }
    r
}

/// A short header value (a cursor, an entity tag) written straight into
/// its buffer: one allocation, not a string and then its copy.
fn header_value(text: impl std::fmt::Display) -> Option<HeaderValue> {
    let mut buf = [0u8; 64];
    let mut rest = &mut buf[..];
    std::io::Write::write_fmt(&mut rest, format_args!("{text}")).ok()?;
    let n = 64 - rest.len();
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// A precondition header (RFC 9110 13.1.1-2): `*`, or a list of entity
/// tags. `W/` marks a weak tag: it never matches in `If-Match` (strong
/// comparison) and matches like its strong twin in `If-None-Match` (weak
/// comparison). Tags this API did not make match nothing.
pub(super) enum Condition {
    Star,
    Tags(Vec<Version>),
}

fn condition(
    headers: &HeaderMap,
    name: header::HeaderName,
    strong: bool,
) -> Result<Option<Condition>, ApiError> {
    let mut values = headers.get_all(&name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let bad =
        || ApiError::bad_request(format!("{name} must be * or a list of entity tags (\"…\")"));
    let mut tags = Vec::new();
    let mut star = false;
    // Any tag at all, ours or not: `*` beside one is refused either way.
    let mut listed = false;
    for v in values {
        match entity_tags(v.as_bytes()).ok_or_else(bad)? {
            None => star = true,
            Some(list) => {
                listed = true;
                for (weak, tag) in list {
                    // Tags this API did not make match nothing.
                    if !(weak && strong) {
                        if let Some(v) = std::str::from_utf8(tag).ok().and_then(Version::from_etag)
                        {
                            tags.push(v);
                        }
                    }
                }
            }
        }
    }
    match (star, listed) {
        (true, false) => Ok(Some(Condition::Star)),
        (true, true) => Err(bad()),
        (false, _) => Ok(Some(Condition::Tags(tags))),
    }
}

/// One precondition header value by RFC 9110's grammar: `*` (`None`), or
/// one or more entity tags (`W/` marks a weak one) separated by commas,
/// with optional spaces and tabs around each. Anything else, an empty
/// value too, is `None` of the outer option. (The OpenAPI document states
/// the same grammar as a pattern.)
#[allow(clippy::type_complexity)]
fn entity_tags(v: &[u8]) -> Option<Option<Vec<(bool, &[u8])>>> {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b))?;
    let end = v.iter().rposition(|b| !ows(b))? + 1;
    let v = &v[start..end];
    if v == b"*" {
        return Some(None);
    }
    let mut tags = Vec::new();
    let mut rest = v;
    loop {
        let (weak, r) = match rest.strip_prefix(b"W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let body = r.strip_prefix(b"\"")?;
        let close = body.iter().position(|&b| b == b'"')?;
        if !body[..close]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b))
        {
            return None;
        }
        tags.push((weak, &r[..close + 2]));
        rest = &body[close + 1..];
        let after = rest.iter().position(|b| !ows(b)).unwrap_or(rest.len());
        rest = &rest[after..];
        if rest.is_empty() {
            return Some(Some(tags));
        }
        rest = rest.strip_prefix(b",")?;
        let after = rest.iter().position(|b| !ows(b)).unwrap_or(rest.len());
        rest = &rest[after..];
    }
}

/// `If-Match` (strong comparison) and `If-None-Match` (weak comparison).
pub(super) fn conditions(
    headers: &HeaderMap,
) -> Result<(Option<Condition>, Option<Condition>), ApiError> {
    Ok((
        condition(headers, header::IF_MATCH, true)?,
        condition(headers, header::IF_NONE_MATCH, false)?,
    ))
}

/// The write condition of `If-Match` or `If-None-Match`.
pub(super) fn expectation(headers: &HeaderMap) -> Result<Expect, ApiError> {
    match conditions(headers)? {
        // Each valid alone, not together on a write: 422.
        (Some(_), Some(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "send If-Match or If-None-Match, not both",
        )),
        (None, None) => Ok(Expect::Any),
        (Some(Condition::Star), None) => Ok(Expect::Present),
        (Some(Condition::Tags(tags)), None) => Ok(Expect::OneOf(tags)),
        (None, Some(Condition::Star)) => Ok(Expect::Absent),
        (None, Some(Condition::Tags(tags))) => Ok(Expect::NoneOf(tags)),
    }
}

/// Whether a key at `current` (absent: `None`) meets a condition.
pub(super) fn meets(c: &Condition, current: Option<Version>) -> bool {
    match c {
        Condition::Star => current.is_some(),
        Condition::Tags(tags) => current.is_some_and(|v| tags.contains(&v)),
    }
}

pub(super) fn with_cursor(mut r: Response, c: Cursor) -> Response {
    if let Some(v) = header_value(c) {
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

/// A cursor as clients send it: `epoch:file:offset`, digits only. A part
/// past its type's range saturates: such a cursor is ahead of any log, as
/// one of its neighbours would be.
pub(super) fn parse_cursor(s: &str) -> Option<Cursor> {
    // Digits only; past u128 is past every type here too.
    let part = |p: &str| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u128>().unwrap_or(u128::MAX))
    };
    let mut it = s.split(':');
    let (e, f, o) = (part(it.next()?)?, part(it.next()?)?, part(it.next()?)?);
    if it.next().is_some() {
        return None;
    }
    Some(Cursor::new(
        u64::try_from(e).unwrap_or(u64::MAX),
        ourdb::Location::new(
            u16::try_from(f).unwrap_or(u16::MAX),
            u32::try_from(o).unwrap_or(u32::MAX),
        ),
    ))
}

pub(super) fn cursor_text(c: Cursor) -> String {
    c.to_string()
}

pub(super) fn check_key(key: &str) -> Result<(), ApiError> {
    ourdb::keyed::check_key(key).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A `prefix` parameter: no key is longer than a key may be, so a longer
/// prefix is a mistake to report, not an empty list.
pub(super) fn prefix_of(params: &Params) -> Result<String, ApiError> {
    let prefix = params.get("prefix")?.unwrap_or_default();
    if prefix.len() > ourdb::keyed::MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "prefix of {} bytes; at most {}",
            prefix.len(),
            ourdb::keyed::MAX_KEY_LEN
        )));
    }
    Ok(prefix.to_string())
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

/// Longest time to live a key may be given.
const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// `?ttl=`: a duration such as `30s`, `500ms`, `2m`, `1h` or `7d` (a bare
/// number is seconds), from 1 ms to 365 days; absent: 0 (no expiry).
pub(super) fn ttl_of(params: &Params) -> Result<u64, ApiError> {
    let Some(text) = params.get("ttl")? else {
        return Ok(0);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "ttl must be a duration from 1ms to 365d such as 30s, 500ms, 2m, 1h, not {text:?}"
        ))
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit_ms) {
        Some(ms @ 1..=MAX_TTL_MS) => Ok(ms),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest cursor and entity tag (every part at its type's maximum)
    /// still fit the header buffer, and read back as what was written.
    #[test]
    fn the_largest_cursor_and_etag_make_headers() {
        let at = ourdb::Location::new(u16::MAX, u32::MAX);
        let c = Cursor::new(u64::MAX, at);
        let r = with_cursor(StatusCode::OK.into_response(), c);
        let text = r.headers()[CURSOR_HEADER].to_str().unwrap();
        assert_eq!(text, "18446744073709551615:65535:4294967295");
        assert_eq!(parse_cursor(text), Some(c));
        let v = Version {
            epoch: u64::MAX,
            at,
        };
        let r = with_etag(StatusCode::OK.into_response(), v);
        let tag = r.headers()[header::ETAG].to_str().unwrap();
        assert_eq!(tag, v.etag());
        assert_eq!(Version::from_etag(tag), Some(v));
    }
}
