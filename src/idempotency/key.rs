//! The `Idempotency-Key` header, the store key it maps to, and the request fingerprint.

use http::{HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};

use super::scope::Caller;

/// The longest key accepted, in characters (the draft leaves the limit to the server;
/// Stripe allows 255).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// Why a key header was refused; the message goes into the 400 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadKey(pub(crate) &'static str);

/// Reads the key from `headers`. `Ok(None)` when the header is absent.
///
/// Accepts the draft's structured-field string (`"abc"`, with `\"` and `\\` escapes) and a
/// bare token of visible ASCII. Either way the key is 1 to 255 printable ASCII characters.
pub(crate) fn parse(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, BadKey> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadKey("send exactly one idempotency key header"));
    }
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| BadKey("the idempotency key must be printable ASCII"))?
        .trim_matches([' ', '\t']);
    let key = match text.strip_prefix('"') {
        Some(rest) => parse_sf_string(rest)?,
        None => {
            if !text.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
                return Err(BadKey(
                    "the idempotency key must be printable ASCII without spaces or quotes, or a quoted string",
                ));
            }
            text.to_owned()
        }
    };
    if key.is_empty() {
        return Err(BadKey("the idempotency key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(BadKey("the idempotency key is longer than 255 characters"));
    }
    Ok(Some(key))
}

/// The rest of an RFC 8941 sf-string after its opening quote.
fn parse_sf_string(rest: &str) -> Result<String, BadKey> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return Err(BadKey("invalid escape in the quoted idempotency key")),
            },
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err(BadKey("unexpected text after the quoted idempotency key"))
                };
            }
            ' '..='~' => out.push(c),
            _ => return Err(BadKey("the idempotency key must be printable ASCII")),
        }
    }
    Err(BadKey("unterminated quoted idempotency key"))
}

/// Feeds `part` into `hasher` with its length first, so that no two different sequences of
/// parts hash the same bytes.
fn feed(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

/// The store key of a request: the caller (see [`Scope`](super::Scope)), the method, the
/// path and the client's key, hashed, so that one caller can never reach another's record
/// and no client text reaches the store's key space.
pub(crate) fn store_key(
    prefix: &str,
    caller: &Caller,
    method: &Method,
    path: &str,
    key: &str,
) -> String {
    let mut hasher = Sha256::new();
    // A tag per kind of caller, so that a subject and a custom scope never collide. The
    // subject and shared encodings are those of earlier versions: their records stay valid.
    match caller {
        Caller::Shared => hasher.update([0]),
        Caller::Subject(sub) => {
            hasher.update([1]);
            feed(&mut hasher, sub.as_bytes());
        }
        Caller::Custom(scope) => {
            hasher.update([2]);
            feed(&mut hasher, scope.as_bytes());
        }
    }
    feed(&mut hasher, method.as_str().as_bytes());
    feed(&mut hasher, path.as_bytes());
    feed(&mut hasher, key.as_bytes());
    format!("{prefix}{{{}}}", crate::id::hex(&hasher.finalize()))
}

/// SHA-256 of what makes two requests "the same": method, path and query, the configured
/// headers (in the configured order, every value) and the body.
pub(crate) fn fingerprint(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    names: &[HeaderName],
    body: &[u8],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    feed(&mut hasher, method.as_str().as_bytes());
    feed(&mut hasher, path_and_query.as_bytes());
    for name in names {
        feed(&mut hasher, name.as_str().as_bytes());
        let values = headers.get_all(name);
        hasher.update((values.iter().count() as u64).to_be_bytes());
        for value in values {
            feed(&mut hasher, value.as_bytes());
        }
    }
    feed(&mut hasher, body);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(raw: &[u8]) -> Result<Option<String>, BadKey> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            HeaderValue::from_bytes(raw).expect("valid header bytes"),
        );
        parse(&headers, &HeaderName::from_static("idempotency-key"))
    }

    #[test]
    fn accepts_bare_and_quoted_keys() {
        assert_eq!(key(b"abc-123").unwrap().as_deref(), Some("abc-123"));
        assert_eq!(key(b" abc ").unwrap().as_deref(), Some("abc"));
        assert_eq!(key(b"\"a b\"").unwrap().as_deref(), Some("a b"));
        assert_eq!(key(br#""a\"b\\c""#).unwrap().as_deref(), Some(r#"a"b\c"#));
        assert_eq!(
            key("x".repeat(255).as_bytes()).unwrap().map(|k| k.len()),
            Some(255)
        );
        assert_eq!(
            parse(&HeaderMap::new(), &HeaderName::from_static("k")),
            Ok(None)
        );
    }

    #[test]
    fn refuses_malformed_keys() {
        for raw in [
            &b""[..],
            b"\"\"",
            b"a b",
            b"\"abc",
            b"\"abc\"x",
            b"\"a\\nb\"",
            b"ab\"c",
            b"caf\xc3\xa9",
            b"\"caf\xc3\xa9\"",
            b"a\tb",
        ] {
            assert!(
                key(raw).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(key("x".repeat(256).as_bytes()).is_err());
        assert!(key(format!("\"{}\"", "x".repeat(256)).as_bytes()).is_err());
        let mut headers = HeaderMap::new();
        headers.append("k", HeaderValue::from_static("a"));
        headers.append("k", HeaderValue::from_static("b"));
        assert!(parse(&headers, &HeaderName::from_static("k")).is_err());
    }

    #[test]
    fn store_keys_are_scoped_by_caller_method_and_path() {
        let alice = Caller::Subject("alice".into());
        let bob = Caller::Subject("bob".into());
        let k = |c: &Caller, m: &Method, p| store_key("idem:", c, m, p, "k1");
        let base = k(&alice, &Method::POST, "/pay");
        assert!(base.starts_with("idem:{") && base.ends_with('}'));
        assert_ne!(base, k(&bob, &Method::POST, "/pay"));
        assert_ne!(base, k(&Caller::Shared, &Method::POST, "/pay"));
        assert_ne!(
            base,
            k(&Caller::Custom("alice".into()), &Method::POST, "/pay")
        );
        assert_ne!(
            k(&Caller::Custom("t1".into()), &Method::POST, "/pay"),
            k(&Caller::Custom("t2".into()), &Method::POST, "/pay")
        );
        assert_ne!(base, k(&alice, &Method::PATCH, "/pay"));
        assert_ne!(base, k(&alice, &Method::POST, "/pay2"));
        assert_eq!(base, k(&alice, &Method::POST, "/pay"));
    }

    #[test]
    fn fingerprints_cover_method_path_headers_and_body() {
        let names = [HeaderName::from_static("x-tenant")];
        let mut h1 = HeaderMap::new();
        h1.insert("x-tenant", HeaderValue::from_static("a"));
        let mut h2 = HeaderMap::new();
        h2.insert("x-tenant", HeaderValue::from_static("b"));
        let f = |m: &Method, p, h, b: &[u8]| fingerprint(m, p, h, &names, b);
        let base = f(&Method::POST, "/p?x=1", &h1, b"{}");
        assert_eq!(base, f(&Method::POST, "/p?x=1", &h1, b"{}"));
        assert_ne!(base, f(&Method::PATCH, "/p?x=1", &h1, b"{}"));
        assert_ne!(base, f(&Method::POST, "/p?x=2", &h1, b"{}"));
        assert_ne!(base, f(&Method::POST, "/p?x=1", &h2, b"{}"));
        assert_ne!(base, f(&Method::POST, "/p?x=1", &h1, b"{ }"));
    }
}
