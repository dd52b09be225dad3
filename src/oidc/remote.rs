//! Keys fetched from an identity provider and refreshed in the background.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use tokio::sync::{Mutex, Notify};
use url::Url;

use super::error::OidcError;
use super::fetch::{Fetcher, Transport};
use crate::jwt::key::{parse_jwks, JwksRules, KeyTable, RefreshHook};
use crate::jwt::JwtKeySet;
use crate::ConfigError;

const NEVER: u64 = u64::MAX;
const MAX_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Builds a [`JwtKeySet`] whose keys come from an identity provider: from its issuer URL
/// by OpenID Connect discovery, or from a JWKS URL.
///
/// See the [module docs](super) for the refresh rules and what happens before the first
/// fetch. Defaults: algorithms `RS256`; refresh every 5 minutes (or as `Cache-Control:
/// max-age` says, between 30 seconds and 1 hour); an unknown `kid` refetches at most
/// once per 30 seconds; connect timeout 5 s, request timeout 10 s; bodies up to 256 KiB;
/// up to 5 redirects; `https` only; `build` waits up to 10 s for the first keys.
#[derive(Clone)]
#[must_use]
pub struct RemoteJwks {
    source: Source,
    algorithms: Vec<Algorithm>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    max_refresh_interval: Duration,
    startup_timeout: Duration,
    transport: Transport,
}

#[derive(Clone, Debug)]
enum Source {
    Issuer(String),
    Jwks(String),
}

impl Source {
    fn label(&self) -> &str {
        match self {
            Source::Issuer(url) | Source::Jwks(url) => url,
        }
    }
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("source", &self.source)
            .field("algorithms", &self.algorithms)
            .field("refresh_interval", &self.refresh_interval)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("max_refresh_interval", &self.max_refresh_interval)
            .field("startup_timeout", &self.startup_timeout)
            .field("transport", &self.transport)
            .finish()
    }
}

impl RemoteJwks {
    fn with_source(source: Source) -> Self {
        Self {
            source,
            algorithms: vec![Algorithm::RS256],
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
            max_refresh_interval: Duration::from_secs(3600),
            startup_timeout: Duration::from_secs(10),
            transport: Transport {
                connect_timeout: Duration::from_secs(5),
                timeout: Duration::from_secs(10),
                max_body_bytes: 256 * 1024,
                max_redirects: 5,
                allow_http: false,
            },
        }
    }

    /// Keys of the OpenID provider `issuer` (e.g. `https://login.example.com/realms/app`):
    /// `{issuer}/.well-known/openid-configuration` is fetched, its `issuer` must equal
    /// `issuer` exactly, and its `jwks_uri` is then fetched and refreshed.
    pub fn discover(issuer: impl Into<String>) -> Self {
        Self::with_source(Source::Issuer(issuer.into()))
    }

    /// Keys of the JWKS document at `url`, without discovery.
    pub fn jwks_url(url: impl Into<String>) -> Self {
        Self::with_source(Source::Jwks(url.into()))
    }

    /// The algorithms the provider signs with (default `RS256`). A JWK whose `alg` is
    /// not one of them is skipped; an RSA JWK without `alg` is accepted for each RSA
    /// algorithm listed (and nothing else); EC and Ed25519 JWKs without `alg` for their
    /// curve's algorithm when listed. HMAC algorithms are refused: a published secret
    /// would let anyone sign.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// How often the keys are refetched when the provider sends no `Cache-Control:
    /// max-age` (default 5 minutes).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// The shortest time between two refetches caused by unknown `kid`s, and the lower
    /// bound on `max-age` and the retry delay after a failed refresh (default 30 s).
    /// However many tokens with unknown `kid`s arrive, they cause at most one fetch per
    /// this interval.
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// The upper bound on `Cache-Control: max-age` (default 1 hour).
    pub fn max_refresh_interval(mut self, interval: Duration) -> Self {
        self.max_refresh_interval = interval;
        self
    }

    /// How long [`build`](Self::build) waits for the first keys (default 10 s), retrying
    /// failed fetches meanwhile.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The TCP (and TLS) connect timeout of each request (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.transport.connect_timeout = timeout;
        self
    }

    /// The total timeout of each request, body included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.transport.timeout = timeout;
        self
    }

    /// The largest response body read (default 256 KiB); the body is read in chunks and
    /// the fetch fails as soon as it is exceeded.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.transport.max_body_bytes = bytes;
        self
    }

    /// How many redirects a fetch follows (default 5); a redirect loop fails at once.
    pub fn max_redirects(mut self, redirects: usize) -> Self {
        self.transport.max_redirects = redirects;
        self
    }

    /// Allows plain `http` URLs (default: refused), for tests and providers on the local
    /// network. Never for a provider reached over the internet.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.transport.allow_http = allow;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("refresh_interval", self.refresh_interval),
            ("min_refresh_interval", self.min_refresh_interval),
            ("max_refresh_interval", self.max_refresh_interval),
            ("startup_timeout", self.startup_timeout),
            ("connect_timeout", self.transport.connect_timeout),
            ("timeout", self.transport.timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(name, "must be more than zero"));
            }
            if value > MAX_INTERVAL {
                return Err(ConfigError::new(name, "at most 30 days"));
            }
        }
        if self.min_refresh_interval > self.refresh_interval {
            return Err(ConfigError::new(
                "min_refresh_interval",
                "must not exceed refresh_interval",
            ));
        }
        if self.refresh_interval > self.max_refresh_interval {
            return Err(ConfigError::new(
                "max_refresh_interval",
                "must not be less than refresh_interval",
            ));
        }
        if self.transport.max_body_bytes == 0 || self.transport.max_body_bytes > MAX_BODY {
            return Err(ConfigError::new(
                "max_body_bytes",
                "between 1 byte and 64 MiB",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::new("algorithms", "at least one algorithm"));
        }
        if self
            .algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err(ConfigError::new(
                "algorithms",
                "HMAC keys are never taken from a published key set",
            ));
        }
        Ok(())
    }

    /// Fetches the first keys, waiting up to [`startup_timeout`](Self::startup_timeout)
    /// and retrying meanwhile, then starts the background refresh on the current Tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`OidcError::Config`] for a setting that cannot work, [`OidcError::InvalidUrl`] and
    /// [`OidcError::HttpNotAllowed`] for the URL, [`OidcError::IssuerMismatch`] at once
    /// when discovery names another issuer, and [`OidcError::Startup`] (naming the issuer
    /// or JWKS URL, with the last failure as its source) when no usable keys arrived in
    /// time. [`OidcError::NoRuntime`] outside a Tokio runtime.
    pub async fn build(self) -> Result<RemoteKeys, OidcError> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OidcError::NoRuntime)?;
        let fetcher = Fetcher::new(self.transport.clone())?;
        let parse = |url: &str| {
            Url::parse(url).map_err(|source| OidcError::InvalidUrl {
                url: url.to_owned(),
                source: Some(source),
            })
        };
        let (origin, jwks_url) = match &self.source {
            Source::Issuer(issuer) => {
                let discovery = parse(&format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                ))?;
                fetcher.check(&discovery)?;
                (
                    Origin::Issuer {
                        issuer: issuer.clone(),
                        discovery,
                    },
                    None,
                )
            }
            Source::Jwks(url) => {
                let url = parse(url)?;
                fetcher.check(&url)?;
                (Origin::Jwks, Some(url))
            }
        };
        let refresher = Arc::new(Refresher {
            label: self.source.label().to_owned(),
            origin,
            fetcher,
            algorithms: self.algorithms,
            refresh_interval: self.refresh_interval,
            min_refresh_interval: self.min_refresh_interval,
            max_refresh_interval: self.max_refresh_interval,
            jwks_url: Mutex::new(jwks_url),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            started: Instant::now(),
            last_trigger_ms: AtomicU64::new(NEVER),
        });
        let table = Arc::new(KeyTable::remote(refresher.clone()));

        let mut last = None;
        let first = tokio::time::timeout(self.startup_timeout, async {
            let mut backoff = Duration::from_millis(50);
            loop {
                match refresher.refresh(&table).await {
                    Ok(max_age) => return Ok(max_age),
                    Err(error) if !error.is_transient() => return Err(error),
                    Err(error) => {
                        tracing::warn!(
                            source = %refresher.label,
                            error = %chain(&error),
                            "oidc: first key fetch failed; retrying"
                        );
                        last = Some(Box::new(error));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        })
        .await;
        let max_age = match first {
            Ok(Ok(max_age)) => max_age,
            Ok(Err(error)) => return Err(error),
            Err(_elapsed) => {
                return Err(OidcError::Startup {
                    source_url: refresher.label.clone(),
                    timeout: self.startup_timeout,
                    last,
                })
            }
        };
        runtime.spawn(run(
            Arc::downgrade(&table),
            Arc::clone(&refresher),
            refresher.next_after(max_age),
        ));
        Ok(RemoteKeys {
            keys: JwtKeySet::from_table(table),
            refresher,
        })
    }
}

/// A provider's keys, kept fresh by a background task: hand [`key_set`](Self::key_set)
/// (or the value itself, `JwtKeySet::from(remote)`) to anything that takes a
/// [`JwtKeySet`]. The task stops once this value, and every key set and layer made from
/// it, are dropped.
#[derive(Clone)]
pub struct RemoteKeys {
    keys: JwtKeySet,
    refresher: Arc<Refresher>,
}

impl fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("source", &self.refresher.label)
            .field("keys", &self.keys)
            .finish()
    }
}

impl RemoteKeys {
    /// A key set reading the refreshed keys (a cheap handle: clones share the table).
    pub fn key_set(&self) -> JwtKeySet {
        self.keys.clone()
    }

    /// The configured issuer, for keys built with [`RemoteJwks::discover`]: bind them
    /// with [`JwtKeySet::with_issuer`] to accept this issuer next to others.
    pub fn issuer(&self) -> Option<&str> {
        match &self.refresher.origin {
            Origin::Issuer { issuer, .. } => Some(issuer),
            Origin::Jwks => None,
        }
    }

    /// Refetches the keys now and waits for the result. On failure the last good keys
    /// stay in use. The background schedule is not changed.
    pub async fn refresh(&self) -> Result<(), OidcError> {
        self.refresher
            .refresh(self.keys.own_table())
            .await
            .map(|_| ())
            .inspect_err(|error| {
                tracing::warn!(
                    source = %self.refresher.label,
                    error = %chain(error),
                    "oidc: key refresh failed; keeping the last good keys"
                );
            })
    }
}

impl From<RemoteKeys> for JwtKeySet {
    fn from(remote: RemoteKeys) -> Self {
        remote.keys
    }
}

#[derive(Debug)]
enum Origin {
    Issuer { issuer: String, discovery: Url },
    Jwks,
}

/// The state the background task and the request path share. The request path only
/// touches the atomics and the `Notify`.
struct Refresher {
    label: String,
    origin: Origin,
    fetcher: Fetcher,
    algorithms: Vec<Algorithm>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    max_refresh_interval: Duration,
    /// The JWKS URL once known; the lock also keeps two fetches from running at once.
    jwks_url: Mutex<Option<Url>>,
    wake: Notify,
    closed: AtomicBool,
    started: Instant,
    /// When an unknown `kid` last woke the task, in ms since `started`.
    last_trigger_ms: AtomicU64,
}

impl fmt::Debug for Refresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher")
            .field("source", &self.label)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Refresher {
    fn next_after(&self, max_age: Option<Duration>) -> Duration {
        match max_age {
            Some(age) => age.clamp(self.min_refresh_interval, self.max_refresh_interval),
            None => self.refresh_interval,
        }
    }

    async fn discover(&self) -> Result<Url, OidcError> {
        let Origin::Issuer { issuer, discovery } = &self.origin else {
            return Err(OidcError::InvalidUrl {
                url: self.label.clone(),
                source: None,
            });
        };
        let fetched = self.fetcher.get(discovery).await?;
        let document: Discovery =
            serde_json::from_slice(&fetched.body).map_err(|source| OidcError::Discovery {
                url: discovery.to_string(),
                source,
            })?;
        if document.issuer != *issuer {
            return Err(OidcError::IssuerMismatch {
                expected: issuer.clone(),
                found: document.issuer,
            });
        }
        let url = Url::parse(&document.jwks_uri).map_err(|source| OidcError::InvalidUrl {
            url: document.jwks_uri.clone(),
            source: Some(source),
        })?;
        self.fetcher.check(&url)?;
        Ok(url)
    }

    /// Fetches the keys and publishes them; returns the JWKS response's max-age.
    async fn refresh(&self, table: &KeyTable) -> Result<Option<Duration>, OidcError> {
        let mut jwks_url = self.jwks_url.lock().await;
        let url = match &*jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.discover().await?;
                *jwks_url = Some(url.clone());
                url
            }
        };
        let result = self.fetch_keys(&url).await;
        if result.is_err() && matches!(self.origin, Origin::Issuer { .. }) {
            // The provider may have moved its keys: discover again next time.
            *jwks_url = None;
        }
        let (entries, max_age) = result?;
        tracing::debug!(source = %self.label, keys = entries.len(), "oidc: keys refreshed");
        table.publish(entries);
        Ok(max_age)
    }

    async fn fetch_keys(
        &self,
        url: &Url,
    ) -> Result<(Vec<crate::jwt::key::KeyEntry>, Option<Duration>), OidcError> {
        let fetched = self.fetcher.get(url).await?;
        let text = String::from_utf8_lossy(&fetched.body);
        let rules = JwksRules {
            algorithms: Some(&self.algorithms),
            allow_hmac: false,
            strict: false,
        };
        let entries = parse_jwks(&text, &rules).map_err(|source| OidcError::Jwks {
            url: url.to_string(),
            source,
        })?;
        Ok((entries, fetched.max_age))
    }
}

impl RefreshHook for Refresher {
    fn unknown_kid(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let min = u64::try_from(self.min_refresh_interval.as_millis()).unwrap_or(NEVER);
        let last = self.last_trigger_ms.load(Ordering::Acquire);
        if last != NEVER && now.saturating_sub(last) < min {
            return;
        }
        // One winner per interval, however many requests race here; only the winner
        // touches the `Notify` (whose waker list has a short internal lock).
        if self
            .last_trigger_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::debug!(source = %self.label, "oidc: unknown kid; refreshing the keys");
            self.wake.notify_one();
        }
    }

    fn closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The background refresh: on the schedule, or when woken by an unknown `kid`; stops
/// when the table is gone.
async fn run(table: Weak<KeyTable>, refresher: Arc<Refresher>, mut wait: Duration) {
    loop {
        let _ = tokio::time::timeout(wait, refresher.wake.notified()).await;
        if refresher.closed.load(Ordering::Acquire) {
            break;
        }
        let Some(table) = table.upgrade() else {
            break;
        };
        wait = match refresher.refresh(&table).await {
            Ok(max_age) => refresher.next_after(max_age),
            Err(error) => {
                tracing::warn!(
                    source = %refresher.label,
                    error = %chain(&error),
                    keys = table.len(),
                    "oidc: key refresh failed; keeping the last good keys"
                );
                refresher.min_refresh_interval
            }
        };
    }
    tracing::debug!(source = %refresher.label, "oidc: key set dropped; refresh stopped");
}

/// An error and its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
