//! [`IdempotencyService`]: which requests the layer takes, and the answers it gives by
//! itself before a request runs.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::body::RequestBody;
use super::config::Config;
use super::future::ResponseFuture;
use super::key;
use super::run::{run, Keyed};
use crate::rejection;
use crate::response::{for_protocol, is_grpc, ErrorBody, ResponseBody};
use crate::store::{BoxError, StateStore, StoreError};
use crate::StoreFailure;

/// The service built by [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// Requires a Tokio runtime (lease renewal uses its timer; a request whose client went
/// away goes on in a task of its own). The inner service must be `Clone`, and its future,
/// its error and the bodies `Send + 'static`.
#[derive(Debug, Clone)]
pub struct IdempotencyService<S, St> {
    inner: S,
    store: St,
    config: Arc<Config>,
}

impl<S, St> IdempotencyService<S, St> {
    pub(crate) fn new(inner: S, store: St, config: Arc<Config>) -> Self {
        Self {
            inner,
            store,
            config,
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

pub(crate) fn reject<B>(
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ResponseBody<B>> {
    ErrorBody::new(code, message).into_response(status)
}

pub(crate) fn too_large<B>() -> Response<ResponseBody<B>> {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        rejection::PAYLOAD_TOO_LARGE,
        "the request body is larger than this endpoint accepts",
    )
}

pub(crate) fn store_failed<B>(
    error: &StoreError,
    on_store_failure: StoreFailure,
) -> Response<ResponseBody<B>> {
    tracing::warn!(%error, "idempotency store operation failed");
    if error.is_unavailable() {
        on_store_failure.response()
    } else {
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            rejection::IDEMPOTENCY_STORE_ERROR,
            "the idempotency record could not be read",
        )
    }
}

pub(crate) fn internal_error<B>() -> Response<ResponseBody<B>> {
    reject(
        StatusCode::INTERNAL_SERVER_ERROR,
        rejection::INTERNAL_ERROR,
        "the request could not be processed",
    )
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, St>
where
    St: StateStore,
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready instance goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = &self.config;
        let grpc = is_grpc(req.headers());
        let own = |response| ResponseFuture::ready(for_protocol(grpc, response));

        if !config.methods.contains(req.method()) {
            return ResponseFuture::passthrough(inner.call(req.map(RequestBody::inner)));
        }
        let key = match key::parse(req.headers(), &config.header) {
            Ok(Some(key)) => key,
            Ok(None) if config.required(req.method(), req.uri()) => {
                return own(reject(
                    StatusCode::BAD_REQUEST,
                    rejection::IDEMPOTENCY_KEY_REQUIRED,
                    &format!("this request needs the `{}` header", config.header),
                ));
            }
            Ok(None) => {
                return ResponseFuture::passthrough(inner.call(req.map(RequestBody::inner)));
            }
            Err(bad) => {
                return own(reject(
                    StatusCode::BAD_REQUEST,
                    rejection::INVALID_IDEMPOTENCY_KEY,
                    bad.0,
                ));
            }
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > config.max_request_body as u64) {
            return own(too_large());
        }
        let (parts, body) = req.into_parts();
        let Some(caller) = config.scope.caller(&parts) else {
            tracing::error!(
                "a request with an idempotency key has no caller to keep its record for: put IdempotencyLayer behind an auth layer, or choose its scope"
            );
            return own(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                rejection::IDEMPOTENCY_SCOPE_MISSING,
                "this endpoint cannot take idempotency keys: the server has no caller to keep them for",
            ));
        };
        // Lease renewal needs Tokio's timer; a request whose client went away goes on in a
        // task of its own.
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!("IdempotencyLayer needs a Tokio runtime");
            return own(internal_error());
        }
        let Ok(permit) = config.in_flight.clone().try_acquire_owned() else {
            let mut res = reject(
                StatusCode::SERVICE_UNAVAILABLE,
                rejection::IDEMPOTENCY_OVERLOADED,
                "too many requests with an idempotency key are running; retry later",
            );
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
            return own(res);
        };
        let keyed = Keyed {
            store: self.store.clone(),
            config: config.clone(),
            caller,
            client_key: key,
            permit,
        };
        // Runs inline in the layer's span (a child of the request's); moved to a task of
        // its own, with that span, only if the response future is dropped before it ends.
        let mut span = crate::metrics::idempotency_span();
        if span.is_disabled() {
            span = tracing::Span::current();
        }
        let future = run(inner, keyed, parts, body).instrument(span);
        ResponseFuture::running(future)
    }
}
