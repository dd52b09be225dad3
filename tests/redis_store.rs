//! RedisStore beyond the shared contract: one command per operation, no PING on
//! checkout, failure and recovery, configuration errors.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use tower_stateless::store::{RedisStore, StateStore, StoreError};

const TTL: Duration = Duration::from_secs(60);

fn store(url: &str) -> RedisStore {
    RedisStore::builder()
        .url(url)
        .prefix("t:")
        .timeout(Duration::from_millis(500))
        .build()
        .expect("build store")
}

/// Resets the stats, runs `op`, and returns the single command Redis received.
async fn only_command<F, Fut, T>(server: &common::RedisServer, op: F) -> String
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    server.reset_stats();
    op().await.expect("operation failed");
    let stats = server.command_stats();
    assert_eq!(
        stats.values().sum::<u64>(),
        1,
        "expected exactly one command, got {stats:?}"
    );
    stats.into_keys().next().unwrap_or_default()
}

#[tokio::test]
async fn every_operation_is_one_command() {
    let server = redis_or_skip!();
    let store = store(&server.url());
    // Warm up: connect every slot and load every script once.
    for _ in 0..8 {
        store.get("warm").await.unwrap();
    }
    store.set("k", Bytes::from_static(b"1"), TTL).await.unwrap();
    store
        .compare_and_set("k", b"x", Bytes::new(), TTL)
        .await
        .unwrap();
    store.compare_and_delete("k", b"x").await.unwrap();
    store.increment("n", 1, TTL).await.unwrap();

    let v = || Bytes::from_static(b"1");
    assert_eq!(only_command(&server, || store.get("k")).await, "get");
    assert_eq!(
        only_command(&server, || store.get_many(&["k", "a", "b"])).await,
        "mget"
    );
    assert_eq!(
        only_command(&server, || store.set("k", v(), TTL)).await,
        "set"
    );
    assert_eq!(
        only_command(&server, || store.set_if_absent("k", v(), TTL)).await,
        "set"
    );
    assert_eq!(
        only_command(&server, || store.compare_and_set("k", b"1", v(), TTL)).await,
        "evalsha"
    );
    assert_eq!(
        only_command(&server, || store.compare_and_delete("k", b"0")).await,
        "evalsha"
    );
    assert_eq!(
        only_command(&server, || store.get_and_refresh("k", TTL)).await,
        "getex"
    );
    assert_eq!(only_command(&server, || store.delete("k")).await, "del");
    assert_eq!(
        only_command(&server, || store.increment("n", 1, TTL)).await,
        "evalsha"
    );
}

#[tokio::test]
async fn pooled_connections_are_never_pinged() {
    let server = redis_or_skip!();
    let store = RedisStore::builder()
        .url(server.url())
        .pool_size(3)
        .build()
        .unwrap();
    store.get("warm").await.unwrap();
    server.reset_stats();
    for i in 0..50 {
        store.get(&format!("k{i}")).await.unwrap();
    }
    let stats = server.command_stats();
    assert_eq!(stats.get("ping"), None, "no PING may be sent: {stats:?}");
    assert_eq!(stats.get("get"), Some(&50), "{stats:?}");
}

#[tokio::test]
async fn prefix_and_ttl_reach_redis() {
    let server = redis_or_skip!();
    let store = store(&server.url());
    store
        .set(
            "user:{alice}",
            Bytes::from_static(b"v"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(server.keys("*"), vec!["t:user:{alice}".to_owned()]);
    let pttl = server.pttl("t:user:{alice}");
    assert!((29_000..=30_000).contains(&pttl), "PTTL {pttl}");
}

#[tokio::test]
async fn unavailable_when_redis_dies_and_recovers_without_rebuild() {
    let mut server = redis_or_skip!();
    let store = store(&server.url());
    store.set("k", Bytes::from_static(b"v"), TTL).await.unwrap();

    server.stop();
    for _ in 0..3 {
        // Bounded by a generous outer limit: the store must answer by itself, not hang.
        let result = tokio::time::timeout(Duration::from_secs(5), store.get("k"))
            .await
            .expect("the store hung instead of failing within its timeout");
        let err = result.expect_err("a dead Redis must be an error");
        assert!(
            err.is_unavailable(),
            "dead Redis must be 'unavailable': {err:?}"
        );
    }

    server.restart();
    // The restarted server is empty: the store reconnects and works, no rebuild needed.
    let mut recovered = None;
    for _ in 0..20 {
        if let Ok(v) = store.get("k").await {
            recovered = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        recovered,
        Some(None),
        "the store must work again once Redis is back"
    );
    store
        .set("k", Bytes::from_static(b"again"), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.get("k").await.unwrap(),
        Some(Bytes::from_static(b"again"))
    );
}

#[tokio::test]
async fn stalled_redis_times_out_then_recovers() {
    let server = redis_or_skip!();
    let store = store(&server.url());
    store.set("k", Bytes::from_static(b"v"), TTL).await.unwrap();

    server.pause();
    let result = tokio::time::timeout(Duration::from_secs(5), store.get("k"))
        .await
        .expect("the store hung on a stalled Redis");
    server.resume();
    assert!(
        matches!(result, Err(StoreError::Timeout(t)) if t == Duration::from_millis(500)),
        "a stalled Redis must give StoreError::Timeout: {result:?}"
    );
    assert!(result.unwrap_err().is_unavailable());

    let mut value = None;
    for _ in 0..20 {
        if let Ok(v) = store.get("k").await {
            value = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value, Some(Bytes::from_static(b"v")));
}

#[tokio::test]
async fn unreachable_at_start_is_unavailable_not_a_build_error() {
    // Nothing listens on port 1; the store builds (lazy connect) and fails per operation.
    let store = RedisStore::builder()
        .url("redis://127.0.0.1:1")
        .timeout(Duration::from_millis(300))
        .build()
        .expect("building must not connect");
    let err = store.get("k").await.expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
}

#[test]
fn bad_configuration_is_rejected() {
    let cases = [
        ("no url", RedisStore::builder()),
        (
            "zero pool",
            RedisStore::builder().url("redis://127.0.0.1").pool_size(0),
        ),
        (
            "zero timeout",
            RedisStore::builder()
                .url("redis://127.0.0.1")
                .timeout(Duration::ZERO),
        ),
        (
            "brace prefix",
            RedisStore::builder()
                .url("redis://127.0.0.1")
                .prefix("app{x}:"),
        ),
        ("bad url", RedisStore::builder().url("http://not-redis")),
    ];
    for (name, builder) in cases {
        let result = builder.build();
        assert!(
            matches!(result, Err(StoreError::Unexpected(_))),
            "{name}: expected a configuration error, got {result:?}"
        );
    }
}
