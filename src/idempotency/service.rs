//! [`IdempotencyService`]: claim, run, record, replay.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;
use tracing::Instrument;

use super::body::RequestBody;
use super::future::ResponseFuture;
use super::key;
use super::layer::Config;
use super::record::{Completed, Record};
use crate::response::{for_protocol, is_grpc, store_unavailable, wrap, ErrorBody, ResponseBody};
use crate::store::{BoxError, StateStore, StoreError};
use crate::RegisteredClaims;

/// The header a replayed response carries.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// The service built by [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// Requires a Tokio runtime: a request holding a key runs in a task of its own, so that it
/// completes and is recorded even when the client goes away. The inner service must be
/// `Clone`, and its future, its error and the bodies `Send + 'static`.
#[derive(Debug, Clone)]
pub struct IdempotencyService<S, I> {
    inner: I,
    store: S,
    config: Arc<Config>,
}

impl<S, I> IdempotencyService<S, I> {
    pub(crate) fn new(inner: I, store: S, config: Arc<Config>) -> Self {
        Self {
            inner,
            store,
            config,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> I {
        self.inner
    }
}

fn reject<B>(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody<B>> {
    ErrorBody::new(code, message).into_response(status)
}

fn too_large<B>() -> Response<ResponseBody<B>> {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than this endpoint accepts",
    )
}

fn store_failed<B>(error: &StoreError) -> Response<ResponseBody<B>> {
    tracing::warn!(%error, "idempotency store operation failed");
    if error.is_unavailable() {
        store_unavailable(Duration::from_secs(1))
    } else {
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "idempotency_store_error",
            "the idempotency record could not be read",
        )
    }
}

/// Whether the handler's response is the final answer for its key.
fn storable(status: StatusCode, config: &Config) -> bool {
    match status.as_u16() {
        // A redirect after a completed write (POST-redirect-GET) is its result too.
        200..=399 => true,
        // Transient answers: the client is expected to retry, so the key is released.
        408 | 409 | 429 => false,
        400..=499 => true,
        500..=599 => config.store_server_errors,
        _ => false,
    }
}

/// The gRPC status of a response: in the headers of a trailers-only answer, or in the
/// trailers.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a gRPC status is the final answer for its key, as `storable` for HTTP: success
/// and the deterministic refusals are; transient failures release the key.
fn grpc_storable(code: u32, config: &Config) -> bool {
    match code {
        // OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
        // FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED.
        0 | 3 | 5 | 6 | 7 | 9 | 11 | 12 | 16 => true,
        // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED are worth a retry.
        1 | 4 | 8 | 10 => false,
        // UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS: server errors.
        _ => config.store_server_errors,
    }
}

impl<S, I, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, I>
where
    S: StateStore,
    I: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    I::Future: Send + 'static,
    I::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = I::Error;
    type Future = ResponseFuture<I::Future, ResBody, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready instance goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = &self.config;
        let own = |response| ResponseFuture::ready(for_protocol(is_grpc(req.headers()), response));

        if !config.methods.contains(req.method()) {
            return ResponseFuture::passthrough(inner.call(req.map(RequestBody::inner)));
        }
        let key = match key::parse(req.headers(), &config.header) {
            Ok(Some(key)) => key,
            Ok(None) if config.required(req.method(), req.uri()) => {
                return own(reject(
                    StatusCode::BAD_REQUEST,
                    "idempotency_key_required",
                    &format!("this request needs a `{}` header", config.header),
                ));
            }
            Ok(None) => {
                return ResponseFuture::passthrough(inner.call(req.map(RequestBody::inner)));
            }
            Err(bad) => {
                return own(reject(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
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
        // The request runs in a task of its own (see the module docs on disconnects).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("IdempotencyLayer needs a Tokio runtime to run requests in");
            return own(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be processed",
            ));
        };
        let task = run(inner, self.store.clone(), self.config.clone(), key, req);
        // The task keeps the request's span, so its logs stay in the request's trace.
        ResponseFuture::spawned(runtime.spawn(task.instrument(tracing::Span::current())))
    }
}

/// Releases a claim that is dropped without being finished: a panicking handler, or a
/// task cancelled by a shutting-down runtime.
struct Claim<S: StateStore> {
    store: S,
    key: String,
    token: Bytes,
    armed: bool,
}

impl<S: StateStore> Claim<S> {
    /// Deletes the claim if this request still owns it, so that a retry can run now.
    async fn release(mut self) {
        self.armed = false;
        let (store, key, token) = (&self.store, &self.key, &self.token);
        if let Err(error) = persist(|| store.compare_and_delete(key, token)).await {
            tracing::warn!(%error, "could not release an idempotency key; it frees itself when its lock TTL ends");
        }
    }

    /// Turns the claim into the completed record, if this request still owns it.
    async fn complete(mut self, record: Bytes, retention: Duration) {
        self.armed = false;
        let (store, key, token) = (&self.store, &self.key, &self.token);
        match persist(|| store.compare_and_set(key, token, record.clone(), retention)).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "idempotency lease expired before the handler finished and another request took over the key; this response is not recorded (raise lock_ttl)"
            ),
            Err(error) => tracing::error!(
                %error,
                "could not record an idempotent response; a retry may run the handler again after the lock TTL"
            ),
        }
    }
}

/// Runs a store operation that is safe to repeat (a compare-and-set or -delete against
/// this request's own claim), retrying briefly while the store is unavailable: the handler
/// has run by now, and its record must not be lost to one dropped connection.
async fn persist<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(25);
    for _ in 0..4 {
        match op().await {
            // A dropped connection fails fast and the next attempt takes another; a
            // timeout already cost a whole timeout, and the client is waiting.
            Err(error @ StoreError::Unavailable(_)) => {
                tracing::debug!(%error, "retrying an idempotency record write");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
    op().await
}

impl<S: StateStore> Drop for Claim<S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let key = std::mem::take(&mut self.key);
            let token = self.token.clone();
            handle.spawn(async move {
                let _ = store.compare_and_delete(&key, &token).await;
            });
        }
    }
}

/// The buffered response, or why it could not be buffered.
enum Buffered<B> {
    Complete(Bytes, Option<HeaderMap>),
    TooLarge(Bytes, std::pin::Pin<Box<B>>),
    Failed,
}

async fn buffer<B: Body<Data = Bytes>>(body: B, limit: usize) -> Buffered<B> {
    let mut body = Box::pin(body);
    let mut data = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Buffered::Complete(data.freeze(), None),
            Some(Err(_)) => return Buffered::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > limit {
                        return Buffered::TooLarge(data.freeze(), body);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Buffered::Complete(data.freeze(), Some(trailers));
                    }
                }
            },
        }
    }
}

fn replay<B>(done: Box<Completed>) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full_with_trailers(done.body, done.trailers));
    *response.status_mut() = done.status;
    *response.headers_mut() = done.headers;
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The whole life of a request that carries a key: buffer, claim, run, record.
async fn run<S, I, ReqBody, ResBody>(
    mut inner: I,
    store: S,
    config: Arc<Config>,
    client_key: String,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, I::Error>
where
    S: StateStore,
    I: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    let (parts, body) = req.into_parts();
    let grpc = is_grpc(&parts.headers);
    let own = |response| Ok(for_protocol(grpc, response));
    let body = match Limited::new(body, config.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return own(too_large()),
        Err(_) => {
            return own(reject(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body could not be read",
            ))
        }
    };

    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fingerprint = key::fingerprint(
        &parts.method,
        path_and_query,
        &parts.headers,
        &config.fingerprint_headers,
        &body,
    );
    let store_key = key::store_key(
        &config.prefix,
        parts.extensions.get::<RegisteredClaims>(),
        &parts.method,
        parts.uri.path(),
        &client_key,
    );
    let owner = match crate::id::random_id::<16>() {
        Ok(owner) => owner,
        Err(error) => {
            tracing::error!(%error, "no randomness for an idempotency lock token");
            return own(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be processed",
            ));
        }
    };
    let token = Record::InProgress { owner, fingerprint }.encode();

    match store
        .set_if_absent(&store_key, token.clone(), config.lock_ttl)
        .await
    {
        Err(error) => {
            if matches!(error, StoreError::Timeout(_)) {
                // The claim may have been written after all: free it now rather than
                // answer the client's retries with 409 for a whole lock TTL.
                let (store, key, token) = (store.clone(), store_key.clone(), token.clone());
                tokio::spawn(async move {
                    let _ = store.compare_and_delete(&key, &token).await;
                });
            }
            return own(store_failed(&error));
        }
        Ok(Some(existing)) => {
            let answer = match Record::decode(&existing) {
                Err(error) => {
                    tracing::error!(%error, key = %store_key, "corrupt idempotency record");
                    reject(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "idempotency_store_error",
                        "the idempotency record could not be read",
                    )
                }
                Ok(record) if record.fingerprint() != &fingerprint => reject(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this idempotency key was used for a different request",
                ),
                Ok(Record::InProgress { .. }) => {
                    let mut res = reject(
                        StatusCode::CONFLICT,
                        "idempotency_request_in_progress",
                        "a request with this idempotency key is still running; retry later",
                    );
                    res.headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
                    res
                }
                // The stored response, as the handler gave it: never converted.
                Ok(Record::Completed(done)) => return Ok(replay(done)),
            };
            return own(answer);
        }
        Ok(None) => {}
    }

    let claim = Claim {
        store,
        key: store_key,
        token,
        armed: true,
    };
    let req = Request::from_parts(parts, RequestBody::buffered(body));
    let response = match inner.call(req).await {
        Ok(response) => response,
        Err(error) => {
            claim.release().await;
            return Err(error);
        }
    };
    let final_answer = match grpc_status(response.headers()) {
        Some(code) => grpc_storable(code, &config),
        None => storable(response.status(), &config),
    };
    if !final_answer {
        claim.release().await;
        return Ok(wrap(response));
    }

    let (parts, body) = response.into_parts();
    match buffer(body, config.max_response_body).await {
        Buffered::Complete(data, trailers) => {
            let grpc_failed = trailers
                .as_ref()
                .and_then(grpc_status)
                .is_some_and(|code| !grpc_storable(code, &config));
            if grpc_failed {
                claim.release().await;
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::full_with_trailers(data, trailers),
                ));
            }
            let headers = parts
                .headers
                .iter()
                .filter(|(name, _)| config.replays(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            let record = Record::Completed(Box::new(Completed {
                fingerprint,
                status: parts.status,
                headers,
                trailers: trailers.clone(),
                body: data.clone(),
            }));
            claim.complete(record.encode(), config.retention).await;
            Ok(Response::from_parts(
                parts,
                ResponseBody::full_with_trailers(data, trailers),
            ))
        }
        Buffered::TooLarge(prefix, rest) => {
            tracing::debug!(
                limit = config.max_response_body,
                "response too large to store for idempotency; key released"
            );
            claim.release().await;
            Ok(Response::from_parts(
                parts,
                ResponseBody::prefixed(prefix, rest),
            ))
        }
        Buffered::Failed => {
            claim.release().await;
            own(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "response_body_failed",
                "the response body failed while it was being produced",
            ))
        }
    }
}
