//! Per-route authorization: required scopes and claim predicates (roles), answered with
//! RFC 6750 `403 insufficient_scope`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::reject::quote_realm;
use crate::rejection;
use crate::response::{for_protocol, is_grpc, ErrorBody, ResponseBody};
use crate::ConfigError;

/// Claims that carry OAuth 2.0 scopes, for [`RequireScopeLayer`].
///
/// Implemented for `serde_json::Value` (the default claims type of
/// [`JwtAuthLayer`](super::JwtAuthLayer)); implement it for your own claims type to use
/// the layer with it.
pub trait ScopeClaims: Send + Sync + 'static {
    /// Whether the token grants `scope`.
    fn has_scope(&self, scope: &str) -> bool;
}

/// Scopes from `scope` (RFC 8693 §4.2: a space-separated string) and `scp` (an array of
/// strings, as Okta sends it, or a space-separated string, as Entra ID does).
impl ScopeClaims for serde_json::Value {
    fn has_scope(&self, scope: &str) -> bool {
        ["scope", "scp"].iter().any(|name| match self.get(name) {
            Some(serde_json::Value::String(s)) => s.split_ascii_whitespace().any(|g| g == scope),
            Some(serde_json::Value::Array(items)) => {
                items.iter().any(|i| i.as_str() == Some(scope))
            }
            _ => false,
        })
    }
}

type Predicate<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

struct Requirement<T> {
    scopes: Vec<String>,
    predicates: Vec<(String, Predicate<T>)>,
    /// The `WWW-Authenticate` value of a `403`, built once.
    challenge: HeaderValue,
}

/// Requires scopes (and optionally claim predicates such as roles) on the routes it
/// wraps; answers `403` when the token lacks them.
///
/// It reads the claims [`JwtAuthLayer`](super::JwtAuthLayer) put into the request
/// extensions, so it must sit **inside** (after) that layer: `ServiceBuilder::new()
/// .layer(jwt_layer).layer(scope_layer)`, or on an axum route with `route_layer` under a
/// router that has the JWT layer. `T` is the claims type the JWT layer inserts
/// (`serde_json::Value` unless you chose another; see [`claims`](Self::claims)).
///
/// A request without claims in its extensions is a composition error (the JWT layer is
/// missing, misordered, uses another claims type, or let a public path, or an optional
/// path without a token, through): it is
/// answered `500` with `{"error":"internal_error",...}` and logged at error level, and
/// the inner service is not called.
///
/// A token that lacks a required scope, or fails a predicate, gets `403` with
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."` (RFC 6750 §3.1,
/// listing every required scope) and the JSON body
/// `{"error":"insufficient_scope","message":"..."}`; a gRPC request gets
/// `PERMISSION_DENIED`.
///
/// ```
/// use std::convert::Infallible;
/// use http::{header, Request, Response, StatusCode};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_stateless::jwt::RequireScopeLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // In an application: ServiceBuilder::new().layer(jwt_layer).layer(this).
/// // Keycloak: the scope `orders:write` and the realm role `clerk`.
/// let service = ServiceBuilder::new()
///     .layer(
///         RequireScopeLayer::new(["orders:write"])?
///             .claim_contains("/realm_access/roles", "clerk"),
///     )
///     .service(service_fn(|_req: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::new()))
///     }));
///
/// // The claims JwtAuthLayer would have put into the extensions.
/// let mut request = Request::new(String::new());
/// request.extensions_mut().insert(serde_json::json!({
///     "sub": "alice",
///     "scope": "orders:read",
///     "realm_access": { "roles": ["clerk"] },
/// }));
/// let response = service.oneshot(request).await?;
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// assert_eq!(
///     response.headers()[header::WWW_AUTHENTICATE],
///     r#"Bearer error="insufficient_scope", scope="orders:write""#
/// );
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct RequireScopeLayer<T = serde_json::Value> {
    requirement: Arc<Requirement<T>>,
    realm: Option<String>,
}

impl<T> Clone for RequireScopeLayer<T> {
    fn clone(&self) -> Self {
        Self {
            requirement: Arc::clone(&self.requirement),
            realm: self.realm.clone(),
        }
    }
}

impl<T> fmt::Debug for Requirement<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requirement")
            .field("scopes", &self.scopes)
            .field(
                "claims",
                &self.predicates.iter().map(|(d, _)| d).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<T> fmt::Debug for RequireScopeLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("requirement", &self.requirement)
            .field("realm", &self.realm)
            .field("claims_type", &std::any::type_name::<T>())
            .finish()
    }
}

/// RFC 6749 §3.3 `scope-token`: printable ASCII without space, `"` and `\`.
fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn challenge(realm: Option<&str>, scopes: &[String]) -> HeaderValue {
    let mut params = Vec::with_capacity(3);
    if let Some(realm) = realm {
        params.push(format!("realm={}", quote_realm(realm)));
    }
    params.push("error=\"insufficient_scope\"".to_owned());
    if !scopes.is_empty() {
        params.push(format!("scope=\"{}\"", scopes.join(" ")));
    }
    HeaderValue::from_str(&format!("Bearer {}", params.join(", "))).unwrap_or(
        HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
    )
}

impl RequireScopeLayer {
    /// Requires every scope of `scopes` (none: only the claim predicates apply), for
    /// `serde_json::Value` claims.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `scopes` when one is empty or has a character RFC 6749 §3.3
    /// does not allow (space, `"`, `\`, non-ASCII).
    pub fn new<I>(scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
            return Err(ConfigError::new(
                "scopes",
                format!("{bad:?} is not an RFC 6749 scope token"),
            ));
        }
        Ok(Self {
            requirement: Arc::new(Requirement {
                challenge: challenge(None, &scopes),
                scopes,
                predicates: Vec::new(),
            }),
            realm: None,
        })
    }

    /// Also requires the JSON value at `pointer` (RFC 6901, e.g. `/realm_access/roles`
    /// for Keycloak realm roles, `/resource_access/my-client/roles` for client roles,
    /// `/groups` or `/roles` elsewhere) to be `value` or an array containing it.
    pub fn claim_contains(self, pointer: &str, value: &str) -> Self {
        let (p, v) = (pointer.to_owned(), value.to_owned());
        self.claim(
            format!("{pointer} contains {value:?}"),
            move |claims| match claims.pointer(&p) {
                Some(serde_json::Value::String(s)) => *s == v,
                Some(serde_json::Value::Array(items)) => {
                    items.iter().any(|i| i.as_str() == Some(v.as_str()))
                }
                _ => false,
            },
        )
    }
}

impl<T> RequireScopeLayer<T> {
    fn rebuild(mut self, change: impl FnOnce(&mut Vec<(String, Predicate<T>)>)) -> Self {
        let mut predicates = self.requirement.predicates.clone();
        change(&mut predicates);
        let scopes = self.requirement.scopes.clone();
        self.requirement = Arc::new(Requirement {
            challenge: challenge(self.realm.as_deref(), &scopes),
            scopes,
            predicates,
        });
        self
    }

    /// Also requires `predicate` to hold for the claims; `description` names it in logs.
    /// Replaces nothing: every scope and every predicate must hold.
    pub fn claim<F>(self, description: impl Into<String>, predicate: F) -> Self
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let description = description.into();
        self.rebuild(|p| p.push((description, Arc::new(predicate))))
    }

    /// The `realm` of the `403` challenge, as on [`JwtAuthLayer::realm`](super::JwtAuthLayer::realm).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into());
        self.rebuild(|_| {})
    }

    /// Reads claims of type `U` (the JWT layer's claims type) instead; predicates added
    /// so far are dropped, since they take the old type.
    pub fn claims<U: ScopeClaims>(self) -> RequireScopeLayer<U> {
        let scopes = self.requirement.scopes.clone();
        RequireScopeLayer {
            requirement: Arc::new(Requirement {
                challenge: challenge(self.realm.as_deref(), &scopes),
                scopes,
                predicates: Vec::new(),
            }),
            realm: self.realm,
        }
    }
}

impl<S, T> Layer<S> for RequireScopeLayer<T> {
    type Service = RequireScope<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            requirement: Arc::clone(&self.requirement),
            _claims: PhantomData,
        }
    }
}

/// The service made by [`RequireScopeLayer`].
pub struct RequireScope<S, T = serde_json::Value> {
    inner: S,
    requirement: Arc<Requirement<T>>,
    _claims: PhantomData<fn() -> T>,
}

impl<S, T> RequireScope<S, T> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, T> Clone for RequireScope<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            requirement: Arc::clone(&self.requirement),
            _claims: PhantomData,
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for RequireScope<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScope")
            .field("inner", &self.inner)
            .field("requirement", &self.requirement)
            .finish()
    }
}

impl<T> Requirement<T> {
    fn check(&self, claims: &T) -> Result<(), String>
    where
        T: ScopeClaims,
    {
        if let Some(missing) = self.scopes.iter().find(|s| !claims.has_scope(s)) {
            return Err(format!("scope {missing:?}"));
        }
        if let Some((description, _)) = self.predicates.iter().find(|(_, p)| !p(claims)) {
            return Err(description.clone());
        }
        Ok(())
    }

    fn forbidden<B>(&self) -> Response<ResponseBody<B>> {
        let mut response = ErrorBody::new(
            rejection::INSUFFICIENT_SCOPE,
            "the token lacks a scope or role this route requires",
        )
        .into_response(StatusCode::FORBIDDEN);
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, self.challenge.clone());
        response
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScope<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    T: ScopeClaims,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let Some(claims) = request.extensions().get::<T>() else {
            tracing::error!(
                claims_type = std::any::type_name::<T>(),
                "RequireScopeLayer: no claims in the request extensions; put it inside \
                 (after) a JwtAuthLayer with the same claims type, and not on its public \
                 or optional paths"
            );
            let response = ErrorBody::new(
                rejection::INTERNAL_ERROR,
                "the authorization layers are misconfigured",
            )
            .into_response(StatusCode::INTERNAL_SERVER_ERROR);
            return ResponseFuture::reject(for_protocol(grpc, response));
        };
        match self.requirement.check(claims) {
            Ok(()) => ResponseFuture::inner(self.inner.call(request)),
            Err(missing) => {
                let _span = crate::metrics::jwt_span().entered();
                crate::metrics::jwt(crate::metrics::Jwt::InsufficientScope);
                tracing::debug!(%missing, "jwt: token lacks a required scope or claim");
                ResponseFuture::reject(for_protocol(grpc, self.requirement.forbidden()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_from_scope_and_scp() {
        assert!(json!({"scope":"a  b"}).has_scope("b"));
        assert!(json!({"scp":["a","b"]}).has_scope("a"));
        assert!(json!({"scp":"a b"}).has_scope("b"));
        assert!(!json!({"scope":"ab"}).has_scope("a"));
        assert!(!json!({"scope":["a"], "scp": 3}).has_scope("b"));
        assert!(!json!("scope a").has_scope("a"));
    }

    #[test]
    fn scope_tokens_are_checked() {
        assert!(RequireScopeLayer::new(["orders:write", "a/b"]).is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            let err = RequireScopeLayer::new([bad]).unwrap_err();
            assert_eq!(err.setting(), "scopes");
        }
    }

    #[test]
    fn challenge_lists_scopes_and_realm() {
        let layer = RequireScopeLayer::new(["a", "b"]).unwrap().realm("api");
        assert_eq!(
            layer.requirement.challenge,
            r#"Bearer realm="api", error="insufficient_scope", scope="a b""#
        );
        let none = RequireScopeLayer::new(Vec::<String>::new()).unwrap();
        assert_eq!(
            none.requirement.challenge,
            r#"Bearer error="insufficient_scope""#
        );
    }
}
