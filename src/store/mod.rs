//! The [`StateStore`] contract and its backends.
//!
//! Every layer of this crate touches shared state only through [`StateStore`]. Its
//! operations are few, and each one is a single atomic step: on Redis, exactly one network
//! round trip. Values are opaque bytes; every write carries a TTL, so no key lives forever.
//!
//! Backends:
//!
//! - [`MemoryStore`]: in-process, TTLs honoured, for tests and single-instance development.
//! - `RedisStore` (feature `redis`, on by default): Redis on deadpool-redis.
//! - `LocalCache` (feature `redis`): wraps a `RedisStore` and serves reads of chosen
//!   prefixes (the revocation list) from memory, invalidated by Redis; opt-in.
//!
//! # Writing your own backend
//!
//! Implement [`StateStore`] for a cheap-to-clone handle (wrap shared state in an `Arc`).
//! Each method must be atomic on its own; a backend must never build a conditional
//! operation out of a read followed by a write, because two instances of the service can
//! interleave between the two. Then prove the backend with the same conformance suite the
//! built-in backends pass (feature `conformance`):
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn my_store_conforms() {
//!     let store = MyStore::connect("...").await.unwrap();
//!     tower_stateless::store::conformance::run_all(&store).await;
//! }
//! ```
//!
//! Layers use the store through static dispatch (`S: StateStore`), so there is no boxing
//! or dynamic call per request.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

#[cfg(feature = "redis")]
mod cache;
mod error;
mod gcra;
mod hash;
mod instrumented;
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::cache::{LocalCache, LocalCacheBuilder, TRACKING_CLIENT_NAME};
pub use self::error::{BoxError, StoreError};
pub use self::gcra::{Gcra, GcraOutcome};
pub use self::hash::{HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, StoredHash};
pub use self::instrumented::InstrumentedStore;
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreBuilder};

/// A shared key-value store with TTLs and a handful of atomic conditional operations.
///
/// The store is the only place a layer keeps state, so every instance of a service sees
/// the same state. Implementations are cheap to clone handles to a shared backend.
///
/// # Contract
///
/// - Every method is **one atomic step**: no other operation on the same key can observe
///   or interleave with a half-done call. On Redis each is exactly **one round trip**.
/// - Every write takes a TTL. A TTL below one millisecond or above [`MAX_TTL`] is rejected
///   with [`StoreError::InvalidTtl`]; TTLs are kept to millisecond precision.
/// - An expired key is indistinguishable from a key that was never written.
/// - Values are opaque bytes; empty values are legal and distinct from absence.
/// - Keys are arbitrary UTF-8. Layers namespace their keys with a prefix and put the part
///   that groups keys read together inside a Redis Cluster hash tag (`{...}`).
/// - Errors tell an unavailable store ([`StoreError::is_unavailable`]) apart from a
///   corrupt or unexpected reply.
pub trait StateStore: Clone + Send + Sync + 'static {
    /// Reads one key. `None` if absent or expired.
    ///
    /// Redis: `GET`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Reads many keys in one step; the result has one entry per key, in order.
    ///
    /// Redis: one `MGET`, never one `GET` per key. On Redis Cluster all keys must share a
    /// hash tag.
    fn get_many(
        &self,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>, StoreError>> + Send;

    /// Writes `value` under `key` with a TTL, replacing any previous value.
    ///
    /// Redis: `SET key value PX ttl`.
    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes `value` only if `key` is absent. Returns `None` when this call wrote the
    /// value, or `Some(existing)` (and writes nothing) when the key was already there.
    ///
    /// Of any number of concurrent callers on one absent key, exactly one gets `None`.
    ///
    /// Redis: `SET key value NX GET PX ttl` (Redis 7.0 or later).
    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Replaces the value of `key` with `new` (and a fresh TTL) only if its current value
    /// is exactly `expected`. Returns whether it did. An absent key never matches.
    ///
    /// Of concurrent callers expecting the same value, exactly one succeeds.
    ///
    /// Redis: `EVALSHA` of a small Lua script (loaded once per server).
    fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes `key` only if its current value is exactly `expected`. Returns whether it
    /// did. Used to release a lock only while still owning it.
    ///
    /// Redis: `EVALSHA` of a small Lua script.
    fn compare_and_delete(
        &self,
        key: &str,
        expected: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Reads `key` and, if present, resets its TTL to `ttl` in the same step (rolling
    /// expiry). `None` if absent or expired; then nothing is written.
    ///
    /// Redis: `GETEX key PX ttl`.
    fn get_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Deletes `key`. Returns whether it existed.
    ///
    /// Redis: `DEL`.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Reads every field of the hash at `key` and, if it exists, sets its expiry to `ttl`
    /// from now (rolling expiry); the hash never outlives its absolute deadline: past it,
    /// it is absent to every operation. `None` if absent, expired, past its deadline or not
    /// a hash (a plain value). See [`HashMode`] for what a hash is.
    ///
    /// Redis: one `MULTI`/`EXEC` transaction sent as one pipeline (`TIME`, `HGETALL`,
    /// `PEXPIRE`), no Lua; the deadline is checked against the `TIME` of the transaction
    /// (Redis' clock, as the writes use it near a deadline, so clock skew between
    /// instances does not matter). The key's expiry is rolled without the cap of the deadline: a hash read in
    /// its last `ttl` may stay in Redis up to `ttl` past its deadline, absent to every
    /// operation, and the read that finds it past its deadline deletes it (one more round
    /// trip, once). A plain value under the key gets its expiry rolled too (the
    /// transaction cannot tell it apart before it runs) and is otherwise left alone.
    fn hash_get_all_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<StoredHash>, StoreError>> + Send;

    /// As [`hash_get_all_and_refresh`](Self::hash_get_all_and_refresh), except that the
    /// expiry only has to be rolled once `every` of it has been used up: a read that finds
    /// the hash's expiry at least `ttl - every` away (or as far as its deadline allows)
    /// may leave it as it is. A store may always roll (the default does); with `every` of
    /// zero this is `hash_get_all_and_refresh`. The hash still never outlives its
    /// deadline. An idle hash then expires between `ttl - every` and `ttl` after its last
    /// read: rolling lazily trades that precision for reads that write nothing.
    ///
    /// Redis: one `HGETALL` (no transaction, no Lua: every write and roll stores when the
    /// expiry falls in a reserved field, read against this instance's clock, so a clock
    /// `d` behind Redis' rolls up to `d` late); when the expiry is due, one more round
    /// trip: `EVALSHA` of a small script that rolls
    /// it (capped by the deadline, on Redis' clock). Redis removes a hash at its deadline
    /// on its own clock, since every lazy roll and every write caps the expiry there; a
    /// hash this instance's clock finds past its deadline (rolled past it by an eager
    /// read, or seen by a clock running ahead) takes that second round trip too, which
    /// decides on Redis' clock and deletes it if it is.
    fn hash_get_all_and_refresh_lazily(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
    ) -> impl Future<Output = Result<Option<StoredHash>, StoreError>> + Send {
        let _ = every;
        self.hash_get_all_and_refresh(key, ttl)
    }

    /// As [`hash_get_all_and_refresh_lazily`](Self::hash_get_all_and_refresh_lazily), except
    /// that a store with a local copy of the hash may answer from it, without a round trip,
    /// when that copy carries the write tag `tag` ([`StoredHash::tag`]) and a read of the
    /// store would not have rolled the expiry. The caller names the tag of the last write it
    /// made or saw, so the answer is never older than that; it may miss later writes of
    /// others for as long as the store takes to drop its copy. `None`: read the store.
    ///
    /// Only [`LocalCache`] keeps such copies; every other store reads (the default).
    fn hash_get_all_cached(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
        tag: Option<u64>,
    ) -> impl Future<Output = Result<Option<StoredHash>, StoreError>> + Send {
        let _ = tag;
        self.hash_get_all_and_refresh_lazily(key, ttl, every)
    }

    /// Applies `changes` to the hash at `key` in one atomic step, and sets its expiry to
    /// the options' TTL from now, capped by its absolute deadline. Fields the changes do not
    /// name are kept as they are: of concurrent writers of different fields, every field
    /// is kept, with no retry.
    ///
    /// [`HashMode`] says whether the write may create the hash; a write in
    /// [`HashMode::Existing`] never brings back a deleted or expired hash. A hash at or past
    /// its deadline counts as absent. A plain value under `key` counts as absent, and a
    /// creating write replaces it.
    ///
    /// Field names are UTF-8; values are opaque bytes (empty ones included).
    ///
    /// With [`HashWriteOptions::refresh_interval`], a store may leave the expiry of an
    /// existing hash as it is while less than that interval of it is used up.
    ///
    /// Redis: `EVALSHA` of a small Lua script (`HSET`, `HDEL` when fields are removed,
    /// `PEXPIRE` when the expiry is rolled).
    fn hash_apply(
        &self,
        key: &str,
        changes: &HashChanges,
        options: HashWriteOptions,
    ) -> impl Future<Output = Result<HashWriteOutcome, StoreError>> + Send;

    /// Sets `field` of the hash at `key` to `new` (`None` removes it) only if its current
    /// value is `expected` (`None`: the field is absent), in one atomic step, with the same
    /// modes, expiry and size limit as [`hash_apply`](Self::hash_apply). Otherwise writes
    /// nothing and answers [`HashWriteOutcome::Changed`] with the current value, so that a
    /// read-modify-write of one field retries only on a real conflict of that field.
    ///
    /// Of concurrent callers expecting the same value of one field, exactly one succeeds.
    ///
    /// Redis: `EVALSHA` of a small Lua script (`HGET`, `HSET` or `HDEL`, `PEXPIRE`).
    fn hash_compare_and_set_field(
        &self,
        key: &str,
        field: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: HashWriteOptions,
    ) -> impl Future<Output = Result<HashWriteOutcome, StoreError>> + Send;

    /// One step of the Generic Cell Rate Algorithm on the rate-limit state at `key`: spends
    /// `params.cost` units if the burst allows it and says how much is left. The key expires
    /// by itself once the burst is whole again.
    ///
    /// The clock is the store's, so every instance of a service limits against the same
    /// time. Of concurrent callers, no more are allowed than the burst holds. Times are
    /// kept to the nanosecond (the emission interval is never rounded): over any stretch
    /// of time `t`, at most `burst + t / emission_interval` units are spent.
    ///
    /// Redis: `EVALSHA` of a small Lua script (`TIME`, `GET`, `SET PX`).
    fn gcra(
        &self,
        key: &str,
        params: Gcra,
    ) -> impl Future<Output = Result<GcraOutcome, StoreError>> + Send;
}

/// The Redis Cluster hash tag of a key: what stands between its first `{` and the next
/// `}`, when that is not empty. Keys with the same tag share a hash slot.
#[cfg(any(test, feature = "redis-cluster"))]
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    Some(&key[open + 1..open + 1 + len]).filter(|t| !t.is_empty())
}

/// The longest TTL a [`StateStore`] write accepts: 100 years (of 365 days).
///
/// Redis keeps expiry times as milliseconds in an `i64`, and `Instant` arithmetic
/// overflows past some point; a century is more than any layer needs and far from both
/// limits. A longer TTL is [`StoreError::InvalidTtl`], never a panic or a wrapped value.
/// Builders of the layers refuse settings that would produce a longer one (a
/// [`ConfigError`](crate::ConfigError) naming the setting), and a rate-limit
/// [`Quota`](crate::rate_limit::Quota) whose burst takes longer to refill is refused too.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Checks a TTL against the contract and returns it in whole milliseconds, rounded up.
pub(crate) fn ttl_millis(ttl: Duration) -> Result<u64, StoreError> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        return Err(StoreError::InvalidTtl(ttl));
    }
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).map_err(|_| StoreError::InvalidTtl(ttl))
}

/// Nanoseconds since the Unix epoch on this instance's wall clock (as Redis `TIME` is).
pub(crate) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch on this instance's wall clock: the hashes' deadlines.
pub(crate) fn unix_millis() -> u64 {
    unix_nanos() / 1_000_000
}
