use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, aio::MultiplexedConnection, RedisError, Script};
use deadpool_redis::{Config, Connection, Pool, PoolError, Runtime};
use tokio::sync::Mutex;

use super::{ttl_millis, StateStore, StoreError};

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
    pool: Pool,
    slots: Box<[Mutex<Option<MultiplexedConnection>>]>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    compare_and_set: Script,
    compare_and_delete: Script,
    increment: Script,
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
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A URL may carry a password.
            Self::Url(_) => f.write_str("Url(<redacted>)"),
            Self::Pool(_) => f.write_str("Pool"),
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
        let pool = match self.source {
            Some(Source::Pool(pool)) => pool,
            Some(Source::Url(url)) => {
                let mut config = Config::from_url(url);
                config.pool = Some(deadpool_redis::PoolConfig::new(self.pool_size));
                config
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| StoreError::Unexpected(e.into()))?
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
                timeout: self.timeout,
                compare_and_set: Script::new(COMPARE_AND_SET),
                compare_and_delete: Script::new(COMPARE_AND_DELETE),
                increment: Script::new(INCREMENT),
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
        F: FnOnce(MultiplexedConnection) -> Fut,
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

    async fn connection(
        &self,
        slot: &Mutex<Option<MultiplexedConnection>>,
    ) -> Result<MultiplexedConnection, StoreError> {
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let pooled = self.inner.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => classify(e),
            PoolError::Timeout(_) => StoreError::Timeout(self.inner.timeout),
            other => StoreError::Unavailable(other.into()),
        })?;
        // Taken out of the pool for good: never recycled, so never pinged.
        let conn = Connection::take(pooled);
        *guard = Some(conn.clone());
        Ok(conn)
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
}
