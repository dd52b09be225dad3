//! Properties of the hash operations: `hash_get_all_and_refresh`, `hash_apply`,
//! `hash_compare_and_set_field`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::{fresh_key, ok, CONCURRENCY, LONG};
use crate::store::{
    HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, StateStore, StoreError,
};

fn existing(ttl: Duration) -> HashWriteOptions {
    HashWriteOptions::new(HashMode::Existing, ttl)
}

fn new(lifetime: Duration, ttl: Duration) -> HashWriteOptions {
    HashWriteOptions::new(HashMode::New { lifetime }, ttl)
}

fn upsert(lifetime: Duration, ttl: Duration) -> HashWriteOptions {
    HashWriteOptions::new(HashMode::Upsert { lifetime }, ttl)
}

fn set(pairs: &[(&str, &str)]) -> HashChanges {
    HashChanges {
        set: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
        ..HashChanges::default()
    }
}

async fn fields<S: StateStore>(store: &S, key: &str) -> Option<BTreeMap<String, Bytes>> {
    ok(
        store.hash_get_all_and_refresh(key, LONG).await,
        "hash_get_all_and_refresh",
    )
    .map(|h| h.fields)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, Bytes> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

/// `hash_apply` in each mode: `Existing` never creates, `New` never overwrites, `Upsert`
/// creates or merges; fields not named are kept; `clear`, `delete`, `set` apply in order.
pub async fn hash_apply_semantics<S: StateStore>(store: &S) {
    let key = fresh_key("hash");
    let apply = |changes: HashChanges, options| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            ok(
                store.hash_apply(&key, &changes, options).await,
                "hash_apply",
            )
        }
    };
    assert_eq!(
        fields(store, &key).await,
        None,
        "a fresh hash must be absent"
    );
    assert_eq!(
        apply(set(&[("a", "1")]), existing(LONG)).await,
        HashWriteOutcome::Missing,
        "Existing must not create a hash"
    );
    assert_eq!(
        fields(store, &key).await,
        None,
        "Existing must not create a hash"
    );
    assert_eq!(
        apply(set(&[("a", "1"), ("b", "2")]), new(LONG, LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(
        fields(store, &key).await,
        Some(map(&[("a", "1"), ("b", "2")]))
    );
    assert_eq!(
        apply(set(&[("a", "x")]), new(LONG, LONG)).await,
        HashWriteOutcome::Exists,
        "New must not write into an existing hash"
    );
    assert_eq!(
        apply(set(&[("c", "3")]), existing(LONG)).await,
        HashWriteOutcome::Written
    );
    let mut changes = set(&[("a", "10")]);
    changes.delete = vec!["b".to_owned(), "never-there".to_owned()];
    assert_eq!(
        apply(changes, existing(LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(
        fields(store, &key).await,
        Some(map(&[("a", "10"), ("c", "3")])),
        "fields not named must be kept, deleted ones gone"
    );
    // Upsert merges into the existing hash.
    assert_eq!(
        apply(set(&[("d", "4")]), upsert(LONG, LONG)).await,
        HashWriteOutcome::Written
    );
    // Clear, then set: only the new fields remain, and the hash stays.
    let mut changes = set(&[("e", "5")]);
    changes.clear = true;
    assert_eq!(
        apply(changes, existing(LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(fields(store, &key).await, Some(map(&[("e", "5")])));
    let changes = HashChanges {
        clear: true,
        ..HashChanges::default()
    };
    assert_eq!(
        apply(changes, existing(LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(
        fields(store, &key).await,
        Some(BTreeMap::new()),
        "a hash without fields still exists"
    );
    // Upsert creates an absent hash.
    let other = format!("{key}:upsert");
    assert_eq!(
        ok(
            store
                .hash_apply(&other, &set(&[("a", "1")]), upsert(LONG, LONG))
                .await,
            "hash_apply"
        ),
        HashWriteOutcome::Written
    );
    assert_eq!(fields(store, &other).await, Some(map(&[("a", "1")])));
    // Delete removes the whole hash.
    assert!(ok(store.delete(&key).await, "delete"));
    assert_eq!(fields(store, &key).await, None);
}

/// Concurrent writers of different fields of one hash, with no retry: every field is kept.
pub async fn hash_apply_concurrent_keeps_every_field<S: StateStore>(store: &S) {
    let key = fresh_key("hash-merge");
    ok(
        store
            .hash_apply(&key, &set(&[("seed", "0")]), new(LONG, LONG))
            .await,
        "hash_apply",
    );
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let changes = set(&[(&format!("f{i}"), &i.to_string())]);
                store.hash_apply(&key, &changes, existing(LONG)).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            ok(task.await.expect("task panicked"), "hash_apply"),
            HashWriteOutcome::Written
        );
    }
    let got = fields(store, &key).await.expect("the hash must exist");
    assert_eq!(
        got.len(),
        CONCURRENCY + 1,
        "every concurrent field must be kept"
    );
    for i in 0..CONCURRENCY {
        assert_eq!(got.get(&format!("f{i}")), Some(&Bytes::from(i.to_string())));
    }
}

/// Of concurrent `New` writes of one absent hash exactly one creates it; concurrent
/// `Upsert`s of an absent hash create it once and keep every field.
pub async fn hash_new_concurrent_one_winner<S: StateStore>(store: &S) {
    let key = fresh_key("hash-new");
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let changes = set(&[("owner", &i.to_string())]);
                (i, store.hash_apply(&key, &changes, new(LONG, LONG)).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, result) = task.await.expect("task panicked");
        match ok(result, "hash_apply") {
            HashWriteOutcome::Written => winners.push(i),
            HashWriteOutcome::Exists => {}
            other => panic!("New on a racing key answered {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent New must create the hash"
    );
    assert_eq!(
        fields(store, &key).await,
        Some(map(&[("owner", &winners[0].to_string())]))
    );

    let key = fresh_key("hash-upsert");
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let changes = set(&[(&format!("f{i}"), "x")]);
                store.hash_apply(&key, &changes, upsert(LONG, LONG)).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            ok(task.await.expect("task panicked"), "hash_apply"),
            HashWriteOutcome::Written
        );
    }
    assert_eq!(
        fields(store, &key).await.map(|f| f.len()),
        Some(CONCURRENCY),
        "concurrent upserts must keep every field"
    );
}

/// A deleted hash stays deleted: `Existing` writes and field swaps that come after the
/// delete write nothing, also when they race with it.
pub async fn hash_deleted_never_resurrected<S: StateStore>(store: &S) {
    let key = fresh_key("hash-gone");
    ok(
        store
            .hash_apply(&key, &set(&[("a", "1")]), new(LONG, LONG))
            .await,
        "hash_apply",
    );
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                if i == CONCURRENCY / 2 {
                    ok(store.delete(&key).await, "delete");
                    return;
                }
                let changes = set(&[(&format!("f{i}"), "x")]);
                let first = ok(
                    store.hash_apply(&key, &changes, existing(LONG)).await,
                    "apply",
                );
                assert!(
                    matches!(first, HashWriteOutcome::Written | HashWriteOutcome::Missing),
                    "{first:?}"
                );
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(
        fields(store, &key).await,
        None,
        "writes racing a delete must not bring the hash back"
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("late", "1")]), existing(LONG))
                .await,
            "apply"
        ),
        HashWriteOutcome::Missing
    );
    assert_eq!(
        ok(
            store
                .hash_compare_and_set_field(
                    &key,
                    "a",
                    None,
                    Some(Bytes::from_static(b"1")),
                    existing(LONG)
                )
                .await,
            "swap"
        ),
        HashWriteOutcome::Missing
    );
    assert_eq!(
        fields(store, &key).await,
        None,
        "a deleted hash must stay deleted"
    );
}

/// A hash expires after the TTL of its last write or refresh; a refresh rolls the expiry;
/// an expired hash is absent to every operation.
pub async fn hash_ttl_and_refresh<S: StateStore>(store: &S) {
    // Margins of 500 ms or more on each side, for a loaded machine.
    let ttl = Duration::from_millis(1000);
    let key = fresh_key("hash-ttl");
    ok(
        store
            .hash_apply(&key, &set(&[("a", "1")]), new(LONG, ttl))
            .await,
        "apply",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ok(store.hash_get_all_and_refresh(&key, ttl).await, "read").is_some(),
        "a hash must exist before its TTL"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ok(store.hash_get_all_and_refresh(&key, ttl).await, "read").is_some(),
        "a read must roll the expiry"
    );
    ok(
        store
            .hash_apply(&key, &set(&[("b", "2")]), existing(ttl))
            .await,
        "apply",
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        ok(store.hash_get_all_and_refresh(&key, ttl).await, "read"),
        None,
        "a hash must expire after its TTL"
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("c", "3")]), existing(LONG))
                .await,
            "apply"
        ),
        HashWriteOutcome::Missing,
        "an expired hash must not be written into"
    );
}

/// The absolute lifetime holds: no refresh or write keeps a hash past its deadline, and
/// a read reports the time left to it.
pub async fn hash_lifetime_caps_refresh<S: StateStore>(store: &S) {
    let lifetime = Duration::from_millis(1500);
    let key = fresh_key("hash-lifetime");
    ok(
        store
            .hash_apply(&key, &set(&[("a", "1")]), new(lifetime, LONG))
            .await,
        "apply",
    );
    let read = ok(store.hash_get_all_and_refresh(&key, LONG).await, "read").expect("hash");
    assert!(
        read.lifetime_left <= lifetime && read.lifetime_left > Duration::ZERO,
        "time left {:?} must be within the lifetime",
        read.lifetime_left
    );
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(store.hash_get_all_and_refresh(&key, LONG).await, "read");
        ok(
            store
                .hash_apply(&key, &set(&[("b", "2")]), upsert(LONG, LONG))
                .await,
            "apply",
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ok(store.hash_get_all_and_refresh(&key, LONG).await, "read"),
        None,
        "refreshes must not keep a hash past its absolute deadline"
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("c", "3")]), existing(LONG))
                .await,
            "apply"
        ),
        HashWriteOutcome::Missing
    );
}

/// A write with a refresh interval ([`HashWriteOptions::refresh_interval`]) rolls the
/// expiry once more than the interval of it is used up (a store may roll on every write),
/// so a hash written now and then does not expire early.
pub async fn hash_write_refresh_interval<S: StateStore>(store: &S) {
    // TTL 6 s, interval 2 s: written at 0 and at 4.5 s (due), read at 6.5 s, when the
    // first expiry has passed and the rolled one is 4 s away.
    let (ttl, every) = (Duration::from_secs(6), Duration::from_secs(2));
    let key = fresh_key("hash-write-refresh");
    let one = set(&[("a", "1")]);
    let lazy = |options: HashWriteOptions| options.refresh_interval(every);
    ok(
        store.hash_apply(&key, &one, lazy(new(LONG, ttl))).await,
        "apply",
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("b", "2")]), lazy(existing(ttl)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        fields(store, &key).await,
        Some(map(&[("a", "1"), ("b", "2")])),
        "a write that finds more than the refresh interval used up must roll the expiry"
    );
}

/// `hash_get_all_and_refresh_lazily` reads every field, rolls the expiry once it is due,
/// never past the deadline, rolls on every read with an interval of zero, and reads
/// absent keys and plain values as absent.
pub async fn hash_lazy_refresh<S: StateStore>(store: &S) {
    let lazily = |key: String, every: Duration| {
        let store = store.clone();
        async move {
            ok(
                store
                    .hash_get_all_and_refresh_lazily(&key, LONG, every)
                    .await,
                "hash_get_all_and_refresh_lazily",
            )
        }
    };
    let every = Duration::from_millis(100);
    let short = Duration::from_millis(1000);
    // Written with a 1 s expiry and read with one of a minute: far more than `every` of
    // it is used up, so the read is due to roll it.
    let (due, capped, zero) = (
        fresh_key("hash-lazy-due"),
        fresh_key("hash-lazy-capped"),
        fresh_key("hash-lazy-zero"),
    );
    let one = set(&[("a", "1")]);
    for (key, lifetime) in [
        (&due, LONG),
        (&capped, Duration::from_millis(1500)),
        (&zero, LONG),
    ] {
        ok(
            store.hash_apply(key, &one, new(lifetime, short)).await,
            "apply",
        );
    }
    let read = lazily(due.clone(), every).await.expect("a live hash");
    assert_eq!(read.fields, map(&[("a", "1")]));
    assert!(read.lifetime_left <= LONG && read.lifetime_left > short);
    assert!(lazily(capped.clone(), every).await.is_some());
    assert!(lazily(zero.clone(), Duration::ZERO).await.is_some());
    // Well past the 1 s expiry and the 1.5 s deadline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        lazily(due, every).await.is_some(),
        "a lazy read that finds the expiry due must roll it"
    );
    assert!(
        lazily(zero, every).await.is_some(),
        "a read with an interval of zero must roll the expiry"
    );
    assert_eq!(
        lazily(capped.clone(), every).await,
        None,
        "a lazy roll must not keep a hash past its deadline"
    );
    assert_eq!(
        ok(
            store.hash_apply(&capped, &one, existing(LONG)).await,
            "apply"
        ),
        HashWriteOutcome::Missing
    );
    assert_eq!(lazily(fresh_key("hash-lazy-absent"), every).await, None);
    let plain = fresh_key("hash-lazy-plain");
    ok(
        store.set(&plain, Bytes::from_static(b"v"), LONG).await,
        "set",
    );
    assert_eq!(
        lazily(plain.clone(), every).await,
        None,
        "a plain value is no hash"
    );
    assert_eq!(
        ok(store.get(&plain).await, "get"),
        Some(Bytes::from_static(b"v")),
        "a lazy read leaves a plain value alone"
    );
}

/// `hash_compare_and_set_field` writes only over the expected value (absent included),
/// reports the current one otherwise, removes with `None`, and leaves other fields alone.
pub async fn hash_compare_and_set_field_semantics<S: StateStore>(store: &S) {
    let key = fresh_key("hash-cas");
    let swap = |field: &'static str,
                expected: Option<&'static str>,
                value: Option<&'static str>,
                options| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            ok(
                store
                    .hash_compare_and_set_field(
                        &key,
                        field,
                        expected.map(str::as_bytes),
                        value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                        options,
                    )
                    .await,
                "hash_compare_and_set_field",
            )
        }
    };
    assert_eq!(
        swap("n", None, Some("1"), existing(LONG)).await,
        HashWriteOutcome::Missing,
        "Existing must not create a hash"
    );
    assert_eq!(
        swap("n", None, Some("1"), new(LONG, LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(
        swap("n", None, Some("2"), existing(LONG)).await,
        HashWriteOutcome::Changed(Some(Bytes::from_static(b"1"))),
        "expecting absence must fail on a present field"
    );
    assert_eq!(
        swap("n", Some("0"), Some("2"), existing(LONG)).await,
        HashWriteOutcome::Changed(Some(Bytes::from_static(b"1")))
    );
    assert_eq!(
        swap("n", Some("1"), Some("2"), existing(LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(
        swap("m", Some("1"), Some("2"), existing(LONG)).await,
        HashWriteOutcome::Changed(None),
        "an absent field must be reported as absent"
    );
    assert_eq!(
        swap("m", None, Some(""), existing(LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(
        fields(store, &key).await,
        Some(map(&[("m", ""), ("n", "2")]))
    );
    assert_eq!(
        swap("n", Some("2"), None, existing(LONG)).await,
        HashWriteOutcome::Written
    );
    assert_eq!(fields(store, &key).await, Some(map(&[("m", "")])));
    assert_eq!(
        swap("m", None, Some("x"), new(LONG, LONG)).await,
        HashWriteOutcome::Exists,
        "New must not write into an existing hash"
    );
}

/// A read-modify-write of one field through `hash_compare_and_set_field`, retried on
/// `Changed` only, by many concurrent writers: no increment is lost, and writers of
/// other fields never cause a conflict.
pub async fn hash_compare_and_set_field_concurrent<S: StateStore>(store: &S) {
    let key = fresh_key("hash-counter");
    ok(
        store
            .hash_apply(&key, &set(&[("n", "0")]), new(LONG, LONG))
            .await,
        "apply",
    );
    let writers = 20;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                // A writer of another field must never make the counter retry.
                let other = set(&[(&format!("other{i}"), "x")]);
                ok(
                    store.hash_apply(&key, &other, existing(LONG)).await,
                    "apply",
                );
                let mut current = Some(Bytes::from_static(b"0"));
                loop {
                    let n: u64 = current
                        .as_ref()
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                        .expect("a counter");
                    let next = Bytes::from((n + 1).to_string());
                    match ok(
                        store
                            .hash_compare_and_set_field(
                                &key,
                                "n",
                                current.as_deref(),
                                Some(next),
                                existing(LONG),
                            )
                            .await,
                        "swap",
                    ) {
                        HashWriteOutcome::Written => return,
                        HashWriteOutcome::Changed(now) => {
                            assert_ne!(now, current, "a conflict must report a changed value");
                            current = now;
                        }
                        other => panic!("swap answered {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked");
    }
    let got = fields(store, &key).await.expect("hash");
    assert_eq!(
        got.get("n"),
        Some(&Bytes::from(writers.to_string())),
        "no increment may be lost"
    );
    assert_eq!(got.len(), writers + 1);
}

/// A write that would grow a hash past `max_bytes` (field names plus values) is refused
/// whole and reports the size; writes within the limit, and writes that shrink an
/// oversized hash, pass.
pub async fn hash_size_limit<S: StateStore>(store: &S) {
    let key = fresh_key("hash-size");
    let limited = |options: HashWriteOptions| options.max_bytes(10);
    // "a" + "1234" = 5 bytes.
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("a", "1234")]), limited(new(LONG, LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    // + "b" + "12345" = 11 > 10: refused, nothing written.
    assert_eq!(
        ok(
            store
                .hash_apply(
                    &key,
                    &set(&[("b", "12345"), ("c", "")]),
                    limited(existing(LONG))
                )
                .await,
            "apply"
        ),
        HashWriteOutcome::TooLarge(12)
    );
    assert_eq!(
        fields(store, &key).await,
        Some(map(&[("a", "1234")])),
        "a refused write writes nothing"
    );
    // Replacing a value counts the difference: "a" + "123456789" = 10.
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("a", "123456789")]), limited(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    assert_eq!(
        ok(
            store
                .hash_compare_and_set_field(
                    &key,
                    "b",
                    None,
                    Some(Bytes::from_static(b"1")),
                    limited(existing(LONG))
                )
                .await,
            "swap"
        ),
        HashWriteOutcome::TooLarge(12)
    );
    // Over a lower limit, a shrinking write still passes; a growing one does not.
    let tight = |options: HashWriteOptions| options.max_bytes(4);
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("a", "12345678")]), tight(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("a", "123456789")]), tight(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::TooLarge(10)
    );
    let mut changes = HashChanges::default();
    changes.delete.push("a".to_owned());
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &changes, tight(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    // Deleted fields no longer count.
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("z", "123")]), tight(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );

    // Replaced values never add up: a field rewritten many times (a counter) stays within
    // a limit its size keeps, and the limit still refuses the first write past it, with
    // the exact size.
    let counter = fresh_key("hash-size-counter");
    let small = |options: HashWriteOptions| options.max_bytes(64);
    for n in 0..100 {
        let value = format!("{n:08}");
        let outcome = ok(
            store
                .hash_apply(
                    &counter,
                    &set(&[("count", value.as_str())]),
                    small(upsert(LONG, LONG)),
                )
                .await,
            "apply",
        );
        assert_eq!(outcome, HashWriteOutcome::Written, "rewrite {n}");
    }
    // 5 + 8 = 13 bytes; + "pad" + 49 bytes = 65 > 64.
    let pad = "p".repeat(49);
    assert_eq!(
        ok(
            store
                .hash_apply(
                    &counter,
                    &set(&[("pad", pad.as_str())]),
                    small(existing(LONG))
                )
                .await,
            "apply"
        ),
        HashWriteOutcome::TooLarge(65)
    );
    let pad = "p".repeat(48);
    assert_eq!(
        ok(
            store
                .hash_apply(
                    &counter,
                    &set(&[("pad", pad.as_str())]),
                    small(existing(LONG))
                )
                .await,
            "apply"
        ),
        HashWriteOutcome::Written,
        "exactly at the limit"
    );
    // A clear that sets more than the limit, but less than the hash held, passes; one that
    // sets more than it held does not.
    let tiny = |options: HashWriteOptions| options.max_bytes(8);
    let mut clear = set(&[("q", "123456789")]);
    clear.clear = true;
    assert_eq!(
        ok(
            store
                .hash_apply(&counter, &clear, tiny(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    let mut clear = set(&[("q", "1234567890")]);
    clear.clear = true;
    assert_eq!(
        ok(
            store
                .hash_apply(&counter, &clear, tiny(existing(LONG)))
                .await,
            "apply"
        ),
        HashWriteOutcome::TooLarge(11)
    );
    assert_eq!(
        fields(store, &counter).await,
        Some(map(&[("q", "123456789")]))
    );
}

/// A plain value under a key is no hash: reads see nothing, `Existing` writes write
/// nothing (the value stays), creating writes replace it.
pub async fn hash_plain_value_counts_as_absent<S: StateStore>(store: &S) {
    let key = fresh_key("hash-plain");
    ok(
        store
            .set(&key, Bytes::from_static(br#"{"v":1,"data":{}}"#), LONG)
            .await,
        "set",
    );
    assert_eq!(
        fields(store, &key).await,
        None,
        "a plain value must read as no hash"
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("a", "1")]), existing(LONG))
                .await,
            "apply"
        ),
        HashWriteOutcome::Missing
    );
    assert_eq!(
        ok(store.get(&key).await, "get"),
        Some(Bytes::from_static(br#"{"v":1,"data":{}}"#)),
        "an Existing write must leave a plain value alone"
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("a", "1")]), new(LONG, LONG))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written,
        "a creating write must replace a plain value"
    );
    assert_eq!(fields(store, &key).await, Some(map(&[("a", "1")])));
    let other = format!("{key}:2");
    ok(
        store.set(&other, Bytes::from_static(b"old"), LONG).await,
        "set",
    );
    assert_eq!(
        ok(
            store
                .hash_compare_and_set_field(
                    &other,
                    "a",
                    None,
                    Some(Bytes::from_static(b"1")),
                    upsert(LONG, LONG)
                )
                .await,
            "swap"
        ),
        HashWriteOutcome::Written
    );
    assert_eq!(fields(store, &other).await, Some(map(&[("a", "1")])));
}

/// TTLs and lifetimes below one millisecond are errors, and write nothing.
pub async fn hash_invalid_ttl_rejected<S: StateStore>(store: &S) {
    let key = fresh_key("hash-bad-ttl");
    for options in [
        new(LONG, Duration::ZERO),
        new(Duration::ZERO, LONG),
        upsert(Duration::from_micros(10), LONG),
    ] {
        let err = store.hash_apply(&key, &set(&[("a", "1")]), options).await;
        assert!(
            matches!(err, Err(StoreError::InvalidTtl(_))),
            "{options:?}: {err:?}"
        );
    }
    let err = store.hash_get_all_and_refresh(&key, Duration::ZERO).await;
    assert!(
        matches!(err, Err(StoreError::InvalidTtl(_))),
        "read: {err:?}"
    );
    assert_eq!(
        fields(store, &key).await,
        None,
        "a rejected write must write nothing"
    );
}

/// Field names and values of every shape round-trip: empty, binary, unicode, braces,
/// large.
pub async fn hash_unusual_fields_and_values<S: StateStore>(store: &S) {
    let key = fresh_key("hash-shapes");
    let large = Bytes::from(vec![0xA5u8; 256 * 1024]);
    let changes = HashChanges {
        set: vec![
            (String::new(), Bytes::from_static(b"empty name")),
            ("empty value".to_owned(), Bytes::new()),
            ("binary".to_owned(), Bytes::from_static(b"\x00\xff\xfe\r\n")),
            ("clé {tag} 🔑".to_owned(), Bytes::from_static(b"unicode")),
            ("large".to_owned(), large.clone()),
        ],
        ..HashChanges::default()
    };
    assert_eq!(
        ok(
            store.hash_apply(&key, &changes, new(LONG, LONG)).await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    let got = fields(store, &key).await.expect("hash");
    let want: BTreeMap<String, Bytes> = changes.set.into_iter().collect();
    assert_eq!(got, want);
}

/// One write of thousands of fields, and one of their removal, applies whole; the size
/// the limit counts follows every field, empty values included.
pub async fn hash_many_fields_in_one_write<S: StateStore>(store: &S) {
    let key = fresh_key("hash-many");
    ok(
        store
            .hash_apply(&key, &set(&[("seed", "")]), new(LONG, LONG))
            .await,
        "apply",
    );
    let many = HashChanges {
        set: (0..2500)
            .map(|i| (format!("f{i:04}"), Bytes::from(i.to_string())))
            .collect(),
        ..HashChanges::default()
    };
    assert_eq!(
        ok(store.hash_apply(&key, &many, existing(LONG)).await, "apply"),
        HashWriteOutcome::Written
    );
    assert_eq!(fields(store, &key).await.map(|f| f.len()), Some(2501));
    // A write that creates its hash with as many fields.
    let created = fresh_key("hash-many-new");
    assert_eq!(
        ok(
            store.hash_apply(&created, &many, new(LONG, LONG)).await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    assert_eq!(
        fields(store, &created).await,
        Some(many.set.iter().cloned().collect())
    );
    let fewer = HashChanges {
        delete: (0..2400).map(|i| format!("f{i:04}")).collect(),
        set: vec![("seed".to_owned(), Bytes::from_static(b"x"))],
        ..HashChanges::default()
    };
    assert_eq!(
        ok(
            store.hash_apply(&key, &fewer, existing(LONG)).await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
    let got = fields(store, &key).await.expect("hash");
    let mut want: BTreeMap<String, Bytes> = (2400..2500)
        .map(|i| (format!("f{i:04}"), Bytes::from(i.to_string())))
        .collect();
    want.insert("seed".to_owned(), Bytes::from_static(b"x"));
    assert_eq!(got, want);
    let size: u64 = got.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    assert_eq!(
        ok(
            store
                .hash_apply(
                    &key,
                    &set(&[("seed", "xy")]),
                    existing(LONG).max_bytes(size)
                )
                .await,
            "apply"
        ),
        HashWriteOutcome::TooLarge(size + 1),
        "the size must count every field as stored"
    );
    assert_eq!(
        ok(
            store
                .hash_apply(&key, &set(&[("seed", "y")]), existing(LONG).max_bytes(size))
                .await,
            "apply"
        ),
        HashWriteOutcome::Written
    );
}

/// Every write leaves a write tag: the one it names ([`HashWriteOptions::tag`]), a new one
/// otherwise, also a compare-and-set; a refused write leaves the tag as it was. Reads
/// report the tag and the expiry left, and `hash_get_all_cached` never answers older
/// state than the tag it names, whatever that tag.
pub async fn hash_write_tags<S: StateStore>(store: &S) {
    let key = fresh_key("hash-tags");
    let read = |tag: Option<u64>| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            ok(
                store
                    .hash_get_all_cached(&key, LONG, Duration::from_secs(1), tag)
                    .await,
                "hash_get_all_cached",
            )
            .expect("a live hash")
        }
    };
    let tagged = |tag: u64| new(LONG, LONG).tag(tag);
    ok(
        store.hash_apply(&key, &set(&[("a", "1")]), tagged(7)).await,
        "apply",
    );
    let first = read(None).await;
    assert_eq!(first.tag, Some(7), "a write leaves the tag it names");
    assert_eq!(first.fields, map(&[("a", "1")]));
    assert!(!first.expires_in.is_zero() && first.expires_in <= LONG);
    assert_eq!(read(Some(7)).await.fields, map(&[("a", "1")]));

    ok(
        store
            .hash_apply(&key, &set(&[("b", "2")]), existing(LONG))
            .await,
        "apply",
    );
    let second = read(Some(7)).await;
    assert_eq!(
        second.fields,
        map(&[("a", "1"), ("b", "2")]),
        "a read naming an older tag sees the later write"
    );
    let random = second.tag.expect("an untagged write still leaves a tag");
    assert_ne!(random, 7, "an untagged write changes the tag");

    let cas = ok(
        store
            .hash_compare_and_set_field(
                &key,
                "a",
                Some(b"1"),
                Some(Bytes::from_static(b"3")),
                existing(LONG).tag(9),
            )
            .await,
        "compare_and_set_field",
    );
    assert_eq!(cas, HashWriteOutcome::Written);
    let third = read(Some(9)).await;
    assert_eq!(
        (third.tag, third.fields),
        (Some(9), map(&[("a", "3"), ("b", "2")]))
    );
    let refused = ok(
        store
            .hash_compare_and_set_field(&key, "a", Some(b"1"), None, existing(LONG).tag(10))
            .await,
        "compare_and_set_field",
    );
    assert!(matches!(refused, HashWriteOutcome::Changed(_)));
    assert_eq!(
        read(Some(10)).await.tag,
        Some(9),
        "a refused write keeps the tag"
    );
    assert_eq!(
        ok(
            store
                .hash_get_all_cached(&fresh_key("hash-tags-absent"), LONG, LONG / 4, Some(9))
                .await,
            "hash_get_all_cached",
        ),
        None
    );
}
