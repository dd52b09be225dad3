use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::{gcra, ttl_millis, unix_nanos, Gcra, GcraOutcome, StateStore, StoreError};
use super::{HashChanges, HashWriteOptions, HashWriteOutcome, StoredHash};
use crate::metrics::{in_memory_span, StoreOp};

mod hash;

/// An in-process [`StateStore`]: for tests, examples and single-instance development.
///
/// It has the same semantics as the Redis backend for every operation, TTLs included: an
/// expired key is absent at once, and the memory it held is reclaimed by the cache's
/// background maintenance (built on [`moka`], whose per-key locks make each operation
/// atomic). Clones share the same data. Each operation runs in a `DEBUG` span `memory`
/// (target `tower_stateless::store`, fields `op` and `result`).
///
/// It is not shared between processes: several instances of a service each have their
/// own, which defeats the point of this crate in production. Use `RedisStore` there.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::store::{MemoryStore, StateStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_stateless::store::StoreError> {
/// let store = MemoryStore::new();
/// assert_eq!(store.set_if_absent("k", "v1".into(), Duration::from_secs(60)).await?, None);
/// assert_eq!(
///     store.set_if_absent("k", "v2".into(), Duration::from_secs(60)).await?,
///     Some("v1".into()),
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    data: Bytes,
    deadline: Instant,
}

impl Entry {
    fn new(data: Bytes, ttl: Duration) -> Self {
        Self {
            data,
            deadline: Instant::now() + ttl,
        }
    }

    fn is_live(&self) -> bool {
        self.deadline > Instant::now()
    }
}

/// Tells moka when each entry expires: at the deadline it carries.
struct Deadline;

impl Expiry<String, Entry> for Deadline {
    fn expire_after_create(&self, _: &String, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.deadline.saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.deadline.saturating_duration_since(Instant::now()))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self {
            cache: Cache::builder().expire_after(Deadline).build(),
        }
    }

    /// The number of keys held, after reclaiming the expired ones.
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether the store holds no live key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the live entry of `key` (expired entries are seen as absent) under the
    /// key's lock, applies the operation it returns, and hands back its result.
    fn compute<T>(&self, key: &str, f: impl FnOnce(Option<&Entry>) -> (Op<Entry>, T)) -> T {
        let mut out = None;
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let live = current.as_ref().map(|e| e.value()).filter(|e| e.is_live());
                let (op, result) = f(live);
                out = Some(result);
                op
            });
        // moka always calls the closure exactly once.
        out.unwrap_or_else(|| unreachable!("moka did not run the compute closure"))
    }

    fn read(&self, key: &str) -> Option<Bytes> {
        self.cache
            .get(key)
            .filter(Entry::is_live)
            .map(|entry| entry.data)
    }
}

impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        in_memory_span(StoreOp::Get, || Ok(self.read(key)))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        in_memory_span(StoreOp::GetMany, || {
            Ok(keys.iter().map(|key| self.read(key)).collect())
        })
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        in_memory_span(StoreOp::Set, || {
            ttl_millis(ttl)?;
            self.compute(key, |_| (Op::Put(Entry::new(value, ttl)), ()));
            Ok(())
        })
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        in_memory_span(StoreOp::SetIfAbsent, || {
            ttl_millis(ttl)?;
            Ok(self.compute(key, |current| match current {
                Some(existing) => (Op::Nop, Some(existing.data.clone())),
                None => (Op::Put(Entry::new(value, ttl)), None),
            }))
        })
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        in_memory_span(StoreOp::CompareAndSet, || {
            ttl_millis(ttl)?;
            Ok(self.compute(key, |current| match current {
                Some(existing) if existing.data == expected => {
                    (Op::Put(Entry::new(new, ttl)), true)
                }
                _ => (Op::Nop, false),
            }))
        })
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        in_memory_span(StoreOp::CompareAndDelete, || {
            Ok(self.compute(key, |current| match current {
                Some(existing) if existing.data == expected => (Op::Remove, true),
                _ => (Op::Nop, false),
            }))
        })
    }

    async fn get_and_refresh(&self, key: &str, ttl: Duration) -> Result<Option<Bytes>, StoreError> {
        in_memory_span(StoreOp::GetAndRefresh, || {
            ttl_millis(ttl)?;
            Ok(self.compute(key, |current| match current {
                Some(existing) => {
                    let data = existing.data.clone();
                    (Op::Put(Entry::new(data.clone(), ttl)), Some(data))
                }
                None => (Op::Nop, None),
            }))
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        in_memory_span(StoreOp::Delete, || {
            Ok(self.compute(key, |current| (Op::Remove, current.is_some())))
        })
    }

    async fn hash_get_all_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        in_memory_span(StoreOp::HashGetAllAndRefresh, || {
            self.hash_read_refresh(key, ttl)
        })
    }

    async fn hash_apply(
        &self,
        key: &str,
        changes: &HashChanges,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        in_memory_span(StoreOp::HashApply, || {
            self.hash_write(key, options, |fields| {
                super::hash::apply_changes(fields, changes);
                Ok(())
            })
        })
    }

    async fn hash_compare_and_set_field(
        &self,
        key: &str,
        field: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        in_memory_span(StoreOp::HashCompareAndSetField, || {
            self.hash_write(key, options, |fields| {
                let current = fields.get(field);
                if current.map(|v| v.as_ref()) != expected {
                    return Err(HashWriteOutcome::Changed(current.cloned()));
                }
                match new {
                    Some(value) => fields.insert(field.to_owned(), value),
                    None => fields.remove(field),
                };
                Ok(())
            })
        })
    }

    async fn gcra(&self, key: &str, params: Gcra) -> Result<GcraOutcome, StoreError> {
        in_memory_span(StoreOp::Gcra, || {
            let params = params.params();
            self.compute(key, |current| {
                let now = unix_nanos();
                let tat = match current.map(|existing| gcra::decode_tat(&existing.data, now)) {
                    Some(Ok(tat)) => Some(tat),
                    Some(Err(reason)) => {
                        return (Op::Nop, Err(StoreError::Unexpected(reason.into())))
                    }
                    None => None,
                };
                match gcra::step(tat, now, params) {
                    (Some(new_tat), outcome) => {
                        let ttl = Duration::from_nanos(new_tat - now);
                        let entry = Entry::new(Bytes::from(gcra::encode_tat(new_tat)), ttl);
                        (Op::Put(entry), Ok(outcome))
                    }
                    (None, outcome) => (Op::Nop, Ok(outcome)),
                }
            })
        })
    }
}
