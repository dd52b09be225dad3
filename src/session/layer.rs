//! [`SessionLayer`] and its builder methods.

use std::sync::Arc;
use std::time::Duration;

use cookie::SameSite;
use http::HeaderName;
use tower_layer::Layer;

use super::config::{
    check_absolute_lifetime, check_cookie_attribute, check_cookie_name, check_idle_timeout,
    check_max_size, max_age_secs, Config, Transport,
};
use super::handle::StoreBackend;
use super::service::{SessionService, SharedBackend};
use crate::config::check_key_prefix;
use crate::store::StateStore;
use crate::{ConfigError, StoreFailure};

/// Adds a lazily loaded [`Session`](super::Session) to every request's extensions.
///
/// The configuration is held once, in an `Arc` the services share.
#[derive(Debug, Clone)]
pub struct SessionLayer<St> {
    store: St,
    config: Arc<Config>,
}

impl<St: StateStore> SessionLayer<St> {
    /// A layer with the defaults: cookie `id`, path `/`, `Secure`, `HttpOnly`, `SameSite=Lax`,
    /// session cookie (no max-age), idle timeout 24 h, absolute lifetime 30 days, key prefix
    /// `sess:`, size limit 1 MiB, 8 retries of [`Session::update`](super::Session::update).
    pub fn new(store: St) -> Self {
        Self {
            store,
            config: Arc::new(Config::default()),
        }
    }

    /// A builder step: the changed configuration replaces the shared one (the layer is
    /// configured before it makes services, so none holds the old one yet).
    fn set(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::clone(&self.config);
        f(&mut config);
        self.config = Arc::new(config);
        self
    }

    /// What to do when the store is unavailable (default [`StoreFailure::closed`]: `503`
    /// with `Retry-After` instead of the handler's answer); see [`StoreFailure`], the one
    /// setting every store-backed layer shares.
    ///
    /// With [`StoreFailure::open`] the handler's answer stands: a session that cannot be
    /// loaded reports it to the handler ([`SessionError::is_unavailable`](super::SessionError::is_unavailable)
    /// from every [`Session`](super::Session) method), the layer does not replace the
    /// handler's response with a `503`, and changes that cannot be written back are lost,
    /// with a warning. A store that answers something unexpected is `500` either way.
    #[must_use]
    pub fn on_store_failure(self, on_store_failure: StoreFailure) -> Self {
        self.set(|c| c.on_store_failure = on_store_failure)
    }

    /// Cookie name.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `cookie_name` when the name is empty or not an RFC 6265
    /// token (visible ASCII without separators such as space, `;`, `=`, `,`): such a
    /// cookie would never come back as sent, and every request would start a new session.
    pub fn cookie_name(self, name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        check_cookie_name(&name)?;
        let value = name;
        Ok(self.set(|c| c.cookie_name = value))
    }
    /// Cookie `Path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `cookie_path` when it is empty or has a `;`, a control or
    /// a non-ASCII character.
    pub fn cookie_path(self, path: impl Into<String>) -> Result<Self, ConfigError> {
        let path = path.into();
        check_cookie_attribute("cookie_path", &path)?;
        let value = path;
        Ok(self.set(|c| c.path = value))
    }
    /// Cookie `Domain`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `cookie_domain` when it is empty or has a `;`, a control or
    /// a non-ASCII character.
    pub fn cookie_domain(self, domain: impl Into<String>) -> Result<Self, ConfigError> {
        let domain = domain.into();
        check_cookie_attribute("cookie_domain", &domain)?;
        let value = Some(domain);
        Ok(self.set(|c| c.domain = value))
    }
    /// Cookie `Secure` flag (default on).
    #[must_use]
    pub fn secure(self, on: bool) -> Self {
        let value = on;
        self.set(|c| c.secure = value)
    }
    /// Cookie `HttpOnly` flag (default on).
    #[must_use]
    pub fn http_only(self, on: bool) -> Self {
        let value = on;
        self.set(|c| c.http_only = value)
    }
    /// Cookie `SameSite` (default `Lax`).
    #[must_use]
    pub fn same_site(self, same_site: SameSite) -> Self {
        let value = same_site;
        self.set(|c| c.same_site = value)
    }
    /// Cookie `Max-Age` (default: none, a browser-session cookie), in whole seconds
    /// (rounded down).
    ///
    /// A persistent cookie rolls like the idle expiry: every request that loads an existing
    /// session from the cookie gets the cookie again (same id, fresh `Max-Age`), at no extra
    /// store round trip. A request that never touches the session renews neither. An id taken
    /// from the JWT `sid` claim is not put into a cookie.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `max_age` when it is shorter than one second (the cookie
    /// would be dropped at once) or longer than `i64::MAX` seconds (the `Max-Age` range).
    pub fn max_age(self, max_age: Duration) -> Result<Self, ConfigError> {
        let value = Some(max_age_secs(max_age)?);
        Ok(self.set(|c| c.max_age_secs = value))
    }
    /// Carry the id in this request/response header instead of a cookie (API clients).
    #[must_use]
    pub fn header(self, name: HeaderName) -> Self {
        let value = Transport::Header(name);
        self.set(|c| c.transport = value)
    }
    /// Idle timeout, rolled by every write and by reads (rolling expiry; see
    /// [`refresh_interval`](Self::refresh_interval)): the TTL of the session in the store
    /// (default 24 h).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `idle_timeout` when it is shorter than one second or longer
    /// than the store accepts as a TTL (see [`StateStore`]).
    pub fn idle_timeout(self, idle: Duration) -> Result<Self, ConfigError> {
        let value = check_idle_timeout(idle)?;
        Ok(self.set(|c| c.idle = value))
    }
    /// How much of the idle expiry a read may find used up before it rolls it (default: a
    /// tenth of the idle timeout, at most one minute; never more than half of it).
    ///
    /// A read that finds the session's expiry closer than this to the full idle timeout
    /// leaves it alone, so most reads write nothing to the store: on Redis such a read is
    /// one `HGETALL`, and the read that finds it due pays one more round trip to roll it.
    /// Writes follow the same rule within their one round trip (on Redis, the write
    /// script's `PEXPIRE` runs only when the expiry is due). An idle session then ends
    /// between `idle_timeout - interval` and `idle_timeout` after its last request
    /// (ASP.NET Core's sliding expiration makes the same trade, with half the timeout).
    /// `Duration::ZERO` rolls on every read (one `MULTI`/`EXEC` transaction on Redis) and
    /// every write, as in earlier releases.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stateless::session::SessionLayer;
    /// use tower_stateless::store::MemoryStore;
    ///
    /// let layer = SessionLayer::new(MemoryStore::new())
    ///     .idle_timeout(Duration::from_secs(30 * 60))?
    ///     // Exact rolling: every read sets the expiry to 30 minutes from now.
    ///     .refresh_interval(Duration::ZERO);
    /// # let _ = layer;
    /// # Ok::<(), tower_stateless::ConfigError>(())
    /// ```
    #[must_use]
    pub fn refresh_interval(self, interval: Duration) -> Self {
        let value = Some(interval);
        self.set(|c| c.refresh = value)
    }
    /// Lets a [`LocalCache`](crate::store::LocalCache) in front of the store answer session
    /// reads from memory, with no round trip (default off; cookie transport only).
    ///
    /// A cached copy must never hide from a client the write it was just answered, even when
    /// its next request reaches another instance before Redis' invalidation does. So with
    /// this on, every write leaves a random **write tag** on the session, and the cookie
    /// carries it after the id (`<id>.<16 hex digits>`): the cookie is sent again after
    /// every write, and after every read that finds a tag other than the cookie's. A read
    /// is answered from the cache only by a copy that carries the cookie's tag (the state
    /// this client last wrote or saw) and only while a store read would not have rolled the
    /// idle expiry (see [`refresh_interval`](Self::refresh_interval)); anything else reads
    /// the store, which also refreshes the cache. Writes always go to the store.
    ///
    /// What a cached read may miss: another client's (or another concurrent request's)
    /// write, for as long as Redis' invalidation takes to reach this instance (the bound
    /// measured for revocations in PERFORMANCE.md); a destroyed session stays readable that
    /// long through a copied old cookie. Give the cache the layer's key prefix
    /// (`sess:` by default), or nothing is cached. With the id in a header or the JWT `sid`
    /// claim there is no tag to carry, and reads go to the store.
    ///
    /// A cookie with a tag is understood whether this is on or off, so turning it off (or
    /// rolling instances back) keeps every session.
    ///
    /// ```no_run
    /// use tower_stateless::session::SessionLayer;
    /// use tower_stateless::store::{LocalCache, RedisStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::from_url("redis://127.0.0.1:6379")?;
    /// let cached = LocalCache::builder(store).prefix("sess:").build()?;
    /// let layer = SessionLayer::new(cached).cached_reads(true);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn cached_reads(self, on: bool) -> Self {
        self.set(|c| c.cached_reads = on)
    }
    /// Absolute lifetime cap from creation, whatever the activity (default 30 days). It
    /// only shortens TTLs, so any length from one second up is accepted.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `absolute_lifetime` when it is shorter than one second (the
    /// age of a session counts whole seconds).
    pub fn absolute_lifetime(self, absolute: Duration) -> Result<Self, ConfigError> {
        let value = check_absolute_lifetime(absolute)?;
        Ok(self.set(|c| c.absolute = value))
    }
    /// Store key prefix (default `sess:`); keys are `<prefix>{<id>}`, under the store's
    /// own prefix ([`RedisStoreBuilder::key_prefix`](crate::store::RedisStoreBuilder::key_prefix)).
    /// [`Devices::new`](super::Devices::new) takes it from the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `key_prefix` when the prefix contains `{` or `}`: Redis
    /// Cluster hashes only the first `{...}` of a key, so a brace there would replace the
    /// session id as the key's hash tag.
    pub fn key_prefix(self, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let value = prefix.into();
        check_key_prefix(&value)?;
        Ok(self.set(|c| c.prefix = value))
    }

    /// The store key prefix, for [`Devices`](super::Devices) to find the sessions.
    pub(super) fn prefix(&self) -> &str {
        &self.config.prefix
    }
    /// Take the id from `RegisteredClaims::sid` in request extensions when present
    /// (hybrid JWT + session). The transport is then still used for new sessions.
    ///
    /// A `sid` claim takes precedence over the cookie or header; a malformed `sid` means no
    /// session (no store lookup, no fallback to the transport). Claims without `sid` fall
    /// back to the transport.
    ///
    /// When no session exists under a well-formed `sid`, the first write creates it under
    /// that `sid` (it comes from a token the server signed, so adopting it is no session
    /// fixation), and later requests with the same `sid` find it: the `sid` of
    /// [`RefreshTokens::issue`](crate::refresh::RefreshTokens::issue) keys a session of this
    /// layer. That id stays in the token; no cookie or header carries it. After
    /// [`Session::destroy`](super::Session::destroy) the `sid` session is gone, and a write
    /// in the same request starts a session under a fresh random id in the transport.
    #[must_use]
    pub fn id_from_sid_claim(self, on: bool) -> Self {
        let value = on;
        self.set(|c| c.use_sid_claim = value)
    }
    /// How many times [`Session::update`](super::Session::update) retries after a
    /// concurrent change of the same key (default 8), each after a full-jitter exponential
    /// backoff (4 ms window doubling up to 256 ms); then it returns
    /// [`SessionError::Conflict`](super::SessionError::Conflict). Ordinary writes never
    /// retry: they write only the keys the request changed, in one step.
    #[must_use]
    pub fn max_retries(self, retries: u32) -> Self {
        let value = retries;
        self.set(|c| c.max_retries = value)
    }
    /// The largest session, in bytes: keys plus their JSON values (default 1 MiB). A
    /// change that would grow a session past it is refused whole, never truncated:
    /// [`Session::insert`](super::Session::insert) and
    /// [`Session::update`](super::Session::update) return
    /// [`SessionError::TooLarge`](super::SessionError::TooLarge), and when concurrent
    /// requests together cross the limit, the store refuses the later write-back and the
    /// layer answers `413` with nothing saved. Changes that shrink an oversized session
    /// (after the limit was lowered) are allowed.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `max_size` for 0, or beyond 512 MiB (more than one store
    /// write carries).
    pub fn max_size(self, bytes: usize) -> Result<Self, ConfigError> {
        let value = check_max_size(bytes)?;
        Ok(self.set(|c| c.max_bytes = value))
    }
}

impl<S, St: StateStore> Layer<S> for SessionLayer<St> {
    type Service = SessionService<S, St>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            store: self.store.clone(),
            backend: SharedBackend(Arc::new(StoreBackend(self.store.clone()))),
            config: Arc::clone(&self.config),
        }
    }
}
