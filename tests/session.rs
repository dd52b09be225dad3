//! SessionLayer black-box tests, on MemoryStore and on a real Redis.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{
    HashChanges, HashWriteOptions, HashWriteOutcome, MemoryStore, RedisStore, StateStore,
    StoreError, StoredHash,
};
use tower_stateless::{ConfigError, RegisteredClaims, StoreFailure};

/// Handler driven by the `x-op` header: `none`, `get:k`, `put:k:v`, `del:k`, `clear`,
/// `cycle`, `destroy`, `incr:k` (an atomic `update`, answering the new value or the
/// error's status and code), `keys`, `keys:prefix`, `getnum:k` (a `u64` read), and
/// `peek:k`, a read that swallows errors and always answers 200;
/// several ops separated by `,` run in order in one request. Answers the outputs of the
/// ops joined by `,` (the JSON of `get`, empty for writes), or the error text (and the
/// error code in `x-error-code`). An
/// `x-cache-control` or `x-vary` request header is copied into the response as the
/// handler's own `Cache-Control` or `Vary`.
async fn handler(req: Request<String>) -> Result<Response<String>, Infallible> {
    let ops = req
        .headers()
        .get("x-op")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let Some(s) = req.extensions().get::<Session>().cloned() else {
        return Ok(Response::new("no session".into()));
    };
    let mut outputs = Vec::new();
    for op in ops.split(',') {
        let parts: Vec<&str> = op.splitn(3, ':').collect();
        let out = match parts.as_slice() {
            ["get", k] => s.get::<String>(k).await.map(|v| format!("{v:?}")),
            ["peek", k] => Ok(s.get::<String>(k).await.ok().flatten().unwrap_or_default()),
            ["put", k, v] => s.insert(k, v.to_string()).await.map(|_| String::new()),
            ["del", k] => s.remove(k).await.map(|_| String::new()),
            ["clear"] => s.clear().await.map(|_| String::new()),
            ["cycle"] => s.cycle_id().await.map(|_| String::new()),
            ["destroy"] => s.destroy().await.map(|_| String::new()),
            ["incr", k] => match s.update(k, |n: Option<u64>| n.unwrap_or(0) + 1).await {
                Ok(n) => Ok(n.to_string()),
                Err(e) => {
                    let mut r = Response::new(e.error_code().to_owned());
                    *r.status_mut() = e.status();
                    return Ok(r);
                }
            },
            ["keys"] => s.keys().await.map(|k| k.join("|")),
            ["getnum", k] => s.get::<u64>(k).await.map(|v| format!("{v:?}")),
            ["keys", prefix] => s.keys_with_prefix(prefix).await.map(|k| k.join("|")),
            _ => Ok(String::new()),
        };
        match out {
            Ok(b) => outputs.push(b),
            Err(e) => {
                let mut r = Response::new(format!("error unavailable={}", e.is_unavailable()));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut().insert(
                    "x-error-code",
                    http::HeaderValue::from_static(e.error_code()),
                );
                return Ok(r);
            }
        }
    }
    let mut res = Response::new(outputs.join(","));
    for (from, to) in [
        ("x-cache-control", header::CACHE_CONTROL),
        ("x-vary", header::VARY),
    ] {
        if let Some(v) = req.headers().get(from) {
            res.headers_mut().insert(to, v.clone());
        }
    }
    Ok(res)
}

struct Out {
    status: StatusCode,
    set_cookie: Vec<String>,
    retry_after: Option<String>,
    headers: http::HeaderMap,
    body: String,
}

async fn call<St: StateStore>(layer: &SessionLayer<St>, cookie: Option<&str>, op: &str) -> Out {
    call_with(layer, cookie, None, op).await
}

/// [`call`] with `claims` in the request extensions, as `JwtAuthLayer` puts them there.
async fn call_with<St: StateStore>(
    layer: &SessionLayer<St>,
    cookie: Option<&str>,
    claims: Option<RegisteredClaims>,
    op: &str,
) -> Out {
    send(layer, cookie, claims, &[], op).await
}

/// [`call_with`] with extra request headers.
async fn send<St: StateStore>(
    layer: &SessionLayer<St>,
    cookie: Option<&str>,
    claims: Option<RegisteredClaims>,
    headers: &[(&str, &str)],
    op: &str,
) -> Out {
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(handler);
    let mut req = Request::builder().header("x-op", op);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if let Some(claims) = claims {
        req = req.extension(claims);
    }
    let res = svc.oneshot(req.body(String::new()).unwrap()).await.unwrap();
    let set_cookie = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let status = res.status();
    let retry_after = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let headers = res.headers().clone();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Out {
        status,
        set_cookie,
        retry_after,
        headers,
        body,
    }
}

fn cookie_pair(out: &Out) -> String {
    out.set_cookie[0].split(';').next().unwrap().to_owned()
}

async fn lifecycle<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store)
        .cookie_name("sid")
        .unwrap()
        .idle_timeout(Duration::from_secs(1))
        .unwrap();
    // Untouched → no cookie.
    let out = call(&layer, None, "none").await;
    assert!(out.set_cookie.is_empty());
    // Read without session → none, no cookie.
    let out = call(&layer, None, "get:a").await;
    assert_eq!(out.body, "None");
    assert!(out.set_cookie.is_empty());
    // Create.
    let out = call(&layer, None, "put:a:1").await;
    assert_eq!(out.status, StatusCode::OK);
    let c = cookie_pair(&out);
    assert!(c.starts_with("sid=") && c.len() == 4 + 43, "{c}");
    // Read.
    let out = call(&layer, Some(&c), "get:a").await;
    assert_eq!(out.body, "Some(\"1\")");
    assert!(out.set_cookie.is_empty());
    // Modify.
    call(&layer, Some(&c), "put:b:2").await;
    call(&layer, Some(&c), "del:a").await;
    assert_eq!(call(&layer, Some(&c), "get:a").await.body, "None");
    assert_eq!(call(&layer, Some(&c), "get:b").await.body, "Some(\"2\")");
    // Cycle: new id, same data, old id dead.
    let out = call(&layer, Some(&c), "cycle").await;
    let c2 = cookie_pair(&out);
    assert_ne!(c, c2);
    assert_eq!(call(&layer, Some(&c2), "get:b").await.body, "Some(\"2\")");
    assert_eq!(call(&layer, Some(&c), "get:b").await.body, "None");
    // Clear.
    call(&layer, Some(&c2), "clear").await;
    assert_eq!(call(&layer, Some(&c2), "get:b").await.body, "None");
    // Destroy → removal cookie, data gone.
    call(&layer, Some(&c2), "put:x:1").await;
    let out = call(&layer, Some(&c2), "destroy").await;
    assert!(
        out.set_cookie[0].contains("Max-Age=0"),
        "{:?}",
        out.set_cookie
    );
    assert_eq!(call(&layer, Some(&c2), "get:x").await.body, "None");
    // Expire (idle 1 s).
    let out = call(&layer, None, "put:e:1").await;
    let c3 = cookie_pair(&out);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(call(&layer, Some(&c3), "get:e").await.body, "None");
}

/// Reads alone keep a session alive past its idle timeout: with the default refresh
/// interval (a tenth of the idle timeout) each read below finds the expiry due and rolls
/// it. The reads are 600 ms apart against a 2 s idle timeout, a margin of 1.4 s per gap
/// for a loaded machine.
async fn reads_keep_the_session_alive<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store)
        .idle_timeout(Duration::from_secs(2))
        .unwrap();
    let c = cookie_pair(&call(&layer, None, "put:a:1").await);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(call(&layer, Some(&c), "get:a").await.body, "Some(\"1\")");
    }
    // 3 s after the write, past its 2 s idle timeout: the reads rolled the expiry.
}

async fn absolute_lifetime<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store)
        .absolute_lifetime(Duration::from_secs(1))
        .unwrap();
    let c = cookie_pair(&call(&layer, None, "put:a:1").await);
    assert_eq!(call(&layer, Some(&c), "get:a").await.body, "Some(\"1\")");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&layer, Some(&c), "get:a").await.body, "None");
}

async fn cookie_attributes<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store.clone());
    let sc = &call(&layer, None, "put:a:1").await.set_cookie[0];
    for part in ["id=", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(sc.contains(part), "{sc}");
    }
    assert!(!sc.contains("Max-Age") && !sc.contains("Domain"), "{sc}");
    let layer = SessionLayer::new(store)
        .cookie_name("s")
        .unwrap()
        .cookie_path("/app")
        .unwrap()
        .cookie_domain("example.com")
        .unwrap()
        .secure(false)
        .http_only(false)
        .same_site(tower_stateless::session::SameSite::Strict)
        .max_age(Duration::from_secs(3600))
        .unwrap();
    let sc = &call(&layer, None, "put:a:1").await.set_cookie[0];
    for part in [
        "s=",
        "Path=/app",
        "Domain=example.com",
        "SameSite=Strict",
        "Max-Age=3600",
    ] {
        assert!(sc.contains(part), "{sc}");
    }
    assert!(!sc.contains("Secure") && !sc.contains("HttpOnly"), "{sc}");
}

async fn max_age_renewal<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store)
        .max_age(Duration::from_secs(3600))
        .unwrap();
    let out = call(&layer, None, "put:a:1").await;
    let c = cookie_pair(&out);
    assert!(
        out.set_cookie[0].contains("Max-Age=3600"),
        "{:?}",
        out.set_cookie
    );
    // A read renews the persistent cookie: same id, fresh Max-Age.
    let out = call(&layer, Some(&c), "get:a").await;
    assert_eq!(out.body, "Some(\"1\")");
    assert_eq!(out.set_cookie.len(), 1, "{:?}", out.set_cookie);
    assert_eq!(cookie_pair(&out), c);
    assert!(
        out.set_cookie[0].contains("Max-Age=3600"),
        "{:?}",
        out.set_cookie
    );
    // So does a write.
    let out = call(&layer, Some(&c), "put:b:2").await;
    assert_eq!(out.set_cookie.len(), 1, "{:?}", out.set_cookie);
    assert_eq!(cookie_pair(&out), c);
    assert!(
        out.set_cookie[0].contains("Max-Age=3600"),
        "{:?}",
        out.set_cookie
    );
    // Untouched: the session is not loaded, nothing is sent.
    assert!(call(&layer, Some(&c), "none").await.set_cookie.is_empty());
    // Unknown id: no session to renew.
    let unknown = format!("id={}", "A".repeat(43));
    let out = call(&layer, Some(&unknown), "get:a").await;
    assert_eq!(out.body, "None");
    assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
    // Destroy still removes the cookie, once.
    let out = call(&layer, Some(&c), "destroy").await;
    assert_eq!(out.set_cookie.len(), 1, "{:?}", out.set_cookie);
    assert!(
        out.set_cookie[0].contains("Max-Age=0"),
        "{:?}",
        out.set_cookie
    );
    // A destroyed session is not renewed.
    assert!(call(&layer, Some(&c), "get:a").await.set_cookie.is_empty());
}

async fn sid_claim<St: StateStore>(store: St) {
    let store = counting(store);
    let layer = SessionLayer::new(store.clone()).id_from_sid_claim(true);
    let claims = |sid: &str| RegisteredClaims::new("alice", u64::MAX).with_sid(sid);
    // A session created through the cookie transport.
    let c = cookie_pair(&call(&layer, None, "put:a:1").await);
    let id = c.trim_start_matches("id=").to_owned();
    // The sid claim alone finds it, and reads send no cookie.
    let out = call_with(&layer, None, Some(claims(&id)), "get:a").await;
    assert_eq!(out.body, "Some(\"1\")");
    assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
    // Writes through the claim land in that session.
    let out = call_with(&layer, None, Some(claims(&id)), "put:b:2").await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
    assert_eq!(call(&layer, Some(&c), "get:b").await.body, "Some(\"2\")");
    // The claim wins over a cookie of another session.
    let other = cookie_pair(&call(&layer, None, "put:a:other").await);
    let out = call_with(&layer, Some(&other), Some(claims(&id)), "get:a").await;
    assert_eq!(out.body, "Some(\"1\")");
    // Claims without a sid: the cookie is used.
    let no_sid = RegisteredClaims::new("alice", u64::MAX);
    let out = call_with(&layer, Some(&c), Some(no_sid), "get:a").await;
    assert_eq!(out.body, "Some(\"1\")");
    // An invalid sid is no session: no store lookup, and no fallback to the cookie.
    let long = format!("{id}A");
    let bad_alphabet = format!("{}!", &id[..42]);
    for bad in ["", "short", long.as_str(), bad_alphabet.as_str()] {
        store.reset();
        let out = call_with(&layer, Some(&c), Some(claims(bad)), "get:a").await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(out.body, "None", "sid {bad:?}");
        assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
        assert_eq!(store.operations(), 0, "sid {bad:?}");
    }
    // A well-formed but unknown sid costs the one lookup that finds nothing.
    store.reset();
    let unknown = "A".repeat(43);
    let out = call_with(&layer, Some(&c), Some(claims(&unknown)), "get:a").await;
    assert_eq!(out.body, "None");
    assert_eq!(store.operations(), 1);
    // Off by default: the claim is ignored.
    let off = SessionLayer::new(store.clone());
    let out = call_with(&off, None, Some(claims(&id)), "get:a").await;
    assert_eq!(out.body, "None");
}

async fn bad_ids<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store);
    let forged = format!("id={}", "A".repeat(43));
    let huge = format!("id={}", "A".repeat(10 * 1024));
    let bad = [
        forged.as_str(),
        "id=short",
        "id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
        huge.as_str(),
        "id=",
        "garbage;;;=",
    ];
    for c in bad {
        let out = call(&layer, Some(c), "get:a").await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(out.body, "None");
        // A write starts a fresh session with a new id.
        let out = call(&layer, Some(c), "put:a:1").await;
        assert_eq!(out.status, StatusCode::OK);
        assert_ne!(cookie_pair(&out), c);
    }
}

/// `cached_reads`: writes send an `id.<tag>` cookie, a read that finds another tag than the
/// cookie's sends the current one, a read with the current one sends none; a layer without
/// it understands tagged cookies; a malformed tag is no id; the header transport carries
/// no tag.
async fn tagged_cookies<St: StateStore>(store: St) {
    let tagged = SessionLayer::new(store.clone()).cached_reads(true);
    let plain = SessionLayer::new(store.clone());
    let first = cookie_pair(&call(&tagged, None, "put:a:1").await);
    let (id, tag) = first
        .strip_prefix("id=")
        .and_then(|v| v.split_once('.'))
        .expect("a tagged cookie");
    assert_eq!(id.len(), 43);
    assert!(tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()));
    let out = call(&tagged, Some(&first), "get:a").await;
    assert_eq!(out.body, "Some(\"1\")");
    assert!(out.set_cookie.is_empty(), "the tag is current: no cookie");
    let out = call(&tagged, Some(&format!("id={id}")), "get:a").await;
    assert_eq!(cookie_pair(&out), first, "an untagged cookie gets the tag");
    let out = call(&plain, Some(&first), "get:a").await;
    assert_eq!(
        out.body, "Some(\"1\")",
        "a layer without cached reads reads it"
    );
    assert!(out.set_cookie.is_empty());

    // A write elsewhere (here without tags) changes the tag: the next read sends it.
    call(&plain, Some(&first), "put:b:2").await;
    let out = call(&tagged, Some(&first), "get:b").await;
    assert_eq!(out.body, "Some(\"2\")");
    let second = cookie_pair(&out);
    assert!(second != first && second.starts_with(&format!("id={id}.")));
    let out = call(&tagged, Some(&second), "incr:n").await;
    assert_eq!(out.body, "1");
    let third = cookie_pair(&out);
    assert!(third != second && third.starts_with(&format!("id={id}.")));
    let out = call(&tagged, Some(&third), "put:c:3").await;
    assert_ne!(cookie_pair(&out), third, "every write sends a new tag");

    let ok_tag = "0".repeat(16);
    for bad in [
        format!("id={id}."),
        format!("id={id}.{}", "z".repeat(16)),
        format!("id={id}.0123"),
        format!("id={id}.{}", "0".repeat(17)),
        format!("id={id}.{ok_tag}.{ok_tag}"),
        format!("id=.{ok_tag}"),
        format!("id={id}.+{}", "0".repeat(15)),
    ] {
        for layer in [&tagged, &plain] {
            let out = call(layer, Some(&bad), "get:a").await;
            assert_eq!(out.body, "None", "{bad}");
        }
    }
    let out = call(&tagged, Some(&third), "destroy").await;
    assert!(out.set_cookie[0].contains("Max-Age=0"));

    let header = SessionLayer::new(store)
        .header(http::HeaderName::from_static("x-session"))
        .cached_reads(true);
    let out = send(&header, None, None, &[], "put:a:1").await;
    let sent = out.headers.get("x-session").expect("the id header");
    assert_eq!(sent.len(), 43, "no tag in a header: {sent:?}");
}

async fn concurrent_cart<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store);
    let c = cookie_pair(&call(&layer, None, "put:seed:0").await);
    let mut a = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(handler);
    let mut b = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(handler);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let req = Request::builder()
            .header("x-op", format!("put:item{i}:{i}"))
            .header(header::COOKIE, &c)
            .body(String::new())
            .unwrap();
        let fut = if i % 2 == 0 {
            a.ready().await.unwrap().call(req)
        } else {
            b.ready().await.unwrap().call(req)
        };
        tasks.push(tokio::spawn(fut));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    for i in 0..50 {
        assert_eq!(
            call(&layer, Some(&c), &format!("get:item{i}")).await.body,
            format!("Some(\"{i}\")")
        );
    }
}

async fn header_transport<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store).header(http::HeaderName::from_static("x-session"));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(handler);
    let res = svc
        .oneshot(
            Request::builder()
                .header("x-op", "put:a:1")
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let id = res.headers().get("x-session").unwrap().clone();
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    let svc = ServiceBuilder::new().layer(layer).service_fn(handler);
    let res = svc
        .oneshot(
            Request::builder()
                .header("x-op", "get:a")
                .header("x-session", id)
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Some(\"1\")");
}

mod memory {
    use super::*;
    #[tokio::test]
    async fn lifecycle() {
        super::lifecycle(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn reads_keep_the_session_alive() {
        super::reads_keep_the_session_alive(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn absolute_lifetime() {
        super::absolute_lifetime(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn cookie_attributes() {
        super::cookie_attributes(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn max_age_renewal() {
        super::max_age_renewal(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn sid_claim() {
        super::sid_claim(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn bad_ids() {
        super::bad_ids(MemoryStore::new()).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_cart() {
        super::concurrent_cart(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn header_transport() {
        super::header_transport(MemoryStore::new()).await
    }
    #[tokio::test]
    async fn tagged_cookies() {
        super::tagged_cookies(MemoryStore::new()).await
    }
}

mod redis {
    use super::*;
    async fn store(server: &common::RedisServer) -> RedisStore {
        RedisStore::from_url(server.url()).unwrap()
    }
    #[tokio::test]
    async fn lifecycle() {
        let s = redis_or_skip!();
        super::lifecycle(store(&s).await).await
    }
    #[tokio::test]
    async fn reads_keep_the_session_alive() {
        let s = redis_or_skip!();
        super::reads_keep_the_session_alive(store(&s).await).await
    }
    #[tokio::test]
    async fn absolute_lifetime() {
        let s = redis_or_skip!();
        super::absolute_lifetime(store(&s).await).await
    }
    #[tokio::test]
    async fn cookie_attributes() {
        let s = redis_or_skip!();
        super::cookie_attributes(store(&s).await).await
    }
    #[tokio::test]
    async fn max_age_renewal() {
        let s = redis_or_skip!();
        super::max_age_renewal(store(&s).await).await
    }
    #[tokio::test]
    async fn sid_claim() {
        let s = redis_or_skip!();
        super::sid_claim(store(&s).await).await
    }
    #[tokio::test]
    async fn bad_ids() {
        let s = redis_or_skip!();
        super::bad_ids(store(&s).await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_cart() {
        let s = redis_or_skip!();
        super::concurrent_cart(store(&s).await).await
    }
    #[tokio::test]
    async fn header_transport() {
        let s = redis_or_skip!();
        super::header_transport(store(&s).await).await
    }
    #[tokio::test]
    async fn tagged_cookies() {
        let s = redis_or_skip!();
        super::tagged_cookies(store(&s).await).await
    }

    #[tokio::test]
    async fn round_trips() {
        let s = redis_or_skip!();
        let warm = store(&s).await;
        common::warm_pool(&warm).await;
        let layer = SessionLayer::new(warm);
        // Warm-up: connection setup and script loading happen once.
        let c = cookie_pair(&call(&layer, None, "put:a:1").await);
        call(&layer, Some(&c), "get:a,put:a:0").await;
        s.reset_stats();
        call(&layer, Some(&c), "none").await;
        assert_eq!(s.command_count(), 0);
        s.reset_stats();
        call(&layer, Some(&c), "get:a").await;
        // One pipeline of HGETALL and PTTL (the expiry was just set: no roll due).
        assert_eq!(s.round_trips(), 1, "{:?}", s.command_stats());
        assert_eq!(s.command_stats().get("hgetall"), Some(&1));
        s.reset_stats();
        call(&layer, Some(&c), "get:a,put:a:2").await;
        // One read (that rolls the expiry), one EVALSHA to write the changed key; the
        // hash commands inside the script are not round trips.
        let stats = s.command_stats();
        assert_eq!(stats.get("evalsha"), Some(&1), "{stats:?}");
        assert_eq!(s.round_trips(), 2, "{stats:?}");
        // A write without a read: the one EVALSHA of the changed key.
        s.reset_stats();
        call(&layer, Some(&c), "put:a:3").await;
        let stats = s.command_stats();
        assert_eq!(stats.get("evalsha"), Some(&1), "{stats:?}");
        assert_eq!(s.command_count(), 1, "{stats:?}");
        assert_eq!(call(&layer, Some(&c), "get:a").await.body, "Some(\"3\")");
        // Malformed and forged ids: no store command at all for malformed.
        s.reset_stats();
        call(&layer, Some("id=short"), "get:a").await;
        call(&layer, Some(&format!("id={}", "x".repeat(10240))), "get:a").await;
        assert_eq!(s.command_count(), 0, "{:?}", s.command_stats());
        s.reset_stats();
        call(&layer, Some(&format!("id={}", "A".repeat(43))), "get:a").await;
        assert_eq!(s.round_trips(), 1, "{:?}", s.command_stats());
        assert!(s.keys("sess:*").len() == 1);
        // Renewing a Max-Age cookie costs no extra round trip.
        let warm = store(&s).await;
        common::warm_pool(&warm).await;
        let layer = SessionLayer::new(warm)
            .max_age(Duration::from_secs(60))
            .unwrap();
        let c = cookie_pair(&call(&layer, None, "put:a:1").await);
        s.reset_stats();
        let out = call(&layer, Some(&c), "get:a").await;
        assert_eq!(cookie_pair(&out), c);
        assert_eq!(s.round_trips(), 1, "{:?}", s.command_stats());
    }

    /// An eager read (a transaction, no Lua) rolls the expiry without the cap of the
    /// absolute deadline, checking the deadline against Redis' clock: past it, the hash
    /// reads as absent and the read that finds it deletes it, eager or lazy (`lazy`: the
    /// read after the deadline is a lazy one, whose roll script decides on Redis' clock);
    /// an upsert then starts a fresh hash.
    #[tokio::test]
    async fn a_hash_past_its_deadline_is_deleted_by_the_read_that_finds_it() {
        past_its_deadline(false).await
    }

    #[tokio::test]
    async fn a_hash_past_its_deadline_is_deleted_by_a_lazy_read() {
        past_its_deadline(true).await
    }

    async fn past_its_deadline(lazy: bool) {
        use tower_stateless::store::HashMode;
        let s = redis_or_skip!();
        let store = store(&s).await;
        let key = "sess:{deadline}";
        let set = |v: &str| HashChanges {
            set: vec![("a".to_owned(), Bytes::from(v.to_owned()))],
            ..HashChanges::default()
        };
        let long = Duration::from_secs(60);
        // Long enough that the first read below lands before the deadline even on a
        // stalled machine, short enough to wait out.
        let lifetime = Duration::from_secs(3);
        let created = store
            .hash_apply(
                key,
                &set("1"),
                HashWriteOptions::new(HashMode::New { lifetime }, long),
            )
            .await
            .unwrap();
        assert_eq!(created, HashWriteOutcome::Written);
        let read = store.hash_get_all_and_refresh(key, long).await.unwrap();
        assert!(read.is_some_and(|h| h.lifetime_left <= lifetime));
        tokio::time::sleep(lifetime + Duration::from_millis(500)).await;
        assert!(
            s.pttl(key) > 0,
            "the read rolled the expiry past the deadline"
        );
        let after = if lazy {
            store
                .hash_get_all_and_refresh_lazily(key, long, Duration::from_secs(1))
                .await
        } else {
            store.hash_get_all_and_refresh(key, long).await
        };
        assert_eq!(after.unwrap(), None);
        assert_eq!(
            s.pttl(key),
            -2,
            "the read that found it past its deadline deleted it"
        );
        let upsert = HashWriteOptions::new(HashMode::Upsert { lifetime: long }, long);
        assert_eq!(
            store.hash_apply(key, &set("2"), upsert).await.unwrap(),
            HashWriteOutcome::Written
        );
        let read = store
            .hash_get_all_and_refresh(key, long)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.fields.get("a"), Some(&Bytes::from_static(b"2")));
        assert!(read.lifetime_left > lifetime);
    }

    /// A key prefix without braces namespaces the session's key, `<prefix>{<id>}`, so that
    /// the id stays the key's hash tag; the session reads back through it.
    #[tokio::test]
    async fn key_prefix_namespaces_the_session_key() {
        let s = redis_or_skip!();
        let layer = SessionLayer::new(store(&s).await)
            .key_prefix("shop:sess:")
            .unwrap();
        let c = cookie_pair(&call(&layer, None, "put:a:1").await);
        let id = c.split_once('=').unwrap().1;
        assert_eq!(s.keys("*"), [format!("shop:sess:{{{id}}}")]);
        assert_eq!(call(&layer, Some(&c), "get:a").await.body, "Some(\"1\")");
    }

    #[tokio::test]
    async fn store_down() {
        let mut s = redis_or_skip!();
        let layer = SessionLayer::new(
            RedisStore::builder()
                .url(s.url())
                .timeout(Duration::from_millis(300))
                .build()
                .unwrap(),
        );
        let c = cookie_pair(&call(&layer, None, "put:a:1").await);
        s.stop();
        // Handler read → mappable error.
        let out = call(&layer, Some(&c), "get:a").await;
        assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(out.body, "error unavailable=true");
        // Handler read that swallows the error → 503 from the layer, not a silent 200.
        let out = call(&layer, Some(&c), "peek:a").await;
        assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(out.body.contains("store_unavailable"), "{}", out.body);
        assert!(out.retry_after.is_some());
        assert!(out.set_cookie.is_empty());
        // New session write-back → 503 from the layer.
        let out = call(&layer, None, "put:a:1").await;
        assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(out.body.contains("store_unavailable"), "{}", out.body);
        assert!(out.set_cookie.is_empty());
    }
}

/// Counts the operations the layer makes on the store it wraps.
#[derive(Default)]
struct Ops(AtomicU64);

impl common::Hook for Ops {
    fn before(&self, _: &common::Call<'_>) -> Result<(), StoreError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

type Counting<St> = common::Intercept<St, Ops>;

fn counting<St>(inner: St) -> Counting<St> {
    common::Intercept::new(inner, Ops::default())
}

impl<St> Counting<St> {
    fn operations(&self) -> u64 {
        self.hook.0.load(Ordering::SeqCst)
    }
    fn reset(&self) {
        self.hook.0.store(0, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn memory_store_down() {
    let layer = SessionLayer::new(common::DownStore::unavailable());
    let id = format!("id={}", "A".repeat(43));
    let out = call(&layer, Some(&id), "get:a").await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(out.body, "error unavailable=true");
    assert!(out.retry_after.is_none());
    // A handler that swallows the load error does not get its 200 through.
    let out = call(&layer, Some(&id), "peek:a").await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(out.body.contains("store_unavailable"), "{}", out.body);
    assert_eq!(out.retry_after.as_deref(), Some("1"));
    // No id → nothing to load, nothing failed.
    let out = call(&layer, None, "peek:a").await;
    assert_eq!(out.status, StatusCode::OK);
    let out = call(&layer, None, "put:a:1").await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(out.body.contains("store_unavailable"), "{}", out.body);
    // Untouched session: no store access, so no failure.
    assert_eq!(call(&layer, Some(&id), "none").await.status, StatusCode::OK);
}

/// `StoreFailure::open()`: the handler's answer stands when the store is unavailable
/// (a swallowed load error, a failed write-back); a broken store is still `500`.
async fn store_down_open_keeps_the_handlers_answer<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store).on_store_failure(StoreFailure::open());
    let id = format!("id={}", "A".repeat(43));
    // The handler still sees the error from its own calls.
    let out = call(&layer, Some(&id), "get:a").await;
    assert_eq!(out.body, "error unavailable=true");
    // A swallowed load error: the handler's 200 goes out.
    let out = call(&layer, Some(&id), "peek:a").await;
    assert_eq!(out.status, StatusCode::OK);
    // A new session that cannot be written: the handler's 200, no cookie.
    let out = call(&layer, None, "put:a:1").await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.set_cookie.is_empty());
}

#[tokio::test]
async fn memory_store_down_open_keeps_the_handlers_answer() {
    store_down_open_keeps_the_handlers_answer(common::DownStore::unavailable()).await;
    let layer =
        SessionLayer::new(common::DownStore::broken()).on_store_failure(StoreFailure::open());
    let id = format!("id={}", "A".repeat(43));
    let out = call(&layer, Some(&id), "peek:a").await;
    assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn redis_store_down_open_keeps_the_handlers_answer() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    server.stop();
    store_down_open_keeps_the_handlers_answer(store).await;
}

/// `StoreFailure::closed().retry_after(..)` sets the `Retry-After` of the session's `503`.
#[tokio::test]
async fn memory_store_down_closed_retry_after() {
    let layer = SessionLayer::new(common::DownStore::unavailable())
        .on_store_failure(StoreFailure::closed().retry_after(Duration::from_secs(4)));
    let out = call(&layer, None, "put:a:1").await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(out.retry_after.as_deref(), Some("4"));
}

#[tokio::test]
async fn memory_store_broken_load() {
    let layer = SessionLayer::new(common::DownStore::broken());
    let id = format!("id={}", "A".repeat(43));
    // The handler's own answer to the error is kept.
    let out = call(&layer, Some(&id), "get:a").await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(out.body, "error unavailable=false");
    // A swallowed load error that is not an outage: 500, no Retry-After.
    let out = call(&layer, Some(&id), "peek:a").await;
    assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(out.body.contains("session_error"), "{}", out.body);
    assert!(out.retry_after.is_none());
}

#[cfg(feature = "axum")]
mod axum_extractor {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;

    /// Counts visits in the session; answers the count before this visit.
    async fn visits(session: Session) -> String {
        let n: u32 = session.get("n").await.ok().flatten().unwrap_or(0);
        let _ = session.insert("n", n + 1).await;
        n.to_string()
    }

    async fn get_visits(app: Router, cookie: Option<&str>) -> Out {
        let mut req = Request::builder().uri("/");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let set_cookie = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Out {
            status,
            set_cookie,
            retry_after: None,
            headers: http::HeaderMap::new(),
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn session_extractor<St: StateStore>(store: St) {
        let app = Router::new()
            .route("/", get(visits))
            .layer(SessionLayer::new(store));
        let out = get_visits(app.clone(), None).await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(out.body, "0");
        let c = cookie_pair(&out);
        assert_eq!(get_visits(app.clone(), Some(&c)).await.body, "1");
        assert_eq!(get_visits(app, Some(&c)).await.body, "2");
    }

    #[tokio::test]
    async fn memory() {
        session_extractor(MemoryStore::new()).await
    }

    #[tokio::test]
    async fn redis() {
        let s = redis_or_skip!();
        session_extractor(RedisStore::from_url(s.url()).unwrap()).await
    }

    #[tokio::test]
    async fn without_layer_is_500() {
        let app = Router::new().route("/", get(visits));
        let out = get_visits(app, None).await;
        assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(out.body.contains("without SessionLayer"), "{}", out.body);
        assert!(out.set_cookie.is_empty());
    }
}

// The same behaviour on a real 3-master Redis Cluster: a session is one key, so every
// operation stays one round trip on one node.
cluster_tests!(
    lifecycle,
    cookie_attributes,
    sid_claim,
    bad_ids,
    concurrent_cart,
    header_transport,
);

/// Regressions of the hardening issue: several session calls in one request, a login
/// `sid` as the session id, shared caches, and settings that cannot work.
mod hardening {
    use super::*;
    use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
    use tower_stateless::refresh::RefreshTokens;

    fn id_of(cookie: &str) -> &str {
        cookie.split_once('=').unwrap().1
    }

    /// The stored session `id`, read straight from the store.
    async fn stored<St: StateStore>(store: &St, id: &str) -> Option<StoredHash> {
        store
            .hash_get_all_and_refresh(&format!("sess:{{{id}}}"), Duration::from_secs(3600))
            .await
            .unwrap()
    }

    fn removes_cookie(out: &Out) -> bool {
        out.set_cookie.len() == 1 && out.set_cookie[0].contains("Max-Age=0")
    }

    /// Logout with a flash message: `destroy()` then `insert()` in one request. The old
    /// session and its data are gone for good; the flash lives in a new session of its own.
    async fn destroy_then_insert_starts_a_new_session<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone());
        let c = cookie_pair(&call(&layer, None, "put:user:alice,put:cart:3").await);
        let out = call(&layer, Some(&c), "destroy,get:user,put:flash:bye,get:flash").await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(out.body, ",None,,Some(\"bye\")");
        assert_eq!(out.set_cookie.len(), 1, "{:?}", out.set_cookie);
        assert!(
            !out.set_cookie[0].contains("Max-Age=0"),
            "{:?}",
            out.set_cookie
        );
        let c2 = cookie_pair(&out);
        assert_ne!(c2, c);
        assert!(stored(&store, id_of(&c)).await.is_none());
        // The new session holds only what was written after destroy.
        let out = call(&layer, Some(&c2), "get:flash,get:user,get:cart").await;
        assert_eq!(out.body, "Some(\"bye\"),None,None");
        // The old id stays dead: reads find nothing, a write starts another session.
        let out = call(&layer, Some(&c), "get:user,get:flash").await;
        assert_eq!(out.body, "None,None");
        let c3 = cookie_pair(&call(&layer, Some(&c), "put:x:1").await);
        assert!(c3 != c && c3 != c2, "{c3}");
        assert!(stored(&store, id_of(&c)).await.is_none());
    }

    /// `destroy()` followed by calls that leave nothing to keep: the old session is
    /// deleted, its cookie removed, and no new (empty) session is written.
    async fn destroy_then_nothing_to_keep_creates_no_session<St: StateStore>(store: St) {
        let counting = counting(store.clone());
        let layer = SessionLayer::new(counting.clone());
        for ops in [
            "destroy",
            "destroy,clear",
            "destroy,del:user",
            "destroy,cycle",
            "destroy,destroy",
            "put:x:1,destroy",
            "cycle,destroy",
            "destroy,put:f:1,destroy",
        ] {
            let c = cookie_pair(&call(&layer, None, "put:user:alice").await);
            counting.reset();
            let out = call(&layer, Some(&c), ops).await;
            assert_eq!(out.status, StatusCode::OK, "{ops}");
            assert!(removes_cookie(&out), "{ops}: {:?}", out.set_cookie);
            // One load and one delete: nothing else was written.
            assert_eq!(counting.operations(), 2, "{ops}");
            assert!(stored(&store, id_of(&c)).await.is_none(), "{ops}");
        }
        // Without a session, calls that keep no key neither touch the store nor set a cookie.
        for ops in [
            "clear",
            "del:a",
            "cycle",
            "destroy",
            "put:a:1,del:a",
            "put:a:1,destroy",
        ] {
            counting.reset();
            let out = call(&layer, None, ops).await;
            assert_eq!(out.status, StatusCode::OK, "{ops}");
            assert!(out.set_cookie.is_empty(), "{ops}: {:?}", out.set_cookie);
            assert_eq!(counting.operations(), 0, "{ops}");
        }
    }

    /// `cycle_id()` followed by writes: the new id holds the data with this request's
    /// changes, the old id is gone; `cycle_id()` then `destroy()` leaves neither.
    async fn cycle_then_writes_move_to_the_new_id<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone());
        let c = cookie_pair(&call(&layer, None, "put:a:1,put:b:2").await);
        let out = call(&layer, Some(&c), "cycle,put:c:3,del:a,get:a,get:b").await;
        assert_eq!(out.body, ",,,None,Some(\"2\")");
        let c2 = cookie_pair(&out);
        assert_ne!(c2, c);
        assert!(stored(&store, id_of(&c)).await.is_none());
        let out = call(&layer, Some(&c2), "get:a,get:b,get:c").await;
        assert_eq!(out.body, "None,Some(\"2\"),Some(\"3\")");
        // Cycle then clear: a new id with only what was written after the clear.
        let c3 = cookie_pair(&call(&layer, Some(&c2), "cycle,clear,put:d:4").await);
        assert_ne!(c3, c2);
        assert!(stored(&store, id_of(&c2)).await.is_none());
        let out = call(&layer, Some(&c3), "get:b,get:c,get:d").await;
        assert_eq!(out.body, "None,None,Some(\"4\")");
        // Cycle, destroy, insert: the old session is gone, the new one holds the flash only.
        let out = call(&layer, Some(&c3), "cycle,destroy,put:f:1").await;
        let c4 = cookie_pair(&out);
        assert_ne!(c4, c3);
        assert!(stored(&store, id_of(&c3)).await.is_none());
        let out = call(&layer, Some(&c4), "get:d,get:f").await;
        assert_eq!(out.body, "None,Some(\"1\")");
    }

    /// `clear()` then `insert()`: same id, no cookie, only the new key.
    async fn clear_then_insert_keeps_the_id<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone());
        let c = cookie_pair(&call(&layer, None, "put:a:1,put:b:2").await);
        let out = call(&layer, Some(&c), "clear,put:c:3,get:a").await;
        assert_eq!(out.body, ",,None");
        assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
        let out = call(&layer, Some(&c), "get:a,get:b,get:c").await;
        assert_eq!(out.body, "None,None,Some(\"3\")");
        // A cleared session stays, empty, under its id.
        call(&layer, Some(&c), "clear").await;
        assert!(stored(&store, id_of(&c)).await.is_some());
    }

    /// With the id in a `sid` claim: the first write creates the session under the `sid`,
    /// `destroy()` ends it for good, and a write after it goes to a new cookie session.
    async fn sid_session_created_and_destroyed<St: StateStore>(store: St) {
        let counting = counting(store.clone());
        let layer = SessionLayer::new(counting.clone()).id_from_sid_claim(true);
        let sid = "S".repeat(43);
        let claims = || Some(RegisteredClaims::new("alice", u64::MAX).with_sid(&sid));
        let out = call_with(&layer, None, claims(), "put:a:1").await;
        assert_eq!(out.status, StatusCode::OK);
        assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
        // Creating it by writes alone costs one write (an upsert under the sid), no read.
        assert_eq!(counting.operations(), 1);
        assert!(stored(&store, &sid).await.is_some());
        assert_eq!(
            call_with(&layer, None, claims(), "get:a").await.body,
            "Some(\"1\")"
        );
        let out = call_with(&layer, None, claims(), "destroy,put:flash:bye").await;
        assert!(stored(&store, &sid).await.is_none());
        let c = cookie_pair(&out);
        assert_ne!(id_of(&c), sid);
        assert_eq!(
            call(&layer, Some(&c), "get:flash,get:a").await.body,
            "Some(\"bye\"),None"
        );
        assert_eq!(
            call_with(&layer, None, claims(), "get:a").await.body,
            "None"
        );
    }

    /// A `sid` whose stored record is unreadable (corrupt) is no session: a read finds
    /// nothing, and a write replaces the record instead of being dropped.
    async fn sid_with_corrupt_record_is_replaced_by_a_write<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone()).id_from_sid_claim(true);
        let sid = "K".repeat(43);
        let claims = || Some(RegisteredClaims::new("alice", u64::MAX).with_sid(&sid));
        let key = format!("sess:{{{sid}}}");
        for garbage in [&b"not json"[..], br#"{"v":99,"created":0,"data":{"x":1}}"#] {
            store
                .set(&key, Bytes::from_static(garbage), Duration::from_secs(60))
                .await
                .unwrap();
            let out = call_with(&layer, None, claims(), "get:a,put:a:1").await;
            assert_eq!((out.status, out.body.as_str()), (StatusCode::OK, "None,"));
            let out = call_with(&layer, None, claims(), "get:a,get:x").await;
            assert_eq!(out.body, "Some(\"1\"),None");
        }
    }

    /// Concurrent first writes of one `sid` that has no session yet, from two instances:
    /// one creates the session, the others merge into it, and every key survives.
    async fn sid_first_writes_concurrently_all_land<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone()).id_from_sid_claim(true);
        let sid = "C".repeat(43);
        let mut a = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(handler);
        let mut b = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(handler);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let req = Request::builder()
                .header("x-op", format!("put:k{i}:{i}"))
                .extension(RegisteredClaims::new("alice", u64::MAX).with_sid(&sid))
                .body(String::new())
                .unwrap();
            let svc = if i % 2 == 0 { &mut a } else { &mut b };
            tasks.push(tokio::spawn(svc.ready().await.unwrap().call(req)));
        }
        for t in tasks {
            let res = t.await.unwrap().unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers().get(header::SET_COOKIE).is_none());
        }
        let claims = Some(RegisteredClaims::new("alice", u64::MAX).with_sid(&sid));
        let ops: Vec<String> = (0..20).map(|i| format!("get:k{i}")).collect();
        let out = call_with(&layer, None, claims, &ops.join(",")).await;
        let want: Vec<String> = (0..20).map(|i| format!("Some(\"{i}\")")).collect();
        assert_eq!(out.body, want.join(","));
    }

    /// A login through `RefreshTokens::issue`, then requests through `JwtAuthLayer` and
    /// `SessionLayer::id_from_sid_claim`: the minted `sid` keys the session, so a write is
    /// seen by a later request, also with the access token of the next rotation.
    async fn refresh_login_sid_keys_a_session<St: StateStore>(store: St) {
        let keys = JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, &[7; 32])
            .unwrap();
        let policy = TokenPolicy::builder(keys)
            .signing_key("v1")
            .build()
            .unwrap();
        let tokens = RefreshTokens::builder(store.clone(), &policy)
            .secret([9u8; 32])
            .build()
            .unwrap();
        let login = tokens.issue("alice").await.unwrap();
        let sid = login.refresh_token.sid.clone();
        assert_eq!(login.access_token.claims.sid.as_deref(), Some(sid.as_str()));
        let layer = SessionLayer::new(store.clone()).id_from_sid_claim(true);
        let request = |token: &str, op: &str| {
            let svc = ServiceBuilder::new()
                .layer(policy.auth_layer())
                .layer(layer.clone())
                .service_fn(handler);
            let req = Request::builder()
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("x-op", op)
                .body(String::new())
                .unwrap();
            async move {
                let res = svc.oneshot(req).await.unwrap();
                let status = res.status();
                let cookies = res.headers().get_all(header::SET_COOKIE).iter().count();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, cookies, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let token = login.access_token.token.clone();
        assert_eq!(
            request(&token, "get:cart").await,
            (StatusCode::OK, 0, "None".to_owned())
        );
        assert_eq!(
            request(&token, "put:cart:3").await,
            (StatusCode::OK, 0, String::new())
        );
        assert!(
            stored(&store, &sid).await.is_some(),
            "no session under the sid"
        );
        assert_eq!(
            request(&token, "get:cart").await,
            (StatusCode::OK, 0, "Some(\"3\")".to_owned())
        );
        assert_eq!(
            request(&token, "put:size:9").await,
            (StatusCode::OK, 0, String::new())
        );
        let next = tokens.rotate(&login.refresh_token.token).await.unwrap();
        assert_eq!(
            request(&next.access_token.token, "get:cart,get:size").await,
            (StatusCode::OK, 0, "Some(\"3\"),Some(\"9\")".to_owned())
        );
    }

    fn cache_control(out: &Out) -> Option<&str> {
        out.headers
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap())
    }

    fn vary(out: &Out) -> Vec<String> {
        out.headers
            .get_all(header::VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .collect()
    }

    /// A response that sets a session cookie (new, renewed, removed) or the id header is
    /// `Cache-Control: private`, unless the handler chose its own `Cache-Control`; a
    /// response after the session was touched varies on the cookie.
    async fn session_cookie_responses_stay_out_of_shared_caches<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone())
            .max_age(Duration::from_secs(3600))
            .unwrap();
        // New session.
        let out = call(&layer, None, "put:a:1").await;
        assert_eq!(cache_control(&out), Some("private"));
        assert_eq!(vary(&out), ["cookie"]);
        let c = cookie_pair(&out);
        // Renewed cookie on a read.
        let out = call(&layer, Some(&c), "get:a").await;
        assert_eq!(out.set_cookie.len(), 1);
        assert_eq!(cache_control(&out), Some("private"));
        // The handler's own choice stands, even with a cookie.
        let own = [("x-cache-control", "public, max-age=60")];
        let out = send(&layer, Some(&c), None, &own, "put:b:2").await;
        assert_eq!(out.set_cookie.len(), 1);
        assert_eq!(cache_control(&out), Some("public, max-age=60"));
        let own = [("x-cache-control", "no-store")];
        let out = send(&layer, None, None, &own, "put:b:2").await;
        assert_eq!(cache_control(&out), Some("no-store"));
        // Cookie removal.
        let out = call(&layer, Some(&c), "destroy").await;
        assert!(removes_cookie(&out));
        assert_eq!(cache_control(&out), Some("private"));

        // Without Max-Age, a read sends no cookie: no Cache-Control, but Vary.
        let layer = SessionLayer::new(store.clone());
        let c = cookie_pair(&call(&layer, None, "put:a:1").await);
        let out = call(&layer, Some(&c), "get:a").await;
        assert!(out.set_cookie.is_empty());
        assert_eq!(cache_control(&out), None);
        assert_eq!(vary(&out), ["cookie"]);
        // A read that finds no session depends on the cookie too.
        let out = call(&layer, None, "get:a").await;
        assert_eq!(
            (cache_control(&out), vary(&out)),
            (None, vec!["cookie".to_owned()])
        );
        // Untouched: nothing added.
        let out = call(&layer, Some(&c), "none").await;
        assert_eq!(
            (cache_control(&out), vary(&out)),
            (None, Vec::<String>::new())
        );
        // The handler's Vary is kept and extended once; `*` already covers everything.
        let out = send(
            &layer,
            Some(&c),
            None,
            &[("x-vary", "Accept-Encoding")],
            "get:a",
        )
        .await;
        assert_eq!(vary(&out), ["accept-encoding", "cookie"]);
        let out = send(&layer, Some(&c), None, &[("x-vary", "Cookie")], "get:a").await;
        assert_eq!(vary(&out), ["cookie"]);
        let out = send(&layer, Some(&c), None, &[("x-vary", "*")], "get:a").await;
        assert_eq!(vary(&out), ["*"]);

        // Header transport: the id header makes the response private; Vary names it.
        let layer = SessionLayer::new(store).header(http::HeaderName::from_static("x-session"));
        let out = call(&layer, None, "put:a:1").await;
        assert!(out.headers.contains_key("x-session"));
        assert_eq!(cache_control(&out), Some("private"));
        assert_eq!(vary(&out), ["x-session"]);
    }

    /// The extremes the builder accepts work on every request: `Max-Age` of `i64::MAX`
    /// seconds, the longest TTL the store holds as idle timeout, an unbounded absolute
    /// lifetime, and one second for each.
    async fn longest_and_shortest_accepted_settings_work<St: StateStore>(store: St) {
        let layer = SessionLayer::new(store.clone())
            .max_age(Duration::from_secs(i64::MAX as u64))
            .unwrap()
            .idle_timeout(Duration::from_secs(100 * 365 * 24 * 3600))
            .unwrap()
            .absolute_lifetime(Duration::MAX)
            .unwrap();
        let out = call(&layer, None, "put:a:1").await;
        assert_eq!(out.status, StatusCode::OK, "{}", out.body);
        assert!(
            out.set_cookie[0].contains(&format!("Max-Age={}", i64::MAX)),
            "{:?}",
            out.set_cookie
        );
        let c = cookie_pair(&out);
        let out = call(&layer, Some(&c), "put:b:2,get:a").await;
        assert_eq!(
            (out.status, out.body.as_str()),
            (StatusCode::OK, ",Some(\"1\")")
        );
        let second = Duration::from_secs(1);
        let layer = SessionLayer::new(store)
            .max_age(second)
            .unwrap()
            .idle_timeout(second)
            .unwrap()
            .absolute_lifetime(second)
            .unwrap();
        let out = call(&layer, None, "put:a:1").await;
        assert_eq!(out.status, StatusCode::OK, "{}", out.body);
        assert!(
            out.set_cookie[0].contains("Max-Age=1"),
            "{:?}",
            out.set_cookie
        );
    }

    backend_tests!(
        destroy_then_insert_starts_a_new_session,
        destroy_then_nothing_to_keep_creates_no_session,
        cycle_then_writes_move_to_the_new_id,
        clear_then_insert_keeps_the_id,
        sid_session_created_and_destroyed,
        sid_first_writes_concurrently_all_land,
        sid_with_corrupt_record_is_replaced_by_a_write,
        refresh_login_sid_keys_a_session,
        session_cookie_responses_stay_out_of_shared_caches,
        longest_and_shortest_accepted_settings_work,
    );

    #[track_caller]
    fn refused(built: Result<SessionLayer<MemoryStore>, ConfigError>, setting: &str) {
        match built {
            Err(e) => {
                assert_eq!(e.setting(), setting, "{e}");
                assert!(e.to_string().contains(setting), "{e}");
            }
            Ok(_) => panic!("`{setting}` was accepted"),
        }
    }

    /// Settings that could not work are refused when the layer is built, naming the
    /// setting, instead of failing (or misbehaving on) every request.
    #[tokio::test]
    async fn settings_that_cannot_work_are_refused() {
        let layer = || SessionLayer::new(MemoryStore::new());
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        // Max-Age: whole seconds in an i64.
        for bad in [
            Duration::ZERO,
            ms(999),
            secs(i64::MAX as u64 + 1),
            Duration::MAX,
        ] {
            refused(layer().max_age(bad), "max_age");
        }
        // Idle timeout: a TTL of every write; past the store's range every request failed.
        for bad in [
            Duration::ZERO,
            ms(500),
            secs(101 * 365 * 24 * 3600),
            secs(i64::MAX as u64),
            Duration::MAX,
        ] {
            refused(layer().idle_timeout(bad), "idle_timeout");
        }
        for bad in [Duration::ZERO, ms(999)] {
            refused(layer().absolute_lifetime(bad), "absolute_lifetime");
        }
        for bad in ["", "a b", "a;b", "sid=x", "a,b", "sé", "a\tb", "(a)"] {
            refused(layer().cookie_name(bad), "cookie_name");
        }
        for bad in ["", "/a; Domain=evil.example", "/a\r\nSet-Cookie: x=y", "/é"] {
            refused(layer().cookie_path(bad), "cookie_path");
        }
        for bad in [
            "",
            "example.com; Secure",
            "exa\0mple.com",
            "ex\u{e4}mple.com",
        ] {
            refused(layer().cookie_domain(bad), "cookie_domain");
        }
        // A brace would replace the id as the key's Redis Cluster hash tag.
        for bad in ["{", "}", "sess{", "}sess:", "app{x}:"] {
            refused(layer().key_prefix(bad), "key_prefix");
        }
    }
}

/// Sessions v2: field-level storage, atomic updates, key listing, limits and bad input.
mod sessions_v2 {
    use super::*;

    /// Sends `reqs` concurrently, alternating between two instances (two services with
    /// their own layer over one shared store), and returns the answers.
    async fn concurrently<St: StateStore>(
        one: &SessionLayer<St>,
        two: &SessionLayer<St>,
        reqs: Vec<Request<String>>,
    ) -> Vec<(StatusCode, String)> {
        let mut a = ServiceBuilder::new().layer(one.clone()).service_fn(handler);
        let mut b = ServiceBuilder::new().layer(two.clone()).service_fn(handler);
        let mut tasks = Vec::new();
        for (i, req) in reqs.into_iter().enumerate() {
            let svc = if i % 2 == 0 { &mut a } else { &mut b };
            tasks.push(tokio::spawn(svc.ready().await.unwrap().call(req)));
        }
        let mut out = Vec::new();
        for t in tasks {
            let res = t.await.unwrap().unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            out.push((status, String::from_utf8(body.to_vec()).unwrap()));
        }
        out
    }

    fn with_cookie(cookie: &str, op: &str) -> Request<String> {
        Request::builder()
            .header("x-op", op)
            .header(header::COOKIE, cookie)
            .body(String::new())
            .unwrap()
    }

    /// 32 concurrent increments of one counter through two instances: every answer is a
    /// success (a task retries only when another one changed the counter, so at most 31
    /// times), and the counter ends at exactly the number of successes, each value
    /// answered once.
    async fn concurrent_increments_through_two_instances_lose_nothing<St: StateStore>(
        store: St,
        other: St,
    ) {
        let one = SessionLayer::new(store).max_retries(31);
        let two = SessionLayer::new(other).max_retries(31);
        let c = cookie_pair(&call(&one, None, "put:seed:0").await);
        let reqs = (0..32).map(|_| with_cookie(&c, "incr:n")).collect();
        let answers = concurrently(&one, &two, reqs).await;
        let mut values: Vec<u64> = answers
            .iter()
            .map(|(status, body)| {
                assert_eq!(*status, StatusCode::OK, "{body}");
                body.parse().unwrap()
            })
            .collect();
        values.sort_unstable();
        assert_eq!(
            values,
            (1..=32).collect::<Vec<u64>>(),
            "each value answered once"
        );
        assert_eq!(call(&two, Some(&c), "get:seed").await.body, "Some(\"0\")");
        let out = call(&one, Some(&c), "incr:n").await;
        assert_eq!(out.body, "33");
    }

    /// Without retries, conflicting increments answer `409 session_conflict` and write
    /// nothing: the counter still ends at exactly the number of successful answers.
    async fn conflicting_increments_without_retries_count_only_successes<St: StateStore>(
        store: St,
        other: St,
    ) {
        let one = SessionLayer::new(store).max_retries(0);
        let two = SessionLayer::new(other).max_retries(0);
        let c = cookie_pair(&call(&one, None, "put:seed:0").await);
        let reqs = (0..32).map(|_| with_cookie(&c, "incr:n")).collect();
        let answers = concurrently(&one, &two, reqs).await;
        let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        for (status, body) in &answers {
            assert!(
                *status == StatusCode::OK
                    || (*status == StatusCode::CONFLICT && body == "session_conflict"),
                "{status} {body}"
            );
        }
        assert!(ok >= 1);
        // One more increment reads the counter: it was at the number of successes.
        let after = call(&one, Some(&c), "incr:n").await;
        assert_eq!(after.body, (ok + 1).to_string());
    }

    /// Concurrent writes of different keys of one session through two instances all land;
    /// concurrent writes of one key end at one of the values sent.
    async fn concurrent_writes_of_one_session_keep_every_key<St: StateStore>(store: St, other: St) {
        let one = SessionLayer::new(store);
        let two = SessionLayer::new(other);
        let c = cookie_pair(&call(&one, None, "put:seed:0").await);
        let reqs = (0..30)
            .map(|i| with_cookie(&c, &format!("put:item{i}:{i},put:same:{i}")))
            .collect();
        for (status, body) in concurrently(&one, &two, reqs).await {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let keys = call(&two, Some(&c), "keys:item").await.body;
        assert_eq!(keys.split('|').count(), 30, "{keys}");
        for i in 0..30 {
            assert_eq!(
                call(&one, Some(&c), &format!("get:item{i}")).await.body,
                format!("Some(\"{i}\")")
            );
        }
        let same = call(&one, Some(&c), "get:same").await.body;
        assert!((0..30).any(|i| same == format!("Some(\"{i}\")")), "{same}");
    }

    backend_pair_tests!(
        concurrent_increments_through_two_instances_lose_nothing,
        conflicting_increments_without_retries_count_only_successes,
        concurrent_writes_of_one_session_keep_every_key,
    );

    fn error_code(out: &Out) -> &str {
        out.headers
            .get("x-error-code")
            .map_or("", |v| v.to_str().unwrap())
    }

    mod single {
        use super::*;

        /// `keys` and `keys_with_prefix` list the session as the request sees it, its own
        /// pending changes included, sorted; no session lists nothing.
        async fn keys_list_the_session_as_the_request_sees_it<St: StateStore>(store: St) {
            let layer = SessionLayer::new(store);
            assert_eq!(call(&layer, None, "keys").await.body, "");
            let c = cookie_pair(
                &call(
                    &layer,
                    None,
                    "put:b:1,put:cart.y:1,put:cart.x:2,put:cartz:3",
                )
                .await,
            );
            assert_eq!(
                call(&layer, Some(&c), "keys").await.body,
                "b|cart.x|cart.y|cartz"
            );
            assert_eq!(
                call(&layer, Some(&c), "keys:cart.").await.body,
                "cart.x|cart.y"
            );
            assert_eq!(
                call(&layer, Some(&c), "put:cart.a:1,del:cart.y,keys:cart.")
                    .await
                    .body,
                ",,cart.a|cart.x"
            );
            assert_eq!(
                call(&layer, Some(&c), "keys:cart.").await.body,
                "cart.a|cart.x"
            );
            assert_eq!(call(&layer, Some(&c), "keys:nothing").await.body, "");
            assert_eq!(call(&layer, Some(&c), "clear,keys").await.body, ",");
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "");
        }

        /// A stored value read (or updated) as another type is a `Decode` error naming the
        /// key; the session is untouched.
        async fn a_value_of_another_type_is_a_clear_error_and_changes_nothing<St: StateStore>(
            store: St,
        ) {
            let layer = SessionLayer::new(store);
            let c = cookie_pair(&call(&layer, None, "put:a:text").await);
            let out = call(&layer, Some(&c), "getnum:a").await;
            assert_eq!(error_code(&out), "session_error");
            let out = call(&layer, Some(&c), "put:b:1,incr:a").await;
            assert_eq!(
                (out.status, out.body.as_str()),
                (StatusCode::INTERNAL_SERVER_ERROR, "session_error")
            );
            assert_eq!(call(&layer, Some(&c), "get:a").await.body, "Some(\"text\")");
            // The decode error comes with the key and the serde reason.
            let session_error = {
                let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
                    |req: Request<String>| async move {
                        let s = req.extensions().get::<Session>().cloned().unwrap();
                        let e = s.get::<u64>("a").await.unwrap_err();
                        assert!(
                            matches!(&e, tower_stateless::session::SessionError::Decode { key, .. } if key == "a"),
                            "{e:?}"
                        );
                        Ok::<_, Infallible>(Response::new(e.to_string()))
                    },
                );
                let req = Request::builder()
                    .header(header::COOKIE, &c)
                    .body(String::new())
                    .unwrap();
                let res = svc.oneshot(req).await.unwrap();
                String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
                    .unwrap()
            };
            assert!(session_error.contains("\"a\""), "{session_error}");
        }

        /// A session past `max_size` is refused whole, never truncated: after a load,
        /// `insert` and `update` return `TooLarge`; without one (an insert does not load),
        /// the write-back is refused whole with `413`; removals that shrink it still work.
        async fn a_session_past_its_size_limit_is_refused_whole<St: StateStore>(store: St) {
            let layer = SessionLayer::new(store).max_size(64).unwrap();
            let big = "x".repeat(40);
            let c = cookie_pair(&call(&layer, None, &format!("put:a:{big}")).await);
            // "b" + 42 bytes of JSON on top of "a" + 42: 86 > 64. Unread: the store
            // refuses the write-back, and nothing of the request is kept.
            let out = call(&layer, Some(&c), &format!("put:c:1,put:b:{big}")).await;
            assert_eq!(out.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert!(out.body.contains("session_too_large"), "{}", out.body);
            assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
            assert_eq!(
                call(&layer, Some(&c), "get:b,get:c").await.body,
                "None,None"
            );
            // Read first: the insert itself is refused, and the handler answers.
            let out = call(&layer, Some(&c), &format!("get:a,put:c:1,put:b:{big}")).await;
            assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error_code(&out), "session_too_large");
            assert_eq!(call(&layer, Some(&c), "get:b").await.body, "None");
            assert_eq!(call(&layer, Some(&c), "get:c").await.body, "Some(\"1\")");
            let out = call(&layer, Some(&c), "incr:a").await;
            assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR, "a is text");
            // A new session over the limit is not created.
            let out = call(&layer, None, &format!("put:a:{big}{big}")).await;
            assert_eq!(error_code(&out), "session_too_large");
            assert!(out.set_cookie.is_empty());
            // Shrinking works.
            assert_eq!(call(&layer, Some(&c), "del:a").await.status, StatusCode::OK);
            assert_eq!(
                call(&layer, Some(&c), &format!("put:b:{big}")).await.status,
                StatusCode::OK
            );
        }

        /// Two requests that each fit the limit but together cross it: the store refuses
        /// the later write-back whole and the layer answers `413`, nothing of it saved.
        async fn concurrent_growth_past_the_limit_is_refused_by_the_store<St: StateStore>(
            store: St,
        ) {
            // "a" + "\"1\"" = 4; each request adds 47 or 48: alone they fit in 90, together
            // not.
            let layer = SessionLayer::new(store).max_size(90).unwrap();
            let c = cookie_pair(&call(&layer, None, "put:a:1").await);
            let big = "y".repeat(40);
            let inner = layer.clone();
            let (cookie, value) = (c.clone(), big.clone());
            let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
                move |req: Request<String>| {
                    let (inner, cookie, value) = (inner.clone(), cookie.clone(), value.clone());
                    async move {
                        let s = req.extensions().get::<Session>().cloned().unwrap();
                        s.insert("first", &value).await.unwrap();
                        // Another request grows the session meanwhile, and is saved.
                        let out = call(&inner, Some(&cookie), &format!("put:second:{value}")).await;
                        assert_eq!(out.status, StatusCode::OK);
                        Ok::<_, Infallible>(Response::new(String::new()))
                    }
                },
            );
            let req = Request::builder()
                .header(header::COOKIE, &c)
                .body(String::new())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains("session_too_large"));
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "a|second");
        }

        /// A session in the previous format (one JSON record under the key) is no session:
        /// a read finds nothing (never a 500), a write starts a new session under a new id,
        /// and under a `sid` a write replaces the old record.
        async fn a_session_of_the_old_format_is_treated_as_absent<St: StateStore>(store: St) {
            let layer = SessionLayer::new(store.clone()).id_from_sid_claim(true);
            let id = "O".repeat(43);
            let old = format!(
                r#"{{"v":1,"created":{},"data":{{"a":"1"}}}}"#,
                1_700_000_000
            );
            let key = format!("sess:{{{id}}}");
            store
                .set(&key, Bytes::from(old.clone()), Duration::from_secs(60))
                .await
                .unwrap();
            let c = format!("id={id}");
            let out = call(&layer, Some(&c), "get:a,keys").await;
            assert_eq!((out.status, out.body.as_str()), (StatusCode::OK, "None,"));
            let out = call(&layer, Some(&c), "put:a:2").await;
            assert_eq!(out.status, StatusCode::OK);
            let fresh = cookie_pair(&out);
            assert_ne!(fresh, c, "a write must not adopt the client's id");
            assert_eq!(
                call(&layer, Some(&fresh), "get:a").await.body,
                "Some(\"2\")"
            );
            let out = call(&layer, Some(&c), "incr:n").await;
            assert_eq!(out.status, StatusCode::OK, "{}", out.body);
            // Under a sid the old record gives way to the new session.
            let sid = "P".repeat(43);
            let key = format!("sess:{{{sid}}}");
            store
                .set(&key, Bytes::from(old), Duration::from_secs(60))
                .await
                .unwrap();
            let claims = || Some(RegisteredClaims::new("alice", u64::MAX).with_sid(&sid));
            let out = call_with(&layer, None, claims(), "get:a,incr:n,put:b:1").await;
            assert_eq!((out.status, out.body.as_str()), (StatusCode::OK, "None,1,"));
            assert_eq!(call_with(&layer, None, claims(), "keys").await.body, "b|n");
        }

        /// `update` on a session that another request destroyed after this one loaded it
        /// answers `Ended` and writes nothing; the write-back does not bring it back.
        async fn update_of_a_session_destroyed_meanwhile_does_not_resurrect_it<St: StateStore>(
            store: St,
        ) {
            let layer = SessionLayer::new(store.clone());
            let c = cookie_pair(&call(&layer, None, "put:a:1").await);
            let id = c.trim_start_matches("id=").to_owned();
            let st = store.clone();
            let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
                move |req: Request<String>| {
                    let (st, id) = (st.clone(), id.clone());
                    async move {
                        let s = req.extensions().get::<Session>().cloned().unwrap();
                        assert_eq!(s.get::<String>("a").await.unwrap().as_deref(), Some("1"));
                        st.delete(&format!("sess:{{{id}}}")).await.unwrap();
                        let e = s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).await;
                        assert!(
                            matches!(e, Err(tower_stateless::session::SessionError::Ended)),
                            "{e:?}"
                        );
                        s.insert("b", 2).await.unwrap();
                        Ok::<_, Infallible>(Response::new(String::new()))
                    }
                },
            );
            let req = Request::builder()
                .header(header::COOKIE, &c)
                .body(String::new())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers().get(header::SET_COOKIE).is_none());
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "");
        }

        /// `update` without a session creates one (new id, cookie); after `destroy` in the
        /// same request it starts a new one; with pending changes it starts from them.
        async fn update_creates_a_session_and_sees_pending_changes<St: StateStore>(store: St) {
            let layer = SessionLayer::new(store);
            let out = call(&layer, None, "incr:n,incr:n").await;
            assert_eq!((out.status, out.body.as_str()), (StatusCode::OK, "1,2"));
            let c = cookie_pair(&out);
            let out = call(&layer, Some(&c), "put:n:x,del:n,incr:n,keys").await;
            assert_eq!(out.body, ",,1,n");
            let out = call(&layer, Some(&c), "destroy,incr:n").await;
            assert_eq!(out.body, ",1");
            let fresh = out
                .set_cookie
                .iter()
                .find(|c| !c.contains("Max-Age=0"))
                .map(|c| c.split(';').next().unwrap().to_owned())
                .expect("a new session cookie");
            assert_ne!(fresh, c);
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "");
            assert_eq!(call(&layer, Some(&fresh), "incr:n").await.body, "2");
            // clear, then update: the update starts from nothing (the request cleared the
            // session) and survives the clear of the write-back.
            let out = call(&layer, Some(&fresh), "put:z:1,clear,incr:n,keys").await;
            assert_eq!(out.body, ",,1,n");
            assert_eq!(call(&layer, Some(&fresh), "keys").await.body, "n");
        }

        /// An id that expired is no session: a write gets a new id, and the expired one
        /// stays gone.
        async fn an_expired_id_is_no_session<St: StateStore>(store: St) {
            let layer = SessionLayer::new(store)
                .idle_timeout(Duration::from_secs(1))
                .unwrap();
            let c = cookie_pair(&call(&layer, None, "put:a:1").await);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let out = call(&layer, Some(&c), "get:a,put:b:1").await;
            assert_eq!(out.body, "None,");
            let fresh = cookie_pair(&out);
            assert_ne!(fresh, c);
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "");
            assert_eq!(call(&layer, Some(&fresh), "keys").await.body, "b");
        }

        /// A request that only inserts, removes or clears does not load the session: one
        /// write into the session when it exists (other keys kept), and a new session under
        /// a new id when it does not (an unknown id, or one destroyed during the request),
        /// never the old id brought back.
        async fn writes_without_a_read_cost_one_write_and_never_resurrect<St: StateStore>(
            store: St,
        ) {
            let counting = counting(store);
            let layer = SessionLayer::new(counting.clone());
            let c = cookie_pair(&call(&layer, None, "put:a:1,put:b:2").await);
            counting.reset();
            let out = call(&layer, Some(&c), "put:c:3,del:a").await;
            assert_eq!(out.status, StatusCode::OK);
            assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
            assert_eq!(counting.operations(), 1, "one write, no read");
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "b|c");
            counting.reset();
            call(&layer, Some(&c), "clear,put:d:4").await;
            assert_eq!(counting.operations(), 1);
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "d");

            // An unknown id: the write finds no session and starts one under a new id.
            let unknown = format!("id={}", "U".repeat(43));
            counting.reset();
            let out = call(&layer, Some(&unknown), "put:x:1").await;
            assert_eq!(out.status, StatusCode::OK);
            let fresh = cookie_pair(&out);
            assert_ne!(fresh, unknown);
            assert_eq!(
                counting.operations(),
                2,
                "the write that finds nothing, the create"
            );
            assert_eq!(call(&layer, Some(&unknown), "keys").await.body, "");
            assert_eq!(call(&layer, Some(&fresh), "keys").await.body, "x");
            // Only removals under an unknown id: nothing is created, no cookie.
            let out = call(&layer, Some(&unknown), "del:x,clear").await;
            assert!(out.set_cookie.is_empty(), "{:?}", out.set_cookie);
            assert_eq!(call(&layer, Some(&unknown), "keys").await.body, "");

            // Destroyed by another request while this one ran: the old id stays gone, the
            // insert lands in a new session of its own.
            let inner = layer.clone();
            let cookie = c.clone();
            let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
                move |req: Request<String>| {
                    let (inner, cookie) = (inner.clone(), cookie.clone());
                    async move {
                        let s = req.extensions().get::<Session>().cloned().unwrap();
                        s.insert("late", "1").await.unwrap();
                        let out = call(&inner, Some(&cookie), "destroy").await;
                        assert_eq!(out.status, StatusCode::OK);
                        Ok::<_, Infallible>(Response::new(String::new()))
                    }
                },
            );
            let req = Request::builder()
                .header(header::COOKIE, &c)
                .body(String::new())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let set: Vec<String> = res
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
                .collect();
            assert_eq!(set.len(), 1, "{set:?}");
            assert_ne!(set[0], c);
            assert_eq!(call(&layer, Some(&c), "keys").await.body, "");
            assert_eq!(call(&layer, Some(&set[0]), "keys").await.body, "late");
        }

        backend_tests!(
            keys_list_the_session_as_the_request_sees_it,
            writes_without_a_read_cost_one_write_and_never_resurrect,
            a_value_of_another_type_is_a_clear_error_and_changes_nothing,
            a_session_past_its_size_limit_is_refused_whole,
            concurrent_growth_past_the_limit_is_refused_by_the_store,
            a_session_of_the_old_format_is_treated_as_absent,
            update_of_a_session_destroyed_meanwhile_does_not_resurrect_it,
            update_creates_a_session_and_sees_pending_changes,
            an_expired_id_is_no_session,
        );

        /// Store down: `update` answers unavailable (503) and nothing is written.
        #[tokio::test]
        async fn update_with_the_store_down_is_503() {
            let layer = SessionLayer::new(common::DownStore::unavailable());
            let id = format!("id={}", "A".repeat(43));
            let out = call(&layer, Some(&id), "incr:n").await;
            assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(out.body, "store_unavailable");
            let out = call(&layer, None, "incr:n").await;
            assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(out.set_cookie.is_empty());
        }

        /// A size limit that cannot work is refused when the layer is built.
        #[test]
        fn impossible_size_limits_are_refused() {
            for bad in [0, 512 * 1024 * 1024 + 1, usize::MAX] {
                match SessionLayer::new(MemoryStore::new()).max_size(bad) {
                    Err(e) => assert_eq!(e.setting(), "max_size", "{e}"),
                    Ok(_) => panic!("max_size({bad}) was accepted"),
                }
            }
            assert!(SessionLayer::new(MemoryStore::new()).max_size(1).is_ok());
        }
    }
}

/// An id of the wrong length or alphabet (forged, truncated, a 10 KB cookie) is ignored
/// without a store lookup, and a write then starts a session under a fresh id; a
/// well-formed id costs its one read.
async fn malformed_ids_cost_no_store_lookup<St: StateStore>(store: St) {
    let store = counting(store);
    let layer = SessionLayer::new(store.clone());
    let huge = format!("id={}", "A".repeat(10 * 1024));
    let a = |n: usize| "A".repeat(n);
    let malformed = [
        "id=short".to_owned(),
        format!("id={}", a(42)),
        format!("id={}", a(44)),
        format!("id={}!", a(42)),
        format!("id={}.0123456789abcdeg", a(43)),
        format!("id={}.0123", a(43)),
        huge,
        "id=".to_owned(),
    ];
    for cookie in &malformed {
        let cookie = cookie.as_str();
        store.reset();
        let out = call(&layer, Some(cookie), "get:a,keys").await;
        assert_eq!(out.status, StatusCode::OK, "{cookie:.60}");
        assert_eq!(out.body, "None,", "{cookie:.60}");
        assert_eq!(store.operations(), 0, "{cookie:.60}: no store lookup");
        assert!(out.set_cookie.is_empty(), "{cookie:.60}");

        let out = call(&layer, Some(cookie), "put:a:1").await;
        assert_eq!(out.status, StatusCode::OK, "{cookie:.60}");
        assert_eq!(
            store.operations(),
            1,
            "{cookie:.60}: the new session's write"
        );
        let fresh = cookie_pair(&out);
        assert_ne!(fresh, cookie);
        assert_eq!(fresh.len(), "id=".len() + 43, "{fresh}");
    }
    // The well-formed forgery is looked up (one read) and is no session.
    store.reset();
    let forged = format!("id={}", "A".repeat(43));
    let out = call(&layer, Some(&forged), "get:a").await;
    assert_eq!(out.body, "None");
    assert_eq!(store.operations(), 1);
}

#[tokio::test]
async fn memory_malformed_ids_cost_no_store_lookup() {
    malformed_ids_cost_no_store_lookup(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_malformed_ids_cost_no_store_lookup() {
    let server = redis_or_skip!();
    malformed_ids_cost_no_store_lookup(RedisStore::from_url(server.url()).unwrap()).await;
}

/// Session writes (`hash_apply`) fail as unavailable while the flag is up; reads work.
#[derive(Default)]
struct FailWrites(std::sync::atomic::AtomicBool);

impl common::Hook for FailWrites {
    fn before(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        if self.0.load(Ordering::SeqCst) && matches!(call, common::Call::HashApply(..)) {
            return Err(StoreError::Unavailable("write lost (test)".into()));
        }
        Ok(())
    }
}

/// The session loads, the handler changes it and answers `200`, and only the write-back
/// fails: the client gets `503` with `Retry-After` (never a `200` for a change that was
/// not saved), no new cookie, and the stored session is as it was.
async fn a_failed_write_back_is_503_never_a_silent_loss<St: StateStore>(store: St) {
    let store = common::Intercept::new(store, FailWrites::default());
    let layer = SessionLayer::new(store.clone());
    let c = cookie_pair(&call(&layer, None, "put:a:1").await);

    store.hook.0.store(true, Ordering::SeqCst);
    for op in [
        "get:a,put:b:2",
        "put:b:2",
        "del:a",
        "clear",
        "get:a,put:a:9",
    ] {
        let out = call(&layer, Some(&c), op).await;
        assert_eq!(
            out.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{op}: {}",
            out.body
        );
        assert!(out.body.contains("store_unavailable"), "{op}: {}", out.body);
        assert_eq!(out.retry_after.as_deref(), Some("1"), "{op}");
        assert!(out.set_cookie.is_empty(), "{op}");
    }
    store.hook.0.store(false, Ordering::SeqCst);

    let out = call(&layer, Some(&c), "keys,get:a").await;
    assert_eq!(
        out.body, "a,Some(\"1\")",
        "nothing of the failed requests was kept"
    );
}

#[tokio::test]
async fn memory_a_failed_write_back_is_503_never_a_silent_loss() {
    a_failed_write_back_is_503_never_a_silent_loss(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_a_failed_write_back_is_503_never_a_silent_loss() {
    let server = redis_or_skip!();
    a_failed_write_back_is_503_never_a_silent_loss(RedisStore::from_url(server.url()).unwrap())
        .await;
}
