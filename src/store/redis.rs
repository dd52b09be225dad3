use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture,
    RedisWrite, Script, ServerErrorKind, ToRedisArgs, Value,
};
use deadpool_redis::{Connection, Manager, Pool, PoolError, Runtime};
use tokio::sync::Mutex;
use tracing::Instrument;

use super::gcra::MAX_WINDOW_NANOS;
use super::{ttl_millis, Gcra, GcraOutcome, StateStore, StoreError};
use super::{HashChanges, HashWriteOptions, HashWriteOutcome, StoredHash};
use crate::metrics::{store_span, StoreOp, StoreResult};
use crate::ConfigError;

mod hash;

const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Writes `values` into `out` as little-endian `f64`s, eight bytes each: how the hot
/// scripts take their numbers, as one argument that one `struct.unpack('<d...', ..)`
/// reads (a decimal argument costs Redis a `tonumber`, glibc's `strtod`, and an argument
/// of its own).
fn put_doubles(out: &mut [u8], values: impl IntoIterator<Item = f64>) {
    for (bytes, value) in out.chunks_exact_mut(8).zip(values) {
        bytes.copy_from_slice(&value.to_le_bytes());
    }
}

// The same arithmetic as `gcra::step`, on the server's clock, in nanoseconds. Lua numbers
// are doubles, exact only below 2^53 (104 days of nanoseconds), so times are kept relative
// to the current whole second of `TIME` (microseconds), and the state is stored as
// "<seconds>.<9 digits of nanoseconds>". Plain integers are milliseconds, as earlier
// versions stored them. ARGV[1] is the four parameters (interval, burst, cost, how far
// ahead a stored state may be) as little-endian doubles, read by one `struct.unpack`
// (Redis' bundled `struct` library): four decimal arguments, each parsed by `tonumber`
// (glibc's `strtod`), cost Redis 15 % more instructions a step (PERFORMANCE.md). A
// double is the number `tonumber` would have made of the decimal.
const GCRA: &str = r"
local interval, burst, cost, max_ahead = struct.unpack('<dddd', ARGV[1])
local t = redis.call('TIME')
local base = tonumber(t[1])
local now = tonumber(t[2]) * 1000
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local s, f = string.match(stored, '^(%d+)%.(%d%d%d%d%d%d%d%d%d)$')
  if s then
    tat = (tonumber(s) - base) * 1e9 + tonumber(f)
  elseif string.match(stored, '^%d+$') then
    tat = (tonumber(stored) - base * 1000) * 1e6
  else
    return redis.error_reply('rate-limit state is not a number')
  end
  if tat - now > max_ahead then
    return redis.error_reply('rate-limit state is out of range')
  end
  if tat < now then tat = now end
end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local secs = math.floor(new_tat / 1e9)
local nanos = math.min(math.max(new_tat - secs * 1e9, 0), 999999999)
redis.call('SET', KEYS[1], string.format('%d.%09d', base + secs, nanos),
  'PX', string.format('%d', math.ceil((new_tat - now) / 1e6)))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}";

/// A [`StateStore`] on Redis (7.0 or later), through deadpool-redis.
///
/// Each operation is exactly one round trip. deadpool-redis's pool sends a `PING` every
/// time it hands out a recycled connection, which would double the round trips; so this
/// store checks connections *out* of the pool once and keeps them: each of its
/// `pool_size` slots holds one multiplexed connection, which any number of concurrent
/// operations share. A connection that fails is dropped and its slot reconnects on the
/// next use, so the store works again as soon as Redis is back, without a restart (see
/// [reconnecting](RedisStore#reconnecting)).
///
/// Every operation (reconnecting included) is bounded by the per-operation timeout
/// (default 1 s): a stalled Redis yields [`StoreError::Timeout`] instead of hanging a
/// request.
///
/// Each operation runs in a `DEBUG` span `redis` (target `tower_stateless::store`, fields
/// `op` and `result`), a child of the deciding layer's span; no key or value is recorded
/// (see the [span table](crate#metrics-and-traces)).
///
/// # Reconnecting
///
/// A connection that Redis closes while the store holds it (Redis restarted, a proxy or
/// Redis' `timeout` dropped it while idle) is found out by the first operation sent on
/// it: nothing checks a connection before each operation, which would cost a round trip
/// every time. When that operation means the same sent twice as once, it then goes out
/// again, once, on a new connection, within the same timeout, so the first request after
/// Redis is back succeeds: `get`, `get_many`, `set`, `get_and_refresh`, `delete` (whose
/// answer may then be `false` for a key the lost send had deleted), and the session hash
/// reads with the expiry rolls they make.
///
/// The conditional writes are not sent again: `set_if_absent`, `compare_and_set`,
/// `compare_and_delete`, `gcra` and the session hash writes. A dropped connection cannot
/// tell a command that never left (the connection was already closed) from one that
/// Redis ran before the connection went, whose answer was lost; a second run of those
/// would see the first one's effect and answer otherwise (a claim found taken, a token
/// found already consumed, a request counted twice). Such a write, when it is the one
/// that finds its connection dropped, fails with [`StoreError::Unavailable`]
/// ([`may_have_applied`](StoreError::may_have_applied) is `true`), and the next
/// operation reconnects.
///
/// One operation finding its connection dropped speaks for all `pool_size` of them:
/// every connection the store opened before that moment may have died in the same
/// restart, so each slot opens a new one before its next operation (the check is one
/// atomic load per operation; the reconnect costs a handshake once per slot). After a
/// restart, only operations sent on a dead connection before any operation found the
/// drop can fail with it (e.g. requests arriving together as Redis comes back); every
/// later one goes out on a new connection, whichever slot it lands on. So a conditional
/// write that follows a read which found the restart (e.g. behind a revocation check)
/// succeeds. A connection dropped alone (a proxy's or Redis' idle `timeout`) makes the
/// others reconnect too, needlessly but harmlessly.
///
/// On a Redis Cluster, redis-rs's cluster client reconnects to a node and resends a
/// command itself; the store adds nothing there, and replaces no connection.
///
/// # Lua scripts
///
/// The atomic operations (`compare_and_set`, `compare_and_delete`, `gcra` and the hash
/// writes and reads of sessions) are Lua scripts, each called as one `EVALSHA`. The store
/// loads every script into Redis (every node of a Redis Cluster) as soon as it is built,
/// in a background task (one round trip on one Redis, which also opens the first
/// connection), so that no request pays the `NOSCRIPT` reply and the reload: operations
/// that start while that load is in flight wait for it. Await
/// [`load_scripts`](RedisStore::load_scripts) to be sure it is done, e.g. before
/// reporting ready. A script Redis no longer has (Redis restarted, failed over to a node
/// that never had it, `SCRIPT FLUSH`, or Redis was down when the store was built) is
/// loaded again by the call that finds it missing (`NOSCRIPT`, `SCRIPT LOAD`, `EVALSHA`:
/// two more round trips, once per script and server), and that call still succeeds.
///
/// # Durable writes
///
/// Redis replicates asynchronously: a write it acknowledged can vanish when the primary
/// fails before a replica got it, and a revocation or a consumed refresh token that
/// vanishes is a security hole. A store built with
/// [`replica_acks(n, wait)`](RedisStoreBuilder::replica_acks) sends every write together
/// with `WAIT n wait`, on the same connection in the same round trip, and reports the
/// write as failed ([`StoreError::NotReplicated`]) unless `n` replicas confirmed it in
/// time. Give such a store to the `Revoker` and to `RefreshTokens`, and a plain one to the
/// layers that can lose a write without harm (rate limits, sessions):
///
/// ```no_run
/// use std::time::Duration;
/// use tower_stateless::store::RedisStore;
///
/// # fn main() -> Result<(), tower_stateless::ConfigError> {
/// let store = RedisStore::from_url("redis://primary:6379")?;
/// let durable = RedisStore::builder()
///     .url("redis://primary:6379")
///     .replica_acks(1, Duration::from_millis(100))
///     .build()?;
/// # let _ = (store, durable);
/// # Ok(())
/// # }
/// ```
///
/// What it does not cover:
///
/// - `WAIT` is not strong consistency. A write reported as failed may still have been
///   applied on the primary (and may still reach the replicas): treat the failure as
///   "unknown", and retry the write, which for revocations is harmless.
/// - A failover can still lose a write confirmed by fewer replicas than the one promoted
///   needed, e.g. when the promoted replica is not one of the `n` that confirmed. Make `n`
///   large enough for your failover setup (Sentinel or Cluster promotes the most
///   up-to-date replica it can reach).
/// - `WAIT` confirms replicas received the write, not that anything reached a disk.
/// - On Redis Cluster `WAIT` counts the replicas of the primary that owns the key.
/// - While a `WAIT` waits, later operations on the same connection wait behind it: keep
///   the durable store apart from the store of the per-request layers.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_stateless::store::RedisStore;
///
/// # fn main() -> Result<(), tower_stateless::ConfigError> {
/// let store = RedisStore::builder()
///     .url("redis://127.0.0.1:6379")
///     .key_prefix("shop:")
///     .pool_size(4)
///     .timeout(Duration::from_millis(250))
///     .build()?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// The largest `pool_size` that `build` accepts: every slot is allocated up front.
const MAX_POOL_SIZE: usize = 1024;

/// `WAIT <replicas> <timeout ms>` after every write.
#[derive(Debug, Clone, Copy)]
struct ReplicaAcks {
    replicas: u32,
    wait: Duration,
}

/// One pooled connection: every operation reads it without a lock; it is (re)opened by
/// one task at a time, under `opening`.
struct Slot {
    conn: ArcSwapOption<Opened>,
    opening: Mutex<()>,
}

/// A slot's connection and the [epoch](Inner::epoch) it was opened in.
struct Opened {
    conn: Conn,
    epoch: u64,
    /// Set by the first operation to find this connection dropped: the concurrent
    /// operations that fail on it too raise the epoch no further (each raise would
    /// make the connections opened since reconnect again).
    dropped: AtomicBool,
}

impl Slot {
    /// Empties the slot if it still holds `dead` (another operation may have replaced it
    /// already), so that the next use reconnects.
    async fn discard(&self, dead: &Arc<Opened>) {
        let _opening = self.opening.lock().await;
        let held = self.conn.load();
        if held.as_ref().is_some_and(|held| Arc::ptr_eq(held, dead)) {
            self.conn.store(None);
        }
    }
}

/// Whether an operation may be sent again, once, on a new connection when the one it
/// went out on turns out to have been dropped. That error cannot tell a command that
/// never left (the connection was already dead) from one lost in flight (which Redis
/// may have run), so only operations that mean the same sent twice are resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads, and writes whose second run changes nothing and answers the same (or, for
    /// `DEL`, says the key is gone): `GET`, `MGET`, `SET .. PX`, `GETEX`, `DEL`, the
    /// session hash reads and their expiry rolls.
    Harmless,
    /// Conditional writes, whose second run would see the first one's effect and answer
    /// otherwise (`SET NX`, compare-and-set, rate-limit steps, hash writes).
    Never,
}

struct Inner {
    pool: Pools,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// How many connections operations have found dropped. A connection opened
    /// in an earlier epoch may have died in the same Redis restart without anyone having
    /// sent on it yet: its slot reconnects before its next use (see [`Opened`]).
    epoch: AtomicU64,
    prefix: String,
    /// The URL given to the builder, for connections the pool cannot make (the local
    /// cache's tracking connection). `None` for a pool or a cluster.
    url: Option<String>,
    timeout: Duration,
    replica_acks: Option<ReplicaAcks>,
    compare_and_set: Script,
    compare_and_delete: Script,
    gcra: Script,
    /// Set once every script has been loaded into Redis (see [`RedisStore::load_scripts`]).
    scripts_loaded: tokio::sync::OnceCell<()>,
    /// Open (not closed) while the script load that `build` started is in flight:
    /// operations wait for it to close. It holds no permits.
    preload: tokio::sync::Semaphore,
}

/// Closes the preload gate when the preload ends, however it ends (also when its runtime
/// drops the task).
struct ClosePreloadGate(RedisStore);

impl Drop for ClosePreloadGate {
    fn drop(&mut self) {
        self.0.inner.preload.close();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("pool_size", &self.inner.slots.len())
            .field("timeout", &self.inner.timeout)
            .field("replica_acks", &self.inner.replica_acks)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    source: Option<Source>,
    prefix: String,
    /// `None`: the default, which depends on `replica_acks`.
    pool_size: Option<usize>,
    timeout: Duration,
    replica_acks: Option<ReplicaAcks>,
}

#[derive(Clone)]
enum Source {
    Url(String),
    Pool(Pool),
    #[cfg(feature = "redis-cluster")]
    ClusterUrls(Vec<String>),
    #[cfg(feature = "redis-cluster")]
    ClusterPool(deadpool_redis::cluster::Pool),
}

/// Where connections come from: one Redis, or a Redis Cluster.
enum Pools {
    Single(Pool),
    #[cfg(feature = "redis-cluster")]
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection taken out of its pool: cheap to clone, shared by concurrent operations.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    /// Whether redis-rs itself reconnects and resends a command whose connection
    /// dropped: the cluster client does.
    fn resends_itself(&self) -> bool {
        match self {
            Self::Single(_) => false,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => true,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A URL may carry a password.
            Self::Url(_) => f.write_str("Url(<redacted>)"),
            Self::Pool(_) => f.write_str("Pool"),
            #[cfg(feature = "redis-cluster")]
            Self::ClusterUrls(urls) => write!(f, "ClusterUrls(<{} redacted>)", urls.len()),
            #[cfg(feature = "redis-cluster")]
            Self::ClusterPool(_) => f.write_str("ClusterPool"),
        }
    }
}

impl RedisStoreBuilder {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.source = Some(Source::Url(url.into()));
        self
    }

    /// Uses connections from an existing deadpool-redis pool. The store checks out up to
    /// `pool_size` connections and keeps them.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.source = Some(Source::Pool(pool));
        self
    }

    /// Connects to a Redis Cluster through the given seed nodes (any reachable subset of
    /// the cluster; the rest is discovered). Every operation stays one round trip to the
    /// node owning the key; [`get_many`](StateStore::get_many) requires keys that hash to
    /// one slot (the layers put the part they group by in a `{hash tag}`) and rejects
    /// keys that span slots with [`StoreError::Unexpected`] rather than fan out.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_urls<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.source = Some(Source::ClusterUrls(
            urls.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Uses connections from an existing deadpool-redis cluster pool.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_pool(mut self, pool: deadpool_redis::cluster::Pool) -> Self {
        self.source = Some(Source::ClusterPool(pool));
        self
    }

    /// A prefix put before every key, to share one Redis between applications (default
    /// none). It must not contain `{` or `}`, which would break the layers' hash tags.
    /// The layers add their own prefix (also set with `.key_prefix(..)`) after this one.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many multiplexed connections to keep (at most 1024). Each carries any number of
    /// concurrent operations, pipelined.
    ///
    /// Default: **1**, or **4** with [`replica_acks`](Self::replica_acks). One connection
    /// is what redis-rs recommends and what costs least: the operations of concurrent
    /// requests go out and come back in shared writes and reads, fewer system calls on
    /// both sides (measured in PERFORMANCE.md: a session read went from 0.78–0.86× to
    /// 0.94–0.95× of tower-sessions' throughput; Redis serves one connection as fast as
    /// several, it runs commands one at a time either way). Replies on one connection
    /// come back in order, so one slow reply holds up the ones behind it: a store with
    /// `replica_acks` sends `WAIT`, which holds its connection until the replicas
    /// answer, hence four there. Raise it if your operations move large values.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// The upper bound on one operation, reconnecting included (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Makes every write wait until `replicas` replicas have confirmed it, for at most
    /// `wait` (Redis `WAIT`, sent with the write in the same round trip); a write they do
    /// not confirm in time fails with [`StoreError::NotReplicated`]. `get` and `get_many`
    /// do not wait; `get_and_refresh` does, since it writes a new expiry time.
    /// Off by default. See [durable writes](RedisStore#durable-writes) for what this
    /// covers and what it does not.
    ///
    /// `replicas` must be at least 1, and `wait` at least 1 ms (Redis rounds to
    /// milliseconds, and `WAIT` with 0 would block for ever) and shorter than the
    /// [`timeout`](Self::timeout), so that a missing confirmation is reported as such.
    /// With a [`pool`](Self::pool) or a cluster of your own, the redis-rs reply timeout of
    /// its connections (500 ms by default) must be longer than `wait` too.
    pub fn replica_acks(mut self, replicas: u32, wait: Duration) -> Self {
        self.replica_acks = Some(ReplicaAcks { replicas, wait });
        self
    }

    /// Builds the store. It never waits for Redis, so a Redis that is down at start-up
    /// does not stop the service from starting. Called inside a Tokio runtime, it starts
    /// [`load_scripts`](RedisStore::load_scripts) in a background task, which also opens
    /// the first connection; see [Lua scripts](RedisStore#lua-scripts).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the setting: `url` when no URL or pool was given or the URL
    /// is invalid (`cluster_urls` when the list is empty), `pool_size` when it is 0 or
    /// above 1024, `timeout` when it is zero, `key_prefix` when it contains a brace,
    /// `replica_acks` when its values cannot work (see there).
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        let pool_size = self
            .pool_size
            .unwrap_or(if self.replica_acks.is_some() { 4 } else { 1 });
        if pool_size == 0 || pool_size > MAX_POOL_SIZE {
            return Err(ConfigError::new("pool_size", "must be between 1 and 1024"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be longer than zero"));
        }
        crate::config::check_key_prefix(&self.prefix)?;
        if let Some(acks) = self.replica_acks {
            if acks.replicas == 0 {
                return Err(ConfigError::new(
                    "replica_acks",
                    "the number of replicas must be at least 1",
                ));
            }
            if acks.wait < Duration::from_millis(1) {
                return Err(ConfigError::new(
                    "replica_acks",
                    "the wait must be at least 1 ms (WAIT 0 blocks for ever)",
                ));
            }
            if acks.wait >= self.timeout {
                return Err(ConfigError::new(
                    "replica_acks",
                    "the wait must be shorter than the store's timeout",
                ));
            }
        }
        let url = match &self.source {
            Some(Source::Url(url)) => Some(url.clone()),
            _ => None,
        };
        let pool = match self.source {
            Some(Source::Pool(pool)) => Pools::Single(pool),
            Some(Source::Url(url)) => {
                // The store bounds every operation with its own `timeout`; redis-rs's own
                // per-reply timeout (500 ms by default) would cut a longer `timeout` or
                // `WAIT` short, as a dropped connection.
                let connection = AsyncConnectionConfig::new().set_response_timeout(None);
                let manager = Manager::new_with_config(url.as_str(), connection)
                    .map_err(|e| ConfigError::new("url", bad_url(&url, &e)))?;
                let pool = Pool::builder(manager)
                    .max_size(pool_size)
                    .runtime(Runtime::Tokio1)
                    .build();
                Pools::Single(pool.map_err(|e| ConfigError::new("url", e.to_string()))?)
            }
            #[cfg(feature = "redis-cluster")]
            Some(Source::ClusterPool(pool)) => Pools::Cluster(pool),
            #[cfg(feature = "redis-cluster")]
            Some(Source::ClusterUrls(urls)) => {
                if urls.is_empty() {
                    return Err(ConfigError::new(
                        "cluster_urls",
                        "at least one cluster node URL is required",
                    ));
                }
                let mut config = deadpool_redis::cluster::Config::from_urls(urls);
                config.pool = Some(deadpool_redis::PoolConfig::new(pool_size));
                let pool = config.create_pool(Some(Runtime::Tokio1));
                Pools::Cluster(pool.map_err(|e| ConfigError::new("cluster_urls", e.to_string()))?)
            }
            None => {
                return Err(ConfigError::new("url", "a Redis URL or pool is required"));
            }
        };
        let slots = (0..pool_size)
            .map(|_| Slot {
                conn: ArcSwapOption::empty(),
                opening: Mutex::new(()),
            })
            .collect();
        let store = RedisStore {
            inner: Arc::new(Inner {
                pool,
                slots,
                next: AtomicUsize::new(0),
                epoch: AtomicU64::new(0),
                prefix: self.prefix,
                url,
                timeout: self.timeout,
                replica_acks: self.replica_acks,
                compare_and_set: Script::new(COMPARE_AND_SET),
                compare_and_delete: Script::new(COMPARE_AND_DELETE),
                gcra: Script::new(GCRA),
                scripts_loaded: tokio::sync::OnceCell::new(),
                preload: tokio::sync::Semaphore::new(0),
            }),
        };
        // Load the scripts now, so that the first call of each is already one `EVALSHA`;
        // operations that start meanwhile wait for it (one round trip, which also opens
        // a connection they would have waited for). Outside a runtime (or with Redis
        // down) each script loads on first use instead.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let gate = ClosePreloadGate(store.clone());
                runtime.spawn(async move {
                    let preload = &gate.0;
                    if let Err(error) = preload.load_scripts().await {
                        tracing::debug!(
                            error = &error as &dyn std::error::Error,
                            "RedisStore: Lua scripts not loaded at build; each loads on first use"
                        );
                    }
                });
            }
            Err(_) => store.inner.preload.close(),
        }
        Ok(store)
    }
}

impl RedisStore {
    /// A builder with the defaults: no prefix, one connection (four with
    /// [`replica_acks`](RedisStoreBuilder::replica_acks)), 1 s timeout.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder {
            source: None,
            prefix: String::new(),
            pool_size: None,
            timeout: Duration::from_secs(1),
            replica_acks: None,
        }
    }

    /// A store on the Redis at `url` with the defaults.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::build`].
    pub fn from_url(url: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder().url(url).build()
    }

    /// Loads every Lua script of the store into Redis (every node of a Redis Cluster), so
    /// that the first call of each is one `EVALSHA`; bounded by the store's timeout.
    ///
    /// [`build`](RedisStoreBuilder::build) starts this in the background: awaiting it
    /// waits for that load, or loads the scripts now if it failed (Redis was down) or
    /// never ran (the store was built outside a Tokio runtime). Once a load has
    /// succeeded, this returns at once: a script Redis loses later is reloaded by its
    /// next call (see [Lua scripts](RedisStore#lua-scripts)). Operations wait only for
    /// the load `build` started, never for one started here.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] of the load, e.g. [`StoreError::Unavailable`] while Redis is
    /// down; the store works regardless, loading each script on first use.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        self.inner
            .scripts_loaded
            .get_or_try_init(|| async {
                // Every script of this store, the hash scripts included.
                let scripts = [
                    &self.inner.compare_and_set,
                    &self.inner.compare_and_delete,
                    &self.inner.gcra,
                    &*hash::DROP_EXPIRED,
                    &*hash::ROLL,
                    &*hash::WRITE,
                ];
                // `SCRIPT LOAD` again is harmless.
                self.run_after(false, None, Resend::Harmless, |mut conn| async move {
                    match conn {
                        // One round trip.
                        Conn::Single(ref mut single) => {
                            let mut pipe = redis::pipe();
                            for script in scripts {
                                pipe.load_script(script).ignore();
                            }
                            pipe.exec_async(single).await
                        }
                        // `SCRIPT LOAD` goes to every node; one round trip per script.
                        #[cfg(feature = "redis-cluster")]
                        Conn::Cluster(ref mut cluster) => {
                            for script in scripts {
                                script.load_async(cluster).await?;
                            }
                            Ok(())
                        }
                    }
                })
                .await
            })
            .await?;
        Ok(())
    }

    /// The key prefix in use.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The URL the store was built with (`None` when built from a pool or a cluster).
    pub(crate) fn url(&self) -> Option<&str> {
        self.inner.url.as_deref()
    }

    /// Whether the store talks to a Redis Cluster.
    #[cfg_attr(not(feature = "redis-cluster"), allow(clippy::unused_self))]
    pub(crate) fn is_cluster(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        if matches!(self.inner.pool, Pools::Cluster(_)) {
            return true;
        }
        false
    }

    /// The full key as one command argument, written straight into the command: no
    /// `String` per key.
    fn arg<'a>(&'a self, key: &'a str) -> FullKey<'a> {
        FullKey {
            prefix: &self.inner.prefix,
            key,
        }
    }

    fn key_len(&self, key: &str) -> usize {
        self.inner.prefix.len() + key.len()
    }

    #[cfg(feature = "redis-cluster")]
    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.inner.prefix.len() + key.len());
        full.push_str(&self.inner.prefix);
        full.push_str(key);
        full
    }

    /// Runs `op` on a pooled connection within the timeout, in a `redis` span for the
    /// store operation `what`. A connection found dropped is replaced and `op` sent again
    /// once on the new one when `resend` allows it; an unavailable error drops the
    /// connection so that the slot reconnects next time.
    async fn run<T, F, Fut>(&self, what: StoreOp, resend: Resend, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.run_after(true, Some(what), resend, op).await
    }

    /// [`run`](Self::run), waiting first (when `after_preload`) for the script load that
    /// `build` started, if it is still in flight; in a `redis` span when `what` names a
    /// store operation (the script load itself is none).
    async fn run_after<T, F, Fut>(
        &self,
        after_preload: bool,
        what: Option<StoreOp>,
        resend: Resend,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let slot = &self.inner.slots[slot];
        let attempt = async {
            // Only the first operations find the gate open; closed, it is one atomic load.
            if after_preload && !self.inner.preload.is_closed() {
                // Never gets a permit: returns when the preload closes the gate.
                let _ = self.inner.preload.acquire().await;
            }
            // Without a connection nothing was sent: the operation cannot have applied.
            let conn = self.connection(slot).await.map_err(StoreError::not_sent)?;
            match op(Conn::clone(&conn.conn)).await {
                // The connection died while the slot held it (Redis restarted, a proxy
                // cut it): redis-rs notices only when a command fails on it. Costs nothing
                // until then: no check before each operation.
                Err(e) if e.is_connection_dropped() && !conn.conn.resends_itself() => {
                    // The other slots' connections may have died with this one: each
                    // reconnects before its next send instead of finding out with it.
                    if !conn.dropped.swap(true, Ordering::Relaxed) {
                        self.inner.epoch.fetch_add(1, Ordering::Relaxed);
                    }
                    if resend == Resend::Never {
                        return Err(classify(e));
                    }
                    tracing::debug!(
                        error = &e as &dyn std::error::Error,
                        "RedisStore: connection dropped; sending again on a new one"
                    );
                    slot.discard(&conn).await;
                    // Not `not_sent`: the first send may have applied.
                    let conn = self.connection(slot).await?;
                    op(Conn::clone(&conn.conn)).await.map_err(classify)
                }
                other => other.map_err(classify),
            }
        };
        let span = what.map_or_else(tracing::Span::none, |what| store_span!("redis", what));
        let timed = tokio::time::timeout(self.inner.timeout, attempt);
        let result = match timed.instrument(span.clone()).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.inner.timeout)),
        };
        StoreResult::of(&result).record(&span);
        if matches!(&result, Err(e) if e.is_unavailable()) {
            // Drop a connection that may be broken or half-open; the next use reconnects.
            if let Ok(_opening) = slot.opening.try_lock() {
                slot.conn.store(None);
            }
        }
        result
    }

    /// The slot's connection; opens it when there is none, or when it was opened before
    /// the last time an operation found its connection dropped. No lock and no await
    /// when it is open (every operation comes here), only one atomic load: concurrent
    /// operations do not queue behind each other for a clone of the handle.
    async fn connection(&self, slot: &Slot) -> Result<Arc<Opened>, StoreError> {
        // Relaxed: the epoch guards no other data, and an operation that starts after
        // the one that raised it returned sees the raise.
        let epoch = self.inner.epoch.load(Ordering::Relaxed);
        if let Some(conn) = slot.conn.load_full() {
            if conn.epoch >= epoch {
                return Ok(conn);
            }
        }
        // Boxed: opening a connection is a large future, which the common case must not
        // carry.
        Box::pin(self.open(slot, epoch)).await
    }

    /// Opens the slot's connection, unless another operation has opened one in `epoch`
    /// or later meanwhile.
    async fn open(&self, slot: &Slot, epoch: u64) -> Result<Arc<Opened>, StoreError> {
        let _opening = slot.opening.lock().await;
        if let Some(conn) = slot.conn.load_full() {
            if conn.epoch >= epoch {
                return Ok(conn);
            }
        }
        // Read before connecting: a drop found while this connects makes the new
        // connection suspect too (one reconnect too many at worst, never one too few).
        let epoch = self.inner.epoch.load(Ordering::Relaxed);
        // Taken out of the pool for good: never recycled, so never pinged.
        let conn = match &self.inner.pool {
            Pools::Single(pool) => Conn::Single(Connection::take(
                pool.get().await.map_err(|e| self.pool_error(e))?,
            )),
            #[cfg(feature = "redis-cluster")]
            Pools::Cluster(pool) => Conn::Cluster(deadpool_redis::cluster::Connection::take(
                pool.get().await.map_err(|e| self.pool_error(e))?,
            )),
        };
        let conn = Arc::new(Opened {
            conn,
            epoch,
            dropped: AtomicBool::new(false),
        });
        slot.conn.store(Some(Arc::clone(&conn)));
        Ok(conn)
    }

    fn pool_error(&self, err: PoolError) -> StoreError {
        match err {
            PoolError::Backend(e) => classify(e),
            PoolError::Timeout(_) => StoreError::Timeout(self.inner.timeout),
            other => StoreError::Unavailable(other.into()),
        }
    }

    /// On a cluster, refuses a multi-key read over several hash slots: it would be a
    /// round trip per node, and not atomic.
    #[cfg_attr(not(feature = "redis-cluster"), allow(clippy::unused_self))]
    fn check_one_slot(&self, keys: &[&str]) -> Result<(), StoreError> {
        #[cfg(feature = "redis-cluster")]
        if matches!(self.inner.pool, Pools::Cluster(_)) {
            let mut slots = keys.iter().map(|k| hash_slot(&self.key(k)));
            if let Some(first) = slots.next() {
                if slots.any(|s| s != first) {
                    return Err(StoreError::Unexpected(
                        "get_many on Redis Cluster needs keys in one hash slot: share a {hash tag}"
                            .into(),
                    ));
                }
            }
        }
        let _ = keys;
        Ok(())
    }
}

fn classify(err: RedisError) -> StoreError {
    let unavailable = err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || err.is_cluster_error()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        );
    if unavailable {
        StoreError::Unavailable(err.into())
    } else {
        StoreError::Unexpected(err.into())
    }
}

/// Why a Redis URL was refused, naming what is expected when the scheme is not Redis'.
/// The URL itself is not repeated: it may hold a password.
fn bad_url(url: &str, error: &redis::RedisError) -> String {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if matches!(
        scheme,
        "redis" | "rediss" | "unix" | "redis+unix" | "valkey" | "valkeys"
    ) {
        error.to_string()
    } else {
        format!(
            "not a Redis URL (scheme {scheme:?}): expected redis://host:6379/0, rediss:// \
             for TLS, or unix:///path/to/redis.sock ({error})"
        )
    }
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole
/// key when it has no non-empty `{...}`, modulo 16384.
#[cfg(feature = "redis-cluster")]
pub(crate) fn hash_slot(key: &str) -> u16 {
    const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    let hashed = super::hash_tag(key).unwrap_or(key);
    CRC16.checksum(hashed.as_bytes()) % 16384
}

/// A command sized up front for `args` more arguments of `bytes` bytes in all, so that
/// building it allocates its two buffers once instead of growing them.
fn command(name: &'static str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(1 + args, name.len() + bytes);
    cmd.arg(name);
    cmd
}

/// Bytes of a number argument at most (`u64::MAX` has 20 digits).
const NUMBER: usize = 20;

/// The store's prefix and a layer's key: one command argument.
struct FullKey<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl ToRedisArgs for FullKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writes into the command's own buffer, which cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        let _ = arg.write_all(self.key.as_bytes());
    }

    fn num_of_args(&self) -> usize {
        1
    }
}

/// What one operation sends: a command or a script call.
enum Call<'a> {
    Cmd(Cmd),
    Script(ScriptCall<'a>),
}

/// A script call, built as one `EVALSHA` command. redis-rs's `ScriptInvocation` keeps a
/// vector per argument and copies them all into a command again on every call; this
/// writes each argument once, into one buffer. The script is loaded (`SCRIPT LOAD`) when
/// Redis answers `NOSCRIPT`, as `ScriptInvocation` does.
pub(super) struct ScriptCall<'a> {
    script: &'a Script,
    cmd: Cmd,
}

impl<'a> ScriptCall<'a> {
    /// `EVALSHA` of `script` with its one key; [`arg`](Self::arg) adds the arguments.
    pub(super) fn new(script: &'a Script, key: impl ToRedisArgs) -> Self {
        let mut cmd = Cmd::with_capacity(16, 256);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
        Self { script, cmd }
    }

    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    async fn load(&self, conn: &mut Conn) -> Result<(), RedisError> {
        self.script.prepare_invoke().load_async(conn).await?;
        Ok(())
    }
}

impl Call<'_> {
    async fn query<T: FromRedisValue>(&self, conn: &mut Conn) -> Result<T, RedisError> {
        match self {
            Call::Cmd(cmd) => cmd.query_async(conn).await,
            Call::Script(call) => match call.cmd.query_async(conn).await {
                // The script was not run, so nothing was written: load it, send again.
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call.load(conn).await?;
                    call.cmd.query_async(conn).await
                }
                other => other,
            },
        }
    }

    /// Sends the call and `WAIT` in one pipeline: one round trip, and `WAIT` runs on the
    /// same connection right after the write. Returns the reply and how many replicas
    /// confirmed.
    async fn query_and_wait<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        acks: ReplicaAcks,
    ) -> Result<(T, i64), RedisError> {
        let wait_ms = u64::try_from(acks.wait.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        match self {
            Call::Cmd(cmd) => pipe.add_command(cmd.clone()),
            Call::Script(call) => pipe.add_command(call.cmd.clone()),
        };
        pipe.cmd("WAIT").arg(acks.replicas).arg(wait_ms);
        // Errors come back as values, so that a script not yet loaded can be told apart.
        pipe.ignore_errors();
        let mut loaded = false;
        loop {
            let replies: Vec<Value> = pipe.query_async(conn).await?;
            let [reply, acked]: [Value; 2] = replies.try_into().map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "a pipeline of two commands must have two replies",
                ))
            })?;
            let acked: i64 = redis::from_redis_value(acked.extract_error()?)?;
            match reply.extract_error() {
                Ok(reply) => return Ok((redis::from_redis_value(reply)?, acked)),
                // The script was not run, so nothing was written: load it, send again.
                Err(e) if !loaded && e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    if let Call::Script(call) = self {
                        call.load(conn).await?;
                    }
                    loaded = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl RedisStore {
    /// Runs a call that writes. With [`replica_acks`](RedisStoreBuilder::replica_acks),
    /// `WAIT` goes with it, and too few confirmations are [`StoreError::NotReplicated`].
    /// `resend` says whether it may go out again on a new connection (see [`Resend`]).
    async fn write<T: FromRedisValue>(
        &self,
        what: StoreOp,
        resend: Resend,
        call: Call<'_>,
    ) -> Result<T, StoreError> {
        let call = &call;
        let Some(acks) = self.inner.replica_acks else {
            return self
                .run(what, resend, |mut conn| async move {
                    call.query(&mut conn).await
                })
                .await;
        };
        let (reply, acked) = self
            .run(what, resend, |mut conn| async move {
                call.query_and_wait(&mut conn, acks).await
            })
            .await?;
        if acked < i64::from(acks.replicas) {
            return Err(StoreError::NotReplicated {
                required: acks.replicas,
                acknowledged: u32::try_from(acked).unwrap_or(0),
            });
        }
        Ok(reply)
    }

    /// Runs a call that only reads; it goes out again on a new connection when its own
    /// turns out dropped.
    async fn read<T: FromRedisValue>(
        &self,
        what: StoreOp,
        call: Call<'_>,
    ) -> Result<T, StoreError> {
        let call = &call;
        self.run(what, Resend::Harmless, |mut conn| async move {
            call.query(&mut conn).await
        })
        .await
    }

    fn script_call<'a>(&self, script: &'a Script, key: &str) -> ScriptCall<'a> {
        ScriptCall::new(script, self.arg(key))
    }
}

impl StateStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut cmd = command("GET", 1, self.key_len(key));
        cmd.arg(self.arg(key));
        self.read(StoreOp::Get, Call::Cmd(cmd)).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.check_one_slot(keys)?;
        let bytes = keys.iter().map(|k| self.key_len(k)).sum();
        let mut cmd = command("MGET", keys.len(), bytes);
        for key in keys {
            cmd.arg(self.arg(key));
        }
        self.read(StoreOp::GetMany, Call::Cmd(cmd)).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl_millis(ttl)?;
        let mut cmd = command("SET", 4, self.key_len(key) + value.len() + 2 + NUMBER);
        cmd.arg(self.arg(key)).arg(value.as_ref()).arg("PX").arg(ms);
        self.write(StoreOp::Set, Resend::Harmless, Call::Cmd(cmd))
            .await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let ms = ttl_millis(ttl)?;
        let mut cmd = command("SET", 6, self.key_len(key) + value.len() + 7 + NUMBER);
        cmd.arg(self.arg(key))
            .arg(value.as_ref())
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ms);
        self.write(StoreOp::SetIfAbsent, Resend::Never, Call::Cmd(cmd))
            .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ms = ttl_millis(ttl)?;
        let mut call = self.script_call(&self.inner.compare_and_set, key);
        call.arg(expected).arg(new.as_ref()).arg(ms);
        self.write::<i64>(StoreOp::CompareAndSet, Resend::Never, Call::Script(call))
            .await
            .map(|n| n == 1)
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let mut call = self.script_call(&self.inner.compare_and_delete, key);
        call.arg(expected);
        self.write::<i64>(StoreOp::CompareAndDelete, Resend::Never, Call::Script(call))
            .await
            .map(|n| n == 1)
    }

    async fn get_and_refresh(&self, key: &str, ttl: Duration) -> Result<Option<Bytes>, StoreError> {
        let ms = ttl_millis(ttl)?;
        let mut cmd = command("GETEX", 3, self.key_len(key) + 2 + NUMBER);
        cmd.arg(self.arg(key)).arg("PX").arg(ms);
        // It writes a new expiry time.
        self.write(StoreOp::GetAndRefresh, Resend::Harmless, Call::Cmd(cmd))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut cmd = command("DEL", 1, self.key_len(key));
        cmd.arg(self.arg(key));
        self.write::<i64>(StoreOp::Delete, Resend::Harmless, Call::Cmd(cmd))
            .await
            .map(|n| n == 1)
    }

    async fn hash_get_all_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        self.hash_read_refresh(key, ttl).await
    }

    async fn hash_get_all_and_refresh_lazily(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        self.hash_read_lazily(key, ttl, every).await
    }

    async fn hash_apply(
        &self,
        key: &str,
        changes: &HashChanges,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        self.hash_write_changes(key, changes, options).await
    }

    async fn hash_compare_and_set_field(
        &self,
        key: &str,
        field: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        self.hash_swap_field(key, field, expected, new, options)
            .await
    }

    async fn gcra(&self, key: &str, params: Gcra) -> Result<GcraOutcome, StoreError> {
        let params = params.params();
        let mut numbers = [0; 32];
        let values = [params.interval, params.burst, params.cost, MAX_WINDOW_NANOS];
        put_doubles(&mut numbers, values.map(|v| v as f64));
        let mut call = self.script_call(&self.inner.gcra, key);
        call.arg(&numbers[..]);
        let (allowed, remaining, retry_after, reset_after): (i64, i64, i64, i64) = self
            .write(StoreOp::Gcra, Resend::Never, Call::Script(call))
            .await?;
        let nanos = |ns: i64| Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
        Ok(GcraOutcome {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: nanos(retry_after),
            reset_after: nanos(reset_after),
        })
    }
}

#[cfg(all(test, feature = "redis-cluster"))]
mod tests {
    use super::hash_slot;

    #[test]
    fn hash_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on a real server.
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("bar"), 5061);
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("{}foo"), 9500);
        assert_eq!(hash_slot("{user1000}.following"), 3443);
        assert_eq!(hash_slot("a{user1000}b{x}"), hash_slot("user1000"));
    }
}
