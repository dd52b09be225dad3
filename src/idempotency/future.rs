//! [`ResponseFuture`] of [`IdempotencyService`](super::IdempotencyService).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use crate::response::{store_unavailable, wrap, ResponseBody};

pin_project! {
    /// Response future of [`IdempotencyService`](super::IdempotencyService).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // The layer does not apply: the inner future, untouched.
        Passthrough { #[pin] future: F },
        // The layer answered by itself (400, 413).
        Ready { response: Option<Response<ResponseBody<B>>> },
        // A request holding a key, running in its own task so that a client going away
        // cannot cancel it between the handler and the record.
        Spawned { handle: JoinHandle<Result<Response<ResponseBody<B>>, E>> },
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Ready { .. } => "Ready",
            Kind::Spawned { .. } => "Spawned",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn spawned(handle: JoinHandle<Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Spawned { handle },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future.poll(cx).map_ok(wrap),
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Spawned { handle } => match ready!(Pin::new(handle).poll(cx)) {
                Ok(result) => Poll::Ready(result),
                // The handler panicked: panic here too, as it would without the layer.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // The runtime is shutting down.
                Err(_) => Poll::Ready(Ok(store_unavailable(Duration::from_secs(1)))),
            },
        }
    }
}
