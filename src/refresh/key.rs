//! The store keys of refresh tokens, and the keyed subject tag that finds them.
//!
//! Every key of one subject shares one Redis Cluster hash tag, the subject tag `T`, so the
//! markers read at each rotation come back in one `MGET`, on a cluster too:
//!
//! ```text
//! rt:{T}:tok:<sha256(token)>   one refresh token's record (active or consumed)
//! rt:{T}:fam:<family>          the family was revoked (reuse detected)
//! rt:{T}:sid:<base64url(sid)>  the session was logged out: its families are ended
//! rt:{T}:sub                   "log out everywhere": cutoff, Unix milliseconds
//! ```
//!
//! `T` is the first 16 bytes of `HMAC-SHA256(secret, "tower-stateless/refresh/sub\0" ||
//! sub)` in base64url: without the server's secret, nobody can compute the tag of a
//! subject (so neither the store's keys nor a token can be matched to a user id by
//! hashing guesses).
//!
//! The token carries `T` masked with a pad derived from its own random part,
//! `T ⊕ HMAC-SHA256(secret, "tower-stateless/refresh/mask\0" || random)[..16]`: each token
//! shows a different, random-looking prefix, so two tokens of one user cannot be linked
//! either, while the server, holding the secret, recovers `T` from the token alone.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of a subject tag: 16 bytes in base64url.
pub(super) const TAG_LEN: usize = 22;

/// The shortest secret accepted: as long as the HMAC-SHA256 output.
pub(super) const MIN_SECRET_LEN: usize = 32;

/// The keyed functions of the tag: the subject's tag and each token's mask.
#[derive(Clone)]
pub(super) struct TagKey {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TagKey([redacted])")
    }
}

impl TagKey {
    /// `None` for a secret shorter than [`MIN_SECRET_LEN`].
    pub(super) fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < MIN_SECRET_LEN {
            return None;
        }
        Hmac::<Sha256>::new_from_slice(secret)
            .ok()
            .map(|mac| Self { mac })
    }

    fn prf(&self, label: &[u8], input: &[u8]) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(label);
        mac.update(input);
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    fn tag_bytes(&self, sub: &str) -> [u8; 16] {
        self.prf(b"tower-stateless/refresh/sub\0", sub.as_bytes())
    }

    /// The subject tag of `sub`, as it appears in store keys.
    pub(super) fn subject_tag(&self, sub: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.tag_bytes(sub))
    }

    /// The token prefix for `sub`: its tag masked with the pad of the token's `random` part.
    pub(super) fn masked_tag(&self, sub: &str, random: &str) -> String {
        let mut bytes = self.tag_bytes(sub);
        let pad = self.prf(b"tower-stateless/refresh/mask\0", random.as_bytes());
        bytes.iter_mut().zip(pad).for_each(|(b, p)| *b ^= p);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The subject tag hidden in a token's `masked` prefix; `None` when it does not decode.
    pub(super) fn unmask(&self, masked: &str, random: &str) -> Option<String> {
        let decoded = URL_SAFE_NO_PAD.decode(masked).ok()?;
        let mut bytes: [u8; 16] = decoded.try_into().ok()?;
        let pad = self.prf(b"tower-stateless/refresh/mask\0", random.as_bytes());
        bytes.iter_mut().zip(pad).for_each(|(b, p)| *b ^= p);
        Some(URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// SHA-256 of a whole refresh token, base64url: the only form of it the store sees.
pub(super) fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

pub(super) fn token(tag: &str, hash: &str) -> String {
    format!("rt:{{{tag}}}:tok:{hash}")
}

pub(super) fn family(tag: &str, family: &str) -> String {
    format!("rt:{{{tag}}}:fam:{family}")
}

pub(super) fn session(tag: &str, sid: &str) -> String {
    let mut key = format!("rt:{{{tag}}}:sid:");
    URL_SAFE_NO_PAD.encode_string(sid, &mut key);
    key
}

pub(super) fn subject(tag: &str) -> String {
    format!("rt:{{{tag}}}:sub")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::hash_tag;

    fn key() -> TagKey {
        TagKey::new(&[9; 32]).unwrap()
    }

    #[test]
    fn keys_of_one_subject_share_a_hash_tag() {
        let k = key();
        for sub in ["alice", "", "a}b{c", "üñí"] {
            let tag = k.subject_tag(sub);
            assert_eq!(tag.len(), TAG_LEN);
            let keys = [
                token(&tag, &token_hash("x")),
                family(&tag, "f"),
                session(&tag, "s}{"),
                subject(&tag),
            ];
            assert!(keys.iter().all(|k| hash_tag(k) == Some(tag.as_str())));
        }
        assert_ne!(k.subject_tag("a"), k.subject_tag("b"));
    }

    #[test]
    fn the_tag_depends_on_the_secret_and_unmasks() {
        let other = TagKey::new(&[8; 32]).unwrap();
        assert_ne!(key().subject_tag("alice"), other.subject_tag("alice"));
        let masked = key().masked_tag("alice", "r1");
        assert_eq!(masked.len(), TAG_LEN);
        assert_ne!(masked, key().subject_tag("alice"));
        assert_ne!(masked, key().masked_tag("alice", "r2"));
        assert_eq!(
            key().unmask(&masked, "r1").as_deref(),
            Some(key().subject_tag("alice").as_str())
        );
        assert!(TagKey::new(&[1; 31]).is_none());
    }

    #[test]
    fn session_ids_cannot_collide_with_other_keys() {
        let tag = key().subject_tag("alice");
        assert_ne!(session(&tag, "a:b"), session(&tag, "a"));
        assert!(!session(&tag, "x:fam:y").contains(":fam:"));
    }
}
