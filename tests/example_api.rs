//! Black-box tests of `examples/stateless_api/` over real TCP: the example binary runs as
//! a child process on a free loopback port (one instance or several, on the in-memory
//! store or on one Redis) and is driven with an HTTP client.
#![cfg(feature = "axum")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-shared-by-all-instances-0123456789";

/// The example binary, built once per test run so that a stale build is never tested
/// (`cargo test --test example_api` alone does not rebuild examples).
fn example_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/example_api-<hash> → target/<profile>/examples/stateless_api
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(|p| p.parent()).expect("profile dir");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", "stateless_api", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the example failed");
        profile_dir.join("examples").join("stateless_api")
    })
}

/// How to start one instance.
#[derive(Default)]
struct Config<'a> {
    redis_url: Option<&'a str>,
    gateway_latency_ms: u64,
    users: Option<&'a str>,
    /// `RATE_LIMIT_PER_MINUTE` and `LOGIN_LIMIT_PER_MINUTE`, when not the defaults.
    limits: Option<(u32, u32)>,
    /// `REDIS_CLUSTER_URLS`, comma-separated.
    cluster_urls: Option<&'a str>,
    /// `LOG_FORMAT`.
    log_format: Option<&'a str>,
    /// `OIDC_ISSUER` and `OIDC_AUDIENCE`, with `OIDC_ALLOW_HTTP=true` (a loopback provider).
    oidc: Option<(&'a str, &'a str)>,
}

/// A running instance of the example; killed (and reaped) when dropped, so no test leaves
/// a server behind. Its output is kept and printed if the test fails.
struct Instance {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("--- output of the instance on port {}:", self.port);
            for line in log.iter() {
                eprintln!("{line}");
            }
        }
    }
}

fn collect_lines(stream: impl Read + Send + 'static, log: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
}

impl Instance {
    fn start(config: &Config<'_>) -> Self {
        let mut instance = Self::spawn(config);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", instance.port)).is_err() {
            if let Ok(Some(status)) = instance.child.try_wait() {
                panic!("the example exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "the example did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
        instance
    }

    /// Starts the process without waiting for it to listen.
    fn spawn(config: &Config<'_>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut command = Command::new(example_binary());
        command
            .env("PORT", port.to_string())
            .env("JWT_SECRET", SECRET)
            .env("GATEWAY_LATENCY_MS", config.gateway_latency_ms.to_string())
            .env("RUST_LOG", "info,stateless_api=debug")
            .env("NO_COLOR", "1")
            .env_remove("REDIS_URL")
            .env_remove("DEMO_USERS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = config.redis_url {
            command.env("REDIS_URL", url);
        }
        if let Some(users) = config.users {
            command.env("DEMO_USERS", users);
        }
        command.env_remove("REDIS_CLUSTER_URLS");
        command.env_remove("LOG_FORMAT");
        if let Some(format) = config.log_format {
            command.env("LOG_FORMAT", format);
        }
        if let Some(urls) = config.cluster_urls {
            command.env("REDIS_CLUSTER_URLS", urls);
        }
        command
            .env_remove("RATE_LIMIT_PER_MINUTE")
            .env_remove("LOGIN_LIMIT_PER_MINUTE");
        if let Some((per_user, login)) = config.limits {
            command
                .env("RATE_LIMIT_PER_MINUTE", per_user.to_string())
                .env("LOGIN_LIMIT_PER_MINUTE", login.to_string());
        }
        command
            .env_remove("OIDC_ISSUER")
            .env_remove("OIDC_AUDIENCE")
            .env_remove("OIDC_ALLOW_HTTP");
        if let Some((issuer, audience)) = config.oidc {
            command
                .env("OIDC_ISSUER", issuer)
                .env("OIDC_AUDIENCE", audience)
                .env("OIDC_ALLOW_HTTP", "true");
        }
        let mut child = command.spawn().expect("start the example");
        let log = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().expect("piped stdout"), log.clone());
        collect_lines(child.stderr.take().expect("piped stderr"), log.clone());
        Self { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many output lines contain `needle`.
    fn log_count(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().filter(|line| line.contains(needle)).count()
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Sends SIGKILL, as a crash or `kill -9` would, and reaps the process.
    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the example did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("HTTP client")
}

async fn json_of(res: Response) -> Value {
    res.json().await.expect("a JSON body")
}

/// A logged-in user: bearer token and session cookie.
struct User {
    token: String,
    cookie: String,
}

async fn login(http: &Client, at: &Instance, username: &str, password: &str) -> User {
    let res = http
        .post(at.url("/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .expect("ASCII cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    let body = json_of(res).await;
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0));
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    User { token, cookie }
}

async fn get(http: &Client, at: &Instance, path: &str, user: &User) -> Response {
    http.get(at.url(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("GET")
}

async fn post(http: &Client, at: &Instance, path: &str, user: &User, body: &Value) -> Response {
    http.post(at.url(path))
        .bearer_auth(&user.token)
        .json(body)
        .send()
        .await
        .expect("POST")
}

async fn pay(http: &Client, at: &Instance, user: &User, key: &str, cents: u64) -> Response {
    http.post(at.url("/payments"))
        .bearer_auth(&user.token)
        .header("idempotency-key", key)
        .json(&json!({"amount_cents": cents, "currency": "EUR"}))
        .send()
        .await
        .expect("POST /payments")
}

async fn cart(http: &Client, at: &Instance, cookie: &str) -> Value {
    let res = http
        .get(at.url("/cart"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET /cart");
    assert_eq!(res.status(), StatusCode::OK);
    json_of(res).await["items"].clone()
}

async fn put_item(http: &Client, at: &Instance, cookie: &str, sku: &str, qty: u32) -> Response {
    http.put(at.url(&format!("/cart/items/{sku}")))
        .header("cookie", cookie)
        .json(&json!({"qty": qty}))
        .send()
        .await
        .expect("PUT /cart/items")
}

/// Every route of the issue's table, against one instance.
async fn route_table(at: &Instance) {
    let http = client();

    // Probes.
    let res = http.get(at.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http.get(at.url("/ready")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Login.
    let bad = json!({"username": "alice", "password": "nope"});
    let res = http.post(at.url("/login")).json(&bad).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let unknown = json!({"username": "mallory", "password": "wonderland"});
    let res = http
        .post(at.url("/login"))
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = http
        .post(at.url("/login"))
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
    assert!(json_of(res).await["error"].is_string(), "errors are JSON");
    let alice = login(&http, at, "alice", "wonderland").await;
    let bob = login(&http, at, "bob", "builder").await;

    // Profile.
    let res = http.get(at.url("/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let me = json_of(get(&http, at, "/me", &alice).await).await;
    assert_eq!(me["sub"], "alice");

    // Cart, by session cookie.
    assert_eq!(
        put_item(&http, at, &alice.cookie, "apple", 3)
            .await
            .status(),
        StatusCode::OK
    );
    put_item(&http, at, &alice.cookie, "pear", 1).await;
    let res = put_item(&http, at, &alice.cookie, "apple", 0).await;
    assert_eq!(
        json_of(res).await["items"],
        json!({"pear": 1}),
        "qty 0 removes"
    );
    assert_eq!(cart(&http, at, &alice.cookie).await, json!({"pear": 1}));
    assert_eq!(
        cart(&http, at, &bob.cookie).await,
        json!({}),
        "carts are per session"
    );
    let res = http.get(at.url("/cart")).send().await.unwrap();
    assert_eq!(json_of(res).await["items"], json!({}), "no cookie, no cart");

    // Orders.
    let order = json!({"sku": "apple", "qty": 2});
    let res = http
        .post(at.url("/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "orders need a token"
    );
    let res = post(&http, at, "/orders", &alice, &order).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let placed = json_of(res).await;
    let order_id = placed["order_id"].as_str().expect("order_id").to_owned();
    assert_eq!(location, format!("/orders/{order_id}"));
    assert_eq!(
        (placed["sku"].clone(), placed["qty"].clone()),
        (json!("apple"), json!(2))
    );
    for (invalid, status) in [
        (json!({"sku": "apple", "qty": 0}), 422),
        (json!({"sku": "apple", "qty": -1}), 422),
        (json!({"sku": "", "qty": 1}), 422),
        (json!({"sku": "no spaces", "qty": 1}), 422),
        (json!({"sku": "apple", "qty": "two"}), 422),
        (json!({"sku": "apple"}), 422),
    ] {
        let res = post(&http, at, "/orders", &alice, &invalid).await;
        assert_eq!(res.status().as_u16(), status, "{invalid}");
        assert!(json_of(res).await["error"].is_string(), "a JSON error");
    }
    let res = http
        .post(at.url("/orders"))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body("{\"sku\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let second = post(
        &http,
        at,
        "/orders",
        &alice,
        &json!({"sku": "pear", "qty": 1}),
    )
    .await;
    assert_eq!(second.status(), StatusCode::CREATED);
    let second_id = json_of(second).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second_id, order_id, "each order gets its own id");

    let list = json_of(get(&http, at, "/orders", &alice).await).await;
    let ids: Vec<&str> = list["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [order_id.as_str(), second_id.as_str()],
        "the caller's orders, once each"
    );
    let res = get(&http, at, &format!("/orders/{order_id}"), &alice).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await, placed);
    let res = get(&http, at, &format!("/orders/{order_id}"), &bob).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "another user's order");
    let res = get(&http, at, "/orders/ord_000000000000000000000000", &alice).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let bobs = json_of(get(&http, at, "/orders", &bob).await).await;
    assert_eq!(bobs["orders"], json!([]));
    let keyed = || {
        http.post(at.url("/orders"))
            .bearer_auth(&bob.token)
            .header("idempotency-key", "order-once")
            .json(&json!({"sku": "plum", "qty": 3}))
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    let again = keyed().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        json_of(again).await,
        first,
        "an order with a key is placed once"
    );
    let bobs = json_of(get(&http, at, "/orders", &bob).await).await;
    assert_eq!(bobs["orders"], json!([first]));

    // Payments.
    let payment = json!({"amount_cents": 1250, "currency": "EUR"});
    let res = post(&http, at, "/payments", &alice, &payment).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "no Idempotency-Key");
    let res = pay(&http, at, &alice, "table-pay-1", 1250).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(!res.headers().contains_key("idempotent-replayed"));
    let paid = json_of(res).await;
    let payment_id = paid["payment_id"].as_str().expect("payment_id").to_owned();
    assert_eq!(paid["amount_cents"], 1250);
    assert_eq!(paid["currency"], "EUR");
    let res = pay(&http, at, &alice, "table-pay-1", 1250).await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "a retry answers as the first time"
    );
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(res).await, paid, "and charges nothing new");
    let res = pay(&http, at, &alice, "table-pay-1", 9999).await;
    assert_eq!(
        res.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "the same key for another payment"
    );
    for (n, invalid) in [
        json!({"amount_cents": 0, "currency": "EUR"}),
        json!({"amount_cents": 100, "currency": "euro"}),
        json!({"amount_cents": 100}),
    ]
    .into_iter()
    .enumerate()
    {
        let res = http
            .post(at.url("/payments"))
            .bearer_auth(&alice.token)
            .header("idempotency-key", format!("invalid-{n}"))
            .json(&invalid)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");
    }
    let res = pay(&http, at, &bob, "table-pay-1", 99).await;
    assert_eq!(res.status(), StatusCode::CREATED, "keys are per user");
    let bobs_payment = json_of(res).await;
    assert_ne!(bobs_payment["payment_id"], paid["payment_id"]);
    let list = json_of(get(&http, at, "/payments", &alice).await).await;
    assert_eq!(
        list["payments"],
        json!([paid]),
        "the caller's payments, once each"
    );
    let list = json_of(get(&http, at, "/payments", &bob).await).await;
    assert_eq!(list["payments"], json!([bobs_payment]));
    let res = http.get(at.url("/payments")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(!payment_id.is_empty());

    // Logout: this token and its session; the login leaves `GET /sessions` and the
    // cookie is cleared.
    let alice_elsewhere = login(&http, at, "alice", "wonderland").await;
    let logins = |user: &User| {
        let request = http.get(at.url("/sessions")).bearer_auth(&user.token);
        async move {
            let listed = json_of(request.send().await.expect("sessions")).await;
            listed["sessions"].as_array().map_or(0, Vec::len)
        }
    };
    let before = logins(&alice_elsewhere).await;
    let res = http
        .post(at.url("/logout"))
        .bearer_auth(&alice.token)
        .header("cookie", &alice.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cleared = res.headers()["set-cookie"].to_str().expect("ASCII cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(logins(&alice_elsewhere).await, before - 1);
    let res = get(&http, at, "/me", &alice).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "a logged-out token");
    assert_eq!(
        cart(&http, at, &alice.cookie).await,
        json!({}),
        "session gone"
    );
    let res = get(&http, at, "/me", &bob).await;
    assert_eq!(res.status(), StatusCode::OK, "other users stay logged in");

    // Logout everywhere: every token of the caller.
    let bob_again = login(&http, at, "bob", "builder").await;
    let res = post(&http, at, "/logout-all", &bob, &json!({})).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for token in [&bob, &bob_again] {
        let res = get(&http, at, "/me", token).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "every token of bob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_on_memory() {
    let at = Instance::start(&Config::default());
    route_table(&at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_on_redis() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let at = Instance::start(&Config {
        redis_url: Some(&url),
        ..Config::default()
    });
    route_table(&at).await;
    assert!(
        !redis.keys("payments:*").is_empty() && !redis.keys("orders:*").is_empty(),
        "orders and payments live in Redis"
    );
}

/// The cart is one session key per SKU: 30 concurrent `PUT /cart/items/{sku}` of
/// different SKUs on one session, across two instances on one Redis, all answered `200`,
/// leave 30 items; concurrent changes of one SKU end at one of the quantities sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cart_changes_on_two_instances_lose_nothing() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    let http = client();
    let alice = login(&http, &one, "alice", "wonderland").await;
    let put_all = |items: Vec<(String, u32)>| {
        let (http, cookie) = (http.clone(), alice.cookie.clone());
        let urls: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, (sku, _))| {
                let at = if i % 2 == 0 { &one } else { &two };
                at.url(&format!("/cart/items/{sku}"))
            })
            .collect();
        async move {
            let tasks: Vec<_> = urls
                .into_iter()
                .zip(items)
                .map(|(url, (_, qty))| {
                    let (http, cookie) = (http.clone(), cookie.clone());
                    tokio::spawn(async move {
                        http.put(url)
                            .header("cookie", cookie)
                            .json(&json!({"qty": qty}))
                            .send()
                            .await
                            .expect("PUT /cart/items")
                            .status()
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("task"), StatusCode::OK);
            }
        }
    };
    put_all((0..30).map(|i| (format!("sku{i}"), i + 1)).collect()).await;
    let items = cart(&http, &two, &alice.cookie).await;
    let want: serde_json::Map<String, Value> =
        (0..30).map(|i| (format!("sku{i}"), json!(i + 1))).collect();
    assert_eq!(
        items,
        Value::Object(want),
        "every concurrent item must be kept"
    );

    put_all((1..=20).map(|qty| ("same".to_owned(), qty)).collect()).await;
    let items = cart(&http, &one, &alice.cookie).await;
    let same = items["same"].as_u64().expect("the SKU is in the cart");
    assert!((1..=20).contains(&same), "{same} was never sent");
    assert_eq!(items.as_object().map(|o| o.len()), Some(31));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_redis() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        ..Config::default()
    };
    let (one, two, three) = (
        Instance::start(&config),
        Instance::start(&config),
        Instance::start(&config),
    );
    let http = client();

    let alice = login(&http, &one, "alice", "wonderland").await;
    for at in [&two, &three] {
        let me = get(&http, at, "/me", &alice).await;
        assert_eq!(me.status(), StatusCode::OK);
        assert_eq!(json_of(me).await["sub"], "alice");
    }
    put_item(&http, &two, &alice.cookie, "apple", 2).await;
    assert_eq!(
        cart(&http, &three, &alice.cookie).await,
        json!({"apple": 2})
    );
    let res = post(
        &http,
        &two,
        "/orders",
        &alice,
        &json!({"sku": "apple", "qty": 2}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let order_id = json_of(res).await["order_id"].as_str().unwrap().to_owned();
    let res = get(&http, &three, &format!("/orders/{order_id}"), &alice).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "an order placed on two, read on three"
    );
    let res = pay(&http, &three, &alice, "shared-1", 500).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let payments = json_of(get(&http, &one, "/payments", &alice).await).await;
    assert_eq!(payments["payments"].as_array().map(Vec::len), Some(1));

    let res = http
        .post(three.url("/logout"))
        .bearer_auth(&alice.token)
        .header("cookie", &alice.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = get(&http, &one, "/me", &alice).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "logged out on three, refused on one"
    );
    assert_eq!(cart(&http, &one, &alice.cookie).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    const IN_FLIGHT: usize = 6;
    let mut at = Instance::start(&Config {
        gateway_latency_ms: 1500,
        ..Config::default()
    });
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let url = at.url("/payments");
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let request = http
                .post(&url)
                .bearer_auth(&alice.token)
                .header("idempotency-key", format!("in-flight-{i}"))
                .json(&json!({"amount_cents": 100 + i, "currency": "EUR"}));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // Every request is inside the payment handler before the signal.
    let deadline = Instant::now() + Duration::from_secs(20);
    while at.log_count("calling the payment gateway") < IN_FLIGHT {
        assert!(Instant::now() < deadline, "the requests never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    at.terminate();
    for request in requests {
        let res = request
            .await
            .unwrap()
            .expect("an answer, not a dropped connection");
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let status = at.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        at.log_count("status=201"),
        IN_FLIGHT,
        "each request logged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_the_first_runs_is_409() {
    let at = Instance::start(&Config {
        gateway_latency_ms: 1500,
        ..Config::default()
    });
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let first = {
        let request = http
            .post(at.url("/payments"))
            .bearer_auth(&alice.token)
            .header("idempotency-key", "slow-1")
            .json(&json!({"amount_cents": 700, "currency": "EUR"}));
        tokio::spawn(async move { request.send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while at.log_count("calling the payment gateway") < 1 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let res = pay(&http, &at, &alice, "slow-1", 700).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(res.headers().contains_key("retry-after"));
    let first = first.await.unwrap().expect("the first answer");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    let res = pay(&http, &at, &alice, "slow-1", 700).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(res).await, first);
    assert_eq!(
        at.log_count("calling the payment gateway"),
        1,
        "the gateway was called once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_and_recovery_needs_no_restart() {
    let mut redis = redis_or_skip!();
    let url = redis.url();
    let at = Instance::start(&Config {
        redis_url: Some(&url),
        ..Config::default()
    });
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let order = json!({"sku": "apple", "qty": 1});
    assert_eq!(
        post(&http, &at, "/orders", &alice, &order).await.status(),
        StatusCode::CREATED
    );

    redis.stop();
    let res = http.get(at.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "alive, though not ready");
    let res = http.get(at.url("/ready")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let writes = [
        post(&http, &at, "/orders", &alice, &order).await,
        pay(&http, &at, &alice, "while-down", 100).await,
        put_item(&http, &at, &alice.cookie, "pear", 1).await,
        get(&http, &at, "/sessions", &alice).await,
        http.delete(at.url("/sessions/others"))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap(),
        http.post(at.url("/login"))
            .json(&json!({"username": "bob", "password": "builder"}))
            .send()
            .await
            .unwrap(),
    ];
    for res in writes {
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            res.url()
        );
        assert!(res.headers().contains_key("retry-after"), "{}", res.url());
    }

    // The same port, an empty Redis: the instance reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = http.get(at.url("/ready")).send().await.unwrap();
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = post(&http, &at, "/orders", &alice, &order).await;
    assert_eq!(res.status(), StatusCode::CREATED, "the token still works");
    let order_id = json_of(res).await["order_id"].clone();
    let list = json_of(get(&http, &at, "/orders", &alice).await).await;
    assert_eq!(list["orders"][0]["order_id"], order_id);
    let res = pay(&http, &at, &alice, "after-recovery", 100).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let bob = login(&http, &at, "bob", "builder").await;
    let res = put_item(&http, &at, &bob.cookie, "pear", 1).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(cart(&http, &at, &bob.cookie).await, json!({"pear": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_redis_restart_succeeds() {
    let mut redis = redis_or_skip!();
    let url = redis.url();
    let at = Instance::start(&Config {
        redis_url: Some(&url),
        ..Config::default()
    });
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    assert_eq!(
        get(&http, &at, "/me", &alice).await.status(),
        StatusCode::OK
    );

    // No request while Redis is down: the instance still holds the dropped connection.
    // `restart` returns once the new server answers on a connection of its own.
    redis.restart();
    let res = http.get(at.url("/ready")).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the first /ready after a restart"
    );

    redis.restart();
    let res = get(&http, &at, "/me", &alice).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the first /me after a restart"
    );
}

/// A client's final answer for one payment.
struct Outcome {
    /// 0 when the last attempt got no answer at all.
    status: u16,
    body: Option<Value>,
    attempts: usize,
}

/// Pays with key `key` until the answer is final: after a connection error, a 5xx or a
/// 409 the same request goes to the next instance, with a short pause, within a bound.
async fn pay_until_final(
    http: &Client,
    bases: &[String],
    first: usize,
    token: &str,
    key: &str,
    cents: usize,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        let base = &bases[(first + attempts) % bases.len()];
        attempts += 1;
        let sent = http
            .post(format!("{base}/payments"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"amount_cents": cents, "currency": "EUR"}))
            .send()
            .await;
        let mut status = 0;
        if let Ok(res) = sent {
            status = res.status().as_u16();
            let retry = res.status().is_server_error() || res.status() == StatusCode::CONFLICT;
            if !retry {
                // A body cut off by the kill is a connection error too.
                if let Ok(body) = res.json::<Value>().await {
                    return Outcome {
                        status,
                        body: Some(body),
                        attempts,
                    };
                }
                status = 0;
            }
        }
        if Instant::now() > deadline {
            return Outcome {
                status,
                body: None,
                attempts,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_every_payment_exactly_once() {
    const PAYMENTS: usize = 300;
    const CLIENTS: usize = 12;
    const USERS: [(&str, &str); 3] = [
        ("alice", "wonderland"),
        ("bob", "builder"),
        ("carol", "rainbow"),
    ];
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        // Long enough that the kill lands on requests inside the handler.
        gateway_latency_ms: 30,
        users: Some("alice:wonderland,bob:builder,carol:rainbow"),
        // About 100 payments per user plus retries: keep the per-user limit out of the way.
        limits: Some((10_000, 10)),
        ..Config::default()
    };
    let mut instances = [
        Instance::start(&config),
        Instance::start(&config),
        Instance::start(&config),
    ];
    let http = client();
    let mut tokens = Vec::new();
    for (name, password) in USERS {
        tokens.push(login(&http, &instances[0], name, password).await.token);
    }
    let bases: Arc<Vec<String>> = Arc::new(instances.iter().map(|i| i.url("")).collect());
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, bases, tokens) = (http.clone(), bases.clone(), tokens.clone());
            let (next, finished) = (next.clone(), finished.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PAYMENTS {
                        return outcomes;
                    }
                    let key = format!("kill9-{i}");
                    let outcome =
                        pay_until_final(&http, &bases, i, &tokens[i % USERS.len()], &key, 100 + i)
                            .await;
                    outcomes.push((i, outcome));
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while finished.load(Ordering::Relaxed) < PAYMENTS / 3 {
        assert!(Instant::now() < deadline, "the clients made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    instances[1].kill_9();

    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.expect("client task"));
    }
    assert_eq!(outcomes.len(), PAYMENTS);
    let mut paid: HashMap<usize, BTreeSet<String>> = HashMap::new();
    for (i, outcome) in &outcomes {
        assert_eq!(
            outcome.status, 201,
            "payment {i}: final answer {} after {} attempts",
            outcome.status, outcome.attempts
        );
        let body = outcome.body.as_ref().expect("a body");
        assert_eq!(body["amount_cents"], 100 + i);
        let id = body["payment_id"].as_str().expect("payment_id").to_owned();
        assert!(
            paid.entry(i % USERS.len()).or_default().insert(id),
            "payment {i}: an id twice"
        );
    }
    assert!(
        outcomes.iter().any(|(_, o)| o.attempts > 1),
        "the kill was felt: some payment had to be retried"
    );

    for (user, token) in tokens.iter().enumerate() {
        let res = http
            .get(instances[2].url("/payments"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let listed: Vec<String> = json_of(res).await["payments"]
            .as_array()
            .expect("payments")
            .iter()
            .map(|p| p["payment_id"].as_str().expect("payment_id").to_owned())
            .collect();
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "{}: a payment listed twice",
            USERS[user].0
        );
        assert_eq!(
            Some(&unique),
            paid.get(&user),
            "{}: every answered payment exists, and nothing else",
            USERS[user].0
        );
    }
}

/// Two instances on one Redis share the limits: login attempts per username (wrong
/// passwords count) and authenticated requests per user; over them, 429 with
/// `Retry-After` and the `RateLimit` headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_instances() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        limits: Some((4, 3)),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    let http = client();
    let attempt = |at: &Instance, password: &str| {
        http.post(at.url("/login"))
            .json(&json!({"username": "alice", "password": password}))
            .send()
    };
    assert_eq!(
        attempt(&one, "guess").await.expect("login").status(),
        StatusCode::UNAUTHORIZED
    );
    let alice = login(&http, &two, "alice", "wonderland").await;
    assert_eq!(
        attempt(&one, "guess2").await.expect("login").status(),
        StatusCode::UNAUTHORIZED
    );
    let limited = attempt(&two, "wonderland").await.expect("login");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(limited.headers()["ratelimit-policy"]
        .to_str()
        .expect("ASCII")
        .starts_with("\"login\";q=3;w=60"));
    assert_eq!(json_of(limited).await["error"], "rate_limited");
    // Another username is not affected.
    login(&http, &one, "bob", "builder").await;

    // 4 authenticated requests per minute for alice, whichever instance serves them.
    for (i, at) in [&one, &two, &one, &two].into_iter().enumerate() {
        let res = get(&http, at, "/me", &alice).await;
        assert_eq!(res.status(), StatusCode::OK);
        let remaining = format!("r={};", 3 - i);
        assert!(
            res.headers()["ratelimit"]
                .to_str()
                .expect("ASCII")
                .contains(&remaining),
            "{:?}",
            res.headers()["ratelimit"]
        );
    }
    let res = get(&http, &one, "/me", &alice).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!(
        (14..=15).contains(&retry),
        "4 per minute: one back every 15 s, got {retry}"
    );
    // Unauthenticated routes are not limited per user.
    for _ in 0..6 {
        let res = http.get(one.url("/health")).send().await.expect("health");
        assert_eq!(res.status(), StatusCode::OK);
    }
}

/// The example on a real 3-master Redis Cluster: two instances share logins, sessions,
/// payments with their idempotency records, and revocation.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_redis_cluster() {
    let cluster = cluster_or_skip!();
    let urls = cluster.urls().join(",");
    let config = Config {
        cluster_urls: Some(&urls),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    assert!(
        one.log_count("Redis Cluster") > 0,
        "the example must say it uses the cluster"
    );
    let http = client();
    let alice = login(&http, &one, "alice", "wonderland").await;
    assert_eq!(
        put_item(&http, &two, &alice.cookie, "apple", 2)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(cart(&http, &one, &alice.cookie).await, json!({"apple": 2}));
    let first = pay(&http, &one, &alice, "cluster-1", 700).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    let replay = pay(&http, &two, &alice, "cluster-1", 700).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(replay).await, first);
    let listed = json_of(get(&http, &two, "/payments", &alice).await).await;
    assert_eq!(
        listed.to_string().matches("payment_id").count(),
        1,
        "{listed}"
    );
    let logout = post(&http, &two, "/logout", &alice, &json!({})).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&http, &one, "/me", &alice).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Every key the example wrote lives on the cluster, spread over its masters.
    let keys: usize = cluster.nodes().iter().map(|n| n.keys("*").len()).sum();
    assert!(keys >= 5, "{keys} keys");
}

/// `POST /token/refresh` over two instances on one Redis: a rotation chain, reuse of an
/// old refresh token ends the family and the session's access tokens, logout ends it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_reuse_ends_the_family() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    let http = client();
    let refresh = |at: &Instance, token: &str| {
        http.post(at.url("/token/refresh"))
            .json(&json!({ "refresh_token": token }))
            .send()
    };
    let res = http
        .post(one.url("/login"))
        .json(&json!({"username": "alice", "password": "wonderland"}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), StatusCode::OK);
    let answer = json_of(res).await;
    assert_eq!(answer["expires_in"], 900, "access tokens live 15 minutes");
    let first = answer["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();

    // Rotate twice, alternating instances: every answer is a new pair that works.
    let mut current = first.clone();
    let mut access = String::new();
    for at in [&two, &one] {
        let res = refresh(at, &current).await.expect("refresh");
        assert_eq!(res.status(), StatusCode::OK);
        let pair = json_of(res).await;
        assert_eq!(pair["token_type"], "Bearer");
        assert_eq!(pair["expires_in"], 900);
        let next = pair["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned();
        assert_ne!(next, current);
        current = next;
        access = pair["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        let me = http
            .get(at.url("/me"))
            .bearer_auth(&access)
            .send()
            .await
            .expect("me");
        assert_eq!(me.status(), StatusCode::OK);
    }

    // The first refresh token again: reuse. The family ends: the newest refresh token and
    // the session's access token are refused too.
    let reused = refresh(&two, &first).await.expect("refresh");
    assert_eq!(reused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(reused).await["error"], "invalid_grant");
    let newest = refresh(&one, &current).await.expect("refresh");
    assert_eq!(newest.status(), StatusCode::BAD_REQUEST);
    let me = http
        .get(two.url("/me"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    // Garbage is invalid_grant, a malformed body a 4xx, never a 5xx.
    let garbage = refresh(&one, "not-a-token").await.expect("refresh");
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let malformed = http
        .post(one.url("/token/refresh"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("refresh");
    assert!(malformed.status().is_client_error());

    // Logout ends the family of the session.
    let res = http
        .post(two.url("/login"))
        .json(&json!({"username": "bob", "password": "builder"}))
        .send()
        .await
        .expect("login");
    let bob_refresh = json_of(res).await["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    let bob2 = {
        let res = refresh(&one, &bob_refresh).await.expect("refresh");
        assert_eq!(res.status(), StatusCode::OK);
        json_of(res).await
    };
    let bob2_access = bob2["access_token"].as_str().expect("access").to_owned();
    let bob2_refresh = bob2["refresh_token"].as_str().expect("refresh").to_owned();
    let out = http
        .post(two.url("/logout"))
        .bearer_auth(&bob2_access)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        refresh(&one, &bob2_refresh)
            .await
            .expect("refresh")
            .status(),
        StatusCode::BAD_REQUEST
    );
}

// ---- metrics ------------------------------------------------------------------------

/// The `tower_stateless_*` series of a `GET /metrics` scrape: `name{label="v",...}` (labels
/// sorted) → value. The counters, and the histogram's `_count` and `_bucket` lines.
async fn scrape(http: &Client, at: &Instance) -> HashMap<String, f64> {
    let res = http.get(at.url("/metrics")).send().await.expect("scrape");
    assert_eq!(res.status(), StatusCode::OK, "/metrics needs no token");
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = res.text().await.expect("metrics text");
    let mut series = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("tower_stateless_") {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match key.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (key, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        labels.sort_unstable();
        series.insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    series
}

/// One counter series, as `scrape` keys it.
fn counter(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort_unstable();
    format!("tower_stateless_{metric}_total{{{}}}", labels.join(","))
}

/// What the script expects each counter to have moved by.
#[derive(Default)]
struct Expected(HashMap<String, f64>);

impl Expected {
    fn add(&mut self, metric: &str, labels: &[(&str, &str)]) {
        *self.0.entry(counter(metric, labels)).or_default() += 1.0;
    }

    fn result(&mut self, metric: &str, result: &str) {
        self.add(metric, &[("result", result)]);
    }

    fn session(&mut self, op: &str, result: &str) {
        self.add("session", &[("op", op), ("result", result)]);
    }

    /// A request through the JWT layer with a valid, unrevoked token, then the rate limit,
    /// whose verdict is in the status.
    fn bearer(&mut self, status: StatusCode) {
        self.result("jwt", "ok");
        self.result("revocation", "ok");
        let limited = status == StatusCode::TOO_MANY_REQUESTS;
        self.result("rate_limit", if limited { "limited" } else { "allowed" });
    }

    /// A keyed payment, by its answer.
    fn payment(&mut self, res: &Response) {
        self.bearer(res.status());
        let replayed = res.headers().get("idempotent-replayed").is_some();
        let result = match res.status() {
            StatusCode::CREATED if replayed => "replayed",
            StatusCode::CREATED => "executed",
            StatusCode::CONFLICT => "in_progress",
            StatusCode::UNPROCESSABLE_ENTITY => "mismatch",
            other => panic!("unexpected payment answer {other}"),
        };
        self.result("idempotency", result);
    }
}

/// An HS256 token of the example's secret that expired an hour ago.
fn expired_token() -> String {
    // Building a key set installs jsonwebtoken's crypto provider, as the crate does.
    tower_stateless::jwt::JwtKeySet::new()
        .with_hmac("main", jsonwebtoken::Algorithm::HS256, SECRET.as_bytes())
        .expect("key set");
    let now = SystemTimeNow::secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("main".to_owned());
    jsonwebtoken::encode(
        &header,
        &json!({"sub": "alice", "iat": now - 7200, "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

struct SystemTimeNow;

impl SystemTimeNow {
    fn secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    }
}

/// Login, a session write, a replayed payment, a 409, a 422, a revoked token, a
/// rate-limited burst, refresh rotation, reuse and garbage, missing, invalid and expired
/// tokens; then every `tower_stateless_*_total` series moved by exactly what the answers
/// say, and no other.
async fn scripted_run_moves_each_counter_by_its_answers(at: &Instance, per_user_limit: u32) {
    let http = client();
    let before = scrape(&http, at).await;
    let mut expected = Expected::default();

    // Login: a new session written, a refresh family issued.
    let res = http
        .post(at.url("/login"))
        .json(&json!({"username": "alice", "password": "wonderland"}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let answer = json_of(res).await;
    let alice = User {
        token: answer["access_token"].as_str().unwrap().to_owned(),
        cookie,
    };
    let refresh_token = answer["refresh_token"].as_str().unwrap().to_owned();
    expected.session("write", "ok");
    expected.result("refresh", "issued");

    // A session write: loaded, then written back.
    let res = put_item(&http, at, &alice.cookie, "apple", 2).await;
    assert_eq!(res.status(), StatusCode::OK);
    expected.session("load", "ok");
    expected.session("write", "ok");

    // A payment, its replay, and the same key for another payment (422).
    let res = pay(&http, at, &alice, "metrics-1", 500).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    expected.payment(&res);
    let res = pay(&http, at, &alice, "metrics-1", 500).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    expected.payment(&res);
    let res = pay(&http, at, &alice, "metrics-1", 999).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    expected.payment(&res);

    // A duplicate while the first runs (409): sent once the first reached the handler.
    let gateway_calls = at.log_count("calling the payment gateway");
    let first = {
        let request = http
            .post(at.url("/payments"))
            .bearer_auth(&alice.token)
            .header("idempotency-key", "metrics-2")
            .json(&json!({"amount_cents": 700, "currency": "EUR"}));
        tokio::spawn(async move { request.send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while at.log_count("calling the payment gateway") == gateway_calls {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let res = pay(&http, at, &alice, "metrics-2", 700).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    expected.payment(&res);
    let res = first.await.unwrap().expect("the first answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    expected.payment(&res);

    // Refresh: a rotation, the same token again (reuse), and garbage.
    let refresh = |token: &str| {
        http.post(at.url("/token/refresh"))
            .json(&json!({ "refresh_token": token }))
            .send()
    };
    assert_eq!(
        refresh(&refresh_token).await.unwrap().status(),
        StatusCode::OK
    );
    expected.result("refresh", "rotated");
    let res = refresh(&refresh_token).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    expected.result("refresh", "reused");
    let res = refresh("not-a-refresh-token").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    expected.result("refresh", "invalid");

    // A second session of alice logs out (its session destroyed), then its token is refused.
    let second = login(&http, at, "alice", "wonderland").await;
    expected.session("write", "ok");
    expected.result("refresh", "issued");
    let res = http
        .post(at.url("/logout"))
        .bearer_auth(&second.token)
        .header("cookie", &second.cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expected.bearer(res.status());
    expected.session("load", "ok");
    expected.session("destroy", "ok");
    let res = get(&http, at, "/me", &second).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    expected.result("jwt", "ok");
    expected.result("revocation", "revoked");

    // Missing, invalid and expired tokens.
    let res = http.get(at.url("/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    expected.result("jwt", "missing");
    let res = http
        .get(at.url("/me"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    expected.result("jwt", "invalid");
    let res = http
        .get(at.url("/me"))
        .bearer_auth(expired_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    expected.result("jwt", "expired");

    // A burst past bob's limit.
    let bob = login(&http, at, "bob", "builder").await;
    expected.session("write", "ok");
    expected.result("refresh", "issued");
    let mut limited = 0;
    for _ in 0..per_user_limit + 3 {
        let res = get(&http, at, "/me", &bob).await;
        assert!(
            matches!(res.status().as_u16(), 200 | 429),
            "{}",
            res.status()
        );
        limited += usize::from(res.status() == StatusCode::TOO_MANY_REQUESTS);
        expected.bearer(res.status());
    }
    assert!(
        limited >= 3,
        "the burst was limited ({limited} answers of 429)"
    );

    let after = scrape(&http, at).await;
    let moved = |key: &String| {
        after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
    };
    for (key, want) in &expected.0 {
        assert_eq!(moved(key), *want, "{key}");
    }
    for key in after.keys().filter(|k| k.contains("_total{")) {
        if !expected.0.contains_key(key) {
            assert_eq!(
                moved(key),
                0.0,
                "{key} moved, and the script expected nothing"
            );
        }
    }
    // The store histogram: one `get_many` per revocation check, one `gcra` per limited
    // request, at least.
    let histogram = |op: &str| {
        format!("tower_stateless_store_duration_seconds_count{{op=\"{op}\",result=\"ok\"}}")
    };
    let checks = expected
        .0
        .iter()
        .filter(|(k, _)| k.contains("revocation_total"))
        .map(|(_, v)| v)
        .sum::<f64>();
    assert!(moved(&histogram("get_many")) >= checks, "get_many timings");
    assert!(
        moved(&histogram("gcra")) >= f64::from(per_user_limit + 3),
        "gcra timings"
    );
    assert!(
        moved(&histogram("set_if_absent")) >= 1.0,
        "set_if_absent timings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_run_on_memory() {
    let at = Instance::start(&Config {
        gateway_latency_ms: 300,
        limits: Some((20, 10)),
        ..Config::default()
    });
    scripted_run_moves_each_counter_by_its_answers(&at, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_run_on_redis() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let at = Instance::start(&Config {
        redis_url: Some(&url),
        gateway_latency_ms: 300,
        limits: Some((20, 10)),
        ..Config::default()
    });
    scripted_run_moves_each_counter_by_its_answers(&at, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let at = Instance::start(&Config {
        log_format: Some("json"),
        ..Config::default()
    });
    let http = client();
    let res = http.get(at.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    while at.log_count("\"request\"") < 1 {
        assert!(Instant::now() < deadline, "no request line was logged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = at.log.lock().unwrap().clone();
    for line in &log {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    let request = log
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|o| o["fields"]["message"] == "request")
        .expect("a request line");
    assert_eq!(request["fields"]["path"], "/health");
    assert_eq!(request["fields"]["status"], 200);
}

#[test]
fn an_unknown_log_format_stops_the_example_at_start() {
    let out = Command::new(example_binary())
        .env("PORT", "0")
        .env("JWT_SECRET", SECRET)
        .env("LOG_FORMAT", "yaml")
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .output()
        .expect("run the example");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LOG_FORMAT must be text or json"),
        "{stderr}"
    );
}

// ---- the HTTP contract: error bodies, `Location`, body limit ---------------------------

/// Asserts an error answer: its status, a JSON content type and the crate's error body
/// (`{"error","message"}`) with `code`. Returns the body.
async fn error_body(res: Response, status: StatusCode, code: &str) -> Value {
    let what = format!("{} {}", res.url().path(), res.status());
    assert_eq!(res.status(), status, "{what}");
    let content_type = res.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{what}: a JSON error body"
    );
    let body = json_of(res).await;
    assert_eq!(body["error"], code, "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
    body
}

/// An unknown route is `404 not_found` and a wrong method `405 method_not_allowed`, both
/// with the JSON error body; `405` keeps axum's `Allow`. A Bearer route still checks the
/// token first, as before: a wrong method without a token is `401`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_the_json_error_body() {
    let at = Instance::start(&Config::default());
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;

    for path in ["/nope", "/orders/abc/items", "/payments/"] {
        let res = http.get(at.url(path)).send().await.unwrap();
        error_body(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    let res = post(&http, &at, "/nope", &alice, &json!({})).await;
    error_body(res, StatusCode::NOT_FOUND, "not_found").await;

    // (method, path, with alice's token, the methods `Allow` lists)
    for (method, path, bearer, allow) in [
        (reqwest::Method::DELETE, "/health", false, "GET,HEAD"),
        (reqwest::Method::GET, "/login", false, "POST"),
        (reqwest::Method::POST, "/cart", false, "GET,HEAD"),
        (reqwest::Method::POST, "/metrics", false, "GET,HEAD"),
        (reqwest::Method::DELETE, "/me", true, "GET,HEAD"),
        (reqwest::Method::PUT, "/orders", true, "GET,HEAD,POST"),
        (reqwest::Method::DELETE, "/payments", true, "GET,HEAD,POST"),
    ] {
        let mut request = http.request(method.clone(), at.url(path));
        if bearer {
            request = request.bearer_auth(&alice.token);
        }
        let res = request.send().await.unwrap();
        let mut listed: Vec<&str> = res
            .headers()
            .get("allow")
            .map_or("", |v| v.to_str().unwrap())
            .split(',')
            .map(str::trim)
            .collect();
        listed.sort_unstable();
        assert_eq!(listed.join(","), allow, "{method} {path}: Allow");
        error_body(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
    let res = http.delete(at.url("/me")).send().await.unwrap();
    error_body(res, StatusCode::UNAUTHORIZED, "missing_token").await;
}

/// Every `Location` of a `201` answers `200` with the record it announced, for its owner
/// (on a replay too); another user and an unknown id get `404 not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_location_answers_the_record_for_its_owner() {
    let at = Instance::start(&Config::default());
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let bob = login(&http, &at, "bob", "builder").await;
    let order = json!({"sku": "apple", "qty": 2});
    let keyed_order = |key: &'static str| {
        http.post(at.url("/orders"))
            .bearer_auth(&alice.token)
            .header("idempotency-key", key)
            .json(&order)
            .send()
    };
    let answers = [
        post(&http, &at, "/orders", &alice, &order).await,
        keyed_order("location-order").await.unwrap(),
        keyed_order("location-order").await.unwrap(),
        pay(&http, &at, &alice, "location-pay", 1250).await,
        pay(&http, &at, &alice, "location-pay", 1250).await,
    ];
    for res in answers {
        assert_eq!(res.status(), StatusCode::CREATED);
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let record = json_of(res).await;
        let res = get(&http, &at, &location, &alice).await;
        assert_eq!(res.status(), StatusCode::OK, "{location}");
        assert_eq!(json_of(res).await, record, "{location}: the record created");
        let res = get(&http, &at, &location, &bob).await;
        error_body(res, StatusCode::NOT_FOUND, "not_found").await;
        let res = http.get(at.url(&location)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{location}");
    }
    // `index` is the store key of the caller's list of ids, not a record.
    for unknown in [
        "/orders/ord_000000000000000000000000",
        "/payments/pay_000000000000000000000000",
        "/orders/index",
        "/payments/index",
    ] {
        let res = get(&http, &at, unknown, &alice).await;
        error_body(res, StatusCode::NOT_FOUND, "not_found").await;
    }
}

/// An answer read off a plain socket: status, `Content-Type`, body.
struct RawAnswer {
    status: u16,
    content_type: Option<String>,
    body: Value,
}

/// Sends a request whose body the example may refuse before reading it, over a plain
/// socket. The example then answers at once and closes the connection with the body
/// unread; reqwest (hyper's client) reports the broken pipe of its body write instead of
/// that answer, so the body is written by another task, its write errors ignored, while
/// this one reads the answer (`Connection: close`: the answer ends at EOF).
async fn send_raw(at: &Instance, head: &str, body: String) -> RawAnswer {
    send_raw_typed(at, head, "application/json", body).await
}

/// [`send_raw`] with another `Content-Type`.
async fn send_raw_typed(at: &Instance, head: &str, content_type: &str, body: String) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", at.port))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let request = format!(
        "{head}\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(request.as_bytes()).await;
        write
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    // Until EOF; a reset after the answer is the unread body, not a failure.
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(Duration::from_secs(15), read.read(&mut chunk)).await
    {
        answer.extend_from_slice(&chunk[..n]);
    }
    drop(writer.await);
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_owned());
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    RawAnswer {
        status,
        content_type,
        body,
    }
}

/// The example's body limit, as its README states it.
const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON order of exactly `len` bytes (its `sku` padded: too long to be valid).
fn order_of_len(len: usize) -> String {
    let shell = r#"{"sku":"","qty":1}"#;
    format!(r#"{{"sku":"{}","qty":1}}"#, "a".repeat(len - shell.len()))
}

/// A body over the limit is `413 payload_too_large`, whether the idempotency layer reads
/// it (a keyed request) or the handler's JSON extractor does (no key): one limit, one
/// code. A body at the limit is read (and refused for its content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_payload_too_large_with_or_without_a_key() {
    let at = Instance::start(&Config::default());
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let bearer = format!("authorization: Bearer {}", alice.token);
    // Over the idempotency layer's limit and over axum's default one alike.
    for len in [BODY_LIMIT + 1, 2 * BODY_LIMIT + 1] {
        for head in [
            format!("POST /orders HTTP/1.1\r\n{bearer}\r\nidempotency-key: big-order"),
            format!("POST /orders HTTP/1.1\r\n{bearer}"),
            format!("POST /payments HTTP/1.1\r\n{bearer}\r\nidempotency-key: big-payment"),
            "POST /login HTTP/1.1".to_owned(),
            "PUT /cart/items/apple HTTP/1.1".to_owned(),
        ] {
            let what = format!(
                "{len} bytes, {}",
                head.replace(&alice.token, "...").replace("\r\n", " | ")
            );
            let answer = send_raw(&at, &head, order_of_len(len)).await;
            assert_eq!(answer.status, 413, "{what}: {}", answer.body);
            assert_eq!(
                answer.content_type.as_deref(),
                Some("application/json"),
                "{what}"
            );
            assert_eq!(answer.body["error"], "payload_too_large", "{what}");
            assert!(answer.body["message"].is_string(), "{what}");
        }
    }
    for key in [Some("limit-order"), None] {
        let mut request = http
            .post(at.url("/orders"))
            .bearer_auth(&alice.token)
            .header("content-type", "application/json")
            .body(order_of_len(BODY_LIMIT));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let res = request.send().await.unwrap();
        error_body(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
}

/// A JSON body axum cannot take is the crate's `invalid_body`, with axum's status (the
/// `rejection` catalogue and the README say so): `400` malformed, `415` not JSON, `422`
/// the wrong shape; with or without an `Idempotency-Key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_axum_cannot_take_is_invalid_body() {
    let at = Instance::start(&Config::default());
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    for key in [Some("bad-body"), None] {
        for (content_type, body, status) in [
            ("application/json", "{\"sku\": ", StatusCode::BAD_REQUEST),
            (
                "text/plain",
                "{\"sku\":\"apple\",\"qty\":1}",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "application/json",
                "{\"sku\": 7}",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ] {
            let mut request = http
                .post(at.url("/orders"))
                .bearer_auth(&alice.token)
                .header("content-type", content_type)
                .body(body);
            if let Some(key) = key {
                request = request.header("idempotency-key", format!("{key}-{}", status.as_u16()));
            }
            let res = request.send().await.unwrap();
            error_body(res, status, "invalid_body").await;
        }
    }
}

/// The idempotency layer's `400` names the header it needs, in words that read right
/// whatever the header is called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_without_a_key_names_the_header() {
    let at = Instance::start(&Config::default());
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let payment = json!({"amount_cents": 1250, "currency": "EUR"});
    let res = post(&http, &at, "/payments", &alice, &payment).await;
    let body = error_body(res, StatusCode::BAD_REQUEST, "idempotency_key_required").await;
    assert_eq!(
        body["message"], "this request needs the `idempotency-key` header",
        "{body}"
    );
}

/// `GET /metrics` shows a counter series from its first event on, not before (the README
/// says so): a fresh instance has no `jwt` series; one request without a token makes
/// `result="missing"` appear at 1, and only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_series_appear_with_their_first_event() {
    let at = Instance::start(&Config::default());
    let http = client();
    let jwt = |series: &HashMap<String, f64>| -> Vec<(String, f64)> {
        let mut jwt: Vec<_> = series
            .iter()
            .filter(|(k, _)| k.starts_with("tower_stateless_jwt_total"))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        jwt.sort_by(|a, b| a.0.cmp(&b.0));
        jwt
    };
    assert_eq!(jwt(&scrape(&http, &at).await), [], "no event, no series");
    let res = http.get(at.url("/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        jwt(&scrape(&http, &at).await),
        [(counter("jwt", &[("result", "missing")]), 1.0)]
    );
}

/// The example with `OIDC_ISSUER`: an identity provider (discovery and JWKS) runs in the
/// test on loopback and signs RS256 tokens with a fixture key.
#[cfg(feature = "oidc")]
mod oidc {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use axum::routing::get;
    use axum::{Json, Router};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    use super::{client, json_of, login, post, route_table, Config, Instance, User};

    const AUDIENCE: &str = "shop-api";

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn rsa(name: &str) -> EncodingKey {
        // Installs the crypto provider when both backends are compiled in.
        let _ = tower_stateless::jwt::JwtKeySet::new();
        EncodingKey::from_rsa_pem(&fixture(name)).expect("RSA fixture")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    /// A provider on a free loopback port publishing the public part of `rsa1` as `kc-1`.
    struct Provider {
        issuer: String,
        key: EncodingKey,
    }

    impl Provider {
        async fn start() -> Provider {
            let key = rsa("rsa1-private.pem");
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("JWK");
            jwk.common.key_id = Some("kc-1".to_owned());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let issuer = format!("http://{}", listener.local_addr().expect("address"));
            let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
            let jwks = Arc::new(json!({ "keys": [jwk] }));
            let app = Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(move || {
                        let discovery = discovery.clone();
                        async move { Json(discovery) }
                    }),
                )
                .route(
                    "/jwks",
                    get(move || {
                        let jwks = Value::clone(&jwks);
                        async move { Json(jwks) }
                    }),
                );
            tokio::spawn(async move { axum::serve(listener, app).await });
            Provider { issuer, key }
        }

        /// Claims of a Keycloak-like access token for `sub`, with `scope`.
        fn claims(&self, sub: &str, scope: &str) -> Value {
            json!({
                "iss": self.issuer,
                "aud": AUDIENCE,
                "sub": sub,
                "scope": scope,
                "exp": now() + 300,
                "iat": now(),
                "jti": format!("kc-{sub}-{}", now()),
            })
        }

        /// `claims` signed by the provider's key, as a user of the test helpers.
        fn user(&self, claims: &Value) -> User {
            self.signed_by(&self.key, claims)
        }

        // A method, so that a test reads as `provider.signed_by(other_key, ..)`.
        #[allow(clippy::unused_self)]
        fn signed_by(&self, key: &EncodingKey, claims: &Value) -> User {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("kc-1".to_owned());
            User {
                token: jsonwebtoken::encode(&header, claims, key).expect("sign"),
                cookie: String::new(),
            }
        }

        fn config(&self) -> Config<'_> {
            Config {
                oidc: Some((&self.issuer, AUDIENCE)),
                // Several tests log the same demo users in.
                limits: Some((600, 100)),
                users: Some("alice:wonderland,bob:builder,carol:croquet"),
                ..Config::default()
            }
        }
    }

    fn payload(token: &str) -> Value {
        let part = token.split('.').nth(1).expect("a JWT");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    }

    fn order() -> Value {
        json!({"sku": "book-1", "qty": 1})
    }

    async fn pay(
        http: &reqwest::Client,
        at: &Instance,
        user: &User,
        key: &str,
    ) -> reqwest::Response {
        super::pay(http, at, user, key, 500).await
    }

    async fn me(http: &reqwest::Client, at: &Instance, user: &User) -> reqwest::Response {
        super::get(http, at, "/me", user).await
    }

    #[track_caller]
    fn assert_insufficient_scope(res: &reqwest::Response, scope: &str) {
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.headers()["www-authenticate"],
            format!(r#"Bearer error="insufficient_scope", scope="{scope}""#).as_str()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn provider_tokens_are_accepted_and_need_the_routes_scope() {
        let provider = Provider::start().await;
        let at = Instance::start(&provider.config());
        let http = client();
        // Every route still works as before with the example's own tokens.
        route_table(&at).await;

        // With the scope: the order is placed, and the caller is the provider's subject.
        let writer = provider.user(&provider.claims("kc-writer", "openid orders:write"));
        let res = post(&http, &at, "/orders", &writer, &order()).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let res = me(&http, &at, &writer).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(json_of(res).await["sub"], "kc-writer");
        let res = super::get(&http, &at, "/orders", &writer).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            json_of(res).await["orders"].as_array().map(Vec::len),
            Some(1)
        );
        // orders:write is not payments:write.
        let res = pay(&http, &at, &writer, "kc-writer-1").await;
        assert_insufficient_scope(&res, "payments:write");
        let res = pay(
            &http,
            &at,
            &provider.user(&provider.claims("kc-payer", "payments:write")),
            "kc-payer-1",
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);

        // Without the scope: 403 insufficient_scope with the RFC 6750 challenge, on both
        // writes; reading needs no scope.
        let reader = provider.user(&provider.claims("kc-reader", "openid profile"));
        let res = post(&http, &at, "/orders", &reader, &order()).await;
        assert_insufficient_scope(&res, "orders:write");
        assert_eq!(json_of(res).await["error"], "insufficient_scope");
        let res = pay(&http, &at, &reader, "kc-reader-1").await;
        assert_insufficient_scope(&res, "payments:write");
        let res = super::get(&http, &at, "/orders", &reader).await;
        assert_eq!(res.status(), StatusCode::OK);
        // A scope that only starts like the required one is not it.
        let near = provider.user(&provider.claims("kc-near", "orders:writer"));
        let res = post(&http, &at, "/orders", &near, &order()).await;
        assert_insufficient_scope(&res, "orders:write");

        // Wrong audience, wrong issuer, no audience, another key, expired: 401.
        let mut wrong_aud = provider.claims("kc-writer", "orders:write");
        wrong_aud["aud"] = json!("another-api");
        let mut wrong_iss = provider.claims("kc-writer", "orders:write");
        wrong_iss["iss"] = json!("http://127.0.0.1:1/elsewhere");
        let mut no_aud = provider.claims("kc-writer", "orders:write");
        no_aud.as_object_mut().expect("object").remove("aud");
        let mut expired = provider.claims("kc-writer", "orders:write");
        expired["exp"] = json!(now() - 3600);
        let forged = provider.signed_by(
            &rsa("rsa2-private.pem"),
            &provider.claims("kc-writer", "orders:write"),
        );
        for (what, user) in [
            ("wrong aud", provider.user(&wrong_aud)),
            ("wrong iss", provider.user(&wrong_iss)),
            ("no aud", provider.user(&no_aud)),
            ("expired", provider.user(&expired)),
            ("another key", forged),
        ] {
            let res = post(&http, &at, "/orders", &user, &order()).await;
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert!(
                res.headers()["www-authenticate"]
                    .to_str()
                    .is_ok_and(|v| v.contains("invalid_token")),
                "{what}"
            );
        }

        // The example's own tokens carry both scopes and still work on every route.
        let carol = login(&http, &at, "carol", "croquet").await;
        assert_eq!(
            payload(&carol.token)["scope"],
            "orders:write payments:write"
        );
        let res = post(&http, &at, "/orders", &carol, &order()).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let res = pay(&http, &at, &carol, "carol-1").await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }

    /// A refusal for a missing scope happens before the idempotency layer claims the key:
    /// the same user, with a token that has the scope, retries with the same key and gets
    /// the payment, not a replay of the `403`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scope_refusal_is_not_recorded_under_the_idempotency_key() {
        let provider = Provider::start().await;
        let at = Instance::start(&provider.config());
        let http = client();
        let reader = provider.user(&provider.claims("kc-user", "openid"));
        let writer =
            provider.user(&provider.claims("kc-user", "openid payments:write orders:write"));
        let res = pay(&http, &at, &reader, "kc-user-pay-1").await;
        assert_insufficient_scope(&res, "payments:write");
        let res = pay(&http, &at, &writer, "kc-user-pay-1").await;
        assert_eq!(res.status(), StatusCode::CREATED);
        assert!(res.headers().get("idempotent-replayed").is_none());
        let res = super::post(&http, &at, "/orders", &reader, &order()).await;
        assert_insufficient_scope(&res, "orders:write");
        // A wrong method is 405 before any idempotency rule (no key needed to learn it).
        let res = http
            .patch(at.url("/payments"))
            .bearer_auth(&writer.token)
            .json(&json!({}))
            .send()
            .await
            .expect("PATCH");
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json_of(res).await["error"], "method_not_allowed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refreshed_tokens_carry_the_scopes() {
        let provider = Provider::start().await;
        let at = Instance::start(&provider.config());
        let http = client();
        let res = http
            .post(at.url("/login"))
            .json(&json!({"username": "bob", "password": "builder"}))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::OK);
        let refresh_token = json_of(res).await["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned();
        let res = http
            .post(at.url("/token/refresh"))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .expect("refresh");
        assert_eq!(res.status(), StatusCode::OK);
        let bob = User {
            token: json_of(res).await["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            cookie: String::new(),
        };
        assert_eq!(payload(&bob.token)["scope"], "orders:write payments:write");
        let res = post(&http, &at, "/orders", &bob, &order()).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let res = pay(&http, &at, &bob, "bob-1").await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }

    /// Keycloak access tokens carry the provider's own `sid`. The example must not take
    /// it for one of its sessions: a provider token naming the `sid` (and `sub`) of an
    /// example login, once used for `/logout`, must not end that login's session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_providers_sid_is_not_taken_for_an_example_session() {
        let provider = Provider::start().await;
        let at = Instance::start(&provider.config());
        let http = client();
        let res = http
            .post(at.url("/login"))
            .json(&json!({"username": "alice", "password": "wonderland"}))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::OK);
        let body = json_of(res).await;
        let alice = User {
            token: body["access_token"].as_str().expect("access").to_owned(),
            cookie: String::new(),
        };
        let refresh_token = body["refresh_token"].as_str().expect("refresh").to_owned();
        let sid = payload(&alice.token)["sid"]
            .as_str()
            .expect("own tokens carry sid")
            .to_owned();

        let mut claims = provider.claims("alice", "orders:write");
        claims["sid"] = json!(sid);
        let keycloak = provider.user(&claims);
        let res = me(&http, &at, &keycloak).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(json_of(res).await["sid"], Value::Null, "a provider's sid");
        let res = super::post(&http, &at, "/logout", &keycloak, &json!({})).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        // The provider's token is revoked (by its jti) ...
        let res = me(&http, &at, &keycloak).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        // ... and the example's session of the same id lives on: its access token works
        // and its refresh token rotates.
        let res = me(&http, &at, &alice).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(json_of(res).await["sid"], sid.as_str());
        let res = http
            .post(at.url("/token/refresh"))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .expect("refresh");
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// A provider's token without `jti` cannot be revoked on its own: `/logout` answers
    /// `400 invalid_request` (the crate's `RevokeError`), not a `503` that a client would
    /// retry forever, and the token keeps working until it expires.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logout_with_a_token_without_jti_is_a_bad_request() {
        let provider = Provider::start().await;
        let at = Instance::start(&provider.config());
        let http = client();
        let mut claims = provider.claims("carol", "orders:write");
        claims.as_object_mut().expect("claims").remove("jti");
        let carol = provider.user(&claims);
        let res = super::post(&http, &at, "/logout", &carol, &json!({})).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json_of(res).await["error"], "invalid_request");
        let res = me(&http, &at, &carol).await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// A plain-http issuer without `OIDC_ALLOW_HTTP` stops the start at once, and the
    /// message names the example's variable, not the crate's builder method.
    #[test]
    fn a_plain_http_issuer_names_oidc_allow_http() {
        let out = std::process::Command::new(super::example_binary())
            .env("PORT", "0")
            .env("JWT_SECRET", super::SECRET)
            .env("OIDC_ISSUER", "http://127.0.0.1:1/realms/shop")
            .env_remove("OIDC_ALLOW_HTTP")
            .env_remove("OIDC_AUDIENCE")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("LOG_FORMAT")
            .output()
            .expect("run the example");
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("OIDC_ISSUER http://127.0.0.1:1/realms/shop")
                && stderr.contains("OIDC_ALLOW_HTTP=true"),
            "{stderr}"
        );
        assert!(!stderr.contains("allow_http(true)"), "{stderr}");
    }

    /// Before the first keys arrive the example does not serve: it exits at start, naming
    /// the issuer and the cause (after `RemoteJwks`' 10-second startup wait).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_provider_fails_the_start_naming_the_issuer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let issuer = format!("http://{closed}");
        let mut at = Instance::spawn(&Config {
            oidc: Some((&issuer, AUDIENCE)),
            ..Config::default()
        });
        let status = at.wait_exit(Duration::from_secs(60));
        assert_eq!(status.code(), Some(1));
        assert!(
            at.log_count(&format!("OIDC_ISSUER {issuer}")) > 0,
            "the issuer named"
        );
        // And why, in the error it exits with (not only in the retry warnings before it):
        // the fetch that failed and its cause, not only "no keys within 10 s".
        let log = at.log.lock().unwrap_or_else(|e| e.into_inner());
        let fetch = format!("fetching {issuer}/.well-known/openid-configuration failed");
        assert!(
            log.iter().any(|line| line.starts_with("error: OIDC_ISSUER")
                && line.contains(&fetch)
                && line.contains("refused")),
            "{log:#?}"
        );
    }
}

/// "My devices": two logins of one user on two instances; `DELETE /sessions/others` from
/// login A ends login B whole (access token 401, refresh token `invalid_grant`, cart
/// gone) while A keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lists_logins_and_ends_the_others() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    let http = client();
    let (a, a_refresh) = login_with_refresh(&http, &one, "alice", "wonderland").await;
    let (b, b_refresh) = login_with_refresh(&http, &two, "alice", "wonderland").await;
    let sid_of = |user: &User| {
        let request = http.get(one.url("/me")).bearer_auth(&user.token);
        async move {
            let me = json_of(request.send().await.expect("me")).await;
            me["sid"].as_str().expect("sid").to_owned()
        }
    };
    let (a_sid, b_sid) = (sid_of(&a).await, sid_of(&b).await);
    assert_eq!(
        put_item(&http, &one, &a.cookie, "apple", 1).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        put_item(&http, &two, &b.cookie, "pear", 2).await.status(),
        StatusCode::OK
    );

    // Without a token: 401.
    let res = http.get(one.url("/sessions")).send().await.expect("GET");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let res = get(&http, &two, "/sessions", &a).await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed = json_of(res).await;
    let sessions = listed["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{listed}");
    assert_eq!(
        sessions.iter().filter(|s| s["current"] == true).count(),
        1,
        "{listed}"
    );
    for s in sessions {
        let id = s["id"].as_str().expect("id");
        assert!(
            id != a_sid && id != b_sid,
            "the handle is not the session id"
        );
        assert!(s["created"].as_u64().is_some() && s["last_seen"].as_u64().is_some());
    }

    let res = http
        .delete(one.url("/sessions/others"))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // Login B is over, on every instance.
    for at in [&one, &two] {
        assert_eq!(
            get(&http, at, "/me", &b).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = refresh_at(&http, &two, &b_refresh).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(res).await["error"], "invalid_grant");
    assert_eq!(
        cart(&http, &two, &b.cookie).await,
        json!({}),
        "B's cart is gone"
    );

    // Login A keeps working.
    assert_eq!(get(&http, &two, "/me", &a).await.status(), StatusCode::OK);
    assert_eq!(cart(&http, &two, &a.cookie).await, json!({"apple": 1}));
    let listed = json_of(get(&http, &one, "/sessions", &a).await).await;
    let sessions = listed["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["current"], true);
    let res = refresh_at(&http, &one, &a_refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// A login: its bearer user (access token, session cookie) and its refresh token.
async fn login_with_refresh(
    http: &Client,
    at: &Instance,
    username: &str,
    password: &str,
) -> (User, String) {
    let res = http
        .post(at.url("/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .expect("ASCII cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    let body = json_of(res).await;
    let token = body["access_token"].as_str().expect("access").to_owned();
    let refresh = body["refresh_token"].as_str().expect("refresh").to_owned();
    (User { token, cookie }, refresh)
}

async fn refresh_at(http: &Client, at: &Instance, refresh_token: &str) -> Response {
    http.post(at.url("/token/refresh"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .expect("refresh")
}

/// A replayed refresh token ends its whole login, as `DELETE /sessions/others` would: its
/// tokens, its cart and its entry under `GET /sessions`; the user's other login stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_ends_the_whole_login() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    let http = client();
    let (laptop, laptop_refresh) = login_with_refresh(&http, &one, "alice", "wonderland").await;
    let (phone, _) = login_with_refresh(&http, &two, "alice", "wonderland").await;
    assert_eq!(
        put_item(&http, &one, &laptop.cookie, "apple", 2)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        put_item(&http, &two, &phone.cookie, "pear", 1)
            .await
            .status(),
        StatusCode::OK
    );

    let res = refresh_at(&http, &two, &laptop_refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let rotated = json_of(res).await;
    let rotated_access = rotated["access_token"].as_str().expect("access").to_owned();

    // The consumed token again, on the other instance: reuse.
    let res = refresh_at(&http, &one, &laptop_refresh).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(res).await["error"], "invalid_grant");

    // The laptop's login is over: access token, cart and listing.
    let res = http
        .get(two.url("/me"))
        .bearer_auth(&rotated_access)
        .send()
        .await
        .expect("me");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cart(&http, &two, &laptop.cookie).await, json!({}));
    let listed = json_of(get(&http, &one, "/sessions", &phone).await).await;
    let sessions = listed["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["current"], true, "{listed}");

    // The phone keeps working.
    assert_eq!(
        get(&http, &one, "/me", &phone).await.status(),
        StatusCode::OK
    );
    assert_eq!(cart(&http, &one, &phone.cookie).await, json!({"pear": 1}));
}

/// A login right after `POST /logout-all` gets tokens that work, also on the other
/// instance; the tokens of before stay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_right_after_logout_all_works() {
    let redis = redis_or_skip!();
    let url = redis.url();
    let config = Config {
        redis_url: Some(&url),
        ..Config::default()
    };
    let (one, two) = (Instance::start(&config), Instance::start(&config));
    let http = client();
    let (mut user, _) = login_with_refresh(&http, &one, "bob", "builder").await;
    for round in 0..3 {
        let res = post(&http, &two, "/logout-all", &user, &json!({})).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "round {round}");
        let old = user;
        let (fresh, fresh_refresh) = login_with_refresh(&http, &one, "bob", "builder").await;
        for at in [&one, &two] {
            assert_eq!(
                get(&http, at, "/me", &fresh).await.status(),
                StatusCode::OK,
                "round {round}"
            );
            assert_eq!(
                get(&http, at, "/me", &old).await.status(),
                StatusCode::UNAUTHORIZED,
                "round {round}"
            );
        }
        let res = refresh_at(&http, &two, &fresh_refresh).await;
        assert_eq!(res.status(), StatusCode::OK, "round {round}");
        let token = json_of(res).await["access_token"]
            .as_str()
            .expect("access")
            .to_owned();
        let refreshed = User {
            token,
            cookie: fresh.cookie.clone(),
        };
        assert_eq!(
            get(&http, &one, "/me", &refreshed).await.status(),
            StatusCode::OK,
            "round {round}"
        );
        user = refreshed;
    }
}

/// `GET /sessions` shows the `User-Agent` each login sent (its first 256 characters), and
/// no `user_agent` for a login that sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_show_the_user_agent_of_each_login() {
    let at = Instance::start(&Config::default());
    let http = client();
    let long = "x".repeat(1000);
    let mut users = Vec::new();
    for agent in [Some("Firefox/128.0"), None, Some(long.as_str())] {
        let mut request = http
            .post(at.url("/login"))
            .json(&json!({"username": "alice", "password": "wonderland"}));
        if let Some(agent) = agent {
            request = request.header("user-agent", agent);
        }
        let res = request.send().await.expect("login");
        assert_eq!(res.status(), StatusCode::OK);
        let body = json_of(res).await;
        let token = body["access_token"].as_str().expect("access").to_owned();
        users.push(User {
            token,
            cookie: String::new(),
        });
    }
    let listed = json_of(get(&http, &at, "/sessions", &users[0]).await).await;
    let sessions = listed["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 3, "{listed}");
    let mut agents: Vec<Option<String>> = sessions
        .iter()
        .map(|s| {
            s.get("user_agent")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    agents.sort();
    assert_eq!(
        agents,
        vec![
            None,
            Some("Firefox/128.0".to_owned()),
            Some("x".repeat(256))
        ]
    );
    let current = sessions
        .iter()
        .find(|s| s["current"] == true)
        .expect("current");
    assert_eq!(current["user_agent"], "Firefox/128.0");
}

/// Waits (bounded) until the instance logged `needle` at least `n` times, then returns how
/// many times it did. Lines arrive in order: once a later line is in, so is every earlier.
async fn wait_for_log(at: &Instance, needle: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    while at.log_count(needle) < n {
        assert!(Instant::now() < deadline, "{needle:?} not logged {n} times");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    at.log_count(needle)
}

/// Orders and payments keyed by an `Idempotency-Key` outlive the idempotency layer's
/// record of the key (30 days against 24 hours, and the layer lets a key go after a
/// `5xx`). Once the layer has forgotten the key (its `idem:` keys deleted here), the same
/// key with another body is `422 idempotency_key_reused`, never the old record, and
/// charges nothing; with the same body it is the stored record again, `201` with
/// `Idempotent-Replayed: true`, not charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_after_the_layer_forgot_it_is_422_never_the_old_record() {
    const GATEWAY: &str = "calling the payment gateway";
    let redis = redis_or_skip!();
    let url = redis.url();
    let at = Instance::start(&Config {
        redis_url: Some(&url),
        ..Config::default()
    });
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    let send = |path: &'static str, key: &'static str, body: Value| {
        http.post(at.url(path))
            .bearer_auth(&alice.token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };

    let payment = json!({"amount_cents": 10000, "currency": "EUR"});
    let other = json!({"amount_cents": 9_999_900, "currency": "USD"});
    let res = send("/payments", "reuse-pay", payment.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.headers().get("idempotent-replayed").is_none());
    let first = json_of(res).await;
    assert_eq!(wait_for_log(&at, GATEWAY, 1).await, 1);

    assert!(
        redis.delete_keys("idem:*") > 0,
        "the layer's records are in Redis"
    );
    let res = send("/payments", "reuse-pay", other.clone()).await.unwrap();
    error_body(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    redis.delete_keys("idem:*");
    let res = send("/payments", "reuse-pay", payment.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let location = format!("/payments/{}", first["payment_id"].as_str().unwrap());
    assert_eq!(res.headers()["location"], location.as_str());
    assert_eq!(
        json_of(res).await,
        first,
        "the stored payment, as first answered"
    );

    // One more payment under a new key: once its gateway call is logged, every earlier
    // one is too. Two calls in all: the refused and the repeated payment charged nothing.
    let res = send("/payments", "fence-pay", payment.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        wait_for_log(&at, GATEWAY, 2).await,
        2,
        "one charge per payment"
    );
    let listed = json_of(get(&http, &at, "/payments", &alice).await).await;
    assert_eq!(
        listed["payments"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert_eq!(listed["payments"][0], first, "{listed}");

    // Orders alike.
    let order = json!({"sku": "apple", "qty": 1});
    let res = send("/orders", "reuse-order", order.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let first = json_of(res).await;
    redis.delete_keys("idem:*");
    let res = send("/orders", "reuse-order", json!({"sku": "pear", "qty": 5}))
        .await
        .unwrap();
    error_body(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    redis.delete_keys("idem:*");
    let res = send("/orders", "reuse-order", order).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(res).await, first);
    let listed = json_of(get(&http, &at, "/orders", &alice).await).await;
    assert_eq!(listed["orders"], json!([first]), "{listed}");
}

/// `POST /login` with the session cookie of a login that was ended elsewhere (`DELETE
/// /sessions/others`), on a shared browser: the new login, another user's, starts with an
/// empty cart, not the ended login's. A cart put before logging in is not carried into
/// the login either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_starts_without_the_cookie_sessions_earlier_cart() {
    let at = Instance::start(&Config::default());
    let http = client();
    let login_with_cookie = |cookie: String, username: &'static str, password: &'static str| {
        let request = http
            .post(at.url("/login"))
            .header("cookie", cookie)
            .json(&json!({"username": username, "password": password}));
        async move {
            let res = request.send().await.expect("login");
            assert_eq!(res.status(), StatusCode::OK);
            let cookie = res.headers()["set-cookie"]
                .to_str()
                .expect("ASCII cookie")
                .split(';')
                .next()
                .expect("cookie pair")
                .to_owned();
            let token = json_of(res).await["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned();
            User { token, cookie }
        }
    };

    let shared = login(&http, &at, "bob", "builder").await;
    let res = put_item(&http, &at, &shared.cookie, "stolen-laptop", 1).await;
    assert_eq!(res.status(), StatusCode::OK);
    let elsewhere = login(&http, &at, "bob", "builder").await;
    let res = http
        .delete(at.url("/sessions/others"))
        .bearer_auth(&elsewhere.token)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let alice = login_with_cookie(shared.cookie.clone(), "alice", "wonderland").await;
    assert_ne!(alice.cookie, shared.cookie, "a new session id at login");
    assert_eq!(cart(&http, &at, &alice.cookie).await, json!({}));
    assert_eq!(
        cart(&http, &at, &shared.cookie).await,
        json!({}),
        "the old id is gone"
    );
    let res = put_item(&http, &at, &alice.cookie, "apple", 2).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(cart(&http, &at, &alice.cookie).await, json!({"apple": 2}));

    // A cart put before logging in.
    let res = http
        .put(at.url("/cart/items/pear"))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(res.status(), StatusCode::OK);
    let anonymous = res.headers()["set-cookie"]
        .to_str()
        .expect("ASCII cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    let bob = login_with_cookie(anonymous, "bob", "builder").await;
    assert_eq!(cart(&http, &at, &bob.cookie).await, json!({}));
}

/// A body that is not JSON is `415` before the idempotency layer claims the key, so the
/// corrected retry with the same key runs (`201`) instead of being replayed the `415`;
/// and `415` comes before the size check, with a key as without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_415_and_not_recorded_under_its_key() {
    let at = Instance::start(&Config::default());
    let http = client();
    let alice = login(&http, &at, "alice", "wonderland").await;
    for (path, body) in [
        ("/orders", json!({"sku": "apple", "qty": 1})),
        (
            "/payments",
            json!({"amount_cents": 1250, "currency": "EUR"}),
        ),
    ] {
        let key = format!("content-type{path}");
        let res = http
            .post(at.url(path))
            .bearer_auth(&alice.token)
            .header("idempotency-key", &key)
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        error_body(res, StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_body").await;
        let res = http
            .post(at.url(path))
            .bearer_auth(&alice.token)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "{path}");
        assert!(res.headers().get("idempotent-replayed").is_none(), "{path}");
    }
    let bearer = format!("authorization: Bearer {}", alice.token);
    for head in [
        format!("POST /orders HTTP/1.1\r\n{bearer}\r\nidempotency-key: big-text"),
        format!("POST /orders HTTP/1.1\r\n{bearer}"),
        format!("POST /payments HTTP/1.1\r\n{bearer}\r\nidempotency-key: big-text"),
        "POST /login HTTP/1.1".to_owned(),
    ] {
        let answer =
            send_raw_typed(&at, &head, "text/plain", order_of_len(BODY_LIMIT + 100_000)).await;
        let what = head.replace(&alice.token, "...");
        assert_eq!(answer.status, 415, "{what}: {}", answer.body);
        assert_eq!(answer.body["error"], "invalid_body", "{what}");
    }
}

/// A `User-Agent` with bytes beyond ASCII (UTF-8, or another encoding) is shown under
/// `GET /sessions` (invalid UTF-8 replaced), cut at 256 characters as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_show_a_user_agent_beyond_ascii() {
    let at = Instance::start(&Config::default());
    let http = client();
    let long = "é".repeat(300);
    let mut token = String::new();
    for agent in [
        "Navigateur-été".as_bytes(),
        b"Latin-1 caf\xe9",
        long.as_bytes(),
    ] {
        let value = reqwest::header::HeaderValue::from_bytes(agent).expect("obs-text");
        let res = http
            .post(at.url("/login"))
            .header("user-agent", value)
            .json(&json!({"username": "alice", "password": "wonderland"}))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::OK);
        token = json_of(res).await["access_token"]
            .as_str()
            .expect("access")
            .to_owned();
    }
    let user = User {
        token,
        cookie: String::new(),
    };
    let listed = json_of(get(&http, &at, "/sessions", &user).await).await;
    let mut agents: Vec<String> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["user_agent"].as_str().unwrap_or("(none)").to_owned())
        .collect();
    agents.sort();
    let mut expected = vec![
        "Latin-1 caf\u{fffd}".to_owned(),
        "Navigateur-été".to_owned(),
        "é".repeat(256),
    ];
    expected.sort();
    assert_eq!(agents, expected, "{listed}");
}
