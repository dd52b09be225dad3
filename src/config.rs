//! The one error every builder returns for a setting that cannot work.

use std::borrow::Cow;

/// A setting refused when a layer, issuer or store handle is built.
///
/// Settings that would overflow or underflow at request time (a duration past `i64`
/// seconds, a leeway larger than the clock, a TTL the store cannot hold) are refused here,
/// once, with the name of the setting, instead of failing every request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    setting: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// A refused `setting` (the builder method's name) and why.
    pub(crate) fn new(setting: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the refused setting, as the builder method is called.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why the setting was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A key prefix of a layer (`<prefix>{<id>}`) or of the store: it must not contain `{` or
/// `}`. Redis Cluster hashes only the first `{...}` of a key, so a brace in the prefix would
/// take the place of the key's own hash tag, and the cluster would place the keys by the
/// prefix instead of by their id (with `app{x}:`, every key in one slot).
pub(crate) fn check_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.contains(['{', '}']) {
        return Err(ConfigError::new(
            "key_prefix",
            format!(
                "{prefix:?} contains '{{' or '}}', which would replace the keys' Redis Cluster \
                 hash tags"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_without_braces_only() {
        for ok in ["", "sess:", "app:rl:login:", "a b:é:"] {
            assert_eq!(check_key_prefix(ok), Ok(()), "{ok:?}");
        }
        for bad in ["{", "}", "app{x}:", "rl:{", "}rl:"] {
            let err = check_key_prefix(bad).unwrap_err();
            assert_eq!(err.setting(), "key_prefix", "{bad:?}");
            assert!(err.to_string().contains("key_prefix"), "{err}");
        }
    }
}
