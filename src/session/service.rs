//! [`SessionService`] and its [`ResponseFuture`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cookie::Cookie;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::sync::Mutex;
use tower_service::Service;

use super::config::{Config, Transport};
use super::handle::{store_key, Session, Shared, State, StoreBackend};
use crate::id::{is_session_id, session_id};
use crate::metrics::{self, SessionOp, SessionResult};
use crate::response::{
    for_protocol, is_grpc, store_unavailable, wrap, BoxResponseFuture, ErrorBody, ResponseBody,
};
use crate::store::{
    HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, StateStore, StoreError,
};
use crate::RegisteredClaims;

/// The service built by [`SessionLayer`](super::SessionLayer).
///
/// The inner service must be `Clone` (the future takes the instance that was polled ready).
#[derive(Debug, Clone)]
pub struct SessionService<S, I> {
    pub(crate) inner: I,
    pub(crate) store: S,
    pub(crate) config: Arc<Config>,
}

impl<S, I> SessionService<S, I> {
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

/// Response future of [`SessionService`]: runs the inner service, then writes the session
/// back.
pub type ResponseFuture<B, E> = BoxResponseFuture<B, E>;

/// What the response needs after write-back.
enum CookieAction {
    None,
    Set(String),
    Remove,
}

enum WriteError {
    Store(StoreError),
    /// The store refused the write: the session would have grown to this many bytes,
    /// past its limit.
    TooLarge(u64),
}

/// Where the request's session id came from.
#[derive(Debug, Default)]
struct RequestId {
    /// The id, format-checked.
    id: Option<String>,
    /// From the session cookie: only a cookie the client holds is renewed (`Max-Age`).
    from_cookie: bool,
    /// From the JWT `sid` claim: a new session is created under it, and it is never put
    /// into a cookie or header.
    from_claim: bool,
}

fn request_id<B>(req: &Request<B>, config: &Config) -> RequestId {
    if config.use_sid_claim {
        if let Some(sid) = req
            .extensions()
            .get::<RegisteredClaims>()
            .and_then(|c| c.sid.as_deref())
        {
            return RequestId {
                id: is_session_id(sid).then(|| sid.to_owned()),
                from_cookie: false,
                from_claim: true,
            };
        }
    }
    match &config.transport {
        Transport::Header(name) => RequestId {
            id: req
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| is_session_id(v))
                .map(str::to_owned),
            ..RequestId::default()
        },
        Transport::Cookie => {
            let id = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| Cookie::split_parse(v).filter_map(Result::ok))
                .find(|c| c.name() == config.cookie_name)
                .map(|c| c.value().to_owned())
                .filter(|v| is_session_id(v));
            RequestId {
                from_cookie: id.is_some(),
                id,
                from_claim: false,
            }
        }
    }
}

fn new_id() -> Result<String, StoreError> {
    session_id().map_err(|e| StoreError::Unexpected(Box::new(e)))
}

/// The request's changes as one store write.
fn changes_of(st: &State) -> HashChanges {
    let mut changes = HashChanges {
        clear: st.cleared,
        ..HashChanges::default()
    };
    for (key, change) in &st.changes {
        match change {
            Some(value) => changes.set.push((key.clone(), value.clone())),
            None => changes.delete.push(key.clone()),
        }
    }
    changes
}

fn unexpected(outcome: HashWriteOutcome) -> WriteError {
    WriteError::Store(StoreError::Unexpected(
        format!("unexpected outcome of a session write: {outcome:?}").into(),
    ))
}

/// Writes `changes` as a new session under a fresh random id and returns the id.
async fn create<S: StateStore>(
    store: &S,
    config: &Config,
    changes: &HashChanges,
    lifetime: Duration,
) -> Result<String, WriteError> {
    let options =
        HashWriteOptions::new(HashMode::New { lifetime }, config.idle).max_bytes(config.max_bytes);
    // 256 random bits do not collide; the retries only guard a broken generator.
    for _ in 0..3 {
        let id = new_id().map_err(WriteError::Store)?;
        let key = store_key(&config.prefix, &id);
        match store
            .hash_apply(&key, changes, options)
            .await
            .map_err(WriteError::Store)?
        {
            HashWriteOutcome::Written => {
                metrics::session(SessionOp::Write, SessionResult::Ok);
                return Ok(id);
            }
            HashWriteOutcome::Exists => continue,
            HashWriteOutcome::TooLarge(size) => return Err(WriteError::TooLarge(size)),
            other => return Err(unexpected(other)),
        }
    }
    Err(WriteError::Store(StoreError::Unexpected(
        "three fresh session ids were all taken".into(),
    )))
}

/// Writes the request's changes back: one store write of the changed keys, never a
/// retry. `renew`: re-send the cookie of an existing session (a `Max-Age` cookie must roll
/// with the idle expiry, or the browser drops a live session).
async fn write_back<S: StateStore>(
    store: &S,
    config: &Config,
    st: State,
    renew: bool,
) -> Result<CookieAction, WriteError> {
    if !st.loaded {
        return Ok(CookieAction::None);
    }
    // A destroyed session goes first: whatever the handler did afterwards, its id is gone.
    let mut action = CookieAction::None;
    if let Some(old) = &st.destroyed {
        store
            .delete(&store_key(&config.prefix, old))
            .await
            .map_err(WriteError::Store)?;
        metrics::session(SessionOp::Destroy, SessionResult::Ok);
        action = CookieAction::Remove;
    }
    let lifetime = config.lifetime();
    // After a load, `st.id` is `Some` only when the session exists.
    match (st.id.as_deref(), st.cycle) {
        (Some(id), false) => {
            // Created by `Session::update` in this request: its id goes out. A session
            // under the `sid` claim is never `created`: its id stays in the token.
            let send = st.created || renew;
            if !st.modified() {
                return Ok(if send {
                    CookieAction::Set(id.to_owned())
                } else {
                    action
                });
            }
            let key = store_key(&config.prefix, id);
            let options =
                HashWriteOptions::new(HashMode::Existing, config.idle).max_bytes(config.max_bytes);
            let outcome = store
                .hash_apply(&key, &changes_of(&st), options)
                .await
                .map_err(WriteError::Store)?;
            if matches!(outcome, HashWriteOutcome::Written) {
                metrics::session(SessionOp::Write, SessionResult::Ok);
            }
            match outcome {
                HashWriteOutcome::Written if send => Ok(CookieAction::Set(id.to_owned())),
                HashWriteOutcome::Written => Ok(action),
                // Destroyed or expired meanwhile: it is never resurrected.
                HashWriteOutcome::Missing => {
                    tracing::debug!("session ended during the request; changes dropped");
                    Ok(action)
                }
                HashWriteOutcome::TooLarge(size) => Err(WriteError::TooLarge(size)),
                other => Err(unexpected(other)),
            }
        }
        (Some(old), true) => {
            let changes = HashChanges {
                set: st
                    .view()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.clone()))
                    .collect(),
                ..HashChanges::default()
            };
            let left = st
                .lifetime_left
                .unwrap_or(lifetime)
                .max(Duration::from_millis(1));
            let id = create(store, config, &changes, left).await?;
            store
                .delete(&store_key(&config.prefix, old))
                .await
                .map_err(WriteError::Store)?;
            metrics::session(SessionOp::Destroy, SessionResult::Ok);
            Ok(CookieAction::Set(id))
        }
        (None, _) => {
            let mut changes = changes_of(&st);
            // A new session has nothing to clear or remove.
            changes.clear = false;
            changes.delete.clear();
            // Nothing to keep (no write, only removals, a destroy): no empty session.
            if changes.set.is_empty() {
                return Ok(action);
            }
            match &st.sid {
                // The id travels in the token, not in a cookie or header. Concurrent first
                // writes under one `sid` create it once and all their keys are kept.
                Some(sid) => {
                    let key = store_key(&config.prefix, sid);
                    let options = HashWriteOptions::new(HashMode::Upsert { lifetime }, config.idle)
                        .max_bytes(config.max_bytes);
                    match store
                        .hash_apply(&key, &changes, options)
                        .await
                        .map_err(WriteError::Store)?
                    {
                        HashWriteOutcome::Written => {
                            metrics::session(SessionOp::Write, SessionResult::Ok);
                            Ok(action)
                        }
                        HashWriteOutcome::TooLarge(size) => Err(WriteError::TooLarge(size)),
                        other => Err(unexpected(other)),
                    }
                }
                None => Ok(CookieAction::Set(
                    create(store, config, &changes, lifetime).await?,
                )),
            }
        }
    }
}

/// `503` with `Retry-After` when the store is unavailable, else `500`.
fn store_error_response<B>(unavailable: bool, message: &str) -> Response<ResponseBody<B>> {
    if unavailable {
        store_unavailable(Duration::from_secs(1))
    } else {
        ErrorBody::new("session_error", message).into_response(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Puts the session id (or its removal) into the response. Returns whether anything was
/// sent.
fn apply_cookie<B>(res: &mut Response<B>, config: &Config, action: CookieAction) -> bool {
    let value = match (&config.transport, action) {
        (_, CookieAction::None) => return false,
        (Transport::Header(name), CookieAction::Set(id)) => {
            return match HeaderValue::from_str(&id) {
                Ok(v) => {
                    res.headers_mut().insert(name.clone(), v);
                    true
                }
                Err(_) => false,
            };
        }
        (Transport::Header(_), CookieAction::Remove) => return false,
        (Transport::Cookie, action) => {
            let removing = matches!(action, CookieAction::Remove);
            let id = match action {
                CookieAction::Set(id) => id,
                _ => String::new(),
            };
            let mut c = Cookie::build((config.cookie_name.clone(), id))
                .path(config.path.clone())
                .secure(config.secure)
                .http_only(config.http_only)
                .same_site(config.same_site);
            if let Some(d) = &config.domain {
                c = c.domain(d.clone());
            }
            if removing {
                c = c.max_age(cookie::time::Duration::ZERO);
            } else if let Some(age) = config.max_age_secs {
                c = c.max_age(cookie::time::Duration::seconds(age));
            }
            c.build().encoded().to_string()
        }
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            res.headers_mut().append(header::SET_COOKIE, v);
            true
        }
        Err(_) => false,
    }
}

/// A response that carries a session id must not be stored by a shared cache (a proxy or
/// CDN would hand the id to everyone): `Cache-Control: private`, unless the handler chose
/// its own `Cache-Control`.
///
/// `private` rather than `no-store`: shared caches must not store it (RFC 9111 §5.2.2.7),
/// which is the whole risk; the user's own browser may still cache the page, which holds
/// only that user's data, and a browser never replays `Set-Cookie` from its cache.
fn keep_out_of_shared_caches<B>(res: &mut Response<B>) {
    if !res.headers().contains_key(header::CACHE_CONTROL) {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// A response built after the handler looked at the session depends on the request's
/// session cookie (or header), also when there was none: `Vary` names it, so a shared cache
/// that stores the response (the handler allowed it) never serves it to another session.
fn vary_on_transport<B>(res: &mut Response<B>, config: &Config) {
    let name = match &config.transport {
        Transport::Cookie => header::COOKIE,
        Transport::Header(name) => name.clone(),
    };
    let covered = res
        .headers()
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|v| v == "*" || v.eq_ignore_ascii_case(name.as_str()));
    if !covered {
        res.headers_mut()
            .append(header::VARY, HeaderValue::from(name));
    }
}

impl<S, I, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S, I>
where
    S: StateStore,
    I: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    I::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = I::Error;
    type Future = ResponseFuture<ResBody, I::Error>;

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
        } = request_id(&req, &config);
        let grpc = is_grpc(req.headers());
        let renew = from_cookie && config.max_age_secs.is_some();
        let shared = Arc::new(Shared {
            backend: Arc::new(StoreBackend(store.clone())),
            key_prefix: config.prefix.clone(),
            idle: config.idle,
            lifetime: config.lifetime(),
            max_bytes: config.max_bytes,
            max_retries: config.max_retries,
            state: Mutex::new(State {
                sid: id.clone().filter(|_| from_claim),
                id,
                ..State::default()
            }),
        });
        req.extensions_mut().insert(Session {
            shared: shared.clone(),
        });
        BoxResponseFuture::new(async move {
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
                return Ok(for_protocol(
                    grpc,
                    store_error_response(unavailable, "the session could not be loaded"),
                ));
            }
            let looked_at = st.loaded;
            match write_back(&store, &config, st, renew).await {
                Ok(action) => {
                    if apply_cookie(&mut res, &config, action) {
                        keep_out_of_shared_caches(&mut res);
                    }
                    if looked_at && !from_claim {
                        vary_on_transport(&mut res, &config);
                    }
                    Ok(wrap(res))
                }
                Err(WriteError::Store(e)) => {
                    metrics::session(SessionOp::Write, SessionResult::StoreError);
                    tracing::warn!(error = %e, "session write-back failed");
                    Ok(for_protocol(
                        grpc,
                        store_error_response(e.is_unavailable(), "the session could not be saved"),
                    ))
                }
                Err(WriteError::TooLarge(size)) => {
                    tracing::warn!(
                        size,
                        limit = config.max_bytes,
                        "session over its size limit"
                    );
                    Ok(for_protocol(
                        grpc,
                        ErrorBody::new(
                            "session_too_large",
                            "the session would grow past its size limit; nothing was saved",
                        )
                        .into_response(StatusCode::PAYLOAD_TOO_LARGE),
                    ))
                }
            }
        })
    }
}
