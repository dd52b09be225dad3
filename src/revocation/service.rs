use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::check::{self, Verdict};
use super::{ResponseFuture, RevocationLayer};
use crate::response::ResponseBody;
use crate::store::StateStore;
use crate::RegisteredClaims;

/// Refuses requests whose token, session or subject was revoked; made by
/// [`RevocationLayer`].
///
/// The inner service must be `Clone`: the store lookup runs before the inner call, so the
/// service polled ready is moved into the response future and a clone stays behind.
#[derive(Debug, Clone)]
pub struct RevocationService<S, St> {
    pub(super) inner: S,
    pub(super) layer: RevocationLayer<St>,
}

impl<S, St> RevocationService<S, St> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: RevocationLayer<St>) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RevocationService<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: StateStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone may not be ready; the future takes the one that was polled ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let lookup: check::Lookup = match request.extensions().get::<RegisteredClaims>() {
            Some(claims) => Box::pin(check::check(
                self.layer.store.clone(),
                claims.clone(),
                self.layer.fail_open,
            )),
            None => {
                tracing::error!(
                    "RevocationLayer: no RegisteredClaims in the request extensions; the \
                     layer must run after JwtAuthLayer (or another layer that inserts them). \
                     Answering 500."
                );
                Box::pin(std::future::ready(Verdict::Failed))
            }
        };
        ResponseFuture::new(lookup, inner, request, self.layer.retry_after)
    }
}
