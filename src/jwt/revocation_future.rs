use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::reject::Rejection;
use super::verify::Verifier;
use crate::response::{for_protocol, internal_error, wrap, ResponseBody};
use crate::revocation::check::{self, Lookup, Verdict};
use crate::StoreFailure;

pin_project! {
    /// The response future of [`JwtAuthService`](super::JwtAuthService) with a revocation check: the
    /// store lookup for the verified token, then the inner service's future; or the
    /// rejection the layer answered itself.
    ///
    /// The lookup is boxed (one allocation per request); it owns a clone of the store and
    /// the keys it reads (one buffer), so it is `Send + 'static` by itself. The request,
    /// the inner service and the inner future stay unboxed, so this future is `Send`
    /// whenever they are.
    pub struct RevocationFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S::Future>,
        pending: Option<(S, Request<ReqBody>)>,
        on_store_failure: StoreFailure,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Check { lookup: Lookup },
        Inner { #[pin] future: F },
        // Only a rejection needs the verifier (the realm), so only it holds a reference.
        Rejected { rejection: Option<Rejection>, verifier: Arc<Verifier> },
        Done,
    }
}

impl<S, ReqBody> RevocationFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Checks `lookup`, then calls `inner` with `request`.
    pub(super) fn check(
        lookup: Lookup,
        inner: S,
        request: Request<ReqBody>,
        on_store_failure: StoreFailure,
        grpc: bool,
    ) -> Self {
        Self {
            state: State::Check { lookup },
            pending: Some((inner, request)),
            on_store_failure,
            grpc,
        }
    }

    /// The inner service's future, unchecked (a public path, or no token on an optional
    /// path).
    pub(super) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
            pending: None,
            on_store_failure: StoreFailure::closed(),
            grpc: false,
        }
    }

    /// The JWT layer's own rejection.
    pub(super) fn reject(rejection: Rejection, verifier: Arc<Verifier>, grpc: bool) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
                verifier,
            },
            pending: None,
            on_store_failure: StoreFailure::closed(),
            grpc,
        }
    }
}

impl<S, ReqBody> fmt::Debug for RevocationFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Check { .. } => "Check",
            State::Inner { .. } => "Inner",
            State::Rejected { .. } => "Rejected",
            State::Done => "Done",
        };
        f.debug_struct("RevocationFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for RevocationFuture<S, ReqBody>
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
                    verdict => check::reject(verdict, *this.on_store_failure),
                },
                StateProj::Inner { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(result.map(wrap));
                }
                StateProj::Rejected {
                    rejection,
                    verifier,
                } => match rejection.take() {
                    Some(rejection) => verifier.reject(rejection),
                    None => internal_error(),
                },
                StateProj::Done => {
                    panic!("JwtAuthService: response future polled after completion")
                }
            };
            // A rejection: drop the request and the inner service now.
            this.pending.take();
            this.state.set(State::Done);
            return Poll::Ready(Ok(for_protocol(*this.grpc, response)));
        }
    }
}
