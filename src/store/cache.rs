//! [`LocalCache`]: an in-process cache of store reads that Redis keeps honest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    Gcra, GcraOutcome, HashChanges, HashWriteOptions, HashWriteOutcome, RedisStore, StateStore,
    StoreError, StoredHash,
};
use crate::metrics::LocalCacheRead;
use crate::ConfigError;

/// The client name of the tracking connection, as `CLIENT LIST` shows it.
pub const TRACKING_CLIENT_NAME: &str = "tower-stateless-cache";

/// Bytes counted per entry on top of its key and value.
const ENTRY_OVERHEAD: usize = 64;

/// A [`StateStore`] that serves reads of chosen key prefixes from an in-process cache
/// which Redis invalidates (opt-in): revocation checks, and session reads of a
/// [`SessionLayer`](crate::session::SessionLayer) with
/// [`cached_reads`](crate::session::SessionLayer::cached_reads).
///
/// A revocation check reads the same few keys (the token's `jti`, its session, its
/// subject) on every request, and they almost never change: nearly always the answer is
/// "absent, not revoked". [`LocalCache`] wraps a [`RedisStore`] and answers
/// [`get`](StateStore::get) and [`get_many`](StateStore::get_many) for keys under the
/// prefixes you name from memory, absent keys included, with **no round trip**. It also
/// answers [`hash_get_all_cached`](StateStore::hash_get_all_cached) (a session read) from
/// memory when its copy of the hash carries the write tag the read names (see below).
/// Every other operation, and every read of a key outside those prefixes, goes to the
/// store unchanged.
///
/// # How it stays correct
///
/// - **Redis invalidates.** Each `LocalCache` keeps one dedicated RESP3 connection with
///   server-assisted client-side caching in broadcast mode (`CLIENT TRACKING on BCAST
///   PREFIX <store prefix + cache prefix>...`): whenever any client changes, deletes or
///   expires a key under those prefixes, Redis pushes the key name, and the entry is
///   dropped. After `revoke_*` returns on instance A, instance B refuses the token as soon
///   as that push reaches it (measured: see `examples/cache_latency.rs` and
///   PERFORMANCE.md).
/// - **Writes through the wrapper invalidate at once**, before they return, on this
///   instance.
/// - **No stale insert.** A read that raced with an invalidation does not cache what it
///   read: the cache has one generation counter that every invalidation, every local
///   write and every loss or recovery of the tracking connection advances; a value read
///   from the store is cached only if the generation did not move while it was read (and
///   is dropped again if it moved while it was inserted). Every entry also records the
///   flush it was read after, so that nothing cached before the latest flush is served.
/// - **No tracking, no cache.** While the tracking connection is down (not yet
///   connected, killed by `CLIENT KILL`, Redis restarted, no `PONG` to the heartbeat
///   within its interval) every read goes to the store and nothing is cached. The cache
///   is emptied when the connection is lost and again once tracking is back on, before it
///   serves again: pushes missed while disconnected cannot leave a stale entry.
/// - **Sessions: the client's own writes.** A session read is answered from memory only
///   by a copy that carries the write tag of the client's cookie, i.e. the state after
///   the last write that client made or saw, on any instance; any other read goes to the
///   store (and refreshes the copy). So the client's next request after a write answered
///   on instance A reads that write on instance B too, even before Redis' invalidation
///   reaches B; what a cached read can miss is someone else's write, for the invalidation
///   delay. A copy is also served only while a store read would not roll the session's
///   idle expiry, so caching changes nothing about when an idle session ends.
/// - **Bounded age.** No entry is served more than [`max_age`](LocalCacheBuilder::max_age)
///   after it was read from the store (default 60 s), whatever Redis says. This bounds the
///   damage of anything the above misses, such as a network partition between this
///   instance and Redis that the heartbeat has not detected yet (detected within two
///   [`heartbeat`](LocalCacheBuilder::heartbeat) intervals).
/// - **Bounded memory.** At most [`max_bytes`](LocalCacheBuilder::max_bytes) of keys and
///   values (default 16 MiB, counting 64 bytes of overhead per entry); entries read
///   seldom go first.
///
/// # What to cache, and why it is opt-in
///
/// Cache the revocation list (prefix `rev:`): its keys are read on every request, change
/// rarely, and a change only has to become visible within a small bound, which the cache
/// keeps. The cache is **opt-in**: it costs a connection and a task per instance, and it
/// turns "the next read after a write sees it" into "a read on another instance sees it
/// within the invalidation delay". That trade is right for revocation; it is not for
/// everything:
///
/// - Sessions (`sess:`) only with
///   [`SessionLayer::cached_reads`](crate::session::SessionLayer::cached_reads), which
///   puts the write tag in the cookie; without it, session reads name no tag and always go
///   to the store. It pays where sessions are read far more often than written: every
///   write sends the cookie again, and every write anywhere invalidates that session's
///   copy on every instance (Redis sends each instance's tracking connection a push per
///   write of a tracked key, about 60 bytes: with N instances, N pushes per write).
/// - Do not cache idempotency records (`idem:`) or rate limits: they are compare-and-set
///   state that must be read fresh.
///
/// `MemoryStore` needs none of this: it is already in-process, and one instance is all
/// it serves. `LocalCache` is built for a [`RedisStore`] on one Redis (a URL given to
/// [`RedisStoreBuilder::url`](super::RedisStoreBuilder::url)). **Redis Cluster is
/// refused** at build: broadcast tracking would need one tracking connection per master,
/// re-established on every resharding and failover, which this version does not do.
///
/// The revocation check takes any [`StateStore`], so you give it the wrapped store and
/// keep using the plain one for everything else.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
/// use tower_stateless::revocation::Revoker;
/// use tower_stateless::store::{LocalCache, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::from_url("redis://127.0.0.1:6379")?;
/// // Must run inside a Tokio runtime: it spawns the tracking task.
/// let cached = LocalCache::builder(store.clone())
///     .prefix("rev:")
///     .max_age(Duration::from_secs(30))
///     .build()?;
///
/// let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
/// let policy = TokenPolicy::builder(keys).signing_key("v1").build()?;
/// // The read side answers from memory; the write side may use either handle.
/// let auth = policy.auth_layer().revocation(cached.clone());
/// let revoker = Revoker::new(cached, &policy);
/// # let _ = (auth, revoker);
/// # Ok(())
/// # }
/// ```
///
/// # Handles
///
/// Cheap to clone: clones share one cache and one tracking connection, which closes when
/// the last clone is dropped.
#[derive(Clone)]
pub struct LocalCache<S = RedisStore> {
    inner: S,
    shared: Arc<Handle>,
}

/// Builds a [`LocalCache`]; see [`LocalCache::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LocalCacheBuilder {
    store: RedisStore,
    prefixes: Vec<String>,
    max_age: Duration,
    max_bytes: u64,
    heartbeat: Duration,
}

/// What the cache and its tracking task share.
struct State {
    prefixes: Box<[String]>,
    /// The store's own key prefix, stripped from the keys Redis pushes.
    store_prefix: String,
    entries: Entries,
    /// [`LocalCacheBuilder::max_age`]: an older entry is not served.
    max_age: Duration,
    /// Bit 0: tracking is on and the cache may serve. Bits 1..: a generation that every
    /// invalidation and every change of bit 0 advances.
    generation: AtomicU64,
    /// Advanced (before `generation`) by every flush: an entry cached before the latest
    /// flush is never served, whatever an insert racing the `clear` leaves behind.
    flushes: AtomicU64,
}

/// The entries, bounded by weight (`max_bytes`). `quick_cache` rather than moka (which
/// `MemoryStore` uses): a lookup here runs up to four times per request on the hot path,
/// and quick_cache's costs less than half of moka's (no access log, no housekeeping, no
/// epoch pinning); the age bound is checked at lookup instead of by moka's expiry.
type Entries = quick_cache::sync::Cache<String, Entry, Weight>;

fn entries(max_bytes: u64) -> Entries {
    // quick_cache sizes its table from an estimate of the entry count: a typical entry
    // (a revocation key, or a small session) is a few hundred bytes.
    let estimate = usize::try_from(max_bytes / 256)
        .unwrap_or(usize::MAX)
        .clamp(16, 1 << 20);
    quick_cache::sync::Cache::with_weighter(estimate, max_bytes, Weight)
}

/// An entry's weight: computed once, when it is made.
#[derive(Clone, Copy)]
struct Weight;

impl quick_cache::Weighter<String, Entry> for Weight {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        key.len() as u64 + entry.weight
    }
}

#[derive(Clone)]
struct Entry {
    /// `flushes` when the value was read.
    flushes: u64,
    /// When the store read began: the entry is served until `max_age` after it.
    read_at: Instant,
    /// The value's bytes plus the fixed overhead (never zero: quick_cache never evicts a
    /// zero-weight entry).
    weight: u64,
    value: Cached,
}

#[derive(Clone)]
enum Cached {
    /// A plain value; `None` caches an absent key.
    Value(Option<Bytes>),
    /// A hash (a session).
    Hash(Arc<StoredHash>),
}

impl Cached {
    /// The bytes the entry holds, as counted against `max_bytes`.
    fn weight(&self) -> usize {
        match self {
            Cached::Value(value) => value.as_ref().map_or(0, Bytes::len),
            Cached::Hash(hash) => hash
                .fields
                .iter()
                .map(|(name, value)| name.len() + value.len() + ENTRY_OVERHEAD / 2)
                .sum(),
        }
    }
}

/// The counters when a read began.
#[derive(Clone, Copy)]
struct Seen {
    flushes: u64,
    generation: u64,
    /// When the snapshot was taken: the "now" of its lookups, and the start of the store
    /// read that may follow (one clock read per request, not one per key).
    at: Instant,
}

/// Owned by the handles only: dropping the last one stops the tracking task.
struct Handle {
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SERVING: u64 = 1;
const STEP: u64 = 2;

impl State {
    fn is_cached(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> Seen {
        let flushes = self.flushes.load(Ordering::SeqCst);
        Seen {
            flushes,
            generation: self.generation(),
            at: Instant::now(),
        }
    }

    /// The entry at `key`, if the cache serves and holds one read after the latest flush
    /// and less than `max_age` ago.
    fn fresh(&self, seen: Seen, key: &str) -> Option<Entry> {
        if seen.generation & SERVING == 0 {
            return None;
        }
        self.entries.get(key).filter(|entry| {
            entry.flushes == seen.flushes
                && seen.at.saturating_duration_since(entry.read_at) < self.max_age
        })
    }

    /// The cached value of `key`, if [`fresh`](Self::fresh).
    // `Some(None)` is a cached absence, `None` a miss: both are needed.
    #[allow(clippy::option_option)]
    fn lookup(&self, seen: Seen, key: &str) -> Option<Option<Bytes>> {
        match self.fresh(seen, key)?.value {
            Cached::Value(value) => Some(value),
            Cached::Hash(_) => None,
        }
    }

    /// The cached hash at `key` if it carries the write tag `tag` and a lazy read of the
    /// store (`ttl`, `every`) would not roll its expiry yet: serving it then changes
    /// nothing about when an idle hash expires. Its times are aged since its read.
    fn lookup_hash(
        &self,
        seen: Seen,
        key: &str,
        tag: u64,
        ttl: Duration,
        every: Duration,
    ) -> Option<StoredHash> {
        let entry = self.fresh(seen, key)?;
        let Cached::Hash(hash) = &entry.value else {
            return None;
        };
        if hash.tag != Some(tag) {
            return None;
        }
        let age = seen.at.saturating_duration_since(entry.read_at);
        let lifetime_left = hash.lifetime_left.checked_sub(age)?;
        let expires_in = hash.expires_in.checked_sub(age)?;
        if lifetime_left.is_zero() || expires_in + every <= ttl.min(lifetime_left) {
            return None;
        }
        Some(StoredHash {
            fields: hash.fields.clone(),
            lifetime_left,
            expires_in,
            tag: hash.tag,
        })
    }

    /// Caches what a read that began after `seen` brought, unless anything moved since.
    fn insert(&self, seen: Seen, key: &str, value: Cached) {
        if seen.generation & SERVING == 0 || self.generation() != seen.generation {
            return;
        }
        let entry = Entry {
            flushes: seen.flushes,
            read_at: seen.at,
            weight: (value.weight() + ENTRY_OVERHEAD) as u64,
            value,
        };
        self.entries.insert(key.to_owned(), entry);
        // An invalidation may have landed between the check and the insert: then the
        // entry may be stale, and whoever advanced the generation may already have
        // removed the key.
        if self.generation() != seen.generation {
            self.entries.remove(key);
        }
    }

    /// Drops one key (advancing the generation first, so that no read in flight caches
    /// the old value).
    fn invalidate(&self, key: &str) {
        self.generation.fetch_add(STEP, Ordering::SeqCst);
        self.entries.remove(key);
    }

    fn invalidate_all(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.generation.fetch_add(STEP, Ordering::SeqCst);
        self.entries.clear();
    }

    fn set_serving(&self, serving: bool) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .generation
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| {
                let next = g.wrapping_add(STEP);
                Some(if serving {
                    next | SERVING
                } else {
                    next & !SERVING
                })
            });
        self.entries.clear();
    }

    /// Applies an `invalidate` push: a list of full Redis keys, or null for "everything"
    /// (`FLUSHALL`, `FLUSHDB`).
    fn apply(&self, data: &[Value]) {
        for value in data {
            match value {
                Value::Nil => self.invalidate_all(),
                Value::Array(keys) | Value::Set(keys) => self.apply(keys),
                Value::BulkString(key) => match std::str::from_utf8(key) {
                    Ok(key) => {
                        if let Some(key) = key.strip_prefix(self.store_prefix.as_str()) {
                            self.invalidate(key);
                        }
                    }
                    // Not a key any layer writes; drop everything rather than guess.
                    Err(_) => self.invalidate_all(),
                },
                Value::SimpleString(key) => self.apply(&[Value::BulkString(key.clone().into())]),
                _ => self.invalidate_all(),
            }
        }
    }
}

impl LocalCache<RedisStore> {
    /// A builder for a cache in front of `store`, with the defaults: no prefix (name at
    /// least one), entries kept at most 60 s, at most 16 MiB, a heartbeat every second.
    pub fn builder(store: RedisStore) -> LocalCacheBuilder {
        LocalCacheBuilder {
            store,
            prefixes: Vec::new(),
            max_age: Duration::from_secs(60),
            max_bytes: 16 * 1024 * 1024,
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl<S> LocalCache<S> {
    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the tracking connection is up, so that reads may be served from memory.
    /// While it is `false`, every read goes to the store.
    pub fn is_serving(&self) -> bool {
        self.shared.state.generation() & SERVING != 0
    }

    /// How many entries the cache holds (entries past `max_age` count until they are
    /// evicted for room or replaced).
    pub fn entry_count(&self) -> u64 {
        self.shared.state.entries.len() as u64
    }

    /// How many bytes of keys and values (plus a fixed overhead per entry) the cache holds,
    /// as counted against [`max_bytes`](LocalCacheBuilder::max_bytes).
    pub fn weighted_size(&self) -> u64 {
        self.shared.state.entries.weight()
    }
}

impl<S> std::fmt::Debug for LocalCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("prefixes", &self.shared.state.prefixes)
            .field("serving", &self.is_serving())
            .finish_non_exhaustive()
    }
}

impl LocalCacheBuilder {
    /// Caches reads of keys starting with `prefix` (as the layers name them, without the
    /// store's own prefix), e.g. `"rev:"` for the revocation list, `"sess:"` for sessions
    /// of a layer with cached reads. Call it once per prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// The longest an entry is served after it was read from the store (default 60 s),
    /// even if Redis never invalidates it.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The most bytes of keys and values the cache holds (default 16 MiB); each entry
    /// also counts 64 bytes of overhead.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// How often the tracking connection is checked with a `PING` (default 1 s); a `PING`
    /// unanswered within the same interval counts as a lost connection (the cache is
    /// emptied and stops serving until tracking is back).
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Builds the cache and spawns its tracking task on the current Tokio runtime. The
    /// cache serves from memory once the task has turned tracking on; until then reads
    /// go to the store. Build it on the runtime that serves your requests: should that
    /// runtime shut down while handles live on, the cache stops serving for good.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when no prefix was given or a prefix is empty, one prefix starts
    /// another (Redis refuses overlapping broadcast prefixes), `max_age`, `max_bytes` or
    /// `heartbeat` is zero, the store is on a Redis Cluster or was built from a pool (no
    /// URL to open the tracking connection with), or there is no Tokio runtime.
    pub fn build(self) -> Result<LocalCache<RedisStore>, ConfigError> {
        if self.prefixes.is_empty() {
            return Err(ConfigError::new("prefix", "name at least one key prefix"));
        }
        if self.prefixes.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "prefix",
                "an empty prefix would cache every key, sessions and idempotency records included",
            ));
        }
        for (i, a) in self.prefixes.iter().enumerate() {
            for (j, b) in self.prefixes.iter().enumerate() {
                if i != j && a.starts_with(b.as_str()) {
                    return Err(ConfigError::new(
                        "prefix",
                        format!("prefixes {b:?} and {a:?} overlap; keep the shorter one"),
                    ));
                }
            }
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::new("max_age", "must be greater than zero"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new("max_bytes", "must be greater than zero"));
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::new("heartbeat", "must be greater than zero"));
        }
        if self.store.is_cluster() {
            return Err(ConfigError::new(
                "store",
                "LocalCache does not support Redis Cluster (it would need a tracking connection per master)",
            ));
        }
        let Some(url) = self.store.url() else {
            return Err(ConfigError::new(
                "store",
                "LocalCache needs a RedisStore built with a URL, to open its tracking connection",
            ));
        };
        let info = url
            .into_connection_info()
            .map_err(|e| ConfigError::new("store", format!("invalid Redis URL: {e}")))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| ConfigError::new("store", format!("invalid Redis URL: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("build", "must be called inside a Tokio runtime"))?;

        let entries = entries(self.max_bytes);
        let state = Arc::new(State {
            prefixes: self.prefixes.into_boxed_slice(),
            store_prefix: self.store.key_prefix().to_owned(),
            entries,
            max_age: self.max_age,
            generation: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        });
        // If the task ends (its runtime shuts down while handles live on elsewhere), nobody
        // applies pushes any more: the cache stops serving for good. The guard is owned by
        // the future, so it also fires for a task that never ran.
        let stop = StopServing(state.clone());
        let tracking = track(client, state.clone(), self.heartbeat);
        let task = runtime.spawn(async move {
            let _stop = stop;
            tracking.await;
        });
        Ok(LocalCache {
            inner: self.store,
            shared: Arc::new(Handle { state, task }),
        })
    }
}

/// The tracking task: connect, turn tracking on, serve, apply pushes; on any failure stop
/// serving, empty the cache and start over.
async fn track(client: redis::Client, state: Arc<State>, heartbeat: Duration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match tracked_connection(&client, &state, heartbeat).await {
            Ok((conn, pushes)) => {
                backoff = Duration::from_millis(50);
                // Anything cached before (nothing, or entries from a connection whose
                // pushes may have been missed) goes before the cache serves again.
                state.set_serving(true);
                tracing::debug!("LocalCache: tracking on, serving from memory");
                let why = serve(conn, pushes, &state, heartbeat).await;
                state.set_serving(false);
                tracing::warn!("LocalCache: tracking connection lost ({why}); reading from the store until it is back");
            }
            Err(e) => {
                tracing::warn!(error = %e, "LocalCache: cannot open the tracking connection; reading from the store");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(heartbeat.max(Duration::from_millis(50)));
    }
}

struct StopServing(Arc<State>);

impl Drop for StopServing {
    fn drop(&mut self) {
        self.0.set_serving(false);
    }
}

type Pushes = mpsc::UnboundedReceiver<PushInfo>;

async fn tracked_connection(
    client: &redis::Client,
    state: &State,
    heartbeat: Duration,
) -> Result<(redis::aio::MultiplexedConnection, Pushes), redis::RedisError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_push_sender(tx)
        .set_connection_timeout(Some(heartbeat))
        .set_response_timeout(Some(heartbeat));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(TRACKING_CLIENT_NAME)
        .exec_async(&mut conn)
        .await?;
    let mut tracking = redis::cmd("CLIENT");
    tracking.arg("TRACKING").arg("ON").arg("BCAST");
    for prefix in &state.prefixes {
        tracking
            .arg("PREFIX")
            .arg(format!("{}{prefix}", state.store_prefix));
    }
    tracking.exec_async(&mut conn).await?;
    Ok((conn, rx))
}

/// Applies pushes until the connection is lost; returns why.
async fn serve(
    mut conn: redis::aio::MultiplexedConnection,
    mut pushes: Pushes,
    state: &State,
    heartbeat: Duration,
) -> &'static str {
    let mut next_ping = tokio::time::Instant::now() + heartbeat;
    loop {
        match tokio::time::timeout_at(next_ping, pushes.recv()).await {
            Ok(Some(push)) => match push.kind {
                PushKind::Invalidate => state.apply(&push.data),
                PushKind::Disconnection => return "disconnected",
                _ => {}
            },
            Ok(None) => return "push channel closed",
            Err(_) => {
                let pong = tokio::time::timeout(
                    heartbeat,
                    redis::cmd("PING").query_async::<Value>(&mut conn),
                )
                .await;
                if !matches!(pong, Ok(Ok(_))) {
                    return "no answer to the heartbeat";
                }
                next_ping = tokio::time::Instant::now() + heartbeat;
            }
        }
    }
}

impl<S: StateStore> LocalCache<S> {
    fn state(&self) -> &State {
        &self.shared.state
    }

    /// After a write to `key` (whether it succeeded or not: a timed-out write may still
    /// have landed), drops the local entry.
    fn written(&self, key: &str) {
        if self.state().is_cached(key) {
            self.state().invalidate(key);
        }
    }
}

// The reads box the store's futures: a hit then builds and moves a small future, not one
// sized for the store's read (kilobytes), which only a miss pays for.
impl<S: StateStore> StateStore for LocalCache<S> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let state = self.state();
        if !state.is_cached(key) {
            return Box::pin(self.inner.get(key)).await;
        }
        let seen = state.snapshot();
        if let Some(value) = state.lookup(seen, key) {
            crate::metrics::local_cache(LocalCacheRead::Hit);
            return Ok(value);
        }
        crate::metrics::local_cache(LocalCacheRead::Miss);
        let value = Box::pin(self.inner.get(key)).await?;
        state.insert(seen, key, Cached::Value(value.clone()));
        Ok(value)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let state = self.state();
        if keys.is_empty() || !keys.iter().all(|k| state.is_cached(k)) {
            return Box::pin(self.inner.get_many(keys)).await;
        }
        let seen = state.snapshot();
        let hits: Option<Vec<Option<Bytes>>> = keys.iter().map(|k| state.lookup(seen, k)).collect();
        if let Some(values) = hits {
            crate::metrics::local_cache(LocalCacheRead::Hit);
            return Ok(values);
        }
        crate::metrics::local_cache(LocalCacheRead::Miss);
        let values = Box::pin(self.inner.get_many(keys)).await?;
        if values.len() == keys.len() {
            for (key, value) in keys.iter().zip(&values) {
                state.insert(seen, key, Cached::Value(value.clone()));
            }
        }
        Ok(values)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let result = self.inner.set(key, value, ttl).await;
        self.written(key);
        result
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let result = self.inner.set_if_absent(key, value, ttl).await;
        self.written(key);
        result
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result = self.inner.compare_and_set(key, expected, new, ttl).await;
        self.written(key);
        result
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let result = self.inner.compare_and_delete(key, expected).await;
        self.written(key);
        result
    }

    async fn get_and_refresh(&self, key: &str, ttl: Duration) -> Result<Option<Bytes>, StoreError> {
        // Changes the TTL only; Redis does not invalidate on it, and neither does this.
        self.inner.get_and_refresh(key, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let result = self.inner.delete(key).await;
        self.written(key);
        result
    }

    async fn gcra(&self, key: &str, params: Gcra) -> Result<GcraOutcome, StoreError> {
        let result = self.inner.gcra(key, params).await;
        self.written(key);
        result
    }

    // Hashes (sessions) are served from the cache only to a read that names their write
    // tag; a write drops the entry of its key.
    async fn hash_get_all_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        self.inner.hash_get_all_and_refresh(key, ttl).await
    }

    async fn hash_get_all_and_refresh_lazily(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        self.inner
            .hash_get_all_and_refresh_lazily(key, ttl, every)
            .await
    }

    async fn hash_get_all_cached(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
        tag: Option<u64>,
    ) -> Result<Option<StoredHash>, StoreError> {
        let state = self.state();
        if !state.is_cached(key) {
            return Box::pin(self.inner.hash_get_all_cached(key, ttl, every, tag)).await;
        }
        let seen = state.snapshot();
        if let Some(hash) = tag.and_then(|tag| state.lookup_hash(seen, key, tag, ttl, every)) {
            crate::metrics::local_cache(LocalCacheRead::Hit);
            return Ok(Some(hash));
        }
        crate::metrics::local_cache(LocalCacheRead::Miss);
        let hash = Box::pin(self.inner.hash_get_all_and_refresh_lazily(key, ttl, every)).await?;
        // A hash without a tag (written before tags were kept) is never served from here.
        if let Some(hash) = hash.as_ref().filter(|h| h.tag.is_some()) {
            state.insert(seen, key, Cached::Hash(Arc::new(hash.clone())));
        }
        Ok(hash)
    }

    async fn hash_apply(
        &self,
        key: &str,
        changes: &HashChanges,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        let result = self.inner.hash_apply(key, changes, options).await;
        self.written(key);
        result
    }

    async fn hash_compare_and_set_field(
        &self,
        key: &str,
        field: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        let result = self
            .inner
            .hash_compare_and_set_field(key, field, expected, new, options)
            .await;
        self.written(key);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RedisStore {
        RedisStore::from_url("redis://127.0.0.1:1").expect("store")
    }

    fn refused(builder: LocalCacheBuilder) -> &'static str {
        match builder.build() {
            Ok(_) => panic!("built"),
            Err(e) => e.setting(),
        }
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        assert_eq!(refused(LocalCache::builder(store())), "prefix");
        assert_eq!(refused(LocalCache::builder(store()).prefix("")), "prefix");
        assert_eq!(
            refused(LocalCache::builder(store()).prefix("rev:").prefix("rev:{")),
            "prefix"
        );
        assert_eq!(
            refused(LocalCache::builder(store()).prefix("a:").prefix("a:")),
            "prefix"
        );
        let ok = || LocalCache::builder(store()).prefix("rev:");
        assert_eq!(refused(ok().max_age(Duration::ZERO)), "max_age");
        assert_eq!(refused(ok().max_bytes(0)), "max_bytes");
        assert_eq!(refused(ok().heartbeat(Duration::ZERO)), "heartbeat");
        assert!(ok().prefix("sess:").build().is_ok());
    }

    #[test]
    fn building_outside_a_runtime_is_refused() {
        assert_eq!(
            refused(LocalCache::builder(store()).prefix("rev:")),
            "build"
        );
    }

    #[test]
    fn a_cache_whose_runtime_shut_down_stops_serving() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cache = runtime.block_on(async {
            LocalCache::builder(store())
                .prefix("rev:")
                .build()
                .expect("cache")
        });
        // As if tracking had come up: the task's end must turn it off again.
        cache.shared.state.set_serving(true);
        drop(runtime);
        assert!(!cache.is_serving());
    }

    #[tokio::test]
    async fn a_store_without_url_is_refused() {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("pool");
        let store = RedisStore::builder().pool(pool).build().expect("store");
        assert_eq!(refused(LocalCache::builder(store).prefix("rev:")), "store");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_read_through_and_nothing_is_cached() {
        let cache = LocalCache::builder(store())
            .prefix("rev:")
            .build()
            .expect("cache");
        assert!(!cache.is_serving());
        assert!(cache.get("rev:x").await.is_err());
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn a_raced_insert_is_dropped() {
        let state = State {
            prefixes: vec!["rev:".to_owned()].into_boxed_slice(),
            store_prefix: "app:".to_owned(),
            entries: entries(1 << 20),
            max_age: Duration::from_secs(60),
            generation: AtomicU64::new(SERVING),
            flushes: AtomicU64::new(0),
        };
        let cached = |state: &State| state.lookup(state.snapshot(), "rev:k");
        // A push lands while the read is in flight: the read is not cached.
        let seen = state.snapshot();
        state.apply(&[Value::Array(vec![Value::BulkString(b"app:rev:k".to_vec())])]);
        state.insert(seen, "rev:k", Cached::Value(None));
        assert_eq!(cached(&state), None);

        let seen = state.snapshot();
        state.insert(seen, "rev:k", Cached::Value(None));
        assert_eq!(cached(&state), Some(None));
        // A push for another application's key (other store prefix) changes nothing here.
        state.apply(&[Value::BulkString(b"other:rev:k".to_vec())]);
        assert_eq!(cached(&state), Some(None));
        state.apply(&[Value::BulkString(b"app:rev:k".to_vec())]);
        assert_eq!(cached(&state), None);

        // A flush (null push) empties everything, also what a read in flight brings back.
        let seen = state.snapshot();
        state.insert(seen, "rev:k", Cached::Value(None));
        let in_flight = state.snapshot();
        state.apply(&[Value::Nil]);
        assert_eq!(cached(&state), None);
        state.insert(in_flight, "rev:j", Cached::Value(None));
        assert_eq!(state.lookup(state.snapshot(), "rev:j"), None);

        // Not serving: nothing is cached, nothing is served.
        let seen = state.snapshot();
        state.insert(seen, "rev:k", Cached::Value(Some(Bytes::from_static(b"1"))));
        state.set_serving(false);
        assert_eq!(cached(&state), None);
        let seen = state.snapshot();
        state.insert(seen, "rev:k", Cached::Value(None));
        assert!(state.entries.get("rev:k").is_none());
        // Back on: what was cached before the loss is not served.
        state.set_serving(true);
        assert_eq!(cached(&state), None);
    }
}
