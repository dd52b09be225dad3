use std::time::Duration;

/// A type-erased error, as kept in the `source` of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`StateStore`](super::StateStore) operation failed.
///
/// Layers map [`is_unavailable`](Self::is_unavailable) errors to `503 Service Unavailable`
/// with `Retry-After`; the other kinds are bugs or corruption and map to `500`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached: connection refused or dropped, pool exhausted,
    /// server loading or failing over.
    #[error("state store unavailable")]
    Unavailable(#[source] BoxError),
    /// The operation did not finish within the configured per-operation timeout.
    #[error("state store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered, but not with what the operation expects (a wrongly typed
    /// value, a protocol error, a script error).
    #[error("unexpected reply from state store")]
    Unexpected(#[source] BoxError),
    /// A TTL below one millisecond (or beyond a century) was passed to a write.
    #[error("invalid TTL {0:?}: must be at least 1 ms")]
    InvalidTtl(Duration),
}

impl StoreError {
    /// `true` when the store could not be reached in time: a condition that may pass, so
    /// the request may be retried later (`503`), as opposed to a corrupt reply or a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_))
    }
}
