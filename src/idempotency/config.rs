//! The configuration an [`IdempotencyLayer`](super::IdempotencyLayer) holds, and the checks
//! its builder applies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use tokio::sync::Semaphore;

use super::scope::Scope;
use crate::{ConfigError, StoreFailure};

/// The largest body limit accepted: a stored response must fit in one store value, and
/// Redis holds at most 512 MiB in one string.
const MAX_BODY_LIMIT: usize = 512 * 1024 * 1024;

/// The shortest lease accepted: it is renewed every third of itself, in whole milliseconds.
pub(crate) const MIN_LOCK_TTL: Duration = Duration::from_millis(3);

type Predicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// Whether a request must carry a key.
#[derive(Clone)]
pub(crate) enum Required {
    Never,
    Always,
    If(Predicate),
}

impl fmt::Debug for Required {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Required::Never => f.write_str("Never"),
            Required::Always => f.write_str("Always"),
            Required::If(_) => f.write_str("If(<fn>)"),
        }
    }
}

/// Response headers that are never replayed, whatever is configured: they belong to the
/// original exchange, not to the result.
const NEVER_REPLAYED: &[&str] = &[
    "set-cookie",
    "date",
    "age",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "connection",
    "transfer-encoding",
    "content-length",
];

/// Response headers that are part of the result itself: how to read the body, and a gRPC
/// answer's status when it came as a trailers-only response.
const ALWAYS_REPLAYED: &[&str] = &[
    "content-type",
    "content-encoding",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: Required,
    pub(crate) prefix: String,
    pub(crate) lock_ttl: Duration,
    pub(crate) retention: Duration,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) replay_headers: Vec<HeaderName>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) store_server_errors: bool,
    pub(crate) on_store_failure: StoreFailure,
    pub(crate) scope: Scope,
    pub(crate) max_in_flight: usize,
    /// Shared by every service this layer (and its clones) builds.
    pub(crate) in_flight: Arc<Semaphore>,
}

impl Config {
    pub(crate) fn replays(&self, name: &HeaderName) -> bool {
        (self.replay_headers.contains(name) || ALWAYS_REPLAYED.contains(&name.as_str()))
            && !NEVER_REPLAYED.contains(&name.as_str())
    }

    pub(crate) fn required(&self, method: &Method, uri: &Uri) -> bool {
        match &self.required {
            Required::Never => false,
            Required::Always => true,
            Required::If(f) => f(method, uri),
        }
    }
}

/// Keyed requests one layer holds at once by default (see
/// [`IdempotencyLayer::max_in_flight`](super::IdempotencyLayer::max_in_flight)).
const DEFAULT_MAX_IN_FLIGHT: usize = 128;

/// A TTL the store can hold (1 ms to a century), or the error naming `setting`.
pub(crate) fn store_ttl(
    setting: &'static str,
    ttl: Duration,
    min: Duration,
) -> Result<(), ConfigError> {
    if ttl < min || crate::store::ttl_millis(ttl).is_err() {
        return Err(ConfigError::new(
            setting,
            format!("{ttl:?} is outside the range the store holds ({min:?} to 100 years)"),
        ));
    }
    Ok(())
}

/// A body limit of 1 byte to 512 MiB, or the error naming `setting`.
pub(crate) fn body_limit(setting: &'static str, bytes: usize) -> Result<(), ConfigError> {
    if bytes == 0 || bytes > MAX_BODY_LIMIT {
        return Err(ConfigError::new(
            setting,
            format!("{bytes} bytes; it must be between 1 byte and 512 MiB"),
        ));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("idempotency-key"),
            methods: vec![Method::POST, Method::PATCH],
            required: Required::Never,
            prefix: "idem:".to_owned(),
            lock_ttl: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            fingerprint_headers: Vec::new(),
            replay_headers: vec![
                http::header::CONTENT_TYPE,
                http::header::CONTENT_ENCODING,
                http::header::LOCATION,
                http::header::ETAG,
                http::header::LINK,
                http::header::VARY,
            ],
            max_request_body: 1024 * 1024,
            max_response_body: 4 * 1024 * 1024,
            store_server_errors: false,
            on_store_failure: StoreFailure::closed(),
            scope: Scope::subject(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
        }
    }
}
