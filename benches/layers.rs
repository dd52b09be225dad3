//! What each layer costs, alone and stacked, over a trivial inner service, on MemoryStore
//! and on a real Redis (started on a free port by the test harness; skipped with a message
//! when `redis-server` is not installed), next to the usual ways of doing the same work:
//!
//! - `jwt/<alg>`: the bare service, a bare `jsonwebtoken::decode` of the same token (the
//!   floor for `JwtAuthLayer`), and `JwtAuthLayer` over the bare service;
//! - `layers/<store>`: the bare service, each layer alone (JWT + revocation check; session
//!   untouched / read / modified; idempotency first call / replay), the full stack
//!   (JwtAuth with revocation → Session → Idempotency), and tower-sessions with its own
//!   store of the same kind on the session read and modify paths;
//! - `redis/PING`: one loopback round trip, the floor for every Redis row.
//!
//! Every iteration sends one request through `oneshot` and collects the response body.
//! With `--all-features` JWT signatures go through aws-lc-rs (see the crate docs).
//!
//! Run with: `cargo bench --all-features --bench layers`

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use tokio::runtime::Runtime;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tower_stateless::RegisteredClaims;

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";

#[derive(Clone, Deserialize)]
struct Claims {
    #[allow(dead_code)]
    sub: String,
    #[allow(dead_code)]
    exp: u64,
}

/// The trivial inner service. `x-session: read | write` makes it read the session's `n`
/// or write a new value (from our layer's [`Session`] or tower-sessions', whichever is in
/// the extensions).
async fn handler<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    static N: AtomicU64 = AtomicU64::new(0);
    let op = req.headers().get("x-session").map(HeaderValue::as_bytes);
    if let Some(session) = req.extensions().get::<Session>() {
        match op {
            Some(b"read") => {
                let _ = session.get::<u64>("n").await.expect("read");
            }
            Some(b"write") => session
                .insert("n", N.fetch_add(1, Ordering::Relaxed))
                .await
                .expect("write"),
            _ => {}
        }
    }
    if let Some(session) = req.extensions().get::<tower_sessions::Session>() {
        match op {
            Some(b"read") => {
                let _ = session.get::<u64>("n").await.expect("read");
            }
            Some(b"write") => session
                .insert("n", N.fetch_add(1, Ordering::Relaxed))
                .await
                .expect("write"),
            _ => {}
        }
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// One request through a clone of `svc`, the response body collected.
async fn call<S, B>(svc: &S, req: Request<Full<Bytes>>) -> Bytes
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.expect("service");
    assert!(res.status().is_success(), "{}", res.status());
    res.into_body().collect().await.expect("body").to_bytes()
}

/// Benchmarks `svc` on requests made by `req`.
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    svc: S,
    req: impl Fn() -> Request<Full<Bytes>>,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| b.to_async(rt).iter(|| call(&svc, req())));
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn get(bearer: &str) -> Request<Full<Bytes>> {
    Request::get("/me")
        .header(header::AUTHORIZATION, bearer)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

fn jwt(c: &mut Criterion, rt: &Runtime) {
    let cases = [
        ("HS256", Algorithm::HS256, None),
        (
            "RS256",
            Algorithm::RS256,
            Some(("rsa1-private.pem", "rsa1-public.pem")),
        ),
        (
            "ES256",
            Algorithm::ES256,
            Some(("ec256-private.pem", "ec256-public.pem")),
        ),
        (
            "EdDSA",
            Algorithm::EdDSA,
            Some(("ed25519-private.pem", "ed25519-public.pem")),
        ),
    ];
    for (name, alg, pems) in cases {
        let (signing, verifying, decoding) = match pems {
            None => {
                let keys = JwtKeySet::new()
                    .with_hmac("k", alg, SECRET)
                    .expect("hmac key");
                (keys.clone(), keys, DecodingKey::from_secret(SECRET))
            }
            Some((private, public)) => {
                let signing = JwtKeySet::new()
                    .with_private_pem("k", alg, &fixture(private))
                    .expect("private key");
                let verifying = JwtKeySet::new()
                    .with_public_pem("k", alg, &fixture(public))
                    .expect("public key");
                let pem = fixture(public);
                let decoding = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .expect("decoding key");
                (signing, verifying, decoding)
            }
        };
        let token = TokenPolicy::builder(signing)
            .signing_key("k")
            .build()
            .expect("policy")
            .token_issuer()
            .expect("issuer")
            .issue("alice")
            .expect("token")
            .token;
        let bearer = format!("Bearer {token}");
        let mut group = c.benchmark_group(format!("jwt/{name}"));
        bench(
            &mut group,
            rt,
            "bare service",
            service_fn(handler::<Full<Bytes>>),
            || get(&bearer),
        );
        let mut validation = Validation::new(alg);
        validation.leeway = 30;
        group.bench_function("jsonwebtoken::decode", |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).expect("decode")
            })
        });
        let svc = ServiceBuilder::new()
            .layer(
                TokenPolicy::builder(verifying)
                    .build()
                    .expect("policy")
                    .auth_layer()
                    .claims::<Claims>(),
            )
            .service(service_fn(handler::<Full<Bytes>>));
        bench(&mut group, rt, "JwtAuthLayer", svc, || get(&bearer));
        group.finish();
    }
}

/// A `GET` carrying what the layers read: a bearer token, our session cookie and
/// tower-sessions' one (`tid`), and the claims JwtAuthLayer would have put in the
/// extensions (for the layers benchmarked without it).
#[derive(Clone)]
struct Caller {
    bearer: String,
    claims: RegisteredClaims,
    cookie: String,
}

impl Caller {
    fn get(&self, session: &'static str) -> Request<Full<Bytes>> {
        Request::get("/me")
            .header(header::AUTHORIZATION, &self.bearer)
            .header(header::COOKIE, &self.cookie)
            .header("x-session", session)
            .extension(self.claims.clone())
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    fn post(&self, key: &str, session: &'static str) -> Request<Full<Bytes>> {
        Request::post("/orders")
            .header(header::AUTHORIZATION, &self.bearer)
            .header(header::COOKIE, &self.cookie)
            .header("x-session", session)
            .header("idempotency-key", key)
            .extension(self.claims.clone())
            .body(Full::new(Bytes::from_static(b"{\"sku\":1}")))
            .expect("request")
    }
}

/// The `name=value` of the first `Set-Cookie` of a response to `req`.
async fn new_cookie<S, B>(svc: &S, req: Request<Full<Bytes>>) -> String
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.expect("service");
    let set_cookie = res.headers()[header::SET_COOKIE].to_str().expect("cookie");
    set_cookie.split(';').next().expect("pair").to_owned()
}

fn unique_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("k{nanos}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Every store-backed row on `store`, with `peer` as tower-sessions' store of the same kind.
fn layers<St, P>(c: &mut Criterion, rt: &Runtime, name: &str, store: St, peer: P)
where
    St: StateStore + Clone,
    P: tower_sessions::SessionStore + Clone,
{
    let keys = JwtKeySet::new()
        .with_hmac("k", Algorithm::HS256, SECRET)
        .expect("key");
    let policy = TokenPolicy::builder(keys)
        .signing_key("k")
        .build()
        .expect("policy");
    let issued = policy
        .token_issuer()
        .expect("issuer")
        .issue_with("alice", Some("s1"), &())
        .expect("token");
    let bare = service_fn(handler::<Full<Bytes>>);
    let session = ServiceBuilder::new()
        .layer(SessionLayer::new(store.clone()))
        .service(service_fn(handler::<Full<Bytes>>));
    let peer = ServiceBuilder::new()
        .layer(
            tower_sessions::SessionManagerLayer::new(peer)
                .with_name("tid")
                .with_secure(false),
        )
        .service(service_fn(handler::<Full<Bytes>>));
    let mut caller = Caller {
        bearer: format!("Bearer {}", issued.token),
        claims: issued.claims,
        cookie: String::new(),
    };
    caller.cookie = rt.block_on(async {
        let ours = new_cookie(&session, caller.get("write")).await;
        let theirs = new_cookie(&peer, caller.get("write")).await;
        format!("{ours}; {theirs}")
    });

    let mut group = c.benchmark_group(format!("layers/{name}"));
    bench(&mut group, rt, "bare service", bare, || caller.get("none"));

    // The revocation check is part of the JWT layer: this row is JWT (HS256) + the check.
    let revocation = ServiceBuilder::new()
        .layer(
            policy
                .auth_layer()
                .claims::<Claims>()
                .revocation(store.clone()),
        )
        .service(service_fn(handler::<Full<Bytes>>));
    bench(&mut group, rt, "jwt + revocation check", revocation, || {
        caller.get("none")
    });

    for (row, op) in [
        ("session untouched", "none"),
        ("session read", "read"),
        ("session modified", "write"),
    ] {
        bench(&mut group, rt, row, session.clone(), || caller.get(op));
    }
    for (row, op) in [
        ("tower-sessions read", "read"),
        ("tower-sessions modified", "write"),
    ] {
        bench(&mut group, rt, row, peer.clone(), || caller.get(op));
    }

    let idempotency = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()))
        .service(service_fn(handler::<RequestBody<Full<Bytes>>>));
    bench(
        &mut group,
        rt,
        "idempotency first call",
        idempotency.clone(),
        || caller.post(&unique_key(), "none"),
    );
    rt.block_on(call(&idempotency, caller.post("replayed", "none")));
    bench(&mut group, rt, "idempotency replay", idempotency, || {
        caller.post("replayed", "none")
    });

    let stack = ServiceBuilder::new()
        .layer(
            policy
                .auth_layer()
                .claims::<Claims>()
                .revocation(store.clone()),
        )
        .layer(SessionLayer::new(store.clone()))
        .layer(IdempotencyLayer::new(store))
        .service(service_fn(handler::<RequestBody<Full<Bytes>>>));
    bench(
        &mut group,
        rt,
        "full stack GET, session read",
        stack.clone(),
        || caller.get("read"),
    );
    bench(
        &mut group,
        rt,
        "full stack POST, idempotent first call, session modified",
        stack,
        || caller.post(&unique_key(), "write"),
    );
    group.finish();
}

fn all(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    jwt(c, &rt);
    layers(
        c,
        &rt,
        "memory",
        MemoryStore::new(),
        tower_sessions::MemoryStore::default(),
    );

    let Some(redis) = common::RedisServer::start() else {
        eprintln!("SKIPPED: redis-server not found; the Redis rows were not run");
        return;
    };
    let client = redis::Client::open(redis.url()).expect("client");
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .expect("connect");
    c.bench_function("redis/PING (round-trip floor)", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .expect("ping")
            }
        })
    });
    let store = RedisStore::from_url(redis.url()).expect("store");
    let peer = rt.block_on(async {
        use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
        let config = Config::from_url(&redis.url()).expect("fred config");
        let pool = Pool::new(config, None, None, None, 2).expect("fred pool");
        let _connection = pool.connect();
        pool.wait_for_connect().await.expect("fred connect");
        tower_sessions_redis_store::RedisStore::new(pool)
    });
    layers(c, &rt, "redis", store, peer);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = all
}
criterion_main!(benches);
