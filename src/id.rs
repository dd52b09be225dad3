//! Random identifiers: session ids, token ids, lock owner tokens.

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

#[cfg(test)]
mod tests {
    use super::*;

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
