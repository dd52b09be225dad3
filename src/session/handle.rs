//! The [`Session`] handle handlers use.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use super::config::Config;
use crate::id::{random_u64, session_id};
use crate::metrics::{self, SessionOp, SessionResult};
use crate::rejection;
use crate::store::{
    HashMode, HashWriteOptions, HashWriteOutcome, StateStore, StoreError, StoredHash,
};

/// An error from a [`Session`] method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store could not be read or written.
    #[error("session store error")]
    Store(#[source] StoreError),
    /// A value could not be serialized.
    #[error("session value serialization failed")]
    Serde(#[source] serde_json::Error),
    /// The value stored under `key` does not deserialize into the type asked for. The
    /// session is untouched.
    #[error("the session value under {key:?} is not of the requested type")]
    Decode {
        /// The session key.
        key: String,
        /// Why it does not deserialize.
        #[source]
        source: serde_json::Error,
    },
    /// The change would grow the session past its size limit
    /// ([`SessionLayer::max_size`](super::SessionLayer::max_size)); it was refused whole,
    /// and the session is untouched.
    #[error("the session would hold {size} bytes, over its limit of {limit}")]
    TooLarge {
        /// The size the session would have had, in bytes (keys plus JSON values).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// [`Session::update`] of `key` met a concurrent change of the same key on every
    /// attempt ([`SessionLayer::max_retries`](super::SessionLayer::max_retries)); nothing
    /// was written.
    #[error("concurrent updates of the session key {key:?} kept conflicting")]
    Conflict {
        /// The session key.
        key: String,
    },
    /// The session ended (destroyed by another request, or expired) while this request
    /// was using it; [`Session::update`] wrote nothing, and never brings it back.
    #[error("the session ended during this request")]
    Ended,
}

impl SessionError {
    /// True when the store is unreachable (answer 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SessionError::Store(e) if e.is_unavailable())
    }

    /// The HTTP status to answer: `503` when the store is unavailable, `413` for a session
    /// over its size limit, `409` for a conflict or a session that ended meanwhile, `500`
    /// for the rest (a value of the wrong type is a bug of the application).
    pub fn status(&self) -> StatusCode {
        match self {
            _ if self.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict { .. } | Self::Ended => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short error code for a response body: `store_unavailable`, `session_too_large`,
    /// `session_conflict`, `session_ended` or `session_error`.
    pub fn error_code(&self) -> &'static str {
        match self {
            _ if self.is_unavailable() => rejection::STORE_UNAVAILABLE,
            Self::TooLarge { .. } => rejection::SESSION_TOO_LARGE,
            Self::Conflict { .. } => rejection::SESSION_CONFLICT,
            Self::Ended => rejection::SESSION_ENDED,
            _ => rejection::SESSION_ERROR,
        }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    fn client_message(&self) -> &'static str {
        match self {
            _ if self.is_unavailable() => crate::response::STORE_UNAVAILABLE_MESSAGE,
            Self::TooLarge { .. } => "the session would grow past its size limit",
            Self::Conflict { .. } => "the session was changed concurrently; retry",
            Self::Ended => "the session ended during this request",
            _ => "the session could not be used",
        }
    }
}

crate::response::impl_into_response!(SessionError);

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe view of the store for what a handler's calls need, so that `Session` is
/// not generic.
pub(crate) trait Backend: Send + Sync {
    fn load<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        every: Duration,
        tag: Option<u64>,
    ) -> BoxFut<'a, Result<Option<StoredHash>, StoreError>>;
    fn swap_field<'a>(
        &'a self,
        key: &'a str,
        field: &'a str,
        expected: Option<Bytes>,
        new: Bytes,
        options: HashWriteOptions,
    ) -> BoxFut<'a, Result<HashWriteOutcome, StoreError>>;
}

pub(crate) struct StoreBackend<S>(pub(crate) S);

impl<S: StateStore> Backend for StoreBackend<S> {
    fn load<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        every: Duration,
        tag: Option<u64>,
    ) -> BoxFut<'a, Result<Option<StoredHash>, StoreError>> {
        Box::pin(self.0.hash_get_all_cached(key, ttl, every, tag))
    }
    fn swap_field<'a>(
        &'a self,
        key: &'a str,
        field: &'a str,
        expected: Option<Bytes>,
        new: Bytes,
        options: HashWriteOptions,
    ) -> BoxFut<'a, Result<HashWriteOutcome, StoreError>> {
        Box::pin(async move {
            self.0
                .hash_compare_and_set_field(key, field, expected.as_deref(), Some(new), options)
                .await
        })
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
    /// Whether the session was loaded (or found absent). [`Session::insert`],
    /// [`Session::remove`] and [`Session::clear`] record changes without a load.
    pub(crate) loaded: bool,
    /// The stored fields (JSON values) as loaded, and as [`Session::update`] committed them.
    pub(crate) fields: BTreeMap<String, Bytes>,
    /// Time left to the session's absolute deadline, as loaded.
    pub(crate) lifetime_left: Option<Duration>,
    /// This request's per-key changes, not yet written: `Some` = inserted, `None` = removed.
    pub(crate) changes: BTreeMap<String, Option<Bytes>>,
    pub(crate) cleared: bool,
    pub(crate) cycle: bool,
    /// Id of the session this request destroyed: deleted when the handler returns, before
    /// any new session of this request is written.
    pub(crate) destroyed: Option<String>,
    /// [`Session::update`] created the session under a new random id during this request:
    /// the id goes into the cookie (or header).
    pub(crate) created: bool,
    /// A load failed during this request: the handler saw an error it may have swallowed,
    /// so the layer must not answer as if all went well. `Some(true)` when the store was
    /// unavailable. Sticky: a later successful load does not clear it.
    pub(crate) load_failed: Option<bool>,
    /// Write tags travel in the cookie ([`SessionLayer::cached_reads`] with the cookie
    /// transport): every write leaves one, and reads name the cookie's.
    ///
    /// [`SessionLayer::cached_reads`]: super::SessionLayer::cached_reads
    pub(crate) tagged: bool,
    /// The write tag the request's cookie carried (only when `tagged`).
    pub(crate) cookie_tag: Option<u64>,
    /// The write tag of the session as this request last read or wrote it.
    pub(crate) tag: Option<u64>,
}

impl State {
    pub(crate) fn modified(&self) -> bool {
        !self.changes.is_empty() || self.cleared
    }

    /// The value of `key` as this request sees it: its own change first, then the store's.
    fn value(&self, key: &str) -> Option<&Bytes> {
        match self.changes.get(key) {
            Some(change) => change.as_ref(),
            None if self.cleared => None,
            None => self.fields.get(key),
        }
    }

    /// Every key and value as this request sees them.
    pub(crate) fn view(&self) -> BTreeMap<&str, &Bytes> {
        let mut view: BTreeMap<&str, &Bytes> = if self.cleared {
            BTreeMap::new()
        } else {
            self.fields.iter().map(|(k, v)| (k.as_str(), v)).collect()
        };
        for (k, change) in &self.changes {
            match change {
                Some(v) => view.insert(k, v),
                None => view.remove(k.as_str()),
            };
        }
        view
    }

    /// The size of this request's pending insertions with `key` set to `value`: a lower
    /// bound of the session's size after the write-back, known without a load.
    fn pending_size_with(&self, key: &str, value: &Bytes) -> u64 {
        let others: u64 = self
            .changes
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.len() + v.len()) as u64))
            .sum();
        others + (key.len() + value.len()) as u64
    }

    /// The size of the session as this request sees it, as the limit counts it.
    fn size(&self) -> u64 {
        self.view()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn Backend>,
    /// The layer's configuration (shared, not copied per request).
    pub(crate) config: Arc<Config>,
    pub(crate) state: Mutex<State>,
}

/// A handle on the current request's session, found in request extensions.
///
/// Cheap to clone; all clones share the same state. Nothing touches the store until a
/// method needs the stored data: the first read ([`get`](Self::get), [`keys`](Self::keys),
/// [`update`](Self::update), [`cycle_id`](Self::cycle_id), [`destroy`](Self::destroy))
/// loads the session (one read that also rolls its idle expiry), while
/// [`insert`](Self::insert), [`remove`](Self::remove) and [`clear`](Self::clear) only
/// record changes. Reads see this request's changes over the stored data; the changes are
/// written in one step when the handler returns (a request that changes keys without
/// reading costs that one write and no read). [`update`](Self::update) writes at once.
///
/// Values are stored as JSON, one store field per key.
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
    // Not `format!`: this runs on every session read, and pushing into a buffer of the
    // right size is a third of the cost.
    let mut key = String::with_capacity(prefix.len() + id.len() + 2);
    key.push_str(prefix);
    key.push('{');
    key.push_str(id);
    key.push('}');
    key
}

/// First backoff ceiling after a conflict of [`Session::update`]; it doubles per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(4);
/// Largest backoff ceiling.
const BACKOFF_CAP: Duration = Duration::from_millis(256);

/// Full-jitter exponential backoff: uniform in `[0, min(cap, base * 2^attempt)]`, so that
/// conflicting writers of one key spread apart instead of meeting again.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let mut b = [0u8; 4];
    let r = getrandom::fill(&mut b)
        .map(|_| u32::from_le_bytes(b))
        .unwrap_or(u32::MAX / 2);
    let micros = ceiling.as_micros() as u64 * u64::from(r) / u64::from(u32::MAX);
    Duration::from_micros(micros)
}

fn decode<T: DeserializeOwned>(key: &str, raw: Option<&Bytes>) -> Result<Option<T>, SessionError> {
    raw.map(|b| serde_json::from_slice(b))
        .transpose()
        .map_err(|source| SessionError::Decode {
            key: key.to_owned(),
            source,
        })
}

impl Session {
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, State>, SessionError> {
        let mut st = self.shared.state.lock().await;
        self.load(&mut st).await?;
        Ok(st)
    }

    /// Loads the session into `st` unless this request already did.
    async fn load(&self, st: &mut State) -> Result<(), SessionError> {
        if st.loaded {
            return Ok(());
        }
        if let Some(id) = st.id.as_deref() {
            let key = store_key(&self.shared.config.prefix, id);
            let span = metrics::session_span();
            let config = &self.shared.config;
            let load = self.shared.backend.load(
                &key,
                config.idle,
                config.refresh_interval(),
                st.cookie_tag,
            );
            match tracing::Instrument::instrument(load, span.clone()).await {
                Ok(Some(hash)) => {
                    span.in_scope(|| metrics::session(SessionOp::Load, SessionResult::Ok));
                    st.fields = hash.fields;
                    st.lifetime_left = Some(hash.lifetime_left);
                    st.tag = hash.tag;
                }
                // Unknown, expired, past its absolute lifetime, or not a session of
                // this format: no session.
                Ok(None) => {
                    span.in_scope(|| metrics::session(SessionOp::Load, SessionResult::Ok));
                    st.id = None;
                }
                Err(e) => {
                    span.in_scope(|| metrics::session(SessionOp::Load, SessionResult::StoreError));
                    st.load_failed = Some(e.is_unavailable());
                    return Err(SessionError::Store(e));
                }
            }
        }
        st.loaded = true;
        Ok(())
    }

    /// Refuses a change that would leave the session over its limit and larger than it is.
    fn check_size(&self, st: &State, key: &str, new: Option<&Bytes>) -> Result<(), SessionError> {
        let size = st.size();
        let old = st.value(key).map_or(0, |v| (key.len() + v.len()) as u64);
        let next = size - old + new.map_or(0, |v| (key.len() + v.len()) as u64);
        if next > self.shared.config.max_bytes && next > size {
            return Err(SessionError::TooLarge {
                size: next,
                limit: self.shared.config.max_bytes,
            });
        }
        Ok(())
    }

    /// Reads `key`, deserialized as `T`. `Ok(None)` when absent.
    ///
    /// # Errors
    ///
    /// [`SessionError::Decode`] when the stored value does not deserialize into `T` (the
    /// session is untouched); [`SessionError::Store`] when the session could not be loaded.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let st = self.loaded().await?;
        decode(key, st.value(key))
    }

    /// The session's keys, sorted, as this request sees them (its own changes included).
    /// Empty without a session. Costs no round trip beyond the load.
    pub async fn keys(&self) -> Result<Vec<String>, SessionError> {
        let st = self.loaded().await?;
        Ok(st.view().keys().map(|k| (*k).to_owned()).collect())
    }

    /// The keys that start with `prefix`, sorted, as [`keys`](Self::keys) sees them: one
    /// key per item (`cart:<sku>`) lists a collection whose items concurrent requests
    /// change independently.
    pub async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, SessionError> {
        let st = self.loaded().await?;
        Ok(st
            .view()
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| *k)
            .take_while(|k| k.starts_with(prefix))
            .map(str::to_owned)
            .collect())
    }

    /// Stores `value` under `key` (written back once, after the handler returns, with the
    /// request's other changes). Only the keys a request changes are written: concurrent
    /// requests that change other keys keep theirs; of two changing the same key, the
    /// last write wins (use [`update`](Self::update) for a read-modify-write).
    ///
    /// Inserting does not load the session: a request that only inserts and removes keys
    /// costs one store write and no read. The write goes into the session of the request's
    /// id if it exists. Without a session (no id, an unknown or expired one), the write
    /// creates one: under a fresh random id sent in the cookie (or header), or, with
    /// [`id_from_sid_claim`](super::SessionLayer::id_from_sid_claim), under the request's
    /// `sid` claim.
    ///
    /// # Errors
    ///
    /// [`SessionError::TooLarge`] when the session would grow past its size limit (nothing
    /// is recorded). When this request has not loaded the session, only a change that
    /// exceeds the limit on its own is refused here (after a load, so that a change that
    /// shrinks an oversized session stays allowed); a session that the write-back would
    /// grow past the limit is refused then, whole, with `413`.
    /// [`SessionError::Serde`] when `value` does not serialize.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let v = Bytes::from(serde_json::to_vec(&value).map_err(SessionError::Serde)?);
        let mut st = self.shared.state.lock().await;
        if !st.loaded && st.pending_size_with(key, &v) > self.shared.config.max_bytes {
            self.load(&mut st).await?;
        }
        if st.loaded {
            self.check_size(&st, key, Some(&v))?;
        }
        st.changes.insert(key.to_owned(), Some(v));
        Ok(())
    }

    /// Removes `key`. Like [`insert`](Self::insert), it does not load the session.
    pub async fn remove(&self, key: &str) -> Result<(), SessionError> {
        let mut st = self.shared.state.lock().await;
        st.changes.insert(key.to_owned(), None);
        Ok(())
    }

    /// Removes every key (the session itself stays). Without a session this does nothing:
    /// no empty session is created. Keys written by concurrent requests before the
    /// write-back are removed too. Like [`insert`](Self::insert), it does not load the
    /// session.
    pub async fn clear(&self) -> Result<(), SessionError> {
        let mut st = self.shared.state.lock().await;
        st.changes.clear();
        st.cleared = true;
        Ok(())
    }

    /// Applies `f` to the current value of `key` and stores its result, **atomically
    /// across instances**: the write succeeds only if `key` still holds the value `f` was
    /// given; otherwise `f` runs again on the value that is there now. Only a concurrent
    /// change of this very key makes it retry (at most
    /// [`max_retries`](super::SessionLayer::max_retries) times, after a short random
    /// backoff); changes of other keys never do. Returns the value stored.
    ///
    /// Unlike [`insert`](Self::insert), the write happens at once, one round trip when
    /// nothing conflicts (the first call also loads the session). `f` sees this request's
    /// own pending change of `key` first, if any; the pending change is then replaced.
    /// Without a session, the update creates one as `insert` would.
    ///
    /// ```
    /// # async fn handler(session: tower_stateless::session::Session)
    /// # -> Result<(), tower_stateless::session::SessionError> {
    /// let visits: u64 = session.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
    /// # let _ = visits; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Conflict`] when every attempt met a concurrent change;
    /// [`SessionError::Decode`] when the current value is not a `T`;
    /// [`SessionError::TooLarge`] past the size limit; [`SessionError::Ended`] when the
    /// session was destroyed or expired meanwhile (it is not brought back);
    /// [`SessionError::Store`]. In every case nothing was written.
    pub async fn update<T, F>(&self, key: &str, mut f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        let mut st = self.loaded().await?;
        // What the store holds (the compare-and-set expects it), and what `f` starts from.
        let mut expected = if st.id.is_some() {
            st.fields.get(key).cloned()
        } else {
            None
        };
        let mut current = st.value(key).cloned();
        let mut attempt = 0;
        loop {
            let new = f(decode(key, current.as_ref())?);
            let bytes = Bytes::from(serde_json::to_vec(&new).map_err(SessionError::Serde)?);
            self.check_size(&st, key, Some(&bytes))?;
            let lifetime = self.shared.config.lifetime();
            let (id, mode) = match (&st.id, &st.sid) {
                (Some(id), _) => (id.clone(), HashMode::Existing),
                (None, Some(sid)) => (sid.clone(), HashMode::Upsert { lifetime }),
                (None, None) => (
                    session_id()
                        .map_err(|e| SessionError::Store(StoreError::Unexpected(e.into())))?,
                    HashMode::New { lifetime },
                ),
            };
            let tag = st.tagged.then(random_u64);
            let config = &self.shared.config;
            let mut options = HashWriteOptions::new(mode, config.idle)
                .max_bytes(config.max_bytes)
                .refresh_interval(config.refresh_interval());
            if let Some(tag) = tag {
                options = options.tag(tag);
            }
            let store_key = store_key(&self.shared.config.prefix, &id);
            let span = metrics::session_span();
            let swap = self.shared.backend.swap_field(
                &store_key,
                key,
                expected.clone(),
                bytes.clone(),
                options,
            );
            let outcome = tracing::Instrument::instrument(swap, span.clone())
                .await
                .map_err(|e| {
                    metrics::session_span_only(&span, SessionOp::Write, SessionResult::StoreError);
                    SessionError::Store(e)
                })?;
            match outcome {
                HashWriteOutcome::Written => {
                    span.in_scope(|| metrics::session(SessionOp::Write, SessionResult::Ok));
                    st.tag = tag;
                    if st.id.is_none() {
                        st.created = matches!(mode, HashMode::New { .. });
                        st.id = Some(id);
                        st.lifetime_left = Some(lifetime);
                    }
                    st.fields.insert(key.to_owned(), bytes.clone());
                    if st.cleared {
                        // The pending clear must not erase what was just committed.
                        st.changes.insert(key.to_owned(), Some(bytes));
                    } else {
                        st.changes.remove(key);
                    }
                    return Ok(new);
                }
                HashWriteOutcome::Changed(now) => {
                    if attempt >= self.shared.config.max_retries {
                        span.in_scope(|| {
                            metrics::session(SessionOp::Write, SessionResult::Conflict)
                        });
                        return Err(SessionError::Conflict {
                            key: key.to_owned(),
                        });
                    }
                    // This attempt lost the race (traced; counted only when retries end).
                    metrics::session_span_only(&span, SessionOp::Write, SessionResult::Conflict);
                    attempt += 1;
                    expected = now.clone();
                    current = now;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                // A fresh random id that is taken: only a broken generator does that.
                HashWriteOutcome::Exists if attempt < 3 => attempt += 1,
                HashWriteOutcome::Missing => return Err(SessionError::Ended),
                HashWriteOutcome::TooLarge(size) => {
                    return Err(SessionError::TooLarge {
                        size,
                        limit: self.shared.config.max_bytes,
                    })
                }
                other => {
                    return Err(SessionError::Store(StoreError::Unexpected(
                        format!("unexpected outcome of a session update: {other:?}").into(),
                    )))
                }
            }
        }
    }

    /// Gives the session a new id, keeping its data; the old id is deleted. Call it at login
    /// against session fixation.
    ///
    /// After the handler returns, the layer writes the data as this request loaded it, plus
    /// this request's changes, as a new session under a fresh id (keeping the absolute
    /// deadline of the old one), then deletes the old id.
    ///
    /// # Concurrency
    ///
    /// Unlike ordinary writes, cycling is **not merged** with concurrent requests on the old
    /// id. A request on the old id that writes:
    ///
    /// - after this request loaded the session and before the old id is deleted: its write
    ///   lands in the old session, which is then deleted, so its changes are lost although
    ///   it answered success;
    /// - after the delete, from a session it loaded before: its write finds the session
    ///   gone and drops its changes (a deleted session is never resurrected);
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
    /// handler does after this call, and no concurrent write of another request brings it
    /// back. Changes made before the call are dropped. A later [`insert`](Self::insert) in
    /// the same request (a flash message after logout) starts a **new** session, with a
    /// new random id (a new cookie) that holds only the keys written after `destroy`.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        let mut st = self.loaded().await?;
        if let Some(id) = st.id.take() {
            st.destroyed = Some(id);
        }
        st.sid = None;
        st.fields.clear();
        st.lifetime_left = None;
        st.changes.clear();
        st.cleared = false;
        st.cycle = false;
        st.created = false;
        Ok(())
    }
}
