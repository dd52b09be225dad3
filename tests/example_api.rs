//! Black-box test of `examples/stateless_api.rs` over real TCP: the example binary is
//! started on a free port and driven with an HTTP client.
#![cfg(feature = "axum")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

fn example_binary() -> PathBuf {
    // target/<profile>/deps/example_api-<hash> → target/<profile>/examples/stateless_api
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("profile dir");
    let bin = dir.join("examples").join("stateless_api");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "stateless_api", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the example failed");
    }
    bin
}

struct Instance(Child, u16);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Instance {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(example_binary())
        .env("PORT", port.to_string())
        .env(
            "JWT_SECRET",
            "test-secret-shared-by-all-instances-0123456789",
        )
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start example");
    let instance = Instance(child, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "example did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    instance
}

#[tokio::test]
async fn login_profile_cart_logout_on_memory() {
    let at = start();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", at.1);
    let http = reqwest::Client::new();

    assert_eq!(
        http.get(url("/health")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(url("/ready")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let bad = json!({"username": "alice", "password": "nope"});
    let res = http.post(url("/login")).json(&bad).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = http
        .post(url("/login"))
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert!(
        matches!(res.status().as_u16(), 400 | 422),
        "{}",
        res.status()
    );

    let good = json!({"username": "alice", "password": "wonderland"});
    let res = http.post(url("/login")).json(&good).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap().to_owned();

    let res = http.get(url("/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let me: Value = http
        .get(url("/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["sub"], "alice");

    let put = |sku: &str, qty: u32| {
        http.put(url(&format!("/cart/items/{sku}")))
            .header("cookie", &cookie)
            .json(&json!({"qty": qty}))
            .send()
    };
    put("apple", 3).await.unwrap();
    put("pear", 1).await.unwrap();
    let cart: Value = put("apple", 0).await.unwrap().json().await.unwrap();
    assert_eq!(cart["items"], json!({"pear": 1}), "qty 0 removes");
    let cart: Value = http
        .get(url("/cart"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!({"pear": 1}));
    let empty: Value = http
        .get(url("/cart"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty["items"], json!({}), "no cookie, no cart");

    let res = http
        .post(url("/logout"))
        .bearer_auth(&token)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = http
        .get(url("/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a logged-out token is refused"
    );
}
