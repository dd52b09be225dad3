//! The read side: one `get_many` per request, and the verdict on its result.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::key;
use crate::store::StateStore;
use crate::RegisteredClaims;

/// The boxed store lookup a response future waits on.
pub(super) type Lookup = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Not revoked (or the store is down and fail-open is on).
    Allow,
    /// The token, its session or its subject was revoked.
    Revoked,
    /// The store could not be reached, fail closed.
    Unavailable,
    /// A misconfiguration or a corrupt store reply: 500.
    Failed,
}

/// Reads the token's, session's and subject's entries in one `get_many`.
pub(super) async fn check<St: StateStore>(
    store: St,
    claims: RegisteredClaims,
    fail_open: bool,
) -> Verdict {
    let subject_key = key::subject(&claims.sub);
    let jti_key = claims.jti.as_deref().map(|jti| key::jti(&claims.sub, jti));
    let sid_key = claims.sid.as_deref().map(|sid| key::sid(&claims.sub, sid));
    let mut keys: Vec<&str> = Vec::with_capacity(3);
    keys.push(&subject_key);
    keys.extend(jti_key.as_deref());
    keys.extend(sid_key.as_deref());

    match store.get_many(&keys).await {
        Ok(values) if values.len() == keys.len() => counted(judge(&values, claims.iat)),
        Ok(values) => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::error!(
                asked = keys.len(),
                got = values.len(),
                "RevocationLayer: the store answered get_many with the wrong number of values"
            );
            Verdict::Failed
        }
        Err(error) if error.is_unavailable() && fail_open => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "RevocationLayer: store unavailable, letting the request through unchecked (fail-open)"
            );
            Verdict::Allow
        }
        Err(error) if error.is_unavailable() => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "RevocationLayer: store unavailable, answering 503 (fail-closed)"
            );
            Verdict::Unavailable
        }
        Err(error) => {
            crate::metrics::revocation(crate::metrics::Revocation::StoreError);
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "RevocationLayer: store failed, answering 500"
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
        tracing::debug!("RevocationLayer: token or session revoked");
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
            tracing::debug!("RevocationLayer: subject revoked");
            Verdict::Revoked
        }
        (None, _) => {
            // Fail closed: a corrupt entry still means someone revoked this subject.
            tracing::error!(
                "RevocationLayer: subject revocation entry is not a Unix time; treating the token as revoked"
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
