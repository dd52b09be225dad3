//! "My devices": a user's live logins, listed and ended.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::handle::store_key;
use super::SessionLayer;
use crate::jwt::IssueError;
use crate::refresh::{InvalidGrant, RefreshError, RefreshTokens, TokenPair};
use crate::revocation::RevokeError;
use crate::store::{
    HashChanges, HashMode, HashWriteOptions, StateStore, StoreError, StoredHash, MAX_TTL,
};
use crate::{rejection, ConfigError};

/// The shortest secret [`Devices::new`] accepts: as long as the HMAC-SHA256 output.
const MIN_SECRET_LEN: usize = 32;
/// "Last seen" is written at most this often by [`Devices::touch`].
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// An error of [`Devices`]. Nothing half-done is reported as success: when a call fails,
/// the logins it was ending are still listed, and calling it again completes the job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevicesError {
    /// The store failed (the device index, the session data or a revocation marker).
    #[error("device index store error")]
    Store(#[source] StoreError),
    /// Ending a login's refresh tokens or access tokens failed.
    #[error("could not end the login's tokens")]
    Tokens(#[source] RefreshError),
    /// [`Devices::bind`] was given a subject that is empty or only whitespace, refused
    /// before anything is read or written: every such login would share one index (as
    /// [`IssueError::EmptySubject`] refuses such a token). The calling code's mistake:
    /// `500`.
    #[error("the subject (sub) is empty or only whitespace")]
    EmptySubject,
    /// [`Devices::bind`] was given an empty session id, refused before anything is read
    /// or written: such a login could never be ended (every logout refuses an empty `sid`,
    /// as [`IssueError::EmptySessionId`] refuses such a token). The calling code's
    /// mistake: `500`.
    #[error("the session id (sid) is empty")]
    EmptySessionId,
}

impl DevicesError {
    /// True when the store is unreachable (answer `503`, retry later).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_unavailable(),
            Self::Tokens(e) => e.is_unavailable(),
            Self::EmptySubject | Self::EmptySessionId => false,
        }
    }

    /// A logout that named no login (an empty `sid`) or no user (an empty or
    /// whitespace-only `sub`): the caller's mistake.
    fn is_bad_request(&self) -> bool {
        matches!(self, Self::Tokens(e) if e.status() == StatusCode::BAD_REQUEST)
    }

    /// The HTTP status to answer: `400` for a logout naming no login or no user
    /// ([`RevokeError::MissingSid`], [`RevokeError::MissingSubject`]), `503` when the
    /// store is unavailable, `500` otherwise (an empty `sub` or `sid` given to
    /// [`Devices::bind`] included).
    pub fn status(&self) -> StatusCode {
        if self.is_bad_request() {
            StatusCode::BAD_REQUEST
        } else if self.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    /// A short error code for a response body: `invalid_request`, `store_unavailable` or
    /// `devices_error`.
    pub fn error_code(&self) -> &'static str {
        if self.is_bad_request() {
            rejection::INVALID_REQUEST
        } else if self.is_unavailable() {
            rejection::STORE_UNAVAILABLE
        } else {
            rejection::DEVICES_ERROR
        }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    fn client_message(&self) -> &'static str {
        match self {
            Self::Tokens(RefreshError::Revoke(RevokeError::MissingSid)) => {
                "the token names no login (no `sid` claim)"
            }
            // What else a logout lacked: the subject.
            Self::Tokens(error) if self.is_bad_request() => error.client_message(),
            _ if self.is_unavailable() => crate::response::STORE_UNAVAILABLE_MESSAGE,
            Self::EmptySubject | Self::EmptySessionId => "the login could not be recorded",
            _ => "the logins could not be listed or ended",
        }
    }
}

crate::response::impl_into_response!(DevicesError);

impl From<StoreError> for DevicesError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<RefreshError> for DevicesError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::Store(e) => Self::Store(e),
            other => Self::Tokens(other),
        }
    }
}

/// One live login of a user, as [`Devices::list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Device {
    /// An opaque handle of the login, for [`Devices::end`]: a keyed hash of its session id,
    /// never the session id itself (which is a bearer credential).
    pub id: String,
    /// When the login was bound, in Unix seconds.
    pub created: u64,
    /// When the login was last seen ([`Devices::bind`] or [`Devices::touch`]), in Unix
    /// seconds.
    pub last_seen: u64,
    /// The user agent the application stored at [`Devices::bind`], if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Whether this is the login the caller named as its own.
    pub current: bool,
}

/// An index entry: what the store keeps per login.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    sid: String,
    created: u64,
    seen: u64,
    /// Unix seconds after which the login is over (its refresh family cannot outlive it).
    until: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ua: Option<String>,
}

/// Refuses a logout of an empty or whitespace-only subject before anything is read or
/// written, as [`RefreshTokens::logout`] does: `400 invalid_request`.
fn check_subject(sub: &str) -> Result<(), DevicesError> {
    crate::revocation::check_subject(sub).map_err(|e| RefreshError::from(e).into())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A user's logins ("my devices"): binds a login (its session id, the `sid` of its tokens)
/// to a user, lists the user's live logins, and ends them, one, all, or all but the
/// current one.
///
/// **Ending a login ends everything of it**: its refresh-token families
/// ([`RefreshTokens::revoke_session_families`]), its access tokens (by `sid`, through the
/// [`Revoker`](crate::revocation::Revoker) of the same [`TokenPolicy`](crate::jwt::TokenPolicy)
/// the JWT layer checks) and its session data (the session stored under the `sid`, as
/// [`SessionLayer::id_from_sid_claim`] keys it, under the key prefix of the
/// [`SessionLayer`] given to [`Devices::new`]).
///
/// # Storage and round trips
///
/// Each user has one index: a store hash `sessidx:{u:<tag>}`, where `<tag>` is a keyed hash
/// of the user id (nobody without the secret can link the key to a user), so on Redis
/// Cluster the whole index is in one slot. One field per login, named by the login's
/// opaque handle (a keyed hash of its `sid`), holding its `sid`, creation, last-seen time,
/// end of life and user agent.
///
/// | call | round trips |
/// |---|---|
/// | [`list`](Self::list) | 1 read, plus 1 write when expired entries are pruned |
/// | [`bind`](Self::bind) | 1 read + 1 write (+ ending the logins over [`max_devices`](Self::max_devices)) |
/// | [`touch`](Self::touch) | 1 read, plus 1 write at most once a minute per login |
/// | [`end`](Self::end), [`end_others`](Self::end_others), [`end_all`](Self::end_all) | 1 read + 3 per login ended + 1 write |
///
/// Ending a login writes two revocation markers and deletes its session; on Redis Cluster
/// these keys live in other slots than the index, so ending `n` logins is `3n + 2` round
/// trips, and `n` is bounded by [`max_devices`](Self::max_devices) (default 32). Requests
/// that do not call `Devices` cost nothing: the session layer's read and write paths are
/// unchanged.
///
/// # Liveness
///
/// A login is listed while its life (set by [`login_lifetime`](Self::login_lifetime), by
/// default 30 days, the refresh-token family lifetime) has not run out and it was not
/// ended. Entries past their life are never listed and are pruned by the next `list` or
/// `bind`, so the index never grows beyond the user's live logins (at most
/// `max_devices`); the index itself expires a login lifetime after its last write.
///
/// # Failures
///
/// An entry is removed from the index only after its login was ended completely: when
/// the store fails midway, the call answers [`DevicesError`] and the login is still
/// listed, and a retry ends it (every step is idempotent).
///
/// # Example
///
/// ```
/// use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
/// use tower_stateless::refresh::RefreshTokens;
/// use tower_stateless::session::{Devices, SessionLayer};
/// use tower_stateless::store::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = JwtKeySet::new().with_hmac("k", Algorithm::HS256, &[7; 32])?;
/// let policy = TokenPolicy::builder(keys).signing_key("k").build()?;
/// let store = MemoryStore::new();
/// let sessions = SessionLayer::new(store.clone()).id_from_sid_claim(true);
/// let tokens = RefreshTokens::builder(store, &policy).secret([1; 32]).build()?;
/// // The session layer of the app: ending a login deletes its session data there.
/// let devices = Devices::new(tokens.clone(), &sessions, [2; 32])?;
///
/// // Two logins of alice, each bound at login (the `sid` of its tokens).
/// let laptop = tokens.issue("alice").await?;
/// let laptop_sid = laptop.access_token.claims.sid.clone().unwrap_or_default();
/// devices.bind("alice", &laptop_sid, Some("Firefox")).await?;
/// let phone = tokens.issue("alice").await?;
/// let phone_sid = phone.access_token.claims.sid.clone().unwrap_or_default();
/// devices.bind("alice", &phone_sid, None).await?;
///
/// let listed = devices.list("alice", Some(&laptop_sid)).await?;
/// assert_eq!(listed.len(), 2);
/// assert!(listed.iter().all(|d| d.id != laptop_sid && d.id != phone_sid));
/// assert_eq!(listed.iter().filter(|d| d.current).count(), 1);
///
/// // The refresh endpoint exchanges through the devices ("last seen" moves)...
/// let laptop = devices.rotate(&laptop.refresh_token.token).await?;
/// // ...and "log out my other devices", from the laptop: the phone's refresh token is
/// // refused.
/// assert_eq!(devices.end_others("alice", &laptop_sid).await?, 1);
/// assert!(devices.rotate(&phone.refresh_token.token).await.is_err());
/// assert_eq!(devices.list("alice", None).await?.len(), 1);
///
/// // A replayed (already exchanged) refresh token ends its whole login.
/// let _next = devices.rotate(&laptop.refresh_token.token).await?;
/// assert!(devices.rotate(&laptop.refresh_token.token).await.is_err());
/// assert!(devices.list("alice", None).await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Devices<S> {
    store: S,
    tokens: RefreshTokens<S>,
    mac: Hmac<Sha256>,
    session_prefix: String,
    lifetime: Duration,
    max_devices: usize,
}

impl<S> fmt::Debug for Devices<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Devices")
            .field("session_prefix", &self.session_prefix)
            .field("lifetime", &self.lifetime)
            .field("max_devices", &self.max_devices)
            .finish_non_exhaustive()
    }
}

impl<S: StateStore> Devices<S> {
    /// Devices over the store of `tokens`, ending logins through `tokens` (and its
    /// [`Revoker`](RefreshTokens::revoker)) and their session data as `sessions` stores
    /// it: the key prefix comes from the layer ([`SessionLayer::key_prefix`]), so the two
    /// cannot disagree. Pass the layer the
    /// application serves (configure it first, then give it here and to the router), over
    /// the same store as `tokens` or a [`LocalCache`](crate::store::LocalCache) of it.
    ///
    /// `secret` keys the user tags and the handles (at least 32 bytes; share it between
    /// instances). It may be the refresh tokens' secret (these HMAC inputs carry labels
    /// of their own, as the example does); keep it apart from unrelated secrets.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (`secret`) for a secret shorter than 32 bytes.
    pub fn new<St: StateStore>(
        tokens: RefreshTokens<S>,
        sessions: &SessionLayer<St>,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new("secret", "must be at least 32 bytes"));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| ConfigError::new("secret", "not usable as an HMAC key"))?;
        Ok(Self {
            store: tokens.store().clone(),
            tokens,
            mac,
            session_prefix: sessions.prefix().to_owned(),
            lifetime: Duration::from_secs(30 * 24 * 3600),
            max_devices: 32,
        })
    }

    /// How long a bound login is listed at most (default 30 days; match the refresh
    /// tokens' family lifetime).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (`login_lifetime`) under one second or beyond the store's
    /// longest TTL.
    pub fn login_lifetime(mut self, lifetime: Duration) -> Result<Self, ConfigError> {
        if lifetime < Duration::from_secs(1) || lifetime > MAX_TTL {
            return Err(ConfigError::new(
                "login_lifetime",
                "must be between one second and the store's longest TTL",
            ));
        }
        self.lifetime = lifetime;
        Ok(self)
    }

    /// The most logins a user keeps (default 32). A login bound beyond it ends the user's
    /// least recently seen login, so that ending all logins stays a bounded number of
    /// round trips.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (`max_devices`) for 0 or more than 1000.
    pub fn max_devices(mut self, max: usize) -> Result<Self, ConfigError> {
        if max == 0 || max > 1000 {
            return Err(ConfigError::new(
                "max_devices",
                "must be between 1 and 1000",
            ));
        }
        self.max_devices = max;
        Ok(self)
    }

    fn prf(&self, label: &[u8], input: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(label);
        mac.update(input.as_bytes());
        let digest = mac.finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&digest[..16])
    }

    fn index_key(&self, sub: &str) -> String {
        format!(
            "sessidx:{{u:{}}}",
            self.prf(b"tower-stateless/devices/sub\0", sub)
        )
    }

    /// The opaque handle of the login `sid`, as [`Device::id`] shows it.
    pub fn handle(&self, sid: &str) -> String {
        self.prf(b"tower-stateless/devices/sid\0", sid)
    }

    fn options(&self, mode: HashMode) -> HashWriteOptions {
        HashWriteOptions::new(mode, self.lifetime)
    }

    /// Reads the index: live entries by handle, and the fields to prune.
    async fn read(&self, key: &str) -> Result<(Vec<(String, Entry)>, Vec<String>), StoreError> {
        let hash = self
            .store
            .hash_get_all_and_refresh(key, self.lifetime)
            .await?;
        let now = now_secs();
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (field, raw) in hash.map(|h: StoredHash| h.fields).unwrap_or_default() {
            match serde_json::from_slice::<Entry>(&raw) {
                Ok(entry) if entry.until > now => live.push((field, entry)),
                _ => stale.push(field),
            }
        }
        Ok((live, stale))
    }

    /// Binds the login `sid` to the user `sub` (call it at login, after the tokens were
    /// issued), with the user agent to show in the list, if the application keeps one.
    /// Binding a bound login again refreshes its "last seen" and keeps its creation time.
    /// Returns the login's handle.
    ///
    /// # Errors
    ///
    /// [`DevicesError::EmptySubject`] for a `sub` that is empty or only whitespace (as
    /// [`str::trim`] sees it) and [`DevicesError::EmptySessionId`] for an empty `sid`,
    /// before anything is read or written (`500`: the tokens of a login have neither);
    /// [`DevicesError`] when the store fails; the login may then be unlisted, bind again.
    pub async fn bind(
        &self,
        sub: &str,
        sid: &str,
        user_agent: Option<&str>,
    ) -> Result<String, DevicesError> {
        if crate::claims::blank_subject(sub) {
            return Err(DevicesError::EmptySubject);
        }
        if sid.is_empty() {
            return Err(DevicesError::EmptySessionId);
        }
        let key = self.index_key(sub);
        let handle = self.handle(sid);
        let (mut live, stale) = self.read(&key).await?;
        let now = now_secs();
        let previous = live
            .iter()
            .position(|(h, _)| *h == handle)
            .map(|i| live.remove(i).1);
        // Over the cap: end the least recently seen logins first.
        live.sort_by_key(|(_, e)| e.seen);
        let excess = (live.len() + 1).saturating_sub(self.max_devices);
        let mut delete = stale;
        for (h, entry) in live.iter().take(excess) {
            self.end_login(sub, &entry.sid).await?;
            delete.push(h.clone());
        }
        let entry = Entry {
            sid: sid.to_owned(),
            created: previous.as_ref().map_or(now, |e| e.created),
            seen: now,
            until: previous
                .as_ref()
                .map_or(now.saturating_add(self.lifetime.as_secs()), |e| e.until),
            ua: user_agent
                .map(str::to_owned)
                .or_else(|| previous.and_then(|e| e.ua)),
        };
        let value = Bytes::from(serde_json::to_vec(&entry).map_err(|e| {
            StoreError::Unexpected(format!("device entry serialization: {e}").into())
        })?);
        let changes = HashChanges {
            clear: false,
            delete,
            set: vec![(handle.clone(), value)],
        };
        self.store
            .hash_apply(
                &key,
                &changes,
                self.options(HashMode::Upsert { lifetime: MAX_TTL }),
            )
            .await?;
        Ok(handle)
    }

    /// Records that the login `sid` of `sub` is in use ("last seen"). Writes at most once a
    /// minute per login; an unbound or ended login is left alone (never brought back).
    ///
    /// # Errors
    ///
    /// [`DevicesError`] when the store fails.
    pub async fn touch(&self, sub: &str, sid: &str) -> Result<(), DevicesError> {
        let key = self.index_key(sub);
        let handle = self.handle(sid);
        let (live, _) = self.read(&key).await?;
        let now = now_secs();
        let Some((_, mut entry)) = live.into_iter().find(|(h, _)| *h == handle) else {
            return Ok(());
        };
        if now < entry.seen.saturating_add(TOUCH_EVERY.as_secs()) {
            return Ok(());
        }
        entry.seen = now;
        let value = Bytes::from(serde_json::to_vec(&entry).map_err(|e| {
            StoreError::Unexpected(format!("device entry serialization: {e}").into())
        })?);
        let changes = HashChanges {
            clear: false,
            delete: Vec::new(),
            set: vec![(handle, value)],
        };
        self.store
            .hash_apply(&key, &changes, self.options(HashMode::Existing))
            .await?;
        Ok(())
    }

    /// A refresh endpoint's exchange, for logins bound here: rotates `refresh_token` as
    /// [`RefreshTokens::rotate`] does and records the login as seen ([`touch`](Self::touch);
    /// a failure there is logged, the new pair still returned).
    ///
    /// A token that is refused because its login was ended, or that ends it now (reuse: a
    /// consumed token presented again), ends the whole login as [`end`](Self::end) does:
    /// besides its refresh families and access tokens, its session data is deleted and it
    /// is no longer listed. [`RefreshTokens::rotate`] alone ends only the tokens.
    ///
    /// Round trips: those of [`RefreshTokens::rotate`], plus one read of the index (and a
    /// write once a minute, for "last seen"); on reuse, one more read and those of ending
    /// one login.
    ///
    /// # Errors
    ///
    /// As [`RefreshTokens::rotate`]; the `invalid_grant` error comes back once the login
    /// was ended. When the store fails while ending it, [`RefreshError::Store`]: the
    /// token's next presentation ends it again.
    pub async fn rotate(&self, refresh_token: &str) -> Result<TokenPair, RefreshError> {
        let error = match self.tokens.rotate(refresh_token).await {
            Ok(pair) => {
                let claims = &pair.access_token.claims;
                if let Some(sid) = &claims.sid {
                    if let Err(e) = self.touch(&claims.sub, sid).await {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "devices: could not record a refreshed login as seen"
                        );
                    }
                }
                return Ok(pair);
            }
            Err(error) => error,
        };
        if !matches!(
            error.invalid_grant(),
            Some(InvalidGrant::Reused | InvalidGrant::Revoked)
        ) {
            return Err(error);
        }
        if let Some((sub, sid)) = self.tokens.login_of(refresh_token).await? {
            let handle = self.handle(&sid);
            self.end_where(&sub, |h| h == handle)
                .await
                .map_err(|e| match e {
                    DevicesError::Store(e) => RefreshError::Store(e),
                    DevicesError::Tokens(e) => e,
                    // Only `bind` refuses these; kept apart all the same.
                    DevicesError::EmptySubject => RefreshError::Issue(IssueError::EmptySubject),
                    DevicesError::EmptySessionId => RefreshError::Issue(IssueError::EmptySessionId),
                })?;
        }
        Err(error)
    }

    /// Whether the login `sid` of `sub` is bound and live (not ended, not expired): one
    /// read of the index, nothing written.
    ///
    /// # Errors
    ///
    /// [`DevicesError`] when the store fails.
    pub async fn is_live(&self, sub: &str, sid: &str) -> Result<bool, DevicesError> {
        let handle = self.handle(sid);
        let (live, _) = self.read(&self.index_key(sub)).await?;
        Ok(live.iter().any(|(h, _)| *h == handle))
    }

    /// The live logins of `sub`, oldest first; the one whose session id is `current` is
    /// marked [`Device::current`]. Expired entries are not listed, and are pruned.
    ///
    /// # Errors
    ///
    /// [`DevicesError`] when the store fails.
    pub async fn list(
        &self,
        sub: &str,
        current: Option<&str>,
    ) -> Result<Vec<Device>, DevicesError> {
        let key = self.index_key(sub);
        let (live, stale) = self.read(&key).await?;
        self.remove(&key, stale).await?;
        let current = current.map(|sid| self.handle(sid));
        let mut devices: Vec<Device> = live
            .into_iter()
            .map(|(id, e)| Device {
                current: current.as_deref() == Some(id.as_str()),
                id,
                created: e.created,
                last_seen: e.seen,
                user_agent: e.ua,
            })
            .collect();
        devices.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(devices)
    }

    /// Ends the login with handle `id` (from [`list`](Self::list)) of `sub`. Returns
    /// whether there was such a live login.
    ///
    /// # Errors
    ///
    /// [`DevicesError::Tokens`] ([`RevokeError::MissingSubject`], `400 invalid_request`)
    /// for a `sub` that is empty or only whitespace, nothing written; [`DevicesError`]
    /// when the store fails; the login stays listed, retry.
    pub async fn end(&self, sub: &str, id: &str) -> Result<bool, DevicesError> {
        Ok(self.end_where(sub, |h| h == id).await? > 0)
    }

    /// Ends every login of `sub` but the one whose session id is `current` ("log out my
    /// other devices"). Returns how many were ended.
    ///
    /// # Errors
    ///
    /// [`DevicesError::Tokens`] ([`RevokeError::MissingSubject`], `400 invalid_request`)
    /// for a `sub` that is empty or only whitespace, nothing written; [`DevicesError`]
    /// when the store fails; the logins not yet ended stay listed, retry.
    pub async fn end_others(&self, sub: &str, current: &str) -> Result<usize, DevicesError> {
        let keep = self.handle(current);
        self.end_where(sub, |h| h != keep).await
    }

    /// Logout of the login `sid` of `sub` (the caller's own, at `POST /logout`): ends it
    /// as [`end`](Self::end) does (refresh families, access tokens, session data, entry),
    /// also when it is not listed (never bound, or already ended): its tokens and data are
    /// ended all the same. [`RefreshTokens::logout`] alone leaves the login listed.
    ///
    /// # Errors
    ///
    /// [`DevicesError::Tokens`] (`400 invalid_request`) with [`RevokeError::MissingSid`]
    /// for an empty `sid` (a token without a `sid` claim belongs to no login: revoke the
    /// token itself with
    /// [`Revoker::revoke_token`](crate::revocation::Revoker::revoke_token)), or
    /// [`RevokeError::MissingSubject`] for a `sub` that is empty or only whitespace,
    /// nothing written; [`DevicesError`] when the store fails, retry.
    pub async fn logout(&self, sub: &str, sid: &str) -> Result<(), DevicesError> {
        if sid.is_empty() {
            return Err(RefreshError::from(RevokeError::MissingSid).into());
        }
        check_subject(sub)?;
        let handle = self.handle(sid);
        if self.end_where(sub, |h| h == handle).await? == 0 {
            self.end_login(sub, sid).await?;
        }
        Ok(())
    }

    /// "Log out everywhere": [`RefreshTokens::logout_everywhere`] (every refresh family
    /// of `sub`, every access token issued up to now), then [`end_all`](Self::end_all)
    /// (the session data and entries of every listed login). Returns how many logins were
    /// listed and ended. [`RefreshTokens::logout_everywhere`] alone leaves them listed.
    ///
    /// # Errors
    ///
    /// [`DevicesError::Tokens`] ([`RevokeError::MissingSubject`], `400 invalid_request`)
    /// for a `sub` that is empty or only whitespace, nothing written; [`DevicesError`]
    /// when the store fails; what was not ended stays, retry.
    pub async fn logout_everywhere(&self, sub: &str) -> Result<usize, DevicesError> {
        check_subject(sub)?;
        self.tokens.logout_everywhere(sub).await?;
        self.end_all(sub).await
    }

    /// Ends every login of `sub`. Returns how many were ended.
    ///
    /// # Errors
    ///
    /// [`DevicesError::Tokens`] ([`RevokeError::MissingSubject`], `400 invalid_request`)
    /// for a `sub` that is empty or only whitespace, nothing written; [`DevicesError`]
    /// when the store fails; the logins not yet ended stay listed, retry.
    pub async fn end_all(&self, sub: &str) -> Result<usize, DevicesError> {
        self.end_where(sub, |_| true).await
    }

    async fn end_where(
        &self,
        sub: &str,
        select: impl Fn(&str) -> bool,
    ) -> Result<usize, DevicesError> {
        check_subject(sub)?;
        let key = self.index_key(sub);
        let (live, mut delete) = self.read(&key).await?;
        let mut ended = 0;
        let mut failure = None;
        for (handle, entry) in live.iter().filter(|(h, _)| select(h)) {
            match self.end_login(sub, &entry.sid).await {
                Ok(()) => {
                    delete.push(handle.clone());
                    ended += 1;
                }
                // Keep going: what was ended is unlisted below; the rest stays listed.
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.remove(&key, delete).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(ended),
        }
    }

    /// Ends one login: its refresh families and access tokens, then its session data.
    async fn end_login(&self, sub: &str, sid: &str) -> Result<(), DevicesError> {
        self.tokens.logout(sub, sid).await?;
        self.store
            .delete(&store_key(&self.session_prefix, sid))
            .await?;
        Ok(())
    }

    async fn remove(&self, key: &str, fields: Vec<String>) -> Result<(), StoreError> {
        if fields.is_empty() {
            return Ok(());
        }
        let changes = HashChanges {
            clear: false,
            delete: fields,
            set: Vec::new(),
        };
        self.store
            .hash_apply(key, &changes, self.options(HashMode::Existing))
            .await?;
        Ok(())
    }
}
