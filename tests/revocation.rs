//! The JWT layer's revocation check and the Revoker, black-box, on both backends. Test
//! names carry the backend: `memory::revoke_jti_denies_only_that_token`, `redis::...`.
//!
//! Claims are signed into real tokens (the check only runs behind verification), under
//! one `TokenPolicy` shared by the layer and the revoker.
//!
//! Every shared test gets two store handles: it revokes through one and checks through
//! the other, as two instances of a service sharing one store would (two separate
//! connection pools on Redis).
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::Value;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, JwtAuthLayer, JwtKeySet, TokenPolicy};
use tower_stateless::response::ErrorBody;
use tower_stateless::revocation::{RevocationCheck, RevokeError, Revoker};
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tower_stateless::{RegisteredClaims, StoreFailure};

const HOUR: Duration = Duration::from_secs(3600);
const SECRET: &[u8] = b"revocation-tests-secret-of-32-bytes-or-more";

/// The policy of the layer and the revoker: access tokens of an hour, leeway `leeway`.
fn policy_with(access_ttl: Duration, leeway: Duration) -> TokenPolicy {
    let keys = JwtKeySet::new()
        .with_hmac("k", Algorithm::HS256, SECRET)
        .expect("key");
    TokenPolicy::builder(keys)
        .signing_key("k")
        .access_ttl(access_ttl)
        .leeway(leeway)
        .build()
        .expect("policy")
}

/// Access tokens of an hour, the default 30 s leeway.
fn policy() -> TokenPolicy {
    policy_with(HOUR, Duration::from_secs(30))
}

type Layer<St> = JwtAuthLayer<Value, RevocationCheck<St>>;

/// The JWT layer with its revocation check over a store.
fn layer<St: StateStore>(check: impl Into<RevocationCheck<St>>) -> Layer<St> {
    policy().auth_layer().revocation(check)
}

fn revoker<St: StateStore>(store: St) -> Revoker<St> {
    Revoker::new(store, &policy())
}

/// `claims` as a token the layer verifies.
fn sign(claims: &RegisteredClaims) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k".to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(SECRET)).expect("sign")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A fresh token of `sub` with `jti`, issued now, valid for ten minutes.
fn token(sub: &str, jti: &str) -> RegisteredClaims {
    let now = now();
    RegisteredClaims::new(sub, now + 600)
        .with_jti(jti)
        .with_iat(now)
}

struct Answer {
    status: StatusCode,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    error: Option<ErrorBody>,
}

/// Sends one request with `claims` signed as a bearer token through `layer` in front of a
/// handler that answers 200, and counts handler calls.
async fn send_counted<St: StateStore>(
    layer: &Layer<St>,
    claims: &RegisteredClaims,
    calls: &Arc<AtomicUsize>,
) -> Answer {
    let calls = calls.clone();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        }));
    let request = Request::get("/")
        .header(header::AUTHORIZATION, format!("Bearer {}", sign(claims)))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = service.oneshot(request).await.expect("infallible");
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &http::HeaderValue| v.to_str().expect("ascii header").to_owned())
    };
    let www_authenticate = header(header::WWW_AUTHENTICATE);
    let retry_after = header(header::RETRY_AFTER);
    let status = response.status();
    let is_json = header(header::CONTENT_TYPE).as_deref() == Some("application/json");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let error = is_json.then(|| serde_json::from_slice(&body).expect("JSON error body"));
    Answer {
        status,
        www_authenticate,
        retry_after,
        error,
    }
}

async fn send<St: StateStore>(layer: &Layer<St>, claims: &RegisteredClaims) -> Answer {
    send_counted(layer, claims, &Arc::new(AtomicUsize::new(0))).await
}

async fn status<St: StateStore>(layer: &Layer<St>, claims: &RegisteredClaims) -> StatusCode {
    send(layer, claims).await.status
}

fn assert_revoked(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.www_authenticate.as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="token revoked""#)
    );
    assert_eq!(
        answer.error.as_ref().map(|e| e.error.as_str()),
        Some("invalid_token")
    );
}

// ---------------------------------------------------------------------------------------
// Behaviour shared by both backends.

async fn revoke_jti_denies_only_that_token<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let revoker = revoker(other);
    let first = token("alice", "t1");
    let second = token("alice", "t2");
    let bobs = token("bob", "t1");
    assert_eq!(status(&layer, &first).await, StatusCode::OK);

    revoker.revoke_token(&first).await.expect("revoke");

    assert_revoked(&send(&layer, &first).await);
    assert_eq!(status(&layer, &second).await, StatusCode::OK);
    // A jti is scoped to its subject.
    assert_eq!(status(&layer, &bobs).await, StatusCode::OK);
}

async fn revoked_request_never_reaches_the_handler<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let claims = token("alice", "t1");
    revoker(other).revoke_token(&claims).await.expect("revoke");
    let calls = Arc::new(AtomicUsize::new(0));
    let answer = send_counted(&layer, &claims, &calls).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

async fn revoke_token_without_jti_is_an_error<St: StateStore>(store: St, _other: St) {
    let claims = RegisteredClaims::new("alice", now() + 600).with_iat(now());
    let result = revoker(store).revoke_token(&claims).await;
    assert!(matches!(result, Err(RevokeError::MissingJti)), "{result:?}");
}

/// A revocation that could name no token the layer accepts (an empty `jti` or `sid`, an
/// empty or whitespace-only subject) is the caller's mistake: refused with a `400`
/// error, and nothing is written (a later token of the real subject still passes).
async fn revocations_naming_no_token_are_refused<St: StateStore>(store: St, other: St) {
    let revoker = revoker(other);
    let exp = now() + 600;
    let hour = Duration::from_secs(3600);
    let results = [
        ("empty jti", revoker.revoke_jti("alice", "", exp).await),
        (
            "token with an empty jti",
            revoker.revoke_token(&token("alice", "")).await,
        ),
        (
            "jti of an empty sub",
            revoker.revoke_jti("", "t1", exp).await,
        ),
        (
            "jti of a blank sub",
            revoker.revoke_jti(" \t", "t1", exp).await,
        ),
        (
            "token of a blank sub",
            revoker.revoke_token(&token("  ", "t1")).await,
        ),
        (
            "session of an empty sub",
            revoker.revoke_session("", "s1", hour).await,
        ),
        (
            "session of a blank sub",
            revoker.revoke_session("\n", "s1", hour).await,
        ),
        ("empty sub", revoker.revoke_subject("").await.map(drop)),
        ("blank sub", revoker.revoke_subject(" ").await.map(drop)),
    ];
    for (name, result) in results {
        let error = result.expect_err(name);
        let expected = if name.contains("jti") && !name.contains("sub") {
            matches!(error, RevokeError::MissingJti)
        } else {
            matches!(error, RevokeError::MissingSubject)
        };
        assert!(expected, "{name}: {error:?}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(error.error_code(), "invalid_request", "{name}");
    }
    // Nothing was written: not even under the keys those calls would have used.
    for key in [
        "rev:{s}:jti:t1",
        "rev:{sYWxpY2U}:jti:",
        "rev:{s}:sid:s1",
        "rev:{s}:sub",
    ] {
        assert_eq!(store.get(key).await.expect("get"), None, "{key}");
    }
    let layer = layer(store);
    assert_eq!(status(&layer, &token("alice", "t1")).await, StatusCode::OK);
}

async fn revoke_expired_token_writes_nothing<St: StateStore>(store: St, other: St) {
    // Expired beyond the 30 s leeway: the JWT layer refuses it anyway.
    let expired = RegisteredClaims::new("alice", now() - 100).with_jti("old");
    revoker(other).revoke_token(&expired).await.expect("no-op");
    let key = "rev:{sYWxpY2U}:jti:old";
    assert_eq!(store.get(key).await.expect("get"), None);
}

async fn revoke_token_expired_inside_the_leeway_is_refused<St: StateStore>(store: St, other: St) {
    // Past `exp` but inside the leeway: the JWT layer would accept it, so it is revoked.
    let layer = layer(store);
    let late = RegisteredClaims::new("alice", now() - 10).with_jti("late");
    assert_eq!(status(&layer, &late).await, StatusCode::OK);
    revoker(other).revoke_token(&late).await.expect("revoke");
    assert_revoked(&send(&layer, &late).await);
}

async fn jti_entry_expires_with_the_token<St: StateStore>(store: St, other: St) {
    let policy = policy_with(HOUR, Duration::ZERO);
    let short = RegisteredClaims::new("alice", now() + 1).with_jti("short");
    Revoker::new(other, &policy)
        .revoke_token(&short)
        .await
        .expect("revoke");
    // The entry is gone once the JWT layer refuses the token by itself: the list does
    // not grow without bound.
    let key = "rev:{sYWxpY2U}:jti:short";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.get(key).await.expect("get").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(now() > short.exp, "the entry outlived the token");
}

/// A token revoked before `exp` stays refused while the JWT layer would still accept it
/// (after `exp`, inside the leeway). The revocation entries once expired at `exp`, so for
/// the leeway a revoked token was accepted again.
async fn revoked_token_stays_refused_inside_leeway<St: StateStore>(store: St, other: St) {
    let policy = policy_with(Duration::from_secs(1), Duration::from_secs(2));
    let layer = policy.auth_layer().revocation(store);
    let revoker = Revoker::new(other, &policy);
    let issuer = policy.token_issuer().expect("issuer");
    let by_jti = issuer.issue("alice").expect("issue").claims;
    let by_sid = issuer
        .issue_with("bob", Some("s1"), &())
        .expect("issue")
        .claims;
    let by_sub = issuer.issue("carol").expect("issue").claims;
    revoker.revoke_token(&by_jti).await.expect("revoke");
    revoker
        .revoke_session("bob", "s1", Duration::ZERO)
        .await
        .expect("revoke");
    revoker.revoke_subject("carol").await.expect("revoke");
    // Ask until the JWT layer refuses each token as expired by itself: every answer
    // before that must be "revoked", never 200.
    for claims in [&by_jti, &by_sid, &by_sub] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = send(&layer, claims).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{claims:?}");
            let challenge = answer.www_authenticate.unwrap_or_default();
            if challenge.contains("expired") {
                break;
            }
            assert!(challenge.contains("token revoked"), "{challenge}");
            assert!(std::time::Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn revoke_session_denies_every_token_of_it<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let revoker = revoker(other);
    let in_session = token("alice", "t1").with_sid("s1");
    let also_in_session = token("alice", "t2").with_sid("s1");
    let other_session = token("alice", "t3").with_sid("s2");
    let no_session = token("alice", "t4");
    let bobs_s1 = token("bob", "t5").with_sid("s1");

    revoker
        .revoke_session("alice", "s1", HOUR)
        .await
        .expect("revoke");

    assert_revoked(&send(&layer, &in_session).await);
    assert_revoked(&send(&layer, &also_in_session).await);
    // A session token without a jti is caught too.
    let no_jti = RegisteredClaims::new("alice", now() + 600).with_sid("s1");
    assert_eq!(status(&layer, &no_jti).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&layer, &other_session).await, StatusCode::OK);
    assert_eq!(status(&layer, &no_session).await, StatusCode::OK);
    assert_eq!(status(&layer, &bobs_s1).await, StatusCode::OK);
}

async fn revoke_session_with_zero_ttl_covers_tokens_issued_so_far<St: StateStore>(
    store: St,
    other: St,
) {
    let layer = layer(store);
    revoker(other)
        .revoke_session("alice", "s1", Duration::ZERO)
        .await
        .expect("revoke");
    let in_session = token("alice", "t1").with_sid("s1");
    assert_revoked(&send(&layer, &in_session).await);
}

async fn revoke_subject_denies_older_tokens<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let revoker = revoker(other);
    let t = revoker.revoke_subject("alice").await.expect("revoke");
    let exp = t + 600;
    let issued = |iat: u64, jti: &str| {
        RegisteredClaims::new("alice", exp)
            .with_jti(jti)
            .with_iat(iat)
    };

    assert_revoked(&send(&layer, &issued(t - 100, "old")).await);
    assert_revoked(&send(&layer, &issued(t - 1, "just-before")).await);
    // Same second as the revocation: refused (iat cannot tell before from after).
    assert_eq!(
        status(&layer, &issued(t, "same-second")).await,
        StatusCode::UNAUTHORIZED
    );
    // From the next second on: accepted.
    assert_eq!(
        status(&layer, &issued(t + 1, "next-second")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&layer, &issued(t + 60, "later")).await,
        StatusCode::OK
    );
    // No iat: cannot prove it is newer, so refused.
    let no_iat = RegisteredClaims::new("alice", exp).with_jti("no-iat");
    assert_eq!(status(&layer, &no_iat).await, StatusCode::UNAUTHORIZED);
    // Other subjects are untouched.
    let bobs = RegisteredClaims::new("bob", exp)
        .with_jti("b")
        .with_iat(t - 100);
    assert_eq!(status(&layer, &bobs).await, StatusCode::OK);
}

/// A token from elsewhere (an identity provider) may live longer than the policy's access
/// TTL: a subject or session revocation still holds until it expires, and a token living
/// longer than the policy's longest lifetime is refused outright.
async fn revocations_outlast_every_acceptable_token<St: StateStore>(store: St, other: St) {
    let policy = TokenPolicy::builder(
        JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, SECRET)
            .expect("key"),
    )
    .access_ttl(Duration::from_secs(1))
    .leeway(Duration::ZERO)
    .max_token_lifetime(Duration::from_secs(30))
    .build()
    .expect("policy");
    let layer: Layer<St> = policy.auth_layer().revocation(store);
    let revoker = Revoker::new(other, &policy);
    let issued = now();
    let long_lived = |sub: &str| {
        RegisteredClaims::new(sub, issued + 25)
            .with_iat(issued - 1)
            .with_sid("s1")
    };
    assert_eq!(status(&layer, &long_lived("alice")).await, StatusCode::OK);
    revoker.revoke_subject("alice").await.expect("revoke");
    revoker
        .revoke_session("bob", "s1", Duration::ZERO)
        .await
        .expect("revoke");
    assert_revoked(&send(&layer, &long_lived("alice")).await);
    assert_revoked(&send(&layer, &long_lived("bob")).await);
    // Past the access TTL plus leeway plus a second (where the entries used to expire),
    // well before the tokens do: still refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_revoked(&send(&layer, &long_lived("alice")).await);
    assert_revoked(&send(&layer, &long_lived("bob")).await);
    assert_eq!(status(&layer, &long_lived("carol")).await, StatusCode::OK);
    // Living longer than the policy allows: refused before any revocation.
    let too_long = RegisteredClaims::new("carol", now() + 120).with_iat(now());
    let answer = send(&layer, &too_long).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer
            .www_authenticate
            .as_deref()
            .is_some_and(|h| h.contains("invalid_token")),
        "{:?}",
        answer.www_authenticate
    );
}

/// With a leeway, the layer accepts an `exp` up to the longest lifetime plus the leeway
/// ahead, and that token until its `exp` plus the leeway: the revocation entries cover
/// both leeways.
async fn revocations_cover_both_leeways<St: StateStore>(store: St, other: St) {
    let policy = TokenPolicy::builder(
        JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, SECRET)
            .expect("key"),
    )
    .access_ttl(Duration::from_secs(1))
    .leeway(Duration::from_secs(3))
    .max_token_lifetime(Duration::from_secs(3))
    .build()
    .expect("policy");
    let layer: Layer<St> = policy.auth_layer().revocation(store);
    let revoker = Revoker::new(other, &policy);
    let issued = now();
    // As far ahead as the layer accepts: accepted until `issued + 10`.
    let furthest = |sub: &str| {
        RegisteredClaims::new(sub, issued + 6)
            .with_iat(issued - 1)
            .with_sid("s1")
    };
    assert_eq!(status(&layer, &furthest("alice")).await, StatusCode::OK);
    revoker.revoke_subject("alice").await.expect("revoke");
    revoker
        .revoke_session("bob", "s1", Duration::ZERO)
        .await
        .expect("revoke");
    // Past lifetime + one leeway + 1 s (7 s, where the entries used to expire), before
    // the tokens' `exp` + leeway: refused. (Should the machine stall past `issued + 10`,
    // the token has expired, which is a 401 too.)
    let at = issued + 8;
    while now() < at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(&layer, &furthest("alice")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&layer, &furthest("bob")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&layer, &furthest("carol")).await, StatusCode::OK);
}

/// "Log out everywhere" returns once its cutoff second has passed: a token minted right
/// after it (a new login) is accepted, never born revoked.
async fn a_token_minted_after_revoke_subject_returns_is_accepted<St: StateStore>(
    store: St,
    other: St,
) {
    let layer = layer(store);
    let revoker = revoker(other);
    let issuer = policy().token_issuer().expect("issuer");
    for round in 0..3 {
        let old = issuer.issue("alice").expect("mint").claims;
        let t = revoker.revoke_subject("alice").await.expect("revoke");
        assert!(
            now() > t,
            "returned within the cutoff's second (round {round})"
        );
        assert_revoked(&send(&layer, &old).await);
        let fresh = issuer.issue("alice").expect("mint").claims;
        assert_eq!(
            status(&layer, &fresh).await,
            StatusCode::OK,
            "round {round}"
        );
    }
}

async fn revoke_subject_again_moves_the_cutoff<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let revoker = revoker(other);
    let first = revoker.revoke_subject("alice").await.expect("revoke");
    let fresh = RegisteredClaims::new("alice", first + 600).with_iat(first + 1);
    assert_eq!(status(&layer, &fresh).await, StatusCode::OK);
    // Wait until the clock has passed `fresh`'s iat, then log out everywhere again.
    while now() <= first + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = revoker.revoke_subject("alice").await.expect("revoke");
    assert!(second > first + 1);
    assert_eq!(status(&layer, &fresh).await, StatusCode::UNAUTHORIZED);
}

async fn second_instance_sees_revocation_at_once<St: StateStore>(store: St, other: St) {
    // Two instances, each with its own layer and store handle; the first revokes.
    let first = layer(store.clone());
    let second = layer(other);
    let claims = token("alice", "t1").with_sid("s1");
    assert_eq!(status(&first, &claims).await, StatusCode::OK);
    assert_eq!(status(&second, &claims).await, StatusCode::OK);

    revoker(store).revoke_token(&claims).await.expect("revoke");

    assert_eq!(status(&second, &claims).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&first, &claims).await, StatusCode::UNAUTHORIZED);
}

async fn subject_with_brace_and_colon_characters<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let revoker = revoker(other);
    let odd = "a}{b:c}:jti:x";
    let t1 = token(odd, "t1").with_sid("s:{1}");
    let t2 = token(odd, "t2");
    // Subjects that a naive key scheme would confuse with `odd`.
    let lookalikes = [
        token("a", "t1"),
        token("a}", "t1"),
        token("a}{b:c}", "x:t1"),
    ];

    revoker.revoke_token(&t1).await.expect("revoke");
    assert_eq!(status(&layer, &t1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&layer, &t2).await, StatusCode::OK);
    for claims in &lookalikes {
        assert_eq!(status(&layer, claims).await, StatusCode::OK, "{claims:?}");
    }

    revoker
        .revoke_session(odd, "s:{1}", HOUR)
        .await
        .expect("revoke");
    let same_session = token(odd, "t3").with_sid("s:{1}");
    assert_eq!(
        status(&layer, &same_session).await,
        StatusCode::UNAUTHORIZED
    );

    let t = revoker.revoke_subject(odd).await.expect("revoke");
    assert_eq!(status(&layer, &t2).await, StatusCode::UNAUTHORIZED);
    let newer = RegisteredClaims::new(odd, t + 600)
        .with_jti("t4")
        .with_iat(t + 1);
    assert_eq!(status(&layer, &newer).await, StatusCode::OK);
    for claims in &lookalikes {
        assert_eq!(status(&layer, claims).await, StatusCode::OK, "{claims:?}");
    }
}

/// An empty `sub`, `jti` or `sid`, or a `sub` of only whitespace, never reaches the check:
/// verification refuses it (`401 invalid_token`, not "token revoked") before the store is
/// asked, so even a store that is down is not asked. A token without `jti` and `sid` is
/// still checked, by its subject.
async fn empty_subject_and_ids<St: StateStore>(store: St, other: St) {
    let down = layer(common::DownStore::unavailable());
    let layer = layer(store);
    let refused = [
        ("empty sub", token("", "t1")),
        ("blank sub", token(" \t", "t1")),
        ("empty jti", token("x", "")),
        ("empty sid", token("x", "t1").with_sid("")),
    ];
    for (name, claims) in &refused {
        for answer in [send(&layer, claims).await, send(&down, claims).await] {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{name}");
            assert_eq!(
                answer.www_authenticate.as_deref(),
                Some(r#"Bearer error="invalid_token", error_description="the token is invalid""#),
                "{name}"
            );
            assert_eq!(
                answer.error.map(|e| e.error),
                Some("invalid_token".to_owned()),
                "{name}"
            );
        }
    }

    let now = now();
    let bare = RegisteredClaims::new("x", now + 600).with_iat(now);
    assert_eq!(status(&layer, &bare).await, StatusCode::OK);
    assert_eq!(
        status(&layer, &token("x", "t1").with_sid("s1")).await,
        StatusCode::OK
    );
    revoker(other).revoke_subject("x").await.expect("revoke");
    assert_revoked(&send(&layer, &bare).await);
}

async fn token_with_absurd_exp_is_still_revoked<St: StateStore>(store: St, other: St) {
    let layer = layer(store);
    let forever = RegisteredClaims::new("alice", u64::MAX).with_jti("forever");
    revoker(other).revoke_token(&forever).await.expect("revoke");
    assert_eq!(status(&layer, &forever).await, StatusCode::UNAUTHORIZED);
}

/// On a real cluster, every key a subject's revocations write hashes to one slot, so the
/// check stays one `MGET` on one node.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keys_of_a_subject_share_one_slot() {
    let cluster = cluster_or_skip!();
    let store = RedisStore::builder()
        .cluster_urls(cluster.urls())
        .build()
        .expect("cluster store");
    let revoker = revoker(store);
    for sub in ["alice", "bob{x}:y", "carol"] {
        let claims = token(sub, "jti-1").with_sid("sid-1");
        revoker.revoke_token(&claims).await.expect("revoke token");
        revoker
            .revoke_session(sub, "sid-1", Duration::from_secs(60))
            .await
            .expect("revoke session");
        revoker.revoke_subject(sub).await.expect("revoke subject");
    }
    let keys = cluster.keys("rev:*");
    assert_eq!(keys.len(), 9, "{keys:?}");
    let mut by_tag: std::collections::HashMap<String, std::collections::HashSet<u16>> =
        std::collections::HashMap::new();
    for key in &keys {
        let tag = key.split('}').next().unwrap_or_default().to_owned();
        by_tag.entry(tag).or_default().insert(cluster.keyslot(key));
    }
    assert_eq!(by_tag.len(), 3, "{by_tag:?}");
    assert!(by_tag.values().all(|slots| slots.len() == 1), "{by_tag:?}");
}

backend_pair_tests!(
    revoke_jti_denies_only_that_token,
    revoked_request_never_reaches_the_handler,
    revoke_token_without_jti_is_an_error,
    revoke_expired_token_writes_nothing,
    revoke_token_expired_inside_the_leeway_is_refused,
    jti_entry_expires_with_the_token,
    revoked_token_stays_refused_inside_leeway,
    revoke_session_denies_every_token_of_it,
    revoke_session_with_zero_ttl_covers_tokens_issued_so_far,
    revoke_subject_denies_older_tokens,
    revoke_subject_again_moves_the_cutoff,
    revocations_outlast_every_acceptable_token,
    revocations_cover_both_leeways,
    a_token_minted_after_revoke_subject_returns_is_accepted,
    second_instance_sees_revocation_at_once,
    subject_with_brace_and_colon_characters,
    empty_subject_and_ids,
    revocations_naming_no_token_are_refused,
    token_with_absurd_exp_is_still_revoked,
);

// ---------------------------------------------------------------------------------------
// Store failures on the memory backend: a wrapper whose every operation fails.

#[tokio::test]
async fn memory_store_down_fails_closed_with_503() {
    let layer = layer(
        RevocationCheck::new(common::DownStore::unavailable())
            .on_store_failure(StoreFailure::closed().retry_after(Duration::from_secs(7))),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let answer = send_counted(&layer, &token("alice", "t1"), &calls).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after.as_deref(), Some("7"));
    assert_eq!(
        answer.error.as_ref().map(|e| e.error.as_str()),
        Some("store_unavailable")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn memory_store_down_fail_open_passes_and_warns_per_request() {
    let logs = common::Logs::default();
    let _guard = logs.install();
    let layer = layer(
        RevocationCheck::new(common::DownStore::unavailable())
            .on_store_failure(StoreFailure::open()),
    );
    for jti in ["t1", "t2", "t3"] {
        assert_eq!(status(&layer, &token("alice", jti)).await, StatusCode::OK);
    }
    let warnings = logs.lines_containing("fail-open");
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().all(|l| l.contains("WARN")), "{warnings:?}");
}

/// The check runs after verification, in the same service: a token that does not verify
/// is refused without a store lookup (401, even with the store down), and a public path
/// is neither verified nor checked.
#[tokio::test]
async fn check_runs_only_for_verified_tokens() {
    let layer = layer(common::DownStore::unavailable()).public_path("/health");
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new().layer(layer).service(service_fn({
        let calls = calls.clone();
        move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        }
    }));
    let forged = format!("{}x", sign(&token("alice", "t1")));
    let request = Request::get("/")
        .header(header::AUTHORIZATION, format!("Bearer {forged}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = service.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let request = Request::get("/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = service.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let request = Request::get("/health")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = service.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn memory_unexpected_store_error_is_500_even_with_fail_open() {
    for layer in [
        layer(common::DownStore::broken()),
        layer(
            RevocationCheck::new(common::DownStore::broken())
                .on_store_failure(StoreFailure::open()),
        ),
    ] {
        let answer = send(&layer, &token("alice", "t1")).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test]
async fn memory_revoker_reports_store_down() {
    let revoker = revoker(common::DownStore::unavailable());
    let result = revoker.revoke_token(&token("alice", "t1")).await;
    assert!(
        matches!(&result, Err(RevokeError::Store(e)) if e.is_unavailable()),
        "{result:?}"
    );
    let result = revoker.revoke_subject("alice").await;
    assert!(matches!(result, Err(RevokeError::Store(_))), "{result:?}");
}

#[tokio::test]
async fn memory_corrupt_subject_entry_fails_closed() {
    let store = MemoryStore::new();
    let layer = layer(store.clone());
    // Find the subject key the revoker writes, then overwrite it with garbage.
    let revoker = revoker(store.clone());
    let t = revoker.revoke_subject("alice").await.expect("revoke");
    let newer = RegisteredClaims::new("alice", t + 600).with_iat(t + 1);
    assert_eq!(status(&layer, &newer).await, StatusCode::OK);
    store
        .set(
            "rev:{sYWxpY2U}:sub",
            Bytes::from_static(b"not a time"),
            HOUR,
        )
        .await
        .expect("set");
    assert_eq!(status(&layer, &newer).await, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------
// Redis only: what the server sees.

fn redis_store(server: &common::RedisServer) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(500))
        .build()
        .expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entry_ttls_match_remaining_lifetimes() {
    let server = redis_or_skip!();
    let store = redis_store(&server);
    let revoker = Revoker::new(
        store,
        &policy_with(Duration::from_secs(7200), Duration::ZERO),
    );
    let claims = RegisteredClaims::new("alice", now() + 600).with_jti("t1");
    revoker.revoke_token(&claims).await.expect("revoke");
    revoker
        .revoke_session("alice", "s1", Duration::from_secs(900))
        .await
        .expect("revoke");
    revoker.revoke_subject("alice").await.expect("revoke");

    let ttl_of = |pattern: &str| {
        let keys = server.keys(pattern);
        assert_eq!(keys.len(), 1, "{pattern}: {keys:?}");
        server.pttl(&keys[0])
    };
    // Until the JWT layer refuses the token: exp + 1 s (exp has whole seconds, so the
    // remaining life is 600..=601 s at write time).
    let jti = ttl_of("rev:*:jti:t1");
    assert!((597_000..=601_000).contains(&jti), "jti PTTL {jti}");
    // A session or subject revocation is kept for the longest token lifetime the layer
    // accepts (default: a day, here longer than the access TTL) plus twice the leeway
    // (zero here) plus a second.
    let sid = ttl_of("rev:*:sid:s1");
    assert!((86_398_000..=86_401_000).contains(&sid), "sid PTTL {sid}");
    let sub = ttl_of("rev:*:sub");
    assert!((86_398_000..=86_401_000).contains(&sub), "sub PTTL {sub}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leeway_extends_the_entry_ttls() {
    let server = redis_or_skip!();
    let revoker = Revoker::new(
        redis_store(&server),
        &policy_with(HOUR, Duration::from_secs(60)),
    );
    let claims = RegisteredClaims::new("alice", now() + 600).with_jti("t1");
    revoker.revoke_token(&claims).await.expect("revoke");
    let keys = server.keys("rev:*:jti:t1");
    let pttl = server.pttl(&keys[0]);
    assert!((657_000..=661_000).contains(&pttl), "PTTL {pttl}");
    // A subject's entry covers a token whose `exp` is a day plus the leeway ahead,
    // accepted until that `exp` plus the leeway: a day + 2 × 60 s + 1 s.
    revoker.revoke_subject("alice").await.expect("revoke");
    let keys = server.keys("rev:*:sub");
    let pttl = server.pttl(&keys[0]);
    assert!((86_519_000..=86_521_000).contains(&pttl), "PTTL {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_of_a_subject_share_one_hash_tag() {
    let server = redis_or_skip!();
    let revoker = revoker(redis_store(&server));
    let sub = "a}{b:c}";
    let claims = token(sub, "t}1").with_sid("{s}");
    revoker.revoke_token(&claims).await.expect("revoke");
    revoker
        .revoke_session(sub, "{s}", HOUR)
        .await
        .expect("revoke");
    revoker.revoke_subject(sub).await.expect("revoke");
    let keys = server.keys("rev:*");
    assert_eq!(keys.len(), 3, "{keys:?}");
    // Redis Cluster hashes the part between the first `{` and the next `}`.
    let tag = |key: &str| {
        let open = key.find('{').expect("tag");
        let len = key[open + 1..].find('}').expect("tag end");
        key[open + 1..open + 1 + len].to_owned()
    };
    let tags: Vec<_> = keys.iter().map(|k| tag(k)).collect();
    assert!(!tags[0].is_empty());
    assert!(tags.iter().all(|t| *t == tags[0]), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_mget_per_request() {
    let server = redis_or_skip!();
    let store = redis_store(&server);
    let layer = layer(store.clone());
    let revoker = revoker(store);
    let full = token("alice", "t1").with_sid("s1");
    let revoked = token("alice", "t2").with_sid("s1");
    let bare = RegisteredClaims::new("alice", now() + 600);
    revoker.revoke_token(&revoked).await.expect("revoke");
    // Warm-up: connection setup sends its own commands once.
    assert_eq!(status(&layer, &full).await, StatusCode::OK);

    for (claims, expected) in [
        (&full, StatusCode::OK),
        (&revoked, StatusCode::UNAUTHORIZED),
        (&bare, StatusCode::OK),
    ] {
        server.reset_stats();
        assert_eq!(status(&layer, claims).await, expected);
        let stats = server.command_stats();
        assert_eq!(stats.get("mget"), Some(&1), "{stats:?}");
        assert_eq!(server.command_count(), 1, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_then_recovers() {
    let mut server = redis_or_skip!();
    let layer = layer(redis_store(&server));
    let claims = token("alice", "t1");
    assert_eq!(status(&layer, &claims).await, StatusCode::OK);

    server.stop();
    let answer = send(&layer, &claims).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(
        answer.error.as_ref().map(|e| e.error.as_str()),
        Some("store_unavailable")
    );

    server.restart();
    let mut last = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..20 {
        last = status(&layer, &claims).await;
        if last == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_open_passes() {
    let mut server = redis_or_skip!();
    let store = redis_store(&server);
    let layer = layer(RevocationCheck::new(store.clone()).on_store_failure(StoreFailure::open()));
    let claims = token("alice", "t1");
    revoker(store).revoke_token(&claims).await.expect("revoke");
    assert_eq!(status(&layer, &claims).await, StatusCode::UNAUTHORIZED);

    server.stop();
    // The documented cost of fail-open: the revoked token passes while Redis is down.
    assert_eq!(status(&layer, &claims).await, StatusCode::OK);
    assert_eq!(status(&layer, &token("alice", "t2")).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_revoker_reports_store_down() {
    let mut server = redis_or_skip!();
    let revoker = revoker(redis_store(&server));
    server.stop();
    let result = revoker.revoke_token(&token("alice", "t1")).await;
    assert!(
        matches!(&result, Err(RevokeError::Store(e)) if e.is_unavailable()),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Works in an axum router (Send futures, axum's body types).

#[tokio::test]
async fn works_in_an_axum_router() {
    use axum::routing::get;

    let store = MemoryStore::new();
    let revoker = revoker(store.clone());
    let claims = token("alice", "t1");
    let app = axum::Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer(store));
    let request = || {
        Request::get("/")
            .header(header::AUTHORIZATION, format!("Bearer {}", sign(&claims)))
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let response = app.clone().oneshot(request()).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    revoker.revoke_token(&claims).await.expect("revoke");
    let response = app.oneshot(request()).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
