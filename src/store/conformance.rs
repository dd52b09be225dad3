//! The conformance suite of the [`StateStore`] contract.
//!
//! One public async function per property of the contract; each panics with a message
//! naming the broken property. The built-in backends run every one of them, and a
//! third-party backend proves itself with the same code:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn set_if_absent_has_one_winner() {
//!     let store = MyStore::connect("...").await.unwrap();
//!     tower_stateless::store::conformance::set_if_absent_concurrent(&store).await;
//! }
//! ```
//!
//! Every function works in a key space of its own, so they may run in parallel on one
//! store. The concurrency checks spawn tasks, so they need a multi-threaded Tokio runtime
//! to race for real. The TTL checks sleep for a few hundred milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Gcra, StateStore, StoreError, MAX_TTL};

mod hash;
pub use self::hash::*;

const LONG: Duration = Duration::from_secs(60);
const CONCURRENCY: usize = 100;

/// A key no other call in this process (or, very likely, any other) has used. It is one
/// hash tag, so keys built by appending to it stay in one Redis Cluster slot.
fn fresh_key(property: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("conformance:{{{property}:{nanos:x}:{n}}}")
}

fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
}

/// Runs every property of the contract in turn.
pub async fn run_all<S: StateStore>(store: &S) {
    get_set_roundtrip(store).await;
    ttl_expiry(store).await;
    invalid_ttl_rejected(store).await;
    set_if_absent_returns_existing(store).await;
    set_if_absent_concurrent(store).await;
    compare_and_set_semantics(store).await;
    compare_and_set_concurrent(store).await;
    compare_and_delete_semantics(store).await;
    get_and_refresh_extends_ttl(store).await;
    delete_semantics(store).await;
    hash_apply_semantics(store).await;
    hash_apply_concurrent_keeps_every_field(store).await;
    hash_new_concurrent_one_winner(store).await;
    hash_deleted_never_resurrected(store).await;
    hash_ttl_and_refresh(store).await;
    hash_lifetime_caps_refresh(store).await;
    hash_lazy_refresh(store).await;
    hash_write_refresh_interval(store).await;
    hash_write_tags(store).await;
    hash_compare_and_set_field_semantics(store).await;
    hash_compare_and_set_field_concurrent(store).await;
    hash_size_limit(store).await;
    hash_plain_value_counts_as_absent(store).await;
    hash_invalid_ttl_rejected(store).await;
    hash_unusual_fields_and_values(store).await;
    hash_many_fields_in_one_write(store).await;
    gcra_semantics(store).await;
    gcra_concurrent(store).await;
    gcra_keeps_fine_intervals(store).await;
    get_many_with_missing_keys(store).await;
    binary_values(store).await;
    empty_values(store).await;
    large_values(store).await;
    unusual_keys(store).await;
}

/// A written value reads back; a key never written reads as absent; `set` overwrites.
pub async fn get_set_roundtrip<S: StateStore>(store: &S) {
    let key = fresh_key("roundtrip");
    assert_eq!(
        ok(store.get(&key).await, "get"),
        None,
        "a fresh key must be absent"
    );
    ok(
        store.set(&key, Bytes::from_static(b"one"), LONG).await,
        "set",
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"one"))
    );
    ok(
        store.set(&key, Bytes::from_static(b"two"), LONG).await,
        "set",
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"two")),
        "set must replace the previous value"
    );
}

/// Every kind of write honours its TTL: the key is there at once and gone after it.
pub async fn ttl_expiry<S: StateStore>(store: &S) {
    let ttl = Duration::from_millis(200);
    let base = fresh_key("ttl");
    let [a, b, c] = ["set", "absent", "cas"].map(|w| format!("{base}:{w}"));
    ok(store.set(&a, Bytes::from_static(b"x"), ttl).await, "set");
    assert_eq!(
        ok(
            store.set_if_absent(&b, Bytes::from_static(b"x"), ttl).await,
            "set_if_absent"
        ),
        None
    );
    ok(store.set(&c, Bytes::from_static(b"old"), LONG).await, "set");
    assert!(ok(
        store
            .compare_and_set(&c, b"old", Bytes::from_static(b"new"), ttl)
            .await,
        "cas"
    ));

    let keys = [a.as_str(), b.as_str(), c.as_str()];
    let before = ok(store.get_many(&keys).await, "get_many");
    assert!(
        before.iter().all(Option::is_some),
        "keys must exist before their TTL: {before:?}"
    );

    tokio::time::sleep(Duration::from_millis(450)).await;
    let after = ok(store.get_many(&keys).await, "get_many");
    assert!(
        after.iter().all(Option::is_none),
        "keys must expire after their TTL: {after:?}"
    );
    assert_eq!(ok(store.get(&a).await, "get"), None);
    assert_eq!(
        ok(
            store
                .set_if_absent(&b, Bytes::from_static(b"again"), LONG)
                .await,
            "set_if_absent"
        ),
        None,
        "an expired key must count as absent for set_if_absent"
    );
    assert!(
        !ok(
            store
                .compare_and_set(&c, b"new", Bytes::from_static(b"x"), LONG)
                .await,
            "cas"
        ),
        "an expired key must not match compare_and_set"
    );
}

/// A zero TTL is an error, not a key that lives forever or dies at once.
pub async fn invalid_ttl_rejected<S: StateStore>(store: &S) {
    let key = fresh_key("bad-ttl");
    let err = store
        .set(&key, Bytes::from_static(b"x"), Duration::ZERO)
        .await;
    assert!(
        matches!(err, Err(StoreError::InvalidTtl(_))),
        "set with zero TTL: {err:?}"
    );
    let err = store
        .set_if_absent(&key, Bytes::from_static(b"x"), Duration::from_micros(10))
        .await;
    assert!(
        matches!(err, Err(StoreError::InvalidTtl(_))),
        "set_if_absent with 10 µs TTL: {err:?}"
    );
    // Past the range of the store (Redis keeps expiry times as i64 milliseconds): refused,
    // never a panic or a wrapped TTL.
    for ttl in [Duration::MAX, MAX_TTL + Duration::from_millis(1)] {
        let v = || Bytes::from_static(b"x");
        let refused =
            |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidTtl(t)) if t == ttl);
        assert!(
            refused(store.set(&key, v(), ttl).await),
            "set with TTL {ttl:?}"
        );
        assert!(
            refused(store.set_if_absent(&key, v(), ttl).await.map(drop)),
            "set_if_absent with TTL {ttl:?}"
        );
        assert!(
            refused(store.compare_and_set(&key, b"x", v(), ttl).await.map(drop)),
            "compare_and_set with TTL {ttl:?}"
        );
        assert!(
            refused(store.get_and_refresh(&key, ttl).await.map(drop)),
            "get_and_refresh with TTL {ttl:?}"
        );
    }
    assert_eq!(
        ok(store.get(&key).await, "get"),
        None,
        "a rejected write must write nothing"
    );
    // The longest TTL the contract allows is accepted.
    ok(
        store.set(&key, Bytes::from_static(b"x"), MAX_TTL).await,
        "set with MAX_TTL",
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"x"))
    );
}

/// `set_if_absent` writes into an absent key and otherwise returns the existing value.
pub async fn set_if_absent_returns_existing<S: StateStore>(store: &S) {
    let key = fresh_key("absent");
    assert_eq!(
        ok(
            store
                .set_if_absent(&key, Bytes::from_static(b"first"), LONG)
                .await,
            "sia"
        ),
        None
    );
    assert_eq!(
        ok(
            store
                .set_if_absent(&key, Bytes::from_static(b"second"), LONG)
                .await,
            "sia"
        ),
        Some(Bytes::from_static(b"first")),
        "the second caller must get the first caller's value"
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"first"))
    );
}

/// Of 100 concurrent `set_if_absent` callers on one key exactly one wins, and every loser
/// sees the winner's value.
pub async fn set_if_absent_concurrent<S: StateStore>(store: &S) {
    let key = fresh_key("absent-race");
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let value = Bytes::from(format!("caller-{i}"));
                (value.clone(), store.set_if_absent(&key, value, LONG).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for task in tasks {
        let (mine, result) = task.await.expect("task panicked");
        match ok(result, "set_if_absent") {
            None => winners.push(mine),
            Some(existing) => seen.push(existing),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent set_if_absent must win"
    );
    assert!(
        seen.iter().all(|v| *v == winners[0]),
        "every loser must see the winner's value"
    );
    assert_eq!(ok(store.get(&key).await, "get").as_ref(), Some(&winners[0]));
}

/// `compare_and_set` replaces only an exactly matching present value.
pub async fn compare_and_set_semantics<S: StateStore>(store: &S) {
    let key = fresh_key("cas");
    assert!(
        !ok(
            store
                .compare_and_set(&key, b"", Bytes::from_static(b"x"), LONG)
                .await,
            "cas"
        ),
        "an absent key must not match, not even an empty expected value"
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        None,
        "a failed cas must write nothing"
    );
    ok(
        store.set(&key, Bytes::from_static(b"v1"), LONG).await,
        "set",
    );
    assert!(!ok(
        store
            .compare_and_set(&key, b"v0", Bytes::from_static(b"x"), LONG)
            .await,
        "cas"
    ));
    assert!(!ok(
        store
            .compare_and_set(&key, b"v1 ", Bytes::from_static(b"x"), LONG)
            .await,
        "cas"
    ));
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"v1"))
    );
    assert!(ok(
        store
            .compare_and_set(&key, b"v1", Bytes::from_static(b"v2"), LONG)
            .await,
        "cas"
    ));
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"v2"))
    );
}

/// Of 100 concurrent `compare_and_set` callers expecting the same value exactly one wins.
pub async fn compare_and_set_concurrent<S: StateStore>(store: &S) {
    let key = fresh_key("cas-race");
    ok(
        store.set(&key, Bytes::from_static(b"v0"), LONG).await,
        "set",
    );
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let new = Bytes::from(format!("v1-{i}"));
                (
                    new.clone(),
                    store.compare_and_set(&key, b"v0", new, LONG).await,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (mine, result) = task.await.expect("task panicked");
        if ok(result, "compare_and_set") {
            winners.push(mine);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent compare_and_set must win"
    );
    assert_eq!(ok(store.get(&key).await, "get").as_ref(), Some(&winners[0]));
}

/// `compare_and_delete` deletes only an exactly matching value.
pub async fn compare_and_delete_semantics<S: StateStore>(store: &S) {
    let key = fresh_key("cad");
    assert!(
        !ok(store.compare_and_delete(&key, b"owner").await, "cad"),
        "absent key"
    );
    ok(
        store.set(&key, Bytes::from_static(b"owner-a"), LONG).await,
        "set",
    );
    assert!(
        !ok(store.compare_and_delete(&key, b"owner-b").await, "cad"),
        "another owner"
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"owner-a"))
    );
    assert!(
        ok(store.compare_and_delete(&key, b"owner-a").await, "cad"),
        "the owner"
    );
    assert_eq!(ok(store.get(&key).await, "get"), None);
}

/// `get_and_refresh` returns the value and restarts its TTL; an absent key stays absent.
pub async fn get_and_refresh_extends_ttl<S: StateStore>(store: &S) {
    let key = fresh_key("refresh");
    assert_eq!(ok(store.get_and_refresh(&key, LONG).await, "getex"), None);
    assert_eq!(
        ok(store.get(&key).await, "get"),
        None,
        "refresh must not create a key"
    );
    ok(
        store
            .set(&key, Bytes::from_static(b"v"), Duration::from_millis(300))
            .await,
        "set",
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        ok(
            store
                .get_and_refresh(&key, Duration::from_millis(600))
                .await,
            "getex"
        ),
        Some(Bytes::from_static(b"v"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"v")),
        "the refreshed TTL must outlive the original one"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        ok(store.get(&key).await, "get"),
        None,
        "the refreshed TTL must still expire"
    );
}

/// `delete` removes a key and tells whether it existed.
pub async fn delete_semantics<S: StateStore>(store: &S) {
    let key = fresh_key("delete");
    assert!(
        !ok(store.delete(&key).await, "delete"),
        "deleting an absent key"
    );
    ok(store.set(&key, Bytes::from_static(b"v"), LONG).await, "set");
    assert!(
        ok(store.delete(&key).await, "delete"),
        "deleting a present key"
    );
    assert_eq!(ok(store.get(&key).await, "get"), None);
}

/// `get_many` answers one entry per key, in order, with `None` for missing keys.
pub async fn get_many_with_missing_keys<S: StateStore>(store: &S) {
    let base = fresh_key("many");
    let [a, b, c] = ["a", "b", "c"].map(|k| format!("{base}:{k}"));
    ok(store.set(&a, Bytes::from_static(b"A"), LONG).await, "set");
    ok(store.set(&c, Bytes::from_static(b"C"), LONG).await, "set");
    let got = ok(store.get_many(&[&c, &b, &a, &b]).await, "get_many");
    assert_eq!(
        got,
        vec![
            Some(Bytes::from_static(b"C")),
            None,
            Some(Bytes::from_static(b"A")),
            None
        ]
    );
    assert_eq!(
        ok(store.get_many(&[]).await, "get_many"),
        Vec::<Option<Bytes>>::new()
    );
}

/// Values are opaque bytes: every byte value 0..=255 survives every operation.
pub async fn binary_values<S: StateStore>(store: &S) {
    let all: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    let reversed: Bytes = (0..=255u8).rev().collect::<Vec<_>>().into();
    let key = fresh_key("binary");
    assert_eq!(
        ok(store.set_if_absent(&key, all.clone(), LONG).await, "sia"),
        None
    );
    assert_eq!(ok(store.get(&key).await, "get").as_ref(), Some(&all));
    assert!(ok(
        store
            .compare_and_set(&key, &all, reversed.clone(), LONG)
            .await,
        "cas"
    ));
    assert_eq!(
        ok(store.get_and_refresh(&key, LONG).await, "getex").as_ref(),
        Some(&reversed)
    );
    assert_eq!(
        ok(store.set_if_absent(&key, all.clone(), LONG).await, "sia").as_ref(),
        Some(&reversed)
    );
    assert!(ok(store.compare_and_delete(&key, &reversed).await, "cad"));
}

/// An empty value is a value, distinct from absence.
pub async fn empty_values<S: StateStore>(store: &S) {
    let key = fresh_key("empty");
    assert_eq!(
        ok(store.set_if_absent(&key, Bytes::new(), LONG).await, "sia"),
        None
    );
    assert_eq!(ok(store.get(&key).await, "get"), Some(Bytes::new()));
    assert_eq!(
        ok(
            store
                .set_if_absent(&key, Bytes::from_static(b"x"), LONG)
                .await,
            "sia"
        ),
        Some(Bytes::new()),
        "an empty value must block set_if_absent"
    );
    assert!(ok(
        store
            .compare_and_set(&key, b"", Bytes::from_static(b"x"), LONG)
            .await,
        "cas"
    ));
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(b"x"))
    );
}

/// A 1 MiB value round-trips byte for byte.
pub async fn large_values<S: StateStore>(store: &S) {
    let key = fresh_key("large");
    let value: Bytes = (0..1024 * 1024)
        .map(|i: u32| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    ok(store.set(&key, value.clone(), LONG).await, "set");
    let got = ok(store.get(&key).await, "get").expect("large value missing");
    assert_eq!(got.len(), value.len());
    assert!(got == value, "a 1 MiB value must round-trip byte for byte");
}

/// Keys with braces, colons, spaces and non-ASCII text are ordinary keys. (All of them
/// share the hash tag of their common start, so this also runs on Redis Cluster.)
pub async fn unusual_keys<S: StateStore>(store: &S) {
    let base = fresh_key("keys");
    let keys = [
        format!("{base}:{{tag}}:x"),
        format!("{base}:{{"),
        format!("{base}:}}{{"),
        format!("{base}:a:b::c"),
        format!("{base}:日本語:ключ:🔑"),
        format!("{base}: spaced key "),
    ];
    for (i, key) in keys.iter().enumerate() {
        ok(
            store.set(key, Bytes::from(i.to_string()), LONG).await,
            "set",
        );
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = ok(store.get_many(&refs).await, "get_many");
    for (i, value) in got.iter().enumerate() {
        assert_eq!(
            value.as_deref(),
            Some(i.to_string().as_bytes()),
            "key {:?} must hold its own value",
            keys[i]
        );
    }
}

/// `gcra` allows the burst at once, counts `remaining` down, denies the next with a
/// `retry_after` of at most one emission interval, lets one more through after that
/// interval, and keeps keys apart.
pub async fn gcra_semantics<S: StateStore>(store: &S) {
    let key = fresh_key("gcra");
    let slow = Gcra::new(Duration::from_secs(10), 3);
    for expected in [2, 1, 0] {
        let out = ok(store.gcra(&key, slow).await, "gcra");
        assert!(out.allowed, "gcra: the burst of 3 must be allowed at once");
        assert_eq!(out.remaining, expected, "gcra: remaining counts down");
        assert_eq!(out.retry_after, Duration::ZERO);
        assert!(out.reset_after <= Duration::from_secs(30));
    }
    let denied = ok(store.gcra(&key, slow).await, "gcra");
    assert!(
        !denied.allowed,
        "gcra: the 4th request within the burst must be denied"
    );
    assert_eq!(denied.remaining, 0);
    assert!(
        denied.retry_after > Duration::from_secs(9)
            && denied.retry_after <= Duration::from_secs(10),
        "gcra: retry_after must be about one interval, got {:?}",
        denied.retry_after
    );
    let other = ok(store.gcra(&format!("{key}:other"), slow).await, "gcra");
    assert!(
        other.allowed && other.remaining == 2,
        "gcra: keys are independent"
    );
    let costly = ok(
        store.gcra(&format!("{key}:cost"), slow.cost(4)).await,
        "gcra",
    );
    assert!(
        !costly.allowed,
        "gcra: a cost above the burst is never allowed"
    );

    let key = fresh_key("gcra-refill");
    let fast = Gcra::new(Duration::from_millis(300), 1);
    assert!(ok(store.gcra(&key, fast).await, "gcra").allowed);
    assert!(!ok(store.gcra(&key, fast).await, "gcra").allowed);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        ok(store.gcra(&key, fast).await, "gcra").allowed,
        "gcra: one unit must come back after one interval"
    );
    // A value that is not rate-limit state is an error, not a silent reset.
    let text = fresh_key("gcra-text");
    ok(
        store
            .set(&text, Bytes::from_static(b"not a number"), LONG)
            .await,
        "set",
    );
    assert!(
        matches!(
            store.gcra(&text, slow).await,
            Err(StoreError::Unexpected(_))
        ),
        "gcra on a non-number must be StoreError::Unexpected"
    );
}

/// 100 concurrent `gcra` steps on one key with a burst of 10 and a slow refill: exactly
/// 10 are allowed.
pub async fn gcra_concurrent<S: StateStore>(store: &S) {
    let key = fresh_key("gcra-race");
    let params = Gcra::new(Duration::from_secs(60), 10);
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move { store.gcra(&key, params).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if ok(task.await.expect("task panicked"), "gcra").allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "gcra: exactly the burst may pass concurrently");
}

/// `gcra` keeps intervals to the nanosecond, whatever its clock: a fresh key's
/// `reset_after` is exactly one interval, and an interval below a millisecond (5,000 per
/// second) is not rounded to a whole one.
pub async fn gcra_keeps_fine_intervals<S: StateStore>(store: &S) {
    for interval in [
        Duration::from_micros(200),
        Duration::from_nanos(1_666_667),
        Duration::from_nanos(10_000_000_777),
    ] {
        let key = fresh_key("gcra-fine");
        let out = ok(store.gcra(&key, Gcra::new(interval, 1)).await, "gcra");
        assert!(out.allowed, "gcra: a fresh key allows");
        assert_eq!(
            out.reset_after, interval,
            "gcra: the interval must be kept exactly, not rounded"
        );
    }
    // A burst of 1 at 200 µs: a second request straight after is denied for at most
    // 200 µs (not a millisecond), unless it came later than that.
    let key = fresh_key("gcra-fine");
    let fine = Gcra::new(Duration::from_micros(200), 1);
    assert!(ok(store.gcra(&key, fine).await, "gcra").allowed);
    let next = ok(store.gcra(&key, fine).await, "gcra");
    assert!(
        next.allowed || next.retry_after <= Duration::from_micros(200),
        "gcra: retry_after {:?} is longer than the interval",
        next.retry_after
    );
}
