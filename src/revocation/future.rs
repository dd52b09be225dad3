use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::check::{Lookup, Verdict};
use crate::response::{for_protocol, is_grpc, store_unavailable, wrap, ErrorBody, ResponseBody};

pin_project! {
    /// The response future of [`RevocationService`](super::RevocationService): first the
    /// store lookup, then the inner service's future.
    ///
    /// The lookup is boxed (one allocation per request); it owns a clone of the store and
    /// of the claims, so it is `Send + 'static` by itself. The request, the inner service
    /// and the inner future stay unboxed, so this future is `Send` whenever they are.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S::Future>,
        pending: Option<(S, Request<ReqBody>)>,
        retry_after: Duration,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Check { lookup: Lookup },
        Inner { #[pin] future: F },
        Done,
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(super) fn new(
        lookup: Lookup,
        inner: S,
        request: Request<ReqBody>,
        retry_after: Duration,
    ) -> Self {
        Self {
            state: State::Check { lookup },
            grpc: is_grpc(request.headers()),
            pending: Some((inner, request)),
            retry_after,
        }
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Check { .. } => "Check",
            State::Inner { .. } => "Inner",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let response = match this.state.as_mut().project() {
                StateProj::Check { lookup } => match ready!(lookup.as_mut().poll(cx)) {
                    Verdict::Allow => match this.pending.take() {
                        Some((mut inner, request)) => {
                            let future = inner.call(request);
                            this.state.set(State::Inner { future });
                            continue;
                        }
                        None => internal_error(),
                    },
                    Verdict::Revoked => revoked(),
                    Verdict::Unavailable => store_unavailable(*this.retry_after),
                    Verdict::Failed => internal_error(),
                },
                StateProj::Inner { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(result.map(wrap));
                }
                StateProj::Done => {
                    tracing::error!("RevocationLayer: response future polled after completion");
                    internal_error()
                }
            };
            // A rejection: drop the request and the inner service now.
            this.pending.take();
            this.state.set(State::Done);
            return Poll::Ready(Ok(for_protocol(*this.grpc, response)));
        }
    }
}

/// `401` with the RFC 6750 challenge for a revoked token.
fn revoked<B>() -> Response<ResponseBody<B>> {
    let mut response = ErrorBody::new("invalid_token", "the token has been revoked")
        .into_response(StatusCode::UNAUTHORIZED);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            r#"Bearer error="invalid_token", error_description="token revoked""#,
        ),
    );
    response
}

/// `500` for a misplaced layer or a corrupt store reply; the details are in the log.
fn internal_error<B>() -> Response<ResponseBody<B>> {
    ErrorBody::new("internal_error", "internal server error")
        .into_response(StatusCode::INTERNAL_SERVER_ERROR)
}
