//! Black-box tests of `JwtAuthLayer`, `JwtKeySet` and `TokenIssuer`.
//!
//! The layer uses no store, so there is no per-backend matrix here. Test keys are PEM
//! fixtures under `tests/fixtures/jwt/`, generated with `openssl genpkey`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::EncodingKey;
use serde::Deserialize;
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_stateless::jwt::{
    Algorithm, IssueError, JwtAuthLayer, JwtKeySet, KeyError, TokenIssuer, TokenPolicy, TokenSource,
};
use tower_stateless::response::ResponseBody;
use tower_stateless::RegisteredClaims;

const ISS: &str = "https://issuer.test";
const AUD: &str = "api";
const SECRET: &[u8] = b"table-secret-table-secret-table-secret!!";
const OTHER_SECRET: &[u8] = b"another-secret-another-secret-another-secret";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Signs arbitrary header and payload JSON, so tests can forge anything.
fn forge(alg: Algorithm, key: &EncodingKey, header: &Value, payload: &str) -> String {
    // Installs the crypto provider when both backends are compiled in.
    let _ = JwtKeySet::new();
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn hs(header: Value, payload: Value) -> String {
    forge(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        &header,
        &payload.to_string(),
    )
}

fn hs_raw(payload: &str) -> String {
    forge(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        &json!({"alg":"HS256","kid":"hs"}),
        payload,
    )
}

fn rsa1_private() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa1-private.pem")).unwrap()
}

fn rsa2_private() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa2-private.pem")).unwrap()
}

/// Claims that pass every check of the table's layer.
fn good_claims() -> Value {
    json!({"sub":"alice","iat":now(),"exp":now() + 600,"iss":ISS,"aud":AUD,"jti":"j1"})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// HMAC, RSA (RS256) and ECDSA (ES256) keys, verify side.
fn table_keys() -> JwtKeySet {
    JwtKeySet::new()
        .with_hmac("hs", Algorithm::HS256, SECRET)
        .unwrap()
        .with_public_pem("rs", Algorithm::RS256, &fixture("rsa1-public.pem"))
        .unwrap()
        .with_public_pem("es", Algorithm::ES256, &fixture("ec256-public.pem"))
        .unwrap()
}

/// A verify-only policy over `keys`, with the defaults.
fn policy(keys: JwtKeySet) -> TokenPolicy {
    TokenPolicy::builder(keys).build().unwrap()
}

/// The layer of a verify-only policy over `keys`.
fn jwt_layer(keys: JwtKeySet) -> JwtAuthLayer {
    policy(keys).auth_layer()
}

/// The layer of a policy over `keys` requiring the table's issuer and audience.
fn layer_iss_aud(keys: JwtKeySet) -> JwtAuthLayer {
    TokenPolicy::builder(keys)
        .issuer(ISS)
        .audience(AUD)
        .build()
        .unwrap()
        .auth_layer()
}

/// An issuer signing with `kid` of `keys`, under the default policy.
fn signer(keys: &JwtKeySet, kid: &str) -> Result<TokenIssuer, tower_stateless::ConfigError> {
    TokenPolicy::builder(keys.clone())
        .signing_key(kid)
        .build()?
        .token_issuer()
}

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, Infallible>;

/// The inner service answers 200 with the subject it finds in the extensions, and counts
/// its calls.
fn service_with<T>(layer: JwtAuthLayer<T>) -> (Svc, Arc<AtomicUsize>)
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |req: Request<Full<Bytes>>| {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = match req.extensions().get::<RegisteredClaims>() {
                    Some(claims) => format!("sub={}", claims.sub),
                    None => "anonymous".to_owned(),
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            }));
    (BoxCloneService::new(svc), calls)
}

fn table_service() -> (Svc, Arc<AtomicUsize>) {
    service_with(layer_iss_aud(table_keys()))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body is not JSON ({e}): {:?}", self.body);
        })
    }

    fn challenge(&self) -> &str {
        self.headers
            .get(WWW_AUTHENTICATE)
            .expect("WWW-Authenticate")
            .to_str()
            .unwrap()
    }
}

async fn send(
    svc: &Svc,
    method: Method,
    path: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let response = svc
        .clone()
        .oneshot(builder.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get_with(svc: &Svc, headers: Vec<(HeaderName, HeaderValue)>) -> Answer {
    send(svc, Method::GET, "/api", headers).await
}

type Headers = Vec<(HeaderName, HeaderValue)>;

fn auth(value: &str) -> (HeaderName, HeaderValue) {
    (AUTHORIZATION, HeaderValue::from_str(value).unwrap())
}

fn bearer(token: &str) -> Vec<(HeaderName, HeaderValue)> {
    vec![auth(&format!("Bearer {token}"))]
}

#[tokio::test]
async fn the_table_baseline_is_accepted() {
    let (svc, calls) = table_service();
    let answer = get_with(
        &svc,
        bearer(&hs(json!({"alg":"HS256","kid":"hs"}), good_claims())),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body, "sub=alice");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// At least 40 hostile or broken tokens, each answered 401 (or 400 where RFC 6750 calls
/// it `invalid_request`), never reaching the inner service, never panicking.
#[tokio::test]
async fn hostile_tokens_are_rejected() {
    let hs_header = json!({"alg":"HS256","kid":"hs"});
    let valid = hs(hs_header.clone(), good_claims());
    let valid_parts: Vec<&str> = valid.split('.').collect();
    let other_valid = hs(
        hs_header.clone(),
        with(good_claims(), "sub", json!("mallory")),
    );
    let other_parts: Vec<&str> = other_valid.split('.').collect();
    let none = |alg: &str, kid: Option<&str>| {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(good_claims().to_string().as_bytes())
        )
    };
    let rsa_pem_as_secret = EncodingKey::from_secret(&fixture("rsa1-public.pem"));
    let attacker_jwk =
        serde_json::to_value(Jwk::from_encoding_key(&rsa2_private(), Algorithm::RS256).unwrap())
            .unwrap();
    let nested = format!(
        "{{\"sub\":\"alice\",\"exp\":{},\"iss\":\"{ISS}\",\"aud\":\"{AUD}\",\"x\":{}{}}}",
        now() + 600,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let huge = format!(
        "{}.{}.{}",
        valid_parts[0],
        "A".repeat(100 * 1024),
        valid_parts[2]
    );

    let unauthorized = StatusCode::UNAUTHORIZED;
    let bad_request = StatusCode::BAD_REQUEST;
    let cases: Vec<(&str, Headers, StatusCode)> = vec![
        // alg: none, in several spellings, with and without kid and signature.
        ("alg none", bearer(&none("none", Some("hs"))), unauthorized),
        ("alg None", bearer(&none("None", Some("hs"))), unauthorized),
        ("alg NONE", bearer(&none("NONE", Some("hs"))), unauthorized),
        ("alg nOnE", bearer(&none("nOnE", Some("hs"))), unauthorized),
        (
            "alg none without kid",
            bearer(&none("none", None)),
            unauthorized,
        ),
        (
            "alg none with signature",
            bearer(&format!("{}{}", none("none", Some("hs")), valid_parts[2])),
            unauthorized,
        ),
        (
            "alg empty string",
            bearer(&none("", Some("hs"))),
            unauthorized,
        ),
        // Algorithm confusion and unpinned algorithms.
        (
            "HS256 signed with the RSA public key PEM, kid of the RSA key",
            bearer(&forge(
                Algorithm::HS256,
                &rsa_pem_as_secret,
                &json!({"alg":"HS256","kid":"rs"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "HS256 signed with the RSA public key PEM, no kid",
            bearer(&forge(
                Algorithm::HS256,
                &rsa_pem_as_secret,
                &json!({"alg":"HS256"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "HS512 with the right secret but the key is pinned to HS256",
            bearer(&forge(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET),
                &json!({"alg":"HS512","kid":"hs"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "PS256 with the right RSA key but the key is pinned to RS256",
            bearer(&forge(
                Algorithm::PS256,
                &rsa1_private(),
                &json!({"alg":"PS256","kid":"rs"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "RS256 signed by the right key but naming the HMAC key's kid",
            bearer(&forge(
                Algorithm::RS256,
                &rsa1_private(),
                &json!({"alg":"RS256","kid":"hs"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "alg lowercase hs256",
            bearer(&hs(json!({"alg":"hs256","kid":"hs"}), good_claims())),
            unauthorized,
        ),
        (
            "alg with trailing space",
            bearer(&hs(json!({"alg":"HS256 ","kid":"hs"}), good_claims())),
            unauthorized,
        ),
        // Wrong keys.
        (
            "wrong HMAC secret",
            bearer(&forge(
                Algorithm::HS256,
                &EncodingKey::from_secret(OTHER_SECRET),
                &hs_header,
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "RS256 signed by another RSA key",
            bearer(&forge(
                Algorithm::RS256,
                &rsa2_private(),
                &json!({"alg":"RS256","kid":"rs"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "embedded jwk header naming the attacker's key",
            bearer(&forge(
                Algorithm::RS256,
                &rsa2_private(),
                &json!({"alg":"RS256","kid":"rs","jwk":attacker_jwk}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "jku header pointing at the attacker",
            bearer(&forge(
                Algorithm::RS256,
                &rsa2_private(),
                &json!({"alg":"RS256","kid":"rs","jku":"https://evil.test/jwks"}),
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "unknown kid",
            bearer(&hs(json!({"alg":"HS256","kid":"nope"}), good_claims())),
            unauthorized,
        ),
        (
            "no kid with several keys",
            bearer(&hs(json!({"alg":"HS256"}), good_claims())),
            unauthorized,
        ),
        (
            "kid null",
            bearer(&hs(json!({"alg":"HS256","kid":null}), good_claims())),
            unauthorized,
        ),
        (
            "kid as number",
            bearer(&hs(json!({"alg":"HS256","kid":5}), good_claims())),
            unauthorized,
        ),
        (
            "huge kid",
            bearer(&hs(
                json!({"alg":"HS256","kid":"k".repeat(4000)}),
                good_claims(),
            )),
            unauthorized,
        ),
        (
            "crit header",
            bearer(&hs(
                json!({"alg":"HS256","kid":"hs","crit":["exp"]}),
                good_claims(),
            )),
            unauthorized,
        ),
        (
            "enc header (JWE)",
            bearer(&hs(
                json!({"alg":"HS256","kid":"hs","enc":"A256GCM"}),
                good_claims(),
            )),
            unauthorized,
        ),
        // Time claims.
        (
            "expired an hour ago",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!(now() - 3600)),
            )),
            unauthorized,
        ),
        (
            "expired beyond the leeway",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!(now() - 120)),
            )),
            unauthorized,
        ),
        (
            "nbf in the future",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "nbf", json!(now() + 3600)),
            )),
            unauthorized,
        ),
        (
            "nbf as string",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "nbf", json!("0")),
            )),
            unauthorized,
        ),
        (
            "missing exp",
            bearer(&hs(hs_header.clone(), without(good_claims(), "exp"))),
            unauthorized,
        ),
        (
            "exp as numeric string (GHSA-h395-gr6q-cpjc)",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!((now() + 600).to_string())),
            )),
            unauthorized,
        ),
        (
            "exp as word",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!("tomorrow")),
            )),
            unauthorized,
        ),
        (
            "exp null",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", Value::Null),
            )),
            unauthorized,
        ),
        (
            "exp negative",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!(-1)),
            )),
            unauthorized,
        ),
        (
            "exp as float",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!(now() as f64 + 600.5)),
            )),
            unauthorized,
        ),
        (
            "exp as object",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "exp", json!({"$gt": 0})),
            )),
            unauthorized,
        ),
        (
            "duplicate exp keys",
            bearer(&hs_raw(&format!(
                "{{\"sub\":\"alice\",\"exp\":1,\"exp\":{},\"iss\":\"{ISS}\",\"aud\":\"{AUD}\"}}",
                now() + 600
            ))),
            unauthorized,
        ),
        (
            "iat as string",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "iat", json!("now")),
            )),
            unauthorized,
        ),
        // Issuer, audience, subject and other registered claims.
        (
            "wrong iss",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "iss", json!("https://evil.test")),
            )),
            unauthorized,
        ),
        (
            "missing iss",
            bearer(&hs(hs_header.clone(), without(good_claims(), "iss"))),
            unauthorized,
        ),
        (
            "wrong aud",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "aud", json!("other")),
            )),
            unauthorized,
        ),
        (
            "aud list without ours",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "aud", json!(["a", "b"])),
            )),
            unauthorized,
        ),
        (
            "missing aud",
            bearer(&hs(hs_header.clone(), without(good_claims(), "aud"))),
            unauthorized,
        ),
        (
            "missing sub",
            bearer(&hs(hs_header.clone(), without(good_claims(), "sub"))),
            unauthorized,
        ),
        (
            "empty sub",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "sub", json!("")),
            )),
            unauthorized,
        ),
        (
            "blank sub",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "sub", json!("  ")),
            )),
            unauthorized,
        ),
        (
            "empty jti",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "jti", json!("")),
            )),
            unauthorized,
        ),
        (
            "empty sid",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "sid", json!("")),
            )),
            unauthorized,
        ),
        (
            "sub as number",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "sub", json!(42)),
            )),
            unauthorized,
        ),
        (
            "jti as number",
            bearer(&hs(hs_header.clone(), with(good_claims(), "jti", json!(7)))),
            unauthorized,
        ),
        (
            "sid as object",
            bearer(&hs(
                hs_header.clone(),
                with(good_claims(), "sid", json!({})),
            )),
            unauthorized,
        ),
        // Broken structure and encoding.
        ("one segment", bearer(valid_parts[0]), unauthorized),
        (
            "two segments",
            bearer(&format!("{}.{}", valid_parts[0], valid_parts[1])),
            unauthorized,
        ),
        (
            "four segments",
            bearer(&format!("{valid}.{}", valid_parts[2])),
            unauthorized,
        ),
        ("only dots", bearer(".."), unauthorized),
        (
            "empty payload segment",
            bearer(&format!("{}..{}", valid_parts[0], valid_parts[2])),
            unauthorized,
        ),
        (
            "header cut in half",
            bearer(&format!(
                "{}.{}.{}",
                &valid_parts[0][..valid_parts[0].len() / 2],
                valid_parts[1],
                valid_parts[2]
            )),
            unauthorized,
        ),
        (
            "signature truncated",
            bearer(&valid[..valid.len() - 10]),
            unauthorized,
        ),
        (
            "signature padded with =",
            bearer(&format!("{valid}==")),
            unauthorized,
        ),
        (
            "bad base64 characters",
            bearer("~~~~.~~~~.~~~~"),
            unauthorized,
        ),
        (
            "standard base64 alphabet in the payload",
            bearer(&format!(
                "{}.{}.{}",
                valid_parts[0],
                STANDARD.encode([0xfb_u8, 0xff, 0xfe]),
                valid_parts[2]
            )),
            unauthorized,
        ),
        (
            "signature of another token",
            bearer(&format!(
                "{}.{}.{}",
                valid_parts[0], valid_parts[1], other_parts[2]
            )),
            unauthorized,
        ),
        (
            "payload of another token",
            bearer(&format!(
                "{}.{}.{}",
                valid_parts[0], other_parts[1], valid_parts[2]
            )),
            unauthorized,
        ),
        (
            "header not JSON",
            bearer(
                &forge(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(SECRET),
                    &json!("x"),
                    &good_claims().to_string(),
                )
                .replacen(&b64(b"\"x\""), &b64(b"HS256"), 1),
            ),
            unauthorized,
        ),
        (
            "header is a JSON array",
            bearer(&format!(
                "{}.{}.{}",
                b64(b"[\"HS256\"]"),
                valid_parts[1],
                valid_parts[2]
            )),
            unauthorized,
        ),
        (
            "non-JSON payload, correctly signed",
            bearer(&hs_raw("hello")),
            unauthorized,
        ),
        (
            "JSON array payload, correctly signed",
            bearer(&hs_raw(&format!(
                "[{}, 0, \"alice\", \"{ISS}\", \"{AUD}\"]",
                now() + 600
            ))),
            unauthorized,
        ),
        (
            "JSON string payload, correctly signed",
            bearer(&hs_raw("\"alice\"")),
            unauthorized,
        ),
        (
            "JSON null payload, correctly signed",
            bearer(&hs_raw("null")),
            unauthorized,
        ),
        (
            "payload nested 1000 deep, correctly signed",
            bearer(&hs_raw(&nested)),
            unauthorized,
        ),
        ("100 KB token", bearer(&huge), unauthorized),
        // The Authorization header itself.
        (
            "lowercase bearer with a forged token",
            vec![auth(&format!("bearer {}", none("none", Some("hs"))))],
            unauthorized,
        ),
        (
            "Basic scheme",
            vec![auth("Basic YWxpY2U6c2VjcmV0")],
            unauthorized,
        ),
        (
            "unknown scheme carrying a valid token",
            vec![auth(&format!("Token {valid}"))],
            unauthorized,
        ),
        (
            "duplicated Authorization headers",
            vec![
                auth(&format!("Bearer {valid}")),
                auth(&format!("Bearer {valid}")),
            ],
            bad_request,
        ),
        (
            "duplicated Authorization headers, one Basic",
            vec![
                auth(&format!("Bearer {valid}")),
                auth("Basic YWxpY2U6c2VjcmV0"),
            ],
            bad_request,
        ),
        ("Bearer without token", vec![auth("Bearer")], bad_request),
        (
            "Bearer with only spaces",
            vec![auth("Bearer    ")],
            bad_request,
        ),
        ("empty Authorization header", vec![auth("")], bad_request),
        (
            "space inside the token",
            vec![auth(&format!(
                "Bearer {} {}",
                valid_parts[0], valid_parts[1]
            ))],
            bad_request,
        ),
        (
            "trailing junk after the token",
            vec![auth(&format!("Bearer {valid} junk"))],
            bad_request,
        ),
        (
            "two tokens in one header",
            vec![auth(&format!("Bearer {valid}, Bearer {valid}"))],
            bad_request,
        ),
        (
            "quoted token",
            vec![auth(&format!("Bearer \"{valid}\""))],
            bad_request,
        ),
        (
            "non-ASCII bytes in the header",
            vec![(
                AUTHORIZATION,
                HeaderValue::from_bytes(b"Bearer \xff\xfe.a.b").unwrap(),
            )],
            bad_request,
        ),
    ];
    assert!(cases.len() >= 40, "only {} cases", cases.len());

    let (svc, calls) = table_service();
    for (name, headers, expected) in cases {
        let answer = get_with(&svc, headers).await;
        assert_eq!(answer.status, expected, "{name}: {:?}", answer.body);
        let challenge = answer.challenge().to_owned();
        assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
        let body = answer.json();
        match (expected, body["error"].as_str()) {
            (StatusCode::BAD_REQUEST, Some("invalid_request")) => {
                assert!(
                    challenge.contains("error=\"invalid_request\""),
                    "{name}: {challenge}"
                );
            }
            (StatusCode::UNAUTHORIZED, Some("invalid_token")) => {
                assert!(
                    challenge.contains("error=\"invalid_token\""),
                    "{name}: {challenge}"
                );
                assert!(
                    challenge.contains("error_description=\""),
                    "{name}: {challenge}"
                );
            }
            // No bearer token at all (another scheme): no error code, per RFC 6750 §3.1.
            (StatusCode::UNAUTHORIZED, Some("missing_token")) => {
                assert_eq!(challenge, "Bearer", "{name}");
            }
            (_, code) => panic!("{name}: unexpected error code {code:?}"),
        }
        let text = String::from_utf8_lossy(&answer.body);
        assert!(
            !text.contains("alice") && !text.contains(valid_parts[1]),
            "{name}: leaks {text}"
        );
        assert!(answer.body.len() < 200, "{name}: long body {text}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a hostile token reached the inner service"
    );
}

#[tokio::test]
async fn missing_token_gets_a_bare_challenge() {
    let (svc, calls) = table_service();
    let answer = get_with(&svc, vec![]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.challenge(), "Bearer");
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["error"], "missing_token");
    assert!(body["message"].is_string());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// Every caller with an empty `sub` would share one revocation subject, one rate limit and
/// one idempotency scope: a token saying `"sub": ""` is refused like one without `sub`,
/// however well it is signed, and the issuer does not mint one.
#[tokio::test]
async fn empty_sub_is_invalid_token() {
    let (svc, calls) = service_with(jwt_layer(
        JwtKeySet::new()
            .with_hmac("hs", Algorithm::HS256, SECRET)
            .unwrap(),
    ));
    let answer = get_with(
        &svc,
        bearer(&hs(
            json!({"alg":"HS256","kid":"hs"}),
            json!({"sub":"","exp":now() + 600,"jti":"j1","sid":"s1"}),
        )),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.challenge(),
        r#"Bearer error="invalid_token", error_description="the token is invalid""#
    );
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.json()["error"], "invalid_token");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The same token with a subject passes.
    let answer = get_with(
        &svc,
        bearer(&hs(
            json!({"alg":"HS256","kid":"hs"}),
            json!({"sub":"a","exp":now() + 600,"jti":"j1","sid":"s1"}),
        )),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "sub=a");

    let keys = JwtKeySet::new()
        .with_hmac("hs", Algorithm::HS256, SECRET)
        .unwrap();
    let issuer = signer(&keys, "hs").unwrap();
    assert!(matches!(issuer.issue(""), Err(IssueError::EmptySubject)));
    assert!(matches!(
        issuer.issue_with("a", Some(""), &()),
        Err(IssueError::EmptySessionId)
    ));
}

/// A `sub` of only whitespace names no one, as an empty one: refused the same way. An
/// empty `jti` or `sid` names no one token or session (revoking one empty-`jti` token of a
/// subject would revoke all of them; a session with an empty `sid` cannot be revoked):
/// refused too. Without `jti` or `sid` (or with `null`) a token still passes.
#[tokio::test]
async fn blank_sub_and_empty_jti_or_sid_are_invalid_token() {
    let (svc, calls) = service_with(jwt_layer(
        JwtKeySet::new()
            .with_hmac("hs", Algorithm::HS256, SECRET)
            .unwrap(),
    ));
    let header = json!({"alg":"HS256","kid":"hs"});
    let claims = || json!({"sub":"a","exp":now() + 600,"jti":"j1","sid":"s1"});
    let refused = [
        ("sub \"  \"", with(claims(), "sub", json!("  "))),
        ("sub \"\\t\"", with(claims(), "sub", json!("\t"))),
        ("sub \" \\r\\n \"", with(claims(), "sub", json!(" \r\n "))),
        ("sub U+00A0", with(claims(), "sub", json!("\u{a0}"))),
        ("sub U+3000", with(claims(), "sub", json!("\u{3000}"))),
        ("jti \"\"", with(claims(), "jti", json!(""))),
        ("sid \"\"", with(claims(), "sid", json!(""))),
        (
            "jti and sid \"\"",
            with(with(claims(), "jti", json!("")), "sid", json!("")),
        ),
        (
            "jti \"\" without sid",
            without(with(claims(), "jti", json!("")), "sid"),
        ),
        (
            "sid \"\" without jti",
            without(with(claims(), "sid", json!("")), "jti"),
        ),
    ];
    for (name, payload) in refused {
        let answer = get_with(&svc, bearer(&hs(header.clone(), payload))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            answer.challenge(),
            r#"Bearer error="invalid_token", error_description="the token is invalid""#,
            "{name}"
        );
        assert_eq!(answer.headers["content-type"], "application/json", "{name}");
        assert_eq!(answer.json()["error"], "invalid_token", "{name}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let accepted = [
        ("all claims", claims(), "sub=a"),
        ("no jti", without(claims(), "jti"), "sub=a"),
        ("no sid", without(claims(), "sid"), "sub=a"),
        ("neither", without(without(claims(), "jti"), "sid"), "sub=a"),
        (
            "null jti and sid",
            with(with(claims(), "jti", Value::Null), "sid", Value::Null),
            "sub=a",
        ),
        // Whitespace around a subject is kept, as the token says it.
        (
            "padded sub",
            with(claims(), "sub", json!(" a\t")),
            "sub= a\t",
        ),
    ];
    for (name, payload, body) in accepted {
        let answer = get_with(&svc, bearer(&hs(header.clone(), payload))).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {:?}", answer.body);
        assert_eq!(answer.body, body, "{name}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);

    // The issuer does not mint what the layer refuses.
    let keys = JwtKeySet::new()
        .with_hmac("hs", Algorithm::HS256, SECRET)
        .unwrap();
    let issuer = signer(&keys, "hs").unwrap();
    for blank in ["  ", "\t"] {
        assert!(
            matches!(issuer.issue(blank), Err(IssueError::EmptySubject)),
            "{blank:?}"
        );
    }
}

#[tokio::test]
async fn realm_is_in_every_challenge() {
    let (svc, _) = service_with(jwt_layer(table_keys()).realm("shop \"eu\""));
    let answer = get_with(&svc, vec![]).await;
    assert_eq!(answer.challenge(), r#"Bearer realm="shop \"eu\"""#);

    let expired = hs(
        json!({"alg":"HS256","kid":"hs"}),
        json!({"sub":"a","exp":now() - 3600}),
    );
    let answer = get_with(&svc, bearer(&expired)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.challenge(),
        r#"Bearer realm="shop \"eu\"", error="invalid_token", error_description="the token has expired""#
    );
    assert_eq!(answer.json()["error"], "invalid_token");

    let answer = get_with(&svc, vec![auth("Bearer")]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.challenge().starts_with(
        r#"Bearer realm="shop \"eu\"", error="invalid_request", error_description=""#
    ));
}

#[tokio::test]
async fn descriptions_are_short_and_fixed() {
    let (svc, _) = service_with(jwt_layer(table_keys()));
    let header = json!({"alg":"HS256","kid":"hs"});
    let cases = [
        (
            json!({"sub":"a","exp":now() - 3600}),
            "the token has expired",
        ),
        (
            json!({"sub":"a","exp":now() + 3600,"nbf":now() + 3600}),
            "the token is not valid yet",
        ),
        (json!({"sub":"a"}), "the token is invalid"),
    ];
    for (claims, description) in cases {
        let answer = get_with(&svc, bearer(&hs(header.clone(), claims))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(
            answer
                .challenge()
                .ends_with(&format!("error_description=\"{description}\"")),
            "{}",
            answer.challenge()
        );
        assert_eq!(answer.json()["message"], description);
    }
    // An expired token with a bad signature is "invalid", not "expired".
    let forged = forge(
        Algorithm::HS256,
        &EncodingKey::from_secret(OTHER_SECRET),
        &header,
        &json!({"sub":"a","exp":now() - 3600}).to_string(),
    );
    let answer = get_with(&svc, bearer(&forged)).await;
    assert!(
        answer.challenge().contains("the token is invalid"),
        "{}",
        answer.challenge()
    );
}

#[tokio::test]
async fn leeway_applies_to_exp_and_nbf() {
    let header = json!({"alg":"HS256","kid":"hs"});
    let just_expired = hs(header.clone(), json!({"sub":"a","exp":now() - 10}));
    let almost_valid = hs(
        header.clone(),
        json!({"sub":"a","exp":now() + 600,"nbf":now() + 10}),
    );

    let (default_leeway, _) = service_with(jwt_layer(table_keys()));
    assert_eq!(
        get_with(&default_leeway, bearer(&just_expired))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&default_leeway, bearer(&almost_valid))
            .await
            .status,
        StatusCode::OK
    );

    let (no_leeway, _) = service_with(
        TokenPolicy::builder(table_keys())
            .leeway(Duration::ZERO)
            .build()
            .unwrap()
            .auth_layer(),
    );
    assert_eq!(
        get_with(&no_leeway, bearer(&just_expired)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&no_leeway, bearer(&almost_valid)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn max_token_len_is_configurable() {
    let token = hs(
        json!({"alg":"HS256","kid":"hs"}),
        json!({"sub":"a","exp":now() + 600}),
    );
    let (exact, _) = service_with(jwt_layer(table_keys()).max_token_len(token.len()));
    assert_eq!(
        get_with(&exact, bearer(&token)).await.status,
        StatusCode::OK
    );
    let (short, _) = service_with(jwt_layer(table_keys()).max_token_len(token.len() - 1));
    let answer = get_with(&short, bearer(&token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.challenge().contains("the token is too long"));
}

#[tokio::test]
async fn scheme_is_case_insensitive_and_spaces_are_tolerated() {
    let (svc, _) = service_with(jwt_layer(table_keys()));
    let token = hs(
        json!({"alg":"HS256","kid":"hs"}),
        json!({"sub":"bob","exp":now() + 600}),
    );
    for value in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer   {token}"),
        format!("Bearer {token}  "),
    ] {
        let answer = get_with(&svc, vec![auth(&value)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{value:?}");
        assert_eq!(answer.body, "sub=bob");
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct AppClaims {
    sub: String,
    role: String,
    #[serde(default)]
    tenant: Option<u32>,
}

#[tokio::test]
async fn both_claim_types_reach_the_inner_service() {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let issuer = TokenPolicy::builder(keys.clone())
        .signing_key("v1")
        .issuer(ISS)
        .audience(AUD)
        .build()
        .unwrap()
        .token_issuer()
        .unwrap();
    let issued = issuer
        .issue_with(
            "carol",
            Some("session-9"),
            &json!({"role":"admin","tenant":7}),
        )
        .unwrap();

    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen_inner = Arc::clone(&seen);
    let svc = ServiceBuilder::new()
        .layer(layer_iss_aud(keys).claims::<AppClaims>())
        .service(service_fn(move |req: Request<Full<Bytes>>| {
            let app = req.extensions().get::<AppClaims>().cloned();
            let registered = req.extensions().get::<RegisteredClaims>().cloned();
            *seen_inner.lock().unwrap() = Some((app, registered));
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        }));
    let request = Request::get("/x")
        .header(AUTHORIZATION, format!("Bearer {}", issued.token))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let (app, registered) = seen.lock().unwrap().take().unwrap();
    assert_eq!(
        app,
        Some(AppClaims {
            sub: "carol".into(),
            role: "admin".into(),
            tenant: Some(7)
        })
    );
    let registered = registered.unwrap();
    assert_eq!(registered, issued.claims);
    assert_eq!(registered.sub, "carol");
    assert_eq!(registered.sid.as_deref(), Some("session-9"));
    assert_eq!(registered.jti.as_ref().map(String::len), Some(22));
    let iat = registered.iat.unwrap();
    assert!(iat.abs_diff(now()) <= 5);
    assert_eq!(registered.exp, iat + 15 * 60);
}

#[tokio::test]
async fn claims_that_do_not_fit_the_app_type_are_rejected() {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let token = signer(&keys, "v1").unwrap().issue("dave").unwrap().token;
    let (svc, calls) = service_with(jwt_layer(keys).claims::<AppClaims>());
    let answer = get_with(&svc, bearer(&token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "no `role` claim");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn public_paths_pass_without_a_token() {
    let layer = jwt_layer(table_keys())
        .public_path("/health")
        .public_path("/login")
        .public_if(|method, _uri| method == Method::OPTIONS);
    let (svc, calls) = service_with(layer);

    for (method, path) in [
        (Method::GET, "/health"),
        (Method::POST, "/login"),
        (Method::OPTIONS, "/api"),
    ] {
        let answer = send(&svc, method.clone(), path, vec![]).await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {path}");
        assert_eq!(answer.body, "anonymous");
    }
    // Public paths are not inspected: even garbage in Authorization passes, with no claims.
    let answer = send(&svc, Method::GET, "/health", vec![auth("Bearer")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // Exact match only.
    for path in ["/health/", "/Health", "/health/x", "/healthz", "/api"] {
        let answer = send(&svc, Method::GET, path, vec![]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

/// Tokens and requests an optional path refuses, as a protected path does: the reason, the
/// headers and the expected status.
fn bad_credentials() -> Vec<(&'static str, Headers, StatusCode)> {
    let hs_header = json!({"alg":"HS256","kid":"hs"});
    let signed = |claims: Value| bearer(&hs(hs_header.clone(), claims));
    let unauthorized = StatusCode::UNAUTHORIZED;
    vec![
        (
            "expired",
            signed(with(good_claims(), "exp", json!(now() - 3600))),
            unauthorized,
        ),
        (
            "not valid yet",
            signed(with(good_claims(), "nbf", json!(now() + 3600))),
            unauthorized,
        ),
        (
            "exp beyond the policy's longest lifetime",
            signed(with(good_claims(), "exp", json!(now() + 3 * 24 * 3600))),
            unauthorized,
        ),
        (
            "forged signature",
            bearer(&forge(
                Algorithm::HS256,
                &EncodingKey::from_secret(OTHER_SECRET),
                &hs_header,
                &good_claims().to_string(),
            )),
            unauthorized,
        ),
        (
            "alg none",
            bearer(&format!(
                "{}.{}.",
                b64(br#"{"alg":"none","kid":"hs"}"#),
                b64(good_claims().to_string().as_bytes())
            )),
            unauthorized,
        ),
        ("malformed", bearer("abc.def"), unauthorized),
        ("too long", bearer(&"a".repeat(9000)), unauthorized),
        (
            "wrong audience",
            signed(with(good_claims(), "aud", json!("another-api"))),
            unauthorized,
        ),
        (
            "wrong issuer",
            signed(with(good_claims(), "iss", json!("https://evil.test"))),
            unauthorized,
        ),
        (
            "no sub",
            signed(without(good_claims(), "sub")),
            unauthorized,
        ),
        (
            "Bearer without a token",
            vec![auth("Bearer")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "two Authorization headers",
            vec![
                auth(&format!("Bearer {}", hs(hs_header.clone(), good_claims()))),
                auth("Basic YWxpY2U6cHc="),
            ],
            StatusCode::BAD_REQUEST,
        ),
    ]
}

/// An optional path lets a request without a token through anonymously, gives a valid
/// token's claims to the handler, and refuses a bad token exactly as a protected path
/// does (RFC 6750 §3.1), without calling the handler.
#[tokio::test]
async fn optional_paths_verify_a_token_when_one_is_sent() {
    let (svc, calls) = service_with(layer_iss_aud(table_keys()).optional_path("/feed"));

    // No token, or another scheme (no bearer token): anonymous.
    for headers in [vec![], vec![auth("Basic YWxpY2U6cHc=")]] {
        let answer = send(&svc, Method::GET, "/feed", headers).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.body, "anonymous");
        assert!(!answer.headers.contains_key(WWW_AUTHENTICATE));
    }
    // A valid token: its claims, as on a protected path.
    let valid = bearer(&hs(json!({"alg":"HS256","kid":"hs"}), good_claims()));
    let answer = send(&svc, Method::POST, "/feed", valid).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body, "sub=alice");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    for (what, headers, status) in bad_credentials() {
        let optional = send(&svc, Method::GET, "/feed", headers.clone()).await;
        let protected = send(&svc, Method::GET, "/api", headers).await;
        assert_eq!(optional.status, status, "{what}: {:?}", optional.body);
        let code = if status == StatusCode::UNAUTHORIZED {
            "invalid_token"
        } else {
            "invalid_request"
        };
        assert!(
            optional.challenge().contains(&format!("error=\"{code}\"")),
            "{what}: {}",
            optional.challenge()
        );
        assert_eq!(optional.json()["error"], code, "{what}");
        assert_eq!(optional.status, protected.status, "{what}");
        assert_eq!(
            optional.headers.get(WWW_AUTHENTICATE),
            protected.headers.get(WWW_AUTHENTICATE),
            "{what}"
        );
        assert_eq!(optional.body, protected.body, "{what}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "a bad token reached the handler"
    );

    // Exact match only, as for public paths.
    for path in ["/feed/", "/Feed", "/feed/x", "/feedx"] {
        let answer = send(&svc, Method::GET, path, vec![]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(answer.challenge(), "Bearer", "{path}");
    }
}

/// `optional_if` matches on the method (and URI); a later predicate replaces an earlier
/// one, as `public_if` does.
#[tokio::test]
async fn optional_if_with_a_predicate_on_the_method() {
    let layer = layer_iss_aud(table_keys())
        .optional_if(|_, _| true)
        .optional_if(|method, _uri| method == Method::GET);
    let (svc, calls) = service_with(layer);
    let valid = || bearer(&hs(json!({"alg":"HS256","kid":"hs"}), good_claims()));
    let expired = bearer(&hs(
        json!({"alg":"HS256","kid":"hs"}),
        with(good_claims(), "exp", json!(now() - 3600)),
    ));

    let answer = send(&svc, Method::GET, "/products/7", vec![]).await;
    assert_eq!(
        (answer.status, answer.body.as_ref()),
        (StatusCode::OK, b"anonymous".as_ref())
    );
    let answer = send(&svc, Method::GET, "/products/7", valid()).await;
    assert_eq!(
        (answer.status, answer.body.as_ref()),
        (StatusCode::OK, b"sub=alice".as_ref())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let answer = send(&svc, Method::GET, "/products/7", expired).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.challenge(),
        r#"Bearer error="invalid_token", error_description="the token has expired""#
    );
    // Not a `GET`: a token is required.
    let answer = send(&svc, Method::POST, "/products/7", vec![]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.challenge(), "Bearer");
    assert_eq!(answer.json()["error"], "missing_token");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let answer = send(&svc, Method::POST, "/products/7", valid()).await;
    assert_eq!(
        (answer.status, answer.body.as_ref()),
        (StatusCode::OK, b"sub=alice".as_ref())
    );
}

/// A request both public and optional is public: not inspected, whatever it carries and
/// whichever rule was configured first.
#[tokio::test]
async fn public_wins_over_optional() {
    let hs_header = json!({"alg":"HS256","kid":"hs"});
    let valid = hs(hs_header.clone(), good_claims());
    let expired = hs(hs_header, with(good_claims(), "exp", json!(now() - 3600)));
    let base = || layer_iss_aud(table_keys());
    for (setup, layer) in [
        (
            "public_path, then optional_path",
            base().public_path("/both").optional_path("/both"),
        ),
        (
            "optional_path, then public_path",
            base().optional_path("/both").public_path("/both"),
        ),
        (
            "optional_if, then public_path",
            base().optional_if(|_, _| true).public_path("/both"),
        ),
        (
            "public_if, then optional_path",
            base()
                .public_if(|_, uri| uri.path() == "/both")
                .optional_path("/both"),
        ),
    ] {
        let (svc, calls) = service_with(layer);
        for headers in [
            bearer(&valid),
            bearer(&expired),
            vec![auth("Bearer")],
            vec![],
        ] {
            let answer = send(&svc, Method::GET, "/both", headers).await;
            assert_eq!(answer.status, StatusCode::OK, "{setup}: {:?}", answer.body);
            assert_eq!(answer.body, "anonymous", "{setup}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4, "{setup}");
    }
}

/// An optional path reads the token only from the configured sources: a bearer token sent
/// to a cookie-only layer is no token, and a cleared cookie is none either.
#[tokio::test]
async fn optional_paths_read_the_configured_sources() {
    let hs_header = json!({"alg":"HS256","kid":"hs"});
    let token = hs(hs_header.clone(), json!({"sub":"erin","exp":now() + 600}));
    let expired = hs(hs_header, json!({"sub":"erin","exp":now() - 3600}));
    let layer = jwt_layer(table_keys())
        .token_source(TokenSource::cookie("at"))
        .optional_path("/feed");
    let (svc, calls) = service_with(layer);
    let cookie = |v: &str| vec![(COOKIE, HeaderValue::from_str(v).unwrap())];

    for headers in [vec![], cookie("at="), cookie("theme=dark"), bearer(&token)] {
        let answer = send(&svc, Method::GET, "/feed", headers).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.body, "anonymous");
    }
    let answer = send(&svc, Method::GET, "/feed", cookie(&format!("at={token}"))).await;
    assert_eq!(answer.body, "sub=erin");
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    let answer = send(&svc, Method::GET, "/feed", cookie(&format!("at={expired}"))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.json()["error"], "invalid_token");
    let answer = send(
        &svc,
        Method::GET,
        "/feed",
        cookie(&format!("at={token}; at={token}")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// gRPC callers get the layer's gRPC rejection on an optional path too: a bad token is
/// `UNAUTHENTICATED` (16), a malformed request `INVALID_ARGUMENT` (3), as on a protected
/// path; without a token the call runs anonymously.
#[tokio::test]
async fn optional_paths_answer_grpc_callers_in_grpc() {
    let (svc, calls) =
        service_with(layer_iss_aud(table_keys()).optional_path("/shop.Catalog/List"));
    let grpc = |mut headers: Headers| {
        headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        ));
        headers
    };
    let hs_header = json!({"alg":"HS256","kid":"hs"});
    let valid = hs(hs_header.clone(), good_claims());
    let expired = hs(hs_header, with(good_claims(), "exp", json!(now() - 3600)));

    let answer = send(&svc, Method::POST, "/shop.Catalog/List", grpc(vec![])).await;
    assert_eq!(
        (answer.status, answer.body.as_ref()),
        (StatusCode::OK, b"anonymous".as_ref())
    );
    assert!(!answer.headers.contains_key("grpc-status"));
    let answer = send(
        &svc,
        Method::POST,
        "/shop.Catalog/List",
        grpc(bearer(&valid)),
    )
    .await;
    assert_eq!(answer.body, "sub=alice");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    for (headers, code) in [(bearer(&expired), "16"), (vec![auth("Bearer")], "3")] {
        let optional = send(
            &svc,
            Method::POST,
            "/shop.Catalog/List",
            grpc(headers.clone()),
        )
        .await;
        let protected = send(&svc, Method::POST, "/shop.Catalog/Buy", grpc(headers)).await;
        assert_eq!(optional.status, StatusCode::OK);
        assert_eq!(optional.headers["content-type"], "application/grpc");
        assert_eq!(optional.headers["grpc-status"], code);
        assert!(optional.body.is_empty());
        assert_eq!(
            optional.headers.get("grpc-message"),
            protected.headers.get("grpc-message")
        );
        assert_eq!(protected.headers["grpc-status"], code);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cookie_and_header_sources() {
    let token = hs(
        json!({"alg":"HS256","kid":"hs"}),
        json!({"sub":"erin","exp":now() + 600}),
    );
    let x_token = HeaderName::from_static("x-access-token");
    let layer = jwt_layer(table_keys()).token_sources([
        TokenSource::Bearer,
        TokenSource::cookie("at"),
        TokenSource::header(x_token.clone()),
    ]);
    let (svc, _) = service_with(layer);
    let cookie = |v: &str| (COOKIE, HeaderValue::from_str(v).unwrap());
    let header = |v: &str| (x_token.clone(), HeaderValue::from_str(v).unwrap());

    for headers in [
        bearer(&token),
        vec![cookie(&format!("theme=dark; at={token}"))],
        vec![header(&token)],
        vec![cookie("theme=dark"), cookie(&format!("at={token}"))],
    ] {
        let answer = get_with(&svc, headers).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "sub=erin");
    }

    let cases = [
        (
            "bearer and cookie",
            vec![
                auth(&format!("Bearer {token}")),
                cookie(&format!("at={token}")),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            "cookie and header",
            vec![cookie(&format!("at={token}")), header(&token)],
            StatusCode::BAD_REQUEST,
        ),
        (
            "cookie twice",
            vec![cookie(&format!("at={token}; at={token}"))],
            StatusCode::BAD_REQUEST,
        ),
        (
            "token header twice",
            vec![header(&token), header(&token)],
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty token header",
            vec![header("")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "cleared cookie",
            vec![cookie("at=")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "other cookies only",
            vec![cookie("theme=dark")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "garbage cookie",
            vec![cookie("at=a%20b")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "forged cookie",
            vec![cookie("at=a.b.c")],
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (name, headers, expected) in cases {
        let answer = get_with(&svc, headers).await;
        assert_eq!(answer.status, expected, "{name}");
    }

    // With only a cookie source, Authorization is not looked at.
    let (cookie_only, _) =
        service_with(jwt_layer(table_keys()).token_source(TokenSource::cookie("at")));
    let answer = get_with(&cookie_only, bearer(&token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.challenge(), "Bearer");
}

/// Signs with a private key, verifies with the matching public key only.
async fn roundtrip(alg: Algorithm, private: &str, public: &str) {
    let signing = JwtKeySet::new()
        .with_private_pem("k1", alg, &fixture(private))
        .unwrap();
    let verifying = JwtKeySet::new()
        .with_public_pem("k1", alg, &fixture(public))
        .unwrap();
    let token = signer(&signing, "k1")
        .unwrap()
        .issue("frank")
        .unwrap()
        .token;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!((header.alg, header.kid.as_deref()), (alg, Some("k1")));

    let (svc, _) = service_with(jwt_layer(verifying));
    let answer = get_with(&svc, bearer(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{alg:?}: {:?}", answer.body);
    assert_eq!(answer.body, "sub=frank");
    // The signing set verifies its own tokens too.
    let (svc, _) = service_with(jwt_layer(signing));
    assert_eq!(
        get_with(&svc, bearer(&token)).await.status,
        StatusCode::OK,
        "{alg:?}"
    );
}

#[tokio::test]
async fn happy_path_rsa() {
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        roundtrip(alg, "rsa1-private.pem", "rsa1-public.pem").await;
    }
}

#[tokio::test]
async fn happy_path_ecdsa() {
    roundtrip(Algorithm::ES256, "ec256-private.pem", "ec256-public.pem").await;
    roundtrip(Algorithm::ES384, "ec384-private.pem", "ec384-public.pem").await;
}

#[tokio::test]
async fn happy_path_eddsa() {
    roundtrip(
        Algorithm::EdDSA,
        "ed25519-private.pem",
        "ed25519-public.pem",
    )
    .await;
}

#[tokio::test]
async fn happy_path_hmac() {
    for (alg, len) in [
        (Algorithm::HS256, 32),
        (Algorithm::HS384, 48),
        (Algorithm::HS512, 64),
    ] {
        let keys = JwtKeySet::new().with_hmac("h", alg, &vec![9; len]).unwrap();
        let token = signer(&keys, "h").unwrap().issue("gina").unwrap().token;
        let (svc, _) = service_with(jwt_layer(keys));
        let answer = get_with(&svc, bearer(&token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{alg:?}");
        assert_eq!(answer.body, "sub=gina");
    }
}

#[tokio::test]
async fn a_lone_key_accepts_tokens_without_kid() {
    let keys = JwtKeySet::new()
        .with_hmac("only", Algorithm::HS256, SECRET)
        .unwrap();
    let token = hs(
        json!({"alg":"HS256"}),
        json!({"sub":"hana","exp":now() + 600}),
    );
    let (svc, _) = service_with(jwt_layer(keys));
    assert_eq!(get_with(&svc, bearer(&token)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn kid_rotation_accepts_old_and_new_keys() {
    let old = JwtKeySet::new()
        .with_private_pem("2024-01", Algorithm::RS256, &fixture("rsa1-private.pem"))
        .unwrap();
    let old_token = signer(&old, "2024-01")
        .unwrap()
        .issue("ivan")
        .unwrap()
        .token;

    // During the overlap: the old key verifies only, the new key signs.
    let overlap = JwtKeySet::new()
        .with_public_pem("2024-01", Algorithm::RS256, &fixture("rsa1-public.pem"))
        .unwrap()
        .with_private_pem("2024-06", Algorithm::RS256, &fixture("rsa2-private.pem"))
        .unwrap();
    let new_token = signer(&overlap, "2024-06")
        .unwrap()
        .issue("ivan")
        .unwrap()
        .token;
    let refused = signer(&overlap, "2024-01").unwrap_err();
    assert_eq!(refused.setting(), "signing_key");
    assert!(refused.reason().contains("cannot sign"), "{refused}");
    let (svc, _) = service_with(jwt_layer(overlap));
    assert_eq!(
        get_with(&svc, bearer(&old_token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&svc, bearer(&new_token)).await.status,
        StatusCode::OK
    );

    // After the overlap the old key is gone, and so are its tokens.
    let after = JwtKeySet::new()
        .with_public_pem("2024-06", Algorithm::RS256, &fixture("rsa2-public.pem"))
        .unwrap();
    let (svc, _) = service_with(jwt_layer(after));
    assert_eq!(
        get_with(&svc, bearer(&old_token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&svc, bearer(&new_token)).await.status,
        StatusCode::OK
    );

    // A token re-labelled with the other key's kid fails.
    let relabelled = forge(
        Algorithm::RS256,
        &rsa1_private(),
        &json!({"alg":"RS256","kid":"2024-06"}),
        &json!({"sub":"ivan","exp":now() + 600}).to_string(),
    );
    assert_eq!(
        get_with(&svc, bearer(&relabelled)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

fn jwk_json(key: &EncodingKey, alg: Algorithm, kid: &str, keep_alg: bool) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    if !keep_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

#[tokio::test]
async fn static_jwks_documents_load() {
    let _ = JwtKeySet::new();
    let rsa = rsa1_private();
    let ec = EncodingKey::from_ec_pem(&fixture("ec384-private.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap();
    let mut enc_key = jwk_json(&rsa2_private(), Algorithm::RS256, "enc", true);
    enc_key["use"] = json!("enc");
    let document = json!({"keys": [
        jwk_json(&rsa, Algorithm::PS256, "rsa", true),
        // No `alg`: pinned by the curve.
        jwk_json(&ec, Algorithm::ES384, "ec", false),
        jwk_json(&ed, Algorithm::EdDSA, "ed", true),
        enc_key,
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
    ]});
    let keys = JwtKeySet::from_jwks_json(&document.to_string()).unwrap();
    assert_eq!(
        keys.kids().collect::<Vec<_>>(),
        [Some("rsa"), Some("ec"), Some("ed")].map(|k| k.map(String::from)),
        "encryption and P-521 keys are skipped"
    );
    let (svc, _) = service_with(jwt_layer(keys));

    let claims = json!({"sub":"judy","exp":now() + 600}).to_string();
    for (alg, key, kid) in [
        (Algorithm::PS256, &rsa, "rsa"),
        (Algorithm::ES384, &ec, "ec"),
        (Algorithm::EdDSA, &ed, "ed"),
    ] {
        let token = forge(alg, key, &json!({"alg": alg, "kid": kid}), &claims);
        assert_eq!(
            get_with(&svc, bearer(&token)).await.status,
            StatusCode::OK,
            "{kid}"
        );
    }
    // The JWK's `alg` pins it: RS256 with the PS256 key is refused.
    let token = forge(
        Algorithm::RS256,
        &rsa,
        &json!({"alg":"RS256","kid":"rsa"}),
        &claims,
    );
    assert_eq!(
        get_with(&svc, bearer(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The encryption key is not a verification key.
    let token = forge(
        Algorithm::RS256,
        &rsa2_private(),
        &json!({"alg":"RS256","kid":"enc"}),
        &claims,
    );
    assert_eq!(
        get_with(&svc, bearer(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A JwkSet serialized by jsonwebtoken loads too.
    let set = JwkSet {
        keys: vec![serde_json::from_value(jwk_json(&rsa, Algorithm::RS256, "a", true)).unwrap()],
    };
    assert_eq!(
        JwtKeySet::from_jwks_json(&serde_json::to_string(&set).unwrap())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn jwks_with_bad_keys_is_an_error() {
    // Duplicate kid.
    let _ = JwtKeySet::new();
    let rsa = rsa1_private();
    let doc = json!({"keys": [jwk_json(&rsa, Algorithm::RS256, "a", true), jwk_json(&rsa, Algorithm::RS256, "a", true)]});
    assert!(matches!(
        JwtKeySet::from_jwks_json(&doc.to_string()),
        Err(KeyError::DuplicateKid(_))
    ));
    // A weak oct key.
    let doc = json!({"keys": [{"kty":"oct","kid":"o","alg":"HS256","k": b64(b"short")}]});
    assert!(matches!(
        JwtKeySet::from_jwks_json(&doc.to_string()),
        Err(KeyError::WeakSecret { .. })
    ));
    // An EC key whose `alg` does not fit its curve is skipped, leaving nothing.
    let ec = EncodingKey::from_ec_pem(&fixture("ec256-private.pem")).unwrap();
    let mut wrong = jwk_json(&ec, Algorithm::ES256, "e", true);
    wrong["alg"] = json!("ES384");
    let doc = json!({"keys": [wrong]});
    assert!(matches!(
        JwtKeySet::from_jwks_json(&doc.to_string()),
        Err(KeyError::EmptyJwks)
    ));
    // No keys array.
    assert!(matches!(
        JwtKeySet::from_jwks_json("{}"),
        Err(KeyError::InvalidJwks(_))
    ));
}

#[test]
fn key_material_must_fit_the_algorithm() {
    let rsa_public = fixture("rsa1-public.pem");
    let ec_public = fixture("ec256-public.pem");
    assert!(matches!(
        JwtKeySet::new().with_public_pem("k", Algorithm::HS256, &rsa_public),
        Err(KeyError::AlgorithmMismatch { .. })
    ));
    assert!(matches!(
        JwtKeySet::new().with_public_pem("k", Algorithm::ES256, &rsa_public),
        Err(KeyError::InvalidKey(_))
    ));
    assert!(JwtKeySet::new()
        .with_public_pem("k", Algorithm::RS256, &ec_public)
        .is_err());
    assert!(JwtKeySet::new()
        .with_public_pem("k", Algorithm::EdDSA, b"not a pem")
        .is_err());
    assert!(JwtKeySet::new()
        .with_private_pem("k", Algorithm::ES384, &fixture("ec256-private.pem"))
        .is_err());
    assert!(matches!(
        JwtKeySet::new().with_private_pem("k", Algorithm::RS256, &rsa_public),
        Err(KeyError::InvalidKey(_))
    ));
    assert!(matches!(
        JwtKeySet::new().with_hmac("k", Algorithm::HS512, &[1; 63]),
        Err(KeyError::WeakSecret { min: 64, .. })
    ));
}

#[test]
fn issuer_refuses_bad_custom_claims() {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let issuer = signer(&keys, "v1").unwrap();
    for reserved in ["sub", "exp", "iat", "jti", "sid", "iss", "aud"] {
        let err = issuer
            .issue_with("a", None, &json!({ reserved: "x" }))
            .unwrap_err();
        assert!(
            matches!(err, IssueError::ReservedClaim(ref k) if k == reserved),
            "{err}"
        );
    }
    assert!(matches!(
        issuer.issue_with("a", None, &json!([1, 2])),
        Err(IssueError::ClaimsNotAnObject)
    ));
    assert!(matches!(
        issuer.issue_with("a", None, "text"),
        Err(IssueError::ClaimsNotAnObject)
    ));
    let unknown = signer(&keys, "v2").unwrap_err();
    assert_eq!(unknown.setting(), "signing_key");
    assert!(unknown.reason().contains("no key"), "{unknown}");
    // Two tokens never share a jti.
    let a = issuer.issue("a").unwrap();
    let b = issuer.issue("a").unwrap();
    assert_ne!(a.claims.jti, b.claims.jti);
    assert!(
        !format!("{a:?}").contains(&a.token),
        "Debug redacts the token"
    );
    assert!(!format!("{issuer:?}").contains("table-secret"));
}

#[tokio::test]
async fn issuer_ttl_iss_and_aud_are_checked_by_the_layer() {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let policy = TokenPolicy::builder(keys.clone())
        .signing_key("v1")
        .issuer(ISS)
        .audience(AUD)
        .access_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let good = policy.token_issuer().unwrap();
    let issued = good.issue("kim").unwrap();
    assert_eq!(issued.claims.exp - issued.claims.iat.unwrap(), 60);
    let foreign = TokenPolicy::builder(keys.clone())
        .signing_key("v1")
        .issuer("https://other.test")
        .audience(AUD)
        .build()
        .unwrap()
        .token_issuer()
        .unwrap();

    let (svc, _) = service_with(layer_iss_aud(keys.clone()));
    assert_eq!(
        get_with(&svc, bearer(&issued.token)).await.status,
        StatusCode::OK
    );
    let answer = get_with(&svc, bearer(&foreign.issue("kim").unwrap().token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // A layer with no audience configured refuses tokens that carry one (RFC 7519 §4.1.3).
    let (no_aud, _) = service_with(jwt_layer(keys));
    assert_eq!(
        get_with(&no_aud, bearer(&issued.token)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn works_behind_a_real_hyper_server() {
    use hyper_util::rt::TokioIo;

    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let token = signer(&keys, "v1").unwrap().issue("leo").unwrap().token;
    let layer = jwt_layer(keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = ServiceBuilder::new()
                .layer(layer.clone())
                .service(service_fn(
                    |req: Request<hyper::body::Incoming>| async move {
                        let sub = req
                            .extensions()
                            .get::<RegisteredClaims>()
                            .map(|c| c.sub.clone());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            sub.unwrap_or_default(),
                        ))))
                    },
                ));
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = |auth: Vec<String>| {
        let mut builder = Request::get(format!("http://{addr}/"));
        for value in auth {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(Full::new(Bytes::new())).unwrap()
    };
    let response = client
        .request(request(vec![format!("Bearer {token}")]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "leo"
    );

    let response = client
        .request(request(vec![
            format!("Bearer {token}"),
            format!("Bearer {token}"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "duplicated headers survive hyper"
    );

    let response = client.request(request(vec![])).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
}

#[cfg(feature = "axum")]
mod axum_extractors {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower_stateless::jwt::Claims;

    async fn me(Claims(claims): Claims<RegisteredClaims>) -> String {
        claims.sub
    }

    async fn maybe(claims: Option<Claims<RegisteredClaims>>) -> String {
        claims.map_or_else(|| "anonymous".to_owned(), |c| c.0.sub)
    }

    async fn app(Claims(claims): Claims<AppClaims>) -> String {
        claims.role
    }

    async fn maybe_app(claims: Option<Claims<AppClaims>>) -> String {
        claims.map_or_else(|| "anonymous".to_owned(), |c| c.0.role)
    }

    fn routes() -> Router {
        Router::new()
            .route("/me", get(me))
            .route("/maybe", get(maybe))
            .route("/app", get(app))
            .route("/maybe-app", get(maybe_app))
            .route("/open-app", get(maybe_app))
    }

    async fn call(
        router: Router,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut builder = Request::get(path);
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = router
            .oneshot(builder.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    /// The crate's `500 internal_error` JSON body, without a challenge: a misconfigured
    /// server, not a client that should log in again.
    #[track_caller]
    fn assert_misconfigured((status, headers, body): (StatusCode, HeaderMap, Bytes)) {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body:?}");
        assert!(!headers.contains_key(WWW_AUTHENTICATE), "{headers:?}");
        assert_eq!(headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert!(body["message"].is_string());
    }

    /// No JWT layer on the route is a misconfiguration, answered as `RequireScopeLayer`
    /// and the `Session` extractor answer theirs; `Option<Claims>` is `None`.
    #[tokio::test]
    async fn extractor_without_the_layer_is_500() {
        assert_misconfigured(call(routes(), "/me", None).await);
        assert_misconfigured(call(routes(), "/app", Some("not.even.verified")).await);

        let (status, _, body) = call(routes(), "/maybe", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "anonymous");
    }

    #[tokio::test]
    async fn extractor_with_the_layer() {
        let keys = JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, SECRET)
            .unwrap();
        let issuer = signer(&keys, "v1").unwrap();
        let token = issuer
            .issue_with("mia", None, &json!({"role":"editor"}))
            .unwrap()
            .token;
        let router = routes().layer(jwt_layer(keys).claims::<AppClaims>().public_path("/maybe"));

        let (status, _, body) = call(router.clone(), "/me", Some(&token)).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"mia".as_ref()));
        let (status, _, body) = call(router.clone(), "/app", Some(&token)).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, b"editor".as_ref())
        );
        let (status, _, body) = call(router.clone(), "/maybe", None).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, b"anonymous".as_ref())
        );
        let (status, headers, _) = call(router, "/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[WWW_AUTHENTICATE], "Bearer");
    }

    /// The layer verified the token, but the handler asks for a claims type the layer does
    /// not insert: `500`, not a `401` that would send the client to log in again forever.
    /// `Claims<RegisteredClaims>` works whatever the layer's type.
    #[tokio::test]
    async fn extractor_for_a_type_the_layer_does_not_insert_is_500() {
        let keys = JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, SECRET)
            .unwrap();
        let token = signer(&keys, "v1")
            .unwrap()
            .issue_with("noa", None, &json!({"role":"editor"}))
            .unwrap()
            .token;

        // The layer decodes `Value`; the handler asks for `AppClaims`.
        let router = routes().layer(jwt_layer(keys.clone()));
        assert_misconfigured(call(router.clone(), "/app", Some(&token)).await);
        let (status, _, body) = call(router.clone(), "/me", Some(&token)).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"noa".as_ref()));
        // Without a token the layer answers, before any extractor.
        let (status, headers, _) = call(router, "/app", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[WWW_AUTHENTICATE], "Bearer");

        // And the other way round: the layer decodes `AppClaims`, the handler asks for
        // `Value`.
        async fn raw(Claims(claims): Claims<Value>) -> String {
            claims.to_string()
        }
        let router = Router::new()
            .route("/raw", get(raw))
            .layer(jwt_layer(keys).claims::<AppClaims>());
        assert_misconfigured(call(router, "/raw", Some(&token)).await);
    }

    /// `Option<Claims<T>>` behind a layer that decodes another type is the same
    /// misconfiguration as `Claims<T>` there: `500`, not a `None` that would treat every
    /// signed-in caller as anonymous. `None` only where the request carries no claims at
    /// all (no layer, a public path).
    #[tokio::test]
    async fn optional_extractor_for_a_type_the_layer_does_not_insert_is_500() {
        let keys = JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, SECRET)
            .unwrap();
        let token = signer(&keys, "v1")
            .unwrap()
            .issue_with("noa", None, &json!({"role":"editor"}))
            .unwrap()
            .token;
        let text = |(status, _, body): (StatusCode, HeaderMap, Bytes)| {
            assert_eq!(status, StatusCode::OK, "{body:?}");
            String::from_utf8(body.to_vec()).unwrap()
        };

        // The layer decodes `Value`; the handler asks for `Option<Claims<AppClaims>>`.
        let router = routes().layer(jwt_layer(keys.clone()).public_path("/open-app"));
        assert_misconfigured(call(router.clone(), "/maybe-app", Some(&token)).await);
        // On a public path the layer verifies nothing and inserts nothing: `None`.
        let open = call(router.clone(), "/open-app", Some(&token)).await;
        assert_eq!(text(open), "anonymous");
        // `Option<Claims<RegisteredClaims>>` works whatever the layer's type.
        assert_eq!(text(call(router, "/maybe", Some(&token)).await), "noa");

        // No layer: no claims at all, `None`.
        let bare = call(routes(), "/maybe-app", Some(&token)).await;
        assert_eq!(text(bare), "anonymous");

        // The layer decodes `AppClaims`: `Some`.
        let router = routes().layer(jwt_layer(keys).claims::<AppClaims>());
        let matching = call(router, "/maybe-app", Some(&token)).await;
        assert_eq!(text(matching), "editor");
    }

    /// On an optional path, `Option<Claims<T>>` is `None` without a token and `Some` with
    /// a valid one; a bad token is refused by the layer before the handler runs.
    /// `Claims<T>` there without a token is the public path's misconfiguration: `500`.
    #[tokio::test]
    async fn optional_paths_give_handlers_an_option() {
        let keys = JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, SECRET)
            .unwrap();
        let token = signer(&keys, "v1")
            .unwrap()
            .issue_with("mia", None, &json!({"role":"editor"}))
            .unwrap()
            .token;
        let expired = forge(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET),
            &json!({"alg":"HS256","kid":"v1"}),
            &json!({"sub":"mia","role":"editor","exp":now() - 3600}).to_string(),
        );
        let router = routes().layer(
            jwt_layer(keys)
                .claims::<AppClaims>()
                .optional_path("/maybe-app")
                .optional_path("/app"),
        );

        let (status, _, body) = call(router.clone(), "/maybe-app", None).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, b"anonymous".as_ref())
        );
        let (status, _, body) = call(router.clone(), "/maybe-app", Some(&token)).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, b"editor".as_ref())
        );
        for bad in [expired.as_str(), "abc.def", &format!("{token}x")] {
            let (status, headers, body) = call(router.clone(), "/maybe-app", Some(bad)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}: {body:?}");
            assert!(
                headers[WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with(r#"Bearer error="invalid_token""#),
                "{headers:?}"
            );
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "invalid_token");
        }

        assert_misconfigured(call(router.clone(), "/app", None).await);
        let (status, _, body) = call(router.clone(), "/app", Some(&token)).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, b"editor".as_ref())
        );
        // Not optional: a token is required.
        let (status, headers, _) = call(router, "/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[WWW_AUTHENTICATE], "Bearer");
    }
}

/// Settings that would overflow, underflow or make no sense are refused when the policy is
/// built, with a `ConfigError` naming the setting, never as a panic or a 500 per request.
#[test]
fn policy_refuses_settings_that_cannot_work() {
    let keys = || {
        JwtKeySet::new()
            .with_hmac("v1", Algorithm::HS256, SECRET)
            .unwrap()
    };
    let verify_only = JwtKeySet::new()
        .with_public_pem("rs", Algorithm::RS256, &fixture("rsa1-public.pem"))
        .unwrap();
    let beyond_i64 = Duration::from_secs(i64::MAX as u64 + 1);
    let cases = [
        // jsonwebtoken computes `now - leeway` in u64: a leeway past the clock underflows.
        (
            TokenPolicy::builder(keys()).leeway(Duration::from_secs(now() + 1)),
            "leeway",
        ),
        (TokenPolicy::builder(keys()).leeway(Duration::MAX), "leeway"),
        (TokenPolicy::builder(keys()).leeway(beyond_i64), "leeway"),
        (
            TokenPolicy::builder(keys()).leeway(Duration::from_secs(3601)),
            "leeway",
        ),
        (
            TokenPolicy::builder(keys()).access_ttl(Duration::ZERO),
            "access_ttl",
        ),
        (
            TokenPolicy::builder(keys()).access_ttl(Duration::from_millis(999)),
            "access_ttl",
        ),
        (
            TokenPolicy::builder(keys()).access_ttl(beyond_i64),
            "access_ttl",
        ),
        (
            TokenPolicy::builder(keys()).access_ttl(Duration::MAX),
            "access_ttl",
        ),
        (
            TokenPolicy::builder(keys()).access_ttl(Duration::from_secs(101 * 365 * 24 * 3600)),
            "access_ttl",
        ),
        (
            TokenPolicy::builder(keys()).signing_key("nope"),
            "signing_key",
        ),
        (
            TokenPolicy::builder(verify_only.clone()).signing_key("rs"),
            "signing_key",
        ),
        (TokenPolicy::builder(JwtKeySet::new()), "keys"),
    ];
    for (builder, setting) in cases {
        let debug = format!("{builder:?}");
        let error = builder.build().expect_err(&debug);
        assert_eq!(error.setting(), setting, "{debug}: {error}");
        assert!(error.to_string().contains(setting), "{error}");
    }
    let verify_only = TokenPolicy::builder(verify_only).build().unwrap();
    assert_eq!(
        verify_only.token_issuer().unwrap_err().setting(),
        "signing_key"
    );
}

/// The largest accepted settings work per request: no overflow on the request path.
#[tokio::test]
async fn policy_limits_work_per_request() {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let policy = TokenPolicy::builder(keys)
        .signing_key("v1")
        .leeway(Duration::from_secs(3600))
        .access_ttl(Duration::from_secs(99 * 365 * 24 * 3600))
        .build()
        .unwrap();
    let token = policy.token_issuer().unwrap().issue("max").unwrap().token;
    let (svc, _) = service_with(policy.auth_layer());
    let answer = get_with(&svc, bearer(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let expired = hs(
        json!({"alg":"HS256","kid":"v1"}),
        json!({"sub":"a","exp":now() - 3602}),
    );
    assert_eq!(
        get_with(&svc, bearer(&expired)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// The default claims type needs no turbofish: `serde_json::Value` claims are inserted.
#[tokio::test]
async fn default_claims_type_is_json_value() {
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, SECRET)
        .unwrap();
    let policy = TokenPolicy::builder(keys)
        .signing_key("v1")
        .build()
        .unwrap();
    let debug = format!("{policy:?} {:?}", policy.auth_layer());
    assert!(
        !debug.contains("table-secret"),
        "Debug redacts keys: {debug}"
    );
    let token = policy.token_issuer().unwrap().issue("val").unwrap().token;
    let svc = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(&policy))
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let sub = req
                .extensions()
                .get::<Value>()
                .and_then(|claims| claims["sub"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sub))))
        }));
    let request = Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "val");
}
