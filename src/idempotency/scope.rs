//! [`Scope`]: whose records a request can reach.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use crate::RegisteredClaims;

type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Whose records a request can reach: records are kept per caller, so that one caller can
/// never replay (or probe) another's response by sending the same key.
///
/// Set it with [`IdempotencyLayer::scope`](super::IdempotencyLayer::scope). The default is
/// [`Scope::subject`]. Whatever the scope, records are also kept per method and path.
///
/// A keyed request whose scope finds no caller is refused with `500` and the error code
/// `idempotency_scope_missing` (the handler does not run, nothing is stored): the layer is
/// misconfigured, for instance [`Scope::subject`] without an auth layer in front. Records
/// are never shared between callers unless the layer says so with [`Scope::shared`].
#[derive(Clone)]
pub struct Scope(Kind);

#[derive(Clone)]
enum Kind {
    Subject,
    Shared,
    Custom(ScopeFn),
}

/// The caller a request's records belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Shared,
    Subject(String),
    Custom(String),
}

impl Scope {
    /// Per authenticated user: the `sub` of the [`RegisteredClaims`] that an auth layer
    /// (`JwtAuthLayer`) put in the request extensions. The default. A keyed request without
    /// claims is refused (`500`).
    pub fn subject() -> Self {
        Self(Kind::Subject)
    }

    /// One namespace for every caller: whoever sends the same key to the same method and
    /// path gets the same record. Only for anonymous endpoints whose clients send
    /// unguessable keys (UUIDv4): a client that learns or guesses another's key gets its
    /// response.
    pub fn shared() -> Self {
        Self(Kind::Shared)
    }

    /// Per whatever `f` returns for the request: a session id, a tenant, an API client
    /// from a header that an earlier layer verified. `None` means the request has no
    /// caller to scope to, and it is refused (`500`). The value is hashed before it
    /// reaches the store.
    ///
    /// ```
    /// use tower_stateless::idempotency::{IdempotencyLayer, Scope};
    /// use tower_stateless::store::MemoryStore;
    /// use tower_stateless::RegisteredClaims;
    ///
    /// // The user when logged in, else the API client a gateway authenticated.
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).scope(Scope::from_fn(|req| {
    ///     match req.extensions.get::<RegisteredClaims>() {
    ///         Some(claims) => Some(format!("user:{}", claims.sub)),
    ///         None => req
    ///             .headers
    ///             .get("x-verified-client")
    ///             .and_then(|v| v.to_str().ok())
    ///             .map(|client| format!("client:{client}")),
    ///     }
    /// }));
    /// # let _ = layer;
    /// ```
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Self(Kind::Custom(Arc::new(f)))
    }

    /// The caller `parts` belong to, or `None` when this scope finds none.
    pub(crate) fn caller(&self, parts: &Parts) -> Option<Caller> {
        match &self.0 {
            Kind::Shared => Some(Caller::Shared),
            Kind::Subject => parts
                .extensions
                .get::<RegisteredClaims>()
                .map(|claims| Caller::Subject(claims.sub.clone())),
            Kind::Custom(f) => f(parts).map(Caller::Custom),
        }
    }
}

impl Default for Scope {
    fn default() -> Self {
        Self::subject()
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Subject => f.write_str("Scope::Subject"),
            Kind::Shared => f.write_str("Scope::Shared"),
            Kind::Custom(_) => f.write_str("Scope::Custom(<fn>)"),
        }
    }
}
