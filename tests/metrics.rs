//! The metrics and traces of the feature `metrics`: the store histogram's labels, the
//! decision events' `result`, and that no label or field carries a key, token or value.
//! The counters of every layer are checked end to end in `example_api.rs`
//! (`metrics_count_a_scripted_run_*`).
#![cfg(feature = "metrics")]

mod common;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody, Scope};
use tower_stateless::store::{InstrumentedStore, MemoryStore, StateStore};

use common::DownStore;

/// One test at a time: tracing caches per callsite whether anyone listens, and a test
/// without a subscriber racing one with a thread-local subscriber can make a callsite look
/// unwatched to the latter.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// The value of the one rendered line of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn store_histogram_labels_each_operation_by_its_outcome() {
    let _serial = serial();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let store = InstrumentedStore::new(MemoryStore::new());
            let ttl = Duration::from_secs(60);
            store
                .set("user:alice-secret", "v1".into(), ttl)
                .await
                .unwrap();
            store.get("user:alice-secret").await.unwrap();
            store.get("user:alice-secret").await.unwrap();
            store.get_many(&["a", "b"]).await.unwrap();
            let down = InstrumentedStore::new(DownStore::unavailable());
            assert!(down.get("user:alice-secret").await.is_err());
            let broken = InstrumentedStore::new(DownStore::broken());
            assert!(broken.delete("user:alice-secret").await.is_err());
        })
    });
    let text = handle.render();
    let count = "tower_stateless_store_duration_seconds_count";
    for (op, result, n) in [
        ("set", "ok", 1.0),
        ("get", "ok", 2.0),
        ("get_many", "ok", 1.0),
        ("get", "unavailable", 1.0),
        ("delete", "error", 1.0),
    ] {
        let labels = [format!("op=\"{op}\""), format!("result=\"{result}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            value(&text, count, &labels),
            Some(n),
            "{op} {result}:\n{text}"
        );
    }
    assert_eq!(
        value(&text, count, &["op=\"delete\"", "result=\"ok\""]),
        None,
        "no series for what did not happen"
    );
    assert!(!text.contains("alice"), "a key reached a label:\n{text}");
    assert!(!text.contains("v1"), "a value reached a label:\n{text}");
}

/// Each hash read is labelled by its own method: a lazy read (a session read) and a
/// cached read are not counted as the eager `hash_get_all_and_refresh` (they once were).
#[test]
fn store_histogram_labels_each_hash_read_by_its_method() {
    let _serial = serial();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let store = InstrumentedStore::new(MemoryStore::new());
            let (ttl, every) = (Duration::from_secs(60), Duration::from_secs(10));
            store.hash_get_all_and_refresh("h", ttl).await.unwrap();
            for _ in 0..2 {
                store
                    .hash_get_all_and_refresh_lazily("h", ttl, every)
                    .await
                    .unwrap();
            }
            for _ in 0..3 {
                store
                    .hash_get_all_cached("h", ttl, every, None)
                    .await
                    .unwrap();
            }
        })
    });
    let text = handle.render();
    let count = "tower_stateless_store_duration_seconds_count";
    for (op, n) in [
        ("hash_get_all_and_refresh", 1.0),
        ("hash_get_all_and_refresh_lazily", 2.0),
        ("hash_get_all_cached", 3.0),
    ] {
        let label = format!("op=\"{op}\"");
        assert_eq!(
            value(&text, count, &[&label, "result=\"ok\""]),
            Some(n),
            "{op}:\n{text}"
        );
    }
}

#[test]
fn without_a_recorder_the_counters_do_nothing() {
    let _serial = serial();
    // No recorder installed in this test: the layers' calls must not fail or panic.
    let store = InstrumentedStore::new(MemoryStore::new());
    block_on(async {
        store
            .set("k", "v".into(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap(), Some(Bytes::from("v")));
    });
}

/// Captures `DEBUG` output, store spans included (one line when each closes).
fn capture() -> (common::Logs, tracing::subscriber::DefaultGuard) {
    let logs = common::Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(move || sink.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

fn keyed(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("/payments")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[test]
fn decisions_and_store_operations_are_traced_without_keys_or_values() {
    let _serial = serial();
    let (logs, _guard) = capture();
    block_on(async {
        let store = InstrumentedStore::new(MemoryStore::new());
        let layer = IdempotencyLayer::new(store).scope(Scope::shared());
        let svc = ServiceBuilder::new().layer(layer).service_fn(
            |_: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(StatusCode::CREATED)
                        .body(Full::new(Bytes::from_static(b"paid-secret-receipt")))
                        .unwrap(),
                )
            },
        );
        let key = "client-secret-key-123";
        let first = svc
            .clone()
            .oneshot(keyed(key, "{\"amount\":1}"))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let again = svc
            .clone()
            .oneshot(keyed(key, "{\"amount\":1}"))
            .await
            .unwrap();
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let other = svc.oneshot(keyed(key, "{\"amount\":2}")).await.unwrap();
        assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    });

    let decisions = logs.lines_containing("idempotency decision");
    let results: Vec<&str> = decisions
        .iter()
        .filter_map(|l| l.split("result=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|r| r.trim_matches('"'))
        .collect();
    assert_eq!(
        results,
        ["executed", "replayed", "mismatch"],
        "{decisions:#?}"
    );
    for line in &decisions {
        assert!(
            line.contains("tower_stateless::idempotency"),
            "target: {line}"
        );
    }

    // A claim, the record, and a read per later request: each in a span `store` with its
    // operation and outcome.
    let spans = logs.lines_containing("store{");
    assert!(
        spans
            .iter()
            .any(|l| l.contains("op=\"set_if_absent\"") && l.contains("result=\"ok\"")),
        "{spans:#?}"
    );
    assert!(spans.iter().all(|l| l.contains("result=")), "{spans:#?}");

    let all = logs.lines_containing("");
    for secret in ["client-secret-key-123", "paid-secret-receipt", "amount"] {
        assert!(
            all.iter().all(|l| !l.contains(secret)),
            "{secret} was logged: {all:#?}"
        );
    }
}

#[test]
fn idempotency_counts_released_keys_and_store_errors() {
    let _serial = serial();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let handler = |req: Request<RequestBody<Full<Bytes>>>| async move {
                // A transient answer: the key is released, not recorded.
                let status = if req.headers().contains_key("x-fail") {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::CREATED
                };
                let body = Full::new(Bytes::from_static(b"ok"));
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(body).unwrap(),
                )
            };
            let up = ServiceBuilder::new()
                .layer(IdempotencyLayer::new(MemoryStore::new()).scope(Scope::shared()))
                .service_fn(handler);
            let mut failing = keyed("k-1", "{}");
            failing.headers_mut().insert("x-fail", "1".parse().unwrap());
            let res = up.clone().oneshot(failing).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            let res = up.oneshot(keyed("k-1", "{}")).await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::CREATED,
                "the released key runs again"
            );

            let down = ServiceBuilder::new()
                .layer(IdempotencyLayer::new(DownStore::unavailable()).scope(Scope::shared()))
                .service_fn(handler);
            let res = down.oneshot(keyed("k-2", "{}")).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        })
    });
    let text = handle.render();
    let total = "tower_stateless_idempotency_total";
    assert_eq!(
        value(&text, total, &["result=\"released\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, total, &["result=\"executed\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, total, &["result=\"store_error\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, total, &["result=\"replayed\""]),
        None,
        "{text}"
    );
}

/// `tower_stateless_rate_limit_total{result="no_key"}`: a request the default key cannot
/// place (no claims, trusted header or peer address) passes and counts once, apart from
/// keyed requests; a request a `key_fn` exempts counts nothing. Each is also a decision
/// event and a `rate_limit` span with that result.
#[test]
fn rate_limit_counts_requests_without_a_key() {
    use std::net::SocketAddr;
    use tower_stateless::rate_limit::{Quota, RateLimitLayer};

    let _serial = serial();
    let (logs, _guard) = capture();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let handler = |_: Request<String>| async {
                Ok::<_, std::convert::Infallible>(Response::new(String::new()))
            };
            let quota = Quota::per_minute(60).unwrap();
            let default_key = ServiceBuilder::new()
                .layer(RateLimitLayer::new(MemoryStore::new(), quota))
                .service_fn(handler);
            for _ in 0..3 {
                let res = default_key
                    .clone()
                    .oneshot(Request::new(String::new()))
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                assert!(!res.headers().contains_key("ratelimit"), "not limited");
            }
            let mut peer = Request::new(String::new());
            peer.extensions_mut()
                .insert(SocketAddr::from(([192, 0, 2, 1], 4000)));
            let res = default_key.oneshot(peer).await.unwrap();
            assert!(res.headers().contains_key("ratelimit"), "limited");

            let exempt = ServiceBuilder::new()
                .layer(RateLimitLayer::new(MemoryStore::new(), quota).key_fn(|_| None))
                .service_fn(handler);
            let res = exempt.oneshot(Request::new(String::new())).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        })
    });
    let text = handle.render();
    let total = "tower_stateless_rate_limit_total";
    assert_eq!(
        value(&text, total, &["result=\"no_key\""]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, total, &["result=\"allowed\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with(total)).count(),
        2,
        "the exempt request counts nothing:\n{text}"
    );

    let decisions = logs.lines_containing("rate limit decision");
    let no_key = decisions.iter().filter(|l| l.contains("no_key")).count();
    assert_eq!((decisions.len(), no_key), (4, 3), "{decisions:#?}");
    let spans = logs.lines_containing("rate_limit{");
    let closed = spans
        .iter()
        .filter(|l| l.contains("close") && l.contains("no_key"))
        .count();
    assert_eq!(closed, 3, "{spans:#?}");
}

/// `tower_stateless_local_cache_total`: every read of a cached prefix counts once, `hit`
/// when Redis received no command for it and `miss` when it did; reads outside the
/// prefixes are not counted.
#[cfg(feature = "redis")]
#[test]
fn local_cache_counts_hits_and_misses() {
    use std::time::Instant;
    use tower_stateless::store::{LocalCache, RedisStore};

    let _serial = serial();
    let server = redis_or_skip!();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let count = |result: &str| {
        value(
            &handle.render(),
            "tower_stateless_local_cache_total",
            &[&format!("result=\"{result}\"")],
        )
        .unwrap_or(0.0)
    };
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let store = RedisStore::builder()
                .url(server.url())
                .pool_size(1)
                .build()
                .expect("store");
            let cache = LocalCache::builder(store)
                .prefix("rev:")
                .max_age(Duration::from_secs(3600))
                .heartbeat(Duration::from_secs(3600))
                .build()
                .expect("cache");
            let start = Instant::now();
            while !cache.is_serving() {
                assert!(start.elapsed() < Duration::from_secs(30), "never serving");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Open the pool's connection first, so that every read below is counted by
            // what it alone sent.
            cache.get("other:warm").await.expect("get");

            let (mut hits, mut misses) = (0.0, 0.0);
            for _ in 0..20 {
                server.reset_stats();
                let before = (count("hit"), count("miss"));
                let one = cache.get("rev:{sYQ}:sub").await.expect("get");
                let many = cache
                    .get_many(&["rev:{sYQ}:sub", "rev:{sYQ}:jti:j1"])
                    .await
                    .expect("get_many");
                assert_eq!((one, many), (None, vec![None, None]));
                let sent = server.command_count();
                let after = (count("hit"), count("miss"));
                let (hit, miss) = (after.0 - before.0, after.1 - before.1);
                assert_eq!(hit + miss, 2.0, "two reads, two counts");
                // Each read that went to Redis sent one command (GET or MGET).
                assert_eq!(miss, sent as f64, "a miss per read that reached Redis");
                hits += hit;
                misses += miss;
            }
            assert!(misses >= 1.0, "the first reads miss");
            assert!(hits >= 1.0, "a warm cache hits");

            // Outside the prefixes: passed through, not counted.
            let before = (count("hit"), count("miss"));
            cache.get("sess:x").await.expect("get");
            assert_eq!((count("hit"), count("miss")), before);
        });
    });
}
