//! The store keys of the revocation list.
//!
//! All keys of one subject share one Redis Cluster hash tag, so the check reads them in
//! one `MGET` even on a cluster:
//!
//! ```text
//! rev:{s<base64url(sub)>}:jti:<jti>   a revoked token
//! rev:{s<base64url(sub)>}:sid:<sid>   a revoked session
//! rev:{s<base64url(sub)>}:sub         "log out everywhere": revocation time, Unix seconds
//! ```
//!
//! The subject is base64url-encoded (no padding), so a `{`, `}` or `:` in it can neither
//! end the hash tag early nor make two subjects' keys collide. The leading `s` keeps the
//! tag non-empty for an empty subject: Redis Cluster ignores an empty `{}`, which would
//! scatter that subject's keys over slots.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The hash-tagged part shared by every key of `sub`: `rev:{s<base64url(sub)>}`.
fn subject_tag(sub: &str) -> String {
    let mut key = String::with_capacity(8 + sub.len().div_ceil(3) * 4);
    key.push_str("rev:{s");
    URL_SAFE_NO_PAD.encode_string(sub, &mut key);
    key.push('}');
    key
}

pub(super) fn jti(sub: &str, jti: &str) -> String {
    format!("{}:jti:{jti}", subject_tag(sub))
}

pub(super) fn sid(sub: &str, sid: &str) -> String {
    format!("{}:sid:{sid}", subject_tag(sub))
}

pub(super) fn subject(sub: &str) -> String {
    format!("{}:sub", subject_tag(sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::hash_tag;

    #[test]
    fn keys_of_one_subject_share_a_hash_tag() {
        for sub in ["alice", "", "a}b{c:d", "}", "{", "üñí©ødé", "rev:{x}:sub"] {
            let keys = [jti(sub, "j}1"), sid(sub, "{s}"), subject(sub)];
            let tag = hash_tag(&keys[0]).expect("tag");
            assert!(
                keys.iter().all(|k| hash_tag(k) == Some(tag)),
                "{sub:?}: {keys:?}"
            );
        }
    }

    #[test]
    fn subjects_do_not_collide() {
        assert_ne!(subject("a"), subject("a:"));
        assert_ne!(jti("a", "b:jti:c"), jti("a:jti:b", "c"));
        assert_ne!(subject("}"), subject("{"));
        assert_ne!(hash_tag(&subject("a")), hash_tag(&subject("b")));
    }

    #[test]
    fn key_layout() {
        assert_eq!(subject("alice"), "rev:{sYWxpY2U}:sub");
        assert_eq!(jti("alice", "t1"), "rev:{sYWxpY2U}:jti:t1");
        assert_eq!(sid("alice", "s1"), "rev:{sYWxpY2U}:sid:s1");
    }
}
