//! [`Intercept`]: a real store behind a test's hook, which sees every call and can fail it
//! before it reaches the store or after the store applied it (a lost reply). One wrapper
//! for every test that injects faults or records calls, so that a new `StateStore` method
//! is forwarded in one place.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tower_stateless::store::{
    Gcra, GcraOutcome, HashChanges, HashWriteOptions, HashWriteOutcome, StateStore, StoreError,
    StoredHash,
};

/// One call of a [`StateStore`] method, with what a hook may look at.
#[derive(Debug)]
pub enum Call<'a> {
    Get(&'a str),
    GetMany(&'a [&'a str]),
    Set(&'a str, &'a [u8]),
    SetIfAbsent(&'a str, &'a [u8]),
    CompareAndSet {
        key: &'a str,
        expected: &'a [u8],
        new: &'a [u8],
    },
    CompareAndDelete(&'a str),
    GetAndRefresh(&'a str),
    Delete(&'a str),
    Gcra(&'a str),
    /// `hash_get_all_and_refresh`, `hash_get_all_and_refresh_lazily` and
    /// `hash_get_all_cached`.
    HashRead(&'a str),
    HashApply(&'a str, &'a HashChanges),
    HashCompareAndSetField {
        key: &'a str,
        field: &'a str,
        new: Option<&'a [u8]>,
    },
}

impl Call<'_> {
    /// The key the call touches (`None` for `get_many`).
    pub fn key(&self) -> Option<&str> {
        match self {
            Call::GetMany(_) => None,
            Call::Get(key)
            | Call::Set(key, _)
            | Call::SetIfAbsent(key, _)
            | Call::CompareAndSet { key, .. }
            | Call::CompareAndDelete(key)
            | Call::GetAndRefresh(key)
            | Call::Delete(key)
            | Call::Gcra(key)
            | Call::HashRead(key)
            | Call::HashApply(key, _)
            | Call::HashCompareAndSetField { key, .. } => Some(key),
        }
    }
}

/// What a test does around each call.
pub trait Hook: Send + Sync + 'static {
    /// Before the call reaches the store: an error is the call's answer, and the store
    /// sees nothing.
    fn before(&self, call: &Call<'_>) -> Result<(), StoreError> {
        let _ = call;
        Ok(())
    }
    /// After the store applied the call and answered: an error replaces the answer (the
    /// reply was lost; the change stays).
    fn after(&self, call: &Call<'_>) -> Result<(), StoreError> {
        let _ = call;
        Ok(())
    }
}

/// A store behind a [`Hook`].
pub struct Intercept<St, H> {
    pub inner: St,
    pub hook: Arc<H>,
}

impl<St: Clone, H> Clone for Intercept<St, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            hook: Arc::clone(&self.hook),
        }
    }
}

impl<St, H> std::fmt::Debug for Intercept<St, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept").finish_non_exhaustive()
    }
}

impl<St, H> Intercept<St, H> {
    pub fn new(inner: St, hook: H) -> Self {
        Self {
            inner,
            hook: Arc::new(hook),
        }
    }
}

impl<St: StateStore, H: Hook> Intercept<St, H> {
    /// Runs `op` on the store between the hook's `before` and `after`.
    async fn around<T>(
        &self,
        call: Call<'_>,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.hook.before(&call)?;
        let out = op.await?;
        self.hook.after(&call)?;
        Ok(out)
    }
}

impl<St: StateStore, H: Hook> StateStore for Intercept<St, H> {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.around(Call::Get(key), self.inner.get(key)).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.around(Call::GetMany(keys), self.inner.get_many(keys))
            .await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let call = Call::Set(key, &value);
        self.around(call, self.inner.set(key, value.clone(), ttl))
            .await
    }
    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let call = Call::SetIfAbsent(key, &value);
        self.around(call, self.inner.set_if_absent(key, value.clone(), ttl))
            .await
    }
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let call = Call::CompareAndSet {
            key,
            expected,
            new: &new,
        };
        self.around(
            call,
            self.inner.compare_and_set(key, expected, new.clone(), ttl),
        )
        .await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.around(
            Call::CompareAndDelete(key),
            self.inner.compare_and_delete(key, expected),
        )
        .await
    }
    async fn get_and_refresh(&self, key: &str, ttl: Duration) -> Result<Option<Bytes>, StoreError> {
        self.around(
            Call::GetAndRefresh(key),
            self.inner.get_and_refresh(key, ttl),
        )
        .await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.around(Call::Delete(key), self.inner.delete(key)).await
    }
    async fn gcra(&self, key: &str, params: Gcra) -> Result<GcraOutcome, StoreError> {
        self.around(Call::Gcra(key), self.inner.gcra(key, params))
            .await
    }
    async fn hash_get_all_and_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        self.around(
            Call::HashRead(key),
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
        self.around(
            Call::HashRead(key),
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
        self.around(
            Call::HashRead(key),
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
        self.around(
            Call::HashApply(key, changes),
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
        let call = Call::HashCompareAndSetField {
            key,
            field,
            new: new.as_deref(),
        };
        self.around(
            call,
            self.inner
                .hash_compare_and_set_field(key, field, expected, new.clone(), options),
        )
        .await
    }
}
