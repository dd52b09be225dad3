//! Black-box tests of `examples/hyper_minimal.rs` and `examples/tonic_auth.rs` over real
//! TCP: each example runs as a child process on a free loopback port.
#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};

const SECRET: &str = "test-secret-for-the-minimal-examples-0123456789";

/// A running example, killed and reaped when dropped.
struct Example {
    child: Child,
    port: u16,
    /// The demo token the example printed for alice.
    token: String,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Example {
    /// Builds (once per name and run, so never a stale binary) and starts the example, and
    /// waits until it prints its token and listens.
    fn start(name: &str) -> Self {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(|p| p.parent()).expect("profile dir");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", name, "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().expect("run cargo build").success());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(profile_dir.join("examples").join(name))
            .env("PORT", port.to_string())
            .env("JWT_SECRET", SECRET)
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the example");
        let (lines, seen) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let mut example = Self {
            child,
            port,
            token: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = seen.recv_timeout(left).expect("the example never listened");
            if let Some(token) = line.strip_prefix("TOKEN=") {
                example.token = token.to_owned();
            }
            if line.starts_with("listening on") {
                break;
            }
        }
        assert!(!example.token.is_empty(), "no token printed");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the example did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        example
    }
}

fn token_for(sub: &str, secret: &str) -> String {
    let keys = JwtKeySet::new()
        .with_hmac("main", Algorithm::HS256, secret.as_bytes())
        .expect("HMAC key");
    TokenPolicy::builder(keys)
        .signing_key("main")
        .build()
        .expect("policy")
        .token_issuer()
        .expect("issuer")
        .issue(sub)
        .expect("token")
        .token
}

#[tokio::test]
async fn hyper_minimal_authenticates_and_replays() {
    let at = Example::start("hyper_minimal");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/payments", at.port);
    let pay = |token: Option<&str>, key: Option<&str>, cents: u64| {
        let mut request = http.post(&url).json(&json!({"amount_cents": cents}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };

    let res = pay(None, Some("k1"), 500).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let forged = token_for("alice", "another-secret-entirely-0123456789abcdef");
    let res = pay(Some(&forged), Some("k1"), 500).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "signed with another key"
    );
    let res = pay(Some(&at.token), None, 500).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "the key is required");

    let res = pay(Some(&at.token), Some("k1"), 500).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(!res.headers().contains_key("idempotent-replayed"));
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["sub"], "alice");
    let res = pay(Some(&at.token), Some("k1"), 500).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let replay: Value = res.json().await.unwrap();
    assert_eq!(replay, first, "the same payment, not a new one");
    let res = pay(Some(&at.token), Some("k1"), 900).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = pay(Some(&at.token), Some("k2"), 500).await.unwrap();
    let other: Value = res.json().await.unwrap();
    assert_ne!(other["payment_id"], first["payment_id"], "another key pays");
}

/// `demo.Empty` of the example.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// `demo.Identity` of the example.
#[derive(Clone, PartialEq, prost::Message)]
struct Identity {
    #[prost(string, tag = "1")]
    sub: String,
    #[prost(string, tag = "2")]
    jti: String,
    #[prost(uint64, tag = "3")]
    exp: u64,
}

async fn call<Res>(
    channel: &tonic::transport::Channel,
    method: &'static str,
    token: Option<&str>,
) -> Result<Res, Status>
where
    Res: prost::Message + Default + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut request = tonic::Request::new(Empty {});
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    grpc.unary(
        request,
        PathAndQuery::from_static(method),
        ProstCodec::<Empty, Res>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn tonic_auth_needs_a_valid_unrevoked_token() {
    let at = Example::start("tonic_auth");
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", at.port))
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let who = "/demo.Account/WhoAmI";

    let status = call::<Identity>(&channel, who, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no token: {status:?}");
    let status = call::<Identity>(&channel, who, Some("not.a.jwt"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "garbage: {status:?}");
    let forged = token_for("alice", "another-secret-entirely-0123456789abcdef");
    let status = call::<Identity>(&channel, who, Some(&forged))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "wrong key: {status:?}"
    );

    let me = call::<Identity>(&channel, who, Some(&at.token))
        .await
        .expect("a valid token is let through");
    assert_eq!(me.sub, "alice");
    assert!(!me.jti.is_empty() && me.exp > 0);
    let bob = token_for("bob", SECRET);
    let me = call::<Identity>(&channel, who, Some(&bob)).await.unwrap();
    assert_eq!(me.sub, "bob");

    call::<Empty>(&channel, "/demo.Account/Logout", Some(&at.token))
        .await
        .expect("logout");
    let status = call::<Identity>(&channel, who, Some(&at.token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "revoked: {status:?}");
    let me = call::<Identity>(&channel, who, Some(&bob)).await.unwrap();
    assert_eq!(me.sub, "bob", "other tokens stay valid");
    let status = call::<Empty>(&channel, "/demo.Account/Nope", Some(&bob))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}
