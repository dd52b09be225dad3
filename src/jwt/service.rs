use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::future::ResponseFuture;
use super::reject::Rejection;
use super::revocation_future::RevocationFuture;
use super::verify::{Access, Verifier};
use crate::response::{for_protocol, is_grpc, ResponseBody};
use crate::revocation::RevocationCheck;
use crate::store::StateStore;
use crate::RegisteredClaims;

/// The service made by [`JwtAuthLayer`](super::JwtAuthLayer): verifies the token (and,
/// with a [`RevocationCheck`], checks the revocation list), then calls the inner service
/// with the claims in the request extensions, or answers the RFC 6750 error itself
/// without calling it.
///
/// Verification is synchronous (no store, no I/O): without revocation the inner service
/// is called directly from `call` and needs no `Clone` bound. With revocation the store
/// lookup runs before the inner call, so the inner service must be `Clone`: the service
/// polled ready moves into the response future and a clone stays behind.
pub struct JwtAuthService<S, T, R = ()> {
    inner: S,
    verifier: Arc<Verifier>,
    revocation: R,
    _claims: PhantomData<fn() -> T>,
}

impl<S, T, R> JwtAuthService<S, T, R> {
    pub(crate) fn new(inner: S, verifier: Arc<Verifier>, revocation: R) -> Self {
        Self {
            inner,
            verifier,
            revocation,
            _claims: PhantomData,
        }
    }

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

impl<S: Clone, T, R: Clone> Clone for JwtAuthService<S, T, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            verifier: Arc::clone(&self.verifier),
            revocation: self.revocation.clone(),
            _claims: PhantomData,
        }
    }
}

impl<S: fmt::Debug, T, R: fmt::Debug> fmt::Debug for JwtAuthService<S, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthService")
            .field("inner", &self.inner)
            .field("verifier", &self.verifier)
            .field("revocation", &self.revocation)
            .finish()
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuthService<S, T, ()>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match decide::<T, _>(&self.verifier, &request) {
            Decision::Pass => ResponseFuture::inner(self.inner.call(request)),
            Decision::Verified(registered, claims) => {
                let extensions = request.extensions_mut();
                extensions.insert(registered);
                // When `T` is `RegisteredClaims` this replaces an equal value.
                extensions.insert(claims);
                ResponseFuture::inner(self.inner.call(request))
            }
            Decision::Rejected(rejection, span) => ResponseFuture::reject(for_protocol(
                is_grpc(request.headers()),
                span.in_scope(|| self.verifier.reject(rejection)),
            )),
        }
    }
}

impl<S, T, St, ReqBody, ResBody> Service<Request<ReqBody>>
    for JwtAuthService<S, T, RevocationCheck<St>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    T: DeserializeOwned + Clone + Send + Sync + 'static,
    St: StateStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RevocationFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        match decide::<T, _>(&self.verifier, &request) {
            Decision::Pass => RevocationFuture::inner(self.inner.call(request)),
            Decision::Verified(registered, claims) => {
                let lookup = self.revocation.lookup(&registered);
                let extensions = request.extensions_mut();
                extensions.insert(registered);
                extensions.insert(claims);
                // The clone may not be ready; the future takes the one that was polled ready.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                RevocationFuture::check(
                    lookup,
                    inner,
                    request,
                    self.revocation.on_store_failure_value(),
                    grpc,
                )
            }
            Decision::Rejected(rejection, span) => {
                // The rejection is answered (and counted) by the future; traced here.
                span.record("result", rejection.metric().as_str());
                RevocationFuture::reject(rejection, Arc::clone(&self.verifier), grpc)
            }
        }
    }
}

/// What the layer makes of a request, before the revocation check.
enum Decision<T> {
    /// Call the inner service with the request as it is: a public path, or an optional
    /// path and no token.
    Pass,
    /// A token that verified.
    Verified(RegisteredClaims, T),
    /// Refused; answered within the `jwt` span.
    Rejected(Rejection, tracing::Span),
}

fn decide<T: DeserializeOwned, B>(verifier: &Verifier, request: &Request<B>) -> Decision<T> {
    let access = verifier.access(request.method(), request.uri());
    if access == Access::Public {
        return Decision::Pass;
    }
    let token = match verifier.token(request.headers()) {
        Ok(Some(token)) => token,
        // Anonymous on an optional path: nothing to verify, so no decision to count.
        Ok(None) if access == Access::Optional => return Decision::Pass,
        Ok(None) => return Decision::Rejected(Rejection::Missing, crate::metrics::jwt_span()),
        // A malformed token, or one sent in two ways: refused on optional paths too.
        Err(rejection) => return Decision::Rejected(rejection, crate::metrics::jwt_span()),
    };
    let span = crate::metrics::jwt_span();
    match span.in_scope(|| verifier.authenticate::<T>(&token)) {
        Ok((registered, claims)) => Decision::Verified(registered, claims),
        Err(rejection) => Decision::Rejected(rejection, span),
    }
}
