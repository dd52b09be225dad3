use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::error::{InvalidGrant, RefreshError};
use super::key::{self, TagKey, MIN_SECRET_LEN};
use super::record::Record;
use super::token::{self, RefreshToken, TokenPair};
use crate::id::random_id;
use crate::jwt::{IssueError, TokenIssuer, TokenPolicy};
use crate::revocation::{check_subject, raise_cutoff};
use crate::revocation::{RevokeError, Revoker};
use crate::store::StateStore;
use crate::ConfigError;

/// The longest TTL the store contract accepts.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Unix milliseconds; 0 for a clock before 1970 (every token then reads as expired).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A store TTL until `deadline` (Unix ms), at least one millisecond.
fn ttl_until(deadline: u64, now: u64) -> Duration {
    Duration::from_millis(deadline.saturating_sub(now).max(1))
}

/// Issues, rotates and revokes refresh tokens over a [`StateStore`], and mints the access
/// tokens that go with them. See the [module docs](super) for the protocol and an example.
///
/// Built with [`RefreshTokens::builder`] from the [`TokenPolicy`] the JWT layer verifies
/// under: the access tokens it mints, and the session revocations it writes, follow that
/// policy's access TTL and leeway, so they cannot disagree with the layer.
///
/// Cheap to clone; share one per application (every instance builds its own over the
/// same store, with the same policy and secret).
#[derive(Debug, Clone)]
pub struct RefreshTokens<S> {
    store: S,
    issuer: TokenIssuer,
    revoker: Revoker<S>,
    tags: TagKey,
    refresh_ttl: Duration,
    family_lifetime: Duration,
    grace: Duration,
    access_claims: serde_json::Map<String, serde_json::Value>,
}

/// A token about to be handed out: what the client gets, and what the store gets.
struct Prepared {
    pair: TokenPair,
    key: String,
    hash: String,
    record: Record,
    bytes: Bytes,
}

/// Builds [`RefreshTokens`]: [`RefreshTokens::builder`].
#[must_use]
pub struct RefreshTokensBuilder<S> {
    store: S,
    policy: TokenPolicy,
    secret: Option<Vec<u8>>,
    refresh_ttl: Duration,
    family_lifetime: Duration,
    grace: Duration,
    access_claims: serde_json::Map<String, serde_json::Value>,
}

impl<S: fmt::Debug> fmt::Debug for RefreshTokensBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokensBuilder")
            .field("store", &self.store)
            .field("policy", &self.policy)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("refresh_ttl", &self.refresh_ttl)
            .field("family_lifetime", &self.family_lifetime)
            .field("grace", &self.grace)
            .field("access_claims", &self.access_claims)
            .finish()
    }
}

impl<S: StateStore> RefreshTokensBuilder<S> {
    /// Claims added to every access token minted at login and at each rotation, e.g.
    /// `{"scope": "orders:write payments:write"}` (default: none). They are the same for
    /// every token; the registered claims (`sub`, `iat`, `exp`, `jti`, `sid`, `iss`,
    /// `aud`) cannot be set here.
    pub fn access_claims(mut self, claims: serde_json::Map<String, serde_json::Value>) -> Self {
        self.access_claims = claims;
        self
    }

    /// The server secret (at least 32 bytes; required) that keys the subject tag of the
    /// store keys and masks it in every token, so that a refresh token reveals nothing
    /// about its subject or its other tokens. Every instance needs the same secret;
    /// changing it makes the refresh tokens handed out so far unknown (their users log in
    /// again). Use a secret of its own, not the JWT signing key.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// How long one refresh token lives unused (default 14 days; at least 1 ms, at most
    /// 100 years). Each rotation hands out a token with a fresh TTL, never beyond the
    /// family lifetime.
    pub fn refresh_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_ttl = ttl;
        self
    }

    /// The absolute lifetime of a family, counted from the login (default 30 days; at
    /// least 1 ms, at most 100 years). After it, rotation fails however recently the token
    /// was rotated, and the user must log in again.
    pub fn family_lifetime(mut self, lifetime: Duration) -> Self {
        self.family_lifetime = lifetime;
        self
    }

    /// How long after a token was exchanged the same token is still accepted once more
    /// (default zero: never).
    ///
    /// A client that sent its refresh request but lost the response holds a token that
    /// is already consumed; with grace zero its retry counts as reuse and ends the
    /// family. Within the grace window, the retry is answered with a new pair instead, and
    /// the token that replaced the presented one (which the client never received) is
    /// consumed in its place, so a family never has more than one usable token. This
    /// works once per token, and only while its replacement is unused: if the
    /// replacement was already exchanged, presenting the old token is reuse.
    ///
    /// The same holds when the *server* cannot tell whether a rotation happened: a
    /// rotation answered with an error for which
    /// [`StoreError::may_have_applied`](crate::store::StoreError::may_have_applied) is
    /// true (a connection dropped after the command was sent, or
    /// [`StoreError::NotReplicated`](crate::store::StoreError::NotReplicated) with
    /// [`replica_acks`](crate::store::RedisStoreBuilder::replica_acks)) may have consumed
    /// the token; the client's retry is then reuse unless it falls within the grace
    /// window. With `replica_acks`, or on a network that drops connections, set a grace
    /// of a few seconds.
    ///
    /// # Security
    ///
    /// Within the window, a thief replaying a just-rotated token gets a pair too; the
    /// legitimate client's next refresh then counts as reuse (outside the window) and ends
    /// the family, so the theft is still caught, later. Keep it to seconds.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The manager, or the first setting that cannot work.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `secret` (missing or shorter than 32 bytes),
    /// `signing_key` (the policy cannot mint access tokens), `refresh_ttl`,
    /// `family_lifetime` or `grace_period` (below 1 ms where required, or beyond the
    /// store's 100 years).
    pub fn build(self) -> Result<RefreshTokens<S>, ConfigError> {
        let secret = self.secret.as_deref().ok_or_else(|| {
            ConfigError::new(
                "secret",
                "required: the server secret that keys refresh tokens (32 bytes or more)",
            )
        })?;
        let tags = TagKey::new(secret).ok_or_else(|| {
            ConfigError::new("secret", format!("at least {MIN_SECRET_LEN} bytes"))
        })?;
        let issuer = self.policy.token_issuer()?;
        // A trial mint refuses reserved claims now rather than at the first login.
        if let Err(error) = issuer.issue_with("config-check", None, &self.access_claims) {
            return Err(ConfigError::new("access_claims", error.to_string()));
        }
        for (setting, value) in [
            ("refresh_ttl", self.refresh_ttl),
            ("family_lifetime", self.family_lifetime),
        ] {
            if value < Duration::from_millis(1) {
                return Err(ConfigError::new(setting, "at least one millisecond"));
            }
            if value > MAX_TTL {
                return Err(ConfigError::new(
                    setting,
                    "at most 100 years, the longest TTL a store keeps",
                ));
            }
        }
        if self.grace > MAX_TTL {
            return Err(ConfigError::new("grace_period", "at most 100 years"));
        }
        Ok(RefreshTokens {
            revoker: Revoker::new(self.store.clone(), &self.policy),
            store: self.store,
            issuer,
            tags,
            refresh_ttl: self.refresh_ttl,
            family_lifetime: self.family_lifetime,
            grace: self.grace,
            access_claims: self.access_claims,
        })
    }
}

impl<S: StateStore> RefreshTokens<S> {
    /// A builder keeping refresh tokens in `store` and minting access tokens under
    /// `policy` (its signing key, access TTL, issuer and audience), with the defaults:
    /// refresh tokens live 14 days, a family at most 30 days, no grace window. The
    /// [`secret`](RefreshTokensBuilder::secret) is required.
    ///
    /// Reuse detection and [`logout`](Self::logout) revoke sessions through a
    /// [`Revoker`] over the same `store` and `policy`.
    pub fn builder(store: S, policy: &TokenPolicy) -> RefreshTokensBuilder<S> {
        RefreshTokensBuilder {
            store,
            policy: policy.clone(),
            secret: None,
            refresh_ttl: 14 * DAY,
            family_lifetime: 30 * DAY,
            grace: Duration::ZERO,
            access_claims: serde_json::Map::new(),
        }
    }

    /// The store refresh tokens are kept in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The [`Revoker`] used to revoke sessions (on reuse and [`logout`](Self::logout))
    /// and subjects ([`logout_everywhere`](Self::logout_everywhere)).
    pub fn revoker(&self) -> &Revoker<S> {
        &self.revoker
    }

    /// Login: starts a new token family for `sub` in a new session (a random 256-bit
    /// `sid`, returned in the pair, that keys a session of `SessionLayer::id_from_sid_claim`)
    /// and returns its first pair.
    ///
    /// # Errors
    ///
    /// [`RefreshError::Issue`] with [`IssueError::EmptySubject`] for a `sub` that is
    /// empty or only whitespace, before anything is written (every such login would share one subject: one
    /// revocation, one rate limit, one idempotency scope);
    /// [`RefreshError::Store`] when the store fails (then no token is handed out),
    /// [`RefreshError::Issue`] or [`RefreshError::Random`] when minting fails.
    pub async fn issue(&self, sub: &str) -> Result<TokenPair, RefreshError> {
        let sid = crate::id::session_id().map_err(RefreshError::Random)?;
        self.issue_for_session(sub, &sid).await
    }

    /// Login into an existing session: starts a new token family for `sub` bound to
    /// `sid` (e.g. the id of a server-side session) and returns its first pair.
    ///
    /// Use a fresh `sid` per login: once a session is logged out
    /// ([`logout`](Self::logout)) or revoked by reuse detection, new families with the
    /// same `sid` are refused (for the family lifetime) and their access tokens are
    /// refused by the JWT layer's revocation check (for the longest token lifetime).
    ///
    /// # Errors
    ///
    /// As [`issue`](Self::issue); [`RefreshError::Issue`] with
    /// [`IssueError::EmptySessionId`] for an empty `sid`, before anything is written.
    #[tracing::instrument(
        name = "refresh",
        target = "tower_stateless::refresh",
        level = "debug",
        skip_all,
        fields(result = tracing::field::Empty)
    )]
    pub async fn issue_for_session(&self, sub: &str, sid: &str) -> Result<TokenPair, RefreshError> {
        // Before anything is drawn or written (the issuer would refuse them later).
        if crate::claims::blank_subject(sub) {
            return Err(RefreshError::Issue(IssueError::EmptySubject));
        }
        if sid.is_empty() {
            return Err(RefreshError::Issue(IssueError::EmptySessionId));
        }
        let now = now_ms();
        let family = random_id::<16>().map_err(RefreshError::Random)?;
        let fexp = now.saturating_add(millis(self.family_lifetime));
        let record = Record {
            sub: sub.to_owned(),
            sid: sid.to_owned(),
            fam: family,
            gen: 0,
            created: now,
            fexp,
            exp: fexp,
            consumed: None,
        };
        let prepared = self.prepare(&record, 0, now)?;
        self.store
            .set(
                &prepared.key,
                prepared.bytes,
                ttl_until(prepared.record.exp, now),
            )
            .await?;
        crate::metrics::refresh(crate::metrics::Refresh::Issued);
        Ok(prepared.pair)
    }

    /// Refresh: exchanges `refresh_token` for a new pair of the same family.
    ///
    /// The presented token is consumed by one compare-and-set on its record: of any
    /// number of concurrent exchanges of one token, at most one gets a pair. Presenting a
    /// consumed token (outside the [grace window](RefreshTokensBuilder::grace_period)) is reuse: the
    /// family is revoked, the session's access tokens are revoked through the
    /// [`Revoker`], and the answer is `invalid_grant` ([`InvalidGrant::Reused`]). A
    /// concurrent duplicate that loses the race counts as reuse too.
    ///
    /// # Errors
    ///
    /// [`RefreshError::InvalidGrant`] for a malformed, unknown, expired, revoked or
    /// reused token; [`RefreshError::Store`] when the store fails (no token was issued;
    /// if the store failed after the token was consumed, the client's retry counts as
    /// reuse unless a grace window covers it); [`RefreshError::Corrupt`] for a record
    /// that does not decode.
    #[tracing::instrument(
        name = "refresh",
        target = "tower_stateless::refresh",
        level = "debug",
        skip_all,
        fields(result = tracing::field::Empty)
    )]
    pub async fn rotate(&self, refresh_token: &str) -> Result<TokenPair, RefreshError> {
        let (tag, hash) = token::parse(&self.tags, refresh_token).ok_or(InvalidGrant::Malformed)?;
        let tag = tag.as_str();
        let key = key::token(tag, &hash);
        // A lost compare-and-set means a concurrent exchange consumed the token: the
        // second pass sees it consumed. The bound only guards against a broken store.
        for _ in 0..2 {
            let Some(bytes) = self.store.get(&key).await? else {
                return Err(InvalidGrant::Unknown.into());
            };
            let record = Record::decode(&bytes).map_err(RefreshError::Corrupt)?;
            if self.tags.subject_tag(&record.sub) != tag {
                return Err(InvalidGrant::Unknown.into());
            }
            self.check_family(tag, &record).await?;
            let now = now_ms();
            if now >= record.exp || now >= record.fexp {
                return Err(InvalidGrant::Expired.into());
            }
            match &record.consumed {
                None => {
                    if let Some(pair) = self.advance(&key, &bytes, &record, now).await? {
                        crate::metrics::refresh(crate::metrics::Refresh::Rotated);
                        return Ok(pair);
                    }
                }
                Some(consumed) => {
                    let (at, next) = (consumed.at, consumed.next.clone());
                    return self.superseded(tag, &record, at, &next, now).await;
                }
            }
        }
        tracing::error!("refresh: a token's record changed under two rotations in a row");
        Err(InvalidGrant::Revoked.into())
    }

    /// The login (`sub`, `sid`) a well-formed refresh token of this manager speaks for,
    /// consumed or not, while its record is kept; `None` for a malformed or unknown token.
    /// One store read.
    pub(crate) async fn login_of(
        &self,
        refresh_token: &str,
    ) -> Result<Option<(String, String)>, RefreshError> {
        let Some((tag, hash)) = token::parse(&self.tags, refresh_token) else {
            return Ok(None);
        };
        let Some(bytes) = self.store.get(&key::token(&tag, &hash)).await? else {
            return Ok(None);
        };
        let record = Record::decode(&bytes).map_err(RefreshError::Corrupt)?;
        if self.tags.subject_tag(&record.sub) != tag {
            return Ok(None);
        }
        Ok(Some((record.sub, record.sid)))
    }

    /// Ends every refresh family of session `sid` of `sub`: their tokens are refused
    /// from now on (kept for the family lifetime). Access tokens already issued are not
    /// touched; [`logout`](Self::logout) does both.
    ///
    /// # Errors
    ///
    /// [`RefreshError::Revoke`] (`400 invalid_request`) with [`RevokeError::MissingSid`]
    /// for an empty `sid`, or [`RevokeError::MissingSubject`] for a `sub` that is empty or
    /// only whitespace, nothing written; [`RefreshError::Store`] when the store fails: the
    /// logout did not happen.
    pub async fn revoke_session_families(&self, sub: &str, sid: &str) -> Result<(), RefreshError> {
        if sid.is_empty() {
            return Err(RevokeError::MissingSid.into());
        }
        check_subject(sub)?;
        let tag = self.tags.subject_tag(sub);
        self.store
            .set(
                &key::session(&tag, sid),
                Bytes::from_static(b"1"),
                self.family_lifetime,
            )
            .await?;
        Ok(())
    }

    /// Ends every refresh family of `sub` started up to now ("log out everywhere") and
    /// returns the cutoff in Unix milliseconds: families created at or before it are
    /// refused at their next rotation. Kept for the family lifetime.
    ///
    /// The cutoff only moves forward, as [`Revoker::revoke_subject`]'s does: when another
    /// instance (with a clock ahead of this one) already wrote a later cutoff, that one
    /// stays and is returned. A login on an instance whose clock is behind the revoking
    /// instance's may start a family that looks older than the cutoff: keep clocks in
    /// sync (NTP).
    ///
    /// # Errors
    ///
    /// [`RefreshError::Revoke`] ([`RevokeError::MissingSubject`], `400 invalid_request`)
    /// for a `sub` that is empty or only whitespace, nothing written;
    /// [`RefreshError::Store`] when the store fails.
    pub async fn revoke_subject_families(&self, sub: &str) -> Result<u64, RefreshError> {
        check_subject(sub)?;
        let tag = self.tags.subject_tag(sub);
        let cutoff = raise_cutoff(
            &self.store,
            &key::subject(&tag),
            now_ms(),
            self.family_lifetime,
        )
        .await?;
        Ok(cutoff)
    }

    /// Logout of one session: ends its refresh families
    /// ([`revoke_session_families`](Self::revoke_session_families)) and revokes its access
    /// tokens ([`Revoker::revoke_session`], until the policy's longest token lifetime plus
    /// twice the leeway has passed).
    ///
    /// # Errors
    ///
    /// [`RefreshError::Revoke`] (`400 invalid_request`) with [`RevokeError::MissingSid`]
    /// for an empty `sid` (a token without a `sid` claim belongs to no session: revoke the
    /// token itself with [`Revoker::revoke_token`]), or [`RevokeError::MissingSubject`]
    /// for a `sub` that is empty or only whitespace, nothing written;
    /// [`RefreshError::Store`] when the store fails: tell the client logout failed.
    pub async fn logout(&self, sub: &str, sid: &str) -> Result<(), RefreshError> {
        self.revoke_session_families(sub, sid).await?;
        self.revoker
            .revoke_session(sub, sid, Duration::ZERO)
            .await?;
        Ok(())
    }

    /// "Log out everywhere": ends every refresh family of `sub`
    /// ([`revoke_subject_families`](Self::revoke_subject_families)) and revokes every
    /// access token issued to it up to now ([`Revoker::revoke_subject`]).
    ///
    /// The access-token cutoff has whole seconds, so this returns only once its second has
    /// passed (at most a second later): a login right after this call gets an access
    /// token the revocation check accepts.
    ///
    /// # Errors
    ///
    /// [`RefreshError::Revoke`] ([`RevokeError::MissingSubject`], `400 invalid_request`)
    /// for a `sub` that is empty or only whitespace, nothing written;
    /// [`RefreshError::Store`] when the store fails: tell the client logout failed.
    pub async fn logout_everywhere(&self, sub: &str) -> Result<(), RefreshError> {
        self.revoke_subject_families(sub).await?;
        self.revoker.revoke_subject(sub).await?;
        Ok(())
    }

    /// Refuses the token when its family, session or subject was ended: one `get_many`
    /// of keys under one hash tag.
    async fn check_family(&self, tag: &str, record: &Record) -> Result<(), RefreshError> {
        let family = key::family(tag, &record.fam);
        let session = key::session(tag, &record.sid);
        let subject = key::subject(tag);
        let values = self.store.get_many(&[&family, &session, &subject]).await?;
        let [family, session, subject] = values.as_slice() else {
            tracing::error!("refresh: the store answered get_many with the wrong number of values");
            return Err(InvalidGrant::Revoked.into());
        };
        if family.is_some() || session.is_some() {
            return Err(InvalidGrant::Revoked.into());
        }
        if let Some(cutoff) = subject {
            let cutoff = std::str::from_utf8(cutoff)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            match cutoff {
                Some(cutoff) if record.created > cutoff => {}
                // A corrupt cutoff still means someone logged the subject out.
                _ => return Err(InvalidGrant::Revoked.into()),
            }
        }
        Ok(())
    }

    /// The next token of `record`'s family (generation `gen`) and an access token for it,
    /// minted before anything is written, so that a failure here consumes nothing.
    fn prepare(&self, record: &Record, gen: u64, now: u64) -> Result<Prepared, RefreshError> {
        let tag = self.tags.subject_tag(&record.sub);
        let (token, hash) =
            token::generate(&self.tags, &record.sub).map_err(RefreshError::Random)?;
        let exp = now
            .saturating_add(millis(self.refresh_ttl))
            .min(record.fexp);
        let next = Record {
            gen,
            exp,
            consumed: None,
            ..record.clone()
        };
        let access = self
            .issuer
            .issue_with(&record.sub, Some(&record.sid), &self.access_claims)
            .map_err(RefreshError::Issue)?;
        let expires_in = access
            .claims
            .exp
            .saturating_sub(access.claims.iat.unwrap_or(access.claims.exp));
        let bytes = next.encode().map_err(RefreshError::Corrupt)?;
        Ok(Prepared {
            pair: TokenPair {
                access_token: access,
                refresh_token: RefreshToken {
                    token,
                    sub: record.sub.clone(),
                    sid: record.sid.clone(),
                    family: record.fam.clone(),
                    expires_at: exp / 1000,
                    family_expires_at: record.fexp / 1000,
                },
                expires_in,
            },
            key: key::token(&tag, &hash),
            hash,
            record: next,
            bytes,
        })
    }

    /// Consumes the active token at `key` (whose record reads `bytes`) and hands out its
    /// successor. `None` when a concurrent exchange consumed it first.
    async fn advance(
        &self,
        key: &str,
        bytes: &[u8],
        record: &Record,
        now: u64,
    ) -> Result<Option<TokenPair>, RefreshError> {
        let next = self.prepare(record, record.gen.saturating_add(1), now)?;
        // The successor is stored before the old token is consumed, so a consumed token
        // always points at a stored successor (the grace window relies on it). If the
        // consume fails, the successor is an orphan nobody holds.
        self.store
            .set(
                &next.key,
                next.bytes.clone(),
                ttl_until(next.record.exp, now),
            )
            .await?;
        let consumed = record
            .consumed_by(now, &next.hash)
            .encode()
            .map_err(RefreshError::Corrupt)?;
        let won = self
            .store
            .compare_and_set(key, bytes, consumed, ttl_until(record.exp, now))
            .await?;
        if won {
            return Ok(Some(next.pair));
        }
        if let Err(error) = self.store.compare_and_delete(&next.key, &next.bytes).await {
            tracing::debug!(
                error = &error as &dyn std::error::Error,
                "refresh: could not delete an unused successor token; it expires on its own"
            );
        }
        Ok(None)
    }

    /// A consumed token was presented: within the grace window, consume its unused
    /// successor instead and hand out a new pair; otherwise, reuse.
    async fn superseded(
        &self,
        tag: &str,
        record: &Record,
        consumed_at: u64,
        next: &str,
        now: u64,
    ) -> Result<TokenPair, RefreshError> {
        let within_grace =
            !self.grace.is_zero() && now < consumed_at.saturating_add(millis(self.grace));
        if within_grace {
            let next_key = key::token(tag, next);
            if let Some(bytes) = self.store.get(&next_key).await? {
                let successor = Record::decode(&bytes).map_err(RefreshError::Corrupt)?;
                if successor.consumed.is_none()
                    && successor.fam == record.fam
                    && now < successor.exp
                {
                    if let Some(pair) = self.advance(&next_key, &bytes, &successor, now).await? {
                        crate::metrics::refresh(crate::metrics::Refresh::Rotated);
                        tracing::info!(
                            family = %record.fam,
                            "refresh: superseded token accepted within the grace window"
                        );
                        return Ok(pair);
                    }
                }
            }
        }
        self.reuse_detected(tag, record, now).await
    }

    /// Revokes the session's access tokens and then the family, and answers
    /// `invalid_grant`.
    ///
    /// The order matters: the family marker makes every later presentation stop early
    /// (`Revoked`), so it is written last. When the store fails in between, the error goes
    /// to the client and the next presentation of the token runs both steps again, until
    /// both are done.
    async fn reuse_detected(
        &self,
        tag: &str,
        record: &Record,
        now: u64,
    ) -> Result<TokenPair, RefreshError> {
        tracing::warn!(
            family = %record.fam,
            generation = record.gen,
            "refresh: a consumed refresh token was presented again; revoking its family and session"
        );
        self.revoker
            .revoke_session(&record.sub, &record.sid, Duration::ZERO)
            .await?;
        self.store
            .set(
                &key::family(tag, &record.fam),
                Bytes::from_static(b"reused"),
                ttl_until(record.fexp, now),
            )
            .await?;
        Err(InvalidGrant::Reused.into())
    }
}
