use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use http::{Method, Uri};
use tower_layer::Layer;

use super::policy::TokenPolicy;
use super::service::JwtAuthService;
use super::source::TokenSource;
use super::verify::{Config, Verifier};
use crate::revocation::RevocationCheck;

/// Verifies a JWT on every request and puts its claims into the request extensions.
///
/// Made from a [`TokenPolicy`] ([`TokenPolicy::auth_layer`] or [`JwtAuthLayer::new`]),
/// which fixes the keys, the leeway, the issuer and the audience. `T` is the
/// application's claims type, `serde_json::Value` unless [`claims`](Self::claims) picks
/// another (any `DeserializeOwned + Clone + Send + Sync + 'static`); the service inserts
/// the decoded `T` **and** a [`RegisteredClaims`](crate::RegisteredClaims) for the other
/// layers. Requests without a valid token never reach the inner service, except on
/// [public](Self::public_path) paths (not inspected) and, without any token,
/// [optional](Self::optional_path) paths. See the [module docs](super) for the checks and
/// the responses.
///
/// `R` is the revocation check: `()` for none, or a
/// [`RevocationCheck`](crate::revocation::RevocationCheck) added with
/// [`revocation`](Self::revocation), run in the same service right after verification.
#[must_use]
pub struct JwtAuthLayer<T = serde_json::Value, R = ()> {
    policy: TokenPolicy,
    config: Config,
    revocation: R,
    /// The policy and the configuration above, prepared for verification: built when the
    /// layer is configured, shared (one `Arc`) by every service the layer makes.
    verifier: Arc<Verifier>,
    _claims: PhantomData<fn() -> T>,
}

impl<T, R: Clone> Clone for JwtAuthLayer<T, R> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            config: self.config.clone(),
            revocation: self.revocation.clone(),
            verifier: self.verifier.clone(),
            _claims: PhantomData,
        }
    }
}

impl<T, R: fmt::Debug> fmt::Debug for JwtAuthLayer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("policy", &self.policy)
            .field("config", &self.config)
            .field("revocation", &self.revocation)
            .field("claims", &std::any::type_name::<T>())
            .finish()
    }
}

impl JwtAuthLayer {
    /// A layer accepting the tokens `policy` describes, read from `Authorization: Bearer`,
    /// with an 8 KiB size limit, inserting `serde_json::Value` claims. The same as
    /// [`policy.auth_layer()`](TokenPolicy::auth_layer).
    pub fn new(policy: &TokenPolicy) -> Self {
        let config = Config::default();
        Self {
            verifier: Arc::new(Verifier::new(policy.clone(), config.clone())),
            policy: policy.clone(),
            config,
            revocation: (),
            _claims: PhantomData,
        }
    }
}

impl<T> JwtAuthLayer<T> {
    /// Checks every verified token against the revocation list in `store` (or a
    /// [`RevocationCheck`] with its own failure settings), in one store round trip, before
    /// the inner service is called.
    ///
    /// The check is part of this layer's service, so it always sees verified claims: the
    /// wrong order (revocation before verification) cannot be built. The inner service
    /// must then be `Clone`. The answers are in the [`revocation`](crate::revocation)
    /// module docs.
    pub fn revocation<St>(
        self,
        check: impl Into<RevocationCheck<St>>,
    ) -> JwtAuthLayer<T, RevocationCheck<St>> {
        JwtAuthLayer {
            policy: self.policy,
            config: self.config,
            revocation: check.into(),
            verifier: self.verifier,
            _claims: PhantomData,
        }
    }
}

impl<T, R> JwtAuthLayer<T, R> {
    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self.verifier = Arc::new(Verifier::new(self.policy.clone(), self.config.clone()));
        self
    }

    /// Deserializes the claims into `U` (the application's own claims type) instead of
    /// `T`: `policy.auth_layer().claims::<MyClaims>()`.
    pub fn claims<U>(self) -> JwtAuthLayer<U, R> {
        JwtAuthLayer {
            policy: self.policy,
            config: self.config,
            revocation: self.revocation,
            verifier: self.verifier,
            _claims: PhantomData,
        }
    }

    /// The policy the layer verifies under.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// The longest token accepted, in bytes (default 8 KiB). Longer tokens are answered
    /// `401 invalid_token` before any decoding.
    pub fn max_token_len(self, bytes: usize) -> Self {
        self.configure(|c| {
            c.max_token_len = bytes;
        })
    }

    /// The `realm` of the `WWW-Authenticate` challenge. Quotes and backslashes are
    /// escaped; characters a header cannot carry are dropped.
    pub fn realm(self, realm: impl Into<String>) -> Self {
        self.configure(|c| {
            c.realm = Some(realm.into());
        })
    }

    /// Reads the token from this one source instead of `Authorization: Bearer`.
    pub fn token_source(self, source: TokenSource) -> Self {
        self.configure(|c| {
            c.sources = vec![source];
        })
    }

    /// Reads the token from any of these sources; a request using more than one is
    /// answered `400 invalid_request`. An empty list keeps the current sources.
    pub fn token_sources(self, sources: impl IntoIterator<Item = TokenSource>) -> Self {
        self.configure(|c| {
            let sources: Vec<_> = sources.into_iter().collect();
            if !sources.is_empty() {
                c.sources = sources;
            }
        })
    }

    /// Lets requests for exactly this path (e.g. `/health`, `/login`) through without a
    /// token. The match is exact on the URI path (no prefix, no trailing-slash or case
    /// folding); such requests are not inspected and carry no claims.
    pub fn public_path(self, path: impl Into<String>) -> Self {
        self.configure(|c| {
            c.public_paths.push(path.into());
        })
    }

    /// Lets requests through without a token when `predicate` returns `true`, e.g. CORS
    /// preflights (`OPTIONS`) or a prefix of your choosing. Such requests are not
    /// inspected and carry no claims. Replaces a previous predicate.
    pub fn public_if<F>(self, predicate: F) -> Self
    where
        F: Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    {
        self.configure(|c| {
            c.public_if = Some(Arc::new(predicate));
        })
    }

    /// Makes the token optional for requests for exactly this path (e.g. `/products`, a
    /// page that shows "your cart" to a signed-in caller). The match is exact on the URI
    /// path, as for [`public_path`](Self::public_path). A request without a token passes
    /// and carries no claims; a request with one is checked as on any other path: a valid
    /// token's claims are inserted, an invalid, expired or revoked one is refused with
    /// the same answer (`401 invalid_token`), never treated as anonymous. A path that is
    /// also public is public. See [Public and optional paths](super#public-and-optional-paths).
    pub fn optional_path(self, path: impl Into<String>) -> Self {
        self.configure(|c| {
            c.optional_paths.push(path.into());
        })
    }

    /// Makes the token optional for requests when `predicate` returns `true`, e.g. every
    /// `GET` or a prefix of your choosing: without a token they pass and carry no
    /// claims, with one they are checked as on any other path (see
    /// [`optional_path`](Self::optional_path)). A request that is also public is public.
    /// Replaces a previous predicate.
    pub fn optional_if<F>(self, predicate: F) -> Self
    where
        F: Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    {
        self.configure(|c| {
            c.optional_if = Some(Arc::new(predicate));
        })
    }
}

impl<S, T, R: Clone> Layer<S> for JwtAuthLayer<T, R> {
    type Service = JwtAuthService<S, T, R>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuthService::new(inner, Arc::clone(&self.verifier), self.revocation.clone())
    }
}
