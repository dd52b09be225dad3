//! A stateless API with tower-stateless: login, profile, a session cart, orders,
//! payments and logout, runnable as several identical instances sharing one Redis. The
//! instance keeps nothing in memory: kill any of them and another one serves the user.
//!
//! Run with:
//!
//! ```sh
//! cargo run --example stateless_api --features axum,metrics               # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=change-me-to-32-bytes-or-more-please \
//!     PORT=3001 cargo run --example stateless_api --features axum,metrics # shared state
//! ```
//!
//! Environment: `PORT` (3000), `REDIS_URL` (unset: in-memory store), `REDIS_CLUSTER_URLS`
//! (comma-separated seed nodes of a Redis Cluster; needs `--features axum,metrics,redis-cluster`),
//! `RATE_LIMIT_PER_MINUTE` (600: authenticated requests per user), `LOGIN_LIMIT_PER_MINUTE`
//! (10: `POST /login` attempts per username), `JWT_SECRET` (HS256,
//! at least 32 bytes; unset: a random per-process secret, so instances cannot share
//! tokens), `DEMO_USERS` (`alice:wonderland,bob:builder`), `GATEWAY_LATENCY_MS` (0: the
//! simulated payment-gateway latency inside the payment handler), `RUST_LOG` (`info`: one
//! line per request), `OIDC_ISSUER` (unset: only the example's own tokens; set: tokens of
//! that OpenID provider too, verified against its discovered JWKS; needs `--features
//! axum,metrics,oidc`), `OIDC_AUDIENCE` (the `aud` the provider's tokens must name; unset:
//! tokens carrying `aud` are refused), `OIDC_ALLOW_HTTP` (`true` only for a local provider
//! on plain http), `LOG_FORMAT` (`text`; `json`: one JSON object per line).
//!
//! Scopes: `POST /orders` needs `orders:write` and `POST /payments` `payments:write`. The
//! example's own access tokens (from `/login` and `/token/refresh`) carry both; a
//! provider's token without the scope gets `403 insufficient_scope`.
//!
//! Routes: `POST /login`, `POST /token/refresh`, `GET /me`, `GET /cart`,
//! `PUT /cart/items/{sku}`, `POST /orders`, `GET /orders`, `GET /orders/{id}`,
//! `POST /payments`, `GET /payments`, `GET /payments/{id}`, `POST /logout`,
//! `POST /logout-all`, `GET /sessions`, `DELETE /sessions/others`, `GET /health`,
//! `GET /ready`, `GET /metrics`. `POST /orders` (`Idempotency-Key` optional) and `POST /payments`
//! (required) go through `IdempotencyLayer`: a retry with the same key gets the first
//! answer again, with `Idempotent-Replayed: true`. Their `201` carries `Location`, the
//! record's own `GET` route.
//!
//! SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (at most
//! 10 s), exit 0.
//!
//! Files: `main.rs` builds the stack (one `TokenPolicy`, the layers in order) and runs
//! it; `auth.rs` (logins, tokens, devices), `cart.rs` (the session cart), `records.rs`
//! (orders and payments), `errors.rs` (answers), `config.rs` (environment, logs, metrics).
//!
//! Operating it: `GET /metrics` serves tower-stateless's metrics in the Prometheus text
//! format, each series once it has counted its first event (unauthenticated, like
//! `/health` and `/ready`: keep it off the public ingress), and `LOG_FORMAT=json` turns the
//! log into one JSON object per line.

use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower_stateless::idempotency::IdempotencyLayer;
use tower_stateless::jwt::{Algorithm, Claims, JwtKeySet, RequireScopeLayer, TokenPolicy};
use tower_stateless::rate_limit::{Quota, RateLimitLayer, RateLimiter};
use tower_stateless::refresh::RefreshTokens;
use tower_stateless::response::ErrorBody;
use tower_stateless::revocation::Revoker;
use tower_stateless::session::{Devices, Session, SessionError, SessionLayer};
use tower_stateless::store::InstrumentedStore;
use tower_stateless::store::{MemoryStore, RedisStore, StateStore, StoreError};
use tower_stateless::{rejection, RegisteredClaims};

mod auth;
mod cart;
mod config;
mod errors;
mod records;

use self::auth::*;
use self::cart::*;
use self::config::*;
use self::errors::*;
use self::records::*;

/// Access tokens are short-lived; clients renew them with their refresh token.
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const LEEWAY: Duration = Duration::from_secs(30);
/// How long orders and payments live in the store (every store write has a TTL).
const RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Attempts at appending to a per-user index before giving up with a 503.
const INDEX_ATTEMPTS: u32 = 64;
/// The idempotency lease, on top of twice the gateway latency.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// The largest request body any route takes. One value for the idempotency layer (which
/// reads keyed bodies) and axum's extractors (the others), so that a body is refused the
/// same way, `413 payload_too_large`, with or without a key.
const MAX_BODY: usize = 1024 * 1024;
/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The scopes of the example's own access tokens: everything its routes require.
const OWN_SCOPES: &str = "orders:write payments:write";

struct App<S> {
    /// Access tokens with rotated refresh tokens, both tied to the session id.
    tokens: RefreshTokens<S>,
    /// Each user's logins ("my devices"), bound at login: listed and ended by the user.
    devices: Devices<S>,
    revoker: Revoker<S>,
    store: S,
    users: HashMap<String, String>,
    gateway_latency: Duration,
    /// Login attempts per username, shared by every instance (against brute force).
    login_limiter: RateLimiter<S>,
}

type Shared<S> = Arc<App<S>>;

/// One log line per request, at `info`.
async fn trace(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    tracing::info!(%method, %path, status = res.status().as_u16(), elapsed = ?start.elapsed(), "request");
    res
}

/// Keeps a provider's `sid` away from the example's sessions.
///
/// The example's own tokens carry no `iss`; a token with one comes from the identity
/// provider, whose `sid` (Keycloak puts its own session id there) names a session of the
/// provider, not one of ours. Dropping it here means `/logout` with a provider's token
/// revokes that token only and never ends an example session that happens to share the id.
async fn own_sessions_only(mut req: Request, next: Next) -> Response {
    let foreign = req
        .extensions()
        .get::<Value>()
        .is_some_and(|claims| claims.get("iss").is_some());
    if foreign {
        if let Some(claims) = req.extensions_mut().get_mut::<RegisteredClaims>() {
            claims.sid = None;
        }
    }
    next.run(req).await
}

/// `415` for a body that is not JSON, before the idempotency layer claims a key or reads
/// the body: a refusal of the request's form is not recorded under its key (the corrected
/// retry with the same key runs), and comes before a `413`, as on the routes without a key.
///
/// The test is axum's own (`Json` on the headers alone, with an empty body), so this check
/// and the handler's extractor never disagree.
async fn json_body(req: Request, next: Next) -> Response {
    let mut probe = Request::new(axum::body::Body::empty());
    if let Some(content_type) = req.headers().get(axum::http::header::CONTENT_TYPE) {
        probe
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, content_type.clone());
    }
    match Json::<serde::de::IgnoredAny>::from_request(probe, &()).await {
        Err(e @ JsonRejection::MissingJsonContentType(_)) => rejected(&e),
        _ => next.run(req).await,
    }
}

async fn ready<S: StateStore>(State(app): State<Shared<S>>) -> Response {
    match app.store.get("ready-probe").await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(_) => unavailable(),
    }
}

/// Per-minute rate limits.
#[derive(Clone, Copy)]
struct Limits {
    /// Every authenticated request, per user.
    per_user: u32,
    /// `POST /login`, per username.
    login: u32,
}

/// Every token setting in one place: the JWT layer, the issuer behind `RefreshTokens` and
/// the revoker all follow it.
fn token_policy(keys: JwtKeySet) -> Result<TokenPolicy, String> {
    TokenPolicy::builder(keys)
        .signing_key("main")
        .access_ttl(TOKEN_TTL)
        .leeway(LEEWAY)
        .build()
        .map_err(|e| format!("token policy: {e}"))
}

fn router<S: StateStore>(
    store: S,
    policy: TokenPolicy,
    refresh_secret: &[u8],
    users: HashMap<String, String>,
    gateway_latency: Duration,
    limits: Limits,
) -> Result<Router, String> {
    let mut scopes = serde_json::Map::new();
    scopes.insert("scope".to_owned(), Value::from(OWN_SCOPES));
    let tokens = RefreshTokens::builder(store.clone(), &policy)
        .secret(refresh_secret)
        .access_claims(scopes)
        .build()
        .map_err(|e| format!("refresh tokens: {e}"))?;
    let login_quota =
        Quota::per_minute(limits.login).map_err(|e| format!("LOGIN_LIMIT_PER_MINUTE: {e}"))?;
    let per_user_quota =
        Quota::per_minute(limits.per_user).map_err(|e| format!("RATE_LIMIT_PER_MINUTE: {e}"))?;
    // Plain HTTP in this demo; behind TLS keep `Secure` on (the default).
    let sessions = SessionLayer::new(store.clone()).secure(false);
    // The devices end session data under the layer's own key prefix. The same secret
    // keys the devices' user tags and handles: their HMAC inputs carry their own labels,
    // apart from the refresh tokens'.
    let devices = Devices::new(tokens.clone(), &sessions, refresh_secret)
        .map_err(|e| format!("devices: {e}"))?;
    let app = Arc::new(App {
        tokens,
        devices,
        revoker: Revoker::new(store.clone(), &policy),
        store: store.clone(),
        users,
        gateway_latency,
        login_limiter: RateLimiter::new(store.clone(), login_quota)
            .key_prefix("rl:login:")
            .map_err(|e| format!("login limit: {e}"))?
            .policy_name("login"),
    });
    let per_user = RateLimitLayer::from_limiter(
        RateLimiter::new(store.clone(), per_user_quota)
            .key_prefix("rl:user:")
            .map_err(|e| format!("rate limit: {e}"))?,
    );
    // The lease is renewed while a handler runs; after a crash, a retry waits it out.
    let idempotency = IdempotencyLayer::new(store.clone())
        .lock_ttl(LOCK_TTL + gateway_latency * 2)
        .and_then(|layer| layer.max_request_body(MAX_BODY))
        .map_err(|e| format!("idempotency: {e}"))?;
    let require =
        |scope: &str| RequireScopeLayer::new([scope]).map_err(|e| format!("scope {scope}: {e}"));
    // Idempotency wraps the two `POST` handlers alone, inside the scope check and the
    // content-type check: a `403` for a missing scope, a `415` for a body that is not
    // JSON (or a `405` for a wrong method) is answered before a key is claimed, so a
    // corrected retry with the same key is not replayed that refusal.
    let orders = Router::new()
        .route(
            "/orders",
            post(
                create_order::<S>
                    .layer(idempotency.clone())
                    .layer(middleware::from_fn(json_body))
                    .layer(require("orders:write")?),
            )
            .get(list_orders::<S>),
        )
        .route("/orders/{id}", get(get_order::<S>))
        // Set on each router before its layers, so that the layers still run first (a
        // wrong method on a Bearer route without a token stays `401`).
        .method_not_allowed_fallback(wrong_method);
    let payments = Router::new()
        .route(
            "/payments",
            post(
                create_payment::<S>
                    .layer(idempotency.required(true))
                    .layer(middleware::from_fn(json_body))
                    .layer(require("payments:write")?),
            )
            .get(list_payments::<S>),
        )
        .route("/payments/{id}", get(get_payment::<S>))
        .method_not_allowed_fallback(wrong_method);
    // Idempotency sits inside the auth layers: its records are scoped to the caller.
    let bearer = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout::<S>))
        .route("/logout-all", post(logout_all::<S>))
        .route("/sessions", get(list_sessions::<S>))
        .route("/sessions/others", delete(end_other_sessions::<S>))
        .merge(orders)
        .merge(payments)
        .method_not_allowed_fallback(wrong_method)
        .route_layer(per_user)
        .route_layer(middleware::from_fn(own_sessions_only))
        // Verifies the token, then checks the revocation list, in one layer.
        .route_layer(policy.auth_layer().revocation(store.clone()));
    Ok(Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready::<S>))
        .route("/login", post(login::<S>))
        .route("/token/refresh", post(refresh::<S>))
        .route("/cart", get(cart::<S>))
        .route("/cart/items/{sku}", put(put_item::<S>))
        .merge(bearer)
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(sessions)
        .layer(middleware::from_fn(trace))
        .with_state(app))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}

#[tokio::main]
async fn main() {
    if let Err(e) = observability() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let Config {
        port,
        redis_url,
        cluster_urls,
        limits,
        secret,
        users,
        gateway_latency,
        oidc,
    } = config()?;
    let mut keys = JwtKeySet::new()
        .with_hmac("main", Algorithm::HS256, &secret)
        .map_err(|e| format!("JWT_SECRET: {e}"))?;
    if let Some(oidc) = oidc {
        keys = with_provider(keys, oidc).await?;
    }
    let policy = token_policy(keys)?;
    // The refresh tokens' own secret, derived from JWT_SECRET so that the demo needs one
    // variable; a production service would keep a separate secret.
    let refresh_secret = Sha256::new()
        .chain_update(b"stateless_api refresh-token secret\0")
        .chain_update(&secret)
        .finalize();
    let app = match (cluster_urls, redis_url) {
        (Some(urls), _) => {
            let store = InstrumentedStore::new(cluster_store(urls)?);
            router(
                store,
                policy,
                &refresh_secret,
                users,
                gateway_latency,
                limits,
            )?
        }
        (None, Some(url)) => {
            tracing::info!("store: Redis at {}", without_password(&url));
            let store = InstrumentedStore::new(
                RedisStore::from_url(url).map_err(|e| format!("REDIS_URL: {e}"))?,
            );
            router(
                store,
                policy,
                &refresh_secret,
                users,
                gateway_latency,
                limits,
            )?
        }
        (None, None) => {
            tracing::info!("store: in memory (set REDIS_URL to share state between instances)");
            router(
                InstrumentedStore::new(MemoryStore::new()),
                policy,
                &refresh_secret,
                users,
                gateway_latency,
                limits,
            )?
        }
    };
    let app = app.merge(metrics_routes());
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| format!("bind port {port}: {e}"))?;
    tracing::info!("listening on {port}");
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    });
    // Graceful shutdown waits for every connection; a stuck one must not keep the
    // process alive past the grace period.
    let grace = async {
        if stop.wait_for(|stopping| *stopping).await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server.into_future() => served.map_err(|e| format!("server: {e}"))?,
        () = grace => tracing::warn!(
            "in-flight requests did not finish within {SHUTDOWN_GRACE:?}; exiting anyway"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}
