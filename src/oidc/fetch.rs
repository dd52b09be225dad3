//! The HTTP transport: reqwest over rustls, with timeouts, a body cap and bounded
//! redirects.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CACHE_CONTROL;
use reqwest::redirect;
use url::Url;

use super::error::OidcError;

/// Transport settings, as set on [`RemoteJwks`](super::RemoteJwks).
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_redirects: usize,
    pub(crate) allow_http: bool,
}

/// One fetched document.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) body: Bytes,
    /// `Cache-Control: max-age`, `Some(0)` for `no-cache`/`no-store`.
    pub(crate) max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    client: reqwest::Client,
    transport: Transport,
}

impl Fetcher {
    pub(crate) fn new(transport: Transport) -> Result<Self, OidcError> {
        let max_redirects = transport.max_redirects;
        let allow_http = transport.allow_http;
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().contains(attempt.url()) {
                attempt.error("redirect loop")
            } else if attempt.previous().len() > max_redirects {
                attempt.error("too many redirects")
            } else if !allow_http && attempt.url().scheme() != "https" {
                attempt.error("redirect to plain http")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(transport.connect_timeout)
            .timeout(transport.timeout)
            .redirect(policy)
            .https_only(!allow_http)
            .user_agent(concat!("tower-stateless/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(OidcError::Client)?;
        Ok(Self { client, transport })
    }

    /// Refuses what the transport may not fetch (plain `http` unless allowed).
    pub(crate) fn check(&self, url: &Url) -> Result<(), OidcError> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.transport.allow_http => Ok(()),
            "http" => Err(OidcError::HttpNotAllowed {
                url: url.to_string(),
            }),
            _ => Err(OidcError::InvalidUrl {
                url: url.to_string(),
                source: None,
            }),
        }
    }

    /// GETs `url`, reading the body in chunks and giving up past the size cap.
    pub(crate) async fn get(&self, url: &Url) -> Result<Fetched, OidcError> {
        self.check(url)?;
        let transport = |source| OidcError::Transport {
            url: url.to_string(),
            source,
        };
        let limit = self.transport.max_body_bytes;
        let too_large = || OidcError::TooLarge {
            url: url.to_string(),
            limit,
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(OidcError::Status {
                url: url.to_string(),
                status,
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large());
        }
        let max_age = response
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len().saturating_add(chunk.len()) > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            body: body.freeze(),
            max_age,
        })
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache` and `no-store` count as zero.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        let (name, secs) = directive.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        secs.trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("MAX-AGE=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=-1"), None);
        assert_eq!(max_age("max-age=99999999999999999999999"), None);
    }
}
