//! The key set: which key verifies (and signs) which token, each pinned to one algorithm.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse,
};
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
    /// An RSA key with a modulus shorter than 2048 bits (RFC 7518 §3.3).
    #[error("an RSA key must have at least 2048 bits, this one has {bits}")]
    WeakRsaKey {
        /// The modulus length in bits.
        bits: usize,
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
    /// A key was added to a key set whose keys come from a remote source (they would be
    /// replaced by the next refresh): add it to another set and bind the remote keys with
    /// [`JwtKeySet::with_issuer`].
    #[error("keys cannot be added to a remote key set")]
    RemoteKeySet,
    /// An issuer that cannot be bound with [`JwtKeySet::with_issuer`]: empty, bound
    /// twice, or its key set has bound issuers of its own.
    #[error("issuer {0:?} is empty, bound twice or its keys have issuers of their own")]
    InvalidIssuer(String),
    /// A private key whose derived public key does not verify its own signature.
    #[error("the key failed its sign-and-verify self-test")]
    SelfTestFailed,
    /// A JWK's `x5c` certificate could not be read: not standard base64, not a DER X.509
    /// certificate, or a public key that does not decode.
    #[error("unreadable x5c certificate: {reason}")]
    InvalidCertificate {
        /// What is wrong with it.
        reason: &'static str,
        /// The decoding error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
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

/// What a remote key source wants to hear from the request path. Implementations must
/// return at once: no lock held for long, no I/O (they wake a background task).
pub(crate) trait RefreshHook: Send + Sync + fmt::Debug {
    /// A token named a `kid` the table does not hold.
    fn unknown_kid(&self);
    /// The table is gone (every key set holding it was dropped).
    fn closed(&self);
}

/// A snapshot of keys that readers load without a lock, and that a remote source replaces
/// as a whole.
pub(crate) struct KeyTable {
    current: ArcSwap<Vec<Arc<KeyEntry>>>,
    refresh: Option<Arc<dyn RefreshHook>>,
}

impl KeyTable {
    fn fixed(entries: Vec<Arc<KeyEntry>>) -> Self {
        Self {
            current: ArcSwap::from_pointee(entries),
            refresh: None,
        }
    }

    /// An empty table that `hook` fills (with [`KeyTable::publish`]) and is told about
    /// unknown key ids.
    #[cfg_attr(not(feature = "oidc"), allow(dead_code))]
    pub(crate) fn remote(hook: Arc<dyn RefreshHook>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Vec::new()),
            refresh: Some(hook),
        }
    }

    /// Replaces the keys; requests already verifying keep the snapshot they loaded.
    #[cfg_attr(not(feature = "oidc"), allow(dead_code))]
    pub(crate) fn publish(&self, entries: Vec<KeyEntry>) {
        self.current
            .store(Arc::new(entries.into_iter().map(Arc::new).collect()));
    }

    /// The number of keys now in the table.
    #[cfg_attr(not(feature = "oidc"), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.current.load().len()
    }

    fn snapshot(&self) -> Arc<Vec<Arc<KeyEntry>>> {
        self.current.load_full()
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        if let Some(hook) = &self.refresh {
            hook.closed();
        }
    }
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTable")
            .field("keys", &*self.current.load())
            .field("remote", &self.refresh)
            .finish()
    }
}

/// Keys trusted only for tokens whose `iss` is `issuer`.
#[derive(Clone, Debug)]
pub(crate) struct BoundIssuer {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    table: Arc<KeyTable>,
}

/// The key a token is checked against, and which validation rules apply to it: slot `0`
/// is the layer's own issuer and audience, slot `i + 1` the `i`-th bound issuer's.
#[derive(Debug)]
pub(crate) struct ResolvedKey {
    pub(crate) entry: Arc<KeyEntry>,
    pub(crate) slot: usize,
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
/// # Keys that change, and several issuers
///
/// A key set is a handle on a shared table that verifiers read without a lock. With the
/// `oidc` feature,
#[cfg_attr(feature = "oidc", doc = " [`RemoteJwks`](crate::oidc::RemoteJwks)")]
#[cfg_attr(not(feature = "oidc"), doc = " `RemoteJwks`")]
/// makes a key set whose table is refreshed in the background from an identity
/// provider's JWKS; clones of it (and the layers built from it) see every refresh.
///
/// [`JwtKeySet::with_issuer`] binds another key set to one issuer: a token whose
/// (unverified) `iss` names that issuer is checked only against those keys and that
/// issuer's audiences, before any other key is tried; every other token is checked only
/// against this set's own keys, under the layer's issuer and audience. So a token of one
/// issuer never verifies with another issuer's keys.
///
/// Debug output names key ids and algorithms only; key material prints as `[redacted]`.
#[derive(Clone)]
pub struct JwtKeySet {
    own: Arc<KeyTable>,
    issuers: Vec<BoundIssuer>,
}

impl Default for JwtKeySet {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for JwtKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeySet")
            .field("keys", &*self.own.current.load())
            .field("remote", &self.own.refresh.is_some())
            .field("issuers", &self.issuers)
            .finish()
    }
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
            own: Arc::new(KeyTable::fixed(Vec::new())),
            issuers: Vec::new(),
        }
    }

    /// A key set over a table a remote source fills.
    #[cfg_attr(not(feature = "oidc"), allow(dead_code))]
    pub(crate) fn from_table(table: Arc<KeyTable>) -> Self {
        install_crypto_provider();
        Self {
            own: table,
            issuers: Vec::new(),
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
    /// the algorithm of their curve (`ES256` for P-256, `ES384` for P-384) and OKP Ed25519
    /// keys `EdDSA`. An HMAC (`oct`) key needs an explicit `HS*` `alg`: its algorithm is
    /// never guessed. Keys marked for encryption (`"use":"enc"`, or `key_ops` without
    /// `verify`) and keys this crate cannot use (unknown `kty`, curve or `alg`, P-521, an
    /// `alg` that does not fit the key) are skipped with a warning. A key that claims a
    /// usable algorithm but has broken material is an error, and so is a document that
    /// leaves no key at all.
    ///
    /// With the `oidc` feature, an RSA, EC or OKP key given only as an `x5c` certificate
    /// chain (no `n`/`e`, `x`/`y`) is the public key of its first certificate, then
    /// checked as if given by its members (RSA modulus size, `alg`, `crv`); the chain is
    /// not validated (issuer, dates). A certificate that does not decode is an error; one
    /// whose key is not of the JWK's `kty` or `crv` is skipped. `x5c` next to the key's
    /// own members is ignored: the key is `n`/`e` (or `x`/`y`). Without `oidc`, an
    /// `x5c`-only key is skipped with a warning.
    pub fn with_jwks_json(mut self, json: &str) -> Result<Self, KeyError> {
        for entry in parse_jwks(json, &JwksRules::STATIC)? {
            self = self.push(entry)?;
        }
        Ok(self)
    }

    /// Trusts tokens whose `iss` claim is `issuer`, verified only with `keys` (e.g. an
    /// identity provider's
    #[cfg_attr(feature = "oidc", doc = " [`RemoteJwks`](crate::oidc::RemoteJwks)")]
    #[cfg_attr(not(feature = "oidc"), doc = " `RemoteJwks`")]
    /// keys, with the `oidc` feature), and requiring their `aud` to name one of
    /// `audiences` (none: a token carrying `aud` is refused, as for the layer's own
    /// tokens).
    ///
    /// The token's `iss`, read from its unverified payload only to pick the keys, selects
    /// the issuer before any key is tried; a token of another issuer is never checked
    /// against `keys`, and a token of `issuer` never against this set's own keys. The
    /// layer's leeway applies; its issuer and audience apply to the set's own keys only.
    ///
    /// Refused: an empty or already bound issuer, and a `keys` that has bound issuers of
    /// its own.
    pub fn with_issuer<A>(
        mut self,
        issuer: impl Into<String>,
        audiences: A,
        keys: JwtKeySet,
    ) -> Result<Self, KeyError>
    where
        A: IntoIterator,
        A::Item: Into<String>,
    {
        let issuer = issuer.into();
        if issuer.is_empty() {
            return Err(KeyError::InvalidIssuer(issuer));
        }
        if !keys.issuers.is_empty() || self.issuers.iter().any(|b| b.issuer == issuer) {
            return Err(KeyError::InvalidIssuer(issuer));
        }
        self.issuers.push(BoundIssuer {
            issuer,
            audiences: audiences.into_iter().map(Into::into).collect(),
            table: keys.own,
        });
        Ok(self)
    }

    /// The number of keys in the set now, those bound to issuers included.
    pub fn len(&self) -> usize {
        self.own.current.load().len()
            + self
                .issuers
                .iter()
                .map(|b| b.table.current.load().len())
                .sum::<usize>()
    }

    /// Whether the set holds no key now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of the keys now in the set, in the order they were added (`None` for a
    /// JWKS key without `kid`), then those of bound issuers. A JWKS key without `alg`
    /// that a remote source accepts for several algorithms is listed once per algorithm.
    pub fn kids(&self) -> impl Iterator<Item = Option<String>> {
        let tables = std::iter::once(self.own.snapshot())
            .chain(self.issuers.iter().map(|b| b.table.snapshot()))
            .collect::<Vec<_>>();
        tables
            .into_iter()
            .flat_map(|t| t.iter().map(|e| e.kid.clone()).collect::<Vec<_>>())
    }

    fn push(self, entry: KeyEntry) -> Result<Self, KeyError> {
        if self.own.refresh.is_some() {
            return Err(KeyError::RemoteKeySet);
        }
        if let Some(kid) = &entry.kid {
            if kid.is_empty() {
                return Err(KeyError::EmptyKid);
            }
        }
        let current = self.own.snapshot();
        if let Some(kid) = &entry.kid {
            if current.iter().any(|e| e.kid.as_ref() == Some(kid)) {
                return Err(KeyError::DuplicateKid(kid.clone()));
            }
        }
        let mut entries = Vec::clone(&current);
        entries.push(Arc::new(entry));
        Ok(Self {
            own: Arc::new(KeyTable::fixed(entries)),
            issuers: self.issuers,
        })
    }

    /// The table of the set's own keys (a remote source's, for a remote set).
    #[cfg_attr(not(feature = "oidc"), allow(dead_code))]
    pub(crate) fn own_table(&self) -> &KeyTable {
        &self.own
    }

    /// The issuers bound with [`JwtKeySet::with_issuer`], in slot order (slot `i + 1`).
    pub(crate) fn bound_issuers(&self) -> &[BoundIssuer] {
        &self.issuers
    }

    /// The key a token with this header is checked against: the bound issuer its `iss`
    /// names, or else the set's own keys; within those, the key named by `kid` (a token
    /// without `kid` only when they are exactly one key) pinned to the header's `alg`.
    ///
    /// Never blocks: an unknown `kid` in a remote table only wakes its refresher.
    #[cfg(test)]
    pub(crate) fn resolve(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Option<ResolvedKey> {
        let slot = self.issuer_slot(token);
        self.resolve_in(slot, header.kid.as_deref(), header.alg)
    }

    /// As [`resolve`](Self::resolve), for a token whose unverified `iss` the caller has
    /// already read: `issuer` is [`issuer_index`](Self::issuer_index) of it.
    pub(crate) fn resolve_in(
        &self,
        issuer: Option<usize>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Option<ResolvedKey> {
        let (slot, table) = match issuer {
            Some(i) => (i + 1, &self.issuers.get(i)?.table),
            None => (0, &self.own),
        };
        let entries = table.snapshot();
        let found = select(&entries, kid, alg);
        if found.is_none() {
            if let (Some(kid), Some(hook)) = (kid, &table.refresh) {
                if !entries.iter().any(|e| e.kid.as_deref() == Some(kid)) {
                    hook.unknown_kid();
                }
            }
        }
        found.map(|entry| ResolvedKey { entry, slot })
    }

    /// The index of the bound issuer the token's unverified `iss` names.
    #[cfg(test)]
    fn issuer_slot(&self, token: &str) -> Option<usize> {
        if self.issuers.is_empty() {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let iss = serde_json::from_slice::<Issuer>(&bytes).ok()?.iss?;
        self.issuer_index(&iss)
    }

    /// The index of the bound issuer named `iss`.
    pub(crate) fn issuer_index(&self, iss: &str) -> Option<usize> {
        self.issuers.iter().position(|b| b.issuer == iss)
    }

    pub(crate) fn signing_key(&self, kid: &str) -> Result<KeyEntry, KeyError> {
        let entries = self.own.snapshot();
        let entry = entries
            .iter()
            .find(|e| e.kid.as_deref() == Some(kid))
            .ok_or_else(|| KeyError::UnknownKid(kid.to_owned()))?;
        if entry.encoding.is_none() {
            return Err(KeyError::NotSigningKey(kid.to_owned()));
        }
        Ok(KeyEntry::clone(entry))
    }
}

/// The entry for `kid` pinned to `alg`. Without `kid`, only when the entries are one key
/// (a JWK without `alg` may be pinned to several algorithms under one `kid`).
fn select(entries: &[Arc<KeyEntry>], kid: Option<&str>, alg: Algorithm) -> Option<Arc<KeyEntry>> {
    let found = match kid {
        Some(kid) => entries
            .iter()
            .find(|e| e.kid.as_deref() == Some(kid) && e.alg == alg),
        None => {
            let first = entries.first()?;
            let one_key = entries.iter().all(|e| e.kid == first.kid)
                && (first.kid.is_some() || entries.len() == 1);
            if !one_key {
                return None;
            }
            entries.iter().find(|e| e.alg == alg)
        }
    };
    found.cloned()
}

/// How a JWKS document is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JwksRules<'a> {
    /// `None`: any algorithm a key declares, RSA keys without `alg` pinned to `RS256`.
    /// `Some`: only these; an RSA key without `alg` is pinned to each RSA algorithm here.
    pub(crate) algorithms: Option<&'a [Algorithm]>,
    /// Whether `oct` (HMAC) keys are accepted; never from a remote document, where a
    /// published secret would let anyone sign.
    pub(crate) allow_hmac: bool,
    /// Whether a broken key or a duplicate `kid` fails the document (a static document,
    /// fixed at deploy time) or is skipped with a warning (a provider's, where one odd
    /// key must not hide the good ones).
    pub(crate) strict: bool,
}

impl JwksRules<'_> {
    const STATIC: JwksRules<'static> = JwksRules {
        algorithms: None,
        allow_hmac: true,
        strict: true,
    };
}

/// The usable signature keys of a JWKS document.
pub(crate) fn parse_jwks(json: &str, rules: &JwksRules<'_>) -> Result<Vec<KeyEntry>, KeyError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    install_crypto_provider();
    let document: Document = serde_json::from_str(json).map_err(KeyError::InvalidJwks)?;
    let mut entries: Vec<KeyEntry> = Vec::new();
    for value in document.keys {
        #[cfg(feature = "oidc")]
        let value = match x5c::expand(value, rules) {
            Ok(Some(value)) => value,
            Ok(None) => continue,
            Err(error) => return Err(error),
        };
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::warn!(%error, "skipping a JWK that does not parse");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        if !usable_for_signatures(&jwk.common) {
            tracing::debug!(?kid, "skipping a JWK not meant for signatures");
            continue;
        }
        let algs = jwk_algorithms(&jwk, rules);
        if algs.is_empty() {
            tracing::warn!(
                ?kid,
                "skipping a JWK with an unsupported or not allowed key type, curve or alg"
            );
            continue;
        }
        match jwk_entries(&jwk, &algs, &entries, rules) {
            Ok(new) => entries.extend(new),
            Err(error) if rules.strict => return Err(error),
            Err(error) => {
                tracing::warn!(?kid, %error, "skipping a JWK that cannot be used");
            }
        }
    }
    if entries.is_empty() {
        return Err(KeyError::EmptyJwks);
    }
    Ok(entries)
}

fn jwk_entries(
    jwk: &Jwk,
    algs: &[Algorithm],
    existing: &[KeyEntry],
    rules: &JwksRules<'_>,
) -> Result<Vec<KeyEntry>, KeyError> {
    let kid = jwk.common.key_id.clone();
    if let Some(kid) = &kid {
        if kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        if existing.iter().any(|e| e.kid.as_ref() == Some(kid)) {
            return Err(KeyError::DuplicateKid(kid.clone()));
        }
    } else if !rules.strict && existing.iter().any(|e| e.kid.is_none()) {
        // Two keys without `kid` could never be told apart.
        return Err(KeyError::EmptyKid);
    }
    if let AlgorithmParameters::RSA(params) = &jwk.algorithm {
        let bits = rsa_modulus_bits(&params.n);
        if bits < 2048 {
            return Err(KeyError::WeakRsaKey { bits });
        }
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(KeyError::InvalidKey)?;
    let mut out = Vec::with_capacity(algs.len());
    for &alg in algs {
        if alg.family() == AlgorithmFamily::Hmac {
            let min = min_hmac_len(alg);
            if decoding.try_get_as_bytes().map_or(0, <[u8]>::len) < min {
                return Err(KeyError::WeakSecret { alg, min });
            }
        }
        probe_decoding(&decoding, alg)?;
        out.push(KeyEntry {
            kid: kid.clone(),
            alg,
            decoding: decoding.clone(),
            encoding: None,
        });
    }
    Ok(out)
}

/// The bit length of a base64url RSA modulus (0 when it does not decode).
fn rsa_modulus_bits(n: &str) -> usize {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')) else {
        return 0;
    };
    let mut significant = bytes.iter().skip_while(|&&b| b == 0);
    match significant.next() {
        Some(top) => (significant.count() + 1) * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

fn usable_for_signatures(common: &CommonParameters) -> bool {
    if matches!(common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return false;
    }
    match &common.key_operations {
        Some(ops) => ops.iter().any(|op| matches!(op, KeyOperations::Verify)),
        None => true,
    }
}

/// The algorithms a JWK is pinned to (usually one), or none when it cannot be used.
fn jwk_algorithms(jwk: &Jwk, rules: &JwksRules<'_>) -> Vec<Algorithm> {
    let declared = match jwk.common.key_algorithm {
        Some(alg) => match Algorithm::from_str(&alg.to_string()) {
            Ok(alg) => Some(alg),
            Err(_) => return Vec::new(),
        },
        None => None,
    };
    let (family, default) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, Some(Algorithm::RS256)),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Some(Algorithm::EdDSA)),
            _ => return Vec::new(),
        },
        // Never guess HMAC: an `oct` key needs its `alg`.
        AlgorithmParameters::OctetKey(_) if rules.allow_hmac => (AlgorithmFamily::Hmac, None),
        _ => return Vec::new(),
    };
    let allowed = |alg: &Algorithm| rules.algorithms.is_none_or(|list| list.contains(alg));
    match declared {
        // For EC keys the curve fixes the algorithm: ES384 on a P-256 key is a mismatch.
        Some(alg) if family == AlgorithmFamily::Ec && Some(alg) != default => Vec::new(),
        Some(alg) if alg.family() != family => Vec::new(),
        Some(alg) => [alg].into_iter().filter(allowed).collect(),
        None => match (family, rules.algorithms) {
            // An RSA key without `alg`: each configured RSA algorithm, RS256 otherwise.
            (AlgorithmFamily::Rsa, Some(list)) => list
                .iter()
                .copied()
                .filter(|a| a.family() == AlgorithmFamily::Rsa)
                .collect(),
            _ => default.into_iter().filter(allowed).collect(),
        },
    }
}

/// Keys published only as an `x5c` certificate chain (RFC 7517 §4.7), as some providers
/// do: the public key of the first certificate becomes the JWK's own members (`n`/`e`, or
/// `crv`/`x`/`y`), so that every check of a JWK given by its members applies unchanged.
///
/// The chain is not validated (issuer, expiry): the document's transport vouches for its
/// keys, not the certificate, and a provider's key stays valid past a certificate date.
#[cfg(feature = "oidc")]
mod x5c {
    use base64::alphabet::STANDARD;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
    use base64::engine::DecodePaddingMode;
    use base64::Engine as _;
    use serde::Deserialize as _;
    use serde_json::{Map, Value};
    use x509_cert::der::asn1::ObjectIdentifier as Oid;
    use x509_cert::der::Decode as _;
    use x509_cert::Certificate;

    use super::{usable_for_signatures, CommonParameters, JwksRules, KeyError};

    /// `x5c` is standard base64 (not base64url); padding is not always kept.
    const BASE64: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
    /// Named curves, with their JWK `crv` and coordinate length. P-521 is read so that it
    /// is skipped as an unsupported curve, as when given by its members.
    const CURVES: [(Oid, &str, usize); 3] = [
        (Oid::new_unwrap("1.2.840.10045.3.1.7"), "P-256", 32),
        (Oid::new_unwrap("1.3.132.0.34"), "P-384", 48),
        (Oid::new_unwrap("1.3.132.0.35"), "P-521", 66),
    ];

    /// The JWK to parse: `value` itself, or with its members taken from `x5c[0]` when it
    /// has none of its own. `None`: skip it (not for signatures, or its certificate's key
    /// does not fit its `kty`/`crv`). An unreadable certificate is an error in a strict
    /// document and skipped in another.
    pub(super) fn expand(
        mut value: Value,
        rules: &JwksRules<'_>,
    ) -> Result<Option<Value>, KeyError> {
        let Some(jwk) = value.as_object_mut().filter(|jwk| needs_certificate(jwk)) else {
            return Ok(Some(value));
        };
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        // An encryption key is skipped before its certificate is looked at.
        let common = CommonParameters::deserialize(&*jwk);
        if common.is_ok_and(|common| !usable_for_signatures(&common)) {
            tracing::debug!(?kid, "skipping a JWK not meant for signatures");
            return Ok(None);
        }
        match fill_from_certificate(jwk) {
            Ok(Ok(())) => Ok(Some(value)),
            Ok(Err(mismatch)) => {
                tracing::warn!(
                    ?kid,
                    mismatch,
                    "skipping a JWK whose x5c key does not fit it"
                );
                Ok(None)
            }
            Err(error) if rules.strict => Err(error),
            Err(error) => {
                tracing::warn!(?kid, %error, "skipping a JWK whose x5c cannot be read");
                Ok(None)
            }
        }
    }

    /// A JWK of a key type read from certificates, with an `x5c` and no key member.
    fn needs_certificate(jwk: &Map<String, Value>) -> bool {
        let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => &["n", "e"],
            Some("EC") => &["x", "y"],
            Some("OKP") => &["x"],
            _ => return false,
        };
        jwk.contains_key("x5c") && !members.iter().any(|m| jwk.contains_key(*m))
    }

    fn invalid(
        reason: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> KeyError {
        KeyError::InvalidCertificate {
            reason,
            source: Some(Box::new(source)),
        }
    }

    fn unreadable(reason: &'static str) -> KeyError {
        KeyError::InvalidCertificate {
            reason,
            source: None,
        }
    }

    /// Sets the JWK's members from the public key of `x5c[0]`. The inner `Err` names
    /// why the key does not fit the JWK (another key type or curve, or one not read).
    fn fill_from_certificate(
        jwk: &mut Map<String, Value>,
    ) -> Result<Result<(), &'static str>, KeyError> {
        let first = jwk
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|chain| chain.first())
            .and_then(Value::as_str)
            .ok_or_else(|| unreadable("x5c is not a non-empty array of strings"))?;
        let der = BASE64
            .decode(first)
            .map_err(|e| invalid("x5c[0] is not standard base64", e))?;
        let certificate =
            Certificate::from_der(&der).map_err(|e| invalid("x5c[0] is not a certificate", e))?;
        let spki = certificate.tbs_certificate.subject_public_key_info;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| unreadable("the public key is not a whole number of bytes"))?;
        let b64 = |bytes: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(bytes));
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
        match (kty, spki.algorithm.oid) {
            ("RSA", RSA_ENCRYPTION) => {
                let rsa = pkcs1::RsaPublicKey::from_der(key)
                    .map_err(|e| invalid("the RSA public key does not decode", e))?;
                jwk.insert("n".to_owned(), b64(rsa.modulus.as_bytes()));
                jwk.insert("e".to_owned(), b64(rsa.public_exponent.as_bytes()));
            }
            ("EC", EC_PUBLIC_KEY) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|params| params.decode_as::<Oid>().ok());
                let Some(&(_, crv, len)) = CURVES.iter().find(|(oid, ..)| Some(*oid) == curve)
                else {
                    return Ok(Err("the certificate's EC curve is not supported"));
                };
                if jwk.get("crv").is_some_and(|given| given != crv) {
                    return Ok(Err("the certificate's curve is not the JWK's crv"));
                }
                // Only the uncompressed form 0x04 || x || y.
                let point = match key.split_first() {
                    Some((4, xy)) if xy.len() == 2 * len => xy,
                    _ => return Err(unreadable("the EC point is not uncompressed")),
                };
                let (x, y) = point.split_at(len);
                jwk.insert("crv".to_owned(), crv.into());
                jwk.insert("x".to_owned(), b64(x));
                jwk.insert("y".to_owned(), b64(y));
            }
            ("OKP", ED25519) => {
                if jwk.get("crv").is_some_and(|given| given != "Ed25519") {
                    return Ok(Err("the certificate's curve is not the JWK's crv"));
                }
                if key.len() != 32 {
                    return Err(unreadable("the Ed25519 key is not 32 bytes"));
                }
                jwk.insert("crv".to_owned(), "Ed25519".into());
                jwk.insert("x".to_owned(), b64(key));
            }
            _ => return Ok(Err("the certificate's key is not of the JWK's kty")),
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Header;

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
        // The payload `{}` names no issuer.
        let kid_of = |keys: &JwtKeySet, kid: Option<&str>| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            keys.resolve("e30.e30.AA", &header)
                .map(|r| r.entry.kid.clone())
        };
        let one = JwtKeySet::new()
            .with_hmac("a", Algorithm::HS256, &[1; 32])
            .unwrap();
        assert_eq!(
            kid_of(&one, None),
            Some(Some("a".to_owned())),
            "a lone key accepts tokens without kid"
        );
        assert_eq!(kid_of(&one, Some("a")), Some(Some("a".to_owned())));
        assert_eq!(kid_of(&one, Some("b")), None);
        let two = one.with_hmac("b", Algorithm::HS256, &[2; 32]).unwrap();
        assert_eq!(
            kid_of(&two, None),
            None,
            "no kid is ambiguous with two keys"
        );
        assert_eq!(kid_of(&two, Some("b")), Some(Some("b".to_owned())));
    }

    fn token_header(kid: Option<&str>, alg: Algorithm) -> Header {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        header
    }

    /// A token whose payload is `claims` (the signature is not checked by `resolve`).
    fn unsigned(claims: serde_json::Value) -> String {
        format!("e30.{}.AA", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn bound_issuers_are_picked_by_iss_before_any_key() {
        let theirs = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, &[2; 32])
            .unwrap();
        let keys = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, &[1; 32])
            .unwrap()
            .with_issuer("https://idp.test", ["api"], theirs.clone())
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.bound_issuers()[0].audiences, ["api"]);
        let header = token_header(Some("k"), Algorithm::HS256);
        let slot = |claims| keys.resolve(&unsigned(claims), &header).map(|r| r.slot);
        assert_eq!(
            slot(serde_json::json!({"iss": "https://idp.test"})),
            Some(1)
        );
        assert_eq!(
            slot(serde_json::json!({"iss": "https://other.test"})),
            Some(0)
        );
        assert_eq!(slot(serde_json::json!({})), Some(0));
        assert_eq!(slot(serde_json::json!({"iss": 7})), Some(0));
        // Not base64 or not JSON: the own keys, which the signature check then decides.
        assert_eq!(keys.resolve("e30.!!!.AA", &header).map(|r| r.slot), Some(0));

        for bad in [
            keys.clone()
                .with_issuer("https://idp.test", ["x"], theirs.clone()),
            keys.clone().with_issuer("", ["x"], theirs.clone()),
            JwtKeySet::new().with_issuer("https://a.test", ["x"], keys.clone()),
        ] {
            assert!(matches!(bad, Err(KeyError::InvalidIssuer(_))));
        }
    }

    #[test]
    fn remote_rules_never_take_hmac_and_pin_alg_less_rsa_to_configured_algorithms() {
        // Jwk::from_encoding_key needs the provider chosen when both backends are on.
        install_crypto_provider();
        let rsa =
            EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/jwt/rsa1-private.pem"))
                .unwrap();
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap()).unwrap();
        jwk["kid"] = "r".into();
        jwk.as_object_mut().unwrap().remove("alg");
        let oct = serde_json::json!({"kty":"oct","kid":"o","alg":"HS256","k":URL_SAFE_NO_PAD.encode([7; 32])});
        let doc = serde_json::json!({"keys": [jwk, oct]}).to_string();
        let remote = JwksRules {
            algorithms: Some(&[Algorithm::RS256, Algorithm::PS384, Algorithm::ES256]),
            allow_hmac: false,
            strict: false,
        };
        let entries = parse_jwks(&doc, &remote).unwrap();
        let pinned: Vec<_> = entries.iter().map(|e| (e.kid.as_deref(), e.alg)).collect();
        assert_eq!(
            pinned,
            [(Some("r"), Algorithm::RS256), (Some("r"), Algorithm::PS384)]
        );
        // One key under one kid: a token without kid may use it, for either algorithm.
        let table: Vec<_> = entries.into_iter().map(Arc::new).collect();
        assert!(select(&table, None, Algorithm::PS384).is_some());
        assert!(select(&table, None, Algorithm::RS512).is_none());

        // A static document keeps the oct key (its alg is explicit), and the RSA key is RS256.
        let entries = parse_jwks(&doc, &JwksRules::STATIC).unwrap();
        let pinned: Vec<_> = entries.iter().map(|e| (e.kid.as_deref(), e.alg)).collect();
        assert_eq!(
            pinned,
            [(Some("r"), Algorithm::RS256), (Some("o"), Algorithm::HS256)]
        );
        // An oct key without alg is never guessed to be HS256.
        let doc = serde_json::json!({"keys": [{"kty":"oct","kid":"o","k":URL_SAFE_NO_PAD.encode([7; 32])}]});
        assert!(matches!(
            JwtKeySet::from_jwks_json(&doc.to_string()),
            Err(KeyError::EmptyJwks)
        ));
    }

    #[cfg(feature = "oidc")]
    #[test]
    fn x5c_certificates_fill_the_members_or_say_why_not() {
        install_crypto_provider();
        use base64::engine::general_purpose::STANDARD;
        use serde_json::json;
        let der =
            |pem: &str| -> String { pem.lines().filter(|l| !l.starts_with("-----")).collect() };
        let rsa = der(include_str!("../../tests/fixtures/jwt/rsa1-cert.pem"));
        let ec = der(include_str!("../../tests/fixtures/jwt/ec256-cert.pem"));
        let compressed = der(include_str!(
            "../../tests/fixtures/jwt/ec256-compressed-cert.pem"
        ));
        let remote = JwksRules {
            algorithms: None,
            allow_hmac: false,
            strict: false,
        };
        let expand = |jwk: serde_json::Value| x5c::expand(jwk, &JwksRules::STATIC);

        // The members come from the certificate's key: those of rsa1's public JWK.
        let public =
            EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/jwt/rsa1-private.pem"))
                .unwrap();
        let expected =
            serde_json::to_value(Jwk::from_encoding_key(&public, Algorithm::RS256).unwrap())
                .unwrap();
        let filled = expand(json!({"kty":"RSA","x5c":[rsa]})).unwrap().unwrap();
        assert_eq!(
            (&filled["n"], &filled["e"]),
            (&expected["n"], &expected["e"])
        );
        // Unpadded base64 is accepted too.
        let unpadded = expand(json!({"kty":"RSA","x5c":[rsa.trim_end_matches('=')]}));
        assert_eq!(unpadded.unwrap().unwrap()["n"], expected["n"]);
        let filled = expand(json!({"kty":"EC","x5c":[ec]})).unwrap().unwrap();
        assert_eq!(filled["crv"], "P-256");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(filled["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );

        // Not read: another key type or curve (skipped), and not for signatures.
        for skipped in [
            json!({"kty":"RSA","x5c":[ec]}),
            json!({"kty":"EC","x5c":[rsa]}),
            json!({"kty":"OKP","x5c":[ec]}),
            json!({"kty":"EC","crv":"P-384","x5c":[ec]}),
            json!({"kty":"RSA","use":"enc","x5c":["!!!"]}),
            json!({"kty":"RSA","key_ops":["encrypt"],"x5c":["!!!"]}),
        ] {
            assert!(matches!(expand(skipped.clone()), Ok(None)), "{skipped}");
        }
        // Left as they are: members of its own, no x5c, another kty.
        for kept in [
            json!({"kty":"RSA","n":"AQAB","x5c":[ec]}),
            json!({"kty":"RSA","e":"AQAB","x5c":[ec]}),
            json!({"kty":"RSA"}),
            json!({"kty":"oct","x5c":[ec]}),
            json!("not an object"),
        ] {
            assert_eq!(expand(kept.clone()).unwrap().as_ref(), Some(&kept));
        }
        // Certificates whose key bytes are broken (their signature is never checked): the
        // RSA key's SEQUENCE made a SET, the Ed25519 key given a stray unused bit.
        let patch = |cert: &str, from: &[u8], to: &[u8]| {
            let mut der = STANDARD.decode(cert).unwrap();
            let at = der.windows(from.len()).position(|w| w == from).unwrap();
            der[at..at + to.len()].copy_from_slice(to);
            STANDARD.encode(der)
        };
        let rsa_set = patch(
            &rsa,
            &[3, 0x82, 1, 0x0f, 0, 0x30],
            &[3, 0x82, 1, 0x0f, 0, 0x31],
        );
        let ed = der(include_str!("../../tests/fixtures/jwt/ed25519-cert.pem"));
        let filled = expand(json!({"kty":"OKP","x5c":[ed]})).unwrap().unwrap();
        assert_eq!(filled["crv"], "Ed25519");
        let ed_bit = patch(
            &ed,
            &[0x2b, 0x65, 0x70, 3, 0x21, 0],
            &[0x2b, 0x65, 0x70, 3, 0x21, 1],
        );

        // Unreadable: an error in a static document, skipped in a provider's.
        for (bad, reason) in [
            (
                json!({"kty":"RSA","x5c":[rsa_set]}),
                "the RSA public key does not decode",
            ),
            (
                json!({"kty":"OKP","x5c":[ed_bit]}),
                "the public key is not a whole number of bytes",
            ),
            (
                json!({"kty":"RSA","x5c":"MIIB"}),
                "x5c is not a non-empty array of strings",
            ),
            (
                json!({"kty":"RSA","x5c":[]}),
                "x5c is not a non-empty array of strings",
            ),
            (
                json!({"kty":"RSA","x5c":[7]}),
                "x5c is not a non-empty array of strings",
            ),
            (
                json!({"kty":"RSA","x5c":["!!!"]}),
                "x5c[0] is not standard base64",
            ),
            (
                json!({"kty":"RSA","x5c":[STANDARD.encode("hello")]}),
                "x5c[0] is not a certificate",
            ),
            (
                json!({"kty":"EC","x5c":[compressed]}),
                "the EC point is not uncompressed",
            ),
        ] {
            match expand(bad.clone()) {
                Err(KeyError::InvalidCertificate { reason: r, .. }) => assert_eq!(r, reason),
                other => panic!("{bad}: {other:?}"),
            }
            assert!(
                matches!(x5c::expand(bad.clone(), &remote), Ok(None)),
                "{bad}"
            );
        }
    }

    #[test]
    fn rsa_modulus_length() {
        assert_eq!(rsa_modulus_bits("AA"), 0);
        assert_eq!(rsa_modulus_bits("AQAB"), 17);
        assert_eq!(rsa_modulus_bits(&URL_SAFE_NO_PAD.encode([0, 0x80, 0])), 16);
        assert_eq!(rsa_modulus_bits("!"), 0);
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
