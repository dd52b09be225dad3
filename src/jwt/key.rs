//! The key set: which key verifies (and signs) which token, each pinned to one algorithm.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};

/// Why a key could not be added to a [`JwtKeySet`] or used by a
/// [`TokenIssuer`](super::TokenIssuer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The algorithm does not belong to this kind of key (e.g. `HS256` for an RSA key).
    #[error("algorithm {alg:?} cannot be used with {kind} key")]
    AlgorithmMismatch {
        /// The algorithm asked for.
        alg: Algorithm,
        /// The kind of key given.
        kind: &'static str,
    },
    /// An HMAC secret shorter than the hash output (RFC 7518 §3.2).
    #[error("an {alg:?} secret must be at least {min} bytes")]
    WeakSecret {
        /// The HMAC algorithm.
        alg: Algorithm,
        /// The minimum length in bytes.
        min: usize,
    },
    /// An empty key id.
    #[error("a key id must not be empty")]
    EmptyKid,
    /// Two keys with the same key id.
    #[error("key id {0:?} is used twice")]
    DuplicateKid(String),
    /// The key material could not be parsed or does not work with its algorithm.
    #[error("invalid key material")]
    InvalidKey(#[source] jsonwebtoken::errors::Error),
    /// A private key whose derived public key does not verify its own signature.
    #[error("the key failed its sign-and-verify self-test")]
    SelfTestFailed,
    /// The JWKS document is not valid JSON or has no `keys` array.
    #[error("invalid JWKS document")]
    InvalidJwks(#[source] serde_json::Error),
    /// The JWKS document holds no key usable for verifying signatures.
    #[error("the JWKS document has no usable signature key")]
    EmptyJwks,
    /// No key with this id in the set.
    #[error("no key with id {0:?} in the key set")]
    UnknownKid(String),
    /// The key can only verify (a public key); signing needs a private key or HMAC secret.
    #[error("key {0:?} has no private part and cannot sign")]
    NotSigningKey(String),
}

/// One key of the set.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
    pub(crate) encoding: Option<EncodingKey>,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("can_sign", &self.encoding.is_some())
            .field("material", &"[redacted]")
            .finish()
    }
}

/// The keys a [`JwtAuthLayer`](super::JwtAuthLayer) accepts and a
/// [`TokenIssuer`](super::TokenIssuer) signs with.
///
/// Every key is pinned to exactly one [`Algorithm`]: a token is verified only by the key
/// its `kid` header names, and only when its `alg` header is that key's algorithm. So an
/// RSA public key never verifies an `HS256` token (the algorithm-confusion attack), and
/// `alg: none` is never accepted.
///
/// Several keys make rotation work: add the new key, sign with it, and keep the old one
/// until the last token it signed has expired. A token without `kid` is accepted only
/// when the set holds exactly one key.
///
/// ```
/// use tower_stateless::jwt::{Algorithm, JwtKeySet};
///
/// let keys = JwtKeySet::new()
///     .with_hmac("2024-01", Algorithm::HS256, b"an old secret of at least 32 bytes!")?
///     .with_hmac("2024-06", Algorithm::HS256, b"the new secret, also 32 bytes long")?;
/// assert_eq!(keys.len(), 2);
/// # Ok::<(), tower_stateless::jwt::KeyError>(())
/// ```
///
/// Debug output names key ids and algorithms only; key material prints as `[redacted]`.
#[derive(Clone, Debug, Default)]
pub struct JwtKeySet {
    entries: Vec<KeyEntry>,
}

/// With both crypto features on, jsonwebtoken cannot pick a backend by itself and would
/// panic on first use; select aws-lc-rs, as documented in the module docs.
fn install_crypto_provider() {
    #[cfg(all(feature = "rust_crypto", feature = "aws_lc_rs"))]
    {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            // Err means the application installed a provider first: keep theirs.
            let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
                &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
            );
        });
    }
}

fn min_hmac_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// Checks that the key works with its algorithm: a probe verification fails with an
/// error (rather than `Ok(false)`) when the backend cannot use the key at all.
fn probe_decoding(key: &DecodingKey, alg: Algorithm) -> Result<(), KeyError> {
    jsonwebtoken::crypto::verify("AA", b"probe", key, alg)
        .map(|_| ())
        .map_err(KeyError::InvalidKey)
}

impl JwtKeySet {
    /// An empty key set.
    ///
    /// With both the `rust_crypto` and `aws_lc_rs` features enabled, this installs
    /// aws-lc-rs as jsonwebtoken's process-wide crypto provider (unless the application
    /// installed one first).
    pub fn new() -> Self {
        install_crypto_provider();
        Self {
            entries: Vec::new(),
        }
    }

    /// A key set from a static JWKS document (`{"keys":[...]}`), e.g. an identity
    /// provider's published keys saved at deploy time. See [`JwtKeySet::with_jwks_json`].
    pub fn from_jwks_json(json: &str) -> Result<Self, KeyError> {
        Self::new().with_jwks_json(json)
    }

    /// Adds an HMAC secret under `kid`, pinned to `alg` (`HS256`, `HS384` or `HS512`).
    ///
    /// The secret must be at least as long as the hash output (32, 48 or 64 bytes), as
    /// RFC 7518 §3.2 requires. The key both signs and verifies.
    pub fn with_hmac(self, kid: &str, alg: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        if alg.family() != AlgorithmFamily::Hmac {
            return Err(KeyError::AlgorithmMismatch {
                alg,
                kind: "an HMAC",
            });
        }
        let min = min_hmac_len(alg);
        if secret.len() < min {
            return Err(KeyError::WeakSecret { alg, min });
        }
        self.push(KeyEntry {
            kid: Some(kid.to_owned()),
            alg,
            decoding: DecodingKey::from_secret(secret),
            encoding: Some(EncodingKey::from_secret(secret)),
        })
    }

    /// Adds a verify-only public key (PEM, `PUBLIC KEY` / `RSA PUBLIC KEY`) under `kid`,
    /// pinned to `alg`: `RS*`/`PS*` for RSA, `ES256`/`ES384` for ECDSA P-256/P-384,
    /// `EdDSA` for Ed25519.
    pub fn with_public_pem(self, kid: &str, alg: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let decoding = match alg.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => {
                return Err(KeyError::AlgorithmMismatch {
                    alg,
                    kind: "a public",
                })
            }
        }
        .map_err(KeyError::InvalidKey)?;
        probe_decoding(&decoding, alg)?;
        self.push(KeyEntry {
            kid: Some(kid.to_owned()),
            alg,
            decoding,
            encoding: None,
        })
    }

    /// Adds a private key (PEM; PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`) under
    /// `kid`, pinned to `alg`. Its public key is derived from it; the key both signs (for a
    /// [`TokenIssuer`](super::TokenIssuer)) and verifies. A sign-then-verify self-test runs
    /// here, so a broken key fails at startup rather than on the first login.
    pub fn with_private_pem(self, kid: &str, alg: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let encoding = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => {
                return Err(KeyError::AlgorithmMismatch {
                    alg,
                    kind: "a private",
                })
            }
        }
        .map_err(KeyError::InvalidKey)?;
        let jwk = Jwk::from_encoding_key(&encoding, alg).map_err(KeyError::InvalidKey)?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(KeyError::InvalidKey)?;
        let signature =
            jsonwebtoken::crypto::sign(b"probe", &encoding, alg).map_err(KeyError::InvalidKey)?;
        let verified = jsonwebtoken::crypto::verify(&signature, b"probe", &decoding, alg)
            .map_err(KeyError::InvalidKey)?;
        if !verified {
            return Err(KeyError::SelfTestFailed);
        }
        self.push(KeyEntry {
            kid: Some(kid.to_owned()),
            alg,
            decoding,
            encoding: Some(encoding),
        })
    }

    /// Adds every usable signature key of a JWKS document (`{"keys":[...]}`).
    ///
    /// Each key is pinned to its `alg` member; without one, RSA keys get `RS256`, EC keys
    /// the algorithm of their curve (`ES256` for P-256, `ES384` for P-384), OKP Ed25519
    /// keys `EdDSA` and `oct` keys `HS256`. Keys marked for encryption (`"use":"enc"`, or
    /// `key_ops` without `verify`) and keys this crate cannot use (unknown `kty`, curve or
    /// `alg`, P-521, an `alg` that does not fit the key) are skipped with a warning; a
    /// key that claims a usable algorithm but has broken material is an error, and so is
    /// a document that leaves no key at all.
    pub fn with_jwks_json(mut self, json: &str) -> Result<Self, KeyError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_str(json).map_err(KeyError::InvalidJwks)?;
        let mut added = 0usize;
        for value in document.keys {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::warn!(%error, "skipping a JWK that does not parse");
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            if !usable_for_signatures(&jwk) {
                tracing::debug!(?kid, "skipping a JWK not meant for signatures");
                continue;
            }
            let Some(alg) = jwk_algorithm(&jwk) else {
                tracing::warn!(
                    ?kid,
                    "skipping a JWK with an unsupported key type, curve or alg"
                );
                continue;
            };
            let decoding = DecodingKey::from_jwk(&jwk).map_err(KeyError::InvalidKey)?;
            if alg.family() == AlgorithmFamily::Hmac {
                let min = min_hmac_len(alg);
                if decoding.try_get_as_bytes().map_or(0, <[u8]>::len) < min {
                    return Err(KeyError::WeakSecret { alg, min });
                }
            }
            probe_decoding(&decoding, alg)?;
            self = self.push(KeyEntry {
                kid,
                alg,
                decoding,
                encoding: None,
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(KeyError::EmptyJwks);
        }
        Ok(self)
    }

    /// The number of keys in the set.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids of the keys, in the order they were added (`None` for a JWKS key without
    /// `kid`).
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.entries.iter().map(|e| e.kid.as_deref())
    }

    fn push(mut self, entry: KeyEntry) -> Result<Self, KeyError> {
        if let Some(kid) = &entry.kid {
            if kid.is_empty() {
                return Err(KeyError::EmptyKid);
            }
            if self.entries.iter().any(|e| e.kid.as_ref() == Some(kid)) {
                return Err(KeyError::DuplicateKid(kid.clone()));
            }
        }
        self.entries.push(entry);
        Ok(self)
    }

    pub(crate) fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The index of the key a token with this `kid` header is checked against.
    pub(crate) fn select(&self, kid: Option<&str>) -> Option<usize> {
        match kid {
            Some(kid) => self
                .entries
                .iter()
                .position(|e| e.kid.as_deref() == Some(kid)),
            None if self.entries.len() == 1 => Some(0),
            None => None,
        }
    }

    pub(crate) fn signing_key(&self, kid: &str) -> Result<&KeyEntry, KeyError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.kid.as_deref() == Some(kid))
            .ok_or_else(|| KeyError::UnknownKid(kid.to_owned()))?;
        if entry.encoding.is_none() {
            return Err(KeyError::NotSigningKey(kid.to_owned()));
        }
        Ok(entry)
    }
}

fn usable_for_signatures(jwk: &Jwk) -> bool {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return false;
    }
    match &jwk.common.key_operations {
        Some(ops) => ops.iter().any(|op| matches!(op, KeyOperations::Verify)),
        None => true,
    }
}

/// The one algorithm a JWK is pinned to, or `None` when this crate cannot use it.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let declared = match jwk.common.key_algorithm {
        Some(alg) => Some(Algorithm::from_str(&alg.to_string()).ok()?),
        None => None,
    };
    let (family, default) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Algorithm::ES256),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Algorithm::ES384),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Algorithm::EdDSA),
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => (AlgorithmFamily::Hmac, Algorithm::HS256),
        _ => return None,
    };
    match declared {
        None => Some(default),
        // For EC keys the curve fixes the algorithm: ES384 on a P-256 key is a mismatch.
        Some(alg) if family == AlgorithmFamily::Ec => (alg == default).then_some(alg),
        Some(alg) => (alg.family() == family).then_some(alg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_mismatched_hmac_keys_are_refused() {
        let err = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, b"short")
            .unwrap_err();
        assert!(matches!(err, KeyError::WeakSecret { min: 32, .. }));
        let err = JwtKeySet::new()
            .with_hmac("k", Algorithm::RS256, &[7; 64])
            .unwrap_err();
        assert!(matches!(err, KeyError::AlgorithmMismatch { .. }));
        let err = JwtKeySet::new()
            .with_hmac("", Algorithm::HS256, &[7; 64])
            .unwrap_err();
        assert!(matches!(err, KeyError::EmptyKid));
    }

    #[test]
    fn duplicate_kid_is_refused() {
        let err = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, &[1; 32])
            .unwrap()
            .with_hmac("k", Algorithm::HS512, &[2; 64])
            .unwrap_err();
        assert!(matches!(err, KeyError::DuplicateKid(k) if k == "k"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let keys = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, b"SUPERSECRETSUPERSECRETSUPERSECRET")
            .unwrap();
        let debug = format!("{keys:?}");
        assert!(!debug.contains("SUPERSECRET"), "{debug}");
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn selection_by_kid() {
        let one = JwtKeySet::new()
            .with_hmac("a", Algorithm::HS256, &[1; 32])
            .unwrap();
        assert_eq!(
            one.select(None),
            Some(0),
            "a lone key accepts tokens without kid"
        );
        assert_eq!(one.select(Some("a")), Some(0));
        assert_eq!(one.select(Some("b")), None);
        let two = one.with_hmac("b", Algorithm::HS256, &[2; 32]).unwrap();
        assert_eq!(two.select(None), None, "no kid is ambiguous with two keys");
        assert_eq!(two.select(Some("b")), Some(1));
    }

    #[test]
    fn jwks_rejects_garbage_and_empty_sets() {
        assert!(matches!(
            JwtKeySet::from_jwks_json("not json"),
            Err(KeyError::InvalidJwks(_))
        ));
        assert!(matches!(
            JwtKeySet::from_jwks_json(r#"{"keys":[]}"#),
            Err(KeyError::EmptyJwks)
        ));
        // An encryption key and an unknown key type are skipped, leaving nothing.
        let json = r#"{"keys":[
            {"kty":"RSA","use":"enc","kid":"e","n":"AQAB","e":"AQAB"},
            {"kty":"XYZ","kid":"x"}
        ]}"#;
        assert!(matches!(
            JwtKeySet::from_jwks_json(json),
            Err(KeyError::EmptyJwks)
        ));
    }
}
