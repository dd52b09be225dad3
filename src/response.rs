//! What every layer answers with: the response body wrapper and the JSON error body.
//!
//! # Conventions shared by every layer
//!
//! - A rejection is a response, never a service error: the status, the JSON
//!   [`ErrorBody`] with a code from the [`rejection`] catalogue, and
//!   `Retry-After` on a `503`.
//! - Every layer's response body is [`ResponseBody`], which keeps the inner body's type.
//! - A response future polled again after it returned `Poll::Ready` panics, with a message
//!   naming the layer, as the [`Future`] contract allows and as std and tower futures do:
//!   it is a bug in the caller, not a condition of the request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};

use crate::rejection;

pin_project! {
    /// The response body of every layer in this crate: either the inner service's body,
    /// passed through untouched, or bytes the layer produced itself (a rejection, a
    /// replayed response).
    ///
    /// It keeps the inner body's type and error, so hyper and tonic users need no boxing.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        // Bytes already read from `body` (while trying to buffer it), then the rest of it.
        Prefixed { prefix: Option<Bytes>, body: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub(crate) fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of the given bytes.
    pub(crate) fn full(data: Bytes) -> Self {
        Self::full_with_trailers(data, None)
    }

    /// A body of the given bytes followed by trailers (a replayed gRPC response needs its
    /// `grpc-status` trailer).
    pub(crate) fn full_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// `prefix` (already read from `body`), then the rest of `body`.
    pub(crate) fn prefixed(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The bytes of a body this crate produced itself.
    fn produced(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full { data, .. } => data.as_ref(),
            _ => None,
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            KindProj::Prefixed { prefix, body } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => body.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Prefixed { prefix, body } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

/// The response future of a layer that awaits the store around its inner service
/// (`SessionLayer`, `RateLimitLayer`). It is boxed, so it requires a `Send + 'static`
/// request, inner future and response body.
pub struct BoxResponseFuture<B, E> {
    inner: Option<BoxedLayerFuture<B, E>>,
    /// The service, for the panic of a future polled after completion.
    service: &'static str,
}

type LayerResult<B, E> = Result<Response<ResponseBody<B>>, E>;
type BoxedLayerFuture<B, E> = Pin<Box<dyn Future<Output = LayerResult<B, E>> + Send + 'static>>;

impl<B, E> BoxResponseFuture<B, E> {
    pub(crate) fn new<F>(service: &'static str, future: F) -> Self
    where
        F: Future<Output = LayerResult<B, E>> + Send + 'static,
    {
        Self {
            inner: Some(Box::pin(future)),
            service,
        }
    }
}

impl<B, E> std::fmt::Debug for BoxResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxResponseFuture")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<B, E> Future for BoxResponseFuture<B, E> {
    type Output = LayerResult<B, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            panic!("{}: response future polled after completion", self.service);
        };
        let output = std::task::ready!(inner.as_mut().poll(cx));
        self.inner = None;
        Poll::Ready(output)
    }
}

/// The JSON body of every error response a layer produces:
/// `{"error":"invalid_token","message":"the token has expired"}`.
///
/// `error` is a stable machine-readable code; `message` is for people and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// Stable error code, e.g. `invalid_token`, `store_unavailable`.
    pub error: String,
    /// Human-readable explanation; never carries secrets or token contents.
    pub message: String,
}

impl ErrorBody {
    /// An error body with the given code and message.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }

    /// A response with this body as JSON and the given status.
    pub fn into_response<B>(self, status: StatusCode) -> Response<ResponseBody<B>> {
        // Serializing two strings cannot fail; fall back to an empty object regardless.
        let json = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(ResponseBody::full(Bytes::from(json)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The message of every `store_unavailable` body.
pub(crate) const STORE_UNAVAILABLE_MESSAGE: &str = "the state store is unavailable; retry later";

/// The `503 Service Unavailable` every layer answers when the store cannot be reached
/// ([`StoreFailure::closed`](crate::StoreFailure::closed)): JSON body with code
/// `store_unavailable` and a `Retry-After` header.
pub(crate) fn store_unavailable<B>(retry_after: Duration) -> Response<ResponseBody<B>> {
    let mut response = ErrorBody::new(rejection::STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE)
        .into_response(StatusCode::SERVICE_UNAVAILABLE);
    let secs = retry_after.as_secs().max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// A JSON error response with `status`, `code` (from [`rejection`]) and `message`;
/// a `503` also gets `Retry-After: 1`.
pub(crate) fn error_response<B>(
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ResponseBody<B>> {
    let mut response = ErrorBody::new(code, message).into_response(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    response
}

/// `500 internal_error`: a misconfiguration or a corrupt store reply; the details are in
/// the log.
pub(crate) fn internal_error<B>() -> Response<ResponseBody<B>> {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        rejection::INTERNAL_ERROR,
        "internal server error",
    )
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (HTTP/1.0 caches): token endpoint
/// answers, success or error (RFC 6749 §5.1, §5.2).
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn no_store(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// An error response as axum's response type.
#[cfg(feature = "axum")]
pub(crate) fn into_axum(
    response: Response<ResponseBody<http_body_util::Empty<Bytes>>>,
) -> axum_core::response::Response {
    response.map(axum_core::body::Body::new)
}

/// The axum `IntoResponse` of an error type handlers see: its `status()`, its
/// `error_code()` and its `client_message()` as the crate's JSON error body.
macro_rules! impl_into_response {
    ($ty:ty) => {
        #[cfg(feature = "axum")]
        #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
        impl axum_core::response::IntoResponse for $ty {
            /// The status, the JSON [`ErrorBody`](crate::response::ErrorBody) with
            /// `error_code()`, and `Retry-After: 1` on a `503`.
            fn into_response(self) -> axum_core::response::Response {
                crate::response::into_axum(crate::response::error_response(
                    self.status(),
                    self.error_code(),
                    self.client_message(),
                ))
            }
        }
    };
}
pub(crate) use impl_into_response;

/// Maps an inner response onto [`ResponseBody`].
pub(crate) fn wrap<B>(response: Response<B>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::new)
}

/// Whether a request speaks gRPC (`content-type: application/grpc`, `application/grpc+proto`,
/// ...): its client reads `grpc-status`, not an HTTP status and a JSON body.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The gRPC status code closest to a layer's HTTP rejection.
fn grpc_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 5,        // NOT_FOUND
        409 => 10,       // ABORTED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        422 => 9,        // FAILED_PRECONDITION
        503 => 14,       // UNAVAILABLE
        500..=599 => 13, // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol asks.
fn grpc_message(message: &str) -> String {
    use std::fmt::Write as _;
    message.bytes().fold(String::new(), |mut out, b| {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// A layer's own rejection, as the request's protocol wants it: unchanged for HTTP, or for
/// a gRPC request a trailers-only gRPC response (`200`, `grpc-status`, `grpc-message`)
/// that keeps `WWW-Authenticate`, `Retry-After` and rate-limit headers.
pub(crate) fn for_protocol<B>(
    grpc: bool,
    response: Response<ResponseBody<B>>,
) -> Response<ResponseBody<B>> {
    if !grpc || response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let message = body
        .produced()
        .and_then(|data| serde_json::from_slice::<ErrorBody>(data).ok())
        .map(|e| e.message)
        .unwrap_or_default();
    let code = grpc_code(parts.status);
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(value) = HeaderValue::from_str(&grpc_message(&message)) {
        parts.headers.insert("grpc-message", value);
    }
    Response::from_parts(parts, ResponseBody::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_recognised() {
        let with = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web-text"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }

    #[test]
    fn rejections_become_grpc_statuses() {
        let mut res = ErrorBody::new("invalid_token", "token expired: 100% sure\n")
            .into_response::<String>(StatusCode::UNAUTHORIZED);
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        let unchanged = for_protocol(false, res);
        assert_eq!(unchanged.status(), StatusCode::UNAUTHORIZED);
        let grpc = for_protocol(true, unchanged);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "16");
        assert_eq!(
            grpc.headers()["grpc-message"],
            "token expired: 100%25 sure%0A"
        );
        assert_eq!(grpc.headers()["content-type"], "application/grpc");
        assert_eq!(grpc.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(grpc.body().produced().is_none());
        let busy = store_unavailable::<String>(Duration::from_secs(3));
        let busy = for_protocol(true, busy);
        assert_eq!(busy.headers()["grpc-status"], "14");
        assert_eq!(busy.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    #[should_panic(expected = "SessionService: response future polled after completion")]
    fn a_boxed_future_polled_after_completion_panics_naming_its_service() {
        let mut future = BoxResponseFuture::<String, ()>::new("SessionService", async {
            Ok(Response::new(ResponseBody::empty()))
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut future).poll(&mut cx).is_ready());
        let _ = Pin::new(&mut future).poll(&mut cx);
    }
}
