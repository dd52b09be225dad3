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

/// Every key a check reads for one token, written into one buffer (one allocation): the
/// subject's key, then the token's and the session's when it has them. Returns the
/// buffer and where each key ends.
pub(super) fn all(sub: &str, jti: Option<&str>, sid: Option<&str>) -> (String, [usize; 3], usize) {
    // `rev:{s` + base64url without padding + `}`: exact, so the buffer never grows.
    let tag_len = 7 + base64::encoded_len(sub.len(), false).unwrap_or(0);
    let capacity = tag_len
        + 4
        + jti.map_or(0, |jti| tag_len + 5 + jti.len())
        + sid.map_or(0, |sid| tag_len + 5 + sid.len());
    let mut buf = String::with_capacity(capacity);
    buf.push_str("rev:{s");
    URL_SAFE_NO_PAD.encode_string(sub, &mut buf);
    buf.push('}');
    let tag = buf.len();
    buf.push_str(":sub");
    let mut ends = [buf.len(), 0, 0];
    let mut count = 1;
    for (kind, id) in [(":jti:", jti), (":sid:", sid)] {
        if let Some(id) = id {
            buf.extend_from_within(..tag);
            buf.push_str(kind);
            buf.push_str(id);
            ends[count] = buf.len();
            count += 1;
        }
    }
    (buf, ends, count)
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
    fn all_keys_in_one_buffer_are_the_single_keys() {
        for sub in ["alice", "", "a}b{c:d", "üñí©ødé"] {
            for (jti_, sid_) in [
                (Some("t1"), Some("s1")),
                (None, Some("s:1")),
                (Some("{t}"), None),
                (None, None),
            ] {
                let (buf, ends, count) = all(sub, jti_, sid_);
                let mut start = 0;
                let keys: Vec<&str> = ends[..count]
                    .iter()
                    .map(|&end| {
                        let key = &buf[start..end];
                        start = end;
                        key
                    })
                    .collect();
                let mut expected = vec![subject(sub)];
                expected.extend(jti_.map(|j| jti(sub, j)));
                expected.extend(sid_.map(|s| sid(sub, s)));
                assert_eq!(keys, expected);
                assert_eq!(buf.len(), buf.capacity(), "one allocation, never grown");
            }
        }
    }

    #[test]
    fn key_layout() {
        assert_eq!(subject("alice"), "rev:{sYWxpY2U}:sub");
        assert_eq!(jti("alice", "t1"), "rev:{sYWxpY2U}:jti:t1");
        assert_eq!(sid("alice", "s1"), "rev:{sYWxpY2U}:sid:s1");
    }
}
