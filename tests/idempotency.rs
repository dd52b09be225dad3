//! IdempotencyLayer black-box tests, on MemoryStore and on a real Redis.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody, Scope};
use tower_stateless::response::ResponseBody;
use tower_stateless::store::{MemoryStore, RedisStore, StateStore, StoreError};
use tower_stateless::{ConfigError, RegisteredClaims, StoreFailure};

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody<Full<Bytes>>>, String>;

/// One service instance: its handler counts its runs and obeys the request:
/// `x-status` (default 201), `x-gate` (wait for a permit of the instance's gate first),
/// `x-big` (answer that many deterministic bytes), `x-fail` (return a service error).
/// The body of a normal answer is `run <n> of <instance>: <request body>`.
#[derive(Clone)]
struct Instance {
    runs: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    svc: Svc,
}

fn big_body(len: usize) -> Bytes {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn instance<St: StateStore>(name: &'static str, layer: IdempotencyLayer<St>) -> Instance {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (r, g) = (runs.clone(), gate.clone());
    let handler = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let (runs, gate) = (r.clone(), g.clone());
        async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if req.headers().contains_key("x-gate") {
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
            }
            if req.headers().contains_key("x-fail") {
                return Err("handler failed".to_owned());
            }
            let status = req
                .headers()
                .get("x-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(201);
            let big = req
                .headers()
                .get("x-big")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{e:?}"))?
                .to_bytes();
            let out = match big {
                Some(len) => big_body(len),
                None => Bytes::from(format!(
                    "run {n} of {name}: {}",
                    String::from_utf8_lossy(&body)
                )),
            };
            Response::builder()
                .status(status)
                .header("content-type", "text/plain")
                .header("location", format!("/things/{n}"))
                .header("set-cookie", "tracking=1")
                .header("x-internal", "secret")
                .body(Full::new(out))
                .map_err(|e| e.to_string())
        }
    });
    let svc = ServiceBuilder::new().layer(layer).service(handler);
    Instance {
        runs,
        gate,
        svc: BoxCloneService::new(svc),
    }
}

struct Out {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

/// A layer whose records every caller shares (the tests' anonymous clients send
/// distinct keys); the per-caller scopes have tests of their own.
fn shared<St: StateStore>(store: St) -> IdempotencyLayer<St> {
    IdempotencyLayer::new(store).scope(Scope::shared())
}

/// A request builder: `POST /pay` with the given key and body.
fn req(key: Option<&str>) -> http::request::Builder {
    let mut b = Request::post("/pay");
    if let Some(key) = key {
        b = b.header("idempotency-key", key);
    }
    b
}

fn as_user(mut r: Request<Full<Bytes>>, sub: &str) -> Request<Full<Bytes>> {
    r.extensions_mut()
        .insert(RegisteredClaims::new(sub, u64::MAX / 2));
    r
}

/// Calls the instance; the future owns a clone of the service, so it can be spawned.
fn send(inst: &Instance, r: Request<Full<Bytes>>) -> impl std::future::Future<Output = Out> {
    let svc = inst.svc.clone();
    async move {
        let res = svc.oneshot(r).await.expect("service error");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Out {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

fn post(key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    req(key)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

fn error_code(out: &Out) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap_or_default();
    v["error"].as_str().unwrap_or_default().to_owned()
}

async fn first_call_then_replay<St: StateStore>(store: St) {
    let a = instance("a", shared(store));
    let first = send(&a, post(Some("k-1"), "{\"amount\":5}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "run 1 of a: {\"amount\":5}");
    assert!(!first.replayed());
    // The first answer keeps every header of the handler.
    assert_eq!(first.headers["set-cookie"], "tracking=1");
    assert_eq!(first.headers["x-internal"], "secret");

    let again = send(&a, post(Some("k-1"), "{\"amount\":5}")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert!(again.replayed());
    assert_eq!(again.headers["content-type"], "text/plain");
    assert_eq!(again.headers["location"], "/things/1");
    // Not on the allow-list, or never replayed.
    assert!(!again.headers.contains_key("set-cookie"));
    assert!(!again.headers.contains_key("x-internal"));
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);

    // The draft's quoted form names the same key.
    let quoted = send(&a, post(Some("\"k-1\""), "{\"amount\":5}")).await;
    assert!(quoted.replayed());
    assert_eq!(quoted.body, first.body);

    // Another key runs again.
    let other = send(&a, post(Some("k-2"), "{\"amount\":5}")).await;
    assert_eq!(other.text(), "run 2 of a: {\"amount\":5}");
    assert_eq!(a.runs.load(Ordering::SeqCst), 2);
}

async fn concurrent_duplicates<St: StateStore>(store: St) {
    // All 200 at once: above the default bound on keyed requests in flight.
    let layer = shared(store).max_in_flight(400).expect("max_in_flight");
    // Two instances on one store, as behind a load balancer.
    let a = instance("a", layer.clone());
    let b = instance("b", layer);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let inst = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let r = req(Some("dup"))
                .header("x-gate", "1")
                .body(Full::new(Bytes::from_static(b"pay 10")))
                .expect("request");
            send(&inst, r).await
        }));
    }
    // Let every duplicate arrive while the first is held inside its handler.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.runs.load(Ordering::SeqCst) + b.runs.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no handler ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.gate.add_permits(1000);
    b.gate.add_permits(1000);
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.expect("task"));
    }
    let runs = a.runs.load(Ordering::SeqCst) + b.runs.load(Ordering::SeqCst);
    assert_eq!(runs, 1, "the handler must run exactly once");
    let winner = outs
        .iter()
        .find(|o| o.status == StatusCode::CREATED && !o.replayed())
        .expect("one original answer");
    let mut conflicts = 0;
    for o in &outs {
        match o.status {
            StatusCode::CREATED => assert_eq!(o.body, winner.body),
            StatusCode::CONFLICT => {
                conflicts += 1;
                assert_eq!(error_code(o), "idempotency_request_in_progress");
                assert_eq!(o.headers["retry-after"], "1");
            }
            other => panic!("unexpected {other}: {}", o.text()),
        }
    }
    assert!(
        conflicts > 0,
        "duplicates sent while the first ran must get 409"
    );
    // After completion, a retry is a replay.
    let late = send(
        &a,
        req(Some("dup"))
            .body(Full::new(Bytes::from_static(b"pay 10")))
            .expect("request"),
    )
    .await;
    assert!(late.replayed());
    assert_eq!(late.body, winner.body);
}

async fn changed_request_is_422<St: StateStore>(store: St) {
    let layer = shared(store).fingerprint_header(http::HeaderName::from_static("x-tenant"));
    let a = instance("a", layer);
    assert_eq!(
        send(&a, post(Some("k"), "amount=5")).await.status,
        StatusCode::CREATED
    );
    let changed = send(&a, post(Some("k"), "amount=500")).await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&changed), "idempotency_key_reused");
    let mut other_query = post(Some("k"), "amount=5");
    *other_query.uri_mut() = "/pay?currency=eur".parse().expect("uri");
    assert_eq!(
        send(&a, other_query).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let with_header = req(Some("k"))
        .header("x-tenant", "t2")
        .body(Full::new(Bytes::from_static(b"amount=5")))
        .expect("request");
    assert_eq!(
        send(&a, with_header).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // An unconfigured header does not matter.
    let with_other = req(Some("k"))
        .header("x-trace", "abc")
        .body(Full::new(Bytes::from_static(b"amount=5")))
        .expect("request");
    assert!(send(&a, with_other).await.replayed());
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);
}

async fn missing_and_malformed_keys<St: StateStore>(store: St) {
    let a = instance("a", shared(store.clone()).required(true));
    let missing = send(&a, post(None, "x")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&missing), "idempotency_key_required");
    assert_eq!(missing.headers["content-type"], "application/json");
    let long = "k".repeat(256);
    let bad: Vec<&[u8]> = vec![
        b"",
        b"has space",
        b"\"unterminated",
        b"\"bad\\escape\"",
        long.as_bytes(),
        b"caf\xc3\xa9",
    ];
    for key in bad {
        let r = Request::post("/pay")
            .header(
                "idempotency-key",
                http::HeaderValue::from_bytes(key).expect("header"),
            )
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request");
        let out = send(&a, r).await;
        assert_eq!(out.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(error_code(&out), "invalid_idempotency_key");
    }
    let two = Request::post("/pay")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Full::new(Bytes::from_static(b"x")))
        .expect("request");
    assert_eq!(send(&a, two).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.runs.load(Ordering::SeqCst),
        0,
        "no bad request reaches the handler"
    );
    // The layer's own 400s are not stored: the same key, well-formed, runs.
    assert_eq!(
        send(&a, post(Some("k"), "x")).await.status,
        StatusCode::CREATED
    );

    // Optional key (the default): no key, no idempotency; the handler runs every time.
    let b = instance("b", shared(store.clone()));
    send(&b, post(None, "x")).await;
    send(&b, post(None, "x")).await;
    assert_eq!(b.runs.load(Ordering::SeqCst), 2);

    // A custom header name and a per-path requirement.
    let c = instance(
        "c",
        shared(store)
            .header_name(http::HeaderName::from_static("x-idempotency-key"))
            .required_if(|_, uri| uri.path() == "/pay"),
    );
    assert_eq!(
        send(&c, post(None, "x")).await.status,
        StatusCode::BAD_REQUEST
    );
    let mut elsewhere = post(None, "x");
    *elsewhere.uri_mut() = "/other".parse().expect("uri");
    assert_eq!(send(&c, elsewhere).await.status, StatusCode::CREATED);
    let custom = |_: ()| {
        Request::post("/pay")
            .header("x-idempotency-key", "ck")
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request")
    };
    send(&c, custom(())).await;
    assert!(send(&c, custom(())).await.replayed());
}

async fn users_are_independent<St: StateStore>(store: St) {
    let a = instance("a", IdempotencyLayer::new(store));
    let alice = send(&a, as_user(post(Some("same"), "x"), "alice")).await;
    let bob = send(&a, as_user(post(Some("same"), "x"), "bob")).await;
    assert!(!alice.replayed() && !bob.replayed());
    assert_ne!(alice.body, bob.body, "bob must not get alice's response");
    // Bob's different body under alice's key is not a 422 either: no probing.
    let bob2 = send(&a, as_user(post(Some("alice-only"), "y"), "bob")).await;
    assert_eq!(bob2.status, StatusCode::CREATED);
    assert!(send(&a, as_user(post(Some("same"), "x"), "alice"))
        .await
        .replayed());
    assert_eq!(a.runs.load(Ordering::SeqCst), 3);
    // An anonymous caller has no record to reach: refused, never run, nothing shared.
    let anonymous = send(&a, post(Some("same"), "x")).await;
    assert_eq!(anonymous.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&anonymous), "idempotency_scope_missing");
    assert_eq!(a.runs.load(Ordering::SeqCst), 3);
}

async fn what_is_stored<St: StateStore>(store: St) {
    let a = instance("a", shared(store.clone()));
    let with_status = |key: &str, status: u16| {
        req(Some(key))
            .header("x-status", status.to_string())
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request")
    };
    // 5xx, 408, 409, 429: released, the retry runs.
    for (i, status) in [500u16, 503, 408, 409, 429].into_iter().enumerate() {
        let key = format!("transient-{status}");
        assert_eq!(
            send(&a, with_status(&key, status)).await.status.as_u16(),
            status
        );
        let retry = send(&a, with_status(&key, status)).await;
        assert!(!retry.replayed(), "{status} must not be stored");
        assert_eq!(a.runs.load(Ordering::SeqCst), 2 * (i + 1));
    }
    // A deterministic 4xx is stored and replayed.
    let before = a.runs.load(Ordering::SeqCst);
    assert_eq!(
        send(&a, with_status("bad", 400)).await.status,
        StatusCode::BAD_REQUEST
    );
    let replay = send(&a, with_status("bad", 400)).await;
    assert!(replay.replayed());
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.runs.load(Ordering::SeqCst), before + 1);
    // A handler error releases the key and reaches the caller as the error.
    let failing = || {
        req(Some("fails"))
            .header("x-fail", "1")
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request")
    };
    let err = a.svc.clone().oneshot(failing()).await.expect_err("error");
    assert_eq!(err, "handler failed");
    assert!(a.svc.clone().oneshot(failing()).await.is_err());
    assert_eq!(a.runs.load(Ordering::SeqCst), before + 3);

    // Opt-in: 5xx stored too (at most once).
    let b = instance("b", shared(store).store_server_errors(true));
    send(&b, with_status("five", 502)).await;
    let again = send(&b, with_status("five", 502)).await;
    assert!(again.replayed());
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);
    assert_eq!(b.runs.load(Ordering::SeqCst), 1);
}

async fn other_methods_pass_through<St: StateStore>(store: St) {
    let a = instance("a", shared(store).required(true));
    for method in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ] {
        for _ in 0..2 {
            let mut r = post(Some("k"), "x");
            *r.method_mut() = method.clone();
            let out = send(&a, r).await;
            assert_eq!(out.status, StatusCode::CREATED);
            assert!(!out.replayed());
        }
        // Even a malformed key is not looked at.
        let r = Request::builder()
            .method(method)
            .uri("/pay")
            .header("idempotency-key", "bad key")
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(send(&a, r).await.status, StatusCode::CREATED);
    }
    assert_eq!(a.runs.load(Ordering::SeqCst), 15);
    // PATCH is covered by default.
    let mut patch = post(Some("p"), "x");
    *patch.method_mut() = Method::PATCH;
    send(&a, patch).await;
    let mut patch = post(Some("p"), "x");
    *patch.method_mut() = Method::PATCH;
    assert!(send(&a, patch).await.replayed());
}

/// A keyed `POST /pay` whose handler waits for a permit of its instance's gate.
fn gated(key: &str) -> Request<Full<Bytes>> {
    req(Some(key))
        .header("x-gate", "1")
        .body(Full::new(Bytes::from_static(b"x")))
        .expect("request")
}

/// Waits until the instance's handler has started `n` times.
async fn wait_for_runs(inst: &Instance, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while inst.runs.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A handler three leases long keeps its key: retries during it get `409`, the retry
/// after it the replay, and it runs once.
async fn slow_handler_keeps_its_key<St: StateStore>(store: St) {
    let lock = Duration::from_millis(600);
    let layer = shared(store).lock_ttl(lock).expect("lock_ttl");
    let a = instance("a", layer.clone());
    let b = instance("b", layer);
    let first = tokio::spawn(send(&a, gated("k")));
    wait_for_runs(&a, 1).await;
    let during = send(&b, post(Some("k"), "x")).await;
    assert_eq!(during.status, StatusCode::CONFLICT, "{}", during.text());
    // A lease that nobody renewed would have run out three times over by now.
    tokio::time::sleep(lock * 3).await;
    let later = send(&b, post(Some("k"), "x")).await;
    assert_eq!(later.status, StatusCode::CONFLICT, "{}", later.text());
    a.gate.add_permits(1);
    let first = first.await.expect("task");
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "run 1 of a: x");
    let after = send(&b, post(Some("k"), "x")).await;
    assert!(after.replayed(), "{} {}", after.status, after.text());
    assert_eq!(after.body, first.body);
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);
    assert_eq!(b.runs.load(Ordering::SeqCst), 0);
}

/// The first instance dies holding the key (it loses the store; its handler never
/// returns): its renewals stop, and after the lease a retry on another instance runs.
async fn lease_expiry_then_retry_runs<St: StateStore>(store: St) {
    let lock = Duration::from_millis(300);
    let faulty = faulty(store.clone());
    let a = instance(
        "a",
        shared(faulty.clone()).lock_ttl(lock).expect("lock_ttl"),
    );
    let b = instance("b", shared(store).lock_ttl(lock).expect("lock_ttl"));
    let _dead = tokio::spawn(send(&a, gated("k")));
    wait_for_runs(&a, 1).await;
    let during = send(&b, post(Some("k"), "x")).await;
    assert_eq!(during.status, StatusCode::CONFLICT);
    faulty.hook.down.store(true, Ordering::SeqCst);
    // Its last renewal was before this point: the lease ends within one `lock`.
    tokio::time::sleep(lock * 2).await;
    let after = send(&b, post(Some("k"), "x")).await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert_eq!(after.text(), "run 1 of b: x");
    assert!(send(&b, post(Some("k"), "x")).await.replayed());
    assert_eq!(b.runs.load(Ordering::SeqCst), 1);
}

/// A first request cut off from the store long enough to lose its lease cannot
/// overwrite the record of the request that took over the key.
async fn late_owner_cannot_overwrite<St: StateStore>(store: St) {
    let lock = Duration::from_millis(300);
    let faulty = faulty(store.clone());
    let a = instance(
        "a",
        shared(faulty.clone()).lock_ttl(lock).expect("lock_ttl"),
    );
    let b = instance("b", shared(store).lock_ttl(lock).expect("lock_ttl"));
    let slow = tokio::spawn(send(&a, gated("k")));
    wait_for_runs(&a, 1).await;
    faulty.hook.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(lock * 2).await;
    let taken_over = send(&b, post(Some("k"), "x")).await;
    assert_eq!(taken_over.text(), "run 1 of b: x");
    // Now the slow one is back and finishes; it answers its own client, but is not
    // recorded.
    faulty.hook.down.store(false, Ordering::SeqCst);
    a.gate.add_permits(1);
    let slow = slow.await.expect("task");
    assert_eq!(slow.text(), "run 1 of a: x");
    let replay = send(&a, post(Some("k"), "x")).await;
    assert!(replay.replayed());
    assert_eq!(replay.text(), "run 1 of b: x");
}

/// A request whose lease lapsed (its renewals were lost) while nobody took its key over
/// is still recorded when its handler finishes: it ran once, and that is the result.
async fn lapsed_lease_is_still_recorded<St: StateStore>(store: St) {
    let lock = Duration::from_millis(300);
    let faulty = faulty(store.clone());
    let a = instance(
        "a",
        shared(faulty.clone()).lock_ttl(lock).expect("lock_ttl"),
    );
    let b = instance("b", shared(store).lock_ttl(lock).expect("lock_ttl"));
    let first = tokio::spawn(send(&a, gated("k")));
    wait_for_runs(&a, 1).await;
    faulty.hook.drop_renewals.store(true, Ordering::SeqCst);
    tokio::time::sleep(lock * 2).await;
    a.gate.add_permits(1);
    let first = first.await.expect("task");
    assert_eq!(first.text(), "run 1 of a: x");
    let retry = send(&b, post(Some("k"), "x")).await;
    assert!(retry.replayed(), "{} {}", retry.status, retry.text());
    assert_eq!(retry.text(), "run 1 of a: x");
    assert_eq!(b.runs.load(Ordering::SeqCst), 0);
}

/// The client goes away while the handler runs: the handler completes, its answer is
/// recorded, and the client's retry gets it without a second run.
async fn client_disconnect_then_retry<St: StateStore>(store: St) {
    let a = instance("a", shared(store));
    // Drop the response future mid-handler, as hyper does when the connection closes.
    let call = tokio::spawn(send(&a, gated("k")));
    wait_for_runs(&a, 1).await;
    call.abort();
    match call.await {
        Err(e) if e.is_cancelled() => {}
        Err(e) => panic!("the call failed: {e}"),
        Ok(out) => panic!(
            "the call cannot finish while its handler is held: {}",
            out.status
        ),
    }
    let retry = send(&a, post(Some("k"), "x")).await;
    assert_eq!(
        retry.status,
        StatusCode::CONFLICT,
        "still running: {}",
        retry.text()
    );
    a.gate.add_permits(1);
    // The detached request records its answer in the background: poll for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = send(&a, post(Some("k"), "x")).await;
        if out.status != StatusCode::CONFLICT {
            break out;
        }
        assert!(tokio::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(out.status, StatusCode::CREATED);
    assert!(out.replayed());
    assert_eq!(out.text(), "run 1 of a: x");
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);
}

/// Beyond `max_in_flight` keyed requests, a keyed request is `503` with `Retry-After`,
/// without claiming its key; requests within the bound and requests without a key are
/// unaffected.
async fn over_max_in_flight_is_503<St: StateStore>(store: St) {
    let a = instance("a", shared(store).max_in_flight(2).expect("max_in_flight"));
    let k1 = tokio::spawn(send(&a, gated("k1")));
    let k2 = tokio::spawn(send(&a, gated("k2")));
    wait_for_runs(&a, 2).await;
    let over = send(&a, post(Some("k3"), "x")).await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&over), "idempotency_overloaded");
    assert_eq!(over.headers["retry-after"], "1");
    assert_eq!(a.runs.load(Ordering::SeqCst), 2, "not run");
    // Without a key: not counted.
    let unkeyed = send(&a, post(None, "x")).await;
    assert_eq!(unkeyed.status, StatusCode::CREATED);
    a.gate.add_permits(2);
    for (call, key) in [(k1, "k1"), (k2, "k2")] {
        let first = call.await.expect("task");
        assert_eq!(first.status, StatusCode::CREATED);
        let replay = send(&a, post(Some(key), "x")).await;
        assert!(replay.replayed());
        assert_eq!(replay.body, first.body);
    }
    // The refused key was never claimed: its retry runs now.
    let retry = send(&a, post(Some("k3"), "x")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.replayed());
    assert_eq!(a.runs.load(Ordering::SeqCst), 4);
}

/// A request whose client went away goes on in a task of its own, and still counts
/// against `max_in_flight` until it is recorded.
async fn disconnected_requests_count_in_flight<St: StateStore>(store: St) {
    let a = instance("a", shared(store).max_in_flight(1).expect("max_in_flight"));
    let call = tokio::spawn(send(&a, gated("k1")));
    wait_for_runs(&a, 1).await;
    call.abort();
    assert!(call.await.is_err_and(|e| e.is_cancelled()));
    let over = send(&a, post(Some("k2"), "x")).await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&over), "idempotency_overloaded");
    a.gate.add_permits(1);
    // Once the detached request is recorded, its place is free again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !send(&a, post(Some("k1"), "x")).await.replayed() {
        assert!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = send(&a, post(Some("k2"), "x")).await;
    assert_eq!(next.status, StatusCode::CREATED);
    assert_eq!(a.runs.load(Ordering::SeqCst), 2);
}

/// A keyed request runs inline, on the caller's task: no hand-off to a task of its own
/// unless the caller drops the response future (see `client_disconnect_then_retry`).
async fn keyed_request_runs_on_the_callers_task<St: StateStore>(store: St) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = ServiceBuilder::new().layer(shared(store)).service_fn(
        move |_: Request<RequestBody<Full<Bytes>>>| {
            let s = s.clone();
            async move {
                s.lock().expect("lock").push(tokio::task::try_id());
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }
        },
    );
    let caller = tokio::spawn(async move {
        let res = svc.oneshot(post(Some("k"), "x")).await.expect("call");
        (tokio::task::try_id(), res.status())
    });
    let (caller_id, status) = caller.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert!(caller_id.is_some());
    assert_eq!(*seen.lock().expect("lock"), vec![caller_id]);
}

/// By default records are kept per user: a keyed request without a user is refused, not
/// put in a namespace every anonymous caller shares. Sharing is a choice.
async fn anonymous_keys_need_a_scope<St: StateStore>(store: St) {
    let a = instance("a", IdempotencyLayer::new(store.clone()));
    let out = send(&a, post(Some("k"), "x")).await;
    assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&out), "idempotency_scope_missing");
    assert_eq!(a.runs.load(Ordering::SeqCst), 0);
    // Without a key no scope is needed.
    assert_eq!(send(&a, post(None, "x")).await.status, StatusCode::CREATED);
    // Shared, when chosen: two anonymous callers reach one record.
    let b = instance("b", IdempotencyLayer::new(store).scope(Scope::shared()));
    send(&b, post(Some("k"), "x")).await;
    assert!(send(&b, post(Some("k"), "x")).await.replayed());
}

/// A scope from the request (here a tenant header that an earlier layer verified): one
/// record per tenant, and a request without one is refused.
async fn custom_scope_keeps_callers_apart<St: StateStore>(store: St) {
    let scope = Scope::from_fn(|req| {
        let tenant = req.headers.get("x-tenant")?.to_str().ok()?;
        Some(tenant.to_owned())
    });
    let a = instance("a", IdempotencyLayer::new(store).scope(scope));
    let as_tenant = |tenant: &'static str| {
        let mut r = post(Some("same"), "x");
        r.headers_mut()
            .insert("x-tenant", http::HeaderValue::from_static(tenant));
        r
    };
    let t1 = send(&a, as_tenant("t1")).await;
    let t2 = send(&a, as_tenant("t2")).await;
    assert!(!t1.replayed() && !t2.replayed());
    assert_ne!(t1.body, t2.body, "t2 must not get t1's response");
    let again = send(&a, as_tenant("t1")).await;
    assert!(again.replayed());
    assert_eq!(again.body, t1.body);
    let none = send(&a, post(Some("same"), "x")).await;
    assert_eq!(none.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&none), "idempotency_scope_missing");
    assert_eq!(a.runs.load(Ordering::SeqCst), 2);
}

async fn request_body_limit<St: StateStore>(store: St) {
    let a = instance(
        "a",
        shared(store)
            .max_request_body(1024)
            .expect("max_request_body"),
    );
    // Declared too large.
    let declared = req(Some("k"))
        .header("content-length", "4096")
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .expect("request");
    let out = send(&a, declared).await;
    assert_eq!(out.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&out), "payload_too_large");
    // Too large without a Content-Length (found while buffering).
    let streamed = post(Some("k"), &"y".repeat(1025));
    assert_eq!(
        send(&a, streamed).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(a.runs.load(Ordering::SeqCst), 0);
    // At the limit it runs, and the handler gets the body unchanged.
    let body = "z".repeat(1024);
    let out = send(&a, post(Some("k"), &body)).await;
    assert_eq!(out.status, StatusCode::CREATED);
    assert_eq!(out.text(), format!("run 1 of a: {body}"));
}

async fn one_megabyte_response<St: StateStore>(store: St) {
    let len = 1024 * 1024;
    let a = instance("a", shared(store.clone()));
    let big = || {
        req(Some("big"))
            .header("x-big", len.to_string())
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request")
    };
    let expected = big_body(len);
    let first = send(&a, big()).await;
    assert_eq!(first.body.len(), len);
    assert!(first.body == expected, "first body differs");
    let replay = send(&a, big()).await;
    assert!(replay.replayed());
    assert!(replay.body == expected, "replayed body differs");
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);

    // Above the response limit: streamed whole to the client, not stored.
    let b = instance(
        "b",
        shared(store)
            .max_response_body(64 * 1024)
            .expect("max_response_body"),
    );
    let big2 = || {
        req(Some("big-2"))
            .header("x-big", len.to_string())
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request")
    };
    let first = send(&b, big2()).await;
    assert!(first.body == expected, "streamed body differs");
    let retry = send(&b, big2()).await;
    assert!(!retry.replayed());
    assert!(retry.body == expected);
    assert_eq!(b.runs.load(Ordering::SeqCst), 2);
}

/// A redirect after a completed write is its result: stored and replayed, with
/// `Location`; so are `Content-Encoding` and `Vary`, which say how to read the body.
async fn redirects_and_encodings_are_replayed<St: StateStore>(store: St) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let svc = ServiceBuilder::new().layer(shared(store)).service_fn(
        move |req: Request<RequestBody<Full<Bytes>>>| {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            let status = if req.uri().path() == "/redirect" {
                303
            } else {
                201
            };
            let res = Response::builder()
                .status(status)
                .header("location", format!("/orders/{n}"))
                .header("content-encoding", "gzip")
                .header("vary", "accept-encoding")
                .body(Full::new(Bytes::from_static(b"\x1f\x8b compressed")))
                .expect("response");
            async move { Ok::<_, std::convert::Infallible>(res) }
        },
    );
    for path in ["/redirect", "/created"] {
        for replayed in [false, true] {
            let mut r = post(Some("k"), "x");
            *r.uri_mut() = path.parse().expect("uri");
            let res = svc.clone().oneshot(r).await.expect("call");
            assert_eq!(res.headers().contains_key("idempotent-replayed"), replayed);
            assert_eq!(res.headers()["content-encoding"], "gzip");
            assert_eq!(res.headers()["vary"], "accept-encoding");
            let location = res.headers()["location"].clone();
            assert!(location == "/orders/1" || location == "/orders/2");
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

backend_tests!(
    first_call_then_replay,
    concurrent_duplicates,
    changed_request_is_422,
    missing_and_malformed_keys,
    users_are_independent,
    what_is_stored,
    other_methods_pass_through,
    lease_expiry_then_retry_runs,
    late_owner_cannot_overwrite,
    slow_handler_keeps_its_key,
    lapsed_lease_is_still_recorded,
    client_disconnect_then_retry,
    over_max_in_flight_is_503,
    disconnected_requests_count_in_flight,
    keyed_request_runs_on_the_callers_task,
    anonymous_keys_need_a_scope,
    custom_scope_keeps_callers_apart,
    request_body_limit,
    one_megabyte_response,
    redirects_and_encodings_are_replayed,
);

#[tokio::test]
async fn redis_round_trips_per_path() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    let a = instance("a", shared(store));
    // Warm-up: connections, and each script's first load on this server (once per
    // server: `SCRIPT LOAD`, then `EVALSHA` from then on).
    send(&a, post(Some("warm"), "x")).await;
    let release = req(Some("warm-release"))
        .header("x-status", "503")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(&a, release).await;

    server.reset_stats();
    send(&a, post(Some("k"), "x")).await;
    let stats = server.command_stats();
    assert_eq!(stats.get("set"), Some(&1), "claim: {stats:?}");
    assert_eq!(stats.get("evalsha"), Some(&1), "completion: {stats:?}");
    assert_eq!(server.command_count(), 2, "{stats:?}");

    server.reset_stats();
    assert!(send(&a, post(Some("k"), "x")).await.replayed());
    assert_eq!(server.command_count(), 1, "{:?}", server.command_stats());

    server.reset_stats();
    assert_eq!(
        send(&a, post(Some("k"), "changed")).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(server.command_count(), 1);

    // No key, another method, a malformed key: no store command at all.
    server.reset_stats();
    send(&a, post(None, "x")).await;
    let mut get = post(Some("k"), "x");
    *get.method_mut() = Method::GET;
    send(&a, get).await;
    send(
        &a,
        Request::post("/pay")
            .header("idempotency-key", "bad key")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(server.command_count(), 0, "{:?}", server.command_stats());

    // A released claim: claim + compare-and-delete.
    server.reset_stats();
    let r = req(Some("k5"))
        .header("x-status", "503")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(&a, r).await;
    assert_eq!(server.command_count(), 2, "{:?}", server.command_stats());
    // Every stored key lives under the prefix, hashed, with a TTL.
    let keys = server.keys("idem:*");
    assert_eq!(
        keys.len(),
        2,
        "warm and k; released claims leave nothing: {keys:?}"
    );
    for key in keys {
        assert!(key.len() == "idem:{}".len() + 64, "{key}");
        assert!(server.pttl(&key) > 0);
    }
}

async fn store_down_answers_503<St: StateStore>(store: St) {
    let a = instance("a", shared(store));
    let out = send(&a, post(Some("k"), "x")).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&out), "store_unavailable");
    assert!(out.headers.contains_key("retry-after"));
    assert_eq!(
        a.runs.load(Ordering::SeqCst),
        0,
        "never run without a claim"
    );
    // Without a key the store is not needed.
    assert_eq!(send(&a, post(None, "x")).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn memory_backend_down() {
    store_down_answers_503(common::DownStore::unavailable()).await;
}

/// `StoreFailure::open()`: a keyed request whose key cannot be claimed runs unprotected
/// (the handler runs, nothing is recorded, a retry runs again); `closed()` keeps its
/// `Retry-After`.
async fn store_down_open_runs_unprotected<St: StateStore>(store: St) {
    let open = instance(
        "open",
        shared(store.clone()).on_store_failure(StoreFailure::open()),
    );
    assert_eq!(
        send(&open, post(Some("k"), "x")).await.status,
        StatusCode::CREATED
    );
    let retry = send(&open, post(Some("k"), "x")).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.headers.contains_key("idempotent-replayed"));
    assert_eq!(open.runs.load(Ordering::SeqCst), 2, "unprotected: both ran");

    let closed = instance(
        "closed",
        shared(store).on_store_failure(StoreFailure::closed().retry_after(Duration::from_secs(9))),
    );
    let out = send(&closed, post(Some("k"), "x")).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(out.headers["retry-after"], "9");
    assert_eq!(closed.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn memory_store_down_open_runs_unprotected() {
    store_down_open_runs_unprotected(common::DownStore::unavailable()).await;
}

#[tokio::test]
async fn redis_store_down_open_runs_unprotected() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .expect("store");
    server.stop();
    store_down_open_runs_unprotected(store).await;
}

/// An unexpected store reply is `500` even with `StoreFailure::open()`.
#[tokio::test]
async fn memory_broken_store_is_500_even_when_open() {
    let open = instance(
        "open",
        shared(common::DownStore::broken()).on_store_failure(StoreFailure::open()),
    );
    let out = send(&open, post(Some("k"), "x")).await;
    assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&out), "idempotency_store_error");
    assert_eq!(open.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redis_down_and_back() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .expect("store");
    let a = instance("a", shared(store.clone()));
    send(&a, post(Some("before"), "x")).await;
    server.stop();
    store_down_answers_503(store).await;
    server.restart();
    // Each pooled connection notices the restart on its next use, so a few 503s may
    // still come after Redis is back; never a second run, never a lost record.
    let until_not_503 = |key: &'static str| {
        let a = a.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let out = send(&a, post(Some(key), "x")).await;
                if out.status != StatusCode::SERVICE_UNAVAILABLE {
                    return out;
                }
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let runs = a.runs.load(Ordering::SeqCst);
    let first = until_not_503("after").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = until_not_503("after").await;
    assert!(replay.replayed(), "{} {}", replay.status, replay.text());
    assert_eq!(replay.body, first.body);
    assert_eq!(a.runs.load(Ordering::SeqCst), runs + 1);
}

/// A body of one data frame and then trailers, as a gRPC response has.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(http_body::Frame::data(data)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

/// gRPC puts its status in trailers: they are stored and replayed.
#[tokio::test]
async fn trailers_are_replayed() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let svc = ServiceBuilder::new()
        .layer(shared(MemoryStore::new()))
        .service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
            r.fetch_add(1, Ordering::SeqCst);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let res = Response::builder()
                .header("content-type", "application/grpc")
                .body(WithTrailers {
                    data: Some(Bytes::from_static(b"\0\0\0\0\x02hi")),
                    trailers: Some(trailers),
                })
                .expect("response");
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
    for replayed in [false, true] {
        let res = svc
            .clone()
            .oneshot(post(Some("g"), "x"))
            .await
            .expect("call");
        assert_eq!(res.headers().contains_key("idempotent-replayed"), replayed);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        let collected = res.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Outside a Tokio runtime the layer cannot run a request in its own task: it answers 500
/// instead of panicking, and the handler does not run.
#[test]
fn without_a_tokio_runtime_is_a_500_not_a_panic() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tower::Service;

    let a = instance("a", shared(MemoryStore::new()));
    let mut svc = a.svc.clone();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut future = std::pin::pin!(svc.call(post(Some("k"), "x")));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(res)) => assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR),
        Poll::Ready(Err(e)) => panic!("service error {e}"),
        Poll::Pending => panic!("must answer at once"),
    }
    assert_eq!(a.runs.load(Ordering::SeqCst), 0);
}

/// A gRPC handler's status decides like an HTTP status: a trailers-only `UNAVAILABLE`
/// (HTTP 200!) or an `INTERNAL` in the trailers releases the key; an `INVALID_ARGUMENT`
/// is stored and its replay carries the status.
#[tokio::test]
async fn grpc_statuses_decide_what_is_stored() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let svc = ServiceBuilder::new()
        .layer(shared(MemoryStore::new()))
        .service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
            r.fetch_add(1, Ordering::SeqCst);
            let mut res = Response::builder().header("content-type", "application/grpc");
            let mut trailers = None;
            match req.uri().path() {
                "/trailers-only-unavailable" => res = res.header("grpc-status", "14"),
                "/trailers-only-invalid" => {
                    res = res
                        .header("grpc-status", "3")
                        .header("grpc-message", "bad amount")
                }
                _ => {
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", http::HeaderValue::from_static("13"));
                    trailers = Some(t);
                }
            }
            let body = WithTrailers {
                data: trailers.as_ref().map(|_| Bytes::from_static(b"\0\0\0\0\0")),
                trailers,
            };
            let res = res.body(body).expect("response");
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
    let call = |path: &str| {
        let mut r = post(Some("g"), "x");
        *r.uri_mut() = path.parse().expect("uri");
        svc.clone().oneshot(r)
    };
    for path in ["/trailers-only-unavailable", "/internal-in-trailers"] {
        let first = call(path).await.expect("call");
        assert!(!first.headers().contains_key("idempotent-replayed"));
        let _ = first.into_body().collect().await.expect("body");
        let retry = call(path).await.expect("call");
        assert!(
            !retry.headers().contains_key("idempotent-replayed"),
            "{path} must not be stored"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    call("/trailers-only-invalid").await.expect("call");
    let replay = call("/trailers-only-invalid").await.expect("call");
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["grpc-status"], "3");
    assert_eq!(replay.headers()["grpc-message"], "bad amount");
    assert_eq!(runs.load(Ordering::SeqCst), 5);
}

/// A request body that fails while the layer buffers it: `400`, nothing claimed, the
/// handler never runs.
#[tokio::test]
async fn failing_request_body_is_400() {
    struct Broken;
    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
        }
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let store = MemoryStore::new();
    let svc = ServiceBuilder::new().layer(shared(store)).service_fn(
        move |_: Request<RequestBody<Broken>>| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new()))) }
        },
    );
    let req = Request::post("/pay")
        .header("idempotency-key", "k")
        .body(Broken)
        .expect("request");
    let res = svc.clone().oneshot(req).await.expect("call");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("invalid_body"));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// A record in the store that the layer cannot read (corrupt, or written by something
/// else): `500`, no panic, and the handler does not run a second time.
#[tokio::test]
async fn corrupt_record_is_500() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    let a = instance("a", shared(store.clone()));
    send(&a, post(Some("k"), "x")).await;
    let keys = server.keys("idem:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    store
        .set(
            &keys[0],
            Bytes::from_static(b"TSI1garbage"),
            Duration::from_secs(60),
        )
        .await
        .expect("overwrite");
    let out = send(&a, post(Some("k"), "x")).await;
    assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&out), "idempotency_store_error");
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);
}

/// What can go wrong with a [`Faulty`] store, switched on and off by the test.
#[derive(Default)]
struct Faults {
    /// Every operation fails as unavailable: the instance is cut off from the store.
    down: AtomicBool,
    /// Lease renewals (a compare-and-set of a value with itself) fail as unavailable.
    drop_renewals: AtomicBool,
    /// The next set-if-absent is applied, but its reply is lost with the connection.
    lose_claim_reply: AtomicBool,
    /// Completions (a compare-and-set of the claim with the record) fail as unavailable.
    fail_records: AtomicBool,
}

impl common::Hook for Faults {
    fn before(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("cut off (test)".into()));
        }
        if let common::Call::CompareAndSet { expected, new, .. } = call {
            if self.drop_renewals.load(Ordering::SeqCst) && expected == new {
                return Err(StoreError::Unavailable("renewal lost (test)".into()));
            }
            if self.fail_records.load(Ordering::SeqCst) && expected != new {
                return Err(StoreError::Unavailable("record lost (test)".into()));
            }
        }
        Ok(())
    }
    fn after(&self, call: &common::Call<'_>) -> Result<(), StoreError> {
        if matches!(call, common::Call::SetIfAbsent(..))
            && self.lose_claim_reply.swap(false, Ordering::SeqCst)
        {
            return Err(StoreError::Unavailable("connection dropped (test)".into()));
        }
        Ok(())
    }
}

/// A real store behind faults that a test switches on: an instance's view of the store.
type Faulty<St> = common::Intercept<St, Faults>;

fn faulty<St>(inner: St) -> Faulty<St> {
    common::Intercept::new(inner, Faults::default())
}

/// The claim was written but its reply lost: the layer answers `503` and deletes the
/// claim again before answering, so the client's retry runs instead of getting `409` for
/// a whole lease.
async fn lost_claim_reply_is_undone(a: &Instance, lose_next_reply: impl FnOnce()) {
    let before = a.runs.load(Ordering::SeqCst);
    lose_next_reply();
    let out = send(a, post(Some("k"), "x")).await;
    assert_eq!(
        out.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        out.text()
    );
    assert_eq!(
        a.runs.load(Ordering::SeqCst),
        before,
        "never run without a claim"
    );
    let retry = send(a, post(Some("k"), "x")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(!retry.replayed());
    assert!(send(a, post(Some("k"), "x")).await.replayed());
    assert_eq!(a.runs.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn memory_claim_reply_lost_then_retry_runs() {
    let faulty = faulty(MemoryStore::new());
    let a = instance("a", shared(faulty.clone()));
    lost_claim_reply_is_undone(&a, || {
        faulty.hook.lose_claim_reply.store(true, Ordering::SeqCst)
    })
    .await;
}

/// A TCP proxy in front of a real Redis that, when armed, forwards a command but closes
/// the client's connection instead of passing on the reply: a reply lost to a dropped
/// connection, after the server ran the command.
struct ReplyDropper {
    port: u16,
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplyDropper {
    async fn start(upstream_port: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let armed = arm.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (server_read, mut server_write) = server.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async move {
                        let mut server_read = server_read;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 || armed.swap(false, Ordering::SeqCst) {
                                // Both halves drop with this task: the client sees its
                                // connection close with the reply unread.
                                return Ok::<_, std::io::Error>(());
                            }
                            client_write.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Self { port, armed, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Drops the next reply the server sends, with its connection.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl Drop for ReplyDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn redis_claim_reply_lost_then_retry_runs() {
    let server = redis_or_skip!();
    let proxy = ReplyDropper::start(server.port()).await;
    // One connection, opened by the warm-up, so the armed drop hits the claim's reply.
    let store = RedisStore::builder()
        .url(proxy.url())
        .pool_size(1)
        .build()
        .expect("store");
    let a = instance("a", shared(store));
    assert_eq!(
        send(&a, post(Some("warm"), "x")).await.status,
        StatusCode::CREATED
    );
    lost_claim_reply_is_undone(&a, || proxy.arm()).await;
    assert_eq!(server.keys("idem:*").len(), 2, "warm and k");
}

/// Settings that cannot work are refused when the layer is built, with the setting's name.
#[test]
fn bad_settings_are_refused_when_built() {
    let layer = || IdempotencyLayer::new(MemoryStore::new());
    let refused = |result: Result<IdempotencyLayer<MemoryStore>, ConfigError>| {
        result.expect_err("must be refused").setting()
    };
    let century = Duration::from_secs(101 * 365 * 24 * 3600);
    assert_eq!(refused(layer().lock_ttl(Duration::ZERO)), "lock_ttl");
    assert_eq!(
        refused(layer().lock_ttl(Duration::from_millis(2))),
        "lock_ttl"
    );
    assert_eq!(refused(layer().lock_ttl(century)), "lock_ttl");
    assert_eq!(refused(layer().lock_ttl(Duration::MAX)), "lock_ttl");
    assert_eq!(refused(layer().retention(Duration::ZERO)), "retention");
    assert_eq!(
        refused(layer().retention(Duration::from_micros(999))),
        "retention"
    );
    assert_eq!(refused(layer().retention(Duration::MAX)), "retention");
    assert_eq!(refused(layer().max_request_body(0)), "max_request_body");
    assert_eq!(
        refused(layer().max_request_body(usize::MAX)),
        "max_request_body"
    );
    assert_eq!(refused(layer().max_response_body(0)), "max_response_body");
    assert_eq!(
        refused(layer().max_response_body(512 * 1024 * 1024 + 1)),
        "max_response_body"
    );
    assert_eq!(refused(layer().max_in_flight(0)), "max_in_flight");
    assert_eq!(refused(layer().max_in_flight(usize::MAX)), "max_in_flight");
    // A brace would replace the digest as the key's Redis Cluster hash tag.
    for bad in ["{", "}", "idem{", "}idem:", "app{x}:"] {
        assert_eq!(refused(layer().key_prefix(bad)), "key_prefix", "{bad:?}");
    }
    // The bounds themselves are accepted.
    layer()
        .lock_ttl(Duration::from_millis(3))
        .and_then(|l| l.retention(Duration::from_millis(1)))
        .and_then(|l| l.max_request_body(1))
        .and_then(|l| l.max_response_body(512 * 1024 * 1024))
        .and_then(|l| l.max_in_flight(1))
        .expect("accepted");
}

/// A key prefix without braces namespaces the record, `<prefix>{<sha256 hex>}`, and a
/// retry is replayed from it.
#[tokio::test]
async fn redis_key_prefix_namespaces_the_records() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    let a = instance("a", shared(store).key_prefix("shop:idem:").expect("prefix"));
    let first = send(&a, post(Some("k"), "x")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let keys = server.keys("*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let digest = keys[0]
        .strip_prefix("shop:idem:{")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{keys:?}"));
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );
    let again = send(&a, post(Some("k"), "x")).await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);
}

/// A claim that never left (no connection to Redis) is known not to have been applied:
/// nothing to undo. One whose reply was lost is not known (see the proxy test above).
#[tokio::test]
async fn redis_refused_connection_has_not_applied() {
    let mut server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    server.stop();
    let error = store
        .set_if_absent(
            "idem:{k}",
            Bytes::from_static(b"claim"),
            Duration::from_secs(5),
        )
        .await
        .expect_err("redis is down");
    assert!(error.is_unavailable(), "{error}");
    assert!(!error.may_have_applied(), "{error:?}");
}

/// Sends `make()` until the answer is not `409` (the key is still claimed), for at most
/// `within`; the answer that was not `409`.
async fn once_the_key_is_free(
    a: &Instance,
    make: impl Fn() -> Request<Full<Bytes>>,
    within: Duration,
) -> Out {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let out = send(a, make()).await;
        if out.status != StatusCode::CONFLICT {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key stayed claimed for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The handler ran but its record cannot be written (the store fails from then on): the
/// client still gets the handler's answer; while the claim's lease runs a retry is `409`,
/// never a second run; the lease is no longer renewed, so the key frees itself after
/// `lock_ttl` and a retry then runs (what the docs promise: "a retry may run the handler
/// again after the lock TTL").
async fn a_record_that_cannot_be_written_still_answers_then_the_key_frees<St: StateStore>(
    store: St,
) {
    let faulty = faulty(store);
    let lock_ttl = Duration::from_secs(3);
    let a = instance(
        "a",
        shared(faulty.clone()).lock_ttl(lock_ttl).expect("lock_ttl"),
    );
    faulty.hook.fail_records.store(true, Ordering::SeqCst);
    let first = send(&a, post(Some("k"), "x")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(first.text(), "run 1 of a: x", "the handler's own answer");
    assert!(!first.replayed());
    faulty.hook.fail_records.store(false, Ordering::SeqCst);

    // The claim is still there (nothing replaced it): a retry now is told to wait.
    let meanwhile = send(&a, post(Some("k"), "x")).await;
    assert_eq!(
        meanwhile.status,
        StatusCode::CONFLICT,
        "{}",
        meanwhile.text()
    );
    assert_eq!(a.runs.load(Ordering::SeqCst), 1);

    // Nobody renews a finished request's lease: the key frees itself.
    let after = once_the_key_is_free(&a, || post(Some("k"), "x"), lock_ttl * 5).await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text());
    assert_eq!(after.text(), "run 2 of a: x");
    // And this time the answer was recorded.
    let replay = send(&a, post(Some("k"), "x")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, after.body);
    assert_eq!(a.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_record_that_cannot_be_written_still_answers_then_the_key_frees() {
    a_record_that_cannot_be_written_still_answers_then_the_key_frees(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_record_that_cannot_be_written_still_answers_then_the_key_frees() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    a_record_that_cannot_be_written_still_answers_then_the_key_frees(store).await;
    assert!(server.keys("idem:*").len() == 1, "one record");
}

/// A handler that panics releases its key (its claim is dropped unfinished), long before
/// the lease would end: the retry runs, and its answer is recorded.
async fn a_panicking_handler_releases_its_key<St: StateStore>(store: St) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let layer = shared(store)
        .lock_ttl(Duration::from_secs(600))
        .expect("lock_ttl");
    let handler = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                panic!("a bug in the handler (test)");
            }
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Full::new(Bytes::from(format!("run {n}"))))
                .map_err(|e| e.to_string())
        }
    });
    let a = Instance {
        runs: runs.clone(),
        gate: Arc::new(Semaphore::new(0)),
        svc: BoxCloneService::new(ServiceBuilder::new().layer(layer).service(handler)),
    };
    let inst = a.clone();
    let resumed_before = resumed_after_panicking();
    let caller = tokio::spawn(async move { send(&inst, post(Some("k"), "x")).await });
    match caller.await {
        Err(e) => assert!(e.is_panic(), "{e}"),
        Ok(out) => panic!("the handler panicked, yet: {} {}", out.status, out.text()),
    }

    let retry = once_the_key_is_free(&a, || post(Some("k"), "x"), Duration::from_secs(20)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert_eq!(retry.text(), "run 2");
    assert!(!retry.replayed());
    let replay = send(&a, post(Some("k"), "x")).await;
    assert!(replay.replayed());
    assert_eq!(replay.text(), "run 2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // The panicked request is not moved to a task of its own, to panic there again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(resumed_after_panicking(), resumed_before);
}

/// How many panics of this process said "`async fn` resumed after panicking": a future
/// polled again after it panicked (counted by a panic hook installed on the first call).
fn resumed_after_panicking() -> usize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.to_string().contains("resumed after panicking") {
                COUNT.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_panicking_handler_releases_its_key() {
    a_panicking_handler_releases_its_key(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_panicking_handler_releases_its_key() {
    let server = redis_or_skip!();
    let store = RedisStore::from_url(server.url()).expect("store");
    a_panicking_handler_releases_its_key(store).await;
}

/// Records are kept per method and path as well as per caller: the same key and body on
/// another path or with another method is another request (it runs, it is neither a
/// replay nor `422`), and each replays its own answer.
async fn a_key_is_per_method_and_path<St: StateStore>(store: St) {
    let a = instance("a", shared(store));
    let at = |method: Method, path: &str| {
        let mut r = post(Some("same"), "x");
        *r.method_mut() = method;
        *r.uri_mut() = path.parse().expect("uri");
        r
    };
    let pay = send(&a, at(Method::POST, "/pay")).await;
    let refund = send(&a, at(Method::POST, "/refund")).await;
    let patch = send(&a, at(Method::PATCH, "/pay")).await;
    for out in [&pay, &refund, &patch] {
        assert_eq!(out.status, StatusCode::CREATED, "{}", out.text());
        assert!(!out.replayed());
    }
    assert_eq!(a.runs.load(Ordering::SeqCst), 3);
    for (method, path, first) in [
        (Method::POST, "/pay", &pay),
        (Method::POST, "/refund", &refund),
        (Method::PATCH, "/pay", &patch),
    ] {
        let again = send(&a, at(method, path)).await;
        assert!(again.replayed(), "{path}");
        assert_eq!(again.body, first.body, "{path}");
    }
    assert_eq!(a.runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn memory_a_key_is_per_method_and_path() {
    a_key_is_per_method_and_path(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_a_key_is_per_method_and_path() {
    let server = redis_or_skip!();
    a_key_is_per_method_and_path(RedisStore::from_url(server.url()).expect("store")).await;
}

/// A replay carries the allow-listed headers and those added with `replay_header`, and
/// never the ones that describe the first answer's moment or its client: `Set-Cookie`,
/// `Date`, `Retry-After`, the rate-limit fields.
#[tokio::test]
async fn replays_never_carry_per_response_headers() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let layer =
        shared(MemoryStore::new()).replay_header(http::HeaderName::from_static("x-charge-id"));
    let svc = ServiceBuilder::new().layer(layer).service_fn(
        move |_req: Request<RequestBody<Full<Bytes>>>| {
            r.fetch_add(1, Ordering::SeqCst);
            async {
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .header("location", "/payments/1")
                    .header("etag", "\"v1\"")
                    .header("link", "</payments>; rel=\"collection\"")
                    .header("vary", "accept")
                    .header("x-charge-id", "ch_1")
                    .header("set-cookie", "sid=secret")
                    .header("date", "Mon, 01 Jan 2024 00:00:00 GMT")
                    .header("retry-after", "30")
                    .header("ratelimit", "\"default\";r=9;t=60")
                    .header("ratelimit-policy", "\"default\";q=10;w=60")
                    .header("x-internal", "secret")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .map_err(|e| e.to_string())
            }
        },
    );
    let call = || svc.clone().oneshot(post(Some("k"), "x"));
    let first = call().await.expect("call");
    assert_eq!(
        first.headers()["retry-after"],
        "30",
        "the first answer is untouched"
    );
    let replay = call().await.expect("call");
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for (name, value) in [
        ("content-type", "application/json"),
        ("location", "/payments/1"),
        ("etag", "\"v1\""),
        ("link", "</payments>; rel=\"collection\""),
        ("vary", "accept"),
        ("x-charge-id", "ch_1"),
    ] {
        assert_eq!(
            replay.headers().get(name).map(|v| v.as_bytes()),
            Some(value.as_bytes()),
            "{name}"
        );
    }
    for name in [
        "set-cookie",
        "date",
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
        "x-internal",
    ] {
        assert!(
            !replay.headers().contains_key(name),
            "{name} must not be replayed"
        );
    }
}
