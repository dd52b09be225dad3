//! The `tracing` spans of the layers' decisions and of the store operations, checked with
//! a real subscriber (a small `Layer` that records every span and event): each layer's
//! span carries the decision's `result`, the store's span is a child of the deciding
//! layer's span, and no span or event field carries a token, session id, cookie,
//! idempotency key, subject or refresh token. On MemoryStore and on a real Redis.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_stateless::idempotency::{IdempotencyLayer, RequestBody};
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::rate_limit::{Quota, RateLimitLayer};
use tower_stateless::refresh::RefreshTokens;
use tower_stateless::response::ResponseBody;
use tower_stateless::revocation::Revoker;
use tower_stateless::session::{Session, SessionLayer};
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// ---- a subscriber layer that records spans and events ------------------------------

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    target: String,
    /// Index of the parent span in the recording.
    parent: Option<usize>,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Recording {
    spans: Vec<SpanRec>,
    /// Every event's fields, rendered.
    events: Vec<BTreeMap<String, String>>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Recording>>);

/// The position of a span in [`Recording::spans`], kept in the span's extensions (span ids
/// are reused once a span closes).
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Index>().map(|i| i.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut rec = self.0.lock().unwrap();
        rec.spans.push(SpanRec {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            parent,
            fields,
        });
        let index = rec.spans.len() - 1;
        drop(rec);
        span.extensions_mut().insert(Index(index));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(index) = span.extensions().get::<Index>().map(|i| i.0) else {
            return;
        };
        let mut rec = self.0.lock().unwrap();
        values.record(&mut Fields(&mut rec.spans[index].fields));
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().events.push(fields);
    }
}

impl Recorder {
    fn spans(&self) -> Vec<SpanRec> {
        self.0.lock().unwrap().spans.clone()
    }

    /// Every span and event field as `name=value`, for the secrets check.
    fn all_fields(&self) -> Vec<String> {
        let rec = self.0.lock().unwrap();
        let spans = rec.spans.iter().flat_map(|s| {
            std::iter::once(format!("span={}", s.name)).chain(
                s.fields
                    .iter()
                    .map(move |(k, v)| format!("{}.{k}={v}", s.name)),
            )
        });
        let events = rec
            .events
            .iter()
            .flat_map(|e| e.iter().map(|(k, v)| format!("event.{k}={v}")));
        spans.chain(events).collect()
    }
}

/// One test at a time: tracing caches per callsite whether anyone listens, and tests
/// installing thread-local subscribers side by side can make a callsite look unwatched.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `test` on a current-thread runtime (every poll on this thread) under a recorder.
fn traced<F: Future>(test: impl FnOnce(Recorder) -> F) -> F::Output {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test(recorder))
}

// ---- the stack under test -----------------------------------------------------------

/// What the stack answers: each layer wraps the body once.
type Nested = ResponseBody<ResponseBody<ResponseBody<ResponseBody<Full<Bytes>>>>>;

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<Bytes>, Infallible>;

const SUBJECT: &str = "alice-subject-7f3a";

fn policy() -> TokenPolicy {
    let keys = JwtKeySet::new()
        .with_hmac(
            "k",
            Algorithm::HS256,
            b"traces-test-secret-of-32-bytes-or-more!!",
        )
        .expect("key");
    TokenPolicy::builder(keys)
        .signing_key("k")
        .access_ttl(Duration::from_secs(3600))
        .build()
        .expect("policy")
}

/// JWT (with revocation) → rate limit (requests with `x-limit` only) → session →
/// idempotency → a handler that writes the session on `POST` and reads it on `GET`.
fn stack<St: StateStore>(store: St, policy: &TokenPolicy) -> Svc {
    let svc = ServiceBuilder::new()
        .layer(policy.auth_layer().revocation(store.clone()))
        .layer(
            RateLimitLayer::new(store.clone(), Quota::per_minute(2).expect("quota")).key_fn(
                |parts| {
                    parts
                        .headers
                        .get("x-limit")
                        .map(|_| "limited-route".to_owned())
                },
            ),
        )
        .layer(SessionLayer::new(store.clone()).secure(false))
        .layer(IdempotencyLayer::new(store))
        .service_fn(|req: Request<RequestBody<Full<Bytes>>>| async move {
            let Some(session) = req.extensions().get::<Session>().cloned() else {
                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("no session"))));
            };
            let answer = if req.method() == Method::POST {
                session.insert("n", 1u32).await.map(|()| "written")
            } else {
                session.get::<u32>("n").await.map(|_| "read")
            };
            let body = answer.unwrap_or("session error");
            Ok(Response::new(Full::new(Bytes::from(body))))
        });
    BoxCloneService::new(svc.and_then(|res: Response<Nested>| async move {
        let (parts, body) = res.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok(Response::from_parts(parts, bytes))
    }))
}

async fn send(svc: &Svc, method: Method, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut req = Request::builder().method(method).uri("/pay");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    svc.clone().oneshot(req).await.expect("infallible")
}

/// The layer spans named `name` whose `result` is `result` (and `op`, for sessions).
fn decisions<'a>(spans: &'a [SpanRec], name: &str, result: &str) -> Vec<(usize, &'a SpanRec)> {
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.name == name && s.fields.get("result").map(String::as_str) == Some(result)
        })
        .collect()
}

/// The store spans (`backend`) that are children of span `parent`.
fn store_children<'a>(spans: &'a [SpanRec], parent: usize, backend: &str) -> Vec<&'a str> {
    spans
        .iter()
        .filter(|s| s.name == backend && s.parent == Some(parent))
        .filter_map(|s| s.fields.get("op").map(String::as_str))
        .collect()
}

async fn every_layer_traces_its_decision<St: StateStore>(
    recorder: Recorder,
    store: St,
    backend: &str,
) {
    let policy = policy();
    let svc = stack(store.clone(), &policy);
    let issued = policy
        .token_issuer()
        .expect("issuer")
        .issue_with(SUBJECT, Some("sid-secret-5e1"), &())
        .expect("token");
    let bearer = format!("Bearer {}", issued.token);
    let key = "idem-key-secret-91c";

    // No token, then a forged one.
    let res = send(&svc, Method::GET, &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send(
        &svc,
        Method::GET,
        &[("authorization", "Bearer not.a.token")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A keyed POST that creates the session, then its replay.
    let first = send(
        &svc,
        Method::POST,
        &[("authorization", &bearer), ("idempotency-key", key)],
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK, "{:?}", first.body());
    assert_eq!(first.body().as_ref(), b"written");
    let cookie = first.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let session_id = cookie.split_once('=').unwrap().1.to_owned();
    let replay = send(
        &svc,
        Method::POST,
        &[("authorization", &bearer), ("idempotency-key", key)],
    )
    .await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    // A read of the session.
    let read = send(
        &svc,
        Method::GET,
        &[
            ("authorization", &bearer),
            (header::COOKIE.as_str(), &cookie),
        ],
    )
    .await;
    assert_eq!(read.body().as_ref(), b"read");

    // A rate-limited burst (2 a minute).
    let mut limited = false;
    for _ in 0..5 {
        let res = send(
            &svc,
            Method::GET,
            &[("authorization", &bearer), ("x-limit", "1")],
        )
        .await;
        limited |= res.status() == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the burst was never limited");

    // The token revoked.
    Revoker::new(store.clone(), &policy)
        .revoke_token(&issued.claims)
        .await
        .expect("revoke");
    let res = send(&svc, Method::GET, &[("authorization", &bearer)]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let spans = recorder.spans();
    let layer_spans: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.target.starts_with("tower_stateless::") && s.target != "tower_stateless::store"
        })
        .collect();
    for s in &layer_spans {
        assert_eq!(s.target, format!("tower_stateless::{}", s.name), "{s:?}");
        assert!(
            s.fields.contains_key("result"),
            "a decision span without result: {s:?}"
        );
    }

    // JWT: no store, so no child.
    assert_eq!(decisions(&spans, "jwt", "missing").len(), 1, "{spans:#?}");
    assert_eq!(decisions(&spans, "jwt", "invalid").len(), 1, "{spans:#?}");
    assert!(decisions(&spans, "jwt", "ok").len() >= 4, "{spans:#?}");
    for (i, _) in decisions(&spans, "jwt", "ok") {
        assert!(store_children(&spans, i, backend).is_empty());
    }

    // Revocation: one `get_many` under each check.
    let ok = decisions(&spans, "revocation", "ok");
    assert!(ok.len() >= 4, "{spans:#?}");
    for (i, _) in ok {
        assert_eq!(store_children(&spans, i, backend), ["get_many"]);
    }
    let revoked = decisions(&spans, "revocation", "revoked");
    assert_eq!(revoked.len(), 1, "{spans:#?}");
    assert_eq!(store_children(&spans, revoked[0].0, backend), ["get_many"]);

    // Rate limit: one `gcra` under each of the 5 steps, allowed, then limited.
    let allowed = decisions(&spans, "rate_limit", "allowed");
    let limited = decisions(&spans, "rate_limit", "limited");
    assert!(!allowed.is_empty() && !limited.is_empty(), "{spans:#?}");
    assert_eq!(allowed.len() + limited.len(), 5, "{spans:#?}");
    for (i, _) in allowed.into_iter().chain(limited) {
        assert_eq!(store_children(&spans, i, backend), ["gcra"]);
    }

    // Idempotency: the claim and the record under `executed`, the claim under `replayed`.
    let executed = decisions(&spans, "idempotency", "executed");
    assert_eq!(executed.len(), 1, "{spans:#?}");
    let under = store_children(&spans, executed[0].0, backend);
    assert_eq!(under.first(), Some(&"set_if_absent"), "{under:?}");
    assert!(under.contains(&"compare_and_set"), "{under:?}");
    let replayed = decisions(&spans, "idempotency", "replayed");
    assert_eq!(replayed.len(), 1, "{spans:#?}");
    assert_eq!(
        store_children(&spans, replayed[0].0, backend),
        ["set_if_absent"]
    );

    // Session: the write of the new session, then a load.
    let writes: Vec<_> = decisions(&spans, "session", "ok")
        .into_iter()
        .filter(|(_, s)| s.fields.get("op").map(String::as_str) == Some("write"))
        .collect();
    assert_eq!(writes.len(), 1, "{spans:#?}");
    assert_eq!(store_children(&spans, writes[0].0, backend), ["hash_apply"]);
    let loads: Vec<_> = decisions(&spans, "session", "ok")
        .into_iter()
        .filter(|(_, s)| s.fields.get("op").map(String::as_str) == Some("load"))
        .collect();
    assert_eq!(loads.len(), 1, "{spans:#?}");
    assert_eq!(
        store_children(&spans, loads[0].0, backend),
        ["hash_get_all_and_refresh"]
    );

    // Every store span has its operation and outcome, and a layer span as parent (the
    // revoker's own write has none).
    for s in spans.iter().filter(|s| s.name == backend) {
        assert_eq!(s.target, "tower_stateless::store");
        assert_eq!(
            s.fields.get("result").map(String::as_str),
            Some("ok"),
            "{s:?}"
        );
    }

    assert_no_secrets(
        &recorder,
        &[
            &issued.token,
            SUBJECT,
            "sid-secret-5e1",
            key,
            &cookie,
            &session_id,
            "amount",
        ],
    );
}

fn assert_no_secrets(recorder: &Recorder, secrets: &[&str]) {
    let fields = recorder.all_fields();
    assert!(!fields.is_empty());
    for secret in secrets {
        let leaked: Vec<_> = fields.iter().filter(|f| f.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret:?} in a field: {leaked:#?}");
    }
}

async fn refresh_tokens_trace_their_decisions<St: StateStore>(
    recorder: Recorder,
    store: St,
    backend: &str,
) {
    let tokens = RefreshTokens::builder(store, &policy())
        .secret([9u8; 32])
        .build()
        .expect("refresh tokens");
    let login = tokens.issue(SUBJECT).await.expect("issue");
    let next = tokens
        .rotate(&login.refresh_token.token)
        .await
        .expect("rotate");
    let reused = tokens.rotate(&login.refresh_token.token).await;
    assert!(reused.is_err());
    let malformed = tokens.rotate("not-a-refresh-token").await;
    assert!(malformed.is_err());

    let spans = recorder.spans();
    for result in ["issued", "rotated", "reused", "invalid"] {
        let found = decisions(&spans, "refresh", result);
        assert_eq!(found.len(), 1, "{result}: {spans:#?}");
    }
    let (issued, _) = decisions(&spans, "refresh", "issued")[0];
    assert_eq!(store_children(&spans, issued, backend), ["set"]);
    let (rotated, _) = decisions(&spans, "refresh", "rotated")[0];
    assert!(!store_children(&spans, rotated, backend).is_empty());
    assert_no_secrets(
        &recorder,
        &[
            &login.refresh_token.token,
            &next.refresh_token.token,
            &login.access_token.token,
            &login.refresh_token.sid,
            SUBJECT,
        ],
    );
}

/// `Session::update`: each attempt is a `session` span (`op` write); one that lost the race
/// to another request records `conflict`, the retry `ok`, each over its store operation.
async fn session_update_attempts_are_traced<St: StateStore>(
    recorder: Recorder,
    store: St,
    backend: &str,
) {
    type Plain = BoxCloneService<Request<Full<Bytes>>, Response<Bytes>, Infallible>;
    fn collect<S>(svc: S) -> Plain
    where
        S: tower::Service<
                Request<Full<Bytes>>,
                Response = Response<ResponseBody<Full<Bytes>>>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneService::new(
            svc.and_then(|res: Response<ResponseBody<Full<Bytes>>>| async move {
                let (parts, body) = res.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                Ok(Response::from_parts(parts, bytes))
            }),
        )
    }
    async fn bump(session: &Session) -> Bytes {
        match session
            .update("n", |n: Option<u32>| n.unwrap_or(0) + 1)
            .await
        {
            Ok(n) => Bytes::from(n.to_string()),
            Err(e) => Bytes::from(format!("error: {e}")),
        }
    }
    let layer = SessionLayer::new(store).secure(false);
    // Another request bumping the counter of the same session.
    let other = collect(ServiceBuilder::new().layer(layer.clone()).service_fn(
        |req: Request<Full<Bytes>>| async move {
            let session = req.extensions().get::<Session>().cloned();
            let body = match session {
                Some(session) => bump(&session).await,
                None => Bytes::new(),
            };
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        },
    ));
    // Loads the session, lets `other` bump it, then bumps it itself: its first attempt
    // finds the field changed.
    let racing =
        {
            let other = other.clone();
            collect(ServiceBuilder::new().layer(layer).service_fn(
                move |req: Request<Full<Bytes>>| {
                    let other = other.clone();
                    async move {
                        let Some(session) = req.extensions().get::<Session>().cloned() else {
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                        };
                        let before = session.get::<u32>("n").await.ok().flatten();
                        let mut forwarded = Request::new(Full::new(Bytes::new()));
                        *forwarded.headers_mut() = req.headers().clone();
                        let _ = other.oneshot(forwarded).await;
                        let after = bump(&session).await;
                        let body = format!("{before:?} {}", String::from_utf8_lossy(&after));
                        Ok(Response::new(Full::new(Bytes::from(body))))
                    }
                },
            ))
        };

    let created = other
        .clone()
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(created.body().as_ref(), b"1");
    let cookie = created.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut req = Request::new(Full::new(Bytes::new()));
    req.headers_mut()
        .insert(header::COOKIE, cookie.parse().unwrap());
    let raced = racing.oneshot(req).await.unwrap();
    assert_eq!(
        raced.body().as_ref(),
        b"Some(1) 3",
        "the retry saw the other write"
    );

    let spans = recorder.spans();
    let write = |result: &str| -> Vec<usize> {
        decisions(&spans, "session", result)
            .into_iter()
            .filter(|(_, s)| s.fields.get("op").map(String::as_str) == Some("write"))
            .map(|(i, _)| i)
            .collect()
    };
    let conflicts = write("conflict");
    assert_eq!(conflicts.len(), 1, "{spans:#?}");
    assert_eq!(
        store_children(&spans, conflicts[0], backend),
        ["hash_compare_and_set_field"]
    );
    // Created, the other request's bump, the retry.
    let written = write("ok");
    assert_eq!(written.len(), 3, "{spans:#?}");
    for i in written {
        assert_eq!(
            store_children(&spans, i, backend),
            ["hash_compare_and_set_field"]
        );
    }
    let session_id = cookie.split_once('=').unwrap().1.to_owned();
    assert_no_secrets(&recorder, &[&cookie, &session_id]);
}

/// A `#[test]` per backend for one check: on `MemoryStore`, and on a Redis the harness
/// starts.
macro_rules! on_memory_and_redis {
    ($memory:ident, $redis:ident, $check:ident) => {
        #[test]
        fn $memory() {
            traced(|recorder| $check(recorder, MemoryStore::new(), "memory"));
        }

        #[test]
        fn $redis() {
            let Some(server) = common::RedisServer::start() else {
                return;
            };
            traced(|recorder| {
                let store = RedisStore::from_url(server.url()).expect("store");
                $check(recorder, store, "redis")
            });
        }
    };
}

on_memory_and_redis!(
    memory_session_update_attempts_are_traced,
    redis_session_update_attempts_are_traced,
    session_update_attempts_are_traced
);
on_memory_and_redis!(
    memory_every_layer_traces_its_decision,
    redis_every_layer_traces_its_decision,
    every_layer_traces_its_decision
);
on_memory_and_redis!(
    memory_refresh_tokens_trace_their_decisions,
    redis_refresh_tokens_trace_their_decisions,
    refresh_tokens_trace_their_decisions
);

/// On an optional path, a request without a token makes no JWT decision: no `jwt` span
/// and no decision event (so nothing is counted). One with a token is decided, and
/// traced, as on any other path.
#[test]
fn optional_paths_trace_only_requests_with_a_token() {
    traced(|recorder| async move {
        let policy = policy();
        let svc = ServiceBuilder::new()
            .layer(policy.auth_layer().optional_path("/feed"))
            .service_fn(|_request: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
        let token = policy
            .token_issuer()
            .expect("issuer")
            .issue(SUBJECT)
            .expect("token")
            .token;
        let send = |path: &str, token: Option<&str>| {
            let mut request = Request::get(path);
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            svc.clone()
                .oneshot(request.body(Full::new(Bytes::new())).expect("request"))
        };
        let jwt_events = |recorder: &Recorder| {
            let rec = recorder.0.lock().unwrap();
            rec.events
                .iter()
                .filter(|e| e.get("message").is_some_and(|m| m.contains("jwt decision")))
                .filter_map(|e| e.get("result").cloned())
                .collect::<Vec<_>>()
        };
        let jwt_spans = |recorder: &Recorder| {
            recorder
                .spans()
                .iter()
                .filter(|s| s.name == "jwt")
                .map(|s| s.fields.get("result").cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        };

        let res = send("/feed", None).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(jwt_spans(&recorder), Vec::<String>::new());
        assert_eq!(jwt_events(&recorder), Vec::<String>::new());

        let res = send("/feed", Some(&token)).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        let res = send("/feed", Some("not.a.token"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = send("/other", None).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(jwt_spans(&recorder), ["ok", "invalid", "missing"]);
        assert_eq!(jwt_events(&recorder), ["ok", "invalid", "missing"]);
    });
}

/// A store failure is traced as `store_error` on the layer and `unavailable` on the store
/// span below it.
#[test]
fn a_store_outage_is_traced_as_store_error() {
    traced(|recorder| async move {
        // Nothing listens on port 1.
        let store = RedisStore::builder()
            .url("redis://127.0.0.1:1")
            .timeout(Duration::from_millis(500))
            .build()
            .expect("store");
        let policy = policy();
        let svc = stack(store, &policy);
        let issued = policy
            .token_issuer()
            .expect("issuer")
            .issue(SUBJECT)
            .expect("token");
        let bearer = format!("Bearer {}", issued.token);
        let res = send(&svc, Method::GET, &[("authorization", &bearer)]).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let spans = recorder.spans();
        let failed = decisions(&spans, "revocation", "store_error");
        assert_eq!(failed.len(), 1, "{spans:#?}");
        let below: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "redis" && s.parent == Some(failed[0].0))
            .collect();
        assert_eq!(below.len(), 1, "{spans:#?}");
        assert_eq!(below[0].fields["result"], "unavailable");
        assert_no_secrets(&recorder, &[&issued.token, SUBJECT]);
    });
}
