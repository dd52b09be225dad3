//! [`RateLimiter`]: the limit itself, usable from the layer or from a handler.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use super::Quota;
use super::RateLimitError;
use crate::config::check_key_prefix;
use crate::store::{GcraOutcome, StateStore};
use crate::ConfigError;

/// Longest caller key kept as it is; longer ones (a client-controlled header) are hashed.
const MAX_PLAIN_KEY: usize = 128;

/// A rate limit over a [`StateStore`]: every instance sharing the store shares the limit.
/// One store round trip per [`check`](Self::check).
///
/// [`RateLimitLayer`](super::RateLimitLayer) uses one; a handler can use one directly to
/// limit by something only it knows, such as the username in a login body:
///
/// ```
/// use tower_stateless::rate_limit::{Quota, RateLimiter};
/// use tower_stateless::store::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let logins = RateLimiter::new(MemoryStore::new(), Quota::per_minute(5)?)
///     .key_prefix("rl:login:")?;
/// for _ in 0..5 {
///     assert!(logins.check("alice").await?.allowed());
/// }
/// let sixth = logins.check("alice").await?;
/// assert!(!sixth.allowed());
/// assert_eq!(sixth.retry_after_secs(), 12); // one of 5 per minute comes back every 12 s
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter<S> {
    store: S,
    quota: Quota,
    prefix: String,
    policy: Arc<str>,
}

impl<S: StateStore> RateLimiter<S> {
    /// A limiter of `quota` per key, with store keys prefixed `rl:` and the policy name
    /// `default` in the `RateLimit` headers.
    pub fn new(store: S, quota: Quota) -> Self {
        Self {
            store,
            quota,
            prefix: "rl:".to_owned(),
            policy: Arc::from("default"),
        }
    }

    /// Store key prefix (default `rl:`); keys are `<prefix>{<caller key>}`, under the
    /// store's own prefix. Give each limiter on one store its own prefix.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `key_prefix` when the prefix contains `{` or `}`: Redis
    /// Cluster hashes only the first `{...}` of a key, so a brace there would replace the
    /// caller key as the key's hash tag. (The limiter has no build step, so the setter
    /// itself refuses it, as a [`Quota`] refuses what cannot be kept.)
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let prefix = prefix.into();
        check_key_prefix(&prefix)?;
        self.prefix = prefix;
        Ok(self)
    }

    /// The policy name in the `RateLimit-Policy` and `RateLimit` headers (default
    /// `default`). Letters, digits, `_`, `-`, `.`, `:` and `*` are kept; others dropped.
    #[must_use]
    pub fn policy_name(mut self, name: &str) -> Self {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "_-.:*".contains(*c))
            .collect();
        self.policy = Arc::from(if name.is_empty() { "default" } else { &name });
        self
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Spends one request of `key`'s quota if there is one left.
    ///
    /// # Errors
    ///
    /// [`RateLimitError`] when the store fails; its
    /// [`is_unavailable`](RateLimitError::is_unavailable) tells an outage.
    pub async fn check(&self, key: &str) -> Result<Decision, RateLimitError> {
        let outcome = self
            .store
            .gcra(&self.store_key(key), self.quota.gcra())
            .await?;
        Ok(Decision {
            outcome,
            quota: self.quota,
            policy: self.policy.clone(),
        })
    }

    fn store_key(&self, key: &str) -> String {
        if key.len() <= MAX_PLAIN_KEY && !key.contains(['{', '}']) {
            format!("{}{{{key}}}", self.prefix)
        } else {
            let digest = crate::id::hex(&Sha256::digest(key.as_bytes()));
            format!("{}{{h:{digest}}}", self.prefix)
        }
    }
}

/// The answer of [`RateLimiter::check`].
#[derive(Debug, Clone)]
pub struct Decision {
    outcome: GcraOutcome,
    quota: Quota,
    policy: Arc<str>,
}

/// Whole seconds, rounded up: a wait of 200 µs is announced as 1 s, never as 0.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.outcome.allowed
    }

    /// Requests that could still be made at once.
    pub fn remaining(&self) -> u32 {
        self.outcome.remaining
    }

    /// When denied, seconds until a request would be allowed (rounded up, at least 1);
    /// 0 when allowed.
    pub fn retry_after_secs(&self) -> u64 {
        if self.outcome.allowed {
            0
        } else {
            ceil_secs(self.outcome.retry_after).max(1)
        }
    }

    /// The `RateLimit-Policy` and `RateLimit` header fields of
    /// draft-ietf-httpapi-ratelimit-headers (`"default";q=100;w=60` and
    /// `"default";r=99;t=1`), plus `Retry-After` when denied.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let policy = format!(
            "\"{}\";q={};w={}",
            self.policy,
            self.quota.count(),
            ceil_secs(self.quota.period()).max(1)
        );
        let limit = format!(
            "\"{}\";r={};t={}",
            self.policy,
            self.outcome.remaining,
            ceil_secs(self.outcome.reset_after)
        );
        // Built from a filtered name and numbers: always valid header values.
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&limit) {
            headers.insert("ratelimit", v);
        }
        if !self.outcome.allowed {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs()),
            );
        }
        headers
    }
}
