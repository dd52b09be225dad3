//! RefreshTokens, black-box, on MemoryStore, a real Redis and (feature `redis-cluster`) a
//! real Redis Cluster. Test names carry the backend: `memory::rotate_chain_of_ten`,
//! `redis::...`.
//!
//! Every shared test gets two store handles, as two instances of a service sharing one
//! store would have (two connection pools on Redis): tokens are issued through one and
//! exchanged or checked through the other.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, IssueError, IssuedToken, JwtKeySet, TokenPolicy};
use tower_stateless::refresh::{
    InvalidGrant, RefreshError, RefreshTokens, RefreshTokensBuilder, TokenPair,
};
use tower_stateless::revocation::RevokeError;
use tower_stateless::store::{MemoryStore, RedisStore, StateStore, StoreError};

/// The server secret of the refresh tokens in these tests.
const SECRET: &[u8] = b"refresh-tests-server-secret-32-bytes!";

fn policy() -> TokenPolicy {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, &[7; 32])
        .expect("hmac key");
    TokenPolicy::builder(keys)
        .signing_key("v1")
        .build()
        .expect("policy")
}

fn builder<St: StateStore>(store: St) -> RefreshTokensBuilder<St> {
    RefreshTokens::builder(store, &policy()).secret(SECRET)
}

fn tokens<St: StateStore>(store: St) -> RefreshTokens<St> {
    builder(store).build().expect("refresh tokens")
}

/// What the JWT layer with its revocation check over `store` answers for `token`.
async fn access_status<St: StateStore>(store: &St, token: &IssuedToken) -> StatusCode {
    let service = ServiceBuilder::new()
        .layer(policy().auth_layer().revocation(store.clone()))
        .service_fn(|_request: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        });
    let request = Request::get("/")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.token),
        )
        .body(String::new())
        .expect("request");
    service.oneshot(request).await.expect("infallible").status()
}

#[track_caller]
fn assert_invalid_grant<T: std::fmt::Debug>(
    result: Result<T, RefreshError>,
    reason: Option<InvalidGrant>,
) {
    match result {
        Err(error) => {
            assert!(error.is_invalid_grant(), "{error:?}");
            assert_eq!(error.error_code(), "invalid_grant");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            if let Some(reason) = reason {
                assert_eq!(error.invalid_grant(), Some(reason));
            }
        }
        Ok(value) => panic!("expected invalid_grant, got {value:?}"),
    }
}

async fn rotate<St: StateStore>(tokens: &RefreshTokens<St>, pair: &TokenPair) -> TokenPair {
    tokens
        .rotate(&pair.refresh_token.token)
        .await
        .expect("rotate")
}

// ---------------------------------------------------------------------------------------
// Behaviour shared by every backend.

async fn rotate_chain_of_ten<St: StateStore>(store: St, other: St) {
    let login = tokens(store).issue("alice").await.expect("issue");
    let refresher = tokens(other.clone());
    assert_eq!(
        login.expires_in,
        15 * 60,
        "access tokens default to 15 minutes"
    );
    let claims = &login.access_token.claims;
    assert_eq!(claims.sub, "alice");
    assert_eq!(
        claims.sid.as_deref(),
        Some(login.refresh_token.sid.as_str())
    );

    let mut seen = HashSet::from([login.refresh_token.token.clone()]);
    let mut current = login.clone();
    for _ in 0..10 {
        let next = rotate(&refresher, &current).await;
        assert!(
            seen.insert(next.refresh_token.token.clone()),
            "a token came back"
        );
        assert_eq!(next.refresh_token.family, login.refresh_token.family);
        assert_eq!(next.refresh_token.sid, login.refresh_token.sid);
        assert_eq!(next.refresh_token.sub, "alice");
        assert_eq!(next.access_token.claims.sub, "alice");
        assert_eq!(
            next.access_token.claims.sid.as_deref(),
            Some(login.refresh_token.sid.as_str())
        );
        assert_ne!(
            next.access_token.claims.jti,
            current.access_token.claims.jti
        );
        assert!(next.refresh_token.expires_at <= next.refresh_token.family_expires_at);
        assert_eq!(
            next.refresh_token.family_expires_at,
            login.refresh_token.family_expires_at
        );
        assert_eq!(
            access_status(&other, &next.access_token).await,
            StatusCode::OK
        );
        current = next;
    }
    // The last token of the chain is still good, and nothing was revoked on the way.
    let last = rotate(&refresher, &current).await;
    assert_eq!(
        access_status(&other, &last.access_token).await,
        StatusCode::OK
    );
}

async fn reuse_revokes_the_family_and_the_session<St: StateStore>(store: St, other: St) {
    let issuer = tokens(store.clone());
    let refresher = tokens(other.clone());
    let first = issuer.issue("alice").await.expect("issue");
    let second = rotate(&refresher, &first).await;
    let newest = rotate(&refresher, &second).await;
    // Another login of the same user, in another session.
    let elsewhere = issuer.issue("alice").await.expect("issue");
    assert_eq!(
        access_status(&store, &newest.access_token).await,
        StatusCode::OK
    );

    // The thief (or the victim) presents the consumed first token.
    assert_invalid_grant(
        refresher.rotate(&first.refresh_token.token).await,
        Some(InvalidGrant::Reused),
    );

    // The whole family is dead: the newest refresh token too.
    assert_invalid_grant(
        issuer.rotate(&newest.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
    assert_invalid_grant(
        issuer.rotate(&second.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
    // The session's access tokens, old and new, are refused by the revocation check.
    for pair in [&first, &second, &newest] {
        assert_eq!(
            access_status(&store, &pair.access_token).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // The other session is untouched.
    let elsewhere = rotate(&refresher, &elsewhere).await;
    assert_eq!(
        access_status(&store, &elsewhere.access_token).await,
        StatusCode::OK
    );
}

async fn fifty_concurrent_exchanges_one_succeeds<St: StateStore>(store: St, other: St) {
    let login = tokens(store.clone()).issue("alice").await.expect("issue");
    let managers = [tokens(store), tokens(other)];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let manager = managers[i % 2].clone();
        let token = login.refresh_token.token.clone();
        tasks.push(tokio::spawn(async move { manager.rotate(&token).await }));
    }
    let mut won = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(pair) => won.push(pair),
            Err(error) => assert!(error.is_invalid_grant(), "{error:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one exchange gets a pair");
    // The losers were duplicates of a consumed token: reuse, so the family is over.
    assert_invalid_grant(
        managers[0].rotate(&won[0].refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
}

async fn expired_refresh_token_is_rejected<St: StateStore>(store: St, other: St) {
    let issuer = builder(store)
        .refresh_ttl(Duration::from_millis(1000))
        .build()
        .expect("refresh tokens");
    let refresher = builder(other)
        .refresh_ttl(Duration::from_millis(1000))
        .build()
        .expect("refresh tokens");
    let fresh = issuer.issue("alice").await.expect("issue");
    let stale = issuer.issue("alice").await.expect("issue");
    assert!(refresher.rotate(&fresh.refresh_token.token).await.is_ok());

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let result = refresher.rotate(&stale.refresh_token.token).await;
    assert!(
        matches!(
            result.as_ref().map_err(RefreshError::invalid_grant),
            Err(Some(InvalidGrant::Expired | InvalidGrant::Unknown))
        ),
        "{result:?}"
    );
}

async fn family_lifetime_is_absolute<St: StateStore>(store: St, other: St) {
    let lifetime = Duration::from_millis(1500);
    let issuer = builder(store)
        .family_lifetime(lifetime)
        .build()
        .expect("refresh tokens");
    let refresher = builder(other)
        .family_lifetime(lifetime)
        .build()
        .expect("refresh tokens");
    let login = issuer.issue("alice").await.expect("issue");
    // The token's TTL (14 days) is capped by the family's.
    assert_eq!(
        login.refresh_token.expires_at,
        login.refresh_token.family_expires_at
    );
    let mut current = rotate(&refresher, &login).await;
    assert_eq!(
        current.refresh_token.family_expires_at, login.refresh_token.family_expires_at,
        "rotation does not extend the family"
    );
    // Keep rotating: a token used every 200 ms never idles out, yet the family ends.
    let mut ended = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match refresher.rotate(&current.refresh_token.token).await {
            Ok(next) => current = next,
            Err(error) => {
                assert!(error.is_invalid_grant(), "{error:?}");
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the family outlived its absolute lifetime");
}

async fn logout_ends_the_family<St: StateStore>(store: St, other: St) {
    let issuer = tokens(store.clone());
    let refresher = tokens(other.clone());
    let phone = issuer.issue("alice").await.expect("issue");
    let phone = rotate(&refresher, &phone).await;
    let laptop = issuer.issue("alice").await.expect("issue");

    let claims = &phone.access_token.claims;
    let sid = claims.sid.as_deref().expect("sid claim");
    issuer.logout(&claims.sub, sid).await.expect("logout");

    assert_invalid_grant(
        refresher.rotate(&phone.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
    assert_eq!(
        access_status(&other, &phone.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    // The other session lives on.
    let laptop = rotate(&refresher, &laptop).await;
    assert_eq!(
        access_status(&other, &laptop.access_token).await,
        StatusCode::OK
    );
}

async fn revoke_session_families_alone<St: StateStore>(store: St, other: St) {
    let issuer = tokens(store);
    let refresher = tokens(other);
    let pair = issuer
        .issue_for_session("alice", "session-{1}:x")
        .await
        .expect("issue");
    assert_eq!(
        pair.access_token.claims.sid.as_deref(),
        Some("session-{1}:x")
    );
    let same_sid_other_user = issuer
        .issue_for_session("bob", "session-{1}:x")
        .await
        .expect("issue");
    issuer
        .revoke_session_families("alice", "session-{1}:x")
        .await
        .expect("revoke");
    assert_invalid_grant(
        refresher.rotate(&pair.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
    rotate(&refresher, &same_sid_other_user).await;
}

async fn logout_everywhere_ends_every_family<St: StateStore>(store: St, other: St) {
    let issuer = tokens(store.clone());
    let refresher = tokens(other.clone());
    let phone = issuer.issue("alice").await.expect("issue");
    let laptop = issuer.issue("alice").await.expect("issue");
    let laptop = rotate(&refresher, &laptop).await;
    let bob = issuer.issue("bob").await.expect("issue");

    issuer.logout_everywhere("alice").await.expect("logout all");

    for pair in [&phone, &laptop] {
        assert_invalid_grant(
            refresher.rotate(&pair.refresh_token.token).await,
            Some(InvalidGrant::Revoked),
        );
        assert_eq!(
            access_status(&other, &pair.access_token).await,
            StatusCode::UNAUTHORIZED
        );
    }
    rotate(&refresher, &bob).await;
    // A login after the cutoff starts a family that works.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = issuer.issue("alice").await.expect("issue");
    rotate(&refresher, &again).await;
}

async fn malformed_unknown_and_forged_tokens_are_invalid_grant<St: StateStore>(
    store: St,
    other: St,
) {
    let issuer = tokens(store);
    let refresher = tokens(other);
    let alice = issuer.issue("alice").await.expect("issue");
    let bob = issuer.issue("bob").await.expect("issue");
    let token = alice.refresh_token.token.clone();
    let (tag, secret) = token.split_once('.').expect("tag.secret");
    let (bob_tag, _) = bob.refresh_token.token.split_once('.').expect("tag.secret");

    for malformed in [
        String::new(),
        "not a token".to_owned(),
        format!("{token}="),
        token.replace('.', ""),
        format!("{tag}.{secret}.{secret}"),
        format!("{tag}.{}", &secret[1..]),
        "\u{0}".repeat(66),
    ] {
        assert_invalid_grant(
            refresher.rotate(&malformed).await,
            Some(InvalidGrant::Malformed),
        );
    }
    // Flip one character of the secret: well-formed, never issued.
    let mut flipped: Vec<char> = secret.chars().collect();
    flipped[5] = if flipped[5] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    for forged in [
        format!("{tag}.{flipped}"),
        // Alice's secret under Bob's tag.
        format!("{bob_tag}.{secret}"),
        format!("{tag}.{}", "A".repeat(43)),
    ] {
        assert_invalid_grant(refresher.rotate(&forged).await, Some(InvalidGrant::Unknown));
    }
    // None of that hurt the real tokens.
    rotate(&refresher, &alice).await;
    rotate(&refresher, &bob).await;
}

async fn grace_window_tolerates_the_superseded_token_once<St: StateStore>(store: St, other: St) {
    let grace = Duration::from_secs(30);
    let issuer = builder(store)
        .grace_period(grace)
        .build()
        .expect("refresh tokens");
    let refresher = builder(other)
        .grace_period(grace)
        .build()
        .expect("refresh tokens");
    let t0 = issuer.issue("alice").await.expect("issue");
    // The client sends t0, the response (t1) is lost.
    let _lost = rotate(&refresher, &t0).await;
    // It retries with t0 within the window and gets a new pair of the same family.
    let t2 = rotate(&refresher, &t0).await;
    assert_eq!(t2.refresh_token.family, t0.refresh_token.family);
    let t3 = rotate(&refresher, &t2).await;
    // t0's replacement has been exchanged since: t0 is no longer the immediately
    // superseded token, so it is reuse, and the family ends.
    assert_invalid_grant(
        refresher.rotate(&t0.refresh_token.token).await,
        Some(InvalidGrant::Reused),
    );
    assert_invalid_grant(
        refresher.rotate(&t3.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
}

async fn grace_window_ends<St: StateStore>(store: St, other: St) {
    let grace = Duration::from_millis(300);
    let t0 = builder(store)
        .grace_period(grace)
        .build()
        .expect("refresh tokens")
        .issue("alice")
        .await
        .expect("issue");
    let refresher = builder(other)
        .grace_period(grace)
        .build()
        .expect("refresh tokens");
    let t1 = rotate(&refresher, &t0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Past the window, the superseded token is reuse, even though t1 was never used.
    assert_invalid_grant(
        refresher.rotate(&t0.refresh_token.token).await,
        Some(InvalidGrant::Reused),
    );
    assert_invalid_grant(
        refresher.rotate(&t1.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
}

async fn no_grace_by_default<St: StateStore>(store: St, other: St) {
    let t0 = tokens(store).issue("alice").await.expect("issue");
    let refresher = tokens(other);
    let t1 = rotate(&refresher, &t0).await;
    assert_invalid_grant(
        refresher.rotate(&t0.refresh_token.token).await,
        Some(InvalidGrant::Reused),
    );
    assert_invalid_grant(
        refresher.rotate(&t1.refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
}

/// Fails the `n`-th `set` from a point on (once) and records the keys written.
#[derive(Default)]
struct Flaky {
    sets: AtomicUsize,
    fail_at: AtomicUsize,
    written: Mutex<Vec<String>>,
}

impl common::Hook for Flaky {
    fn before(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        if let common::Call::Set(..) = call {
            let n = self.sets.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.fail_at.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("injected failure (test)".into()));
            }
        }
        if let common::Call::Set(key, _)
        | common::Call::SetIfAbsent(key, _)
        | common::Call::CompareAndSet { key, .. } = call
        {
            self.written.lock().expect("lock").push((*key).to_owned());
        }
        Ok(())
    }
}

type FlakyStore<St> = common::Intercept<St, Flaky>;

fn flaky<St>(inner: St) -> FlakyStore<St> {
    common::Intercept::new(inner, Flaky::default())
}

impl<St> FlakyStore<St> {
    /// The `n`-th `set` from now fails (n ≥ 1), once.
    fn fail_set(&self, n: usize) {
        let flaky = &self.hook;
        flaky
            .fail_at
            .store(flaky.sets.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    fn written(&self) -> Vec<String> {
        self.hook.written.lock().expect("lock").clone()
    }
}

/// Reuse detection revokes the session's access tokens and the family; when the store
/// fails between (or before) the two writes, the next presentation completes both. The
/// family marker was once written first, so after a failed session revocation every later
/// attempt stopped early and the session's access tokens stayed valid.
async fn reuse_detection_completes_after_a_store_failure<St: StateStore>(store: St, other: St) {
    for failing_write in [1, 2] {
        let flaky = flaky(other.clone());
        let issuer = tokens(store.clone());
        let refresher = tokens(flaky.clone());
        let first = issuer.issue("alice").await.expect("issue");
        let second = rotate(&refresher, &first).await;
        assert_eq!(
            access_status(&store, &second.access_token).await,
            StatusCode::OK
        );

        flaky.fail_set(failing_write);
        let error = refresher
            .rotate(&first.refresh_token.token)
            .await
            .expect_err("the store failed");
        assert!(error.is_unavailable(), "{failing_write}: {error:?}");

        // The client (or the thief) tries again: reuse is detected to completion.
        assert_invalid_grant(
            refresher.rotate(&first.refresh_token.token).await,
            Some(InvalidGrant::Reused),
        );
        for pair in [&first, &second] {
            assert_eq!(
                access_status(&store, &pair.access_token).await,
                StatusCode::UNAUTHORIZED,
                "write {failing_write} failed: the session's access tokens must be revoked"
            );
        }
        assert_invalid_grant(
            issuer.rotate(&second.refresh_token.token).await,
            Some(InvalidGrant::Revoked),
        );
    }
}

/// "Log out everywhere" of the refresh families only moves the cutoff forward, like
/// `Revoker::revoke_subject`: a later cutoff another instance wrote stays.
async fn subject_families_cutoff_only_moves_forward<St: StateStore>(store: St, other: St) {
    let flaky = flaky(store.clone());
    let first = tokens(flaky.clone())
        .revoke_subject_families("alice")
        .await
        .expect("revoke");
    let key = flaky
        .written()
        .into_iter()
        .find(|k| k.starts_with("rt:") && k.ends_with(":sub"))
        .expect("the cutoff key");
    // Another instance, its clock 100 s ahead, already moved the cutoff.
    let ahead = first + 100_000;
    store
        .set(
            &key,
            Bytes::from(ahead.to_string()),
            Duration::from_secs(60),
        )
        .await
        .expect("set");
    let again = tokens(other)
        .revoke_subject_families("alice")
        .await
        .expect("revoke");
    assert_eq!(again, ahead);
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(Bytes::from(ahead.to_string()))
    );
    // An older cutoff, or garbage, is moved forward.
    for old in ["5", "not a time"] {
        store
            .set(&key, Bytes::from(old), Duration::from_secs(60))
            .await
            .expect("set");
        let t = tokens(store.clone())
            .revoke_subject_families("alice")
            .await
            .expect("revoke");
        assert!(t >= first, "{old}: {t} < {first}");
        assert_eq!(
            store.get(&key).await.expect("get"),
            Some(Bytes::from(t.to_string()))
        );
    }
}

/// The unkeyed tag of `alice` that refresh tokens once started with, in every deployment.
const ALICE_UNKEYED_TAG: &str = "9rgN2EVDfqdr32TH3LxHTQ";

/// A refresh token reveals nothing about its subject: its visible part is not a hash of
/// the subject anyone can compute, and two tokens of one user share no visible part.
async fn refresh_token_reveals_nothing_about_its_subject<St: StateStore>(store: St, other: St) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"tower-stateless/refresh/sub\0alice")
        .finalize();
    let unkeyed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
    assert_eq!(unkeyed, ALICE_UNKEYED_TAG);

    let flaky = flaky(store);
    let manager = tokens(flaky.clone());
    let a = manager.issue("alice").await.expect("issue");
    let b = manager.issue("alice").await.expect("issue");
    let c = rotate(&tokens(other), &a).await;
    let raw: Vec<&str> = [&a, &b, &c]
        .iter()
        .map(|pair| pair.refresh_token.token.as_str())
        .collect();
    for token in &raw {
        assert!(!token.starts_with(ALICE_UNKEYED_TAG), "{token}");
        assert!(!token.contains("alice"), "{token}");
    }
    // No visible part in common: the 22-character prefixes all differ (and so does the
    // rest, which is random).
    for (i, x) in raw.iter().enumerate() {
        for y in &raw[i + 1..] {
            assert_ne!(x[..22], y[..22], "two tokens of one user share a prefix");
        }
    }
    // The store's keys do not carry the unkeyed tag either.
    let written = flaky.written();
    assert!(!written.is_empty());
    assert!(
        written.iter().all(|k| !k.contains(ALICE_UNKEYED_TAG)),
        "{written:?}"
    );
    // Under another secret, the same user's keys live under another tag.
    let other_secret = RefreshTokens::builder(MemoryStore::new(), &policy())
        .secret(b"a different secret of 32 bytes or more")
        .build()
        .expect("refresh tokens");
    assert_invalid_grant(
        other_secret.rotate(&b.refresh_token.token).await,
        Some(InvalidGrant::Unknown),
    );
}

/// The payload of a JWT, unverified (the tests only read what the issuer wrote).
fn payload(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// `access_claims` land in the access token minted at login and in every rotated one.
async fn access_claims_ride_on_every_access_token<St: StateStore>(store: St, other: St) {
    let mut claims = serde_json::Map::new();
    claims.insert("scope".into(), "orders:write payments:write".into());
    let login = builder(store)
        .access_claims(claims.clone())
        .build()
        .expect("refresh tokens")
        .issue("alice")
        .await
        .expect("issue");
    let refresher = builder(other)
        .access_claims(claims)
        .build()
        .expect("refresh tokens");
    let rotated = rotate(&refresher, &login).await;
    for pair in [&login, &rotated] {
        let body = payload(&pair.access_token.token);
        assert_eq!(body["scope"], "orders:write payments:write");
        assert_eq!(body["sub"], "alice");
        assert_eq!(body["sid"], pair.refresh_token.sid.as_str());
    }
}

/// Within the grace window, concurrent retries of one superseded token (a client whose
/// response was lost, retrying from several tabs at once) are concurrent exchanges too:
/// exactly one gets a pair, the others count as reuse, and the login ends, the winner's
/// tokens included.
async fn concurrent_grace_retries_one_succeeds<St: StateStore>(store: St, other: St) {
    let grace = Duration::from_secs(60);
    let managers = [
        builder(store.clone())
            .grace_period(grace)
            .build()
            .expect("refresh tokens"),
        builder(other)
            .grace_period(grace)
            .build()
            .expect("refresh tokens"),
    ];
    let t0 = managers[0].issue("alice").await.expect("issue");
    // t0 is exchanged, and the answer (t1) is lost.
    let _lost = rotate(&managers[1], &t0).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let manager = managers[i % 2].clone();
        let token = t0.refresh_token.token.clone();
        tasks.push(tokio::spawn(async move { manager.rotate(&token).await }));
    }
    let mut won = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(pair) => won.push(pair),
            Err(error) => assert!(error.is_invalid_grant(), "{error:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one grace retry gets a pair");
    assert_eq!(won[0].refresh_token.family, t0.refresh_token.family);
    assert_invalid_grant(
        managers[0].rotate(&won[0].refresh_token.token).await,
        Some(InvalidGrant::Revoked),
    );
    assert_eq!(
        access_status(&store, &won[0].access_token).await,
        StatusCode::UNAUTHORIZED,
        "the session's access tokens are revoked"
    );
}

backend_pair_tests!(
    access_claims_ride_on_every_access_token,
    reuse_detection_completes_after_a_store_failure,
    subject_families_cutoff_only_moves_forward,
    refresh_token_reveals_nothing_about_its_subject,
    rotate_chain_of_ten,
    reuse_revokes_the_family_and_the_session,
    fifty_concurrent_exchanges_one_succeeds,
    expired_refresh_token_is_rejected,
    family_lifetime_is_absolute,
    logout_ends_the_family,
    revoke_session_families_alone,
    logout_everywhere_ends_every_family,
    malformed_unknown_and_forged_tokens_are_invalid_grant,
    grace_window_tolerates_the_superseded_token_once,
    grace_window_ends,
    no_grace_by_default,
    concurrent_grace_retries_one_succeeds,
);

#[test]
fn access_claims_may_not_set_registered_claims() {
    for reserved in ["sub", "sid", "exp", "iss"] {
        let mut claims = serde_json::Map::new();
        claims.insert(reserved.into(), "x".into());
        let error = builder(MemoryStore::new())
            .access_claims(claims)
            .build()
            .expect_err("a reserved claim");
        assert_eq!(error.setting(), "access_claims", "{error}");
    }
}

/// Records every call that reaches the store it wraps.
#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl common::Hook for Calls {
    fn before(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        self.0.lock().expect("lock").push(format!("{call:?}"));
        Ok(())
    }
}

/// Every login with an empty (or whitespace-only) subject would share one subject (one "log
/// out everywhere", one rate limit, one idempotency scope), and with an empty session id
/// one session: both are refused before the store is touched.
#[tokio::test]
async fn empty_subject_or_session_id_is_refused_before_any_write() {
    let store = common::Intercept::new(MemoryStore::new(), Calls::default());
    let manager = tokens(store.clone());
    let cases = [
        (
            "issue(\"\")",
            manager.issue("").await,
            IssueError::EmptySubject,
        ),
        (
            "issue_for_session(\"\", s1)",
            manager.issue_for_session("", "s1").await,
            IssueError::EmptySubject,
        ),
        (
            "issue_for_session(alice, \"\")",
            manager.issue_for_session("alice", "").await,
            IssueError::EmptySessionId,
        ),
        (
            "issue_for_session(\"\", \"\")",
            manager.issue_for_session("", "").await,
            IssueError::EmptySubject,
        ),
        (
            "issue(\"  \")",
            manager.issue("  ").await,
            IssueError::EmptySubject,
        ),
        (
            "issue(\"\\t\")",
            manager.issue("\t").await,
            IssueError::EmptySubject,
        ),
        (
            "issue_for_session(\" \\n\", s1)",
            manager.issue_for_session(" \n", "s1").await,
            IssueError::EmptySubject,
        ),
    ];
    for (name, result, expected) in cases {
        let error = result.expect_err(name);
        let RefreshError::Issue(issue) = &error else {
            panic!("{name}: expected an issue error, got {error:?}");
        };
        assert_eq!(
            std::mem::discriminant(issue),
            std::mem::discriminant(&expected),
            "{name}: {issue:?}"
        );
        assert!(
            !error.is_invalid_grant() && !error.is_unavailable(),
            "{name}"
        );
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR, "{name}");
        assert_eq!(error.error_code(), "server_error", "{name}");
        let source = std::error::Error::source(&error).expect("the IssueError is the source");
        assert_eq!(source.to_string(), expected.to_string(), "{name}");
    }
    let calls = store.hook.0.lock().expect("lock").clone();
    assert!(calls.is_empty(), "the store was touched: {calls:?}");

    // The same manager still logs a real subject in: one write.
    let login = manager.issue("alice").await.expect("issue");
    assert_eq!(login.access_token.claims.sub, "alice");
    let calls = store.hook.0.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
}

// ---------------------------------------------------------------------------------------
// The raw token never reaches the store.

/// Issues, rotates (with reuse and logout) and returns every raw refresh token handed out.
async fn exercise<St: StateStore>(store: St) -> Vec<String> {
    let manager = tokens(store);
    let mut raw = Vec::new();
    let login = manager.issue("alice").await.expect("issue");
    let next = rotate(&manager, &login).await;
    let last = rotate(&manager, &next).await;
    let _ = manager.rotate(&login.refresh_token.token).await;
    let other = manager.issue("alice").await.expect("issue");
    manager
        .logout("alice", &other.refresh_token.sid)
        .await
        .expect("logout");
    for pair in [&login, &next, &last, &other] {
        raw.push(pair.refresh_token.token.clone());
    }
    raw
}

/// Fails if a raw token, or its secret part, appears in a stored key or value.
#[track_caller]
fn assert_no_raw_token(raw: &[String], stored: &[(String, Vec<u8>)]) {
    assert!(!stored.is_empty(), "nothing was stored");
    for token in raw {
        let (_, secret) = token.split_once('.').expect("tag.secret");
        for (key, value) in stored {
            let value = String::from_utf8_lossy(value);
            for needle in [token.as_str(), secret] {
                assert!(!key.contains(needle), "raw token in key {key}");
                assert!(!value.contains(needle), "raw token in the value of {key}");
            }
        }
    }
}

/// Records every key and value written to the store it wraps.
#[derive(Default)]
struct Writes(Mutex<Vec<(String, Vec<u8>)>>);

impl common::Hook for Writes {
    fn before(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        let mut writes = self.0.lock().expect("lock");
        let mut record = |key: &str, value: &[u8]| writes.push((key.to_owned(), value.to_vec()));
        match call {
            common::Call::Set(key, value) | common::Call::SetIfAbsent(key, value) => {
                record(key, value);
            }
            common::Call::CompareAndSet { key, new, .. } => record(key, new),
            common::Call::HashApply(key, changes) => {
                for (_, value) in &changes.set {
                    record(key, value);
                }
            }
            common::Call::HashCompareAndSetField {
                key,
                new: Some(value),
                ..
            } => record(key, value),
            common::Call::Gcra(key) => record(key, b""),
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test]
async fn memory_stores_only_hashes() {
    // A `MemoryStore` that records every key and value written to it.
    let store = common::Intercept::new(MemoryStore::new(), Writes::default());
    let raw = exercise(store.clone()).await;
    let writes = store.hook.0.lock().expect("lock").clone();
    assert!(
        writes.iter().any(|(key, _)| key.contains(":tok:")),
        "{writes:?}"
    );
    assert_no_raw_token(&raw, &writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_only_hashes() {
    let server = redis_or_skip!();
    let raw = exercise(RedisStore::from_url(server.url()).expect("store")).await;
    let stored: Vec<(String, Vec<u8>)> = server
        .keys("*")
        .into_iter()
        .filter_map(|key| server.raw_get(&key).map(|value| (key, value)))
        .collect();
    assert!(
        stored.iter().any(|(key, _)| key.starts_with("rt:")),
        "{stored:?}"
    );
    assert_no_raw_token(&raw, &stored);
}

#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_stores_only_hashes_and_keeps_a_subject_in_one_slot() {
    let cluster = cluster_or_skip!();
    let store = RedisStore::builder()
        .cluster_urls(cluster.urls())
        .build()
        .expect("cluster store");
    let raw = exercise(store).await;
    let mut stored = Vec::new();
    for node in cluster.nodes() {
        for key in node.keys("*") {
            if let Some(value) = node.raw_get(&key) {
                stored.push((key, value));
            }
        }
    }
    assert_no_raw_token(&raw, &stored);
    let slots: HashSet<u16> = stored
        .iter()
        .filter(|(key, _)| key.starts_with("rt:"))
        .map(|(key, _)| cluster.keyslot(key))
        .collect();
    assert_eq!(
        slots.len(),
        1,
        "alice's refresh keys span slots: {stored:?}"
    );
}

/// Login is one write; a rotation two reads, one write and one compare-and-set, whatever
/// the family's age: the history of consumed tokens is never scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trips() {
    let server = redis_or_skip!();
    let manager = tokens(RedisStore::from_url(server.url()).expect("store"));
    // Warm-up: connections, and the compare-and-set script's first load on this server.
    let warm = manager.issue("warm").await.expect("issue");
    rotate(&manager, &warm).await;

    server.reset_stats();
    let login = manager.issue("alice").await.expect("issue");
    let stats = server.command_stats();
    assert_eq!(stats.get("set"), Some(&1), "{stats:?}");
    assert_eq!(server.command_count(), 1, "{stats:?}");

    let mut current = login;
    for _ in 0..3 {
        server.reset_stats();
        current = rotate(&manager, &current).await;
        let stats = server.command_stats();
        assert_eq!(stats.get("get"), Some(&1), "the token: {stats:?}");
        assert_eq!(stats.get("mget"), Some(&1), "its markers: {stats:?}");
        assert_eq!(stats.get("set"), Some(&1), "the successor: {stats:?}");
        assert_eq!(stats.get("evalsha"), Some(&1), "the consume: {stats:?}");
        assert_eq!(server.command_count(), 4, "{stats:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Store failures.

#[tokio::test]
async fn store_down_is_unavailable_and_issues_nothing() {
    let down = tokens(common::DownStore::unavailable());
    let result = down.issue("alice").await;
    let error = result.expect_err("no token without the store");
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error.error_code(), "temporarily_unavailable");
    assert!(std::error::Error::source(&error).is_some(), "source kept");

    // A real token, presented while the store is down.
    let real = tokens(MemoryStore::new())
        .issue("alice")
        .await
        .expect("issue");
    let error = down
        .rotate(&real.refresh_token.token)
        .await
        .expect_err("no token without the store");
    assert!(error.is_unavailable(), "{error:?}");

    let error = down.logout("alice", "s1").await.expect_err("logout");
    assert!(error.is_unavailable(), "{error:?}");
    let error = down
        .logout_everywhere("alice")
        .await
        .expect_err("logout all");
    assert!(error.is_unavailable(), "{error:?}");
    // Malformed tokens are refused before the store is asked.
    assert_invalid_grant(down.rotate("junk").await, Some(InvalidGrant::Malformed));
}

#[tokio::test]
async fn broken_store_is_a_server_error() {
    let broken = tokens(common::DownStore::broken());
    let error = broken.issue("alice").await.expect_err("broken store");
    assert!(!error.is_unavailable(), "{error:?}");
    assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error.error_code(), "server_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable() {
    let mut server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    let manager = tokens(store);
    let login = manager.issue("alice").await.expect("issue");
    server.stop();
    let error = manager
        .rotate(&login.refresh_token.token)
        .await
        .expect_err("store down");
    assert!(error.is_unavailable(), "{error:?}");
    let error = manager.issue("alice").await.expect_err("store down");
    assert!(error.is_unavailable(), "{error:?}");
}

#[tokio::test]
async fn token_response_has_the_oauth_shape() {
    let pair = tokens(MemoryStore::new())
        .issue("alice")
        .await
        .expect("issue");
    let json = serde_json::to_value(pair.to_response()).expect("json");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 900);
    assert_eq!(json["access_token"], pair.access_token.token.as_str());
    assert_eq!(json["refresh_token"], pair.refresh_token.token.as_str());
    let debug = format!("{pair:?} {:?}", pair.to_response());
    assert!(!debug.contains(&pair.refresh_token.token), "{debug}");
    assert!(!debug.contains(&pair.access_token.token), "{debug}");
}

/// Settings that cannot work are refused when the manager is built, naming the setting.
#[test]
fn builder_refuses_settings_that_cannot_work() {
    let century = Duration::from_secs(101 * 365 * 24 * 3600);
    let verify_only = TokenPolicy::builder(
        JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, &[7; 32])
            .expect("key"),
    )
    .build()
    .expect("policy");
    let store = MemoryStore::new;
    let cases = [
        (RefreshTokens::builder(store(), &policy()), "secret"),
        (builder(store()).secret([1u8; 31]), "secret"),
        (builder(store()).secret(b""), "secret"),
        (builder(store()).refresh_ttl(Duration::ZERO), "refresh_ttl"),
        (builder(store()).refresh_ttl(Duration::MAX), "refresh_ttl"),
        (builder(store()).refresh_ttl(century), "refresh_ttl"),
        (
            builder(store()).family_lifetime(Duration::ZERO),
            "family_lifetime",
        ),
        (
            builder(store()).family_lifetime(Duration::MAX),
            "family_lifetime",
        ),
        (builder(store()).grace_period(Duration::MAX), "grace_period"),
        (
            RefreshTokens::builder(store(), &verify_only).secret(SECRET),
            "signing_key",
        ),
    ];
    for (builder, setting) in cases {
        let debug = format!("{builder:?}");
        assert!(!debug.contains("refresh-tests-server-secret"), "{debug}");
        let error = builder.build().expect_err(&debug);
        assert_eq!(error.setting(), setting, "{debug}: {error}");
    }
}

/// A logout naming no session (an empty `sid`, as a token without a `sid` claim would
/// give) revokes nothing, so it is refused before the store is touched: `400
/// invalid_request`, not a `204` that leaves the token valid.
#[tokio::test]
async fn a_logout_with_an_empty_session_id_is_refused_and_writes_nothing() {
    // A store that is down: any write would be a store error instead.
    let down = tokens(common::DownStore::unavailable());
    for error in [
        down.logout("alice", "").await.expect_err("logout"),
        down.revoke_session_families("alice", "")
            .await
            .expect_err("families"),
    ] {
        assert!(!error.is_unavailable(), "{error:?}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.error_code(), "invalid_request");
    }
    let error = down
        .revoker()
        .revoke_session("alice", "", Duration::ZERO)
        .await
        .expect_err("revoke_session");
    assert!(matches!(
        error,
        tower_stateless::revocation::RevokeError::MissingSid
    ));
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
}

/// A logout of an empty or whitespace-only subject (which no token the JWT layer accepts
/// carries) ends nothing: it is refused with `400 invalid_request`, a message naming the
/// subject, and nothing written. Once, the refresh markers were written before the
/// revoker refused the subject: a key per call.
async fn blank_subject_logouts_write_nothing<St: StateStore>(store: St, keys: impl Fn() -> u64) {
    let manager = tokens(store);
    manager.issue("alice").await.expect("issue");
    let before = keys();
    assert!(before > 0, "the login is stored");
    for sub in ["", " ", "\t\n"] {
        let results = [
            ("logout", manager.logout(sub, "somesid").await),
            ("logout_everywhere", manager.logout_everywhere(sub).await),
            (
                "revoke_session_families",
                manager.revoke_session_families(sub, "somesid").await,
            ),
            (
                "revoke_subject_families",
                manager.revoke_subject_families(sub).await.map(|_| ()),
            ),
        ];
        for (name, result) in results {
            let error = result.expect_err(name);
            assert!(
                matches!(error, RefreshError::Revoke(RevokeError::MissingSubject)),
                "{name}({sub:?}): {error:?}"
            );
            assert!(!error.is_unavailable(), "{name}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(error.error_code(), "invalid_request", "{name}");
            #[cfg(feature = "axum")]
            {
                use axum::response::IntoResponse;
                let body = common::json_body(error.into_response()).await;
                assert_eq!(body["error"], "invalid_request", "{name}");
                assert_eq!(
                    body["message"], "the token names no subject (empty `sub` claim)",
                    "{name}"
                );
            }
            assert_eq!(keys(), before, "{name}({sub:?}) wrote to the store");
        }
    }
    // An empty `sid` is still named as such.
    let error = manager.logout(" ", "").await.expect_err("no sid");
    assert!(
        matches!(error, RefreshError::Revoke(RevokeError::MissingSid)),
        "{error:?}"
    );
    assert_eq!(keys(), before);
}

#[tokio::test]
async fn memory_blank_subject_logouts_write_nothing() {
    let store = MemoryStore::new();
    blank_subject_logouts_write_nothing(store.clone(), || store.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blank_subject_logouts_write_nothing() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    blank_subject_logouts_write_nothing(store, || server.dbsize()).await;
}

/// With `axum`, token responses and token endpoint errors are answers of their own, both
/// with `Cache-Control: no-store` (RFC 6749 §5.1, §5.2).
#[cfg(feature = "axum")]
#[tokio::test]
async fn token_answers_are_never_cached() {
    use axum::response::IntoResponse;

    let manager = tokens(MemoryStore::new());
    let pair = manager.issue("alice").await.expect("issue");
    let expected = serde_json::to_value(pair.to_response()).expect("json");
    for response in [pair.to_response().into_response(), pair.into_response()] {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["pragma"], "no-cache");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(common::json_body(response).await, expected);
    }
    let error = manager.rotate("not-a-token").await.expect_err("invalid");
    let response = error.into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(common::json_body(response).await["error"], "invalid_grant");
}
