//! Heap allocations per request on the hot path, counted with dhat's heap profiler.
//!
//! Each stack answers the same `GET` (a bearer token with a `jti` and a session id) over a
//! handler that allocates nothing; a stack's figure is the number of heap blocks
//! allocated per request by `oneshot` and the response, minus the bare handler's, i.e.
//! what the layers add. The stacks mirror the routes of `examples/load.rs` (claims as
//! `serde_json::Value`, the layer's default). The bounds asserted are the figures
//! measured when this test was written: a change that adds an allocation per request
//! fails here, and must say why (or raise the bound).
//!
//! ```sh
//! cargo test --all-features --test allocations -- --nocapture   # prints the table
//! ```
//!
//! One `#[test]`: dhat counts every thread, so nothing else may run meanwhile.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{LocalCache, MemoryStore, RedisStore};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SECRET: &[u8] = b"allocations-secret-allocations-secret!!";
const REQUESTS: u64 = 200;

fn policy() -> TokenPolicy {
    let keys = JwtKeySet::new()
        .with_hmac("hs", Algorithm::HS256, SECRET)
        .expect("keys");
    TokenPolicy::builder(keys)
        .signing_key("hs")
        .access_ttl(Duration::from_secs(3600))
        .build()
        .expect("policy")
}

async fn ok<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// Reads one session key, as the bench app's session routes do.
async fn read<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(session) = req.extensions().get::<Session>() {
        let _ = session.get::<u64>("n").await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// A `GET /` with the bearer token and, when given, the session cookie.
fn request(bearer: &HeaderValue, cookie: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    let mut req = Request::get("/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    req.headers_mut()
        .insert(header::AUTHORIZATION, bearer.clone());
    if let Some(cookie) = cookie {
        req.headers_mut().insert(header::COOKIE, cookie.clone());
    }
    req
}

/// Heap blocks allocated per request by `svc` (requests built beforehand), after a
/// warm-up.
async fn per_request<S, B>(svc: &S, bearer: &HeaderValue, cookie: Option<&HeaderValue>) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let send = |req| async {
        let res = svc.clone().oneshot(req).await.expect("service");
        assert!(res.status().is_success(), "{}", res.status());
        res.into_body().collect().await.expect("body");
    };
    for _ in 0..20 {
        send(request(bearer, cookie)).await;
    }
    let requests: Vec<_> = (0..REQUESTS).map(|_| request(bearer, cookie)).collect();
    let before = dhat::HeapStats::get().total_blocks;
    for req in requests {
        send(req).await;
    }
    let after = dhat::HeapStats::get().total_blocks;
    #[allow(clippy::cast_precision_loss)]
    let per = (after - before) as f64 / REQUESTS as f64;
    per
}

#[test]
fn allocations_per_request() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let policy = policy();
        let token = policy
            .token_issuer()
            .expect("issuer")
            .issue_with("bench", Some("bench-session"), &())
            .expect("token")
            .token;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        let mut rows: Vec<(&str, f64)> = Vec::new();

        let bare = ServiceBuilder::new().service(service_fn(ok::<Full<Bytes>>));
        let floor = per_request(&bare, &bearer, None).await;
        rows.push(("bare handler (subtracted below)", floor));

        let jwt = ServiceBuilder::new()
            .layer(policy.auth_layer())
            .service(service_fn(ok::<Full<Bytes>>));
        let jwt = per_request(&jwt, &bearer, None).await - floor;
        rows.push(("jwt", jwt));

        let memory = ServiceBuilder::new()
            .layer(policy.auth_layer().revocation(MemoryStore::new()))
            .service(service_fn(ok::<Full<Bytes>>));
        let memory = per_request(&memory, &bearer, None).await - floor;
        rows.push(("jwt+revocation (MemoryStore)", memory));

        let mut redis_figures = None;
        if let Some(server) = common::RedisServer::start() {
            let store = RedisStore::from_url(server.url()).expect("store");
            store.load_scripts().await.expect("scripts");
            let redis = ServiceBuilder::new()
                .layer(policy.auth_layer().revocation(store.clone()))
                .service(service_fn(ok::<Full<Bytes>>));
            let redis = per_request(&redis, &bearer, None).await - floor;
            rows.push(("jwt+revocation (Redis)", redis));

            let cache = LocalCache::builder(store.clone())
                .prefix("rev:")
                .heartbeat(Duration::from_secs(3600))
                .build()
                .expect("cache");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cache.is_serving() {
                assert!(std::time::Instant::now() < deadline, "cache never serves");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let cached = ServiceBuilder::new()
                .layer(policy.auth_layer().revocation(cache.clone()))
                .service(service_fn(ok::<Full<Bytes>>));
            let cached = per_request(&cached, &bearer, None).await - floor;
            rows.push(("jwt+revocation cached", cached));

            let session = SessionLayer::new(store.clone()).secure(false);
            let writer = ServiceBuilder::new()
                .layer(session.clone())
                .service(service_fn(|req: Request<Full<Bytes>>| async move {
                    if let Some(session) = req.extensions().get::<Session>() {
                        session.insert("n", 1_u64).await.expect("session write");
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }));
            let res = writer
                .oneshot(Request::new(Full::new(Bytes::new())))
                .await
                .expect("new session");
            let cookie = res
                .headers()
                .get(header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| HeaderValue::from_str(v).expect("cookie"))
                .expect("a new session sets its cookie");
            let with_session = ServiceBuilder::new()
                .layer(policy.auth_layer().revocation(cache.clone()))
                .layer(session)
                .service(service_fn(read::<Full<Bytes>>));
            let with_session = per_request(&with_session, &bearer, Some(&cookie)).await - floor;
            rows.push(("jwt+revocation cached+session read", with_session));
            redis_figures = Some((redis, cached, with_session));
        } else {
            eprintln!("SKIPPED: the Redis rows (no redis-server)");
        }

        println!("heap blocks allocated per request, on top of the bare handler:");
        for (name, per) in &rows {
            println!("  {name:<40} {per:>6.2}");
        }
        // Bounds: the figures measured when this was written (see the module docs). The
        // JWT layer's 18: the registered claims' three strings, the `serde_json::Value`
        // claims (9), the two extensions (4) and jsonwebtoken's verifier and decoded
        // signature (2). The revocation check's 3: its keys (one buffer), the boxed
        // lookup and the store's reply.
        assert!(jwt <= 18.5, "jwt: {jwt}");
        assert!(
            memory - jwt <= 3.5,
            "revocation on MemoryStore: {}",
            memory - jwt
        );
        if let Some((redis, cached, with_session)) = redis_figures {
            assert!(cached - jwt <= 3.5, "cached revocation: {}", cached - jwt);
            // The session read from Redis (one `HGETALL`, 27 on 2026-11-30): the layer's
            // state and future, the key, the command and its reply, the fields.
            assert!(
                with_session - cached <= 27.5,
                "session read: {}",
                with_session - cached
            );
            // The reply parsed into `Bytes` in place, keys written into the command.
            assert!(redis - jwt <= 9.5, "revocation on Redis: {}", redis - jwt);
        }
    });
}
