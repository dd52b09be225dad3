//! The [`Session`] handle handlers use.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::metrics::{self, SessionOp, SessionResult};
use crate::store::{StateStore, StoreError};

/// Version of the stored record format.
pub(crate) const RECORD_VERSION: u32 = 1;

/// An error from a [`Session`] method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store could not be read.
    #[error("session store error")]
    Store(#[source] StoreError),
    /// A value could not be (de)serialized.
    #[error("session value (de)serialization failed")]
    Serde(#[source] serde_json::Error),
}

impl SessionError {
    /// True when the store is unreachable (answer 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SessionError::Store(e) if e.is_unavailable())
    }
}

/// The stored record: `{"v":1,"created":<unix secs>,"data":{...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) v: u32,
    pub(crate) created: u64,
    pub(crate) data: BTreeMap<String, Value>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe view of the store for loading, so that `Session` is not generic.
pub(crate) trait Loader: Send + Sync {
    fn load<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<Option<Bytes>, StoreError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<bool, StoreError>>;
}

pub(crate) struct StoreLoader<S>(pub(crate) S);

impl<S: StateStore> Loader for StoreLoader<S> {
    fn load<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(self.0.get_and_refresh(key, ttl))
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(self.0.delete(key))
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Id of the session this request works on: the request's id (already format-checked)
    /// until the load; after it, `Some` only while the session exists and is not destroyed.
    pub(crate) id: Option<String>,
    /// Id to create a new session under instead of a random one: the request's `sid`
    /// claim. It comes from a token the server signed, so adopting it is not session
    /// fixation; a `sid` the crate mints then keys a session of the crate. Cleared by
    /// [`Session::destroy`]: the destroyed id never comes back.
    pub(crate) sid: Option<String>,
    /// Whether the record was loaded (or found absent).
    pub(crate) loaded: bool,
    /// Raw bytes as read (for compare-and-set); `None` when absent.
    pub(crate) original: Option<Bytes>,
    /// Current view of the data.
    pub(crate) record: Option<Record>,
    /// This request's per-key changes: `Some` = inserted, `None` = removed.
    pub(crate) delta: BTreeMap<String, Option<Value>>,
    pub(crate) cleared: bool,
    pub(crate) cycle: bool,
    /// Id of the session this request destroyed: deleted when the handler returns, before
    /// any new session of this request is written.
    pub(crate) destroyed: Option<String>,
    /// A load failed during this request: the handler saw an error it may have swallowed,
    /// so the layer must not answer as if all went well. `Some(true)` when the store was
    /// unavailable. Sticky: a later successful load does not clear it.
    pub(crate) load_failed: Option<bool>,
}

impl State {
    pub(crate) fn modified(&self) -> bool {
        !self.delta.is_empty() || self.cleared
    }
}

pub(crate) struct Shared {
    pub(crate) loader: Arc<dyn Loader>,
    pub(crate) key_prefix: String,
    pub(crate) idle: Duration,
    pub(crate) absolute: Duration,
    pub(crate) state: Mutex<State>,
}

/// A handle on the current request's session, found in request extensions.
///
/// Cheap to clone; all clones share the same state. Nothing touches the store until the
/// first method call; the first call loads the record (one `get_and_refresh`).
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &"<redacted>")
            .finish_non_exhaustive()
    }
}

pub(crate) fn store_key(prefix: &str, id: &str) -> String {
    format!("{prefix}{{{id}}}")
}

impl Session {
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>, SessionError> {
        let mut st = self.shared.state.lock().await;
        if !st.loaded {
            if let Some(id) = st.id.clone() {
                let key = store_key(&self.shared.key_prefix, &id);
                let raw = match self.shared.loader.load(&key, self.shared.idle).await {
                    Ok(raw) => raw,
                    Err(e) => {
                        metrics::session(SessionOp::Load, SessionResult::StoreError);
                        st.load_failed = Some(e.is_unavailable());
                        return Err(SessionError::Store(e));
                    }
                };
                metrics::session(SessionOp::Load, SessionResult::Ok);
                let record = raw
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<Record>(b).ok());
                match record {
                    Some(r)
                        if r.v == RECORD_VERSION
                            && now_secs().saturating_sub(r.created)
                                < self.shared.absolute.as_secs() =>
                    {
                        st.original = raw;
                        st.record = Some(r);
                    }
                    Some(_) => {
                        // Past the absolute lifetime (or unknown version): destroy it.
                        let _ = self.shared.loader.delete(&key).await;
                        st.id = None;
                    }
                    None => st.id = None,
                }
            }
            st.loaded = true;
        }
        Ok(st)
    }

    /// Reads `key`, deserialized as `T`. `Ok(None)` when absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let st = self.loaded().await?;
        let v = match st.delta.get(key) {
            Some(change) => change.clone(),
            None if st.cleared => None,
            None => st.record.as_ref().and_then(|r| r.data.get(key).cloned()),
        };
        match v {
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(SessionError::Serde),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` (written back once, after the handler returns).
    ///
    /// Without a session, the write creates one: under a fresh random id sent in the
    /// cookie (or header), or, with
    /// [`id_from_sid_claim`](super::SessionLayer::id_from_sid_claim), under the request's
    /// `sid` claim.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let v = serde_json::to_value(value).map_err(SessionError::Serde)?;
        let mut st = self.loaded().await?;
        st.delta.insert(key.to_owned(), Some(v));
        Ok(())
    }

    /// Removes `key`.
    pub async fn remove(&self, key: &str) -> Result<(), SessionError> {
        let mut st = self.loaded().await?;
        st.delta.insert(key.to_owned(), None);
        Ok(())
    }

    /// Removes every key (the session itself stays). Without a session this does nothing:
    /// no empty session is created.
    pub async fn clear(&self) -> Result<(), SessionError> {
        let mut st = self.loaded().await?;
        st.delta.clear();
        st.cleared = true;
        Ok(())
    }

    /// Gives the session a new id, keeping its data; the old id is deleted. Call it at login
    /// against session fixation.
    ///
    /// After the handler returns, the layer writes the data as this request loaded it, plus
    /// this request's changes, under a fresh id (write-if-absent), then deletes the old id.
    ///
    /// # Concurrency
    ///
    /// Unlike ordinary writes, cycling is **not merged** with concurrent requests on the old
    /// id. A request on the old id that writes:
    ///
    /// - after this request loaded the session and before the old id is deleted: its
    ///   compare-and-set succeeds on the old record, which is then deleted, so its changes are
    ///   lost although it answered success;
    /// - after the delete, from a session it loaded before: its compare-and-set finds the
    ///   record gone and drops its changes (a deleted session is never resurrected);
    /// - after the delete, from a fresh load: it finds no session and starts a new, empty one
    ///   with its own cookie, which can replace the cycled cookie in the browser.
    ///
    /// Reads on the old id see the old data until the delete, no session after it. This is
    /// acceptable at login, where one client rarely has other writes in flight on the same
    /// session; avoid cycling while other requests of the session may be writing to it.
    ///
    /// Without a session there is nothing to cycle: a later [`insert`](Self::insert)
    /// creates the session under a fresh id anyway. After [`destroy`](Self::destroy) in
    /// the same request it does nothing either; the destroyed id stays deleted.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut st = self.loaded().await?;
        st.cycle = true;
        Ok(())
    }

    /// Deletes the session from the store and removes the cookie.
    ///
    /// The old id is gone for good: it is deleted when the handler returns, whatever the
    /// handler does after this call. Changes made before the call are dropped. A later
    /// [`insert`](Self::insert) in the same request (a flash message after logout) starts
    /// a **new** session, with a new random id (a new cookie) that holds only the keys
    /// written after `destroy`.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        let mut st = self.loaded().await?;
        if let Some(id) = st.id.take() {
            st.destroyed = Some(id);
        }
        st.sid = None;
        st.original = None;
        st.record = None;
        st.delta.clear();
        st.cleared = false;
        st.cycle = false;
        Ok(())
    }
}

/// Applies a delta to a record's data.
pub(crate) fn apply(
    data: &mut BTreeMap<String, Value>,
    cleared: bool,
    delta: &BTreeMap<String, Option<Value>>,
) {
    if cleared {
        data.clear();
    }
    for (k, v) in delta {
        match v {
            Some(v) => {
                data.insert(k.clone(), v.clone());
            }
            None => {
                data.remove(k);
            }
        }
    }
}
