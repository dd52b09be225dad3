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
