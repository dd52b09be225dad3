//! DESIGN.md's round-trip table, checked against a real Redis: for every path, the
//! number of commands the server receives from clients (counted with `MONITOR`; the
//! commands a Lua script runs inside one `EVALSHA` are not round trips and not counted,
//! and a `MULTI` … `EXEC` transaction, sent as one pipeline and answered at once, is one
//! round trip).
//!
//! | path | store round trips |
//! |---|---|
//! | JWT verify | 0 |
//! | revocation check (token, session and subject at once) | 1 |
//! | session, handler does not touch it | 0 |
//! | session read, unmodified | 1 |
//! | session modified after a read | 1 read + 1 write |
//! | session modified without a read (insert, remove, clear only) | 1 write |
//! | idempotent request, first time | 1 claim + 1 store-result |
//! | idempotent replay | 1 |
//!
//! Every path runs once before it is counted: connections are opened lazily, and each Lua
//! script is loaded once per server (`SCRIPT LOAD`) on its first use.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::RedisStore;

use common::RedisServer;

const SECRET: &[u8] = b"round-trips-secret-round-trips-secret!!";

#[derive(Clone, Deserialize)]
struct Claims {
    #[allow(dead_code)]
    sub: String,
}

/// Touches the session as the `x-session` header says: `none`, `read`, `write` (a new
/// value every time, so the write is a real change), `readwrite` (a read, then a write)
/// or `update` (an atomic increment).
async fn handler<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    static N: AtomicU64 = AtomicU64::new(0);
    let op = req
        .headers()
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    if let Some(session) = req.extensions().get::<Session>().cloned() {
        match op.as_str() {
            "read" => {
                session.get::<u64>("n").await.expect("session read");
            }
            "write" => session
                .insert("n", N.fetch_add(1, Ordering::Relaxed))
                .await
                .expect("session write"),
            "readwrite" => {
                session.get::<u64>("n").await.expect("session read");
                session
                    .insert("n", N.fetch_add(1, Ordering::Relaxed))
                    .await
                    .expect("session write");
            }
            "update" => {
                session
                    .update("count", |n: Option<u64>| n.unwrap_or(0) + 1)
                    .await
                    .expect("session update");
            }
            _ => {}
        }
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

struct Out {
    status: StatusCode,
    replayed: bool,
    set_cookie: Option<String>,
}

async fn send<S, B>(svc: &S, req: Request<Full<Bytes>>) -> Out
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.expect("service");
    let status = res.status();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let set_cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    res.into_body().collect().await.expect("body");
    Out {
        status,
        replayed,
        set_cookie,
    }
}

struct Fixture {
    server: RedisServer,
    store: RedisStore,
    bearer: String,
}

fn fixture() -> Option<Fixture> {
    let server = RedisServer::start()?;
    let store = RedisStore::from_url(server.url()).expect("store");
    let token = policy()
        .token_issuer()
        .expect("issuer")
        .issue_with("alice", Some("s1"), &())
        .expect("token")
        .token;
    Some(Fixture {
        server,
        store,
        bearer: format!("Bearer {token}"),
    })
}

fn keys() -> JwtKeySet {
    JwtKeySet::new()
        .with_hmac("hs", Algorithm::HS256, SECRET)
        .expect("keys")
}

/// The token policy of these tests: the keys above, signing with `hs`.
fn policy() -> TokenPolicy {
    TokenPolicy::builder(keys())
        .signing_key("hs")
        .build()
        .expect("policy")
}

/// A `GET`; an empty `bearer` sends no `Authorization`.
fn get(bearer: &str, cookie: Option<&str>, session: &str) -> Request<Full<Bytes>> {
    let mut req = Request::get("/").header("x-session", session);
    if !bearer.is_empty() {
        req = req.header(header::AUTHORIZATION, bearer);
    }
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    req.body(Full::new(Bytes::new())).expect("request")
}

fn post(bearer: &str, key: &str) -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header(header::AUTHORIZATION, bearer)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{\"sku\":1}")))
        .expect("request")
}

/// The client commands Redis received, by name, and the round trips they were.
#[derive(Debug)]
struct Stats {
    commands: HashMap<String, u64>,
    round_trips: u64,
}

impl Stats {
    fn get(&self, command: &str) -> Option<&u64> {
        self.commands.get(command)
    }
}

/// Runs `request` and returns the client commands Redis received meanwhile.
async fn counted<S, B>(server: &RedisServer, svc: &S, request: Request<Full<Bytes>>) -> (Out, Stats)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    server.reset_stats();
    let out = send(svc, request).await;
    let stats = Stats {
        commands: server.command_stats(),
        round_trips: server.round_trips(),
    };
    (out, stats)
}

fn total(stats: &Stats) -> u64 {
    stats.round_trips
}

#[tokio::test]
async fn jwt_verify_costs_no_round_trip() {
    let Some(f) = fixture() else { return };
    let svc = ServiceBuilder::new()
        .layer(policy().auth_layer().claims::<Claims>())
        .service(service_fn(handler::<Full<Bytes>>));
    send(&svc, get(&f.bearer, None, "none")).await;
    let (out, stats) = counted(&f.server, &svc, get(&f.bearer, None, "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(total(&stats), 0, "{stats:?}");
}

#[tokio::test]
async fn revocation_check_is_one_mget() {
    let Some(f) = fixture() else { return };
    let svc = ServiceBuilder::new()
        .layer(
            policy()
                .auth_layer()
                .claims::<Claims>()
                .revocation(f.store.clone()),
        )
        .service(service_fn(handler::<Full<Bytes>>));
    send(&svc, get(&f.bearer, None, "none")).await;
    let (out, stats) = counted(&f.server, &svc, get(&f.bearer, None, "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("mget"), Some(&1), "{stats:?}");
    assert_eq!(total(&stats), 1, "{stats:?}");
}

#[tokio::test]
async fn session_paths() {
    let Some(f) = fixture() else { return };
    let svc = ServiceBuilder::new()
        .layer(SessionLayer::new(f.store.clone()))
        .service(service_fn(handler::<Full<Bytes>>));
    // Warm-up: create the session, then run every path once.
    let cookie = send(&svc, get("", None, "write"))
        .await
        .set_cookie
        .expect("a new session sets its cookie");
    for op in ["none", "read", "write", "readwrite", "update"] {
        send(&svc, get("", Some(&cookie), op)).await;
    }

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(total(&stats), 0, "untouched: {stats:?}");

    // A session is one hash; the read is one transaction (`MULTI`, `TIME`, `HGETALL`, the
    // idle-expiry refresh `PEXPIRE`, `EXEC`: one pipeline), the write one script
    // (HSET/HDEL of the changed keys).
    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK);
    for command in ["multi", "time", "hgetall", "pexpire", "exec"] {
        assert_eq!(stats.get(command), Some(&1), "read: {stats:?}");
    }
    assert_eq!(stats.commands.len(), 5, "read: {stats:?}");
    assert_eq!(total(&stats), 1, "read: {stats:?}");

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "readwrite")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("multi"), Some(&1), "the read: {stats:?}");
    assert_eq!(
        stats.get("evalsha"),
        Some(&1),
        "the write of the changed key: {stats:?}"
    );
    assert_eq!(total(&stats), 2, "modified after a read: {stats:?}");

    // A handler that only inserts does not load the session: the write alone.
    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "write")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("evalsha"), Some(&1), "write only: {stats:?}");
    assert_eq!(total(&stats), 1, "modified without a read: {stats:?}");

    // An atomic read-modify-write of one key without a conflict: the read and one
    // compare-and-set of that field.
    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "update")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("multi"), Some(&1), "update: {stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&1), "update: {stats:?}");
    assert_eq!(total(&stats), 2, "update: {stats:?}");
}

#[tokio::test]
async fn idempotency_paths() {
    let Some(f) = fixture() else { return };
    let svc = ServiceBuilder::new()
        .layer(policy().auth_layer().claims::<Claims>())
        .layer(IdempotencyLayer::new(f.store.clone()))
        .service(service_fn(handler::<RequestBody<Full<Bytes>>>));
    // Warm-up: a first call and its replay.
    send(&svc, post(&f.bearer, "warm")).await;
    assert!(send(&svc, post(&f.bearer, "warm")).await.replayed);

    let (out, stats) = counted(&f.server, &svc, post(&f.bearer, "k1")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(!out.replayed);
    assert_eq!(stats.get("set"), Some(&1), "the claim: {stats:?}");
    assert_eq!(
        stats.get("evalsha"),
        Some(&1),
        "the store-result: {stats:?}"
    );
    assert_eq!(total(&stats), 2, "first time: {stats:?}");

    let (out, stats) = counted(&f.server, &svc, post(&f.bearer, "k1")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.replayed);
    assert_eq!(
        stats.get("set"),
        Some(&1),
        "the claim finds the record: {stats:?}"
    );
    assert_eq!(total(&stats), 1, "replay: {stats:?}");
}

/// The whole stack adds the layers' round trips and nothing more: a `GET` that leaves the
/// session alone costs the revocation check only; an idempotent `POST` that modifies the
/// session without reading it costs 1 + 2 + 1.
#[tokio::test]
async fn full_stack_is_the_sum_of_its_layers() {
    let Some(f) = fixture() else { return };
    let svc = ServiceBuilder::new()
        .layer(
            policy()
                .auth_layer()
                .claims::<Claims>()
                .revocation(f.store.clone()),
        )
        .layer(SessionLayer::new(f.store.clone()))
        .layer(IdempotencyLayer::new(f.store.clone()))
        .service(service_fn(handler::<RequestBody<Full<Bytes>>>));
    let cookie = send(&svc, get(&f.bearer, None, "write"))
        .await
        .set_cookie
        .expect("session cookie");
    let write = |key: &str| {
        let mut req = post(&f.bearer, key);
        req.headers_mut()
            .insert("x-session", http::HeaderValue::from_static("write"));
        req.headers_mut().insert(
            header::COOKIE,
            http::HeaderValue::from_str(&cookie).expect("cookie"),
        );
        req
    };
    send(&svc, get(&f.bearer, Some(&cookie), "none")).await;
    send(&svc, write("warm")).await;

    let (out, stats) = counted(&f.server, &svc, get(&f.bearer, Some(&cookie), "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(total(&stats), 1, "GET, session untouched: {stats:?}");

    let (out, stats) = counted(&f.server, &svc, write("k1")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(
        total(&stats),
        4,
        "idempotent POST modifying the session: {stats:?}"
    );
}
