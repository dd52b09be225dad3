//! Identifiers: random ones (session ids, token ids, lock owner tokens) and digests as
//! lowercase hex.

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

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
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
}
