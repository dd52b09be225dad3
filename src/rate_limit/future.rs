//! [`ResponseFuture`] of [`RateLimitService`](super::RateLimitService).

use crate::response::BoxResponseFuture;

/// Response future of [`RateLimitService`](super::RateLimitService): the store check,
/// then the inner service. Boxed: it requires a `Send + 'static` inner future and response
/// body.
pub type ResponseFuture<B, E> = BoxResponseFuture<B, E>;
