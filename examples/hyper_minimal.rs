//! tower-stateless on plain hyper 1 and tower, no framework: `JwtAuthLayer` in front of
//! `IdempotencyLayer` in front of one handler that "charges" a payment.
//!
//! Run with:
//!
//! ```sh
//! cargo run --example hyper_minimal                     # prints a token for alice
//! curl -i -X POST localhost:3000/payments -H "authorization: Bearer $TOKEN" \
//!     -H 'idempotency-key: pay-1' -d '{"amount_cents":500}'
//! ```
//!
//! The same request again is answered from the store with `Idempotent-Replayed: true` and
//! the same `payment_id`; without a token it is 401, without `Idempotency-Key` 400.
//! Environment: `PORT` (3000), `JWT_SECRET` (unset: a fixed demo secret), `REDIS_URL`
//! (unset: in-memory store).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tower_stateless::RegisteredClaims;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one handler: a new payment id for every request that gets this far. A retry with
/// the same key never gets here; it is answered from the store.
async fn pay(req: Request<RequestBody<Incoming>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let sub = req
        .extensions()
        .get::<RegisteredClaims>()
        .map(|claims| claims.sub.clone())
        .unwrap_or_default();
    let (status, body) = match req.into_body().collect().await {
        Ok(body) => {
            let mut id = [0u8; 8];
            getrandom::fill(&mut id).unwrap_or_default();
            let request = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            let payment = serde_json::json!({
                "payment_id": format!("pay_{:016x}", u64::from_le_bytes(id)),
                "sub": sub,
                "request": request,
            });
            (StatusCode::CREATED, payment.to_string())
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            r#"{"error":"unreadable body"}"#.into(),
        ),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

async fn serve<S: StateStore>(store: S, policy: TokenPolicy, port: u16) -> Result<(), BoxError> {
    let service = ServiceBuilder::new()
        .layer(policy.auth_layer())
        // Inside the auth layer: keys are scoped to the caller.
        .layer(IdempotencyLayer::new(store).required(true))
        .service_fn(pay);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://127.0.0.1:{port}");
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let port = var("PORT").map_or(Ok(3000), |p| p.parse())?;
    let secret =
        var("JWT_SECRET").unwrap_or_else(|| "hyper-minimal-demo-secret-not-for-production".into());
    let keys = JwtKeySet::new().with_hmac("main", Algorithm::HS256, secret.as_bytes())?;
    let policy = TokenPolicy::builder(keys).signing_key("main").build()?;
    let token = policy.token_issuer()?.issue("alice")?.token;
    println!("TOKEN={token}");
    match var("REDIS_URL") {
        Some(url) => serve(RedisStore::from_url(url)?, policy, port).await,
        None => serve(MemoryStore::new(), policy, port).await,
    }
}
