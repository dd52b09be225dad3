//! RateLimitLayer black-box tests, on MemoryStore, a real Redis and a Redis Cluster.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::rate_limit::{Quota, RateLimitLayer, RateLimiter};
use tower_stateless::response::ResponseBody;
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tower_stateless::{RegisteredClaims, StoreFailure};

type Svc = BoxCloneSyncService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// One service instance; its handler counts its runs.
#[derive(Clone)]
struct Instance {
    runs: Arc<AtomicUsize>,
    svc: Svc,
}

fn instance<St: StateStore>(layer: RateLimitLayer<St>) -> Instance {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_: Request<String>| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new("ok".to_owned())) }
        });
    Instance {
        runs,
        svc: BoxCloneSyncService::new(svc),
    }
}

struct Out {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(inst: &Instance, req: Request<String>) -> Out {
    let res = inst.svc.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Out {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn as_user(sub: &str) -> Request<String> {
    let mut req = Request::new(String::new());
    req.extensions_mut()
        .insert(RegisteredClaims::new(sub, u64::MAX / 2));
    req
}

fn header(out: &Out, name: &str) -> String {
    out.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The N+1-th request in a period is 429 with the right `Retry-After` and headers; the
/// handler does not run for it.
async fn n_plus_one_is_429<St: StateStore>(store: St) {
    let a = instance(RateLimitLayer::new(store, Quota::per_minute(5).unwrap()));
    for remaining in (0..5).rev() {
        let out = send(&a, as_user("alice")).await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(header(&out, "ratelimit-policy"), "\"default\";q=5;w=60");
        let limit = header(&out, "ratelimit");
        assert!(
            limit.starts_with(&format!("\"default\";r={remaining};t=")),
            "{limit}"
        );
        assert!(!out.headers.contains_key("retry-after"));
    }
    let out = send(&a, as_user("alice")).await;
    assert_eq!(out.status, StatusCode::TOO_MANY_REQUESTS);
    // 5 per minute: one request comes back every 12 s.
    let retry: u64 = header(&out, "retry-after").parse().expect("Retry-After");
    assert!((11..=12).contains(&retry), "Retry-After {retry}");
    assert!(header(&out, "ratelimit").starts_with("\"default\";r=0;t="));
    assert!(out.body.contains("\"rate_limited\""), "{}", out.body);
    assert_eq!(out.headers["content-type"], "application/json");
    assert_eq!(a.runs.load(Ordering::SeqCst), 5, "the 6th must not run");
    // Another caller has a quota of its own.
    assert_eq!(send(&a, as_user("bob")).await.status, StatusCode::OK);
}

/// Two instances on one store share one quota: 2N requests spread over both pass N.
async fn shared_by_instances<St: StateStore>(store: St) {
    let layer = RateLimitLayer::new(store, Quota::per_minute(10).unwrap());
    let (a, b) = (instance(layer.clone()), instance(layer));
    let mut allowed = 0;
    for i in 0..20 {
        let inst = if i % 2 == 0 { &a } else { &b };
        if send(inst, as_user("carol")).await.status == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
    assert_eq!(
        a.runs.load(Ordering::SeqCst) + b.runs.load(Ordering::SeqCst),
        10
    );
    // Concurrently too.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let inst = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { send(&inst, as_user("dave")).await.status })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("task") == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
}

/// After the period the quota is back.
async fn recovers_after_the_period<St: StateStore>(store: St) {
    let quota = Quota::new(2, Duration::from_millis(600)).unwrap();
    let a = instance(RateLimitLayer::new(store, quota));
    assert_eq!(send(&a, as_user("erin")).await.status, StatusCode::OK);
    assert_eq!(send(&a, as_user("erin")).await.status, StatusCode::OK);
    let denied = send(&a, as_user("erin")).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&denied, "retry-after"),
        "1",
        "rounded up to a second"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(send(&a, as_user("erin")).await.status, StatusCode::OK);
    assert_eq!(send(&a, as_user("erin")).await.status, StatusCode::OK);
    assert_eq!(
        send(&a, as_user("erin")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Keys: the JWT subject, else the trusted header's last entry, else the peer address. A
/// custom key function replaces all of it. (No key at all: `keyless_requests_pass_with_one_warning`.)
async fn keys<St: StateStore>(store: St) {
    let a = instance(
        RateLimitLayer::new(store.clone(), Quota::per_minute(1).unwrap())
            .trusted_header(http::HeaderName::from_static("x-forwarded-for")),
    );
    let from = |xff: &str| {
        Request::builder()
            .header("x-forwarded-for", xff)
            .body(String::new())
            .expect("request")
    };
    assert_eq!(
        send(&a, from("1.1.1.1, 10.0.0.1")).await.status,
        StatusCode::OK
    );
    // Same last hop, other spoofed first entry: the same bucket.
    assert_eq!(
        send(&a, from("9.9.9.9, 10.0.0.1")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&a, from("10.0.0.2")).await.status, StatusCode::OK);
    // Claims win over the header.
    let mut req = from("10.0.0.1");
    req.extensions_mut()
        .insert(RegisteredClaims::new("frank", u64::MAX / 2));
    assert_eq!(send(&a, req).await.status, StatusCode::OK);
    // The peer address, as hyper users insert it.
    let b = instance(RateLimitLayer::new(
        store.clone(),
        Quota::per_minute(1).unwrap().burst(1).unwrap(),
    ));
    let peer = |ip: [u8; 4]| {
        let mut req = Request::new(String::new());
        req.extensions_mut().insert(SocketAddr::from((ip, 4000)));
        req
    };
    assert_eq!(send(&b, peer([127, 0, 0, 9])).await.status, StatusCode::OK);
    assert_eq!(
        send(&b, peer([127, 0, 0, 9])).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A custom key: per path; a hostile, huge key is hashed, not stored as sent.
    let c = instance(
        RateLimitLayer::from_limiter(
            RateLimiter::new(store, Quota::per_minute(1).unwrap())
                .key_prefix("rl:path:")
                .unwrap()
                .policy_name("per path"),
        )
        .key_fn(|parts| Some(parts.uri.path().to_owned())),
    );
    let path = |p: &str| {
        Request::builder()
            .uri(p)
            .body(String::new())
            .expect("request")
    };
    let out = send(&c, path("/a")).await;
    assert_eq!(header(&out, "ratelimit-policy"), "\"perpath\";q=1;w=60");
    assert_eq!(
        send(&c, path("/a")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let long = format!("/{}", "x{y}".repeat(2000));
    assert_eq!(send(&c, path(&long)).await.status, StatusCode::OK);
    assert_eq!(
        send(&c, path(&long)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Any quota, sub-millisecond intervals and odd counts included, lets through at most
/// `count` per `period` plus the burst (within 1 %), counted over a window measured with
/// `Instant` while four tasks hammer one key; and the quota does come back.
///
/// The upper bound holds however loaded the machine is: GCRA allows by the store's clock,
/// whatever the clients manage to send. The lower bounds only rest on time passing:
/// requests keep coming until the window is over, so one after the burst must pass; and
/// after a sleep of 11 intervals at least 10 units are back.
async fn rate_holds_over_a_measured_window<St: StateStore>(store: St) {
    let quotas = [
        ("600/s", Quota::per_second(600).unwrap()),
        (
            "5000/s, burst 50",
            Quota::per_second(5000).unwrap().burst(50).unwrap(),
        ),
        (
            "501/s, burst 5",
            Quota::per_second(501).unwrap().burst(5).unwrap(),
        ),
        (
            "333/s, burst 1",
            Quota::per_second(333).unwrap().burst(1).unwrap(),
        ),
    ];
    for (i, (name, quota)) in quotas.into_iter().enumerate() {
        let limiter = RateLimiter::new(store.clone(), quota)
            .key_prefix(format!("rl:rate{i}:"))
            .unwrap();
        let burst = u64::from(quota.burst_size());
        let window = Duration::from_millis(500);
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, sent) = (limiter.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut allowed = 0u64;
                    // Until the window is over, and past the burst however slow we are.
                    while start.elapsed() < window || sent.load(Ordering::SeqCst) <= burst + 1 {
                        sent.fetch_add(1, Ordering::SeqCst);
                        if limiter.check("hammer").await.expect("check").allowed() {
                            allowed += 1;
                        }
                    }
                    allowed
                })
            })
            .collect();
        let mut allowed = 0u64;
        for task in tasks {
            allowed += task.await.expect("task");
        }
        let measured = start.elapsed();
        let sent = sent.load(Ordering::SeqCst);
        let bound = f64::from(quota.count()) * measured.as_secs_f64()
            / quota.period().as_secs_f64()
            + burst as f64;
        assert!(
            allowed as f64 <= bound * 1.01,
            "{name}: {allowed} of {sent} allowed in {measured:?}, at most {bound:.1} may be"
        );
        assert!(
            allowed > burst,
            "{name}: the quota must come back within the window: {allowed} of {sent} allowed"
        );

        // Refill: 11 intervals of sleep bring back at least 10 units (or the whole burst).
        let interval = quota.period() / quota.count();
        tokio::time::sleep(interval * 11).await;
        let mut refilled = 0u64;
        for _ in 0..burst.max(10) {
            if limiter.check("hammer").await.expect("check").allowed() {
                refilled += 1;
            }
        }
        assert!(
            refilled >= burst.min(10),
            "{name}: after 11 intervals only {refilled} requests passed"
        );
    }
}

/// Rate-limit state written by earlier versions (whole milliseconds since the epoch) is
/// read as such: no `500`, no `503`, no lockout, no free reset.
async fn state_stored_in_milliseconds_by_earlier_versions<St: StateStore>(store: St) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let ttl = Duration::from_secs(60);
    let spent_until = |ms: u128| bytes::Bytes::from(ms.to_string());
    store
        .set("rl:{sub:olga}", spent_until(now_ms + 30_000), ttl)
        .await
        .expect("set");
    store
        .set("rl:{sub:pete}", spent_until(now_ms - 1_000), ttl)
        .await
        .expect("set");
    let a = instance(
        RateLimitLayer::new(store, Quota::per_minute(1).unwrap())
            .on_store_failure(StoreFailure::closed()),
    );
    let out = send(&a, as_user("olga")).await;
    assert_eq!(out.status, StatusCode::TOO_MANY_REQUESTS, "{}", out.body);
    let retry: u64 = header(&out, "retry-after").parse().expect("Retry-After");
    assert!((20..=30).contains(&retry), "Retry-After {retry}");
    let out = send(&a, as_user("pete")).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);
}

backend_tests!(
    n_plus_one_is_429,
    shared_by_instances,
    recovers_after_the_period,
    keys,
    rate_holds_over_a_measured_window,
    state_stored_in_milliseconds_by_earlier_versions,
);

/// Quotas that cannot be kept are refused when built, naming the setting; never a panic,
/// a silent clamp, or a failure on every request.
#[test]
fn quotas_that_cannot_be_kept_are_refused_when_built() {
    let cases = [
        ("count", Quota::per_second(0)),
        ("count", Quota::per_minute(0)),
        ("count", Quota::per_hour(0)),
        ("count", Quota::new(0, Duration::ZERO)),
        ("period", Quota::new(1, Duration::ZERO)),
        ("period", Quota::new(10, Duration::MAX)),
        ("count", Quota::per_second(1_000_001)),
        ("count", Quota::per_second(u32::MAX)),
        ("count", Quota::new(2, Duration::from_nanos(1_999))),
        ("burst", Quota::per_second(1).and_then(|q| q.burst(0))),
        ("burst", Quota::per_hour(1).and_then(|q| q.burst(u32::MAX))),
    ];
    for (setting, result) in cases {
        match result {
            Err(e) => {
                assert_eq!(e.setting(), setting, "{e}");
                assert!(!e.reason().is_empty());
            }
            Ok(quota) => panic!("{quota:?}: expected `{setting}` to be refused"),
        }
    }
    // What was capped silently before is now kept as asked.
    assert_eq!(Quota::per_second(5000).unwrap().count(), 5000);
    assert_eq!(Quota::per_second(1_000_000).unwrap().count(), 1_000_000);
}

#[tokio::test]
async fn one_redis_command_per_request() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    let a = instance(RateLimitLayer::new(store, Quota::per_minute(3).unwrap()));
    send(&a, as_user("warm")).await; // connection and the script's first load
    server.reset_stats();
    for _ in 0..5 {
        send(&a, as_user("gina")).await;
    }
    let stats = server.command_stats();
    assert_eq!(stats.get("evalsha"), Some(&5), "{stats:?}");
    assert_eq!(
        server.command_count(),
        5,
        "allowed and denied alike: {stats:?}"
    );
    let keys = server.keys("rl:*");
    assert!(keys.contains(&"rl:{sub:gina}".to_owned()), "{keys:?}");
    assert!(server.pttl("rl:{sub:gina}") > 0, "rate-limit state expires");
}

/// A gRPC request over the limit gets `RESOURCE_EXHAUSTED` whose message says how many
/// seconds to wait (a gRPC client sees `Retry-After` only as metadata); the rate-limit
/// headers and `Retry-After` are kept, and the handler does not run.
#[tokio::test]
async fn grpc_rejection_says_how_long_to_wait() {
    let a = instance(RateLimitLayer::new(
        MemoryStore::new(),
        Quota::per_minute(1).unwrap(),
    ));
    let grpc = || {
        let mut req = as_user("ivy");
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        req
    };
    let out = send(&a, grpc()).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(!out.headers.contains_key("grpc-status"));
    let out = send(&a, grpc()).await;
    assert_eq!(out.status, StatusCode::OK, "gRPC answers travel in a 200");
    assert_eq!(header(&out, "grpc-status"), "8", "RESOURCE_EXHAUSTED");
    let retry: u64 = header(&out, "retry-after").parse().expect("Retry-After");
    // One request a minute: the next comes back within the minute.
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        header(&out, "grpc-message"),
        format!("too many requests; retry after {retry} s")
    );
    assert_eq!(header(&out, "ratelimit-policy"), "\"default\";q=1;w=60");
    assert!(header(&out, "ratelimit").starts_with("\"default\";r=0;t="));
    assert_eq!(a.runs.load(Ordering::SeqCst), 1, "the second must not run");
}

/// A key prefix with a brace is refused, naming the setting: Redis Cluster hashes only the
/// first `{...}` of a key, which must be the caller key.
#[test]
fn key_prefix_with_a_brace_is_refused() {
    let limiter = || RateLimiter::new(MemoryStore::new(), Quota::per_minute(1).unwrap());
    for bad in ["{", "}", "rl{", "}rl:", "app{x}:"] {
        match limiter().key_prefix(bad) {
            Err(e) => {
                assert_eq!(e.setting(), "key_prefix", "{bad:?}: {e}");
                assert!(e.to_string().contains("key_prefix"), "{e}");
            }
            Ok(_) => panic!("{bad:?}: expected `key_prefix` to be refused"),
        }
    }
}

/// A key prefix without braces namespaces the limit, `<prefix>{<caller key>}`, and the
/// limit holds under it.
#[tokio::test]
async fn redis_key_prefix_namespaces_the_limit() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    let limiter = RateLimiter::new(store, Quota::per_minute(1).unwrap())
        .key_prefix("shop:rl:")
        .expect("prefix");
    assert!(limiter.check("alice").await.expect("check").allowed());
    assert!(!limiter.check("alice").await.expect("check").allowed());
    assert_eq!(server.keys("*"), ["shop:rl:{alice}"]);
}

/// Store down: requests pass (fail open) and a warning is logged; `fail_closed` answers
/// 503 and the handler does not run.
async fn store_down<St: StateStore>(store: St) {
    let logs = common::Logs::default();
    let _guard = logs.install();
    let open = instance(RateLimitLayer::new(
        store.clone(),
        Quota::per_minute(1).unwrap(),
    ));
    for _ in 0..3 {
        let out = send(&open, as_user("hank")).await;
        assert_eq!(out.status, StatusCode::OK);
        assert!(!out.headers.contains_key("ratelimit"));
    }
    assert_eq!(open.runs.load(Ordering::SeqCst), 3);
    assert_eq!(logs.lines_containing("fail open").len(), 3);
    assert!(logs.lines_containing("fail open")[0].contains("WARN"));

    let closed = instance(
        RateLimitLayer::new(store, Quota::per_minute(1).unwrap())
            .on_store_failure(StoreFailure::closed()),
    );
    let out = send(&closed, as_user("hank")).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(out.headers.contains_key("retry-after"));
    assert_eq!(closed.runs.load(Ordering::SeqCst), 0);
}

/// Only an unavailable store is governed by `on_store_failure`: an unexpected reply is
/// `500` whether the layer fails open or closed, and `RateLimiter::check` says which it was.
#[tokio::test]
async fn memory_broken_store_is_500_open_or_closed() {
    for failure in [StoreFailure::open(), StoreFailure::closed()] {
        let layer = RateLimitLayer::new(common::DownStore::broken(), Quota::per_minute(1).unwrap())
            .on_store_failure(failure);
        let a = instance(layer);
        let out = send(&a, as_user("ivy")).await;
        assert_eq!(
            out.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            out.body
        );
        assert!(out.body.contains("store_error"), "{}", out.body);
        assert_eq!(a.runs.load(Ordering::SeqCst), 0);
    }
    let limiter = RateLimiter::new(common::DownStore::broken(), Quota::per_minute(1).unwrap());
    let error = limiter.check("ivy").await.expect_err("broken store");
    assert!(!error.is_unavailable());
    assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let limiter = RateLimiter::new(
        common::DownStore::unavailable(),
        Quota::per_minute(1).unwrap(),
    );
    let error = limiter.check("ivy").await.expect_err("store down");
    assert!(error.is_unavailable());
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error.error_code(), "store_unavailable");
}

#[tokio::test]
async fn memory_backend_down() {
    store_down(common::DownStore::unavailable()).await;
}

#[tokio::test]
async fn redis_down() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .expect("store");
    server.stop();
    store_down(store).await;
}

/// IPv6 clients count per /64 (a client holds a whole /64); IPv4-mapped addresses count
/// as their IPv4 address.
#[tokio::test]
async fn ipv6_clients_count_per_64() {
    let a = instance(
        RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(1).unwrap())
            .trusted_header(http::HeaderName::from_static("x-real-ip")),
    );
    let from = |ip: &str| {
        Request::builder()
            .header("x-real-ip", ip)
            .body(String::new())
            .expect("request")
    };
    assert_eq!(
        send(&a, from("2001:db8:1:2::1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&a, from("2001:db8:1:2:ffff::9")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "same /64, same bucket"
    );
    assert_eq!(
        send(&a, from("2001:db8:1:3::1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&a, from("::ffff:192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&a, from("192.0.2.7")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "an IPv4-mapped address is its IPv4 address"
    );
}

/// Two stacked limiters (global and per route): the client sees both policies.
#[tokio::test]
async fn stacked_limiters_keep_both_headers() {
    let store = MemoryStore::new();
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::from_limiter(
            RateLimiter::new(store.clone(), Quota::per_minute(100).unwrap())
                .key_prefix("rl:global:")
                .unwrap()
                .policy_name("global"),
        ))
        .layer(RateLimitLayer::from_limiter(
            RateLimiter::new(store, Quota::per_minute(2).unwrap())
                .key_prefix("rl:route:")
                .unwrap()
                .policy_name("route"),
        ))
        .service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
    let res = svc.oneshot(as_user("ivy")).await.expect("infallible");
    let policies: Vec<_> = res
        .headers()
        .get_all("ratelimit-policy")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(policies.len(), 2, "{policies:?}");
    assert!(policies.iter().any(|p| p.starts_with("\"route\";q=2")));
    assert!(policies.iter().any(|p| p.starts_with("\"global\";q=100")));
    assert_eq!(res.headers().get_all("ratelimit").iter().count(), 2);
}

/// An axum app with one public route, `GET /public`, behind a `RateLimitLayer` of two
/// requests a minute, served on a loopback port with or without connect info: its URL,
/// the count of handler runs, and the server task.
async fn serve_public(
    connect_info: bool,
) -> (
    String,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let app = axum::Router::new()
        .route(
            "/public",
            axum::routing::get(move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .layer(RateLimitLayer::new(
            MemoryStore::new(),
            Quota::per_minute(2).unwrap(),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/public", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        } else {
            axum::serve(listener, app).await
        }
    });
    (url, runs, server)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// axum keeps the peer address as `ConnectInfo<SocketAddr>` (served with
/// `into_make_service_with_connect_info`): over a real loopback connection, an
/// unauthenticated route counts per client address, and the third request of a quota of
/// two is `429` with the `RateLimit` headers.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_public_route_counts_per_connect_info_address() {
    let (url, runs, server) = serve_public(true).await;
    let http = client();
    for remaining in [1, 0] {
        let res = http.get(&url).send().await.expect("request");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
        let limit = res.headers()["ratelimit"].to_str().expect("ascii");
        assert!(
            limit.starts_with(&format!("\"default\";r={remaining};t=")),
            "{limit}"
        );
    }
    // A new connection, from another port of the same address: the same bucket.
    let other = reqwest::Client::new();
    let res = other.get(&url).send().await.expect("request");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After");
    // 30 s less the time since the first request: a loaded machine may take seconds.
    assert!((20..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
    assert!(res.headers()["ratelimit"]
        .to_str()
        .expect("ascii")
        .starts_with("\"default\";r=0;t="));
    assert!(res.text().await.expect("body").contains("\"rate_limited\""));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the third must not run");
    server.abort();
}

/// A request the default key cannot place (no claims, no trusted header, no peer address:
/// here an axum app served without connect info) passes unlimited and without headers,
/// and the layer warns once, not per request. A `key_fn` answering `None` exempts requests
/// on purpose: no warning.
///
/// The only test that sends such requests: tracing caches per callsite whether anyone
/// listens, and a test reaching this warning on a thread without a subscriber could make
/// it look unwatched to the subscriber installed here.
#[tokio::test]
async fn keyless_requests_pass_with_one_warning() {
    let logs = common::Logs::default();
    let _guard = logs.install();
    // No `into_make_service_with_connect_info`: axum inserts no peer address.
    let (url, runs, server) = serve_public(false).await;
    let http = client();
    for _ in 0..5 {
        let res = http.get(&url).send().await.expect("request");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(!res.headers().contains_key("ratelimit"));
        assert!(!res.headers().contains_key("ratelimit-policy"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    let warnings = logs.lines_containing("without a caller key");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("requests=1"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("into_make_service_with_connect_info"),
        "the warning says how to fix it: {}",
        warnings[0]
    );
    server.abort();

    let exempt = instance(
        RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(1).unwrap()).key_fn(|_| None),
    );
    for _ in 0..3 {
        let out = send(&exempt, Request::new(String::new())).await;
        assert_eq!(out.status, StatusCode::OK);
        assert!(!out.headers.contains_key("ratelimit"));
    }
    assert_eq!(logs.lines_containing("without a caller key").len(), 1);
}
