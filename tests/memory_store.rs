//! MemoryStore beyond the shared contract.

use std::time::Duration;

use bytes::Bytes;
use tower_stateless::store::{MemoryStore, StateStore};

#[tokio::test]
async fn expired_keys_are_reclaimed() {
    let store = MemoryStore::new();
    for i in 0..1000 {
        store
            .set(
                &format!("k{i}"),
                Bytes::from_static(b"v"),
                Duration::from_millis(20),
            )
            .await
            .unwrap();
    }
    store
        .set("keep", Bytes::from_static(b"v"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.len(), 1001);
    // Expired keys read as absent at once (the conformance suite checks that); their
    // memory goes at the cache's next maintenance, whose timer wheel ticks about once a
    // second. Wait for it, with a bound.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get("k1").await.unwrap(), None);
    let mut len = store.len();
    for _ in 0..50 {
        if len == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        len = store.len();
    }
    assert_eq!(len, 1, "expired entries must be reclaimed, not kept");
    assert!(!store.is_empty());
}

#[tokio::test]
async fn clones_share_data() {
    let a = MemoryStore::new();
    let b = a.clone();
    a.set("k", Bytes::from_static(b"v"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(Bytes::from_static(b"v")));
}
