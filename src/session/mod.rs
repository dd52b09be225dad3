//! Server-side sessions in the shared store, safe under concurrency across instances.
//!
//! [`SessionLayer`] puts a [`Session`] handle into every request's extensions. A session
//! lives in the [`StateStore`](crate::store::StateStore) as one hash under `sess:{<id>}`
//! (on Redis a Redis hash, one field per session key holding its JSON value, so all of a
//! session is in one Redis Cluster slot); the client only holds an opaque id, in a cookie
//! (default) or a header.
//!
//! Round trips: a handler that never touches the session costs none; the first read loads
//! it with one read (plus one to roll the idle expiry, once per
//! [refresh interval](SessionLayer::refresh_interval)); a modified session costs one write of
//! the keys the request changed after the handler returns, never a retry; an unmodified one
//! is never written. [`Session::insert`], [`Session::remove`] and [`Session::clear`] do
//! not load the session: a request that only changes keys costs the one write (into the
//! session when it exists, else into a new session under a fresh id, as after a read that
//! found none). [`Session::update`] writes at once (one round trip when
//! nothing conflicts). With [`SessionLayer::max_age`] the cookie is re-sent whenever an
//! existing session is loaded, so the browser keeps a session that is in use.
//!
//! # Lifetime
//!
//! A load or a write that finds a [refresh interval](SessionLayer::refresh_interval) of
//! the session's expiry used up sets it to the idle timeout from now (by default a tenth
//! of the idle timeout, at most a minute; zero: every load and every write). The absolute
//! deadline (creation plus the absolute lifetime, kept with the session in the store and
//! fixed when it is created) caps it: past it the session is gone for every request,
//! whatever the refreshes. On Redis, Redis' own clock decides near the deadline, so
//! instance clocks up to a minute off it do not move the deadline; an instance clock
//! behind Redis' by `d` may roll an idle expiry up to `d` late (see
//! [`StateStore::hash_get_all_and_refresh_lazily`](crate::store::StateStore::hash_get_all_and_refresh_lazily)).
//!
//! # Concurrency
//!
//! Each request records only its own changes (inserted and removed keys, cleared) and
//! writes them in one atomic step that touches no other key. Requests of one session on
//! any instance never lose each other's keys; when two write the **same key, the last
//! writer wins**. For a read-modify-write of one key (a counter, a quantity), use
//! [`Session::update`]: it compares and sets that key alone, atomically across instances,
//! and retries only when another request changed the same key meanwhile. A collection
//! whose items change independently is best one key per item (`cart:<sku>`), listed with
//! [`Session::keys_with_prefix`].
//!
//! A session that was destroyed, cycled away or expired is never resurrected by a
//! concurrent write: a write only goes into an existing session; a new session is only
//! created under a fresh random id (or, with
//! [`id_from_sid_claim`](SessionLayer::id_from_sid_claim), under a `sid` that has no
//! session, where concurrent first writes merge).
//!
//! # Limits and bad input
//!
//! A session is limited in size ([`SessionLayer::max_size`], default 1 MiB of keys and
//! JSON values): a change past it is refused whole with [`SessionError::TooLarge`] (when the
//! request read the session, or the change alone is over the limit), or else the
//! write-back is refused by the store (a request that only inserted, or concurrent requests
//! that together cross the limit) and the layer answers `413` with nothing of the request
//! saved; never truncated. A stored value that does
//! not deserialize into the type asked for is [`SessionError::Decode`], and the session is
//! left as it is. A session stored by an earlier version of this crate (one JSON record) is
//! treated as no session: the client gets a new session on its next write.
//!
//! # Destroy, cycle, clear
//!
//! [`Session::destroy`] ends the session for good: its id is deleted when the handler
//! returns, whatever the handler does afterwards. A write after `destroy` in the same
//! request (a flash message after logout) starts a new session with a new id and a new
//! cookie, holding only what was written after `destroy`. [`Session::cycle_id`] moves the
//! data, with this request's changes, to a new id and deletes the old one.
//! [`Session::clear`] empties the session and keeps its id. No request creates an empty
//! session: a new session is only written when it holds a key.
//!
//! # My devices
//!
//! [`Devices`] binds each login (the `sid` of its tokens) to its user, lists the user's
//! live logins by an opaque handle, and ends one, all, or all but the current one: session
//! data, access tokens and refresh-token families together. It is built from the layer
//! ([`Devices::new`] takes it, for its key prefix), works beside it and adds no round trip
//! to requests that do not call it.
//!
//! # Errors
//!
//! [`Session`] methods return [`SessionError`]; [`SessionError::is_unavailable`] tells a store
//! outage, and [`SessionError::status`] / [`SessionError::error_code`] say what to answer
//! (`503`, `413`, `409`, `500`). When the write-back fails because the store is unavailable
//! the layer answers `503` with `Retry-After`, never a silently lost update.
//!
//! When loading the session failed during the request, the layer replaces the handler's
//! response with `503` and `Retry-After` (`500` for a store error other than an outage) and
//! writes nothing back, even if the handler swallowed the error and answered `200`: a
//! response built on a session that could not be read is not passed off as a success. A
//! handler that answers 5xx itself keeps its own response.
//!
//! That is [`StoreFailure::closed`](crate::StoreFailure::closed), the default. With
//! [`SessionLayer::on_store_failure(StoreFailure::open())`](SessionLayer::on_store_failure)
//! an unavailable store no longer replaces the handler's answer: the handler sees the
//! error from its [`Session`] calls and its response goes out; changes that cannot be
//! written back are lost, with a warning. (See [`StoreFailure`](crate::StoreFailure), the
//! one setting of every store-backed layer.) With the `axum` feature, [`SessionError`]
//! is an `IntoResponse` (its status and the crate's JSON error body).
//!
//! # Security
//!
//! Ids are 32 bytes from the OS CSPRNG (43 URL-safe base64 chars), from the one generator
//! the crate uses for session ids (the `sid` of
//! [`RefreshTokens::issue`](crate::refresh::RefreshTokens::issue) is one too). An id of any
//! other length or alphabet (forged, truncated, a 10 KB cookie) is ignored without a store
//! lookup; an unknown or expired id from a cookie or header is treated as no session, and a
//! write then starts a session under a new id (never under the id the client sent). Call
//! [`Session::cycle_id`] at login against session fixation (its docs say how it races with
//! concurrent writes on the old id). The cookie is `Secure`, `HttpOnly`, `SameSite=Lax` by
//! default.
//!
//! # Caching
//!
//! A response that carries a session id (a new or renewed cookie, a removal cookie, the id
//! header) gets `Cache-Control: private` unless the handler set its own `Cache-Control`, so
//! that no shared cache (proxy, CDN) stores the id and hands it to other users. `private`
//! rather than `no-store`: shared caches are the risk; the user's own browser may keep its
//! own page, and never replays a `Set-Cookie` from its cache. A handler that sets
//! `Cache-Control` itself decides alone (e.g. `no-store` for sensitive pages).
//!
//! A response built after the handler touched the session gets `Vary: Cookie` (or the id
//! header's name), also when the request had no session: it depends on the session, so a
//! shared cache that may store it keeps it apart per session. Untouched sessions add nothing.
//! With [`id_from_sid_claim`](SessionLayer::id_from_sid_claim), a session found through the
//! `sid` claim adds no `Vary` (the response depends on the `Authorization` header, which
//! shared caches already treat as private).
//!
//! # Configuration errors
//!
//! Settings that could not work are refused by the builder with a
//! [`ConfigError`](crate::ConfigError) naming the setting, never at request time: a
//! lifetime or `Max-Age` under one second, a `Max-Age` beyond `i64` seconds, an idle timeout
//! the store cannot hold as a TTL, a cookie name, path or domain that cannot travel in a
//! `Set-Cookie` header.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::session::{Session, SessionLayer};
//! use tower_stateless::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new()
//!     .layer(SessionLayer::new(MemoryStore::new()).cookie_name("sid")?)
//!     .service_fn(|req: Request<String>| async move {
//!         let session = req.extensions().get::<Session>().cloned();
//!         if let Some(session) = session {
//!             let visits: u32 = session.get("visits").await.ok().flatten().unwrap_or(0);
//!             let _ = session.insert("visits", visits + 1).await;
//!         }
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     });
//! let res = svc.oneshot(Request::new(String::new())).await?;
//! assert!(res.headers().contains_key("set-cookie"));
//! // Shared caches must not store a response that carries a session id.
//! assert_eq!(res.headers()["cache-control"], "private");
//! # Ok(())
//! # }
//! ```

mod config;
mod devices;
mod future;
mod handle;
mod layer;
mod service;
mod transport;
mod write;

pub use self::devices::{Device, Devices, DevicesError};
pub use self::future::ResponseFuture;
pub use self::handle::{Session, SessionError};
pub use self::layer::SessionLayer;
pub use self::service::SessionService;
pub use cookie::SameSite;

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::FromRequestParts;
    use axum_core::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::StatusCode;

    use super::Session;
    use crate::rejection;
    use crate::response::{error_response, into_axum};

    /// Rejection when [`Session`] is extracted without [`SessionLayer`](super::SessionLayer):
    /// a misconfiguration, answered `500` with the crate's JSON error body
    /// (`internal_error`).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct MissingSessionLayer;

    impl std::fmt::Display for MissingSessionLayer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the Session extractor was used without SessionLayer")
        }
    }

    impl std::error::Error for MissingSessionLayer {}

    impl IntoResponse for MissingSessionLayer {
        fn into_response(self) -> Response {
            tracing::error!("{self}");
            into_axum(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                rejection::INTERNAL_ERROR,
                "the Session extractor was used without SessionLayer",
            ))
        }
    }

    impl<St: Send + Sync> FromRequestParts<St> for Session {
        type Rejection = MissingSessionLayer;
        async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Session>()
                .cloned()
                .ok_or(MissingSessionLayer)
        }
    }
}
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::extract::MissingSessionLayer;
