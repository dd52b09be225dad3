//! The store keys of refresh tokens.
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
//! `T` is the first 16 bytes of `SHA-256("tower-stateless/refresh/sub\0" || sub)` in
//! base64url. The refresh token carries `T`, so the manager finds the right slot from the
//! token alone, without putting the subject itself in the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Length of a subject tag: 16 bytes in base64url.
pub(super) const TAG_LEN: usize = 22;

/// The subject tag of `sub`.
pub(super) fn subject_tag(sub: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"tower-stateless/refresh/sub\0")
        .chain_update(sub.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
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

    #[test]
    fn keys_of_one_subject_share_a_hash_tag() {
        for sub in ["alice", "", "a}b{c", "üñí"] {
            let tag = subject_tag(sub);
            assert_eq!(tag.len(), TAG_LEN);
            let keys = [
                token(&tag, &token_hash("x")),
                family(&tag, "f"),
                session(&tag, "s}{"),
                subject(&tag),
            ];
            assert!(keys.iter().all(|k| hash_tag(k) == Some(tag.as_str())));
        }
        assert_ne!(subject_tag("a"), subject_tag("b"));
    }

    #[test]
    fn session_ids_cannot_collide_with_other_keys() {
        let tag = subject_tag("alice");
        assert_ne!(session(&tag, "a:b"), session(&tag, "a"));
        assert!(!session(&tag, "x:fam:y").contains(":fam:"));
    }
}
