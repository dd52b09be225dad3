use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::future::ResponseFuture;
use super::verify::Verifier;
use crate::response::{for_protocol, is_grpc, ResponseBody};

/// The service made by [`JwtAuthLayer`](super::JwtAuthLayer): verifies the token, then
/// calls the inner service with the claims in the request extensions, or answers the
/// RFC 6750 error itself without calling it.
///
/// Verification is synchronous (no store, no I/O), so the inner service is called
/// directly from `call` and needs no `Clone` bound.
pub struct JwtAuth<S, T> {
    inner: S,
    verifier: Arc<Verifier>,
    _claims: PhantomData<fn() -> T>,
}

impl<S, T> JwtAuth<S, T> {
    pub(crate) fn new(inner: S, verifier: Arc<Verifier>) -> Self {
        Self {
            inner,
            verifier,
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

impl<S: Clone, T> Clone for JwtAuth<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            verifier: Arc::clone(&self.verifier),
            _claims: PhantomData,
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for JwtAuth<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .field("verifier", &self.verifier)
            .finish()
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S, T>
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
        if self.verifier.is_public(request.method(), request.uri()) {
            return ResponseFuture::inner(self.inner.call(request));
        }
        match self.verifier.authenticate::<T>(request.headers()) {
            Ok((registered, claims)) => {
                let extensions = request.extensions_mut();
                extensions.insert(registered);
                // When `T` is `RegisteredClaims` this replaces an equal value.
                extensions.insert(claims);
                ResponseFuture::inner(self.inner.call(request))
            }
            Err(rejection) => ResponseFuture::reject(for_protocol(
                is_grpc(request.headers()),
                self.verifier.reject(rejection),
            )),
        }
    }
}
