//! [`ResponseFuture`] of [`SessionService`](super::SessionService).

use crate::response::BoxResponseFuture;

/// Response future of [`SessionService`](super::SessionService): runs the inner service,
/// then writes the session back. Boxed: it requires a `Send + 'static` inner future and
/// response body.
pub type ResponseFuture<B, E> = BoxResponseFuture<B, E>;
