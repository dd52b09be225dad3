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
    /// A TTL below one millisecond or above [`MAX_TTL`](super::MAX_TTL) was passed to a
    /// write.
    #[error("invalid TTL {0:?}: must be at least 1 ms and at most 100 years")]
    InvalidTtl(Duration),
    /// A write on a store that waits for replicas (`RedisStoreBuilder::replica_acks`) was
    /// not confirmed by enough of them in time. The write may still have been applied on
    /// the primary, and may be lost in a failover: its outcome is unknown, and a retry
    /// is the way out.
    #[error("write confirmed by {acknowledged} of the {required} replicas required")]
    NotReplicated {
        /// Replicas that had to confirm the write.
        required: u32,
        /// Replicas that confirmed it in time.
        acknowledged: u32,
    },
}

impl StoreError {
    /// `true` when the store could not be reached in time: a condition that may pass, so
    /// the request may be retried later (`503`), as opposed to a corrupt reply or a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::NotReplicated { .. }
        )
    }
}
