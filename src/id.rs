//! Identifiers: random ones (session ids, token ids, lock owner tokens) and digests as
//! lowercase hex. Session ids have one generator and one format check, shared by every
//! part of the crate that mints or reads them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// `n` bytes from the operating system's CSPRNG, as unpadded URL-safe base64.
///
/// Fails only when the OS has no entropy source to offer, which callers answer with a
/// 500 rather than a weak id.
pub(crate) fn random_id<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A random 64-bit number (a hash write tag), from a fast generator in user space: a tag
/// must differ from the other tags of its hash, not be secret, and every session write
/// takes one, so it costs no system call (unlike the ids above, which must be unguessable).
pub(crate) fn random_u64() -> u64 {
    fastrand::u64(..)
}

/// Random bytes in a session id: 256 bits, so ids cannot be guessed.
const SESSION_ID_BYTES: usize = 32;

/// Length of a session id: [`SESSION_ID_BYTES`] as unpadded URL-safe base64.
pub(crate) const SESSION_ID_LEN: usize = (SESSION_ID_BYTES * 4).div_ceil(3);

/// A new session id: the one generator of ids that key a session, whoever mints them (the
/// session layer for a new session, `RefreshTokens::issue` for the `sid` of a login), so
/// that every id the crate mints passes [`is_session_id`].
pub(crate) fn session_id() -> Result<String, getrandom::Error> {
    random_id::<SESSION_ID_BYTES>()
}

/// Whether `id` has the form of an id from [`session_id`]; checked before any store
/// lookup, so a forged, truncated or oversized id costs nothing.
pub(crate) fn is_session_id(id: &str) -> bool {
    id.len() == SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn ids_are_url_safe_and_distinct() {
        let a = random_id::<16>().unwrap();
        let b = random_id::<16>().unwrap();
        assert_eq!(a.len(), 22, "16 bytes are 22 base64 characters");
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn minted_session_ids_are_valid_session_ids() {
        for _ in 0..64 {
            let id = session_id().unwrap();
            assert_eq!(id.len(), 43);
            assert!(is_session_id(&id), "{id}");
        }
    }

    #[test]
    fn session_id_check_refuses_other_forms() {
        let ok = "A".repeat(43);
        assert!(is_session_id(&ok));
        for bad in [
            String::new(),
            "A".repeat(42),
            "A".repeat(44),
            "A".repeat(22),
            format!("{}!", "A".repeat(42)),
            format!("{}=", "A".repeat(42)),
            format!("{}é", "A".repeat(41)),
        ] {
            assert!(!is_session_id(&bad), "{bad:?}");
        }
    }
}
