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
//! axum,oidc`), `OIDC_AUDIENCE` (the `aud` the provider's tokens must name; unset: tokens
//! carrying `aud` are refused), `OIDC_ALLOW_HTTP` (`true` only for a local provider on
//! plain http).
//!
//! Scopes: `POST /orders` needs `orders:write` and `POST /payments` `payments:write`. The
//! example's own access tokens (from `/login` and `/token/refresh`) carry both; a
//! provider's token without the scope gets `403 insufficient_scope`.
//!
//! Routes: `POST /login`, `POST /token/refresh`, `GET /me`, `GET /cart`, `PUT /cart/items/{sku}`, `POST /orders`,
//! `GET /orders`, `GET /orders/{id}`, `POST /payments`, `GET /payments`, `POST /logout`,
//! `POST /logout-all`, `GET /sessions`, `DELETE /sessions/others`, `GET /health`, `GET /ready`. `POST /orders` (`Idempotency-Key`
//! optional) and `POST /payments` (required) go through `IdempotencyLayer`: a retry with
//! the same key gets the first answer again, with `Idempotent-Replayed: true`.
//!
//! SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (at most
//! 10 s), exit 0.
//!
//! Operating it: `GET /metrics` serves every metric of tower-stateless in the Prometheus text
//! format (unauthenticated, like `/health` and `/ready`: keep it off the public ingress), and
//! `LOG_FORMAT=json` turns the log into one JSON object per line.

use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
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

/// Access tokens are short-lived; clients renew them with their refresh token.
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const LEEWAY: Duration = Duration::from_secs(30);
/// How long orders and payments live in the store (every store write has a TTL).
const RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Attempts at appending to a per-user index before giving up with a 503.
const INDEX_ATTEMPTS: u32 = 64;
/// The idempotency lease, on top of twice the gateway latency.
const LOCK_TTL: Duration = Duration::from_secs(5);
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

/// The example's own errors in the crate's JSON error body (`{"error", "message"}`).
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// `503 store_unavailable` with `Retry-After`, as the layers answer.
fn unavailable() -> Response {
    let mut res = error(
        StatusCode::SERVICE_UNAVAILABLE,
        rejection::STORE_UNAVAILABLE,
        "the state store is unavailable; retry later",
    );
    res.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    res
}

/// An error of the crate answered as the crate's JSON error response (its `status()`,
/// `error_code()`, `Retry-After` on a `503`); what is not the client's fault is logged.
fn failed<E: IntoResponse + std::error::Error>(e: E) -> Response {
    let message = e.to_string();
    let res = e.into_response();
    if res.status().is_server_error() && res.status() != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(error = %message, "request failed");
    }
    res
}

/// A body axum could not take as JSON, as a JSON error: 400 malformed, 415 not JSON, 422
/// wrong shape.
fn rejected(e: &JsonRejection) -> Response {
    error(e.status(), rejection::INVALID_BODY, &e.body_text())
}

fn invalid(message: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn login<S: StateStore>(
    State(app): State<Shared<S>>,
    session: Session,
    json: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    let creds = match json {
        Ok(Json(creds)) => creds,
        Err(e) => return rejected(&e),
    };
    // Counted before the password is checked: guesses spend the quota too.
    match app.login_limiter.check(&creds.username).await {
        Ok(decision) if !decision.allowed() => {
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                rejection::RATE_LIMITED,
                "too many login attempts for this user; retry after the time in Retry-After",
            );
            res.headers_mut().extend(decision.headers());
            return res;
        }
        Ok(_) => {}
        // Fail open, as the layer does: a limiter must not lock every user out.
        Err(e) => tracing::warn!(error = %e, "login rate limit unavailable; attempt let through"),
    }
    if app.users.get(&creds.username) != Some(&creds.password) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        );
    }
    // A new session id at login, against session fixation.
    let sid = format!("{:x}", rand_u128());
    let bound = async {
        session.cycle_id().await?;
        session.insert("user", &creds.username).await?;
        session.insert("sid", &sid).await
    };
    if let Err(e) = bound.await {
        return failed(e);
    }
    let pair = match app.tokens.issue_for_session(&creds.username, &sid).await {
        Ok(pair) => pair,
        Err(e) => return failed(e),
    };
    // Listed under `GET /sessions`, ended by `DELETE /sessions/others`.
    if let Err(e) = app.devices.bind(&creds.username, &sid, None).await {
        return failed(e);
    }
    Json(pair.to_response()).into_response()
}

/// `GET /sessions`: the caller's live logins, `current` marking the caller's own.
async fn list_sessions<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    match app.devices.list(&claims.sub, claims.sid.as_deref()).await {
        Ok(devices) => {
            let sessions: Vec<Value> = devices
                .iter()
                .map(|d| {
                    json!({"id": d.id, "created": d.created, "last_seen": d.last_seen, "current": d.current})
                })
                .collect();
            Json(json!({ "sessions": sessions })).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `DELETE /sessions/others`: ends every other login of the caller (its access and refresh
/// tokens, its session and cart); the caller's own login keeps working.
async fn end_other_sessions<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    let Some(sid) = claims.sid.as_deref() else {
        return error(
            StatusCode::BAD_REQUEST,
            "no_session",
            "the access token names no login (no `sid` claim)",
        );
    };
    match app.devices.end_others(&claims.sub, sid).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

/// `POST /token/refresh`: a new access token and a new refresh token of the same family;
/// the one presented is used up. Presenting a used one again ends the family and its
/// session (a stolen token was replayed, RFC 9700).
async fn refresh<S: StateStore>(
    State(app): State<Shared<S>>,
    json: Result<Json<RefreshRequest>, JsonRejection>,
) -> Response {
    let request = match json {
        Ok(Json(request)) => request,
        Err(e) => return rejected(&e),
    };
    match app.tokens.rotate(&request.refresh_token).await {
        Ok(pair) => {
            // "Last seen" of the login (written at most once a minute); a failure here
            // does not fail the refresh.
            let claims = &pair.access_token.claims;
            if let Some(sid) = &claims.sid {
                if let Err(e) = app.devices.touch(&claims.sub, sid).await {
                    tracing::warn!(error = %e, "could not record the login as seen");
                }
            }
            Json(pair.to_response()).into_response()
        }
        Err(e) => failed(e),
    }
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_default();
    u128::from_le_bytes(bytes)
}

fn rand_u64() -> u64 {
    // Truncation intended: any 64 of the 128 random bits.
    rand_u128() as u64
}

async fn me(Claims(claims): Claims<RegisteredClaims>) -> Json<serde_json::Value> {
    Json(json!({"sub": claims.sub, "jti": claims.jti, "sid": claims.sid, "exp": claims.exp}))
}

/// The cart is one session key per SKU (`cart:<sku>` → quantity), so concurrent changes of
/// different items, on any instance, never overwrite each other.
const CART: &str = "cart:";

/// The cart as this request sees it: the `cart:` keys, read from the session loaded once.
async fn cart_items(session: &Session) -> Result<BTreeMap<String, u32>, SessionError> {
    let mut items = BTreeMap::new();
    for key in session.keys_with_prefix(CART).await? {
        if let Some(qty) = session.get::<u32>(&key).await? {
            items.insert(key[CART.len()..].to_owned(), qty);
        }
    }
    Ok(items)
}

/// A cart of a login that was ended (`DELETE /sessions/others` from another device) is
/// gone: the cookie session of an ended login is destroyed on its next use. One read of
/// the user's login index for a logged-in cart.
async fn drop_ended_login<S: StateStore>(app: &App<S>, session: &Session) -> Result<(), Response> {
    let user = session.get::<String>("user").await;
    let sid = session.get::<String>("sid").await;
    let (user, sid) = match (user, sid) {
        (Ok(Some(user)), Ok(Some(sid))) => (user, sid),
        (Err(e), _) | (_, Err(e)) => return Err(failed(e)),
        _ => return Ok(()),
    };
    match app.devices.is_live(&user, &sid).await {
        Ok(true) => Ok(()),
        Ok(false) => session.destroy().await.map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

async fn cart<S: StateStore>(State(app): State<Shared<S>>, session: Session) -> Response {
    if let Err(res) = drop_ended_login(&app, &session).await {
        return res;
    }
    match cart_items(&session).await {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct Quantity {
    qty: u32,
}

async fn put_item<S: StateStore>(
    State(app): State<Shared<S>>,
    session: Session,
    Path(sku): Path<String>,
    json: Result<Json<Quantity>, JsonRejection>,
) -> Response {
    let q = match json {
        Ok(Json(q)) => q,
        Err(e) => return rejected(&e),
    };
    if let Err(res) = drop_ended_login(&app, &session).await {
        return res;
    }
    let key = format!("{CART}{sku}");
    let changed = if q.qty == 0 {
        session.remove(&key).await
    } else {
        session.insert(&key, q.qty).await
    };
    if let Err(e) = changed {
        return failed(e);
    }
    match cart_items(&session).await {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => failed(e),
    }
}

// Orders and payments live only in the store: one key per record and, per user, an index
// (a JSON list of ids) appended to by compare-and-set. Both carry the user in a hash tag,
// so listing is one `GET` of the index plus one `MGET` of the records, also on a cluster.

/// What can go wrong while storing or reading records.
enum RecordError {
    Store(StoreError),
    /// A stored value that is not what this example writes.
    Corrupt(serde_json::Error),
    /// Too many concurrent appends to one index; the client may retry.
    Contended,
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl IntoResponse for RecordError {
    fn into_response(self) -> Response {
        match self {
            Self::Store(e) => failed(e),
            Self::Corrupt(e) => {
                tracing::error!(error = %e, "corrupt record in the store");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    rejection::INTERNAL_ERROR,
                    "internal server error",
                )
            }
            Self::Contended => unavailable(),
        }
    }
}

fn record_key(collection: &str, sub: &str, id: &str) -> String {
    format!("{collection}:{{{sub}}}:{id}")
}

fn index_key(collection: &str, sub: &str) -> String {
    format!("{collection}:{{{sub}}}:index")
}

/// Stores `record` under `id` unless a record with that id exists, then makes sure `id` is
/// in the caller's index. Returns the stored record: on a retry, the first one.
///
/// Safe to run again with the same id after any failure or crash part way through, which
/// is what makes an id derived from the idempotency key exactly-once: a retry that runs
/// the handler again (the first attempt died after storing, before the idempotency layer
/// recorded the response) finds the record instead of making a second one.
async fn create<S: StateStore>(
    store: &S,
    collection: &str,
    sub: &str,
    id: &str,
    record: &Value,
) -> Result<Value, RecordError> {
    let bytes = Bytes::from(serde_json::to_vec(record).map_err(RecordError::Corrupt)?);
    let stored = match store
        .set_if_absent(&record_key(collection, sub, id), bytes, RECORD_TTL)
        .await?
    {
        None => record.clone(),
        Some(existing) => serde_json::from_slice(&existing).map_err(RecordError::Corrupt)?,
    };
    append_to_index(store, &index_key(collection, sub), id).await?;
    Ok(stored)
}

async fn append_to_index<S: StateStore>(
    store: &S,
    index: &str,
    id: &str,
) -> Result<(), RecordError> {
    for attempt in 0..INDEX_ATTEMPTS {
        let current = store.get(index).await?;
        let mut ids: Vec<String> = match &current {
            Some(bytes) => serde_json::from_slice(bytes).map_err(RecordError::Corrupt)?,
            None => Vec::new(),
        };
        if ids.iter().any(|known| known == id) {
            return Ok(());
        }
        ids.push(id.to_owned());
        let new = Bytes::from(serde_json::to_vec(&ids).map_err(RecordError::Corrupt)?);
        let written = match &current {
            Some(old) => store.compare_and_set(index, old, new, RECORD_TTL).await?,
            None => store.set_if_absent(index, new, RECORD_TTL).await?.is_none(),
        };
        if written {
            return Ok(());
        }
        // Another request appended first: back off a little, with jitter, and retry.
        let ceiling = 1u64 << attempt.min(5);
        tokio::time::sleep(Duration::from_millis(1 + rand_u64() % ceiling)).await;
    }
    Err(RecordError::Contended)
}

/// The caller's records, oldest first.
async fn list<S: StateStore>(
    store: &S,
    collection: &str,
    sub: &str,
) -> Result<Vec<Value>, RecordError> {
    let Some(index) = store.get(&index_key(collection, sub)).await? else {
        return Ok(Vec::new());
    };
    let ids: Vec<String> = serde_json::from_slice(&index).map_err(RecordError::Corrupt)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids
        .iter()
        .map(|id| record_key(collection, sub, id))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    store
        .get_many(&keys)
        .await?
        .into_iter()
        .flatten()
        .map(|bytes| serde_json::from_slice(&bytes).map_err(RecordError::Corrupt))
        .collect()
}

async fn fetch<S: StateStore>(
    store: &S,
    collection: &str,
    sub: &str,
    id: &str,
) -> Result<Option<Value>, RecordError> {
    match store.get(&record_key(collection, sub, id)).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(RecordError::Corrupt),
        None => Ok(None),
    }
}

/// A new record id: derived from the caller and the idempotency key when there is one (so
/// a retry finds the record it made before), random otherwise.
///
/// `IdempotencyLayer` already runs a request once and replays its answer; this covers the
/// one gap no layer can: an instance killed after the handler stored the record but before
/// the layer recorded the response. The retry then runs the handler again, once the lease
/// has expired, and must not pay twice.
fn record_id(prefix: &str, sub: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(sub.as_bytes())
                .chain_update([0])
                .chain_update(key.as_bytes())
                .finalize();
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("{prefix}_{hex}")
        }
        None => format!("{prefix}_{:024x}", rand_u128() >> 32),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn created(location: String, record: Value) -> Response {
    let mut res = (StatusCode::CREATED, Json(record)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        res.headers_mut().insert("location", value);
    }
    res
}

#[derive(Deserialize)]
struct NewOrder {
    sku: String,
    qty: i64,
}

fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn create_order<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    headers: HeaderMap,
    json: Result<Json<NewOrder>, JsonRejection>,
) -> Response {
    let order = match json {
        Ok(Json(order)) => order,
        Err(e) => return rejected(&e),
    };
    if !valid_sku(&order.sku) {
        return invalid("sku must be 1 to 64 letters, digits, '-' or '_'");
    }
    if !(1..=1000).contains(&order.qty) {
        return invalid("qty must be between 1 and 1000");
    }
    let id = record_id("ord", &claims.sub, idempotency_key(&headers));
    let record = json!({
        "order_id": id,
        "sku": order.sku,
        "qty": order.qty,
        "status": "placed",
        "created_at": now_secs(),
    });
    match create(&app.store, "orders", &claims.sub, &id, &record).await {
        Ok(stored) => created(format!("/orders/{id}"), stored),
        Err(e) => e.into_response(),
    }
}

async fn list_orders<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    match list(&app.store, "orders", &claims.sub).await {
        Ok(orders) => Json(json!({ "orders": orders })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_order<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    Path(id): Path<String>,
) -> Response {
    // Records are keyed by their owner, so another user's id is simply not found.
    match fetch(&app.store, "orders", &claims.sub, &id).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such order"),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct NewPayment {
    amount_cents: i64,
    currency: String,
}

async fn create_payment<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    headers: HeaderMap,
    json: Result<Json<NewPayment>, JsonRejection>,
) -> Response {
    // `IdempotencyLayer::required` answers 400 before this; the key is needed here too.
    let Some(key) = idempotency_key(&headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            rejection::IDEMPOTENCY_KEY_REQUIRED,
            "payments need an Idempotency-Key header",
        );
    };
    let payment = match json {
        Ok(Json(payment)) => payment,
        Err(e) => return rejected(&e),
    };
    if !(1..=100_000_000).contains(&payment.amount_cents) {
        return invalid("amount_cents must be between 1 and 100000000");
    }
    if payment.currency.len() != 3 || !payment.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return invalid("currency must be a three-letter ISO 4217 code, like EUR");
    }
    let id = record_id("pay", &claims.sub, Some(key));
    // A payment stored by an earlier attempt with this key is not charged again.
    match fetch(&app.store, "payments", &claims.sub, &id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::debug!(payment_id = %id, "calling the payment gateway");
            tokio::time::sleep(app.gateway_latency).await;
        }
        Err(e) => return e.into_response(),
    }
    let record = json!({
        "payment_id": id,
        "amount_cents": payment.amount_cents,
        "currency": payment.currency,
        "status": "captured",
        "created_at": now_secs(),
    });
    match create(&app.store, "payments", &claims.sub, &id, &record).await {
        Ok(stored) => created(format!("/payments/{id}"), stored),
        Err(e) => e.into_response(),
    }
}

async fn list_payments<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    match list(&app.store, "payments", &claims.sub).await {
        Ok(payments) => Json(json!({ "payments": payments })).into_response(),
        Err(e) => e.into_response(),
    }
}

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

async fn logout<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    session: Session,
) -> Response {
    if let Err(e) = app.revoker.revoke_token(&claims).await {
        return failed(e);
    }
    // The session's refresh tokens and every access token of the session; then no longer
    // listed under `GET /sessions`.
    if let Some(sid) = &claims.sid {
        if let Err(e) = app.tokens.logout(&claims.sub, sid).await {
            return failed(e);
        }
        if let Err(e) = app.devices.end(&claims.sub, &app.devices.handle(sid)).await {
            return failed(e);
        }
    }
    match session.destroy().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

async fn logout_all<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    // Every refresh family of the user, and every access token issued until now.
    if let Err(e) = app.tokens.logout_everywhere(&claims.sub).await {
        return failed(e);
    }
    // Unlists every login and deletes their sessions.
    match app.devices.end_all(&claims.sub).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
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
    // The same secret keys the devices' user tags and handles: their HMAC inputs carry
    // their own labels, apart from the refresh tokens'.
    let devices =
        Devices::new(tokens.clone(), refresh_secret).map_err(|e| format!("devices: {e}"))?;
    let app = Arc::new(App {
        tokens,
        devices,
        revoker: Revoker::new(store.clone(), &policy),
        store: store.clone(),
        users,
        gateway_latency,
        login_limiter: RateLimiter::new(store.clone(), login_quota)
            .key_prefix("rl:login:")
            .policy_name("login"),
    });
    let per_user = RateLimitLayer::from_limiter(
        RateLimiter::new(store.clone(), per_user_quota).key_prefix("rl:user:"),
    );
    // The lease is renewed while a handler runs; after a crash, a retry waits it out.
    let idempotency = IdempotencyLayer::new(store.clone())
        .lock_ttl(LOCK_TTL + gateway_latency * 2)
        .map_err(|e| format!("idempotency: {e}"))?;
    let require =
        |scope: &str| RequireScopeLayer::new([scope]).map_err(|e| format!("scope {scope}: {e}"));
    let orders = Router::new()
        .route(
            "/orders",
            post(create_order::<S>.layer(require("orders:write")?)).get(list_orders::<S>),
        )
        .route("/orders/{id}", get(get_order::<S>))
        .route_layer(idempotency.clone());
    let payments = Router::new()
        .route(
            "/payments",
            post(create_payment::<S>.layer(require("payments:write")?)).get(list_payments::<S>),
        )
        .route_layer(idempotency.required(true));
    // Idempotency sits inside the auth layers: its records are scoped to the caller.
    let bearer = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout::<S>))
        .route("/logout-all", post(logout_all::<S>))
        .route("/sessions", get(list_sessions::<S>))
        .route("/sessions/others", delete(end_other_sessions::<S>))
        .merge(orders)
        .merge(payments)
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
        // Plain HTTP in this demo; behind TLS keep `Secure` on (the default).
        .layer(SessionLayer::new(store).secure(false))
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

/// Port, store, JWT secret, demo users, gateway latency and limits, from the environment.
struct Config {
    port: u16,
    redis_url: Option<String>,
    cluster_urls: Option<Vec<String>>,
    limits: Limits,
    secret: Vec<u8>,
    users: HashMap<String, String>,
    gateway_latency: Duration,
    oidc: Option<Oidc>,
}

/// An identity provider whose tokens are accepted next to the example's own.
#[cfg_attr(not(feature = "oidc"), allow(dead_code))]
struct Oidc {
    issuer: String,
    audience: Option<String>,
    allow_http: bool,
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
            tracing::warn!("!!! JWT_SECRET is not set: using a RANDOM per-process secret. Tokens die with this process and other instances will NOT accept them. Set the same JWT_SECRET (32+ bytes) on every instance. !!!");
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
    let gateway_latency = var("GATEWAY_LATENCY_MS").map_or(Ok(0), |ms| {
        ms.parse()
            .map_err(|_| format!("GATEWAY_LATENCY_MS must be milliseconds, got {ms:?}"))
    })?;
    let per_minute = |name: &str, default: u32| {
        var(name).map_or(Ok(default), |n| match n.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name} must be a positive number, got {n:?}")),
        })
    };
    let limits = Limits {
        per_user: per_minute("RATE_LIMIT_PER_MINUTE", 600)?,
        login: per_minute("LOGIN_LIMIT_PER_MINUTE", 10)?,
    };
    let cluster_urls = var("REDIS_CLUSTER_URLS").map(|urls| {
        urls.split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    });
    let allow_http = match var("OIDC_ALLOW_HTTP").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(format!(
                "OIDC_ALLOW_HTTP must be true or false, got {other:?}"
            ))
        }
    };
    let oidc = var("OIDC_ISSUER").map(|issuer| Oidc {
        issuer,
        audience: var("OIDC_AUDIENCE"),
        allow_http,
    });
    Ok(Config {
        port,
        oidc,
        limits,
        cluster_urls,
        redis_url: var("REDIS_URL"),
        secret,
        users,
        gateway_latency: Duration::from_millis(gateway_latency),
    })
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

/// Logs (`LOG_FORMAT`: text lines, or JSON lines for a log collector) and the Prometheus
/// recorder behind `GET /metrics`.
fn observability() -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var("LOG_FORMAT")
        .ok()
        .filter(|v| !v.is_empty())
        .as_deref()
    {
        None | Some("text") => logs.init(),
        Some("json") => logs.json().init(),
        Some(other) => return Err(format!("LOG_FORMAT must be text or json, got {other:?}")),
    }
    // Store latencies as a Prometheus histogram (buckets in seconds), not a summary.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tower_stateless_store_duration_seconds".to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("metrics recorder: {e}"))?;
    // Histogram samples are folded into the buckets by the upkeep; run it now and then.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    METRICS
        .set(handle)
        .map_err(|_| "metrics recorder installed twice".to_owned())
}

/// The recorder `GET /metrics` renders.
static METRICS: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// `GET /metrics`, in the Prometheus text format. Unauthenticated, like the probes: keep it
/// off the public ingress (README, "Metrics and logs").
fn metrics_routes() -> Router {
    async fn render() -> Response {
        match METRICS.get() {
            Some(handle) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
                .into_response(),
            None => error(StatusCode::NOT_FOUND, "not_found", "no metrics recorder"),
        }
    }
    Router::new().route("/metrics", get(render))
}

/// `keys` plus the provider's: discovery, then its JWKS, refreshed in the background.
/// Start-up fails (with the reason) when the provider gives no keys within 10 s.
#[cfg(feature = "oidc")]
async fn with_provider(keys: JwtKeySet, oidc: Oidc) -> Result<JwtKeySet, String> {
    let remote = tower_stateless::oidc::RemoteJwks::discover(&oidc.issuer)
        .allow_http(oidc.allow_http)
        .build()
        .await
        .map_err(|e| format!("OIDC_ISSUER {}: {e}", oidc.issuer))?;
    tracing::info!(
        issuer = %oidc.issuer,
        audience = ?oidc.audience,
        "accepting tokens of the identity provider too"
    );
    keys.with_issuer(oidc.issuer, oidc.audience, remote.key_set())
        .map_err(|e| format!("OIDC_ISSUER: {e}"))
}

#[cfg(not(feature = "oidc"))]
async fn with_provider(_: JwtKeySet, _: Oidc) -> Result<JwtKeySet, String> {
    Err("OIDC_ISSUER needs the oidc feature: \
         cargo run --example stateless_api --features axum,metrics,oidc"
        .to_owned())
}

/// A store on a Redis Cluster, from its seed node URLs.
#[cfg(feature = "redis-cluster")]
fn cluster_store(urls: Vec<String>) -> Result<RedisStore, String> {
    let shown: Vec<String> = urls.iter().map(|u| without_password(u)).collect();
    tracing::info!("store: Redis Cluster via {}", shown.join(", "));
    RedisStore::builder()
        .cluster_urls(urls)
        .build()
        .map_err(|e| format!("REDIS_CLUSTER_URLS: {e}"))
}

#[cfg(not(feature = "redis-cluster"))]
fn cluster_store(_: Vec<String>) -> Result<RedisStore, String> {
    Err("REDIS_CLUSTER_URLS needs the redis-cluster feature: \
         cargo run --example stateless_api --features axum,metrics,redis-cluster"
        .to_owned())
}

/// The URL with any password replaced, for the log.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}
