//! [`RateLimitService`]: one store step per request, then the inner service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use tower_service::Service;
use tracing::Instrument;

use super::future::ResponseFuture;
use super::key::Caller;
use super::layer::Config;
use crate::metrics::{rate_limit, RateLimit};
use crate::rejection;
use crate::response::{
    error_response, for_protocol, is_grpc, wrap, BoxResponseFuture, ResponseBody,
};
use crate::store::StateStore;

/// The service built by [`RateLimitLayer`](super::RateLimitLayer). The inner service must
/// be `Clone` (the future takes the instance that was polled ready).
#[derive(Debug, Clone)]
pub struct RateLimitService<S, St> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S, St> RateLimitService<S, St> {
    pub(crate) fn new(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config }
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

/// Adds the rate-limit headers of one limiter without replacing another's: with a global
/// and a per-route limiter the client sees both policies.
fn add_headers(target: &mut HeaderMap, headers: HeaderMap) {
    let mut name = None;
    for (next, value) in headers {
        name = next.or(name);
        if let Some(name) = &name {
            if name == http::header::RETRY_AFTER {
                target.insert(name.clone(), value);
            } else {
                target.append(name.clone(), value);
            }
        }
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S, St>
where
    St: StateStore,
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let key = self.config.key.key(&parts);
        let grpc = is_grpc(&parts.headers);
        let req = Request::from_parts(parts, body);
        let config = Arc::clone(&self.config);
        BoxResponseFuture::new("RateLimitService", async move {
            let key = match key {
                Caller::Key(key) => key,
                Caller::Exempt => return inner.call(req).await.map(wrap),
                Caller::Unknown => {
                    crate::metrics::rate_limit_span().in_scope(|| rate_limit(RateLimit::NoKey));
                    if let Some(requests) = config.unknown_callers.record() {
                        tracing::warn!(
                            requests,
                            "rate limit: requests without a caller key (no JWT claims, trusted \
                             header or peer address in the extensions) are let through \
                             unlimited; `requests` counts them since the last such warning (at \
                             most one a minute). With axum, enable the `axum` feature and serve \
                             with into_make_service_with_connect_info::<SocketAddr>(); with \
                             hyper, insert the peer SocketAddr into the request extensions; or \
                             set key_fn"
                        );
                    }
                    return inner.call(req).await.map(wrap);
                }
            };
            let span = crate::metrics::rate_limit_span();
            let checked = config.limiter.check(&key).instrument(span.clone()).await;
            let decision = match checked {
                Ok(decision) => decision,
                Err(error) if !error.is_unavailable() => {
                    span.in_scope(|| rate_limit(RateLimit::StoreError));
                    tracing::error!(%error, "rate limit store failed; answering 500");
                    return Ok(for_protocol(grpc, error.response()));
                }
                Err(error) if config.on_store_failure.is_open() => {
                    span.in_scope(|| rate_limit(RateLimit::StoreError));
                    tracing::warn!(%error, "rate limit store failed; request let through unlimited (fail open)");
                    return inner.call(req).await.map(wrap);
                }
                Err(error) => {
                    span.in_scope(|| rate_limit(RateLimit::StoreError));
                    tracing::warn!(%error, "rate limit store failed; answering 503 (fail closed)");
                    return Ok(for_protocol(grpc, config.on_store_failure.response()));
                }
            };
            if !decision.allowed() {
                span.in_scope(|| rate_limit(RateLimit::Limited));
                // A gRPC client reads the wait from the status message: the headers reach
                // it as metadata, not as an HTTP `Retry-After` it would act on.
                let grpc_message;
                let message = if grpc {
                    grpc_message = format!(
                        "too many requests; retry after {} s",
                        decision.retry_after_secs()
                    );
                    &grpc_message
                } else {
                    "too many requests; retry after the time in Retry-After"
                };
                let mut res = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    rejection::RATE_LIMITED,
                    message,
                );
                add_headers(res.headers_mut(), decision.headers());
                return Ok(for_protocol(grpc, res));
            }
            span.in_scope(|| rate_limit(RateLimit::Allowed));
            let mut res = inner.call(req).await?;
            add_headers(res.headers_mut(), decision.headers());
            Ok(wrap(res))
        })
    }
}
