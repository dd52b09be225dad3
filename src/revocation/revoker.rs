use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;

use super::key;
use crate::jwt::TokenPolicy;
use crate::rejection;
use crate::store::{StateStore, StoreError};
use crate::RegisteredClaims;

/// The longest TTL the store contract accepts.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Why a revocation could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// [`Revoker::revoke_token`] was given claims without a `jti`: such a token cannot be
    /// revoked on its own; revoke its session or its subject instead.
    ///
    /// Also [`Revoker::revoke_jti`] given an empty `jti`: the JWT layer refuses a token
    /// with an empty `jti`, so no token could be named by it.
    #[error("the token has no `jti` and cannot be revoked on its own")]
    MissingJti,
    /// A revocation was given an empty or whitespace-only subject (`sub`). The JWT layer
    /// refuses tokens with such a subject, so the revocation would name no token: a
    /// caller passing one has lost the subject on the way (log it, answer `400`).
    #[error("the subject (sub) is empty or only whitespace: no token to revoke")]
    MissingSubject,
    /// [`Revoker::revoke_session`] (or a logout of a session) was given an empty session
    /// id: nothing would be revoked. A token without a `sid` claim belongs to no session;
    /// revoke the token itself ([`Revoker::revoke_token`]) or its subject instead.
    #[error("the session id is empty: no session to revoke")]
    MissingSid,
    /// The store failed; nothing may have been written, so the revocation must be
    /// retried (tell the caller that logout failed rather than pretend it worked).
    #[error("could not write the revocation to the state store")]
    Store(#[from] StoreError),
}

impl RevokeError {
    /// `true` when the store could not be reached in time: the revocation was not
    /// written and may be retried later (`503`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_unavailable(),
            Self::MissingJti | Self::MissingSid | Self::MissingSubject => false,
        }
    }

    /// The HTTP status for a logout endpoint's answer: `400` for
    /// [`MissingJti`](Self::MissingJti), [`MissingSid`](Self::MissingSid) and
    /// [`MissingSubject`](Self::MissingSubject), `503` when
    /// the store is unavailable, else `500`.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingJti | Self::MissingSid | Self::MissingSubject => StatusCode::BAD_REQUEST,
            Self::Store(error) => error.status(),
        }
    }

    /// The error code of the JSON body (see [`rejection`](crate::rejection)):
    /// `invalid_request`, `store_unavailable` or `store_error`.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::MissingJti | Self::MissingSid | Self::MissingSubject => {
                rejection::INVALID_REQUEST
            }
            Self::Store(error) => error.error_code(),
        }
    }

    /// What the client is told; also the message of a [`RefreshError`](crate::refresh::RefreshError)
    /// or [`DevicesError`](crate::session::DevicesError) wrapping this refusal.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            Self::MissingJti => "the token has no `jti` and cannot be revoked on its own",
            Self::MissingSid => "the token names no session (no `sid` claim)",
            Self::MissingSubject => "the token names no subject (empty `sub` claim)",
            Self::Store(error) if error.is_unavailable() => {
                crate::response::STORE_UNAVAILABLE_MESSAGE
            }
            Self::Store(_) => "the revocation could not be written",
        }
    }
}

crate::response::impl_into_response!(RevokeError);

/// The write side of the revocation list: what logout handlers and admin tools call.
///
/// Every entry expires on its own, so the list never grows without bound:
///
/// | call | key expires after |
/// |---|---|
/// | [`revoke_token`](Self::revoke_token) / [`revoke_jti`](Self::revoke_jti) | when the JWT layer would refuse the token anyway: `exp` + leeway + 1 s |
/// | [`revoke_session`](Self::revoke_session) | the TTL you give, but never before every token of the session accepted up to now is refused anyway (longest token lifetime + 2 × leeway + 1 s) |
/// | [`revoke_subject`](Self::revoke_subject) | longest token lifetime + 2 × leeway + 1 s |
///
/// The longest token lifetime ([`TokenPolicy::max_token_lifetime`], default 24 hours) and
/// the leeway come from the [`TokenPolicy`] the JWT layer verifies under, and the layer
/// refuses tokens that would live longer, so a revoked token stays refused for as long as
/// the layer would accept it. (Twice the leeway: a token's `exp` may lie the lifetime plus
/// the leeway ahead, and it is accepted until `exp` plus the leeway; the extra second: the
/// verifier compares `exp` with the current whole second.)
///
/// Share the store with the revocation check
/// ([`JwtAuthLayer::revocation`](crate::jwt::JwtAuthLayer::revocation)) of every instance;
/// a revocation is visible to the next request on any of them.
#[derive(Debug, Clone)]
pub struct Revoker<S> {
    store: S,
    policy: TokenPolicy,
}

impl<S: StateStore> Revoker<S> {
    /// A revoker writing to `store`, keeping entries as long as tokens of `policy` can be
    /// accepted.
    ///
    /// The policy's longest token lifetime bounds how long any accepted token still has to
    /// live: a subject revocation is kept that long (plus twice the leeway), after which every
    /// token it revoked has expired anyway.
    pub fn new(store: S, policy: &TokenPolicy) -> Self {
        Self {
            store,
            policy: policy.clone(),
        }
    }

    /// The store this revoker writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Revokes one token (logout on this device), by the `sub`, `jti` and `exp` of its
    /// claims. See [`revoke_jti`](Self::revoke_jti).
    ///
    /// # Errors
    ///
    /// [`RevokeError::MissingJti`] when the claims carry no `jti` or an empty one;
    /// [`RevokeError::MissingSubject`] when their `sub` is empty or only whitespace;
    /// [`RevokeError::Store`] when the store fails. Nothing is written on an error.
    pub async fn revoke_token(&self, claims: &RegisteredClaims) -> Result<(), RevokeError> {
        let jti = claims.jti.as_deref().ok_or(RevokeError::MissingJti)?;
        self.revoke_jti(&claims.sub, jti, claims.exp).await
    }

    /// Revokes the token `jti` of `sub` that expires at `exp` (Unix seconds).
    ///
    /// The entry lives until the JWT layer refuses the token by itself (`exp` plus the
    /// policy's leeway, plus one second). A token already past that is refused anyway:
    /// then nothing is written and this returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`RevokeError::MissingJti`] for an empty `jti`, [`RevokeError::MissingSubject`]
    /// for an empty or whitespace-only `sub` (nothing is written);
    /// [`RevokeError::Store`] when the store fails.
    pub async fn revoke_jti(&self, sub: &str, jti: &str, exp: u64) -> Result<(), RevokeError> {
        if jti.is_empty() {
            return Err(RevokeError::MissingJti);
        }
        check_subject(sub)?;
        let expires = self.policy.refused_from(exp);
        let Some(ttl) = expires.checked_sub(since_epoch()) else {
            return Ok(());
        };
        if ttl < Duration::from_millis(1) {
            return Ok(());
        }
        // The store refuses TTLs beyond a century; a token claiming to live longer is
        // still revoked, for a century.
        let ttl = ttl.min(MAX_TTL);
        let value = Bytes::from_static(b"1");
        self.store.set(&key::jti(sub, jti), value, ttl).await?;
        Ok(())
    }

    /// Revokes the session `sid` of `sub`: every token carrying that `sid` claim, issued
    /// before or after this call, is refused for `ttl`, and in any case until every token
    /// of the session the JWT layer accepts now would be refused anyway (the policy's
    /// longest token lifetime plus twice the leeway plus one second). A longer `ttl` (the
    /// session's remaining life) also refuses tokens of the session minted later;
    /// `Duration::ZERO` means just that minimum.
    ///
    /// # Errors
    ///
    /// [`RevokeError::MissingSid`] for an empty `sid`, [`RevokeError::MissingSubject`]
    /// for an empty or whitespace-only `sub` (nothing is written);
    /// [`RevokeError::Store`] when the store fails.
    pub async fn revoke_session(
        &self,
        sub: &str,
        sid: &str,
        ttl: Duration,
    ) -> Result<(), RevokeError> {
        if sid.is_empty() {
            return Err(RevokeError::MissingSid);
        }
        check_subject(sub)?;
        let ttl = ttl.max(self.policy.acceptance_window()).min(MAX_TTL);
        let value = Bytes::from_static(b"1");
        self.store.set(&key::sid(sub, sid), value, ttl).await?;
        Ok(())
    }

    /// Revokes every token of `sub` issued up to now ("log out everywhere") and returns
    /// the revocation time `t` in Unix seconds.
    ///
    /// A token of `sub` is refused when its `iat <= t`, or when it has no `iat` at all.
    /// Since `iat` has whole-second precision, a token issued in the same second as the
    /// revocation is refused too (it cannot be told apart from one issued just before);
    /// a token issued from the next second on passes. So this call returns only once the
    /// second `t` has passed on this instance's clock (it waits at most a second): a token
    /// minted after it returns (a login right after "log out everywhere") is accepted, on
    /// every instance whose clock agrees (keep them in sync, NTP).
    ///
    /// Calling it again moves `t` to the new time, never back: when another instance
    /// (with a clock ahead of this one) already wrote a later `t`, that one stays and is
    /// returned. The entry is kept for the policy's longest token lifetime plus twice the
    /// leeway plus one second. One store round trip for a first revocation, two or three
    /// when there is one already.
    ///
    /// # Errors
    ///
    /// [`RevokeError::MissingSubject`] for an empty or whitespace-only `sub` (nothing is
    /// written); [`RevokeError::Store`] when the store fails.
    pub async fn revoke_subject(&self, sub: &str) -> Result<u64, RevokeError> {
        check_subject(sub)?;
        let now = since_epoch().as_secs();
        let ttl = self.policy.acceptance_window().min(MAX_TTL);
        let cutoff = raise_cutoff(&self.store, &key::subject(sub), now, ttl).await?;
        // Tokens issued in the cutoff's second are refused: let it pass before returning,
        // so that nothing minted after this call is born revoked. At most a second, also
        // when another instance's clock wrote a later cutoff.
        let wait = Duration::from_secs(cutoff.saturating_add(1))
            .saturating_sub(since_epoch())
            .min(Duration::from_secs(1));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(cutoff)
    }
}

/// Refuses a subject the JWT layer refuses in tokens (empty or whitespace-only): every
/// revocation, and every logout of `RefreshTokens` and `Devices`, calls it before writing.
pub(crate) fn check_subject(sub: &str) -> Result<(), RevokeError> {
    if crate::claims::blank_subject(sub) {
        return Err(RevokeError::MissingSubject);
    }
    Ok(())
}

/// Writes the cutoff `now` under `key`, unless a later one is there, and returns the
/// cutoff that holds. The cutoff only moves forward: an instance whose clock lags must not
/// shorten a "log out everywhere" another instance wrote. One round trip when there is
/// none; a value that is not a number is replaced.
pub(crate) async fn raise_cutoff<S: StateStore>(
    store: &S,
    key: &str,
    now: u64,
    ttl: Duration,
) -> Result<u64, StoreError> {
    let value = Bytes::from(now.to_string());
    let mut seen = store.set_if_absent(key, value.clone(), ttl).await?;
    for _ in 0..CUTOFF_ATTEMPTS {
        let Some(current) = seen else {
            return Ok(now);
        };
        let later = std::str::from_utf8(&current)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .filter(|t| *t >= now);
        if let Some(later) = later {
            return Ok(later);
        }
        if store
            .compare_and_set(key, &current, value.clone(), ttl)
            .await?
        {
            return Ok(now);
        }
        seen = store.set_if_absent(key, value.clone(), ttl).await?;
    }
    Err(StoreError::Unexpected(
        "a cutoff kept changing under concurrent writers".into(),
    ))
}

/// Compare-and-set attempts to move a subject's cutoff forward against concurrent writers.
const CUTOFF_ATTEMPTS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn the_subject_cutoff_never_moves_backwards() {
        let store = MemoryStore::new();
        let keys = crate::jwt::JwtKeySet::new()
            .with_hmac("k", crate::jwt::Algorithm::HS256, &[7; 32])
            .unwrap();
        let policy = TokenPolicy::builder(keys).build().unwrap();
        let revoker = Revoker::new(store.clone(), &policy);
        // Another instance, its clock 100 s ahead, already revoked alice.
        let ahead = since_epoch().as_secs() + 100;
        let key = key::subject("alice");
        store
            .set(
                &key,
                Bytes::from(ahead.to_string()),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(revoker.revoke_subject("alice").await.unwrap(), ahead);
        assert_eq!(
            store.get(&key).await.unwrap(),
            Some(Bytes::from(ahead.to_string()))
        );
        // An older cutoff, or garbage, is moved forward to now.
        for old in ["5", "not a time"] {
            store
                .set(&key, Bytes::from(old), Duration::from_secs(60))
                .await
                .unwrap();
            let t = revoker.revoke_subject("alice").await.unwrap();
            assert!(t >= since_epoch().as_secs() - 1);
            assert_eq!(
                store.get(&key).await.unwrap(),
                Some(Bytes::from(t.to_string()))
            );
        }
    }
}
