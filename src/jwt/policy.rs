//! The one token policy: keys, signing key, access-token TTL, leeway, issuer, audience.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};

use super::issuer::TokenIssuer;
use super::key::{JwtKeySet, KeyError};
use super::layer::JwtAuthLayer;
use crate::ConfigError;

/// Access tokens live 15 minutes unless the policy says otherwise.
const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest token lifetime accepted unless the policy says otherwise (or its access TTL,
/// when that is longer).
const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Clock skew tolerated on `exp` and `nbf` unless the policy says otherwise.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest leeway: a skew beyond it is a broken clock, and a leeway near the Unix time
/// itself would make the verifier's `now − leeway` underflow.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);
/// The longest TTL the store contract accepts; revocation entries live up to the longest
/// token lifetime plus twice the leeway, so that lifetime stays within it.
const MAX_STORE_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The single source of every setting that the token layers must agree on.
///
/// One value holds the keys ([`JwtKeySet`]), the signing key id, the access-token TTL,
/// the leeway, the issuer and the audience. Everything that verifies, mints or revokes
/// tokens is derived from it, so that no TTL or leeway is written twice:
///
/// | derived | how |
/// |---|---|
/// | [`JwtAuthLayer`] | [`policy.auth_layer()`](Self::auth_layer), with revocation: `.revocation(store)` |
/// | [`TokenIssuer`] | [`policy.token_issuer()`](Self::token_issuer) |
/// | [`Revoker`](crate::revocation::Revoker) | `Revoker::new(store, &policy)` |
/// | [`RefreshTokens`](crate::refresh::RefreshTokens) | `RefreshTokens::builder(store, &policy)` |
///
/// The guarantee this buys: a revoked token stays refused for as long as the JWT layer
/// would accept it (until `exp` plus the leeway has passed), because the revocation
/// entries are kept for exactly that window, computed from the same value. For tokens
/// minted elsewhere (an identity provider), the JWT layer refuses a token whose `exp` is
/// further away than the [longest token lifetime](TokenPolicyBuilder::max_token_lifetime)
/// (default 24 hours), so that no accepted token outlives a "log out everywhere".
///
/// Cheap to clone (an `Arc` inside). Every instance of a service must build the same
/// policy (same keys, TTL, leeway, issuer and audience).
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
///
/// let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
/// let policy = TokenPolicy::builder(keys)
///     .signing_key("v1")
///     .access_ttl(Duration::from_secs(600))
///     .leeway(Duration::from_secs(30))
///     .issuer("https://auth.example.com")
///     .audience("orders")
///     .build()?;
///
/// let issued = policy.token_issuer()?.issue("alice")?;
/// assert_eq!(issued.claims.exp - issued.claims.iat.unwrap_or_default(), 600);
/// let _layer = policy.auth_layer(); // verifies what the issuer mints
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Settings refused at build time
///
/// [`TokenPolicyBuilder::build`] returns a [`ConfigError`] naming the setting for: a
/// signing key id that is not in the key set or cannot sign (`signing_key`), an access
/// TTL under one second or beyond the store's 100-year range (`access_ttl`), a longest
/// token lifetime shorter than the access TTL or beyond that range
/// (`max_token_lifetime`), a leeway over one hour (`leeway`), and an empty key set
/// (`keys`).
#[derive(Clone)]
pub struct TokenPolicy {
    inner: Arc<Inner>,
}

struct Inner {
    keys: JwtKeySet,
    signing: Option<Signing>,
    access_ttl: Duration,
    max_lifetime: Duration,
    leeway_secs: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

/// The key tokens are minted with.
#[derive(Clone)]
pub(crate) struct Signing {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    pub(crate) key: EncodingKey,
}

impl fmt::Debug for TokenPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("TokenPolicy")
            .field("keys", &inner.keys)
            .field("signing_key", &inner.signing.as_ref().map(|s| &s.kid))
            .field("access_ttl", &inner.access_ttl)
            .field("max_token_lifetime", &inner.max_lifetime)
            .field("leeway", &self.leeway())
            .field("issuer", &inner.issuer)
            .field("audience", &inner.audience)
            .finish()
    }
}

impl TokenPolicy {
    /// A builder over `keys`, with the defaults: no signing key (verify only), access
    /// tokens of 15 minutes, tokens accepted with at most 24 hours left to live, a 30-second
    /// leeway, no issuer and no audience.
    pub fn builder(keys: JwtKeySet) -> TokenPolicyBuilder {
        TokenPolicyBuilder {
            keys,
            signing_key: None,
            access_ttl: DEFAULT_ACCESS_TTL,
            max_token_lifetime: None,
            leeway: DEFAULT_LEEWAY,
            issuer: None,
            audience: None,
        }
    }

    /// The JWT layer verifying tokens under this policy: its keys, leeway, issuer and
    /// audience. Add revocation with [`JwtAuthLayer::revocation`].
    pub fn auth_layer(&self) -> JwtAuthLayer {
        JwtAuthLayer::new(self)
    }

    /// The issuer minting access tokens under this policy: signed with its signing key,
    /// living its access TTL, with its issuer and audience.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `signing_key` when the policy was built without one.
    pub fn token_issuer(&self) -> Result<TokenIssuer, ConfigError> {
        if self.inner.signing.is_none() {
            return Err(no_signing_key());
        }
        Ok(TokenIssuer::new(self.clone()))
    }

    /// The keys tokens are verified with.
    pub fn keys(&self) -> &JwtKeySet {
        &self.inner.keys
    }

    /// How long minted access tokens live.
    pub fn access_ttl(&self) -> Duration {
        self.inner.access_ttl
    }

    /// The longest time a verified token may still have to live: the JWT layer refuses a
    /// token whose `exp` lies further ahead (beyond the leeway), and revocation entries are
    /// kept this long plus twice the leeway (one for the `exp` check, one for the accepted
    /// `exp` itself).
    pub fn max_token_lifetime(&self) -> Duration {
        self.inner.max_lifetime
    }

    /// The clock skew tolerated on `exp` and `nbf`, in whole seconds.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.inner.leeway_secs)
    }

    /// The required `iss`, set on minted tokens.
    pub fn issuer(&self) -> Option<&str> {
        self.inner.issuer.as_deref()
    }

    /// The required `aud`, set on minted tokens.
    pub fn audience(&self) -> Option<&str> {
        self.inner.audience.as_deref()
    }

    pub(crate) fn leeway_secs(&self) -> u64 {
        self.inner.leeway_secs
    }

    pub(crate) fn signing(&self) -> Option<&Signing> {
        self.inner.signing.as_ref()
    }

    /// Unix time (seconds) from which the JWT layer refuses a token expiring at `exp`.
    ///
    /// The verifier compares `exp` with the current *whole* second minus the leeway, so it
    /// accepts the token while `floor(now) <= exp + leeway`, i.e. until `exp + leeway + 1`.
    pub(crate) fn refused_from(&self, exp: u64) -> Duration {
        Duration::from_secs(exp)
            .saturating_add(Duration::from_secs(self.inner.leeway_secs))
            .saturating_add(Duration::from_secs(1))
    }

    pub(crate) fn max_lifetime_secs(&self) -> u64 {
        self.inner.max_lifetime.as_secs()
    }

    /// How long a token accepted now may still be accepted: its `exp` may lie the longest
    /// token lifetime plus the leeway ahead, and it is accepted until that `exp` plus the
    /// leeway plus the last partial second (see [`refused_from`](Self::refused_from)).
    pub(crate) fn acceptance_window(&self) -> Duration {
        self.inner
            .max_lifetime
            .saturating_add(Duration::from_secs(2 * self.inner.leeway_secs))
            .saturating_add(Duration::from_secs(1))
    }
}

fn no_signing_key() -> ConfigError {
    ConfigError::new(
        "signing_key",
        "the token policy has no signing key; set TokenPolicyBuilder::signing_key",
    )
}

/// Builds a [`TokenPolicy`]; see there for the settings and their defaults.
#[must_use]
pub struct TokenPolicyBuilder {
    keys: JwtKeySet,
    signing_key: Option<String>,
    access_ttl: Duration,
    max_token_lifetime: Option<Duration>,
    leeway: Duration,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for TokenPolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPolicyBuilder")
            .field("keys", &self.keys)
            .field("signing_key", &self.signing_key)
            .field("access_ttl", &self.access_ttl)
            .field("max_token_lifetime", &self.max_token_lifetime)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenPolicyBuilder {
    /// The id of the key of the set that signs minted tokens (an HMAC secret or a private
    /// key). Without it the policy only verifies.
    pub fn signing_key(mut self, kid: impl Into<String>) -> Self {
        self.signing_key = Some(kid.into());
        self
    }

    /// How long minted access tokens live (default 15 minutes; at least one second, at
    /// most 100 years).
    pub fn access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
        self
    }

    /// The longest time a token may still have to live when it is verified (default 24
    /// hours, or the access TTL when that is longer; whole seconds, a fraction is dropped).
    /// The JWT layer refuses a token whose `exp` is more than this plus the leeway ahead
    /// (`invalid_token`), and the revocation entries of a session or a subject ("log out
    /// everywhere") are kept this long plus twice the leeway: no token the layer accepts can
    /// outlive its revocation. Set it to the longest access-token lifetime of the identity
    /// providers whose tokens you accept.
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_token_lifetime = Some(lifetime);
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 30 s; at most one hour). A
    /// fraction of a second is rounded up. Revocation entries are kept this much longer
    /// than the token they revoke.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The `iss` that minted tokens carry and verified tokens must carry.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The `aud` that minted tokens carry and verified tokens must name. Without an
    /// audience, a token that carries `aud` is refused (RFC 7519 §4.1.3).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The policy, or the first setting that cannot work.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `keys`, `signing_key`, `access_ttl`, `max_token_lifetime`
    /// or `leeway`; see [`TokenPolicy`].
    pub fn build(self) -> Result<TokenPolicy, ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::new("keys", "the key set holds no key"));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::new(
                "leeway",
                "at most one hour; larger clock skews are broken clocks",
            ));
        }
        let leeway_secs = self.leeway.as_secs() + u64::from(self.leeway.subsec_nanos() > 0);
        if self.access_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("access_ttl", "at least one second"));
        }
        let too_long = |ttl: Duration| {
            ttl.saturating_add(Duration::from_secs(2 * leeway_secs + 1)) > MAX_STORE_TTL
        };
        if too_long(self.access_ttl) {
            return Err(ConfigError::new(
                "access_ttl",
                "at most 100 years including the leeway, the longest TTL a store keeps",
            ));
        }
        let max_lifetime = match self.max_token_lifetime {
            None => DEFAULT_MAX_TOKEN_LIFETIME.max(self.access_ttl),
            Some(lifetime) if lifetime < self.access_ttl => {
                return Err(ConfigError::new(
                    "max_token_lifetime",
                    "at least the access TTL, or the policy would refuse its own tokens",
                ));
            }
            Some(lifetime) if too_long(lifetime) => {
                return Err(ConfigError::new(
                    "max_token_lifetime",
                    "at most 100 years including the leeway, the longest TTL a store keeps",
                ));
            }
            Some(lifetime) => Duration::from_secs(lifetime.as_secs()),
        };
        let signing = match &self.signing_key {
            None => None,
            Some(kid) => {
                let entry = self.keys.signing_key(kid).map_err(|error| {
                    ConfigError::new(
                        "signing_key",
                        match error {
                            KeyError::NotSigningKey(_) => {
                                format!("key {kid:?} cannot sign (a verify-only public key)")
                            }
                            _ => format!("no key {kid:?} in the key set"),
                        },
                    )
                })?;
                let key = entry.encoding.clone().ok_or_else(|| {
                    ConfigError::new("signing_key", format!("key {kid:?} cannot sign"))
                })?;
                Some(Signing {
                    kid: kid.clone(),
                    alg: entry.alg,
                    key,
                })
            }
        };
        Ok(TokenPolicy {
            inner: Arc::new(Inner {
                keys: self.keys,
                signing,
                access_ttl: self.access_ttl,
                max_lifetime,
                leeway_secs,
                issuer: self.issuer,
                audience: self.audience,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeySet {
        JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, &[7; 32])
            .unwrap()
    }

    #[test]
    fn leeway_rounds_up_and_window_covers_the_last_second() {
        let policy = TokenPolicy::builder(keys())
            .leeway(Duration::from_millis(1500))
            .access_ttl(Duration::from_secs(60))
            .max_token_lifetime(Duration::from_millis(90_500))
            .build()
            .unwrap();
        assert_eq!(policy.leeway(), Duration::from_secs(2));
        assert_eq!(policy.refused_from(100), Duration::from_secs(103));
        assert_eq!(policy.max_token_lifetime(), Duration::from_secs(90));
        assert_eq!(policy.acceptance_window(), Duration::from_secs(95));
    }

    #[test]
    fn the_longest_token_lifetime_defaults_to_a_day_or_the_access_ttl() {
        let policy = TokenPolicy::builder(keys()).build().unwrap();
        assert_eq!(policy.max_token_lifetime(), Duration::from_secs(24 * 3600));
        assert_eq!(
            policy.acceptance_window(),
            Duration::from_secs(24 * 3600 + 61)
        );
        let week = Duration::from_secs(7 * 24 * 3600);
        let policy = TokenPolicy::builder(keys())
            .access_ttl(week)
            .build()
            .unwrap();
        assert_eq!(policy.max_token_lifetime(), week);
    }

    #[test]
    fn a_longest_token_lifetime_that_cannot_work_is_refused() {
        for lifetime in [
            Duration::from_secs(59),
            Duration::from_secs(101 * 365 * 24 * 3600),
        ] {
            let error = TokenPolicy::builder(keys())
                .access_ttl(Duration::from_secs(60))
                .max_token_lifetime(lifetime)
                .build()
                .unwrap_err();
            assert_eq!(error.setting(), "max_token_lifetime", "{lifetime:?}");
        }
    }
}
