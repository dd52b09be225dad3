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

    /// `true` when the operation may have been applied even though it failed: the
    /// command may have reached the store and only its reply was lost (a timeout, or a
    /// connection that dropped mid-command). A caller that wrote something conditional
    /// (a lock, a claim) should then undo it with an operation that is safe either way,
    /// such as [`compare_and_delete`](super::StateStore::compare_and_delete) of its own
    /// value.
    ///
    /// `false` for errors raised before the command left (no connection could be made,
    /// an invalid TTL) and for replies that did arrive. A connection lost while a command
    /// was in flight counts as applied: the store may have run it.
    pub fn may_have_applied(&self) -> bool {
        match self {
            // The primary applied the write; only its replicas did not confirm it.
            Self::Timeout(_) | Self::NotReplicated { .. } => true,
            Self::Unavailable(source) => !source.is::<NotSent>(),
            Self::Unexpected(_) | Self::InvalidTtl(_) => false,
        }
    }

    /// Marks an unavailable error as raised before the command was sent (no connection),
    /// so that [`may_have_applied`](Self::may_have_applied) is `false`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn not_sent(self) -> Self {
        match self {
            Self::Unavailable(source) if !source.is::<NotSent>() => {
                Self::Unavailable(Box::new(NotSent(source)))
            }
            other => other,
        }
    }
}

/// The source of an unavailable error raised before the command left: it is displayed
/// as the error it wraps.
#[derive(Debug)]
struct NotSent(BoxError);

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NotSent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_have_applied_tells_lost_replies_from_unsent_commands() {
        assert!(StoreError::Timeout(Duration::from_secs(1)).may_have_applied());
        let dropped = StoreError::Unavailable("connection dropped".into());
        assert!(dropped.may_have_applied());
        let unsent = StoreError::Unavailable("connection refused".into()).not_sent();
        assert!(!unsent.may_have_applied());
        assert!(unsent.is_unavailable());
        assert_eq!(
            std::error::Error::source(&unsent).map(ToString::to_string),
            Some("connection refused".to_owned())
        );
        assert!(!unsent.not_sent().may_have_applied());
        assert!(!StoreError::Unexpected("script error".into()).may_have_applied());
        assert!(!StoreError::InvalidTtl(Duration::ZERO).may_have_applied());
        // Only unavailable errors can be unsent.
        assert!(StoreError::Timeout(Duration::from_secs(1))
            .not_sent()
            .may_have_applied());
    }
}
