//! session::Devices ("my devices"), black-box, on MemoryStore, a real Redis and (feature
//! `redis-cluster`) a real Redis Cluster: bind, list, end others, end all, store down.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{Algorithm, IssuedToken, JwtKeySet, TokenPolicy};
use tower_stateless::refresh::{RefreshError, RefreshTokens, TokenPair};
use tower_stateless::revocation::RevokeError;
use tower_stateless::session::{Devices, DevicesError, Session, SessionLayer};
use tower_stateless::store::{
    HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, StateStore, StoreError,
};

const SECRET: &[u8] = b"devices-tests-server-secret-32-bytes!";
const REFRESH_SECRET: &[u8] = b"refresh-tests-server-secret-32-bytes!";

fn policy() -> TokenPolicy {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, &[7; 32])
        .expect("hmac key");
    TokenPolicy::builder(keys)
        .signing_key("v1")
        .build()
        .expect("policy")
}

fn tokens<St: StateStore>(store: St) -> RefreshTokens<St> {
    RefreshTokens::builder(store, &policy())
        .secret(REFRESH_SECRET)
        .build()
        .expect("refresh tokens")
}

/// Devices over `tokens`, ending sessions as a default `SessionLayer` over `store` keeps
/// them.
fn devices_for<St: StateStore>(tokens: RefreshTokens<St>, store: St) -> Devices<St> {
    Devices::new(tokens, &SessionLayer::new(store), SECRET).expect("devices")
}

fn devices<St: StateStore>(store: St) -> Devices<St> {
    devices_for(tokens(store.clone()), store)
}

fn sid(pair: &TokenPair) -> String {
    pair.access_token.claims.sid.clone().expect("sid claim")
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

/// A session stored under the login's `sid`, as `SessionLayer::id_from_sid_claim` keeps it.
async fn store_cart<St: StateStore>(store: &St, sid: &str) {
    let changes = HashChanges {
        clear: false,
        delete: Vec::new(),
        set: vec![("cart:apple".to_owned(), Bytes::from_static(b"3"))],
    };
    let options = HashWriteOptions::new(
        HashMode::Upsert {
            lifetime: Duration::from_secs(600),
        },
        Duration::from_secs(600),
    );
    let outcome = store
        .hash_apply(&format!("sess:{{{sid}}}"), &changes, options)
        .await
        .expect("write session");
    assert_eq!(outcome, HashWriteOutcome::Written);
}

async fn has_session<St: StateStore>(store: &St, sid: &str) -> bool {
    store
        .hash_get_all_and_refresh(&format!("sess:{{{sid}}}"), Duration::from_secs(600))
        .await
        .expect("read session")
        .is_some()
}

/// One request through `layer` as the login `pair` (its `sid` in the claims, as the JWT
/// layer puts them): writes `put` to the session's `cart` when given, and answers what
/// `cart` held before.
async fn cart_through<St: StateStore>(
    layer: &SessionLayer<St>,
    pair: &TokenPair,
    put: Option<u32>,
) -> Option<u32> {
    let service = ServiceBuilder::new().layer(layer.clone()).service_fn(
        move |request: Request<String>| async move {
            let session = request
                .extensions()
                .get::<Session>()
                .cloned()
                .expect("session layer");
            let cart: Option<u32> = session.get("cart").await.expect("read cart");
            if let Some(n) = put {
                session.insert("cart", n).await.expect("write cart");
            }
            Ok::<_, Infallible>(Response::new(serde_json::to_string(&cart).expect("json")))
        },
    );
    let request = Request::get("/cart")
        .extension(pair.access_token.claims.clone())
        .body(String::new())
        .expect("request");
    let response = service.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_value(common::json_body(response).await).expect("cart json")
}

async fn login<St: StateStore>(devices: &Devices<St>, tokens: &RefreshTokens<St>) -> TokenPair {
    let pair = tokens.issue("alice").await.expect("issue");
    devices
        .bind("alice", &sid(&pair), Some("test-agent"))
        .await
        .expect("bind");
    pair
}

async fn bind_and_list_show_handles_not_session_ids<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    let b = login(&devices, &tokens).await;
    // Binding again is idempotent.
    devices.bind("alice", &sid(&a), None).await.expect("rebind");
    let listed = devices.list("alice", Some(&sid(&a))).await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    for device in &listed {
        assert_ne!(device.id, sid(&a));
        assert_ne!(device.id, sid(&b));
        assert!(!device.id.contains(&sid(&a)) && !device.id.contains(&sid(&b)));
        assert!(device.last_seen >= device.created);
        assert_eq!(device.user_agent.as_deref(), Some("test-agent"));
    }
    let current: Vec<_> = listed.iter().filter(|d| d.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].id, devices.handle(&sid(&a)));
    // Another user sees none of them.
    assert!(devices.list("bob", None).await.expect("list").is_empty());
}

async fn expired_logins_are_not_listed<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let short = devices_for(tokens.clone(), store.clone())
        .login_lifetime(Duration::from_secs(1))
        .expect("lifetime");
    login(&short, &tokens).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(short.list("alice", None).await.expect("list").is_empty());
    // A new login after the old one expired is listed alone.
    let fresh = login(&devices(store.clone()), &tokens).await;
    let listed = short.list("alice", Some(&sid(&fresh))).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].current);
}

async fn end_others_ends_tokens_and_session_data_of_other_logins<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    let b = login(&devices, &tokens).await;
    let c = login(&devices, &tokens).await;
    for pair in [&a, &b, &c] {
        store_cart(&store, &sid(pair)).await;
    }
    assert_eq!(devices.end_others("alice", &sid(&a)).await.expect("end"), 2);
    for ended in [&b, &c] {
        assert_eq!(
            access_status(&store, &ended.access_token).await,
            StatusCode::UNAUTHORIZED
        );
        let error = tokens
            .rotate(&ended.refresh_token.token)
            .await
            .expect_err("ended refresh token");
        assert!(error.is_invalid_grant(), "{error:?}");
        assert!(!has_session(&store, &sid(ended)).await);
    }
    // The current login keeps working.
    assert_eq!(access_status(&store, &a.access_token).await, StatusCode::OK);
    assert!(has_session(&store, &sid(&a)).await);
    tokens
        .rotate(&a.refresh_token.token)
        .await
        .expect("current login refreshes");
    let listed = devices.list("alice", Some(&sid(&a))).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].current);
    // Nothing else to end.
    assert_eq!(devices.end_others("alice", &sid(&a)).await.expect("end"), 0);
}

async fn end_all_and_end_one<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    let b = login(&devices, &tokens).await;
    assert!(devices
        .end("alice", &devices.handle(&sid(&b)))
        .await
        .expect("end one"));
    assert!(!devices.end("alice", "no-such-handle").await.expect("end"));
    assert_eq!(
        access_status(&store, &b.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(access_status(&store, &a.access_token).await, StatusCode::OK);
    assert_eq!(devices.end_all("alice").await.expect("end all"), 1);
    assert_eq!(
        access_status(&store, &a.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(devices.list("alice", None).await.expect("list").is_empty());
}

async fn logins_over_the_limit_end_the_least_recently_seen<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone()).max_devices(2).expect("max");
    let mut pairs = Vec::new();
    for _ in 0..3 {
        pairs.push(login(&devices, &tokens).await);
    }
    let listed = devices.list("alice", None).await.expect("list");
    assert_eq!(listed.len(), 2);
    // The newest login is kept; exactly one older login was ended whole, not just
    // unlisted (of logins seen in the same second, any one).
    assert!(listed
        .iter()
        .any(|d| d.id == devices.handle(&sid(&pairs[2]))));
    let mut ended = 0;
    for pair in &pairs {
        let status = access_status(&store, &pair.access_token).await;
        let is_listed = listed.iter().any(|d| d.id == devices.handle(&sid(pair)));
        assert_eq!(status == StatusCode::OK, is_listed, "{status}");
        ended += usize::from(!is_listed);
    }
    assert_eq!(ended, 1);
}

async fn is_live_and_touch_never_bring_back_an_ended_login<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    assert!(devices.is_live("alice", &sid(&a)).await.expect("live"));
    assert!(!devices.is_live("bob", &sid(&a)).await.expect("other user"));
    let before = devices.list("alice", None).await.expect("list");
    // Within a minute of the last write, touch writes nothing.
    devices.touch("alice", &sid(&a)).await.expect("touch");
    assert_eq!(devices.list("alice", None).await.expect("list"), before);
    assert_eq!(devices.end_all("alice").await.expect("end"), 1);
    assert!(!devices.is_live("alice", &sid(&a)).await.expect("ended"));
    // Touching an ended (or never bound) login leaves it unlisted.
    devices.touch("alice", &sid(&a)).await.expect("touch");
    devices.touch("alice", "never-bound").await.expect("touch");
    assert!(devices.list("alice", None).await.expect("list").is_empty());
}

/// Refresh through `Devices::rotate`: a reused refresh token ends its whole login (tokens,
/// session data, listing), not only its family; other logins are untouched.
async fn reuse_through_devices_ends_the_whole_login<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    let b = login(&devices, &tokens).await;
    for pair in [&a, &b] {
        store_cart(&store, &sid(pair)).await;
    }
    let rotated = devices
        .rotate(&a.refresh_token.token)
        .await
        .expect("first exchange");
    assert_eq!(sid(&rotated), sid(&a));
    assert_eq!(devices.list("alice", None).await.expect("list").len(), 2);
    assert!(has_session(&store, &sid(&a)).await);

    // The used token again: reuse.
    let error = devices
        .rotate(&a.refresh_token.token)
        .await
        .expect_err("reuse");
    assert_eq!(
        error.invalid_grant(),
        Some(tower_stateless::refresh::InvalidGrant::Reused)
    );
    let listed = devices.list("alice", None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, devices.handle(&sid(&b)));
    assert!(!has_session(&store, &sid(&a)).await);
    assert_eq!(
        access_status(&store, &rotated.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    let error = devices
        .rotate(&rotated.refresh_token.token)
        .await
        .expect_err("the successor ended with its family");
    assert!(error.is_invalid_grant(), "{error:?}");

    // The other login keeps working.
    assert!(has_session(&store, &sid(&b)).await);
    assert_eq!(access_status(&store, &b.access_token).await, StatusCode::OK);
    devices
        .rotate(&b.refresh_token.token)
        .await
        .expect("the other login refreshes");

    // Malformed, unknown and forged tokens end nothing.
    let forged = format!("{}x", b.refresh_token.token);
    for bad in ["", "not-a-token", forged.as_str()] {
        let error = devices.rotate(bad).await.expect_err("bad token");
        assert!(error.is_invalid_grant(), "{bad:?}: {error:?}");
    }
    assert_eq!(devices.list("alice", None).await.expect("list").len(), 1);
    assert!(has_session(&store, &sid(&b)).await);
}

/// `Devices::logout` ends the caller's login whole (tokens, session data, entry), also
/// one that was never bound; `logout_everywhere` every login, and none stays listed.
async fn logout_through_devices_unlists_the_login<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    let b = login(&devices, &tokens).await;
    store_cart(&store, &sid(&a)).await;
    devices.logout("alice", &sid(&a)).await.expect("logout");
    let listed = devices.list("alice", None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, devices.handle(&sid(&b)));
    assert!(!has_session(&store, &sid(&a)).await);
    assert_eq!(
        access_status(&store, &a.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    let error = devices
        .rotate(&a.refresh_token.token)
        .await
        .expect_err("logged out");
    assert!(error.is_invalid_grant(), "{error:?}");
    // Again: nothing listed any more, still fine.
    devices
        .logout("alice", &sid(&a))
        .await
        .expect("logout again");

    // A login that was never bound is logged out all the same.
    let unbound = tokens.issue("alice").await.expect("issue");
    devices
        .logout("alice", &sid(&unbound))
        .await
        .expect("logout");
    assert_eq!(
        access_status(&store, &unbound.access_token).await,
        StatusCode::UNAUTHORIZED
    );

    // An empty sid names no login: refused, nothing ended.
    let error = devices.logout("alice", "").await.expect_err("empty sid");
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error.error_code(), "invalid_request");
    assert_eq!(access_status(&store, &b.access_token).await, StatusCode::OK);

    let c = login(&devices, &tokens).await;
    assert_eq!(
        devices
            .logout_everywhere("alice")
            .await
            .expect("everywhere"),
        2
    );
    assert!(devices.list("alice", None).await.expect("list").is_empty());
    for pair in [&b, &c] {
        assert_eq!(
            access_status(&store, &pair.access_token).await,
            StatusCode::UNAUTHORIZED
        );
        assert!(devices.rotate(&pair.refresh_token.token).await.is_err());
    }
}

/// A `SessionLayer` with its own key prefix: `Devices` built from it ends a login's
/// session data where that layer keeps it (written and read back through the layer, by
/// the login's `sid`), by `end`, `logout` and a reused refresh token alike.
async fn ending_a_login_deletes_its_session_under_the_layers_prefix<St: StateStore>(store: St) {
    let layer = SessionLayer::new(store.clone())
        .key_prefix("shop-sess:")
        .expect("prefix")
        .id_from_sid_claim(true);
    let tokens = tokens(store.clone());
    let devices = Devices::new(tokens.clone(), &layer, SECRET).expect("devices");
    let (a, b, c, d) = (
        login(&devices, &tokens).await,
        login(&devices, &tokens).await,
        login(&devices, &tokens).await,
        login(&devices, &tokens).await,
    );
    for (n, pair) in [&a, &b, &c, &d].into_iter().enumerate() {
        let n = u32::try_from(n).expect("small");
        assert_eq!(cart_through(&layer, pair, Some(n)).await, None);
        assert_eq!(cart_through(&layer, pair, None).await, Some(n));
    }
    // The layer keeps the sessions under its prefix, not the default one.
    assert!(!has_session(&store, &sid(&a)).await);
    let at_prefix = |sid: String| {
        let store = store.clone();
        async move {
            store
                .hash_get_all_and_refresh(&format!("shop-sess:{{{sid}}}"), Duration::from_secs(600))
                .await
                .expect("read session")
                .is_some()
        }
    };
    assert!(at_prefix(sid(&a)).await);

    assert!(devices
        .end("alice", &devices.handle(&sid(&a)))
        .await
        .expect("end"));
    devices.logout("alice", &sid(&b)).await.expect("logout");
    let rotated = devices
        .rotate(&c.refresh_token.token)
        .await
        .expect("rotate");
    devices
        .rotate(&c.refresh_token.token)
        .await
        .expect_err("reuse ends the login");
    assert_eq!(sid(&rotated), sid(&c));
    for ended in [&a, &b, &c] {
        assert!(!at_prefix(sid(ended)).await);
        assert_eq!(cart_through(&layer, ended, None).await, None);
    }
    // The login left alone keeps its cart.
    assert_eq!(cart_through(&layer, &d, None).await, Some(3));
    assert_eq!(devices.end_all("alice").await.expect("end all"), 1);
    assert_eq!(cart_through(&layer, &d, None).await, None);
}

/// `bind` refuses an empty or whitespace-only subject (every such login would share one
/// index) and an empty session id (a login no logout could end), as `RefreshTokens::issue` refuses
/// them, before the store is touched: nothing is listed, and the user's other logins
/// stay as they were.
async fn bind_refuses_an_empty_subject_or_session_id<St: StateStore>(store: St) {
    let tokens = tokens(store.clone());
    let devices = devices(store.clone());
    let a = login(&devices, &tokens).await;
    let before = devices.list("alice", None).await.expect("list");
    for blank in [" ", "\t", " \n\r ", "\u{a0}"] {
        let error = devices
            .bind(blank, &sid(&a), None)
            .await
            .expect_err("blank sub");
        assert!(
            matches!(error, DevicesError::EmptySubject),
            "{blank:?}: {error:?}"
        );
        assert!(devices.list(blank, None).await.expect("list").is_empty());
    }
    let empty_sub = devices
        .bind("", &sid(&a), None)
        .await
        .expect_err("empty sub");
    assert!(
        matches!(empty_sub, DevicesError::EmptySubject),
        "{empty_sub:?}"
    );
    let empty_sid = devices
        .bind("alice", "", Some("agent"))
        .await
        .expect_err("empty sid");
    assert!(
        matches!(empty_sid, DevicesError::EmptySessionId),
        "{empty_sid:?}"
    );
    for error in [&empty_sub, &empty_sid] {
        assert!(!error.is_unavailable());
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.error_code(), "devices_error");
    }
    assert!(devices.list("", None).await.expect("list").is_empty());
    assert_eq!(devices.list("alice", None).await.expect("list"), before);
    // Nothing unendable was left behind: ending every login still works.
    assert_eq!(devices.end_all("alice").await.expect("end all"), 1);
}

backend_tests!(
    bind_refuses_an_empty_subject_or_session_id,
    ending_a_login_deletes_its_session_under_the_layers_prefix,
    logout_through_devices_unlists_the_login,
    reuse_through_devices_ends_the_whole_login,
    bind_and_list_show_handles_not_session_ids,
    expired_logins_are_not_listed,
    end_others_ends_tokens_and_session_data_of_other_logins,
    end_all_and_end_one,
    logins_over_the_limit_end_the_least_recently_seen,
    a_failure_midway_is_reported_and_a_retry_completes,
    is_live_and_touch_never_bring_back_an_ended_login,
);

#[test]
fn bad_settings_are_refused() {
    let store = tower_stateless::store::MemoryStore::new();
    let tokens = tokens(store.clone());
    let layer = SessionLayer::new(store);
    let short = Devices::new(tokens.clone(), &layer, [1u8; 31]).expect_err("short secret");
    assert_eq!(short.setting(), "secret");
    let devices = Devices::new(tokens, &layer, SECRET).expect("devices");
    for bad in [Duration::ZERO, Duration::from_millis(999)] {
        let error = devices.clone().login_lifetime(bad).expect_err("lifetime");
        assert_eq!(error.setting(), "login_lifetime");
    }
    let error = devices
        .clone()
        .login_lifetime(Duration::from_secs(u64::MAX))
        .expect_err("too long");
    assert_eq!(error.setting(), "login_lifetime");
    for bad in [0, 1001] {
        let error = devices.clone().max_devices(bad).expect_err("max");
        assert_eq!(error.setting(), "max_devices");
    }
}

#[tokio::test]
async fn store_down_is_unavailable() {
    let devices = devices(common::DownStore::unavailable());
    let errors: Vec<DevicesError> = vec![
        devices.bind("alice", "sid", None).await.expect_err("bind"),
        devices.list("alice", None).await.expect_err("list"),
        devices.end_others("alice", "sid").await.expect_err("end"),
        devices.end_all("alice").await.expect_err("end all"),
        devices.touch("alice", "sid").await.expect_err("touch"),
    ];
    for error in errors {
        assert!(error.is_unavailable(), "{error:?}");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.error_code(), "store_unavailable");
    }
    // An empty subject or session id is refused before the store is asked.
    let error = devices.bind("", "sid", None).await.expect_err("empty sub");
    assert!(matches!(error, DevicesError::EmptySubject), "{error:?}");
    let error = devices
        .bind("alice", "", None)
        .await
        .expect_err("empty sid");
    assert!(matches!(error, DevicesError::EmptySessionId), "{error:?}");
    // A real token, exchanged while the store is down: nothing issued.
    let memory = tower_stateless::store::MemoryStore::new();
    let real = tokens(memory).issue("alice").await.expect("issue");
    let error = devices
        .rotate(&real.refresh_token.token)
        .await
        .expect_err("no pair without the store");
    assert!(error.is_unavailable(), "{error:?}");
    let broken = crate::devices(common::DownStore::broken());
    let error = broken.list("alice", None).await.expect_err("list");
    assert!(!error.is_unavailable());
    assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error.error_code(), "devices_error");
}

/// With `axum`, a `DevicesError` is the crate's JSON error response, like every other error
/// a handler sees: its status, its code, `Retry-After` on a `503`, and no detail of the
/// store in the body.
#[cfg(feature = "axum")]
#[tokio::test]
async fn devices_error_is_the_crates_json_error_response() {
    use axum::response::IntoResponse;

    let down = devices(common::DownStore::unavailable());
    let res = down
        .list("alice", None)
        .await
        .expect_err("list")
        .into_response();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    let json = common::json_body(res).await;
    assert_eq!(json["error"], "store_unavailable");

    let broken = devices(common::DownStore::broken());
    let res = broken
        .list("alice", None)
        .await
        .expect_err("list")
        .into_response();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(res.headers().get("retry-after").is_none());
    let json = common::json_body(res).await;
    assert_eq!(json["error"], "devices_error");
    assert_eq!(json["message"], "the logins could not be listed or ended");

    let res = broken
        .bind("", "sid", None)
        .await
        .expect_err("empty sub")
        .into_response();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let json = common::json_body(res).await;
    assert_eq!(json["error"], "devices_error");
    assert_eq!(json["message"], "the login could not be recorded");
}

/// A logout (or end) of an empty or whitespace-only subject ends nothing and writes
/// nothing: `400 invalid_request`, a message naming the subject, the store's key count
/// unchanged. Once, `logout` and `logout_everywhere` wrote refresh markers before the
/// revoker refused the subject.
async fn blank_subject_logouts_write_nothing<St: StateStore>(store: St, keys: impl Fn() -> u64) {
    let tokens = tokens(store.clone());
    let devices = devices_for(tokens.clone(), store);
    let alice = login(&devices, &tokens).await;
    let before = keys();
    assert!(before > 0, "the login is stored");
    let handle = devices.handle(&sid(&alice));
    for sub in ["", " ", "\t\n"] {
        let results: Vec<(&str, Result<(), DevicesError>)> = vec![
            ("logout", devices.logout(sub, "othersid").await),
            (
                "logout_everywhere",
                devices.logout_everywhere(sub).await.map(|_| ()),
            ),
            ("end", devices.end(sub, &handle).await.map(|_| ())),
            (
                "end_others",
                devices.end_others(sub, "othersid").await.map(|_| ()),
            ),
            ("end_all", devices.end_all(sub).await.map(|_| ())),
        ];
        for (name, result) in results {
            let error = result.expect_err(name);
            assert!(
                matches!(
                    &error,
                    DevicesError::Tokens(RefreshError::Revoke(RevokeError::MissingSubject))
                ),
                "{name}({sub:?}): {error:?}"
            );
            assert!(!error.is_unavailable(), "{name}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(error.error_code(), "invalid_request", "{name}");
            #[cfg(feature = "axum")]
            {
                use axum::response::IntoResponse;
                let res = error.into_response();
                let json = common::json_body(res).await;
                assert_eq!(json["error"], "invalid_request", "{name}");
                assert_eq!(
                    json["message"], "the token names no subject (empty `sub` claim)",
                    "{name}"
                );
            }
            assert_eq!(keys(), before, "{name}({sub:?}) wrote to the store");
        }
    }
    // An empty `sid` is still named as such, before the subject.
    let error = devices.logout(" ", "").await.expect_err("no sid");
    assert!(
        matches!(
            &error,
            DevicesError::Tokens(RefreshError::Revoke(RevokeError::MissingSid))
        ),
        "{error:?}"
    );
    #[cfg(feature = "axum")]
    {
        use axum::response::IntoResponse;
        let json = common::json_body(error.into_response()).await;
        assert_eq!(json["message"], "the token names no login (no `sid` claim)");
    }
    assert_eq!(keys(), before);
    // Alice's login was not touched.
    assert_eq!(devices.list("alice", None).await.expect("list").len(), 1);
    assert_eq!(
        access_status(tokens.store(), &alice.access_token).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn memory_blank_subject_logouts_write_nothing() {
    let store = tower_stateless::store::MemoryStore::new();
    blank_subject_logouts_write_nothing(store.clone(), || store.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blank_subject_logouts_write_nothing() {
    let server = redis_or_skip!();
    let store = tower_stateless::store::RedisStore::from_url(server.url()).expect("store");
    blank_subject_logouts_write_nothing(store, || server.dbsize()).await;
}

/// `delete` fails while set: the store goes down in the middle of ending a login (its
/// tokens revoked, its session not yet deleted).
#[derive(Default)]
struct FailDelete(AtomicBool);

impl common::Hook for FailDelete {
    fn before(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        if matches!(call, common::Call::Delete(_)) && self.0.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected failure (test)".into()));
        }
        Ok(())
    }
}

/// The store fails after a login's tokens were revoked and before its session data was
/// deleted: the call fails, the login stays listed, and a retry ends it completely.
async fn a_failure_midway_is_reported_and_a_retry_completes<St: StateStore>(store: St) {
    let flaky = common::Intercept::new(store.clone(), FailDelete::default());
    let tokens = tokens(flaky.clone());
    let devices = devices_for(tokens.clone(), flaky.clone());
    let a = login(&devices, &tokens).await;
    let b = login(&devices, &tokens).await;
    store_cart(&store, &sid(&b)).await;
    flaky.hook.0.store(true, Ordering::SeqCst);
    let error = devices
        .end_others("alice", &sid(&a))
        .await
        .expect_err("half-done is an error");
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(
        devices.list("alice", None).await.expect("list").len(),
        2,
        "a login not ended completely stays listed"
    );
    assert!(has_session(&store, &sid(&b)).await);
    flaky.hook.0.store(false, Ordering::SeqCst);
    assert_eq!(
        devices.end_others("alice", &sid(&a)).await.expect("retry"),
        1
    );
    assert!(!has_session(&store, &sid(&b)).await);
    assert_eq!(
        access_status(&store, &b.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(devices.list("alice", None).await.expect("list").len(), 1);
}

/// A refresh through `Devices::rotate` is the rotation's four round trips plus one read of
/// the login index ("last seen" is written at most once a minute), proved by the commands
/// Redis received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rotate_round_trips() {
    let server = redis_or_skip!();
    let store = tower_stateless::store::RedisStore::from_url(server.url()).expect("store");
    let tokens = tokens(store.clone());
    let devices = devices(store);
    // Warm-up: connections and the scripts' first load on this server.
    let warm = login(&devices, &tokens).await;
    let mut current = devices
        .rotate(&warm.refresh_token.token)
        .await
        .expect("warm-up");
    for _ in 0..3 {
        server.reset_stats();
        current = devices
            .rotate(&current.refresh_token.token)
            .await
            .expect("rotate");
        let stats = server.command_stats();
        let expected: std::collections::HashMap<String, u64> = [
            // The rotation: the token, its markers, the successor, the consume.
            ("get", 1),
            ("mget", 1),
            ("set", 1),
            ("evalsha", 1),
            // The index read, one transaction: `MULTI HGETALL PEXPIRE TIME EXEC`.
            ("multi", 1),
            ("hgetall", 1),
            ("pexpire", 1),
            ("time", 1),
            ("exec", 1),
        ]
        .into_iter()
        .map(|(command, n)| (command.to_owned(), n))
        .collect();
        assert_eq!(stats, expected, "five round trips");
    }
}

/// `Devices::logout` of a listed login is five round trips (the index read, the login's
/// family and session markers, its session data, the index write); `logout_everywhere` of
/// `n` listed logins `3n + 4` (the two subject cutoffs, then `end_all`'s `3n + 2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_logout_round_trips() {
    let server = redis_or_skip!();
    let store = tower_stateless::store::RedisStore::from_url(server.url()).expect("store");
    let tokens = tokens(store.clone());
    let devices = devices(store);
    // Warm-up: connections and the scripts' first load on this server.
    let warm = login(&devices, &tokens).await;
    devices.logout("alice", &sid(&warm)).await.expect("warm-up");

    let a = login(&devices, &tokens).await;
    server.reset_stats();
    devices.logout("alice", &sid(&a)).await.expect("logout");
    let stats = server.command_stats();
    // One transaction (`MULTI HGETALL PEXPIRE TIME EXEC`) reads the index.
    assert_eq!(stats.get("multi"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("set"), Some(&2), "the markers: {stats:?}");
    assert_eq!(stats.get("del"), Some(&1), "the session data: {stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&1), "the index write: {stats:?}");
    assert_eq!(server.command_count() - 4, 5, "five round trips: {stats:?}");

    for _ in 0..3 {
        login(&devices, &tokens).await;
    }
    server.reset_stats();
    assert_eq!(devices.logout_everywhere("alice").await.expect("all"), 3);
    let stats = server.command_stats();
    // 2 cutoffs + index read + 3 × 3 + index write = 13 round trips, the index read being
    // one transaction of five commands.
    assert_eq!(stats.get("multi"), Some(&1), "{stats:?}");
    assert_eq!(
        server.command_count() - 4,
        13,
        "3n + 4 round trips: {stats:?}"
    );
}

/// The README's round trips for the rest of `Devices`: `list` 1, `bind` 2, ending `n`
/// logins (`end`, `end_others`, `end_all`) `3n + 2`, counted as the socket reads Redis
/// makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_list_bind_and_end_round_trips() {
    let server = redis_or_skip!();
    let store = tower_stateless::store::RedisStore::from_url(server.url()).expect("store");
    let tokens = tokens(store.clone());
    let devices = devices(store);
    // Warm-up: connections and the scripts' first load on this server.
    let warm = login(&devices, &tokens).await;
    devices.list("alice", None).await.expect("warm-up");
    devices.end_all("alice").await.expect("warm-up");
    drop(warm);

    let mut pairs = Vec::new();
    for _ in 0..4 {
        pairs.push(tokens.issue("alice").await.expect("issue"));
    }
    for pair in &pairs {
        server.reset_stats();
        devices
            .bind("alice", &sid(pair), Some("test-agent"))
            .await
            .expect("bind");
        assert_eq!(
            server.round_trips(),
            2,
            "bind: {:?}",
            server.command_stats()
        );
    }

    server.reset_stats();
    let listed = devices
        .list("alice", Some(&sid(&pairs[0])))
        .await
        .expect("list");
    assert_eq!(listed.len(), 4);
    assert_eq!(
        server.round_trips(),
        1,
        "list: {:?}",
        server.command_stats()
    );

    // End one (n = 1).
    let last = listed
        .iter()
        .find(|d| !d.current)
        .expect("another login")
        .id
        .clone();
    server.reset_stats();
    assert!(devices.end("alice", &last).await.expect("end"));
    assert_eq!(server.round_trips(), 5, "end: {:?}", server.command_stats());

    // End the two others (n = 2).
    server.reset_stats();
    let ended = devices
        .end_others("alice", &sid(&pairs[0]))
        .await
        .expect("end_others");
    assert_eq!(ended, 2);
    assert_eq!(
        server.round_trips(),
        8,
        "end_others: {:?}",
        server.command_stats()
    );

    // End the last one through end_all (n = 1).
    server.reset_stats();
    assert_eq!(devices.end_all("alice").await.expect("end_all"), 1);
    assert_eq!(
        server.round_trips(),
        5,
        "end_all: {:?}",
        server.command_stats()
    );
    assert!(devices.list("alice", None).await.expect("list").is_empty());
}
