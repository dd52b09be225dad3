//! Measures how long a revocation takes to reach another instance's `LocalCache`.
//!
//! Two instances on one Redis: A revokes a token with `Revoker::revoke_token`; B checks
//! the token through the JWT layer's revocation check over a warm `LocalCache` (so B answers from memory,
//! and refuses only once Redis's invalidation push has arrived). Each trial measures the
//! time from `revoke_token` returning on A to B's first `401`. Prints p50, p90, p99 and
//! the maximum over the trials.
//!
//! Run with (a Redis 7 on `REDIS_URL`, default `redis://127.0.0.1:6379`; it writes keys
//! under the prefix `cache-latency:`):
//!
//! ```sh
//! cargo run --release --example cache_latency
//! TRIALS=1000 REDIS_URL=redis://127.0.0.1:6380 cargo run --release --example cache_latency
//! ```

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::revocation::Revoker;
use tower_stateless::store::{LocalCache, RedisStore};
use tower_stateless::RegisteredClaims;

type Check = BoxCloneService<Request<()>, StatusCode, Infallible>;

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

/// B: the JWT layer with its revocation check over the cache, for a token with `claims`.
fn check(policy: &TokenPolicy, store: LocalCache, claims: RegisteredClaims) -> Check {
    let bearer = bearer(&claims);
    ServiceBuilder::new()
        .map_response(|response: Response<_>| response.status())
        .map_request(move |mut request: Request<()>| {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer.clone());
            request
        })
        .layer(policy.auth_layer().revocation(store))
        .service_fn(|_request: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
        .boxed_clone()
}

async fn status(check: &Check) -> StatusCode {
    match check.clone().oneshot(Request::new(())).await {
        Ok(status) => status,
        Err(never) => match never {},
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1000);
    let open = || {
        RedisStore::builder()
            .url(url.clone())
            .key_prefix("cache-latency:")
            .build()
    };
    let policy = policy();
    let a = Revoker::new(open()?, &policy);
    let b = LocalCache::builder(open()?).prefix("rev:").build()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.is_serving() {
        if Instant::now() > deadline {
            return Err("the tracking connection did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut times = Vec::with_capacity(trials);
    for i in 0..trials {
        let claims = RegisteredClaims::new(format!("user-{run}-{i}"), now + 900)
            .with_jti("t")
            .with_iat(now);
        let on_b = check(&policy, b.clone(), claims.clone());
        // Warm B: the first check reads Redis and caches "not revoked".
        for _ in 0..2 {
            if status(&on_b).await != StatusCode::OK {
                return Err("B refused a token before it was revoked".into());
            }
        }
        a.revoke_token(&claims).await?;
        let revoked = Instant::now();
        loop {
            if status(&on_b).await == StatusCode::UNAUTHORIZED {
                times.push(revoked.elapsed());
                break;
            }
            if revoked.elapsed() > Duration::from_secs(10) {
                return Err(format!("trial {i}: B never refused the revoked token").into());
            }
            tokio::task::yield_now().await;
        }
    }
    times.sort();
    println!(
        "revocation visible on B after revoke_token returned on A ({} trials): p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        times.len(),
        percentile(&times, 0.50),
        percentile(&times, 0.90),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default(),
    );
    Ok(())
}
