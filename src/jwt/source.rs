//! Where the token travels: `Authorization: Bearer`, a cookie or a named header.

use std::borrow::Cow;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};

use super::reject::Rejection;

/// Where [`JwtAuthLayer`](super::JwtAuthLayer) looks for the token.
///
/// The default is [`TokenSource::Bearer`]. With several sources configured, a request
/// that carries a token in more than one of them is answered `400 invalid_request`
/// (RFC 6750 §2: clients must not use more than one method).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1). The scheme is matched
    /// case-insensitively (RFC 7235 §2.1), so `bearer` works too; one or more spaces or
    /// tabs may separate it from the token. Another scheme (e.g. `Basic`) counts as no
    /// token. Two `Authorization` headers, `Bearer` without a token or a token with
    /// characters outside RFC 6750's `b64token` are `400 invalid_request`.
    Bearer,
    /// A cookie of this name, e.g. an `HttpOnly` cookie set at login. An empty cookie
    /// value (a cookie cleared at logout) counts as no token; the same cookie name twice
    /// is `400 invalid_request` (it could be a cookie planted by a sibling domain).
    Cookie(String),
    /// A header of this name holding the bare token (no scheme). Two such headers, an
    /// empty value or characters outside `b64token` are `400 invalid_request`.
    Header(HeaderName),
}

impl TokenSource {
    /// A cookie of this name.
    pub fn cookie(name: impl Into<String>) -> Self {
        Self::Cookie(name.into())
    }

    /// A header of this name holding the bare token.
    pub fn header(name: HeaderName) -> Self {
        Self::Header(name)
    }

    fn find<'a>(&self, headers: &'a HeaderMap) -> Result<Option<Cow<'a, str>>, Rejection> {
        match self {
            Self::Bearer => bearer(headers).map(|t| t.map(Cow::Borrowed)),
            Self::Cookie(name) => cookie(headers, name),
            Self::Header(name) => header(headers, name).map(|t| t.map(Cow::Borrowed)),
        }
    }
}

/// The token of a request: `Ok(None)` when none of the sources holds one.
pub(crate) fn extract<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    let mut found = None;
    for source in sources {
        if let Some(token) = source.find(headers)? {
            if found.is_some() {
                return Err(Rejection::InvalidRequest(
                    "the token was sent in more than one way",
                ));
            }
            found = Some(token);
        }
    }
    Ok(found)
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // A table lookup per byte, not a chain of comparisons: every request runs this over
    // its whole token.
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The bytes of a `b64token` body.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Rejection::InvalidRequest("malformed Authorization header"))?
        .trim_matches(is_ws);
    if value.is_empty() {
        return Err(Rejection::InvalidRequest("empty Authorization header"));
    }
    let (scheme, rest) = value.split_once(is_ws).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another authentication scheme: the client did not send a bearer token.
        return Ok(None);
    }
    let token = rest.trim_start_matches(is_ws);
    if !is_b64token(token) {
        return Err(Rejection::InvalidRequest("malformed bearer token"));
    }
    Ok(Some(token))
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, Rejection> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::InvalidRequest("more than one token header"));
    }
    let token = value
        .to_str()
        .map_err(|_| Rejection::InvalidRequest("malformed token header"))?
        .trim_matches(is_ws);
    if !is_b64token(token) {
        return Err(Rejection::InvalidRequest("malformed token header"));
    }
    Ok(Some(token))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let mut found: Option<&'a [u8]> = None;
    // HTTP/2 may split cookies over several `Cookie` headers; look at all of them.
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(Rejection::InvalidRequest("the token cookie was sent twice"));
            }
            found = Some(pair[eq + 1..].trim_ascii());
        }
    }
    let Some(raw) = found else {
        return Ok(None);
    };
    // RFC 6265 allows the value in double quotes.
    let raw = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(raw);
    if raw.is_empty() {
        return Ok(None);
    }
    let token = std::str::from_utf8(raw)
        .ok()
        .filter(|t| is_b64token(t))
        .ok_or(Rejection::InvalidRequest("malformed token cookie"))?;
    Ok(Some(Cow::Borrowed(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;

    #[test]
    fn b64token_table_is_rfc_6750() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(B64TOKEN[usize::from(b)], rfc, "byte {b:#04x}");
        }
        assert!(is_b64token("abc.DEF-_~+/9=="));
        assert!(!is_b64token("==="));
        assert!(!is_b64token("ab=c"));
        assert!(!is_b64token("a b"));
        assert!(!is_b64token("ab\u{e9}"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn bearer_of(value: &str) -> Result<Option<String>, Rejection> {
        let map = headers(&[("authorization", value)]);
        extract(&[TokenSource::Bearer], &map).map(|t| t.map(|t| t.into_owned()))
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_of("Bearer a.b.c"), Ok(Some("a.b.c".into())));
        assert_eq!(bearer_of("bearer a.b.c"), Ok(Some("a.b.c".into())));
        assert_eq!(bearer_of("BEARER  a.b.c"), Ok(Some("a.b.c".into())));
        assert_eq!(bearer_of("Basic dXNlcjpwYXNz"), Ok(None));
        assert!(matches!(
            bearer_of("Bearer"),
            Err(Rejection::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_of("Bearer a b"),
            Err(Rejection::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_of("Bearer a,b"),
            Err(Rejection::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_of("Bearer ==="),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn cookie_parsing() {
        let sources = [TokenSource::cookie("at")];
        let get = |cookies: &[&str]| {
            let pairs: Vec<_> = cookies.iter().map(|c| ("cookie", *c)).collect();
            let map = headers(&pairs);
            extract(&sources, &map).map(|t| t.map(|t| t.into_owned()))
        };
        assert_eq!(get(&["x=1; at=a.b.c; y=2"]), Ok(Some("a.b.c".into())));
        assert_eq!(get(&["x=1", "at=\"a.b.c\""]), Ok(Some("a.b.c".into())));
        assert_eq!(get(&["at="]), Ok(None));
        assert_eq!(get(&["att=a.b.c"]), Ok(None));
        assert!(matches!(
            get(&["at=a; at=b"]),
            Err(Rejection::InvalidRequest(_))
        ));
        assert!(matches!(
            get(&["at=a%20b"]),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn two_ways_is_invalid_request() {
        let map = headers(&[("authorization", "Bearer a.b.c"), ("cookie", "at=a.b.c")]);
        let sources = [TokenSource::Bearer, TokenSource::cookie("at")];
        assert!(matches!(
            extract(&sources, &map),
            Err(Rejection::InvalidRequest(_))
        ));
    }
}
