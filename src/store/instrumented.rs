use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument;

use super::{
    Gcra, GcraOutcome, HashChanges, HashWriteOptions, HashWriteOutcome, StateStore, StoreError,
    StoredHash,
};
use crate::metrics::{StoreOp, StoreResult, StoreTimer};

/// A [`StateStore`] that traces and times every operation of the store it wraps.
///
/// Each operation runs in a `DEBUG` span `store` (target `tower_stateless::store`) with
/// the fields `op` (the method's name, e.g. `get_many`) and `result` (`ok`, `unavailable`
/// or `error`), a child of whatever span is current: the request's span when the
/// application traces requests. No key, value or error text goes into the span. The
/// built-in stores open their own `redis` or `memory` span per operation, which then nests
/// under this one; a `store` span without one below it is an answer that did not reach the
/// backend (e.g. a `LocalCache` hit).
///
/// With the feature `metrics`, each operation's duration is also recorded in the
/// histogram `tower_stateless_store_duration_seconds{op, result}` (see the
/// [metrics table](crate#metrics-and-traces)).
///
/// Wrap the store once and give the wrapper to every layer; clones share the inner
/// store. The wrapper adds no round trip and no allocation.
///
/// # Example
///
/// ```
/// use tower_stateless::store::{InstrumentedStore, MemoryStore, StateStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_stateless::store::StoreError> {
/// let store = InstrumentedStore::new(MemoryStore::new());
/// assert_eq!(store.get("absent").await?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InstrumentedStore<S> {
    inner: S,
}

impl<S> InstrumentedStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped store.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Runs one store operation in its span, then records how it ended.
async fn observe<T>(
    op: StoreOp,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = tracing::debug_span!(
        target: "tower_stateless::store",
        "store",
        op = op.as_str(),
        result = tracing::field::Empty,
    );
    let timer = StoreTimer::start();
    let result = operation.instrument(span.clone()).await;
    let outcome = StoreResult::of(&result);
    span.record("result", outcome.as_str());
    timer.stop(op, outcome);
    result
}

impl<S: StateStore> StateStore for InstrumentedStore<S> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        observe(StoreOp::Get, self.inner.get(key)).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        observe(StoreOp::GetMany, self.inner.get_many(keys)).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        observe(StoreOp::Set, self.inner.set(key, value, ttl)).await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        observe(
            StoreOp::SetIfAbsent,
            self.inner.set_if_absent(key, value, ttl),
        )
        .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        observe(
            StoreOp::CompareAndSet,
            self.inner.compare_and_set(key, expected, new, ttl),
        )
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        observe(
            StoreOp::CompareAndDelete,
            self.inner.compare_and_delete(key, expected),
        )
        .await
    }

    async fn get_and_refresh(&self, key: &str, ttl: Duration) -> Result<Option<Bytes>, StoreError> {
        observe(StoreOp::GetAndRefresh, self.inner.get_and_refresh(key, ttl)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        observe(StoreOp::Delete, self.inner.delete(key)).await
    }

    async fn gcra(&self, key: &str, params: Gcra) -> Result<GcraOutcome, StoreError> {
        observe(StoreOp::Gcra, self.inner.gcra(key, params)).await
    }

    async fn hash_get_all_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        observe(
            StoreOp::HashGetAllAndRefresh,
            self.inner.hash_get_all_and_refresh(key, ttl),
        )
        .await
    }

    async fn hash_get_all_and_refresh_lazily(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        observe(
            StoreOp::HashGetAllAndRefreshLazily,
            self.inner.hash_get_all_and_refresh_lazily(key, ttl, every),
        )
        .await
    }

    async fn hash_get_all_cached(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
        tag: Option<u64>,
    ) -> Result<Option<StoredHash>, StoreError> {
        observe(
            StoreOp::HashGetAllCached,
            self.inner.hash_get_all_cached(key, ttl, every, tag),
        )
        .await
    }

    async fn hash_apply(
        &self,
        key: &str,
        changes: &HashChanges,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        observe(
            StoreOp::HashApply,
            self.inner.hash_apply(key, changes, options),
        )
        .await
    }

    async fn hash_compare_and_set_field(
        &self,
        key: &str,
        field: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        observe(
            StoreOp::HashCompareAndSetField,
            self.inner
                .hash_compare_and_set_field(key, field, expected, new, options),
        )
        .await
    }
}
