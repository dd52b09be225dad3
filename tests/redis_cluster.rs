//! RedisStore in cluster mode beyond the shared contract (the conformance suite runs on
//! the cluster in `store_conformance.rs`).
#![cfg(feature = "redis-cluster")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use tower_stateless::store::{RedisStore, StateStore, StoreError};

const TTL: Duration = Duration::from_secs(60);

fn store(cluster: &common::RedisCluster) -> RedisStore {
    RedisStore::builder()
        .cluster_urls(cluster.urls())
        .build()
        .expect("build cluster store")
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_spread_over_the_masters_and_read_back() {
    let cluster = cluster_or_skip!();
    let store = store(&cluster);
    for i in 0..60 {
        store
            .set(&format!("k{i}"), Bytes::from(i.to_string()), TTL)
            .await
            .unwrap();
    }
    for i in 0..60 {
        assert_eq!(
            store.get(&format!("k{i}")).await.unwrap(),
            Some(Bytes::from(i.to_string()))
        );
    }
    let per_node: Vec<usize> = cluster.nodes().iter().map(|n| n.keys("k*").len()).collect();
    assert_eq!(per_node.iter().sum::<usize>(), 60);
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys must land on every master: {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_in_one_slot_is_one_command_on_one_node() {
    let cluster = cluster_or_skip!();
    let store = store(&cluster);
    let keys = ["rev:{alice}:jti:1", "rev:{alice}:sid:2", "rev:{alice}:sub"];
    store
        .set(keys[0], Bytes::from_static(b"x"), TTL)
        .await
        .unwrap();
    store.get_many(&keys).await.unwrap(); // warm up every route
    for node in cluster.nodes() {
        node.reset_stats();
    }
    for _ in 0..20 {
        let got = store.get_many(&keys).await.unwrap();
        assert_eq!(got, vec![Some(Bytes::from_static(b"x")), None, None]);
    }
    // The cluster client keeps its topology fresh in the background (`CLUSTER SLOTS`,
    // `PING`), on a timer and not per operation; every other command is counted.
    let stats: Vec<_> = cluster.nodes().iter().map(|n| n.command_stats()).collect();
    let per_request: Vec<u64> = stats
        .iter()
        .map(|s| {
            s.iter()
                .filter(|(c, _)| !matches!(c.as_str(), "ping" | "cluster"))
                .map(|(_, n)| n)
                .sum()
        })
        .collect();
    let mgets: Vec<u64> = stats
        .iter()
        .map(|s| s.get("mget").copied().unwrap_or(0))
        .collect();
    assert_eq!(
        per_request.iter().sum::<u64>(),
        20,
        "one command per get_many: {stats:?}"
    );
    assert_eq!(
        mgets.iter().filter(|&&n| n == 20).count(),
        1,
        "all on one node: {stats:?}"
    );
    assert_eq!(cluster.keyslot(keys[0]), cluster.keyslot(keys[2]));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_across_slots_is_rejected_clearly() {
    let cluster = cluster_or_skip!();
    let store = store(&cluster);
    assert_ne!(cluster.keyslot("{a}x"), cluster.keyslot("{b}x"));
    let result = store.get_many(&["{a}x", "{b}x"]).await;
    match result {
        Err(StoreError::Unexpected(e)) => assert!(e.to_string().contains("hash slot"), "{e}"),
        other => panic!("keys in two slots must be rejected, got {other:?}"),
    }
}
