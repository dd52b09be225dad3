use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::{self, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use deadpool_redis::{Config, Connection, Pool, PoolError, Runtime};
use tokio::sync::Mutex;

use super::{ttl_millis, Gcra, GcraOutcome, StateStore, StoreError};

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

const INCREMENT: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v";

// The same arithmetic as `gcra::step`, on the server's clock. Lua numbers are doubles:
// exact for millisecond timestamps.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = tonumber(stored)
  if not tat then return redis.error_reply('rate-limit state is not a number') end
  if tat < now then tat = now end
end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', new_tat - now))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}";

/// A [`StateStore`] on Redis (7.0 or later), through deadpool-redis.
///
/// Each operation is exactly one round trip. deadpool-redis's pool sends a `PING` every
/// time it hands out a recycled connection, which would double the round trips; so this
/// store checks connections *out* of the pool once and keeps them: each of its
/// `pool_size` slots holds one multiplexed connection, which any number of concurrent
/// operations share. A connection that fails is dropped and its slot reconnects on the
/// next use, so the store works again as soon as Redis is back, without a restart.
///
/// Every operation (reconnecting included) is bounded by the per-operation timeout
/// (default 1 s): a stalled Redis yields [`StoreError::Timeout`] instead of hanging a
/// request.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use tower_stateless::store::RedisStore;
///
/// # fn main() -> Result<(), tower_stateless::store::StoreError> {
/// let store = RedisStore::builder()
///     .url("redis://127.0.0.1:6379")
///     .prefix("shop:")
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

struct Inner {
    pool: Pools,
    slots: Box<[Mutex<Option<Conn>>]>,
    next: AtomicUsize,
    prefix: String,
    /// The URL given to the builder, for connections the pool cannot make (the local
    /// cache's tracking connection). `None` for a pool or a cluster.
    url: Option<String>,
    timeout: Duration,
    compare_and_set: Script,
    compare_and_delete: Script,
    increment: Script,
    gcra: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("pool_size", &self.inner.slots.len())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    source: Option<Source>,
    prefix: String,
    pool_size: usize,
    timeout: Duration,
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
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many multiplexed connections to keep (default 4). Each carries any number of
    /// concurrent operations; more than a few rarely helps.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The upper bound on one operation, reconnecting included (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the store. It connects lazily, on the first operation, so a Redis that is
    /// down at start-up does not stop the service from starting.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unexpected`] when no URL or pool was given, the URL is invalid, the
    /// pool size or timeout is zero, or the prefix contains a brace.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let invalid = |msg: &str| StoreError::Unexpected(msg.to_owned().into());
        if self.pool_size == 0 {
            return Err(invalid("pool_size must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout must be greater than zero"));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(invalid("key prefix must not contain '{' or '}'"));
        }
        let url = match &self.source {
            Some(Source::Url(url)) => Some(url.clone()),
            _ => None,
        };
        let pool = match self.source {
            Some(Source::Pool(pool)) => Pools::Single(pool),
            Some(Source::Url(url)) => {
                let mut config = Config::from_url(url);
                config.pool = Some(deadpool_redis::PoolConfig::new(self.pool_size));
                Pools::Single(
                    config
                        .create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| StoreError::Unexpected(e.into()))?,
                )
            }
            #[cfg(feature = "redis-cluster")]
            Some(Source::ClusterPool(pool)) => Pools::Cluster(pool),
            #[cfg(feature = "redis-cluster")]
            Some(Source::ClusterUrls(urls)) => {
                if urls.is_empty() {
                    return Err(invalid("at least one cluster node URL is required"));
                }
                let mut config = deadpool_redis::cluster::Config::from_urls(urls);
                config.pool = Some(deadpool_redis::PoolConfig::new(self.pool_size));
                Pools::Cluster(
                    config
                        .create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| StoreError::Unexpected(e.into()))?,
                )
            }
            None => return Err(invalid("a Redis URL or pool is required")),
        };
        let slots = (0..self.pool_size).map(|_| Mutex::new(None)).collect();
        Ok(RedisStore {
            inner: Arc::new(Inner {
                pool,
                slots,
                next: AtomicUsize::new(0),
                prefix: self.prefix,
                url,
                timeout: self.timeout,
                compare_and_set: Script::new(COMPARE_AND_SET),
                compare_and_delete: Script::new(COMPARE_AND_DELETE),
                increment: Script::new(INCREMENT),
                gcra: Script::new(GCRA),
            }),
        })
    }
}

impl RedisStore {
    /// A builder with the defaults: no prefix, 4 connections, 1 s timeout.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder {
            source: None,
            prefix: String::new(),
            pool_size: 4,
            timeout: Duration::from_secs(1),
        }
    }

    /// A store on the Redis at `url` with the defaults.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::build`].
    pub fn from_url(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder().url(url).build()
    }

    /// The key prefix in use.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The URL the store was built with (`None` when built from a pool or a cluster).
    pub(crate) fn url(&self) -> Option<&str> {
        self.inner.url.as_deref()
    }

    /// Whether the store talks to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        if matches!(self.inner.pool, Pools::Cluster(_)) {
            return true;
        }
        false
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.inner.prefix.len() + key.len());
        full.push_str(&self.inner.prefix);
        full.push_str(key);
        full
    }

    /// Runs `op` on a pooled connection within the timeout. An unavailable error drops
    /// the connection so that the slot reconnects next time.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let slot = &self.inner.slots[slot];
        let attempt = async {
            let conn = self.connection(slot).await?;
            op(conn).await.map_err(classify)
        };
        let result = match tokio::time::timeout(self.inner.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.inner.timeout)),
        };
        if matches!(&result, Err(e) if e.is_unavailable()) {
            // Drop a connection that may be broken or half-open; the next use reconnects.
            if let Ok(mut guard) = slot.try_lock() {
                *guard = None;
            }
        }
        result
    }

    async fn connection(&self, slot: &Mutex<Option<Conn>>) -> Result<Conn, StoreError> {
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
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
        *guard = Some(conn.clone());
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
    fn check_one_slot(&self, keys: &[String]) -> Result<(), StoreError> {
        #[cfg(feature = "redis-cluster")]
        if matches!(self.inner.pool, Pools::Cluster(_)) {
            let mut slots = keys.iter().map(|k| hash_slot(k));
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
    use redis::{ErrorKind, ServerErrorKind};
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

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole
/// key when it has no non-empty `{...}`, modulo 16384.
#[cfg(feature = "redis-cluster")]
pub(crate) fn hash_slot(key: &str) -> u16 {
    const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    let hashed = super::hash_tag(key).unwrap_or(key);
    CRC16.checksum(hashed.as_bytes()) % 16384
}

fn to_bytes(value: Option<Vec<u8>>) -> Option<Bytes> {
    value.map(Bytes::from)
}

impl StateStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let key = self.key(key);
        self.run(|mut conn| async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
        .map(to_bytes)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.check_one_slot(&keys)?;
        let values = self
            .run(|mut conn| async move {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .await
            })
            .await?;
        Ok(values.into_iter().map(to_bytes).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(key);
        self.run(|mut conn| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(key);
        self.run(|mut conn| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value.as_ref())
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ms)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
        .map(to_bytes)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(key);
        let script = &self.inner.compare_and_set;
        self.run(|mut conn| async move {
            script
                .key(&key)
                .arg(expected)
                .arg(new.as_ref())
                .arg(ms)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|n| n == 1)
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let key = self.key(key);
        let script = &self.inner.compare_and_delete;
        self.run(|mut conn| async move {
            script
                .key(&key)
                .arg(expected)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|n| n == 1)
    }

    async fn get_and_refresh(&self, key: &str, ttl: Duration) -> Result<Option<Bytes>, StoreError> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(key);
        self.run(|mut conn| async move {
            redis::cmd("GETEX")
                .arg(&key)
                .arg("PX")
                .arg(ms)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await
        .map(to_bytes)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = self.key(key);
        self.run(|mut conn| async move {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|n| n == 1)
    }

    async fn increment(&self, key: &str, by: i64, ttl: Duration) -> Result<i64, StoreError> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(key);
        let script = &self.inner.increment;
        self.run(|mut conn| async move {
            script
                .key(&key)
                .arg(by)
                .arg(ms)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
    }

    async fn gcra(&self, key: &str, params: Gcra) -> Result<GcraOutcome, StoreError> {
        let (interval, burst, cost) = params.millis();
        let key = self.key(key);
        let script = &self.inner.gcra;
        let (allowed, remaining, retry_after, reset_after) = self
            .run(|mut conn| async move {
                script
                    .key(&key)
                    .arg(interval)
                    .arg(burst)
                    .arg(cost)
                    .invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                    .await
            })
            .await?;
        let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Ok(GcraOutcome {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: millis(retry_after),
            reset_after: millis(reset_after),
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
