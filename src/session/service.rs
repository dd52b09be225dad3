//! [`SessionService`] and its [`ResponseFuture`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cookie::Cookie;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::sync::Mutex;
use tower_service::Service;

use super::config::{Config, Transport};
use super::handle::{
    apply, now_secs, store_key, Record, Session, Shared, State, StoreLoader, RECORD_VERSION,
};
use crate::id::{is_session_id, session_id};
use crate::metrics::{self, SessionOp, SessionResult};
use crate::response::{
    for_protocol, is_grpc, store_unavailable, wrap, BoxResponseFuture, ErrorBody, ResponseBody,
};
use crate::store::{StateStore, StoreError};
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
    Conflict,
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

/// First backoff ceiling after a compare-and-set conflict; it doubles per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(4);
/// Largest backoff ceiling.
const BACKOFF_CAP: Duration = Duration::from_millis(256);

/// Full-jitter exponential backoff: uniform in `[0, min(cap, base * 2^attempt)]`. Uniform
/// from zero spreads conflicting writers apart (the old 1 ms first step kept them in step),
/// and the doubling window lets more of them through each round: with the default 8
/// retries, 50 concurrent writers on one session across instances all get through (with
/// the old backoff about half such runs got a 409). One conflict costs a few milliseconds.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let mut b = [0u8; 4];
    let r = getrandom::fill(&mut b)
        .map(|_| u32::from_le_bytes(b))
        .unwrap_or(u32::MAX / 2);
    // Microsecond steps: `r / u32::MAX` of the ceiling.
    let micros = ceiling.as_micros() as u64 * u64::from(r) / u64::from(u32::MAX);
    Duration::from_micros(micros)
}

fn encode(record: &Record) -> Result<Bytes, WriteError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| WriteError::Store(StoreError::Unexpected(Box::new(e))))
}

/// The TTL of `record` written at `now`: the idle timeout, capped by what is left of the
/// absolute lifetime.
fn ttl(config: &Config, record: &Record, now: u64) -> Duration {
    let left = config
        .absolute
        .saturating_sub(Duration::from_secs(now.saturating_sub(record.created)));
    config.idle.min(left).max(Duration::from_millis(1))
}

/// Writes this request's changes onto the record under `key`, merged with concurrent
/// writers: a compare-and-set against `original`, or a set-if-absent when `original` is
/// `None` (a session created under the request's `sid`). On a conflict the record is
/// re-read and only this request's changes are applied again.
///
/// `Ok(false)` when the changes were dropped: the session was destroyed or expired
/// meanwhile (it is never resurrected), or its record became unreadable.
async fn merge<S: StateStore>(
    store: &S,
    config: &Config,
    key: &str,
    mut original: Option<Bytes>,
    mut base: Record,
    st: &State,
    now: u64,
) -> Result<bool, WriteError> {
    for attempt in 0..=config.max_retries {
        let mut next = base.clone();
        apply(&mut next.data, st.cleared, &st.delta);
        let bytes = encode(&next)?;
        let ttl = ttl(config, &next, now);
        match &original {
            Some(expected) => {
                if store
                    .compare_and_set(key, expected, bytes, ttl)
                    .await
                    .map_err(WriteError::Store)?
                {
                    return Ok(true);
                }
            }
            None => match store
                .set_if_absent(key, bytes, ttl)
                .await
                .map_err(WriteError::Store)?
            {
                None => return Ok(true),
                // Created concurrently by another request: merge into it at once. A record
                // this layer cannot read is no session to it (a load ignores it), so it is
                // replaced rather than leaving the `sid` unusable.
                Some(existing) => {
                    base = serde_json::from_slice::<Record>(&existing)
                        .ok()
                        .filter(|r| r.v == RECORD_VERSION)
                        .unwrap_or_else(|| Record {
                            v: RECORD_VERSION,
                            created: now,
                            data: Default::default(),
                        });
                    original = Some(existing);
                    continue;
                }
            },
        }
        if attempt == config.max_retries {
            break;
        }
        tokio::time::sleep(backoff(attempt)).await;
        match store.get(key).await.map_err(WriteError::Store)? {
            Some(raw) => match serde_json::from_slice::<Record>(&raw) {
                Ok(r) => {
                    base = r;
                    original = Some(raw);
                }
                Err(_) => return Ok(false),
            },
            // Destroyed or expired meanwhile: do not resurrect it.
            None => {
                tracing::debug!("session vanished during update; changes dropped");
                return Ok(false);
            }
        }
    }
    metrics::session(SessionOp::Write, SessionResult::Conflict);
    Err(WriteError::Conflict)
}

/// Writes `bytes` as a new session under a fresh random id and returns the id.
async fn create<S: StateStore>(
    store: &S,
    config: &Config,
    bytes: Bytes,
    ttl: Duration,
) -> Result<String, WriteError> {
    // 256 random bits do not collide; the retries only guard a broken generator.
    for _ in 0..3 {
        let id = new_id().map_err(WriteError::Store)?;
        let key = store_key(&config.prefix, &id);
        if store
            .set_if_absent(&key, bytes.clone(), ttl)
            .await
            .map_err(WriteError::Store)?
            .is_none()
        {
            return Ok(id);
        }
    }
    metrics::session(SessionOp::Write, SessionResult::Conflict);
    Err(WriteError::Conflict)
}

/// Writes the request's changes back. `renew`: re-send the cookie of an existing session
/// (a `Max-Age` cookie must roll with the idle expiry, or the browser drops a live session).
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
    let now = now_secs();
    let fresh = || Record {
        v: RECORD_VERSION,
        created: now,
        data: Default::default(),
    };
    // After a load, `st.id` is `Some` only when the session exists.
    match (st.id.as_deref(), st.cycle) {
        (Some(id), false) => {
            if !st.modified() {
                return Ok(if renew {
                    CookieAction::Set(id.to_owned())
                } else {
                    CookieAction::None
                });
            }
            let key = store_key(&config.prefix, id);
            let base = st.record.clone().unwrap_or_else(fresh);
            let stored = merge(store, config, &key, st.original.clone(), base, &st, now).await?;
            metrics::session(SessionOp::Write, SessionResult::Ok);
            Ok(if stored && renew {
                CookieAction::Set(id.to_owned())
            } else {
                CookieAction::None
            })
        }
        (Some(old), true) => {
            let mut record = st.record.clone().unwrap_or_else(fresh);
            apply(&mut record.data, st.cleared, &st.delta);
            let id = create(store, config, encode(&record)?, ttl(config, &record, now)).await?;
            metrics::session(SessionOp::Write, SessionResult::Ok);
            store
                .delete(&store_key(&config.prefix, old))
                .await
                .map_err(WriteError::Store)?;
            metrics::session(SessionOp::Destroy, SessionResult::Ok);
            Ok(CookieAction::Set(id))
        }
        (None, _) => {
            let mut record = fresh();
            apply(&mut record.data, st.cleared, &st.delta);
            // Nothing to keep (no write, only removals, a destroy): no empty session.
            if record.data.is_empty() {
                return Ok(action);
            }
            match &st.sid {
                // The id travels in the token, not in a cookie or header.
                Some(sid) => {
                    let key = store_key(&config.prefix, sid);
                    merge(store, config, &key, None, fresh(), &st, now).await?;
                    metrics::session(SessionOp::Write, SessionResult::Ok);
                    Ok(action)
                }
                None => {
                    let id =
                        create(store, config, encode(&record)?, ttl(config, &record, now)).await?;
                    metrics::session(SessionOp::Write, SessionResult::Ok);
                    Ok(CookieAction::Set(id))
                }
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
            loader: Arc::new(StoreLoader(store.clone())),
            key_prefix: config.prefix.clone(),
            idle: config.idle,
            absolute: config.absolute,
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
                Err(WriteError::Conflict) => Ok(for_protocol(
                    grpc,
                    ErrorBody::new(
                        "session_conflict",
                        "the session was updated concurrently too many times; retry",
                    )
                    .into_response(StatusCode::CONFLICT),
                )),
            }
        })
    }
}
