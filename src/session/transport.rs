//! How the session id travels: read from the request (cookie, header or the JWT `sid`
//! claim), and put into the response (cookie or header), kept out of shared caches.

use cookie::Cookie;
use http::{header, HeaderValue, Request, Response};

use super::config::{Config, Transport};
use crate::id::is_session_id;
use crate::RegisteredClaims;

/// What the response needs after write-back.
pub(crate) enum CookieAction {
    None,
    Set(String),
    Remove,
}

/// Where the request's session id came from.
#[derive(Debug, Default)]
pub(crate) struct RequestId {
    /// The id, format-checked.
    pub(crate) id: Option<String>,
    /// From the session cookie: only a cookie the client holds is renewed (`Max-Age`).
    pub(crate) from_cookie: bool,
    /// From the JWT `sid` claim: a new session is created under it, and it is never put
    /// into a cookie or header.
    pub(crate) from_claim: bool,
    /// The write tag after the id in the cookie, if any.
    pub(crate) tag: Option<u64>,
}

/// A session cookie's value: the id, alone or followed by `.` and the 16 hex digits of a
/// write tag ([`SessionLayer::cached_reads`](super::SessionLayer::cached_reads)). Anything
/// else is no id.
fn parse_cookie_value(value: &str) -> Option<(&str, Option<u64>)> {
    let (id, tag) = match value.split_once('.') {
        None => (value, None),
        Some((id, tag)) if tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (id, u64::from_str_radix(tag, 16).ok())
        }
        Some(_) => return None,
    };
    is_session_id(id).then_some((id, tag))
}

/// The cookie value for session `id` with write tag `tag`.
fn cookie_value(id: &str, tag: Option<u64>) -> String {
    match tag {
        Some(tag) => format!("{id}.{tag:016x}"),
        None => id.to_owned(),
    }
}

/// The first cookie named `name` in a `Cookie` header value. Only that pair is parsed (by
/// the `cookie` crate, as `Cookie::split_parse` would): the application's other cookies
/// cost a comparison each, not a parse.
fn find_cookie<'a>(header: &'a str, name: &str) -> Option<Cookie<'a>> {
    header.split(';').find_map(|pair| {
        let rest = pair.trim_start().strip_prefix(name)?;
        if !rest.trim_start().starts_with('=') {
            return None;
        }
        Cookie::parse(pair).ok()
    })
}

pub(crate) fn request_id<B>(req: &Request<B>, config: &Config) -> RequestId {
    if config.use_sid_claim {
        if let Some(sid) = req
            .extensions()
            .get::<RegisteredClaims>()
            .and_then(|c| c.sid.as_deref())
        {
            return RequestId {
                id: is_session_id(sid).then(|| sid.to_owned()),
                from_cookie: false,
                from_claim: true,
                tag: None,
            };
        }
    }
    match &config.transport {
        Transport::Header(name) => RequestId {
            id: req
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| is_session_id(v))
                .map(str::to_owned),
            ..RequestId::default()
        },
        Transport::Cookie => {
            let cookie = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| find_cookie(v, &config.cookie_name));
            let parsed = cookie.as_ref().and_then(|c| parse_cookie_value(c.value()));
            RequestId {
                from_cookie: parsed.is_some(),
                id: parsed.map(|(id, _)| id.to_owned()),
                from_claim: false,
                tag: parsed.and_then(|(_, tag)| tag),
            }
        }
    }
}

/// Puts the session id (or its removal) into the response, a cookie with the write tag
/// `tag` when there is one. Returns whether anything was sent.
pub(crate) fn apply_cookie<B>(
    res: &mut Response<B>,
    config: &Config,
    action: CookieAction,
    tag: Option<u64>,
) -> bool {
    let value = match (&config.transport, action) {
        (_, CookieAction::None) => return false,
        (Transport::Header(name), CookieAction::Set(id)) => {
            return match HeaderValue::from_str(&id) {
                Ok(v) => {
                    res.headers_mut().insert(name.clone(), v);
                    true
                }
                Err(_) => false,
            };
        }
        (Transport::Header(_), CookieAction::Remove) => return false,
        (Transport::Cookie, action) => {
            let removing = matches!(action, CookieAction::Remove);
            let value = match action {
                CookieAction::Set(id) => cookie_value(&id, tag),
                _ => String::new(),
            };
            let mut c = Cookie::build((config.cookie_name.clone(), value))
                .path(config.path.clone())
                .secure(config.secure)
                .http_only(config.http_only)
                .same_site(config.same_site);
            if let Some(d) = &config.domain {
                c = c.domain(d.clone());
            }
            if removing {
                c = c.max_age(cookie::time::Duration::ZERO);
            } else if let Some(age) = config.max_age_secs {
                c = c.max_age(cookie::time::Duration::seconds(age));
            }
            c.build().encoded().to_string()
        }
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            res.headers_mut().append(header::SET_COOKIE, v);
            true
        }
        Err(_) => false,
    }
}

/// A response that carries a session id must not be stored by a shared cache (a proxy or
/// CDN would hand the id to everyone): `Cache-Control: private`, unless the handler chose
/// its own `Cache-Control`.
///
/// `private` rather than `no-store`: shared caches must not store it (RFC 9111 §5.2.2.7),
/// which is the whole risk; the user's own browser may still cache the page, which holds
/// only that user's data, and a browser never replays `Set-Cookie` from its cache.
pub(crate) fn keep_out_of_shared_caches<B>(res: &mut Response<B>) {
    if !res.headers().contains_key(header::CACHE_CONTROL) {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// A response built after the handler looked at the session depends on the request's
/// session cookie (or header), also when there was none: `Vary` names it, so a shared cache
/// that stores the response (the handler allowed it) never serves it to another session.
pub(crate) fn vary_on_transport<B>(res: &mut Response<B>, config: &Config) {
    let name = match &config.transport {
        Transport::Cookie => header::COOKIE,
        Transport::Header(name) => name.clone(),
    };
    let covered = res
        .headers()
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|v| v == "*" || v.eq_ignore_ascii_case(name.as_str()));
    if !covered {
        res.headers_mut()
            .append(header::VARY, HeaderValue::from(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the layer read before `find_cookie`: every pair parsed, the first named one.
    fn by_split_parse(header: &str, name: &str) -> Option<(String, String)> {
        Cookie::split_parse(header)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| (c.name().to_owned(), c.value().to_owned()))
    }

    #[test]
    fn find_cookie_agrees_with_split_parse() {
        let headers = [
            "",
            "id=abc",
            "tid=x; id=abc; cid=y",
            "sid=1; id=2",
            "idx=1; xid=2",
            "id=1; id=2",
            "  id =  spaced ; other=1",
            "id",
            "id; id=after",
            "id==eq",
            "id=\"quoted\"",
            "=novalue; id=ok",
            ";;; id=semi;;",
            "a=b;id=tight",
            "ID=upper; id=lower",
        ];
        for header in headers {
            let found =
                find_cookie(header, "id").map(|c| (c.name().to_owned(), c.value().to_owned()));
            assert_eq!(found, by_split_parse(header, "id"), "header {header:?}");
        }
        assert_eq!(
            find_cookie("tid=x; id=abc", "id").map(|c| c.value().to_owned()),
            Some("abc".to_owned())
        );
        assert!(find_cookie("sid=1; idx=2", "id").is_none());
    }
}
