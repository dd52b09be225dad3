use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, Uri};
use tower_layer::Layer;

use super::key::JwtKeySet;
use super::service::JwtAuth;
use super::source::TokenSource;
use super::verify::{Config, Verifier};

/// Verifies a JWT on every request and puts its claims into the request extensions.
///
/// `T` is the application's claims type (any `DeserializeOwned + Clone + Send + Sync +
/// 'static`, e.g. its own struct or `serde_json::Value`); the service inserts the decoded
/// `T` **and** a [`RegisteredClaims`](crate::RegisteredClaims) for the other layers.
/// Requests without a valid token never reach the inner service. See the
/// [module docs](super) for the checks and the responses.
#[must_use]
pub struct JwtAuthLayer<T = serde_json::Value> {
    keys: JwtKeySet,
    config: Config,
    /// Built on first `layer` call and shared by every service it makes.
    verifier: OnceLock<Arc<Verifier>>,
    _claims: PhantomData<fn() -> T>,
}

impl<T> Clone for JwtAuthLayer<T> {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.clone(),
            config: self.config.clone(),
            verifier: self.verifier.clone(),
            _claims: PhantomData,
        }
    }
}

impl<T> fmt::Debug for JwtAuthLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("keys", &self.keys)
            .field("config", &self.config)
            .field("claims", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> JwtAuthLayer<T> {
    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self.verifier = OnceLock::new();
        self
    }

    /// A layer accepting tokens signed by any key of `keys`, read from
    /// `Authorization: Bearer`, with a 30-second leeway and an 8 KiB size limit.
    pub fn new(keys: JwtKeySet) -> Self {
        Self {
            keys,
            config: Config::default(),
            verifier: OnceLock::new(),
            _claims: PhantomData,
        }
    }

    /// Requires the `iss` claim to be this issuer. Call again to allow several.
    pub fn issuer(self, issuer: impl Into<String>) -> Self {
        self.configure(|c| {
            c.issuers.push(issuer.into());
        })
    }

    /// Requires the `aud` claim to name this audience. Call again to allow several.
    ///
    /// Without any configured audience, a token that carries `aud` is rejected
    /// (RFC 7519 §4.1.3: a recipient not named in `aud` must reject the token).
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.configure(|c| {
            c.audiences.push(audience.into());
        })
    }

    /// Clock skew tolerated on `exp` and `nbf`, in whole seconds (default 30 s).
    pub fn leeway(self, leeway: Duration) -> Self {
        self.configure(|c| {
            c.leeway_secs = leeway.as_secs();
        })
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
}

impl<S, T> Layer<S> for JwtAuthLayer<T> {
    type Service = JwtAuth<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        let verifier = self
            .verifier
            .get_or_init(|| Arc::new(Verifier::new(self.keys.clone(), self.config.clone())));
        JwtAuth::new(inner, Arc::clone(verifier))
    }
}
