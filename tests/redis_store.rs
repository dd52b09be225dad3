//! RedisStore beyond the shared contract: one command per operation, no PING on
//! checkout, failure and recovery, configuration errors.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use tower_stateless::store::{
    HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, RedisStore, StateStore, StoreError,
    MAX_TTL,
};

const TTL: Duration = Duration::from_secs(60);

fn store(url: &str) -> RedisStore {
    pooled_store(url, 1)
}

/// [`store`] with `pool` connections.
fn pooled_store(url: &str, pool: usize) -> RedisStore {
    RedisStore::builder()
        .url(url)
        .key_prefix("t:")
        .pool_size(pool)
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
    let gcra = tower_stateless::store::Gcra::new(Duration::from_millis(1), 5);
    store.gcra("rl", gcra).await.unwrap();

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
        only_command(&server, || store.gcra("rl", gcra)).await,
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

/// Restarts the server (killed, as in a crash) and returns once it answers `PING` on a
/// connection of its own: Redis is back before the store is used again.
fn restart_and_ping(server: &mut common::RedisServer) {
    server.restart();
    let mut conn = redis::Client::open(server.url())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
        .expect("connect to the restarted server");
    let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
    assert_eq!(pong, "PONG");
}

// Two worker threads: the store's connection task sees Redis close the connection while
// the test waits, as in a server between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_operation_after_a_restart_succeeds() {
    let mut server = redis_or_skip!();
    let store = store(&server.url());
    store.set("k", Bytes::from_static(b"v"), TTL).await.unwrap();

    // No operation during the outage: the store still holds the dead connection.
    restart_and_ping(&mut server);
    // The restarted server is empty.
    assert_eq!(
        store
            .get("k")
            .await
            .expect("the first read after a restart"),
        None
    );

    restart_and_ping(&mut server);
    store
        .set("k", Bytes::from_static(b"again"), TTL)
        .await
        .expect("the first write after a restart");
    assert_eq!(server.raw_get("t:k"), Some(b"again".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_is_not_sent_twice_after_a_restart() {
    let mut server = redis_or_skip!();
    let store = store(&server.url());
    store.set("k", Bytes::from_static(b"v"), TTL).await.unwrap();

    restart_and_ping(&mut server);
    // A dropped connection cannot tell an unsent command from one Redis ran: a write that
    // answers differently the second time fails instead of going out again.
    let err = store
        .set_if_absent("claim", Bytes::from_static(b"me"), TTL)
        .await
        .expect_err("a conditional write on the dropped connection");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.may_have_applied(), "{err:?}");
    // The slot reconnected: the retry a caller makes works.
    assert_eq!(
        store
            .set_if_absent("claim", Bytes::from_static(b"me"), TTL)
            .await
            .unwrap(),
        None
    );
}

/// Four connections, every one opened before a restart: once one operation has found its
/// connection dropped, the other three reconnect before they send, so that no
/// conditional write fails on a connection that died in the same restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dropped_connection_reconnects_every_slot() {
    const POOL: usize = 4;
    let mut server = redis_or_skip!();
    let store = pooled_store(&server.url(), POOL);
    common::warm_pool(&store).await;

    // A read finds its connection dropped and goes out again on a new one.
    restart_and_ping(&mut server);
    assert_eq!(
        store
            .get("k")
            .await
            .expect("the first read after a restart"),
        None
    );
    conditional_writes_on_every_slot(&store, &server, POOL, "read").await;

    // A conditional write finds its connection dropped: it fails, as it may have applied,
    // and it is the only one to.
    common::warm_pool(&store).await;
    restart_and_ping(&mut server);
    let err = store
        .set_if_absent("first", Bytes::from_static(b"me"), TTL)
        .await
        .expect_err("a conditional write on a dropped connection");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.may_have_applied(), "{err:?}");
    conditional_writes_on_every_slot(&store, &server, POOL, "write").await;
}

/// Many reads at once on four connections that all died in one restart: each finds its
/// connection dropped (or its slot already reconnected) and succeeds, however the
/// reconnects of the four slots interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_after_a_restart_all_succeed() {
    let mut server = redis_or_skip!();
    let store = pooled_store(&server.url(), 4);
    common::warm_pool(&store).await;

    restart_and_ping(&mut server);
    server.raw_set("t:k", b"v");
    let reads: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get("k").await })
        })
        .collect();
    for (i, read) in reads.into_iter().enumerate() {
        let value = read
            .await
            .expect("the read task panicked")
            .unwrap_or_else(|e| panic!("read #{i} after the restart: {e:?}"));
        assert_eq!(value, Some(Bytes::from_static(b"v")), "read #{i}");
    }
}

/// `pool` rounds of each kind of conditional write (the store takes its slots in turn, so
/// the first round covers every slot); every one must succeed and reach Redis.
async fn conditional_writes_on_every_slot(
    store: &RedisStore,
    server: &common::RedisServer,
    pool: usize,
    round: &str,
) {
    for i in 0..pool {
        let key = format!("{round}:claim:{i}");
        let existing = store
            .set_if_absent(&key, Bytes::from_static(b"me"), TTL)
            .await
            .unwrap_or_else(|e| panic!("{round}: set_if_absent #{i} after the restart: {e:?}"));
        assert_eq!(existing, None, "{key}");
    }
    for i in 0..pool {
        let key = format!("{round}:claim:{i}");
        let swapped = store
            .compare_and_set(&key, b"me", Bytes::from_static(b"done"), TTL)
            .await
            .unwrap_or_else(|e| panic!("{round}: compare_and_set #{i} after the restart: {e:?}"));
        assert!(swapped, "{key}");
        assert_eq!(server.raw_get(&format!("t:{key}")), Some(b"done".to_vec()));
    }
    let options = HashWriteOptions::new(HashMode::Upsert { lifetime: TTL }, TTL);
    for i in 0..pool {
        let key = format!("{round}:sess:{{{i}}}");
        let changes = HashChanges {
            set: vec![("cart".to_owned(), Bytes::from_static(b"3"))],
            ..HashChanges::default()
        };
        let outcome = store
            .hash_apply(&key, &changes, options)
            .await
            .unwrap_or_else(|e| panic!("{round}: hash_apply #{i} after the restart: {e:?}"));
        assert_eq!(outcome, HashWriteOutcome::Written, "{key}");
    }
    let written = store
        .hash_get_all_and_refresh(&format!("{round}:sess:{{0}}"), TTL)
        .await
        .expect("read a hash back")
        .expect("the hash was written");
    assert_eq!(written.fields.get("cart"), Some(&Bytes::from_static(b"3")));
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

/// Settings that cannot work are refused by `build`, naming the setting: never a panic,
/// an allocation of `usize::MAX` slots, or a failure on every operation.
#[test]
fn bad_configuration_is_refused_when_built() {
    let url = || RedisStore::builder().url("redis://127.0.0.1");
    let ms = Duration::from_millis;
    let cases = [
        ("url", RedisStore::builder()),
        ("url", RedisStore::builder().url("http://not-redis")),
        ("pool_size", url().pool_size(0)),
        ("pool_size", url().pool_size(usize::MAX)),
        ("timeout", url().timeout(Duration::ZERO)),
        ("key_prefix", url().key_prefix("app{x}:")),
        ("replica_acks", url().replica_acks(0, ms(100))),
        ("replica_acks", url().replica_acks(1, Duration::ZERO)),
        (
            "replica_acks",
            url().replica_acks(1, Duration::from_micros(999)),
        ),
        (
            "replica_acks",
            url().replica_acks(1, Duration::from_secs(1)),
        ),
        ("replica_acks", url().replica_acks(1, Duration::MAX)),
        (
            "replica_acks",
            url().timeout(ms(200)).replica_acks(1, ms(300)),
        ),
    ];
    for (setting, builder) in cases {
        let debug = format!("{builder:?}");
        match builder.build() {
            Err(e) => assert_eq!(e.setting(), setting, "{debug}: {e}"),
            Ok(store) => panic!("{debug}: expected `{setting}` to be refused, got {store:?}"),
        }
    }
    // A URL of another scheme says what a Redis URL looks like, and never repeats the
    // URL (it may hold a password).
    let error = RedisStore::builder()
        .url("http://user:secret@not-redis")
        .build()
        .expect_err("http");
    let message = error.to_string();
    assert!(message.contains("redis://"), "{message}");
    assert!(!message.contains("secret"), "{message}");
    // The limits themselves are fine.
    assert!(url().pool_size(1024).build().is_ok());
    assert!(url().timeout(Duration::MAX).build().is_ok());
    assert!(url().replica_acks(1, ms(999)).build().is_ok());
    assert!(url().replica_acks(2, ms(1)).timeout(ms(2)).build().is_ok());
}

/// A timeout of `Duration::MAX` works: operations run, nothing overflows.
#[tokio::test]
async fn an_unbounded_timeout_does_not_overflow() {
    let server = redis_or_skip!();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::MAX)
        .build()
        .expect("store");
    store.set("k", Bytes::from_static(b"v"), TTL).await.unwrap();
    assert_eq!(
        store.get("k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
}

/// TTLs past what Redis can hold (`PX` takes an `i64` of milliseconds) are refused with
/// `InvalidTtl` before anything is sent; the longest accepted one reaches Redis intact.
#[tokio::test]
async fn ttls_past_the_store_range_are_refused_not_wrapped() {
    let server = redis_or_skip!();
    let store = store(&server.url());
    store.get("warm").await.unwrap();
    server.reset_stats();
    let v = || Bytes::from_static(b"v");
    for ttl in [
        Duration::MAX,
        Duration::from_millis(u64::MAX),
        Duration::from_millis(i64::MAX as u64),
        MAX_TTL + Duration::from_millis(1),
    ] {
        let refused =
            |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidTtl(t)) if t == ttl);
        assert!(refused(store.set("k", v(), ttl).await), "set {ttl:?}");
        assert!(
            refused(store.set_if_absent("k", v(), ttl).await.map(drop)),
            "set_if_absent"
        );
        assert!(
            refused(store.compare_and_set("k", b"v", v(), ttl).await.map(drop)),
            "cas"
        );
        assert!(
            refused(store.get_and_refresh("k", ttl).await.map(drop)),
            "get_and_refresh"
        );
    }
    assert_eq!(server.command_count(), 0, "nothing may reach Redis");
    store.set("k", v(), MAX_TTL).await.unwrap();
    let pttl = server.pttl("t:k");
    let max_ms = i64::try_from(MAX_TTL.as_millis()).unwrap();
    assert!(pttl > max_ms - 60_000 && pttl <= max_ms, "PTTL {pttl}");
}

/// A store on `primary` that waits up to `wait` for one replica.
fn durable(primary: &common::RedisServer, wait: Duration) -> RedisStore {
    RedisStore::builder()
        .url(primary.url())
        .key_prefix("t:")
        .timeout(Duration::from_secs(10))
        .replica_acks(1, wait)
        .build()
        .expect("durable store")
}

/// How long a live replica may take to confirm on a loaded machine.
const PATIENT: Duration = Duration::from_secs(5);
/// How long to wait for a replica that is known not to answer.
const IMPATIENT: Duration = Duration::from_millis(100);

/// Every write through a durable store is confirmed by the live replica, sent with its
/// `WAIT` in one round trip (scripts included, loaded on first use), and is on the
/// replica when the call returns. Reads do not wait.
#[tokio::test]
async fn durable_writes_are_confirmed_by_a_live_replica() {
    let primary = redis_or_skip!();
    let Some(replica) = common::RedisServer::start_replica_of(&primary) else {
        return;
    };
    let store = durable(&primary, PATIENT);
    let v = |s: &'static str| Bytes::from_static(s.as_bytes());
    // Each first on a server that has never seen the scripts.
    store.set("a", v("1"), TTL).await.unwrap();
    assert_eq!(replica.raw_get("t:a"), Some(b"1".to_vec()));
    assert_eq!(store.set_if_absent("b", v("2"), TTL).await.unwrap(), None);
    assert_eq!(replica.raw_get("t:b"), Some(b"2".to_vec()));
    assert!(store.compare_and_set("a", b"1", v("3"), TTL).await.unwrap());
    assert_eq!(replica.raw_get("t:a"), Some(b"3".to_vec()));
    assert!(store.compare_and_delete("b", b"2").await.unwrap());
    assert_eq!(replica.raw_get("t:b"), None);
    store.set("n", v("5"), TTL).await.unwrap();
    assert_eq!(replica.raw_get("t:n"), Some(b"5".to_vec()));
    assert!(store.delete("n").await.unwrap());
    assert_eq!(replica.raw_get("t:n"), None);
    assert!(store.get_and_refresh("a", TTL).await.unwrap().is_some());
    let limited = store
        .gcra(
            "rl",
            tower_stateless::store::Gcra::new(Duration::from_secs(1), 2),
        )
        .await
        .unwrap();
    assert!(limited.allowed);
    assert!(replica.raw_get("t:rl").is_some());

    // One round trip: the write and its WAIT, nothing else; reads alone.
    server_sees(&primary, &[("set", 1), ("wait", 1)], || {
        store.set("a", v("4"), TTL)
    })
    .await;
    server_sees(&primary, &[("evalsha", 1), ("wait", 1)], || {
        store.compare_and_set("a", b"4", v("5"), TTL)
    })
    .await;
    server_sees(&primary, &[("get", 1)], || store.get("a")).await;
    server_sees(&primary, &[("mget", 1)], || store.get_many(&["a", "b"])).await;
}

/// Runs `op` and checks the commands the server received.
async fn server_sees<F, Fut, T>(server: &common::RedisServer, expected: &[(&str, u64)], op: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    server.reset_stats();
    op().await.expect("operation failed");
    let stats = server.command_stats();
    let expected: std::collections::HashMap<String, u64> = expected
        .iter()
        .map(|(k, n)| ((*k).to_owned(), *n))
        .collect();
    assert_eq!(stats, expected);
}

/// With the replica frozen (SIGSTOP: connected, but it never confirms), a durable write
/// reports `NotReplicated` after its wait, as a condition that may pass (`503`), and
/// works again once the replica is back.
#[tokio::test]
async fn durable_write_fails_when_the_replica_does_not_confirm() {
    let primary = redis_or_skip!();
    let Some(replica) = common::RedisServer::start_replica_of(&primary) else {
        return;
    };
    let patient = durable(&primary, PATIENT);
    let store = durable(&primary, IMPATIENT);
    patient
        .set("k", Bytes::from_static(b"1"), TTL)
        .await
        .unwrap();

    replica.pause();
    // Let the signal land before the write goes out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let result = store.set("k", Bytes::from_static(b"2"), TTL).await;
    let sia = store
        .set_if_absent("new", Bytes::from_static(b"x"), TTL)
        .await;
    let cas = store
        .compare_and_set("k", b"2", Bytes::from_static(b"3"), TTL)
        .await;
    replica.resume();
    let not_replicated = |e: &StoreError| {
        matches!(
            e,
            StoreError::NotReplicated {
                required: 1,
                acknowledged: 0
            }
        )
    };
    let err = result.expect_err("an unconfirmed write must be reported");
    assert!(not_replicated(&err), "{err:?}");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("0 of the 1"), "{err}");
    assert!(matches!(&sia, Err(e) if not_replicated(e)), "{sia:?}");
    assert!(matches!(&cas, Err(e) if not_replicated(e)), "{cas:?}");

    // The replica catches up and confirms again.
    patient
        .set("k", Bytes::from_static(b"4"), TTL)
        .await
        .expect("writes must be confirmed again once the replica is back");
    assert_eq!(replica.raw_get("t:k"), Some(b"4".to_vec()));
}

/// A replica that takes longer than half a second (redis-rs's default reply timeout) to
/// confirm is waited for up to the configured wait, not cut off as a dropped connection;
/// and a plain operation honours a store `timeout` above half a second as well.
#[tokio::test]
async fn waits_longer_than_half_a_second_are_honoured() {
    let primary = redis_or_skip!();
    let Some(replica) = common::RedisServer::start_replica_of(&primary) else {
        return;
    };
    let store = durable(&primary, PATIENT);
    store.set("k", Bytes::from_static(b"1"), TTL).await.unwrap();
    replica.pause();
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        replica.resume();
        replica
    });
    let result = store.set("k", Bytes::from_static(b"2"), TTL).await;
    let replica = thaw.join().expect("thaw thread");
    result.expect("a slow replica must be waited for, up to the wait");
    assert_eq!(replica.raw_get("t:k"), Some(b"2".to_vec()));

    let plain = RedisStore::builder()
        .url(primary.url())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("store");
    plain.get("warm").await.unwrap();
    primary.pause();
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        primary.resume();
        primary
    });
    let result = plain.get("k").await;
    let _primary = thaw.join().expect("thaw thread");
    assert!(
        result.is_ok(),
        "a 10 s timeout must outlast an 800 ms stall: {result:?}"
    );
}

/// A `Revoker` on a durable store: its revocations are on the replica when it returns,
/// and a revocation the replica does not confirm is an error the caller sees.
#[tokio::test]
async fn revoker_with_a_durable_store() {
    use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
    use tower_stateless::revocation::{RevokeError, Revoker};

    let primary = redis_or_skip!();
    let Some(replica) = common::RedisServer::start_replica_of(&primary) else {
        return;
    };
    let keys = JwtKeySet::new()
        .with_hmac("v1", Algorithm::HS256, &[7; 32])
        .expect("key");
    let policy = TokenPolicy::builder(keys)
        .signing_key("v1")
        .build()
        .expect("policy");
    let revoker = Revoker::new(durable(&primary, PATIENT), &policy);
    revoker
        .revoke_session("alice", "s1", Duration::from_secs(60))
        .await
        .expect("revocation confirmed by the replica");
    let on_replica = replica.keys("t:*");
    assert_eq!(on_replica.len(), 1, "{on_replica:?}");

    let impatient = Revoker::new(durable(&primary, IMPATIENT), &policy);
    replica.pause();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let result = impatient
        .revoke_session("alice", "s2", Duration::from_secs(60))
        .await;
    replica.resume();
    assert!(
        matches!(
            result,
            Err(RevokeError::Store(StoreError::NotReplicated { .. }))
        ),
        "{result:?}"
    );
}

/// On a Redis Cluster `WAIT` counts the replicas of the shard that owns the key; the
/// test cluster has none, so a durable write is reported unconfirmed (not mis-routed).
#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn durable_writes_on_a_cluster_wait_for_the_shards_replicas() {
    let cluster = cluster_or_skip!();
    let store = RedisStore::builder()
        .cluster_urls(cluster.urls())
        .replica_acks(1, Duration::from_millis(50))
        .build()
        .expect("cluster store");
    for key in ["{a}k", "{b}k", "{c}k"] {
        let result = store.set(key, Bytes::from_static(b"v"), TTL).await;
        assert!(
            matches!(
                result,
                Err(StoreError::NotReplicated {
                    required: 1,
                    acknowledged: 0
                })
            ),
            "{key}: {result:?}"
        );
    }
    // Scripts route with their key too.
    let result = store
        .gcra(
            "{a}n",
            tower_stateless::store::Gcra::new(Duration::from_millis(1), 5),
        )
        .await;
    assert!(
        matches!(result, Err(StoreError::NotReplicated { .. })),
        "{result:?}"
    );
    assert_eq!(
        store.get("{a}k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
}
