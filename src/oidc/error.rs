//! What can go wrong fetching an identity provider's keys.

use std::time::Duration;

use http::StatusCode;

use crate::jwt::KeyError;
use crate::ConfigError;

/// Why a [`RemoteJwks`](super::RemoteJwks) could not be built or refreshed.
///
/// Every variant names the URL or issuer concerned, and keeps the underlying error as its
/// `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// A setting of the builder that cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The issuer or JWKS URL does not parse, or cannot be a base for discovery.
    #[error("invalid URL {url:?}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: Option<url::ParseError>,
    },
    /// A plain `http` URL without [`RemoteJwks::allow_http`](super::RemoteJwks::allow_http).
    #[error("refusing plain http for {url}: use https, or allow_http(true) for local providers")]
    HttpNotAllowed {
        /// The refused URL.
        url: String,
    },
    /// The HTTP client could not be created (e.g. the TLS roots could not be loaded).
    #[error("the HTTP client could not be created")]
    Client(#[source] reqwest::Error),
    /// The request failed: connection refused, timeout, TLS, too many redirects or a
    /// redirect loop.
    #[error("fetching {url} failed")]
    Transport {
        /// The URL fetched.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with a status other than `2xx`.
    #[error("{url} answered {status}")]
    Status {
        /// The URL fetched.
        url: String,
        /// The status it answered.
        status: StatusCode,
    },
    /// The response body was larger than [`RemoteJwks::max_body_bytes`](super::RemoteJwks::max_body_bytes).
    #[error("{url} answered more than {limit} bytes")]
    TooLarge {
        /// The URL fetched.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The discovery document is not JSON with a string `issuer` and `jwks_uri`.
    #[error("{url} is not an OpenID discovery document")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The discovery document names another issuer than the configured one (OpenID
    /// Connect Discovery §4.3): its keys are not trusted.
    #[error("discovery for issuer {expected:?} names issuer {found:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The issuer the document names.
        found: String,
    },
    /// The JWKS document does not parse or holds no usable signature key.
    #[error("{url} is not a usable JWKS document")]
    Jwks {
        /// The JWKS URL.
        url: String,
        /// Why it cannot be used.
        #[source]
        source: KeyError,
    },
    /// No keys could be fetched within [`RemoteJwks::startup_timeout`](super::RemoteJwks::startup_timeout).
    #[error("no keys from {source_url} within {timeout:?}")]
    Startup {
        /// The issuer or JWKS URL.
        source_url: String,
        /// The deadline that passed.
        timeout: Duration,
        /// The last failure, if a fetch finished before the deadline.
        #[source]
        last: Option<Box<OidcError>>,
    },
    /// [`RemoteJwks::build`](super::RemoteJwks::build) was awaited outside a Tokio
    /// runtime, which the background refresh needs.
    #[error("the background key refresh needs a Tokio runtime")]
    NoRuntime,
    /// The key set was dropped; nothing is refreshed any more.
    #[error("the remote key set was dropped")]
    Closed,
}

impl OidcError {
    /// Whether retrying may help (the provider is down, slow or answered garbage), as
    /// opposed to a configuration mistake.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Transport { .. }
                | Self::Status { .. }
                | Self::TooLarge { .. }
                | Self::Discovery { .. }
                | Self::Jwks { .. }
                | Self::Startup { .. }
        )
    }
}
