//! [`SessionService`]: a lazily loaded session in the request, written back after the
//! handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tokio::sync::Mutex;
use tower_service::Service;

use super::config::{Config, Transport};
use super::future::ResponseFuture;
use super::handle::{Backend, Session, Shared, State};
use super::transport::{
    apply_cookie, keep_out_of_shared_caches, request_id, vary_on_transport, RequestId,
};
use super::write::{settled, write_back, WriteError};
use crate::id::random_u64;
use crate::metrics::{self, SessionOp, SessionResult};
use crate::rejection;
use crate::response::{
    error_response, for_protocol, is_grpc, wrap, BoxResponseFuture, ResponseBody,
};
use crate::store::{StateStore, StoreError};

/// The service built by [`SessionLayer`](super::SessionLayer).
///
/// The inner service must be `Clone` (the future takes the instance that was polled ready).
#[derive(Debug, Clone)]
pub struct SessionService<S, St> {
    pub(crate) inner: S,
    pub(crate) store: St,
    /// The store as the request's `Session` sees it, built once, not per request.
    pub(crate) backend: SharedBackend,
    pub(crate) config: Arc<Config>,
}

/// The object-safe view of the store that every request's [`Session`] shares.
#[derive(Clone)]
pub(crate) struct SharedBackend(pub(crate) Arc<dyn Backend>);

impl std::fmt::Debug for SharedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedBackend")
    }
}

impl<S, St> SessionService<S, St> {
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

/// The layer's own answer to a store error: `503` (or the handler's answer, under
/// [`StoreFailure::open`](crate::StoreFailure::open)) when the store is unavailable,
/// `500 session_error` otherwise. `None`: keep the handler's response.
fn store_error_response<B>(
    config: &Config,
    error: Option<&StoreError>,
    unavailable: bool,
    message: &str,
) -> Option<Response<ResponseBody<B>>> {
    if unavailable {
        if config.on_store_failure.is_open() {
            tracing::warn!(
                error = error.map(|e| e as &dyn std::error::Error),
                "session store unavailable; the handler's answer stands (StoreFailure::open)"
            );
            return None;
        }
        return Some(config.on_store_failure.response());
    }
    Some(error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        rejection::SESSION_ERROR,
        message,
    ))
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S, St>
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

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        let config = self.config.clone();
        let RequestId {
            id,
            from_cookie,
            from_claim,
            tag,
        } = request_id(&req, &config);
        let tagged =
            config.cached_reads && matches!(config.transport, Transport::Cookie) && !from_claim;
        let grpc = is_grpc(req.headers());
        let renew = from_cookie && config.max_age_secs.is_some();
        let shared = Arc::new(Shared {
            backend: Arc::clone(&self.backend.0),
            config: config.clone(),
            state: Mutex::new(State {
                sid: id.as_ref().filter(|_| from_claim).cloned(),
                id,
                tagged,
                cookie_tag: tag.filter(|_| tagged),
                ..State::default()
            }),
        });
        req.extensions_mut().insert(Session {
            shared: shared.clone(),
        });
        BoxResponseFuture::new("SessionService", async move {
            let mut res = inner.call(req).await?;
            let st = std::mem::take(&mut *shared.state.lock().await);
            if let Some(unavailable) = st.load_failed {
                // The handler saw a load error and may have swallowed it: its answer
                // (and any change it made afterwards) rests on a session it could not
                // read, so neither is kept, unless it answered 5xx itself.
                if res.status().is_server_error() {
                    return Ok(wrap(res));
                }
                tracing::warn!("session load failed but the handler answered without a 5xx");
                return Ok(
                    match store_error_response(
                        &config,
                        None,
                        unavailable,
                        "the session could not be loaded",
                    ) {
                        Some(own) => for_protocol(grpc, own),
                        None => wrap(res),
                    },
                );
            }
            // Changes without a load may still create a session (a cookie goes out).
            let looked_at = st.loaded || st.modified();
            // A span only when the store is written: a read-only request decided at load.
            let span = if looked_at && (st.modified() || st.cycle || st.destroyed.is_some()) {
                metrics::session_span()
            } else {
                tracing::Span::none()
            };
            // The tag the cookie carries (tagged cookies only): the write's, if it writes.
            let mut cookie_tag = st.tag;
            let written = match settled(&st, renew) {
                Some(action) => Ok(action),
                // Boxed: only the requests that write pay for the write's large future.
                None => {
                    let write_tag = tagged.then(random_u64);
                    cookie_tag = write_tag;
                    let written = Box::pin(write_back(&store, &config, st, renew, write_tag));
                    tracing::Instrument::instrument(written, span.clone()).await
                }
            };
            match written {
                Ok(action) => {
                    let cookie_tag = cookie_tag.filter(|_| tagged);
                    if apply_cookie(&mut res, &config, action, cookie_tag) {
                        keep_out_of_shared_caches(&mut res);
                    }
                    if looked_at && !from_claim {
                        vary_on_transport(&mut res, &config);
                    }
                    Ok(wrap(res))
                }
                Err(WriteError::Store(e)) => {
                    span.in_scope(|| metrics::session(SessionOp::Write, SessionResult::StoreError));
                    tracing::warn!(error = %e, "session write-back failed");
                    Ok(
                        match store_error_response(
                            &config,
                            Some(&e),
                            e.is_unavailable(),
                            "the session could not be saved",
                        ) {
                            Some(own) => for_protocol(grpc, own),
                            None => wrap(res),
                        },
                    )
                }
                Err(WriteError::TooLarge(size)) => {
                    tracing::warn!(
                        size,
                        limit = config.max_bytes,
                        "session over its size limit"
                    );
                    Ok(for_protocol(
                        grpc,
                        error_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            rejection::SESSION_TOO_LARGE,
                            "the session would grow past its size limit; nothing was saved",
                        ),
                    ))
                }
            }
        })
    }
}
