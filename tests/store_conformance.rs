//! The conformance suite of the store contract, once per backend. Test names carry the
//! backend: `memory::ttl_expiry`, `redis::ttl_expiry`, ...
#![cfg(feature = "conformance")]

mod common;

macro_rules! conformance {
    ($backend:ident, $setup:expr, [$($property:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $property() {
                    // The guard keeps the Redis server alive until the check ends.
                    let (store, _guard) = $setup;
                    tower_stateless::store::conformance::$property(&store).await;
                }
            )*
        }
    };
    ($backend:ident, $setup:expr) => {
        conformance!($backend, $setup, [
            get_set_roundtrip, ttl_expiry, invalid_ttl_rejected, set_if_absent_returns_existing,
            set_if_absent_concurrent, compare_and_set_semantics, compare_and_set_concurrent,
            compare_and_delete_semantics, get_and_refresh_extends_ttl, delete_semantics,
            gcra_semantics, gcra_concurrent,
            gcra_keeps_fine_intervals,
            get_many_with_missing_keys,
            binary_values, empty_values, large_values, unusual_keys,
        ]);
    };
}

conformance!(memory, (tower_stateless::store::MemoryStore::new(), ()));

#[cfg(feature = "redis")]
conformance!(redis, {
    let server = redis_or_skip!();
    let store = tower_stateless::store::RedisStore::builder()
        .url(server.url())
        .key_prefix("conf:")
        .build()
        .expect("build store");
    (store, server)
});

#[cfg(feature = "redis-cluster")]
conformance!(redis_cluster, {
    let cluster = cluster_or_skip!();
    let store = tower_stateless::store::RedisStore::builder()
        .cluster_urls(cluster.urls())
        .key_prefix("conf:")
        .build()
        .expect("build cluster store");
    (store, cluster)
});

/// The hash operations (sessions are stored field by field), once per backend:
/// `hash::memory::hash_apply_semantics`, ...
mod hash {
    #[allow(unused_imports)]
    use super::*;

    macro_rules! hash_conformance {
        ($backend:ident, $setup:expr) => {
            conformance!(
                $backend,
                $setup,
                [
                    hash_apply_semantics,
                    hash_apply_concurrent_keeps_every_field,
                    hash_new_concurrent_one_winner,
                    hash_deleted_never_resurrected,
                    hash_ttl_and_refresh,
                    hash_lifetime_caps_refresh,
                    hash_lazy_refresh,
                    hash_write_refresh_interval,
                    hash_write_tags,
                    hash_compare_and_set_field_semantics,
                    hash_compare_and_set_field_concurrent,
                    hash_size_limit,
                    hash_plain_value_counts_as_absent,
                    hash_invalid_ttl_rejected,
                    hash_unusual_fields_and_values,
                    hash_many_fields_in_one_write,
                ]
            );
        };
    }

    hash_conformance!(memory, (tower_stateless::store::MemoryStore::new(), ()));

    hash_conformance!(
        instrumented_memory,
        (
            tower_stateless::store::InstrumentedStore::new(
                tower_stateless::store::MemoryStore::new()
            ),
            ()
        )
    );

    #[cfg(feature = "redis")]
    hash_conformance!(redis, {
        let server = redis_or_skip!();
        let store = tower_stateless::store::RedisStore::builder()
            .url(server.url())
            .key_prefix("conf:")
            .build()
            .expect("build store");
        (store, server)
    });

    #[cfg(feature = "redis-cluster")]
    hash_conformance!(redis_cluster, {
        let cluster = cluster_or_skip!();
        let store = tower_stateless::store::RedisStore::builder()
            .cluster_urls(cluster.urls())
            .key_prefix("conf:")
            .build()
            .expect("build cluster store");
        (store, cluster)
    });
}
// `InstrumentedStore` only traces and times: it must keep every guarantee of the store it
// wraps.
conformance!(
    instrumented_memory,
    (
        tower_stateless::store::InstrumentedStore::new(tower_stateless::store::MemoryStore::new()),
        ()
    )
);

#[cfg(feature = "redis")]
conformance!(instrumented_redis, {
    let server = redis_or_skip!();
    let store = tower_stateless::store::RedisStore::builder()
        .url(server.url())
        .key_prefix("conf:")
        .build()
        .expect("build store");
    (
        tower_stateless::store::InstrumentedStore::new(store),
        server,
    )
});
