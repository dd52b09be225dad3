//! A stateless API with tower-stateless: login, profile, a session cart and logout,
//! runnable as several identical instances sharing one Redis.
//!
//! Run with:
//!
//! ```sh
//! cargo run --example stateless_api --features axum                  # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=change-me-to-32-bytes-or-more-please \
//!     PORT=3001 cargo run --example stateless_api --features axum    # shared state
//! ```
//!
//! Environment: `PORT` (3000), `REDIS_URL` (unset: in-memory store), `JWT_SECRET` (HS256,
//! at least 32 bytes; unset: a random per-process secret, so instances cannot share
//! tokens), `DEMO_USERS` (`alice:wonderland,bob:builder`).
//!
//! Routes: `POST /login`, `GET /me`, `GET /cart`, `PUT /cart/items/{sku}`, `POST /logout`,
//! `POST /logout-all`, `GET /health`, `GET /ready`. (Orders and payments with the
//! idempotency layer come with the idempotency issue.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_stateless::jwt::{Algorithm, JwtAuthLayer, JwtKeySet, TokenIssuer};
use tower_stateless::revocation::{RevocationLayer, Revoker};
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tower_stateless::RegisteredClaims;

const TOKEN_TTL: Duration = Duration::from_secs(3600);
const LEEWAY: Duration = Duration::from_secs(30);

struct App<S> {
    issuer: TokenIssuer,
    revoker: Revoker<S>,
    store: S,
    users: HashMap<String, String>,
}

type Shared<S> = Arc<App<S>>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

fn unavailable() -> Response {
    let mut res = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the state store is unavailable; retry later",
    );
    res.headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    res
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn login<S: StateStore>(
    State(app): State<Shared<S>>,
    Extension(session): Extension<Session>,
    Json(creds): Json<Credentials>,
) -> Response {
    if app.users.get(&creds.username) != Some(&creds.password) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        );
    }
    // A new session id at login, against session fixation.
    if session.cycle_id().await.is_err() || session.insert("user", &creds.username).await.is_err() {
        return unavailable();
    }
    let sid = format!("{:x}", rand_u128());
    if session.insert("sid", &sid).await.is_err() {
        return unavailable();
    }
    match app.issuer.issue_with(&creds.username, Some(&sid), &()) {
        Ok(issued) => Json(json!({
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL.as_secs(),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "issuing a token failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_default();
    u128::from_le_bytes(bytes)
}

async fn me(Extension(claims): Extension<RegisteredClaims>) -> Json<serde_json::Value> {
    Json(json!({"sub": claims.sub, "jti": claims.jti, "sid": claims.sid, "exp": claims.exp}))
}

async fn cart(Extension(session): Extension<Session>) -> Response {
    match session.get::<BTreeMap<String, u32>>("cart").await {
        Ok(items) => Json(json!({"items": items.unwrap_or_default()})).into_response(),
        Err(_) => unavailable(),
    }
}

#[derive(Deserialize)]
struct Quantity {
    qty: u32,
}

async fn put_item(
    Extension(session): Extension<Session>,
    Path(sku): Path<String>,
    Json(q): Json<Quantity>,
) -> Response {
    let Ok(current) = session.get::<BTreeMap<String, u32>>("cart").await else {
        return unavailable();
    };
    let mut items = current.unwrap_or_default();
    if q.qty == 0 {
        items.remove(&sku);
    } else {
        items.insert(sku, q.qty);
    }
    match session.insert("cart", &items).await {
        Ok(()) => Json(json!({"items": items})).into_response(),
        Err(_) => unavailable(),
    }
}

async fn logout<S: StateStore>(
    State(app): State<Shared<S>>,
    Extension(claims): Extension<RegisteredClaims>,
    Extension(session): Extension<Session>,
) -> Response {
    let token = app.revoker.revoke_token(&claims).await;
    let sid = match &claims.sid {
        Some(sid) => {
            app.revoker
                .revoke_session(&claims.sub, sid, TOKEN_TTL + LEEWAY)
                .await
        }
        None => Ok(()),
    };
    if token.is_err() || sid.is_err() || session.destroy().await.is_err() {
        return unavailable();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn logout_all<S: StateStore>(
    State(app): State<Shared<S>>,
    Extension(claims): Extension<RegisteredClaims>,
) -> Response {
    match app.revoker.revoke_subject(&claims.sub).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => unavailable(),
    }
}

async fn ready<S: StateStore>(State(app): State<Shared<S>>) -> StatusCode {
    match app.store.get("ready-probe").await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn router<S: StateStore>(
    store: S,
    keys: JwtKeySet,
    users: HashMap<String, String>,
) -> Result<Router, String> {
    let issuer = TokenIssuer::new(&keys, "main")
        .map_err(|e| format!("token issuer: {e}"))?
        .ttl(TOKEN_TTL);
    let app = Arc::new(App {
        issuer,
        revoker: Revoker::new(store.clone(), TOKEN_TTL).leeway(LEEWAY),
        store: store.clone(),
        users,
    });
    let bearer = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout::<S>))
        .route("/logout-all", post(logout_all::<S>))
        .route_layer(RevocationLayer::new(store.clone()))
        .route_layer(JwtAuthLayer::<serde_json::Value>::new(keys).leeway(LEEWAY));
    Ok(Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/ready", get(ready::<S>))
        .route("/login", post(login::<S>))
        .route("/cart", get(cart))
        .route("/cart/items/{sku}", put(put_item))
        .merge(bearer)
        // Plain HTTP in this demo; behind TLS keep `Secure` on (the default).
        .layer(SessionLayer::new(store).secure(false))
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

/// Port, Redis URL, JWT secret and demo users, from the environment.
struct Config {
    port: u16,
    redis_url: Option<String>,
    secret: Vec<u8>,
    users: HashMap<String, String>,
}

fn config() -> Result<Config, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let port = var("PORT").map_or(Ok(3000), |p| {
        p.parse()
            .map_err(|_| format!("PORT must be a port number, got {p:?}"))
    })?;
    let secret = match var("JWT_SECRET") {
        Some(s) => s.into_bytes(),
        None => {
            tracing::warn!("JWT_SECRET is not set: using a random per-process secret; other instances will NOT accept this instance's tokens");
            let mut bytes = vec![0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
            bytes
        }
    };
    let mut users = HashMap::new();
    for pair in var("DEMO_USERS")
        .unwrap_or_else(|| "alice:wonderland,bob:builder".into())
        .split(',')
    {
        let (u, p) = pair
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("DEMO_USERS entries are user:password, got {pair:?}"))?;
        users.insert(u.to_owned(), p.to_owned());
    }
    Ok(Config {
        port,
        redis_url: var("REDIS_URL"),
        secret,
        users,
    })
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let Config {
        port,
        redis_url,
        secret,
        users,
    } = config()?;
    let keys = JwtKeySet::new()
        .with_hmac("main", Algorithm::HS256, &secret)
        .map_err(|e| format!("JWT_SECRET: {e}"))?;
    let app = match redis_url {
        Some(url) => {
            tracing::info!("store: Redis");
            let store = RedisStore::from_url(url).map_err(|e| format!("REDIS_URL: {e}"))?;
            router(store, keys, users)?
        }
        None => {
            tracing::info!("store: in memory (set REDIS_URL to share state between instances)");
            router(MemoryStore::new(), keys, users)?
        }
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| format!("bind port {port}: {e}"))?;
    tracing::info!("listening on {port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"))
}
