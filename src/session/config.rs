//! Session configuration.

use std::time::Duration;

use cookie::SameSite;
use http::HeaderName;

/// Where the session id travels.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    Cookie,
    Header(HeaderName),
}

/// Shared configuration of [`SessionLayer`](super::SessionLayer).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) transport: Transport,
    pub(crate) cookie_name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) max_age: Option<Duration>,
    pub(crate) idle: Duration,
    pub(crate) absolute: Duration,
    pub(crate) prefix: String,
    pub(crate) use_sid_claim: bool,
    pub(crate) max_retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: Transport::Cookie,
            cookie_name: "id".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
            idle: Duration::from_secs(24 * 3600),
            absolute: Duration::from_secs(30 * 24 * 3600),
            prefix: "sess:".to_owned(),
            use_sid_claim: false,
            max_retries: 8,
        }
    }
}

/// Length of a session id: 32 random bytes, URL-safe base64 without padding.
pub(crate) const ID_LEN: usize = 43;

/// Strict format check, before any store lookup.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
