//! `LocalCache` against a real Redis: invalidation across instances, lost tracking
//! connections, round trips, max age and the memory bound. Conditions that depend on a
//! push travelling through Redis are polled up to a generous deadline; no time is
//! asserted.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::revocation::Revoker;
use tower_stateless::store::{LocalCache, RedisStore, StateStore, TRACKING_CLIENT_NAME};
use tower_stateless::RegisteredClaims;

use common::RedisServer;

const DEADLINE: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

const SECRET: [u8; 32] = [7; 32];

/// The token policy of these checks: one HMAC key.
fn policy() -> TokenPolicy {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, &SECRET)
        .expect("key");
    TokenPolicy::builder(keys)
        .signing_key("v1")
        .build()
        .expect("policy")
}

/// A token carrying exactly `claims`, signed with the policy's key.
fn bearer(claims: &RegisteredClaims) -> HeaderValue {
    // With both crypto features on, jsonwebtoken has no provider until the crate installs
    // one, which building a key set does.
    let _ = JwtKeySet::new();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("v1".into());
    let token = jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&SECRET),
    )
    .expect("token");
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header value")
}

/// A store of one connection. Its build loads the Lua scripts (and opens the
/// connection) in the background, and operations wait for that load: the commands
/// counted after a first operation are the operations' own.
fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .pool_size(1)
        .build()
        .expect("store")
}

/// A cache that never expires entries by age and never pings, so that only invalidation
/// (or its absence) decides what it serves.
fn cache(server: &RedisServer) -> LocalCache {
    LocalCache::builder(store(server))
        .prefix("rev:")
        .max_age(HOUR)
        .heartbeat(HOUR)
        .build()
        .expect("cache")
}

/// Polls `condition` until it holds, up to [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serving(cache: &LocalCache) {
    eventually("the cache serves", || async { cache.is_serving() }).await;
}

/// Reads `key` through the cache until it is cached (a read racing the tracking
/// connection coming up is not cached).
async fn cached(cache: &LocalCache, server: &RedisServer, key: &str) -> Option<Bytes> {
    serving(cache).await;
    let start = Instant::now();
    loop {
        let value = cache.get(key).await.expect("get");
        server.reset_stats();
        let again = cache.get(key).await.expect("get");
        if again == value && server.command_count() == 0 {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "{key} is never cached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Checked = BoxCloneService<Request<String>, StatusCode, Infallible>;

/// The JWT layer with its revocation check over `store`, for a request carrying a token
/// with `claims`; answers the status.
fn checked<St: StateStore>(store: St, claims: RegisteredClaims) -> Checked {
    let bearer = bearer(&claims);
    ServiceBuilder::new()
        .map_response(|response: Response<_>| response.status())
        .map_request(move |mut request: Request<String>| {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer.clone());
            request
        })
        .layer(policy().auth_layer().revocation(store))
        .service_fn(|_request: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        })
        .boxed_clone()
}

async fn status(service: &Checked) -> StatusCode {
    match service.clone().oneshot(Request::new(String::new())).await {
        Ok(status) => status,
        Err(never) => match never {},
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_a_is_refused_on_b() {
    let server = redis_or_skip!();
    let (a, b) = (cache(&server), cache(&server));
    serving(&b).await;
    let claims = RegisteredClaims::new("alice", now() + 900)
        .with_jti("t-1")
        .with_sid("s-1")
        .with_iat(now());
    let on_b = checked(b.clone(), claims.clone());
    // Warm: B has cached "not revoked".
    eventually("B allows and has cached the check", || async {
        status(&on_b).await == StatusCode::OK && b.entry_count() == 3
    })
    .await;
    server.reset_stats();
    assert_eq!(status(&on_b).await, StatusCode::OK);
    assert_eq!(
        server.command_count(),
        0,
        "the warm check is served by B's cache"
    );

    Revoker::new(a, &policy())
        .revoke_token(&claims)
        .await
        .expect("revoke");
    eventually("B refuses the revoked token", || async {
        status(&on_b).await == StatusCode::UNAUTHORIZED
    })
    .await;
    // And keeps refusing.
    for _ in 0..10 {
        assert_eq!(status(&on_b).await, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_session_and_subject_on_a_are_refused_on_b() {
    let server = redis_or_skip!();
    let (a, b) = (store(&server), cache(&server));
    serving(&b).await;
    let revoker = Revoker::new(a, &policy());
    let t1 = RegisteredClaims::new("bob", now() + 900)
        .with_jti("t-1")
        .with_sid("s-1")
        .with_iat(now());
    let t2 = RegisteredClaims::new("carol", now() + 900)
        .with_jti("t-2")
        .with_iat(now());
    let (on_b1, on_b2) = (checked(b.clone(), t1), checked(b.clone(), t2));
    eventually("B allows both and has cached both checks", || async {
        status(&on_b1).await == StatusCode::OK
            && status(&on_b2).await == StatusCode::OK
            && b.entry_count() == 5
    })
    .await;

    revoker
        .revoke_session("bob", "s-1", HOUR)
        .await
        .expect("revoke session");
    revoker
        .revoke_subject("carol")
        .await
        .expect("revoke subject");
    eventually("B refuses the revoked session", || async {
        status(&on_b1).await == StatusCode::UNAUTHORIZED
    })
    .await;
    eventually("B refuses the revoked subject", || async {
        status(&on_b2).await == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_absent_key_becomes_present_after_a_write_elsewhere() {
    let server = redis_or_skip!();
    let (a, b) = (store(&server), cache(&server));
    assert_eq!(cached(&b, &server, "rev:{x}:k").await, None);
    a.set("rev:{x}:k", Bytes::from_static(b"1"), HOUR)
        .await
        .expect("set");
    eventually("B sees the write", || async {
        b.get("rev:{x}:k").await.expect("get").is_some()
    })
    .await;
    // The same for a key that is deleted elsewhere, through get_many.
    let keys = ["rev:{x}:k", "rev:{x}:other"];
    eventually("B has cached both keys", || async {
        b.get_many(&keys).await.expect("get_many")[0].is_some() && b.entry_count() == 2
    })
    .await;
    a.delete("rev:{x}:k").await.expect("delete");
    eventually("B sees the delete", || async {
        b.get_many(&keys).await.expect("get_many") == vec![None, None]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_cache_is_visible_on_the_same_instance_at_once() {
    let server = redis_or_skip!();
    let b = cache(&server);
    assert_eq!(cached(&b, &server, "rev:{x}:k").await, None);
    b.set("rev:{x}:k", Bytes::from_static(b"1"), HOUR)
        .await
        .expect("set");
    assert_eq!(
        b.get("rev:{x}:k").await.expect("get"),
        Some(Bytes::from_static(b"1"))
    );
    assert!(b.delete("rev:{x}:k").await.expect("delete"));
    assert_eq!(b.get("rev:{x}:k").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outside_the_prefixes_are_never_cached() {
    let server = redis_or_skip!();
    let b = cache(&server);
    serving(&b).await;
    b.get("sess:{x}").await.expect("get");
    b.get_many(&["rev:{x}:a", "sess:{x}"])
        .await
        .expect("get_many");
    assert_eq!(b.entry_count(), 0);
    server.reset_stats();
    b.get("sess:{x}").await.expect("get");
    assert_eq!(server.command_count(), 1);
    // So a session written on another instance is read back by the very next read, with
    // no wait for an invalidation.
    store(&server)
        .set("sess:{x}", Bytes::from_static(b"cart"), HOUR)
        .await
        .expect("set");
    assert_eq!(
        b.get("sess:{x}").await.expect("get"),
        Some(Bytes::from_static(b"cart"))
    );
}

fn tracking_client_id(server: &RedisServer) -> Option<u64> {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut conn)
        .expect("CLIENT LIST");
    list.lines()
        .find(|line| {
            line.split(' ')
                .any(|field| field == format!("name={TRACKING_CLIENT_NAME}"))
        })
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .and_then(|id| id.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_serves_nothing_stale() {
    let server = redis_or_skip!();
    let (a, b) = (store(&server), cache(&server));
    assert_eq!(cached(&b, &server, "rev:{x}:k").await, None);
    let id = tracking_client_id(&server).expect("the tracking connection is listed");
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut conn)
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    // Redis cannot push this change to B any more: only emptying the cache on the lost
    // connection lets B see it (entries live for an hour otherwise).
    a.set("rev:{x}:k", Bytes::from_static(b"1"), HOUR)
        .await
        .expect("set");
    eventually(
        "B sees the write made while it was disconnected",
        || async { b.get("rev:{x}:k").await.expect("get").is_some() },
    )
    .await;
    // Tracking comes back, and B serves from memory again.
    eventually("a new tracking connection", || async {
        tracking_client_id(&server).is_some_and(|new| new != id) && b.is_serving()
    })
    .await;
    assert!(cached(&b, &server, "rev:{x}:k").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_serves_nothing_stale() {
    let mut server = redis_or_skip!();
    let (a, b) = (store(&server), cache(&server));
    a.set("rev:{x}:gone", Bytes::from_static(b"1"), HOUR)
        .await
        .expect("set");
    assert!(cached(&b, &server, "rev:{x}:gone").await.is_some());
    assert_eq!(cached(&b, &server, "rev:{x}:new").await, None);

    server.restart();
    // The new Redis is empty: "gone" is gone. "new" is written before B may have noticed.
    eventually("A writes to the restarted Redis", || async {
        a.set("rev:{x}:new", Bytes::from_static(b"1"), HOUR)
            .await
            .is_ok()
    })
    .await;
    eventually("B serves the restarted Redis's state", || async {
        b.get("rev:{x}:gone").await.ok() == Some(None)
            && b.get("rev:{x}:new").await.ok().flatten().is_some()
    })
    .await;
    serving(&b).await;
    // The store's other pooled connections may still report the restart once each; what
    // is answered must never be the old state.
    for _ in 0..20 {
        assert!(
            !matches!(b.get("rev:{x}:gone").await, Ok(Some(_))),
            "stale entry"
        );
        assert!(
            !matches!(b.get("rev:{x}:new").await, Ok(None)),
            "stale absence"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_stops_the_cache_serving() {
    let server = redis_or_skip!();
    let b = LocalCache::builder(store(&server))
        .prefix("rev:")
        .max_age(HOUR)
        .heartbeat(Duration::from_millis(200))
        .build()
        .expect("cache");
    assert_eq!(cached(&b, &server, "rev:{x}:k").await, None);
    // A frozen Redis pushes nothing: the unanswered heartbeat stops the cache serving, and
    // reads go to the (frozen) store instead of the cache.
    server.pause();
    eventually("the cache stops serving", || async { !b.is_serving() }).await;
    let read = b.get("rev:{x}:k").await;
    server.resume();
    assert!(
        read.is_err(),
        "served from memory while Redis was frozen: {read:?}"
    );
    serving(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_revocation_check_takes_no_round_trip() {
    let server = redis_or_skip!();
    let (plain, b) = (store(&server), cache(&server));
    let claims = RegisteredClaims::new("dave", now() + 900)
        .with_jti("t-1")
        .with_sid("s-1")
        .with_iat(now());
    let (uncached, on_b) = (
        checked(plain, claims.clone()),
        checked(b.clone(), claims.clone()),
    );
    // B's tracking connection comes up first, so that its handshake is not counted.
    serving(&b).await;
    assert_eq!(status(&uncached).await, StatusCode::OK);
    server.reset_stats();
    assert_eq!(status(&uncached).await, StatusCode::OK);
    assert_eq!(
        server.command_stats().get("mget"),
        Some(&1),
        "counting works"
    );
    assert_eq!(server.command_count(), 1);

    eventually("B has cached the check", || async {
        status(&on_b).await == StatusCode::OK && b.entry_count() == 3
    })
    .await;
    server.reset_stats();
    for _ in 0..100 {
        assert_eq!(status(&on_b).await, StatusCode::OK);
    }
    assert_eq!(server.command_count(), 0, "{:?}", server.command_stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_max_age() {
    let server = redis_or_skip!();
    let b = LocalCache::builder(store(&server))
        .prefix("rev:")
        .max_age(Duration::from_millis(200))
        .heartbeat(HOUR)
        .build()
        .expect("cache");
    serving(&b).await;
    // The key is cached (a read without a round trip), then read again from Redis once
    // its local age ran out, though nothing invalidated it.
    eventually("a read served by the cache", || async {
        b.get("rev:{x}:k").await.expect("get");
        server.reset_stats();
        b.get("rev:{x}:k").await.expect("get");
        server.command_count() == 0
    })
    .await;
    eventually("a read that goes to Redis after max_age", || async {
        server.reset_stats();
        b.get("rev:{x}:k").await.expect("get");
        server.command_count() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded() {
    let server = redis_or_skip!();
    let b = LocalCache::builder(store(&server))
        .prefix("rev:")
        .max_bytes(8 * 1024)
        .max_age(HOUR)
        .build()
        .expect("cache");
    serving(&b).await;
    let value = Bytes::from(vec![b'v'; 100]);
    for i in 0..200 {
        let key = format!("rev:{{x}}:{i}");
        b.get_ref()
            .set(&key, value.clone(), HOUR)
            .await
            .expect("set");
        b.get(&key).await.expect("get");
    }
    for i in 0..1000 {
        b.get(&format!("rev:{{y}}:{i}")).await.expect("get");
    }
    assert!(b.weighted_size() <= 8 * 1024, "{}", b.weighted_size());
    assert!(b.entry_count() > 0);
    assert!(b.entry_count() < 1000, "{}", b.entry_count());
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn redis_cluster_is_refused() {
    let store = RedisStore::builder()
        .cluster_urls(["redis://127.0.0.1:1"])
        .build()
        .expect("store");
    let err = LocalCache::builder(store)
        .prefix("rev:")
        .build()
        .expect_err("cluster refused");
    assert_eq!(err.setting(), "store");
}

#[cfg(feature = "conformance")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_passes_the_store_conformance_suite() {
    let server = redis_or_skip!();
    let cache = LocalCache::builder(store(&server))
        .prefix("conformance:")
        .build()
        .expect("cache");
    serving(&cache).await;
    tower_stateless::store::conformance::run_all(&cache).await;
}
