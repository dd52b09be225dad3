//! Black-box tests of `oidc::RemoteJwks`, issuer-bound keys and `RequireScopeLayer`,
//! against a real HTTP provider (axum on 127.0.0.1) that serves discovery and JWKS and
//! counts the requests it gets.
//!
//! Test tokens are signed with the PEM fixtures under `tests/fixtures/jwt/`. Nothing here
//! asserts timing: refreshes are driven by explicit `refresh()` calls or short intervals
//! polled up to a generous deadline.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, LOCATION};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{
    Algorithm, JwtAuthLayer, JwtKeySet, KeyError, RequireScopeLayer, TokenPolicy,
};
use tower_stateless::oidc::{OidcError, RemoteJwks, RemoteKeys};
use tower_stateless::response::ResponseBody;

const AUD: &str = "api";
const DEADLINE: Duration = Duration::from_secs(20);
const HMAC_SECRET: &[u8] = b"our-own-secret-our-own-secret-our-own!!";

// ---------------------------------------------------------------------------------------
// Keys and tokens

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn private(name: &str, alg: Algorithm) -> EncodingKey {
    // Installs the crypto provider when both backends are compiled in.
    let _ = JwtKeySet::new();
    let pem = fixture(name);
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap()
}

fn rsa1() -> EncodingKey {
    private("rsa1-private.pem", Algorithm::RS256)
}

fn rsa2() -> EncodingKey {
    private("rsa2-private.pem", Algorithm::RS256)
}

/// The public JWK of `key`, with `kid` and (when given) `alg`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, declare_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    if !declare_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

/// The `x5c` form (standard base64 DER) of a certificate fixture. The certificates are
/// self-signed, made once with OpenSSL 3 from the key fixtures beside them:
///
/// ```text
/// openssl req -x509 -new -key rsa1-private.pem -subj /CN=x5c-rsa1 -days 36500 -sha256 -out rsa1-cert.pem
/// openssl req -x509 -new -key ec256-private.pem -subj /CN=x5c-ec256 -days 36500 -sha256 -out ec256-cert.pem
/// openssl req -x509 -new -key ed25519-private.pem -subj /CN=x5c-ed25519 -days 36500 -out ed25519-cert.pem
/// openssl req -x509 -newkey rsa:1024 -nodes -keyout /dev/null -subj /CN=x5c-weak -days 36500 -sha256 -out rsa1024-cert.pem
/// openssl ec -in ec256-private.pem -conv_form compressed -out /tmp/ec256-compressed.pem
/// openssl req -x509 -new -key /tmp/ec256-compressed.pem -subj /CN=x5c-ec256-compressed -days 36500 -sha256 -out ec256-compressed-cert.pem
/// ```
fn x5c(name: &str) -> String {
    let pem = String::from_utf8(fixture(name)).unwrap();
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str) -> Value {
    json!({"sub":"alice","iss":iss,"aud":AUD,"exp":now() + 600,"iat":now()})
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Signs arbitrary header JSON (for `alg` values jsonwebtoken would not pair with a key).
fn forge(alg: Algorithm, key: &EncodingKey, header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

// ---------------------------------------------------------------------------------------
// The provider

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    /// 503 on every request.
    Down,
    /// Never answers in time.
    Slow,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with an endless body, streamed without `Content-Length`.
    Huge,
}

struct Provider {
    base: String,
    issuer_in_discovery: Mutex<String>,
    jwks: Mutex<Value>,
    mode: Mutex<Mode>,
    cache_control: Mutex<Option<String>>,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
}

impl Provider {
    /// A provider on a free loopback port, serving `jwks`.
    async fn start(jwks: Value) -> Arc<Provider> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let provider = Arc::new(Provider {
            issuer_in_discovery: Mutex::new(base.clone()),
            base,
            jwks: Mutex::new(jwks),
            mode: Mutex::new(Mode::Normal),
            cache_control: Mutex::new(None),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_document))
            .route("/moved", get(|| async { redirect("/jwks") }))
            .route("/loop-a", get(|| async { redirect("/loop-b") }))
            .route("/loop-b", get(|| async { redirect("/loop-a") }))
            .with_state(Arc::clone(&provider));
        tokio::spawn(async move { axum::serve(listener, app).await });
        provider
    }

    fn issuer(&self) -> &str {
        &self.base
    }

    fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().unwrap() = jwks;
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.discovery_hits.load(Ordering::SeqCst)
    }

    /// Discovery from this provider, plain http allowed, with test-sized bounds.
    fn discover(&self) -> RemoteJwks {
        RemoteJwks::discover(self.issuer())
            .allow_http(true)
            .startup_timeout(Duration::from_secs(5))
    }
}

fn redirect(to: &'static str) -> AxumResponse {
    (StatusCode::FOUND, [(LOCATION, to)]).into_response()
}

async fn misbehave(mode: Mode) -> Option<AxumResponse> {
    match mode {
        Mode::Normal => None,
        Mode::Down => Some(StatusCode::SERVICE_UNAVAILABLE.into_response()),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Some(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Mode::Garbage => Some("<html>this is not json".into_response()),
        Mode::Huge => Some(
            Response::builder()
                .header("content-type", "application/json")
                .body(axum::body::Body::new(Endless))
                .unwrap()
                .into_response(),
        ),
    }
}

async fn discovery(State(p): State<Arc<Provider>>) -> AxumResponse {
    p.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let mode = *p.mode.lock().unwrap();
    if let Some(response) = misbehave(mode).await {
        return response;
    }
    let issuer = p.issuer_in_discovery.lock().unwrap().clone();
    axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", p.base)})).into_response()
}

async fn jwks_document(State(p): State<Arc<Provider>>) -> AxumResponse {
    p.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let mode = *p.mode.lock().unwrap();
    if let Some(response) = misbehave(mode).await {
        return response;
    }
    let body = p.jwks.lock().unwrap().clone();
    let mut response = axum::Json(body).into_response();
    if let Some(cc) = p.cache_control.lock().unwrap().clone() {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, cc.parse().unwrap());
    }
    response
}

/// A JSON-looking body that never ends: `{"keys":[` then spaces, 16 KiB at a time.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 16 * 1024])))))
    }
}

// ---------------------------------------------------------------------------------------
// The service under test

type Svc =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The one place a layer is made from keys, issuer and audience.
fn auth_layer(keys: JwtKeySet, issuer: Option<&str>, audience: Option<&str>) -> JwtAuthLayer {
    let mut policy = TokenPolicy::builder(keys);
    if let Some(issuer) = issuer {
        policy = policy.issuer(issuer);
    }
    if let Some(audience) = audience {
        policy = policy.audience(audience);
    }
    policy.build().expect("a valid policy").auth_layer()
}

fn ok_service() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn service(layer: JwtAuthLayer) -> Svc {
    BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(ok_service()))
}

/// A service for tokens of `provider` (its issuer, audience `api`).
fn provider_service(remote: &RemoteKeys, provider: &Provider) -> Svc {
    service(auth_layer(
        remote.key_set(),
        Some(provider.issuer()),
        Some(AUD),
    ))
}

async fn call(svc: &Svc, token: &str) -> Response<ResponseBody<Full<Bytes>>> {
    let request = Request::get("/orders")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    svc.clone().oneshot(request).await.unwrap()
}

async fn status(svc: &Svc, token: &str) -> StatusCode {
    call(svc, token).await.status()
}

/// Polls `condition` every 20 ms until it holds, failing after a generous deadline.
async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn one_key_jwks() -> Value {
    json!({"keys": [jwk(&rsa1(), Algorithm::RS256, "k1", true)]})
}

// ---------------------------------------------------------------------------------------
// Discovery, transport and startup

#[tokio::test]
async fn discovery_then_jwks_verifies_provider_tokens() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = provider.discover().build().await.unwrap();
    assert_eq!(remote.issuer(), Some(provider.issuer()));
    assert_eq!(remote.key_set().len(), 1);
    assert_eq!((provider.discovery_hits(), provider.jwks_hits()), (1, 1));

    let svc = provider_service(&remote, &provider);
    let token = sign(
        &rsa1(),
        Algorithm::RS256,
        Some("k1"),
        &claims(provider.issuer()),
    );
    assert_eq!(status(&svc, &token).await, StatusCode::OK);
    // Verification does no I/O.
    for _ in 0..20 {
        assert_eq!(status(&svc, &token).await, StatusCode::OK);
    }
    assert_eq!((provider.discovery_hits(), provider.jwks_hits()), (1, 1));
}

#[tokio::test]
async fn a_jwks_url_works_without_discovery() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = RemoteJwks::jwks_url(format!("{}/jwks", provider.base))
        .allow_http(true)
        .build()
        .await
        .unwrap();
    assert_eq!(remote.issuer(), None);
    assert_eq!(provider.discovery_hits(), 0);
    let svc = provider_service(&remote, &provider);
    let token = sign(
        &rsa1(),
        Algorithm::RS256,
        Some("k1"),
        &claims(provider.issuer()),
    );
    assert_eq!(status(&svc, &token).await, StatusCode::OK);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let provider = Provider::start(one_key_jwks()).await;
    let err = RemoteJwks::discover(provider.issuer())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::HttpNotAllowed { .. }), "{err:?}");
    let err = RemoteJwks::jwks_url(format!("{}/jwks", provider.base))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::HttpNotAllowed { .. }), "{err:?}");
    assert_eq!(provider.discovery_hits() + provider.jwks_hits(), 0);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused_at_once() {
    let provider = Provider::start(one_key_jwks()).await;
    *provider.issuer_in_discovery.lock().unwrap() = "https://evil.test".to_owned();
    let err = provider.discover().build().await.unwrap_err();
    assert!(
        matches!(&err, OidcError::IssuerMismatch { found, .. } if found == "https://evil.test"),
        "{err:?}"
    );
    assert_eq!(provider.jwks_hits(), 0, "the named jwks_uri is not fetched");
}

#[tokio::test]
async fn bad_settings_are_refused() {
    let provider = Provider::start(one_key_jwks()).await;
    for (remote, setting) in [
        (
            provider.discover().algorithms([Algorithm::HS256]),
            "algorithms",
        ),
        (provider.discover().algorithms([]), "algorithms"),
        (provider.discover().timeout(Duration::ZERO), "timeout"),
        (provider.discover().max_body_bytes(0), "max_body_bytes"),
        (
            provider
                .discover()
                .min_refresh_interval(Duration::from_secs(600)),
            "min_refresh_interval",
        ),
    ] {
        match remote.build().await {
            Err(OidcError::Config(e)) => assert_eq!(e.setting(), setting),
            other => panic!("{setting}: {other:?}"),
        }
    }
    assert_eq!(provider.discovery_hits(), 0);
}

#[tokio::test]
async fn provider_down_at_start_fails_build_naming_the_issuer() {
    // A port nothing listens on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = RemoteJwks::discover(&issuer)
        .allow_http(true)
        .startup_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&issuer), "{err}");
    match err {
        OidcError::Startup { last, .. } => {
            assert!(
                matches!(last.as_deref(), Some(OidcError::Transport { .. })),
                "{last:?}"
            );
        }
        other => panic!("{other:?}"),
    }

    // Up but answering 503: the same, and it was retried.
    let provider = Provider::start(one_key_jwks()).await;
    provider.set_mode(Mode::Down);
    let err = provider
        .discover()
        .startup_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(&err, OidcError::Startup { .. }), "{err:?}");
    assert!(err.to_string().contains(provider.issuer()), "{err}");
}

#[tokio::test]
async fn a_slow_provider_times_out() {
    let provider = Provider::start(one_key_jwks()).await;
    provider.set_mode(Mode::Slow);
    let err = provider
        .discover()
        .timeout(Duration::from_millis(200))
        .startup_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    match err {
        OidcError::Startup { last, .. } => match last.as_deref() {
            Some(OidcError::Transport { source, .. }) => assert!(source.is_timeout(), "{source}"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn garbage_and_huge_bodies_fail_the_first_fetch() {
    let provider = Provider::start(one_key_jwks()).await;
    provider.set_mode(Mode::Garbage);
    let err = provider
        .discover()
        .startup_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    match err {
        OidcError::Startup { last, .. } => {
            assert!(
                matches!(last.as_deref(), Some(OidcError::Discovery { .. })),
                "{last:?}"
            )
        }
        other => panic!("{other:?}"),
    }

    provider.set_mode(Mode::Huge);
    let err = RemoteJwks::jwks_url(format!("{}/jwks", provider.base))
        .allow_http(true)
        .max_body_bytes(64 * 1024)
        .startup_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    match err {
        OidcError::Startup { last, .. } => assert!(
            matches!(
                last.as_deref(),
                Some(OidcError::TooLarge { limit: 65536, .. })
            ),
            "{last:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_redirect_loop_is_an_error_not_a_hang() {
    let provider = Provider::start(one_key_jwks()).await;
    // One redirect is followed, unless redirects are turned off.
    let moved = format!("{}/moved", provider.base);
    let remote = RemoteJwks::jwks_url(&moved)
        .allow_http(true)
        .build()
        .await
        .unwrap();
    assert_eq!(remote.key_set().len(), 1);
    let err = RemoteJwks::jwks_url(&moved)
        .allow_http(true)
        .max_redirects(0)
        .startup_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::Startup { .. }), "{err:?}");

    let err = RemoteJwks::jwks_url(format!("{}/loop-a", provider.base))
        .allow_http(true)
        .startup_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    match err {
        OidcError::Startup { last, .. } => match last.as_deref() {
            Some(OidcError::Transport { source, .. }) => {
                assert!(source.is_redirect(), "{source}")
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Refresh

#[tokio::test]
async fn rotation_new_kid_accepted_and_removed_kid_refused() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = provider
        .discover()
        .min_refresh_interval(Duration::from_secs(3600))
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let svc = provider_service(&remote, &provider);
    let iss = provider.issuer().to_owned();
    let old = sign(&rsa1(), Algorithm::RS256, Some("k1"), &claims(&iss));
    let new = sign(&rsa2(), Algorithm::RS256, Some("k2"), &claims(&iss));
    assert_eq!(status(&svc, &new).await, StatusCode::UNAUTHORIZED);

    // The provider adds k2: the unknown kid wakes the refresh, no restart needed.
    provider.set_jwks(json!({"keys": [
        jwk(&rsa1(), Algorithm::RS256, "k1", true),
        jwk(&rsa2(), Algorithm::RS256, "k2", true),
    ]}));
    until("a token with the new kid verifies", || async {
        status(&svc, &new).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(&svc, &old).await, StatusCode::OK);

    // The provider drops k1: refused once a refresh has seen it.
    provider.set_jwks(json!({"keys": [jwk(&rsa2(), Algorithm::RS256, "k2", true)]}));
    remote.refresh().await.unwrap();
    assert_eq!(status(&svc, &old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&svc, &new).await, StatusCode::OK);
    assert_eq!(provider.discovery_hits(), 1, "discovery is not repeated");
}

#[tokio::test]
async fn the_interval_refresh_drops_removed_keys() {
    let provider = Provider::start(json!({"keys": [
        jwk(&rsa1(), Algorithm::RS256, "k1", true),
        jwk(&rsa2(), Algorithm::RS256, "k2", true),
    ]}))
    .await;
    let remote = provider
        .discover()
        .min_refresh_interval(Duration::from_millis(20))
        .refresh_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let svc = provider_service(&remote, &provider);
    let old = sign(
        &rsa1(),
        Algorithm::RS256,
        Some("k1"),
        &claims(provider.issuer()),
    );
    assert_eq!(status(&svc, &old).await, StatusCode::OK);
    provider.set_jwks(json!({"keys": [jwk(&rsa2(), Algorithm::RS256, "k2", true)]}));
    until("the removed kid is refused", || async {
        status(&svc, &old).await == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test]
async fn cache_control_max_age_is_honoured_within_bounds() {
    let provider = Provider::start(one_key_jwks()).await;
    // max-age=0 is raised to the lower bound; without it the next refresh is in an hour.
    *provider.cache_control.lock().unwrap() = Some("public, max-age=0".to_owned());
    let _remote = provider
        .discover()
        .min_refresh_interval(Duration::from_millis(20))
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    until("max-age drives refreshes", || async {
        provider.jwks_hits() >= 4
    })
    .await;
}

#[tokio::test]
async fn provider_down_after_start_keeps_the_cached_keys() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = provider
        .discover()
        .timeout(Duration::from_millis(300))
        .max_body_bytes(64 * 1024)
        .min_refresh_interval(Duration::from_millis(20))
        .refresh_interval(Duration::from_millis(40))
        .build()
        .await
        .unwrap();
    let svc = provider_service(&remote, &provider);
    let token = sign(
        &rsa1(),
        Algorithm::RS256,
        Some("k1"),
        &claims(provider.issuer()),
    );
    for mode in [Mode::Down, Mode::Garbage, Mode::Huge, Mode::Slow] {
        provider.set_mode(mode);
        let err = remote.refresh().await.unwrap_err();
        assert!(err.is_transient(), "{mode:?}: {err:?}");
        assert_eq!(status(&svc, &token).await, StatusCode::OK, "{mode:?}");
    }
    // The background refresh keeps failing too, and the keys stay.
    provider.set_mode(Mode::Down);
    let before = provider.discovery_hits() + provider.jwks_hits();
    until("the background refresh retried", || async {
        provider.discovery_hits() + provider.jwks_hits() >= before + 3
    })
    .await;
    assert_eq!(status(&svc, &token).await, StatusCode::OK);
    assert_eq!(remote.key_set().len(), 1);

    // An empty or unusable document is garbage too.
    provider.set_mode(Mode::Normal);
    provider.set_jwks(json!({"keys": [{"kty":"RSA","use":"enc","kid":"e","n":"AQAB","e":"AQAB"}]}));
    assert!(matches!(
        remote.refresh().await,
        Err(OidcError::Jwks { .. })
    ));
    assert_eq!(status(&svc, &token).await, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_bounded_fetches() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = provider
        .discover()
        .min_refresh_interval(Duration::from_secs(3600))
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    assert_eq!(provider.jwks_hits(), 1);
    let svc = provider_service(&remote, &provider);
    let iss = provider.issuer().to_owned();
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let svc = svc.clone();
        let kid = format!("made-up-{i}-{:08x}", i.wrapping_mul(2_654_435_761));
        let token = sign(&rsa1(), Algorithm::RS256, Some(&kid), &claims(&iss));
        tasks.push(tokio::spawn(async move { status(&svc, &token).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    // One refetch for the whole flood (one per min_refresh_interval).
    until("the triggered refetch ran", || async {
        provider.jwks_hits() >= 2
    })
    .await;
    for i in 0..100 {
        let token = sign(
            &rsa1(),
            Algorithm::RS256,
            Some(&format!("more-{i}")),
            &claims(&iss),
        );
        assert_eq!(status(&svc, &token).await, StatusCode::UNAUTHORIZED);
    }
    remote.refresh().await.unwrap();
    assert_eq!(
        provider.jwks_hits(),
        3,
        "startup + one triggered + one explicit"
    );
}

#[tokio::test]
async fn dropping_the_keys_stops_the_background_refresh() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = provider
        .discover()
        .min_refresh_interval(Duration::from_millis(10))
        .refresh_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let svc = provider_service(&remote, &provider);
    until("the refresh runs", || async { provider.jwks_hits() >= 3 }).await;
    drop(svc);
    drop(remote);
    // At most one fetch was in flight when the keys were dropped.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_drop = provider.jwks_hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        provider.jwks_hits() <= after_drop + 1,
        "{} > {after_drop} + 1",
        provider.jwks_hits()
    );
}

// ---------------------------------------------------------------------------------------
// What is refused: issuer, audience, algorithms

#[tokio::test]
async fn wrong_iss_aud_and_alg_are_refused() {
    let provider = Provider::start(json!({"keys": [
        jwk(&rsa1(), Algorithm::RS256, "k1", true),
        // Published for signatures, but an HMAC key from the network is never trusted.
        {"kty":"oct","kid":"hs","alg":"HS256","k": URL_SAFE_NO_PAD.encode(HMAC_SECRET)},
    ]}))
    .await;
    let remote = provider.discover().build().await.unwrap();
    assert_eq!(remote.key_set().len(), 1, "the oct key is skipped");
    let svc = provider_service(&remote, &provider);
    let iss = provider.issuer().to_owned();
    let good = claims(&iss);
    assert_eq!(
        status(&svc, &sign(&rsa1(), Algorithm::RS256, Some("k1"), &good)).await,
        StatusCode::OK
    );

    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("other-api");
    let rsa_public_pem = fixture("rsa1-public.pem");
    let refused = [
        (
            "wrong iss",
            sign(&rsa1(), Algorithm::RS256, Some("k1"), &wrong_iss),
        ),
        (
            "wrong aud",
            sign(&rsa1(), Algorithm::RS256, Some("k1"), &wrong_aud),
        ),
        // The JWK says RS256; the same key signing PS256 does not fit it.
        (
            "alg mismatch",
            sign(&rsa1(), Algorithm::PS256, Some("k1"), &good),
        ),
        (
            "RS384 with the RS256 key",
            sign(&rsa1(), Algorithm::RS384, Some("k1"), &good),
        ),
        // Algorithm confusion: the RSA public key (PEM and DER-ish bytes) as HMAC secret.
        (
            "HS256 with the RSA public key",
            forge(
                Algorithm::HS256,
                &EncodingKey::from_secret(&rsa_public_pem),
                &json!({"alg":"HS256","kid":"k1"}),
                &good,
            ),
        ),
        (
            "HS256 with the published oct key",
            sign(
                &EncodingKey::from_secret(HMAC_SECRET),
                Algorithm::HS256,
                Some("hs"),
                &good,
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg":"none","kid":"k1"}).to_string()),
                URL_SAFE_NO_PAD.encode(good.to_string())
            ),
        ),
        (
            "signed by another key",
            sign(&rsa2(), Algorithm::RS256, Some("k1"), &good),
        ),
    ];
    for (what, token) in refused {
        let response = call(&svc, &token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            response.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{what}"
        );
    }
}

#[tokio::test]
async fn jwks_shapes_met_in_the_wild() {
    let ec256 = private("ec256-private.pem", Algorithm::ES256);
    let ec384 = private("ec384-private.pem", Algorithm::ES384);
    let ed = private("ed25519-private.pem", Algorithm::EdDSA);
    let mut with_x5c = jwk(&rsa2(), Algorithm::RS256, "x5c", true);
    with_x5c["x5c"] = json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]);
    with_x5c["x5t"] = json!("c29tZS10aHVtYnByaW50");
    let mut enc = jwk(&rsa2(), Algorithm::RS256, "enc", true);
    enc["use"] = json!("enc");
    let provider = Provider::start(json!({"keys": [
        // RSA without alg: accepted for the configured RSA algorithms only.
        jwk(&rsa1(), Algorithm::RS256, "rsa-no-alg", false),
        with_x5c,
        jwk(&ec256, Algorithm::ES256, "p256", false),
        jwk(&ec384, Algorithm::ES384, "p384", true),
        jwk(&ed, Algorithm::EdDSA, "ed", true),
        enc,
        {"kty":"XYZ","kid":"unknown-kty","crv":"whatever"},
        {"kty":"RSA","kid":"x5c-only","x5c":["MIIB"]},
        {"kty":"RSA","kid":"broken","alg":"RS256","n":"AA","e":"AQAB"},
        {"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"},
    ]}))
    .await;
    let remote = provider
        .discover()
        .algorithms([
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ])
        .build()
        .await
        .unwrap();
    let mut kids: Vec<String> = remote.key_set().kids().flatten().collect();
    kids.dedup();
    assert_eq!(kids, ["rsa-no-alg", "x5c", "p256", "p384", "ed"]);
    let svc = provider_service(&remote, &provider);
    let good = claims(provider.issuer());
    for (alg, key, kid) in [
        (Algorithm::RS256, &rsa1(), "rsa-no-alg"),
        (Algorithm::PS256, &rsa1(), "rsa-no-alg"),
        (Algorithm::RS256, &rsa2(), "x5c"),
        (Algorithm::ES256, &ec256, "p256"),
        (Algorithm::ES384, &ec384, "p384"),
        (Algorithm::EdDSA, &ed, "ed"),
    ] {
        let token = sign(key, alg, Some(kid), &good);
        assert_eq!(status(&svc, &token).await, StatusCode::OK, "{kid} {alg:?}");
    }
    for (alg, key, kid) in [
        // Not configured, so not guessed for the alg-less RSA key.
        (Algorithm::RS384, rsa1(), "rsa-no-alg"),
        (Algorithm::PS256, rsa2(), "x5c"),
        (Algorithm::RS256, rsa2(), "enc"),
    ] {
        let token = sign(&key, alg, Some(kid), &good);
        assert_eq!(
            status(&svc, &token).await,
            StatusCode::UNAUTHORIZED,
            "{kid} {alg:?}"
        );
    }
    let token = forge(
        Algorithm::HS256,
        &EncodingKey::from_secret(&fixture("rsa1-public.pem")),
        &json!({"alg":"HS256","kid":"rsa-no-alg"}),
        &good,
    );
    assert_eq!(status(&svc, &token).await, StatusCode::UNAUTHORIZED);

    // Only RS256 configured (the default): the alg-less key is RS256 only, and the
    // EC and Ed25519 keys are skipped.
    let rs256_only = provider.discover().build().await.unwrap();
    let mut kids: Vec<String> = rs256_only.key_set().kids().flatten().collect();
    kids.dedup();
    assert_eq!(kids, ["rsa-no-alg", "x5c"]);
    let svc = provider_service(&rs256_only, &provider);
    let ps = sign(&rsa1(), Algorithm::PS256, Some("rsa-no-alg"), &good);
    assert_eq!(status(&svc, &ps).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_published_only_as_x5c_certificates() {
    let ec256 = private("ec256-private.pem", Algorithm::ES256);
    let ed = private("ed25519-private.pem", Algorithm::EdDSA);
    // n/e of rsa2 next to a certificate of rsa1: the key is n/e.
    let mut both = jwk(&rsa2(), Algorithm::RS256, "both", true);
    both["x5c"] = json!([x5c("rsa1-cert.pem")]);
    let provider = Provider::start(json!({"keys": [
        {"kty":"RSA","kid":"x5c-rsa","use":"sig","x5c":[x5c("rsa1-cert.pem"), x5c("ec256-cert.pem")]},
        {"kty":"EC","kid":"x5c-ec","x5c":[x5c("ec256-cert.pem")]},
        {"kty":"OKP","kid":"x5c-ed","alg":"EdDSA","x5c":[x5c("ed25519-cert.pem")]},
        {"kty":"RSA","kid":"garbage","x5c":["!!! not base64 !!!"]},
        {"kty":"RSA","kid":"not-a-cert","x5c":[URL_SAFE_NO_PAD.encode(b"hello, world")]},
        {"kty":"RSA","kid":"empty-chain","x5c":[]},
        {"kty":"RSA","kid":"ec-as-rsa","x5c":[x5c("ec256-cert.pem")]},
        {"kty":"EC","kid":"rsa-as-ec","x5c":[x5c("rsa1-cert.pem")]},
        {"kty":"EC","kid":"wrong-crv","crv":"P-384","x5c":[x5c("ec256-cert.pem")]},
        {"kty":"RSA","kid":"weak","x5c":[x5c("rsa1024-cert.pem")]},
        {"kty":"EC","kid":"compressed","x5c":[x5c("ec256-compressed-cert.pem")]},
        // Some members of its own: not completed from the certificate, and broken.
        {"kty":"RSA","kid":"half","e":"AQAB","x5c":[x5c("rsa1-cert.pem")]},
        {"kty":"RSA","kid":"x5c-enc","use":"enc","x5c":[x5c("rsa1-cert.pem")]},
        // alg must fit the key read from the certificate.
        {"kty":"RSA","kid":"x5c-es256","alg":"ES256","x5c":[x5c("rsa1-cert.pem")]},
        jwk(&rsa2(), Algorithm::RS256, "plain", true),
        both,
    ]}))
    .await;
    let remote = provider
        .discover()
        .algorithms([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA])
        .build()
        .await
        .unwrap();
    let kids: Vec<String> = remote.key_set().kids().flatten().collect();
    assert_eq!(kids, ["x5c-rsa", "x5c-ec", "x5c-ed", "plain", "both"]);
    let svc = provider_service(&remote, &provider);
    let good = claims(provider.issuer());
    for (alg, key, kid) in [
        (Algorithm::RS256, &rsa1(), "x5c-rsa"),
        (Algorithm::ES256, &ec256, "x5c-ec"),
        (Algorithm::EdDSA, &ed, "x5c-ed"),
        (Algorithm::RS256, &rsa2(), "plain"),
        (Algorithm::RS256, &rsa2(), "both"),
    ] {
        let token = sign(key, alg, Some(kid), &good);
        assert_eq!(status(&svc, &token).await, StatusCode::OK, "{kid} {alg:?}");
    }
    for (alg, key, kid) in [
        // The certificate next to n/e is not the key.
        (Algorithm::RS256, &rsa1(), "both"),
        (Algorithm::RS256, &rsa2(), "x5c-rsa"),
        (Algorithm::ES256, &ec256, "ec-as-rsa"),
        (Algorithm::ES256, &ec256, "wrong-crv"),
        (Algorithm::RS256, &rsa1(), "x5c-enc"),
        (Algorithm::RS256, &rsa1(), "x5c-es256"),
        (Algorithm::ES256, &ec256, "compressed"),
        (Algorithm::RS256, &rsa1(), "half"),
    ] {
        let token = sign(key, alg, Some(kid), &good);
        assert_eq!(
            status(&svc, &token).await,
            StatusCode::UNAUTHORIZED,
            "{kid} {alg:?}"
        );
    }

    // A static document: an unreadable certificate or a weak key fails it (it is fixed
    // at deploy time), a certificate of another key type is skipped.
    let only = |jwk: Value| JwtKeySet::from_jwks_json(&json!({"keys": [jwk]}).to_string());
    let rsa = only(json!({"kty":"RSA","kid":"r","x5c":[x5c("rsa1-cert.pem")]})).unwrap();
    assert_eq!(rsa.kids().collect::<Vec<_>>(), [Some("r".to_owned())]);
    let weak = only(json!({"kty":"RSA","kid":"w","x5c":[x5c("rsa1024-cert.pem")]}));
    assert!(
        matches!(weak, Err(KeyError::WeakRsaKey { bits: 1024 })),
        "{weak:?}"
    );
    let garbage = only(json!({"kty":"RSA","kid":"g","x5c":["!!!"]}));
    assert!(
        matches!(garbage, Err(KeyError::InvalidCertificate { .. })),
        "{garbage:?}"
    );
    let ec_as_rsa = only(json!({"kty":"RSA","kid":"e","x5c":[x5c("ec256-cert.pem")]}));
    assert!(
        matches!(ec_as_rsa, Err(KeyError::EmptyJwks)),
        "{ec_as_rsa:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Several issuers

#[tokio::test]
async fn several_issuers_each_with_their_own_keys_and_audience() {
    // Both providers use the kid "k1", with different keys.
    let a = Provider::start(one_key_jwks()).await;
    // B's key has no `alg`: it serves both algorithms B is configured with.
    let b = Provider::start(json!({"keys": [jwk(&rsa2(), Algorithm::RS256, "k1", false)]})).await;
    let remote_a = a.discover().build().await.unwrap();
    let remote_b = b
        .discover()
        .algorithms([Algorithm::RS256, Algorithm::PS256])
        .build()
        .await
        .unwrap();
    let keys = JwtKeySet::new()
        .with_hmac("own", Algorithm::HS256, HMAC_SECRET)
        .unwrap()
        .with_issuer(a.issuer(), ["api-a"], remote_a.key_set())
        .unwrap()
        .with_issuer(b.issuer(), ["api-b"], remote_b.key_set())
        .unwrap();
    let svc = service(auth_layer(keys, Some("https://us.test"), Some("us")));
    let token_of = |iss: &str, aud: &str, key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut c = claims(iss);
        c["aud"] = json!(aud);
        sign(key, alg, Some(kid), &c)
    };
    let own_key = EncodingKey::from_secret(HMAC_SECRET);
    let (ia, ib) = (a.issuer(), b.issuer());
    let accepted = [
        (
            "A's token",
            token_of(ia, "api-a", &rsa1(), Algorithm::RS256, "k1"),
        ),
        (
            "B's token",
            token_of(ib, "api-b", &rsa2(), Algorithm::RS256, "k1"),
        ),
        (
            "B's PS256 token",
            token_of(ib, "api-b", &rsa2(), Algorithm::PS256, "k1"),
        ),
        (
            "our token",
            token_of("https://us.test", "us", &own_key, Algorithm::HS256, "own"),
        ),
    ];
    for (what, token) in accepted {
        assert_eq!(status(&svc, &token).await, StatusCode::OK, "{what}");
    }
    let refused = [
        (
            "A's iss, B's key",
            token_of(ia, "api-a", &rsa2(), Algorithm::RS256, "k1"),
        ),
        (
            "B's iss, A's key",
            token_of(ib, "api-b", &rsa1(), Algorithm::RS256, "k1"),
        ),
        (
            "A's token for B's audience",
            token_of(ia, "api-b", &rsa1(), Algorithm::RS256, "k1"),
        ),
        (
            "A's token for our audience",
            token_of(ia, "us", &rsa1(), Algorithm::RS256, "k1"),
        ),
        (
            "A does not sign PS256",
            token_of(ia, "api-a", &rsa1(), Algorithm::PS256, "k1"),
        ),
        (
            "our key claiming A's iss",
            token_of(ia, "api-a", &own_key, Algorithm::HS256, "own"),
        ),
        (
            "A's key claiming our iss",
            token_of("https://us.test", "us", &rsa1(), Algorithm::RS256, "k1"),
        ),
        (
            "an unknown issuer",
            token_of("https://evil.test", "us", &own_key, Algorithm::HS256, "own"),
        ),
    ];
    for (what, token) in refused {
        assert_eq!(
            status(&svc, &token).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    // Binding mistakes are refused.
    assert!(JwtKeySet::new()
        .with_issuer(ia, ["x"], remote_a.key_set())
        .unwrap()
        .with_issuer(ia, ["y"], remote_b.key_set())
        .is_err());
    assert!(remote_a
        .key_set()
        .with_hmac("x", Algorithm::HS256, HMAC_SECRET)
        .is_err());
}

// ---------------------------------------------------------------------------------------
// Scopes

#[tokio::test]
async fn missing_scope_is_403_with_the_challenge() {
    let provider = Provider::start(one_key_jwks()).await;
    let remote = provider.discover().build().await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth_layer(
            remote.key_set(),
            Some(provider.issuer()),
            Some(AUD),
        ))
        .layer(
            RequireScopeLayer::new(["orders:write"])
                .unwrap()
                .claim_contains("/realm_access/roles", "clerk"),
        )
        .service(ok_service());
    let iss = provider.issuer().to_owned();
    let token = |extra: Value| {
        let mut c = claims(&iss);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(&rsa1(), Algorithm::RS256, Some("k1"), &c)
    };
    let send = |token: String| {
        let svc = svc.clone();
        async move {
            let request = Request::get("/orders")
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = svc.oneshot(request).await.unwrap();
            let status = response.status();
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, challenge, body)
        }
    };
    let clerk = json!({"realm_access": {"roles": ["clerk"]}});
    for granted in [
        json!({"scope": "orders:read orders:write", "realm_access": {"roles": ["clerk"]}}),
        json!({"scp": ["orders:write"], "realm_access": {"roles": ["x", "clerk"]}}),
    ] {
        let (status, _, body) = send(token(granted)).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    for lacking in [
        json!({"scope": "orders:read", "realm_access": clerk["realm_access"]}),
        json!({"realm_access": clerk["realm_access"]}),
        json!({"scope": "orders:write"}),
        json!({"scope": "orders:write", "realm_access": {"roles": ["admin"]}}),
    ] {
        let (status, challenge, body) = send(token(lacking.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{lacking}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer error="insufficient_scope", scope="orders:write""#)
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "insufficient_scope");
    }
    // No token at all: the JWT layer's 401, before any scope check.
    let (status, _, _) = send("not-a-token".to_owned()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_scope_layer_without_claims_is_a_500_not_a_pass() {
    let svc = ServiceBuilder::new()
        .layer(RequireScopeLayer::new(["orders:write"]).unwrap())
        .service(ok_service());
    let request = Request::get("/orders")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "internal_error");
}
