//! Token verification: everything the service does per request, without the service.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::policy::TokenPolicy;
use super::reject::{
    self, Rejection, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MALFORMED, TOKEN_NOT_YET_VALID,
    TOKEN_TOO_LONG,
};
use super::source::{self, TokenSource};
use crate::RegisteredClaims;

pub(crate) type PublicPredicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// The layer's configuration, as set by the builder methods.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) sources: Vec<TokenSource>,
    pub(crate) realm: Option<String>,
    pub(crate) max_token_len: usize,
    pub(crate) public_paths: Vec<String>,
    pub(crate) public_if: Option<PublicPredicate>,
}

pub(crate) const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

impl Default for Config {
    fn default() -> Self {
        Self {
            sources: vec![TokenSource::Bearer],
            realm: None,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            public_paths: Vec::new(),
            public_if: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("sources", &self.sources)
            .field("realm", &self.realm)
            .field("max_token_len", &self.max_token_len)
            .field("public_paths", &self.public_paths)
            .field("public_if", &self.public_if.as_ref().map(|_| "<predicate>"))
            .finish()
    }
}

/// The policy plus the layer's configuration, with one precomputed `Validation` per key
/// (its algorithm pinned), shared by every clone of the service.
#[derive(Debug)]
pub(crate) struct Verifier {
    policy: TokenPolicy,
    validations: Vec<Vec<(Algorithm, Validation)>>,
    config: Config,
    quoted_realm: Option<String>,
}

/// Every algorithm a key can be pinned to.
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// One `Validation` per algorithm, for tokens of these issuers and audiences.
fn validations_for(
    leeway_secs: u64,
    issuers: &[String],
    audiences: &[String],
) -> Vec<(Algorithm, Validation)> {
    ALGORITHMS
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            let mut required = vec!["exp", "sub"];
            if !issuers.is_empty() {
                v.set_issuer(issuers);
                required.push("iss");
            }
            if !audiences.is_empty() {
                v.set_audience(audiences);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            (alg, v)
        })
        .collect()
}

impl Verifier {
    pub(crate) fn new(policy: TokenPolicy, config: Config) -> Self {
        // Keys may change at run time (a remote key source), so the validations are per
        // slot (own keys, then each bound issuer) and algorithm, not per key. The leeway
        // is bounded by the policy builder, so `now - leeway` cannot underflow.
        let leeway = policy.leeway_secs();
        let own_issuers: Vec<String> = policy.issuer().map(str::to_owned).into_iter().collect();
        let own_audiences: Vec<String> = policy.audience().map(str::to_owned).into_iter().collect();
        let own = validations_for(leeway, &own_issuers, &own_audiences);
        let validations = std::iter::once(own)
            .chain(policy.keys().bound_issuers().iter().map(|bound| {
                validations_for(
                    leeway,
                    std::slice::from_ref(&bound.issuer),
                    &bound.audiences,
                )
            }))
            .collect();
        let quoted_realm = config.realm.as_deref().map(reject::quote_realm);
        Self {
            policy,
            validations,
            config,
            quoted_realm,
        }
    }

    pub(crate) fn is_public(&self, method: &Method, uri: &Uri) -> bool {
        let path = uri.path();
        self.config.public_paths.iter().any(|p| p == path)
            || self
                .config
                .public_if
                .as_ref()
                .is_some_and(|f| f(method, uri))
    }

    /// Finds, verifies and decodes the token of a request.
    pub(crate) fn authenticate<T: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
    ) -> Result<(RegisteredClaims, T), Rejection> {
        let token = source::extract(&self.config.sources, headers)?.ok_or(Rejection::Missing)?;
        let value = self.verify(&token)?;
        let registered = RegisteredClaims::deserialize(&value).map_err(|error| {
            tracing::debug!(%error, "jwt: registered claims do not parse");
            Rejection::InvalidToken(TOKEN_INVALID)
        })?;
        let claims = T::deserialize(&value).map_err(|error| {
            tracing::debug!(%error, "jwt: claims do not parse into the application's type");
            Rejection::InvalidToken(TOKEN_INVALID)
        })?;
        crate::metrics::jwt(crate::metrics::Jwt::Ok);
        Ok((registered, claims))
    }

    fn verify(&self, token: &str) -> Result<serde_json::Value, Rejection> {
        // Size first: nothing is decoded from an oversized token.
        if token.len() > self.config.max_token_len {
            return Err(Rejection::InvalidToken(TOKEN_TOO_LONG));
        }
        // Exactly header.payload.signature, none empty (an empty signature is `alg: none`).
        let mut parts = token.split('.');
        let shape_ok =
            (&mut parts).take(3).filter(|p| !p.is_empty()).count() == 3 && parts.next().is_none();
        if !shape_ok {
            return Err(Rejection::InvalidToken(TOKEN_MALFORMED));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            tracing::debug!(%error, "jwt: header does not parse");
            Rejection::InvalidToken(TOKEN_MALFORMED)
        })?;
        // We understand no critical extension, and do not decrypt or decompress.
        if header.crit.is_some() || header.enc.is_some() || header.zip.is_some() {
            tracing::debug!("jwt: header has crit, enc or zip");
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        }
        let Some(key) = self.policy.keys().resolve(token, &header) else {
            tracing::debug!("jwt: no key for the token's issuer, kid and alg");
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        };
        let entry = &key.entry;
        let validation = self
            .validations
            .get(key.slot)
            .and_then(|v| v.iter().find(|(alg, _)| *alg == entry.alg))
            .map(|(_, v)| v);
        let Some(validation) = validation else {
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        };
        if header.alg != entry.alg {
            tracing::debug!(alg = ?header.alg, "jwt: alg does not match the key's pinned algorithm");
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &entry.decoding, validation)
            .map_err(|error| {
                tracing::debug!(%error, "jwt: token rejected");
                // jsonwebtoken checks the signature before the claims, so "expired" and
                // "not valid yet" are only ever said about a genuinely signed token.
                match error.kind() {
                    ErrorKind::ExpiredSignature => Rejection::InvalidToken(TOKEN_EXPIRED),
                    ErrorKind::ImmatureSignature => Rejection::InvalidToken(TOKEN_NOT_YET_VALID),
                    ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                        Rejection::InvalidToken(TOKEN_MALFORMED)
                    }
                    _ => Rejection::InvalidToken(TOKEN_INVALID),
                }
            })?;
        // A JSON array would deserialize into structs field by field: insist on an object.
        if !data.claims.is_object() {
            tracing::debug!("jwt: payload is not a JSON object");
            return Err(Rejection::InvalidToken(TOKEN_MALFORMED));
        }
        Ok(data.claims)
    }

    pub(crate) fn reject<B>(
        &self,
        rejection: Rejection,
    ) -> http::Response<crate::response::ResponseBody<B>> {
        crate::metrics::jwt(rejection.metric());
        reject::response(self.quoted_realm.as_deref(), rejection)
    }
}
