//! The life of a request that carries a key: buffer, claim, run, record, or replay.

use std::sync::Arc;

use bytes::Bytes;
use http::{request, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::OwnedSemaphorePermit;
use tower_service::Service;

use super::body::RequestBody;
use super::claim::{Claim, Claimed};
use super::config::Config;
use super::key;
use super::record::{Completed, Record, RecordWriter};
use super::scope::Caller;
use super::service::{internal_error, reject, store_failed, too_large};
use crate::metrics::{idempotency, Idempotency};
use crate::rejection;
use crate::response::{for_protocol, is_grpc, ResponseBody};
use crate::store::{BoxError, StateStore};

/// The header a replayed response carries.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// One keyed request, ready to run.
pub(crate) struct Keyed<S> {
    pub(crate) store: S,
    pub(crate) config: Arc<Config>,
    pub(crate) caller: Caller,
    pub(crate) client_key: String,
    /// This request's place among the layer's `max_in_flight`, held to the end.
    pub(crate) permit: OwnedSemaphorePermit,
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

/// The buffered response, or why it could not be buffered.
enum Buffered<B> {
    /// The whole body, written into the record as it came.
    Complete(RecordWriter, Option<HeaderMap>),
    TooLarge(Bytes, std::pin::Pin<Box<B>>),
    Failed,
}

async fn buffer<B: Body<Data = Bytes>>(body: B, limit: usize) -> Buffered<B> {
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
    let mut body = Box::pin(body);
    let mut record = RecordWriter::new(hint.min(limit));
    loop {
        match body.frame().await {
            None => return Buffered::Complete(record, None),
            Some(Err(_)) => return Buffered::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    record.push_body(&chunk);
                    if record.body_len() > limit {
                        return Buffered::TooLarge(record.into_body(), body);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Buffered::Complete(record, Some(trailers));
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

/// The answer to a request that found its key taken.
enum Taken<B> {
    /// The stored response, as the handler gave it: never converted.
    Replay(Response<ResponseBody<B>>),
    /// The layer's own answer (`409`, `422`, `500`), in the request's protocol.
    Refused(Response<ResponseBody<B>>),
}

/// What a request found under its key instead of claiming it.
fn answer_taken<B>(existing: &Bytes, fingerprint: &[u8; 32], store_key: &str) -> Taken<B> {
    let answer = match Record::decode(existing) {
        Err(error) => {
            idempotency(Idempotency::StoreError);
            tracing::error!(%error, key = %store_key, "corrupt idempotency record");
            reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                rejection::IDEMPOTENCY_STORE_ERROR,
                "the idempotency record could not be read",
            )
        }
        Ok(record) if record.fingerprint() != fingerprint => {
            idempotency(Idempotency::Mismatch);
            reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                rejection::IDEMPOTENCY_KEY_REUSED,
                "this idempotency key was used for a different request",
            )
        }
        Ok(Record::InProgress { .. }) => {
            idempotency(Idempotency::InProgress);
            let mut res = reject(
                StatusCode::CONFLICT,
                rejection::IDEMPOTENCY_REQUEST_IN_PROGRESS,
                "a request with this idempotency key is still running; retry later",
            );
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
            res
        }
        Ok(Record::Completed(done)) => {
            idempotency(Idempotency::Replayed);
            return Taken::Replay(replay(done));
        }
    };
    Taken::Refused(answer)
}

/// The whole life of a request that carries a key: buffer, claim, run, record.
pub(crate) async fn run<S, I, ReqBody, ResBody>(
    mut inner: I,
    keyed: Keyed<S>,
    parts: request::Parts,
    body: ReqBody,
) -> Result<Response<ResponseBody<ResBody>>, I::Error>
where
    S: StateStore,
    I: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    let Keyed {
        store,
        config,
        caller,
        client_key,
        permit: _permit,
    } = keyed;
    let grpc = is_grpc(&parts.headers);
    let own = |response| Ok(for_protocol(grpc, response));
    let body = match Limited::new(body, config.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return own(too_large()),
        Err(_) => {
            return own(reject(
                StatusCode::BAD_REQUEST,
                rejection::INVALID_BODY,
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
        &caller,
        &parts.method,
        parts.uri.path(),
        &client_key,
    );
    let owner = match crate::id::random_id::<16>() {
        Ok(owner) => owner,
        Err(error) => {
            tracing::error!(%error, "no randomness for an idempotency lock token");
            return own(internal_error());
        }
    };
    let token = Record::InProgress { owner, fingerprint }.encode();

    let claim = match Claim::take(store, store_key.clone(), token, config.lock_ttl).await {
        Err(error) if error.is_unavailable() && config.on_store_failure.is_open() => {
            idempotency(Idempotency::StoreError);
            tracing::warn!(
                %error,
                "idempotency store unavailable; running the request unprotected (StoreFailure::open)"
            );
            let req = Request::from_parts(parts, RequestBody::buffered(body));
            return inner.call(req).await.map(crate::response::wrap);
        }
        Err(error) => {
            idempotency(Idempotency::StoreError);
            return own(store_failed(&error, config.on_store_failure));
        }
        Ok(Claimed::Taken(existing)) => {
            return match answer_taken(&existing, &fingerprint, &store_key) {
                Taken::Replay(replayed) => Ok(replayed),
                Taken::Refused(refused) => own(refused),
            };
        }
        Ok(Claimed::Won(claim)) => claim,
    };

    // The lease is renewed while the handler runs and while its body is buffered.
    let outcome = claim
        .hold_while(async {
            let req = Request::from_parts(parts, RequestBody::buffered(body));
            let response = inner.call(req).await?;
            let final_answer = match grpc_status(response.headers()) {
                Some(code) => grpc_storable(code, &config),
                None => storable(response.status(), &config),
            };
            if !final_answer {
                return Ok(Outcome::Transient(response));
            }
            let (parts, body) = response.into_parts();
            let buffered = buffer(body, config.max_response_body).await;
            Ok::<_, I::Error>(Outcome::Final(parts, buffered))
        })
        .await;

    let (parts, buffered) = match outcome {
        Err(error) => {
            claim.release().await;
            idempotency(Idempotency::Released);
            return Err(error);
        }
        Ok(Outcome::Transient(response)) => {
            claim.release().await;
            idempotency(Idempotency::Released);
            return Ok(crate::response::wrap(response));
        }
        Ok(Outcome::Final(parts, buffered)) => (parts, buffered),
    };
    match buffered {
        Buffered::Complete(record, trailers) => {
            let grpc_failed = trailers
                .as_ref()
                .and_then(grpc_status)
                .is_some_and(|code| !grpc_storable(code, &config));
            if grpc_failed {
                claim.release().await;
                idempotency(Idempotency::Released);
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::full_with_trailers(record.into_body(), trailers),
                ));
            }
            let headers: HeaderMap = parts
                .headers
                .iter()
                .filter(|(name, _)| config.replays(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            let (record, data) =
                record.finish(&fingerprint, parts.status, &headers, trailers.as_ref());
            claim.complete(record, config.retention).await;
            idempotency(Idempotency::Executed);
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
            idempotency(Idempotency::Released);
            Ok(Response::from_parts(
                parts,
                ResponseBody::prefixed(prefix, rest),
            ))
        }
        Buffered::Failed => {
            claim.release().await;
            idempotency(Idempotency::Released);
            own(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                rejection::RESPONSE_BODY_FAILED,
                "the response body failed while it was being produced",
            ))
        }
    }
}

/// What the handler answered.
enum Outcome<B> {
    /// An answer that is not the result (a `5xx`, a `409`): the key is released.
    Transient(Response<B>),
    /// The result, buffered to be recorded.
    Final(http::response::Parts, Buffered<B>),
}
