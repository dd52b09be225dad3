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
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::response::ResponseBody;
use tower_stateless::revocation::Revoker;
use tower_stateless::session::{Session, SessionLayer};
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

/// Kills the cache's tracking connection (`CLIENT KILL`) and returns its client id.
fn kill_tracking(server: &RedisServer) -> u64 {
    let id = tracking_client_id(server).expect("the tracking connection is listed");
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut conn)
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_serves_nothing_stale() {
    let server = redis_or_skip!();
    let (a, b) = (store(&server), cache(&server));
    assert_eq!(cached(&b, &server, "rev:{x}:k").await, None);
    let id = kill_tracking(&server);
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

// Session reads answered by the cache (`SessionLayer::cached_reads`).

type App = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// A session app over `store` with cached reads: `/read` answers the session's `n` (or
/// `none`), `/write/N` sets it, `/destroy` ends the session.
fn session_app<St: StateStore>(store: St, idle: Duration, refresh: Duration) -> App {
    ServiceBuilder::new()
        .layer(
            SessionLayer::new(store)
                .secure(false)
                .cached_reads(true)
                .idle_timeout(idle)
                .expect("idle timeout")
                .refresh_interval(refresh),
        )
        .service_fn(|request: Request<String>| async move {
            let session = request
                .extensions()
                .get::<Session>()
                .expect("session")
                .clone();
            let path = request.uri().path().to_owned();
            let body = if path == "/read" {
                session
                    .get::<u64>("n")
                    .await
                    .map(|n| n.map_or_else(|| "none".to_owned(), |n| n.to_string()))
            } else if let Some(n) = path.strip_prefix("/write/") {
                let n: u64 = n.parse().expect("number");
                session.insert("n", n).await.map(|()| "written".to_owned())
            } else {
                session.destroy().await.map(|()| "destroyed".to_owned())
            };
            // A store error (the restart test) is its status, as a real handler answers.
            let response = match body {
                Ok(body) => Response::new(body),
                Err(e) => {
                    let mut response = Response::new(e.to_string());
                    *response.status_mut() = e.status();
                    response
                }
            };
            Ok::<_, Infallible>(response)
        })
        .boxed_clone()
}

/// A client's cookie: the value of `id`, as the last `Set-Cookie` left it.
#[derive(Debug, Clone, Default)]
struct Jar(Option<String>);

impl Jar {
    async fn call(&mut self, app: &App, path: &str) -> String {
        match self.try_call(app, path).await {
            Ok(body) => body,
            Err(status) => panic!("{path}: {status}"),
        }
    }

    /// [`call`](Self::call), answering the status of a non-`200` answer as an error.
    async fn try_call(&mut self, app: &App, path: &str) -> Result<String, StatusCode> {
        let mut request = Request::get(path).body(String::new()).expect("request");
        if let Some(value) = &self.0 {
            request.headers_mut().insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("id={value}")).expect("cookie"),
            );
        }
        let response = app.clone().oneshot(request).await.expect("infallible");
        if response.status() != StatusCode::OK {
            return Err(response.status());
        }
        if let Some(set) = response.headers().get(header::SET_COOKIE) {
            let set = set.to_str().expect("ascii");
            let value = set
                .strip_prefix("id=")
                .and_then(|rest| rest.split(';').next())
                .expect("the session cookie");
            self.0 = (!set.contains("Max-Age=0")).then(|| value.to_owned());
        }
        let body = response.into_body().collect().await.expect("body");
        Ok(String::from_utf8(body.to_bytes().to_vec()).expect("utf-8"))
    }

    /// The write tag the cookie carries.
    fn tag(&self) -> Option<&str> {
        self.0.as_deref()?.split_once('.').map(|(_, tag)| tag)
    }
}

fn session_cache(server: &RedisServer) -> LocalCache {
    LocalCache::builder(store(server))
        .prefix("sess:")
        .max_age(HOUR)
        .heartbeat(HOUR)
        .build()
        .expect("cache")
}

/// Reads on `app` until a read takes no command (the cache answered it), and returns it.
async fn read_from_memory(app: &App, jar: &mut Jar, server: &RedisServer) -> String {
    let start = Instant::now();
    loop {
        jar.call(app, "/read").await;
        server.reset_stats();
        let read = jar.call(app, "/read").await;
        if server.command_count() == 0 {
            return read;
        }
        assert!(start.elapsed() < DEADLINE, "the session is never cached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_session_read_takes_no_round_trip_and_a_stale_tag_one() {
    let server = redis_or_skip!();
    let cache = session_cache(&server);
    serving(&cache).await;
    let app = session_app(cache.clone(), HOUR, Duration::from_secs(60));
    let mut jar = Jar::default();
    assert_eq!(jar.call(&app, "/write/1").await, "written");
    let tag = jar.tag().expect("a write sends a tagged cookie").to_owned();
    assert_eq!(tag.len(), 16);
    assert_eq!(read_from_memory(&app, &mut jar, &server).await, "1");
    server.reset_stats();
    for _ in 0..50 {
        assert_eq!(jar.call(&app, "/read").await, "1");
    }
    assert_eq!(server.round_trips(), 0, "{:?}", server.command_stats());
    assert_eq!(jar.tag(), Some(tag.as_str()), "reads keep the tag");

    // Another client of the same session (no tag, or an old one) reads the store once,
    // and gets the current tag back.
    let id = jar
        .0
        .as_deref()
        .and_then(|v| v.split_once('.'))
        .expect("id")
        .0;
    let mut other = Jar(Some(format!("{id}.0000000000000000")));
    server.reset_stats();
    assert_eq!(other.call(&app, "/read").await, "1");
    assert_eq!(server.round_trips(), 1, "{:?}", server.command_stats());
    assert_eq!(other.tag(), Some(tag.as_str()), "a stale tag is replaced");
    let mut untagged = Jar(Some(id.to_owned()));
    assert_eq!(untagged.call(&app, "/read").await, "1");
    assert_eq!(untagged.tag(), Some(tag.as_str()));

    // A write changes the tag and is one round trip; the next read is the store's.
    server.reset_stats();
    assert_eq!(jar.call(&app, "/write/2").await, "written");
    assert_eq!(server.round_trips(), 1, "{:?}", server.command_stats());
    assert_ne!(jar.tag(), Some(tag.as_str()), "a write sends a new tag");
    assert_eq!(jar.call(&app, "/read").await, "2");
}

/// Drives a current-thread runtime on its own thread until told to stop, so that the
/// tasks spawned on it (a cache's tracking task) can be frozen at will.
struct Frozen {
    runtime: Option<std::sync::Arc<tokio::runtime::Runtime>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Frozen {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut frozen = Self {
            runtime: Some(std::sync::Arc::new(runtime)),
            stop: None,
            thread: None,
        };
        frozen.thaw();
        frozen
    }

    fn thaw(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = self.runtime.clone().expect("runtime");
        self.stop = Some(stop);
        self.thread = Some(std::thread::spawn(move || {
            let _ = runtime.block_on(stopped);
        }));
    }

    fn freeze(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("driver thread");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.freeze();
        // A runtime cannot be dropped inside another one's worker: drop it on a thread.
        let runtime = self.runtime.take();
        let _ = std::thread::spawn(move || drop(runtime)).join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_written_on_a_is_read_on_b_before_b_hears_of_it() {
    let server = redis_or_skip!();
    let a = session_app(session_cache(&server), HOUR, Duration::from_secs(60));
    // B's tracking task runs on a runtime of its own, which the test freezes: Redis'
    // invalidations then wait in B's socket, as when they are slow to arrive.
    let mut tracking = Frozen::new();
    let b_store = store(&server);
    let b_cache = {
        let _entered = tracking.runtime.as_ref().expect("runtime").enter();
        LocalCache::builder(b_store)
            .prefix("sess:")
            .max_age(HOUR)
            .heartbeat(HOUR)
            .build()
            .expect("cache")
    };
    serving(&b_cache).await;
    let b = session_app(b_cache.clone(), HOUR, Duration::from_secs(60));
    let mut jar = Jar::default();
    assert_eq!(jar.call(&a, "/write/1").await, "written");
    assert_eq!(read_from_memory(&b, &mut jar, &server).await, "1");

    tracking.freeze();
    for n in 2..=20u64 {
        assert_eq!(jar.call(&a, &format!("/write/{n}")).await, "written");
        assert_eq!(
            jar.call(&b, "/read").await,
            n.to_string(),
            "B answered from a copy older than the client's own write"
        );
    }
    assert!(b_cache.is_serving(), "B kept serving while frozen");
    // The latest state is what B holds now: it answers from memory, still frozen.
    assert_eq!(read_from_memory(&b, &mut jar, &server).await, "20");
    tracking.thaw();

    // A destroy on A reaches B within the invalidation delay, even for a client that kept
    // the old cookie.
    let mut thief = jar.clone();
    assert_eq!(jar.call(&a, "/destroy").await, "destroyed");
    assert_eq!(jar.0, None, "the cookie is removed");
    eventually("B sees the destroy", || {
        let (b, mut thief) = (b.clone(), thief.clone());
        async move { thief.call(&b, "/read").await == "none" }
    })
    .await;
    assert_eq!(thief.call(&b, "/read").await, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_keep_an_active_session_alive() {
    let server = redis_or_skip!();
    let cache = session_cache(&server);
    serving(&cache).await;
    // An idle timeout of 4 s, rolled once 1 s of it is used up.
    let app = session_app(cache, Duration::from_secs(4), Duration::from_secs(1));
    let mut jar = Jar::default();
    assert_eq!(jar.call(&app, "/write/7").await, "written");
    let start = Instant::now();
    let mut from_memory = 0;
    // Twice the idle timeout of reads only: the session lives on only if the reads that
    // go to the store roll its expiry, as they do uncached.
    while start.elapsed() < Duration::from_secs(8) {
        server.reset_stats();
        assert_eq!(jar.call(&app, "/read").await, "7");
        if server.command_count() == 0 {
            from_memory += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(from_memory > 0, "no read was answered from memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_serves_no_stale_session() {
    let server = redis_or_skip!();
    let a = session_app(store(&server), HOUR, Duration::from_secs(60));
    let b_cache = session_cache(&server);
    serving(&b_cache).await;
    let b = session_app(b_cache.clone(), HOUR, Duration::from_secs(60));
    let mut jar = Jar::default();
    assert_eq!(jar.call(&a, "/write/1").await, "written");
    assert_eq!(read_from_memory(&b, &mut jar, &server).await, "1");
    // A second client of the session keeps the old cookie: only invalidation (or emptying
    // the cache) keeps B from answering it with the old copy.
    let mut old = jar.clone();
    let id = kill_tracking(&server);
    assert_eq!(jar.call(&a, "/write/2").await, "written");
    eventually("B sees the write made while it was disconnected", || {
        let (b, mut old) = (b.clone(), old.clone());
        async move { old.call(&b, "/read").await == "2" }
    })
    .await;
    eventually("a new tracking connection", || async {
        tracking_client_id(&server).is_some_and(|new| new != id) && b_cache.is_serving()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(old.call(&b, "/read").await, "2", "stale session served");
    }
    assert_eq!(read_from_memory(&b, &mut jar, &server).await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_serves_no_stale_session() {
    let mut server = redis_or_skip!();
    let a = session_app(store(&server), HOUR, Duration::from_secs(60));
    let b_cache = session_cache(&server);
    serving(&b_cache).await;
    let b = session_app(b_cache.clone(), HOUR, Duration::from_secs(60));
    let mut jar = Jar::default();
    assert_eq!(jar.call(&a, "/write/1").await, "written");
    assert_eq!(read_from_memory(&b, &mut jar, &server).await, "1");

    // The restarted Redis is empty: the session is gone, whatever B held.
    server.restart();
    eventually("B reads the restarted Redis", || {
        let (b, mut jar) = (b.clone(), jar.clone());
        async move { jar.try_call(&b, "/read").await.as_deref() == Ok("none") }
    })
    .await;
    serving(&b_cache).await;
    // The store's other pooled connections may still report the restart once; what is
    // answered must never be the old session.
    for _ in 0..20 {
        let read = jar.clone().try_call(&b, "/read").await;
        assert_ne!(read.as_deref(), Ok("1"), "stale session served");
    }
}
