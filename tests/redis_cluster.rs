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

/// A node restarts (killed, as in a crash) under a running store: once it is back, the
/// store works on every node again without a rebuild, and the restarted node's keys are
/// gone (it restarts empty) while the others' are kept.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_recovers_when_a_node_restarts() {
    const KEYS: usize = 60;
    let mut cluster = cluster_or_skip!();
    let store = RedisStore::builder()
        .cluster_urls(cluster.urls())
        .pool_size(2)
        .timeout(Duration::from_millis(500))
        .build()
        .expect("build cluster store");
    let key = |i: usize| format!("k{i}");
    for i in 0..KEYS {
        store
            .set(&key(i), Bytes::from(i.to_string()), TTL)
            .await
            .unwrap();
    }
    let lost = cluster.nodes()[0].keys("k*");
    assert!(!lost.is_empty() && lost.len() < KEYS, "{lost:?}");

    cluster.restart_node(0);
    // Every key read, on every pooled connection (taken in turn): until one whole round
    // succeeds, a bounded number of times. Failures meanwhile are outages, not errors
    // of another kind.
    let mut values = None;
    for _ in 0..50 {
        let mut round = Vec::with_capacity(KEYS);
        let mut failed = None;
        for i in 0..KEYS {
            match store.get(&key(i)).await {
                Ok(value) => round.push(value),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => {
                values = Some(round);
                break;
            }
            Some(e) => assert!(e.is_unavailable(), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let values = values.expect("the store never recovered after the node restarted");
    for (i, value) in values.into_iter().enumerate() {
        if lost.contains(&key(i)) {
            assert_eq!(value, None, "{}: the restarted node is empty", key(i));
        } else {
            assert_eq!(value, Some(Bytes::from(i.to_string())), "{}", key(i));
        }
    }
    // Conditional writes on the restarted node go through, on every connection.
    for name in &lost {
        let existing = store
            .set_if_absent(name, Bytes::from_static(b"again"), TTL)
            .await
            .unwrap_or_else(|e| panic!("set_if_absent {name} after the restart: {e:?}"));
        assert_eq!(existing, None, "{name}");
        assert!(
            store
                .compare_and_set(name, b"again", Bytes::from_static(b"done"), TTL)
                .await
                .unwrap_or_else(|e| panic!("compare_and_set {name} after the restart: {e:?}")),
            "{name}"
        );
    }
    let mut on_node = cluster.nodes()[0].keys("k*");
    on_node.sort();
    let mut expected = lost.clone();
    expected.sort();
    assert_eq!(on_node, expected);
}
