//! The read side: one `get_many` per request, and the verdict on its result.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::key;
use crate::rejection;
use crate::response::{internal_error, ErrorBody, ResponseBody};
use crate::store::StateStore;
use crate::{RegisteredClaims, StoreFailure};

/// The revocation check of a [`JwtAuthLayer`](crate::jwt::JwtAuthLayer): the store the
/// [`Revoker`](super::Revoker) writes to, and what to do when it cannot be reached.
///
/// It has no layer of its own: give it (or just the store) to
/// [`JwtAuthLayer::revocation`](crate::jwt::JwtAuthLayer::revocation), and the JWT
/// service checks the token right after verifying it, in the same service. A revocation
/// check therefore always sees verified claims; it cannot be placed in front of the JWT
/// layer by mistake.
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
/// use tower_stateless::revocation::RevocationCheck;
/// use tower_stateless::store::MemoryStore;
/// use tower_stateless::StoreFailure;
///
/// let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
/// let policy = TokenPolicy::builder(keys).build()?;
/// let store = MemoryStore::new();
/// let layer = policy.auth_layer().revocation(
///     RevocationCheck::new(store)
///         .on_store_failure(StoreFailure::closed().retry_after(Duration::from_secs(2))),
/// );
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RevocationCheck<St> {
    store: St,
    on_store_failure: StoreFailure,
}

impl<St: StateStore> From<St> for RevocationCheck<St> {
    fn from(store: St) -> Self {
        Self::new(store)
    }
}

impl<St> RevocationCheck<St> {
    /// A check reading the revocation list in `store`, failing closed
    /// ([`StoreFailure::closed`]: `503`, `Retry-After: 1`) when the store is unavailable.
    pub fn new(store: St) -> Self {
        Self {
            store,
            on_store_failure: StoreFailure::closed(),
        }
    }

    /// What to do when the store is unavailable (default [`StoreFailure::closed`]); see
    /// [`StoreFailure`], the one setting every store-backed layer shares.
    /// [`StoreFailure::open`] accepts the token unchecked, logging a warning per request.
    ///
    /// # Security
    ///
    /// With [`StoreFailure::open`], revoked tokens are accepted while the store is down:
    /// a logged-out or stolen token works again. Opt in only where availability matters
    /// more than that.
    pub fn on_store_failure(mut self, on_store_failure: StoreFailure) -> Self {
        self.on_store_failure = on_store_failure;
        self
    }

    /// The store the revocation list is read from.
    pub fn store(&self) -> &St {
        &self.store
    }
}

impl<St: StateStore> RevocationCheck<St> {
    /// The store lookup for verified `claims`: the keys are made here, so the future
    /// owns one buffer and no copy of the claims.
    pub(crate) fn lookup(&self, claims: &RegisteredClaims) -> Lookup {
        let keys = key::all(&claims.sub, claims.jti.as_deref(), claims.sid.as_deref());
        let check = check(
            self.store.clone(),
            keys,
            claims.iat,
            self.on_store_failure.is_open(),
        );
        Box::pin(tracing::Instrument::instrument(
            check,
            crate::metrics::revocation_span(),
        ))
    }

    /// What to do when the store is unavailable.
    pub(crate) fn on_store_failure_value(&self) -> StoreFailure {
        self.on_store_failure
    }
}

/// The response for a verdict other than [`Verdict::Allow`].
pub(crate) fn reject<B>(
    verdict: Verdict,
    on_store_failure: StoreFailure,
) -> Response<ResponseBody<B>> {
    match verdict {
        Verdict::Revoked => revoked(),
        Verdict::Unavailable => on_store_failure.response(),
        Verdict::Allow | Verdict::Failed => internal_error(),
    }
}

/// `401` with the RFC 6750 challenge for a revoked token.
fn revoked<B>() -> Response<ResponseBody<B>> {
    let mut response = ErrorBody::new(rejection::INVALID_TOKEN, "the token has been revoked")
        .into_response(StatusCode::UNAUTHORIZED);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            r#"Bearer error="invalid_token", error_description="token revoked""#,
        ),
    );
    response
}

/// The boxed store lookup a response future waits on.
pub(crate) type Lookup = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not revoked (or the store is down and the check fails open).
    Allow,
    /// The token, its session or its subject was revoked.
    Revoked,
    /// The store could not be reached, fail closed.
    Unavailable,
    /// A misconfiguration or a corrupt store reply: 500.
    Failed,
}

/// Reads the token's, session's and subject's entries in one `get_many`.
async fn check<St: StateStore>(
    store: St,
    (buf, ends, count): (String, [usize; 3], usize),
    iat: Option<u64>,
    open: bool,
) -> Verdict {
    let mut keys = [""; 3];
    let mut start = 0;
    for (key, &end) in keys.iter_mut().zip(&ends[..count]) {
        *key = buf.get(start..end).unwrap_or_default();
        start = end;
    }
    let keys = &keys[..count];

    match store.get_many(keys).await {
        Ok(values) if values.len() == keys.len() => counted(judge(&values, iat)),
        Ok(values) => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::error!(
                asked = keys.len(),
                got = values.len(),
                "revocation: the store answered get_many with the wrong number of values"
            );
            Verdict::Failed
        }
        Err(error) if error.is_unavailable() && open => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "revocation: store unavailable, letting the request through unchecked (fail-open)"
            );
            Verdict::Allow
        }
        Err(error) if error.is_unavailable() => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "revocation: store unavailable, answering 503 (fail-closed)"
            );
            Verdict::Unavailable
        }
        Err(error) => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "revocation: store failed, answering 500"
            );
            Verdict::Failed
        }
    }
}

/// `values[0]` is the subject entry; any further ones are the jti and sid entries, whose
/// mere presence revokes.
fn judge(values: &[Option<Bytes>], iat: Option<u64>) -> Verdict {
    let (subject, token_and_session) = match values.split_first() {
        Some((first, rest)) => (first, rest),
        None => return Verdict::Failed,
    };
    if token_and_session.iter().any(Option::is_some) {
        tracing::debug!("revocation: token or session revoked");
        return Verdict::Revoked;
    }
    let Some(value) = subject else {
        return Verdict::Allow;
    };
    let revoked_at = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    match (revoked_at, iat) {
        (Some(revoked_at), Some(iat)) if iat > revoked_at => Verdict::Allow,
        (Some(_), _) => {
            tracing::debug!("revocation: subject revoked");
            Verdict::Revoked
        }
        (None, _) => {
            // Fail closed: a corrupt entry still means someone revoked this subject.
            tracing::error!(
                "revocation: subject revocation entry is not a Unix time; treating the token as revoked"
            );
            Verdict::Revoked
        }
    }
}

/// Counts and traces the verdict on a store reply.
fn counted(verdict: Verdict) -> Verdict {
    use crate::metrics::{revocation, Revocation};
    match verdict {
        Verdict::Allow => revocation(Revocation::Ok),
        Verdict::Revoked => revocation(Revocation::Revoked),
        Verdict::Unavailable | Verdict::Failed => revocation(Revocation::StoreError),
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn nothing_revoked() {
        assert_eq!(judge(&[None], Some(5)), Verdict::Allow);
        assert_eq!(judge(&[None, None, None], None), Verdict::Allow);
    }

    #[test]
    fn token_or_session_entry_revokes() {
        assert_eq!(judge(&[None, b("1"), None], Some(5)), Verdict::Revoked);
        assert_eq!(judge(&[None, None, b("")], Some(5)), Verdict::Revoked);
    }

    #[test]
    fn subject_same_second_rule() {
        assert_eq!(judge(&[b("100")], Some(99)), Verdict::Revoked);
        assert_eq!(judge(&[b("100")], Some(100)), Verdict::Revoked);
        assert_eq!(judge(&[b("100")], Some(101)), Verdict::Allow);
        assert_eq!(judge(&[b("100")], None), Verdict::Revoked);
    }

    #[test]
    fn corrupt_subject_entry_revokes() {
        assert_eq!(judge(&[b("soon")], Some(u64::MAX)), Verdict::Revoked);
        assert_eq!(
            judge(&[Some(Bytes::from_static(&[0xff]))], Some(1)),
            Verdict::Revoked
        );
        assert_eq!(judge(&[b("-1")], Some(1)), Verdict::Revoked);
    }

    #[test]
    fn no_values_fails() {
        assert_eq!(judge(&[], Some(1)), Verdict::Failed);
    }
}
