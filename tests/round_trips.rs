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
//! No path runs before it is counted: the store loads its Lua scripts when it is built
//! (each test waits for that load), so the first call of a script is already one
//! `EVALSHA`, and opening a connection sends no command `MONITOR` shows. The tests at the
//! end check the script loading itself, and the reload when Redis lost its scripts.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{
    Gcra, HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, RedisStore, StateStore,
    StoreError,
};

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

async fn fixture() -> Option<Fixture> {
    let server = RedisServer::start()?;
    let store = RedisStore::from_url(server.url()).expect("store");
    // Waits for the script load that `build` started.
    store.load_scripts().await.expect("load scripts");
    common::warm_pool(&store).await;
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
    let Some(f) = fixture().await else { return };
    let svc = ServiceBuilder::new()
        .layer(policy().auth_layer().claims::<Claims>())
        .service(service_fn(handler::<Full<Bytes>>));
    let (out, stats) = counted(&f.server, &svc, get(&f.bearer, None, "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(total(&stats), 0, "{stats:?}");
}

#[tokio::test]
async fn revocation_check_is_one_mget() {
    let Some(f) = fixture().await else { return };
    let svc = ServiceBuilder::new()
        .layer(
            policy()
                .auth_layer()
                .claims::<Claims>()
                .revocation(f.store.clone()),
        )
        .service(service_fn(handler::<Full<Bytes>>));
    let (out, stats) = counted(&f.server, &svc, get(&f.bearer, None, "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("mget"), Some(&1), "{stats:?}");
    assert_eq!(total(&stats), 1, "{stats:?}");
}

#[tokio::test]
async fn session_paths() {
    let Some(f) = fixture().await else { return };
    let svc = ServiceBuilder::new()
        .layer(SessionLayer::new(f.store.clone()))
        .service(service_fn(handler::<Full<Bytes>>));
    // Warm-up: create the session, then run every path once.
    let cookie = new_session(&svc).await;

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "none")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(total(&stats), 0, "untouched: {stats:?}");

    // A session is one hash; the read is one `HGETALL` (which also brings when the idle
    // expiry falls, to see whether it is due a roll: not yet, the session was just
    // written), the write one script (HSET/HDEL of the changed keys).
    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("hgetall"), Some(&1), "read: {stats:?}");
    assert_eq!(stats.commands.len(), 1, "read: {stats:?}");
    assert_eq!(total(&stats), 1, "read: {stats:?}");

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "readwrite")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("hgetall"), Some(&1), "the read: {stats:?}");
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
    assert_eq!(stats.get("hgetall"), Some(&1), "update: {stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&1), "update: {stats:?}");
    assert_eq!(total(&stats), 2, "update: {stats:?}");
}

/// The read that finds the idle expiry due rolls it with one more round trip (a script,
/// capped by the deadline on Redis' clock); the reads after it are one `HGETALL` again.
/// With a refresh interval of zero, every read is one `MULTI`/`EXEC` transaction that
/// rolls the expiry.
#[tokio::test]
async fn session_read_rolls_the_expiry_once_it_is_due() {
    let Some(f) = fixture().await else { return };
    // A session written with a 10 s idle timeout, read through a layer whose idle timeout
    // is an hour: its expiry is far more than the refresh interval (a minute) below
    // what a roll sets, so the first read finds it due, whatever the machine's speed.
    let short = ServiceBuilder::new()
        .layer(
            SessionLayer::new(f.store.clone())
                .idle_timeout(Duration::from_secs(10))
                .expect("idle"),
        )
        .service(service_fn(handler::<Full<Bytes>>));
    let long = SessionLayer::new(f.store.clone())
        .idle_timeout(Duration::from_secs(3600))
        .expect("idle");
    let svc = ServiceBuilder::new()
        .layer(long.clone())
        .service(service_fn(handler::<Full<Bytes>>));
    let cookie = new_session(&short).await;

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("hgetall"), Some(&1), "due: {stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&1), "due: {stats:?}");
    assert_eq!(total(&stats), 2, "due: {stats:?}");
    let key = f.server.keys("sess:*").pop().expect("the session's key");
    let pttl = f.server.pttl(&key);
    assert!(pttl > 10_000, "rolled to the hour: {pttl} ms");

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("evalsha"), None, "rolled already: {stats:?}");
    assert_eq!(total(&stats), 1, "rolled already: {stats:?}");

    let eager = ServiceBuilder::new()
        .layer(long.refresh_interval(Duration::ZERO))
        .service(service_fn(handler::<Full<Bytes>>));
    let (out, stats) = counted(&f.server, &eager, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK);
    for command in ["multi", "time", "hgetall", "pexpire", "exec"] {
        assert_eq!(stats.get(command), Some(&1), "eager read: {stats:?}");
    }
    assert_eq!(total(&stats), 1, "eager read: {stats:?}");
}

#[tokio::test]
async fn idempotency_paths() {
    let Some(f) = fixture().await else { return };
    let svc = ServiceBuilder::new()
        .layer(policy().auth_layer().claims::<Claims>())
        .layer(IdempotencyLayer::new(f.store.clone()))
        .service(service_fn(handler::<RequestBody<Full<Bytes>>>));
    // Warm-up: a first call and its replay.

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
    let Some(f) = fixture().await else { return };
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

// ---- Lua scripts: loaded at build, reloaded when Redis lost them ------------------------

const TTL: Duration = Duration::from_secs(60);

/// How many Lua scripts a `RedisStore` has (compare-and-set, compare-and-delete, GCRA,
/// the hash read and the hash write).
const SCRIPTS: u64 = 6;

/// `number_of_cached_scripts` of `INFO memory`.
fn cached_scripts(server: &RedisServer) -> u64 {
    let info = server.info("memory");
    info.lines()
        .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO memory reports number_of_cached_scripts")
}

fn script_flush(server: &RedisServer) {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut conn)
        .expect("SCRIPT FLUSH");
    assert_eq!(cached_scripts(server), 0);
}

/// One call of every script of the store that runs on live keys (the sixth deletes a hash
/// found past its deadline), each on a key of its own, and both session reads (the lazy
/// one finds the expiry due and rolls it with a script).
async fn every_script(store: &RedisStore) -> Result<(), StoreError> {
    store.set("cas", Bytes::from_static(b"a"), TTL).await?;
    assert!(
        store
            .compare_and_set("cas", b"a", Bytes::from_static(b"b"), TTL)
            .await?
    );
    assert!(!store.compare_and_delete("cas", b"a").await?);
    let outcome = store
        .gcra("rl", Gcra::new(Duration::from_millis(1), 1000))
        .await?;
    assert!(outcome.allowed);
    // The session write is a script; the session read is a transaction (no script).
    let changes = HashChanges {
        clear: false,
        delete: Vec::new(),
        set: vec![("f".to_owned(), Bytes::from_static(b"v"))],
    };
    let options = HashWriteOptions::new(HashMode::Upsert { lifetime: TTL }, TTL);
    store.hash_apply("h", &changes, options).await?;
    assert!(store.hash_get_all_and_refresh("h", TTL).await?.is_some());
    let long = HashWriteOptions::new(HashMode::Upsert { lifetime: TTL * 10 }, TTL);
    store.hash_apply("lazy", &changes, long).await?;
    let read = store
        .hash_get_all_and_refresh_lazily("lazy", TTL * 10, Duration::from_millis(1))
        .await?;
    assert!(read.is_some());
    Ok(())
}

/// The scripts are in Redis once the store is built (the load runs in the background;
/// `load_scripts` waits for it), so the first call of each is one `EVALSHA`.
#[tokio::test]
async fn scripts_are_loaded_when_the_store_is_built() {
    let Some(f) = fixture().await else { return };
    assert_eq!(cached_scripts(&f.server), SCRIPTS);
    f.server.reset_stats();
    every_script(&f.store).await.expect("scripts");
    let stats = f.server.command_stats();
    assert_eq!(stats.get("script"), None, "{stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&6), "{stats:?}");
}

/// Operations that start while the load `build` started is in flight wait for it: even
/// the very first calls, made at once, find every script (no `NOSCRIPT`, no second load).
/// On a current-thread runtime the load task `build` spawns cannot run before this test
/// yields, so the first script call starts first: without the wait its `EVALSHA` would
/// reach Redis before the scripts do.
#[tokio::test(flavor = "current_thread")]
async fn the_first_operations_wait_for_the_load_started_at_build() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    server.reset_stats();
    let store = RedisStore::from_url(server.url()).expect("store");
    let swapped = store
        .compare_and_set("first", b"x", Bytes::from_static(b"y"), TTL)
        .await
        .expect("the first script call");
    assert!(!swapped, "no value to swap");
    every_script(&store).await.expect("scripts");
    let stats = server.command_stats();
    assert_eq!(
        (stats.get("script"), stats.get("evalsha")),
        (Some(&SCRIPTS), Some(&7)),
        "one load of each script (at build), then one EVALSHA per call: {stats:?}"
    );
}

/// Built outside a Tokio runtime, the store loads nothing until asked (or until each
/// script's first use), and still works.
#[test]
fn a_store_built_outside_a_runtime_loads_on_first_use() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(server.url()).expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cached_scripts(&server), 0, "nothing loaded at build");
        every_script(&store)
            .await
            .expect("scripts load on first use");
        assert_eq!(cached_scripts(&server), 5);
        store.load_scripts().await.expect("load");
        assert_eq!(cached_scripts(&server), SCRIPTS);
    });
}

/// A `SCRIPT FLUSH` (as after a restart or a failover to a node without the scripts):
/// the call that finds its script missing loads it and still succeeds.
#[tokio::test]
async fn a_flushed_script_cache_is_reloaded_by_the_next_call() {
    let Some(f) = fixture().await else { return };
    script_flush(&f.server);
    f.server.reset_stats();
    let outcome = f
        .store
        .gcra("rl", Gcra::new(Duration::from_millis(1), 1000))
        .await
        .expect("gcra after SCRIPT FLUSH");
    assert!(outcome.allowed);
    let stats = f.server.command_stats();
    assert_eq!(
        (stats.get("evalsha"), stats.get("script")),
        (Some(&2), Some(&1)),
        "EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA: {stats:?}"
    );
    every_script(&f.store)
        .await
        .expect("every script after the flush");
    assert_eq!(cached_scripts(&f.server), 5);
}

/// The same through the durable path (`WAIT` in the same pipeline as the script call).
#[tokio::test]
async fn a_flushed_script_cache_is_reloaded_by_a_durable_write() {
    let Some(primary) = RedisServer::start() else {
        return;
    };
    let Some(replica) = RedisServer::start_replica_of(&primary) else {
        return;
    };
    let store = RedisStore::builder()
        .url(primary.url())
        .timeout(Duration::from_secs(5))
        .replica_acks(1, Duration::from_secs(2))
        .build()
        .expect("store");
    store.load_scripts().await.expect("load");
    script_flush(&primary);
    store
        .set("cas", Bytes::from_static(b"a"), TTL)
        .await
        .expect("set");
    assert!(store
        .compare_and_set("cas", b"a", Bytes::from_static(b"b"), TTL)
        .await
        .expect("compare_and_set after SCRIPT FLUSH"));
    assert_eq!(replica.raw_get("cas"), Some(b"b".to_vec()));
}

/// Redis restarted (empty, without the scripts): once it is back, calls succeed again,
/// each script loaded by its first call.
#[tokio::test]
async fn a_restarted_redis_gets_the_scripts_back_on_use() {
    let Some(mut f) = fixture().await else { return };
    f.server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The first calls may meet the connections the restart broke.
    while let Err(error) = every_script(&f.store).await {
        assert!(error.is_unavailable(), "{error}");
        assert!(
            Instant::now() < deadline,
            "no success after the restart: {error}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.server.raw_get("cas"), Some(b"b".to_vec()));
}

/// Redis down when the store is built: the build succeeds, the background load fails
/// quietly, and once Redis is up every call works (each script loaded on first use);
/// `load_scripts` then succeeds.
#[tokio::test]
async fn a_store_built_while_redis_is_down_works_once_it_is_up() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    server.stop();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .expect("the build does not need Redis");
    assert!(store.load_scripts().await.is_err(), "Redis is down");
    server.restart();
    every_script(&store).await.expect("calls once Redis is up");
    store.load_scripts().await.expect("load once Redis is up");
    assert_eq!(cached_scripts(&server), SCRIPTS);
}

/// On a Redis Cluster the scripts are loaded on every master.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread")]
async fn scripts_are_loaded_on_every_master_of_a_cluster() {
    let Some(cluster) = common::RedisCluster::start() else {
        return;
    };
    let store = RedisStore::builder()
        .cluster_urls(cluster.urls())
        .build()
        .expect("store");
    store.load_scripts().await.expect("load");
    for node in cluster.nodes() {
        assert_eq!(cached_scripts(node), SCRIPTS, "node {}", node.port());
    }
    for node in cluster.nodes() {
        node.reset_stats();
    }
    for i in 0..30 {
        let outcome = store
            .gcra(&format!("rl{i}"), Gcra::new(Duration::from_millis(1), 1000))
            .await
            .expect("gcra");
        assert!(outcome.allowed);
    }
    for node in cluster.nodes() {
        let stats = node.command_stats();
        assert_eq!(stats.get("script"), None, "node {}: {stats:?}", node.port());
    }
}

/// A session stored before the expiry field was kept (no `\xff\xfee`) is read as usual;
/// the read rolls it (one more round trip, once), which adds the field, so the reads
/// after it are one `HGETALL` again.
#[tokio::test]
async fn a_session_without_the_expiry_field_is_rolled_once() {
    rolled_once_after(|key| {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(key).arg(EXPIRY_FIELD);
        hdel
    })
    .await;
}

/// An expiry field that is no number (a corrupt record) is read as a missing one: the
/// session is served, rolled once, and the field written again.
#[tokio::test]
async fn a_malformed_expiry_field_is_rolled_once() {
    rolled_once_after(|key| {
        let mut hset = redis::cmd("HSET");
        hset.arg(key).arg(EXPIRY_FIELD).arg("soon");
        hset
    })
    .await;
}

/// The reserved hash field that holds when a session's idle expiry falls.
const EXPIRY_FIELD: &[u8] = b"\xff\xfee";

/// The reserved field of a session hash that holds its absolute deadline.
const DEADLINE_FIELD: &[u8] = b"\xff\xfed";

/// A plain connection to `server`, for setting up and inspecting keys by hand.
fn connect(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect")
}

/// Writes a new session through `svc` and returns its cookie.
async fn new_session<S, B>(svc: &S) -> String
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    send(svc, get("", None, "write"))
        .await
        .set_cookie
        .expect("a new session sets its cookie")
}

/// Writes a session, runs `damage` (a command on its key) against its expiry field, and
/// checks that the next read rolls it (and rewrites the field as a number) and the read
/// after that does not.
async fn rolled_once_after(damage: impl FnOnce(&str) -> redis::Cmd) {
    let Some(f) = fixture().await else { return };
    let svc = ServiceBuilder::new()
        .layer(SessionLayer::new(f.store.clone()))
        .service(service_fn(handler::<Full<Bytes>>));
    let cookie = new_session(&svc).await;
    let key = f.server.keys("sess:*").pop().expect("the session's key");
    let mut conn = connect(&f.server);
    let expiry = |conn: &mut redis::Connection| -> Option<String> {
        redis::cmd("HGET")
            .arg(&key)
            .arg(EXPIRY_FIELD)
            .query(conn)
            .expect("HGET")
    };
    assert!(
        expiry(&mut conn).is_some_and(|e| e.parse::<u64>().is_ok()),
        "a write keeps the expiry field"
    );
    let _: i64 = damage(&key).query(&mut conn).expect("damage");

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK, "the session is read");
    assert_eq!(stats.get("evalsha"), Some(&1), "rolled: {stats:?}");
    assert_eq!(total(&stats), 2, "rolled: {stats:?}");
    assert!(
        expiry(&mut conn).is_some_and(|e| e.parse::<u64>().is_ok()),
        "the roll writes the expiry field"
    );

    let (out, stats) = counted(&f.server, &svc, get("", Some(&cookie), "read")).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(stats.get("evalsha"), None, "rolled already: {stats:?}");
    assert_eq!(total(&stats), 1, "rolled already: {stats:?}");
}

/// Calls of `command` (lowercase) Redis ran, scripts' included (`INFO commandstats`).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    server
        .info("commandstats")
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|l| l.split(',').next())
        .map_or(0, |n| n.parse().expect("a call count"))
}

/// `PEXPIRE` calls Redis ran, scripts' included.
fn pexpire_calls(server: &RedisServer) -> u64 {
    calls(server, "pexpire")
}

/// A write asks Redis for the time (`TIME` in its script) only when the clock could change
/// its answer: when it creates the hash, and when the deadline is within a minute beyond
/// the TTL; not for a write far from the deadline, nor for one that finds no hash to
/// write into. Deadlines are set by hand on Redis' clock: no sleeping.
#[tokio::test]
async fn a_write_asks_redis_for_the_time_only_near_a_deadline() {
    let Some(f) = fixture().await else { return };
    let ttl = Duration::from_secs(1000);
    let upsert = HashWriteOptions::new(HashMode::Upsert { lifetime: ttl * 10 }, ttl);
    let existing = HashWriteOptions::new(HashMode::Existing, ttl);
    let changes = HashChanges {
        set: vec![("f".to_owned(), Bytes::from_static(b"v"))],
        ..HashChanges::default()
    };
    let mut conn = connect(&f.server);
    // Moves the hash's deadline to `offset` ms from now on Redis' clock.
    let mut deadline_in = |offset: i64| {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut conn).expect("TIME");
        let at = secs * 1000 + micros / 1000 + offset;
        let () = redis::cmd("HSET")
            .arg("t")
            .arg(DEADLINE_FIELD)
            .arg(at)
            .query(&mut conn)
            .expect("HSET");
    };
    let server = &f.server;
    let write = |options: HashWriteOptions| {
        let (store, changes) = (f.store.clone(), changes.clone());
        async move {
            let before = calls(server, "time");
            let outcome = store
                .hash_apply("t", &changes, options)
                .await
                .expect("write");
            (outcome, calls(server, "time") - before)
        }
    };
    let written = HashWriteOutcome::Written;

    assert_eq!(
        write(existing).await,
        (HashWriteOutcome::Missing, 0),
        "no hash"
    );
    assert_eq!(
        write(upsert).await,
        (written.clone(), 1),
        "created: its deadline"
    );
    assert_eq!(
        write(upsert).await,
        (written.clone(), 0),
        "10 000 s from the deadline"
    );

    // Within a minute beyond the TTL of the deadline: Redis' clock decides.
    deadline_in(1_050_000);
    assert_eq!(write(existing).await, (written.clone(), 1));
    deadline_in(500_000);
    assert_eq!(write(existing).await, (written.clone(), 1));
    let pttl = f.server.pttl("t");
    assert!(
        pttl > 0 && pttl <= 500_000,
        "capped by the deadline: {pttl}"
    );
    // Past it on Redis' clock: the hash counts as absent, nothing is written into it.
    deadline_in(-1000);
    assert_eq!(write(existing).await, (HashWriteOutcome::Missing, 1));
    assert_eq!(write(upsert).await, (written.clone(), 1), "created anew");
    assert_eq!(write(upsert).await, (written, 0));
}

/// A write rolls the expiry (`PEXPIRE`, and the expiry field beside it) when a lazy read
/// would: when the write creates the hash, when more than the refresh interval of the
/// expiry is used up, when the expiry field is missing, and on every write with an
/// interval of zero; otherwise it leaves both as they are. Driven by setting the expiry
/// and its field by hand (no sleeping): a minute of margin on every side.
#[tokio::test]
async fn a_write_rolls_the_expiry_only_when_a_read_would() {
    let Some(f) = fixture().await else { return };
    let (ttl, every) = (Duration::from_secs(1000), Duration::from_secs(100));
    let lazy =
        HashWriteOptions::new(HashMode::Upsert { lifetime: ttl * 10 }, ttl).refresh_interval(every);
    let changes = HashChanges {
        set: vec![("f".to_owned(), Bytes::from_static(b"v"))],
        ..HashChanges::default()
    };
    let mut conn = connect(&f.server);
    // Sets the hash's expiry and its field to `left` ms from now (Redis' clock).
    let mut expire_in = |left: u64, field: bool| {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).expect("TIME");
        let at = secs * 1000 + micros / 1000 + left;
        let mut pipe = redis::pipe();
        pipe.cmd("PEXPIRE").arg("w").arg(left).ignore();
        if field {
            pipe.cmd("HSET").arg("w").arg(EXPIRY_FIELD).arg(at).ignore();
        } else {
            pipe.cmd("HDEL").arg("w").arg(EXPIRY_FIELD).ignore();
        }
        let () = pipe.query(&mut conn).expect("expire");
    };
    let server = &f.server;
    let write = |options: HashWriteOptions| {
        let (store, changes) = (f.store.clone(), changes.clone());
        async move {
            let before = pexpire_calls(server);
            let outcome = store.hash_apply("w", &changes, options).await;
            assert_eq!(outcome.expect("write"), HashWriteOutcome::Written);
            pexpire_calls(server) - before
        }
    };
    let (min, max) = (950_000, 1_000_000);

    assert_eq!(
        write(lazy).await,
        1,
        "a write that creates the hash sets its expiry"
    );
    assert!(f.server.pttl("w") > min);

    expire_in(min as u64, true);
    assert_eq!(write(lazy).await, 0, "50 s used up, less than the interval");
    assert!(
        f.server.pttl("w") <= min,
        "not rolled: {}",
        f.server.pttl("w")
    );

    expire_in(850_000, true);
    assert_eq!(
        write(lazy).await,
        1,
        "150 s used up, more than the interval"
    );
    assert!(f.server.pttl("w") > min, "rolled: {}", f.server.pttl("w"));

    expire_in(min as u64, false);
    assert_eq!(
        write(lazy).await,
        1,
        "no expiry field: rolled, which adds it"
    );
    assert!(f.server.pttl("w") > min, "rolled: {}", f.server.pttl("w"));
    expire_in(min as u64, true);
    let eager = HashWriteOptions::new(HashMode::Upsert { lifetime: ttl * 10 }, ttl);
    assert_eq!(
        write(eager).await,
        1,
        "an interval of zero rolls every write"
    );
    assert!(f.server.pttl("w") > min);

    // The expiry field a roll writes is what the next write reads: the expiry just set.
    assert_eq!(write(lazy).await, 0, "rolled a moment ago");
    let pttl = f.server.pttl("w");
    assert!(pttl > min && pttl <= max, "{pttl}");

    // A compare-and-set follows the same rule.
    expire_in(min as u64, true);
    let swapped = f
        .store
        .hash_compare_and_set_field("w", "f", Some(b"v"), Some(Bytes::from_static(b"x")), lazy)
        .await
        .expect("swap");
    assert_eq!(swapped, HashWriteOutcome::Written);
    assert!(
        f.server.pttl("w") <= min,
        "not rolled: {}",
        f.server.pttl("w")
    );
    expire_in(850_000, true);
    let swapped = f
        .store
        .hash_compare_and_set_field("w", "f", Some(b"x"), Some(Bytes::from_static(b"y")), lazy)
        .await
        .expect("swap");
    assert_eq!(swapped, HashWriteOutcome::Written);
    assert!(f.server.pttl("w") > min, "rolled: {}", f.server.pttl("w"));
}

/// Session writes pass the layer's refresh interval: a write right after the one that
/// created the session leaves the expiry alone; with an interval of zero every write
/// rolls it.
#[tokio::test]
async fn session_writes_roll_the_expiry_once_per_refresh_interval() {
    let Some(f) = fixture().await else { return };
    for (every, rolls) in [(None, 0), (Some(Duration::ZERO), 1)] {
        let mut layer = SessionLayer::new(f.store.clone());
        if let Some(every) = every {
            layer = layer.refresh_interval(every);
        }
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(handler::<Full<Bytes>>));
        let before = pexpire_calls(&f.server);
        let cookie = new_session(&svc).await;
        assert_eq!(pexpire_calls(&f.server), before + 1, "created: expiry set");
        let out = send(&svc, get("", Some(&cookie), "write")).await;
        assert_eq!(out.status, StatusCode::OK);
        assert_eq!(
            pexpire_calls(&f.server),
            before + 1 + rolls,
            "refresh interval {every:?}"
        );
    }
}
