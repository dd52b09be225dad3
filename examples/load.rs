//! Load tools for benchmarks on loopback: a load generator for the `stateless_api`
//! example, and the app that `benches/compare.sh` drives with wrk to compare the layers.
//!
//! **Generator** (used by `benches/load.sh`): logs in once per user, then sends
//! `GET /me` with the bearer tokens (JWT verify + one revocation check on the shared store)
//! round-robin over one or more instances, and reports requests/s and p50/p99 latency.
//!
//! ```sh
//! # one Redis, three instances sharing it (same JWT_SECRET, so a token works on all)
//! REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=change-me-to-32-bytes-or-more-please \
//!     PORT=3001 cargo run --release --example stateless_api --features axum,metrics &
//! # ... PORT=3002, PORT=3003 likewise, then:
//! cargo run --release --example load -- --requests 20000 --seconds 20 --concurrency 32 \
//!     http://127.0.0.1:3001 http://127.0.0.1:3002 http://127.0.0.1:3003
//! ```
//!
//! The run stops after `--requests` requests or `--seconds` seconds, whichever comes first.
//! `--users alice:wonderland,bob:builder` (the default) logs in as each of these users and
//! spreads the requests over their tokens: the example limits every user to
//! `RATE_LIMIT_PER_MINUTE`, so a load run needs many users (and a high limit) to measure
//! the layers rather than `429`s; any answer that is not `2xx` counts as failed.
//! Only loopback targets are accepted: this is a benchmark tool, not a load-testing service.
//!
//! **Bench app** (`load serve`, used by `benches/compare.sh`): one axum server with one
//! route per stack under test, each built in [`stacks`]:
//!
//! | route | stack |
//! |---|---|
//! | `GET /bare` | nothing (bare axum) |
//! | `GET /decode` | a hand-written `jsonwebtoken::decode` middleware (the floor for JWT) |
//! | `GET /jwt` | `JwtAuthLayer` |
//! | `GET /jwt-revocation` | `JwtAuthLayer` with its revocation check |
//! | `GET /jwt-revocation-session` | the same + `SessionLayer`, handler reads the session |
//! | `GET /jwt-revocation-cached`, `GET /jwt-revocation-cached-session` | the two above with the revocation check served by a `LocalCache` (Redis only) |
//! | `GET /jwt-revocation-session-cached` | the same with a `SessionLayer::cached_reads` over that `LocalCache` (cookie `cid`), handler reads the session (Redis only) |
//! | `GET /session-read`, `GET /session-write` | `SessionLayer` alone, read or write one key |
//! | `GET /session-read-cached`, `GET /session-write-cached` | that `cached_reads` `SessionLayer` alone, read or write one key (Redis only) |
//! | `POST /idempotent` | `IdempotencyLayer` alone: a first call with a new key, a replay with a used one |
//! | `GET /rate-limit` | `RateLimitLayer` alone, one key, a quota never reached (1,000,000/s) |
//! | `GET /peer-read`, `GET /peer-write` | tower-sessions (the peer), read or write one key |
//!
//! ```sh
//! cargo run --release --example load -- serve --redis redis://127.0.0.1:6379 --out /tmp/bench
//! ```
//!
//! It listens on `--port` (0, the default: a free port), makes `--sessions` sessions (64)
//! of each kind, writes what a client needs into the `--out` directory (`token`: a bearer
//! token with a session id; `ours.cookies` and `peer.cookies`: one `name=value` per line;
//! with `--redis`, `cached.cookies` too; `port`, written last) and serves until killed.
//! Without `--redis` it uses the in-memory stores.
//!
//! The `LocalCache` caches the revocation list (`rev:`) and the `cached_reads` layer's
//! sessions, under a key prefix of their own (`csess:`): had it tracked the other
//! layers' `sess:`, every write of theirs would cost Redis an invalidation push and skew
//! their rows. The `cached_reads` sessions are made through
//! `/session-write-cached` and read once through `/session-read-cached`, so that each
//! cookie carries the write tag the store holds and a read with it can be answered from
//! memory (a client that cannot follow `Set-Cookie`, like wrk, keeps sending it).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use tower::ServiceExt;
use tower_stateless::idempotency::{IdempotencyLayer, Scope};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::rate_limit::{Quota, RateLimitLayer};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{LocalCache, MemoryStore, RedisStore, StateStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        args.remove(0);
        let options = exit_on_usage_error(ServeOptions::parse(args));
        return serve(options).await;
    }
    let options = exit_on_usage_error(Options::parse(args));
    generate(options).await
}

#[expect(
    clippy::exit,
    reason = "a command-line tool: a usage error ends the run with status 2"
)]
fn exit_on_usage_error<T>(parsed: Result<T, String>) -> T {
    parsed.unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2);
    })
}

// ---- the load generator for the example -----------------------------------------------

struct Options {
    requests: u64,
    duration: Duration,
    concurrency: usize,
    /// `(username, password)` pairs to log in as.
    users: Vec<(String, String)>,
    urls: Vec<String>,
}

const USAGE: &str = "usage: load [--requests N] [--seconds S] [--concurrency C] \
     [--users user:password,...] http://127.0.0.1:PORT...\n       \
     load serve [--port P] [--redis URL] [--sessions N] --out DIR";

/// `user:password,user:password` (the example's `DEMO_USERS` format).
fn parse_users(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .map(|pair| {
            pair.trim()
                .split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
                .ok_or_else(|| format!("--users entries are user:password, got {pair:?}"))
        })
        .collect()
}

fn parse_number<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value = value.ok_or(format!("{name} needs a value"))?;
    value.parse().map_err(|e| format!("{name} {value:?}: {e}"))
}

impl Options {
    fn parse(args: Vec<String>) -> Result<Self, String> {
        let mut options = Self {
            requests: 20_000,
            duration: Duration::from_secs(20),
            concurrency: 32,
            users: parse_users("alice:wonderland")?,
            urls: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--requests" => options.requests = parse_number(&arg, args.next())?,
                "--seconds" => {
                    options.duration = Duration::from_secs(parse_number(&arg, args.next())?)
                }
                "--concurrency" => options.concurrency = parse_number(&arg, args.next())?,
                "--users" => {
                    options.users = parse_users(&args.next().ok_or("--users needs a value")?)?
                }
                url if url.starts_with("--") => return Err(format!("{url}?\n{USAGE}")),
                url => options.urls.push(url.trim_end_matches('/').to_owned()),
            }
        }
        if options.urls.is_empty() || options.concurrency == 0 || options.requests == 0 {
            return Err(USAGE.to_owned());
        }
        for url in &options.urls {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
            let host = parsed.host_str().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if parsed.scheme() != "http" || !loopback {
                return Err(format!("{url}: only http:// loopback targets are accepted"));
            }
        }
        Ok(options)
    }
}

#[derive(Deserialize)]
struct Login {
    access_token: String,
}

/// The latency at quantile `q` of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[expect(
    clippy::exit,
    reason = "a command-line tool: failed requests end the run with status 1"
)]
async fn generate(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut bearers = Vec::new();
    for (username, password) in &options.users {
        let login: Login = client
            .post(format!("{}/login", options.urls[0]))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        bearers.push(format!("Bearer {}", login.access_token));
    }
    let bearers = Arc::new(bearers);
    let urls: Arc<Vec<String>> = Arc::new(options.urls.iter().map(|u| format!("{u}/me")).collect());
    // Every instance must accept the tokens before the clock starts (same JWT_SECRET).
    for url in urls.iter() {
        client
            .get(url)
            .header("authorization", bearers[0].as_str())
            .send()
            .await?
            .error_for_status()?;
    }

    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + options.duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (client, bearers, urls, issued) = (
            client.clone(),
            bearers.clone(),
            urls.clone(),
            issued.clone(),
        );
        let limit = options.requests;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed: Vec<String> = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= limit || Instant::now() >= deadline {
                    return (latencies, failed);
                }
                let url = &urls[n as usize % urls.len()];
                let bearer = &bearers[(n as usize / urls.len()) % bearers.len()];
                let sent = Instant::now();
                let outcome = match client
                    .get(url)
                    .header("authorization", bearer.as_str())
                    .send()
                    .await
                {
                    Ok(res) if res.status().is_success() => match res.bytes().await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(format!("body: {e}")),
                    },
                    Ok(res) => Err(format!("status {}", res.status().as_u16())),
                    Err(e) => Err(format!("request: {e}")),
                };
                match outcome {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(reason) => failed.push(reason),
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = Vec::new();
    for worker in workers {
        let (l, f) = worker.await?;
        latencies.extend(l);
        failed.extend(f);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();

    println!(
        "instances: {}  users: {}  concurrency: {}  GET /me",
        options.urls.len(),
        options.users.len(),
        options.concurrency
    );
    println!(
        "requests: {} ok, {} failed in {:.2} s",
        latencies.len(),
        failed.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "throughput: {:.0} requests/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {}  p99 {}  max {}",
        ms(quantile(&latencies, 0.50)),
        ms(quantile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    if !failed.is_empty() {
        // Which failures, so that a run drowned in 429s says so.
        let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
        for reason in &failed {
            *reasons.entry(reason.as_str()).or_default() += 1;
        }
        for (reason, count) in reasons {
            println!("failed: {count} x {reason}");
        }
        std::process::exit(1);
    }
    Ok(())
}

// ---- the bench app ------------------------------------------------------------------

/// The key prefix of the `cached_reads` sessions, which the `LocalCache` caches.
const CACHED_SESSIONS: &str = "csess:";

/// The HS256 secret of the bench app's tokens.
const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";

struct ServeOptions {
    port: u16,
    redis: Option<String>,
    sessions: usize,
    out: PathBuf,
}

impl ServeOptions {
    fn parse(args: Vec<String>) -> Result<Self, String> {
        let (mut port, mut redis, mut sessions, mut out) = (0, None, 64, None);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--port" => port = parse_number(&arg, args.next())?,
                "--redis" => redis = Some(args.next().ok_or("--redis needs a URL")?),
                "--sessions" => sessions = parse_number(&arg, args.next())?,
                "--out" => out = Some(PathBuf::from(args.next().ok_or("--out needs a path")?)),
                other => return Err(format!("{other}?\n{USAGE}")),
            }
        }
        let out = out.ok_or(format!("serve needs --out DIR\n{USAGE}"))?;
        if sessions == 0 {
            return Err("--sessions must be at least 1".to_owned());
        }
        Ok(Self {
            port,
            redis,
            sessions,
            out,
        })
    }
}

/// Every stack under test, one route each, over `store` (ours) and `peer`
/// (tower-sessions' store of the same kind).
///
/// This is the one place that builds the layers: adapt it when a layer's constructor
/// changes.
fn stacks<S, P>(store: S, peer: P, policy: &TokenPolicy, cached: Option<LocalCache>) -> Router
where
    S: StateStore + Clone,
    P: tower_sessions::SessionStore + Clone,
{
    let jwt = policy.auth_layer();
    let jwt_revocation = policy.auth_layer().revocation(store.clone());
    let session = SessionLayer::new(store.clone()).secure(false);
    // The revocation check, and the session reads of `cached_reads`, served by the
    // store-invalidated local cache (Redis only).
    let cached_routes = match cached {
        Some(cached) => {
            let jwt_cached = policy.auth_layer().revocation(cached.clone());
            let session_cached = SessionLayer::new(cached)
                .cached_reads(true)
                .cookie_name("cid")
                .expect("cookie name")
                .key_prefix(CACHED_SESSIONS)
                .expect("key prefix")
                .secure(false);
            Router::new()
                .route(
                    "/jwt-revocation-cached",
                    get(ok).route_layer(jwt_cached.clone()),
                )
                .route(
                    "/jwt-revocation-cached-session",
                    get(read)
                        .route_layer(session.clone())
                        .route_layer(jwt_cached.clone()),
                )
                .route(
                    "/jwt-revocation-session-cached",
                    get(read)
                        .route_layer(session_cached.clone())
                        .route_layer(jwt_cached),
                )
                .route(
                    "/session-read-cached",
                    get(read).route_layer(session_cached.clone()),
                )
                .route(
                    "/session-write-cached",
                    get(write).route_layer(session_cached),
                )
        }
        None => Router::new(),
    };
    // No caller identity on this route: every request has a new key, so one shared scope.
    let idempotency = IdempotencyLayer::new(store.clone()).scope(Scope::shared());
    // One key and a quota no run reaches: every request is one allowed GCRA step.
    let rate_limit =
        RateLimitLayer::new(store.clone(), Quota::per_second(1_000_000).expect("quota"))
            .key_fn(|_| Some("bench".to_owned()));
    let tower_sessions = tower_sessions::SessionManagerLayer::new(peer)
        .with_name("tid")
        .with_secure(false);
    let decode = middleware::from_fn_with_state(
        Arc::new((
            DecodingKey::from_secret(SECRET),
            Validation::new(Algorithm::HS256),
        )),
        decode_floor,
    );

    Router::new()
        .route("/bare", get(ok))
        .route("/decode", get(ok).route_layer(decode))
        .route("/jwt", get(ok).route_layer(jwt.clone()))
        .route(
            "/jwt-revocation",
            get(ok).route_layer(jwt_revocation.clone()),
        )
        .route(
            "/jwt-revocation-session",
            get(read)
                .route_layer(session.clone())
                .route_layer(jwt_revocation),
        )
        .route("/session-read", get(read).route_layer(session.clone()))
        .route("/session-write", get(write).route_layer(session))
        .route("/idempotent", post(ok).route_layer(idempotency))
        .route("/rate-limit", get(ok).route_layer(rate_limit))
        .route(
            "/peer-read",
            get(peer_read).route_layer(tower_sessions.clone()),
        )
        .route("/peer-write", get(peer_write).route_layer(tower_sessions))
        .merge(cached_routes)
}

async fn ok() -> &'static str {
    "ok"
}

/// What a hand-written JWT middleware does at least: one `jsonwebtoken::decode` of the
/// bearer token, the claims into the extensions.
async fn decode_floor(
    State(key): State<Arc<(DecodingKey, Validation)>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match jsonwebtoken::decode::<serde_json::Value>(token, &key.0, &key.1) {
        Ok(data) => {
            req.extensions_mut().insert(data.claims);
            next.run(req).await
        }
        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
    }
}

static WRITES: AtomicU64 = AtomicU64::new(0);

async fn read(Extension(session): Extension<Session>) -> Response {
    match session.get::<u64>("n").await {
        Ok(Some(_)) => "ok".into_response(),
        // The sessions were written at start: a missing one is a failed row, not a fast one.
        Ok(None) => (StatusCode::NOT_FOUND, "no session").into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn write(Extension(session): Extension<Session>) -> Response {
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    match session.insert("n", n).await {
        Ok(()) => "ok".into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn peer_read(Extension(session): Extension<tower_sessions::Session>) -> Response {
    match session.get::<u64>("n").await {
        Ok(Some(_)) => "ok".into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no session").into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn peer_write(Extension(session): Extension<tower_sessions::Session>) -> Response {
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    match session.insert("n", n).await {
        Ok(()) => "ok".into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// One `GET path` with `cookie` (`name=value`) if any: the cookie the answer sets, as
/// `name=value`, if it sets one.
async fn call(app: &Router, path: &str, cookie: Option<&str>) -> Result<Option<String>, String> {
    let mut req = axum::http::Request::get(path);
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    let req = req
        .body(axum::body::Body::empty())
        .map_err(|e| e.to_string())?;
    let res = app
        .clone()
        .oneshot(req)
        .await
        .map_err(|e: Infallible| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("{path}: {}", res.status()));
    }
    Ok(res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned))
}

/// `count` new sessions made through `path` (a write route): their cookies as
/// `name=value`.
async fn new_sessions(app: &Router, path: &str, count: usize) -> Result<Vec<String>, String> {
    let mut cookies = Vec::with_capacity(count);
    for _ in 0..count {
        let cookie = call(app, path, None)
            .await?
            .ok_or(format!("{path} set no cookie"))?;
        cookies.push(cookie);
    }
    Ok(cookies)
}

/// Reads each session of `cookies` once through `path` (a read route of the layer that
/// wrote them): a tagged cookie the read sends again (the store holds another write tag)
/// replaces the one sent, so that every cookie carries the tag the store holds.
async fn read_once(app: &Router, path: &str, cookies: Vec<String>) -> Result<Vec<String>, String> {
    let mut read = Vec::with_capacity(cookies.len());
    for cookie in cookies {
        let again = call(app, path, Some(&cookie)).await?;
        read.push(again.unwrap_or(cookie));
    }
    Ok(read)
}

async fn serve(options: ServeOptions) -> Result<(), Box<dyn std::error::Error>> {
    let keys = JwtKeySet::new().with_hmac("bench", Algorithm::HS256, SECRET)?;
    let policy = TokenPolicy::builder(keys)
        .signing_key("bench")
        .access_ttl(Duration::from_secs(24 * 3600))
        .build()?;
    let token = policy
        .token_issuer()?
        .issue_with("bench", Some("bench-session"), &())?
        .token;
    let app = match &options.redis {
        Some(url) => {
            use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
            // `BENCH_POOL=N` (benches/compare.sh): our pool size, for an A/B; the crate's
            // default (one connection) otherwise. tower-sessions' fred pool below has 4.
            let mut store = RedisStore::builder().url(url.as_str());
            if let Some(size) = std::env::var("BENCH_POOL")
                .ok()
                .and_then(|p| p.parse().ok())
            {
                store = store.pool_size(size);
            }
            let store = store.build()?;
            let pool = Pool::new(Config::from_url(url)?, None, None, None, 4)?;
            let _connection = pool.connect();
            pool.wait_for_connect().await?;
            let cached = LocalCache::builder(store.clone())
                .prefix("rev:")
                .prefix(CACHED_SESSIONS)
                .build()?;
            stacks(
                store,
                tower_sessions_redis_store::RedisStore::new(pool),
                &policy,
                Some(cached),
            )
        }
        None => stacks(
            MemoryStore::new(),
            tower_sessions::MemoryStore::default(),
            &policy,
            None,
        ),
    };
    let ours = new_sessions(&app, "/session-write", options.sessions).await?;
    let peer = new_sessions(&app, "/peer-write", options.sessions).await?;
    // The `cached_reads` sessions (Redis only): their cookies carry the write tag.
    let cached = match options.redis {
        Some(_) => {
            let written = new_sessions(&app, "/session-write-cached", options.sessions).await?;
            Some(read_once(&app, "/session-read-cached", written).await?)
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await?;
    let port = listener.local_addr()?.port();
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("token"), &token)?;
    std::fs::write(options.out.join("ours.cookies"), ours.join("\n") + "\n")?;
    std::fs::write(options.out.join("peer.cookies"), peer.join("\n") + "\n")?;
    if let Some(cached) = &cached {
        std::fs::write(options.out.join("cached.cookies"), cached.join("\n") + "\n")?;
    }
    // Last: its presence tells the script that everything else is written.
    std::fs::write(options.out.join("port"), port.to_string())?;
    eprintln!(
        "serving on 127.0.0.1:{port} ({}), client files in {}",
        options.redis.as_deref().unwrap_or("in memory"),
        options.out.display()
    );
    axum::serve(listener, app).await?;
    Ok(())
}
