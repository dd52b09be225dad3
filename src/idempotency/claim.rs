//! [`Claim`]: a request's hold on its key, from the claim to the record.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use crate::store::{StateStore, StoreError};

/// What claiming a key found.
pub(crate) enum Claimed<S: StateStore> {
    /// This request holds the key now.
    Won(Claim<S>),
    /// The key holds another request's claim or a completed record.
    Taken(Bytes),
}

/// A request's hold on its key: a lease that it renews while it runs, and turns into the
/// completed record or releases at the end. Released when dropped unfinished (a panicking
/// handler, a task cancelled by a runtime shutting down).
pub(crate) struct Claim<S: StateStore> {
    store: S,
    key: String,
    token: Bytes,
    lock_ttl: Duration,
    armed: bool,
}

impl<S: StateStore> Claim<S> {
    /// Claims `key` with `token` (the in-progress record) for `lock_ttl`: one atomic
    /// set-if-absent.
    ///
    /// A claim that failed but may have been written (a timeout, a reply lost with its
    /// connection) is deleted again before this returns, so that the client's retry is not
    /// answered `409` for a whole lease; should that fail too, it is retried in the
    /// background.
    pub(crate) async fn take(
        store: S,
        key: String,
        token: Bytes,
        lock_ttl: Duration,
    ) -> Result<Claimed<S>, StoreError> {
        match store.set_if_absent(&key, token.clone(), lock_ttl).await {
            Ok(None) => Ok(Claimed::Won(Claim {
                store,
                key,
                token,
                lock_ttl,
                armed: true,
            })),
            Ok(Some(existing)) => Ok(Claimed::Taken(existing)),
            Err(error) => {
                if error.may_have_applied() && store.compare_and_delete(&key, &token).await.is_err()
                {
                    tokio::spawn(async move {
                        if let Err(error) = persist(|| store.compare_and_delete(&key, &token)).await
                        {
                            tracing::warn!(%error, "could not undo an idempotency claim that may have been written; it frees itself when its lock TTL ends");
                        }
                    });
                }
                Err(error)
            }
        }
    }

    /// Runs `work` while renewing the lease every third of `lock_ttl`, so that a live
    /// request keeps its key however long it runs. A request faster than a third of the
    /// lease costs no renewal.
    pub(crate) async fn hold_while<F: Future>(&self, work: F) -> F::Output {
        let mut work = pin!(work);
        let mut renew = pin!(self.keep_alive());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            // Never finishes: it only sleeps and renews.
            let _ = renew.as_mut().poll(cx);
            Poll::Pending
        })
        .await
    }

    async fn keep_alive(&self) {
        let every = self.lock_ttl / 3;
        let (store, key, token) = (&self.store, &self.key, &self.token);
        loop {
            tokio::time::sleep(every).await;
            match store
                .compare_and_set(key, token, token.clone(), self.lock_ttl)
                .await
            {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not renew an idempotency lease; trying again");
                    continue;
                }
            }
            // The lease lapsed (a stalled instance, a store outage). If nobody took the key
            // meanwhile, take it back; if someone did, it is theirs.
            match store.set_if_absent(key, token.clone(), self.lock_ttl).await {
                Ok(None) => tracing::debug!("idempotency lease had lapsed; claimed again"),
                Ok(Some(_)) => {
                    tracing::warn!("idempotency lease lapsed and another request took over the key; this response will not be recorded");
                    return std::future::pending().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew an idempotency lease; trying again");
                }
            }
        }
    }

    /// Deletes the claim if this request still owns it, so that a retry can run now.
    pub(crate) async fn release(mut self) {
        self.armed = false;
        let (store, key, token) = (&self.store, &self.key, &self.token);
        if let Err(error) = persist(|| store.compare_and_delete(key, token)).await {
            tracing::warn!(%error, "could not release an idempotency key; it frees itself when its lock TTL ends");
        }
    }

    /// Turns the claim into the completed `record`: while this request still owns the key,
    /// or when its lease lapsed and nobody took the key over (the handler ran once; its
    /// answer is the result). Never over another request's claim or record.
    pub(crate) async fn complete(mut self, record: Bytes, retention: Duration) {
        self.armed = false;
        let (store, key, token) = (&self.store, &self.key, &self.token);
        match persist(|| store.compare_and_set(key, token, record.clone(), retention)).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "could not record an idempotent response; a retry may run the handler again after the lock TTL");
                return;
            }
        }
        // Two atomic steps, safe in any interleaving: the second writes only where no
        // other request holds the key.
        match persist(|| store.set_if_absent(key, record.clone(), retention)).await {
            Ok(None) => tracing::debug!("idempotency lease had lapsed, nobody took over; recorded"),
            // A retried write whose first attempt had landed.
            Ok(Some(existing)) if existing == record => {}
            // This request's own re-claim, sent by the renewal just before the handler
            // finished, landed in between: finish over it.
            Ok(Some(existing)) if existing == token => {
                if let Err(error) =
                    persist(|| store.compare_and_set(key, token, record.clone(), retention)).await
                {
                    tracing::error!(%error, "could not record an idempotent response; a retry may run the handler again after the lock TTL");
                }
            }
            Ok(Some(_)) => tracing::warn!(
                "idempotency lease lapsed and another request took over the key; this response is not recorded"
            ),
            Err(error) => tracing::error!(
                %error,
                "could not record an idempotent response; a retry may run the handler again after the lock TTL"
            ),
        }
    }
}

/// Runs a store operation that is safe to repeat (conditional on this request's own
/// claim or on absence), retrying briefly while the store is unavailable: the handler has
/// run by now, and its record must not be lost to one dropped connection.
async fn persist<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(25);
    for _ in 0..4 {
        match op().await {
            // A dropped connection fails fast and the next attempt takes another; a
            // timeout already cost a whole timeout, and the client is waiting.
            Err(error @ StoreError::Unavailable(_)) => {
                tracing::debug!(%error, "retrying an idempotency record write");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
    op().await
}

impl<S: StateStore> Drop for Claim<S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let key = std::mem::take(&mut self.key);
            let token = self.token.clone();
            handle.spawn(async move {
                let _ = store.compare_and_delete(&key, &token).await;
            });
        }
    }
}
