//! [`ResponseFuture`] of [`IdempotencyService`](super::IdempotencyService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::response::{wrap, ResponseBody};

pin_project! {
    /// Response future of [`IdempotencyService`](super::IdempotencyService).
    ///
    /// A request with a key runs inline, in this future. If the future is dropped before
    /// it finishes (the client went away, an outer timeout fired), the rest of the request
    /// moves to a Tokio task of its own: the handler is not cancelled between its side
    /// effects and the record, and its answer is recorded for the client's retry.
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
        // The layer answered by itself (400, 413, 503).
        Ready { response: Option<Response<ResponseBody<B>>> },
        // A request holding a key.
        Running { running: Detach<Result<Response<ResponseBody<B>>, E>> },
    }
}

/// A boxed future that goes on in a task of its own when dropped before it finished.
struct Detach<T> {
    future: Option<Pin<Box<dyn Detachable<T>>>>,
}

/// A future that can be spawned from behind a trait object: the bounds a task needs are
/// checked where the future is boxed, not where it is dropped.
trait Detachable<T>: Send {
    fn poll_run(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T>;
    fn spawn_on(self: Pin<Box<Self>>, runtime: &tokio::runtime::Handle);
}

impl<Fut> Detachable<Fut::Output> for Fut
where
    Fut: Future + Send + 'static,
{
    fn poll_run(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        self.poll(cx)
    }

    fn spawn_on(self: Pin<Box<Self>>, runtime: &tokio::runtime::Handle) {
        // Nobody waits for the answer any more; it is recorded for the client's retry.
        runtime.spawn(async move {
            let _ = self.await;
        });
    }
}

impl<T> Drop for Detach<T> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        // Without a runtime (it is shutting down) the request is dropped, and its claim
        // frees itself when its lease ends.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            future.spawn_on(&runtime);
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Ready { .. } => "Ready",
            Kind::Running { .. } => "Running",
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

    /// A keyed request's life (claim, handler, record), moved to a task of its own if
    /// this future is dropped before it finishes.
    pub(crate) fn running<Fut>(future: Fut) -> Self
    where
        Fut: Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static,
    {
        Self {
            kind: Kind::Running {
                running: Detach {
                    future: Some(Box::pin(future)),
                },
            },
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
            KindProj::Running { running } => {
                // Out of the slot while polled: if the request panics (a handler bug),
                // the poisoned future is dropped here, and `Detach::drop` does not spawn
                // it to panic a second time ("`async fn` resumed after panicking").
                let Some(mut future) = running.future.take() else {
                    panic!("ResponseFuture polled after completion");
                };
                match future.as_mut().poll_run(cx) {
                    Poll::Ready(out) => Poll::Ready(out),
                    Poll::Pending => {
                        running.future = Some(future);
                        Poll::Pending
                    }
                }
            }
        }
    }
}
