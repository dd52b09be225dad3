//! Token verification: everything the service does per request, without the service.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderMap, Method, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::policy::TokenPolicy;
use super::reject::{
    self, Rejection, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MALFORMED, TOKEN_NOT_YET_VALID,
    TOKEN_TOO_LONG,
};
use super::source::{self, TokenSource};
use crate::RegisteredClaims;

/// A `public_if` or `optional_if` predicate.
pub(crate) type PathPredicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// The layer's configuration, as set by the builder methods.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) sources: Vec<TokenSource>,
    pub(crate) realm: Option<String>,
    pub(crate) max_token_len: usize,
    pub(crate) public_paths: Vec<String>,
    pub(crate) public_if: Option<PathPredicate>,
    pub(crate) optional_paths: Vec<String>,
    pub(crate) optional_if: Option<PathPredicate>,
}

/// What a request needs to pass, by its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A public path: passed through uninspected.
    Public,
    /// An optional path: passes without claims when it carries no token; a token it
    /// carries is checked as on a protected path.
    Optional,
    /// Everywhere else: a valid token is required.
    Required,
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
            optional_paths: Vec::new(),
            optional_if: None,
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
            .field("optional_paths", &self.optional_paths)
            .field(
                "optional_if",
                &self.optional_if.as_ref().map(|_| "<predicate>"),
            )
            .finish()
    }
}

/// The policy plus the layer's configuration, with the issuer and audience rules of each
/// key slot, shared by every clone of the service.
#[derive(Debug)]
pub(crate) struct Verifier {
    policy: TokenPolicy,
    /// Slot `0`: the policy's own issuer and audience; slot `i + 1`: the `i`-th bound
    /// issuer's.
    rules: Vec<Rules>,
    config: Config,
    quoted_realm: Option<String>,
}

/// What the claims of a token verified by one slot's keys must say.
#[derive(Debug)]
struct Rules {
    /// Empty: `iss` is not checked.
    issuers: Vec<String>,
    /// Empty: a token carrying `aud` is refused (RFC 7519 §4.1.3).
    audiences: Vec<String>,
}

/// Decoded parts up to these sizes stay on the stack; a larger one is decoded on the heap.
const HEADER_STACK: usize = 256;
const PAYLOAD_STACK: usize = 1024;

impl Verifier {
    pub(crate) fn new(policy: TokenPolicy, config: Config) -> Self {
        // Keys may change at run time (a remote key source), so the rules are per slot
        // (own keys, then each bound issuer), not per key.
        let own = Rules {
            issuers: policy.issuer().map(str::to_owned).into_iter().collect(),
            audiences: policy.audience().map(str::to_owned).into_iter().collect(),
        };
        let rules = std::iter::once(own)
            .chain(policy.keys().bound_issuers().iter().map(|bound| Rules {
                issuers: vec![bound.issuer.clone()],
                audiences: bound.audiences.clone(),
            }))
            .collect();
        let quoted_realm = config.realm.as_deref().map(reject::quote_realm);
        Self {
            policy,
            rules,
            config,
            quoted_realm,
        }
    }

    /// Public first: a request matching both a public and an optional rule is public.
    pub(crate) fn access(&self, method: &Method, uri: &Uri) -> Access {
        let matches = |paths: &[String], predicate: &Option<PathPredicate>| {
            let path = uri.path();
            paths.iter().any(|p| p == path) || predicate.as_ref().is_some_and(|f| f(method, uri))
        };
        if matches(&self.config.public_paths, &self.config.public_if) {
            Access::Public
        } else if matches(&self.config.optional_paths, &self.config.optional_if) {
            Access::Optional
        } else {
            Access::Required
        }
    }

    /// The token of a request, from the configured sources: `Ok(None)` when it carries
    /// none.
    pub(crate) fn token<'h>(
        &self,
        headers: &'h HeaderMap,
    ) -> Result<Option<Cow<'h, str>>, Rejection> {
        source::extract(&self.config.sources, headers)
    }

    /// Verifies and decodes a request's token, counted `ok` when it verifies.
    pub(crate) fn authenticate<T: DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<(RegisteredClaims, T), Rejection> {
        let verified = self.verify(token)?;
        crate::metrics::jwt(crate::metrics::Jwt::Ok);
        Ok(verified)
    }

    /// Verifies `token` and decodes its claims.
    ///
    /// Each part is decoded once: the header is parsed once (borrowing from a stack
    /// buffer), the payload parsed once for the registered claims and once into `T`.
    /// The claim checks are jsonwebtoken's (`exp` required, `nbf`, leeway, `iss`, `aud`),
    /// made here so that nothing is decoded twice.
    fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<(RegisteredClaims, T), Rejection> {
        // Size first: nothing is decoded from an oversized token.
        if token.len() > self.config.max_token_len {
            return Err(Rejection::InvalidToken(TOKEN_TOO_LONG));
        }
        // Exactly header.payload.signature, none empty (an empty signature is `alg: none`).
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::InvalidToken(TOKEN_MALFORMED));
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
            return Err(Rejection::InvalidToken(TOKEN_MALFORMED));
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];

        let mut header_stack = [0u8; HEADER_STACK];
        let mut header_heap = Vec::new();
        let header = decode_part(header_b64, &mut header_stack, &mut header_heap)
            .and_then(|bytes| json_object::<JoseHeader<'_>>(bytes).ok())
            .ok_or_else(|| {
                tracing::debug!("jwt: header does not parse");
                Rejection::InvalidToken(TOKEN_MALFORMED)
            })?;
        // We understand no critical extension, and do not decrypt or decompress.
        if header.crit.is_some() || header.enc.is_some() || header.zip.is_some() {
            tracing::debug!("jwt: header has crit, enc or zip");
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        }

        // The payload is read before the signature is checked only for its `iss`, which
        // picks the keys; what it says is judged after the signature.
        let mut payload_stack = [0u8; PAYLOAD_STACK];
        let mut payload_heap = Vec::new();
        let payload_bytes = decode_part(payload_b64, &mut payload_stack, &mut payload_heap);
        let payload = payload_bytes.map(json_object::<Payload<'_>>);
        let keys = self.policy.keys();
        let issuer = match &payload {
            _ if keys.bound_issuers().is_empty() => None,
            Some(Ok(claims)) => claims.iss.as_str().and_then(|iss| keys.issuer_index(iss)),
            // Claims that fail the full parse may still name an issuer.
            Some(Err(_)) => payload_bytes
                .and_then(|bytes| serde_json::from_slice::<IssuerOnly<'_>>(bytes).ok())
                .and_then(|claims| claims.iss.as_str().and_then(|iss| keys.issuer_index(iss))),
            None => None,
        };
        let kid = header.kid.as_ref().map(|kid| kid.0.as_ref());
        let Some(key) = keys.resolve_in(issuer, kid, header.alg) else {
            tracing::debug!("jwt: no key for the token's issuer, kid and alg");
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        };
        let entry = &key.entry;
        if header.alg != entry.alg {
            tracing::debug!(alg = ?header.alg, "jwt: alg does not match the key's pinned algorithm");
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        }
        let Some(rules) = self.rules.get(key.slot) else {
            return Err(Rejection::InvalidToken(TOKEN_INVALID));
        };
        // The key's pinned algorithm, never the header's, picks the verifier.
        match jsonwebtoken::crypto::verify(
            signature,
            message.as_bytes(),
            &entry.decoding,
            entry.alg,
        ) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("jwt: signature does not verify");
                return Err(Rejection::InvalidToken(TOKEN_INVALID));
            }
            Err(error) => {
                tracing::debug!(%error, "jwt: signature not checked");
                return Err(Rejection::InvalidToken(match error.kind() {
                    ErrorKind::Base64(_) => TOKEN_MALFORMED,
                    _ => TOKEN_INVALID,
                }));
            }
        }

        // Signed: from here on "expired" and "not valid yet" are said of a genuine token.
        let (Some(bytes), Some(payload)) = (payload_bytes, payload) else {
            tracing::debug!("jwt: payload is not base64url");
            return Err(Rejection::InvalidToken(TOKEN_MALFORMED));
        };
        let claims = payload.map_err(|error| {
            tracing::debug!(%error, "jwt: payload does not parse");
            match error {
                PartError::Json(error) if error.is_data() => Rejection::InvalidToken(TOKEN_INVALID),
                PartError::NotAnObject | PartError::Json(_) => {
                    Rejection::InvalidToken(TOKEN_MALFORMED)
                }
            }
        })?;
        let registered = self.validate(claims, rules)?;
        let custom = serde_json::from_slice::<T>(bytes).map_err(|error| {
            tracing::debug!(%error, "jwt: claims do not parse into the application's type");
            Rejection::InvalidToken(TOKEN_INVALID)
        })?;
        Ok((registered, custom))
    }

    /// jsonwebtoken's claim checks, in its order: required claims (and a `sub` that is
    /// not blank, a `jti` and `sid` that are not empty when present), `exp`, `nbf`, `iss`,
    /// `aud`. The leeway is bounded by the policy builder.
    fn validate(&self, claims: Payload<'_>, rules: &Rules) -> Result<RegisteredClaims, Rejection> {
        let invalid = |why: &str| {
            tracing::debug!(why, "jwt: token rejected");
            Rejection::InvalidToken(TOKEN_INVALID)
        };
        let (Some(exp), Some(sub)) = (claims.exp, claims.sub) else {
            return Err(invalid("exp or sub missing"));
        };
        if crate::claims::blank_subject(&sub) {
            return Err(invalid(if sub.is_empty() {
                "sub empty"
            } else {
                "sub only whitespace"
            }));
        }
        // An empty `jti` or `sid` names no one token or session: revoking one token of the
        // subject with an empty `jti` would revoke all of them, and a session with an
        // empty `sid` cannot be revoked at all (`Revoker::revoke_session` refuses it).
        // Absent, they are fine: such a token is revoked with its subject.
        if claims.jti.as_deref() == Some("") {
            return Err(invalid("jti empty"));
        }
        if claims.sid.as_deref() == Some("") {
            return Err(invalid("sid empty"));
        }
        if !rules.issuers.is_empty() && claims.iss.is_absent() {
            return Err(invalid("iss missing"));
        }
        if !rules.audiences.is_empty() && claims.aud.is_absent() {
            return Err(invalid("aud missing"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let leeway = self.policy.leeway_secs();
        if exp.value < now.saturating_sub(leeway) {
            tracing::debug!("jwt: token expired");
            return Err(Rejection::InvalidToken(TOKEN_EXPIRED));
        }
        // A token living longer than the policy's longest lifetime could outlive its
        // revocation entries (kept that long): refused, whoever minted it.
        let latest = now
            .saturating_add(self.policy.max_lifetime_secs())
            .saturating_add(leeway);
        if exp.value > latest {
            return Err(invalid(
                "exp is further ahead than the policy's max token lifetime",
            ));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.value > now.saturating_add(leeway))
        {
            tracing::debug!("jwt: token not valid yet");
            return Err(Rejection::InvalidToken(TOKEN_NOT_YET_VALID));
        }
        if !rules.issuers.is_empty() {
            match claims.iss.as_str() {
                Some(iss) if rules.issuers.iter().any(|i| i == iss) => {}
                _ => return Err(invalid("iss not accepted")),
            }
        }
        let accepted = |aud: &Text<'_>| rules.audiences.iter().any(|a| *a == aud.0);
        let audience_ok = match (&claims.aud, rules.audiences.is_empty()) {
            (Loose::Absent | Loose::Other, true) => true,
            (Loose::One(_) | Loose::Many(_), true) | (Loose::Absent | Loose::Other, false) => false,
            (Loose::One(aud), false) => accepted(aud),
            (Loose::Many(auds), false) => auds.iter().any(accepted),
        };
        if !audience_ok {
            return Err(invalid("aud not accepted"));
        }
        // `exp` is a whole number in `RegisteredClaims`; a fraction passed the time check
        // above but is no claim we can carry.
        if !exp.whole {
            return Err(invalid("exp is not a whole number"));
        }
        Ok(RegisteredClaims {
            sub,
            jti: claims.jti,
            iat: claims.iat,
            exp: exp.value,
            sid: claims.sid,
        })
    }

    pub(crate) fn reject<B>(
        &self,
        rejection: Rejection,
    ) -> http::Response<crate::response::ResponseBody<B>> {
        crate::metrics::jwt(rejection.metric());
        reject::response(self.quoted_realm.as_deref(), rejection)
    }
}

/// Decodes one base64url part into `stack` when it fits, else into `heap`.
fn decode_part<'b>(input: &str, stack: &'b mut [u8], heap: &'b mut Vec<u8>) -> Option<&'b [u8]> {
    if base64::decoded_len_estimate(input.len()) <= stack.len() {
        let len = URL_SAFE_NO_PAD.decode_slice(input, stack).ok()?;
        return stack.get(..len);
    }
    *heap = URL_SAFE_NO_PAD.decode(input).ok()?;
    Some(heap.as_slice())
}

enum PartError {
    /// Not a JSON object: a JSON array would deserialize into structs field by field.
    NotAnObject,
    Json(serde_json::Error),
}

impl fmt::Display for PartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject => f.write_str("not a JSON object"),
            Self::Json(error) => error.fmt(f),
        }
    }
}

fn json_object<'a, D: Deserialize<'a>>(bytes: &'a [u8]) -> Result<D, PartError> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(PartError::NotAnObject);
    }
    serde_json::from_slice(bytes).map_err(PartError::Json)
}

/// The JOSE header fields the verifier reads.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    alg: Algorithm,
    #[serde(borrow, default)]
    kid: Option<Text<'a>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
    #[serde(default)]
    enc: Option<IgnoredAny>,
    #[serde(default)]
    zip: Option<IgnoredAny>,
}

/// The claims the verifier checks and `RegisteredClaims` carries.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(borrow, default)]
    iss: Loose<'a>,
    #[serde(borrow, default)]
    aud: Loose<'a>,
}

/// Only `iss`, for claims that fail the full parse.
#[derive(Deserialize)]
struct IssuerOnly<'a> {
    #[serde(borrow, default)]
    iss: Loose<'a>,
}

/// A string, borrowed from the decoded part unless it has escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// `iss` or `aud` as jsonwebtoken reads them: a string, an array of strings (`aud`), or
/// anything else, which is no error but satisfies no rule that needs the claim.
#[derive(Default)]
enum Loose<'a> {
    #[default]
    Absent,
    One(Text<'a>),
    Many(Vec<Text<'a>>),
    Other,
}

impl Loose<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::One(text) => Some(&text.0),
            _ => None,
        }
    }

    fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::One(Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::One(Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                // `null` is absent, as `Option` reads it.
                Ok(Loose::Absent)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                let mut all_strings = true;
                while let Some(item) = seq.next_element::<Loose<'de>>()? {
                    match item {
                        Loose::One(text) => items.push(text),
                        _ => all_strings = false,
                    }
                }
                Ok(if all_strings {
                    Loose::Many(items)
                } else {
                    Loose::Other
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// An `exp` or `nbf`: a non-negative number of seconds, a fraction rounded as jsonwebtoken
/// does.
#[derive(Clone, Copy)]
struct NumericDate {
    value: u64,
    whole: bool,
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative number of seconds")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(NumericDate { value, whole: true })
            }
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                if value.is_finite() && value >= 0.0 && value < u64::MAX as f64 {
                    Ok(NumericDate {
                        value: value.round() as u64,
                        whole: false,
                    })
                } else {
                    Err(E::custom("a NumericDate must fit a u64"))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::JwtKeySet;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    const SECRET: &[u8] = b"verify-tests-secret-verify-tests-secret!";

    fn verifier(audience: Option<&str>) -> Verifier {
        let keys = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, SECRET)
            .unwrap();
        let mut policy = TokenPolicy::builder(keys);
        if let Some(audience) = audience {
            policy = policy.audience(audience);
        }
        Verifier::new(policy.build().unwrap(), Config::default())
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(header: &Value, claims: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    fn token(claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn check(v: &Verifier, token: &str) -> Result<RegisteredClaims, &'static str> {
        v.verify::<Value>(token)
            .map(|(registered, _)| registered)
            .map_err(|rejection| match rejection {
                Rejection::InvalidToken(description) => description,
                _ => "other",
            })
    }

    #[test]
    fn parts_larger_than_the_stack_buffers_are_decoded_on_the_heap() {
        let v = verifier(None);
        let big = "x".repeat(3000);
        let claims = json!({"sub": "alice", "exp": now() + 60, "pad": big});
        let header = json!({"alg": "HS256", "kid": "k", "pad": "y".repeat(400)});
        let token = sign(&header, &claims.to_string());
        assert_eq!(check(&v, &token).map(|c| c.sub), Ok("alice".to_owned()));
    }

    #[test]
    fn escaped_strings_are_read_like_plain_ones() {
        let v = verifier(Some("api"));
        let header = json!({"alg": "HS256", "kid": "k"})
            .to_string()
            .replace("\"k\"}", "\"\\u006b\"}");
        assert!(header.contains("\\u006b"), "{header}");
        let claims = format!(
            r#"{{"sub":"al\u0069ce","exp":{},"aud":"\u0061pi","sid":"s\"1"}}"#,
            now() + 60
        );
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        let key = EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        let registered = check(&v, &format!("{message}.{signature}")).unwrap();
        assert_eq!(registered.sub, "alice");
        assert_eq!(registered.sid.as_deref(), Some("s\"1"));
    }

    #[test]
    fn audiences_as_jsonwebtoken_reads_them() {
        let with_aud = verifier(Some("api"));
        let without = verifier(None);
        let claims = |aud: Value| json!({"sub": "a", "exp": now() + 60, "aud": aud});
        assert!(check(&with_aud, &token(&claims(json!("api")))).is_ok());
        assert!(check(&with_aud, &token(&claims(json!(["x", "api"])))).is_ok());
        assert_eq!(
            check(&with_aud, &token(&claims(json!(["x", "y"])))),
            Err(TOKEN_INVALID)
        );
        assert_eq!(
            check(&with_aud, &token(&claims(json!(7)))),
            Err(TOKEN_INVALID)
        );
        assert_eq!(
            check(&with_aud, &token(&json!({"sub": "a", "exp": now() + 60}))),
            Err(TOKEN_INVALID),
            "aud required"
        );
        // Without an audience, a token naming one is refused; one that is not a string
        // or array is no audience (as in jsonwebtoken).
        assert_eq!(
            check(&without, &token(&claims(json!("api")))),
            Err(TOKEN_INVALID)
        );
        assert_eq!(
            check(&without, &token(&claims(json!([])))),
            Err(TOKEN_INVALID)
        );
        assert!(check(&without, &token(&claims(json!(7)))).is_ok());
        assert!(check(&without, &token(&claims(Value::Null))).is_ok());
    }

    #[test]
    fn numeric_dates() {
        let v = verifier(None);
        let with_exp = |exp: Value| token(&json!({"sub": "a", "exp": exp}));
        // A fraction is checked (rounded) but cannot be carried as RegisteredClaims::exp.
        #[allow(clippy::cast_precision_loss)]
        let future = now() as f64 + 60.5;
        assert_eq!(check(&v, &with_exp(json!(future))), Err(TOKEN_INVALID));
        assert_eq!(check(&v, &with_exp(json!(1.5))), Err(TOKEN_EXPIRED));
        assert_eq!(check(&v, &with_exp(json!(-1))), Err(TOKEN_INVALID));
        assert_eq!(check(&v, &with_exp(json!("soon"))), Err(TOKEN_INVALID));
        assert_eq!(check(&v, &with_exp(Value::Null)), Err(TOKEN_INVALID));
        let nbf = |nbf: Value| token(&json!({"sub": "a", "exp": now() + 60, "nbf": nbf}));
        assert_eq!(
            check(&v, &nbf(json!(now() + 3600))),
            Err(TOKEN_NOT_YET_VALID)
        );
        assert!(check(&v, &nbf(json!(now()))).is_ok());
        assert!(check(&v, &nbf(Value::Null)).is_ok());
        assert_eq!(check(&v, &nbf(json!("later"))), Err(TOKEN_INVALID));
    }

    #[test]
    fn a_token_living_longer_than_the_policy_allows_is_refused() {
        // Default policy: at most 24 hours left to live, leeway 30 s.
        let v = verifier(None);
        let day = 24 * 3600;
        let with_exp = |exp: u64| token(&json!({"sub": "a", "exp": exp}));
        assert!(check(&v, &with_exp(now() + day)).is_ok());
        assert!(check(&v, &with_exp(now() + day + 25)).is_ok());
        assert_eq!(check(&v, &with_exp(now() + day + 60)), Err(TOKEN_INVALID));
        assert_eq!(check(&v, &with_exp(u64::MAX / 2)), Err(TOKEN_INVALID));
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_malformed() {
        let v = verifier(None);
        let header = json!({"alg": "HS256", "kid": "k"});
        for payload in [
            format!("[{}, 0, \"alice\"]", now() + 60),
            "\"alice\"".to_owned(),
            "null".to_owned(),
            "{".to_owned(),
        ] {
            assert_eq!(
                check(&v, &sign(&header, &payload)),
                Err(TOKEN_MALFORMED),
                "{payload}"
            );
        }
        // A duplicate registered claim is refused, never resolved to one of its values.
        let twice = format!(r#"{{"sub":"alice","sub":"mallory","exp":{}}}"#, now() + 60);
        assert_eq!(check(&v, &sign(&header, &twice)), Err(TOKEN_INVALID));
    }
}
